"""Tile helpers shared by the long-convolution kernels (`kernels.py`, one program per FFT, and `radix_kernels.py`,
the radix step): complex products, `tl.dot` at a chosen precision, the Monarch DFT of a tile and its inverse, and
the loads and stores of gated rows.

The notation is that of `kernels.py`; the DFT layout (Monarch order) is that of `plan.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import backend


@triton.jit
def load_planes(ptr, offsets, plane_stride):
    """The (real, imaginary) planes stored `plane_stride` apart."""
    return tl.load(ptr + offsets), tl.load(ptr + plane_stride + offsets)


@triton.jit
def complex_mul(a_re, a_im, b_re, b_im):
    return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


@triton.jit
def conj_mul(a_re, a_im, b_re, b_im):
    """`conj(a) * b`."""
    return a_re * b_re + a_im * b_im, a_re * b_im - a_im * b_re


@triton.jit
def round_to_bf16(x):
    """Float32 `x` rounded to the nearest bfloat16 (ties to even), kept in float32: the GPU's conversion, which the
    interpreter's (truncating) cast is not."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def dot(a, b, PRECISION: tl.constexpr):
    """`a @ b` with float32 accumulation. PRECISION: "ieee" (float32 products), "tf32", or "bf16" (operands rounded
    to bfloat16: twice the tensor-core rate of TF32); "bf16-emulated" rounds the same way but multiplies in
    float32, for the interpreter, whose bfloat16 dot is wrong."""
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PRECISION == "bf16-emulated":
        return tl.dot(round_to_bf16(a), round_to_bf16(b), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def complex_dot(a_re, a_im, b_re, b_im, PRECISION: tl.constexpr):
    """`a @ b` for complex tiles given as real and imaginary parts (four real dots)."""
    out_re = dot(a_re, b_re, PRECISION) - dot(a_im, b_im, PRECISION)
    out_im = dot(a_re, b_im, PRECISION) + dot(a_im, b_re, PRECISION)
    return out_re, out_im


@triton.jit
def load_dft_tables(
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
    OUTER: tl.constexpr, INNER: tl.constexpr, TIME_ROWS: tl.constexpr, TIME_COLS: tl.constexpr,
):
    """Load the matrices of the forward DFT once per program.

    Monarch (`OUTER > 1`): `F_outer[:, :TIME_ROWS]` `[OUTER, TIME_ROWS]`, `F_inner` `[INNER, INNER]` and the
    twiddles `[OUTER, INNER]`. Dense (`OUTER == 1`): `F[:TIME_COLS, :]` `[TIME_COLS, INNER]` in the first pair;
    the other two pairs repeat it and are not used.
    """
    if OUTER == 1:
        time_index = tl.arange(0, TIME_COLS)[:, None]
        freq_index = tl.arange(0, INNER)[None, :]
        head_re, head_im = load_planes(dft_inner_ptr, time_index * INNER + freq_index, INNER * INNER)
        inner_re, inner_im, twiddle_re, twiddle_im = head_re, head_im, head_re, head_im
    else:
        outer_row = tl.arange(0, OUTER)[:, None]
        head_re, head_im = load_planes(
            dft_outer_ptr, outer_row * OUTER + tl.arange(0, TIME_ROWS)[None, :], OUTER * OUTER
        )
        inner_row = tl.arange(0, INNER)[:, None]
        inner_col = tl.arange(0, INNER)[None, :]
        inner_re, inner_im = load_planes(dft_inner_ptr, inner_row * INNER + inner_col, INNER * INNER)
        twiddle_re, twiddle_im = load_planes(twiddle_ptr, outer_row * INNER + inner_col, OUTER * INNER)
    return head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im


@triton.jit
def dft(
    signal, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im,
    OUTER: tl.constexpr, PRECISION: tl.constexpr,
):
    """DFT of a real time tile `[TIME_ROWS, TIME_COLS]` into a frequency tile `[FREQ_ROWS, INNER]` (Monarch order)."""
    if OUTER == 1:
        # one dense DFT per row: X = x @ F[:TIME_COLS, :]
        freq_re = dot(signal, head_re, PRECISION)
        freq_im = dot(signal, head_im, PRECISION)
    else:
        # columns: F_outer @ x, then twiddle, then rows: @ F_inner
        column_re = dot(head_re, signal, PRECISION)
        column_im = dot(head_im, signal, PRECISION)
        column_re, column_im = complex_mul(column_re, column_im, twiddle_re, twiddle_im)
        freq_re, freq_im = complex_dot(column_re, column_im, inner_re, inner_im, PRECISION)
    return freq_re, freq_im


@triton.jit
def inverse_dft_real(
    freq_re, freq_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im,
    OUTER: tl.constexpr, PRECISION: tl.constexpr,
):
    """`Re(IDFT_unnormalised(X))` on the time tile, for a frequency tile in Monarch order.

    The DFT matrices are symmetric, so `conj(F)[:, :T]` is the transpose of the forward head `F[:T, :]`.
    """
    if OUTER == 1:
        # Re(X @ conj(F)[:, :TIME_COLS]) = X_re @ F_re^T + X_im @ F_im^T
        signal = dot(freq_re, tl.trans(head_re), PRECISION)
        signal += dot(freq_im, tl.trans(head_im), PRECISION)
    else:
        # rows: X @ conj(F_inner), then conj(twiddle), then columns: Re(conj(F_outer)[:TIME_ROWS, :] @ .)
        row_re = dot(freq_re, inner_re, PRECISION)
        row_re += dot(freq_im, inner_im, PRECISION)
        row_im = dot(freq_im, inner_re, PRECISION)
        row_im -= dot(freq_re, inner_im, PRECISION)
        row_re, row_im = conj_mul(twiddle_re, twiddle_im, row_re, row_im)
        signal = dot(tl.trans(head_re), row_re, PRECISION)
        signal += dot(tl.trans(head_im), row_im, PRECISION)
    return signal


@triton.jit
def load_rows(ptr, rows, channel, positions, mask, stride_b, stride_h):
    return tl.load(ptr + rows * stride_b + channel * stride_h + positions, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def store_rows(ptr, value, rows, channel, positions, mask, stride_b, stride_h):
    tl.store(ptr + rows * stride_b + channel * stride_h + positions, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def load_gated_input(
    u_ptr, pre_gate_ptr, rows, channel, positions, mask, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
    HAS_PRE_GATE: tl.constexpr,
):
    """`u * pre_gate` on a time tile (`u` without a pre gate)."""
    gated_input = load_rows(u_ptr, rows, channel, positions, mask, u_stride_b, u_stride_h)
    if HAS_PRE_GATE:
        gated_input *= load_rows(pre_gate_ptr, rows, channel, positions, mask, pre_stride_b, pre_stride_h)
    return gated_input


@triton.jit
def store_gated_output(
    out_ptr, post_gate_ptr, conv, skip, gated_input, rows, channel, positions, mask, channels, seq_len,
    post_stride_b, post_stride_h, HAS_POST_GATE: tl.constexpr,
):
    """`out = post_gate * (conv + skip * gated_input)` on a time tile of the contiguous `[B, H, L]` output."""
    out = conv + skip * gated_input
    if HAS_POST_GATE:
        out *= load_rows(post_gate_ptr, rows, channel, positions, mask, post_stride_b, post_stride_h)
    store_rows(out_ptr, out, rows, channel, positions, mask, seq_len * channels, seq_len)


@triton.jit
def load_backward_inputs(
    grad_out_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, rows, channel, positions, mask,
    grad_stride_b, grad_stride_h, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr,
):
    """`(grad_out, u, pre_gate, gated_input, gated_grad)` of a time tile (`pre_gate` is `u`, unused, without a pre
    gate): `gated_input = u * pre_gate`, `gated_grad = grad_out * post_gate`."""
    grad_out = load_rows(grad_out_ptr, rows, channel, positions, mask, grad_stride_b, grad_stride_h)
    u = load_rows(u_ptr, rows, channel, positions, mask, u_stride_b, u_stride_h)
    pre_gate = u
    gated_input = u
    if HAS_PRE_GATE:
        pre_gate = load_rows(pre_gate_ptr, rows, channel, positions, mask, pre_stride_b, pre_stride_h)
        gated_input = u * pre_gate
    gated_grad = grad_out
    if HAS_POST_GATE:
        gated_grad = grad_out * load_rows(post_gate_ptr, rows, channel, positions, mask, post_stride_b, post_stride_h)
    return grad_out, u, pre_gate, gated_input, gated_grad


@triton.jit
def store_input_grads(
    grad_u_ptr, grad_pre_gate_ptr, grad_gated, u, pre_gate, rows, channel, positions, mask, stride_b, stride_h,
    HAS_PRE_GATE: tl.constexpr,
):
    """`grad_u = grad_gated * pre_gate` and `grad_pre_gate = grad_gated * u` (`grad_u = grad_gated` without a gate)."""
    if HAS_PRE_GATE:
        store_rows(grad_u_ptr, grad_gated * pre_gate, rows, channel, positions, mask, stride_b, stride_h)
        store_rows(grad_pre_gate_ptr, grad_gated * u, rows, channel, positions, mask, stride_b, stride_h)
    else:
        store_rows(grad_u_ptr, grad_gated, rows, channel, positions, mask, stride_b, stride_h)


def dot_precision(dtype: torch.dtype) -> str:
    """The `dot` precision for inputs of `dtype`: exact float32 products for float32; TF32 for float16; bfloat16
    operands for bfloat16 inputs, whose own rounding is as coarse (about 0.3% relative error on the convolution,
    half the 1e-2 budget). The interpreter computes every float32 dot exactly."""
    if dtype == torch.float32:
        return "ieee"
    if dtype == torch.bfloat16:
        return "bf16-emulated" if backend.interpreting() else "bf16"
    return "tf32"


def strides(tensor: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if tensor is None else (tensor.stride(0), tensor.stride(1))

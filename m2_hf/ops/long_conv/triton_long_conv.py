"""Triton kernels of the gated long convolution, with the FFTs as Monarch products (`monarch_fft.py`).

Forward, per batch row and channel: `y = post_gate * (conv(gated_input) + skip * gated_input)` with
`gated_input = u * pre_gate` and `conv(s) = Re(IDFT_unnormalised(DFT(s) * K))[:L]` on the zero-padded signal.

Backward, with `g` the output gradient and `gated_grad = g * post_gate`:
- `grad_gated = Re(IDFT_unnormalised(conj(K) * DFT(gated_grad)))[:L] + skip * gated_grad` (the adjoint of the
  convolution is the correlation with the same kernel);
- `grad_u = grad_gated * pre_gate`, `grad_pre_gate = grad_gated * u`;
- `grad_post_gate = g * (conv(gated_input) + skip * gated_input)`;
- `grad_K = sum over the batch of conj(DFT(gated_input)) * DFT(gated_grad)` as (real, imaginary) planes, the
  gradient of the real planes of `K`; `grad_skip = sum of gated_grad * gated_input`.

Each program owns one channel: the forward program one block of batch rows, the backward program every
`num_splits`-th block, accumulating the spectrum and skip gradients in registers. Values are upcast to float32
right after loading; DFT matrices, twiddles and the spectrum are float32, and the products accumulate in float32
(operand precision by input dtype: `_dot_precision`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import backend
from .monarch_fft import FFTPlan, dft_tables


@triton.jit
def _load_planes(ptr, offsets, plane_stride):
    """The (real, imaginary) planes stored `plane_stride` apart."""
    return tl.load(ptr + offsets), tl.load(ptr + plane_stride + offsets)


@triton.jit
def _complex_mul(a_re, a_im, b_re, b_im):
    return a_re * b_re - a_im * b_im, a_re * b_im + a_im * b_re


@triton.jit
def _conj_mul(a_re, a_im, b_re, b_im):
    """`conj(a) * b`."""
    return a_re * b_re + a_im * b_im, a_re * b_im - a_im * b_re


@triton.jit
def _round_to_bf16(x):
    """Float32 `x` rounded to the nearest bfloat16 (ties to even), kept in float32: the GPU's conversion, which the
    interpreter's (truncating) cast is not."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr):
    """`a @ b` with float32 accumulation. PRECISION: "ieee" (float32 products), "tf32", or "bf16" (operands rounded
    to bfloat16: twice the tensor-core rate of TF32); "bf16-emulated" rounds the same way but multiplies in
    float32, for the interpreter, whose bfloat16 dot is wrong."""
    if PRECISION == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif PRECISION == "bf16-emulated":
        return tl.dot(_round_to_bf16(a), _round_to_bf16(b), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _complex_dot(a_re, a_im, b_re, b_im, PRECISION: tl.constexpr):
    """`a @ b` for complex tiles given as real and imaginary parts (four real dots)."""
    out_re = _dot(a_re, b_re, PRECISION) - _dot(a_im, b_im, PRECISION)
    out_im = _dot(a_re, b_im, PRECISION) + _dot(a_im, b_re, PRECISION)
    return out_re, out_im


@triton.jit
def _dft_tables(
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
        head_re, head_im = _load_planes(dft_inner_ptr, time_index * INNER + freq_index, INNER * INNER)
        inner_re, inner_im, twiddle_re, twiddle_im = head_re, head_im, head_re, head_im
    else:
        outer_row = tl.arange(0, OUTER)[:, None]
        head_re, head_im = _load_planes(
            dft_outer_ptr, outer_row * OUTER + tl.arange(0, TIME_ROWS)[None, :], OUTER * OUTER
        )
        inner_row = tl.arange(0, INNER)[:, None]
        inner_col = tl.arange(0, INNER)[None, :]
        inner_re, inner_im = _load_planes(dft_inner_ptr, inner_row * INNER + inner_col, INNER * INNER)
        twiddle_re, twiddle_im = _load_planes(twiddle_ptr, outer_row * INNER + inner_col, OUTER * INNER)
    return head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im


@triton.jit
def _dft(
    signal, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im,
    OUTER: tl.constexpr, PRECISION: tl.constexpr,
):
    """DFT of a real time tile `[TIME_ROWS, TIME_COLS]` into a frequency tile `[FREQ_ROWS, INNER]` (Monarch order)."""
    if OUTER == 1:
        # one dense DFT per row: X = x @ F[:TIME_COLS, :]
        freq_re = _dot(signal, head_re, PRECISION)
        freq_im = _dot(signal, head_im, PRECISION)
    else:
        # columns: F_outer @ x, then twiddle, then rows: @ F_inner
        column_re = _dot(head_re, signal, PRECISION)
        column_im = _dot(head_im, signal, PRECISION)
        column_re, column_im = _complex_mul(column_re, column_im, twiddle_re, twiddle_im)
        freq_re, freq_im = _complex_dot(column_re, column_im, inner_re, inner_im, PRECISION)
    return freq_re, freq_im


@triton.jit
def _inverse_dft_real(
    freq_re, freq_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im,
    OUTER: tl.constexpr, PRECISION: tl.constexpr,
):
    """`Re(IDFT_unnormalised(X))` on the time tile, for a frequency tile in Monarch order.

    The DFT matrices are symmetric, so `conj(F)[:, :T]` is the transpose of the forward head `F[:T, :]`.
    """
    if OUTER == 1:
        # Re(X @ conj(F)[:, :TIME_COLS]) = X_re @ F_re^T + X_im @ F_im^T
        signal = _dot(freq_re, tl.trans(head_re), PRECISION)
        signal += _dot(freq_im, tl.trans(head_im), PRECISION)
    else:
        # rows: X @ conj(F_inner), then conj(twiddle), then columns: Re(conj(F_outer)[:TIME_ROWS, :] @ .)
        row_re = _dot(freq_re, inner_re, PRECISION)
        row_re += _dot(freq_im, inner_im, PRECISION)
        row_im = _dot(freq_im, inner_re, PRECISION)
        row_im -= _dot(freq_re, inner_im, PRECISION)
        row_re, row_im = _conj_mul(twiddle_re, twiddle_im, row_re, row_im)
        signal = _dot(tl.trans(head_re), row_re, PRECISION)
        signal += _dot(tl.trans(head_im), row_im, PRECISION)
    return signal


@triton.jit
def _time_tile(row_block, batch, seq_len, BLOCK_ROWS: tl.constexpr, TIME_ROWS: tl.constexpr, TIME_COLS: tl.constexpr):
    """Batch row, position and validity of every element of a time tile.

    Dense plans hold one position range of `BLOCK_ROWS` rows; Monarch plans one row reshaped to `[TIME_ROWS,
    TIME_COLS]` (`position = tile_row * TIME_COLS + tile_col`).
    """
    segments: tl.constexpr = TIME_ROWS // BLOCK_ROWS
    tile_row = tl.arange(0, TIME_ROWS)
    rows = row_block * BLOCK_ROWS + tile_row // segments
    positions = (tile_row % segments)[:, None] * TIME_COLS + tl.arange(0, TIME_COLS)[None, :]
    mask = (rows < batch)[:, None] & (positions < seq_len)
    return rows.to(tl.int64)[:, None], positions, mask


@triton.jit
def _load_rows(ptr, rows, channel, positions, mask, stride_b, stride_h):
    return tl.load(ptr + rows * stride_b + channel * stride_h + positions, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _store_rows(ptr, value, rows, channel, positions, mask, stride_b, stride_h):
    tl.store(ptr + rows * stride_b + channel * stride_h + positions, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_gated_input(
    u_ptr, pre_gate_ptr, rows, channel, positions, mask, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
    HAS_PRE_GATE: tl.constexpr,
):
    """`u * pre_gate` on a time tile (`u` without a pre gate)."""
    gated_input = _load_rows(u_ptr, rows, channel, positions, mask, u_stride_b, u_stride_h)
    if HAS_PRE_GATE:
        gated_input *= _load_rows(pre_gate_ptr, rows, channel, positions, mask, pre_stride_b, pre_stride_h)
    return gated_input


@triton.jit
def _store_gated_output(
    out_ptr, post_gate_ptr, conv, skip, gated_input, rows, channel, positions, mask, channels, seq_len,
    post_stride_b, post_stride_h, HAS_POST_GATE: tl.constexpr,
):
    """`out = post_gate * (conv + skip * gated_input)` on a time tile of the contiguous `[B, H, L]` output."""
    out = conv + skip * gated_input
    if HAS_POST_GATE:
        out *= _load_rows(post_gate_ptr, rows, channel, positions, mask, post_stride_b, post_stride_h)
    _store_rows(out_ptr, out, rows, channel, positions, mask, seq_len * channels, seq_len)


@triton.jit
def _load_backward_inputs(
    grad_out_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, rows, channel, positions, mask,
    grad_stride_b, grad_stride_h, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr,
):
    """`(grad_out, u, pre_gate, gated_input, gated_grad)` of a time tile (`pre_gate` is `u`, unused, without a pre
    gate): `gated_input = u * pre_gate`, `gated_grad = grad_out * post_gate`."""
    grad_out = _load_rows(grad_out_ptr, rows, channel, positions, mask, grad_stride_b, grad_stride_h)
    u = _load_rows(u_ptr, rows, channel, positions, mask, u_stride_b, u_stride_h)
    pre_gate = u
    gated_input = u
    if HAS_PRE_GATE:
        pre_gate = _load_rows(pre_gate_ptr, rows, channel, positions, mask, pre_stride_b, pre_stride_h)
        gated_input = u * pre_gate
    gated_grad = grad_out
    if HAS_POST_GATE:
        gated_grad = grad_out * _load_rows(post_gate_ptr, rows, channel, positions, mask, post_stride_b, post_stride_h)
    return grad_out, u, pre_gate, gated_input, gated_grad


@triton.jit
def _store_input_grads(
    grad_u_ptr, grad_pre_gate_ptr, grad_gated, u, pre_gate, rows, channel, positions, mask, stride_b, stride_h,
    HAS_PRE_GATE: tl.constexpr,
):
    """`grad_u = grad_gated * pre_gate` and `grad_pre_gate = grad_gated * u` (`grad_u = grad_gated` without a gate)."""
    if HAS_PRE_GATE:
        _store_rows(grad_u_ptr, grad_gated * pre_gate, rows, channel, positions, mask, stride_b, stride_h)
        _store_rows(grad_pre_gate_ptr, grad_gated * u, rows, channel, positions, mask, stride_b, stride_h)
    else:
        _store_rows(grad_u_ptr, grad_gated, rows, channel, positions, mask, stride_b, stride_h)


@triton.jit
def _spectrum_offsets(OUTER: tl.constexpr, INNER: tl.constexpr):
    """Offsets of one channel's spectrum plane: `[OUTER, INNER]` (a single row for dense plans)."""
    return tl.arange(0, OUTER)[:, None] * INNER + tl.arange(0, INNER)[None, :]


@triton.jit
def _gated_long_conv_fwd_kernel(
    u_ptr, pre_gate_ptr, post_gate_ptr, spectrum_ptr, skip_ptr, out_ptr,
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
    batch, channels, seq_len,
    u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr,
    OUTER: tl.constexpr, INNER: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    TIME_ROWS: tl.constexpr, TIME_COLS: tl.constexpr, PRECISION: tl.constexpr,
):
    channel = tl.program_id(0)
    rows, positions, mask = _time_tile(tl.program_id(1), batch, seq_len, BLOCK_ROWS, TIME_ROWS, TIME_COLS)

    gated_input = _load_gated_input(
        u_ptr, pre_gate_ptr, rows, channel, positions, mask, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
        HAS_PRE_GATE,
    )
    head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im = _dft_tables(
        dft_outer_ptr, dft_inner_ptr, twiddle_ptr, OUTER, INNER, TIME_ROWS, TIME_COLS
    )
    freq_re, freq_im = _dft(
        gated_input, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
    )
    fft_size: tl.constexpr = OUTER * INNER
    spectrum_re, spectrum_im = _load_planes(
        spectrum_ptr + channel * 2 * fft_size, _spectrum_offsets(OUTER, INNER), fft_size
    )
    freq_re, freq_im = _complex_mul(freq_re, freq_im, spectrum_re, spectrum_im)
    conv = _inverse_dft_real(
        freq_re, freq_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
    )
    skip = tl.load(skip_ptr + channel).to(tl.float32)
    _store_gated_output(
        out_ptr, post_gate_ptr, conv, skip, gated_input, rows, channel, positions, mask, channels, seq_len,
        post_stride_b, post_stride_h, HAS_POST_GATE,
    )


@triton.jit
def _gated_long_conv_bwd_kernel(
    grad_out_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, spectrum_ptr, skip_ptr,
    grad_u_ptr, grad_pre_gate_ptr, grad_post_gate_ptr, grad_spectrum_partial_ptr, grad_skip_partial_ptr,
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
    batch, channels, seq_len, num_splits,
    grad_stride_b, grad_stride_h, u_stride_b, u_stride_h,
    pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr,
    OUTER: tl.constexpr, INNER: tl.constexpr, BLOCK_ROWS: tl.constexpr,
    TIME_ROWS: tl.constexpr, TIME_COLS: tl.constexpr, PRECISION: tl.constexpr,
):
    channel = tl.program_id(0)
    split = tl.program_id(1)
    fft_size: tl.constexpr = OUTER * INNER
    out_stride_b = seq_len * channels

    head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im = _dft_tables(
        dft_outer_ptr, dft_inner_ptr, twiddle_ptr, OUTER, INNER, TIME_ROWS, TIME_COLS
    )
    spectrum_offsets = _spectrum_offsets(OUTER, INNER)
    spectrum_re, spectrum_im = _load_planes(spectrum_ptr + channel * 2 * fft_size, spectrum_offsets, fft_size)
    skip = tl.load(skip_ptr + channel).to(tl.float32)

    grad_spectrum_re = tl.zeros((OUTER, INNER), dtype=tl.float32)
    grad_spectrum_im = tl.zeros((OUTER, INNER), dtype=tl.float32)
    grad_skip = tl.zeros((TIME_ROWS, TIME_COLS), dtype=tl.float32)
    for row_block in range(split, tl.cdiv(batch, BLOCK_ROWS), num_splits):
        rows, positions, mask = _time_tile(row_block, batch, seq_len, BLOCK_ROWS, TIME_ROWS, TIME_COLS)
        grad_out, u, pre_gate, gated_input, gated_grad = _load_backward_inputs(
            grad_out_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, rows, channel, positions, mask,
            grad_stride_b, grad_stride_h, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
            post_stride_b, post_stride_h, HAS_PRE_GATE, HAS_POST_GATE,
        )

        input_re, input_im = _dft(
            gated_input, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        )
        grad_re, grad_im = _dft(
            gated_grad, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        )
        # d loss / d K = conj(DFT(s)) * DFT(gs), summed over the rows
        product_re, product_im = _conj_mul(input_re, input_im, grad_re, grad_im)
        if OUTER == 1:
            grad_spectrum_re += tl.sum(product_re, axis=0)[None, :]
            grad_spectrum_im += tl.sum(product_im, axis=0)[None, :]
        else:
            grad_spectrum_re += product_re
            grad_spectrum_im += product_im
        grad_skip += gated_grad * gated_input

        # correlation with the kernel: multiply by conj(K)
        corr_re, corr_im = _conj_mul(spectrum_re, spectrum_im, grad_re, grad_im)
        grad_gated = _inverse_dft_real(
            corr_re, corr_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        ) + skip * gated_grad
        _store_input_grads(
            grad_u_ptr, grad_pre_gate_ptr, grad_gated, u, pre_gate, rows, channel, positions, mask,
            out_stride_b, seq_len, HAS_PRE_GATE,
        )
        if HAS_POST_GATE:
            conv_re, conv_im = _complex_mul(input_re, input_im, spectrum_re, spectrum_im)
            conv = _inverse_dft_real(
                conv_re, conv_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
            )
            grad_post_gate = grad_out * (conv + skip * gated_input)
            _store_rows(grad_post_gate_ptr, grad_post_gate, rows, channel, positions, mask, out_stride_b, seq_len)

    partial = (split * channels + channel).to(tl.int64)
    tl.store(grad_spectrum_partial_ptr + partial * 2 * fft_size + spectrum_offsets, grad_spectrum_re)
    tl.store(grad_spectrum_partial_ptr + partial * 2 * fft_size + fft_size + spectrum_offsets, grad_spectrum_im)
    tl.store(grad_skip_partial_ptr + partial, tl.sum(grad_skip))


def _dot_precision(dtype: torch.dtype) -> str:
    """The `_dot` precision for inputs of `dtype`: exact float32 products for float32; TF32 for float16; bfloat16
    operands for bfloat16 inputs, whose own rounding is as coarse (about 0.3% relative error on the convolution,
    half the 1e-2 budget). The interpreter computes every float32 dot exactly."""
    if dtype == torch.float32:
        return "ieee"
    if dtype == torch.bfloat16:
        return "bf16-emulated" if backend.interpreting() else "bf16"
    return "tf32"


def _num_warps(plan: FFTPlan) -> int:
    return 4 if plan.fft_size <= 1024 else 8


def _strides(tensor: torch.Tensor | None) -> tuple[int, int]:
    return (0, 0) if tensor is None else (tensor.stride(0), tensor.stride(1))


def _launch_meta(plan: FFTPlan, u: torch.Tensor, pre_gate, post_gate) -> dict:
    return dict(
        HAS_PRE_GATE=pre_gate is not None,
        HAS_POST_GATE=post_gate is not None,
        OUTER=plan.outer,
        INNER=plan.inner,
        BLOCK_ROWS=plan.block_rows,
        TIME_ROWS=plan.time_rows,
        TIME_COLS=plan.time_cols,
        PRECISION=_dot_precision(u.dtype),
        num_warps=_num_warps(plan),
    )


def gated_long_conv_fwd_triton(
    u: torch.Tensor,
    spectrum: torch.Tensor,
    skip: torch.Tensor,
    pre_gate: torch.Tensor | None,
    post_gate: torch.Tensor | None,
    plan: FFTPlan,
) -> torch.Tensor:
    """Launch the forward kernel. `u` and the gates `[B, H, L]` with unit stride along `L`; `spectrum` from
    `monarch_spectrum` (`[H, 2, N]` float32, contiguous). Returns a new contiguous `[B, H, L]` in `u`'s dtype."""
    batch, channels, seq_len = u.shape
    out = backend.new_buffer(u.shape, u.dtype, u.device)
    tables = dft_tables(plan.outer, plan.inner, u.device)
    grid = (channels, triton.cdiv(batch, plan.block_rows))
    _gated_long_conv_fwd_kernel[grid](
        u, pre_gate, post_gate, spectrum, skip, out, *tables,
        batch, channels, seq_len, *_strides(u), *_strides(pre_gate), *_strides(post_gate),
        **_launch_meta(plan, u, pre_gate, post_gate),
    )
    return out


def _num_splits(channels: int, row_blocks: int, device: torch.device) -> int:
    """Programs per channel in the backward: enough for every multiprocessor to hold a few, never idle ones."""
    if device.type != "cuda":
        return min(row_blocks, 2)
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(row_blocks, triton.cdiv(target, channels)))


def gated_long_conv_bwd_triton(
    grad_out: torch.Tensor,
    u: torch.Tensor,
    spectrum: torch.Tensor,
    skip: torch.Tensor,
    pre_gate: torch.Tensor | None,
    post_gate: torch.Tensor | None,
    plan: FFTPlan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward kernel. Returns `(grad_u, grad_spectrum [H, 2, N] float32, grad_skip, grad_pre_gate,
    grad_post_gate)`, the gate gradients None where the gate is."""
    batch, channels, seq_len = u.shape
    grad_u = backend.new_buffer(u.shape, u.dtype, u.device)
    grad_pre_gate = None if pre_gate is None else backend.new_buffer(pre_gate.shape, pre_gate.dtype, u.device)
    grad_post_gate = None if post_gate is None else backend.new_buffer(post_gate.shape, post_gate.dtype, u.device)
    num_splits = _num_splits(channels, triton.cdiv(batch, plan.block_rows), u.device)
    grad_spectrum_partial = backend.new_buffer((num_splits, channels, 2, plan.fft_size), torch.float32, u.device)
    grad_skip_partial = backend.new_buffer((num_splits, channels), torch.float32, u.device)
    tables = dft_tables(plan.outer, plan.inner, u.device)
    _gated_long_conv_bwd_kernel[(channels, num_splits)](
        grad_out, u, pre_gate, post_gate, spectrum, skip,
        grad_u, grad_pre_gate, grad_post_gate, grad_spectrum_partial, grad_skip_partial, *tables,
        batch, channels, seq_len, num_splits,
        *_strides(grad_out), *_strides(u), *_strides(pre_gate), *_strides(post_gate),
        **_launch_meta(plan, u, pre_gate, post_gate),
    )
    grad_spectrum = grad_spectrum_partial.sum(0)
    grad_skip = grad_skip_partial.sum(0).to(skip.dtype)
    return grad_u, grad_spectrum, grad_skip, grad_pre_gate, grad_post_gate

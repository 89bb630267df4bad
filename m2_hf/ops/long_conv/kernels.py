"""Triton kernels of the gated long convolution, one program per FFT, the FFTs as Monarch products (`plan.py`).

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
(operand precision by input dtype: `tiles.dot_precision`). The tile helpers are in `tiles.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import backend
from .plan import FFTPlan, dft_tables
from .tiles import (
    complex_mul,
    conj_mul,
    dft,
    dot_precision,
    inverse_dft_real,
    load_backward_inputs,
    load_dft_tables,
    load_gated_input,
    load_planes,
    store_gated_output,
    store_input_grads,
    store_rows,
    strides,
)


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

    gated_input = load_gated_input(
        u_ptr, pre_gate_ptr, rows, channel, positions, mask, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
        HAS_PRE_GATE,
    )
    head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im = load_dft_tables(
        dft_outer_ptr, dft_inner_ptr, twiddle_ptr, OUTER, INNER, TIME_ROWS, TIME_COLS
    )
    freq_re, freq_im = dft(
        gated_input, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
    )
    fft_size: tl.constexpr = OUTER * INNER
    spectrum_re, spectrum_im = load_planes(
        spectrum_ptr + channel * 2 * fft_size, _spectrum_offsets(OUTER, INNER), fft_size
    )
    freq_re, freq_im = complex_mul(freq_re, freq_im, spectrum_re, spectrum_im)
    conv = inverse_dft_real(
        freq_re, freq_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
    )
    skip = tl.load(skip_ptr + channel).to(tl.float32)
    store_gated_output(
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

    head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im = load_dft_tables(
        dft_outer_ptr, dft_inner_ptr, twiddle_ptr, OUTER, INNER, TIME_ROWS, TIME_COLS
    )
    spectrum_offsets = _spectrum_offsets(OUTER, INNER)
    spectrum_re, spectrum_im = load_planes(spectrum_ptr + channel * 2 * fft_size, spectrum_offsets, fft_size)
    skip = tl.load(skip_ptr + channel).to(tl.float32)

    grad_spectrum_re = tl.zeros((OUTER, INNER), dtype=tl.float32)
    grad_spectrum_im = tl.zeros((OUTER, INNER), dtype=tl.float32)
    grad_skip = tl.zeros((TIME_ROWS, TIME_COLS), dtype=tl.float32)
    for row_block in range(split, tl.cdiv(batch, BLOCK_ROWS), num_splits):
        rows, positions, mask = _time_tile(row_block, batch, seq_len, BLOCK_ROWS, TIME_ROWS, TIME_COLS)
        grad_out, u, pre_gate, gated_input, gated_grad = load_backward_inputs(
            grad_out_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, rows, channel, positions, mask,
            grad_stride_b, grad_stride_h, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
            post_stride_b, post_stride_h, HAS_PRE_GATE, HAS_POST_GATE,
        )

        input_re, input_im = dft(
            gated_input, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        )
        grad_re, grad_im = dft(
            gated_grad, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        )
        # d loss / d K = conj(DFT(s)) * DFT(gs), summed over the rows
        product_re, product_im = conj_mul(input_re, input_im, grad_re, grad_im)
        if OUTER == 1:
            grad_spectrum_re += tl.sum(product_re, axis=0)[None, :]
            grad_spectrum_im += tl.sum(product_im, axis=0)[None, :]
        else:
            grad_spectrum_re += product_re
            grad_spectrum_im += product_im
        grad_skip += gated_grad * gated_input

        # correlation with the kernel: multiply by conj(K)
        corr_re, corr_im = conj_mul(spectrum_re, spectrum_im, grad_re, grad_im)
        grad_gated = inverse_dft_real(
            corr_re, corr_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        ) + skip * gated_grad
        store_input_grads(
            grad_u_ptr, grad_pre_gate_ptr, grad_gated, u, pre_gate, rows, channel, positions, mask,
            out_stride_b, seq_len, HAS_PRE_GATE,
        )
        if HAS_POST_GATE:
            conv_re, conv_im = complex_mul(input_re, input_im, spectrum_re, spectrum_im)
            conv = inverse_dft_real(
                conv_re, conv_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
            )
            grad_post_gate = grad_out * (conv + skip * gated_input)
            store_rows(grad_post_gate_ptr, grad_post_gate, rows, channel, positions, mask, out_stride_b, seq_len)

    partial = (split * channels + channel).to(tl.int64)
    tl.store(grad_spectrum_partial_ptr + partial * 2 * fft_size + spectrum_offsets, grad_spectrum_re)
    tl.store(grad_spectrum_partial_ptr + partial * 2 * fft_size + fft_size + spectrum_offsets, grad_spectrum_im)
    tl.store(grad_skip_partial_ptr + partial, tl.sum(grad_skip))


def _num_warps(plan: FFTPlan) -> int:
    return 4 if plan.fft_size <= 1024 else 8


def _launch_meta(plan: FFTPlan, u: torch.Tensor, pre_gate, post_gate) -> dict:
    return dict(
        HAS_PRE_GATE=pre_gate is not None,
        HAS_POST_GATE=post_gate is not None,
        OUTER=plan.outer,
        INNER=plan.inner,
        BLOCK_ROWS=plan.block_rows,
        TIME_ROWS=plan.time_rows,
        TIME_COLS=plan.time_cols,
        PRECISION=dot_precision(u.dtype),
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
        batch, channels, seq_len, *strides(u), *strides(pre_gate), *strides(post_gate),
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
        *strides(grad_out), *strides(u), *strides(pre_gate), *strides(post_gate),
        **_launch_meta(plan, u, pre_gate, post_gate),
    )
    grad_spectrum = grad_spectrum_partial.sum(0)
    grad_skip = grad_skip_partial.sum(0).to(skip.dtype)
    return grad_u, grad_spectrum, grad_skip, grad_pre_gate, grad_post_gate

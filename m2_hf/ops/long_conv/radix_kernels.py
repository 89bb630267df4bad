"""Triton kernels of the gated long convolution for FFTs longer than one program (`N = radix * M`).

The math is that of `kernels.py` (forward, backward and the notation there); here the length-`N` DFT is
a radix step over `radix` interleaved subsequences `x_r[m] = x[r + radix * m]` (`plan.py`):

    X[k + M * j] = sum_r F_radix[j, r] * exp(-2 pi i * r * k / N) * DFT_M(x_r)[k]

Three launches per direction, through spectra in global memory (`[B, H, 2, radix, stored]`; bfloat16 for
bfloat16 inputs, whose products round their operands to bfloat16 anyway, float32 otherwise):
1. `_subsequence_dft_kernel`: `DFT_M` of every real subsequence of the gated input (and, in the backward, of the
   gated output gradient) with the single-program Monarch DFT. Only the stored rows (`k1 <= outer / 2`) are
   written: the rest follow by conjugate symmetry.
2. `_radix_kernel`: per stored frequency `k` and channel, across the subsequences: twiddle, `F_radix`, the
   product with the filter spectrum, `conj(F_radix)`, conjugate twiddle; in place. The backward also accumulates
   the filter-spectrum gradient over the batch.
3. `_subsequence_output_{fwd,bwd}_kernel`: the missing rows by conjugate symmetry, `Re(IDFT_M)` of every
   subsequence (that is `Re(IDFT_N)` on the positions `r + radix * m`), then the skip term and the gates.

A kernel 1 or 3 program owns one (batch row, channel) and loops over the subsequences; a kernel 2 program owns
one block of frequencies of one channel and loops over the batch. With `plan.one_launch_forward`, the forward runs the
three phases in one program per (batch row, channel), separated by barriers, so that its spectra need not leave L2.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import backend
from .plan import FFTPlan, dft_tables, radix_tables
from .tiles import (
    complex_mul,
    conj_mul,
    dft,
    dot,
    dot_precision,
    inverse_dft_real,
    load_backward_inputs,
    load_dft_tables,
    load_gated_input,
    load_rows,
    round_to_bf16,
    store_gated_output,
    store_input_grads,
    store_rows,
    strides,
)

RADIX_BLOCK = 64


@triton.jit
def _subsequence_tile(subsequence, seq_len, RADIX: tl.constexpr, TIME_ROWS: tl.constexpr, INNER: tl.constexpr):
    """Positions `subsequence + RADIX * m` of the time tile `[TIME_ROWS, INNER]` (`m = row * INNER + col`)."""
    sample = tl.arange(0, TIME_ROWS)[:, None] * INNER + tl.arange(0, INNER)[None, :]
    positions = subsequence + RADIX * sample
    return positions, positions < seq_len


@triton.jit
def _store_spectrum(ptr, value, mask):
    """Store float32 `value` in the spectra's dtype, rounding to nearest for bfloat16 (the interpreter's cast
    truncates)."""
    if ptr.dtype.element_ty == tl.bfloat16:
        value = round_to_bf16(value)
    tl.store(ptr, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_stored_rows(ptr, freq_re, freq_im, plane_stride, OUTER: tl.constexpr, INNER: tl.constexpr):
    """Write rows `k1 <= OUTER / 2` of a Monarch-order frequency tile `[OUTER, INNER]`."""
    row = tl.arange(0, OUTER)[:, None]
    offsets = row * INNER + tl.arange(0, INNER)[None, :]
    _store_spectrum(ptr + offsets, freq_re, row <= OUTER // 2)
    _store_spectrum(ptr + plane_stride + offsets, freq_im, row <= OUTER // 2)


@triton.jit
def _load_hermitian(ptr, plane_stride, OUTER: tl.constexpr, INNER: tl.constexpr):
    """The full `[OUTER, INNER]` tile of a real signal's spectrum from its stored rows.

    Frequency `k = k1 + OUTER * k2` with `k1 > OUTER / 2` is `conj(X[M - k])`, stored at
    `(OUTER - k1, INNER - 1 - k2)`.
    """
    row = tl.arange(0, OUTER)[:, None]
    col = tl.arange(0, INNER)[None, :]
    stored = row <= OUTER // 2
    offsets = tl.where(stored, row * INNER + col, (OUTER - row) * INNER + (INNER - 1 - col))
    freq_re = tl.load(ptr + offsets).to(tl.float32)
    freq_im = tl.load(ptr + plane_stride + offsets).to(tl.float32)
    return freq_re, tl.where(stored, freq_im, -freq_im)


@triton.jit
def _subsequence_dfts(
    row, channel, u_ptr, pre_gate_ptr, grad_out_ptr, post_gate_ptr, input_freq_ptr, grad_freq_ptr,
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
    channels, seq_len,
    u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, grad_stride_b, grad_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr, WITH_GRAD: tl.constexpr,
    RADIX: tl.constexpr, OUTER: tl.constexpr, INNER: tl.constexpr, TIME_ROWS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Phase 1 for one (row, channel): the stored rows of `DFT_M` of every subsequence of the gated input (and of
    the gated output gradient `WITH_GRAD`)."""
    stored: tl.constexpr = (OUTER // 2 + 1) * INNER
    spectra = (row * channels + channel) * 2 * RADIX * stored
    head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im = load_dft_tables(
        dft_outer_ptr, dft_inner_ptr, twiddle_ptr, OUTER, INNER, TIME_ROWS, INNER
    )
    for subsequence in range(RADIX):
        positions, mask = _subsequence_tile(subsequence, seq_len, RADIX, TIME_ROWS, INNER)
        gated_input = load_gated_input(
            u_ptr, pre_gate_ptr, row, channel, positions, mask, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
            HAS_PRE_GATE,
        )
        freq_re, freq_im = dft(
            gated_input, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        )
        offset = spectra + subsequence * stored
        _store_stored_rows(input_freq_ptr + offset, freq_re, freq_im, RADIX * stored, OUTER, INNER)
        if WITH_GRAD:
            gated_grad = load_rows(grad_out_ptr, row, channel, positions, mask, grad_stride_b, grad_stride_h)
            if HAS_POST_GATE:
                gated_grad *= load_rows(post_gate_ptr, row, channel, positions, mask, post_stride_b, post_stride_h)
            freq_re, freq_im = dft(
                gated_grad, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
            )
            _store_stored_rows(grad_freq_ptr + offset, freq_re, freq_im, RADIX * stored, OUTER, INNER)


@triton.jit
def _subsequence_dft_kernel(
    u_ptr, pre_gate_ptr, grad_out_ptr, post_gate_ptr, input_freq_ptr, grad_freq_ptr,
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
    channels, seq_len,
    u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, grad_stride_b, grad_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr, WITH_GRAD: tl.constexpr,
    RADIX: tl.constexpr, OUTER: tl.constexpr, INNER: tl.constexpr, TIME_ROWS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    _subsequence_dfts(
        tl.program_id(1).to(tl.int64), tl.program_id(0), u_ptr, pre_gate_ptr, grad_out_ptr, post_gate_ptr,
        input_freq_ptr, grad_freq_ptr, dft_outer_ptr, dft_inner_ptr, twiddle_ptr, channels, seq_len,
        u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, grad_stride_b, grad_stride_h, post_stride_b, post_stride_h,
        HAS_PRE_GATE, HAS_POST_GATE, WITH_GRAD, RADIX, OUTER, INNER, TIME_ROWS, PRECISION,
    )


@triton.jit
def _radix_dot(a, b, RADIX_PAD: tl.constexpr, PRECISION: tl.constexpr):
    """`a @ b` for `a` `[RADIX_PAD, RADIX_PAD]`: on tensor cores from 16 on, as float32 sums of products below."""
    if RADIX_PAD < 16:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    else:
        return dot(a, b, PRECISION)


@triton.jit
def _radix_dft(
    sub_re, sub_im, dft_re, dft_im, twiddle_re, twiddle_im, RADIX_PAD: tl.constexpr, PRECISION: tl.constexpr
):
    """`F_radix @ (twiddle * Y)`: the subsequence spectra `[RADIX, BLOCK]` to the frequencies `k + M * j`."""
    sub_re, sub_im = complex_mul(sub_re, sub_im, twiddle_re, twiddle_im)
    freq_re = _radix_dot(dft_re, sub_re, RADIX_PAD, PRECISION) - _radix_dot(dft_im, sub_im, RADIX_PAD, PRECISION)
    freq_im = _radix_dot(dft_re, sub_im, RADIX_PAD, PRECISION) + _radix_dot(dft_im, sub_re, RADIX_PAD, PRECISION)
    return freq_re, freq_im


@triton.jit
def _inverse_radix_dft(
    freq_re, freq_im, dft_re, dft_im, twiddle_re, twiddle_im, RADIX_PAD: tl.constexpr, PRECISION: tl.constexpr
):
    """`conj(twiddle) * (conj(F_radix) @ X)`, the adjoint of `_radix_dft`."""
    sub_re = _radix_dot(dft_re, freq_re, RADIX_PAD, PRECISION) + _radix_dot(dft_im, freq_im, RADIX_PAD, PRECISION)
    sub_im = _radix_dot(dft_re, freq_im, RADIX_PAD, PRECISION) - _radix_dot(dft_im, freq_re, RADIX_PAD, PRECISION)
    return conj_mul(twiddle_re, twiddle_im, sub_re, sub_im)


@triton.jit
def _radix_tiles(
    block, channel, spectrum_ptr, radix_dft_ptr, radix_twiddle_ptr,
    RADIX: tl.constexpr, RADIX_PAD: tl.constexpr, OUTER: tl.constexpr, INNER: tl.constexpr, BLOCK: tl.constexpr,
):
    """Offsets and mask of the `[RADIX_PAD, BLOCK]` tile of frequency block `block` in one row's spectra, the offsets
    of the same tile in the channel's filter spectrum, `F_radix` (zero-padded) and the tile's twiddles and filter."""
    stored: tl.constexpr = (OUTER // 2 + 1) * INNER
    plane: tl.constexpr = RADIX * stored
    subsequence = tl.arange(0, RADIX_PAD)[:, None]
    frequency = block * BLOCK + tl.arange(0, BLOCK)[None, :]
    mask = (subsequence < RADIX) & (frequency < stored)
    offsets = subsequence * stored + frequency
    dft_offsets = subsequence * RADIX + tl.arange(0, RADIX_PAD)[None, :]
    dft_mask = (subsequence < RADIX) & (tl.arange(0, RADIX_PAD)[None, :] < RADIX)
    dft_re = tl.load(radix_dft_ptr + dft_offsets, mask=dft_mask, other=0.0)
    dft_im = tl.load(radix_dft_ptr + RADIX * RADIX + dft_offsets, mask=dft_mask, other=0.0)
    twiddle_re = tl.load(radix_twiddle_ptr + offsets, mask=mask, other=0.0)
    twiddle_im = tl.load(radix_twiddle_ptr + plane + offsets, mask=mask, other=0.0)
    spectrum_offsets = channel.to(tl.int64) * 2 * plane + offsets
    spectrum_re = tl.load(spectrum_ptr + spectrum_offsets, mask=mask, other=0.0)
    spectrum_im = tl.load(spectrum_ptr + plane + spectrum_offsets, mask=mask, other=0.0)
    return offsets, mask, spectrum_offsets, dft_re, dft_im, twiddle_re, twiddle_im, spectrum_re, spectrum_im


@triton.jit
def _radix_convolve(
    ptr, mask, plane, dft_re, dft_im, twiddle_re, twiddle_im, spectrum_re, spectrum_im,
    RADIX_PAD: tl.constexpr, PRECISION: tl.constexpr,
):
    """In place on one row's tile at `ptr`: the gated input's subsequence spectra become the convolution's."""
    freq_re = tl.load(ptr, mask=mask, other=0.0).to(tl.float32)
    freq_im = tl.load(ptr + plane, mask=mask, other=0.0).to(tl.float32)
    freq_re, freq_im = _radix_dft(freq_re, freq_im, dft_re, dft_im, twiddle_re, twiddle_im, RADIX_PAD, PRECISION)
    freq_re, freq_im = complex_mul(freq_re, freq_im, spectrum_re, spectrum_im)
    freq_re, freq_im = _inverse_radix_dft(
        freq_re, freq_im, dft_re, dft_im, twiddle_re, twiddle_im, RADIX_PAD, PRECISION
    )
    _store_spectrum(ptr, freq_re, mask)
    _store_spectrum(ptr + plane, freq_im, mask)


@triton.jit
def _radix_kernel(
    input_freq_ptr, grad_freq_ptr, spectrum_ptr, grad_spectrum_ptr, radix_dft_ptr, radix_twiddle_ptr,
    batch, channels,
    BACKWARD: tl.constexpr, HAS_POST_GATE: tl.constexpr,
    RADIX: tl.constexpr, RADIX_PAD: tl.constexpr, OUTER: tl.constexpr, INNER: tl.constexpr,
    BLOCK: tl.constexpr, PRECISION: tl.constexpr,
):
    block = tl.program_id(0)
    channel = tl.program_id(1)
    stored: tl.constexpr = (OUTER // 2 + 1) * INNER
    plane: tl.constexpr = RADIX * stored
    frequency = block * BLOCK + tl.arange(0, BLOCK)[None, :]
    offsets, mask, spectrum_offsets, dft_re, dft_im, twiddle_re, twiddle_im, spectrum_re, spectrum_im = _radix_tiles(
        block, channel, spectrum_ptr, radix_dft_ptr, radix_twiddle_ptr, RADIX, RADIX_PAD, OUTER, INNER, BLOCK
    )
    if BACKWARD:
        grad_spectrum_re = tl.zeros((RADIX_PAD, BLOCK), dtype=tl.float32)
        grad_spectrum_im = tl.zeros((RADIX_PAD, BLOCK), dtype=tl.float32)
    for row in range(batch):
        data = (row * channels + channel).to(tl.int64) * 2 * plane + offsets
        if BACKWARD:
            input_re = tl.load(input_freq_ptr + data, mask=mask, other=0.0).to(tl.float32)
            input_im = tl.load(input_freq_ptr + plane + data, mask=mask, other=0.0).to(tl.float32)
            input_re, input_im = _radix_dft(
                input_re, input_im, dft_re, dft_im, twiddle_re, twiddle_im, RADIX_PAD, PRECISION
            )
            grad_re = tl.load(grad_freq_ptr + data, mask=mask, other=0.0).to(tl.float32)
            grad_im = tl.load(grad_freq_ptr + plane + data, mask=mask, other=0.0).to(tl.float32)
            grad_re, grad_im = _radix_dft(
                grad_re, grad_im, dft_re, dft_im, twiddle_re, twiddle_im, RADIX_PAD, PRECISION
            )
            product_re, product_im = conj_mul(input_re, input_im, grad_re, grad_im)
            grad_spectrum_re += product_re
            grad_spectrum_im += product_im
            # correlation with the kernel: conj(K) * DFT(gated_grad), back to the subsequences
            corr_re, corr_im = conj_mul(spectrum_re, spectrum_im, grad_re, grad_im)
            corr_re, corr_im = _inverse_radix_dft(
                corr_re, corr_im, dft_re, dft_im, twiddle_re, twiddle_im, RADIX_PAD, PRECISION
            )
            _store_spectrum(grad_freq_ptr + data, corr_re, mask)
            _store_spectrum(grad_freq_ptr + plane + data, corr_im, mask)
            if HAS_POST_GATE:
                conv_re, conv_im = complex_mul(input_re, input_im, spectrum_re, spectrum_im)
                conv_re, conv_im = _inverse_radix_dft(
                    conv_re, conv_im, dft_re, dft_im, twiddle_re, twiddle_im, RADIX_PAD, PRECISION
                )
                _store_spectrum(input_freq_ptr + data, conv_re, mask)
                _store_spectrum(input_freq_ptr + plane + data, conv_im, mask)
        else:
            _radix_convolve(
                input_freq_ptr + data, mask, plane, dft_re, dft_im, twiddle_re, twiddle_im, spectrum_re, spectrum_im,
                RADIX_PAD, PRECISION,
            )

    if BACKWARD:
        # a stored frequency of rows 0 < k1 < OUTER / 2 also stands for its unstored conjugate partner
        monarch_row = frequency // INNER
        weight = tl.where((monarch_row == 0) | (monarch_row == OUTER // 2), 1.0, 2.0)
        tl.store(grad_spectrum_ptr + spectrum_offsets, grad_spectrum_re * weight, mask=mask)
        tl.store(grad_spectrum_ptr + plane + spectrum_offsets, grad_spectrum_im * weight, mask=mask)


@triton.jit
def _subsequence_outputs(
    row, channel, conv_freq_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, skip_ptr, out_ptr,
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
    channels, seq_len,
    u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr,
    RADIX: tl.constexpr, OUTER: tl.constexpr, INNER: tl.constexpr, TIME_ROWS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Phase 3 of the forward for one (row, channel): `Re(IDFT_M)` of the convolution's subsequence spectra, the
    skip term and the gates."""
    stored: tl.constexpr = (OUTER // 2 + 1) * INNER
    spectra = (row * channels + channel) * 2 * RADIX * stored
    head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im = load_dft_tables(
        dft_outer_ptr, dft_inner_ptr, twiddle_ptr, OUTER, INNER, TIME_ROWS, INNER
    )
    skip = tl.load(skip_ptr + channel).to(tl.float32)
    for subsequence in range(RADIX):
        freq_re, freq_im = _load_hermitian(conv_freq_ptr + spectra + subsequence * stored, RADIX * stored, OUTER, INNER)
        conv = inverse_dft_real(
            freq_re, freq_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        )
        positions, mask = _subsequence_tile(subsequence, seq_len, RADIX, TIME_ROWS, INNER)
        gated_input = load_gated_input(
            u_ptr, pre_gate_ptr, row, channel, positions, mask, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
            HAS_PRE_GATE,
        )
        store_gated_output(
            out_ptr, post_gate_ptr, conv, skip, gated_input, row, channel, positions, mask, channels, seq_len,
            post_stride_b, post_stride_h, HAS_POST_GATE,
        )


@triton.jit
def _subsequence_output_fwd_kernel(
    conv_freq_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, skip_ptr, out_ptr,
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
    channels, seq_len,
    u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr,
    RADIX: tl.constexpr, OUTER: tl.constexpr, INNER: tl.constexpr, TIME_ROWS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    _subsequence_outputs(
        tl.program_id(1).to(tl.int64), tl.program_id(0), conv_freq_ptr, u_ptr, pre_gate_ptr, post_gate_ptr,
        skip_ptr, out_ptr, dft_outer_ptr, dft_inner_ptr, twiddle_ptr, channels, seq_len,
        u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
        HAS_PRE_GATE, HAS_POST_GATE, RADIX, OUTER, INNER, TIME_ROWS, PRECISION,
    )


@triton.jit
def _gated_long_conv_radix_fwd_kernel(
    u_ptr, pre_gate_ptr, post_gate_ptr, spectrum_ptr, skip_ptr, out_ptr, spectra_ptr,
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr, radix_dft_ptr, radix_twiddle_ptr,
    channels, seq_len,
    u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr,
    RADIX: tl.constexpr, RADIX_PAD: tl.constexpr, OUTER: tl.constexpr, INNER: tl.constexpr,
    TIME_ROWS: tl.constexpr, BLOCK: tl.constexpr, PRECISION: tl.constexpr,
):
    """The whole forward of one (row, channel) in one program: the three phases of the three-launch forward,
    separated by barriers, through this row's spectra (small enough to stay in L2 between the phases)."""
    channel = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    stored: tl.constexpr = (OUTER // 2 + 1) * INNER
    plane: tl.constexpr = RADIX * stored
    _subsequence_dfts(
        row, channel, u_ptr, pre_gate_ptr, None, None, spectra_ptr, None, dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
        channels, seq_len, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, 0, 0, 0, 0,
        HAS_PRE_GATE, False, False, RADIX, OUTER, INNER, TIME_ROWS, PRECISION,
    )
    tl.debug_barrier()
    row_spectra = spectra_ptr + (row * channels + channel) * 2 * plane
    for block in range(tl.cdiv(stored, BLOCK)):
        offsets, mask, _, dft_re, dft_im, twiddle_re, twiddle_im, spectrum_re, spectrum_im = _radix_tiles(
            block, channel, spectrum_ptr, radix_dft_ptr, radix_twiddle_ptr, RADIX, RADIX_PAD, OUTER, INNER, BLOCK
        )
        _radix_convolve(
            row_spectra + offsets, mask, plane, dft_re, dft_im, twiddle_re, twiddle_im, spectrum_re, spectrum_im,
            RADIX_PAD, PRECISION,
        )
    tl.debug_barrier()
    _subsequence_outputs(
        row, channel, spectra_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, skip_ptr, out_ptr,
        dft_outer_ptr, dft_inner_ptr, twiddle_ptr, channels, seq_len,
        u_stride_b, u_stride_h, pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
        HAS_PRE_GATE, HAS_POST_GATE, RADIX, OUTER, INNER, TIME_ROWS, PRECISION,
    )


@triton.jit
def _subsequence_output_bwd_kernel(
    corr_freq_ptr, conv_freq_ptr, grad_out_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, skip_ptr,
    grad_u_ptr, grad_pre_gate_ptr, grad_post_gate_ptr, grad_skip_partial_ptr,
    dft_outer_ptr, dft_inner_ptr, twiddle_ptr,
    channels, seq_len,
    grad_stride_b, grad_stride_h, u_stride_b, u_stride_h,
    pre_stride_b, pre_stride_h, post_stride_b, post_stride_h,
    HAS_PRE_GATE: tl.constexpr, HAS_POST_GATE: tl.constexpr,
    RADIX: tl.constexpr, OUTER: tl.constexpr, INNER: tl.constexpr, TIME_ROWS: tl.constexpr,
    PRECISION: tl.constexpr,
):
    channel = tl.program_id(0)
    row = tl.program_id(1).to(tl.int64)
    stored: tl.constexpr = (OUTER // 2 + 1) * INNER
    spectra = (row * channels + channel) * 2 * RADIX * stored
    out_stride_b = seq_len * channels
    head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im = load_dft_tables(
        dft_outer_ptr, dft_inner_ptr, twiddle_ptr, OUTER, INNER, TIME_ROWS, INNER
    )
    skip = tl.load(skip_ptr + channel).to(tl.float32)
    grad_skip = tl.zeros((TIME_ROWS, INNER), dtype=tl.float32)
    for subsequence in range(RADIX):
        positions, mask = _subsequence_tile(subsequence, seq_len, RADIX, TIME_ROWS, INNER)
        grad_out, u, pre_gate, gated_input, gated_grad = load_backward_inputs(
            grad_out_ptr, u_ptr, pre_gate_ptr, post_gate_ptr, row, channel, positions, mask,
            grad_stride_b, grad_stride_h, u_stride_b, u_stride_h, pre_stride_b, pre_stride_h,
            post_stride_b, post_stride_h, HAS_PRE_GATE, HAS_POST_GATE,
        )
        grad_skip += gated_grad * gated_input

        offset = spectra + subsequence * stored
        freq_re, freq_im = _load_hermitian(corr_freq_ptr + offset, RADIX * stored, OUTER, INNER)
        grad_gated = inverse_dft_real(
            freq_re, freq_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
        ) + skip * gated_grad
        store_input_grads(
            grad_u_ptr, grad_pre_gate_ptr, grad_gated, u, pre_gate, row, channel, positions, mask,
            out_stride_b, seq_len, HAS_PRE_GATE,
        )
        if HAS_POST_GATE:
            freq_re, freq_im = _load_hermitian(conv_freq_ptr + offset, RADIX * stored, OUTER, INNER)
            conv = inverse_dft_real(
                freq_re, freq_im, head_re, head_im, inner_re, inner_im, twiddle_re, twiddle_im, OUTER, PRECISION
            )
            grad_post_gate = grad_out * (conv + skip * gated_input)
            store_rows(grad_post_gate_ptr, grad_post_gate, row, channel, positions, mask, out_stride_b, seq_len)
    tl.store(grad_skip_partial_ptr + row * channels + channel, tl.sum(grad_skip))


def _subsequence_meta(plan: FFTPlan, u: torch.Tensor, pre_gate, post_gate) -> dict:
    return dict(
        HAS_PRE_GATE=pre_gate is not None,
        HAS_POST_GATE=post_gate is not None,
        RADIX=plan.radix,
        OUTER=plan.outer,
        INNER=plan.inner,
        TIME_ROWS=plan.time_rows,
        PRECISION=dot_precision(u.dtype),
        num_warps=8,
        num_stages=1,  # the loop over subsequences needs no multi-buffered loads
    )


def _radix_step(plan: FFTPlan, input_freq, grad_freq, spectrum, grad_spectrum, batch, channels, post_gate, dtype):
    radix_dft, radix_twiddle = radix_tables(plan.radix, plan.outer, plan.inner, spectrum.device)
    grid = (triton.cdiv(plan.stored_rows * plan.inner, RADIX_BLOCK), channels)
    _radix_kernel[grid](
        input_freq, grad_freq, spectrum, grad_spectrum, radix_dft, radix_twiddle, batch, channels,
        BACKWARD=grad_freq is not None, HAS_POST_GATE=post_gate is not None,
        RADIX=plan.radix, RADIX_PAD=plan.radix_rows, OUTER=plan.outer, INNER=plan.inner,
        BLOCK=RADIX_BLOCK, PRECISION=dot_precision(dtype), num_warps=8, num_stages=1,
    )


def _new_spectra(plan: FFTPlan, u: torch.Tensor) -> torch.Tensor:
    """Subsequence spectra `[B, H, 2, radix, stored]`, written by `_subsequence_dft_kernel`: bfloat16 for bfloat16
    inputs (half the traffic between the launches; the products round these values to bfloat16 in any case),
    float32 otherwise (float16's range is too small for long spectra)."""
    batch, channels, _ = u.shape
    dtype = torch.bfloat16 if u.dtype == torch.bfloat16 else torch.float32
    return backend.new_buffer((batch, channels, 2, plan.radix, plan.stored_rows * plan.inner), dtype, u.device)


def gated_long_conv_fwd_radix(
    u: torch.Tensor,
    spectrum: torch.Tensor,
    skip: torch.Tensor,
    pre_gate: torch.Tensor | None,
    post_gate: torch.Tensor | None,
    plan: FFTPlan,
) -> torch.Tensor:
    """Forward for plans with `radix > 1`; arguments and result as `gated_long_conv_fwd_triton`."""
    batch, channels, seq_len = u.shape
    out = backend.new_buffer(u.shape, u.dtype, u.device)
    spectra = _new_spectra(plan, u)
    tables = dft_tables(plan.outer, plan.inner, u.device)
    meta = _subsequence_meta(plan, u, pre_gate, post_gate)
    if plan.one_launch_forward:
        _gated_long_conv_radix_fwd_kernel[(channels, batch)](
            u, pre_gate, post_gate, spectrum, skip, out, spectra, *tables,
            *radix_tables(plan.radix, plan.outer, plan.inner, u.device), channels, seq_len,
            *strides(u), *strides(pre_gate), *strides(post_gate),
            RADIX_PAD=plan.radix_rows, BLOCK=RADIX_BLOCK, **meta,
        )
        return out
    _subsequence_dft_kernel[(channels, batch)](
        u, pre_gate, None, None, spectra, None, *tables, channels, seq_len,
        *strides(u), *strides(pre_gate), 0, 0, 0, 0, WITH_GRAD=False, **meta,
    )
    _radix_step(plan, spectra, None, spectrum, None, batch, channels, post_gate, u.dtype)
    _subsequence_output_fwd_kernel[(channels, batch)](
        spectra, u, pre_gate, post_gate, skip, out, *tables, channels, seq_len,
        *strides(u), *strides(pre_gate), *strides(post_gate), **meta,
    )
    return out


def gated_long_conv_bwd_radix(
    grad_out: torch.Tensor,
    u: torch.Tensor,
    spectrum: torch.Tensor,
    skip: torch.Tensor,
    pre_gate: torch.Tensor | None,
    post_gate: torch.Tensor | None,
    plan: FFTPlan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Backward for plans with `radix > 1`; arguments and results as `gated_long_conv_bwd_triton`."""
    batch, channels, seq_len = u.shape
    grad_u = backend.new_buffer(u.shape, u.dtype, u.device)
    grad_pre_gate = None if pre_gate is None else backend.new_buffer(pre_gate.shape, pre_gate.dtype, u.device)
    grad_post_gate = None if post_gate is None else backend.new_buffer(post_gate.shape, post_gate.dtype, u.device)
    grad_spectrum = backend.new_buffer(spectrum.shape, torch.float32, u.device)
    grad_skip_partial = backend.new_buffer((batch, channels), torch.float32, u.device)
    input_spectra = _new_spectra(plan, u)
    grad_spectra = _new_spectra(plan, u)
    tables = dft_tables(plan.outer, plan.inner, u.device)
    meta = _subsequence_meta(plan, u, pre_gate, post_gate)
    _subsequence_dft_kernel[(channels, batch)](
        u, pre_gate, grad_out, post_gate, input_spectra, grad_spectra, *tables, channels, seq_len,
        *strides(u), *strides(pre_gate), *strides(grad_out), *strides(post_gate), WITH_GRAD=True, **meta,
    )
    # in place: grad_spectra becomes the correlation with the kernel, input_spectra the convolution
    _radix_step(plan, input_spectra, grad_spectra, spectrum, grad_spectrum, batch, channels, post_gate, u.dtype)
    _subsequence_output_bwd_kernel[(channels, batch)](
        grad_spectra, input_spectra, grad_out, u, pre_gate, post_gate, skip,
        grad_u, grad_pre_gate, grad_post_gate, grad_skip_partial, *tables, channels, seq_len,
        *strides(grad_out), *strides(u), *strides(pre_gate), *strides(post_gate), **meta,
    )
    return grad_u, grad_spectrum, grad_skip_partial.sum(0).to(skip.dtype), grad_pre_gate, grad_post_gate

"""Pure-PyTorch FFT long convolution (M2-BERT's gated long conv, bidirectional or causal)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import may_overwrite_intermediates


def long_conv_kernel(forward_filter: torch.Tensor, reverse_filter: torch.Tensor | None) -> torch.Tensor:
    """Build the time-domain kernel of a long convolution over `L` positions.

    Args:
        forward_filter: `[H, L]`, the taps on the current and earlier positions (`k_fwd[m]` weighs `s[n - m]`).
        reverse_filter: `[H, L]` or None; `k_rev[j]` weighs the later position `s[n + 1 + j]`.

    Returns:
        `[H, L]` (causal) or `[H, 2L]`: `[k_fwd[0..L-1], k_rev[L-1], ..., k_rev[0]]`, whose length-`2L` circular
        convolution restricted to the first `L` outputs is the bidirectional convolution.
    """
    if reverse_filter is None:
        return forward_filter
    seq_len = forward_filter.shape[-1]
    return F.pad(forward_filter, (0, seq_len)) + F.pad(reverse_filter.flip(-1), (seq_len, 0))


def long_conv_spectrum(kernel: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Real FFT of a long-convolution kernel at FFT size `2 * seq_len`, scaled by `1 / (2 * seq_len)`.

    Inputs are float32 (or float64 for gradient checks); the spectrum is complex.
    """
    fft_size = 2 * seq_len
    return torch.fft.rfft(kernel, n=fft_size) / fft_size


def fft_long_conv_reference(u: torch.Tensor, spectrum: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Long convolution of every channel plus a skip term: `y = conv(u, k) + skip * u`.

    Args:
        u: `[B, H, L]` in any floating dtype; the FFTs run in the spectrum's precision.
        spectrum: `[H, L + 1]` complex, from `long_conv_spectrum(kernel, L)`.
        skip: `[H]`, the per-channel skip weight `D`.

    Returns:
        `[B, H, L]` in the dtype of `u`.
    """
    seq_len = u.shape[-1]
    fft_size = 2 * seq_len
    real_dtype = spectrum.real.dtype
    # In inference the spectrum product and the skip term are written into the FFTs' own outputs.
    in_place = may_overwrite_intermediates(u, spectrum, skip)
    signal = u.to(real_dtype)
    u_f = torch.fft.rfft(signal, n=fft_size)
    product = u_f.mul_(spectrum) if in_place else u_f * spectrum
    y = torch.fft.irfft(product, n=fft_size, norm="forward")[..., :seq_len]
    skip_term = (signal, skip.to(real_dtype)[:, None])
    y = y.addcmul_(*skip_term) if in_place else torch.addcmul(y, *skip_term)
    return y.to(u.dtype)


def gated_long_conv_reference(
    u: torch.Tensor,
    spectrum: torch.Tensor,
    skip: torch.Tensor,
    pre_gate: torch.Tensor | None = None,
    post_gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gated long convolution: `y = post_gate * (conv(u * pre_gate, k) + skip * (u * pre_gate))`.

    Args:
        u: `[B, H, L]` in any floating dtype.
        spectrum: `[H, L + 1]` complex, from `long_conv_spectrum(kernel, L)`.
        skip: `[H]`.
        pre_gate, post_gate: broadcastable to `u`, or None for no gate.

    Returns:
        `[B, H, L]` in the dtype of `u`; the products, FFTs and skip term run in the spectrum's real precision.
    """
    real_dtype = spectrum.real.dtype
    gated_input = u.to(real_dtype)
    if pre_gate is not None:
        gated_input = gated_input * pre_gate.to(real_dtype)
    out = fft_long_conv_reference(gated_input, spectrum, skip)
    if post_gate is not None:
        # the gate first: the product takes its memory layout (the mixer's [B, L, H], read by out_proj in place)
        out = post_gate.to(real_dtype) * out
    return out.to(u.dtype)


def kernel_spectrum_layout_reference(u: torch.Tensor, backend: str = "auto") -> None:
    """The spectrum layout a call consumes: always the complex one (None) on the pure-PyTorch path
    (`fused.kernel_spectrum_layout` dispatches)."""
    return None

"""Pure-PyTorch causal depthwise convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_depthwise_conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Causal depthwise convolution along the last axis.

    `y[c, t] = bias[c] + sum_j weight[c, 0, j] * x[c, t - (K - 1) + j]`, with `x = 0` before the start.

    Args:
        x: `[B, C, L]`.
        weight: `[C, 1, K]` (an `nn.Conv1d(C, C, K, groups=C)` weight).
        bias: `[C]` or None.
    """
    kernel_size = weight.shape[-1]
    return F.conv1d(x, weight, bias, padding=kernel_size - 1, groups=x.shape[1])[..., : x.shape[-1]]


def mixer_front_reference(
    projected: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The sequence mixer's front: masked short conv of the in-projection, split and pre-gating.

    Args:
        projected: `[B, L, 3H]`, the in-projection's output.
        weight: `[3H, 1, K]`, the depthwise short-conv weight; bias: `[3H]`.
        padding_mask: `[B, L]` or `[B, 1, L]` (1 = real token), or None.

    Returns:
        `(gated_value, post_gate)`, both `[B, H, L]`: with `xs = conv(projected^T * mask)` split into
        `pre_gate, post_gate, value`, `gated_value = value * pre_gate * mask`. Both are transposed views of
        `[B, L, H]` tensors (the long convolution's FFTs read them in place).
    """
    batch, length, channels = projected.shape
    # In the input's [B, L, 3H] layout: the conv is K shifted multiply-adds along L, with no transpose copy.
    x = projected
    mask = None if padding_mask is None else padding_mask.reshape(batch, length, 1).to(x.dtype)
    if mask is not None:
        x = x * mask
    taps = weight[:, 0].to(x.dtype)  # [3H, K]; taps[:, K - 1] weighs the current position
    kernel_size = taps.shape[-1]
    conv = torch.addcmul(bias.to(x.dtype), x, taps[:, kernel_size - 1])
    for shift in range(1, min(kernel_size, length)):
        conv[:, shift:].addcmul_(x[:, :-shift], taps[:, kernel_size - 1 - shift])
    pre_gate, post_gate, value = conv.split(channels // 3, dim=-1)
    gated_value = value * pre_gate
    if mask is not None:
        gated_value = gated_value * mask
    return gated_value.transpose(1, 2), post_gate.transpose(1, 2)

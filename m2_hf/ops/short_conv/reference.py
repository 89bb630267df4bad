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

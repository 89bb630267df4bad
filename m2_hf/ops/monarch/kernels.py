"""Order-2 Monarch multiply `M = P L P^T R` as two launches of the strided block-diagonal kernel.

With `x` `[rows, k * p]`, `R` `[k, q, p]` and `L` `[q, s, k]`, the intermediate `mixed[m, j * k + i]` holds output
`j` of `R` block `i` (that index order *is* `P^T`), and output `a` of `L` block `j` lands at `out[m, a * q + j]`
(that index order is `P`). Only strides differ between the launches; nothing is copied or permuted.
"""

from __future__ import annotations

import torch

from .. import backend
from ..blockdiag.kernels import Layout, WeightLayout, as_rows, blockdiag_matmul_strided, blockdiag_weight_grad_strided


def _mix_right(x2d: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """`mixed[m, j * k + i] = sum_c R[i, j, c] x[m, i * p + c]` (`R`, then `P^T`)."""
    k, q, p = right.shape
    mixed = backend.new_buffer((x2d.shape[0], q * k), x2d.dtype, x2d.device)
    blockdiag_matmul_strided(
        x2d, Layout(x2d.stride(0), p, 1),
        right, WeightLayout(q * p, p, 1),
        mixed, Layout(q * k, 1, k),
        x2d.shape[0], k, q, p,
    )  # fmt: skip
    return mixed


def monarch_forward(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """`out[..., a * q + j] = sum_i L[j, a, i] sum_c R[i, j, c] x[..., i * p + c]`."""
    k, q, _ = right.shape
    s = left.shape[1]
    right, left = right.contiguous(), left.contiguous()
    x2d = as_rows(x)
    rows = x2d.shape[0]
    mixed = _mix_right(x2d, right)
    out = backend.new_buffer((rows, s * q), x.dtype, x.device)
    blockdiag_matmul_strided(
        mixed, Layout(q * k, k, 1),
        left, WeightLayout(s * k, k, 1),
        out, Layout(s * q, 1, q),
        rows, q, s, k,
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], s * q)


def monarch_backward(
    grad_out: torch.Tensor, x: torch.Tensor, right: torch.Tensor, left: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(grad_x, grad_right, grad_left)`; the intermediate is recomputed (one launch) rather than stored."""
    k, q, p = right.shape
    s = left.shape[1]
    right, left = right.contiguous(), left.contiguous()
    x2d = as_rows(x)
    grad2d = as_rows(grad_out)
    rows = x2d.shape[0]
    mixed = _mix_right(x2d, right)
    grad_layout = Layout(grad2d.stride(0), 1, q)  # block j, feature a at a * q + j
    mixed_layout = Layout(q * k, k, 1)  # block j, feature i at j * k + i

    grad_left = backend.new_buffer(left.shape, left.dtype, left.device)
    blockdiag_weight_grad_strided(
        grad2d, grad_layout, mixed, mixed_layout, grad_left, WeightLayout(s * k, k, 1), rows, q, s, k
    )
    # grad_mixed[m, j * k + i] = sum_a L[j, a, i] grad_out[m, a * q + j]
    grad_mixed = backend.new_buffer((rows, q * k), x.dtype, x.device)
    blockdiag_matmul_strided(
        grad2d, grad_layout, left, WeightLayout(s * k, 1, k), grad_mixed, mixed_layout, rows, q, k, s
    )

    by_right_block = Layout(q * k, 1, k)  # grad_mixed seen as block i, feature j
    grad_right = backend.new_buffer(right.shape, right.dtype, right.device)
    blockdiag_weight_grad_strided(
        grad_mixed, by_right_block,
        x2d, Layout(x2d.stride(0), p, 1),
        grad_right, WeightLayout(q * p, p, 1),
        rows, k, q, p,
    )  # fmt: skip
    # grad_x[m, i * p + c] = sum_j R[i, j, c] grad_mixed[m, j * k + i]
    grad_x = backend.new_buffer((rows, k * p), x.dtype, x.device)
    blockdiag_matmul_strided(
        grad_mixed, by_right_block, right, WeightLayout(q * p, 1, p), grad_x, Layout(k * p, p, 1), rows, k, p, q
    )
    return grad_x.reshape(x.shape), grad_right, grad_left

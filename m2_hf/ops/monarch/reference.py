"""Pure-PyTorch order-2 Monarch matrix multiply `M = P L P^T R`."""

from __future__ import annotations

import torch


def check_monarch_shapes(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor) -> None:
    """Raise unless `right` is `[k, q, p]`, `left` is `[q, s, k]` and `x` has `k * p` features."""
    k, q, p = right.shape
    if left.shape[0] != q or left.shape[2] != k:
        raise ValueError(
            f"monarch_matmul: left blocks {tuple(left.shape)} do not fit right blocks {tuple(right.shape)}; "
            f"left must be ({q}, s, {k})."
        )
    if x.shape[-1] != k * p:
        raise ValueError(f"monarch_matmul: input has {x.shape[-1]} features, the matrix expects {k} x {p}.")


def monarch_matmul_reference(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Multiply the last axis of `x` by the Monarch matrix `M = P L P^T R`.

    `R` is block-diagonal with `k` blocks of shape `(q, p)`; `P^T` regroups its output so that block `j` of the
    block-diagonal `L` (`q` blocks of shape `(s, k)`) sees feature `j` of every `R` block; `P` interleaves the
    result. With `k = q = s = p = sqrt(n)` this is the square Monarch matrix of Dao et al. (2022).

    Args:
        x: `[..., k * p]`.
        right: `[k, q, p]`, the blocks of `R`.
        left: `[q, s, k]`, the blocks of `L`.

    Returns:
        `[..., s * q]`: `out[..., a * q + j] = sum_i L[j, a, i] sum_c R[i, j, c] x[..., i * p + c]`.
    """
    check_monarch_shapes(x, right, left)
    k, q, p = right.shape
    s = left.shape[1]
    x_blocks = x.reshape(*x.shape[:-1], k, p)
    mixed = torch.einsum("...ic,ijc->...ji", x_blocks, right)  # R, then P^T: [..., q, k]
    out = torch.einsum("...ji,jai->...aj", mixed, left)  # L, then P: [..., s, q]
    return out.reshape(*x.shape[:-1], s * q)

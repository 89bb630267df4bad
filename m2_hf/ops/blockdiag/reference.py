"""Pure-PyTorch block-diagonal (single-factor Monarch) matrix multiply."""

from __future__ import annotations

import torch


def blockdiag_matmul_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Multiply the last axis of `x` by a block-diagonal matrix.

    Args:
        x: `[..., nblocks * in_block]`; chunk `b` of the last axis meets block `b` only.
        weight: `[nblocks, out_block, in_block]`.

    Returns:
        `[..., nblocks * out_block]`, i.e. `y_b = W_b @ x_b` for each contiguous chunk `b`.
    """
    nblocks, out_block, in_block = weight.shape
    if x.shape[-1] != nblocks * in_block:
        raise ValueError(
            f"blockdiag_matmul: input has {x.shape[-1]} features, the weight expects {nblocks} x {in_block}."
        )
    x_blocks = x.reshape(*x.shape[:-1], nblocks, in_block)
    y_blocks = torch.einsum("...bi,boi->...bo", x_blocks, weight)
    return y_blocks.reshape(*x.shape[:-1], nblocks * out_block)

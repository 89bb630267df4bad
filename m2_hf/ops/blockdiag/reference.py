"""Pure-PyTorch block-diagonal (single-factor Monarch) matrix multiply, plain and with a GLU epilogue."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backend import may_overwrite_intermediates

GLU_ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu}
# transformers' activation names (`config.hidden_act`) that `blockdiag_glu` computes, by its name for them.
GLU_ACTIVATION_NAMES = {"gelu": "gelu", "silu": "silu", "swish": "silu"}


def glu_activation(hidden_act: str) -> str | None:
    """`blockdiag_glu`'s name for the activation transformers calls `hidden_act`, or None if it has none."""
    return GLU_ACTIVATION_NAMES.get(hidden_act)


def check_blockdiag_shapes(x: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise if the last axis of `x` does not hold `nblocks * in_block` features."""
    nblocks, _, in_block = weight.shape
    if x.shape[-1] != nblocks * in_block:
        raise ValueError(
            f"blockdiag_matmul: input has {x.shape[-1]} features, the weight expects {nblocks} x {in_block}."
        )


def blockdiag_matmul_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multiply the last axis of `x` by a block-diagonal matrix.

    Args:
        x: `[..., nblocks * in_block]`; chunk `b` of the last axis meets block `b` only.
        weight: `[nblocks, out_block, in_block]`.
        bias: `[nblocks * out_block]` or None.

    Returns:
        `[..., nblocks * out_block]`, i.e. `y_b = W_b @ x_b (+ bias_b)` for each contiguous chunk `b`.
    """
    check_blockdiag_shapes(x, weight)
    nblocks, out_block, in_block = weight.shape
    if _takes_per_block_form(x, weight, bias):
        return _blockdiag_matmul_per_block(x, weight.to(x.dtype), bias)
    x_blocks = x.reshape(*x.shape[:-1], nblocks, in_block)
    y_blocks = torch.einsum("...bi,boi->...bo", x_blocks, weight)
    y = y_blocks.reshape(*x.shape[:-1], nblocks * out_block)
    return y if bias is None else y + bias


def _takes_per_block_form(x: torch.Tensor, *parameters: torch.Tensor | None) -> bool:
    """Whether the inference forms apply: no autograd, and no autocast (their `out=` matmuls run in `x.dtype`)."""
    return may_overwrite_intermediates(x, *parameters) and not torch.is_autocast_enabled(x.device.type)


def _blockdiag_matmul_per_block(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Inference form of `blockdiag_matmul_reference`: one matmul per block (faster than a `bmm` over a few blocks on
    CPU), each writing its columns of the output with the bias added, `[..., nblocks * out_block]`."""
    nblocks, out_block, in_block = weight.shape
    rows = x.reshape(-1, nblocks * in_block)
    output = rows.new_empty(rows.shape[0], nblocks * out_block)
    for block in range(nblocks):
        inputs = rows[:, block * in_block : (block + 1) * in_block]
        columns = slice(block * out_block, (block + 1) * out_block)
        if bias is None:
            torch.mm(inputs, weight[block].t(), out=output[:, columns])
        else:
            torch.addmm(bias[columns].to(x.dtype), inputs, weight[block].t(), out=output[:, columns])
    return output.view(*x.shape[:-1], nblocks * out_block)


def blockdiag_glu_reference(x: torch.Tensor, weight: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """`act(gate) * value`, where `[gate, value]` are the first and second halves of `blockdiag_matmul(x, W)`.

    With more than one block the gate and the value come from different blocks (e.g. blocks 0-1 and 2-3 of 4).
    `activation` is `"gelu"` (exact, erf-based) or `"silu"`.
    """
    if activation not in GLU_ACTIVATIONS:
        raise ValueError(f"blockdiag_glu: activation must be one of {tuple(GLU_ACTIVATIONS)}, got {activation!r}.")
    act = GLU_ACTIVATIONS[activation]
    check_blockdiag_shapes(x, weight)
    if _takes_per_block_form(x, weight):
        return _blockdiag_glu_in_place(x, weight.to(x.dtype), act)
    nblocks, out_block, in_block = weight.shape
    if nblocks % 2:  # the halves split a block
        gate, value = blockdiag_matmul_reference(x, weight).chunk(2, dim=-1)
        return act(gate) * value
    # Gate block b pairs with value block b + nblocks / 2: one batched matmul over the blocks ([nblocks, N, out]),
    # then the product per pair.
    rows = x.reshape(-1, nblocks, in_block).transpose(0, 1)
    projected = torch.bmm(rows, weight.transpose(1, 2).to(rows.dtype))
    half = nblocks // 2
    shape = (*x.shape[:-1], half * out_block)
    return (act(projected[:half]) * projected[half:]).transpose(0, 1).contiguous().view(shape)


def _blockdiag_glu_in_place(x: torch.Tensor, weight: torch.Tensor, act) -> torch.Tensor:
    """Inference form of `blockdiag_glu_reference`: the per-block projection, whose gate half becomes
    `act(gate) * value` in place and is returned as a strided `[..., I]` view."""
    gate, value = _blockdiag_matmul_per_block(x, weight, None).chunk(2, dim=-1)
    if act is F.gelu:
        torch.ops.aten.gelu_(gate)
    else:
        F.silu(gate, inplace=True)
    return gate.mul_(value)

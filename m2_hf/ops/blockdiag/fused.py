"""Block-diagonal matmul and GLU as custom ops over the Triton kernels, and the dispatching entry points.

The custom ops (namespace `m2hf`) are opaque to `torch.compile`; their backward passes are custom ops too. The
kernel module is imported when an op first runs, so that importing the package needs no Triton driver.
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from ..backend import autocast_input, use_triton
from .reference import (
    GLU_ACTIVATIONS,
    blockdiag_glu_reference,
    blockdiag_matmul_reference,
    check_blockdiag_shapes,
)


@custom_op("m2hf::blockdiag_matmul", mutates_args=())
def blockdiag_matmul_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Triton `y[..., b, :] = W_b x[..., b, :] (+ bias)`; output in `x.dtype`, fp32 accumulation."""
    from .kernels import blockdiag_forward

    return blockdiag_forward(x, weight, bias)


@blockdiag_matmul_triton.register_fake
def _(x, weight, bias=None):
    nblocks, out_block, _ = weight.shape
    return x.new_empty(*x.shape[:-1], nblocks * out_block)


@custom_op("m2hf::blockdiag_matmul_backward", mutates_args=())
def blockdiag_matmul_backward_triton(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(grad_x, grad_weight)` of `blockdiag_matmul_triton`."""
    from .kernels import blockdiag_backward

    return blockdiag_backward(grad_out, x, weight)


@blockdiag_matmul_backward_triton.register_fake
def _(grad_out, x, weight):
    return torch.empty_like(x), torch.empty_like(weight)


def _bias_grad(grad_out: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return grad_out.reshape(-1, grad_out.shape[-1]).sum(0, dtype=torch.float32).to(bias.dtype)


def _blockdiag_matmul_setup(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight, bias)


def _blockdiag_matmul_autograd(ctx, grad_out):
    x, weight, bias = ctx.saved_tensors
    grad_x, grad_weight = blockdiag_matmul_backward_triton(grad_out, x, weight)
    grad_bias = _bias_grad(grad_out, bias) if bias is not None else None
    return grad_x, grad_weight, grad_bias


blockdiag_matmul_triton.register_autograd(_blockdiag_matmul_autograd, setup_context=_blockdiag_matmul_setup)


@custom_op("m2hf::blockdiag_glu", mutates_args=())
def blockdiag_glu_triton(x: torch.Tensor, weight: torch.Tensor, activation: str = "gelu") -> torch.Tensor:
    """Triton `act(gate) * value` of the block-diagonal projection `[gate, value]`, `[..., I]`."""
    from .kernels import blockdiag_glu_forward

    return blockdiag_glu_forward(x, weight, activation)


@blockdiag_glu_triton.register_fake
def _(x, weight, activation="gelu"):
    nblocks, out_block, _ = weight.shape
    return x.new_empty(*x.shape[:-1], nblocks * out_block // 2)


@custom_op("m2hf::blockdiag_glu_backward", mutates_args=())
def blockdiag_glu_backward_triton(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(grad_x, grad_weight)` of `blockdiag_glu_triton`; recomputes the projection rather than storing it."""
    from .kernels import blockdiag_glu_backward

    return blockdiag_glu_backward(grad_out, x, weight, activation)


@blockdiag_glu_backward_triton.register_fake
def _(grad_out, x, weight, activation):
    return torch.empty_like(x), torch.empty_like(weight)


def _blockdiag_glu_setup(ctx, inputs, output):
    x, weight, activation = inputs
    ctx.save_for_backward(x, weight)
    ctx.activation = activation


def _blockdiag_glu_autograd(ctx, grad_out):
    x, weight = ctx.saved_tensors
    grad_x, grad_weight = blockdiag_glu_backward_triton(grad_out, x, weight, ctx.activation)
    return grad_x, grad_weight, None


blockdiag_glu_triton.register_autograd(_blockdiag_glu_autograd, setup_context=_blockdiag_glu_setup)


def blockdiag_matmul(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """`y[..., b, :] = W_b x[..., b, :] (+ bias)` for `x` `[..., nblocks * in_block]`, weight
    `[nblocks, out_block, in_block]`, bias `[nblocks * out_block]`.

    `backend` is `"auto"`, `"triton"` or `"torch"` (see `m2_hf.ops.backend.use_triton`).
    """
    if use_triton(x, backend):
        check_blockdiag_shapes(x, weight)
        return blockdiag_matmul_triton(autocast_input(x), weight, bias)
    return blockdiag_matmul_reference(x, weight, bias)


def blockdiag_glu(
    x: torch.Tensor, weight: torch.Tensor, activation: str = "gelu", backend: str = "auto"
) -> torch.Tensor:
    """`act(gate) * value` with `[gate, value] = blockdiag_matmul(x, weight)` split in halves, `[..., I]`.

    The fused kernel never materialises the `2I`-wide projection, neither forward nor backward.
    `activation` is `"gelu"` (exact) or `"silu"`.
    """
    if use_triton(x, backend):
        check_blockdiag_shapes(x, weight)
        if activation not in GLU_ACTIVATIONS:
            raise ValueError(f"blockdiag_glu: activation must be one of {tuple(GLU_ACTIVATIONS)}, got {activation!r}.")
        return blockdiag_glu_triton(autocast_input(x), weight, activation)
    return blockdiag_glu_reference(x, weight, activation)

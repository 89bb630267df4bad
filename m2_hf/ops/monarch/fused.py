"""Order-2 Monarch multiply as a custom op over the strided block-diagonal kernels, and its dispatcher."""

from __future__ import annotations

import torch
from torch.library import custom_op

from ..backend import autocast_input, use_triton
from .reference import check_monarch_shapes, monarch_matmul_reference


@custom_op("m2hf::monarch_matmul", mutates_args=())
def monarch_matmul_triton(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Triton `x M^T` for `M = P L P^T R`: two launches of one block-diagonal kernel, permutations as strides."""
    from .kernels import monarch_forward

    return monarch_forward(x, right, left)


@monarch_matmul_triton.register_fake
def _(x, right, left):
    return x.new_empty(*x.shape[:-1], left.shape[1] * left.shape[0])


@custom_op("m2hf::monarch_matmul_backward", mutates_args=())
def monarch_matmul_backward_triton(
    grad_out: torch.Tensor, x: torch.Tensor, right: torch.Tensor, left: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(grad_x, grad_right, grad_left)` of `monarch_matmul_triton`."""
    from .kernels import monarch_backward

    return monarch_backward(grad_out, x, right, left)


@monarch_matmul_backward_triton.register_fake
def _(grad_out, x, right, left):
    return torch.empty_like(x), torch.empty_like(right), torch.empty_like(left)


def _monarch_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _monarch_autograd(ctx, grad_out):
    x, right, left = ctx.saved_tensors
    return monarch_matmul_backward_triton(grad_out, x, right, left)


monarch_matmul_triton.register_autograd(_monarch_autograd, setup_context=_monarch_setup)


def monarch_matmul(x: torch.Tensor, right: torch.Tensor, left: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Multiply the last axis of `x` by `M = P L P^T R` (see `monarch_matmul_reference` for the shapes)."""
    if use_triton(x, backend):
        check_monarch_shapes(x, right, left)
        return monarch_matmul_triton(autocast_input(x), right, left)
    return monarch_matmul_reference(x, right, left)

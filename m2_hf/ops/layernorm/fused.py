"""Fused residual add + LayerNorm as a custom op over the Triton kernels, and its dispatcher."""

from __future__ import annotations

import torch
from torch.library import custom_op

from ..backend import use_triton
from .reference import add_layernorm_reference


@custom_op("m2hf::add_layernorm", mutates_args=())
def add_layernorm_triton(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton `(LayerNorm(x + residual), mean, rstd)`; the statistics are fp32 `[rows]`, kept for the backward."""
    from .kernels import add_layernorm_forward

    return add_layernorm_forward(x, residual, weight, bias, eps)


@add_layernorm_triton.register_fake
def _(x, residual, weight, bias, eps):
    rows = x.numel() // x.shape[-1]
    y = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, residual.dtype))
    return y, x.new_empty(rows, dtype=torch.float32), x.new_empty(rows, dtype=torch.float32)


@custom_op("m2hf::add_layernorm_backward", mutates_args=())
def add_layernorm_backward_triton(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(grad of x + residual, grad_weight, grad_bias)` of `add_layernorm_triton`."""
    from .kernels import add_layernorm_backward

    return add_layernorm_backward(grad_y, x, residual, weight, mean, rstd)


@add_layernorm_backward_triton.register_fake
def _(grad_y, x, residual, weight, mean, rstd):
    return torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)


def _add_layernorm_setup(ctx, inputs, output):
    x, residual, weight, bias, _ = inputs
    _, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.save_for_backward(x, residual, weight, mean, rstd)
    ctx.residual_dtype = residual.dtype
    ctx.bias_dtype = bias.dtype


def _add_layernorm_autograd(ctx, grad_y, grad_mean, grad_rstd):
    x, residual, weight, mean, rstd = ctx.saved_tensors
    grad_sum, grad_weight, grad_bias = add_layernorm_backward_triton(grad_y, x, residual, weight, mean, rstd)
    return grad_sum, grad_sum.to(ctx.residual_dtype), grad_weight, grad_bias.to(ctx.bias_dtype), None


add_layernorm_triton.register_autograd(_add_layernorm_autograd, setup_context=_add_layernorm_setup)


def add_layernorm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
    backend: str = "auto",
) -> torch.Tensor:
    """`LayerNorm(x + residual)` over the last axis (weight and bias `[N]`), statistics in fp32.

    The fused path never writes `x + residual`; its output has the promoted dtype of `x` and `residual`.
    """
    if x.shape != residual.shape:
        raise ValueError(f"add_layernorm: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ in shape.")
    if use_triton(x, backend):
        return add_layernorm_triton(x, residual, weight, bias, float(eps))[0]
    return add_layernorm_reference(x, residual, weight, bias, eps)

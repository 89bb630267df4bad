"""The fused sequence-mixer front as a custom op over the Triton kernels, and the dispatching entry points."""

from __future__ import annotations

import torch
from torch.library import custom_op

from ..backend import resolve_backend, use_triton
from .reference import causal_depthwise_conv_reference, mixer_front_reference


@custom_op("m2hf::mixer_front", mutates_args=())
def mixer_front_triton(
    projected: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `(gated_value, post_gate)` `[B, H, L]` from `projected` `[B, L, 3H]`, reading it once."""
    from .kernels import mixer_front_forward

    return mixer_front_forward(projected, weight, bias, padding_mask)


@mixer_front_triton.register_fake
def _(projected, weight, bias, padding_mask=None):
    batch, length, channels = projected.shape
    shape = (batch, channels // 3, length)
    return projected.new_empty(shape), projected.new_empty(shape)


@custom_op("m2hf::mixer_front_backward", mutates_args=())
def mixer_front_backward_triton(
    grad_gated: torch.Tensor,
    grad_post: torch.Tensor,
    projected: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    padding_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(grad_projected, grad_weight, grad_bias)` of `mixer_front_triton`, recomputing the conv."""
    from .kernels import mixer_front_backward

    return mixer_front_backward(grad_gated, grad_post, projected, weight, bias, padding_mask)


@mixer_front_backward_triton.register_fake
def _(grad_gated, grad_post, projected, weight, bias, padding_mask):
    return torch.empty_like(projected), torch.empty_like(weight), torch.empty_like(bias)


def _mixer_front_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _mixer_front_autograd(ctx, grad_gated, grad_post):
    projected, weight, bias, padding_mask = ctx.saved_tensors
    grads = mixer_front_backward_triton(grad_gated, grad_post, projected, weight, bias, padding_mask)
    return *grads, None


mixer_front_triton.register_autograd(_mixer_front_autograd, setup_context=_mixer_front_setup)


def mixer_front(
    projected: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(gated_value, post_gate)`, both `[B, H, L]`, of the mixer's in-projection `projected` `[B, L, 3H]`.

    Equals `M2LongConvMixer`'s short conv, split and pre-gate: `xs = shortconv(projected^T * mask)`, split into
    `pre_gate, post_gate, value`; `gated_value = value * pre_gate * mask`. `weight` `[3H, 1, K]`, `bias` `[3H]`,
    `padding_mask` `[B, L]` or `[B, 1, L]` (1 = real token) or None.
    """
    batch, length, channels = projected.shape
    if channels % 3 or weight.shape[0] != channels:
        raise ValueError(
            f"mixer_front: projected has {channels} channels and the conv weight {weight.shape[0]}; "
            "both must be 3 * hidden."
        )
    if use_triton(projected, backend):
        mask = None if padding_mask is None else padding_mask.reshape(batch, length)
        return mixer_front_triton(projected, weight, bias, mask)
    return mixer_front_reference(projected, weight, bias, padding_mask)


def causal_depthwise_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, backend: str = "auto"
) -> torch.Tensor:
    """Causal depthwise convolution of `x` `[B, C, L]` (see `causal_depthwise_conv_reference`).

    The plain convolution has no Triton kernel of its own (the models run it fused into `mixer_front`): `"auto"`
    and `"torch"` compute it with torch's grouped `conv1d` (cuDNN on CUDA), and forcing `"triton"` raises, as every
    op does when its kernels cannot run.
    """
    if resolve_backend(backend) == "triton":
        raise RuntimeError(
            "kernel_backend='triton' was forced, but causal_depthwise_conv has no Triton kernel (the models run the "
            "short convolution fused into mixer_front); use the 'auto' or 'torch' backend for it."
        )
    return causal_depthwise_conv_reference(x, weight, bias)

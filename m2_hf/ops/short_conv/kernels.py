"""Triton kernels for the sequence mixer's front: causal depthwise short conv, split and pre-gating in one pass.

`projected` is the in-projection's `[B, L, 3H]` output, read in place (no transpose copy). With `p` the masked
input and `xs` its causal conv,

    p[c, t] = projected[t, c] * mask[t]
    xs[c, t] = bias[c] + sum_j w[c, j] p[c, t - K + 1 + j]
    pre, post, value = xs[0:H], xs[H:2H], xs[2H:3H]
    gated_value = value * pre * mask[t],   post_gate = post         (both [B, H, L])

The backward kernel recomputes `xs` from `projected` (the conv is cheap) instead of storing it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import backend
from ..backend import autotune_configs, interpreting

INTERPRET = interpreting()

FORWARD_CONFIGS = (
    [triton.Config({"BLOCK_L": 16, "BLOCK_H": 16})]
    if INTERPRET
    else autotune_configs(
        [
            triton.Config({"BLOCK_L": bl, "BLOCK_H": bh}, num_warps=warps)
            for bl, bh, warps in [(64, 64, 4), (128, 64, 4), (32, 128, 4), (64, 128, 8), (128, 128, 8)]
        ]
    )
)
# The backward writes one row of weight-gradient partial sums per sequence tile, so its tile length is fixed.
BACKWARD_BLOCK_L = 16 if INTERPRET else 64
BACKWARD_CONFIGS = (
    [triton.Config({"BLOCK_H": 16})]
    if INTERPRET
    else autotune_configs(
        [triton.Config({"BLOCK_H": bh}, num_warps=warps) for bh, warps in [(32, 4), (64, 4), (128, 4), (128, 8)]]
    )
)


@triton.jit
def _load_mask(mask_ptr, batch, offs, L, stride_mb, stride_ml):
    """`mask[batch, offs]` as fp32, 0 outside `[0, L)`."""
    valid = (offs >= 0) & (offs < L)
    return tl.load(mask_ptr + batch * stride_mb + offs * stride_ml, mask=valid, other=0.0).to(tl.float32)


@triton.jit
def _load_tap(w_ptr, channels, tap, h_mask, KERNEL_SIZE: tl.constexpr):
    """`w[c, tap]` for `channels`, fp32."""
    return tl.load(w_ptr + channels * KERNEL_SIZE + tap, mask=h_mask, other=0.0).to(tl.float32)


@triton.jit
def _masked_input(proj_ptr, mask_ptr, batch, src, offs_h, channel_offset, L, H,
                  stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK: tl.constexpr):  # fmt: skip
    """`p[c, src] = projected[batch, src, channel_offset + h] * mask[batch, src]`, 0 outside `[0, L)`, fp32."""
    valid = (src >= 0) & (src < L)
    ptrs = proj_ptr + batch * stride_pb + src[:, None] * stride_pl + (channel_offset + offs_h)[None, :]
    p = tl.load(ptrs, mask=valid[:, None] & (offs_h < H)[None, :], other=0.0).to(tl.float32)
    if HAS_MASK:
        p *= _load_mask(mask_ptr, batch, src, L, stride_mb, stride_ml)[:, None]
    return p


@triton.jit
def _conv_at(proj_ptr, w_ptr, b_ptr, mask_ptr, batch, offs_t, offs_h, channel_offset, L, H,
             stride_pb, stride_pl, stride_mb, stride_ml,
             HAS_MASK: tl.constexpr, KERNEL_SIZE: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr):  # fmt: skip
    """`xs[c, t]` for channels `channel_offset + offs_h` at positions `offs_t`, `[BLOCK_L, BLOCK_H]` fp32."""
    channels = channel_offset + offs_h
    h_mask = offs_h < H
    xs = tl.zeros((BLOCK_L, BLOCK_H), dtype=tl.float32)
    xs += tl.load(b_ptr + channels, mask=h_mask, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(KERNEL_SIZE):
        w = _load_tap(w_ptr, channels, j, h_mask, KERNEL_SIZE)
        p = _masked_input(proj_ptr, mask_ptr, batch, offs_t - (KERNEL_SIZE - 1) + j, offs_h, channel_offset, L, H,
                          stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK)  # fmt: skip
        xs += w[None, :] * p
    return xs


@triton.autotune(configs=FORWARD_CONFIGS, key=["H", "KERNEL_SIZE"])
@triton.jit
def _mixer_front_kernel(
    proj_ptr, w_ptr, b_ptr, mask_ptr, gated_ptr, post_ptr,
    L, H,
    stride_pb, stride_pl, stride_mb, stride_ml, stride_ob, stride_oh,
    HAS_MASK: tl.constexpr, KERNEL_SIZE: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """One `[BLOCK_L, BLOCK_H]` tile of `gated_value` and `post_gate` for sequence `program_id(2)`."""
    batch = tl.program_id(2).to(tl.int64)
    offs_t = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    pre = _conv_at(proj_ptr, w_ptr, b_ptr, mask_ptr, batch, offs_t, offs_h, 0, L, H,
                   stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK, KERNEL_SIZE, BLOCK_L, BLOCK_H)  # fmt: skip
    post = _conv_at(proj_ptr, w_ptr, b_ptr, mask_ptr, batch, offs_t, offs_h, H, L, H,
                    stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK, KERNEL_SIZE, BLOCK_L, BLOCK_H)  # fmt: skip
    value = _conv_at(proj_ptr, w_ptr, b_ptr, mask_ptr, batch, offs_t, offs_h, 2 * H, L, H,
                     stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK, KERNEL_SIZE, BLOCK_L, BLOCK_H)  # fmt: skip
    gated = value * pre
    if HAS_MASK:
        gated *= _load_mask(mask_ptr, batch, offs_t, L, stride_mb, stride_ml)[:, None]
    out_offsets = batch * stride_ob + offs_h[None, :] * stride_oh + offs_t[:, None]
    out_mask = (offs_t < L)[:, None] & (offs_h < H)[None, :]
    tl.store(gated_ptr + out_offsets, gated.to(gated_ptr.dtype.element_ty), mask=out_mask)
    tl.store(post_ptr + out_offsets, post.to(post_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _load_grad(grad_ptr, batch, offs_t, offs_h, L, H, stride_gb, stride_gh, stride_gl):
    """`grad[batch, h, t]` as a `[BLOCK_L, BLOCK_H]` fp32 tile, 0 outside the sequence."""
    ptrs = grad_ptr + batch * stride_gb + offs_h[None, :] * stride_gh + offs_t[:, None] * stride_gl
    return tl.load(ptrs, mask=(offs_t < L)[:, None] & (offs_h < H)[None, :], other=0.0).to(tl.float32)


@triton.jit
def _store_weight_grads(grad_xs, proj_ptr, mask_ptr, wgrad_ptr, bgrad_ptr, partial_row, batch, offs_s, offs_h,
                        channel_offset, L, H, stride_pb, stride_pl, stride_mb, stride_ml,
                        HAS_MASK: tl.constexpr, KERNEL_SIZE: tl.constexpr):  # fmt: skip
    """This tile's share of `dw[c, j] = sum_t dxs[c, t] p[c, t - K + 1 + j]` and `db[c] = sum_t dxs[c, t]`."""
    channels = channel_offset + offs_h
    h_mask = offs_h < H
    row = partial_row * 3 * H + channels
    tl.store(bgrad_ptr + row, tl.sum(grad_xs, axis=0), mask=h_mask)
    for j in tl.static_range(KERNEL_SIZE):
        p = _masked_input(proj_ptr, mask_ptr, batch, offs_s - (KERNEL_SIZE - 1) + j, offs_h, channel_offset, L, H,
                          stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK)  # fmt: skip
        tl.store(wgrad_ptr + row * KERNEL_SIZE + j, tl.sum(grad_xs * p, axis=0), mask=h_mask)


@triton.autotune(configs=BACKWARD_CONFIGS, key=["H", "KERNEL_SIZE"])
@triton.jit
def _mixer_front_backward_kernel(
    proj_ptr, w_ptr, b_ptr, mask_ptr, dgated_ptr, dpost_ptr, dproj_ptr, wgrad_ptr, bgrad_ptr,
    L, H,
    stride_pb, stride_pl, stride_mb, stride_ml,
    stride_ggb, stride_ggh, stride_ggl, stride_gpb, stride_gph, stride_gpl,
    stride_dpb, stride_dpl,
    HAS_MASK: tl.constexpr, KERNEL_SIZE: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """Gradients for one `[BLOCK_L, BLOCK_H]` tile of input positions `s` (all three channel groups).

    With `dxs` the gradient of the conv output: `dpre = dgated * mask * value`, `dvalue = dgated * mask * pre`,
    `dpost = dpost`; then `dp[c, s] = sum_d w[c, K - 1 - d] dxs[c, s + d]` and `dprojected[s, c] = dp[c, s] mask[s]`.
    Weight and bias gradients are written as per-tile partial sums, one row per (sequence, tile).
    """
    batch = tl.program_id(2).to(tl.int64)
    partial_row = batch * tl.num_programs(0) + tl.program_id(0)
    offs_s = tl.program_id(0) * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_mask = offs_h < H
    dp_pre = tl.zeros((BLOCK_L, BLOCK_H), dtype=tl.float32)
    dp_post = tl.zeros((BLOCK_L, BLOCK_H), dtype=tl.float32)
    dp_value = tl.zeros((BLOCK_L, BLOCK_H), dtype=tl.float32)
    for d in tl.static_range(KERNEL_SIZE):
        offs_t = offs_s + d
        pre = _conv_at(proj_ptr, w_ptr, b_ptr, mask_ptr, batch, offs_t, offs_h, 0, L, H,
                       stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK, KERNEL_SIZE, BLOCK_L, BLOCK_H)  # fmt: skip
        value = _conv_at(proj_ptr, w_ptr, b_ptr, mask_ptr, batch, offs_t, offs_h, 2 * H, L, H,
                         stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK, KERNEL_SIZE, BLOCK_L, BLOCK_H)  # fmt: skip
        dgated = _load_grad(dgated_ptr, batch, offs_t, offs_h, L, H, stride_ggb, stride_ggh, stride_ggl)
        if HAS_MASK:
            dgated *= _load_mask(mask_ptr, batch, offs_t, L, stride_mb, stride_ml)[:, None]
        dxs_pre = dgated * value
        dxs_post = _load_grad(dpost_ptr, batch, offs_t, offs_h, L, H, stride_gpb, stride_gph, stride_gpl)
        dxs_value = dgated * pre
        tap = KERNEL_SIZE - 1 - d
        dp_pre += _load_tap(w_ptr, offs_h, tap, h_mask, KERNEL_SIZE)[None, :] * dxs_pre
        dp_post += _load_tap(w_ptr, H + offs_h, tap, h_mask, KERNEL_SIZE)[None, :] * dxs_post
        dp_value += _load_tap(w_ptr, 2 * H + offs_h, tap, h_mask, KERNEL_SIZE)[None, :] * dxs_value
        if d == 0:
            _store_weight_grads(dxs_pre, proj_ptr, mask_ptr, wgrad_ptr, bgrad_ptr, partial_row, batch, offs_s,
                                offs_h, 0, L, H, stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK, KERNEL_SIZE)  # fmt: skip
            _store_weight_grads(dxs_post, proj_ptr, mask_ptr, wgrad_ptr, bgrad_ptr, partial_row, batch, offs_s,
                                offs_h, H, L, H, stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK, KERNEL_SIZE)  # fmt: skip
            _store_weight_grads(dxs_value, proj_ptr, mask_ptr, wgrad_ptr, bgrad_ptr, partial_row, batch, offs_s,
                                offs_h, 2 * H, L, H, stride_pb, stride_pl, stride_mb, stride_ml, HAS_MASK,
                                KERNEL_SIZE)  # fmt: skip
    s_mask = offs_s < L
    if HAS_MASK:
        s_weight = _load_mask(mask_ptr, batch, offs_s, L, stride_mb, stride_ml)
        dp_pre *= s_weight[:, None]
        dp_post *= s_weight[:, None]
        dp_value *= s_weight[:, None]
    dproj_ptrs = dproj_ptr + batch * stride_dpb + offs_s[:, None] * stride_dpl + offs_h[None, :]
    out_mask = s_mask[:, None] & h_mask[None, :]
    tl.store(dproj_ptrs, dp_pre.to(dproj_ptr.dtype.element_ty), mask=out_mask)
    tl.store(dproj_ptrs + H, dp_post.to(dproj_ptr.dtype.element_ty), mask=out_mask)
    tl.store(dproj_ptrs + 2 * H, dp_value.to(dproj_ptr.dtype.element_ty), mask=out_mask)


def _check_layout(projected: torch.Tensor) -> torch.Tensor:
    """`projected` with a unit channel stride (a copy only if it lacks one)."""
    return projected if projected.stride(-1) == 1 else projected.contiguous()


def _mask_args(padding_mask: torch.Tensor | None, projected: torch.Tensor):
    """`(mask, stride_b, stride_l)`; a float copy of a boolean mask, or a dummy pointer without a mask."""
    if padding_mask is None:
        return projected, 0, 0
    if padding_mask.dtype == torch.bool:
        padding_mask = padding_mask.to(projected.dtype)
    return padding_mask, padding_mask.stride(0), padding_mask.stride(1)


def mixer_front_forward(
    projected: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(gated_value, post_gate)`, both `[B, H, L]` in `projected.dtype`, from `projected` `[B, L, 3H]`."""
    projected = _check_layout(projected)
    batch, length, channels = projected.shape
    hidden = channels // 3
    kernel_size = weight.shape[-1]
    weight, bias = weight.contiguous(), bias.contiguous()
    mask, stride_mb, stride_ml = _mask_args(padding_mask, projected)
    gated = backend.new_buffer((batch, hidden, length), projected.dtype, projected.device)
    post = backend.new_buffer((batch, hidden, length), projected.dtype, projected.device)

    def grid(meta):
        return (triton.cdiv(length, meta["BLOCK_L"]), triton.cdiv(hidden, meta["BLOCK_H"]), batch)

    _mixer_front_kernel[grid](
        projected, weight, bias, mask, gated, post,
        length, hidden,
        projected.stride(0), projected.stride(1), stride_mb, stride_ml, gated.stride(0), gated.stride(1),
        HAS_MASK=padding_mask is not None, KERNEL_SIZE=kernel_size,
    )  # fmt: skip
    return gated, post


def mixer_front_backward(
    grad_gated: torch.Tensor,
    grad_post: torch.Tensor,
    projected: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    padding_mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(grad_projected, grad_weight, grad_bias)` of `mixer_front_forward`."""
    projected = _check_layout(projected)
    batch, length, channels = projected.shape
    hidden = channels // 3
    kernel_size = weight.shape[-1]
    weight_c, bias_c = weight.contiguous(), bias.contiguous()
    mask, stride_mb, stride_ml = _mask_args(padding_mask, projected)
    tiles = triton.cdiv(length, BACKWARD_BLOCK_L)
    grad_projected = backend.new_buffer((batch, length, channels), projected.dtype, projected.device)
    weight_partials = backend.new_buffer((batch * tiles, channels, kernel_size), torch.float32, projected.device)
    bias_partials = backend.new_buffer((batch * tiles, channels), torch.float32, projected.device)

    def grid(meta):
        return (tiles, triton.cdiv(hidden, meta["BLOCK_H"]), batch)

    _mixer_front_backward_kernel[grid](
        projected, weight_c, bias_c, mask, grad_gated, grad_post, grad_projected, weight_partials, bias_partials,
        length, hidden,
        projected.stride(0), projected.stride(1), stride_mb, stride_ml,
        *grad_gated.stride(), *grad_post.stride(),
        grad_projected.stride(0), grad_projected.stride(1),
        HAS_MASK=padding_mask is not None, KERNEL_SIZE=kernel_size, BLOCK_L=BACKWARD_BLOCK_L,
    )  # fmt: skip
    grad_weight = weight_partials.sum(0).reshape(weight.shape).to(weight.dtype)
    grad_bias = bias_partials.sum(0).to(bias.dtype)
    return grad_projected, grad_weight, grad_bias

"""Triton kernels for block-diagonal matrix multiplies, strided so that permutations cost nothing.

Every operand is addressed as `tensor[m, block, feature]` through three strides, so the same kernel runs a plain
block-diagonal product, its transpose (weight strides swapped), and the two factors of an order-2 Monarch product
whose `P` / `P^T` permutations are only output or input strides.

- `_blockdiag_matmul_kernel`: `y[m, b, n] = sum_k W[b, n, k] x[m, b, k] (+ bias[b * N + n])`.
- `_blockdiag_weight_grad_kernel`: `dW[b, n, k] = sum_m dy[m, b, n] x[m, b, k]`.
- `_blockdiag_glu_kernel` / `_blockdiag_glu_backward_kernel`: the GLU first layer, `act(gate) * value` with
  `[gate, value]` the two halves of the block-diagonal output, without writing that `2I`-wide output.

Accumulation is always fp32. On a GPU, fp16 / bf16 tiles feed `tl.dot` directly; under the interpreter (whose bf16
arithmetic is broken) and for fp32 inputs the tiles are upcast to fp32 first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .. import backend
from ..backend import autotune_configs, interpreting

INTERPRET = interpreting()

_MATMUL_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
    for bm, bn, bk, warps, stages in [
        (128, 128, 32, 8, 3),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (64, 64, 64, 4, 3),
        (128, 128, 64, 8, 3),
        (64, 64, 32, 4, 4),
    ]
]
_WEIGHT_GRAD_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_M": bm}, num_warps=warps, num_stages=stages)
    for bn, bk, bm, warps, stages in [
        (64, 64, 64, 4, 3),
        (128, 64, 32, 4, 4),
        (64, 128, 32, 4, 4),
        (128, 128, 32, 8, 3),
    ]
]
# The GLU kernels hold two accumulators (gate and value), so their tiles are smaller.
_GLU_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)
    for bm, bn, bk, warps, stages in [
        (64, 64, 32, 4, 4),
        (128, 64, 32, 8, 3),
        (64, 128, 32, 8, 3),
        (64, 64, 64, 4, 3),
    ]
]
_INTERPRETER_CONFIG = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})]
MATMUL_CONFIGS = _INTERPRETER_CONFIG if INTERPRET else autotune_configs(_MATMUL_CONFIGS)
WEIGHT_GRAD_CONFIGS = _INTERPRETER_CONFIG if INTERPRET else autotune_configs(_WEIGHT_GRAD_CONFIGS)
GLU_CONFIGS = _INTERPRETER_CONFIG if INTERPRET else autotune_configs(_GLU_CONFIGS)


def _compute_dtype(dtype: torch.dtype):
    """`tl.dot` operand type: the input's half type on a GPU, fp32 under the interpreter or for fp32 inputs."""
    if INTERPRET or dtype not in (torch.float16, torch.bfloat16):
        return tl.float32
    return tl.float16 if dtype == torch.float16 else tl.bfloat16


def _input_precision(dtype: torch.dtype) -> str:
    """fp32 products follow `torch.backends.cuda.matmul.allow_tf32`, like `torch.matmul` (half types ignore it)."""
    return "ieee" if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32 else "tf32"


@dataclass(frozen=True)
class Layout:
    """Element strides of an activation addressed as `[row, block, feature]`."""

    row: int
    block: int
    feature: int


@dataclass(frozen=True)
class WeightLayout:
    """Element strides of block weights addressed as `[block, out_feature, in_feature]`.

    Swapping the two feature strides gives the transposed blocks.
    """

    block: int
    out_feature: int
    in_feature: int


@triton.autotune(configs=MATMUL_CONFIGS, key=["N", "K", "NBLOCKS"])
@triton.jit
def _blockdiag_matmul_kernel(
    x_ptr, w_ptr, bias_ptr, y_ptr,
    M, N, K, NBLOCKS,
    stride_xm, stride_xb, stride_xk,
    stride_wb, stride_wn, stride_wk,
    stride_ym, stride_yb, stride_yn,
    HAS_BIAS: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """One `[BLOCK_M, BLOCK_N]` tile of block `program_id(2)`: `y[m, b, n] = sum_k W[b, n, k] x[m, b, k]`."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    block = tl.program_id(2)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + block * stride_xb + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + block * stride_wb + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k + k0 < K
        x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & k_mask[None, :], other=0.0).to(COMPUTE_DTYPE)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & (offs_n[None, :] < N), other=0.0).to(COMPUTE_DTYPE)
        acc = tl.dot(x, w, acc, input_precision=INPUT_PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk
    if HAS_BIAS:
        acc += tl.load(bias_ptr + block * N + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    y_ptrs = y_ptr + block * stride_yb + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


@triton.autotune(configs=WEIGHT_GRAD_CONFIGS, key=["N", "K", "NBLOCKS"])
@triton.jit
def _blockdiag_weight_grad_kernel(
    dy_ptr, x_ptr, dw_ptr,
    M, N, K, NBLOCKS,
    stride_dym, stride_dyb, stride_dyn,
    stride_xm, stride_xb, stride_xk,
    stride_dwb, stride_dwn, stride_dwk,
    COMPUTE_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    """One `[BLOCK_N, BLOCK_K]` tile of `dW[b] = dy_b^T x_b`, summed over all `M` rows."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    block = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_m = tl.arange(0, BLOCK_M).to(tl.int64)
    dy_ptrs = dy_ptr + block * stride_dyb + offs_n[:, None] * stride_dyn + offs_m[None, :] * stride_dym
    x_ptrs = x_ptr + block * stride_xb + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for m0 in range(0, M, BLOCK_M):
        m_mask = offs_m + m0 < M
        dy = tl.load(dy_ptrs, mask=(offs_n[:, None] < N) & m_mask[None, :], other=0.0).to(COMPUTE_DTYPE)
        x = tl.load(x_ptrs, mask=m_mask[:, None] & (offs_k[None, :] < K), other=0.0).to(COMPUTE_DTYPE)
        acc = tl.dot(dy, x, acc, input_precision=INPUT_PRECISION)
        dy_ptrs += BLOCK_M * stride_dym
        x_ptrs += BLOCK_M * stride_xm
    dw_ptrs = dw_ptr + block * stride_dwb + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk
    tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=(offs_n[:, None] < N) & (offs_k[None, :] < K))


@triton.jit
def _glu_projections(
    x_ptr, w_ptr, offs_m, segment_start, offs_g, M, N, K, INTERMEDIATE, SEGMENT,
    stride_xm, stride_wb, stride_wn,
    COMPUTE_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Gate and value tiles for GLU features `offs_g` of the segment starting at `segment_start`.

    Output feature `f` of the `2I`-wide projection is row `f % N` of block `f // N`; the gate of feature `g` is
    `f = g`, its value `f = I + g`. Returns `(gate, value, g_mask)`, both `[BLOCK_M, BLOCK_N]` fp32.
    """
    g_mask = (offs_g < segment_start + SEGMENT) & (offs_g < INTERMEDIATE)
    gate_block = segment_start // N
    value_block = (INTERMEDIATE + segment_start) // N
    gate_rows = offs_g - gate_block * N
    value_rows = INTERMEDIATE + offs_g - value_block * N
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    gate = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    value = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = offs_k + k0
        k_mask = k < K
        x_mask = m_mask[:, None] & k_mask[None, :]
        w_mask = k_mask[:, None] & g_mask[None, :]
        x_gate = tl.load(x_ptr + offs_m[:, None] * stride_xm + (gate_block * K + k)[None, :], mask=x_mask, other=0.0)
        w_gate = tl.load(
            w_ptr + gate_block * stride_wb + gate_rows[None, :] * stride_wn + k[:, None], mask=w_mask, other=0.0
        )
        gate = tl.dot(x_gate.to(COMPUTE_DTYPE), w_gate.to(COMPUTE_DTYPE), gate, input_precision=INPUT_PRECISION)
        x_value = tl.load(x_ptr + offs_m[:, None] * stride_xm + (value_block * K + k)[None, :], mask=x_mask, other=0.0)
        w_value = tl.load(
            w_ptr + value_block * stride_wb + value_rows[None, :] * stride_wn + k[:, None], mask=w_mask, other=0.0
        )
        value = tl.dot(x_value.to(COMPUTE_DTYPE), w_value.to(COMPUTE_DTYPE), value, input_precision=INPUT_PRECISION)
    return gate, value, g_mask


@triton.jit
def _activation(gate, ACTIVATION: tl.constexpr):
    if ACTIVATION == "gelu":
        # exact GELU: g * Phi(g) = g / 2 * (1 + erf(g / sqrt(2)))
        return 0.5 * gate * (1.0 + tl.math.erf(gate * 0.7071067811865476))
    else:
        return gate * tl.sigmoid(gate)


@triton.jit
def _activation_derivative(gate, ACTIVATION: tl.constexpr):
    if ACTIVATION == "gelu":
        # d/dg [g Phi(g)] = Phi(g) + g phi(g), phi the standard normal density
        cdf = 0.5 * (1.0 + tl.math.erf(gate * 0.7071067811865476))
        return cdf + gate * tl.exp(-0.5 * gate * gate) * 0.3989422804014327
    else:
        # d/dg [g s(g)] = s (1 + g (1 - s))
        sig = tl.sigmoid(gate)
        return sig * (1.0 + gate * (1.0 - sig))


@triton.autotune(configs=GLU_CONFIGS, key=["N", "K", "INTERMEDIATE"])
@triton.jit
def _blockdiag_glu_kernel(
    x_ptr, w_ptr, out_ptr,
    M, N, K, INTERMEDIATE, SEGMENT,
    stride_xm, stride_wb, stride_wn, stride_om,
    ACTIVATION: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """`out[m, g] = act(gate[m, g]) * value[m, g]` for one `[BLOCK_M, BLOCK_N]` tile of GLU features."""
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    tiles_per_segment = tl.cdiv(SEGMENT, BLOCK_N)
    segment_start = (pid_g // tiles_per_segment) * SEGMENT
    offs_g = segment_start + (pid_g % tiles_per_segment) * BLOCK_N + tl.arange(0, BLOCK_N)
    gate, value, g_mask = _glu_projections(
        x_ptr, w_ptr, offs_m, segment_start, offs_g, M, N, K, INTERMEDIATE, SEGMENT, stride_xm, stride_wb, stride_wn,
        COMPUTE_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    out = _activation(gate, ACTIVATION) * value
    mask = (offs_m[:, None] < M) & g_mask[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_g[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=GLU_CONFIGS, key=["N", "K", "INTERMEDIATE"])
@triton.jit
def _blockdiag_glu_backward_kernel(
    x_ptr, w_ptr, dout_ptr, dproj_ptr,
    M, N, K, INTERMEDIATE, SEGMENT,
    stride_xm, stride_wb, stride_wn, stride_dom, stride_dpm,
    ACTIVATION: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Recompute gate and value, then write the projection's gradient `[d gate, d value]` (`[M, 2I]`).

    `d gate = dout * act'(gate) * value`, `d value = dout * act(gate)`.
    """
    pid_m = tl.program_id(0)
    pid_g = tl.program_id(1)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    tiles_per_segment = tl.cdiv(SEGMENT, BLOCK_N)
    segment_start = (pid_g // tiles_per_segment) * SEGMENT
    offs_g = segment_start + (pid_g % tiles_per_segment) * BLOCK_N + tl.arange(0, BLOCK_N)
    gate, value, g_mask = _glu_projections(
        x_ptr, w_ptr, offs_m, segment_start, offs_g, M, N, K, INTERMEDIATE, SEGMENT, stride_xm, stride_wb, stride_wn,
        COMPUTE_DTYPE, INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    mask = (offs_m[:, None] < M) & g_mask[None, :]
    dout = tl.load(dout_ptr + offs_m[:, None] * stride_dom + offs_g[None, :], mask=mask, other=0.0).to(tl.float32)
    d_gate = dout * _activation_derivative(gate, ACTIVATION) * value
    d_value = dout * _activation(gate, ACTIVATION)
    dproj_ptrs = dproj_ptr + offs_m[:, None] * stride_dpm + offs_g[None, :]
    tl.store(dproj_ptrs, d_gate.to(dproj_ptr.dtype.element_ty), mask=mask)
    tl.store(dproj_ptrs + INTERMEDIATE, d_value.to(dproj_ptr.dtype.element_ty), mask=mask)


def blockdiag_matmul_strided(
    x: torch.Tensor,
    x_layout: Layout,
    weight: torch.Tensor,
    weight_layout: WeightLayout,
    out: torch.Tensor,
    out_layout: Layout,
    rows: int,
    nblocks: int,
    out_block: int,
    in_block: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Launch `out[m, b, n] = sum_k W[b, n, k] x[m, b, k] (+ bias[b * out_block + n])` over `rows` rows."""

    def grid(meta):
        return (triton.cdiv(rows, meta["BLOCK_M"]), triton.cdiv(out_block, meta["BLOCK_N"]), nblocks)

    _blockdiag_matmul_kernel[grid](
        x, weight, bias if bias is not None else out, out,
        rows, out_block, in_block, nblocks,
        x_layout.row, x_layout.block, x_layout.feature,
        weight_layout.block, weight_layout.out_feature, weight_layout.in_feature,
        out_layout.row, out_layout.block, out_layout.feature,
        HAS_BIAS=bias is not None,
        COMPUTE_DTYPE=_compute_dtype(x.dtype),
        INPUT_PRECISION=_input_precision(x.dtype),
    )  # fmt: skip
    return out


def blockdiag_weight_grad_strided(
    grad_out: torch.Tensor,
    grad_layout: Layout,
    x: torch.Tensor,
    x_layout: Layout,
    grad_weight: torch.Tensor,
    weight_layout: WeightLayout,
    rows: int,
    nblocks: int,
    out_block: int,
    in_block: int,
) -> torch.Tensor:
    """Launch `dW[b, n, k] = sum_m dy[m, b, n] x[m, b, k]` (strides as in `blockdiag_matmul_strided`)."""

    def grid(meta):
        return (triton.cdiv(out_block, meta["BLOCK_N"]), triton.cdiv(in_block, meta["BLOCK_K"]), nblocks)

    _blockdiag_weight_grad_kernel[grid](
        grad_out, x, grad_weight,
        rows, out_block, in_block, nblocks,
        grad_layout.row, grad_layout.block, grad_layout.feature,
        x_layout.row, x_layout.block, x_layout.feature,
        weight_layout.block, weight_layout.out_feature, weight_layout.in_feature,
        COMPUTE_DTYPE=_compute_dtype(x.dtype),
        INPUT_PRECISION=_input_precision(x.dtype),
    )  # fmt: skip
    return grad_weight


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """`x` as `[tokens, features]` with a unit feature stride (a view when possible)."""
    x2d = x.reshape(-1, x.shape[-1])
    return x2d if x2d.stride(-1) == 1 else x2d.contiguous()


def blockdiag_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """`y[..., b, :] = W_b x[..., b, :] (+ bias)` for `x` `[..., nblocks * in_block]`."""
    nblocks, out_block, in_block = weight.shape
    weight = weight.contiguous()
    x2d = as_rows(x)
    out = backend.new_buffer((x2d.shape[0], nblocks * out_block), x.dtype, x.device)
    blockdiag_matmul_strided(
        x2d, Layout(x2d.stride(0), in_block, 1),
        weight, WeightLayout(out_block * in_block, in_block, 1),
        out, Layout(nblocks * out_block, out_block, 1),
        x2d.shape[0], nblocks, out_block, in_block,
        bias=None if bias is None else bias.contiguous(),
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], nblocks * out_block)


def blockdiag_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(grad_x, grad_weight)`: `grad_x = blockdiag(W)^T grad_y`, `grad_W_b = sum_tokens grad_y_b^T x_b`."""
    nblocks, out_block, in_block = weight.shape
    weight = weight.contiguous()
    x2d = as_rows(x)
    grad2d = as_rows(grad_out)
    rows = x2d.shape[0]
    grad_x = backend.new_buffer((rows, nblocks * in_block), x.dtype, x.device)
    blockdiag_matmul_strided(
        grad2d, Layout(grad2d.stride(0), out_block, 1),
        weight, WeightLayout(out_block * in_block, 1, in_block),
        grad_x, Layout(nblocks * in_block, in_block, 1),
        rows, nblocks, in_block, out_block,
    )  # fmt: skip
    grad_weight = backend.new_buffer(weight.shape, weight.dtype, weight.device)
    blockdiag_weight_grad_strided(
        grad2d, Layout(grad2d.stride(0), out_block, 1),
        x2d, Layout(x2d.stride(0), in_block, 1),
        grad_weight, WeightLayout(out_block * in_block, in_block, 1),
        rows, nblocks, out_block, in_block,
    )  # fmt: skip
    return grad_x.reshape(x.shape), grad_weight


def _glu_segment(weight: torch.Tensor) -> tuple[int, int]:
    """`(I, S)`: the GLU width and the segment length `S = gcd(I, out_block)`.

    A run of `S` GLU features starting at a multiple of `S` has all its gates in one block and all its values in
    one block, for any block count.
    """
    nblocks, out_block, _ = weight.shape
    if (nblocks * out_block) % 2:
        raise ValueError(f"blockdiag_glu: the projection has {nblocks * out_block} outputs, which is odd.")
    intermediate = nblocks * out_block // 2
    return intermediate, math.gcd(intermediate, out_block)


def _glu_grid(rows: int, intermediate: int, segment: int):
    def grid(meta):
        tiles_per_segment = triton.cdiv(segment, meta["BLOCK_N"])
        return (triton.cdiv(rows, meta["BLOCK_M"]), (intermediate // segment) * tiles_per_segment)

    return grid


def blockdiag_glu_forward(x: torch.Tensor, weight: torch.Tensor, activation: str) -> torch.Tensor:
    """`act(gate) * value` with `[gate, value] = blockdiag(W) x`, `[..., I]`, the `2I` product never stored."""
    _, out_block, in_block = weight.shape
    intermediate, segment = _glu_segment(weight)
    weight = weight.contiguous()
    x2d = as_rows(x)
    rows = x2d.shape[0]
    out = backend.new_buffer((rows, intermediate), x.dtype, x.device)
    _blockdiag_glu_kernel[_glu_grid(rows, intermediate, segment)](
        x2d, weight, out,
        rows, out_block, in_block, intermediate, segment,
        x2d.stride(0), out_block * in_block, in_block, out.stride(0),
        ACTIVATION=activation,
        COMPUTE_DTYPE=_compute_dtype(x.dtype),
        INPUT_PRECISION=_input_precision(x.dtype),
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], intermediate)


def blockdiag_glu_backward(
    grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, activation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(grad_x, grad_weight)` of `blockdiag_glu_forward`, recomputing the projection instead of storing it."""
    _, out_block, in_block = weight.shape
    intermediate, segment = _glu_segment(weight)
    weight = weight.contiguous()
    x2d = as_rows(x)
    grad2d = as_rows(grad_out)
    rows = x2d.shape[0]
    grad_projected = backend.new_buffer((rows, 2 * intermediate), x.dtype, x.device)
    _blockdiag_glu_backward_kernel[_glu_grid(rows, intermediate, segment)](
        x2d, weight, grad2d, grad_projected,
        rows, out_block, in_block, intermediate, segment,
        x2d.stride(0), out_block * in_block, in_block, grad2d.stride(0), grad_projected.stride(0),
        ACTIVATION=activation,
        COMPUTE_DTYPE=_compute_dtype(x.dtype),
        INPUT_PRECISION=_input_precision(x.dtype),
    )  # fmt: skip
    grad_x, grad_weight = blockdiag_backward(grad_projected, x2d, weight)
    return grad_x.reshape(x.shape), grad_weight

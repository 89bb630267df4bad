"""Triton kernels for `LayerNorm(x + residual)`: fp32 statistics, the sum never written to memory.

Forward: `z = x + r`, `mean`, `rstd = 1 / sqrt(var(z) + eps)`, `y = (z - mean) * rstd * w + b`; `mean` and
`rstd` are kept for the backward, which recomputes `z` from `x` and `r`:

    zhat = (z - mean) * rstd,  g = dy * w
    dz = rstd * (g - zhat * mean(g * zhat) - mean(g))      (= dx = dr)
    dw = sum_rows dy * zhat,   db = sum_rows dy
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import backend
from ..backend import interpreting

INTERPRET = interpreting()
MAX_FUSED_BYTES = 65536


@triton.jit
def _add_layernorm_kernel(
    x_ptr, r_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr,
    M, N, eps,
    stride_xm, stride_rm, stride_ym,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Normalise `ROWS` rows of `x + r`."""
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    mask = (rows < M)[:, None] & col_mask[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + rows[:, None] * stride_rm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    z = x + r
    mean = tl.sum(z, axis=1) / N
    centered = tl.where(col_mask[None, :], z - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / N + eps)
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    y = centered * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(y_ptr + rows[:, None] * stride_ym + cols[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(mean_ptr + rows, mean, mask=rows < M)
    tl.store(rstd_ptr + rows, rstd, mask=rows < M)


@triton.jit
def _add_layernorm_backward_kernel(
    dy_ptr, x_ptr, r_ptr, w_ptr, mean_ptr, rstd_ptr, dz_ptr, dw_ptr, db_ptr,
    M, N,
    stride_dym, stride_xm, stride_rm, stride_dzm,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """Row gradients for every `num_programs`-th tile of `ROWS` rows, and this program's `dw`, `db` partial sums."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    col_mask = cols < N
    w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
    dw = tl.zeros((BLOCK_N,), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for tile in range(pid, tl.cdiv(M, ROWS), tl.num_programs(0)):
        rows = (tile * ROWS + tl.arange(0, ROWS)).to(tl.int64)
        row_mask = rows < M
        mask = row_mask[:, None] & col_mask[None, :]
        x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + rows[:, None] * stride_rm + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + rows[:, None] * stride_dym + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=row_mask, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
        zhat = tl.where(mask, (x + r - mean[:, None]) * rstd[:, None], 0.0)
        g = dy * w[None, :]
        c_zhat = tl.sum(g * zhat, axis=1) / N
        c_mean = tl.sum(g, axis=1) / N
        dz = (g - zhat * c_zhat[:, None] - c_mean[:, None]) * rstd[:, None]
        tl.store(dz_ptr + rows[:, None] * stride_dzm + cols[None, :], dz.to(dz_ptr.dtype.element_ty), mask=mask)
        dw += tl.sum(dy * zhat, axis=0)
        db += tl.sum(dy, axis=0)
    tl.store(dw_ptr + pid * N + cols, dw, mask=col_mask)
    tl.store(db_ptr + pid * N + cols, db, mask=col_mask)


def _tiling(width: int, element_size: int) -> tuple[int, int, int]:
    """`(BLOCK_N, ROWS, num_warps)`: a whole row per tile, about 4K elements per program."""
    block_n = triton.next_power_of_2(width)
    if block_n * element_size > MAX_FUSED_BYTES:
        raise ValueError(f"add_layernorm: rows of {width} features do not fit one fused tile.")
    rows = max(1, min(16, 4096 // block_n))
    num_warps = min(16, max(1, rows * block_n // 512))
    return block_n, rows, num_warps


def _rows(t: torch.Tensor) -> torch.Tensor:
    t2d = t.reshape(-1, t.shape[-1])
    return t2d if t2d.stride(-1) == 1 else t2d.contiguous()


def add_layernorm_forward(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(y, mean, rstd)`: `y = LayerNorm(x + residual)` in the promoted input dtype, fp32 `mean`, `rstd` `[rows]`."""
    width = x.shape[-1]
    x2d, r2d = _rows(x), _rows(residual)
    rows = x2d.shape[0]
    y = backend.new_buffer((rows, width), torch.promote_types(x.dtype, residual.dtype), x.device)
    mean = backend.new_buffer((rows,), torch.float32, x.device)
    rstd = backend.new_buffer((rows,), torch.float32, x.device)
    block_n, tile_rows, num_warps = _tiling(width, x.element_size())
    _add_layernorm_kernel[(triton.cdiv(rows, tile_rows),)](
        x2d, r2d, weight.contiguous(), bias.contiguous(), y, mean, rstd,
        rows, width, eps,
        x2d.stride(0), r2d.stride(0), y.stride(0),
        ROWS=tile_rows, BLOCK_N=block_n, num_warps=num_warps,
    )  # fmt: skip
    return y.reshape(x.shape), mean, rstd


def _num_programs(tiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        return min(tiles, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(tiles, 2)


def add_layernorm_backward(
    grad_y: torch.Tensor,
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(grad_sum, grad_weight, grad_bias)`; `grad_sum` (in `x.dtype`) is the gradient of both `x` and `residual`."""
    width = x.shape[-1]
    x2d, r2d, dy2d = _rows(x), _rows(residual), _rows(grad_y)
    rows = x2d.shape[0]
    block_n, tile_rows, num_warps = _tiling(width, x.element_size())
    programs = max(1, _num_programs(triton.cdiv(rows, tile_rows), x.device))
    grad_sum = backend.new_buffer((rows, width), x.dtype, x.device)
    weight_partials = backend.new_buffer((programs, width), torch.float32, x.device)
    bias_partials = backend.new_buffer((programs, width), torch.float32, x.device)
    _add_layernorm_backward_kernel[(programs,)](
        dy2d, x2d, r2d, weight.contiguous(), mean, rstd, grad_sum, weight_partials, bias_partials,
        rows, width,
        dy2d.stride(0), x2d.stride(0), r2d.stride(0), grad_sum.stride(0),
        ROWS=tile_rows, BLOCK_N=block_n, num_warps=num_warps,
    )  # fmt: skip
    grad_weight = weight_partials.sum(0).to(weight.dtype)
    grad_bias = bias_partials.sum(0).to(weight.dtype)
    return grad_sum.reshape(x.shape), grad_weight, grad_bias

"""The M2 projections along the model width: block-diagonal (a single Monarch factor) and order-2 Monarch.

An order-2 Monarch matrix is `M = P L P^T R` with `R` and `L` block-diagonal and `P` the reshape-transpose
permutation (Dao et al., 2022). With `sqrt(n)` blocks of `sqrt(n) x sqrt(n)` in each factor it costs
`2 n sqrt(n)` multiply-adds instead of `n^2`. M2-BERT's MLP uses the single factor (`BlockDiagonalLinear`,
`M2Config.monarch_mlp_order=1`); the paper's canonical layer uses order 2 (`MonarchLinear`) in the MLP and,
along the sequence, in `M2MonarchSequenceMixer`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from ..ops import blockdiag_matmul, monarch_matmul


class BlockDiagonalLinear(nn.Module):
    """`y = blockdiag(W_0, ..., W_{n-1}) x + b`: a single-factor Monarch projection.

    The input's last axis is split into `nblocks` contiguous chunks and chunk `b` meets block `W_b` only.
    `backend` picks the kernels (`M2Config.kernel_backend`).
    """

    def __init__(self, in_features: int, out_features: int, nblocks: int, bias: bool = True, backend: str = "auto"):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(nblocks, out_features // nblocks, in_features // nblocks))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # A dense kaiming-uniform init rescaled by sqrt(dense / block-diagonal size): U(+-1/sqrt(in_block)).
        bound = self.weight.shape[-1] ** -0.5
        init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            init.uniform_(self.bias, -self.out_features**-0.5, self.out_features**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return blockdiag_matmul(x, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.weight.shape[0]}"



def random_orthogonal_blocks(shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """`shape[0]` independent Haar-random orthogonal `shape[1] x shape[2]` blocks, in float32."""
    q, r = torch.linalg.qr(torch.randn(shape, device=device, dtype=torch.float32))
    # QR's Q is Haar-distributed once each column takes the sign of its R diagonal entry.
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


class MonarchLinear(nn.Module):
    """`y = P L P^T R x + b`: an order-2 Monarch projection from `in_features` to `out_features`.

    `R` (`right`, `[nblocks, out_features / nblocks, in_features / nblocks]`) is block-diagonal over contiguous
    chunks of the input; `P^T` regroups its output so that block `j` of `L` (`left`,
    `[out_features / nblocks, nblocks, nblocks]`) sees feature `j` of every `R` block; `P` interleaves the result
    (see `m2_hf.ops.monarch_matmul`). Every output depends on every input. With
    `in_features = out_features = n` and `nblocks = sqrt(n)` both factors have `sqrt(n)` blocks of
    `sqrt(n) x sqrt(n)`: the square Monarch matrix. The cost is `in * out / nblocks + out * nblocks`
    multiply-adds per row.

    Initialisation: with `identity_init` (square only) both factors are identity blocks, so `M = I`. Otherwise `R`
    takes the block-diagonal projection's `U(+-1/sqrt(in_block))` and `L` random orthogonal blocks: `L` preserves
    norms, so `M x` has the scale of a kaiming-uniform dense layer while mixing across all `R` blocks from the
    start.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nblocks: int,
        bias: bool = True,
        identity_init: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if in_features % nblocks or out_features % nblocks:
            raise ValueError(
                f"MonarchLinear: in_features={in_features} and out_features={out_features} must be multiples of "
                f"nblocks={nblocks}."
            )
        if identity_init and in_features != out_features:
            raise ValueError("MonarchLinear: identity_init needs a square matrix (in_features == out_features).")
        self.in_features = in_features
        self.out_features = out_features
        self.identity_init = identity_init
        self.backend = backend
        self.right = nn.Parameter(torch.empty(nblocks, out_features // nblocks, in_features // nblocks))
        self.left = nn.Parameter(torch.empty(out_features // nblocks, nblocks, nblocks))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.identity_init:
            init.copy_(self.right, torch.eye(self.right.shape[-1]).expand_as(self.right))
            init.copy_(self.left, torch.eye(self.left.shape[-1]).expand_as(self.left))
        else:
            bound = self.right.shape[-1] ** -0.5
            init.uniform_(self.right, -bound, bound)
            init.copy_(self.left, random_orthogonal_blocks(tuple(self.left.shape), self.left.device))
        if self.bias is not None:
            init.uniform_(self.bias, -(self.out_features**-0.5), self.out_features**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = monarch_matmul(x, self.right, self.left, backend=self.backend)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nblocks={self.right.shape[0]}, "
            f"bias={self.bias is not None}"
        )

"""The paper's canonical Monarch Mixer parts: order-2 Monarch projections and the Monarch sequence mixer.

An order-2 Monarch matrix is `M = P L P^T R` with `R` and `L` block-diagonal and `P` the reshape-transpose
permutation (Dao et al., 2022). With `sqrt(n)` blocks of `sqrt(n) x sqrt(n)` in each factor it costs
`2 n sqrt(n)` multiply-adds instead of `n^2`. The canonical M2 layer (Fu et al., 2023) uses such matrices along
both axes: along the sequence, with an elementwise kernel between two of them (`M2MonarchSequenceMixer`), and
along the model dimension (`MonarchLinear`, the MLP projections with `M2Config.monarch_mlp_order=2`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN

from ..ops import monarch_matmul
from .configuration_m2 import M2Config


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


class M2MonarchSequenceMixer(nn.Module):
    r"""The paper's canonical M2 sequence mixing, `sequence_mixer="monarch"`. Per channel `c`, along the sequence:

        u = LayerNorm(x)                           (with `mixer_layernorm` or `norm_position="pre"`)
        y[:, c] = M_2 act(K[c] * (M_1 u[:, c]))    (cut back to the input length)

    `M_1` and `M_2` are learnable `N x N` order-2 Monarch matrices shared by all channels, with
    `(nblocks, block_size) = config.monarch_sequence_grid` and `N = nblocks * block_size >= filter_max_length`;
    `K` (`kernel`, `[H, N]`) is a learnable elementwise kernel and `act` is `config.monarch_mixer_act` (ReLU, as
    in the paper's layer). Each sequence is zero-padded to `N` first. This generalises M2-BERT's FFT convolution
    `F^{-1} (K * F u)`, whose DFT matrices are (complex) Monarch products, to learnt real Monarch factors.

    The mixer is bidirectional, not causal: every output position depends on every input position.

    Padding: with a padding mask each row's real tokens move, in their order, to the start of the grid (the
    padding is zeroed and moves behind them), and the outputs move back. A real token's output is then what the
    real tokens alone give, for right, left and inner padding alike, matching position ids that count real tokens.

    Initialisation: `M_1 = M_2 = I` (identity blocks) and `K = 1`, so every layer starts as the position-wise
    `act(u)`: unit gain on every path, and a stack starts as stable as a stack of MLPs. The off-diagonal block
    entries (mixing within windows of `block_size` consecutive positions in `R`, across windows with stride
    `block_size` in `L`) get gradients from the first step and learn the mixing; a random Monarch init would
    instead scramble the positions in every layer before anything is learnt.
    """

    def __init__(self, config: M2Config):
        super().__init__()
        nblocks, block_size = config.monarch_sequence_grid
        self.grid_length = nblocks * block_size
        normalise_input = config.mixer_layernorm or config.norm_position == "pre"
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.mixer_layernorm_eps) if normalise_input else None
        self.input_monarch = MonarchLinear(
            self.grid_length, self.grid_length, nblocks, bias=False, identity_init=True, backend=config.kernel_backend
        )
        self.kernel = nn.Parameter(torch.empty(config.hidden_size, self.grid_length))
        self.act = ACT2FN[config.monarch_mixer_act]
        self.output_monarch = MonarchLinear(
            self.grid_length, self.grid_length, nblocks, bias=False, identity_init=True, backend=config.kernel_backend
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Reset the kernel; the Monarch matrices and the LayerNorm reset themselves."""
        init.ones_(self.kernel)

    def forward(
        self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None = None, cache: object | None = None
    ) -> torch.Tensor:
        """`hidden_states` `[B, L, H]` with `L <= N`; `padding_mask` `[B, 1, L]` (1 = real token), or None to mix
        every position. Returns `[B, L, H]`. There is no `cache`: the mixer is not causal."""
        if cache is not None:
            raise ValueError("The Monarch sequence mixer is bidirectional; it cannot continue a cached sequence.")
        seq_len = hidden_states.shape[1]
        if seq_len > self.grid_length:
            raise ValueError(f"Input length {seq_len} exceeds the Monarch sequence grid of {self.grid_length}.")
        mixer_input = self.layernorm(hidden_states) if self.layernorm is not None else hidden_states
        sequences = mixer_input.transpose(1, 2)  # [B, H, L]
        order = None
        if padding_mask is not None:
            sequences = sequences * padding_mask
            # A stable sort of the padding flags lists the real positions first, in their order.
            order = torch.argsort((padding_mask[:, 0] == 0).int(), dim=-1, stable=True)
            order = order.unsqueeze(1).expand_as(sequences)
            sequences = sequences.gather(-1, order)
        grid = F.pad(sequences, (0, self.grid_length - seq_len))  # [B, H, N]
        mixed = self.output_monarch(self.act(self.kernel * self.input_monarch(grid)))[..., :seq_len]
        if order is not None:
            mixed = torch.zeros_like(mixed).scatter(-1, order, mixed)  # back to the input positions
        return mixed.transpose(1, 2)

"""The paper's canonical M2 sequence mixer (`sequence_mixer="monarch"`): Monarch matrices along the sequence.

Order-2 Monarch matrices `M = P L P^T R` (`projections.MonarchLinear`) replace the DFTs of M2-BERT's FFT
convolution `F^{-1} (K * F u)` with learnt real factors around an elementwise kernel.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from transformers import initialization as init
from transformers.activations import ACT2FN

from .configuration_m2 import M2Config
from .projections import MonarchLinear


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

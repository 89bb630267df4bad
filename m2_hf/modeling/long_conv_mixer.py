"""M2-BERT's sequence mixer: a gated long convolution with implicit filters, bidirectional or causal.

    gate_in, gate_out, value = shortconv(in_proj(u))
    y = out_proj(gate_out * (longconv(value * gate_in) + D value * gate_in) [+ longconv_2(u) + D_2 u])

`long_filter` gives the taps of the main convolution and `residual_filter` those of the optional residual one
(`residual_long_conv`), both implicit (`implicit_filter.py`). With a padding mask, padding is zeroed before every
convolution.

One computation serves every call. Without a cache, or prefilling an empty one, the whole sequence is new: the
fused ops compute the short conv, split and pre-gate in one pass (`mixer_front`) and the long convolution with its
skip term and post-gate in another (`gated_long_conv`); the cache then only stores what later tokens need. A chunk
that continues a cache prepends the stored short-conv inputs and convolves the whole history; a single decoding
step reads the cache's step convolution (`M2CacheLayer.long_conv_step`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init

from ..ops import causal_depthwise_conv, gated_long_conv, mixer_front
from ..ops.long_conv import kernel_spectrum_layout
from .cache_m2 import M2CacheLayer
from .configuration_m2 import M2Config
from .implicit_filter import M2ImplicitFilter


class CausalShortConv(nn.Module):
    """Depthwise causal convolution `y[c, t] = b[c] + sum_j w[c, j] x[c, t - K + 1 + j]` over `[B, C, L]`.

    The mixer reads its `weight` and `bias` through the fused `mixer_front` op; `forward` is the plain convolution.
    """

    def __init__(self, channels: int, kernel_size: int, backend: str = "auto"):
        super().__init__()
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's Conv1d default, U(+-1/sqrt(kernel size)): a 0.02-normal short conv would starve the gates.
        bound = self.weight.shape[-1] ** -0.5
        init.uniform_(self.weight, -bound, bound)
        init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_depthwise_conv(x, self.weight, self.bias, backend=self.backend)


class M2LongConvMixer(nn.Module):
    """Gated long-convolution sequence mixer (`sequence_mixer="long_conv"`), see the module docstring."""

    def __init__(self, config: M2Config):
        super().__init__()
        hidden = config.hidden_size
        self.hidden_size = hidden
        self.backend = config.kernel_backend
        normalise_input = config.mixer_layernorm or config.norm_position == "pre"
        self.layernorm = nn.LayerNorm(hidden, eps=config.mixer_layernorm_eps) if normalise_input else None
        self.in_proj = nn.Linear(hidden, 3 * hidden)
        self.short_conv = CausalShortConv(3 * hidden, config.short_conv_size, backend=self.backend)
        self.long_filter = M2ImplicitFilter(config)
        self.residual_filter = M2ImplicitFilter(config) if config.residual_long_conv else None
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        cache: M2CacheLayer | None = None,
    ) -> torch.Tensor:
        """`hidden_states` `[B, L, H]`; `padding_mask` `[B, 1, L]` (1 = real token) zeroes padding before
        every convolution, or None to convolve every position. With `cache` (causal mixers only) the input
        continues the cached sequence and the cache is extended with it."""
        seq_len = hidden_states.shape[1]
        mixer_input = self.layernorm(hidden_states) if self.layernorm is not None else hidden_states
        projected = self.in_proj(mixer_input)  # [B, L, 3H], the layout mixer_front reads in place
        front_input, front_mask = projected, padding_mask
        if cache is not None:
            # The stored last K-1 (masked) inputs go first; their outputs were produced at earlier calls.
            front_input, front_mask = cache.extend_short_conv_input(projected, padding_mask)
        weight, bias = self.short_conv.weight, self.short_conv.bias
        gated_value, post_gate = mixer_front(front_input, weight, bias, front_mask, backend=self.backend)
        if front_input is not projected:
            gated_value, post_gate = gated_value[..., -seq_len:], post_gate[..., -seq_len:]

        residual_input, residual_gate = None, None
        if self.residual_filter is not None:
            residual_input, residual_gate = mixer_input.transpose(1, 2), padding_mask  # [B, H, L]
        gated_history, residual_history = gated_value, residual_input
        if cache is not None:
            if residual_gate is not None:
                residual_input, residual_gate = residual_input * residual_gate, None  # histories are stored masked
            gated_history, residual_history = cache.append_conv_inputs(gated_value, residual_input)

        mixed = self._long_conv("long", self.long_filter, gated_value, gated_history, cache, post_gate=post_gate)
        if self.residual_filter is not None:
            mixed = mixed + self._long_conv(
                "residual", self.residual_filter, residual_input, residual_history, cache, pre_gate=residual_gate
            )
        return self.out_proj(mixed.transpose(1, 2))

    def _long_conv(
        self,
        name: str,
        implicit_filter: M2ImplicitFilter,
        new_input: torch.Tensor,
        history: torch.Tensor,
        cache: M2CacheLayer | None,
        pre_gate: torch.Tensor | None = None,
        post_gate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`post_gate * (conv(s, k) + D s)` `[B, H, L]` for the `L` columns of `new_input`, `s = new_input *
        pre_gate`, continuing `history` `[B, H, past + L]` (the cached columns followed by `new_input`)."""
        seq_len, total = new_input.shape[-1], history.shape[-1]
        skip = implicit_filter.skip
        if total == seq_len:  # nothing earlier: without a cache, or prefilling an empty one
            spectrum = self._spectrum(implicit_filter, new_input)
            return gated_long_conv(new_input, spectrum, skip, pre_gate, post_gate, backend=self.backend)
        if seq_len == 1:
            output = cache.long_conv_step(name, implicit_filter, history)
        else:
            spectrum = self._spectrum(implicit_filter, history)
            output = gated_long_conv(history, spectrum, skip, backend=self.backend)[..., total - seq_len :]
        output = output.to(new_input.dtype)
        return output if post_gate is None else output * post_gate

    def _spectrum(self, implicit_filter: M2ImplicitFilter, conv_input: torch.Tensor) -> torch.Tensor:
        """The filter's spectrum for `conv_input`'s length, in the layout the call consumes (cached in inference)."""
        return implicit_filter.spectrum(conv_input.shape[-1], kernel_spectrum_layout(conv_input, self.backend))

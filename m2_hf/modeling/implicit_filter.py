"""Implicit long-convolution filters of the M2 sequence mixer.

A filter is not stored tap by tap: a small MLP maps positional features `z_i` to one tap per channel, and an
exponential window makes it decay along the sequence,

    k[c, i] = MLP(z_i)[c] * exp(-t_i * |delta_c|),    MLP = W_n sin(w W_{n-1} ... sin(w (W_1 z + b_1)) ...)

with one trainable frequency vector `w` shared by every activation of the forward and reverse MLPs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..ops import long_conv_kernel, long_conv_spectrum
from .configuration_m2 import M2Config


def filter_features(length: int, emb_dim: int) -> torch.Tensor:
    """Initial positional features `[1, length, emb_dim]`: `[t_i, Re e^{-i f w_i}, Im e^{-i f w_i}]`.

    `t_i = i / (length - 1)`, `w_i = 2 pi i / length` and `f` takes `(emb_dim - 1) // 2` bands from 1e-4 to
    `bands - 1`. The features are trained afterwards (they are parameters, not a fixed encoding). They are
    computed in at least float32 (CPU has no half-precision complex `exp`) and returned in the default dtype.
    """
    dtype = torch.get_default_dtype()
    compute_dtype = torch.promote_types(dtype, torch.float32)
    bands = (emb_dim - 1) // 2
    time = torch.linspace(0, 1, length, dtype=compute_dtype)[None, :, None]
    angle = 2 * math.pi * torch.linspace(0, length - 1, length, dtype=compute_dtype)[None, :, None] / length
    freqs = torch.linspace(1e-4, bands - 1, bands, dtype=compute_dtype)[None, None]
    phase = torch.exp(-1j * freqs * angle)
    return torch.cat([time, phase.real, phase.imag], dim=-1).to(dtype)


def filter_positions(length: int) -> torch.Tensor:
    """Normalised positions `t_i = i / (length - 1)`, `[1, length, 1]`."""
    return torch.linspace(0, 1, length)[None, :, None]


def filter_decay_rates(channels: int, fast: float, slow: float, target: float) -> torch.Tensor:
    """Decay rates `delta_c` `[1, 1, channels]`: channel c's window reaches `target` after a fraction of the
    grid running linearly from `slow` (first channel) to `fast` (last channel)."""
    return torch.linspace(math.log(target) / slow, math.log(target) / fast, channels)[None, None]


def _filter_mlp(config: M2Config) -> nn.ModuleList:
    widths = [config.filter_emb_dim] + [config.filter_order] * (config.filter_num_inner_layers + 1)
    layers = [nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:])]
    layers.append(nn.Linear(config.filter_order, config.hidden_size, bias=False))
    return nn.ModuleList(layers)


class M2ImplicitFilter(nn.Module):
    """One long convolution's filters (forward and, when bidirectional, reverse) and its skip weight `D`.

    In eval mode, when no gradient is needed, the filter spectrum for each length is computed once and reused
    until any filter weight changes (tracked through the tensors' version counters), in the layout the long
    convolution consumes (the complex spectrum for the torch.fft path, the fused kernels' layout for them).
    Inference then does no filter work per call.
    """

    def __init__(self, config: M2Config):
        super().__init__()
        grid = config.filter_max_length
        self.sin_scale = config.filter_sin_freq_scale
        self.skip = nn.Parameter(torch.randn(config.hidden_size))
        self.features = nn.Parameter(filter_features(grid, config.filter_emb_dim))
        self.frequency = nn.Parameter(torch.full((1, config.filter_order), float(config.filter_sin_freq)))
        self.register_buffer("positions", filter_positions(grid), persistent=False)
        self.register_buffer(
            "decay_rates",
            filter_decay_rates(
                config.hidden_size, config.filter_decay_fast, config.filter_decay_slow, config.filter_decay_target
            ),
            persistent=False,
        )
        self.forward_mlp = _filter_mlp(config)
        self.reverse_mlp = _filter_mlp(config) if config.bidirectional else None
        self._spectrum_cache: dict = {}
        self._cache_version: tuple | None = None

    def _mlp(self, layers: nn.ModuleList, features: torch.Tensor) -> torch.Tensor:
        hidden = features
        for layer in layers[:-1]:
            hidden = torch.sin(self.sin_scale * self.frequency * layer(hidden))
        return layers[-1](hidden)

    def filters(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The forward and reverse filters `[H, seq_len]` (the reverse one is None when causal)."""
        features = self.features[:, :seq_len]
        window = torch.exp(-self.positions[:, :seq_len] * self.decay_rates.abs())
        forward_filter = (self._mlp(self.forward_mlp, features) * window)[0].transpose(0, 1)
        if self.reverse_mlp is None:
            return forward_filter, None
        reverse_filter = (self._mlp(self.reverse_mlp, features) * window)[0].transpose(0, 1)
        return forward_filter, reverse_filter

    def _compute_spectrum(self, seq_len: int) -> torch.Tensor:
        forward_filter, reverse_filter = self.filters(seq_len)
        real_dtype = torch.promote_types(forward_filter.dtype, torch.float32)
        kernel = long_conv_kernel(
            forward_filter.to(real_dtype), None if reverse_filter is None else reverse_filter.to(real_dtype)
        )
        return long_conv_spectrum(kernel, seq_len)

    def _weights_version(self) -> tuple:
        tensors = [p for p in self.parameters() if p is not self.skip] + [self.positions, self.decay_rates]
        return tuple((t._version, t.data_ptr(), t.dtype) for t in tensors)

    def spectrum(self, seq_len: int, layout=None) -> torch.Tensor:
        """FFT (size `2 * seq_len`) of the convolution kernel for inputs of length `seq_len`, `[H, seq_len + 1]`,
        or that spectrum converted by `layout` (the fused kernels' `KernelSpectrumLayout`, see
        `m2_hf.ops.long_conv.kernel_spectrum_layout`)."""
        if layout is None:
            return self._cached((seq_len, None), lambda: self._compute_spectrum(seq_len))
        return self._cached((seq_len, layout), lambda: layout(self.spectrum(seq_len), seq_len))

    def _cached(self, key: tuple, compute) -> torch.Tensor:
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if self.training or needs_grad or torch.compiler.is_compiling():
            return compute()
        version = self._weights_version()
        if version != self._cache_version:
            self._spectrum_cache = {}
            self._cache_version = version
        cached = self._spectrum_cache.get(key)
        if cached is None:
            cached = self._spectrum_cache[key] = compute()
        return cached

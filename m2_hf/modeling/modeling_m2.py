"""Monarch Mixer (M2) encoder models: M2-BERT and its heads.

An M2 layer replaces attention with a gated long convolution whose filters are implicit (see
`implicit_filter.py`) and the dense MLP with block-diagonal (Monarch) projections:

    mixer:  x1, x2, v = shortconv(in_proj(u));  y = x2 * (longconv(v * x1) + D v) [+ longconv2(u) + D2 u]
    layer:  h = out_proj(y);  out = LayerNorm(h + MLP(h))                        (norm_position="post")
            h = x + out_proj(y(LayerNorm(x)));  out = h + MLP(LayerNorm(h))     (norm_position="pre")

The post-norm layer's residual is the mixer output, exactly as in the original M2-BERT. The pre-norm layer is the
usual residual block of GPT- and ViT-style models; the model then ends with a final LayerNorm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils.generic import can_return_tuple

from ..ops import add_layernorm, blockdiag_glu, blockdiag_matmul, causal_depthwise_conv, gated_long_conv, mixer_front
from .cache_m2 import M2Cache, M2CacheLayer
from .configuration_m2 import M2Config
from .implicit_filter import M2ImplicitFilter, filter_decay_rates, filter_features, filter_positions
from .monarch_mixer import M2MonarchSequenceMixer, MonarchLinear
from .transformers_compat import resolve_cache_argument, with_load_defaults

# Activations (`config.hidden_act`) the fused GLU kernel computes, by the kernel's name for them.
GLU_KERNEL_ACTIVATIONS = {"gelu": "gelu", "silu": "silu", "swish": "silu"}


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


class CausalShortConv(nn.Module):
    """Depthwise causal convolution `y[c, t] = b[c] + sum_j w[c, j] x[c, t - K + 1 + j]` over `[B, C, L]`."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # PyTorch's Conv1d default, U(+-1/sqrt(kernel size)): a 0.02-normal short conv would starve the gates.
        bound = self.weight.shape[-1] ** -0.5
        init.uniform_(self.weight, -bound, bound)
        init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_depthwise_conv(x, self.weight, self.bias)

    def step(self, window: torch.Tensor) -> torch.Tensor:
        """The output for the last of the `K` input columns `window` `[B, C, K]`, as `[B, C, 1]` (a decoding step)."""
        return (torch.einsum("bck,ck->bc", window, self.weight[:, 0].to(window.dtype)) + self.bias)[..., None]


class M2Embeddings(nn.Module):
    """`LayerNorm(word[ids] + token_type[tt] + position[pos])`, then dropout."""

    def __init__(self, config: M2Config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.use_position_embeddings
            else None
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        inputs_embeds: torch.Tensor | None,
        token_type_ids: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        embeddings = inputs_embeds
        if self.token_type_embeddings is not None:
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        if self.position_embeddings is not None:
            embeddings = embeddings + self.position_embeddings(position_ids)
        return self.dropout(self.layernorm(embeddings))


class M2LongConvMixer(nn.Module):
    """M2-BERT's sequence mixer: gated bidirectional (or causal) long convolution with implicit filters."""

    def __init__(self, config: M2Config):
        super().__init__()
        hidden = config.hidden_size
        self.hidden_size = hidden
        normalise_input = config.mixer_layernorm or config.norm_position == "pre"
        self.layernorm = nn.LayerNorm(hidden, eps=config.mixer_layernorm_eps) if normalise_input else None
        self.in_proj = nn.Linear(hidden, 3 * hidden)
        self.short_conv = CausalShortConv(3 * hidden, config.short_conv_size)
        self.long_filter = M2ImplicitFilter(config)
        self.residual_filter = M2ImplicitFilter(config) if config.residual_long_conv else None
        self.out_proj = nn.Linear(hidden, hidden)
        self.backend = config.kernel_backend

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
        if cache is None:
            return self.out_proj(self._mix(mixer_input, padding_mask).transpose(1, 2))
        projected = self.in_proj(mixer_input).transpose(1, 2)  # [B, 3H, L]
        if padding_mask is not None:
            projected = projected * padding_mask
        if seq_len == 1:
            projected = self.short_conv.step(cache.update_short_conv_input(projected))
        else:
            # The cached last K-1 inputs go first; their outputs were produced at earlier steps.
            projected = self.short_conv(cache.update_short_conv_input(projected))[..., -seq_len:]
        pre_gate, post_gate, value = projected.split(self.hidden_size, dim=1)
        gated_value = value * pre_gate
        if padding_mask is not None:
            gated_value = gated_value * padding_mask
        residual = None
        if self.residual_filter is not None:
            residual = mixer_input.transpose(1, 2)
            if padding_mask is not None:
                residual = residual * padding_mask
        gated_value, residual = cache.append_conv_inputs(gated_value, residual)  # the whole histories
        mixed = self._long_conv(gated_value, seq_len, self.long_filter, cache, "long").to(post_gate.dtype) * post_gate
        if residual is not None:
            mixed = mixed + self._long_conv(residual, seq_len, self.residual_filter, cache, "residual").to(mixed.dtype)
        return self.out_proj(mixed.transpose(1, 2))

    def _mix(self, mixer_input: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The mixer without a cache, `[B, H, L]` before `out_proj`, with the fused kernels where they apply: one
        pass for the short conv, split and pre-gate, one for the long conv with skip term and post-gate."""
        seq_len = mixer_input.shape[1]
        gated_value, post_gate = mixer_front(
            self.in_proj(mixer_input), self.short_conv.weight, self.short_conv.bias, padding_mask, backend=self.backend
        )
        spectrum, skip = self.long_filter.spectrum(seq_len), self.long_filter.skip
        mixed = gated_long_conv(gated_value, spectrum, skip, post_gate=post_gate, backend=self.backend)
        if self.residual_filter is not None:
            spectrum, skip = self.residual_filter.spectrum(seq_len), self.residual_filter.skip
            residual_input = mixer_input.transpose(1, 2)
            mixed = mixed + gated_long_conv(residual_input, spectrum, skip, pre_gate=padding_mask, backend=self.backend)
        return mixed

    @staticmethod
    def _long_conv(
        history: torch.Tensor,
        seq_len: int,
        implicit_filter: M2ImplicitFilter,
        cache: M2CacheLayer | None,
        name: str,
    ) -> torch.Tensor:
        """Long convolution outputs `[B, H, seq_len]` for the last `seq_len` columns of `history` `[B, H, T]`."""
        total = history.shape[-1]
        if cache is not None and seq_len == 1 and total > 1:
            return cache.long_conv_step(name, implicit_filter, history)  # one decoding step
        return gated_long_conv(history, implicit_filter.spectrum(total), implicit_filter.skip)[..., total - seq_len :]


class M2MonarchMLP(nn.Module):
    """`LayerNorm(x + out(act(gate) * value))` with block-diagonal projections (GLU), or without the gate.

    With `norm_position="pre"` the LayerNorm moves to the input: `x + out(act(gate) * value)` of `LayerNorm(x)`.
    """

    def __init__(self, config: M2Config):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.pre_norm = config.norm_position == "pre"
        self.glu = config.glu_mlp
        inner = 2 * config.intermediate_size if config.glu_mlp else config.intermediate_size
        # Order 1: M2-BERT's single block-diagonal factor; order 2: a Monarch matrix P L P^T R.
        projection = BlockDiagonalLinear if config.monarch_mlp_order == 1 else MonarchLinear
        nblocks, backend = config.monarch_mlp_nblocks, config.kernel_backend
        self.in_proj = projection(config.hidden_size, inner, nblocks, bias=False, backend=backend)
        self.act = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.out_proj = projection(config.intermediate_size, config.hidden_size, nblocks, backend=backend)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.backend = backend
        # The fused GLU kernel computes act(gate) * value without the 2I-wide projection (order-1 factor only).
        fusable = projection is BlockDiagonalLinear
        self.fused_glu_activation = GLU_KERNEL_ACTIVATIONS.get(config.hidden_act) if fusable else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mlp_input = self.layernorm(hidden_states) if self.pre_norm else hidden_states
        # The fused kernel reads the block weight itself: only for a plain block-diagonal projection (not one
        # wrapped by an adapter, see m2_hf.peft).
        if self.glu and self.fused_glu_activation is not None and isinstance(self.in_proj, BlockDiagonalLinear):
            inner = blockdiag_glu(mlp_input, self.in_proj.weight, self.fused_glu_activation, backend=self.backend)
        elif self.glu:
            gate, value = self.in_proj(mlp_input).split(self.intermediate_size, dim=-1)
            inner = self.act(gate) * value
        else:
            inner = self.act(self.in_proj(mlp_input))
        output = self.out_proj(self.dropout(inner))
        if self.pre_norm:
            return output + hidden_states
        norm = self.layernorm
        return add_layernorm(output, hidden_states, norm.weight, norm.bias, norm.eps, backend=self.backend)


class M2Layer(GradientCheckpointingLayer):
    """Sequence mixer, then the Monarch MLP.

    Post-norm (M2-BERT): the MLP's residual is the mixer output. Pre-norm: both sublayers are residual blocks.
    """

    def __init__(self, config: M2Config):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.mixer = M2MonarchSequenceMixer(config) if config.sequence_mixer == "monarch" else M2LongConvMixer(config)
        self.mlp = M2MonarchMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        cache: M2CacheLayer | None = None,
    ) -> torch.Tensor:
        """`cache` is this layer's `M2CacheLayer` when decoding with a cache."""
        mixed = self.mixer(hidden_states, padding_mask, cache)
        if self.pre_norm:
            mixed = mixed + hidden_states
        return self.mlp(mixed)


class M2Pooler(nn.Module):
    """`tanh(dense(h_first))`, or `tanh(dense(masked mean of h))` with `pooling="mean"`."""

    def __init__(self, config: M2Config):
        super().__init__()
        self.pooling = config.pooling
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None, first_index: torch.Tensor | None):
        if self.pooling == "mean":
            if mask is None:
                pooled = hidden_states.mean(dim=1)
            else:
                # A row without real tokens pools zeros: its count is clamped, as in sentence-transformers.
                weights = mask.to(hidden_states.dtype).unsqueeze(-1)
                pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        elif first_index is None:
            pooled = hidden_states[:, 0]
        else:
            pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), first_index]
        return self.activation(self.dense(pooled))


class M2PreTrainedModel(PreTrainedModel):
    config_class = M2Config
    config: M2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["M2Layer"]

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, with `use_kernels=False` unless asked otherwise: M2 runs its own
        kernels, not transformers' hub kernels (which transformers 5.25 turns on by default)."""
        return super().from_pretrained(*args, **with_load_defaults(kwargs))

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        config = self.config
        if isinstance(module, M2ImplicitFilter):
            grid = config.filter_max_length
            init.normal_(module.skip, mean=0.0, std=1.0)
            init.copy_(module.features, filter_features(grid, config.filter_emb_dim))
            init.constant_(module.frequency, float(config.filter_sin_freq))
            init.copy_(module.positions, filter_positions(grid))
            init.copy_(
                module.decay_rates,
                filter_decay_rates(
                    config.hidden_size, config.filter_decay_fast, config.filter_decay_slow, config.filter_decay_target
                ),
            )
        elif isinstance(module, (BlockDiagonalLinear, CausalShortConv, MonarchLinear, M2MonarchSequenceMixer)):
            module.reset_parameters()


def _check_ids(name: str, ids: torch.Tensor, upper: int, error: type[Exception]) -> None:
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {ids.dtype}.")
    if torch.compiler.is_compiling() or ids.numel() == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= upper:
        raise error(f"{name} must be in [0, {upper}), got values in [{low}, {high}].")


def check_label_shape(labels: torch.Tensor | None, shape) -> None:
    """Per-token labels must have the input's `(batch, seq_len)` shape."""
    if labels is not None and tuple(labels.shape) != tuple(shape):
        raise ValueError(f"labels must have the shape of the input, {tuple(shape)}, got {tuple(labels.shape)}.")


def _check_mask(mask: torch.Tensor) -> None:
    """A mask is bool, or integers/floats that are all 0 or 1."""
    if mask.dtype == torch.bool:
        return
    if mask.is_complex():
        raise ValueError(f"attention_mask must be a bool, integer or float tensor, got dtype {mask.dtype}.")
    if torch.compiler.is_compiling():
        return
    other = mask[(mask != 0) & (mask != 1)]
    if other.numel():
        raise ValueError(
            "attention_mask must hold only 0 and 1 (1 for real tokens, 0 for padding) or be a bool tensor, got "
            f"{other.flatten()[0].item()}."
        )


def _record_hidden_states(hidden_states: torch.Tensor, seq_len: int, recorded: list) -> torch.Tensor:
    """Append `hidden_states` cut to the input length `seq_len` to `recorded`; return the states to go on with.

    When the model padded the input (`pad_to_max_length`), the states go on as the recorded cut concatenated with
    the padding (the same values), so that the recorded tensor is part of the graph that computes the outputs.
    """
    if hidden_states.shape[1] == seq_len:
        recorded.append(hidden_states)
        return hidden_states
    states, padding = hidden_states.split([seq_len, hidden_states.shape[1] - seq_len], dim=1)
    recorded.append(states)
    return torch.cat([states, padding], dim=1)


@dataclass
class M2ModelOutput(BaseModelOutputWithPooling):
    """`BaseModelOutputWithPooling` plus the cache of a causal model (`cache`, None without one)."""

    cache: M2Cache | None = None

    @property
    def past_key_values(self) -> M2Cache | None:
        """The cache under its name before transformers 5.24."""
        return self.cache


class M2Model(M2PreTrainedModel):
    """The M2 encoder: embeddings, `num_hidden_layers` M2 layers and an optional pooler."""

    def __init__(self, config: M2Config, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = M2Embeddings(config)
        self.layers = nn.ModuleList([M2Layer(config) for _ in range(config.num_hidden_layers)])
        self.final_layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_position == "pre" else None
        )
        self.pooler = M2Pooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

    def _input_shape(self, input_ids, inputs_embeds) -> tuple[int, int]:
        """`(batch, seq_len)` of the input, checked before anything else reads it."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        if input_ids is not None:
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}.")
            shape = tuple(input_ids.shape)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, seq_len, {self.config.hidden_size}), "
                    f"got {tuple(inputs_embeds.shape)}."
                )
            shape = tuple(inputs_embeds.shape[:2])
        if shape[0] == 0:
            raise ValueError("The input is an empty batch (batch size 0).")
        return shape

    def _validate_inputs(self, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, past_length=0):
        shape = self._input_shape(input_ids, inputs_embeds)
        if input_ids is not None:
            _check_ids("input_ids", input_ids, self.config.vocab_size, IndexError)
        for name, tensor in (
            ("attention_mask", attention_mask),
            ("token_type_ids", token_type_ids),
            ("position_ids", position_ids),
        ):
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"{name} must have the shape of the input, {shape}, got {tuple(tensor.shape)}.")
        if attention_mask is not None:
            _check_mask(attention_mask)
        if token_type_ids is not None:
            if self.config.type_vocab_size == 0:
                raise ValueError("token_type_ids were given, but this model has no token types (type_vocab_size=0).")
            _check_ids("token_type_ids", token_type_ids, self.config.type_vocab_size, IndexError)
        if position_ids is not None and self.config.use_position_embeddings:
            _check_ids("position_ids", position_ids, self.config.max_position_embeddings, IndexError)
        seq_len, limit = shape[1], self.config.max_sequence_length
        if seq_len == 0:
            raise ValueError("The input sequence is empty (seq_len = 0).")
        if past_length + seq_len > limit:
            cached = f"{past_length} cached plus {seq_len} new tokens" if past_length else f"Input length {seq_len}"
            raise ValueError(
                f"{cached} exceeds this model's maximum sequence length {limit} "
                "(max_position_embeddings / long_conv_max_length); truncate the input, e.g. with the tokenizer's "
                f"truncation=True, max_length={limit}."
            )
        return shape

    def _pad_to_max_length(self, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids):
        """Right-pad every input to the trained length with [PAD] (mask 0, token type 0)."""
        batch, seq_len = attention_mask.shape
        extra = self.config.max_sequence_length - seq_len
        if extra <= 0:
            return input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids
        pad = self.config.pad_token_id
        device = attention_mask.device
        if input_ids is not None:
            input_ids = torch.cat([input_ids, input_ids.new_full((batch, extra), pad)], dim=1)
        else:
            pad_embedding = self.embeddings.word_embeddings.weight[pad].to(inputs_embeds.dtype)
            inputs_embeds = torch.cat([inputs_embeds, pad_embedding.expand(batch, extra, -1)], dim=1)
        attention_mask = torch.cat([attention_mask, attention_mask.new_zeros(batch, extra)], dim=1)
        token_type_ids = torch.cat([token_type_ids, token_type_ids.new_zeros(batch, extra)], dim=1)
        if position_ids is not None:
            tail = torch.arange(seq_len, seq_len + extra, device=device).expand(batch, -1)
            position_ids = torch.cat([position_ids, tail], dim=1)
        return input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        cache: M2Cache | None = None,
        use_cache: bool | None = None,
        past_key_values: M2Cache | None = None,
        **kwargs,
    ) -> M2ModelOutput:
        r"""
        attention_mask (`torch.Tensor` of shape `(batch, seq_len)`, *optional*):
            1 for real tokens, 0 for padding. With `config.mask_padding` padding is zeroed before every
            convolution and positions count from the first real token; otherwise only mean pooling reads it.
            With a cache it may also cover the cached tokens, `(batch, past + seq_len)`.
        cache (`M2Cache`, *optional*):
            The state of the sequence so far (causal models only); the input continues it and it is updated in
            place.
        use_cache (`bool`, *optional*, defaults to `False`):
            Return an `M2Cache` (a new one when `cache` is None) to continue the sequence later.
        past_key_values (`M2Cache`, *optional*):
            The older name of `cache`, accepted for code written against transformers before 5.24.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        cache = resolve_cache_argument(cache, past_key_values)
        if self._checkpointing_in_training():
            if cache is not None:
                raise ValueError(
                    "A cache cannot be continued with activation checkpointing in training: the backward pass "
                    "recomputes each layer, which would extend the cache twice. Call model.eval() or disable "
                    "activation checkpointing."
                )
            use_cache = False
        batch, new_length = self._input_shape(input_ids, inputs_embeds)
        if use_cache and cache is None:
            cache = M2Cache(self.config)
        past_length = 0
        if cache is not None:
            if self.config.bidirectional:
                raise ValueError("A cache needs causal sequence mixers; this config is bidirectional.")
            if self.config.pad_to_max_length:
                raise ValueError("pad_to_max_length cannot be combined with a cache.")
            cache.check_batch_size(batch)
            past_length = cache.get_seq_length()
            if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] > new_length:
                attention_mask = attention_mask[:, -new_length:]  # the cached part is already accounted for
        batch, seq_len = self._validate_inputs(
            input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, past_length
        )
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        given_mask = attention_mask is not None
        if attention_mask is None:
            attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device=device)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        if self.config.pad_to_max_length:
            given_mask = True
            input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids = self._pad_to_max_length(
                input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids
            )

        masking = self.config.mask_padding and given_mask
        if position_ids is None:
            if masking:
                position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
            else:
                position_ids = torch.arange(attention_mask.shape[1], device=device).expand(batch, -1)
            if cache is not None:
                position_ids = position_ids + cache.position_offsets(batch, device)
        if cache is not None:
            cache.record_tokens(attention_mask if masking else torch.ones_like(attention_mask))

        hidden_states = self.embeddings(input_ids, inputs_embeds, token_type_ids, position_ids)
        padding_mask = attention_mask.to(hidden_states.dtype).unsqueeze(1) if masking else None
        all_hidden_states = [] if output_hidden_states else None
        for index, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden_states = _record_hidden_states(hidden_states, seq_len, all_hidden_states)
            layer_cache = cache.layers[index] if cache is not None else None
            hidden_states = layer(hidden_states, padding_mask, cache=layer_cache)
        if self.final_layernorm is not None:
            hidden_states = self.final_layernorm(hidden_states)

        pooled_output = None
        if self.pooler is not None:
            first_index = attention_mask.long().argmax(dim=1) if masking else None
            pooled_output = self.pooler(hidden_states, attention_mask if given_mask else None, first_index)

        if hidden_states.shape[1] != seq_len:
            hidden_states = hidden_states[:, :seq_len]
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return M2ModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=pooled_output,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            cache=cache,
        )

    def _checkpointing_in_training(self) -> bool:
        """Whether the layers will be recomputed in the backward pass (activation checkpointing in training)."""
        return self.training and torch.is_grad_enabled() and any(layer.gradient_checkpointing for layer in self.layers)


class M2MaskedLMHeadTransform(nn.Module):
    """`LayerNorm(act(dense(h)))` before the tied decoder."""

    def __init__(self, config: M2Config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layernorm(self.act(self.dense(hidden_states)))


class M2ForMaskedLM(M2PreTrainedModel):
    """M2 encoder with the masked-LM head; the decoder weight is tied to the word embeddings.

    Labels follow the transformers convention: -100 marks positions without a target.
    """

    _tied_weights_keys = {"decoder.weight": "model.embeddings.word_embeddings.weight"}

    def __init__(self, config: M2Config):
        super().__init__(config)
        self.model = M2Model(config, add_pooling_layer=False)
        self.head = M2MaskedLMHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.decoder

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.decoder = new_embeddings

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput:
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        check_label_shape(labels, hidden_states.shape[:2])
        if labels is not None and self.config.sparse_prediction:
            labelled = labels.reshape(-1) != -100
            hidden_states = hidden_states.reshape(-1, hidden_states.shape[-1])[labelled]
            labels = labels.reshape(-1)[labelled]
        logits = self.decoder(self.head(hidden_states))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class M2ForSequenceClassification(M2PreTrainedModel):
    """Pooled M2 encoder with a linear classifier: regression (`num_labels == 1`), single- or multi-label
    classification, chosen from `config.problem_type` or inferred from the labels as in BERT.

    The loss is the mean over the batch (`accepts_loss_kwargs = False`): Trainer averages it over
    gradient-accumulation steps itself.
    """

    accepts_loss_kwargs = False

    def __init__(self, config: M2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = M2Model(config)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))
        loss = None
        if labels is not None:
            if labels.shape[0] != logits.shape[0]:
                raise ValueError(f"labels hold {labels.shape[0]} examples, the input {logits.shape[0]}.")
            loss = self.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


class M2ForTokenClassification(M2PreTrainedModel):
    """M2 encoder with a per-token linear classifier; labels of -100 are ignored."""

    def __init__(self, config: M2Config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = M2Model(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput:
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))
        loss = None
        if labels is not None:
            check_label_shape(labels, logits.shape[:2])
            loss = self.loss_function(logits, labels, self.config, **kwargs)
        return TokenClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)

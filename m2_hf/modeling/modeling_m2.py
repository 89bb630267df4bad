"""Monarch Mixer (M2) encoder models: M2-BERT and its heads.

An M2 layer replaces attention with a sequence mixer (the gated long convolution with implicit filters of
`long_conv_mixer.py`, or the Monarch mixer of `monarch_sequence_mixer.py`) and the dense MLP with block-diagonal
(Monarch) projections (`projections.py`):

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

from ..ops import add_layernorm, blockdiag_glu
from ..ops.blockdiag import glu_activation
from .cache_m2 import M2Cache, M2CacheLayer
from .configuration_m2 import M2Config
from .implicit_filter import M2ImplicitFilter, filter_decay_rates, filter_features, filter_positions
from .input_checks import check_label_shape, input_shape, validate_inputs
from .long_conv_mixer import CausalShortConv, M2LongConvMixer
from .monarch_sequence_mixer import M2MonarchSequenceMixer
from .projections import BlockDiagonalLinear, MonarchLinear
from .transformers_compat import resolve_cache_argument, with_load_defaults


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
        self.fused_glu_activation = glu_activation(config.hidden_act) if fusable else None

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
        self.config = config  # `cpu_inference_slice_mib` is read at each call
        # Features per token of the widest intermediate: the mixer's in-projection (3H) or the MLP's (2)I.
        mlp_width = (2 if config.glu_mlp else 1) * config.intermediate_size
        self.widest_features = max(3 * config.hidden_size, mlp_width)

    def forward(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        cache: M2CacheLayer | None = None,
    ) -> torch.Tensor:
        """`cache` is this layer's `M2CacheLayer` when decoding with a cache."""
        rows = self._slice_rows(hidden_states) if cache is None else None
        if rows is None:
            return self._layer(hidden_states, padding_mask, cache)
        masks = [None] * hidden_states.shape[0] if padding_mask is None else padding_mask.split(rows)
        return torch.cat([self._layer(part, mask) for part, mask in zip(hidden_states.split(rows), masks)])

    def _slice_rows(self, hidden_states: torch.Tensor) -> int | None:
        """Sequences per slice in CPU inference (`M2Config.cpu_inference_slice_mib`), or None to run the batch."""
        budget = self.config.cpu_inference_slice_mib << 20
        if not budget or hidden_states.device.type != "cpu" or torch.is_grad_enabled():
            return None
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            return None
        batch, length = hidden_states.shape[:2]
        bytes_per_sequence = length * self.widest_features * hidden_states.element_size()
        rows = max(1, budget // bytes_per_sequence)
        return rows if rows < batch else None

    def _layer(
        self, hidden_states: torch.Tensor, padding_mask: torch.Tensor | None, cache: M2CacheLayer | None = None
    ) -> torch.Tensor:
        mixed = self.mixer(hidden_states, padding_mask, cache)
        if self.pre_norm:
            mixed = mixed + hidden_states
        return self.mlp(mixed)


class M2EncoderStack:
    """The layer stack of the text and vision models: `num_hidden_layers` M2 layers and, for pre-norm configs, the
    final LayerNorm, as the modules `layers` and `final_layernorm` of the model itself (their weight names are
    those of every saved M2 folder). Mixed into `M2Model` and `M2VisionModel`."""

    def build_encoder_stack(self, config: M2Config) -> None:
        self.layers = nn.ModuleList([M2Layer(config) for _ in range(config.num_hidden_layers)])
        self.final_layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_position == "pre" else None
        )

    def run_encoder_stack(
        self,
        hidden_states: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        cache: M2Cache | None = None,
        output_hidden_states: bool = False,
        output_length: int | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """The final states and, with `output_hidden_states`, the input of every layer and the final states, each
        cut to the first `output_length` positions (the input length when the model padded it)."""
        output_length = hidden_states.shape[1] if output_length is None else output_length
        recorded = [] if output_hidden_states else None
        for index, layer in enumerate(self.layers):
            if output_hidden_states:
                hidden_states = _record_hidden_states(hidden_states, output_length, recorded)
            hidden_states = layer(hidden_states, padding_mask, cache=cache.layers[index] if cache is not None else None)
        if self.final_layernorm is not None:
            hidden_states = self.final_layernorm(hidden_states)
        if output_hidden_states:
            recorded.append(hidden_states[:, :output_length])
        return hidden_states, recorded

    def checkpointing_in_training(self) -> bool:
        """Whether the layers will be recomputed in the backward pass (activation checkpointing in training)."""
        return self.training and torch.is_grad_enabled() and any(layer.gradient_checkpointing for layer in self.layers)


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


class M2Model(M2PreTrainedModel, M2EncoderStack):
    """The M2 encoder: embeddings, `num_hidden_layers` M2 layers and an optional pooler."""

    def __init__(self, config: M2Config, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = M2Embeddings(config)
        self.build_encoder_stack(config)
        self.pooler = M2Pooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embeddings.word_embeddings = value

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
        batch, new_length = input_shape(self.config, input_ids, inputs_embeds)
        cache, attention_mask = self._continue_cache(cache, use_cache, batch, new_length, attention_mask)
        past_length = cache.get_seq_length() if cache is not None else 0
        batch, seq_len = validate_inputs(
            self.config, input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids, past_length
        )
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        given_mask = attention_mask is not None or self.config.pad_to_max_length
        if attention_mask is None:
            attention_mask = torch.ones(batch, seq_len, dtype=torch.long, device=device)
        if token_type_ids is None:
            token_type_ids = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
        if self.config.pad_to_max_length:
            input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids = self._pad_to_max_length(
                input_ids, inputs_embeds, attention_mask, token_type_ids, position_ids
            )
        # With mask_padding, padding is zeroed before every convolution and positions count real tokens only.
        masking = self.config.mask_padding and given_mask
        if position_ids is None:
            position_ids = self._position_ids(attention_mask, masking, cache)
        if cache is not None:
            cache.record_tokens(attention_mask if masking else torch.ones_like(attention_mask))

        hidden_states = self.embeddings(input_ids, inputs_embeds, token_type_ids, position_ids)
        padding_mask = attention_mask.to(hidden_states.dtype).unsqueeze(1) if masking else None
        hidden_states, all_hidden_states = self.run_encoder_stack(
            hidden_states, padding_mask, cache, output_hidden_states, output_length=seq_len
        )
        pooled_output = None
        if self.pooler is not None:
            first_index = attention_mask.long().argmax(dim=1) if masking else None
            pooled_output = self.pooler(hidden_states, attention_mask if given_mask else None, first_index)
        return M2ModelOutput(
            last_hidden_state=hidden_states[:, :seq_len],
            pooler_output=pooled_output,
            hidden_states=tuple(all_hidden_states) if all_hidden_states is not None else None,
            cache=cache,
        )

    def _continue_cache(
        self, cache: M2Cache | None, use_cache: bool | None, batch: int, new_length: int, attention_mask
    ) -> tuple[M2Cache | None, torch.Tensor | None]:
        """The cache this call continues (a new one for `use_cache` without one, none while checkpointing in
        training) and the attention mask without the part that covers the cached tokens."""
        if self.checkpointing_in_training():
            if cache is not None:
                raise ValueError(
                    "A cache cannot be continued with activation checkpointing in training: the backward pass "
                    "recomputes each layer, which would extend the cache twice. Call model.eval() or disable "
                    "activation checkpointing."
                )
            return None, attention_mask
        if use_cache and cache is None:
            cache = M2Cache(self.config)
        if cache is None:
            return None, attention_mask
        if self.config.bidirectional:
            raise ValueError("A cache needs causal sequence mixers; this config is bidirectional.")
        if self.config.pad_to_max_length:
            raise ValueError("pad_to_max_length cannot be combined with a cache.")
        cache.check_batch_size(batch)
        if attention_mask is not None and attention_mask.dim() == 2 and attention_mask.shape[1] > new_length:
            attention_mask = attention_mask[:, -new_length:]  # the cached part is already accounted for
        return cache, attention_mask

    def _position_ids(self, attention_mask: torch.Tensor, masking: bool, cache: M2Cache | None) -> torch.Tensor:
        """Positions `0, 1, ...` of the input (of its real tokens with `masking`), after the cached tokens."""
        batch, length = attention_mask.shape
        if masking:
            position_ids = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        else:
            position_ids = torch.arange(length, device=attention_mask.device).expand(batch, -1)
        if cache is not None:
            position_ids = position_ids + cache.position_offsets(batch, attention_mask.device)
        return position_ids


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

"""M2-GPT: a causal Monarch Mixer language model with a generation cache.

The original authors have published no M2-GPT code. This model is the causal M2 block that the M2-BERT
components give directly:

    h = x + out_proj(x2 * (causalconv(v * x1; k) + D v) + causalconv(u; k2) + D2 u),   u = LayerNorm(x)
    x' = h + MLP(LayerNorm(h))

with `x1, x2, v` the causal short convolution of `in_proj(u)` and `causalconv(s; k)[t] = sum_{m <= t} k[m] s[t - m]`
over implicit filters `k` (FFT size `2L`, zero padding). Design choices:

- **Causal mixers** (`bidirectional=False`): one forward filter per long convolution, no reverse filter. The
  short convolution is causal already, and the MLP is per position, so output `t` depends on inputs `<= t` only.
- **Pre-norm residual blocks** (`norm_position="pre"`) with a final LayerNorm, as in GPT-2 and later decoders:
  the residual stream stays un-normalised, which trains deep stacks more stably than M2-BERT's post-norm layer.
- **No absolute position embeddings** (`use_position_embeddings=False`): the implicit filters (whose taps are a
  function of the lag) and the causal short convolution already tell positions apart, and without a position table
  the output of a token does not depend on where the prompt starts, which makes left-padded batches exact and frees
  generation from a table lookup. Position embeddings still work when enabled; positions are counted per row from
  the first real token, through the cache. The limit is the filter grid, `config.filter_max_length`.
- **No token types** (`type_vocab_size=0`) and an output layer tied to the word embeddings.

Generation keeps an `M2Cache` (see `cache_m2.py`): a new token costs `O(H^2)` for the projections and, for the
long convolutions, a dot product with the history while it is short and amortised `O(H log^2 t)` beyond (online
convolution, `online_long_conv.py`), instead of a pass over the prefix. Left padding is zeroed before every causal
convolution, so a padded row generates what the unpadded prompt would.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import GenerationConfig, GenerationMixin
from transformers.generation import GenerationMode
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.generic import can_return_tuple

from .cache_m2 import M2Cache
from .configuration_m2 import M2Config
from .modeling_m2 import M2Model, M2PreTrainedModel, check_label_shape
from .transformers_compat import GENERATE_CACHE_KWARG, OUTPUT_CACHE_FIELD, resolve_cache_argument


class M2ForCausalLM(M2PreTrainedModel, GenerationMixin):
    """M2-GPT: a causal M2 decoder with a language-modelling head, usable with `generate()`.

    Needs `config.bidirectional=False`; `norm_position="pre"`, `use_position_embeddings=False` and
    `type_vocab_size=0` are the intended settings. Labels are the input ids (shifted inside the loss); -100 marks
    positions without a target. Prompt plus generated tokens must fit in `config.max_sequence_length`.
    """

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.word_embeddings.weight"}
    _is_stateful = True  # the cache cannot be rewound (read by transformers before 5.25; see below for later ones)

    def __init__(self, config: M2Config):
        if config.bidirectional:
            raise ValueError(
                "M2ForCausalLM needs causal sequence mixers, but config.bidirectional is True: a bidirectional long "
                "convolution lets every position see later tokens. Build the config with bidirectional=False."
            )
        if config.sequence_mixer != "long_conv":
            raise ValueError(
                f"M2ForCausalLM needs the causal long-convolution mixer (sequence_mixer='long_conv'), got "
                f"sequence_mixer={config.sequence_mixer!r}."
            )
        super().__init__(config)
        self.model = M2Model(config, add_pooling_layer=False)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        self.lm_head = new_embeddings

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # The forward pass creates its own M2Cache; a DynamicCache has no place for convolution states.
        return False

    def _validate_generated_length(self, generation_config: GenerationConfig, input_ids_length: int, *args, **kwargs):
        super()._validate_generated_length(generation_config, input_ids_length, *args, **kwargs)
        limit = self.config.max_sequence_length
        if generation_config.max_length > limit:
            raise ValueError(
                f"Generation could reach {generation_config.max_length} tokens (prompt of {input_ids_length} plus new "
                f"tokens), beyond this model's maximum sequence length {limit} (the implicit-filter grid, "
                f"config.filter_max_length). Lower max_new_tokens to at most {limit - input_ids_length}."
            )

    def _validate_generation_mode(self, generation_mode, *args, **kwargs):
        if generation_mode == GenerationMode.ASSISTED_GENERATION:
            raise ValueError(
                "Assisted decoding (assistant_model, prompt_lookup_num_tokens) is not available for M2ForCausalLM: "
                "it rewinds the cache past rejected draft tokens, and an M2Cache cannot be rewound (its "
                "short-convolution state keeps only the last short_conv_size - 1 inputs). Generate without an "
                "assistant."
            )
        super()._validate_generation_mode(generation_mode, *args, **kwargs)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args, **kwargs):
        # generate() names the cache GENERATE_CACHE_KWARG, which depends on the transformers release.
        model_inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        cache = model_inputs.get(GENERATE_CACHE_KWARG)
        if model_inputs.get("use_cache", True) and cache is not None and cache.get_seq_length() > 0:
            # Generated tokens are real tokens; the prompt's padding is already zeroed in the cache.
            model_inputs["attention_mask"] = None
        return model_inputs

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: M2Cache | None = None,
        use_cache: bool | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        past_key_values: M2Cache | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        attention_mask (`torch.Tensor` of shape `(batch, seq_len)`, *optional*):
            1 for real tokens, 0 for (left) padding, which is zeroed before every convolution.
        token_type_ids (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
            Token types, for configs with `type_vocab_size > 0` (refused otherwise, as by every head).
        cache (`M2Cache`, *optional*):
            The cache returned by an earlier call; the input continues that sequence.
        use_cache (`bool`, *optional*):
            Return a cache; defaults to `config.use_cache` in eval mode and to False in training.
        labels (`torch.LongTensor` of shape `(batch, seq_len)`, *optional*):
            Next-token targets, usually the input ids (the loss shifts them); -100 is ignored.
        logits_to_keep (`int` or `torch.Tensor`, defaults to 0):
            Compute logits for the last `logits_to_keep` positions only (0: all), or for the given indices.
        past_key_values (`M2Cache`, *optional*):
            The older name of `cache`, which transformers before 5.24 pass from `generate()`.

        The output holds the cache as `cache` from transformers 5.24 on and as `past_key_values` before, the name
        each release's `generate()` reads.
        """
        cache = resolve_cache_argument(cache, past_key_values)
        reference = input_ids if input_ids is not None else inputs_embeds
        if reference is not None and reference.dim() >= 2:  # checked before the cache is extended
            check_label_shape(labels, reference.shape[:2])
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        outputs = self.model(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
            cache=cache,
            use_cache=use_cache,
            return_dict=True,
        )
        hidden_states = outputs.last_hidden_state
        kept = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(hidden_states[:, kept])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, **{OUTPUT_CACHE_FIELD: outputs.cache}
        )

"""Map original M2-BERT (HazyResearch/m2 `bert/src`) configs and state dicts onto m2_hf.

Key rules (after stripping the composer `model.` and DDP `module.` prefixes):

- renamed: `bert.` -> `model.`, `encoder.layer.N.attention` -> `layers.N.mixer`, `in_linear`/`out_linear` ->
  `in_proj`/`out_proj`, `short_filter` -> `short_conv`, `filter_fn`/`filter_fn2` -> `long_filter`/
  `residual_filter`, `bias` of a filter -> `skip`, `pos_emb.z` -> `features`, `implicit_filter(_rev).{2j}` ->
  `forward_mlp`/`reverse_mlp.{j}`, `gated_layers`/`wo` -> `in_proj`/`out_proj`, `LayerNorm` -> `layernorm`,
  `cls.predictions.transform` -> `head`, `cls.predictions.decoder` -> `decoder`;
- collapsed: the six aliased Sin frequencies of a filter (`implicit_filter(_rev).{odd}.freq`) become one
  `frequency`, after checking they are equal;
- checked then dropped: `pos_emb.t` and `modulation.deltas` (recomputed from the config), the tied
  `cls.predictions.decoder.weight` (must equal the word embeddings);
- dropped: `embeddings.position_ids`, every `*.flashfft.*` constant buffer.
"""

from __future__ import annotations

import re

import torch

from ..modeling.configuration_m2 import M2Config
from ..modeling.implicit_filter import filter_decay_rates, filter_positions


class ConversionError(ValueError):
    """A checkpoint or config that cannot be mapped onto m2_hf."""


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the composer `model.` and DDP `module.` prefixes."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "model.", "module."):
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def config_from_original(original: dict, **overrides) -> M2Config:
    """Build the `M2Config` of an original M2-BERT `config.json` (its `BertConfig` fields).

    The converted model keeps the original semantics: the attention mask is ignored by the mixer.
    """
    if not original.get("monarch_mixer_sequence_mixing", False):
        raise ConversionError("Only M2 checkpoints convert: monarch_mixer_sequence_mixing is not true in the config.")
    if original.get("use_flash_mm", False):
        raise ConversionError("use_flash_mm checkpoints use an incompatible layout (kernel-4 short conv).")
    if original.get("hidden_act", "gelu") != "gelu":
        raise ConversionError(
            f"hidden_act={original['hidden_act']!r} does not convert: the original MLP always applies the exact GELU "
            "and only its masked-LM head applies hidden_act, while the converted model uses one activation for both."
        )
    lmax = original.get("max_position_embeddings", 512)
    filter_lmax = original.get("long_conv_l_max", lmax)
    fields = dict(
        vocab_size=original.get("vocab_size", 30528),
        hidden_size=original.get("hidden_size", 768),
        num_hidden_layers=original.get("num_hidden_layers", 12),
        intermediate_size=original.get("intermediate_size", 3072),
        hidden_act=original.get("hidden_act", "gelu"),
        hidden_dropout_prob=original.get("hidden_dropout_prob", 0.1),
        classifier_dropout=original.get("classifier_dropout"),
        max_position_embeddings=lmax,
        long_conv_max_length=None if filter_lmax == lmax else filter_lmax,
        type_vocab_size=original.get("type_vocab_size", 2),
        initializer_range=original.get("initializer_range", 0.02),
        layer_norm_eps=original.get("layer_norm_eps", 1e-12),
        use_position_embeddings=original.get("use_positional_encodings", False),
        bidirectional=original.get("bidirectional", True),
        residual_long_conv=original.get("residual_long_conv", False),
        mixer_layernorm=original.get("hyena_training_additions", False),
        filter_order=original.get("hyena_filter_order", 64),
        filter_emb_dim=original.get("hyena_emb_dim", 3),
        filter_sin_freq=float(original.get("hyena_w", 1)),
        filter_sin_freq_scale=float(original.get("hyena_w_mod", 1)),
        # The original config class leaves the kernel learning rate unset; every released config sets 1e-3.
        filter_learning_rate=float(_value_or(original.get("long_conv_kernel_learning_rate"), 1e-3)),
        filter_weight_decay=float(original.get("hyena_wd", 0.1)),
        filter_features_learning_rate=float(original.get("hyena_lr_pos_emb", 1e-5)),
        glu_mlp=original.get("use_glu_mlp", True),
        monarch_mlp_nblocks=original.get("monarch_mlp_nblocks", 4) if original.get("use_monarch_mlp", False) else 1,
        pooling="mean" if original.get("pool_all", False) else "first_token",
        pad_token_id=original.get("pad_token_id", 0),
        mask_padding=False,
    )
    if "id2label" in original:
        fields["id2label"] = {int(k): v for k, v in original["id2label"].items()}
        fields["label2id"] = original.get("label2id", {v: int(k) for k, v in original["id2label"].items()})
    fields.update(overrides)
    return M2Config(**fields)


def _value_or(value, default):
    return default if value is None else value


_RENAMES = [
    (r"^bert\.embeddings\.LayerNorm\.", "model.embeddings.layernorm."),
    (r"^bert\.embeddings\.", "model.embeddings."),
    (r"^bert\.pooler\.dense\.", "model.pooler.dense."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.in_linear\.", r"model.layers.\1.mixer.in_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.out_linear\.", r"model.layers.\1.mixer.out_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.short_filter\.", r"model.layers.\1.mixer.short_conv."),
    (r"^bert\.encoder\.layer\.(\d+)\.attention\.layernorm\.", r"model.layers.\1.mixer.layernorm."),
    (r"^bert\.encoder\.layer\.(\d+)\.mlp\.gated_layers\.", r"model.layers.\1.mlp.in_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.mlp\.wo\.", r"model.layers.\1.mlp.out_proj."),
    (r"^bert\.encoder\.layer\.(\d+)\.mlp\.layernorm\.", r"model.layers.\1.mlp.layernorm."),
    (r"^cls\.predictions\.transform\.dense\.", "head.dense."),
    (r"^cls\.predictions\.transform\.LayerNorm\.", "head.layernorm."),
    (r"^cls\.predictions\.decoder\.bias$", "decoder.bias"),
    (r"^classifier\.", "classifier."),
]
_FILTER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.attention\.(filter_fn2?)\.(.+)$")
_FILTER_MLP = re.compile(r"^(implicit_filter(?:_rev)?)\.(\d+)\.(weight|bias)$")
_FILTER_FREQUENCY = re.compile(r"^implicit_filter(?:_rev)?\.\d+\.freq$")
_FILTER_NAMES = {"filter_fn": "long_filter", "filter_fn2": "residual_filter"}
_MLP_NAMES = {"implicit_filter": "forward_mlp", "implicit_filter_rev": "reverse_mlp"}
TIED_DECODER_KEY = "cls.predictions.decoder.weight"


def is_dropped_key(key: str) -> bool:
    """Whether a (prefix-stripped) source key holds a constant the converted model does not store.

    These are FlashFFTConv's constant FFT buffers and the embeddings' `position_ids` range.
    """
    return ".flashfft." in key or key.startswith("bert.encoder.flashfft.") or key == "bert.embeddings.position_ids"


def map_key(key: str) -> str | None:
    """The m2_hf name of a (prefix-stripped) source key that maps one-to-one onto a converted tensor.

    Returns None for keys without such a rule: dropped or checked constants, the aliased filter frequencies, the
    tied decoder weight, and keys no rule knows.
    """
    match = _FILTER.match(key)
    if match:
        layer, module, rest = match.groups()
        prefix = f"model.layers.{layer}.mixer.{_FILTER_NAMES[module]}."
        if rest == "bias":
            return prefix + "skip"
        if rest == "pos_emb.z":
            return prefix + "features"
        mlp = _FILTER_MLP.match(rest)
        if mlp is None or int(mlp.group(2)) % 2:
            return None
        name, index, param = mlp.groups()
        return f"{prefix}{_MLP_NAMES[name]}.{int(index) // 2}.{param}"
    for pattern, replacement in _RENAMES:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key)
    return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=1e-5, atol=1e-6)


def _check_filter_constant(key: str, rest: str, value: torch.Tensor, config: M2Config) -> None:
    """Compare a filter's `pos_emb.t` or `modulation.deltas` buffer with the value the config implies."""
    if rest == "pos_emb.t":
        if not _close(value, filter_positions(config.filter_max_length)):
            raise ConversionError(f"{key} does not match the filter grid of length {config.filter_max_length}.")
    else:
        expected = filter_decay_rates(
            config.hidden_size, config.filter_decay_fast, config.filter_decay_slow, config.filter_decay_target
        )
        if not _close(value, expected):
            raise ConversionError(f"{key} does not match the decay rates implied by the config.")


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], config: M2Config
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an original state dict onto the key names of `M2ForMaskedLM` / `M2ForSequenceClassification`.

    Returns the converted dict and the source keys no rule knows. Raises `ConversionError` where a
    checked-then-dropped tensor disagrees with what the config implies.
    """
    state_dict = strip_prefixes(state_dict)
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    frequencies: dict[str, list[tuple[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        if is_dropped_key(key):
            continue
        if key == TIED_DECODER_KEY:
            word = state_dict.get("bert.embeddings.word_embeddings.weight")
            if word is not None and not torch.equal(word, value):
                raise ConversionError(f"{key} differs from the word embeddings it is tied to.")
            if word is None:
                converted["model.embeddings.word_embeddings.weight"] = value
            continue
        target = map_key(key)
        if target is not None:
            if target.endswith(("mlp.in_proj.weight", "mlp.out_proj.weight")) and value.dim() == 2:
                value = value.unsqueeze(0)  # a dense nn.Linear (use_monarch_mlp=False) is one block
            converted[target] = value
            continue
        match = _FILTER.match(key)
        if match and match.group(3) in ("pos_emb.t", "modulation.deltas"):
            _check_filter_constant(key, match.group(3), value, config)
        elif match and _FILTER_FREQUENCY.match(match.group(3)):
            layer, module = match.group(1), match.group(2)
            target = f"model.layers.{layer}.mixer.{_FILTER_NAMES[module]}.frequency"
            frequencies.setdefault(target, []).append((key, value))
        else:
            unknown.append(key)
    for target, sources in frequencies.items():
        first_key, first = sources[0]
        for other_key, other in sources[1:]:
            if not torch.equal(first, other):
                raise ConversionError(f"The shared filter frequencies {first_key} and {other_key} differ.")
        converted[target] = first
    return converted, unknown

"""Read the architecture of an original M2-BERT checkpoint off its tensor shapes.

A config that disagrees with the weights would otherwise surface as a list of shape errors (or, for flags such as
`hyena_training_additions`, as unexpected keys). Comparing the two first gives one message that names the config
fields to fix.
"""

from __future__ import annotations

import re

import torch

from ..modeling.configuration_m2 import M2Config
from .original import ConversionError

# M2Config attribute -> the original config field (or fields) that sets it.
ORIGINAL_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "type_vocab_size": "type_vocab_size",
    "use_position_embeddings": "use_positional_encodings",
    "max_position_embeddings": "max_position_embeddings",
    "num_hidden_layers": "num_hidden_layers",
    "intermediate_size": "intermediate_size",
    "monarch_mlp_nblocks": "monarch_mlp_nblocks / use_monarch_mlp",
    "glu_mlp": "use_glu_mlp",
    "filter_max_length": "long_conv_l_max",
    "filter_emb_dim": "hyena_emb_dim",
    "filter_order": "hyena_filter_order",
    "short_conv_size": "(short conv kernel size)",
    "mixer_layernorm": "hyena_training_additions",
    "residual_long_conv": "residual_long_conv",
    "bidirectional": "bidirectional",
}

_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")


def infer_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, int | bool]:
    """The M2Config values that a prefix-stripped original state dict determines.

    Keys are `M2Config` attribute names (`filter_max_length` for the filter grid). A value is left out when the
    tensors that would determine it are absent; the key check after conversion reports those.
    """
    layout: dict[str, int | bool] = {}

    def shape(key: str) -> torch.Size | None:
        value = state_dict.get(key)
        return None if value is None else value.shape

    word = shape("bert.embeddings.word_embeddings.weight") or shape("cls.predictions.decoder.weight")
    if word is not None:
        layout["vocab_size"], layout["hidden_size"] = word[0], word[1]
    if (token_types := shape("bert.embeddings.token_type_embeddings.weight")) is not None:
        layout["type_vocab_size"] = token_types[0]
    positions = shape("bert.embeddings.position_embeddings.weight")
    layout["use_position_embeddings"] = positions is not None
    if positions is not None:
        layout["max_position_embeddings"] = positions[0]

    layers = {int(m.group(1)) for key in state_dict if (m := _LAYER.match(key))}
    if not layers:
        return layout
    layout["num_hidden_layers"] = max(layers) + 1
    prefix = "bert.encoder.layer.0."
    out_proj, in_proj = shape(prefix + "mlp.wo.weight"), shape(prefix + "mlp.gated_layers.weight")
    if out_proj is not None:
        # Block-diagonal weights are (blocks, out / blocks, in / blocks); a dense nn.Linear is (out, in).
        blocks = out_proj[0] if len(out_proj) == 3 else 1
        layout["monarch_mlp_nblocks"] = blocks
        layout["intermediate_size"] = blocks * out_proj[-1]
        if in_proj is not None:
            inner = in_proj[0] * in_proj[1] if len(in_proj) == 3 else in_proj[0]
            layout["glu_mlp"] = inner == 2 * layout["intermediate_size"]
    attention = prefix + "attention."
    if (features := shape(attention + "filter_fn.pos_emb.z")) is not None:
        layout["filter_max_length"], layout["filter_emb_dim"] = features[1], features[2]
    if (first_filter_layer := shape(attention + "filter_fn.implicit_filter.0.weight")) is not None:
        layout["filter_order"] = first_filter_layer[0]
    if (short_conv := shape(attention + "short_filter.weight")) is not None:
        layout["short_conv_size"] = short_conv[-1]
    layer_keys = [key for key in state_dict if key.startswith(attention)]
    layout["mixer_layernorm"] = any(key.startswith(attention + "layernorm.") for key in layer_keys)
    layout["residual_long_conv"] = any(key.startswith(attention + "filter_fn2.") for key in layer_keys)
    layout["bidirectional"] = any(".implicit_filter_rev." in key for key in layer_keys)
    return {name: value if isinstance(value, bool) else int(value) for name, value in layout.items()}


def layout_mismatches(config: M2Config, layout: dict[str, int | bool]) -> list[str]:
    """One line per value where the config and the checkpoint's tensor shapes disagree."""
    lines = []
    for name, value in layout.items():
        configured = getattr(config, name)
        if name == "max_position_embeddings" and not config.use_position_embeddings:
            continue
        if configured != value:
            lines.append(f"{ORIGINAL_FIELDS[name]}: config {configured!r}, checkpoint {value!r}")
    return lines


def check_layout(config: M2Config, state_dict: dict[str, torch.Tensor], config_source: str) -> None:
    """Raise a `ConversionError` listing every architecture value where `config` contradicts the weights."""
    mismatches = layout_mismatches(config, infer_layout(state_dict))
    if mismatches:
        listing = "\n".join(f"  {line}" for line in mismatches)
        raise ConversionError(
            f"The checkpoint's tensor shapes do not fit {config_source}:\n{listing}\n"
            "Use the original config.json of this checkpoint (--config) or the matching --preset."
        )

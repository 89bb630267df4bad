"""Saving M2 encoders as sentence-transformers models.

`save_sentence_transformer(model, tokenizer, folder)` writes a folder that `SentenceTransformer(folder)` loads
(after `import m2_hf`; or, once `m2_hf.remote_code.export_remote_code(folder)` has run, with
`trust_remote_code=True` where m2_hf is not installed). Its embedding is the encoder's pooler output,
`tanh(dense(pooled))`, or for an encoder without a pooler (the masked-LM and token-classification heads) the
pooled last hidden state itself; `config.pooling` chooses the [CLS] state (`"first_token"`) or the masked mean
(`"mean"`). After training such a model with sentence-transformers (`SentenceTransformerTrainer`),
`sentence_transformer_encoder(sentence_model)` gives back its `M2Model` with what it learned, to save again.

The files use the long-standing `sentence_transformers.models.*` format, which current and older releases load;
writing them does not need sentence-transformers installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .hub import write_model_card
from .modeling import M2Model

POOLING_MODES = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens")
SENTENCE_TRANSFORMERS_TAGS = ("sentence-transformers", "sentence-similarity", "feature-extraction")


def _write_json(path: Path, value: dict | list) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def save_sentence_transformers_modules(directory: str | os.PathLike, model: M2Model) -> None:
    """Write the sentence-transformers files with which `SentenceTransformer(directory)` embeds like `model`.

    The pipeline is the model itself (module 0, the folder root), the pooling of `model.config.pooling` over the
    last hidden state (`1_Pooling`: [CLS] or masked mean) and, when the model has a pooler, a Dense layer holding
    the pooler's weights with a tanh (`2_Dense`), so that the embedding is `pooler_output`. The model's own files
    (`save_pretrained`) and the tokenizer's go into the same folder.
    """
    directory = Path(directory)
    pooled = "mean_tokens" if model.config.pooling == "mean" else "cls_token"
    modules = [("Transformer", ""), ("Pooling", "1_Pooling")]
    if model.pooler is not None:
        modules.append(("Dense", "2_Dense"))
    _write_json(
        directory / "modules.json",
        [
            {"idx": index, "name": str(index), "path": path, "type": f"sentence_transformers.models.{name}"}
            for index, (name, path) in enumerate(modules)
        ],
    )
    _write_json(
        directory / "sentence_bert_config.json",
        {"max_seq_length": model.config.max_sequence_length, "do_lower_case": False},
    )
    (directory / "1_Pooling").mkdir(exist_ok=True)
    _write_json(
        directory / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": model.config.hidden_size,
            **{f"pooling_mode_{mode}": mode == pooled for mode in POOLING_MODES},
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    if model.pooler is None:
        return
    dense = model.pooler.dense
    (directory / "2_Dense").mkdir(exist_ok=True)
    _write_json(
        directory / "2_Dense" / "config.json",
        {
            "in_features": dense.in_features,
            "out_features": dense.out_features,
            "bias": dense.bias is not None,
            "activation_function": "torch.nn.modules.activation.Tanh",
        },
    )
    weights = {"linear.weight": dense.weight}
    if dense.bias is not None:
        weights["linear.bias"] = dense.bias
    save_file(
        {name: tensor.detach().contiguous().clone() for name, tensor in weights.items()},
        str(directory / "2_Dense" / "model.safetensors"),
        metadata={"format": "pt"},
    )


def save_sentence_transformer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    folder: str | os.PathLike,
    *,
    tags: Sequence[str] = (),
    **card_metadata,
) -> Path:
    """Save the encoder of an M2 text model with its tokenizer as a sentence-transformers folder, with a card.

    Args:
        model: `M2Model` or any M2 text head; its encoder (`model.base_model`) is saved as an `M2Model`.
        tokenizer: the tokenizer the model was trained with.
        folder: the folder to write (created if needed; files of an earlier save are replaced).
        tags: extra card tags, after `m2`, `monarch-mixer` and the sentence-transformers tags.
        **card_metadata: further keyword arguments of `m2_hf.hub.model_card_data` (license, base_model, datasets,
            language) and `write_model_card` (model_id, description).

    Returns:
        The folder.
    """
    encoder = model.base_model
    if not isinstance(encoder, M2Model):
        raise TypeError(f"{type(model).__name__} has no M2 text encoder to embed sentences with.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_sentence_transformers_modules(folder, encoder)
    write_model_card(
        folder,
        encoder,
        pipeline_tag="sentence-similarity",
        library_name="sentence-transformers",
        tags=[*SENTENCE_TRANSFORMERS_TAGS, *tags],
        **card_metadata,
    )
    return folder


# The names sentence-transformers gives each `config.pooling`: `pooling_mode` in releases >= 6, the suffix of the
# boolean `pooling_mode_*` attribute before.
_POOLING_NAMES = {"first_token": ("cls", "cls_token"), "mean": ("mean", "mean_tokens")}


def _pooling_modes(pooling) -> set[str]:
    mode = getattr(pooling, "pooling_mode", None)
    if mode is not None:
        return {mode} if isinstance(mode, str) else set(mode)
    return {
        name.removeprefix("pooling_mode_")
        for name, value in vars(pooling).items()
        if name.startswith("pooling_mode_") and value is True
    }


def sentence_transformer_encoder(sentence_model) -> M2Model:
    """The `M2Model` of a `SentenceTransformer` loaded from a `save_sentence_transformer` folder, holding what it
    learned, for saving it again with `save_sentence_transformer`.

    sentence-transformers trains the Dense layer of such a model (`2_Dense`) as a module of its own, apart from the
    encoder's pooler that it was copied from. This copies the Dense weights back into the pooler, so that the
    encoder's `pooler_output` is again the model's embedding. A model without a Dense layer (saved from an encoder
    without a pooler) embeds with the pooled last hidden state: its encoder's pooler, which `AutoModel` adds back
    on loading with new weights, is removed. The encoder returned is `sentence_model[0].auto_model`, changed in
    place; the sentence-transformers pipeline does not use its pooler, so its embeddings stay the same.

    Raises:
        TypeError: if the model's first module does not hold an `M2Model`.
        ValueError: if the model is not a pipeline `save_sentence_transformer` writes: the M2 encoder, the pooling
            of its `config.pooling`, and optionally a tanh Dense layer of the pooler's shape.
    """
    modules = list(sentence_model)
    encoder = getattr(modules[0], "auto_model", None) if modules else None
    if not isinstance(encoder, M2Model):
        raise TypeError(f"The SentenceTransformer's first module holds {type(encoder).__name__}, not an M2Model.")
    names = [type(module).__name__ for module in modules]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Dense"]):
        raise ValueError(
            f"The SentenceTransformer's modules are {names}; an M2 encoder is saved as ['Transformer', 'Pooling'] "
            "followed by 'Dense' when it has a pooler."
        )
    modes = _pooling_modes(modules[1])
    if len(modes) != 1 or modes.pop() not in _POOLING_NAMES[encoder.config.pooling]:
        raise ValueError(
            f"The SentenceTransformer pools with {sorted(_pooling_modes(modules[1]))}, but the encoder's "
            f"config.pooling is {encoder.config.pooling!r}."
        )
    if len(modules) == 2:
        encoder.pooler = None
        return encoder
    dense = modules[2]
    if not isinstance(dense.activation_function, nn.Tanh):
        raise ValueError(f"The Dense layer's activation is {dense.activation_function}, not the pooler's tanh.")
    pooler = encoder.pooler.dense if encoder.pooler is not None else None
    if (
        pooler is None
        or dense.linear.weight.shape != pooler.weight.shape
        or (dense.linear.bias is None) != (pooler.bias is None)
    ):
        raise ValueError("The Dense layer does not match the encoder's pooler (shape, bias, or no pooler at all).")
    with torch.no_grad():
        pooler.weight.copy_(dense.linear.weight)
        if pooler.bias is not None:
            pooler.bias.copy_(dense.linear.bias)
    return encoder

"""Saving M2 encoders as sentence-transformers models.

`save_sentence_transformer(model, tokenizer, folder)` writes a folder that `SentenceTransformer(folder)` loads
(after `import m2_hf`; or, once `m2_hf.remote_code.export_remote_code(folder)` has run, with
`trust_remote_code=True` where m2_hf is not installed). Its embedding is the encoder's pooler output,
`tanh(dense(pooled))`, or for an encoder without a pooler (the masked-LM and token-classification heads) the
pooled last hidden state itself; `config.pooling` chooses the [CLS] state (`"first_token"`) or the masked mean
(`"mean"`).

The files use the long-standing `sentence_transformers.models.*` format, which current and older releases load;
writing them does not need sentence-transformers installed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import save_file
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

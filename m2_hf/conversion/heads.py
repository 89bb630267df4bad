"""Which m2_hf model an original checkpoint becomes, decided by the heads its weights contain."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..modeling import M2ForMaskedLM, M2ForSequenceClassification, M2Model, M2PreTrainedModel
from ..modeling.configuration_m2 import M2Config


@dataclass(frozen=True)
class ModelKind:
    """A converted model's class, its Auto class and its Hub pipeline tag."""

    name: str
    model_class: type[M2PreTrainedModel]
    auto_class: str
    pipeline_tag: str
    description: str


MODEL_KINDS = {
    kind.name: kind
    for kind in (
        ModelKind(
            "masked-lm", M2ForMaskedLM, "AutoModelForMaskedLM", "fill-mask", "masked-language-model head (tied decoder)"
        ),
        ModelKind(
            "encoder",
            M2Model,
            "AutoModel",
            "feature-extraction",
            "pooler `tanh(dense(h[CLS]))`, whose output is the sentence embedding",
        ),
        ModelKind(
            "sequence-classification",
            M2ForSequenceClassification,
            "AutoModelForSequenceClassification",
            "text-classification",
            "pooler and linear classifier",
        ),
    )
}


def detect_kind(state_dict: dict[str, torch.Tensor]) -> ModelKind:
    """`masked-lm` for `cls.predictions.*` weights, `sequence-classification` for `classifier.*`, else `encoder`.

    Keys must be prefix-stripped (see `original.strip_prefixes`).
    """
    if any(key.startswith("cls.predictions.") for key in state_dict):
        return MODEL_KINDS["masked-lm"]
    if any(key.startswith("classifier.") for key in state_dict):
        return MODEL_KINDS["sequence-classification"]
    return MODEL_KINDS["encoder"]


def target_key(converted_key: str, kind: ModelKind) -> str:
    """A key of `convert_state_dict` as named in `kind`'s model (the bare encoder has no `model.` prefix)."""
    return converted_key.removeprefix("model.") if kind.model_class is M2Model else converted_key


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable values, each shared (tied) tensor counted once."""
    return sum(parameter.numel() for parameter in model.parameters())


def parameter_count(config: M2Config, kind: ModelKind) -> int:
    """Parameter count of `kind`'s model for `config`, built without allocating its weights."""
    with torch.device("meta"):
        return count_parameters(kind.model_class(config))

"""Which m2_hf model an original checkpoint becomes, decided by the heads its weights contain."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..modeling import M2Model, M2PreTrainedModel
from ..modeling.configuration_m2 import M2Config
from ..registry import m2_class


@dataclass(frozen=True)
class ModelKind:
    """What a converted checkpoint becomes: a class of the table `registry.M2_CLASSES` (which gives its Auto class
    and Hub task) and the sentence the model card says about its head."""

    name: str
    class_name: str
    description: str

    @property
    def model_class(self) -> type[M2PreTrainedModel]:
        return m2_class(self.class_name).model_class

    @property
    def auto_class(self) -> str:
        return m2_class(self.class_name).auto_class

    @property
    def pipeline_tag(self) -> str:
        return m2_class(self.class_name).pipeline_tag


MODEL_KINDS = {
    kind.name: kind
    for kind in (
        ModelKind("masked-lm", "M2ForMaskedLM", "masked-language-model head (tied decoder)"),
        ModelKind("encoder", "M2Model", "pooler `tanh(dense(h[CLS]))`, whose output is the sentence embedding"),
        ModelKind("sequence-classification", "M2ForSequenceClassification", "pooler and linear classifier"),
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

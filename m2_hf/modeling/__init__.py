"""M2 configuration and models."""

from .configuration_m2 import M2Config
from .modeling_m2 import (
    M2ForMaskedLM,
    M2ForSequenceClassification,
    M2ForTokenClassification,
    M2Model,
    M2PreTrainedModel,
)

__all__ = [
    "M2Config",
    "M2ForMaskedLM",
    "M2ForSequenceClassification",
    "M2ForTokenClassification",
    "M2Model",
    "M2PreTrainedModel",
]

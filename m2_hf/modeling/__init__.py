"""M2 configuration and models."""

from .configuration_m2 import M2Config
from .modeling_m2 import (
    M2ForMaskedLM,
    M2ForSequenceClassification,
    M2ForTokenClassification,
    M2Model,
    M2PreTrainedModel,
)
from .modeling_m2_causal import M2ForCausalLM
from .modeling_m2_vision import M2ForImageClassification, M2VisionModel, M2VisionPreTrainedModel

__all__ = [
    "M2Config",
    "M2ForCausalLM",
    "M2ForImageClassification",
    "M2ForMaskedLM",
    "M2ForSequenceClassification",
    "M2ForTokenClassification",
    "M2Model",
    "M2PreTrainedModel",
    "M2VisionModel",
    "M2VisionPreTrainedModel",
]

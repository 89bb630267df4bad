"""Monarch Mixer (M2) models for Hugging Face Transformers.

Importing this package registers `M2Config` (model type `"m2"`) and every M2 head with the transformers Auto
classes (the table `registry.M2_CLASSES`), so `AutoModel*.from_pretrained` loads M2 folders without
`trust_remote_code`.
"""

from transformers import AutoImageProcessor

from .modeling import (
    M2Config,
    M2ForCausalLM,
    M2ForImageClassification,
    M2ForMaskedLM,
    M2ForSequenceClassification,
    M2ForTokenClassification,
    M2Model,
    M2PreTrainedModel,
    M2VisionModel,
    M2VisionPreTrainedModel,
)
from .modeling.modeling_m2_vision import vit_image_processor_classes
from .registry import register_auto_classes

__version__ = "0.1.0"

register_auto_classes()  # every class of registry.M2_CLASSES with its Auto class
_image_processors = vit_image_processor_classes()
if _image_processors:  # ViT's image processors, for the installed backends (pillow, torchvision)
    try:
        AutoImageProcessor.register(M2Config, image_processor_classes=_image_processors, exist_ok=True)
    except ImportError:
        # Some transformers 5.x releases offer AutoImageProcessor only with torchvision installed; without it
        # the processor is loaded by its class (ViTImageProcessorPil.from_pretrained) instead.
        pass

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

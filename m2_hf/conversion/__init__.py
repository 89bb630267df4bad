"""Conversion of original M2-BERT checkpoints (HazyResearch/m2) into m2_hf models."""

from .convert import convert_checkpoint, save_tokenizer
from .model_cards import conversion_card, preset_card, write_preset_cards
from .original import ConversionError, config_from_original, convert_state_dict, strip_prefixes
from .presets import PRESETS, Preset, get_preset

__all__ = [
    "PRESETS",
    "ConversionError",
    "Preset",
    "config_from_original",
    "conversion_card",
    "convert_checkpoint",
    "convert_state_dict",
    "get_preset",
    "preset_card",
    "save_tokenizer",
    "strip_prefixes",
    "write_preset_cards",
]

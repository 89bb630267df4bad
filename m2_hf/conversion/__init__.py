"""Conversion of original M2-BERT checkpoints (HazyResearch/m2) into m2_hf models."""

from .convert import ConvertedCheckpoint, convert_checkpoint, convert_original, load_original, save_tokenizer
from .hub_source import HubCheckpoint, download_original, preset_for_repo
from .model_cards import conversion_card, preset_card, write_preset_cards
from .original import ConversionError, config_from_original, convert_state_dict, strip_prefixes
from .presets import PRESETS, Preset, get_preset

__all__ = [
    "PRESETS",
    "ConversionError",
    "ConvertedCheckpoint",
    "HubCheckpoint",
    "Preset",
    "config_from_original",
    "conversion_card",
    "convert_checkpoint",
    "convert_original",
    "convert_state_dict",
    "download_original",
    "get_preset",
    "load_original",
    "preset_card",
    "preset_for_repo",
    "save_tokenizer",
    "strip_prefixes",
    "write_preset_cards",
]

"""Conversion of original M2-BERT checkpoints."""

from .original import ConversionError, config_from_original, convert_state_dict, strip_prefixes

__all__ = ["ConversionError", "config_from_original", "convert_state_dict", "strip_prefixes"]

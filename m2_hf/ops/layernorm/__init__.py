"""Residual add fused with LayerNorm."""

from .fused import add_layernorm, add_layernorm_triton
from .reference import add_layernorm_reference

__all__ = ["add_layernorm", "add_layernorm_reference", "add_layernorm_triton"]

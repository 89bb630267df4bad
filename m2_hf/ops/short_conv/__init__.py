"""Causal depthwise (short) convolution, and the fused sequence-mixer front (short conv, split, pre-gate)."""

from .fused import causal_depthwise_conv, mixer_front, mixer_front_triton
from .reference import causal_depthwise_conv_reference, mixer_front_reference

__all__ = [
    "causal_depthwise_conv",
    "causal_depthwise_conv_reference",
    "mixer_front",
    "mixer_front_reference",
    "mixer_front_triton",
]

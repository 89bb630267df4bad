"""Causal depthwise (short) convolution."""

from .reference import causal_depthwise_conv_reference

causal_depthwise_conv = causal_depthwise_conv_reference

__all__ = ["causal_depthwise_conv", "causal_depthwise_conv_reference"]

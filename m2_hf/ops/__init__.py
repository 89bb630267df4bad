"""M2 operators.

Each operator has a pure-PyTorch reference (`*_reference`), the path used on CPU and the one every fused
kernel is checked against. The un-suffixed name is the dispatching entry point the models call.
"""

from .blockdiag import blockdiag_glu, blockdiag_glu_reference, blockdiag_matmul, blockdiag_matmul_reference
from .layernorm import add_layernorm, add_layernorm_reference
from .long_conv import (
    fft_long_conv,
    fft_long_conv_reference,
    gated_long_conv,
    gated_long_conv_reference,
    long_conv_kernel,
    long_conv_spectrum,
    monarch_spectrum,
)
from .monarch import monarch_matmul, monarch_matmul_reference
from .short_conv import causal_depthwise_conv, causal_depthwise_conv_reference, mixer_front, mixer_front_reference

__all__ = [
    "add_layernorm",
    "add_layernorm_reference",
    "blockdiag_glu",
    "blockdiag_glu_reference",
    "blockdiag_matmul",
    "blockdiag_matmul_reference",
    "causal_depthwise_conv",
    "causal_depthwise_conv_reference",
    "fft_long_conv",
    "fft_long_conv_reference",
    "gated_long_conv",
    "gated_long_conv_reference",
    "long_conv_kernel",
    "long_conv_spectrum",
    "mixer_front",
    "mixer_front_reference",
    "monarch_matmul",
    "monarch_matmul_reference",
    "monarch_spectrum",
]

"""Long convolution computed with FFTs: the torch.fft reference and fused Triton kernels (Monarch FFTs)."""

from .gated_long_conv import fft_long_conv, fused_path_supported, gated_long_conv, gated_long_conv_monarch
from .monarch_fft import MAX_FUSED_FFT_SIZE, MAX_RADIX_FFT_SIZE, fft_plan, fft_size_for, monarch_spectrum
from .reference import fft_long_conv_reference, gated_long_conv_reference, long_conv_kernel, long_conv_spectrum

__all__ = [
    "MAX_FUSED_FFT_SIZE",
    "MAX_RADIX_FFT_SIZE",
    "fft_long_conv",
    "fft_long_conv_reference",
    "fft_plan",
    "fft_size_for",
    "fused_path_supported",
    "gated_long_conv",
    "gated_long_conv_monarch",
    "gated_long_conv_reference",
    "long_conv_kernel",
    "long_conv_spectrum",
    "monarch_spectrum",
]

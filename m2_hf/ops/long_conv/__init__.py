"""Long convolution computed with FFTs."""

from .reference import fft_long_conv_reference, long_conv_kernel, long_conv_spectrum

fft_long_conv = fft_long_conv_reference

__all__ = ["fft_long_conv", "fft_long_conv_reference", "long_conv_kernel", "long_conv_spectrum"]

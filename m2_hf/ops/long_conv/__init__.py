"""Long convolution computed with FFTs: the torch.fft reference and fused Triton kernels (Monarch FFTs).

Files, as for every op: `reference.py` (torch.fft), `fused.py` (the custom ops and the dispatching entry point),
`plan.py` (tile geometry, DFT tables, the spectrum layout, `PlanLimits`), `tiles.py` (Triton helpers shared by
the kernels), `kernels.py` (one program per FFT) and `radix_kernels.py` (the radix step beyond one program).
"""

from .fused import (
    KernelSpectrumLayout,
    fft_long_conv,
    fused_path_supported,
    gated_long_conv,
    gated_long_conv_monarch,
    kernel_spectrum_layout,
    takes_fused_path,
)
from .plan import (
    DEFAULT_PLAN_LIMITS,
    MAX_FUSED_FFT_SIZE,
    MAX_RADIX_FFT_SIZE,
    PlanLimits,
    current_plan_limits,
    fft_plan,
    fft_size_for,
    monarch_spectrum,
    plan_limits,
)
from .reference import (
    fft_long_conv_reference,
    gated_long_conv_reference,
    kernel_spectrum_layout_reference,
    long_conv_kernel,
    long_conv_spectrum,
)

__all__ = [
    "DEFAULT_PLAN_LIMITS",
    "KernelSpectrumLayout",
    "MAX_FUSED_FFT_SIZE",
    "MAX_RADIX_FFT_SIZE",
    "PlanLimits",
    "current_plan_limits",
    "fft_long_conv",
    "fft_long_conv_reference",
    "fft_plan",
    "fft_size_for",
    "fused_path_supported",
    "gated_long_conv",
    "gated_long_conv_monarch",
    "gated_long_conv_reference",
    "kernel_spectrum_layout",
    "kernel_spectrum_layout_reference",
    "long_conv_kernel",
    "long_conv_spectrum",
    "monarch_spectrum",
    "plan_limits",
    "takes_fused_path",
]

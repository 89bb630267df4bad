"""The gated long convolution as a custom op: fused Triton kernels, or the torch.fft reference.

`gated_long_conv(u, spectrum, skip, pre_gate, post_gate)` computes
`post_gate * (conv(u * pre_gate, k) + skip * (u * pre_gate))` and is the entry point the models call. It takes
the fused kernels when `use_triton(u, backend)` says so and `plan.fft_plan` covers the length (FFT sizes up
to `MAX_RADIX_FFT_SIZE`, i.e. `L <= 32768`: one program per row up to `MAX_FUSED_FFT_SIZE`, `L <= 1024`, three
launches with a radix step beyond; `plan.PlanLimits` moves these thresholds), with fp32/fp16/bf16 inputs and a
complex64 spectrum. Everything else (longer sequences, float64, CPU without the interpreter) takes
`gated_long_conv_reference`, the torch.fft path, unless the `"triton"` backend was forced, which then raises.

The fused path converts the `[H, L + 1]` spectrum to the kernels' layout with `monarch_spectrum` (torch ops, so
autograd carries its gradient back to `spectrum`) and calls the op `m2hf::gated_long_conv_monarch`, whose
backward is the op `m2hf::gated_long_conv_monarch_backward`. The kernel module is imported when an op first
runs, so that importing the package needs no Triton driver.
"""

from dataclasses import dataclass
from typing import Optional

import torch

from ..backend import resolve_backend, use_triton
from .plan import MAX_RADIX_FFT_SIZE, PlanLimits, current_plan_limits, fft_plan, monarch_spectrum
from .reference import gated_long_conv_reference

FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
DEFAULT_LIMITS = PlanLimits()


def _unit_stride(tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """The kernels take any batch and channel strides (0 included) but need contiguous positions."""
    if tensor is None or tensor.stride(-1) == 1:
        return tensor
    return tensor.contiguous()


def _limits(max_fused_fft_size: int, radix_inner_fft_size: int, one_launch_forward: bool) -> PlanLimits:
    return PlanLimits(max_fused_fft_size, radix_inner_fft_size, one_launch_forward)


def _checked_plan(u: torch.Tensor, spectrum: torch.Tensor, limits: PlanLimits):
    plan = fft_plan(u.shape[-1], limits)
    if plan is None or spectrum.shape != (u.shape[1], 2, plan.spectrum_size):
        raise ValueError(
            f"spectrum must be monarch_spectrum(..., {u.shape[-1]}) of shape [H, 2, plan.spectrum_size] for u of "
            f"shape {tuple(u.shape)}, got {tuple(spectrum.shape)}."
        )
    return plan


@torch.library.custom_op("m2hf::gated_long_conv_monarch", mutates_args=())
def gated_long_conv_monarch(
    u: torch.Tensor,
    spectrum: torch.Tensor,
    skip: torch.Tensor,
    pre_gate: Optional[torch.Tensor] = None,
    post_gate: Optional[torch.Tensor] = None,
    max_fused_fft_size: int = DEFAULT_LIMITS.max_fused_fft_size,
    radix_inner_fft_size: int = DEFAULT_LIMITS.radix_inner_fft_size,
    one_launch_forward: bool = DEFAULT_LIMITS.one_launch_forward,
) -> torch.Tensor:
    """Fused gated long convolution on the Triton kernels (CUDA, or CPU under `TRITON_INTERPRET=1`).

    Args:
        u: `[B, H, L]` float32, float16 or bfloat16.
        spectrum: `[H, 2, S]` float32 from `monarch_spectrum(spectrum, L, limits)`; cacheable per filter, length
            and limits.
        skip: `[H]`.
        pre_gate, post_gate: `[B, H, L]` (stride 0 along broadcast dimensions is fine), or None.
        max_fused_fft_size, radix_inner_fft_size, one_launch_forward: the fields of the `PlanLimits` planning it.

    Returns:
        A new contiguous `[B, H, L]` tensor in `u`'s dtype.
    """
    plan = _checked_plan(u, spectrum, _limits(max_fused_fft_size, radix_inner_fft_size, one_launch_forward))
    if plan.radix == 1:
        from .kernels import gated_long_conv_fwd_triton as forward
    else:
        from .radix_kernels import gated_long_conv_fwd_radix as forward
    return forward(
        _unit_stride(u), spectrum.contiguous(), skip.contiguous(), _unit_stride(pre_gate), _unit_stride(post_gate), plan
    )


@gated_long_conv_monarch.register_fake
def _(u, spectrum, skip, pre_gate=None, post_gate=None, max_fused_fft_size=0, radix_inner_fft_size=0,
      one_launch_forward=False):
    return u.new_empty(u.shape)


@torch.library.custom_op("m2hf::gated_long_conv_monarch_backward", mutates_args=())
def gated_long_conv_monarch_backward(
    grad_out: torch.Tensor,
    u: torch.Tensor,
    spectrum: torch.Tensor,
    skip: torch.Tensor,
    pre_gate: Optional[torch.Tensor],
    post_gate: Optional[torch.Tensor],
    max_fused_fft_size: int,
    radix_inner_fft_size: int,
    one_launch_forward: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `gated_long_conv_monarch`: `(grad_u, grad_spectrum, grad_skip, grad_pre_gate,
    grad_post_gate)`, an empty tensor standing for the gradient of an absent gate."""
    plan = _checked_plan(u, spectrum, _limits(max_fused_fft_size, radix_inner_fft_size, one_launch_forward))
    if plan.radix == 1:
        from .kernels import gated_long_conv_bwd_triton as backward
    else:
        from .radix_kernels import gated_long_conv_bwd_radix as backward
    grad_u, grad_spectrum, grad_skip, grad_pre_gate, grad_post_gate = backward(
        _unit_stride(grad_out), _unit_stride(u), spectrum.contiguous(), skip.contiguous(),
        _unit_stride(pre_gate), _unit_stride(post_gate), plan,
    )
    return (
        grad_u,
        grad_spectrum,
        grad_skip,
        u.new_empty(0) if grad_pre_gate is None else grad_pre_gate,
        u.new_empty(0) if grad_post_gate is None else grad_post_gate,
    )


@gated_long_conv_monarch_backward.register_fake
def _(grad_out, u, spectrum, skip, pre_gate, post_gate, max_fused_fft_size, radix_inner_fft_size, one_launch_forward):
    return (
        u.new_empty(u.shape),
        spectrum.new_empty(spectrum.shape),
        skip.new_empty(skip.shape),
        u.new_empty(0) if pre_gate is None else pre_gate.new_empty(pre_gate.shape),
        u.new_empty(0) if post_gate is None else post_gate.new_empty(post_gate.shape),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:5])
    ctx.limits = inputs[5:]


def _backward(ctx, grad_out):
    u, spectrum, skip, pre_gate, post_gate = ctx.saved_tensors
    grad_u, grad_spectrum, grad_skip, grad_pre_gate, grad_post_gate = gated_long_conv_monarch_backward(
        grad_out, u, spectrum, skip, pre_gate, post_gate, *ctx.limits
    )
    return (
        grad_u,
        grad_spectrum,
        grad_skip,
        None if pre_gate is None else grad_pre_gate,
        None if post_gate is None else grad_post_gate,
        *(None for _ in ctx.limits),
    )


gated_long_conv_monarch.register_autograd(_backward, setup_context=_setup_context)


def fused_path_supported(u: torch.Tensor, spectrum: torch.Tensor) -> bool:
    """Whether the fused kernels cover this call: fp32/fp16/bf16 input, a complex64 spectrum (or one already in
    the kernels' float32 layout), `L <= 32768`."""
    spectrum_ok = spectrum.dtype in (torch.complex64, torch.float32)
    return u.dtype in FUSED_DTYPES and spectrum_ok and fft_plan(u.shape[-1]) is not None


def takes_fused_path(u: torch.Tensor, backend: str = "auto") -> bool:
    """Whether `gated_long_conv(u, ..., backend=backend)` with a complex64 spectrum runs the fused kernels."""
    return use_triton(u, backend) and u.dtype in FUSED_DTYPES and fft_plan(u.shape[-1]) is not None


@dataclass(frozen=True)
class KernelSpectrumLayout:
    """The conversion of a complex `[H, L + 1]` filter spectrum into the fused kernels' layout under `limits`
    (`monarch_spectrum`); hashable, so that a filter can cache the converted spectrum under it."""

    limits: PlanLimits

    def __call__(self, spectrum: torch.Tensor, seq_len: int) -> torch.Tensor:
        return monarch_spectrum(spectrum, seq_len, self.limits)


def kernel_spectrum_layout(u: torch.Tensor, backend: str = "auto") -> KernelSpectrumLayout | None:
    """The layout `gated_long_conv(u, ..., backend=backend)` consumes its spectrum in: a `KernelSpectrumLayout`
    when the call runs the fused kernels (the caller may pass the converted spectrum, cached per filter), None for
    the torch.fft path's complex spectrum."""
    return KernelSpectrumLayout(current_plan_limits()) if takes_fused_path(u, backend) else None


def gated_long_conv(
    u: torch.Tensor,
    spectrum: torch.Tensor,
    skip: torch.Tensor,
    pre_gate: Optional[torch.Tensor] = None,
    post_gate: Optional[torch.Tensor] = None,
    backend: str = "auto",
    limits: Optional[PlanLimits] = None,
) -> torch.Tensor:
    """Gated long convolution `post_gate * (conv(u * pre_gate, k) + skip * (u * pre_gate))`.

    Args:
        u: `[B, H, L]`.
        spectrum: `[H, L + 1]` complex, from `long_conv_spectrum(long_conv_kernel(k_fwd, k_rev), L)`; or, when
            `takes_fused_path(u, backend)`, already in the kernels' layout, `monarch_spectrum(spectrum, L, limits)`.
        skip: `[H]`, the skip weight `D`.
        pre_gate, post_gate: broadcastable to `u` (e.g. a `[B, 1, L]` padding mask folded into a gate), or None.
        backend: `"auto"`, `"triton"` or `"torch"` (see `m2_hf.ops.backend`). With `"auto"`, lengths or dtypes
            the fused kernels do not cover take the torch.fft path; forcing `"triton"` on them raises.
        limits: the `PlanLimits` of the fused kernels' plan (default: `current_plan_limits()`).

    Returns:
        `[B, H, L]` in `u`'s dtype.
    """
    kernel_layout = not spectrum.is_complex()
    if kernel_layout and not takes_fused_path(u, backend):
        raise ValueError(
            "gated_long_conv got a spectrum in the fused kernels' layout (monarch_spectrum), but this call takes the "
            "torch.fft path; pass the complex [H, L + 1] spectrum (check takes_fused_path first)."
        )
    if not use_triton(u, backend):
        return gated_long_conv_reference(u, spectrum, skip, pre_gate, post_gate)
    if not fused_path_supported(u, spectrum):
        if resolve_backend(backend) == "triton":
            raise RuntimeError(
                "kernel_backend='triton' was forced, but the fused long convolution covers fp32/fp16/bf16 inputs "
                f"with a complex64 spectrum and L <= {MAX_RADIX_FFT_SIZE // 2}; got {u.dtype} input of length "
                f"{u.shape[-1]} and a {spectrum.dtype} spectrum. Use the 'auto' backend (torch.fft beyond that)."
            )
        return gated_long_conv_reference(u, spectrum, skip, pre_gate, post_gate)
    if pre_gate is not None:
        pre_gate = pre_gate.expand_as(u)
    if post_gate is not None:
        post_gate = post_gate.expand_as(u)
    limits = current_plan_limits() if limits is None else limits
    kernel_spectrum = spectrum if kernel_layout else monarch_spectrum(spectrum, u.shape[-1], limits)
    return gated_long_conv_monarch(
        u, kernel_spectrum, skip, pre_gate, post_gate,
        limits.max_fused_fft_size, limits.radix_inner_fft_size, limits.one_launch_forward,
    )


def fft_long_conv(u: torch.Tensor, spectrum: torch.Tensor, skip: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Ungated long convolution `conv(u, k) + skip * u` (`gated_long_conv` without gates)."""
    return gated_long_conv(u, spectrum, skip, backend=backend)

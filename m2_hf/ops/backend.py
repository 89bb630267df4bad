"""Choice between the Triton kernels and the pure-PyTorch reference ops.

`"auto"` takes the Triton kernels for CUDA tensors when Triton is installed and the reference otherwise;
`"triton"` and `"torch"` force one. The environment variable `M2_HF_KERNEL_BACKEND` overrides the choice passed
by the model (`M2Config.kernel_backend`).
"""

from __future__ import annotations

import importlib.util
import os

import torch

KERNEL_BACKENDS = ("auto", "triton", "torch")
ENV_VAR = "M2_HF_KERNEL_BACKEND"
# Autotune over only the first N configs of each kernel's list (a benchmark run in a short GPU window); unset or 0:
# every config.
AUTOTUNE_ENV_VAR = "M2_HF_AUTOTUNE_CONFIGS"


def autotune_configs(configs: list) -> list:
    """`configs`, cut to the first `$M2_HF_AUTOTUNE_CONFIGS` entries when that is set (each list starts with the
    configs expected to be best)."""
    value = os.environ.get(AUTOTUNE_ENV_VAR, "").strip()
    if not value:
        return configs
    if not value.isdigit():
        raise ValueError(f"{AUTOTUNE_ENV_VAR} must be a number of configs (0: all), got {value!r}.")
    return configs[: int(value)] if int(value) > 0 else configs


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (`TRITON_INTERPRET=1`)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_backend(requested: str = "auto") -> str:
    """The backend in force: the environment variable if set, else `requested`."""
    backend = os.environ.get(ENV_VAR, "").strip().lower() or requested
    if backend not in KERNEL_BACKENDS:
        source = ENV_VAR if os.environ.get(ENV_VAR, "").strip() else "kernel_backend"
        raise ValueError(f"{source} must be one of {KERNEL_BACKENDS}, got {backend!r}.")
    return backend


def use_triton(tensor: torch.Tensor, requested: str = "auto") -> bool:
    """Whether an op on `tensor` should run its Triton kernel.

    Forcing `"triton"` on a CPU tensor is allowed only under the interpreter; otherwise it raises.
    """
    backend = resolve_backend(requested)
    if backend == "torch":
        return False
    runnable = triton_available() and (tensor.is_cuda or interpreting())
    if backend == "triton":
        if not runnable:
            raise RuntimeError(
                f"kernel_backend='triton' was forced, but the Triton kernels cannot run on a {tensor.device.type} "
                "tensor here (they need CUDA, or TRITON_INTERPRET=1 for the CPU interpreter)."
            )
        return True
    return tensor.is_cuda and triton_available()


def autocast_input(x: torch.Tensor) -> torch.Tensor:
    """`x` in the autocast dtype when autocast is on for its device (the kernels cast weight tiles to match)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return x.to(torch.get_autocast_dtype(device_type))
    return x


def new_buffer(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Allocation point of every buffer a Triton kernel writes (tests replace it to poison buffers with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def may_overwrite_intermediates(*tensors: torch.Tensor | None) -> bool:
    """Whether a reference op may write its own intermediates in place: no gradient flows through the given
    tensors and no compiler is tracing (in place, a large CPU op reuses memory it already holds instead of taking
    fresh pages)."""
    if torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)

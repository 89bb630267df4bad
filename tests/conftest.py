import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from helpers import FIXTURES, tiny_config  # noqa: E402,F401


@pytest.fixture
def fixture_dir() -> Path:
    path = FIXTURES / "m2bert-tiny-80m-layout"
    if not path.is_dir():
        message = f"original-format fixtures not found at {path} (set M2_HF_FIXTURES to the folder holding them)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def poison_kernel_buffers(monkeypatch):
    """Every buffer the Triton kernels write starts as NaN, so an element they skip shows up."""
    import m2_hf.ops.backend

    def nan_buffer(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)

    monkeypatch.setattr(m2_hf.ops.backend, "new_buffer", nan_buffer)


SMALL_RADIX_LIMITS = {"max_fused_fft_size": 256, "radix_inner_fft_size": 256}


@pytest.fixture
def small_radix_plans():
    """The long convolution's radix step from FFT size 512 on, over subsequences of 256: the three-launch path
    at lengths the interpreter runs quickly (for whole models too)."""
    from m2_hf.ops.long_conv import PlanLimits, plan_limits

    with plan_limits(PlanLimits(**SMALL_RADIX_LIMITS)) as limits:
        yield limits


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: runs the compiled Triton kernels on a CUDA GPU (skipped without one, or when interpreting)"
    )


def pytest_collection_modifyitems(config, items):
    from m2_hf.ops.backend import interpreting

    if torch.cuda.is_available() and not interpreting():
        return
    reason = "set TRITON_INTERPRET=0 to run the compiled kernels" if torch.cuda.is_available() else "needs a CUDA GPU"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))

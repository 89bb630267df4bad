"""Timing and provenance shared by the benchmark scripts."""

from __future__ import annotations

import datetime
import platform
import statistics
import time

import torch
import transformers

import m2_hf


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Wall time of the first call of every timed function (compilation and autotuning included), kept apart from the
# measured times; `run_gpu.py` reports their sum per stage.
FIRST_CALL_SECONDS: list[float] = []


def median_seconds(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of `fn` in seconds, with the device synchronised around every call. The first warmup call
    is timed on its own into `FIRST_CALL_SECONDS`."""
    for index in range(warmup):
        start = time.perf_counter()
        fn()
        if index == 0:
            synchronize(device)
            FIRST_CALL_SECONDS.append(time.perf_counter() - start)
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def versions() -> dict[str, str]:
    """The versions of torch, triton ("none" without it), transformers and m2-hf."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "torch": torch.__version__,
        "triton": triton_version,
        "transformers": transformers.__version__,
        "m2_hf": m2_hf.__version__,
    }


def measured_on(device: torch.device) -> str:
    """`Measured <date> on <device>, torch ..., triton ..., transformers ..., m2-hf ...`."""
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)} (cuda)"
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    found = versions()
    return (
        f"Measured {datetime.date.today().isoformat()} on {name}, torch {found['torch']}, triton {found['triton']}, "
        f"transformers {found['transformers']}, m2-hf {found['m2_hf']}"
    )

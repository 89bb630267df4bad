"""Shared test helpers."""

import os
from pathlib import Path

import torch

import m2_hf

FIXTURES = Path(
    os.environ.get("M2_HF_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "original-m2bert")
)


def tiny_config(**overrides) -> m2_hf.M2Config:
    """A small M2 config that runs in milliseconds on CPU."""
    fields = dict(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=32,
        filter_order=8,
        hidden_dropout_prob=0.0,
    )
    fields.update(overrides)
    return m2_hf.M2Config(**fields)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, monkeypatch):
    """Import the script `benchmarks/<name>.py` as a module (its folder first on the path, as when run directly)."""
    import importlib.util
    import sys

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


# Tolerance of the Triton kernels against their references, relative to the largest reference magnitude.
KERNEL_RTOL = {torch.float32: 1e-5, torch.float16: 1e-2}


def assert_relative_close(actual, expected, rtol):
    """Largest error at most `rtol` times the largest reference magnitude; no NaN left anywhere."""
    assert torch.isfinite(actual).all()
    error = (actual.float() - expected.float()).abs().max().item()
    assert error <= rtol * expected.float().abs().max().item(), f"max error {error}"

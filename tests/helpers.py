"""Shared test helpers."""

import os
from pathlib import Path

import torch

import m2_hf

# The original-format M2-BERT checkpoints and their original outputs (tests/fixtures/original-m2bert/README.md).
FIXTURES = Path(os.environ.get("M2_HF_FIXTURES", Path(__file__).resolve().parent / "fixtures" / "original-m2bert"))


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


def causal_config(**overrides) -> m2_hf.M2Config:
    """`tiny_config` in M2-GPT's layout: causal mixers, pre-norm blocks, no position table, no token types."""
    fields = dict(bidirectional=False, norm_position="pre", use_position_embeddings=False, type_vocab_size=0)
    return tiny_config(**{**fields, **overrides})


def left_padded(sequences, pad=0):
    """Token-id rows `sequences` left-padded to one width: `(ids, attention_mask)`."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = seq
        mask[row, width - len(seq) :] = 1
    return ids, mask


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


def activation_checkpointing(enabled: bool = True) -> dict:
    """The `TrainingArguments` field that switches activation checkpointing: `activation_checkpointing` from
    transformers 5.23, `gradient_checkpointing` before."""
    import dataclasses

    from transformers import TrainingArguments

    names = {field.name for field in dataclasses.fields(TrainingArguments)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": enabled}


def training_args(tmp_path, **overrides):
    """Short CPU `TrainingArguments` for the Trainer tests, with `overrides`."""
    from transformers import TrainingArguments

    fields = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        max_steps=30,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        dataloader_pin_memory=False,
    )
    fields.update(overrides)
    return TrainingArguments(**fields)


# Sizes and tolerance of the GPU tests (`@pytest.mark.gpu`): M2-BERT-base shapes, bf16 against an fp32 reference.
GPU_TOKENS = 16384
GPU_HIDDEN = 768
GPU_INTERMEDIATE = 3072
GPU_NBLOCKS = 4
GPU_RTOL = 1e-2


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Norm-wise relative error of `actual` (finite) against `expected`; complex values stay complex."""
    assert torch.isfinite(actual).all()
    if expected.is_complex():
        return ((actual.to(expected.dtype) - expected).norm() / expected.norm()).item()
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


def check_bf16_against_fp32(fused, reference, inputs, rtol: float = GPU_RTOL) -> None:
    """Forward and input gradients of `fused` on bf16 inputs vs `reference` on their fp32 upcasts."""
    low = [t.to(torch.bfloat16).requires_grad_() if t.is_floating_point() else t for t in inputs]
    high = [t.detach().float().requires_grad_() if t.is_floating_point() else t for t in low]
    differentiable_low = [t for t in low if t.requires_grad]
    differentiable_high = [t for t in high if t.requires_grad]
    outputs = fused(*low)
    expected = reference(*high)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    expected = expected if isinstance(expected, tuple) else (expected,)
    grads_out = [torch.randn_like(e) for e in expected]
    for actual, wanted in zip(outputs, expected):
        assert actual.dtype == torch.bfloat16 and actual.shape == wanted.shape
        assert relative_error(actual, wanted) <= rtol
    grads = torch.autograd.grad(outputs, differentiable_low, [g.to(torch.bfloat16) for g in grads_out])
    expected_grads = torch.autograd.grad(expected, differentiable_high, grads_out)
    for actual, wanted in zip(grads, expected_grads):
        assert relative_error(actual, wanted) <= rtol


def run_two_processes(script: Path, workdir: Path, timeout: int = 150, attempts: int = 2) -> None:
    """Run `script workdir` as a two-process `torchrun --standalone` job (gloo on CPU) in `workdir`; fail the test
    with the end of its stderr if it fails.

    On the 2-core CI machine such a job has now and then aborted or hung in the distributed runtime itself (a
    rank's `terminate called without an active exception`, a rendezvous that never completes) with the scripts'
    own work done; a failed attempt is therefore run once more, and both attempts' errors are reported.
    """
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    errors = []
    for attempt in range(attempts):
        try:
            result = subprocess.run(
                [*command, str(script), str(workdir)],
                check=False,
                cwd=workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            errors.append(f"attempt {attempt + 1}: no result within {timeout} s")
            continue
        if result.returncode == 0:
            return
        errors.append(f"attempt {attempt + 1}: exit status {result.returncode}\n{result.stderr[-3000:]}")
    raise AssertionError("\n\n".join(errors))

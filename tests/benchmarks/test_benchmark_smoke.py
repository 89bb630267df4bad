"""The benchmark scripts run end to end (tiny sizes, CPU); their numbers are not checked."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BENCHMARKS, load_benchmark


def test_encoder_benchmark_smoke(tmp_path, monkeypatch):
    bench = load_benchmark("bench_encoder", monkeypatch)
    output = tmp_path / "table.md"
    rows = bench.main(
        ["--lengths", "16", "--device", "cpu", "--dtype", "float32", "--infer-tokens", "32", "--train-tokens", "16",
         "--warmup", "0", "--repeats", "1", "--output", str(output)]
    )
    assert {(r.model, r.mode) for r in rows} == {
        (m, mode) for m in ("M2-BERT-80M (torch reference)", "BERT-base sdpa", "BERT-base eager") for mode in ("infer", "train")
    }
    assert all(r.tokens_per_s > 0 and math.isfinite(r.tokens_per_s) for r in rows)
    text = output.read_text()
    assert text.count("\n| ") == len(rows) + 1 and "torch" in text


def test_encoder_benchmark_alternating_rows(tmp_path, monkeypatch):
    bench = load_benchmark("bench_encoder", monkeypatch)
    rows = bench.main(
        ["--lengths", "16", "--device", "cpu", "--dtype", "float32", "--modes", "infer", "--infer-tokens", "32",
         "--warmup", "1", "--repeats", "2", "--alternate", "--skip-eager-above", "0"]
    )
    assert [r.model for r in rows] == ["M2-BERT-80M (torch reference)", "BERT-base sdpa"]
    assert all(r.tokens_per_s > 0 and math.isfinite(r.tokens_per_s) and r.batch == 2 for r in rows)


def test_kernel_benchmark_smoke(tmp_path, monkeypatch):
    """The per-kernel benchmark times the reference ops on CPU at tiny sizes and computes every floor."""
    bench = load_benchmark("bench_kernels", monkeypatch)
    output = tmp_path / "kernels.md"
    rows = bench.main(
        ["--tokens", "64", "--lengths", "16", "2048", "--device", "cpu", "--warmup", "0", "--repeats", "1",
         "--output", str(output)]
    )
    ops = ["blockdiag_glu", "blockdiag_matmul", "mixer_front", "gated_long_conv", "gated_long_conv", "add_layernorm"]
    assert [r.op for r in rows] == [op for op in ops for _ in ("fwd", "train")]
    assert all(r.ms > 0 and r.floor_ms > 0 for r in rows)
    assert all(r.floor_ms < t.floor_ms for r, t in zip(rows[::2], rows[1::2]))  # training costs more than forward
    assert output.read_text().count("\n| ") == len(rows) + 1


def test_long_conv_flop_count_matches_the_plan_arithmetic(monkeypatch):
    """The radix plan's FLOPs are its subsequence DFTs plus the radix step: checked against an independent count."""
    bench = load_benchmark("bench_kernels", monkeypatch)
    # L = 2048: N = 4096 as radix 2 over 32 x 64 subsequence DFTs; 16 time rows, 17 stored Monarch rows
    subsequence = (2 * 2 * 32 * 16 * 64 + 4 * 2 * 32 * 64 * 64) + (4 * 2 * 32 * 64 * 64 + 2 * 2 * 16 * 32 * 64)
    radix_step = 2 * (4 * 2 * 2 * 2 * 17 * 64)  # 2 x 2 radix matrix, no padding
    assert bench.long_conv_dot_flops(2048, backward=False) == 2 * subsequence + radix_step
    assert bench.long_conv_dot_flops(2048, backward=True) == 2 * (2 * subsequence + radix_step)


def test_kernel_resources_compiles_for_the_gpu_without_one():
    """The sm_90a build report runs on a CPU machine (in its own process: it needs Triton's compiler, not the
    interpreter) and lists every kernel of a single-program and of a radix plan."""
    triton_nvidia = pytest.importorskip("triton.backends.nvidia")
    if not any((Path(triton_nvidia.__file__).parent / "bin").glob("ptxas*")):
        pytest.skip("this Triton build ships no ptxas")
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "kernel_resources.py"), "--lengths", "16", "2048"],
        capture_output=True, text=True, env=dict(os.environ, TRITON_INTERPRET="0"), check=True,
    )
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith(("| 16 |", "| 2048 |"))]
    assert [row[1].strip() for row in rows] == [
        "forward", "backward", "subsequence DFT", "subsequence DFT (backward)", "output", "output (backward)",
        "radix step", "radix step (backward)", "one-launch forward",
    ]
    assert all(int(row[2]) > 0 for row in rows)

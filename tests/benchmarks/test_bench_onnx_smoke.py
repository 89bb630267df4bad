"""The ONNX Runtime CPU benchmark runs end to end at toy size (export, int8 quantisation, every ONNX row); its
speed numbers are not checked, the float32 ONNX Runtime embeddings must equal eager PyTorch's."""

import math

import pytest
import torch

from helpers import load_benchmark

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_onnx_benchmark_smoke(tmp_path, monkeypatch):
    bench = load_benchmark("bench_onnx", monkeypatch)
    output = tmp_path / "onnx-cpu.md"
    threads = torch.get_num_threads()
    try:
        rows = bench.main(
            ["--size", "toy", "--lengths", "16", "32", "--tokens", "64", "--threads", "1",
             "--runtimes", "eager", "onnxruntime", "onnxruntime-int8", "--warmup", "0", "--repeats", "1", "--profile",
             "--output", str(output)]
        )
    finally:
        torch.set_num_threads(threads)
    runtimes = ["torch eager", "onnxruntime", "onnxruntime int8 (dynamic)"]
    assert [(r.runtime, r.length, r.batch) for r in rows] == [(name, L, 64 // L) for L in (16, 32) for name in runtimes]
    assert all(r.tokens_per_s > 0 and math.isfinite(r.tokens_per_s) for r in rows)
    for row in rows:
        if row.runtime == "onnxruntime":
            assert row.embedding_max_abs <= 1e-4 and row.token_mean_cosine > 0.99999
        if row.runtime.startswith("onnxruntime int8"):
            assert math.isfinite(row.embedding_min_cosine) and row.embedding_max_abs > 0  # quantised: not exact
    text = output.read_text()
    assert text.count("\n| ") == len(rows) + 1 and "onnxruntime 1." in text
    assert "- L = 16: " in text and "- L = 32: " in text  # the operator profile of each length

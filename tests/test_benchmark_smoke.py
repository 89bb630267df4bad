"""The encoder benchmark runs end to end (tiny sizes, CPU, float32); its numbers are not checked."""

import importlib.util
import math
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_encoder.py"


def test_encoder_benchmark_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_encoder", BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(bench)
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

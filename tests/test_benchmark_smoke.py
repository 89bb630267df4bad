"""The encoder benchmark runs end to end (tiny sizes, CPU, float32); its numbers are not checked."""

import math

from helpers import load_benchmark


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

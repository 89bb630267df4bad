"""The generation benchmark runs end to end (tiny sizes, CPU, float32); its numbers are not checked."""

import math

from helpers import load_benchmark


def test_generation_benchmark_smoke(tmp_path, monkeypatch):
    bench = load_benchmark("bench_generation", monkeypatch)
    output = tmp_path / "table.md"
    rows = bench.main(
        ["--size", "tiny", "--lengths", "16", "32", "--device", "cpu", "--dtype", "float32", "--decode-steps", "2",
         "--prefill-tokens", "64", "--min-prefill-length", "32", "--warmup", "0", "--repeats", "1",
         "--generate-tokens", "3", "--generate-lengths", "16", "--output", str(output)]
    )
    decode = {(r.model, r.length) for r in rows if r.measurement == "decode"}
    prefill = {(r.model, r.length) for r in rows if r.measurement == "prefill"}
    assert decode == {(m, n) for m in bench.DECODE_ROWS for n in (16, 32)}
    assert prefill == {(m, 32) for m in bench.PREFILL_ROWS}
    assert {(r.model, r.length, r.new_tokens) for r in rows if r.measurement == "generate"} == {
        (m, 16, 3) for m in bench.PREFILL_ROWS
    }
    cached = [r for r in rows if r.measurement == "decode" and "no cache" not in r.model]
    assert all(r.cache_mb > 0 for r in cached)
    assert all(r.tokens_per_s > 0 and math.isfinite(r.tokens_per_s) for r in rows)
    text = output.read_text()
    assert text.count("\n| ") == len(rows) + 1 and "transformers" in text

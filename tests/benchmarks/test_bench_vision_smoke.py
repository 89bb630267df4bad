"""The vision benchmark runs end to end (tiny images, CPU, float32); its numbers are not checked."""

import math

import torch

from helpers import load_benchmark


def test_vision_benchmark_smoke(tmp_path, monkeypatch):
    bench = load_benchmark("bench_vision", monkeypatch)
    output = tmp_path / "table.md"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny 32x32 batches: intra-op threads only wait on each other
    try:
        rows = bench.main(
            ["--image-sizes", "32", "--device", "cpu", "--dtype", "float32", "--batch", "2", "--m2-backends", "torch",
             "--warmup", "0", "--repeats", "1", "--output", str(output)]
        )
    finally:
        torch.set_num_threads(threads)
    assert {(r.model, r.mode) for r in rows} == {
        (m, mode) for m in ("M2-ViT-b (torch)", "ViT-b/16 sdpa") for mode in ("infer", "train")
    }
    assert {(r.mode, r.batch) for r in rows} == {("infer", 2), ("train", 1)}
    assert all(r.images_per_s > 0 and math.isfinite(r.images_per_s) for r in rows)
    m2_params = {r.parameters for r in rows if r.model.startswith("M2")}
    vit_params = {r.parameters for r in rows if r.model.startswith("ViT")}
    assert len(m2_params) == len(vit_params) == 1 and m2_params.pop() < vit_params.pop()
    text = output.read_text()
    assert text.count("\n| ") == len(rows) + 1 and "torch" in text

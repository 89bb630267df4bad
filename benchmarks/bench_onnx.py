"""CPU inference of the M2-BERT encoder: ONNX Runtime (float32 and int8) against PyTorch eager and torch.compile.

One run on one machine: an M2-BERT-80M-size encoder with pooler (768 hidden, 12 layers, GLU block-diagonal MLP
with 4 blocks, filter order 128, `max_position_embeddings` = the longest length measured; random weights, seeded)
is saved, exported with `m2_hf.onnx_export.export_onnx` (one file, dynamic batch and length) and quantised with
`m2_hf.onnx_export.quantize_dynamic_int8` (ONNX Runtime's `quantize_dynamic`: int8 weights, activations
quantised per call). Every runtime then
embeds the same batches at each length with the same number of threads:

- `torch eager`: `M2Model` in eval mode under `no_grad` (its filters cached per length);
- `torch.compile`: the same model compiled by inductor (`dynamic=False`: one graph per length; compile time not
  measured);
- `onnxruntime`: the exported float32 file on the CPU execution provider;
- `onnxruntime int8`: the dynamically quantised file.

Prints and writes tokens/s, ratios against eager, and the accuracy cost: the largest absolute difference and the
lowest cosine similarity of the embeddings (`pooler_output`) and the mean cosine of the token states of each
runtime against eager float32. Numbers are reported, never asserted.

    python benchmarks/bench_onnx.py --lengths 512 2048 --profile --output benchmarks/results/onnx-cpu.md
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from timing import measured_on, median_seconds

import m2_hf
from m2_hf.onnx_export import ONNX_FILE, export_onnx, quantize_dynamic_int8

RUNTIMES = ("eager", "compile", "onnxruntime", "onnxruntime-int8")
RUNTIME_NAMES = {
    "eager": "torch eager",
    "compile": "torch.compile",
    "onnxruntime": "onnxruntime",
    "onnxruntime-int8": "onnxruntime int8 (dynamic)",
}
SIZES = {
    "80m": dict(hidden_size=768, num_hidden_layers=12, intermediate_size=3072, filter_order=128),
    "toy": dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, filter_order=8, vocab_size=99),
}


@dataclass
class Row:
    runtime: str
    length: int
    batch: int
    ms: float
    tokens_per_s: float
    embedding_max_abs: float
    embedding_min_cosine: float
    token_mean_cosine: float


def build_encoder(size: str, max_length: int) -> m2_hf.M2Model:
    config = m2_hf.M2Config(
        **SIZES[size], max_position_embeddings=max_length, hidden_dropout_prob=0.0, mask_padding=False
    )
    torch.manual_seed(0)
    return m2_hf.M2Model(config).eval()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runners(model: m2_hf.M2Model, folder: Path, runtimes, threads: int) -> dict:
    """For each runtime, `run(inputs) -> (last_hidden_state, pooler_output)` as numpy arrays."""
    result = {}
    if "eager" in runtimes or "compile" in runtimes:

        def torch_runner(module):
            def run(inputs):
                with torch.no_grad():
                    out = module(**{name: torch.from_numpy(value) for name, value in inputs.items()})
                return out.last_hidden_state.numpy(), out.pooler_output.numpy()

            return run

        if "eager" in runtimes:
            result["eager"] = torch_runner(model)
        if "compile" in runtimes:
            result["compile"] = torch_runner(torch.compile(model, dynamic=False))
    for runtime, file in (("onnxruntime", ONNX_FILE), ("onnxruntime-int8", "model.int8.onnx")):
        if runtime in runtimes:
            session = ort_session(folder / file, threads)
            result[runtime] = lambda inputs, s=session: tuple(s.run(["last_hidden_state", "pooler_output"], inputs))
    return result


def operator_shares(path: Path, inputs: dict, threads: int) -> str:
    """One profiled ONNX Runtime call: the share of node time per operator type, largest first (top 5)."""
    import json

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as profile_dir:
        options.profile_file_prefix = str(Path(profile_dir) / "ort")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, inputs)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            totals[op] = totals.get(op, 0.0) + event["dur"]
    total = sum(totals.values())
    top = sorted(totals.items(), key=lambda item: -item[1])[:5]
    return ", ".join(f"{op} {100 * duration / total:.0f}%" for op, duration in top)


def run(args) -> tuple[list[Row], dict]:
    torch.set_num_threads(args.threads)
    model = build_encoder(args.size, max(args.lengths))
    notes = {}
    with tempfile.TemporaryDirectory() as workdir:
        workdir = Path(workdir)
        model.save_pretrained(workdir / "model")
        start = time.perf_counter()
        export_onnx(workdir / "model", workdir / "onnx")
        notes["export_s"] = time.perf_counter() - start
        notes["onnx_mb"] = (workdir / "onnx" / ONNX_FILE).stat().st_size / 2**20
        if "onnxruntime-int8" in args.runtimes:
            start = time.perf_counter()
            quantize_dynamic_int8(workdir / "onnx" / ONNX_FILE, workdir / "onnx" / "model.int8.onnx")
            notes["quantize_s"] = time.perf_counter() - start
            notes["int8_mb"] = (workdir / "onnx" / "model.int8.onnx").stat().st_size / 2**20
        run_fns = runners(model, workdir / "onnx", args.runtimes, args.threads)
        rows = []
        for length in args.lengths:
            batch = max(1, args.tokens // length)
            rng = np.random.default_rng(length)
            ids = rng.integers(1, model.config.vocab_size, (batch, length), dtype=np.int64)
            inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
            reference_states, reference_embeddings = run_fns["eager"](inputs) if "eager" in run_fns else (None, None)
            for runtime in args.runtimes:
                fn = run_fns[runtime]
                states, embeddings = fn(inputs)  # twice before timing: torch.compile compiles and may recompile
                fn(inputs)
                seconds = median_seconds(lambda: fn(inputs), torch.device("cpu"), args.warmup, args.repeats)
                if reference_states is None:
                    max_abs = min_cosine = mean_cosine = float("nan")
                else:
                    max_abs = float(np.abs(embeddings - reference_embeddings).max())
                    min_cosine = float(cosine_rows(embeddings, reference_embeddings).min())
                    mean_cosine = float(cosine_rows(states, reference_states).mean())
                rows.append(
                    Row(RUNTIME_NAMES[runtime], length, batch, seconds * 1e3, batch * length / seconds,
                        max_abs, min_cosine, mean_cosine)
                )
                print(format_row(rows[-1], rows), flush=True)
            if args.profile and "onnxruntime" in args.runtimes:
                notes.setdefault("profiles", {})[length] = operator_shares(
                    workdir / "onnx" / ONNX_FILE, inputs, args.threads
                )
                print(f"onnxruntime time by operator at L={length}: {notes['profiles'][length]}", flush=True)
    return rows, notes


def ratio_to_eager(row: Row, rows: list[Row]) -> float:
    for other in rows:
        if other.runtime == RUNTIME_NAMES["eager"] and other.length == row.length:
            return row.tokens_per_s / other.tokens_per_s
    return float("nan")


def format_row(row: Row, rows: list[Row]) -> str:
    return (
        f"| {row.runtime} | {row.length} | {row.batch} | {row.ms:.1f} | {row.tokens_per_s:,.0f} "
        f"| {ratio_to_eager(row, rows):.2f}x | {row.embedding_max_abs:.2e} | {row.embedding_min_cosine:.6f} "
        f"| {row.token_mean_cosine:.6f} |"
    )


def onnx_versions() -> str:
    import onnx
    import onnxruntime
    import onnxscript

    return f"onnx {onnx.__version__}, onnxscript {onnxscript.__version__}, onnxruntime {onnxruntime.__version__}"


def header(args, notes: dict) -> str:
    parameters = sum(p.numel() for p in build_encoder(args.size, max(args.lengths)).parameters())
    quantized = (
        f", int8 file {notes['int8_mb']:.0f} MB (quantised in {notes['quantize_s']:.0f} s)" if "int8_mb" in notes else ""
    )
    return (
        f"{measured_on(torch.device('cpu'))}, {onnx_versions()}; {os.cpu_count()} logical CPUs "
        f"({platform.processor() or platform.machine()}), {args.threads} threads for torch and ONNX Runtime alike.\n\n"
        f"Encoder: size {args.size}, {parameters / 1e6:.1f}M parameters with pooler, float32, random weights "
        f"(seed 0); inputs of {args.tokens} tokens per call (batch = tokens / L), no padding. ONNX export "
        f"{notes['export_s']:.0f} s, file {notes['onnx_mb']:.0f} MB{quantized}. Median of {args.repeats} calls "
        f"after {args.warmup} warm-up calls.\n"
        "Accuracy against torch eager float32: embedding = `pooler_output` (max |difference|, lowest cosine over "
        "the batch); token states = `last_hidden_state` (mean cosine over every token).\n\n"
        "| runtime | L | batch | ms | tokens/s | vs eager | embedding max abs | embedding min cosine "
        "| token-state mean cosine |\n|---|---|---|---|---|---|---|---|---|"
    )


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description="M2-BERT CPU inference: ONNX Runtime vs PyTorch")
    parser.add_argument("--size", choices=list(SIZES), default="80m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per call (batch = tokens / L)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="add ONNX Runtime's time by operator at each length")
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    if "eager" in args.runtimes:  # the accuracy reference, measured first
        args.runtimes = ["eager"] + [runtime for runtime in args.runtimes if runtime != "eager"]
    rows, notes = run(args)
    text = header(args, notes) + "\n" + "\n".join(format_row(row, rows) for row in rows) + "\n"
    if notes.get("profiles"):
        text += "\nONNX Runtime (float32) node time by operator, one profiled call:\n\n" + "".join(
            f"- L = {length}: {shares}\n" for length, shares in notes["profiles"].items()
        )
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return rows


if __name__ == "__main__":
    main()

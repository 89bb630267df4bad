"""Throughput of the M2-BERT encoder against Hugging Face BERT, in one run on one device.

Rows: M2-BERT-80M (the released configuration: 768 hidden, 12 layers, GLU block-diagonal MLP with 4 blocks,
filter order 128, no pooler) with this package's Triton kernels (CUDA only; `--m2-backends triton-1-launch` adds
the row whose long convolutions beyond L = 1024 run their forward as one launch) and on its pure-PyTorch path
(`torch-whole-batch` adds that path with `cpu_inference_slice_mib=0`, the batch in one piece), and
`transformers.BertModel` at bert-base size with `sdpa` and `eager` attention. Modes: inference (`no_grad`, `--infer-tokens` tokens per call) and training
step (forward + backward of `mean(h^2)`, `--train-tokens` tokens per call). The batch is tokens / L.

Prints tokens/s, ratios against BERT-sdpa and against the M2 pure-PyTorch path, and peak memory, and writes a Markdown table with the device,
versions and date. Numbers are reported, never asserted. `--alternate` times the rows of one length in turns (one
call of each, then the next round), so that a machine whose speed drifts (a shared CPU) shifts every row alike.

    python benchmarks/bench_encoder.py --lengths 512 1024 2048 4096 8192 16384 32768 --output benchmarks/results/encoder.md
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import measured_on, median_seconds, synchronize
from transformers import BertConfig, BertModel

import m2_hf


@dataclass
class Row:
    model: str
    length: int
    batch: int
    mode: str
    ms: float
    tokens_per_s: float
    peak_gb: float


M2_ROWS = {
    "triton": "M2-BERT-80M (Triton kernels)",
    "triton-1-launch": "M2-BERT-80M (Triton, one-launch radix forward)",
    "torch": "M2-BERT-80M (torch reference)",
    "torch-whole-batch": "M2-BERT-80M (torch reference, unsliced batch)",
}


@contextlib.contextmanager
def radix_forward_launches(backend: str):
    """For the "triton-1-launch" row, the radix long-conv forward as one launch per (row, channel)."""
    if backend != "triton-1-launch":
        yield
        return
    from m2_hf.ops.long_conv import PlanLimits, plan_limits

    with plan_limits(PlanLimits(one_launch_forward=True)):
        yield


def m2_bert_80m(length: int, row: str) -> m2_hf.M2Model:
    """The model of an `M2_ROWS` row: "torch-whole-batch" is the reference path with CPU batch slicing off."""
    backend = row.split("-")[0]
    unsliced = {"cpu_inference_slice_mib": 0} if row == "torch-whole-batch" else {}
    config = m2_hf.M2Config(
        max_position_embeddings=length, hidden_dropout_prob=0.0, mask_padding=False, kernel_backend=backend,
        **unsliced,
    )
    return m2_hf.M2Model(config, add_pooling_layer=False)


def bert_base(length: int, attention: str) -> BertModel:
    config = BertConfig(max_position_embeddings=length, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    config._attn_implementation = attention
    return BertModel(config, add_pooling_layer=False)


def timed_call(model, length, tokens, mode, device, dtype):
    """`(fn, batch)`: one inference call or training step of `model` on `tokens` random ids of length `length`."""
    batch = max(1, tokens // length)
    model = model.to(device).train(mode == "train")
    ids = torch.randint(0, 30000, (batch, length), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def infer():
        with torch.no_grad(), autocast:
            model(input_ids=ids)

    def train_step():
        with autocast:
            hidden = model(input_ids=ids).last_hidden_state
        hidden.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    return (infer if mode == "infer" else train_step), batch


def measure(name, model, length, tokens, mode, device, dtype, warmup, repeats) -> Row:
    fn, batch = timed_call(model, length, tokens, mode, device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(fn, device, warmup, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    model.cpu()
    return Row(name, length, batch, mode, seconds * 1e3, batch * length / seconds, peak)


def measure_alternating(candidates, length, tokens, mode, device, dtype, warmup, repeats) -> list[Row]:
    """Every candidate's median time with their calls alternating (A B C A B C ...), so that a machine whose speed
    drifts during the run slows each of them alike; peak memory is not measured."""
    calls = []
    for name, backend, build in candidates:
        torch.manual_seed(0)
        fn, batch = timed_call(build(), length, tokens, mode, device, dtype)
        calls.append((name, backend, fn, batch))
    times = {name: [] for name, *_ in calls}
    for index in range(warmup + repeats):
        for name, backend, fn, _ in calls:
            synchronize(device)
            start = time.perf_counter()
            with radix_forward_launches(backend):
                fn()
            synchronize(device)
            if index >= warmup:
                times[name].append(time.perf_counter() - start)
    rows = []
    for name, _, _, batch in calls:
        seconds = statistics.median(times[name])
        rows.append(Row(name, length, batch, mode, seconds * 1e3, batch * length / seconds, float("nan")))
    return rows


def run(
    lengths, modes, device, dtype, infer_tokens, train_tokens, warmup, repeats, skip_eager_above, backends,
    alternate=False,
) -> list[Row]:
    rows = []
    for length in lengths:
        candidates = [
            (M2_ROWS[backend], backend, lambda n=length, b=backend: m2_bert_80m(n, b))
            for backend in backends
        ]
        candidates.append(("BERT-base sdpa", None, lambda n=length: bert_base(n, "sdpa")))
        if length <= skip_eager_above:
            candidates.append(("BERT-base eager", None, lambda n=length: bert_base(n, "eager")))
        for mode in modes:
            tokens = infer_tokens if mode == "infer" else train_tokens
            if alternate:
                measured = measure_alternating(candidates, length, tokens, mode, device, dtype, warmup, repeats)
                rows.extend(measured)
                for row in measured:
                    print(format_row(row, rows), flush=True)
                continue
            for name, backend, build in candidates:
                torch.manual_seed(0)
                try:
                    with radix_forward_launches(backend):
                        rows.append(measure(name, build(), length, tokens, mode, device, dtype, warmup, repeats))
                except torch.OutOfMemoryError:
                    rows.append(Row(name, length, max(1, tokens // length), mode, float("nan"), float("nan"), float("nan")))
                print(format_row(rows[-1], rows), flush=True)
    return rows


def ratio_to(name: str, row: Row, rows: list[Row]) -> float:
    """`row`'s throughput over that of the row named `name` at the same length and mode (nan if absent)."""
    for other in rows:
        if other.model == name and (other.length, other.mode) == (row.length, row.mode):
            return row.tokens_per_s / other.tokens_per_s
    return float("nan")


def format_row(row: Row, rows: list[Row]) -> str:
    return (
        f"| {row.model} | {row.length} | {row.batch} | {row.mode} | {row.ms:.3f} | {row.tokens_per_s:,.0f} "
        f"| {ratio_to('BERT-base sdpa', row, rows):.2f}x | {ratio_to(M2_ROWS['torch'], row, rows):.2f}x "
        f"| {row.peak_gb:.2f} |"
    )


def header(device: torch.device, dtype: torch.dtype) -> str:
    return (
        f"{measured_on(device)}, {dtype} autocast.\n\n"
        "| model | L | batch | mode | ms | tokens/s | vs BERT-sdpa | vs M2 torch | peak GB |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description="M2-BERT vs BERT encoder throughput")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--modes", nargs="+", choices=["infer", "train"], default=["infer", "train"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--infer-tokens", type=int, default=65536)
    parser.add_argument("--train-tokens", type=int, default=32768)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--skip-eager-above", type=int, default=8192, help="longest L for eager attention")
    parser.add_argument(
        "--m2-backends", nargs="+", choices=list(M2_ROWS), help="M2 rows (default: triton and torch on CUDA, else torch)"
    )
    parser.add_argument(
        "--alternate", action="store_true", help="time the rows of each length in alternation (no peak memory)"
    )
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    backends = args.m2_backends or (["triton", "torch"] if device.type == "cuda" else ["torch"])
    print(header(device, dtype), flush=True)
    rows = run(
        args.lengths, args.modes, device, dtype, args.infer_tokens, args.train_tokens,
        args.warmup, args.repeats, args.skip_eager_above, backends, args.alternate,
    )
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        table = "\n".join(format_row(row, rows) for row in rows)
        args.output.write_text(f"{header(device, dtype)}\n{table}\n")
    return rows


if __name__ == "__main__":
    main()

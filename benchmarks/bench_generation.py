"""Generation speed of M2-GPT (M2ForCausalLM) against a same-size GPT-2, in one run on one device.

Two measurements, both with the models cast to `--dtype`:

- **decode**: latency of one new token after a prompt of L tokens, the mean over `--decode-steps` consecutive
  steps after two warm-up steps (batch `--decode-batch`). M2-GPT with its cache as `generate()` runs it (the
  online long convolution beyond `DIRECT_DECODE_MAX_LENGTH` tokens: amortised O(H log^2 t) per step), M2-GPT with
  the direct path forced (a dot product with the whole history, O(L * H)), M2-GPT without a cache (what
  `generate(use_cache=False)` does: a full forward over the L + 1 tokens; skipped above `--max-uncached-length`),
  and GPT-2 (sdpa) with its key/value cache. The `cache MB` column is the size of the cache after the steps.
- **generate**: total time of `generate()` (greedy, `--generate-tokens` new tokens) after a prompt of L, at the
  lengths of `--generate-lengths`, for M2-GPT and GPT-2.
- **prefill**: throughput of the prompt pass (`use_cache=True`, logits of the last position only) for M2-GPT and
  GPT-2 (sdpa) at `--prefill-tokens` tokens per call; the batch is tokens / L.

Models (`--size`): "gpt2-small" is GPT-2 small's shape (768 hidden, 12 layers, 50,257-token vocabulary; M2-GPT with
an intermediate size of 3072, a GLU block-diagonal MLP with 4 blocks and filter order 128); "tiny" is a few-layer
model for CPU checks. Prints and writes a Markdown table with the device, versions and date; numbers are reported,
never asserted.

    python benchmarks/bench_generation.py --device cuda --dtype bfloat16 --output benchmarks/results/generation-gpu.md
"""

from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import measured_on, median_seconds
from transformers import GPT2Config, GPT2LMHeadModel

import m2_hf
from m2_hf.modeling import cache_m2
from m2_hf.modeling.transformers_compat import output_cache

SIZES = {
    "gpt2-small": dict(hidden=768, layers=12, heads=12, vocab=50257, filter_order=128),
    "tiny": dict(hidden=64, layers=2, heads=4, vocab=512, filter_order=16),
    "cpu-small": dict(hidden=256, layers=4, heads=4, vocab=1000, filter_order=64),
}
DECODE_ROWS = ("M2-GPT, cache", "M2-GPT, cache (direct path)", "M2-GPT, no cache", "GPT-2 sdpa, KV cache")
PREFILL_ROWS = ("M2-GPT", "GPT-2 sdpa")


@dataclass
class Row:
    measurement: str
    model: str
    length: int
    batch: int
    ms: float
    tokens_per_s: float
    cache_mb: float = float("nan")
    new_tokens: int = 0  # generate rows: tokens generated after the prompt of `length`


def m2_gpt(size: dict, max_length: int) -> m2_hf.M2ForCausalLM:
    config = m2_hf.M2Config(
        vocab_size=size["vocab"],
        hidden_size=size["hidden"],
        num_hidden_layers=size["layers"],
        intermediate_size=4 * size["hidden"],
        filter_order=size["filter_order"],
        max_position_embeddings=max_length,
        bidirectional=False,
        norm_position="pre",
        use_position_embeddings=False,
        type_vocab_size=0,
        hidden_dropout_prob=0.0,
    )
    return m2_hf.M2ForCausalLM(config)


def gpt2(size: dict, max_length: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=size["vocab"],
        n_embd=size["hidden"],
        n_layer=size["layers"],
        n_head=size["heads"],
        n_positions=max_length,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


@contextlib.contextmanager
def direct_decoding(enabled: bool):
    """M2 decoding steps read the whole history directly at every length (the path before online convolution)."""
    saved = cache_m2.DIRECT_DECODE_MAX_LENGTH
    if enabled:
        cache_m2.DIRECT_DECODE_MAX_LENGTH = 1 << 62
    try:
        yield
    finally:
        cache_m2.DIRECT_DECODE_MAX_LENGTH = saved


def cache_megabytes(cache) -> float:
    """Bytes of every tensor an M2 or transformers cache holds, in MB."""
    seen, total = set(), 0

    def visit(value):
        nonlocal total
        if isinstance(value, torch.Tensor):
            if value.data_ptr() not in seen:
                seen.add(value.data_ptr())
                total += value.numel() * value.element_size()
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
            for item in vars(value).values():
                visit(item)

    for layer in cache.layers:
        visit(layer)
    return total / 2**20


@torch.no_grad()
def decode_step_seconds(model, length: int, batch: int, steps: int, use_cache: bool, device) -> tuple[float, float]:
    """Mean time of one generated token over `steps` consecutive steps after a prompt of `length` tokens, and the
    cache's size in MB after them (nan without a cache)."""
    vocab = model.config.vocab_size
    prompt = torch.randint(1, vocab, (batch, length), device=device)
    token = torch.randint(1, vocab, (batch, 1), device=device)
    if not use_cache:
        sequence = torch.cat([prompt, token], dim=1)
        return median_seconds(lambda: model(sequence, use_cache=False, logits_to_keep=1), device, 1, steps), float("nan")
    cache = output_cache(model(prompt, use_cache=True, logits_to_keep=1))
    for _ in range(2):
        model(token, cache=cache, use_cache=True)
    seconds = median_seconds(lambda: [model(token, cache=cache, use_cache=True) for _ in range(steps)], device, 0, 1)
    return seconds / steps, cache_megabytes(cache)


@torch.no_grad()
def generate_seconds(model, length: int, new_tokens: int, device) -> float:
    prompt = torch.randint(1, model.config.vocab_size, (1, length), device=device)
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    return median_seconds(lambda: model.generate(prompt, **kwargs), device, 0, 1)


@torch.no_grad()
def prefill_seconds(model, length: int, batch: int, device, warmup: int, repeats: int) -> float:
    ids = torch.randint(1, model.config.vocab_size, (batch, length), device=device)
    return median_seconds(lambda: model(ids, use_cache=True, logits_to_keep=1), device, warmup, repeats)


def guarded(measure, row: Row) -> Row:
    """Fill `row` from `measure()` (seconds per call), or with nan when the device runs out of memory."""
    try:
        seconds = measure()
    except torch.OutOfMemoryError:
        seconds = float("nan")
    if isinstance(seconds, tuple):
        seconds, row.cache_mb = seconds
    row.ms = seconds * 1e3
    tokens = {"decode": row.batch, "generate": row.batch * row.new_tokens}.get(row.measurement, row.batch * row.length)
    row.tokens_per_s = tokens / seconds
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return row


def run(args, device: torch.device, dtype: torch.dtype) -> tuple[list[Row], dict[str, int]]:
    size = SIZES[args.size]
    max_length = max(args.lengths) + max(args.decode_steps, args.generate_tokens) + 4
    torch.manual_seed(0)
    models = {
        "M2-GPT": m2_gpt(size, max_length).to(device=device, dtype=dtype).eval(),
        "GPT-2": gpt2(size, max_length).to(device=device, dtype=dtype).eval(),
    }
    parameters = {name: model.num_parameters() for name, model in models.items()}
    rows = []
    for length in args.lengths:
        batch = args.decode_batch
        decode = [
            (DECODE_ROWS[0], models["M2-GPT"], True, False),
            (DECODE_ROWS[1], models["M2-GPT"], True, True),
            (DECODE_ROWS[2], models["M2-GPT"], False, False),
            (DECODE_ROWS[3], models["GPT-2"], True, False),
        ]
        for name, model, use_cache, direct in decode:
            if not use_cache and length > args.max_uncached_length:
                continue
            row = Row("decode", name, length, batch, 0.0, 0.0)

            def measure(m=model, c=use_cache, d=direct):
                with direct_decoding(d):
                    return decode_step_seconds(m, length, batch, args.decode_steps, c, device)

            rows.append(guarded(measure, row))
            print(format_row(rows[-1], rows), flush=True)
        if length in args.generate_lengths and args.generate_tokens:
            for name, model in zip(PREFILL_ROWS, (models["M2-GPT"], models["GPT-2"])):
                row = Row("generate", name, length, 1, 0.0, 0.0, new_tokens=args.generate_tokens)
                rows.append(guarded(lambda m=model: generate_seconds(m, length, args.generate_tokens, device), row))
                print(format_row(rows[-1], rows), flush=True)
        if length < args.min_prefill_length:
            continue
        batch = max(1, args.prefill_tokens // length)
        for name, model in zip(PREFILL_ROWS, (models["M2-GPT"], models["GPT-2"])):
            row = Row("prefill", name, length, batch, 0.0, 0.0)
            rows.append(guarded(lambda m=model: prefill_seconds(m, length, batch, device, args.warmup, args.repeats), row))
            print(format_row(rows[-1], rows), flush=True)
    return rows, parameters


# The row each M2 row is compared with (same measurement and length), by measurement and model.
COMPARED_WITH = {
    ("decode", DECODE_ROWS[0]): DECODE_ROWS[3],
    ("decode", DECODE_ROWS[1]): DECODE_ROWS[0],
    ("decode", DECODE_ROWS[2]): DECODE_ROWS[0],
    ("prefill", PREFILL_ROWS[0]): PREFILL_ROWS[1],
    ("generate", PREFILL_ROWS[0]): PREFILL_ROWS[1],
}


def speedup(row: Row, rows: list[Row]) -> str:
    """The row's throughput over that of the row it is compared with (COMPARED_WITH), in the same run."""
    against = COMPARED_WITH.get((row.measurement, row.model))
    for other in rows:
        if against and (other.measurement, other.model, other.length) == (row.measurement, against, row.length):
            return f"{row.tokens_per_s / other.tokens_per_s:.2f}x vs {against}"
    return ""


def format_row(row: Row, rows: list[Row]) -> str:
    new = f" (+{row.new_tokens})" if row.new_tokens else ""
    return (
        f"| {row.measurement} | {row.model} | {row.length}{new} | {row.batch} | {row.ms:.3f} | {row.tokens_per_s:,.0f} "
        f"| {row.cache_mb:.1f} | {speedup(row, rows)} |"
    )


def header(device: torch.device, dtype: torch.dtype, args, parameters: dict[str, int]) -> str:
    sizes = ", ".join(f"{model} {count / 1e6:.1f}M parameters" for model, count in parameters.items())
    return (
        f"{measured_on(device)}, {dtype}; size {args.size} ({sizes}).\n"
        "decode: ms per generated token after a prompt of L tokens, mean over consecutive steps (tokens/s = batch / "
        "ms); prefill: one prompt pass, tokens/s = batch * L / time; generate: the whole generate() call after a "
        "prompt of L, tokens/s = new tokens / time. cache MB: the cache after the decode steps.\n\n"
        "| measurement | model | L | batch | ms | tokens/s | cache MB | ratio |\n"
        "|---|---|---|---|---|---|---|---|"
    )


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description="M2-GPT vs GPT-2 decode latency and prefill throughput")
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 1024, 2048, 4096, 8192])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--size", choices=list(SIZES), default="gpt2-small")
    parser.add_argument("--decode-batch", type=int, default=1)
    parser.add_argument("--decode-steps", type=int, default=16, help="timed single-token steps per length")
    parser.add_argument("--prefill-tokens", type=int, default=16384, help="tokens per prefill call")
    parser.add_argument("--min-prefill-length", type=int, default=1024, help="shortest L with a prefill row")
    parser.add_argument("--max-uncached-length", type=int, default=2048, help="longest L with a no-cache decode row")
    parser.add_argument("--generate-tokens", type=int, default=0, help="new tokens of the generate rows (0: none)")
    parser.add_argument("--generate-lengths", type=int, nargs="*", default=[], help="prompt lengths with generate rows")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows, parameters = run(args, device, dtype)
    text = header(device, dtype, args, parameters) + "\n" + "\n".join(format_row(row, rows) for row in rows) + "\n"
    print(text, flush=True)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return rows


if __name__ == "__main__":
    main()

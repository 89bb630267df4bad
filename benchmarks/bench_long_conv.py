"""Gated long convolution: the fused Triton kernels against the torch.fft reference, in one run on one device.

Each call computes `post_gate * (conv(u * pre_gate, k) + D * (u * pre_gate))` for `u` and both gates
`[B, H, L]` in `--dtype` (bf16 by default) with `B = --tokens / L`, and a bidirectional filter spectrum. Modes:
forward (`no_grad`) and forward + backward of every input (`train`). The Triton rows need CUDA (the CPU
interpreter is far too slow to time); on CPU only the reference is timed, which keeps the script checkable
without a GPU. The `path` column says how the "triton" row ran: one fused program per row (`L <= 1024`), three
launches with a radix step (`radix R`, `L <= 32768`), or the torch.fft fallback. `--single-program-up-to N` adds a
"triton-single" row that runs one program per row up to FFT size N (e.g. 8192), to time that choice against the
radix step at the same lengths; `--one-launch-forward` adds a "triton-1-launch" row where the radix forward runs as
one launch per (row, channel) (`PlanLimits.one_launch_forward`). In forward mode the "triton-cached-spectrum" row
passes the spectrum already in the kernels' layout, as a model in inference does (each filter caches it), and the
"spectrum-layout" row times that conversion alone (`monarch_spectrum`, also on CPU): the work per call and filter
the cache saves. Numbers are reported, never asserted.

    python benchmarks/bench_long_conv.py --output benchmarks/results/long-conv-$(date +%F).md
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import measured_on, median_seconds

from m2_hf.ops.long_conv import (
    PlanLimits,
    fft_plan,
    fft_size_for,
    fused_path_supported,
    gated_long_conv,
    long_conv_kernel,
    long_conv_spectrum,
    monarch_spectrum,
    plan_limits,
)


@dataclass
class Row:
    backend: str
    path: str
    length: int
    batch: int
    mode: str
    ms: float
    peak_gb: float | None


def make_inputs(length: int, batch: int, channels: int, device: torch.device, dtype: torch.dtype):
    """`(u, spectrum, skip, pre_gate, post_gate)`; every tensor requires grad."""
    forward_filter = torch.randn(channels, length, device=device) / length**0.5
    reverse_filter = torch.randn(channels, length, device=device) / length**0.5
    spectrum = long_conv_spectrum(long_conv_kernel(forward_filter, reverse_filter), length)
    skip = torch.randn(channels, device=device)
    u, pre_gate, post_gate = (torch.randn(batch, channels, length, device=device, dtype=dtype) for _ in range(3))
    return tuple(t.requires_grad_() for t in (u, spectrum, skip, pre_gate, post_gate))


def measure(backend, length, batch, channels, mode, device, dtype, warmup, repeats) -> Row:
    inputs = make_inputs(length, batch, channels, device, dtype)
    u, spectrum, skip, pre_gate, post_gate = inputs
    grad_out = torch.randn_like(u)
    kernel_backend = "torch" if backend == "torch" else "triton"
    if backend == "triton-cached-spectrum":  # as in inference: the filter keeps its spectrum in the kernels' layout
        with torch.no_grad():
            spectrum = monarch_spectrum(spectrum, length)

    def forward():
        with torch.no_grad():
            gated_long_conv(u, spectrum, skip, pre_gate, post_gate, backend=kernel_backend)

    def forward_backward():
        out = gated_long_conv(u, spectrum, skip, pre_gate, post_gate, backend=kernel_backend)
        torch.autograd.grad(out, inputs, grad_out)

    path = "torch.fft"
    if kernel_backend == "triton" and fused_path_supported(u, spectrum):
        radix = fft_plan(length).radix
        path = "fused" if radix == 1 else f"radix {radix}"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = 1e3 * median_seconds(forward if mode == "fwd" else forward_backward, device, warmup, repeats)
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return Row(backend, path, length, batch, mode, ms, peak_gb)


def measure_spectrum_layout(length, batch, channels, mode, device, dtype, warmup, repeats) -> Row:
    """The time of `monarch_spectrum` alone: the filter work per call and filter that inference saves by caching
    the spectrum in the kernels' layout (`M2ImplicitFilter.kernel_spectrum`)."""
    _, spectrum, *_ = make_inputs(length, 1, channels, device, dtype)

    def convert():
        with torch.no_grad():
            monarch_spectrum(spectrum, length)

    ms = 1e3 * median_seconds(convert, device, warmup, repeats)
    return Row("spectrum-layout", "monarch_spectrum", length, batch, mode, ms, None)


def measure_variant(name, limits: PlanLimits, *args) -> Row:
    """`measure` of the "triton" path planned with `limits`, as the row `name`."""
    with plan_limits(limits):
        return measure(name, *args)


def header(device: torch.device, dtype: torch.dtype, channels: int, tokens: int) -> str:
    return (
        f"{measured_on(device)}; gated long conv, {dtype} inputs, H = {channels}, {tokens} tokens per call.\n\n"
        "| backend | path | L | batch | mode | ms | vs torch | peak GB |\n"
        "|---|---|---|---|---|---|---|---|"
    )


def format_row(row: Row, rows: list[Row]) -> str:
    baseline = next((r for r in rows if r.backend == "torch" and (r.length, r.mode) == (row.length, row.mode)), None)
    speedup = f"{baseline.ms / row.ms:.2f}x" if baseline is not None else "-"
    peak = f"{row.peak_gb:.2f}" if row.peak_gb is not None else "-"
    return (
        f"| {row.backend} | {row.path} | {row.length} | {row.batch} | {row.mode} | {row.ms:.3f} | {speedup} | {peak} |"
    )


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description="Fused Triton gated long convolution vs torch.fft")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384, 32768])
    parser.add_argument("--modes", nargs="+", choices=["fwd", "train"], default=["fwd", "train"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--tokens", type=int, default=65536, help="batch * L per call")
    parser.add_argument("--channels", type=int, default=768)
    parser.add_argument("--backends", nargs="+", choices=["triton", "torch"], help="default: both on CUDA, torch on CPU")
    parser.add_argument("--single-program-up-to", type=int, metavar="N",
                        help="add triton-single rows: one program per row up to FFT size N")
    parser.add_argument("--one-launch-forward", action="store_true",
                        help="add triton-1-launch rows: the radix forward as one launch per (row, channel)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    backends = args.backends or (["triton", "torch"] if device.type == "cuda" else ["torch"])
    if "triton" in backends and device.type != "cuda":
        parser.error("the triton rows need a CUDA device; on CPU time the reference alone (--backends torch)")
    print(header(device, dtype, args.channels, args.tokens), flush=True)
    rows = []
    for length in args.lengths:
        batch = max(1, args.tokens // length)
        for mode in args.modes:
            shape = (length, batch, args.channels, mode, device, dtype, args.warmup, args.repeats)
            for backend in backends:
                rows.append(measure(backend, *shape))
                print(format_row(rows[-1], rows), flush=True)
            single = args.single_program_up_to
            single_applies = single and fft_size_for(length) <= single and fft_plan(length).radix > 1
            radix_plan = fft_plan(length) is not None and fft_plan(length).radix > 1
            variants = []
            if "triton" in backends and single_applies:
                variants.append(("triton-single", PlanLimits(max_fused_fft_size=single)))
            if "triton" in backends and args.one_launch_forward and radix_plan:
                variants.append(("triton-1-launch", PlanLimits(one_launch_forward=True)))
            for variant in variants:
                rows.append(measure_variant(*variant, *shape))
                print(format_row(rows[-1], rows), flush=True)
            if mode == "fwd" and fft_plan(length) is not None:
                if "triton" in backends:
                    rows.append(measure("triton-cached-spectrum", *shape))
                    print(format_row(rows[-1], rows), flush=True)
                rows.append(measure_spectrum_layout(*shape))
                print(format_row(rows[-1], rows), flush=True)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(header(device, dtype, args.channels, args.tokens) + "\n" + "\n".join(
            format_row(row, rows) for row in rows
        ) + "\n")
    return rows


if __name__ == "__main__":
    main()

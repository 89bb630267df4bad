"""Each M2 kernel against its floor, at the shapes of one M2-BERT-80M layer, in one run on one device.

For every op the Triton kernel and the pure-PyTorch reference are timed, forward (`no_grad`) and forward +
backward of every input (`train`), next to the op's floor: the least time any implementation can take,
`max(flops / peak_flops, bytes / peak_bandwidth)`.

- bytes: the op's inputs read once and outputs written once (bf16 activations; parameters are negligible).
- flops: 2 x the multiply-adds of the op's matmuls. For the long convolution these are the dot products of its
  DFT plan (`m2_hf.ops.long_conv.fft_plan`, bf16 operands for bf16 inputs); the work of an FFT algorithm is not a
  property of the op, so that row states the floor of this algorithm.
- peaks: 700 TFLOP/s bf16 (achievable dense rate of an H100/H200), and 3.35 TB/s (H100 SXM) or 4.3 TB/s (H200)
  memory bandwidth, or `--peak-tflops` / `--peak-tbps`.

Shapes at `--tokens` tokens (64K), H = 768: the MLP's GLU block-diagonal projection 768 -> 2 x 3072 and its output
projection 3072 -> 768 (4 blocks), the mixer front on the `[B, L, 3H]` in-projection, the gated long convolution
with a post gate (the mixer's main convolution) at each of `--lengths`, and the residual add + LayerNorm. The
dense in- and out-projections of the mixer are cuBLAS matmuls and not timed here.

`--floors-only` prints the floors without timing anything (no GPU needed). Numbers are reported, never asserted.

    python benchmarks/bench_kernels.py --output benchmarks/results/kernels-$(date +%F).md
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import measured_on, median_seconds

from m2_hf.ops import add_layernorm, blockdiag_glu, blockdiag_matmul, gated_long_conv, mixer_front
from m2_hf.ops.long_conv import fft_plan, long_conv_kernel, long_conv_spectrum

HIDDEN = 768
INTERMEDIATE = 3072
NBLOCKS = 4
BF16_TFLOPS = 700.0
BANDWIDTH_TBPS = {"H100": 3.35, "H200": 4.3}
ACTIVATION_BYTES = 2


@dataclass
class Case:
    """One op at one shape: `make(device, dtype)` returns `(inputs, call)`, `call(backend, *inputs)` runs it."""

    op: str
    shape: str
    make: Callable
    fwd_flops: float
    fwd_bytes: float
    bwd_flops: float
    bwd_bytes: float


@dataclass
class Row:
    op: str
    shape: str
    mode: str
    backend: str
    ms: float
    floor_ms: float


def _leaves(*tensors):
    return tuple(t.requires_grad_() for t in tensors)


def blockdiag_cases(tokens: int) -> list[Case]:
    glu_in, glu_out = HIDDEN, 2 * INTERMEDIATE
    glu_macs = tokens * glu_in * glu_out / NBLOCKS
    glu_io = tokens * (glu_in + INTERMEDIATE) * ACTIVATION_BYTES

    def make_glu(device, dtype):
        x = torch.randn(tokens, glu_in, device=device, dtype=dtype)
        weight = torch.randn(NBLOCKS, glu_out // NBLOCKS, glu_in // NBLOCKS, device=device) / (glu_in / NBLOCKS) ** 0.5
        return _leaves(x, weight), lambda backend, x, w: blockdiag_glu(x, w, backend=backend)

    out_macs = tokens * INTERMEDIATE * HIDDEN / NBLOCKS
    out_io = tokens * (INTERMEDIATE + HIDDEN) * ACTIVATION_BYTES

    def make_out(device, dtype):
        x = torch.randn(tokens, INTERMEDIATE, device=device, dtype=dtype)
        weight = torch.randn(NBLOCKS, HIDDEN // NBLOCKS, INTERMEDIATE // NBLOCKS, device=device)
        bias = torch.randn(HIDDEN, device=device)
        return _leaves(x, weight / (INTERMEDIATE / NBLOCKS) ** 0.5, bias), (
            lambda backend, x, w, b: blockdiag_matmul(x, w, b, backend=backend)
        )

    # backward: the input and weight gradients, each as many multiply-adds as the forward; it reads the output
    # gradient and the input and writes the input gradient
    return [
        Case("blockdiag_glu", f"{glu_in} -> 2x{INTERMEDIATE}, {NBLOCKS} blocks", make_glu,
             2 * glu_macs, glu_io, 4 * glu_macs, glu_io + tokens * glu_in * ACTIVATION_BYTES),
        Case("blockdiag_matmul", f"{INTERMEDIATE} -> {HIDDEN}, {NBLOCKS} blocks", make_out,
             2 * out_macs, out_io, 4 * out_macs, out_io + tokens * INTERMEDIATE * ACTIVATION_BYTES),
    ]


def mixer_front_case(tokens: int, length: int) -> Case:
    def make(device, dtype):
        projected = torch.randn(tokens // length, length, 3 * HIDDEN, device=device, dtype=dtype)
        weight = torch.randn(3 * HIDDEN, 1, 3, device=device) / 3**0.5
        bias = torch.randn(3 * HIDDEN, device=device)
        return _leaves(projected, weight, bias), lambda backend, p, w, b: mixer_front(p, w, b, backend=backend)

    # forward reads [T, 3H] and writes two [T, H]; backward reads those two gradients and the input, writes [T, 3H]
    unit = tokens * HIDDEN * ACTIVATION_BYTES
    return Case("mixer_front", f"L={length}, [B, L, 3x{HIDDEN}]", make, 0.0, 5 * unit, 0.0, 8 * unit)


def long_conv_dot_flops(length: int, backward: bool) -> float:
    """FLOPs of the dot products the fused kernels run for one row of length `length` (post gate only)."""
    plan = fft_plan(length)
    if plan.dense:
        # per row: [T] @ [T, N] twice (re, im) per transform
        transform = 2 * 2 * plan.time_cols * plan.inner
        dft = inverse = transform
    else:
        rows = plan.outer
        dft = 2 * 2 * rows * plan.time_rows * plan.inner + 4 * 2 * rows * plan.inner * plan.inner
        inverse = 4 * 2 * rows * plan.inner * plan.inner + 2 * 2 * plan.time_rows * rows * plan.inner
        dft, inverse = dft * plan.radix, inverse * plan.radix
    if plan.radix > 1:
        radix_step = 4 * 2 * plan.radix_rows**2 * plan.stored_rows * plan.inner
        dft, inverse = dft + radix_step, inverse + radix_step
    # forward: one DFT, one inverse; backward: two DFTs, two inverses (the correlation and the post-gate term)
    return 2 * (dft + inverse) if backward else dft + inverse


def long_conv_case(tokens: int, length: int) -> Case:
    batch = max(1, tokens // length)

    def make(device, dtype):
        forward_filter = torch.randn(HIDDEN, length, device=device) / length**0.5
        reverse_filter = torch.randn(HIDDEN, length, device=device) / length**0.5
        spectrum = long_conv_spectrum(long_conv_kernel(forward_filter, reverse_filter), length)
        skip = torch.randn(HIDDEN, device=device)
        u, post_gate = (torch.randn(batch, HIDDEN, length, device=device, dtype=dtype) for _ in range(2))
        return _leaves(u, spectrum, skip, post_gate), (
            lambda backend, u, k, d, g: gated_long_conv(u, k, d, post_gate=g, backend=backend)
        )

    rows = batch * HIDDEN
    unit = batch * HIDDEN * length * ACTIVATION_BYTES
    # forward reads u and the gate, writes the output; backward reads those and the output gradient, writes two
    return Case("gated_long_conv", f"L={length}, radix {fft_plan(length).radix}", make,
                rows * long_conv_dot_flops(length, False), 3 * unit,
                rows * long_conv_dot_flops(length, True), 5 * unit)


def layernorm_case(tokens: int) -> Case:
    def make(device, dtype):
        x, residual = (torch.randn(tokens, HIDDEN, device=device, dtype=dtype) for _ in range(2))
        weight, bias = torch.randn(HIDDEN, device=device), torch.randn(HIDDEN, device=device)
        return _leaves(x, residual, weight, bias), (
            lambda backend, x, r, w, b: add_layernorm(x, r, w, b, 1e-12, backend=backend)
        )

    unit = tokens * HIDDEN * ACTIVATION_BYTES
    # forward reads two, writes one; backward reads the output gradient and both inputs, writes one gradient
    return Case("add_layernorm", f"[{tokens}, {HIDDEN}]", make, 0.0, 3 * unit, 0.0, 4 * unit)


def cases(tokens: int, lengths: list[int]) -> list[Case]:
    return [
        *blockdiag_cases(tokens),
        mixer_front_case(tokens, min(512, tokens)),
        *(long_conv_case(tokens, length) for length in lengths),
        layernorm_case(tokens),
    ]


def floor_ms(case: Case, mode: str, tflops: float, tbps: float) -> float:
    flops = case.fwd_flops + (case.bwd_flops if mode == "train" else 0.0)
    data = case.fwd_bytes + (case.bwd_bytes if mode == "train" else 0.0)
    return 1e3 * max(flops / (tflops * 1e12), data / (tbps * 1e12))


def measure(case: Case, mode: str, backend: str, device, dtype, warmup: int, repeats: int) -> float:
    inputs, call = case.make(device, dtype)
    grad_outs = None

    def forward():
        with torch.no_grad():
            call(backend, *inputs)

    def forward_backward():
        nonlocal grad_outs
        outs = call(backend, *inputs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        if grad_outs is None:
            grad_outs = [torch.randn_like(out) for out in outs]
        torch.autograd.grad(outs, inputs, grad_outs)

    return 1e3 * median_seconds(forward if mode == "fwd" else forward_backward, device, warmup, repeats)


def header(device: torch.device, tflops: float, tbps: float, timed: bool) -> str:
    source = measured_on(device) if timed else "Floors only (computed, nothing timed)"
    return (
        f"{source}; bf16 inputs; floors at {tflops:g} TFLOP/s and {tbps:g} TB/s.\n\n"
        "| op | shape | mode | backend | ms | floor ms | floor / ms |\n"
        "|---|---|---|---|---|---|---|"
    )


def format_row(row: Row) -> str:
    ms = "-" if row.ms != row.ms else f"{row.ms:.4g}"
    share = "-" if row.ms != row.ms else f"{row.floor_ms / row.ms:.1%}"
    return f"| {row.op} | {row.shape} | {row.mode} | {row.backend} | {ms} | {row.floor_ms:.4g} | {share} |"


def default_bandwidth(device: torch.device) -> float:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((tbps for gpu, tbps in BANDWIDTH_TBPS.items() if gpu in name), BANDWIDTH_TBPS["H100"])


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description="M2 kernels against their floors")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 4096, 32768], help="long-conv lengths")
    parser.add_argument("--modes", nargs="+", choices=["fwd", "train"], default=["fwd", "train"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--backends", nargs="+", choices=["triton", "torch"], help="default: both on CUDA, torch on CPU"
    )
    parser.add_argument("--peak-tflops", type=float, default=BF16_TFLOPS)
    parser.add_argument("--peak-tbps", type=float, help="default: by GPU name, H100 3.35, H200 4.3")
    parser.add_argument("--floors-only", action="store_true", help="print the floors, time nothing")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    tbps = args.peak_tbps or default_bandwidth(device)
    backends = args.backends or (["triton", "torch"] if device.type == "cuda" else ["torch"])
    if "triton" in backends and device.type != "cuda" and not args.floors_only:
        parser.error("the triton rows need a CUDA device; on CPU time the reference alone (--backends torch)")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(header(device, args.peak_tflops, tbps, not args.floors_only), flush=True)
    rows = []
    for case in cases(args.tokens, args.lengths):
        for mode in args.modes:
            floor = floor_ms(case, mode, args.peak_tflops, tbps)
            for backend in ["-"] if args.floors_only else backends:
                ms = float("nan") if args.floors_only else measure(
                    case, mode, backend, device, dtype, args.warmup, args.repeats
                )
                rows.append(Row(case.op, case.shape, mode, backend, ms, floor))
                print(format_row(rows[-1]), flush=True)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        table = "\n".join(format_row(row) for row in rows)
        args.output.write_text(f"{header(device, args.peak_tflops, tbps, not args.floors_only)}\n{table}\n")
    return rows


if __name__ == "__main__":
    main()

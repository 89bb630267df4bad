"""Registers, spills and shared memory of the long-convolution kernels, compiled for a GPU without one.

Compiles each kernel of the fused long convolution for `--arch` (sm_90a: H100/H200) with the launch settings the
package uses, bf16 inputs, and reads the register and spill counts from `ptxas -v` (the ptxas that Triton's
NVIDIA backend ships). Where a plan spills or runs out of shared memory, the runtime cannot be good, which is how
`PlanLimits.max_fused_fft_size` and `radix_inner_fft_size` (`m2_hf/ops/long_conv/plan.py`) were chosen. `--max-fused-fft-size` compiles the
single-program kernels for larger plans too.

    python benchmarks/kernel_resources.py --lengths 512 1024 2048 4096 32768
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"

import triton  # noqa: E402
import triton.backends.nvidia  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from m2_hf.ops.long_conv import PlanLimits, fft_plan  # noqa: E402
from m2_hf.ops.long_conv import kernels as single_program  # noqa: E402
from m2_hf.ops.long_conv import radix_kernels  # noqa: E402

BF16_POINTERS = {
    "u_ptr", "pre_gate_ptr", "post_gate_ptr", "out_ptr", "grad_out_ptr", "grad_u_ptr", "grad_pre_gate_ptr",
    "grad_post_gate_ptr", "input_freq_ptr", "grad_freq_ptr", "conv_freq_ptr", "corr_freq_ptr", "spectra_ptr",
}


@dataclass
class Resources:
    kernel: str
    length: int
    registers: int
    spill_bytes: int
    shared_bytes: int


def ptxas() -> Path:
    """The newest ptxas shipped with Triton's NVIDIA backend."""
    directory = Path(triton.backends.nvidia.__file__).parent / "bin"
    candidates = sorted(directory.glob("ptxas*"), key=lambda path: path.name, reverse=True)
    if not candidates:
        raise FileNotFoundError(f"no ptxas in {directory}")
    return candidates[0]


def compile_kernel(kernel, constexprs: dict, num_warps: int, num_stages: int, arch: int) -> tuple[int, int, int]:
    """`(registers, spill store bytes, shared memory bytes)` of `kernel` compiled for `sm_<arch>a`."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*bf16" if name in BF16_POINTERS else "*fp32"
        else:
            signature[name] = "i32"
    constants = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    compiled = triton.compile(
        ASTSource(kernel, signature, constants),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "num_stages": num_stages},
    )
    with tempfile.TemporaryDirectory() as directory:
        source = Path(directory) / "kernel.ptx"
        source.write_text(compiled.asm["ptx"])
        report = subprocess.run(
            [str(ptxas()), "-v", "--gpu-name", f"sm_{arch}a", str(source), "-o", str(Path(directory) / "kernel.o")],
            capture_output=True, text=True, check=True,
        ).stderr
    registers = int(re.search(r"Used (\d+) registers", report).group(1))
    spills = int(re.search(r"(\d+) bytes spill stores", report).group(1))
    return registers, spills, compiled.metadata.shared


def kernels_for(length: int, limits: PlanLimits | None = None):
    """`(name, kernel, constexprs, num_warps, num_stages)` of every kernel the plan for `length` launches."""
    plan = fft_plan(length, limits)
    gates = dict(HAS_PRE_GATE=True, HAS_POST_GATE=True, PRECISION="bf16")
    if plan.radix == 1:
        meta = dict(gates, OUTER=plan.outer, INNER=plan.inner, BLOCK_ROWS=plan.block_rows,
                    TIME_ROWS=plan.time_rows, TIME_COLS=plan.time_cols)
        warps = single_program._num_warps(plan)
        yield "forward", single_program._gated_long_conv_fwd_kernel, meta, warps, 3
        yield "backward", single_program._gated_long_conv_bwd_kernel, meta, warps, 3
        return
    radix = radix_kernels
    meta = dict(gates, RADIX=plan.radix, OUTER=plan.outer, INNER=plan.inner, TIME_ROWS=plan.time_rows)
    yield "subsequence DFT", radix._subsequence_dft_kernel, dict(meta, WITH_GRAD=False), 8, 1
    yield "subsequence DFT (backward)", radix._subsequence_dft_kernel, dict(meta, WITH_GRAD=True), 8, 1
    yield "output", radix._subsequence_output_fwd_kernel, meta, 8, 1
    yield "output (backward)", radix._subsequence_output_bwd_kernel, meta, 8, 1
    step = dict(HAS_POST_GATE=True, RADIX=plan.radix, RADIX_PAD=plan.radix_rows, OUTER=plan.outer, INNER=plan.inner,
                BLOCK=radix.RADIX_BLOCK, PRECISION="bf16")
    yield "radix step", radix._radix_kernel, dict(step, BACKWARD=False), 8, 1
    yield "radix step (backward)", radix._radix_kernel, dict(step, BACKWARD=True), 8, 1
    one_launch = dict(meta, RADIX_PAD=plan.radix_rows, BLOCK=radix.RADIX_BLOCK)
    yield "one-launch forward", radix._gated_long_conv_radix_fwd_kernel, one_launch, 8, 1


def main(argv=None) -> list[Resources]:
    parser = argparse.ArgumentParser(description="Registers, spills and shared memory of the long-conv kernels")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 32768])
    parser.add_argument("--arch", type=int, default=90)
    parser.add_argument("--max-fused-fft-size", type=int, help="single-program plans up to this FFT size")
    args = parser.parse_args(argv)
    limits = PlanLimits(max_fused_fft_size=args.max_fused_fft_size) if args.max_fused_fft_size else None
    print(f"sm_{args.arch}a, triton {triton.__version__}, bf16 inputs\n")
    print("| L | kernel | registers | spill bytes | shared KB |\n|---|---|---|---|---|")
    rows = []
    for length in args.lengths:
        for name, kernel, constexprs, warps, stages in kernels_for(length, limits):
            registers, spills, shared = compile_kernel(kernel, constexprs, warps, stages, args.arch)
            rows.append(Resources(name, length, registers, spills, shared))
            print(f"| {length} | {name} | {registers} | {spills} | {shared / 1024:.0f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()

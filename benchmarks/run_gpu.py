"""The project's GPU measurements in stages that fit a short GPU window (15 minutes in all, 10 per command).

Stages, in the order of what we most need to know, each with its estimated time on an H100/H200:

1. correctness in bf16 at real sizes: the kernel tests, the long convolution at L = 512, 4K and 32K, and the whole
   M2-BERT-80M / M2-GPT on the kernels against the reference;
2. the encoder headline: M2-BERT-80M inference tokens/s at L = 512, 2K, 8K and 32K (Triton and reference) against
   BERT-base with sdpa; training step tokens/s and peak memory at 512 and 8K;
3. generation (M2-GPT vs GPT-2 small: decode latency after prompts of 128 and 4K, prefill at 4K) and vision
   (M2-ViT-b vs ViT-b/16 at 224, inference and training);
4. the kernel table (each kernel's share of its floor) and the long-convolution variants.

Every step writes its Markdown table and its raw JSON (rows, arguments, wall time, and the time of the first calls,
which hold compilation and autotuning) to the output folder as soon as it finishes, and every finished stage
rewrites its section of `README.md` there, so a run cut off at the time limit still returns every finished stage.
Autotuning is capped to the first `--autotune-configs` configs of each kernel (`M2_HF_AUTOTUNE_CONFIGS`).

    python benchmarks/run_gpu.py --stage 1                  # one stage, results in benchmarks/results
    python benchmarks/run_gpu.py --budget 480               # stages in order while their estimates fit
    python benchmarks/run_gpu.py --smoke /tmp/smoke         # every stage at toy sizes on CPU

The estimates are the expected wall times on an H100 with the capped autotuning, machine start excluded; each
stage's JSON records its real time, from which they are corrected.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results"
DEFAULT_AUTOTUNE_CONFIGS = 2
SMOKE_CPU = ("--device", "cpu", "--dtype", "float32", "--warmup", "0", "--repeats", "1")


@dataclasses.dataclass(frozen=True)
class Tests:
    """A pytest run: `gpu` arguments on the GPU, `smoke` arguments (interpreter tests) on CPU."""

    name: str
    gpu: tuple[str, ...]
    smoke: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Bench:
    """One call of `benchmarks/<script>.py`'s `main(argv)`, which returns its rows."""

    name: str
    script: str
    gpu: tuple[str, ...]
    smoke: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Stage:
    number: int
    name: str
    title: str
    estimate_s: int
    steps: tuple[Tests | Bench, ...]


STAGES = (
    Stage(1, "correctness", "Correctness in bf16 at real sizes", 210, (
        Tests(
            "kernel-tests",
            ("tests/ops/blockdiag", "tests/ops/short_conv", "tests/ops/layernorm", "-m", "gpu"),
            ("tests/ops/layernorm/test_layernorm.py",),
        ),
        Tests(
            "long-conv-tests",
            ("tests/ops/long_conv/test_long_conv.py", "-m", "gpu", "-k", "512 or 4096 or 32768"),
            ("tests/ops/long_conv/test_long_conv.py", "-k", "bf16_inputs and 100"),
        ),
        Tests(
            "model-tests",
            ("tests/modeling/test_models_on_kernels.py::test_real_size_model_in_bf16_on_the_kernels_matches_the_reference",),
            ("tests/modeling/test_models_on_kernels.py::test_masked_lm_forward_and_backward_match_the_reference",),
        ),
    )),
    Stage(2, "encoder", "Encoder headline: M2-BERT-80M vs BERT-base (sdpa)", 240, (
        Bench(
            "encoder-infer", "bench_encoder",
            ("--modes", "infer", "--lengths", "512", "2048", "8192", "32768", "--m2-backends", "triton", "torch",
             "--skip-eager-above", "0", "--warmup", "1", "--repeats", "5"),
            ("--modes", "infer", "--lengths", "16", "--infer-tokens", "32", *SMOKE_CPU),
        ),
        Bench(
            "encoder-train", "bench_encoder",
            ("--modes", "train", "--lengths", "512", "8192", "--m2-backends", "triton", "--skip-eager-above", "0",
             "--warmup", "1", "--repeats", "5"),
            ("--modes", "train", "--lengths", "16", "--train-tokens", "16", *SMOKE_CPU),
        ),
    )),
    Stage(3, "generation-vision", "Generation (M2-GPT vs GPT-2) and vision (M2-ViT-b vs ViT-b/16)", 200, (
        Bench(
            "generation", "bench_generation",
            ("--dtype", "bfloat16", "--lengths", "128", "4096", "--min-prefill-length", "4096", "--decode-steps", "32",
             "--generate-tokens", "256", "--generate-lengths", "4096", "--repeats", "3"),
            ("--size", "tiny", "--lengths", "16", "32", "--decode-steps", "2", "--prefill-tokens", "64",
             "--min-prefill-length", "32", *SMOKE_CPU),
        ),
        Bench(
            "vision", "bench_vision",
            ("--image-sizes", "224", "--batch", "256", "--warmup", "1", "--repeats", "5"),
            ("--image-sizes", "32", "--batch", "2", "--m2-backends", "torch", *SMOKE_CPU),
        ),
    )),
    Stage(4, "kernels", "Each kernel against its floor, and the long-convolution variants", 300, (
        Bench(
            "kernels", "bench_kernels",
            ("--lengths", "512", "4096", "32768", "--warmup", "2", "--repeats", "5"),
            ("--tokens", "64", "--lengths", "16", "2048", "--device", "cpu", "--warmup", "0", "--repeats", "1"),
        ),
        Bench(
            "long-conv", "bench_long_conv",
            ("--lengths", "1024", "2048", "4096", "32768", "--single-program-up-to", "8192", "--one-launch-forward",
             "--warmup", "2", "--repeats", "5"),
            ("--lengths", "16", "--tokens", "64", "--channels", "8", *SMOKE_CPU),
        ),
    )),
)


def stages_within(stages, budget_s: float | None, elapsed_s: float = 0.0) -> list[Stage]:
    """The leading stages whose estimates fit in what is left of `budget_s`, stopping at the first that does not."""
    chosen, used = [], elapsed_s
    for stage in stages:
        if budget_s is not None and used + stage.estimate_s > budget_s:
            break
        chosen.append(stage)
        used += stage.estimate_s
    return chosen


def provenance(smoke: bool) -> dict:
    import torch
    import timing

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() and not smoke else "none (CPU smoke run)"
    return {"date": datetime.date.today().isoformat(), "gpu": gpu, **timing.versions()}


def run_tests(step: Tests, smoke: bool, output: Path, stem: str) -> dict:
    report = output / f"{stem}.xml"
    env = dict(os.environ, TRITON_INTERPRET="1" if smoke else "0")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings"]
    command.append(f"--junitxml={report}")
    result = subprocess.run(
        [*command, *(step.smoke if smoke else step.gpu)], cwd=REPO, env=env, capture_output=True, text=True
    )
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if report.exists():
        suite = ElementTree.parse(report).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {key: int(suite.get(key, 0)) for key in counts}
    tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    (output / f"{stem}.md").write_text(
        f"pytest {' '.join(step.smoke if smoke else step.gpu)}: {passed} passed, {counts['failures']} failed, "
        f"{counts['errors']} errors, {counts['skipped']} skipped (exit {result.returncode})\n\n```\n{tail}\n```\n"
    )
    return {"ok": result.returncode == 0 and counts["tests"] > 0, "returncode": result.returncode, **counts}


def run_bench(step: Bench, smoke: bool, output: Path, stem: str) -> dict:
    import timing

    module = importlib.import_module(step.script)
    argv = [*(step.smoke if smoke else step.gpu), "--output", str(output / f"{stem}.md")]
    timing.FIRST_CALL_SECONDS.clear()
    rows = module.main(argv)
    return {
        "ok": bool(rows),
        "argv": argv,
        "rows": [dataclasses.asdict(row) for row in rows],
        "first_call_s": round(sum(timing.FIRST_CALL_SECONDS), 3),
    }


def run_stage(stage: Stage, smoke: bool, output: Path, day: str) -> dict:
    """Run every step of `stage`, writing each step's files as it finishes; a failing step does not stop the others."""
    import torch

    results, start = [], time.perf_counter()
    for step in stage.steps:
        stem = f"{step.name}-{day}"
        step_start = time.perf_counter()
        try:
            runner = run_tests if isinstance(step, Tests) else run_bench
            result = runner(step, smoke, output, stem)
        except Exception:
            result = {"ok": False, "error": traceback.format_exc()[-3000:]}
            (output / f"{stem}.md").write_text(f"{step.name} failed:\n\n```\n{result['error']}\n```\n")
        result = {"name": step.name, "wall_s": round(time.perf_counter() - step_start, 3), **result}
        (output / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
        results.append(result)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    summary = {
        "stage": stage.number,
        "name": stage.name,
        "estimate_s": stage.estimate_s,
        "wall_s": round(time.perf_counter() - start, 3),
        "ok": all(result["ok"] for result in results),
        "steps": [{key: result[key] for key in ("name", "ok", "wall_s")} for result in results],
        **provenance(smoke),
        "date": day,  # the day in the file names, also for a run that crosses midnight
    }
    (output / f"stage-{stage.number}-{stage.name}-{day}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


# ---------------------------------------------------------------- the results page


def _section(number: int) -> tuple[str, str]:
    return f"<!-- stage {number} -->", f"<!-- /stage {number} -->"


def _rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s / 1e6:.2f} M" if tokens_per_s >= 1e6 else f"{tokens_per_s:,.0f}"


def headline_table(encoder_rows: list[dict]) -> str:
    """M2-BERT and BERT inference tokens/s by length, with each row's ratio to BERT-base sdpa at that length."""
    lengths = sorted({row["length"] for row in encoder_rows})
    models = list(dict.fromkeys(row["model"] for row in encoder_rows))
    speed = {(row["model"], row["length"]): row["tokens_per_s"] for row in encoder_rows}
    lines = ["| model | " + " | ".join(f"L = {length}" for length in lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    for model in models:
        cells = []
        for length in lengths:
            value, bert = speed.get((model, length)), speed.get(("BERT-base sdpa", length))
            ratio = f" ({value / bert:.2f}x)" if value and bert else ""
            cells.append(f"{_rate(value)}{ratio}" if value else "—")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stage_section(stage: Stage, summary: dict, output: Path, day: str) -> str:
    start, end = _section(stage.number)
    parts = [
        start,
        f"## Stage {stage.number}: {stage.title}",
        "",
        f"{summary['date']}, GPU {summary['gpu']}, torch {summary['torch']}, triton {summary['triton']}, "
        f"transformers {summary['transformers']}, m2-hf {summary['m2_hf']}. Wall time {summary['wall_s']:.0f} s "
        f"(estimate {stage.estimate_s} s); {'every step ok' if summary['ok'] else 'A STEP FAILED'}.",
    ]
    for step in stage.steps:
        stem = f"{step.name}-{day}"
        result = json.loads((output / f"{stem}.json").read_text())
        first_call = ""
        if "first_call_s" in result:
            first_call = f", first calls (compilation, autotuning) {result['first_call_s']:.1f} s"
        parts += ["", f"### {step.name} ({result['wall_s']:.0f} s{first_call}; `{stem}.json`)", ""]
        parts.append((output / f"{stem}.md").read_text().strip())
    parts.append(end)
    return "\n".join(parts)


HEADLINE = ("<!-- headline -->", "<!-- /headline -->")
PAGE_INTRO = (
    "# Benchmark results\n\nWritten by `benchmarks/run_gpu.py`: each finished stage replaces its own section. Ratios "
    "compare rows of one run only. No numbers of the original M2 code have been measured here yet. Other files here "
    "(such as `generation-cpu.md`) come from the benchmark scripts run by hand.\n"
)


def _between(text: str, start: str, end: str) -> str | None:
    if start not in text or end not in text:
        return None
    return text[text.index(start) : text.index(end) + len(end)]


def update_results_page(output: Path, stage: Stage, summary: dict, day: str) -> None:
    """Rewrite `stage`'s section of `output/README.md` (and the headline after stage 2), keeping the others."""
    page = output / "README.md"
    old = page.read_text() if page.exists() else ""
    headline = _between(old, *HEADLINE) or "\n".join(HEADLINE)
    if stage.number == 2:
        rows = json.loads((output / f"encoder-infer-{day}.json").read_text()).get("rows", [])
        headline = (
            f"{HEADLINE[0]}\n## Headline: encoder inference tokens/s (stage 2, {summary['date']}, {summary['gpu']})"
            f"\n\n{headline_table(rows)}\n{HEADLINE[1]}"
        )
    sections = {number: _between(old, *_section(number)) for number in (s.number for s in STAGES)}
    sections[stage.number] = stage_section(stage, summary, output, day)
    body = [section for _, section in sorted(sections.items()) if section]
    page.write_text("\n\n".join([PAGE_INTRO.rstrip("\n"), headline, *body]) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--stage", type=int, choices=[s.number for s in STAGES], help="run this stage only")
    choice.add_argument("--budget", type=float, help="run stages in order while their estimates fit in SECONDS")
    parser.add_argument("--smoke", type=Path, metavar="DIR", help="every stage at toy sizes on CPU, results in DIR")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results folder (GPU runs)")
    parser.add_argument("--autotune-configs", type=int, default=DEFAULT_AUTOTUNE_CONFIGS,
                        help="configs each kernel autotunes over (0: all)")
    args = parser.parse_args(argv)
    smoke = args.smoke is not None
    output = args.smoke if smoke else args.output
    output.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("M2_HF_AUTOTUNE_CONFIGS", str(args.autotune_configs))
    os.environ["TRITON_INTERPRET"] = "1" if smoke else "0"
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: run the stages on a GPU machine, or --smoke DIR on CPU")
    stages = [s for s in STAGES if s.number == args.stage] if args.stage else stages_within(STAGES, args.budget)
    skipped = [s.number for s in STAGES if s not in stages and args.stage is None]
    if skipped:
        print(f"stages {skipped} do not fit in the budget of {args.budget:.0f} s and are not run", flush=True)
    day = datetime.date.today().isoformat()
    failed = False
    for stage in stages:
        print(f"== stage {stage.number}: {stage.title} (estimate {stage.estimate_s} s)", flush=True)
        summary = run_stage(stage, smoke, output, day)
        update_results_page(output, stage, summary, day)
        failed |= not summary["ok"]
        print(f"== stage {stage.number} done in {summary['wall_s']:.0f} s, ok: {summary['ok']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

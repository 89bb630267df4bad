"""The tour's harness: how long each step trains, the thresholds its results must meet, the summary table and the
exit status. The steps themselves (`tour.py`) read as the tutorial; this module only checks and reports them."""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from m2_hf.hub import publishing_problems, upload_files

# The checks: a careful float32 re-implementation matches the original to a relative error below 1e-6; the trained
# models must do clearly better than chance.
ORIGINAL_TOLERANCE = 1e-5
EMBEDDING_TOLERANCE = 1e-4
MIN_REVIEW_ACCURACY = 0.75
# Recall@5 of the held-out rewordings (about 95 of them: chance 5%) after training, and its gain over the untrained
# encoder.
EMBEDDING_RECALL_AT = 5
MIN_EMBEDDING_RECALL = 0.5
MIN_EMBEDDING_RECALL_GAIN = 0.3
MIN_DIGITS_ACCURACY = 0.5


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long each training step runs, and whether the tour checks that the models learned."""

    mlm_steps: int
    classifier_epochs: float
    classifier_train_examples: int | None  # None: the whole training set
    embedding_epochs: float
    gpt_steps: int
    vit_epochs: int
    check_learning: bool = True


FULL = Schedule(
    mlm_steps=80,
    classifier_epochs=20,
    classifier_train_examples=None,
    embedding_epochs=8,
    gpt_steps=160,
    vit_epochs=15,
)
# A smoke test of every step: too short to learn, so only conversion, pipelines and folders are checked.
QUICK = Schedule(
    mlm_steps=4,
    classifier_epochs=1,
    classifier_train_examples=32,
    embedding_epochs=1,
    gpt_steps=2,
    vit_epochs=1,
    check_learning=False,
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What every step of a run needs: where to read and write, how long to train, the seed."""

    fixture_dir: Path
    output_dir: Path
    scratch_dir: Path  # Trainer's working folder, deleted at the end
    schedule: Schedule
    seed: int


@dataclasses.dataclass
class StepResult:
    """One row of the summary: what a step built and measured, and what is wrong with it.

    `problems` fail the tour; `learning_problems` (a loss that did not fall, accuracy near chance) fail it unless
    the schedule does not check learning. `run_step` fills in the step's name and time.
    """

    model: str
    result: str = ""
    folder: Path | None = None
    problems: list[str] = dataclasses.field(default_factory=list)
    learning_problems: list[str] = dataclasses.field(default_factory=list)
    step: str = ""
    seconds: float = 0.0

    def failures(self, check_learning: bool) -> list[str]:
        """The problems that fail the tour."""
        return self.problems + (self.learning_problems if check_learning else [])

    def check(self, check_learning: bool) -> str:
        """The summary's verdict: FAILED, unchecked (it did not learn, but learning is not checked) or ok."""
        if self.failures(check_learning):
            return "FAILED"
        return "unchecked" if self.learning_problems else "ok"


def check_publishable(folder: Path, result: StepResult) -> None:
    """Print what a Hub upload of `folder` would send, and record the folder and its publishing problems in `result`."""
    files = upload_files(folder)
    megabytes = sum((folder / name).stat().st_size for name in files) / 1e6
    print(f"{folder}: {len(files)} files to upload, {megabytes:.1f} MB: {', '.join(files)}")
    result.folder = folder
    result.problems += [f"{folder.name}: {problem}" for problem in publishing_problems(folder)]


def run_step(name: str, heading: str, step: Callable[[Settings], StepResult], settings: Settings) -> StepResult:
    """Run one step under a heading and time it; an exception fails the step, and the tour goes on."""
    print(f"\n=== {name}: {heading} ===", flush=True)
    start = time.perf_counter()
    try:
        result = step(settings)
    except Exception as error:  # noqa: BLE001 (reported in the summary and the exit status)
        traceback.print_exc()
        result = StepResult("-", "error", problems=[f"{type(error).__name__}: {error}"])
    result.step = name
    result.seconds = time.perf_counter() - start
    return result


def summary_table(results: list[StepResult], check_learning: bool) -> str:
    """The results as a Markdown table: step, model, result, check, seconds and saved folder."""
    header = ["step", "model", "result", "check", "seconds", "saved folder"]
    rows = [
        [
            result.step,
            result.model,
            result.result,
            result.check(check_learning),
            f"{result.seconds:.0f}",
            str(result.folder) if result.folder else "-",
        ]
        for result in results
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [header, ["-" * width for width in widths], *rows]
    return "\n".join("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |" for line in lines)


def report(results: list[StepResult], check_learning: bool) -> int:
    """Print the summary table and every failure; return the exit status, 0 if every step passed its checks."""
    print(summary_table(results, check_learning))
    failures = [(result.step, failure) for result in results for failure in result.failures(check_learning)]
    for step, failure in failures:
        print(f"FAILED {step}: {failure}")
    return 1 if failures else 0

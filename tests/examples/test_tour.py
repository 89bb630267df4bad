"""The README's tour (`examples/tour.py`) runs end to end in its quick form and leaves folders ready to publish."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch

from m2_hf.hub import publishing_problems

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
STEPS = [
    "1 convert",
    "2 MLM pretraining",
    "3 classification",
    "4 sentence embeddings",
    "5 causal LM",
    "6 image classification",
]
HUB_READY_FOLDERS = [
    "m2-bert-tiny-mlm",
    "m2-bert-tiny-reviews",
    "m2-bert-tiny-reviews-embeddings",
    "m2-gpt-tiny",
    "m2-vit-tiny-digits",
]


@pytest.fixture
def tour(monkeypatch):
    """The tour module, imported as its script sees its sibling examples; torch's thread count restored after."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    threads = torch.get_num_threads()
    yield importlib.import_module("tour")
    torch.set_num_threads(threads)


def test_quick_tour_runs_every_step(tour, fixture_dir, tmp_path, capsys):
    status = tour.main(["--quick", "--output-dir", str(tmp_path), "--fixtures", str(fixture_dir.parent)])
    output = capsys.readouterr().out
    assert status == 0, output[-4000:]

    summary = output[output.index("=== summary") :]
    rows = [line.split("|") for line in summary.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row[1].strip() for row in rows] == STEPS
    assert all(row[4].strip() in ("ok", "unchecked") for row in rows), summary
    assert rows[0][4].strip() == "ok"  # the converted fixture reproduces the original outputs, --quick or not
    for name in HUB_READY_FOLDERS:
        assert publishing_problems(tmp_path / name) == [], name
    for converted in ("mlm", "encoder"):
        assert (tmp_path / "converted" / converted / "model.safetensors").is_file()

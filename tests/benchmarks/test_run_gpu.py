"""`benchmarks/run_gpu.sh`: every stage runs at toy sizes on CPU (`--smoke`), so the GPU script cannot rot between GPU
windows; stage selection by budget; the autotuning cap."""

import json
import os
import subprocess
import sys

import pytest
from helpers import BENCHMARKS, load_benchmark

from m2_hf.ops.backend import AUTOTUNE_ENV_VAR, autotune_configs


def run_script(*args, timeout=300):
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])  # this test's python
    return subprocess.run(
        ["bash", str(BENCHMARKS / "run_gpu.sh"), *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_smoke_run_writes_every_stage_and_the_results_page(tmp_path, monkeypatch):
    result = run_script("--smoke", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_gpu = load_benchmark("run_gpu", monkeypatch)
    for stage in run_gpu.STAGES:
        [summary_file] = tmp_path.glob(f"stage-{stage.number}-{stage.name}-*.json")
        summary = json.loads(summary_file.read_text())
        assert summary["ok"] and summary["gpu"].startswith("none") and summary["transformers"]
        assert [step["name"] for step in summary["steps"]] == [step.name for step in stage.steps]
        for step in stage.steps:
            record = json.loads((tmp_path / f"{step.name}-{summary['date']}.json").read_text())
            assert record["ok"] and record["wall_s"] > 0
            if isinstance(step, run_gpu.Bench):
                assert record["rows"] and record["first_call_s"] >= 0
            else:
                assert record["tests"] > 0 and record["failures"] == record["errors"] == 0
            assert (tmp_path / f"{step.name}-{summary['date']}.md").read_text().strip()
    page = (tmp_path / "README.md").read_text()
    assert "## Headline: encoder inference tokens/s" in page and "| BERT-base sdpa |" in page
    assert [page.count(f"<!-- stage {n} -->") for n in (1, 2, 3, 4)] == [1, 1, 1, 1]

    # Running one stage again replaces its section and keeps the others.
    (tmp_path / "README.md").write_text(page.replace("## Stage 4:", "## Stage 4 (old):"))
    again = run_script("--smoke", str(tmp_path), "--stage", "3")
    assert again.returncode == 0, again.stderr[-3000:]
    page = (tmp_path / "README.md").read_text()
    assert [page.count(f"<!-- stage {n} -->") for n in (1, 2, 3, 4)] == [1, 1, 1, 1]
    assert "## Stage 4 (old):" in page and "## Headline" in page


def test_a_budget_runs_the_leading_stages_that_fit(monkeypatch):
    run_gpu = load_benchmark("run_gpu", monkeypatch)
    estimates = [stage.estimate_s for stage in run_gpu.STAGES]
    numbers = lambda budget: [stage.number for stage in run_gpu.stages_within(run_gpu.STAGES, budget)]  # noqa: E731
    assert numbers(None) == [1, 2, 3, 4]
    assert numbers(estimates[0] + estimates[1]) == [1, 2]
    assert numbers(estimates[0] + estimates[1] - 1) == [1]
    assert numbers(estimates[0] - 1) == []
    assert all(0 < estimate <= 240 for estimate in estimates[:3])  # each of the first stages fits in ~4 minutes


def test_a_gpu_run_without_cuda_is_refused(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = run_script("--stage", "1", "--output", str(tmp_path))
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert not list(tmp_path.glob("*.json"))


def test_autotuning_can_be_capped(monkeypatch):
    configs = ["best", "second", "third"]
    monkeypatch.delenv(AUTOTUNE_ENV_VAR, raising=False)
    assert autotune_configs(configs) == configs
    monkeypatch.setenv(AUTOTUNE_ENV_VAR, "2")
    assert autotune_configs(configs) == ["best", "second"]
    monkeypatch.setenv(AUTOTUNE_ENV_VAR, "0")
    assert autotune_configs(configs) == configs
    monkeypatch.setenv(AUTOTUNE_ENV_VAR, "few")
    with pytest.raises(ValueError, match=AUTOTUNE_ENV_VAR):
        autotune_configs(configs)

"""The GLUE fine-tuning example reads every GLUE file layout and fine-tunes end to end (tiny, CPU)."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_example():
    spec = importlib.util.spec_from_file_location("run_glue", ROOT / "examples" / "run_glue.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


glue = load_example()


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")


def test_reads_headerless_cola_quoted_mrpc_and_scored_stsb(tmp_path):
    write_tsv(tmp_path / "cola.tsv", [["gj04", "1", "", "the cat sat ."], ["gj04", "0", "*", "cat the sat ."]])
    cola = glue.read_split(tmp_path / "cola.tsv", glue.TASKS["cola"])
    assert cola == {"text_a": ["the cat sat .", "cat the sat ."], "label": [1, 0]}

    header = ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write_tsv(tmp_path / "mrpc.tsv", [header, ["1", "7", "8", 'he said "yes', "a reply"], ["0", "9", "10", "x", "y"]])
    mrpc = glue.read_split(tmp_path / "mrpc.tsv", glue.TASKS["mrpc"])
    assert mrpc == {"text_a": ['he said "yes', "x"], "text_b": ["a reply", "y"], "label": [1, 0]}

    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2", "score"]
    write_tsv(tmp_path / "stsb.tsv", [header, ["0", "g", "f", "y", "0", "s", "s", "a man", "a person", "3.8"]])
    assert glue.read_split(tmp_path / "stsb.tsv", glue.TASKS["stsb"])["label"] == [3.8]


def test_mnli_labels_map_to_ids_and_unknown_labels_are_skipped(tmp_path):
    header = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2", "label1",
              "gold_label"]
    rows = [header]
    for index, label in enumerate(["neutral", "contradiction", "-", "entailment"]):
        rows.append([str(index), "", "", "", "", "", "", "", f"p{index}", f"h{index}", label, label])
    write_tsv(tmp_path / "train.tsv", rows)
    columns = glue.read_split(tmp_path / "train.tsv", glue.TASKS["mnli"])
    assert columns["label"] == [1, 2, 0] and columns["text_a"] == ["p0", "p1", "p3"]


def test_missing_columns_and_files_are_named(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["text", "label"], ["a", "1"]])
    with pytest.raises(ValueError, match="sentence"):
        glue.read_split(tmp_path / "train.tsv", glue.TASKS["sst2"])
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        glue.read_split(tmp_path / "dev.tsv", glue.TASKS["sst2"])


def test_local_metrics_follow_their_definitions():
    references = np.array([0, 1, 1, 0, 1])
    assert glue.glue_metric("f1", references, references) == {"accuracy": 1.0, "f1": 1.0}
    flipped = 1 - references
    assert glue.glue_metric("matthews_correlation", flipped, references)["matthews_correlation"] == pytest.approx(-1)
    scores = glue.glue_metric("pearson", 2 * references + 1.0, references.astype(float))
    assert scores["pearson"] == pytest.approx(1) and scores["spearmanr"] == pytest.approx(1)
    half = glue.glue_metric("accuracy", np.array([0, 1, 0, 1, 0]), references)
    assert half == {"accuracy": pytest.approx(2 / 5)}


def test_fine_tunes_on_the_bundled_review_set(tmp_path, monkeypatch):
    from m2_hf.optimization import OriginalRecipeAdamW, original_optimizer_cls_and_kwargs

    optimizers = []

    class RecordingFactory(OriginalRecipeAdamW):
        def __call__(self, model, **kwargs):
            optimizers.append(super().__call__(model, **kwargs))
            return optimizers[-1]

    def recording_cls_and_kwargs(args, **options):
        return RecordingFactory, original_optimizer_cls_and_kwargs(args, **options)[1]

    monkeypatch.setattr(glue, "original_optimizer_cls_and_kwargs", recording_cls_and_kwargs)
    results = glue.main(
        ["--task", "sst2", "--data-dir", str(ROOT / "examples" / "data" / "reviews"), "--tiny", "--epochs", "1",
         "--max-train-examples", "64", "--batch-size", "16", "--output-dir", str(tmp_path)]
    )
    assert set(results) == {"dev.tsv"} and 0.0 <= results["dev.tsv"]["accuracy"] <= 1.0
    # The Trainer trained with the original recipe's parameter groups.
    (optimizer,) = optimizers
    assert [group["name"] for group in optimizer.param_groups] == ["base", "filter", "filter_features"]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["train_examples"] == 64 and summary["dev"] == results
    assert (tmp_path / "model" / "model.safetensors").is_file() and (tmp_path / "model" / "tokenizer.json").is_file()


def test_regression_task_with_two_dev_files_is_evaluated_on_each(tmp_path, monkeypatch):
    monkeypatch.setitem(glue.TASKS, "stsb", glue.GlueTask(("sentence1", "sentence2"), "score", None,
                                                          dev_files=("dev_a.tsv", "dev_b.tsv"), metric="pearson"))
    rows = [["sentence1", "sentence2", "score"]] + [[f"a {i}", f"b {i % 3}", str(i % 5)] for i in range(24)]
    for name in ("train.tsv", "dev_a.tsv", "dev_b.tsv"):
        write_tsv(tmp_path / "data" / name, rows)
    results = glue.main(
        ["--task", "stsb", "--data-dir", str(tmp_path / "data"), "--tiny", "--epochs", "1", "--batch-size", "8",
         "--output-dir", str(tmp_path / "out")]
    )
    assert set(results) == {"dev_a.tsv", "dev_b.tsv"}
    assert all(set(metrics) >= {"pearson", "spearmanr", "loss"} for metrics in results.values())

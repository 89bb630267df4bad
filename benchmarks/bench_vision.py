"""Throughput of M2-ViT-b against Hugging Face ViT-base/16, in one run on one device.

Rows, for each image size S (patch 16, so (S/16)^2 patches plus a [CLS] token):

- **M2-ViT-b**: `M2ForImageClassification` with ViT-base's width and depth (768 hidden, 12 pre-norm layers, patch
  16, [CLS] pooling, 1000 classes), a GLU block-diagonal MLP with 4 blocks and `intermediate_size` 1536 (so the
  GLU's gate and value together are 3072 wide, ViT-base's MLP width), filter order 128. That is 47.0M parameters at
  224x224, against about 45M reported for the paper's M2-ViT-b, whose exact shape is not published.
  `--m2-backends` picks the kernels: `auto` (Triton on CUDA) and/or `torch` (the pure-PyTorch reference).
- **ViT-b/16 sdpa**: `transformers.ViTForImageClassification` at ViT-base size (86.6M parameters at 224x224) with
  `sdpa` attention.

Modes: inference (`no_grad`, eval mode, `--batch` images per call) and training step (forward, cross-entropy on
random labels, backward; no optimizer step; `--train-batch` images per call). Both run under autocast in `--dtype`
(bf16 by default on CUDA). Prints images/s, the ratio against ViT-sdpa and peak memory, and writes a Markdown table
with the device, versions and date. Numbers are reported, never asserted.

    python benchmarks/bench_vision.py --image-sizes 224 384 512 --output benchmarks/results/vision.md
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import measured_on, median_seconds
from transformers import ViTConfig, ViTForImageClassification

import m2_hf

PATCH_SIZE = 16
NUM_CLASSES = 1000
VIT_BASELINE = "ViT-b/16 sdpa"


@dataclass
class Row:
    model: str
    image_size: int
    batch: int
    mode: str
    parameters: int
    ms: float
    images_per_s: float
    peak_gb: float


def m2_vit_b(image_size: int, backend: str = "auto") -> m2_hf.M2ForImageClassification:
    config = m2_hf.M2Config(
        image_size=image_size,
        patch_size=PATCH_SIZE,
        num_channels=3,
        hidden_size=768,
        num_hidden_layers=12,
        intermediate_size=1536,
        max_position_embeddings=(image_size // PATCH_SIZE) ** 2 + 1,
        norm_position="pre",
        pooling="first_token",
        type_vocab_size=0,
        hidden_dropout_prob=0.0,
        layer_norm_eps=1e-6,
        num_labels=NUM_CLASSES,
        kernel_backend=backend,
    )
    return m2_hf.M2ForImageClassification(config)


def vit_b16(image_size: int, attention: str = "sdpa") -> ViTForImageClassification:
    config = ViTConfig(
        image_size=image_size,
        patch_size=PATCH_SIZE,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=NUM_CLASSES,
    )
    config._attn_implementation = attention
    return ViTForImageClassification(config)


def measure(name, model, image_size, batch, mode, device, dtype, warmup, repeats) -> Row:
    parameters = sum(p.numel() for p in model.parameters())
    model = model.to(device).train(mode == "train")
    pixels = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def infer():
        with torch.no_grad(), autocast:
            model(pixel_values=pixels)

    def train_step():
        with autocast:
            loss = model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(infer if mode == "infer" else train_step, device, warmup, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    model.cpu()
    return Row(name, image_size, batch, mode, parameters, seconds * 1e3, batch / seconds, peak)


def run(image_sizes, modes, batches, backends, device, dtype, warmup, repeats) -> list[Row]:
    rows = []
    for image_size in image_sizes:
        candidates = [(VIT_BASELINE, lambda s=image_size: vit_b16(s, "sdpa"))]
        candidates += [(f"M2-ViT-b ({b})", lambda s=image_size, b=b: m2_vit_b(s, b)) for b in backends]
        for mode in modes:
            for name, build in candidates:
                torch.manual_seed(0)
                model = build()
                try:
                    row = measure(name, model, image_size, batches[mode], mode, device, dtype, warmup, repeats)
                except torch.OutOfMemoryError:
                    parameters = sum(p.numel() for p in model.parameters())
                    nan = float("nan")
                    row = Row(name, image_size, batches[mode], mode, parameters, nan, nan, nan)
                del model
                rows.append(row)
                print(format_row(row, rows), flush=True)
    return rows


def baseline(row: Row, rows: list[Row]) -> Row | None:
    for other in rows:
        if other.model == VIT_BASELINE and (other.image_size, other.mode) == (row.image_size, row.mode):
            return other
    return None


def format_row(row: Row, rows: list[Row]) -> str:
    base = baseline(row, rows)
    ratio = row.images_per_s / base.images_per_s if base is not None else float("nan")
    return (
        f"| {row.model} | {row.image_size} | {row.parameters / 1e6:.1f}M | {row.batch} | {row.mode} | {row.ms:.2f} "
        f"| {row.images_per_s:,.1f} | {ratio:.2f}x | {row.peak_gb:.2f} |"
    )


def header(device: torch.device, dtype: torch.dtype) -> str:
    autocast = "no autocast" if dtype == torch.float32 else f"{dtype} autocast"
    return (
        f"{measured_on(device)}, {autocast}. "
        "M2-ViT-b: 768 hidden, 12 layers, GLU block-diagonal MLP (4 blocks, intermediate 1536), patch 16. "
        "ViT-b/16: transformers' ViT-base, sdpa attention. Training step = forward, cross-entropy, backward.\n\n"
        "| model | image | params | batch | mode | ms | images/s | vs ViT-sdpa | peak GB |\n"
        "|---|---|---|---|---|---|---|---|---|"
    )


def main(argv=None) -> list[Row]:
    parser = argparse.ArgumentParser(description="M2-ViT-b vs ViT-b/16 image throughput")
    parser.add_argument("--image-sizes", type=int, nargs="+", default=[224, 384, 512])
    parser.add_argument("--modes", nargs="+", choices=["infer", "train"], default=["infer", "train"])
    parser.add_argument("--batch", type=int, default=256, help="images per inference call")
    parser.add_argument("--train-batch", type=int, help="images per training step (default: --batch / 2)")
    parser.add_argument("--m2-backends", nargs="+", choices=["auto", "triton", "torch"], default=["auto"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    args = parser.parse_args(argv)
    for size in args.image_sizes:
        if size % PATCH_SIZE:
            parser.error(f"--image-sizes must be multiples of the patch size {PATCH_SIZE}, got {size}.")
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    batches = {"infer": args.batch, "train": args.train_batch or max(1, args.batch // 2)}
    print(header(device, dtype), flush=True)
    rows = run(args.image_sizes, args.modes, batches, args.m2_backends, device, dtype, args.warmup, args.repeats)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        table = "\n".join(format_row(row, rows) for row in rows)
        args.output.write_text(f"{header(device, dtype)}\n{table}\n")
    return rows


if __name__ == "__main__":
    main()

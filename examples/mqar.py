"""Multi-query associative recall (MQAR): a tiny M2-GPT against a same-size GPT-2, same data and steps.

Each sequence lists `--pairs` key-value pairs, then asks for every key once, in a random order:

    k1 v1 k2 v2 ... kN vN | q1 _ q2 _ ... qN _        (_ is the blank token 0)

and the model must predict, at each query key, the value that followed that key in the first half (the target
sits on the following blank). Keys and values come from disjoint halves of the vocabulary. This is the recall task
of the Zoology study of gated-convolution and attention language models; accuracy counts the query positions whose
argmax prediction is the right value.

Both models are trained with `Trainer` (causal LM loss on the query targets only) on the same sequences for the
same number of steps, then evaluated on held-out sequences. Runs on CPU in a few minutes.

Usage: python examples/mqar.py [--steps 2000] [--pairs 8] [--keys 64]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

import m2_hf  # noqa: E402

BLANK = 0


def mqar_sequences(count: int, pairs: int, keys: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """`count` MQAR sequences of length `4 * pairs`; keys are ids `1..keys`, values `keys+1..2*keys`."""
    key_ids = torch.stack([torch.randperm(keys, generator=generator)[:pairs] for _ in range(count)]) + 1
    value_ids = torch.randint(keys + 1, 2 * keys + 1, (count, pairs), generator=generator)
    order = torch.stack([torch.randperm(pairs, generator=generator) for _ in range(count)])
    queries, answers = key_ids.gather(1, order), value_ids.gather(1, order)
    context = torch.stack([key_ids, value_ids], dim=-1).reshape(count, 2 * pairs)
    question = torch.stack([queries, torch.full_like(queries, BLANK)], dim=-1).reshape(count, 2 * pairs)
    labels = torch.full((count, 4 * pairs), -100)
    labels[:, 2 * pairs + 1 :: 2] = answers  # the loss predicts labels[t + 1] at position t: the value after a query
    return {"input_ids": torch.cat([context, question], dim=1), "labels": labels}


class SequenceDataset(torch.utils.data.Dataset):
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: tensor[index] for name, tensor in self.tensors.items()}


def m2_gpt(vocab: int, length: int, hidden: int, layers: int) -> m2_hf.M2ForCausalLM:
    config = m2_hf.M2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        intermediate_size=4 * hidden,
        filter_order=32,
        max_position_embeddings=length,
        bidirectional=False,
        norm_position="pre",
        use_position_embeddings=False,
        type_vocab_size=0,
        hidden_dropout_prob=0.0,
    )
    return m2_hf.M2ForCausalLM(config)


def gpt2(vocab: int, length: int, hidden: int, layers: int) -> GPT2LMHeadModel:
    config = GPT2Config(
        vocab_size=vocab, n_positions=length, n_embd=hidden, n_layer=layers, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None, eos_token_id=None,
    )
    config._attn_implementation = "sdpa"
    return GPT2LMHeadModel(config)


@torch.no_grad()
def recall_accuracy(model, data: dict[str, torch.Tensor]) -> float:
    """Fraction of query positions whose argmax prediction is the right value."""
    model.eval()
    logits = model(input_ids=data["input_ids"], use_cache=False).logits[:, :-1]
    targets = data["labels"][:, 1:]
    queried = targets != -100
    return (logits.argmax(-1)[queried] == targets[queried]).float().mean().item()


def train(name: str, model, train_data, eval_data, args) -> str:
    training_args = TrainingArguments(
        output_dir=f"outputs/mqar/{name}",
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=args.lr,
        warmup_steps=args.steps // 10,
        lr_scheduler_type="cosine",
        weight_decay=0.1,
        logging_steps=args.steps // 5,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=training_args, train_dataset=SequenceDataset(train_data))
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    accuracy = recall_accuracy(model.cpu(), eval_data)
    return (
        f"| {name} | {model.num_parameters():,} | {seconds:.0f} | {losses[0]:.3f} -> {losses[-1]:.3f} "
        f"| {accuracy:.1%} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--pairs", type=int, default=8, help="key-value pairs per sequence")
    parser.add_argument("--keys", type=int, default=64, help="distinct keys (and values)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(args.seed)
    train_data = mqar_sequences(args.steps * args.batch, args.pairs, args.keys, generator)
    eval_data = mqar_sequences(2000, args.pairs, args.keys, generator)
    vocab, length = 2 * args.keys + 8, 4 * args.pairs
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} CPU threads")
    print(
        f"MQAR: {args.pairs} key-value pairs per sequence of {length} tokens, {args.keys} keys and {args.keys} values; "
        f"{args.steps} steps of {args.batch} sequences (each seen once), 2000 held-out sequences"
    )
    print(
        f"chance: {1 / args.keys:.1%} (a uniform value), {1 / args.pairs:.1%} (a value from the sequence)\n\n"
        "| model | parameters | train s | train loss | held-out recall accuracy |\n|---|---|---|---|---|"
    )
    builders = {
        f"M2-GPT ({args.layers} layers, {args.hidden} hidden)": m2_gpt,
        f"GPT-2 sdpa ({args.layers} layers, {args.hidden} hidden, 4 heads)": gpt2,
    }
    for name, build in builders.items():
        torch.manual_seed(args.seed)
        model = build(vocab, length, args.hidden, args.layers)
        print(train(name, model, train_data, eval_data, args), flush=True)


if __name__ == "__main__":
    main()

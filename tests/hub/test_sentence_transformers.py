"""sentence-transformers: package-trained encoders saved with `save_sentence_transformer`, and converted
retrieval models loaded through their exported remote code where m2_hf cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel, BertTokenizer

import m2_hf
from m2_hf import cli, hub
from m2_hf.remote_code import export_remote_code
from m2_hf.sentence_transformers import save_sentence_transformer

sentence_transformers = pytest.importorskip("sentence_transformers")

TEXTS = ["w1 w2", "w3 w4 w5 w6 w7 w8 w9", "w10"]
TOLERANCE = 1e-5


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def tiny_tokenizer(vocab_size: int = 99) -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)}, model_max_length=64)


def encode(folder: Path) -> torch.Tensor:
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    return model.encode(TEXTS, convert_to_tensor=True)


def package_outputs(model: m2_hf.M2PreTrainedModel, tokenizer: BertTokenizer):
    with torch.no_grad():
        return model.eval().base_model(**tokenizer(TEXTS, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("pooling", ["first_token", "mean"])
def test_saved_encoder_embeds_with_its_pooler_output(pooling, tmp_path):
    model = m2_hf.M2Model(tiny_config(pooling=pooling))
    tokenizer = tiny_tokenizer()
    save_sentence_transformer(model, tokenizer, tmp_path)
    loaded = sentence_transformers.SentenceTransformer(str(tmp_path), device="cpu")
    assert [type(module).__name__ for module in loaded] == ["Transformer", "Pooling", "Dense"]
    assert loaded.max_seq_length == 32
    reference = package_outputs(model, tokenizer)
    embeddings = loaded.encode(TEXTS, convert_to_tensor=True)
    assert embeddings.shape == (3, 32)
    assert relative_error(embeddings, reference.pooler_output) <= TOLERANCE


def test_classifier_is_saved_as_its_encoder(tmp_path):
    model = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=2))
    tokenizer = tiny_tokenizer()
    save_sentence_transformer(model, tokenizer, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["M2Model"]
    assert type(AutoModel.from_pretrained(tmp_path)) is m2_hf.M2Model
    assert relative_error(encode(tmp_path), package_outputs(model, tokenizer).pooler_output) <= TOLERANCE


@pytest.mark.parametrize("pooling", ["first_token", "mean"])
def test_encoder_without_pooler_embeds_with_the_configured_pooling(pooling, tmp_path):
    model = m2_hf.M2ForMaskedLM(tiny_config(pooling=pooling))
    tokenizer = tiny_tokenizer()
    save_sentence_transformer(model, tokenizer, tmp_path)
    modules = json.loads((tmp_path / "modules.json").read_text())
    assert [module["path"] for module in modules] == ["", "1_Pooling"]
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    hidden = package_outputs(model, tokenizer).last_hidden_state
    if pooling == "mean":
        weights = inputs["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * weights).sum(dim=1) / weights.sum(dim=1)
    else:
        expected = hidden[:, 0]
    assert relative_error(encode(tmp_path), expected) <= TOLERANCE


def test_folder_is_a_complete_sentence_transformers_repository(tmp_path):
    model = m2_hf.M2Model(tiny_config())
    save_sentence_transformer(model, tiny_tokenizer(), tmp_path, base_model="my-org/m2-bert-80m", tags=["retrieval"])
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "sentence-transformers" and card.data.pipeline_tag == "sentence-similarity"
    assert card.data.tags == [
        "m2",
        "monarch-mixer",
        "sentence-transformers",
        "sentence-similarity",
        "feature-extraction",
        "retrieval",
    ]
    assert card.data.base_model == "my-org/m2-bert-80m" and card.data.license == "apache-2.0"
    assert "SentenceTransformer(" in card.text
    assert hub.publishing_problems(tmp_path) == []
    files = sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("*") if path.is_file())
    assert hub.upload_files(tmp_path) == files
    assert {"modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "2_Dense/model.safetensors"} <= set(
        files
    )


def test_saving_again_replaces_the_earlier_files(tmp_path):
    tokenizer = tiny_tokenizer()
    save_sentence_transformer(m2_hf.M2Model(tiny_config()), tokenizer, tmp_path)
    model = m2_hf.M2Model(tiny_config())
    save_sentence_transformer(model, tokenizer, tmp_path)
    assert relative_error(encode(tmp_path), package_outputs(model, tokenizer).pooler_output) <= TOLERANCE


def test_vision_models_are_refused(tmp_path):
    if not hasattr(m2_hf, "M2ForImageClassification"):
        pytest.skip("this version of m2_hf has no vision models")
    config = tiny_config(image_size=8, patch_size=2, norm_position="pre", type_vocab_size=0)
    with pytest.raises(TypeError, match="no M2 text encoder"):
        save_sentence_transformer(m2_hf.M2ForImageClassification(config), tiny_tokenizer(), tmp_path)
    assert list(tmp_path.iterdir()) == []


# Runs in a fresh interpreter in which importing m2_hf fails.
ISOLATED_ENCODE = r"""
import importlib.abc
import sys


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("m2_hf", "triton"):
            raise ImportError(f"{name} is blocked in this process")


sys.meta_path.insert(0, Blocker())

from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(sys.argv[1], device="cpu", trust_remote_code=True)
texts = sys.argv[3:]
save_file({"embeddings": model.encode(texts, convert_to_tensor=True).contiguous()}, sys.argv[2])
assert not any(name.split(".")[0] == "m2_hf" for name in sys.modules)
"""


def test_converted_retrieval_model_loads_as_remote_code_sentence_transformer(fixture_dir, tmp_path):
    """A converted long-context retrieval encoder (pad_to_max_length) with exported code embeds, without m2_hf,
    exactly as the package's pooler output."""
    folder = tmp_path / "retrieval"
    args = [
        "convert",
        str(fixture_dir / "pytorch_model.bin"),
        str(folder),
        "--config",
        str(fixture_dir / "config.json"),
    ]
    assert cli.main([*args, "--pad-to-max-length", "--quiet"]) == 0
    tokenizer = tiny_tokenizer(512)
    tokenizer.save_pretrained(folder)  # the fixture's 512-token vocabulary gets no saved tokenizer
    export_remote_code(folder)

    script = tmp_path / "encode.py"
    script.write_text(ISOLATED_ENCODE)
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("PYTHON")},
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp_path / "modules"),
    }
    command = [sys.executable, "-I", str(script), str(folder), str(tmp_path / "out.safetensors"), *TEXTS]
    result = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    assert model.config.pad_to_max_length
    reference = package_outputs(model, tokenizer).pooler_output
    assert relative_error(load_file(tmp_path / "out.safetensors")["embeddings"], reference) <= TOLERANCE

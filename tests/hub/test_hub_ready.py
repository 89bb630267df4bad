"""Publishing: saved folders are complete Hub repositories whose cards carry the right metadata."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
import torch
from conftest import tiny_config
from huggingface_hub import ModelCard
from transformers import BertTokenizer, ViTImageProcessorPil
from transformers.pipelines import SUPPORTED_TASKS

import m2_hf
from m2_hf import hub
from m2_hf.registry import M2_CLASSES
from m2_hf.remote_code import export_remote_code

TASKS = {entry.name: entry.pipeline_tag for entry in M2_CLASSES}
HEADS = list(TASKS)
VISION = ("M2VisionModel", "M2ForImageClassification")
BASE_MODEL = "my-org/m2-bert-80m"


def head_config(class_name: str) -> m2_hf.M2Config:
    if class_name in VISION:
        return tiny_config(image_size=8, patch_size=2, norm_position="pre", type_vocab_size=0, num_labels=3)
    if class_name == "M2ForCausalLM":
        return tiny_config(bidirectional=False, norm_position="pre", type_vocab_size=0)
    return tiny_config(num_labels=3)


def tiny_tokenizer() -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)}, model_max_length=32)


def save_for_hub(class_name: str, folder: Path, **card_metadata) -> m2_hf.M2PreTrainedModel:
    """What an example does before publishing: save the model, its tokenizer or image processor, and a card."""
    model = getattr(m2_hf, class_name)(head_config(class_name))
    model.save_pretrained(folder)
    if class_name in VISION:
        ViTImageProcessorPil(size={"height": 8, "width": 8}).save_pretrained(folder)
    else:
        tiny_tokenizer().save_pretrained(folder)
    hub.write_model_card(folder, model, **card_metadata)
    return model


def folder_files(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("class_name", HEADS)
def test_saved_folder_is_exactly_what_is_uploaded(class_name, tmp_path):
    save_for_hub(class_name, tmp_path, base_model=BASE_MODEL)
    processor = ["preprocessor_config.json"] if class_name in VISION else ["tokenizer.json", "tokenizer_config.json"]
    generation = ["generation_config.json"] if class_name == "M2ForCausalLM" else []
    expected = sorted(["README.md", "config.json", "model.safetensors", *processor, *generation])
    assert folder_files(tmp_path) == expected
    assert hub.upload_files(tmp_path) == expected
    assert hub.publishing_problems(tmp_path) == []


def test_upload_leaves_out_what_upload_folder_leaves_out(tmp_path):
    save_for_hub("M2ForMaskedLM", tmp_path)
    for private in (".git/HEAD", ".cache/huggingface/upload/model.safetensors.metadata"):
        (tmp_path / private).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / private).write_text("local state")
    uploaded = hub.upload_files(tmp_path)
    assert not any(path.startswith((".git/", ".cache/")) for path in uploaded)
    assert "model.safetensors" in uploaded
    assert hub.upload_files(tmp_path, ignore_patterns="tokenizer*") == ["README.md", "config.json", "model.safetensors"]
    assert hub.upload_files(tmp_path, allow_patterns=["*.json"]) == [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]


@pytest.mark.parametrize("class_name", HEADS)
def test_card_metadata_names_library_task_license_tags_and_base_model(class_name, tmp_path):
    model = save_for_hub(
        class_name, tmp_path, base_model=BASE_MODEL, datasets=["glue"], language="en", tags=["text", "m2"]
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == TASKS[class_name]
    assert card.data.license == "apache-2.0"
    assert card.data.tags == ["m2", "monarch-mixer", "text"]
    assert card.data.base_model == BASE_MODEL and card.data.datasets == ["glue"] and card.data.language == "en"
    assert f"| Parameters | {model.num_parameters():,} |" in card.text
    assert f"https://huggingface.co/{BASE_MODEL}" in card.text
    assert "trust_remote_code" not in card.text


def test_card_without_a_base_model_has_none(tmp_path):
    save_for_hub("M2ForMaskedLM", tmp_path, license="mit")
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.base_model is None and data.datasets is None and data.license == "mit"


@pytest.mark.parametrize("class_name", [entry.name for entry in M2_CLASSES if entry.pipeline])
def test_pipeline_tag_is_the_transformers_task_whose_auto_class_loads_the_head(class_name):
    """The card's task is the pipeline a Hub user gets, and that pipeline's Auto class builds this very class."""
    (auto_class,) = SUPPORTED_TASKS[TASKS[class_name]]["pt"]
    assert type(auto_class.from_config(head_config(class_name))).__name__ == class_name


def test_card_of_a_folder_with_remote_code_says_how_to_load_it(tmp_path):
    model = m2_hf.M2ForSequenceClassification(head_config("M2ForSequenceClassification"))
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    export_remote_code(tmp_path)
    hub.write_model_card(tmp_path, model, model_id="my-org/m2-sst2")
    card = ModelCard.load(tmp_path / "README.md")
    assert "trust_remote_code=True" in card.text and 'model="my-org/m2-sst2"' in card.text
    assert card.data.pipeline_tag == "text-classification"
    assert set(hub.upload_files(tmp_path)) == set(folder_files(tmp_path)) >= {"modeling_m2.py", "ops.py"}


class RecordingHfApi:
    """Stands in for `huggingface_hub.HfApi`, recording the calls instead of making requests."""

    calls: ClassVar[list[tuple[str, dict]]] = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return type("RepoUrl", (), {"repo_id": f"user/{repo_id}" if "/" not in repo_id else repo_id})()

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))
        return "commit"


def test_push_folder_uploads_the_whole_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    monkeypatch.setattr(RecordingHfApi, "calls", [])
    save_for_hub("M2ForTokenClassification", tmp_path)
    assert hub.push_folder(tmp_path, "m2-ner", private=True) == "commit"
    (create, create_args), (upload, upload_args) = RecordingHfApi.calls
    assert create == "create_repo" and create_args["repo_id"] == "m2-ner" and create_args["private"]
    assert upload == "upload_folder" and upload_args["folder_path"] == tmp_path
    assert upload_args["repo_id"] == "user/m2-ner"
    assert "allow_patterns" not in upload_args and "ignore_patterns" not in upload_args  # the whole folder


@pytest.mark.parametrize(
    "remove, problem",
    [
        ("README.md", "no README.md model card"),
        ("tokenizer_config.json", "no tokenizer_config.json"),
        ("model.safetensors", "no safetensors weights"),
        ("config.json", "config.json of an M2 model"),
    ],
)
def test_incomplete_folders_are_not_pushed(remove, problem, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "HfApi", RecordingHfApi)
    monkeypatch.setattr(RecordingHfApi, "calls", [])
    save_for_hub("M2ForMaskedLM", tmp_path)
    (tmp_path / remove).unlink()
    with pytest.raises(ValueError, match=problem):
        hub.push_folder(tmp_path, "m2-mlm")
    assert RecordingHfApi.calls == []


def test_card_without_metadata_is_a_problem(tmp_path):
    save_for_hub("M2ForMaskedLM", tmp_path)
    (tmp_path / "README.md").write_text("# A model\n")
    assert hub.publishing_problems(tmp_path) == [
        f"the model card's metadata has no {field}" for field in ("library_name", "pipeline_tag", "license")
    ]


def test_causal_folder_needs_its_generation_config(tmp_path):
    if not hasattr(m2_hf, "M2ForCausalLM"):
        pytest.skip("this version of m2_hf has no causal LM")
    save_for_hub("M2ForCausalLM", tmp_path)
    (tmp_path / "generation_config.json").unlink()
    assert hub.publishing_problems(tmp_path) == ["no generation_config.json"]


def test_unknown_model_classes_need_an_explicit_task():
    with pytest.raises(ValueError, match="pass pipeline_tag explicitly"):
        hub.model_card_data(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(
    "fields, present, absent",
    [
        ({}, ["bidirectional gated long convolutions", "residual long convolution", "GLU MLP", "block-diagonal"],
         ["Monarch sequence", "order-2", "pre-norm"]),
        ({"residual_long_conv": False, "glu_mlp": False}, ["gated long convolutions", "; MLP of width"],
         ["residual", "GLU"]),
        ({"bidirectional": False, "norm_position": "pre"}, ["causal gated long convolutions", "pre-norm"],
         ["bidirectional"]),
        ({"sequence_mixer": "monarch", "max_position_embeddings": 16},
         ["Monarch sequence mixers (order-2 Monarch matrices over 16 positions, 4 x 4 blocks)", "block-diagonal"],
         ["long convolution"]),
        ({"monarch_mlp_order": 2}, ["order-2 Monarch projections"], ["block-diagonal"]),
        ({"mixer_layernorm": True}, ["a LayerNorm at the start of every sequence mixer"], []),
    ],
    ids=["m2-bert", "plain-mlp", "m2-gpt", "monarch-mixer", "monarch-mlp", "mixer-layernorm"],
)
def test_architecture_sentence_follows_the_config(fields, present, absent, tmp_path):
    """Both card builders (trained models and converted checkpoints) name the layers the config has."""
    from m2_hf.conversion.heads import MODEL_KINDS, parameter_count
    from m2_hf.conversion.model_cards import conversion_card

    config = tiny_config(**fields)
    sentence = hub.architecture_summary(config)
    for part in present:
        assert part in sentence, (part, sentence)
    for part in absent:
        assert part not in sentence, (part, sentence)
    model = m2_hf.M2ForMaskedLM(config)
    kind = MODEL_KINDS["masked-lm"]
    for card in (
        hub.model_card(model, "my-org/m2"),
        conversion_card(config, kind, parameter_count(config, kind), "m2"),
    ):
        assert f"| Architecture | M2ForMaskedLM: {sentence} |" in card.text

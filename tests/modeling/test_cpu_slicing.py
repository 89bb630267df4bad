"""CPU inference over batch slices (`M2Config.cpu_inference_slice_mib`): the same outputs, and only where it may."""

import pytest
import torch

import m2_hf
from helpers import causal_config, tiny_config
from m2_hf.modeling.transformers_compat import output_cache

# A 4096-wide MLP makes one 16-token sequence's widest intermediate 16 x 8192 x 4 bytes = 0.5 MiB: 1 MiB holds two.
WIDE = dict(intermediate_size=4096, cpu_inference_slice_mib=1)


def count_mixer_calls(model, monkeypatch) -> list:
    calls = []
    for layer in model.model.layers if hasattr(model, "model") else model.layers:
        original = layer.mixer.forward

        def spy(hidden_states, *args, _original=original, **kwargs):
            calls.append(hidden_states.shape[0])
            return _original(hidden_states, *args, **kwargs)

        monkeypatch.setattr(layer.mixer, "forward", spy)
    return calls


def whole_batch(model):
    """The same model with slicing turned off through its config."""
    model.config.cpu_inference_slice_mib = 0
    return model


def test_sliced_encoder_equals_the_whole_batch_with_padding(monkeypatch):
    torch.manual_seed(0)
    model = m2_hf.M2Model(tiny_config(**WIDE)).eval()
    ids = torch.randint(1, 99, (5, 16))
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    mask[4, :3] = 0
    calls = count_mixer_calls(model, monkeypatch)
    with torch.no_grad():
        sliced = model(ids, attention_mask=mask, output_hidden_states=True)
    assert calls[:3] == [2, 2, 1]  # slices of the first layer: two sequences each, the rest last
    with torch.no_grad():
        expected = whole_batch(model)(ids, attention_mask=mask, output_hidden_states=True)
    torch.testing.assert_close(sliced.last_hidden_state, expected.last_hidden_state, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sliced.pooler_output, expected.pooler_output, rtol=1e-5, atol=1e-6)
    for got, want in zip(sliced.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "build",
    [
        lambda: m2_hf.M2ForMaskedLM(tiny_config(**WIDE)),
        lambda: m2_hf.M2ForCausalLM(causal_config(**WIDE)),
        lambda: m2_hf.M2ForSequenceClassification(tiny_config(sequence_mixer="monarch", **WIDE)),
    ],
    ids=["masked_lm", "causal_lm_without_cache", "monarch_mixer"],
)
def test_sliced_heads_equal_the_whole_batch(build, monkeypatch):
    torch.manual_seed(0)
    model = build().eval()
    ids = torch.randint(1, 99, (3, 16))
    calls = count_mixer_calls(model, monkeypatch)
    with torch.no_grad():
        sliced = model(ids, use_cache=False) if isinstance(model, m2_hf.M2ForCausalLM) else model(ids)
        assert len(calls) > model.config.num_hidden_layers
        expected = whole_batch(model)(ids, use_cache=False) if isinstance(model, m2_hf.M2ForCausalLM) else model(ids)
    torch.testing.assert_close(sliced.logits, expected.logits, rtol=1e-5, atol=1e-5)


def test_sliced_vision_model_equals_the_whole_batch(monkeypatch):
    torch.manual_seed(0)
    config = tiny_config(
        image_size=8, patch_size=2, max_position_embeddings=17, norm_position="pre", type_vocab_size=0, **WIDE
    )
    model = m2_hf.M2ForImageClassification(config).eval()
    pixels = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        sliced = model(pixel_values=pixels).logits
        expected = whole_batch(model)(pixel_values=pixels).logits
    torch.testing.assert_close(sliced, expected, rtol=1e-5, atol=1e-5)


def test_the_whole_batch_runs_at_once_in_training_tracing_decoding_or_when_off(monkeypatch):
    model = m2_hf.M2Model(tiny_config(**WIDE)).eval()
    ids = torch.randint(1, 99, (5, 16))
    layers = model.config.num_hidden_layers
    calls = count_mixer_calls(model, monkeypatch)
    model(ids)  # gradients enabled
    assert calls == [5] * layers
    calls.clear()
    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(torch.compiler, "is_compiling", lambda: True)
        model(ids)
    assert calls == [5] * layers
    calls.clear()
    with torch.no_grad():
        whole_batch(model)(ids)
    assert calls == [5] * layers

    causal = m2_hf.M2ForCausalLM(causal_config(**WIDE)).eval()
    calls = count_mixer_calls(causal, monkeypatch)
    with torch.no_grad():
        out = causal(ids, use_cache=True)
        assert calls == [5] * layers  # prefill fills the cache in one pass
        calls.clear()
        causal(ids[:, -1:], cache=output_cache(out), use_cache=True)
    assert calls == [5] * layers


@pytest.mark.parametrize("value", [-1, 1.5, True, "16"])
def test_slice_budget_must_be_a_non_negative_integer(value):
    with pytest.raises(ValueError, match="cpu_inference_slice_mib"):
        tiny_config(cpu_inference_slice_mib=value)

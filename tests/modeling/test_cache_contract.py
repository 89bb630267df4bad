"""The M2 cache against the contract of transformers' generation tests, through the public `Cache` API: per-layer
state shapes, the cache carried by `return_dict_in_generate` outputs for greedy search, sampling and beam search,
and its length after each step. (transformers' own checks read attention keys and values, which a long-convolution
history does not have; see `M2CacheLayer`.)"""

import pytest
import torch
from transformers.cache_utils import Cache

import m2_hf
from helpers import causal_config
from m2_hf.modeling.cache_m2 import M2Cache, M2CacheLayer
from m2_hf.modeling.transformers_compat import output_cache

HIDDEN, SHORT_CONV = 32, 3


def causal_model(**overrides):
    fields = dict(max_position_embeddings=48, short_conv_size=SHORT_CONV)
    return m2_hf.M2ForCausalLM(causal_config(**{**fields, **overrides})).eval()


def assert_layout(cache, batch: int, length: int, long_convs: int = 2):
    """Every layer holds the last K - 1 mixer inputs and the whole history of each long-convolution input."""
    assert isinstance(cache, M2Cache) and isinstance(cache, Cache)
    assert len(cache.layers) == 2 and all(isinstance(layer, M2CacheLayer) for layer in cache.layers)
    assert cache.get_seq_length() == length and all(layer.get_seq_length() == length for layer in cache.layers)
    for layer in cache.layers:
        assert layer.short_conv_state.shape == (batch, 3 * HIDDEN, SHORT_CONV - 1)
        assert [tuple(history.shape) for history in layer.long_conv_inputs] == [(batch, HIDDEN, length)] * long_convs


@pytest.mark.parametrize("residual", [True, False], ids=["residual-conv", "no-residual-conv"])
def test_layer_states_after_prefill_and_each_step(residual):
    model = causal_model(residual_long_conv=residual)
    ids = torch.randint(1, 99, (3, 9))
    with torch.no_grad():
        cache = output_cache(model(ids[:, :5], use_cache=True))
        assert_layout(cache, 3, 5, 2 if residual else 1)
        for step in range(5, 9):
            assert output_cache(model(ids[:, step : step + 1], cache=cache)) is cache
            assert_layout(cache, 3, step + 1, 2 if residual else 1)
    assert cache.get_max_length() == 48 and cache.layers[0].get_mask_sizes(1)[0] == 10


def test_the_histories_hold_the_long_convolution_inputs_of_a_full_pass():
    model = causal_model()
    ids = torch.randint(1, 99, (2, 8))
    with torch.no_grad():
        stepped = output_cache(model(ids[:, :3], use_cache=True))
        for step in range(3, 8):
            model(ids[:, step : step + 1], cache=stepped)
        whole = output_cache(model(ids, use_cache=True))
    for stepped_layer, whole_layer in zip(stepped.layers, whole.layers):
        for stepped_history, whole_history in zip(stepped_layer.long_conv_inputs, whole_layer.long_conv_inputs):
            torch.testing.assert_close(stepped_history, whole_history, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(stepped_layer.short_conv_state, whole_layer.short_conv_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "strategy, rows",
    [
        (dict(do_sample=False), 2),
        (dict(do_sample=True, top_k=10, num_return_sequences=2), 4),
        (dict(do_sample=False, num_beams=3), 6),
    ],
    ids=["greedy", "sampling", "beam-search"],
)
def test_generate_dict_outputs_carry_the_grown_cache(strategy, rows):
    model = causal_model()
    ids = torch.randint(1, 99, (2, 6))
    out = model.generate(ids, max_new_tokens=5, return_dict_in_generate=True, output_scores=True, **strategy)
    assert out.sequences.shape[1] == 11 and len(out.scores) == 5
    # The last new token is never fed back, so the cache holds every token but it.
    assert_layout(output_cache(out), rows, 10)


def test_generate_without_the_cache_returns_none():
    model = causal_model()
    out = model.generate(torch.randint(1, 99, (2, 6)), max_new_tokens=3, use_cache=False, return_dict_in_generate=True)
    assert output_cache(out) is None


def test_a_cache_can_be_reset_and_refilled():
    model = causal_model()
    ids = torch.randint(1, 99, (2, 6))
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
        first = model(ids[:, :1], cache=cache).logits
        cache.reset()
        assert cache.get_seq_length() == 0
        model(ids, cache=cache)
        torch.testing.assert_close(model(ids[:, :1], cache=cache).logits, first)

"""Online (relaxed) long convolution for decoding: exact against a direct convolution, and M2-GPT decoding on it equal
to full forwards, with left padding, batches, beam search, chunks and the end of the filter grid."""

import pytest
import torch

import m2_hf
from helpers import causal_config, left_padded
from m2_hf.modeling import cache_m2
from m2_hf.modeling.online_long_conv import DIRECT_BLOCK_MAX, OnlineLongConv
from m2_hf.modeling.transformers_compat import output_cache


def direct_causal_convolution(inputs: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """`y[j] = sum_{s <= j} k[j - s] x[s]`, summed pair by pair in float64."""
    length = inputs.shape[-1]
    lags = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # [j, s]
    toeplitz = torch.where(lags >= 0, taps[:, lags.clamp(min=0)], 0)  # [H, j, s]
    return torch.einsum("hjs,bhs->bhj", toeplitz.double(), inputs.double())


@pytest.mark.parametrize("start", [0, 1, 5, 40])
@pytest.mark.parametrize("grid", [64, 100, 300])  # blocks of 64 and more (FFT) from 64 online steps on
def test_online_convolution_equals_the_direct_one(start, grid):
    assert DIRECT_BLOCK_MAX < 64
    torch.manual_seed(start + grid)
    taps, inputs = torch.randn(3, grid), torch.randn(2, 3, grid)
    online = OnlineLongConv(taps, inputs[..., :start])
    outputs = torch.stack([online.step(inputs[..., : i + 1]) for i in range(start, grid)], dim=-1)
    expected = direct_causal_convolution(inputs, taps)[..., start:]
    torch.testing.assert_close(outputs.double(), expected, atol=1e-4, rtol=1e-5)


def test_online_state_follows_reordered_rows():
    torch.manual_seed(0)
    taps, inputs = torch.randn(2, 50), torch.randn(3, 2, 50)
    online = OnlineLongConv(taps, inputs[..., :7])
    for i in range(7, 20):
        online.step(inputs[..., : i + 1])
    order = torch.tensor([2, 0, 1])
    online.map_batch(lambda tensor: tensor.index_select(0, order))
    inputs = inputs[order]
    outputs = torch.stack([online.step(inputs[..., : i + 1]) for i in range(20, 50)], dim=-1)
    torch.testing.assert_close(outputs.double(), direct_causal_convolution(inputs, taps)[..., 20:], atol=1e-4, rtol=1e-5)


@pytest.fixture(params=[0, 9], ids=["online-from-the-start", "online-after-9-tokens"])
def online_decoding(request, monkeypatch):
    """Decoding steps convolve online once the sequence is longer than the parameter."""
    monkeypatch.setattr(cache_m2, "DIRECT_DECODE_MAX_LENGTH", request.param)
    return request.param


def gpt_model(**overrides):
    fields = dict(max_position_embeddings=96, initializer_range=0.2)
    return m2_hf.M2ForCausalLM(causal_config(**{**fields, **overrides})).eval()


def random_left_padded(lengths):
    return left_padded([torch.randint(1, 99, (length,)) for length in lengths])


@pytest.mark.parametrize("residual", [True, False], ids=["residual-conv", "no-residual-conv"])
def test_stepwise_logits_equal_a_full_forward(online_decoding, residual):
    model = gpt_model(residual_long_conv=residual)
    ids = torch.randint(1, 99, (2, 90))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = output_cache(model(ids[:, :4], use_cache=True))
        steps = [model(ids[:, t : t + 1], cache=cache).logits for t in range(4, 40)]
        chunk = model(ids[:, 40:47], cache=cache).logits  # a chunk restarts the online part
        steps += [chunk] + [model(ids[:, t : t + 1], cache=cache).logits for t in range(47, 90)]
    assert all(name in cache.layers[0].online for name in (("long", "residual") if residual else ("long",)))
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 4:], atol=2e-5, rtol=1e-4)


def test_greedy_generation_to_the_end_of_the_grid_with_left_padding(online_decoding):
    model = gpt_model()
    ids, mask = random_left_padded([12, 5, 8])
    new = 96 - ids.shape[1]
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False, output_logits=True,
        return_dict_in_generate=True,
    )
    assert out.sequences.shape[1] == 96
    full_mask = torch.cat([mask, mask.new_ones(3, new)], dim=1)
    with torch.no_grad():
        full = model(out.sequences, attention_mask=full_mask, use_cache=False).logits
    torch.testing.assert_close(torch.stack(out.logits, 1), full[:, ids.shape[1] - 1 : -1], atol=2e-5, rtol=1e-4)


def test_beam_search_on_the_online_path_scores_like_a_full_forward(online_decoding):
    model = gpt_model()
    ids, mask = random_left_padded([10, 6])
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=40, num_beams=3, num_return_sequences=2,
        do_sample=False, length_penalty=0.0, output_scores=True, return_dict_in_generate=True,
    )
    full_mask = torch.cat([mask, mask.new_ones(2, 40)], dim=1).repeat_interleave(2, dim=0)
    with torch.no_grad():
        full = model(out.sequences, attention_mask=full_mask, use_cache=False).logits
    log_probs = full[:, 9:-1].log_softmax(-1).gather(-1, out.sequences[:, 10:, None]).squeeze(-1)
    torch.testing.assert_close(out.sequences_scores, log_probs.sum(-1), atol=1e-4, rtol=1e-5)


def test_direct_and_online_decoding_give_the_same_tokens_and_logits(monkeypatch):
    model = gpt_model()
    ids = torch.randint(1, 99, (2, 20))
    runs = []
    for threshold in (10_000, 0):
        monkeypatch.setattr(cache_m2, "DIRECT_DECODE_MAX_LENGTH", threshold)
        out = model.generate(ids, max_new_tokens=60, do_sample=False, output_logits=True, return_dict_in_generate=True)
        runs.append(out)
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(torch.stack(runs[0].logits, 1), torch.stack(runs[1].logits, 1), atol=2e-5, rtol=1e-4)


def test_bf16_online_decoding_is_as_close_to_a_full_forward_as_the_direct_path(monkeypatch):
    ids = torch.randint(1, 99, (2, 60))
    errors = []
    for threshold in (10_000, 0):
        monkeypatch.setattr(cache_m2, "DIRECT_DECODE_MAX_LENGTH", threshold)
        torch.manual_seed(0)
        model = gpt_model().to(torch.bfloat16)
        with torch.no_grad():
            full = model(ids, use_cache=False).logits.float()
            cache = output_cache(model(ids[:, :4], use_cache=True))
            steps = torch.cat([model(ids[:, t : t + 1], cache=cache).logits for t in range(4, 60)], dim=1).float()
        errors.append((steps - full[:, 4:]).abs().max().item() / full.abs().max().item())
    direct, online = errors
    assert online <= 0.02 and online <= 1.5 * direct + 1e-3  # bf16 rounding of the model, not of the online sums

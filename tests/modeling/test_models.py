"""Model behaviour: padding, caching, heads and losses, Auto classes, bad input."""

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

import m2_hf
from helpers import tiny_config

HEADS = [m2_hf.M2Model, m2_hf.M2ForMaskedLM, m2_hf.M2ForSequenceClassification, m2_hf.M2ForTokenClassification]


def random_ids(batch=3, length=12, vocab=99):
    return torch.randint(1, vocab, (batch, length))


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pooling", ["first_token", "mean"])
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_padded_batch_equals_each_sequence_alone(side, pooling, norm_position):
    model = m2_hf.M2Model(tiny_config(pooling=pooling, norm_position=norm_position)).eval()
    lengths = [12, 5, 9]
    sequences = [random_ids(1, n)[0] for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        where = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, where] = seq
        mask[row, where] = 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for row, seq in enumerate(sequences):
            alone = model(seq[None])
            where = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
            torch.testing.assert_close(batched.last_hidden_state[row, where], alone.last_hidden_state[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(batched.pooler_output[row], alone.pooler_output[0], atol=1e-5, rtol=1e-4)


def test_without_mask_padding_the_pads_change_real_tokens():
    """The original semantics (mask_padding=False) let [PAD] tokens change every real position."""
    model = m2_hf.M2Model(tiny_config(mask_padding=False)).eval()
    seq = random_ids(1, 6)
    padded = torch.cat([seq, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 6), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        alone = model(seq).last_hidden_state
        with_pads = model(padded, attention_mask=mask).last_hidden_state[:, :6]
    assert (alone - with_pads).abs().max() > 1e-3


def test_pad_to_max_length_equals_manual_max_length_padding():
    config = tiny_config(mask_padding=False, max_position_embeddings=16)
    plain = m2_hf.M2Model(config).eval()
    padding = m2_hf.M2Model(tiny_config(mask_padding=False, max_position_embeddings=16, pad_to_max_length=True)).eval()
    padding.load_state_dict(plain.state_dict())
    ids = random_ids(2, 7)
    with torch.no_grad():
        automatic = padding(ids)
        manual = plain(torch.cat([ids, torch.zeros(2, 9, dtype=torch.long)], dim=1))
        unpadded = plain(ids)
    assert automatic.last_hidden_state.shape == (2, 7, 32)
    torch.testing.assert_close(automatic.last_hidden_state, manual.last_hidden_state[:, :7])
    torch.testing.assert_close(automatic.pooler_output, manual.pooler_output)
    assert (automatic.pooler_output - unpadded.pooler_output).abs().max() > 1e-4


def test_filters_are_cached_in_eval_and_refreshed_when_weights_change():
    model = m2_hf.M2Model(tiny_config()).eval()
    filt = model.layers[0].mixer.long_filter
    calls = []
    original = filt._compute_spectrum
    filt._compute_spectrum = lambda n: calls.append(n) or original(n)
    ids = random_ids()
    with torch.no_grad():
        first = model(ids).last_hidden_state
        second = model(ids).last_hidden_state
        assert calls == [12]
        model(random_ids(2, 7))
        assert calls == [12, 7]
        filt.forward_mlp[0].weight.add_(0.5)
        changed = model(ids).last_hidden_state
    assert calls == [12, 7, 12]
    torch.testing.assert_close(first, second)
    assert (changed - first).abs().max() > 1e-4
    model.train()
    with torch.no_grad():
        model(ids)
    assert calls == [12, 7, 12, 12]


def test_cached_filters_equal_fresh_ones_and_training_gets_gradients():
    model = m2_hf.M2ForMaskedLM(tiny_config()).eval()
    ids = random_ids()
    with torch.no_grad():
        cached = model(ids).logits
        cached_again = model(ids).logits
    fresh = model(ids).logits  # grad enabled: computed anew
    torch.testing.assert_close(cached, fresh.detach())
    torch.testing.assert_close(cached, cached_again)
    fresh.sum().backward()
    assert model.model.layers[0].mixer.long_filter.features.grad is not None


def test_sequence_longer_than_trained_length_raises():
    model = m2_hf.M2Model(tiny_config(max_position_embeddings=16))
    with pytest.raises(ValueError, match="Input length 17 exceeds .* maximum sequence length 16"):
        model(random_ids(1, 17))
    model(random_ids(1, 16))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"input_ids": torch.randint(0, 99, (12,))}, ValueError, "input_ids must have shape"),
        ({"input_ids": torch.randint(0, 99, (2, 3, 4))}, ValueError, "input_ids must have shape"),
        ({"input_ids": torch.rand(2, 5)}, ValueError, "integer"),
        ({"input_ids": torch.tensor([[1, 2, 99]])}, IndexError, r"input_ids must be in \[0, 99\)"),
        ({"input_ids": torch.tensor([[1, -1, 3]])}, IndexError, "input_ids"),
        ({"input_ids": random_ids(2, 5), "attention_mask": torch.ones(2, 4)}, ValueError, "attention_mask"),
        ({"input_ids": random_ids(2, 5), "attention_mask": torch.ones(5)}, ValueError, "attention_mask"),
        ({"input_ids": random_ids(2, 5), "token_type_ids": torch.full((2, 5), 2)}, IndexError, "token_type_ids"),
        ({"input_ids": random_ids(2, 5), "inputs_embeds": torch.randn(2, 5, 32)}, ValueError, "exactly one"),
        ({}, ValueError, "exactly one"),
        ({"inputs_embeds": torch.randn(2, 5, 31)}, ValueError, "inputs_embeds must have shape"),
        ({"input_ids": torch.zeros(2, 0, dtype=torch.long)}, ValueError, "empty"),
    ],
)
@pytest.mark.parametrize("model_class", HEADS)
def test_bad_input_raises(model_class, kwargs, error, match):
    model = model_class(tiny_config())
    with pytest.raises(error, match=match):
        model(**kwargs)


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="labels"):
        m2_hf.M2ForMaskedLM(tiny_config())(random_ids(2, 5), labels=random_ids(2, 4))
    with pytest.raises(ValueError, match="labels"):
        m2_hf.M2ForTokenClassification(tiny_config())(random_ids(2, 5), labels=torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        m2_hf.M2ForSequenceClassification(tiny_config())(random_ids(2, 5), labels=torch.zeros(3, dtype=torch.long))


def test_inputs_embeds_match_input_ids():
    model = m2_hf.M2ForMaskedLM(tiny_config()).eval()
    ids = random_ids()
    with torch.no_grad():
        from_ids = model(ids).logits
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(from_ids, from_embeds)


def test_masked_lm_loss_only_on_labelled_positions():
    model = m2_hf.M2ForMaskedLM(tiny_config()).eval()
    ids = random_ids(2, 10)
    labels = torch.full_like(ids, -100)
    labels[0, 3], labels[1, 7], labels[1, 0] = 5, 17, 42
    out = model(ids, labels=labels)
    picked = out.logits[labels != -100]
    expected = torch.nn.functional.cross_entropy(picked, labels[labels != -100])
    torch.testing.assert_close(out.loss, expected)
    # Trainer's num_items_in_batch turns the mean into sum / num_items.
    summed = model(ids, labels=labels, num_items_in_batch=torch.tensor(6)).loss
    torch.testing.assert_close(summed, expected * 3 / 6)


def test_sparse_prediction_returns_only_labelled_logits():
    model = m2_hf.M2ForMaskedLM(tiny_config(sparse_prediction=True)).eval()
    ids = random_ids(2, 10)
    labels = torch.full_like(ids, -100)
    labels[0, 1], labels[1, 4] = 3, 9
    dense = m2_hf.M2ForMaskedLM(tiny_config()).eval()
    dense.load_state_dict(model.state_dict())
    sparse_out, dense_out = model(ids, labels=labels), dense(ids, labels=labels)
    assert sparse_out.logits.shape == (2, 99)
    torch.testing.assert_close(sparse_out.loss, dense_out.loss)
    torch.testing.assert_close(sparse_out.logits, dense_out.logits[labels != -100])
    assert model(ids).logits.shape == (2, 10, 99)


def test_sequence_classification_problem_types():
    ids = random_ids(4, 6)
    regression = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=1)).eval()
    target = torch.randn(4)
    out = regression(ids, labels=target)
    assert regression.config.problem_type == "regression"
    torch.testing.assert_close(out.loss, torch.nn.functional.mse_loss(out.logits.squeeze(-1), target))

    single = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=3)).eval()
    target = torch.tensor([0, 2, 1, 2])
    out = single(ids, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, target))

    multi = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=3, problem_type="multi_label_classification"))
    target = torch.tensor([[1.0, 0.0, 1.0]] * 4)
    out = multi.eval()(ids, labels=target)
    torch.testing.assert_close(out.loss, torch.nn.functional.binary_cross_entropy_with_logits(out.logits, target))


def test_token_classification_ignores_minus_100():
    model = m2_hf.M2ForTokenClassification(tiny_config(num_labels=4)).eval()
    ids = random_ids(2, 6)
    labels = torch.randint(0, 4, (2, 6))
    labels[0, :2] = -100
    out = model(ids, labels=labels)
    keep = labels != -100
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits[keep], labels[keep]))


def test_hidden_states_and_tuple_outputs():
    model = m2_hf.M2ForMaskedLM(tiny_config(num_hidden_layers=3)).eval()
    ids = random_ids()
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        as_tuple = model(ids, return_dict=False)
        base = model.model(ids, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    torch.testing.assert_close(out.hidden_states[-1], base.last_hidden_state)
    torch.testing.assert_close(base.hidden_states[0], model.model.embeddings(ids, None, torch.zeros_like(ids), torch.arange(12)[None]))
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.logits)


def test_activation_checkpointing_gives_the_same_gradients():
    config = tiny_config()
    model = m2_hf.M2ForMaskedLM(config).train()
    ids, labels = random_ids(), random_ids()
    model(ids, labels=labels).loss.backward()
    reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    assert model.model.layers[0].gradient_checkpointing
    model(ids, labels=labels).loss.backward()
    for name, param in model.named_parameters():
        if name in reference:
            torch.testing.assert_close(param.grad, reference[name], msg=name)


def test_every_parameter_gets_a_gradient():
    model = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=2, mixer_layernorm=True)).train()
    model(random_ids(), labels=torch.tensor([0, 1, 1])).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize(
    "auto_class, model_class",
    [
        (AutoModel, m2_hf.M2Model),
        (AutoModelForMaskedLM, m2_hf.M2ForMaskedLM),
        (AutoModelForSequenceClassification, m2_hf.M2ForSequenceClassification),
        (AutoModelForTokenClassification, m2_hf.M2ForTokenClassification),
    ],
)
def test_save_and_reload_through_auto_classes(tmp_path, auto_class, model_class):
    model = model_class(tiny_config(mixer_layernorm=True)).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = auto_class.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert type(loaded) is model_class
    saved, reloaded = model.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), loaded.buffers()))
    ids = random_ids()
    with torch.no_grad():
        before, after = model(ids), loaded(ids)
    for key in before.keys():
        # Bit-identical weights; outputs may differ in the last float32 bit because loaded tensors sit at
        # other memory alignments, which changes the vectorised summation order.
        torch.testing.assert_close(before[key], after[key], rtol=1e-6, atol=1e-6, msg=key)


def test_tied_decoder_survives_save_and_load(tmp_path):
    model = m2_hf.M2ForMaskedLM(tiny_config())
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "decoder.bias" in keys and not ({"decoder.weight", "model.embeddings.word_embeddings.weight"} <= keys)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)
    assert loaded.decoder.weight is loaded.model.embeddings.word_embeddings.weight


def test_untied_decoder_when_configured():
    model = m2_hf.M2ForMaskedLM(tiny_config(tie_word_embeddings=False))
    assert model.decoder.weight is not model.model.embeddings.word_embeddings.weight


def test_encoder_weights_load_into_heads(tmp_path):
    encoder = m2_hf.M2Model(tiny_config())
    encoder.save_pretrained(tmp_path)
    classifier = AutoModelForSequenceClassification.from_pretrained(tmp_path, num_labels=3)
    torch.testing.assert_close(
        classifier.model.layers[1].mixer.long_filter.features, encoder.layers[1].mixer.long_filter.features
    )


@pytest.mark.parametrize("model_class", HEADS[1:])
def test_heads_return_tuples_when_config_says_so(model_class):
    model = model_class(tiny_config(return_dict=False)).eval()
    with torch.no_grad():
        out = model(random_ids())
    assert isinstance(out, tuple) and isinstance(out[0], torch.Tensor) and out[0].shape[0] == 3


def test_pad_to_max_length_respects_a_shorter_filter_grid():
    model = m2_hf.M2Model(tiny_config(max_position_embeddings=32, long_conv_max_length=20, pad_to_max_length=True))
    out = model(random_ids(2, 7))
    assert out.last_hidden_state.shape == (2, 7, 32)
    with pytest.raises(ValueError, match="maximum sequence length 20"):
        model(random_ids(1, 21))

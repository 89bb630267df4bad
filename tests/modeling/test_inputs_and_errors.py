"""Inputs at the edge of what the heads accept: each is refused with an error naming it, or given a documented
value (README, "Inputs and errors")."""

import pytest
import torch

import m2_hf
from helpers import causal_config, tiny_config
from m2_hf.modeling.transformers_compat import output_cache

TEXT_HEADS = [m2_hf.M2Model, m2_hf.M2ForMaskedLM, m2_hf.M2ForSequenceClassification, m2_hf.M2ForTokenClassification]


def ids(batch, length):
    return torch.randint(1, 99, (batch, length))


# ---------------------------------------------------------------- mean pooling of a row without real tokens


def test_mean_pooling_of_a_row_without_real_tokens_pools_zeros():
    model = m2_hf.M2Model(tiny_config(pooling="mean")).eval()
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1] = 0
    with torch.no_grad():
        pooled = model(ids(2, 6), attention_mask=mask).pooler_output
    # The masked mean of no tokens is the zero vector (the count is clamped, as sentence-transformers does).
    torch.testing.assert_close(pooled[1], torch.tanh(model.pooler.dense.bias))
    assert torch.isfinite(pooled).all()


def test_sequence_classification_loss_stays_finite_with_an_all_padding_row():
    model = m2_hf.M2ForSequenceClassification(tiny_config(pooling="mean", num_labels=2))
    mask = torch.ones(3, 6, dtype=torch.long)
    mask[0] = 0
    out = model(ids(3, 6), attention_mask=mask, labels=torch.tensor([0, 1, 1]))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------- attention_mask values


@pytest.mark.parametrize("value", [2, 0.5, -1])
@pytest.mark.parametrize("model_class", [*TEXT_HEADS, m2_hf.M2ForCausalLM])
def test_attention_mask_values_other_than_0_and_1_are_refused(model_class, value):
    config = causal_config() if model_class is m2_hf.M2ForCausalLM else tiny_config()
    mask = torch.ones(2, 5)
    mask[0, 2] = value
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        model_class(config)(ids(2, 5), attention_mask=mask)


def test_boolean_integer_and_float_masks_give_the_same_outputs():
    model = m2_hf.M2ForMaskedLM(tiny_config()).eval()
    input_ids = ids(2, 7)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    with torch.no_grad():
        outputs = [model(input_ids, attention_mask=m).logits for m in (mask, mask.bool(), mask.float())]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    torch.testing.assert_close(outputs[2], outputs[0], rtol=0, atol=0)


# ---------------------------------------------------------------- the causal head


def test_causal_lm_refuses_a_one_dimensional_input_before_touching_the_cache():
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, seq_len\), got \(7,\)"):
        m2_hf.M2ForCausalLM(causal_config()).eval()(torch.randint(1, 99, (7,)))


def test_causal_lm_token_types_follow_the_rule_of_every_head():
    with pytest.raises(ValueError, match="no token types"):
        m2_hf.M2ForCausalLM(causal_config())(ids(2, 5), token_type_ids=torch.zeros(2, 5, dtype=torch.long))
    model = m2_hf.M2ForCausalLM(causal_config(type_vocab_size=2, initializer_range=0.2)).eval()
    input_ids, types = ids(2, 5), torch.tensor([[0, 0, 1, 1, 1]] * 2)
    with torch.no_grad():
        typed = model(input_ids, token_type_ids=types, use_cache=False).logits
        untyped = model(input_ids, use_cache=False).logits
        embedded = model(
            inputs_embeds=model.model.embeddings.word_embeddings(input_ids), token_type_ids=types, use_cache=False
        ).logits
    assert (typed - untyped).abs().max() > 1e-3  # the token types are used
    torch.testing.assert_close(embedded, typed)


def test_causal_lm_labels_of_another_shape_name_both_shapes():
    with pytest.raises(ValueError, match=r"labels must have the shape of the input, \(3, 5\), got \(3, 4\)"):
        m2_hf.M2ForCausalLM(causal_config())(ids(3, 5), labels=ids(3, 4), use_cache=False)


def test_continuing_a_cache_with_another_batch_size_names_both():
    model = m2_hf.M2ForCausalLM(causal_config()).eval()
    with torch.no_grad():
        cache = output_cache(model(ids(2, 4), use_cache=True))
        with pytest.raises(ValueError, match="cache holds 2 sequences, the input 3"):
            model(ids(3, 1), cache=cache)
    assert cache.get_seq_length() == 4  # the refused step left the cache as it was


# ---------------------------------------------------------------- empty batches


@pytest.mark.parametrize("model_class", [*TEXT_HEADS, m2_hf.M2ForCausalLM])
def test_an_empty_batch_is_refused(model_class):
    config = causal_config() if model_class is m2_hf.M2ForCausalLM else tiny_config()
    with pytest.raises(ValueError, match="empty batch"):
        model_class(config)(torch.zeros(0, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="empty batch"):
        model_class(config)(inputs_embeds=torch.zeros(0, 5, 32))


def test_generate_from_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match="empty batch"):
        m2_hf.M2ForCausalLM(causal_config()).eval().generate(torch.zeros(0, 5, dtype=torch.long), max_new_tokens=2)


def test_vision_models_refuse_an_empty_batch():
    config = tiny_config(image_size=8, patch_size=2, norm_position="pre", type_vocab_size=0, num_labels=3)
    with pytest.raises(ValueError, match="empty batch"):
        m2_hf.M2ForImageClassification(config)(torch.zeros(0, 3, 8, 8))

"""M2Config: defaults, validation and serialisation."""

import pytest
from transformers import AutoConfig

import m2_hf
from m2_hf import M2Config


def test_defaults_describe_the_released_layout():
    config = M2Config()
    assert config.model_type == "m2"
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (30528, 768, 3072)
    assert (config.filter_order, config.filter_emb_dim, config.monarch_mlp_nblocks) == (128, 5, 4)
    assert config.bidirectional and config.residual_long_conv and config.glu_mlp
    assert config.tie_word_embeddings is True
    assert config.pad_token_id == 0 and config.bos_token_id is None and config.eos_token_id is None


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"hidden_size": 30}, "hidden_size"),
        ({"intermediate_size": 66}, "intermediate_size"),
        ({"filter_emb_dim": 4}, "filter_emb_dim"),
        ({"filter_emb_dim": 1}, "filter_emb_dim"),
        ({"max_position_embeddings": 0}, "max_position_embeddings"),
        ({"long_conv_max_length": -3}, "long_conv_max_length"),
        ({"num_hidden_layers": 0}, "num_hidden_layers"),
        ({"filter_order": 0}, "filter_order"),
        ({"monarch_mlp_nblocks": 0}, "monarch_mlp_nblocks"),
        ({"sequence_mixer": "attention"}, "sequence_mixer"),
        ({"pooling": "max"}, "pooling"),
        ({"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        ({"pad_token_id": 40_000}, "pad_token_id"),
        ({"pad_to_max_length": True, "pad_token_id": None}, "pad_to_max_length"),
    ],
)
def test_invalid_fields_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        M2Config(**overrides)


def test_error_lists_allowed_values():
    with pytest.raises(ValueError, match="first_token.*mean"):
        M2Config(pooling="max")
    with pytest.raises(ValueError, match="odd"):
        M2Config(filter_emb_dim=6)


def test_filter_grid_defaults_to_position_table():
    assert M2Config(max_position_embeddings=64).filter_max_length == 64
    config = M2Config(max_position_embeddings=64, long_conv_max_length=128)
    assert config.filter_max_length == 128 and config.max_sequence_length == 64
    assert M2Config(use_position_embeddings=False, long_conv_max_length=256).max_sequence_length == 256


def test_round_trip_through_auto_config(tmp_path):
    config = M2Config(hidden_size=64, intermediate_size=128, mixer_layernorm=True, pooling="mean", mask_padding=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, m2_hf.M2Config)
    saved, reloaded = config.to_dict(), loaded.to_dict()
    saved.pop("_name_or_path"), reloaded.pop("_name_or_path")
    assert reloaded == saved


def test_invalid_saved_config_fails_on_load(tmp_path):
    config = M2Config()
    config.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(path.read_text().replace('"monarch_mlp_nblocks": 4', '"monarch_mlp_nblocks": 5'))
    with pytest.raises(ValueError, match="monarch_mlp_nblocks"):
        AutoConfig.from_pretrained(tmp_path)

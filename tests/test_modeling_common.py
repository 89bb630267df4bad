"""transformers' common model and config tests (`ModelTesterMixin`, `ConfigTester`) on every M2 head.

The mixins come from the sdist of the installed transformers version (see `hf_common.py`); without them, for
instance offline on a fresh machine, the whole module is skipped.
"""

import unittest
from typing import ClassVar
from unittest import mock

import pytest
from helpers import tiny_config
from hf_common import load_hf_common_tests

from m2_hf import M2Config, M2ForMaskedLM, M2ForSequenceClassification, M2ForTokenClassification, M2Model

modeling_common, configuration_common, unavailable_reason = load_hf_common_tests()
if modeling_common is None:
    pytest.skip(unavailable_reason, allow_module_level=True)

ModelTesterMixin = modeling_common.ModelTesterMixin
ids_tensor = modeling_common.ids_tensor
random_attention_mask = modeling_common.random_attention_mask
ConfigTester = configuration_common.ConfigTester

# The mixin tells a base model (no loss) from the heads, and picks the labels `_prepare_for_class` adds, by the
# class name's presence in transformers' static model mappings, which list in-library models only. The test
# extends the mixin module's copies of these mappings (never transformers' own) with the M2 classes.
MIXIN_MAPPINGS = {
    "MODEL_MAPPING_NAMES": M2Model,
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": M2ForMaskedLM,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": M2ForSequenceClassification,
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": M2ForTokenClassification,
}


class M2ModelTester:
    """Tiny M2 configs and random inputs for the common tests."""

    def __init__(self, parent, batch_size=3, seq_length=7, use_input_mask=True, use_token_type_ids=True, **overrides):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = True
        self.use_input_mask = use_input_mask
        self.use_token_type_ids = use_token_type_ids
        self.config_overrides = {"hidden_dropout_prob": 0.1, "num_labels": 3, **overrides}
        config = self.get_config()
        # The attributes the mixin reads from its tester.
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "type_vocab_size", "num_labels"):
            setattr(self, name, getattr(config, name))

    def get_config(self) -> M2Config:
        return tiny_config(**self.config_overrides)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length]) if self.use_input_mask else None
        token_type_ids = (
            ids_tensor([self.batch_size, self.seq_length], self.type_vocab_size)
            if self.use_token_type_ids and self.type_vocab_size > 0
            else None
        )
        return self.get_config(), input_ids, attention_mask, token_type_ids

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, attention_mask, token_type_ids = self.prepare_config_and_inputs()
        inputs = {"input_ids": input_ids}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return config, inputs


class M2ModelTest(ModelTesterMixin, unittest.TestCase):
    """The default configuration (bidirectional gated long convolutions, padding masked out)."""

    all_model_classes = (M2Model, M2ForMaskedLM, M2ForSequenceClassification, M2ForTokenClassification)
    has_attentions = False
    test_torch_exportable = False
    # Run the `_init_weights` coverage check although the config module has no "# Copyright <year>" line, from
    # which the mixin dates models (transformers < 5.23 skips the check for such modules regardless).
    test_can_init_all_missing_weights_before_2023 = True
    config_overrides: ClassVar[dict] = {}

    def setUp(self):
        self.model_tester = M2ModelTester(self, **self.config_overrides)
        self.config_tester = ConfigTester(
            self, config_class=M2Config, hidden_size=40, common_properties=["hidden_size", "num_hidden_layers"]
        )
        for mapping_name, model_class in MIXIN_MAPPINGS.items():
            extended = {**getattr(modeling_common, mapping_name), M2Config.model_type: model_class.__name__}
            patcher = mock.patch.object(modeling_common, mapping_name, extended)
            patcher.start()
            self.addCleanup(patcher.stop)

    def test_config(self):
        self.config_tester.run_common_tests()


class M2OriginalLayoutModelTest(M2ModelTest):
    """The layout of converted M2-BERT checkpoints: a LayerNorm before each mixer, padding as an ordinary token."""

    config_overrides: ClassVar[dict] = {"mixer_layernorm": True, "mask_padding": False}


class M2AlternativeBranchesModelTest(M2ModelTest):
    """The non-default branches at once: pre-norm residual blocks, causal mixer without the residual convolution,
    plain MLP with dense projections, no position embeddings, no token types, mean pooling, padding to the trained length, sparse masked-LM prediction
    and an untied decoder."""

    config_overrides: ClassVar[dict] = {
        "norm_position": "pre",
        "type_vocab_size": 0,
        "bidirectional": False,
        "residual_long_conv": False,
        "glu_mlp": False,
        "monarch_mlp_nblocks": 1,
        "use_position_embeddings": False,
        "pooling": "mean",
        "pad_to_max_length": True,
        "max_position_embeddings": 16,
        "sparse_prediction": True,
        "tie_word_embeddings": False,
        "filter_emb_dim": 3,
        "filter_num_inner_layers": 0,
    }


class M2MonarchModelTest(M2ModelTest):
    """The paper's canonical M2 layer: Monarch sequence mixers and order-2 Monarch MLP projections."""

    config_overrides: ClassVar[dict] = {"sequence_mixer": "monarch", "monarch_mlp_order": 2}

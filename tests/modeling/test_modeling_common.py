"""transformers' common model and config tests (`ModelTesterMixin`, `ConfigTester`) on every M2 head.

The text encoder and its heads run in several configurations, M2-GPT (`M2ForCausalLM`) in its causal one, and the
M2-ViT backbone and classifier on tiny images. The mixins come from the sdist of the installed transformers version
(see `hf_common.py`); without them, for instance offline on a fresh machine, the whole module is skipped.
"""

import unittest
from typing import ClassVar
from unittest import mock

import pytest
from helpers import tiny_config
from hf_common import load_hf_common_tests
from torch import nn

from m2_hf import (
    M2Config,
    M2ForCausalLM,
    M2ForImageClassification,
    M2ForMaskedLM,
    M2ForSequenceClassification,
    M2ForTokenClassification,
    M2Model,
    M2VisionModel,
)
from m2_hf.modeling.modeling_m2_vision import vision_sequence_length

modeling_common, configuration_common, unavailable_reason = load_hf_common_tests()
if modeling_common is None:
    pytest.skip(unavailable_reason, allow_module_level=True)

ModelTesterMixin = modeling_common.ModelTesterMixin
ids_tensor = modeling_common.ids_tensor
floats_tensor = modeling_common.floats_tensor
random_attention_mask = modeling_common.random_attention_mask
ConfigTester = configuration_common.ConfigTester

# The mixin tells a base model (no loss) from the heads, and picks the labels `_prepare_for_class` adds, by the
# class name's presence in transformers' static model mappings, which list in-library models only. Each test class
# extends the mixin module's copies of these mappings (never transformers' own) with its M2 classes, under the
# model type "m2": the text and the vision base model share that type, so each class names only its own.
MIXIN_MAPPINGS = {
    "MODEL_MAPPING_NAMES": M2Model,
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": M2ForMaskedLM,
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES": M2ForCausalLM,
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": M2ForSequenceClassification,
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": M2ForTokenClassification,
}
VISION_MIXIN_MAPPINGS = {
    "MODEL_MAPPING_NAMES": M2VisionModel,
    "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES": M2ForImageClassification,
}

# M2-GPT's intended layout (see `M2ForCausalLM`).
CAUSAL_CONFIG = {
    "bidirectional": False,
    "norm_position": "pre",
    "use_position_embeddings": False,
    "type_vocab_size": 0,
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


class M2VisionModelTester:
    """Tiny M2-ViT configs (8x8 images in 2x2 patches) and random pixels for the common tests."""

    def __init__(self, parent, batch_size=3, image_size=8, patch_size=2, num_channels=3, **overrides):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.is_training = True
        self.config_overrides = {"norm_position": "pre", "type_vocab_size": 0, "num_labels": 3, **overrides}
        config = self.get_config()
        # The positions the mixer sees, which are the hidden states' length.
        self.seq_length = vision_sequence_length(config)
        for name in ("hidden_size", "num_hidden_layers", "num_labels"):
            setattr(self, name, getattr(config, name))

    def get_config(self) -> M2Config:
        fields = {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "hidden_dropout_prob": 0.1,
            **self.config_overrides,
        }
        # Position embeddings (and the filter grid) sized to the image's patches, [CLS] included.
        probe = tiny_config(**fields)
        fields.setdefault("max_position_embeddings", vision_sequence_length(probe))
        return tiny_config(**fields)

    def prepare_config_and_inputs(self):
        pixel_values = floats_tensor([self.batch_size, self.num_channels, self.image_size, self.image_size])
        return self.get_config(), pixel_values

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values = self.prepare_config_and_inputs()
        return config, {"pixel_values": pixel_values}


class M2CommonTests(ModelTesterMixin):
    """What every M2 test class shares: no attention, the mixin's mappings extended, the config tests. The test
    classes add `unittest.TestCase` and their model classes."""

    has_attentions = False
    test_torch_exportable = False
    # Run the `_init_weights` coverage check although the config module has no "# Copyright <year>" line, from
    # which the mixin dates models (transformers < 5.23 skips the check for such modules regardless).
    test_can_init_all_missing_weights_before_2023 = True
    model_tester_class: ClassVar[type] = M2ModelTester
    mixin_mappings: ClassVar[dict] = MIXIN_MAPPINGS
    config_overrides: ClassVar[dict] = {}

    def setUp(self):
        self.model_tester = self.model_tester_class(self, **self.config_overrides)
        self.config_tester = ConfigTester(
            self, config_class=M2Config, hidden_size=40, common_properties=["hidden_size", "num_hidden_layers"]
        )
        for mapping_name, model_class in self.mixin_mappings.items():
            extended = {**getattr(modeling_common, mapping_name), M2Config.model_type: model_class.__name__}
            patcher = mock.patch.object(modeling_common, mapping_name, extended)
            patcher.start()
            self.addCleanup(patcher.stop)

    def test_config(self):
        self.config_tester.run_common_tests()


class M2ModelTest(M2CommonTests, unittest.TestCase):
    """The default configuration (bidirectional gated long convolutions, padding masked out)."""

    all_model_classes = (M2Model, M2ForMaskedLM, M2ForSequenceClassification, M2ForTokenClassification)

    @unittest.skip(
        "transformers 5.24+ asks every model whose forward takes `cache` for one with use_cache=True; these encoder "
        "configurations have none (bidirectional or pad_to_max_length) and refuse it with a ValueError. The cache's "
        "older name is tested on the causal model in test_causal_lm.py."
    )
    def test_bc_cache_name_forward(self):
        pass


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


class M2ForCausalLMModelTest(M2CommonTests, unittest.TestCase):
    """M2-GPT in its causal layout: causal mixers, pre-norm blocks, no position embeddings, no token types."""

    all_model_classes = (M2ForCausalLM,)
    config_overrides: ClassVar[dict] = CAUSAL_CONFIG

    @unittest.skip(
        "transformers' GenerationTesterMixin lives in its repository's tests/generation/, which the sdist does not "
        "ship (hf_common.py stubs it); generate() with the M2 cache is tested in test_causal_lm.py."
    )
    def test_generation_tester_mixin_inheritance(self):
        pass


class M2VisionModelTest(M2CommonTests, unittest.TestCase):
    """M2-ViT: the backbone and the image classifier, [CLS] pooling and position embeddings (the defaults)."""

    all_model_classes = (M2VisionModel, M2ForImageClassification)
    model_tester_class = M2VisionModelTester
    mixin_mappings = VISION_MIXIN_MAPPINGS
    # Patch embeddings are a convolution, not a vocabulary.
    test_resize_embeddings = False

    def test_model_get_set_embeddings(self):
        # The mixin's version expects a token embedding table; a vision model's input embeddings are its patch
        # projection, and it has no output embeddings to tie.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            patch_embeddings = model.get_input_embeddings()
            self.assertIsInstance(patch_embeddings, nn.Module)
            self.assertIsInstance(patch_embeddings.projection, nn.Conv2d)
            self.assertIs(patch_embeddings, model.base_model.embeddings.patch_embeddings)
            self.assertIsNone(model.get_output_embeddings())


class M2VisionMeanPoolingModelTest(M2VisionModelTest):
    """M2-ViT without [CLS] token or position embeddings: mean pooling over the patches of a causal mixer, with a
    post-norm layout (no final LayerNorm)."""

    config_overrides: ClassVar[dict] = {
        "pooling": "mean",
        "use_position_embeddings": False,
        "bidirectional": False,
        "norm_position": "post",
    }

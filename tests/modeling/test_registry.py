"""The class table `m2_hf.registry.M2_CLASSES` is the one source of registration, card tasks, remote-code Auto
classes and conversion kinds: every reader agrees with it, and a head added to it is registered, carded and
exported."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch
import transformers
from helpers import tiny_config
from huggingface_hub import ModelCard

import m2_hf
from m2_hf import hub, registry, remote_code
from m2_hf.conversion.heads import MODEL_KINDS
from m2_hf.registry import M2_CLASSES, M2Class

PROBE_SOURCE = '''
from torch import nn

from .modeling_m2 import M2Model, M2PreTrainedModel


class M2ForProbeSpans(M2PreTrainedModel):
    """Start and end logits per token, a head that is not in the package."""

    def __init__(self, config):
        super().__init__(config)
        self.model = M2Model(config, add_pooling_layer=False)
        self.span_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return self.span_outputs(self.model(input_ids, attention_mask=attention_mask).last_hidden_state)
'''
PROBE = M2Class("M2ForProbeSpans", "AutoModelForQuestionAnswering", "question-answering", (registry.TEXT,))


def test_every_registered_class_loads_through_its_auto_class():
    config = tiny_config()
    for entry in M2_CLASSES:
        auto_class = getattr(transformers, entry.auto_class)
        if entry.registered:
            assert auto_class._model_mapping[type(config)] is entry.model_class, entry.name
    assert transformers.AutoModel._model_mapping[type(config)] is m2_hf.M2Model  # not the vision backbone


def test_readers_agree_with_the_table():
    for entry in M2_CLASSES:
        assert hub.pipeline_tag_of(entry.model_class) == entry.pipeline_tag
        mapped = remote_code.auto_classes(entry.name)
        assert mapped[entry.auto_class] is entry.model_class
    for kind in MODEL_KINDS.values():
        entry = registry.m2_class(kind.class_name)
        assert (kind.model_class, kind.auto_class, kind.pipeline_tag) == (
            entry.model_class,
            entry.auto_class,
            entry.pipeline_tag,
        )
    assert remote_code.auto_classes("M2ForImageClassification")["AutoModel"] is m2_hf.M2VisionModel
    assert remote_code.auto_classes("M2ForCausalLM").keys() == {"AutoConfig", "AutoModel", "AutoModelForCausalLM"}
    with pytest.raises(KeyError, match="not an M2 model class"):
        registry.m2_class("BertModel")


@pytest.fixture
def probe_head(tmp_path, monkeypatch):
    """`M2ForProbeSpans`, a module of the package's modeling folder, added to the class table."""
    module_path = tmp_path / "probe_head.py"
    module_path.write_text(PROBE_SOURCE)
    name = "m2_hf.modeling.probe_head"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, module_path))
    monkeypatch.setitem(sys.modules, name, module)
    module.__spec__.loader.exec_module(module)
    probe_class = module.M2ForProbeSpans
    monkeypatch.setattr(m2_hf, probe_class.__name__, probe_class, raising=False)
    monkeypatch.setattr(m2_hf.modeling, probe_class.__name__, probe_class, raising=False)
    monkeypatch.setattr(registry, "M2_CLASSES", (*M2_CLASSES, PROBE))
    mapping = transformers.AutoModelForQuestionAnswering._model_mapping
    yield probe_class
    mapping._extra_content.pop(m2_hf.M2Config, None)


def test_a_head_added_to_the_table_is_registered_carded_and_exported(probe_head, tmp_path):
    registry.register_auto_classes()
    config = tiny_config()
    model = transformers.AutoModelForQuestionAnswering.from_config(config)
    assert type(model) is probe_head

    folder = tmp_path / "probe"
    model.save_pretrained(folder)
    hub.write_model_card(folder, model)
    assert ModelCard.load(folder / "README.md").data.pipeline_tag == "question-answering"

    remote_code.export_remote_code(folder)
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForQuestionAnswering"] == "probe_head.M2ForProbeSpans"
    assert auto_map["AutoModel"] == "modeling_m2.M2Model"  # the rest of its family
    assert (folder / "probe_head.py").is_file()
    exported = (folder / "probe_head.py").read_text()
    assert "from .modeling_m2 import M2Model, M2PreTrainedModel" in exported

    ids = torch.randint(1, config.vocab_size, (2, 7))
    with torch.no_grad():
        expected = model.eval()(ids)
        reloaded = transformers.AutoModelForQuestionAnswering.from_pretrained(folder).eval()(ids)
    torch.testing.assert_close(reloaded, expected)

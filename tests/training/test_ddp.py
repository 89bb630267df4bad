"""Multi-process training: DDP with torchrun on CPU (gloo), and the sharding hints FSDP and device maps use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.utils.dataclasses import get_module_class_from_name
from helpers import run_two_processes, tiny_config
from safetensors.torch import load_file

import m2_hf
from m2_hf.modeling.modeling_m2 import M2Layer

SCRIPT = Path(__file__).resolve().parent / "ddp_train.py"
HEADS = [
    cls
    for cls in (getattr(m2_hf, name) for name in m2_hf.__all__)
    if isinstance(cls, type) and issubclass(cls, m2_hf.M2PreTrainedModel) and "PreTrained" not in cls.__name__
]


def test_two_process_trainer_run_keeps_the_ranks_identical(tmp_path):
    run_two_processes(SCRIPT, tmp_path)

    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for report in reports:
        assert report["world_size"] == 2 and report["backend"] == "gloo" and report["global_step"] == 4
    assert reports[0]["losses"] == reports[1]["losses"]  # the logged loss is averaged over the ranks

    initial = [load_file(tmp_path / f"initial-rank{rank}.safetensors") for rank in (0, 1)]
    final = [load_file(tmp_path / f"final-rank{rank}.safetensors") for rank in (0, 1)]
    assert any(not torch.equal(initial[0][name], initial[1][name]) for name in initial[0])  # different starts
    for name in final[0]:
        assert torch.equal(final[0][name], final[1][name]), name
    trained = [name for name in final[0] if not torch.equal(final[0][name], initial[0][name])]
    assert "classifier.weight" in trained and "model.layers.0.mixer.long_filter.frequency" in trained
    parameters = dict(m2_hf.M2ForSequenceClassification(tiny_config(num_labels=2)).named_parameters())
    assert set(parameters) <= set(trained)  # every parameter got a gradient and moved


@pytest.mark.parametrize("head", HEADS, ids=lambda cls: cls.__name__)
def test_no_split_modules_are_the_repeated_layers_of_every_head(head):
    """`_no_split_modules` (what `device_map="auto"` keeps whole and FSDP wraps, via
    `fsdp_transformer_layer_cls_to_wrap: M2Layer`) names exactly the residual blocks, which hold every weight
    outside the embeddings and heads."""
    name = head.__name__
    if name in ("M2VisionModel", "M2ForImageClassification"):
        config = tiny_config(image_size=8, patch_size=2, norm_position="pre", type_vocab_size=0)
    elif name == "M2ForCausalLM":
        config = tiny_config(bidirectional=False, norm_position="pre", type_vocab_size=0)
    else:
        config = tiny_config()
    model = head(config)
    assert set(head._no_split_modules) == set(model._no_split_modules) == {"M2Layer"}  # with its submodels'

    assert get_module_class_from_name(model, "M2Layer") is M2Layer
    layers = [module for module in model.modules() if isinstance(module, M2Layer)]
    assert len(layers) == config.num_hidden_layers
    in_layers = {id(parameter) for layer in layers for parameter in layer.parameters()}
    outside = [n for n, parameter in model.named_parameters() if id(parameter) not in in_layers]
    assert all(".layers." not in f".{n}" for n in outside), outside

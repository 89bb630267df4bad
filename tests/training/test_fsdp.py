"""FSDP2: a sharded two-process training run (torchrun, gloo, CPU) matches the same training in one process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from helpers import run_two_processes, tiny_config
from safetensors.torch import load_file

import m2_hf
from m2_hf.modeling.modeling_m2 import M2Layer

SCRIPT = Path(__file__).resolve().parent / "fsdp_train.py"


def test_sharded_training_matches_one_process(tmp_path):
    run_two_processes(SCRIPT, tmp_path)

    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo"
    assert report["sharded"] and report["checkpointing"]
    assert report["group_names"] == ["base", "filter", "filter_features"]
    losses = report["losses"]
    torch.testing.assert_close(losses["sharded"], losses["single"], rtol=1e-6, atol=0)
    torch.testing.assert_close(losses["sharded_bf16"], losses["single"], rtol=1e-2, atol=0)  # bf16 rounding

    single = load_file(tmp_path / "single.safetensors")
    sharded = load_file(tmp_path / "sharded.safetensors")
    sharded_bf16 = load_file(tmp_path / "sharded_bf16.safetensors")
    assert sharded.keys() == sharded_bf16.keys() == single.keys()
    for name in single:
        torch.testing.assert_close(sharded[name], single[name], rtol=0, atol=1e-6, msg=name)
        assert sharded_bf16[name].dtype == torch.float32  # the parameters stay float32

    # Training moved every parameter: the comparison is not between two untouched copies.
    torch.manual_seed(0)
    initial = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=2)).state_dict()
    for name, _ in m2_hf.M2ForSequenceClassification(tiny_config(num_labels=2)).named_parameters():
        assert not torch.equal(initial[name], single[name]), name
    # bf16 compute changes the training updates by a few percent at most (bf16 keeps 8 bits of mantissa).
    update = torch.cat([(single[name] - initial[name]).flatten() for name in single])
    bf16_error = torch.cat([(sharded_bf16[name] - single[name]).flatten() for name in single])
    assert bf16_error.norm() <= 0.05 * update.norm()


def test_accelerate_config_file_gives_an_fsdp2_plugin_wrapping_m2_layers(monkeypatch):
    """`examples/accelerate_fsdp2.yaml` read the way `accelerate launch` reads it: the launcher's environment
    builds an FSDP2 plugin that shards and checkpoints `M2Layer`."""
    from accelerate.commands import launch
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.dataclasses import get_module_class_from_name
    from accelerate.utils.launch import prepare_multi_gpu_env

    options = {option for action in launch.launch_command_parser()._actions for option in action.option_strings}
    if "--fsdp_version" not in options:
        pytest.skip("FSDP2 needs accelerate >= 1.6")
    config_file = Path(__file__).resolve().parents[2] / "examples" / "accelerate_fsdp2.yaml"
    args = launch.launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    validated = launch._validate_launch_command(args)  # merges the config file into the arguments
    args = validated[0] if isinstance(validated, tuple) else validated
    for name, value in prepare_multi_gpu_env(args).items():
        monkeypatch.setenv(name, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.activation_checkpointing and plugin.reshard_after_forward
    assert plugin.transformer_cls_names_to_wrap == ["M2Layer"]
    model = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=2))
    assert get_module_class_from_name(model, "M2Layer") is M2Layer
    assert os.environ["ACCELERATE_MIXED_PRECISION"] == "bf16"

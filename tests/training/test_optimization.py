"""The original training's parameter groups: which parameter lands in which group, and Trainer using them."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import tiny_config
from transformers import Trainer, TrainingArguments

import m2_hf
from m2_hf.conversion import config_from_original
from m2_hf.conversion.original import map_key, strip_prefixes
from m2_hf.optimization import (
    OriginalRecipeAdamW,
    original_optimizer_cls_and_kwargs,
    original_parameter_groups,
)


def names_by_group(model: torch.nn.Module, groups: list[dict]) -> dict[str, set[str]]:
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return {group["name"]: {names[id(parameter)] for parameter in group["params"]} for group in groups}


def original_group(key: str) -> str | None:
    """The group the original's `_optim` tags give an original (prefix-stripped) state-dict key: the children of
    `implicit_filter` (its Linears, and the Sin module whose `freq` every MLP of the filter shares) get the kernel
    learning rate, `pos_emb.z` its own; buffers are in no group."""
    if re.search(r"\.(pos_emb\.t|modulation\.deltas)$", key) or key.endswith("position_ids"):
        return None
    if key.endswith(".pos_emb.z"):
        return "filter_features"
    if re.search(r"\.implicit_filter\.\d+\.(weight|bias)$", key) or key.endswith(".freq"):
        return "filter"
    return "base"


def test_groups_follow_the_original_tags_of_the_original_keys(fixture_dir):
    """The fixture's original encoder keys, grouped by the original's rule and mapped to m2_hf names, give the
    groups `original_parameter_groups` builds for the converted model."""
    import json

    state = strip_prefixes(torch.load(fixture_dir / "pytorch_model.bin", weights_only=True))
    expected: dict[str, set[str]] = {"base": set(), "filter": set(), "filter_features": set()}
    for key in state:
        group = original_group(key)
        if group is None:
            continue
        target = map_key(key)
        if target is None:  # an alias of the frequency the filter's MLPs share
            layer = re.search(r"layer\.(\d+)\.", key).group(1)
            module = "residual_filter" if "filter_fn2" in key else "long_filter"
            target = f"model.layers.{layer}.mixer.{module}.frequency"
        expected[group].add(target.removeprefix("model."))

    config = config_from_original(json.loads((fixture_dir / "config.json").read_text()))
    model = m2_hf.M2Model(config)
    groups = original_parameter_groups(model, learning_rate=5e-5, weight_decay=5e-6)
    assert names_by_group(model, groups) == expected
    settings = {group["name"]: (group["lr"], group["weight_decay"]) for group in groups}
    assert settings == {"base": (5e-5, 5e-6), "filter": (1e-3, 0.1), "filter_features": (1e-5, 0.0)}


@pytest.mark.parametrize("symmetric", [False, True])
def test_every_parameter_is_in_exactly_one_group(symmetric):
    config = tiny_config(filter_learning_rate=2e-3, filter_weight_decay=0.05, filter_features_learning_rate=3e-6)
    model = m2_hf.M2ForMaskedLM(config)  # the decoder is tied to the word embeddings
    groups = original_parameter_groups(model, learning_rate=1e-4, weight_decay=0.01, symmetric=symmetric)
    grouped = [id(parameter) for group in groups for parameter in group["params"]]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == {id(parameter) for parameter in model.parameters()}

    names = names_by_group(model, groups)
    reverse = {name for name, _ in model.named_parameters() if ".reverse_mlp." in name}
    forward = {name for name, _ in model.named_parameters() if ".forward_mlp." in name}
    frequencies = {name for name, _ in model.named_parameters() if name.endswith(".frequency")}
    assert len(frequencies) == 2 * config.num_hidden_layers  # the gated and the residual long convolution
    assert names["filter"] == forward | frequencies | (reverse if symmetric else set())
    assert names["filter_features"] == {name for name, _ in model.named_parameters() if name.endswith(".features")}
    assert (reverse <= names["base"]) is not symmetric
    assert {name for name in names["base"] if name.endswith(".skip")}  # the skip weight D stays in the base group
    settings = {group["name"]: (group["lr"], group["weight_decay"]) for group in groups}
    assert settings == {"base": (1e-4, 0.01), "filter": (2e-3, 0.05), "filter_features": (3e-6, 0.0)}


def test_decoupled_weight_decay_is_divided_by_each_groups_learning_rate():
    model = m2_hf.M2Model(tiny_config())
    groups = original_parameter_groups(model, 8e-4, 1e-5, decoupled_weight_decay=True)
    settings = {group["name"]: (group["lr"], group["weight_decay"]) for group in groups}
    assert settings == {"base": (8e-4, 1e-5 / 8e-4), "filter": (1e-3, 0.1 / 1e-3), "filter_features": (1e-5, 0.0)}

    # torch's AdamW then shrinks each weight by the original's fraction per step: lr * (wd / lr) = wd.
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([{"params": [parameter], "lr": 1e-3, "weight_decay": 0.1 / 1e-3}])
    parameter.grad = torch.zeros(3)
    optimizer.step()
    torch.testing.assert_close(parameter.detach(), torch.full((3,), 1 - 0.1))


def test_frozen_parameters_and_models_without_filters():
    model = m2_hf.M2Model(tiny_config())
    model.embeddings.requires_grad_(False)
    groups = original_parameter_groups(model, 1e-4)
    grouped = {id(parameter) for group in groups for parameter in group["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}

    monarch = m2_hf.M2Model(tiny_config(sequence_mixer="monarch"))
    assert [group["name"] for group in original_parameter_groups(monarch, 1e-4)] == ["base"]
    with pytest.raises(ValueError, match="holds no M2 model"):
        original_parameter_groups(torch.nn.Linear(2, 2), 1e-4)


def test_trainer_builds_the_groups_through_optimizer_cls_and_kwargs(tmp_path):
    """A real Trainer step: the optimizer holds the groups, and Adam's first step moves each parameter by its group's
    learning rate (the first Adam update of an element is lr * g / (|g| + eps))."""
    config = tiny_config(
        num_labels=2, filter_learning_rate=1e-2, filter_weight_decay=0.0, filter_features_learning_rate=1e-5
    )
    model = m2_hf.M2ForSequenceClassification(config)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        learning_rate=1e-3,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        adam_epsilon=1e-12,
        per_device_train_batch_size=4,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    generator = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.randint(1, 99, (12,), generator=generator), "labels": torch.tensor(index % 2)}
        for index in range(4)
    ]
    cls_and_kwargs = original_optimizer_cls_and_kwargs(args)
    assert cls_and_kwargs[0] is OriginalRecipeAdamW
    trainer = Trainer(model=model, args=args, train_dataset=data, optimizer_cls_and_kwargs=cls_and_kwargs)
    trainer.train()

    optimizer = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [group["name"] for group in optimizer.param_groups] == ["base", "filter", "filter_features"]
    expected_lr = {"base": 1e-3, "filter": 1e-2, "filter_features": 1e-5}
    names = names_by_group(model, optimizer.param_groups)
    for group in optimizer.param_groups:
        assert group["lr"] == pytest.approx(expected_lr[group["name"]])
        for name in names[group["name"]]:
            step = (model.get_parameter(name).detach() - before[name]).abs().max().item()
            # float32 rounding of weights near 1 limits the precision of a 1e-5 step to about 1%
            assert step == pytest.approx(expected_lr[group["name"]], rel=0.05), name

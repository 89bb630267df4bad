"""LoRA on the M2 projections with peft (`m2_hf.peft`): where the adapters land, the block-diagonal update against
its dense equivalent, merging, a short adapter-only fine-tune, and saving and reloading the adapter."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from torch import nn

import m2_hf
from m2_hf.modeling.modeling_m2 import BlockDiagonalLinear
from m2_hf.modeling.monarch_sequence_mixer import MonarchLinear

peft = pytest.importorskip("peft")
from m2_hf.peft import BlockDiagonalLoraLayer, get_m2_peft_model, load_m2_adapter, lora_config  # noqa: E402

TOLERANCE = 1e-5


def inputs(batch: int = 3, length: int = 12, vocab_size: int = 99) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(1, vocab_size, (batch, length))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def outputs(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def dense(weight_blocks: torch.Tensor) -> torch.Tensor:
    """`blockdiag(W_0, ..., W_{n-1})` of `[n, q, p]` blocks as a `[n q, n p]` matrix."""
    return torch.block_diag(*weight_blocks)


CONFIGS = {
    "block-diagonal": dict(),
    "monarch-mlp": dict(monarch_mlp_order=2),
    "monarch-mixer": dict(sequence_mixer="monarch", monarch_mlp_order=2),
}


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_adapters_land_on_every_projection_and_only_there(overrides):
    config = tiny_config(num_labels=2, **overrides)
    model = get_m2_peft_model(m2_hf.M2ForSequenceClassification(config), r=4, task_type="SEQ_CLS")
    adapted = {name for name, module in model.named_modules() if hasattr(module, "lora_A") and hasattr(module, "r")}
    expected = set()
    for index in range(config.num_hidden_layers):
        layer = f"base_model.model.model.layers.{index}"
        expected |= {f"{layer}.mlp.in_proj", f"{layer}.mlp.out_proj"}
        if overrides.get("sequence_mixer") == "monarch":
            expected |= {f"{layer}.mixer.input_monarch", f"{layer}.mixer.output_monarch"}
        else:
            expected |= {f"{layer}.mixer.in_proj", f"{layer}.mixer.out_proj"}
    assert adapted == expected
    for name in expected:
        module = model.get_submodule(name)
        base = module.get_base_layer()
        structured = isinstance(base, (BlockDiagonalLinear, MonarchLinear))
        assert isinstance(module, BlockDiagonalLoraLayer) == structured, name
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable and all("lora_" in name or "classifier.modules_to_save" in name for name in trainable)
    assert any("mlp.in_proj.lora_block_A" in name for name in trainable)


def test_block_update_equals_its_dense_matrix():
    """An adapted block-diagonal projection computes `(blockdiag(W) + scaling blockdiag(B_b A_b)) x + bias`."""
    torch.manual_seed(0)
    layer = BlockDiagonalLinear(16, 24, nblocks=4)
    wrapped = peft.get_peft_model(nn.Sequential(layer), lora_config(r=2, target_modules=["0"], init_lora_weights=False))
    lora = wrapped.get_submodule("base_model.model.0")
    a, b, scaling = lora.lora_block_A["default"], lora.lora_block_B["default"], lora.scaling["default"]
    assert a.shape == (4, 2, 4) and b.shape == (4, 6, 2) and scaling == 2.0
    delta = torch.block_diag(*[b[i] @ a[i] for i in range(4)]) * scaling
    x = torch.randn(5, 16)
    expected = x @ (dense(layer.weight) + delta).T + layer.bias
    assert torch.allclose(wrapped(x), expected, atol=TOLERANCE)


def test_monarch_update_adapts_the_right_factor():
    torch.manual_seed(0)
    layer = MonarchLinear(16, 16, nblocks=4)
    wrapped = peft.get_peft_model(nn.Sequential(layer), lora_config(r=2, target_modules=["0"], init_lora_weights=False))
    lora = wrapped.get_submodule("base_model.model.0")
    delta = lora.get_delta_weight("default")
    adapted = MonarchLinear(16, 16, nblocks=4)
    adapted.load_state_dict({"right": layer.right + delta, "left": layer.left, "bias": layer.bias})
    x = torch.randn(5, 16)
    assert torch.allclose(wrapped(x), adapted(x), atol=TOLERANCE)


@pytest.mark.parametrize("overrides", CONFIGS.values(), ids=CONFIGS.keys())
def test_merged_adapters_give_the_unmerged_outputs(overrides):
    torch.manual_seed(0)
    base = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=2, **overrides)).eval()
    before = outputs(base, inputs())
    model = get_m2_peft_model(base, r=4, init_lora_weights=False, task_type="SEQ_CLS").eval()
    unmerged = outputs(model, inputs())
    assert (unmerged - before).abs().max() > 1e-3  # the random adapters change the outputs
    merged_model = model.merge_and_unload()
    assert not any(isinstance(module, BlockDiagonalLoraLayer) for module in merged_model.modules())
    assert type(merged_model.model.layers[0].mlp.in_proj) in (BlockDiagonalLinear, MonarchLinear)
    assert torch.allclose(outputs(merged_model, inputs()), unmerged, atol=TOLERANCE)


def test_fine_tuning_only_the_adapters_lowers_the_loss():
    torch.manual_seed(0)
    base = m2_hf.M2ForSequenceClassification(tiny_config(num_labels=2, hidden_dropout_prob=0.0))
    frozen = {name: parameter.detach().clone() for name, parameter in base.named_parameters()}
    model = get_m2_peft_model(base, r=4, task_type="SEQ_CLS")
    model.train()
    # A learnable toy task: is token 7 in the sequence (here and there, the mixers carry it to the pooled token)?
    ids = torch.randint(8, 99, (32, 16))
    labels = torch.randint(0, 2, (32,))
    ids[labels == 1, 5] = 7
    ids[labels == 1, 11] = 7
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)

    def eval_loss() -> float:  # without dropout, so that the comparison does not ride on its noise
        model.eval()
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss.item()
        model.train()
        return loss

    before = eval_loss()
    for _ in range(80):
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.6 * before, (before, after)
    compared = 0
    for name, parameter in model.get_base_model().named_parameters():
        if "lora_" in name or "modules_to_save" in name:  # the adapters and the trained copy of the classifier
            continue
        assert torch.equal(parameter, frozen[name.replace(".base_layer", "").replace(".original_module", "")]), name
        compared += 1
    assert compared == len(frozen)


@pytest.mark.parametrize("overrides", [CONFIGS["block-diagonal"], CONFIGS["monarch-mixer"]], ids=["block", "monarch"])
def test_saved_adapter_reloads_with_the_same_outputs(overrides, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(num_labels=2, **overrides)
    base = m2_hf.M2ForSequenceClassification(config)
    base.save_pretrained(tmp_path / "base")
    model = get_m2_peft_model(base, r=4, init_lora_weights=False, task_type="SEQ_CLS").eval()
    expected = outputs(model, inputs())
    model.save_pretrained(tmp_path / "adapter")
    saved = set(peft.utils.load_peft_weights(str(tmp_path / "adapter")))
    assert any(key.endswith("mlp.in_proj.lora_block_A") for key in saved)
    reloaded_base = m2_hf.M2ForSequenceClassification.from_pretrained(tmp_path / "base", dtype=torch.float32)
    reloaded = load_m2_adapter(reloaded_base, tmp_path / "adapter").eval()
    assert torch.allclose(outputs(reloaded, inputs()), expected, atol=TOLERANCE)


def test_unsupported_lora_options_are_refused():
    model = m2_hf.M2Model(tiny_config())
    with pytest.raises(ValueError, match="does not support use_dora"):
        get_m2_peft_model(model, r=4, use_dora=True)

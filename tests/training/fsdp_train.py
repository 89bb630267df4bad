"""Train a tiny M2ForSequenceClassification sharded with FSDP2 across a torchrun job, and unsharded in one process.

    torchrun --standalone --nproc_per_node 2 tests/training/fsdp_train.py OUTPUT_DIR

Every rank builds the same model. Two sharded copies wrap each `M2Layer` and then the whole model with
`fully_shard` and use activation checkpointing: `sharded` computes in float32, `sharded_bf16` in bfloat16 (float32
parameters and gradient reduction). Both take the original recipe's parameter groups over their sharded parameters
(with SGD), and each rank trains them on its half of every batch. The unsharded copy, `single`, trains in this
process on the whole batches. Rank 0 writes `{name}.safetensors` (the full weights after training) and
`report.json` (the losses, averaged over the ranks for the sharded copies) into OUTPUT_DIR; `test_fsdp.py` compares
them.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for helpers
from helpers import tiny_config  # noqa: E402

import m2_hf  # noqa: E402
from m2_hf.modeling.modeling_m2 import M2Layer  # noqa: E402
from m2_hf.optimization import original_parameter_groups  # noqa: E402

STEPS = 2
# Filter learning rates large enough for plain SGD to move every parameter visibly.
CONFIG = tiny_config(num_labels=2, filter_learning_rate=0.05, filter_features_learning_rate=0.01)
BATCH = 8  # global batch; each of the two ranks takes half


def batches(vocab_size: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(1, vocab_size, (BATCH, 16), generator=generator),
            "labels": torch.randint(0, 2, (BATCH,), generator=generator),
        }
        for _ in range(STEPS)
    ]


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        state[name] = tensor.detach().clone().contiguous()
    return state


def enable_activation_checkpointing(model: m2_hf.M2PreTrainedModel) -> None:
    """`activation_checkpointing_enable` from transformers 5.23 on, `gradient_checkpointing_enable` before."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def shard(model: m2_hf.M2PreTrainedModel, param_dtype: torch.dtype) -> None:
    """Activation checkpointing, then `fully_shard` on every `M2Layer` and on the whole model."""
    enable_activation_checkpointing(model)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, M2Layer):
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)


def optimizer_for(model: torch.nn.Module) -> torch.optim.Optimizer:
    # SGD, unlike Adam, is sensitive to the scale of the gradients, so a wrong reduction over the ranks shows.
    return torch.optim.SGD(original_parameter_groups(model, 0.1, 0.01), momentum=0.9)


def main(output_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    single = m2_hf.M2ForSequenceClassification(CONFIG)
    models = {"sharded": copy.deepcopy(single), "sharded_bf16": copy.deepcopy(single)}
    shard(models["sharded"], torch.float32)
    shard(models["sharded_bf16"], torch.bfloat16)
    layers = [module for module in models["sharded"].modules() if isinstance(module, M2Layer)]
    report = {
        "world_size": world_size,
        "backend": dist.get_backend(),
        "sharded": all(isinstance(p, DTensor) for m in models.values() for p in m.parameters()),
        "checkpointing": bool(layers) and all(layer.gradient_checkpointing for layer in layers),
        "group_names": [group["name"] for group in optimizer_for(models["sharded"]).param_groups],
    }
    optimizers = {name: optimizer_for(model) for name, model in models.items()}
    single_optimizer = optimizer_for(single)
    losses = {name: [] for name in (*models, "single")}
    for batch in batches(CONFIG.vocab_size):
        local = {key: value.chunk(world_size)[rank] for key, value in batch.items()}
        for name, model in models.items():
            loss = model(**local).loss
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            mean_loss = loss.detach().float()
            dist.all_reduce(mean_loss)
            losses[name].append(mean_loss.item() / world_size)

        loss = single(**batch).loss
        loss.backward()
        single_optimizer.step()
        single_optimizer.zero_grad()
        losses["single"].append(loss.item())

    states = {name: full_state(model) for name, model in models.items()}  # collectives: every rank takes part
    if rank == 0:
        for name, state in {**states, "single": full_state(single)}.items():
            save_file(state, output_dir / f"{name}.safetensors")
        (output_dir / "report.json").write_text(json.dumps({**report, "losses": losses}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # Leave without the interpreter's teardown, in which a thread of the distributed runtime has been seen to
    # abort the process ("terminate called without an active exception") after everything was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

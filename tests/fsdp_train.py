"""Train a tiny M2ForSequenceClassification sharded with FSDP2 across a torchrun job, and unsharded in one process.

    torchrun --standalone --nproc_per_node 2 tests/fsdp_train.py OUTPUT_DIR

Every rank builds the same model. The sharded copy wraps each `M2Layer` and then the whole model with
`fully_shard`, uses activation checkpointing, and takes the original recipe's optimizer groups over its sharded
parameters (with SGD); each rank trains it on its half of every batch. The unsharded copy trains in this process on the whole
batches. Rank 0 writes `sharded.safetensors` and `single.safetensors` (the full weights after training) and
`report.json` (the losses, averaged over the ranks for the sharded copy) into OUTPUT_DIR; `test_fsdp.py` compares
them.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

import m2_hf
from m2_hf.modeling.modeling_m2 import M2Layer
from m2_hf.optimization import original_parameter_groups

from helpers import tiny_config  # the script's folder is first on sys.path when it runs as a script

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


def main(output_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    config = CONFIG
    model = m2_hf.M2ForSequenceClassification(config)
    single = copy.deepcopy(model)

    enable_activation_checkpointing(model)
    checkpointing = all(module.gradient_checkpointing for module in model.modules() if isinstance(module, M2Layer))
    policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    for module in model.modules():
        if isinstance(module, M2Layer):
            fully_shard(module, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    sharded = all(isinstance(parameter, DTensor) for parameter in model.parameters())

    # SGD, unlike Adam, is sensitive to the scale of the gradients, so a wrong reduction over the ranks shows.
    optimizer = torch.optim.SGD(original_parameter_groups(model, 0.1, 0.01), momentum=0.9)
    single_optimizer = torch.optim.SGD(original_parameter_groups(single, 0.1, 0.01), momentum=0.9)
    model.train()
    single.train()
    losses, single_losses = [], []
    for batch in batches(config.vocab_size):
        local = {key: value.chunk(world_size)[rank] for key, value in batch.items()}
        loss = model(**local).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        losses.append(mean_loss.item() / world_size)

        single_loss = single(**batch).loss
        single_loss.backward()
        single_optimizer.step()
        single_optimizer.zero_grad()
        single_losses.append(single_loss.item())

    state = full_state(model)  # a collective: every rank takes part
    if rank == 0:
        save_file(state, output_dir / "sharded.safetensors")
        save_file(full_state(single), output_dir / "single.safetensors")
        report = {
            "world_size": world_size,
            "backend": dist.get_backend(),
            "sharded": sharded,
            "checkpointing": checkpointing,
            "losses": losses,
            "single_losses": single_losses,
            "group_names": [group["name"] for group in optimizer.param_groups],
        }
        (output_dir / "report.json").write_text(json.dumps(report))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

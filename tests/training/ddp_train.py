"""Train a tiny M2ForSequenceClassification with `Trainer` on random data in every process of a torchrun job.

    torchrun --standalone --nproc_per_node 2 tests/training/ddp_train.py OUTPUT_DIR

Each rank starts from its own random weights (DDP must broadcast rank 0's), trains on its shard of the data and
writes `initial-rank{R}.safetensors`, `final-rank{R}.safetensors` and `rank{R}.json` (world size, steps, losses)
into OUTPUT_DIR. `test_ddp.py` runs it and compares the ranks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import Trainer, TrainingArguments

import m2_hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from helpers import tiny_config

STEPS = 4


def random_examples(count: int, length: int, vocab_size: int) -> list[dict[str, torch.Tensor]]:
    """The same examples on every rank; Trainer's distributed sampler gives each rank its own part."""
    generator = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(1, vocab_size, (length,), generator=generator),
            "labels": torch.randint(0, 2, (), generator=generator),
        }
        for _ in range(count)
    ]


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}


def main(output_dir: Path) -> None:
    rank = int(os.environ["RANK"])
    torch.manual_seed(1000 + rank)
    config = tiny_config(num_labels=2)
    model = m2_hf.M2ForSequenceClassification(config)
    save_file(state(model), output_dir / f"initial-rank{rank}.safetensors")

    args = TrainingArguments(
        output_dir=str(output_dir / "trainer"),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        learning_rate=1e-2,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        dataloader_num_workers=0,
        disable_tqdm=True,
        ddp_find_unused_parameters=False,  # every M2 parameter gets a gradient
    )
    trainer = Trainer(model=model, args=args, train_dataset=random_examples(64, 16, config.vocab_size))
    trainer.train()

    save_file(state(trainer.model), output_dir / f"final-rank{rank}.safetensors")
    report = {
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "global_step": trainer.state.global_step,
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    }
    (output_dir / f"rank{rank}.json").write_text(json.dumps(report))
    if dist.is_initialized():  # leave together, so that no rank exits while the other's gloo threads still run
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # Leave without the interpreter's teardown, in which a thread of the distributed runtime has been seen to
    # abort the process ("terminate called without an active exception") after everything was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

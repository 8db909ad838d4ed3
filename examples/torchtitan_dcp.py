"""torchtitan with an input pipeline that resumes on another data-parallel degree.

`trainer_config` is the torchtitan config a real run uses: torchtitan's llama3 debug model with
`ResumableTitanDataLoader` reading a packed `ShardedStream`. `main` runs a few steps of torchtitan's own
`CheckpointManager` (dcp.async_save every step, dcp.load at start) on CPU gloo ranks, logging each batch:

    python -m torch_input_ckpt index SHARDS --tokens tokens
    torchrun --nproc-per-node 2 examples/torchtitan_dcp.py SHARDS CKPT 12 batches.jsonl
    torchrun --nproc-per-node 3 examples/torchtitan_dcp.py SHARDS CKPT 12 batches.jsonl   # resumes, 3 ranks
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist
from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw

from torch_input_ckpt.torchtitan import ResumableTitanDataLoader

SEQ_LEN = 8  # each sample: SEQ_LEN + 1 packed tokens (inputs and labels shifted by one)
LOCAL_BATCH = 2


def dataloader_config(shards: str) -> ResumableTitanDataLoader.Config:
    """The loader's part of a torchtitan config: documents' "tokens" packed from an indexed shard directory."""
    return ResumableTitanDataLoader.Config(dataset_path=shards, tokens_field="tokens", seed=7, infinite=False)


def trainer_config(shards: str):  # -> torchtitan.trainer.Trainer.Config
    """torchtitan's llama3 debug model, its data from ``shards``, checkpointed every 5 steps."""
    from torchtitan.models.llama3.config_registry import llama3_debugmodel

    config = llama3_debugmodel()
    config.dataloader = dataloader_config(shards)
    config.training.seq_len = 256
    config.checkpoint.enable = True
    config.checkpoint.interval = 5
    return config


class TrainState:
    """The step, saved beside the model (torchtitan's trainer saves itself as "train_state")."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.step = state["step"]


def main(shards: str, folder: str, steps: int, log_path: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # What torchtitan's trainer does: build the loader from its config with the data-parallel degree and rank.
    loader = dataloader_config(shards).build(
        dp_world_size=world, dp_rank=rank, tokenizer=None, seq_len=SEQ_LEN, local_batch_size=LOCAL_BATCH
    )
    model = torch.nn.Linear(SEQ_LEN, 1)
    optimizer_config = default_adamw(lr=1e-3)
    optimizer_config.implementation = "for-loop"  # CPU
    optimizers = optimizer_config.build(model_parts=[model])
    lr_schedulers = LRSchedulersContainer.Config(warmup_steps=1).build(optimizers=optimizers, training_steps=steps)
    train_state = TrainState()
    # async_mode="async": dcp.async_save on a gloo group of its own; the loader's state is taken in the call.
    checkpointer = CheckpointManager.Config(enable=True, folder=folder, interval=1, async_mode="async").build(
        dataloader=loader,
        model_parts=[model],
        optimizers=optimizers,
        lr_schedulers=lr_schedulers,
        states={"train_state": train_state},
        sd_adapter=None,
    )
    checkpointer.load()  # the newest step-N folder, saved on any number of ranks; nothing at the first start
    batches = iter(loader)
    with open(log_path, "a") as log:
        for step in range(train_state.step + 1, steps + 1):
            batch = next(batches, None)
            if batch is None:
                break
            inputs, labels = batch
            loss = (model(inputs["input"].float()).squeeze(-1) - labels[:, -1].float()).pow(2).mean()
            loss.backward()
            optimizers.step()
            optimizers.zero_grad()
            lr_schedulers.step()
            log.write(
                json.dumps({"step": step, "rank": rank, "world": world, "input": inputs["input"].tolist()}) + "\n"
            )
            log.flush()
            train_state.step = step
            checkpointer.save(step)
    checkpointer.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])

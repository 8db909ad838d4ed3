"""A small DDP training job (CPU, gloo) whose input pipeline resumes exactly, on any number of ranks.

    torchrun --standalone --nproc_per_node 2 examples/train_ddp.py --dir RUN_DIR

Each rank writes input checkpoints every step (``input_<rank>-<step>.json``); rank 0 writes the model
checkpoint every 5 steps. On restart, with the same or another ``--nproc_per_node``, every rank loads the
newest model checkpoint and restores the input pipeline at that step: with another world size the
ranks split what is left of the epoch. Each rank logs what it trained on to
``RUN_DIR/trained_rank<r>.jsonl``; ``ddp_demo.py`` checks the epoch was trained exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader

DATASET_SIZE = 242
BATCH_SIZE = 4


class Points(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return DATASET_SIZE

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        x = torch.tensor([index / DATASET_SIZE]) + torch.randn(1) * 0.01  # a random augmentation
        return x, 2 * x, index


def newest_model_step(run_dir: Path) -> int | None:
    steps = sorted(int(p.stem.split("-")[1]) for p in run_dir.glob("model-*.pt"))
    return steps[-1] if steps else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--job", default="job", help="a name for this job, logged with each step")
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DistributedDataParallel(torch.nn.Linear(1, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Under torch.distributed the default sampler shards over the ranks (like DistributedSampler).
    loader = ResumableDataLoader(Points(), batch_size=BATCH_SIZE, shuffle=True, seed=7)

    step = 0
    with InputCheckpointer(args.dir, loader, every_n_steps=1, keep_last=20) as input_ckpt:
        model_step = newest_model_step(args.dir)
        if model_step is not None:
            saved = torch.load(args.dir / f"model-{model_step:06d}.pt", weights_only=True)
            model.module.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            step = input_ckpt.restore(model_step)  # reshards if the world size changed
        else:
            input_ckpt.restore_or_save_initial()
        if rank == 0:
            print(
                f"world size {world}: starting at step {step}, epoch {loader.epoch}, "
                f"global cursor {loader.sampler.cursor}",
                flush=True,
            )

        with open(args.dir / f"trained_rank{rank}.jsonl", "a") as log:
            for epoch in range(loader.epoch, args.epochs):
                for x, y, index in loader:
                    loss = torch.nn.functional.mse_loss(model(x), y)
                    optimizer.zero_grad()
                    loss.backward()  # DDP's all-reduce keeps the ranks in lockstep
                    optimizer.step()
                    step += 1
                    log.write(
                        json.dumps(
                            {"step": step, "world": world, "epoch": epoch, "job": args.job, "indices": index.tolist()}
                        )
                        + "\n"
                    )
                    log.flush()
                    input_ckpt.after_step(step)
                    if step % 5 == 0:
                        # Every rank's input checkpoint of this step is on disk before the model's.
                        input_ckpt.flush()
                        dist.barrier()
                    if step % 5 == 0 and rank == 0:
                        tmp = args.dir / f".model-{step}.tmp"
                        torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
                        os.replace(tmp, args.dir / f"model-{step:06d}.pt")
                    time.sleep(args.step_delay)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

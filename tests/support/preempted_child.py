"""The training loop that test_sigkill.py kills at random moments: it logs every trained step's batch
(append + flush, before the step is checkpointed) and checkpoints the input pipeline every step.

Usage: python preempted_child.py DIRECTORY LOG TOTAL_STEPS NUM_WORKERS
"""

from __future__ import annotations

import json
import random
import sys

import torch
from torch.utils.data import Dataset

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader


class Augmenting(Dataset):
    """Index plus draws from torch's and Python's global RNGs: a resumed stream must reproduce both."""

    def __len__(self) -> int:
        return 29

    def __getitem__(self, index: int) -> dict:
        return {
            "index": index,
            "torch": torch.randint(0, 10**9, ()).item(),
            "python": random.randrange(10**9),
        }


def main(directory: str, log_path: str, total: int, num_workers: int) -> None:
    loader = ResumableDataLoader(Augmenting(), batch_size=3, shuffle=True, seed=5, num_workers=num_workers)
    train_logged(loader, directory, log_path, total)


def train_logged(
    loader: ResumableDataLoader, directory: str, log_path: str, total: int, storage_options: dict | None = None
) -> None:
    """Train ``total`` steps of ``loader``'s dict batches, resuming from ``directory`` (or an object-store URL with
    ``storage_options``): each step's batch is logged (append + flush) before its input checkpoint is saved, so a
    kill at any moment leaves the log ahead of the newest checkpoint by at most the step in flight."""
    with (
        open(log_path, "a") as log,
        InputCheckpointer(directory, loader, every_n_steps=1, keep_last=2, storage_options=storage_options) as ckpt,
    ):
        step = ckpt.restore_or_save_initial() or 0
        # The leading newline ends a line the previous run may have left half-written when killed.
        log.write("\n" + json.dumps({"restored": step}) + "\n")
        log.flush()
        while step < total:
            for batch in loader:
                step += 1
                log.write(json.dumps({"step": step, "batch": {k: v.tolist() for k, v in batch.items()}}) + "\n")
                log.flush()
                ckpt.after_step(step)
                if step == total:
                    break


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

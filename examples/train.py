"""A small training script whose input pipeline resumes exactly after a preemption.

The model is checkpointed every 5 steps (as a real job would, rarely: it is large); the input pipeline
every step (it is a few hundred bytes). On restart the script loads the newest model checkpoint and
the input checkpoint *of that same step*, so data and weights agree.

    python examples/train.py --dir RUN_DIR --epochs 3

Every trained step is appended to RUN_DIR/trained.jsonl (step, epoch, sample indices, augmentation
draws), which ``preempt_demo.py`` compares with an uninterrupted run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader


class NoisyPoints(Dataset):
    """Points on a line with a random augmentation drawn from torch's and Python's global RNGs."""

    def __len__(self) -> int:
        return 200

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        x = torch.tensor([index / 200.0])
        noise = torch.randn(1) * 0.01 + random.uniform(-0.01, 0.01)  # the augmentation
        return {"index": torch.tensor(index), "x": x + noise, "y": 3 * x + 1}


def latest_model_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = sorted((int(p.stem.split("-")[1]), p) for p in run_dir.glob("model-*.pt"))
    return found[-1] if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds per step, so a kill lands mid-epoch")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = ResumableDataLoader(NoisyPoints(), batch_size=8, shuffle=True, seed=1234, num_workers=2)

    step = 0
    with InputCheckpointer(args.dir, loader, every_n_steps=1, keep_last=10) as input_ckpt:
        newest = latest_model_checkpoint(args.dir)
        if newest is not None:
            step, path = newest
            saved = torch.load(path, weights_only=True)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            input_ckpt.restore(step)  # the input pipeline exactly where the model was saved
            print(f"resumed at step {step}, epoch {loader.epoch}", flush=True)
        else:
            input_ckpt.restore_or_save_initial()

        with open(args.dir / "trained.jsonl", "a") as log:
            for epoch in range(loader.epoch, args.epochs):
                for batch in loader:
                    step += 1
                    loss = torch.nn.functional.mse_loss(model(batch["x"]), batch["y"])
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    record = {
                        "step": step,
                        "epoch": epoch,
                        "indices": batch["index"].tolist(),
                        "x": [round(v, 6) for v in batch["x"].flatten().tolist()],
                    }
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    input_ckpt.after_step(step)
                    if step % 5 == 0:
                        input_ckpt.flush()  # the input checkpoint of this step is on disk before the model's
                        tmp = args.dir / f".model-{step}.tmp"
                        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
                        os.replace(tmp, args.dir / f"model-{step:06d}.pt")
                    time.sleep(args.step_delay)
    print(f"finished at step {step}, loss {loss.item():.5f}", flush=True)


if __name__ == "__main__":
    main()

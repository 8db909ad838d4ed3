"""A small training script whose input pipeline resumes exactly after a preemption.

The quick start (docs/getting-started.md) with a kill switch, for the demo. The model is checkpointed every 5
steps (as a real job would, rarely: it is large); the input pipeline every 2 steps, or every
``--input-every-seconds`` (it is a few hundred bytes), keeping the last 3 — and, whatever the schedule, at every
model step, *pinned*: kept until the model checkpoint is deleted. On restart the script loads the newest model
checkpoint (or the one of ``--resume-from STEP``, a rollback) and the input checkpoint *of that same step*, so data
and weights agree.

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
from typing import Any

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


MODEL_EVERY = 5
KEEP_MODELS = 3


def model_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    return sorted((int(p.stem.split("-")[1]), p) for p in run_dir.glob("model-*.pt"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds per step, so a kill lands mid-epoch")
    parser.add_argument("--input-every-seconds", type=float, default=None, help="a time schedule instead of steps")
    parser.add_argument("--resume-from", type=int, default=None, help="the model step to resume from (a rollback)")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = ResumableDataLoader(NoisyPoints(), batch_size=8, shuffle=True, seed=1234, num_workers=2)

    step = 0
    schedule = {"every_n_seconds": args.input_every_seconds} if args.input_every_seconds else {"every_n_steps": 2}
    with InputCheckpointer(args.dir / "input", loader, keep_last=3, **schedule) as input_ckpt:
        models = dict(model_checkpoints(args.dir))
        if models:
            step = max(models) if args.resume_from is None else args.resume_from
            saved = torch.load(models[step], weights_only=True)
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
                    model_step = step % MODEL_EVERY == 0
                    # On the schedule; at a model step always, pinned: keep_last never prunes it.
                    input_ckpt.after_step(step, pin=model_step)
                    if model_step:
                        save_model(args.dir, step, model, optimizer, input_ckpt)
                    time.sleep(args.step_delay)
    print(f"finished at step {step}, loss {loss.item():.5f}", flush=True)


def save_model(run_dir: Path, step: int, model: Any, optimizer: Any, input_ckpt: InputCheckpointer) -> None:
    input_ckpt.flush()  # the input checkpoint of this step is on disk before the model's
    tmp = run_dir / f".model-{step}.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, run_dir / f"model-{step:06d}.pt")
    for old_step, path in model_checkpoints(run_dir)[:-KEEP_MODELS]:
        path.unlink()
        input_ckpt.unpin(old_step)  # its input checkpoint may go now


if __name__ == "__main__":
    main()

"""A tiny Hugging Face Trainer run that test_hf_trainer.py kills and resumes (alone or under torchrun).

Each optimizer step appends one JSON line per rank to LOG: the step, the Trainer's epoch, and the
sample ids and augmentation draws the model saw in it (all micro-batches). With --kill-at S, every
rank SIGKILLs itself right after step S has been logged.

Usage: python hf_trainer_child.py OUTPUT_DIR LOG [--resume] [--kill-at S] [--max-steps N | --epochs E]
       [--accumulation G] [--workers W] [--save-steps K] [--limit L] [--length N] [--stock]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments

from torch_input_ckpt.hf import ResumableTrainer

SEEN: list[list[float]] = []


class TinyConfig(PretrainedConfig):
    model_type = "tic_tiny_linear"

    def __init__(self, width: int = 4, **kwargs: object) -> None:
        self.width = width
        super().__init__(**kwargs)


class TinyModel(PreTrainedModel):
    """A linear regression wrapped as a PreTrainedModel; it records the ids of what it trains on."""

    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.linear = nn.Linear(config.width, 1)
        self.post_init()

    def forward(self, x: torch.Tensor, labels: torch.Tensor, sample_id: torch.Tensor) -> dict:
        SEEN.extend([int(i), round(float(v), 6)] for i, v in zip(sample_id, x[:, 0], strict=True))
        loss = ((self.linear(x).squeeze(-1) - labels) ** 2).mean()
        return {"loss": loss}


class Samples(Dataset):
    """Sample i: an augmentation drawn from torch's global RNG in __getitem__, and its id."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {"x": torch.rand(4), "labels": torch.tensor(float(index % 7)), "sample_id": index}


class Log(TrainerCallback):
    def __init__(self, path: str, kill_at: int | None) -> None:
        self.path = path
        self.kill_at = kill_at

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201 - the Trainer's signature
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        line = {"rank": rank, "world": world, "step": state.global_step, "epoch": state.epoch, "seen": SEEN}
        with open(self.path, "a") as log:
            log.write(json.dumps(line) + "\n")
            log.flush()
            os.fsync(log.fileno())
        SEEN.clear()
        if state.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


def run(argv: list[str] | None = None) -> None:
    """Parse the command line (or ``argv``) and train."""
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("log")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--save-steps", type=int, default=3)
    parser.add_argument("--limit", type=int)
    parser.add_argument("--length", type=int, default=60)
    parser.add_argument("--stock", action="store_true")
    a = parser.parse_args(argv)
    args = TrainingArguments(
        output_dir=a.output_dir,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=a.accumulation,
        max_steps=a.max_steps,
        num_train_epochs=a.epochs,
        save_strategy="steps",
        save_steps=a.save_steps,
        save_total_limit=a.limit,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        dataloader_num_workers=a.workers,
        seed=0,
        disable_tqdm=True,
        learning_rate=1e-2,
    )
    torch.manual_seed(0)
    model = TinyModel(TinyConfig())
    cls = Trainer if a.stock else ResumableTrainer
    trainer = cls(model=model, args=args, train_dataset=Samples(a.length), callbacks=[Log(a.log, a.kill_at)])
    trainer.train(resume_from_checkpoint=True if a.resume else None)


def _exit_without_teardown() -> None:
    """Leave as soon as every rank is done. At interpreter exit, gloo's threads sometimes abort a rank
    ("terminate called without an active exception", exit -6) after its work is done and written, and
    torchrun reports the job as failed; destroying the process group first made the 3-rank resume hang.
    The barrier makes sure no rank is still in a collective when the others leave."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    run()
    _exit_without_teardown()

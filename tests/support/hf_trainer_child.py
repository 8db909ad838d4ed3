"""A tiny Hugging Face Trainer run that test_hf_trainer.py and test_hf_kill.py kill and resume (alone or
under torchrun), and the helpers those tests start, wait for and read its runs with.

Each optimizer step appends one JSON line per rank to LOG: the step, the Trainer's epoch, and the
sample ids and augmentation draws the model saw in it (all micro-batches). With --kill-at S, every
rank SIGKILLs itself right after step S has been logged. With HF_CHILD_KILL=PHASE:S in the
environment, it SIGKILLs itself at that phase of the save of checkpoint-S (see KILL_PHASES).
--resume resumes with resume_from_checkpoint=True; --resume-last with the README's
get_last_checkpoint(OUTPUT_DIR).

Usage: python hf_trainer_child.py OUTPUT_DIR LOG [--resume | --resume-last] [--kill-at S]
       [--max-steps N | --epochs E] [--accumulation G] [--workers W] [--save-steps K] [--limit L]
       [--length N] [--stock]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from transformers import PretrainedConfig, PreTrainedModel, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import TrainerState
from transformers.trainer_utils import get_last_checkpoint

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


# -- SIGKILL at one phase of a save (HF_CHILD_KILL=PHASE:STEP) -----------------------------------------

KILL_PHASES = ("before-input", "after-input", "mid-model", "before-state", "after-save")
"""In the order of a save: at the mixin's _save_checkpoint (nothing written); at Trainer.save_model
(the input checkpoint written, nothing of the Trainer's); after save_model with model.safetensors cut
to half its bytes (a kill while it was written); at TrainerState.save_to_json (model, optimizer,
scheduler and RNG states written, not trainer_state.json); after the whole _save_checkpoint."""


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_kill(phase: str, step: int) -> None:
    """Patch the Trainer classes of this process so that it SIGKILLs itself at ``phase`` of saving ``step``."""
    if phase not in KILL_PHASES:
        raise SystemExit(f"HF_CHILD_KILL: unknown phase {phase!r} (expected one of {KILL_PHASES})")
    save_checkpoint, save_model, save_state = (
        ResumableTrainer._save_checkpoint,
        Trainer.save_model,
        TrainerState.save_to_json,
    )

    def _save_checkpoint(self, model, trial):  # noqa: ANN001, ANN202 - the Trainer's signature
        at = self.state.global_step == step
        if at and phase == "before-input":
            _die()
        save_checkpoint(self, model, trial)
        if at and phase == "after-save":
            _die()

    def _save_model(self, output_dir=None, _internal_call=False):  # noqa: ANN001, ANN202, FBT002
        at = self.state.global_step == step
        if at and phase == "after-input":
            _die()
        save_model(self, output_dir, _internal_call)
        if at and phase == "mid-model":
            weights = os.path.join(output_dir, "model.safetensors")
            os.truncate(weights, os.path.getsize(weights) // 2)
            _die()

    def _save_to_json(self, json_path):  # noqa: ANN001, ANN202
        if phase == "before-state" and os.path.basename(os.path.dirname(json_path)) == f"checkpoint-{step}":
            _die()
        save_state(self, json_path)

    ResumableTrainer._save_checkpoint = _save_checkpoint
    Trainer.save_model = _save_model
    TrainerState.save_to_json = _save_to_json


def run(argv: list[str] | None = None) -> None:
    """Parse the command line (or ``argv``) and train."""
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("log")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--resume-last", action="store_true")
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
    resume = True if a.resume else None
    if a.resume_last:  # the README's recipe
        resume = get_last_checkpoint(a.output_dir) if os.path.isdir(a.output_dir) else None
    trainer.train(resume_from_checkpoint=resume)


# -- for the tests: start a run of this script, wait for it, read what it wrote -----------------------

CHILD = Path(__file__).with_name("hf_trainer_child.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT = 180


def child_env() -> dict[str, str]:
    """The environment of a run: this checkout on the path, one thread, nothing downloaded."""
    from tests.support.paths import child_env as with_checkout  # noqa: PLC0415 - only the tests start runs

    return with_checkout(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")


def start(
    out: Path, log: Path, flags: list[str], ranks: int = 0, env: dict[str, str] | None = None, server: Any = None
) -> Any:
    """One child run; ``ranks`` > 0 starts it under torchrun with that many processes; ``env`` is added to its
    environment. With ``server`` (a :class:`tests.support.forked.ForkServer` started with :func:`child_env`, that
    imported this module), a single process forked from it: no interpreter start, no transformers import."""
    if server is not None:
        assert not ranks, "torchrun starts its ranks itself"
        return server.start(CHILD, out, log, *flags, env=env, stdout=True)
    command = [sys.executable, str(CHILD)]
    if ranks:
        from tests.support.distributed import free_port  # noqa: PLC0415 - only the tests start runs

        port = str(free_port())
        command = [str(TORCHRUN), f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1", f"--master_port={port}"]
        command.append(str(CHILD))
    return subprocess.Popen(
        [*command, str(out), str(log), *flags],
        env={**child_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a killed run's workers and ranks are one group: nothing is left behind
    )


def wait(proc: Any) -> tuple[int, str]:
    """The exit code and output of a run, failing the test past TIMEOUT; kills what the run left behind."""
    if not isinstance(proc, subprocess.Popen):  # forked from a server (start(..., server=...))
        with proc.stderr:
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                raise AssertionError(
                    f"{proc.pid} did not finish in {TIMEOUT} s:\n{proc.stderr.read().decode()[-3000:]}"
                ) from None
            output = proc.stderr.read().decode()
        try:  # workers orphaned by a SIGKILL
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return proc.returncode, output
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:  # a rank in a session of its own (torchrun's) still holds the pipe
            proc.stdout.close()  # type: ignore[union-attr]
            proc.wait()
            output = b""
        raise AssertionError(f"{proc.args} did not finish in {TIMEOUT} s:\n{output.decode()[-3000:]}") from None
    try:  # workers orphaned by a SIGKILL
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.returncode, output.decode()


def read_log(log: Path) -> list[dict[str, Any]]:
    """The lines of a LOG, parsed."""
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def paired_checkpoints(out: Path) -> dict[int, list[str]]:
    """Each ``checkpoint-<step>``'s step -> the input files inside it; asserts they are of that step."""
    found = {}
    for directory in sorted(out.glob("checkpoint-*")):
        step = int(directory.name.split("-")[1])
        state = json.loads((directory / "trainer_state.json").read_text())
        assert state["global_step"] == step
        files = sorted(p.name for p in (directory / "input").glob("input_*.json"))
        assert files and all(name.endswith(f"-{step:08d}.json") for name in files), (directory, files)
        found[step] = files
    return found


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
    if os.environ.get("HF_CHILD_KILL"):
        kill_phase, _, kill_step = os.environ["HF_CHILD_KILL"].partition(":")
        _install_kill(kill_phase, int(kill_step))
    run()
    _exit_without_teardown()

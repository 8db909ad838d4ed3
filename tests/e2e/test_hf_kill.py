"""The README's "run it, kill it, run it again" with a SIGKILL at every phase of a Trainer checkpoint save.

tests/support/hf_trainer_child.py trains 9 steps, saving every 3; HF_CHILD_KILL=PHASE:6 makes it SIGKILL itself at
PHASE of the save of checkpoint-6 (checkpoint-3 is complete by then). transformers writes the folder file by
file, so every phase but the first leaves a checkpoint-6 that ``get_last_checkpoint`` picks. Run again, with
``resume_from_checkpoint=True`` or the README's ``get_last_checkpoint(out)``, the Trainer resumes from
checkpoint-6 if its save finished, else from checkpoint-3 with an ``IncompleteCheckpointWarning``; either way
every step after the resume point trains on the uninterrupted run's batches, and the checkpoint files it
writes (input states, model weights) are the uninterrupted run's.
"""

from __future__ import annotations

import json
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

import pytest
from transformers.trainer_utils import get_last_checkpoint

from torch_input_ckpt.hf import IncompleteCheckpointWarning

from tests.support import hf_trainer_child
from tests.support.forked import ForkServer
from tests.support.hf_trainer_child import paired_checkpoints, read_log, start, wait

FLAGS = ["--max-steps", "9", "--save-steps", "3", "--length", "40"]  # 20 batches of 2: all in epoch 0
KILLED_AT = 6
# What the kill at each phase leaves in checkpoint-6, and the step the rerun resumes from.
MODEL = ["config.json", "input", "model.safetensors", "training_args.bin"]
STATES = ["optimizer.pt", "rng_state.pth", "scheduler.pt"]
LEFT = {
    "before-input": (None, 3),
    "after-input": (["input"], 3),
    "mid-model": (MODEL, 3),
    "before-state": (sorted(MODEL + STATES), 3),
    "after-save": (sorted([*MODEL, *STATES, "trainer_state.json"]), 6),
}
assert tuple(LEFT) == hf_trainer_child.KILL_PHASES
# How the rerun is asked to resume (both of the README's ways), and in which process.
RESUME = {
    "before-input": "--resume",
    "after-input": "--resume-last",  # the case, in a fresh process
    "mid-model": "--resume-last",
    "before-state": "--resume",
    "after-save": "--resume-last",
}


def _left(out: Path) -> dict[str, Any]:
    """What a kill left: checkpoint-6's files (None: no folder), its weights' size, what the recipe picks."""
    folder = out / f"checkpoint-{KILLED_AT}"
    files = sorted(p.name for p in folder.iterdir()) if folder.exists() else None
    weights = folder / "model.safetensors"
    return {
        "files": files,
        "weights": weights.stat().st_size if weights.exists() else None,
        "picked": get_last_checkpoint(str(out)),
    }


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory, hf_forkserver: ForkServer) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("hf_kill")
    # The killed runs forked from a server that imported transformers (no interpreter start each); the resume of
    # the case below is a fresh interpreter.
    runs = {
        phase: start(
            base / phase,
            base / f"{phase}.log",
            FLAGS,
            env={"HF_CHILD_KILL": f"{phase}:{KILLED_AT}"},
            server=hf_forkserver,
        )
        for phase in LEFT
    }
    finished = {"after-input": wait(runs.pop("after-input"))}
    left = {"after-input": _left(base / "after-input")}
    # The same kill with no complete checkpoint older than the one left incomplete.
    shutil.copytree(base / "after-input", base / "no-older")
    shutil.rmtree(base / "no-older" / "checkpoint-3")
    shutil.copy(base / "after-input.log", base / "no-older.log")
    # The case, run again in a fresh process with the README's recipe, while the others run.
    fresh = start(base / "after-input", base / "after-input.log", [*FLAGS, RESUME["after-input"]])
    hf_trainer_child.run([str(base / "ref"), str(base / "ref.log"), *FLAGS])  # uninterrupted, here
    finished.update((phase, wait(proc)) for phase, proc in runs.items())
    fresh_run = wait(fresh)  # all reaped before any assertion
    for phase, (code, output) in finished.items():
        assert code == -signal.SIGKILL, f"{phase}:\n{output[-3000:]}"
        left.setdefault(phase, _left(base / phase))
    reference = {line["step"]: line for line in read_log(base / "ref.log")}
    assert sorted(reference) == list(range(1, 10))
    return {"dir": base, "reference": reference, "left": left, "fresh_run": fresh_run}


def _resume(base: Path, name: str, flag: str) -> None:
    """Run the child again on ``name``'s folder, in this process."""
    hf_trainer_child.run([str(base / name), str(base / f"{name}.log"), *FLAGS, flag])


def _check_resumed_exactly(killed: dict[str, Any], name: str, resumed_from: int) -> None:
    """The steps after ``resumed_from`` trained on the reference's batches, and wrote its checkpoint files."""
    base, reference = killed["dir"], killed["reference"]
    lines = read_log(base / f"{name}.log")[KILLED_AT:]  # after the killed run's steps 1..6
    assert [line["step"] for line in lines] == list(range(resumed_from + 1, 10))
    for line in lines:  # same samples, same order, same augmentation draws
        assert line["seen"] == reference[line["step"]]["seen"], line["step"]
        assert line["epoch"] == pytest.approx(reference[line["step"]]["epoch"])
    assert paired_checkpoints(base / name) == {step: [f"input_0-{step:08d}.json"] for step in (3, 6, 9)}
    for step in (6, 9):  # a checkpoint-6 left incomplete was written over, completely
        ours, theirs = base / name / f"checkpoint-{step}", base / "ref" / f"checkpoint-{step}"
        assert sorted(p.name for p in ours.iterdir()) == sorted(p.name for p in theirs.iterdir())
        states = [json.loads((d / "input" / f"input_0-{step:08d}.json").read_text())["states"] for d in (ours, theirs)]
        assert states[0] == states[1], f"input checkpoint of step {step}"
        assert (ours / "model.safetensors").read_bytes() == (theirs / "model.safetensors").read_bytes(), step


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(LEFT))
def test_killed_at_every_phase_of_a_save_runs_again_exactly(killed: dict[str, Any], phase: str) -> None:
    base, left = killed["dir"], killed["left"][phase]
    files, resumed_from = LEFT[phase]
    folder = base / phase / f"checkpoint-{KILLED_AT}"
    assert read_log(base / f"{phase}.log")[KILLED_AT - 1]["step"] == KILLED_AT, "killed after step 6"
    assert left["files"] == files, "the kill happened where it says: this is what the folder held"
    assert left["picked"] == str(base / phase / f"checkpoint-{3 if files is None else KILLED_AT}"), "the recipe's"
    if phase == "mid-model":  # cut short while written
        whole = (base / "ref" / f"checkpoint-{KILLED_AT}" / "model.safetensors").stat().st_size
        assert left["weights"] == whole // 2
    if phase == "after-input":  # resumed in the fixture, in a fresh process
        code, output = killed["fresh_run"]
        assert code == 0, output[-3000:]
        assert f"IncompleteCheckpointWarning: {folder} is incomplete: it has no trainer_state.json" in output
        assert f"resuming from {base / phase / 'checkpoint-3'}, the newest complete checkpoint before it" in output
    elif resumed_from == KILLED_AT or files is None:  # nothing incomplete to skip: no warning
        with warnings.catch_warnings():
            warnings.simplefilter("error", IncompleteCheckpointWarning)
            _resume(base, phase, RESUME[phase])
    else:
        with pytest.warns(IncompleteCheckpointWarning, match=f"checkpoint-{KILLED_AT} is incomplete: it has no"):
            _resume(base, phase, RESUME[phase])
    _check_resumed_exactly(killed, phase, resumed_from)


@pytest.mark.slow
def test_killed_in_the_first_save_starts_over_cleanly(killed: dict[str, Any]) -> None:
    with pytest.warns(
        IncompleteCheckpointWarning, match="no complete checkpoint is older: training starts from step 0"
    ):
        _resume(killed["dir"], "no-older", "--resume-last")
    _check_resumed_exactly(killed, "no-older", 0)

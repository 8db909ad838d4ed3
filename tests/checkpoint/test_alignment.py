"""Input checkpoints aligned with model checkpoints (pinned, never pruned), one writer per directory and rank,
a silent ``"ignore"`` policy, and a restore that is visible by default."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from torch_input_ckpt import (
    InputCheckpointer,
    InputCheckpointWarning,
    InputStateError,
    ResumableDataLoader,
    ResumableSampler,
)
from torch_input_ckpt.store import files

from tests.support.resume import epochs_of, to_py

REPO = Path(__file__).resolve().parents[2]


def make_loader() -> ResumableDataLoader:
    return ResumableDataLoader(list(range(30)), batch_size=2, shuffle=True, seed=4)


def train(directory: Path, steps: int, model_every: int, **kwargs) -> tuple[list, dict[int, list]]:
    """The Quick start loop: input checkpoints on a schedule, a model checkpoint every ``model_every``
    steps (its input checkpoint pinned). Returns the batches, and the batches after each model step."""
    loader = make_loader()
    stream = epochs_of(loader, 100)
    batches = []
    with InputCheckpointer(directory, loader, **kwargs) as ckpt:
        for step in range(1, steps + 1):
            batches.append(to_py(next(stream)))
            ckpt.after_step(step, pin=step % model_every == 0)
    stream.close()
    return batches


def resumed(directory: Path, step: int, count: int) -> list:
    """A fresh job restoring the input checkpoint of the model's ``step``, then ``count`` batches."""
    loader = make_loader()
    with InputCheckpointer(directory, loader, every_n_steps=1000) as ckpt:
        assert ckpt.restore(step) == step
    stream = epochs_of(loader, 100)
    out = [to_py(next(stream)) for _ in range(count)]
    stream.close()
    return out


def test_keep_last_never_prunes_the_model_aligned_checkpoints(tmp_path):
    """Input every 4 steps, model every 10, keep_last=3, stopped at 26: steps 10 and 20 are still there,
    and a rollback to the model of step 10 continues exactly the uninterrupted stream."""
    batches = train(tmp_path, 26, model_every=10, every_n_steps=4, keep_last=3)
    assert files.list_steps(tmp_path) == {0: [10, 12, 16, 20, 24]}  # 3 unpinned + the 2 pinned
    assert files.pinned_steps(tmp_path, 0) == [10, 20]
    assert resumed(tmp_path, 10, 16) == batches[10:26]
    assert resumed(tmp_path, 20, 6) == batches[20:26]


def test_pins_survive_a_restart_and_unpin_lets_pruning_delete(tmp_path):
    train(tmp_path, 26, model_every=10, every_n_steps=4, keep_last=3)
    loader = make_loader()
    with InputCheckpointer(tmp_path, loader, every_n_steps=4, keep_last=3) as ckpt:
        assert ckpt.restore() == 24  # the newest (26 was not saved)
        for step in (28, 32, 36):
            ckpt.save(step)
        assert ckpt.steps() == [10, 20, 28, 32, 36]  # the restarted job pruned 16 and 24, not the pins
        assert ckpt.pinned() == [10, 20]
        assert ckpt.unpin(10) is True and ckpt.unpin(10) is False
        assert ckpt.steps() == [20, 28, 32, 36]
        ckpt.pin(32)
        ckpt.save(40)
        assert ckpt.steps() == [20, 28, 32, 36, 40] and ckpt.pinned() == [20, 32]
        with pytest.raises(InputStateError, match="no input checkpoint of rank 0 at step 33 to pin"):
            ckpt.pin(33)


def test_every_n_seconds_users_get_the_model_step_from_the_call_they_already_make(tmp_path):
    """A time schedule that is not due (an hour) still saves, and pins, the model's step 7."""
    batches = train(tmp_path, 12, model_every=7, every_n_seconds=3600, keep_last=1)
    assert files.pinned_steps(tmp_path, 0) == [7]
    assert resumed(tmp_path, 7, 5) == batches[7:12]


def test_a_second_checkpointer_on_the_same_directory_and_rank_fails_naming_the_holder(tmp_path):
    first = InputCheckpointer(tmp_path, ResumableSampler(10), every_n_steps=1)
    message = (
        f"{tmp_path}: the input checkpoints of rank 0 are already being written by another checkpointer "
        f"(pid {os.getpid()} on host {socket.gethostname()}"
    )
    with pytest.raises(RuntimeError, match=re.escape(message)):
        InputCheckpointer(tmp_path, ResumableSampler(10), every_n_steps=1)
    other_rank = InputCheckpointer(tmp_path, ResumableSampler(10), every_n_steps=1, rank=1)  # its own lock
    first.save(1)
    first.close()
    other_rank.close()
    with InputCheckpointer(tmp_path, ResumableSampler(10), every_n_steps=1) as again:  # released by close()
        assert again.steps() == [1]


HOLD = """
import sys, time
from torch_input_ckpt import InputCheckpointer, ResumableSampler
ckpt = InputCheckpointer(sys.argv[1], ResumableSampler(10), every_n_steps=1)
ckpt.save(3)
ckpt.flush()
print("holding", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_the_lock_of_a_live_process_is_refused_and_a_killed_ones_taken_over_with_a_warning(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "holding\n"
        with pytest.raises(RuntimeError, match=f"pid {child.pid} on host {re.escape(socket.gethostname())}"):
            InputCheckpointer(tmp_path, ResumableSampler(10), every_n_steps=1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        child.stdout.close()
    with pytest.warns(
        InputCheckpointWarning,
        match=f"taking over the writer lock of rank 0 left by pid {child.pid} on host .*no longer running",
    ):
        ckpt = InputCheckpointer(tmp_path, ResumableSampler(10), every_n_steps=1)
    assert ckpt.restore() == 3
    ckpt.close()


class Stream(IterableDataset):
    """An iterable without state: torchdata replays it to resume."""

    def __iter__(self):
        return iter(range(20))


@pytest.mark.parametrize("policy", ["ignore", "warn"])
def test_ignore_is_silent_and_warn_is_not(tmp_path, policy, caplog):
    loader = StatefulDataLoader(Stream(), batch_size=2)
    stream = iter(loader)
    for _ in range(3):
        next(stream)
    with InputCheckpointer(tmp_path, loader, every_n_steps=1, external_state_policy=policy) as ckpt:
        if policy == "warn":
            with pytest.warns(UserWarning, match="will not capture"):
                ckpt.save(3)
        else:
            ckpt.save(3)
    fresh = StatefulDataLoader(Stream(), batch_size=2)
    with caplog.at_level(logging.INFO):
        with InputCheckpointer(tmp_path, fresh, every_n_steps=1, external_state_policy=policy) as ckpt:
            ckpt.restore()
            assert [b.tolist() for b in fresh][0] == [6, 7]  # resumed (by replay)
    noticed = any("naively fast-forwarding" in r.getMessage() for r in caplog.records)
    assert noticed is (policy == "warn")
    assert [b.tolist() for b in StatefulDataLoader(Stream(), batch_size=2)][0] == [0, 1]


@pytest.mark.slow
def test_a_restore_prints_one_line_without_any_logging_setup(tmp_path):
    with InputCheckpointer(tmp_path, ResumableSampler(10), every_n_steps=1) as ckpt:
        ckpt.save(5)
    script = (
        "import sys\n"
        "from torch_input_ckpt import InputCheckpointer, ResumableSampler\n"
        "with InputCheckpointer(sys.argv[1], ResumableSampler(10), every_n_steps=1) as ckpt:\n"
        "    ckpt.restore()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"restored input pipeline from {tmp_path}/input_0-00000005.json")

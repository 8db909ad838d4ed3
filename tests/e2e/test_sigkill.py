"""SIGKILL a training process (and its DataLoader workers) at random moments, restart it each time:
the stream the model trained on, step by step, equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from torch_input_ckpt.store import files

from tests.support import preempted_child
from tests.support.paths import SUPPORT
from tests.support.resume import release, start_child

CHILD = SUPPORT / "preempted_child.py"
TOTAL = 60  # steps: 10 batches per epoch, 6 epochs
TIMEOUT = 30  # seconds, for any one wait


def start(directory: Path, log: Path, workers: int) -> subprocess.Popen:
    # Its own session and process group, so that killing the group also kills the DataLoader workers.
    return start_child(CHILD, directory, log, TOTAL, workers)


def records(log: Path) -> list[dict]:
    """The parsed log lines; a line cut short by a kill is not a record."""
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def wait_for_records(proc: subprocess.Popen, log: Path, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while len(records(log)) < count:
        assert proc.poll() is None, f"child exited early ({proc.returncode}): {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "child made no progress"
        time.sleep(0.002)


def wait_for_commit(proc: subprocess.Popen, directory: Path) -> None:
    """Until the pointer names a step above 0 (a commit of this or an earlier run)."""
    deadline = time.monotonic() + TIMEOUT
    while not (directory / "checkpoint_input_0").exists() or not files.read_pointer(directory, 0):
        assert proc.poll() is None, f"child exited early ({proc.returncode}): {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "child committed no checkpoint"
        time.sleep(0.002)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child and its DataLoader workers (its process group), and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # already gone (e.g. it failed early): keep the original error
        pass
    proc.wait(timeout=TIMEOUT)


def finish(proc: subprocess.Popen) -> None:
    try:
        _, err = proc.communicate(timeout=TIMEOUT * 2)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise
    assert proc.returncode == 0, err.decode()


def trained_stream(log: Path) -> tuple[list, list[int]]:
    """Replay the log as the model saw it: a restore to step S discards what was trained after S."""
    trained: list = []
    restores: list[int] = []
    for record in records(log):
        if "restored" in record:
            step = record["restored"]
            assert step <= len(trained), f"restored to step {step}, but the killed run only trained {len(trained)}"
            assert not restores or step >= restores[-1], f"restore went back from {restores[-1]} to {step}"
            restores.append(step)
            del trained[step:]
        else:
            assert record["step"] == len(trained) + 1, f"step {record['step']} after {len(trained)} trained steps"
            trained.append(record["batch"])
    return trained, restores


@pytest.mark.slow
@pytest.mark.parametrize(("workers", "kills"), [(0, 12), (2, 8)])
def test_sigkill_at_random_moments_resumes_the_exact_stream(tmp_path, forkserver, workers, kills):
    # The uninterrupted run, in this process: a fresh interpreter is what the killed runs test, not the reference.
    reference_log = tmp_path / "reference.jsonl"
    preempted_child.main(str(tmp_path / "reference"), str(reference_log), TOTAL, workers)
    release(workers > 0)
    expected, _ = trained_stream(reference_log)
    assert len(expected) == TOTAL

    rng = random.Random(1000 + workers)
    directory, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    log.touch()
    for kill in range(kills):
        before = len(records(log))
        # Forked from a server that has imported torch: a separate process group, killed with its workers, that
        # holds nothing of an earlier run, without an interpreter start per kill. The final run below is a fresh
        # interpreter, as a restarted job is.
        proc = forkserver.start(CHILD, directory, log, TOTAL, workers)
        try:
            # Its restore record, then 1-5 trained steps, then a random instant (often mid-save).
            wait_for_records(proc, log, before + 1 + rng.randint(1, 5))
            if kill == kills - 1:
                # On a loaded machine every kill may land before the first commit; make sure the last
                # killed run committed something, so that the final run has to restore (not start over).
                wait_for_commit(proc, directory)
            time.sleep(rng.uniform(0, 0.004))
        finally:
            kill_group(proc)
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, "the child finished before it was killed: raise TOTAL"
    proc = start(directory, log, workers)
    finish(proc)

    trained, restores = trained_stream(log)
    assert len(restores) == kills + 1 and restores[0] == 0 and restores[-1] > 0
    assert trained == expected
    # What is left: the last keep_last=2 checkpoints, the pointer, the lock, no temporaries of killed saves.
    assert sorted(p.name for p in directory.iterdir()) == [
        "checkpoint_input_0",
        f"input_0-{TOTAL - 1:08d}.json",
        f"input_0-{TOTAL:08d}.json",
        "input_0.lock",  # the kernel released the killed writers' flocks; the last run emptied the file
    ]
    assert (directory / "input_0.lock").read_bytes() == b""
    assert files.read_pointer(directory, 0) == TOTAL

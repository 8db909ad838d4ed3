"""The Quick start loop as written (examples/train.py: model checkpoints every 5 steps, input checkpoints
every 2 steps or an hour, keep_last=3, model steps pinned), SIGKILLed with its 2 workers at a random
step and resumed from any surviving model checkpoint: every step trains on the uninterrupted run's data."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.forked import ForkServer

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train.py"
EPOCHS = 2  # 25 steps each
TIMEOUT = 120


def _command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--dir", str(run_dir), "--epochs", str(EPOCHS), *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def _trained(run_dir: Path) -> list[dict]:
    path = run_dir / "trained.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
    return out


def _killed_at(forkserver: ForkServer, run_dir: Path, step: int, *extra: str) -> None:
    # Forked from the server that imported torch (tests/support/forkserver.py): its own process group, killed with
    # its workers; the resume that follows is a fresh interpreter.
    proc = forkserver.start(*_command(run_dir, "--step-delay", "0.02", *extra)[1:])
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(_trained(run_dir)) < step:
            assert proc.poll() is None, f"training exited early ({proc.returncode})"
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the main process and its DataLoader workers
        proc.wait(timeout=30)
        proc.stderr.close()


def _model_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in run_dir.glob("model-*.pt"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, forkserver) -> dict[int, dict]:
    run_dir = tmp_path_factory.mktemp("reference")
    run = forkserver.start(*_command(run_dir)[1:])  # uninterrupted: not what is tested, no interpreter start
    with run.stderr:
        assert run.wait(timeout=TIMEOUT) == 0, run.stderr.read().decode()[-3000:]
    return {record["step"]: record for record in _trained(run_dir)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "schedule,rollback",
    [((), "oldest"), (("--input-every-seconds", "3600"), "newest")],
    ids=["every-2-steps-rollback", "every-hour-newest"],
)
def test_the_quick_start_resumes_exactly_from_any_surviving_model_checkpoint(
    tmp_path, forkserver, reference, schedule, rollback
):
    kill_at = random.Random(os.getpid()).randrange(17, 2 * 25 - 3)
    _killed_at(forkserver, tmp_path, kill_at, *schedule)
    models = _model_steps(tmp_path)
    assert len(models) >= 2, models
    step = models[0] if rollback == "oldest" else models[-1]
    before = [r for r in _trained(tmp_path) if r["step"] <= step]
    log = tmp_path / "trained.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in before))
    done = subprocess.run(
        _command(tmp_path, "--resume-from", str(step), *schedule),
        env=_env(),
        timeout=TIMEOUT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert f"restored input pipeline from {tmp_path / 'input'}" in done.stderr, "the restore is said by default"
    resumed = _trained(tmp_path)
    assert [r["step"] for r in resumed] == sorted(reference), "every step once, in order"
    assert resumed == [reference[s] for s in sorted(reference)], f"diverged after resuming from model step {step}"

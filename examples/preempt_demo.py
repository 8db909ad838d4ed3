"""Preempt a training job with SIGKILL mid-epoch, restart it, and check the data it trained on.

Runs ``train.py`` once uninterrupted, then again with a SIGKILL to its whole process group (workers
included) in the middle of an epoch, followed by a restart that resumes from the newest model
checkpoint and the input checkpoint of the same step. Prints the two streams side by side around
the preemption and whether every step saw the same samples with the same augmentation draws.

    python examples/preempt_demo.py            (or: make demo)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EPOCHS = 3
KILL_AT_STEP = 37  # 25 steps per epoch: mid-epoch 2


def run(run_dir: Path, *, kill_at: int | None = None) -> None:
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, str(HERE / "train.py"), "--dir", str(run_dir), "--epochs", str(EPOCHS)]
    if kill_at is None:
        subprocess.run(cmd, env=env, check=True, timeout=300)
        return
    proc = subprocess.Popen(cmd + ["--step-delay", "0.05"], env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while trained_steps(run_dir) < kill_at:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"training exited or stalled before step {kill_at}")
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: main process and its DataLoader workers
    proc.wait(timeout=30)
    print(f"-- SIGKILL after step {trained_steps(run_dir)} (mid-epoch); restarting --", flush=True)
    subprocess.run(cmd, env=env, check=True, timeout=300)


def trained_steps(run_dir: Path) -> int:
    path = run_dir / "trained.jsonl"
    if not path.exists():
        return 0
    with open(path) as lines:
        return sum(1 for _ in lines)


def stream(run_dir: Path) -> dict[int, dict]:
    """Step -> what the model trained on; a step retrained after the restart replaces its first try."""
    with open(run_dir / "trained.jsonl") as lines:
        return {record["step"]: record for record in map(json.loads, lines)}


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="preempt_demo_"))
    try:
        print("-- uninterrupted run --", flush=True)
        run(work / "reference")
        print("-- preempted run --", flush=True)
        run(work / "preempted", kill_at=KILL_AT_STEP)
        reference, resumed = stream(work / "reference"), stream(work / "preempted")
        with open(work / "preempted" / "trained.jsonl") as lines:
            retrained = [json.loads(line)["step"] for line in lines]
        restart = next(i for i in range(1, len(retrained)) if retrained[i] <= retrained[i - 1])
        print(
            f"\nthe restart resumed after step {retrained[restart] - 1} (model checkpoints every 5 steps), so "
            f"steps {retrained[restart]}..{retrained[restart - 1]} were trained twice: on the same data\n"
        )
        print(f"{'step':>5} {'epoch':>5}  {'uninterrupted':<34} {'preempted + resumed':<34} same")
        lo = max(1, retrained[restart] - 3)
        for step in range(lo, retrained[restart - 1] + 4):
            a, b = reference[step], resumed[step]
            same = a == b
            print(
                f"{step:>5} {a['epoch']:>5}  {str(a['indices']):<34} {str(b['indices']):<34} {'yes' if same else 'NO'}"
            )
        mismatched = [s for s in reference if reference[s] != resumed.get(s)]
        identical = not mismatched and len(reference) == len(resumed)
        print(
            f"\n{len(reference)} steps; samples and augmentation draws identical at every step: "
            f"{'YES' if identical else 'NO, first difference at step ' + str(mismatched[:1])}"
        )
        return 0 if identical else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

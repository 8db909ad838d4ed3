"""Preempt a 2-process DDP job mid-epoch, resume it on 3 processes, and check the epoch.

    python examples/ddp_demo.py            (or: make demo-ddp)

Runs ``train_ddp.py`` under ``torchrun --nproc_per_node 2``, kills the whole job with SIGKILL in the middle
of the epoch, restarts it under ``torchrun --nproc_per_node 3`` from the newest model checkpoint, and
checks that every sample of the epoch was trained on exactly once in the surviving timeline (steps up
to the model checkpoint from the first job, then the second job's steps).
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
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train_ddp import BATCH_SIZE, DATASET_SIZE  # noqa: E402

KILL_AFTER_STEP = 12


def torchrun(nproc: int, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(HERE / "train_ddp.py"),
        "--dir",
        str(run_dir),
        *extra,
    ]


def kill_job(pid: int) -> None:
    """SIGKILL a torchrun job: the agent and every descendant. torchrun starts each rank in a session
    of its own, so killing the agent's process group would leave the ranks training."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    doomed, todo = [], [pid]
    while todo:
        current = todo.pop()
        doomed.append(current)
        todo += children.get(current, [])
    for victim in doomed:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


def records(run_dir: Path) -> list[dict]:
    out = []
    for path in sorted(run_dir.glob("trained_rank*.jsonl")):
        rank = int(path.stem.removeprefix("trained_rank"))
        with open(path) as lines:
            out += [json.loads(line) | {"rank": rank} for line in lines]
    return out


def preempt_and_resume(
    run_dir: Path, first_world: int, second_world: int, kill_after_step: int
) -> tuple[Counter[int], int]:
    """Run on ``first_world`` ranks, SIGKILL the job after ``kill_after_step``, resume on ``second_world``.

    Returns how often each sample was trained on in the surviving timeline, and how many duplicates
    DistributedSampler's padding rule adds when what is left of the epoch does not divide evenly.
    """
    env = dict(
        os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1"
    )
    print(f"-- {first_world} processes, SIGKILL mid-epoch --", flush=True)
    job = subprocess.Popen(torchrun(first_world, run_dir, "--job", "first", "--step-delay", "0.1"), env=env)
    deadline = time.monotonic() + 120
    while max((r["step"] for r in records(run_dir)), default=0) < kill_after_step:
        if job.poll() is not None or time.monotonic() > deadline:
            kill_job(job.pid)
            raise RuntimeError(f"the {first_world}-process job exited or stalled before it was to be killed")
        time.sleep(0.02)
    kill_job(job.pid)
    job.wait(timeout=30)
    first = records(run_dir)
    model_steps = [int(p.stem.split("-")[1]) for p in run_dir.glob("model-*.pt")]
    model_step = max(model_steps, default=0)
    print(f"killed after step {max(r['step'] for r in first)}; newest model checkpoint: step {model_step}")

    print(f"-- {second_world} processes, resuming --", flush=True)
    subprocess.run(torchrun(second_world, run_dir, "--job", "second"), env=env, check=True, timeout=300)
    second = [r for r in records(run_dir) if r["job"] == "second"]
    kept = [r for r in first if r["step"] <= model_step] + second
    per_rank = Counter((r["world"], r["rank"]) for r in kept)
    print(
        f"\nsteps 1..{model_step} on {first_world} ranks, steps {model_step + 1}..{max(r['step'] for r in second)} "
        f"on {second_world} ranks; batches per (world, rank): {dict(sorted(per_rank.items()))}"
    )
    left = DATASET_SIZE - model_step * first_world * BATCH_SIZE
    return Counter(i for r in kept for i in r["indices"]), -(-left // second_world) * second_world - left


def main() -> int:
    run_dir = Path(tempfile.mkdtemp(prefix="ddp_demo_"))
    try:
        seen, padding = preempt_and_resume(run_dir, 2, 3, KILL_AFTER_STEP)
        missing = sorted(set(range(DATASET_SIZE)) - set(seen))
        extra = sum(seen.values()) - DATASET_SIZE
        print(
            f"samples trained: {sum(seen.values())} of {DATASET_SIZE}; missing: {missing or 'none'}; "
            f"trained twice: {extra} (padding to a multiple of the ranks: {padding})"
        )
        ok = not missing and extra == padding
        print("each sample of the epoch trained exactly once:", "YES" if ok else "NO")
        return 0 if ok else 1
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Figure 9: a restore of W ranks reads O(W) files: one rank plans, every other rank reads one file.

Simulated, no processes: the benchmark writes the directory a job of W ranks leaves (``keep_last=3``
files per rank and a pointer each, as the checkpointer writes them), then runs what each rank runs at a
restore — the planner on the planning rank, ``read_checkpoint`` of the file the plan names on the others
— counting every file opened for reading.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import Config, Figure, Target, collect, fmt_time, median_of

STEPS = (100, 200, 300)  # keep_last=3


def _write_directory(directory: Path, world: int) -> None:
    from torch_input_ckpt import ResumableSampler
    from torch_input_ckpt.store import files
    from torch_input_ckpt.store.files import InputFile

    for rank in range(world):
        sampler = ResumableSampler(10**6, seed=0, num_replicas=world, rank=rank)
        for step in STEPS:
            data = files.encode_checkpoint(
                rank=rank, world_size=world, step=step, states={"input": sampler.state_dict()}, external=[]
            )
            (directory / InputFile(rank, step).name).write_bytes(data)  # no fsync: only reads are measured
        (directory / InputFile.pointer_name(rank)).write_text(
            f"latest: {InputFile(rank, STEPS[-1]).name}\nstep: {STEPS[-1]}\n"
        )


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: plan on "rank 0", then read the planned file of every other rank, counting reads."""
    from torch_input_ckpt.store import files
    from torch_input_ckpt.store.planner import plan_restore

    world = params["world"]
    opened = [0]
    real = files.read_regular_file

    def counting(path: Path, limit: int) -> bytes:
        opened[0] += 1
        return real(path, limit)

    files.read_regular_file = counting  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as name:
            directory = Path(name)
            _write_directory(directory, world)
            if params["damaged"]:  # one rank's newest file garbled: the plan falls back one step
                (directory / files.InputFile(world - 1, STEPS[-1]).name).write_bytes(b"{garbled")
            start = time.perf_counter()
            plan = plan_restore(directory, world, rank=0)
            planning = time.perf_counter() - start
            planner_reads = opened[0]
            assert plan is not None and plan.reads == planner_reads
            opened[0] = 0
            start = time.perf_counter()
            for rank in range(1, world):
                files.read_checkpoint(plan.path(directory, rank))
            others = time.perf_counter() - start
            other_reads = opened[0]
    finally:
        files.read_regular_file = real  # type: ignore[assignment]
    return {
        "planning": planning,
        "planner_reads": planner_reads,
        "reads_per_other": other_reads / (world - 1),
        "other_seconds": others / (world - 1),
        "step": plan.step,
    }


def run(cfg: Config) -> list[Figure]:
    """Figure 9."""
    worlds = (64, 256) if cfg.quick else (1024, 4096)
    variants = [{"world": w, "damaged": d} for w in worlds for d in (False, True)]
    results = collect(
        "restore_scale",
        variants,
        cfg,
        label=lambda v: f"W={v['world']}" + (", newest damaged on one rank" if v["damaged"] else ""),
    )
    fig = Figure(
        key="restore_scale",
        title="9. Restore of W ranks: reads on the planning rank and on every other rank (simulated)",
        about=(
            "A directory of W ranks x 3 checkpoints + W pointers, written by the benchmark. The planning rank "
            "lists it once and reads every rank's pointer and every old rank's file of the chosen step; "
            "the plan goes to the other ranks in one broadcast (not timed here), and each reads only the "
            "file it names. Before this change every rank ran the whole plan: W times the planner's reads."
        ),
        columns=[
            "W",
            "newest step",
            "planning time",
            "planner reads",
            "reads per other rank",
            "reads in total",
            "total before (W x planner)",
        ],
    )
    ok = True
    for variant, reps in zip(variants, results, strict=True):
        world = variant["world"]
        planner_reads = int(median_of(reps, "planner_reads"))
        per_other = median_of(reps, "reads_per_other")
        ok = ok and per_other == 1 and planner_reads <= 2 * world + (world if variant["damaged"] else 0)
        fig.rows.append(
            [
                f"{world:,}",
                "damaged on 1 rank" if variant["damaged"] else "intact",
                fmt_time(median_of(reps, "planning")),
                f"{planner_reads:,}",
                f"{per_other:g}",
                f"{planner_reads + (world - 1) * per_other:,.0f}",
                f"{world * planner_reads:,}",
            ]
        )
    fig.targets.append(Target("restore reads O(W) files in total; 1 per non-planning rank", ok, "see the table"))
    fig.data = {"variants": variants, "results": results}
    return [fig]

"""Figure 4: how long a checkpoint save blocks the training loop, saving and non-saving steps."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from .harness import Config, Figure, IndexDataset, Target, collect, fmt_ratio, fmt_time, median_of

BATCH_SIZE = 64
SAVING_TARGET = 1e-3
NON_SAVING_TARGET = 2e-6
# Stands in for a training step's compute, so that a background writer has time to finish.
STEP_SECONDS = 0.005
IMPLS = {
    "ours": "InputCheckpointer(every_n_steps=k).after_step(step)",
    "ours_torch_save": "torch.save(ResumableDataLoader.state_dict(), path)",
    "stateful": "torch.save(StatefulDataLoader.state_dict(), path)",
}


def _files(directory: str) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def _loop(loader: Any, steps: int, after_step: Any, pause: float) -> tuple[list[int], list[int]]:
    """Iterate ``steps`` batches, timing ``after_step(step)``; nanoseconds of saving / non-saving steps.

    ``pause`` seconds of ``time.sleep`` per step stand in for the training step's compute (0: none).
    """
    saving: list[int] = []
    non_saving: list[int] = []
    it = iter(loader)
    for step in range(1, steps + 1):
        next(it)
        if pause:
            time.sleep(pause)
        start = time.perf_counter_ns()
        saved = after_step(step)
        took = time.perf_counter_ns() - start
        (saving if saved else non_saving).append(took)
    del it
    return saving, non_saving


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: one training loop of ``steps`` steps with a save every ``every`` steps."""
    impl = params["impl"]
    import torch

    steps, every, pause = params["steps"], params["every"], params["pause"]
    dataset = IndexDataset((steps + 1) * BATCH_SIZE)
    directory = tempfile.mkdtemp(prefix="bench-ckpt-")
    try:
        close_seconds = 0.0
        if impl == "stateful":
            from torchdata.stateful_dataloader import StatefulDataLoader

            loader: Any = StatefulDataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)  # type: ignore[arg-type]
        else:
            from torch_input_ckpt import ResumableDataLoader

            loader = ResumableDataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, reseed_rng=False)  # type: ignore[arg-type]
        if impl == "ours":
            from torch_input_ckpt import InputCheckpointer

            checkpointer = InputCheckpointer(directory, loader, every_n_steps=every)
            saving, non_saving = _loop(loader, steps, checkpointer.after_step, pause)
            start = time.perf_counter()
            checkpointer.close()
            close_seconds = time.perf_counter() - start
        else:
            path = os.path.join(directory, "input.pt")

            def after_step(step: int) -> bool:
                if step % every:
                    return False
                torch.save(loader.state_dict(), path)
                return True

            saving, non_saving = _loop(loader, steps, after_step, pause)
        files = _files(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    def stats(ns: list[int]) -> dict[str, float | None]:
        if not ns:
            return {"median": None, "p95": None, "count": 0}
        ordered = sorted(ns)
        return {
            "median": statistics.median(ordered) / 1e9,
            "p95": ordered[int(0.95 * (len(ordered) - 1))] / 1e9,
            "count": len(ns),
        }

    return {"saving": stats(saving), "non_saving": stats(non_saving), "close_seconds": close_seconds, "files": files}


def run(cfg: Config, steps: int | None = None) -> list[Figure]:
    """Figure 4."""
    saving_steps = steps or (100 if cfg.quick else 1000)
    spaced_steps = max(10, saving_steps // 5)
    non_saving_steps = 10 * saving_steps
    impls = list(IMPLS)
    modes = {
        "back_to_back": {"steps": saving_steps, "every": 1, "pause": 0.0},
        "spaced": {"steps": spaced_steps, "every": 1, "pause": STEP_SECONDS},
        "quiet": {"steps": non_saving_steps, "every": non_saving_steps + 1, "pause": 0.0},
    }
    variants = [{"impl": impl, "mode": mode, **params} for impl in impls for mode, params in modes.items()]
    results = collect("blocking", variants, cfg, label=lambda v: f"{v['impl']} {v['mode']}")
    by = {(v["impl"], v["mode"]): r for v, r in zip(variants, results, strict=True)}

    fig = Figure(
        key="blocking",
        title="4. Blocking time of an input-checkpoint save in the training loop (num_workers=0)",
        about=(
            "A loop over batches calls the save hook after every step; the call alone is timed. Saving steps use "
            f"every_n_steps=1: back to back ({saving_steps:,} steps, nothing else in the loop), and with "
            f"`time.sleep({STEP_SECONDS})` per step standing in for the training step ({spaced_steps:,} steps). "
            "Back to back, InputCheckpointer's 4-deep write queue fills, so each save waits for one background "
            "write + fsync: that column is the disk's pace, not the call's cost. Non-saving steps: every_n_steps "
            f"larger than the run ({non_saving_steps:,} steps). The torch.save rows overwrite one file per save "
            "(no fsync), on the same local disk (ext4). Ratio: ours / StatefulDataLoader's torch.save, 5 ms steps."
        ),
        columns=[
            "save hook",
            "saving step, back to back (median)",
            f"saving step, {fmt_time(STEP_SECONDS)} steps (median)",
            f"saving step, {fmt_time(STEP_SECONDS)} steps (p95)",
            "non-saving step (median)",
            "close()",
            "files left",
            "ratio",
        ],
    )

    def cell(impl: str, mode: str, key: str) -> float | None:
        kind = "non_saving" if mode == "quiet" else "saving"
        values = [r[kind][key] for r in by[impl, mode] if r[kind][key] is not None]
        return statistics.median(values) if values else None

    def shown(value: float | None) -> str:
        return fmt_time(value) if value is not None else "none"

    theirs = cell("stateful", "spaced", "median")
    for impl in impls:
        spaced = cell(impl, "spaced", "median")
        fig.rows.append(
            [
                IMPLS[impl],
                shown(cell(impl, "back_to_back", "median")),
                shown(spaced),
                shown(cell(impl, "spaced", "p95")),
                shown(cell(impl, "quiet", "median")),
                fmt_time(median_of(by[impl, "back_to_back"], "close_seconds")) if impl == "ours" else "—",
                str(by[impl, "back_to_back"][-1]["files"]),
                fmt_ratio(spaced, theirs) if impl != "stateful" and spaced is not None and theirs else "",
            ]
        )
    spaced, rushed = cell("ours", "spaced", "median"), cell("ours", "back_to_back", "median")
    quiet = cell("ours", "quiet", "median")
    fig.targets.append(
        Target(
            f"saving step blocks under {fmt_time(SAVING_TARGET)}, steps of {fmt_time(STEP_SECONDS)} (issue 3)",
            spaced is not None and spaced < SAVING_TARGET,
            f"median {shown(spaced)}; back to back (disk-bound) {shown(rushed)}",
        )
    )
    fig.targets.append(
        Target(
            f"non-saving step blocks under {fmt_time(NON_SAVING_TARGET)} (issue 3)",
            quiet is not None and quiet < NON_SAVING_TARGET,
            f"median {shown(quiet)}",
        )
    )
    return [fig]

"""Figure 4: how long a checkpoint save blocks the training loop, saving and non-saving steps."""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from typing import Any

from .harness import Config, Figure, IndexDataset, Target, collect, fmt_ratio, fmt_time, median_of, run_child

BATCH_SIZE = 64
SAVING_TARGET = 1e-3
NON_SAVING_TARGET = 2e-6
IMPLS = {
    "ours": "InputCheckpointer(every_n_steps=k).after_step(step)",
    "ours_torch_save": "torch.save(ResumableDataLoader.state_dict(), path)",
    "stateful": "torch.save(StatefulDataLoader.state_dict(), path)",
}


def _probe() -> dict[str, Any]:
    try:
        from torch_input_ckpt import InputCheckpointer  # noqa: F401
    except ImportError:
        return {"available": False, "error": "torch_input_ckpt.InputCheckpointer is not in this tree"}
    return {"available": True, "error": ""}


def _files(directory: str) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def _loop(loader: Any, steps: int, after_step: Any) -> tuple[list[int], list[int]]:
    """Iterate ``steps`` batches, timing ``after_step(step)``; nanoseconds of saving / non-saving steps."""
    saving: list[int] = []
    non_saving: list[int] = []
    it = iter(loader)
    for step in range(1, steps + 1):
        next(it)
        start = time.perf_counter_ns()
        saved = after_step(step)
        took = time.perf_counter_ns() - start
        (saving if saved else non_saving).append(took)
    del it
    return saving, non_saving


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: one training loop of ``steps`` steps with a save every ``every`` steps."""
    impl = params["impl"]
    if impl == "probe":
        return _probe()
    import torch

    steps, every = params["steps"], params["every"]
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
            saving, non_saving = _loop(loader, steps, checkpointer.after_step)
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

            saving, non_saving = _loop(loader, steps, after_step)
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
    """Figure 4 (ours only when ``InputCheckpointer`` exists in this tree)."""
    saving_steps = steps or (200 if cfg.quick else 1000)
    non_saving_steps = 10 * saving_steps
    probe = run_child("blocking", {"impl": "probe"}, cfg)
    impls = [i for i in IMPLS if probe["available"] or i != "ours"]
    variants = []
    for impl in impls:
        variants.append({"impl": impl, "steps": saving_steps, "every": 1})
        variants.append({"impl": impl, "steps": non_saving_steps, "every": non_saving_steps + 1})
    results = collect("blocking", variants, cfg, label=lambda v: f"{v['impl']} every={v['every']}")
    by = {(v["impl"], v["every"] == 1): r for v, r in zip(variants, results, strict=True)}

    fig = Figure(
        key="blocking",
        title="4. Blocking time of an input-checkpoint save in the training loop (num_workers=0)",
        about=(
            f"A loop over batches calls the save hook after every step; the call alone is timed. Saving steps: "
            f"every_n_steps=1 over {saving_steps:,} steps; non-saving steps: every_n_steps larger than the run, over "
            f"{non_saving_steps:,} steps. The torch.save rows overwrite one file per save, on the same local disk "
            "(ext4)."
            "Time ratio: ours / StatefulDataLoader's torch.save."
        ),
        columns=[
            "save hook",
            "saving step (median)",
            "saving step (p95)",
            "non-saving step (median)",
            "close()",
            "files left",
            "saving-step ratio",
        ],
    )

    def cell(res: list[dict[str, Any]], kind: str, key: str) -> float | None:
        values = [r[kind][key] for r in res if r[kind][key] is not None]
        return statistics.median(values) if values else None

    theirs_saving = cell(by["stateful", True], "saving", "median") or 0.0
    for impl in IMPLS:
        if impl not in impls:
            fig.rows.append([IMPLS[impl], f"not run: {probe['error']}", "", "", "", "", ""])
            continue
        sv, ns = by[impl, True], by[impl, False]
        med, p95, quiet = cell(sv, "saving", "median"), cell(sv, "saving", "p95"), cell(ns, "non_saving", "median")
        fig.rows.append(
            [
                IMPLS[impl],
                fmt_time(med) if med is not None else "none saved",
                fmt_time(p95) if p95 is not None else "",
                fmt_time(quiet) if quiet is not None else "none",
                fmt_time(median_of(sv, "close_seconds")) if impl == "ours" else "—",
                str(sv[-1]["files"]),
                fmt_ratio(med, theirs_saving) if impl != "stateful" and med is not None else "",
            ]
        )
    if probe["available"]:
        med = cell(by["ours", True], "saving", "median")
        quiet = cell(by["ours", False], "non_saving", "median")
        fig.targets.append(
            Target(
                f"saving step blocks under {fmt_time(SAVING_TARGET)} (issue 7)",
                med is not None and med < SAVING_TARGET,
                f"median {fmt_time(med)}" if med is not None else "no step saved",
            )
        )
        fig.targets.append(
            Target(
                f"non-saving step blocks under {fmt_time(NON_SAVING_TARGET)} (issue 7)",
                quiet is not None and quiet < NON_SAVING_TARGET,
                f"median {fmt_time(quiet)}" if quiet is not None else "no non-saving step",
            )
        )
    else:
        for name in (
            f"saving step under {fmt_time(SAVING_TARGET)}",
            f"non-saving step under {fmt_time(NON_SAVING_TARGET)}",
        ):
            fig.targets.append(
                Target(name + " (issue 7)", None, "not measured: InputCheckpointer is not in this tree yet")
            )
    fig.data = {"available": probe["available"]}
    return [fig]

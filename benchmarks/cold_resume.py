"""Figure 10: the real restart. A fresh process reads the state from its file, loads it and takes the
first batch (imports and building the loader excluded), beside torch's fresh epoch start in an equally
fresh process; and the same with ``num_workers=2`` (worker start-up included) at N = 1e7.

The state is the loader's state after one batch with its cursor moved to 90% of the epoch (as in
figure 2, whose crafting is checked there), written by a separate process to a JSON file. Beside the
``num_workers=2`` row, torchdata's ``StatefulDataLoader`` resumes from its own state at 90%, saved with
``torch.save`` (it holds a generator state tensor) and read with ``torch.load(weights_only=True)``:
crafted from a small loader's state after one batch the way figure 2 does, with the snapshot's step,
last worker and sampler counters set to k batches, and checked before anything is timed against the
state a loader of that small length reaches by iterating (``_check_stateful_crafting``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any

from .harness import (
    BenchmarkError,
    Config,
    Figure,
    IndexDataset,
    PeakMemory,
    Target,
    collect,
    fmt_bytes,
    fmt_time,
    median_of,
    run_child,
)
from .resume import BATCH_SIZE, TEMPLATE_N, crafted_matches, one_batch_state, stateful_loader, target_batches

LABELS = {
    "ours": "ResumableDataLoader, resumed at 90%",
    "torch": "torch DataLoader, fresh epoch",
    "stateful": "torchdata StatefulDataLoader, resumed at 90%",
}
TIME_TARGET = 0.002
MEMORY_TARGET = 1e6


def _state_path(n: int, impl: str = "ours") -> str:
    suffix = "json" if impl == "ours" else "stateful.pt"
    return os.path.join(tempfile.gettempdir(), f"torch_input_ckpt_bench_cold_{n}.{suffix}")


def stateful_state(n: int, workers: int) -> dict[str, Any]:
    """StatefulDataLoader's state after 90% of an epoch of length ``n`` (see the module docstring)."""
    k = target_batches(n)
    state = one_batch_state(stateful_loader(TEMPLATE_N, workers))
    snapshot = state["_snapshot"]
    snapshot["_snapshot_step"] = k
    snapshot["_last_yielded_worker_id"] = (k - 1) % workers
    main = snapshot["_main_snapshot"]
    main["_sampler_iter_yielded"] = k
    main["_sampler_iter_state"]["samples_yielded"] = k * BATCH_SIZE
    main["_sampler_iter_state"]["sampler_iter_state"]["yielded"] = k * BATCH_SIZE
    return state  # type: ignore[no-any-return]


def _check_stateful_crafting(workers: int) -> None:
    """At n = TEMPLATE_N: the crafted state is the iterated one, and resumes at the same next batch."""
    n = TEMPLATE_N
    same, first = crafted_matches(
        lambda: stateful_loader(n, workers), lambda: stateful_state(n, workers), target_batches(n)
    )
    if not (same and first):
        raise BenchmarkError(f"crafted StatefulDataLoader state (num_workers={workers}) differs from an iterated one")


def _loader(impl: str, n: int, workers: int) -> Any:
    if impl == "torch":
        from torch.utils.data import DataLoader

        return DataLoader(IndexDataset(n), batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)  # type: ignore[arg-type]
    from torch_input_ckpt import ResumableDataLoader

    return ResumableDataLoader(IndexDataset(n), batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)  # type: ignore[arg-type]


def _import_lazy_modules() -> None:
    """The packages, and what torch imports inside the first batch (the profiler region around
    ``__next__`` imports its CUPTI monitor once, ~0.8 ms): neither ``build`` nor the section counts imports."""
    import torch.utils.data  # noqa: F401

    import torch_input_ckpt  # noqa: F401

    try:
        import torch.profiler._cupti_monitor  # noqa: F401
    except ModuleNotFoundError:  # older torch: nothing imported there
        pass


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: ``make`` writes the state file; ``ours`` resumes from it; ``torch`` starts an epoch."""
    impl, n, workers = params["impl"], params["n"], params["workers"]
    if impl == "make_stateful":
        import torch

        _check_stateful_crafting(workers)
        torch.save(stateful_state(n, workers), _state_path(n, "stateful"))
        return {}
    if impl == "make":
        loader = _loader("ours", n, 0)
        it = iter(loader)
        next(it)
        state = loader.state_dict()
        del it
        state["sampler"]["cursor"] = target_batches(n) * BATCH_SIZE
        with open(_state_path(n), "w") as f:
            json.dump(state, f)
        return {}
    _import_lazy_modules()
    built = time.perf_counter()
    loader = stateful_loader(n, workers) if impl == "stateful" else _loader(impl, n, workers)
    built = time.perf_counter() - built
    with PeakMemory() as mem:
        start = time.perf_counter()
        if impl == "ours":
            with open(_state_path(n)) as f:
                loader.load_state_dict(json.load(f))
        elif impl == "stateful":
            import torch

            loader.load_state_dict(torch.load(_state_path(n, "stateful"), weights_only=True))
        loaded = time.perf_counter()
        it = iter(loader)
        started = time.perf_counter()
        batch = next(it)
        seconds = time.perf_counter() - start
    del it
    return {
        "seconds": seconds,
        "build": built,
        "read_load": loaded - start,
        "iter": started - loaded,
        "first_batch": seconds - (started - start),
        "extra_bytes": mem.extra,
        "first": batch[:2].tolist(),
    }


def run(cfg: Config) -> list[Figure]:
    """Figure 10."""
    cases = [(10**8, 0)] + ([] if cfg.quick else [(10**7, 2)])
    for n, w in cases:
        run_child("cold_resume", {"impl": "make", "n": n, "workers": 0}, cfg)
        if w:
            run_child("cold_resume", {"impl": "make_stateful", "n": n, "workers": w}, cfg)
    # torch's fresh epoch at 1e8 is a randperm of 1e8 (47 s, 4.8 GB measured): only beside the 1e7 row.
    variants = [
        {"impl": impl, "n": n, "workers": w}
        for n, w in cases
        for impl in ("ours", "torch", "stateful")
        if impl == "ours" or (n < 10**8 and (impl == "torch" or w > 0))
    ]
    results = collect(
        "cold_resume", variants, cfg, label=lambda v: f"{v['impl']} N={v['n']:.0e} workers={v['workers']}"
    )
    fig = Figure(
        key="cold_resume",
        title="10. Cold resume: a fresh process reads the state file, loads it and takes the first batch",
        about=(
            "Each measurement in a fresh interpreter, after the imports and the loader's construction. Ours: read "
            "and parse the JSON state, `load_state_dict`, `iter`, first batch. torch: `iter` and first batch of a "
            "fresh epoch (it cannot resume). Extra memory: peak RSS during the section minus RSS before. The "
            "`iter` column is torch's iterator start (its first `random_` for the workers' base seed, and with "
            "workers their start-up), paid by both. Before the section, each child imports what torch would "
            "import inside it (the profiler region's CUPTI monitor, ~0.8 ms). `build` is the loader's "
            "construction, outside the section: ours draws once there what torch's iterator draws at its start "
            "(the workers' base seed), whose first call in a process pages in ~0.8 MB of torch's code."
        ),
        columns=[
            "N",
            "num_workers",
            "loader",
            "total (median)",
            "read + load",
            "iter",
            "first batch",
            "extra peak memory",
            "build (not in total)",
        ],
    )
    for variant, res in zip(variants, results, strict=True):
        fig.rows.append(
            [
                f"{variant['n']:.0e}",
                str(variant["workers"]),
                LABELS[variant["impl"]],
                fmt_time(median_of(res, "seconds")),
                fmt_time(median_of(res, "read_load")),
                fmt_time(median_of(res, "iter")),
                fmt_time(median_of(res, "first_batch")),
                fmt_bytes(median_of(res, "extra_bytes")),
                fmt_time(median_of(res, "build")),
            ]
        )
    ours = results[0]
    t, m = median_of(ours, "seconds"), median_of(ours, "extra_bytes")
    fig.targets.append(
        Target(
            f"cold resume at N = 1e8, num_workers=0, under {fmt_time(TIME_TARGET)} (issue 17)",
            t <= TIME_TARGET,
            fmt_time(t),
        )
    )
    fig.targets.append(
        Target(
            f"cold resume at N = 1e8, num_workers=0, under {fmt_bytes(MEMORY_TARGET)} extra peak memory (issue 17)",
            m <= MEMORY_TARGET,
            fmt_bytes(m),
        )
    )
    fig.data = {"seconds": [median_of(r, "seconds") for r in results]}
    return [fig]

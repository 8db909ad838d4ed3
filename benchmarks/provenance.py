"""Figures 11 and 12: ``samples`` for one step (API and CLI, 1 and 10**7 steps after the checkpoint, N = 1e9),
and what an exclusion list costs the sampler."""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from .harness import ROOT, Config, Figure, IndexDataset, Target, collect, fmt_ratio, fmt_time, median_of

LENGTH = 10**9
BATCH_SIZE = 32
WORLD = 8
AFTER = (1, 10**7)  # steps after the checkpoint
API_CALLS = 200
CLI_RUNS = 5
EXCLUDED = (0, 1_000, 100_000)


def _directory(path: str, length: int) -> int:
    """Rank 0 of a world of 8 over ``length`` samples, checkpointed at steps 0..3; returns the last step."""
    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ResumableSampler, World

    dataset = IndexDataset(length)
    sampler = ResumableSampler(dataset, seed=1, num_replicas=WORLD, rank=0)
    loader = ResumableDataLoader(dataset, batch_size=BATCH_SIZE, sampler=sampler, reseed_rng=False)  # type: ignore[arg-type]
    batches = iter(loader)
    with InputCheckpointer(path, loader, every_n_steps=1, world=World(0, WORLD)) as ckpt:
        ckpt.save(0)
        for step in range(1, 4):
            next(batches)
            ckpt.after_step(step)
    del batches
    return 3


def _median_seconds(fn: Any, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e9


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(CLI_RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: one variant (``api``, ``cli`` or ``exclusion``)."""
    if params["kind"] == "exclusion":
        return _measure_exclusion(params)
    from torch_input_ckpt.__main__ import main
    from torch_input_ckpt.provenance.history import Provenance, samples_at

    with tempfile.TemporaryDirectory() as path:
        last = _directory(path, params["length"])
        step = last + params["after"]
        if params["kind"] == "api":
            provenance = Provenance(path)
            return {
                "samples_at": _median_seconds(lambda: samples_at(path, step), API_CALLS),
                "arithmetic": _median_seconds(lambda: provenance.step(step), API_CALLS * 5),
                "keys": sum(len(k) for k in samples_at(path, step).keys.values()),
            }
        env = dict(os.environ, PYTHONPATH=ROOT)
        devnull = open(os.devnull, "w")  # noqa: SIM115 - the CLI's own print goes nowhere
        stdout, sys.stdout = sys.stdout, devnull
        try:
            in_process = _median_seconds(lambda: main(["samples", path, "--step", str(step)]), 20)
        finally:
            sys.stdout = stdout
            devnull.close()
        return {
            "python": _wall([sys.executable, "-c", "pass"], env),
            "import": _wall([sys.executable, "-c", "import torch_input_ckpt.__main__"], env),
            "cli": _wall([sys.executable, "-m", "torch_input_ckpt", "samples", path, "--step", str(step)], env),
            "in_process": in_process,
        }


def _measure_exclusion(params: dict[str, Any]) -> dict[str, Any]:
    import random

    from torch_input_ckpt import ResumableSampler

    sampler = ResumableSampler(params["length"], seed=2)
    if params["excluded"]:
        sampler.exclude(random.Random(0).sample(range(params["length"]), params["excluded"]))
    keys = params["keys"]
    start = time.perf_counter()
    for _ in itertools.islice(iter(sampler), keys):
        pass
    seconds = time.perf_counter() - start
    return {"per_key": seconds / keys}


def run(cfg: Config) -> list[Figure]:
    """Figures 11 and 12."""
    length = 10**6 if cfg.quick else LENGTH
    variants = [{"kind": kind, "length": length, "after": after} for after in AFTER for kind in ("api", "cli")]
    results = collect("provenance", variants, cfg, reps=1, label=lambda v: f"{v['kind']} +{v['after']} steps")
    by = {(v["kind"], v["after"]): r for v, r in zip(variants, results, strict=True)}
    fig = Figure(
        key="provenance",
        title=f"11. `samples` for one step (N = {length:,}, {WORLD} ranks x {BATCH_SIZE} samples, 3 checkpoints)",
        about=(
            "API: `samples_at(directory, step)` (lists the directory, reads and verifies rank 0's files, computes "
            f"every rank's keys; median of {API_CALLS} calls) and the arithmetic alone (`Provenance.step`). CLI: "
            f"`python -m torch_input_ckpt samples DIR --step N` wall time (median of {CLI_RUNS}), beside a bare "
            "`python -c pass` and the import of the package (torch included), and the command's own time "
            "in-process after the imports."
        ),
        columns=[
            "steps after the checkpoint",
            "samples_at",
            "arithmetic only",
            "CLI end to end",
            "python start-up",
            "python + imports",
            "CLI after imports",
        ],
    )
    api_ok, cli_ok = True, True
    for after in AFTER:
        api, cli = by["api", after][0], by["cli", after][0]
        api_ok &= api["samples_at"] < 1e-3
        cli_ok &= cli["cli"] < 0.05
        fig.rows.append(
            [
                f"{after:,}",
                fmt_time(api["samples_at"]),
                fmt_time(api["arithmetic"]),
                fmt_time(cli["cli"]),
                fmt_time(cli["python"]),
                fmt_time(cli["import"]),
                fmt_time(cli["in_process"]),
            ]
        )
    worst_cli = max(by["cli", a][0]["cli"] for a in AFTER)
    worst_after_imports = max(by["cli", a][0]["in_process"] for a in AFTER)
    fig.targets = [
        Target(
            "samples_at < 1 ms (API)", api_ok, f"worst {fmt_time(max(by['api', a][0]['samples_at'] for a in AFTER))}"
        ),
        Target(
            "CLI < 50 ms end to end",
            cli_ok,
            f"worst {fmt_time(worst_cli)}, of which {fmt_time(worst_after_imports)} after the imports: importing "
            "torch dominates start-up",
        ),
    ]
    fig.data = {f"{k}/{a}": r[0] for (k, a), r in by.items()}
    return [fig, _exclusion_figure(cfg)]


def _exclusion_figure(cfg: Config) -> Figure:
    length, keys = (10**6, 10**5) if cfg.quick else (10**8, 10**6)
    variants = [{"kind": "exclusion", "length": length, "excluded": n, "keys": keys} for n in EXCLUDED]
    results = collect("provenance", variants, cfg, label=lambda v: f"exclusion {v['excluded']:,}")
    base = median_of(results[0], "per_key")
    fig = Figure(
        key="exclusion",
        title=f"12. Sampler cost of an exclusion list (N = {length:,}, {keys:,} keys drawn from `iter(sampler)`)",
        about=(
            "Per key, median over repetitions; the excluded list is random. Each key of an excluding epoch costs "
            "a bucket-table lookup and a few compares (exclusion.py)."
        ),
        columns=["excluded samples", "per key", "vs none"],
    )
    for variant, result in zip(variants, results, strict=True):
        per_key = median_of(result, "per_key")
        fig.rows.append([f"{variant['excluded']:,}", fmt_time(per_key), fmt_ratio(per_key, base)])
    fig.data = {str(v["excluded"]): median_of(r, "per_key") for v, r in zip(variants, results, strict=True)}
    return fig

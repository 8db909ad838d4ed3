"""Figures 1 and 6: epoch throughput on a trivial dataset, and what per-sample RNG reseeding costs."""

from __future__ import annotations

import math
import time
from typing import Any

from .harness import (
    BenchmarkError,
    Config,
    Figure,
    IndexDataset,
    Target,
    collect,
    fmt_ratio,
    fmt_time,
    median_of,
    run_child,
    span,
)

BATCH_SIZE = 64
WORKERS = (0, 2)
IMPLS = {
    "ours_reseed": "ResumableDataLoader (default reseed_rng=True)",
    "ours": "ResumableDataLoader(reseed_rng=False)",
    "torch": "torch DataLoader(shuffle=True)",
    "stateful": "torchdata StatefulDataLoader(shuffle=True)",
}
# Diagnostic, at the regression length only: one intra-op thread. The first Feistel version walked with
# boolean-mask indexing, which stalled on torch's thread pool on a busy 2-core machine; this row shows
# whether the permutation still depends on that pool.
DIAGNOSTIC = {"ours_1thread": "ResumableDataLoader(reseed_rng=False) with torch.set_num_threads(1) (diagnostic)"}
THROUGHPUT_TARGET = 0.98


def _loader(impl: str, dataset: IndexDataset, workers: int, batch_size: int) -> Any:
    if impl == "torch":
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)  # type: ignore[arg-type]
    if impl == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)  # type: ignore[arg-type]
    from torch_input_ckpt import ResumableDataLoader

    return ResumableDataLoader(
        dataset,  # type: ignore[arg-type]
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        reseed_rng=impl == "ours_reseed",  # "ours" and "ours_1thread": False
    )


def _reseed_parts() -> dict[str, float]:
    """Seconds per call of each candidate for seeding, probing and saving the global RNGs (min over 5
    repeats of 20,000 calls): what issue 17's choices in ``torch_input_ckpt.rng.fingerprints`` rest on."""
    import random
    import timeit

    import numpy
    import torch

    from torch_input_ckpt.rng.fingerprints import rng

    seed = 0x1234_5678
    generator = torch.default_generator
    parts: dict[str, Any] = {
        "torch: default_generator.manual_seed (used)": lambda: generator.manual_seed(seed),
        "numpy: numpy.random.seed (used)": lambda: numpy.random.seed(seed),
        "python: random.seed": lambda: random.seed(seed),
        "python: _random.Random.seed, the C method (used)": lambda: rng("python").seed(seed),
        "probe torch: engine position, first word and normal caches via ctypes (used)": rng("torch").fingerprint,
        "probe torch: get_state() as bytes (the fallback)": lambda: bytes(generator.get_state().numpy()),
        "probe numpy: MT19937 pos and key[0] via ctypes (used)": rng("numpy").fingerprint,
        "probe numpy: numpy.random.get_state()": numpy.random.get_state,
        "probe python: MT index and state[0] via ctypes (used)": rng("python").fingerprint,
        "probe python: random.getstate()": random.getstate,
        "save + restore torch (once per batch, num_workers=0)": lambda: generator.set_state(generator.get_state()),
        "save + restore numpy (once per batch, num_workers=0)": lambda: numpy.random.set_state(
            numpy.random.get_state()
        ),
        "save + restore python (once per batch, num_workers=0)": lambda: random.setstate(random.getstate()),
    }
    number = 20_000
    return {name: min(timeit.repeat(fn, number=number, repeat=5)) / number for name, fn in parts.items()}


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: one epoch of one loader (or the reseed micro-benchmark)."""
    if params["impl"] == "reseed_parts":
        return {"parts": _reseed_parts()}
    if params["impl"] == "ours_1thread":
        import torch

        torch.set_num_threads(1)
    loader = _loader(params["impl"], IndexDataset(params["n"]), params["workers"], params["batch_size"])
    start = time.perf_counter()
    batches = 0
    for _ in loader:
        batches += 1
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "batches": batches}


def worst_length(n: int) -> int:
    """A length ``4**k + 1`` comparable to ``n`` (the first one >= n/2).

    It was the hardest length for the first ``FeistelPermutation``, whose power-of-4 domain was then ~4x
    the length (0.19x torch's throughput); the mixed-radix domain keeps it within sqrt(length) of the
    length. Kept as a regression row.
    """
    k = 1
    while 4**k < n:
        k += 1
    return 4 ** (k - 1) + 1 if 4 ** (k - 1) + 1 >= n // 2 else 4**k + 1


def run(cfg: Config, n: int | None = None) -> list[Figure]:
    """Figure 1 (throughput) and figure 6 (reseed cost, derived from figure 1's runs)."""
    n = n or (10**5 if cfg.quick else 10**6)
    worst = worst_length(n)
    variants = [{"impl": impl, "workers": w, "n": n, "batch_size": BATCH_SIZE} for w in WORKERS for impl in IMPLS]
    variants += [
        {"impl": impl, "workers": 0, "n": worst, "batch_size": BATCH_SIZE} for impl in ("ours", "ours_1thread", "torch")
    ]

    # The target's epochs (num_workers=0, N, reseed off) take well under a second: more repetitions to
    # steady their medians. The slow rows (reseeding, the worst-case length) keep cfg.reps.
    def reps(v: dict[str, Any]) -> int:
        steadied = v["workers"] == 0 and v["n"] == n and v["impl"] in ("ours", "torch", "stateful")
        return max(cfg.reps, 5) if steadied and not cfg.quick else cfg.reps

    results = collect(
        "throughput", variants, cfg, reps, label=lambda v: f"{v['impl']} workers={v['workers']} N={v['n']:,}"
    )
    for variant, res in zip(variants, results, strict=True):
        expected = math.ceil(variant["n"] / BATCH_SIZE)
        if any(r["batches"] != expected for r in res):
            raise BenchmarkError(f"{variant}: expected {expected} batches per epoch, got {[r['batches'] for r in res]}")
    seconds = {
        (v["impl"], v["workers"], v["n"]): median_of(r, "seconds") for v, r in zip(variants, results, strict=True)
    }
    spans = {
        (v["impl"], v["workers"], v["n"]): span(r, "seconds", fmt_time) for v, r in zip(variants, results, strict=True)
    }

    fig1 = Figure(
        key="throughput",
        title=f"1. Epoch throughput, trivial map-style dataset (N = {n:,}, batch_size = {BATCH_SIZE})",
        about=(
            "One full shuffled epoch, timed from `iter(loader)` (worker start-up included) to exhaustion. "
            "`__getitem__` returns the index, so this is pure loader overhead: sampler, batching, collate, and "
            "with workers the inter-process queues. Ratios are throughputs, ours / theirs (> 1: ours is faster). "
            f"The last rows use N = {worst:,} = 4^k + 1, the worst length for the first, power-of-4 Feistel "
            "domain (measured 0.19x torch then), kept as a regression row: the mixed-radix domain now used is "
            "within sqrt(N) of N at every length."
        ),
        columns=[
            "N",
            "num_workers",
            "loader",
            "epoch time (median)",
            "samples/s",
            "range",
            "ours/torch",
            "ours/Stateful",
        ],
    )
    blocks = [(n, w, list(IMPLS)) for w in WORKERS] + [(worst, 0, ["ours", "ours_1thread", "torch"])]
    for size, w, impls in blocks:
        for impl in impls:
            t = seconds[impl, w, size]
            ours = impl.startswith("ours")
            has_stateful = ("stateful", w, size) in seconds
            fig1.rows.append(
                [
                    f"{size:,}",
                    str(w),
                    IMPLS.get(impl) or DIAGNOSTIC[impl],
                    fmt_time(t),
                    f"{size / t:,.0f}",
                    spans[impl, w, size],
                    fmt_ratio(seconds["torch", w, size], t) if ours else "—",
                    fmt_ratio(seconds["stateful", w, size], t) if ours and has_stateful else "—",
                ]
            )
    for size, w, extra in [(n, w, "") for w in WORKERS] + [
        (worst, 0, "; N = 4^k + 1, the regression length, not in issue 2's list")
    ]:
        ratio = seconds["torch", w, size] / seconds["ours", w, size]
        fig1.targets.append(
            Target(
                f"throughput >= {THROUGHPUT_TARGET} x torch's DataLoader, reseed_rng=False, num_workers={w}, "
                f"N = {size:,} (issue 2{extra})",
                ratio >= THROUGHPUT_TARGET,
                f"{ratio:.2f} x ({fmt_time(seconds['ours', w, size])} vs "
                f"{fmt_time(seconds['torch', w, size])} per epoch)",
            )
        )
    fig1.data = {"n": n, "worst": worst, "seconds": {f"{i}/{w}/{size}": s for (i, w, size), s in seconds.items()}}

    parts = run_child("throughput", {"impl": "reseed_parts"}, cfg)["parts"]
    fig6 = Figure(
        key="reseed",
        title="6. Per-sample cost of reseeding (reseed_rng=True vs False)",
        about=(
            "The loader rows are figure 1's epochs: (epoch time with the default reseed_rng=True - with False) / N; "
            "the trivial dataset draws nothing, so this is the cost of checking, once per batch, that no RNG was "
            "drawn from. The parts are micro-benchmarks of the candidates for seeding, probing and saving each "
            "global RNG (min of 5 x 20,000 calls); '(used)' marks the ones `torch_input_ckpt.rng.fingerprints` uses."
        ),
        columns=["what", "µs per sample (probes: per call, two per batch)"],
    )
    for w in WORKERS:
        per_sample = (seconds["ours_reseed", w, n] - seconds["ours", w, n]) / n
        fig6.rows.append([f"in the loader, num_workers={w} (from figure 1)", f"{per_sample * 1e6:.2f}"])
    for name, secs in parts.items():
        per = secs / BATCH_SIZE if "once per batch" in name else secs
        per = secs if "probe" in name else per
        shown = (
            f"{per * 1e6:.3f} ({secs * 1e6:.1f} per batch of {BATCH_SIZE})"
            if "once per batch" in name
            else f"{per * 1e6:.2f}"
        )
        fig6.rows.append([f"part: {name}", shown])
    fig6.data = {"parts": parts}
    return [fig1, fig6]

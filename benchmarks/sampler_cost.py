"""Figures 5 and 7: the sampler alone: memory at N = 1e9, and the time to iterate a whole epoch."""

from __future__ import annotations

import time
from typing import Any

from .harness import (
    Config,
    Figure,
    PeakMemory,
    Target,
    available_bytes,
    collect,
    fmt_bytes,
    fmt_ratio,
    fmt_time,
    median_of,
    span,
)

BIG_N = 10**9
TAKE = 16
RANDPERM_NEEDS = 10e9  # randperm(1e9) holds 8 GB of int64
# "Not measurably slower" (issue 2), made concrete: within 5 %, about the run-to-run noise of this machine.
SLOWDOWN_TOLERANCE = 1.05
EPOCH_IMPLS = {
    "randperm_list": "for i in torch.randperm(N).tolist()",
    "ours": "for i in ResumableSampler(N)",
    "torch_random_sampler": "for i in torch RandomSampler(range(N))",
    "torchdata_random_sampler": "for i in torchdata RandomSampler(range(N))",
}


def _memory(impl: str, n: int) -> dict[str, Any]:
    import torch

    from torch_input_ckpt import ResumableSampler

    start_at = int(n * 0.9)
    # Warm up on a tiny size first: the first torch ops of a process load kernels and thread pools
    # (a few MB, ~10 ms) whichever contender runs them; that is not the sampler's cost.
    next(iter(ResumableSampler(1000, seed=0)))
    torch.randperm(1000)
    with PeakMemory() as mem:
        start = time.perf_counter()
        if impl == "ours":
            sampler = ResumableSampler(n, seed=0)
            state = sampler.state_dict()
            state["cursor"] = start_at
            sampler.load_state_dict(state)
            it = iter(sampler)
            taken = [next(it) for _ in range(TAKE)]
        else:
            table = torch.randperm(n)
            taken = table[start_at : start_at + TAKE].tolist()
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra_bytes": mem.extra, "exact_peak": mem.exact, "taken": len(taken)}


def _epoch(impl: str, n: int) -> dict[str, Any]:
    import torch

    start = time.perf_counter()
    if impl == "ours":
        from torch_input_ckpt import ResumableSampler

        indices: Any = ResumableSampler(n, seed=0)
    elif impl == "randperm_list":
        indices = torch.randperm(n).tolist()
    elif impl == "torch_random_sampler":
        indices = torch.utils.data.RandomSampler(range(n))
    else:
        from torchdata.stateful_dataloader.sampler import RandomSampler

        indices = RandomSampler(range(n))  # type: ignore[arg-type]
    count = 0
    for _ in indices:
        count += 1
    return {"seconds": time.perf_counter() - start, "count": count}


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: figure 5 (``kind="memory"``) or figure 7 (``kind="epoch"``)."""
    if params["kind"] == "memory":
        return _memory(params["impl"], params["n"])
    return _epoch(params["impl"], params["n"])


def run_memory(cfg: Config, n: int = BIG_N) -> list[Figure]:
    """Figure 5: ``ResumableSampler(1e9)`` at 90% vs materialising ``torch.randperm(1e9)``."""
    run_randperm = not cfg.quick and (available_bytes() or 0) >= RANDPERM_NEEDS
    variants = [{"kind": "memory", "impl": "ours", "n": n}]
    if run_randperm:
        variants.append({"kind": "memory", "impl": "randperm", "n": n})

    # randperm(1e9) takes ~90 s on this machine: one repetition.
    def reps(v: dict[str, Any]) -> int:
        return 1 if v["impl"] == "randperm" else cfg.reps

    results = collect("sampler_cost", variants, cfg, reps, label=lambda v: f"memory {v['impl']} N={v['n']:.0e}")
    ours = results[0]
    fig = Figure(
        key="sampler_memory",
        title=f"5. Sampler memory at N = {n:.0e}: {TAKE} indices at 90% of an epoch",
        about=(
            "Peak extra RSS and time (after a warm-up on N = 1000) to construct the sampler, move it to 90% of "
            f"the epoch through its state and take {TAKE} indices, vs materialising the permutation that torch's "
            "RandomSampler and StatefulDataLoader build (`torch.randperm(N)`; RandomSampler then also makes a "
            "Python list of it)."
        ),
        columns=["what", "extra peak memory (median)", "time (median)", "range"],
    )
    m_ours, t_ours = median_of(ours, "extra_bytes"), median_of(ours, "seconds")
    fig.rows.append(
        ["ResumableSampler(N), seek to 90%", fmt_bytes(m_ours), fmt_time(t_ours), span(ours, "seconds", fmt_time)]
    )
    if run_randperm:
        theirs = results[1]
        fig.rows.append(
            [
                "torch.randperm(N) (measured)",
                fmt_bytes(median_of(theirs, "extra_bytes")),
                fmt_time(median_of(theirs, "seconds")),
                span(theirs, "seconds", fmt_time),
            ]
        )
        fig.notes.append(f"Memory ratio ours / randperm: {fmt_ratio(m_ours, median_of(theirs, 'extra_bytes'))}.")
    else:
        why = "quick mode" if cfg.quick else f"only {fmt_bytes(available_bytes() or 0)} available"
        fig.rows.append([f"torch.randperm(N) (not run: {why}; arithmetic 8 bytes x N)", fmt_bytes(8 * n), "—", ""])
    fig.rows.append(
        [
            "randperm(N).tolist(), as RandomSampler iterates it (arithmetic: 8-byte pointer + 32-byte int)",
            fmt_bytes(40 * n),
            "—",
            "",
        ]
    )
    return [fig]


def run_epoch(cfg: Config, n: int | None = None) -> list[Figure]:
    """Figure 7: iterate one whole epoch of the sampler alone (at N and at the regression length 4^k + 1)."""
    from .throughput import worst_length

    n = n or (10**5 if cfg.quick else 10**6)
    worst = worst_length(n)
    variants = [{"kind": "epoch", "impl": impl, "n": n} for impl in EPOCH_IMPLS]
    variants += [{"kind": "epoch", "impl": impl, "n": worst} for impl in ("randperm_list", "ours")]
    results = collect("sampler_cost", variants, cfg, label=lambda v: f"epoch {v['impl']} N={v['n']:,}")
    seconds = {(v["impl"], v["n"]): median_of(r, "seconds") for v, r in zip(variants, results, strict=True)}
    fig = Figure(
        key="permutation",
        title=f"7. One epoch of indices from the sampler alone (N = {n:,})",
        about=(
            "Construction plus a Python `for` loop over every index. Ratio: time / the time of "
            f"`torch.randperm(N).tolist()` at the same N (> 1: slower). The last rows use N = {worst:,} = 4^k + 1, "
            "the regression length of figure 1."
        ),
        columns=["N", "what", "epoch (median)", "ns per index", "range", "time / randperm list"],
    )
    for v, res in zip(variants, results, strict=True):
        t = seconds[v["impl"], v["n"]]
        fig.rows.append(
            [
                f"{v['n']:,}",
                EPOCH_IMPLS[v["impl"]],
                fmt_time(t),
                f"{t / v['n'] * 1e9:.0f}",
                span(res, "seconds", fmt_time),
                fmt_ratio(t, seconds["randperm_list", v["n"]]),
            ]
        )
    for size, extra in ((n, ""), (worst, "; N = 4^k + 1, the regression length, not in issue 2's list")):
        ratio = seconds["ours", size] / seconds["randperm_list", size]
        detail = f"{ratio:.2f} x ({fmt_time(seconds['ours', size])} vs {fmt_time(seconds['randperm_list', size])})"
        if ("torch_random_sampler", size) in seconds:
            detail += (
                f"; vs torch's RandomSampler {seconds['ours', size] / seconds['torch_random_sampler', size]:.2f} x"
            )
        fig.targets.append(
            Target(
                f"ResumableSampler epoch not measurably slower than randperm(N).tolist(), N = {size:,} "
                f"(issue 2{extra}; taken as <= {SLOWDOWN_TOLERANCE} x)",
                ratio <= SLOWDOWN_TOLERANCE,
                detail,
            )
        )
    fig.data = {"seconds": {f"{i}/{size}": t for (i, size), t in seconds.items()}}
    return [fig]

"""Figure 3: what one ``state_dict()`` call costs mid-epoch, and how big the serialised state is."""

from __future__ import annotations

import io
import json
import statistics
import time
from typing import Any

from .harness import Config, Figure, IndexDataset, collect, fmt_bytes, fmt_ratio, fmt_time, median_of

BATCH_SIZE = 64
WORKERS = (0, 2)
WARM_BATCHES = 100  # mid-epoch: well past the start, far from the end
CALLS = 2000


def _loader(impl: str, n: int, workers: int) -> Any:
    dataset = IndexDataset(n)
    if impl == "ours":
        from torch_input_ckpt import ResumableDataLoader

        return ResumableDataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)  # type: ignore[arg-type]
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)  # type: ignore[arg-type]


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: time ``CALLS`` calls of ``state_dict()`` one by one, then serialise the state."""
    import torch

    loader = _loader(params["impl"], params["n"], params["workers"])
    it = iter(loader)
    for _ in range(WARM_BATCHES):
        next(it)
    times = []
    state: Any = None
    for _ in range(CALLS):
        start = time.perf_counter_ns()
        state = loader.state_dict()
        times.append(time.perf_counter_ns() - start)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        json_bytes: int | None = len(json.dumps(state).encode())
    except TypeError:  # tensors (generator states) inside: not JSON
        json_bytes = None
    del it  # shuts the workers down before the interpreter exits
    return {
        "seconds": statistics.median(times) / 1e9,
        "json_bytes": json_bytes,
        "torch_save_bytes": len(buffer.getvalue()),
    }


def run(cfg: Config, n: int | None = None) -> list[Figure]:
    """Figure 3."""
    n = n or (10**5 if cfg.quick else 10**6)
    variants = [{"impl": impl, "workers": w, "n": n} for w in WORKERS for impl in ("ours", "stateful")]
    results = collect("state_cost", variants, cfg, label=lambda v: f"{v['impl']} workers={v['workers']}")
    by = {(v["impl"], v["workers"]): r for v, r in zip(variants, results, strict=True)}
    fig = Figure(
        key="state_cost",
        title=f"3. `state_dict()` cost and state size, mid-epoch (N = {n:,}, after {WARM_BATCHES} batches)",
        about=(
            f"Median of {CALLS:,} consecutive `state_dict()` calls, each timed on its own. Size: ours as JSON "
            "(what the library writes) and with `torch.save`; StatefulDataLoader's with `torch.save` (its state "
            "holds tensors, so it is not JSON). Ratios are ours / theirs (time; JSON bytes vs torch.save bytes)."
        ),
        columns=[
            "num_workers",
            "loader",
            "state_dict() (median)",
            "JSON size",
            "torch.save size",
            "time ratio",
            "size ratio",
        ],
        notes=[
            "StatefulDataLoader with workers returns the snapshot it keeps up to date on every batch "
            "(`snapshot_every_n_steps=1` by default), by reference: its cost is paid per batch, in figure 1."
        ],
    )
    for w in WORKERS:
        ours, theirs = by["ours", w], by["stateful", w]
        t_ours, t_theirs = median_of(ours, "seconds"), median_of(theirs, "seconds")
        j_ours, s_ours, s_theirs = ours[0]["json_bytes"], ours[0]["torch_save_bytes"], theirs[0]["torch_save_bytes"]
        fig.rows.append(
            [
                str(w),
                "ResumableDataLoader",
                fmt_time(t_ours),
                fmt_bytes(j_ours),
                fmt_bytes(s_ours),
                fmt_ratio(t_ours, t_theirs),
                fmt_ratio(j_ours, s_theirs),
            ]
        )
        j_theirs = theirs[0]["json_bytes"]
        fig.rows.append(
            [
                str(w),
                "StatefulDataLoader",
                fmt_time(t_theirs),
                fmt_bytes(j_theirs) if j_theirs else "not JSON",
                fmt_bytes(s_theirs),
                "",
                "",
            ]
        )
    fig.data = {f"{i}/{w}": median_of(r, "seconds") for (i, w), r in by.items()}
    return [fig]

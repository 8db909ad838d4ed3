"""Figure 9: epoch throughput on realistic datasets (a token window, an image-like sample), default
configuration first, and resume to first batch with ``num_workers=2``.

* Token window: an ``np.memmap`` of 1e8 int32 tokens (written to a temporary file by the benchmark, as
  a sparse file of zeros: the page cache serves it); sample ``i`` is the 2,048 tokens at ``i * 2048``,
  returned as a tensor. It draws nothing at random.
* Image-like: a 3x256x256 uint8 image made once; each sample is a random 224x224 crop and a random
  horizontal flip, both drawn from torch's global RNG.
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from .harness import BenchmarkError, Config, Figure, Target, collect, fmt_ratio, fmt_time, median_of, span

BATCH_SIZE = 64
TOKENS = 10**8
WINDOW = 2048
WORKERS = (0, 2)
IMPLS = {
    "ours": "ResumableDataLoader (default reseed_rng=True)",
    "ours_off": "ResumableDataLoader(reseed_rng=False)",
    "torch": "torch DataLoader(shuffle=True)",
    "stateful": "torchdata StatefulDataLoader(shuffle=True)",
}
TARGET = 0.9


class TokenWindows:
    """Windows of ``WINDOW`` int32 tokens out of a memory-mapped file; ``length`` windows are used."""

    def __init__(self, path: str, length: int) -> None:
        import numpy as np

        self.tokens = np.memmap(path, dtype=np.int32, mode="r")
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        import torch

        start = index * WINDOW
        return torch.from_numpy(self.tokens[start : start + WINDOW].astype("int64"))


class ImageLike:
    """A random 224x224 crop and a random horizontal flip of one 3x256x256 uint8 image, from torch's RNG."""

    def __init__(self, length: int) -> None:
        import torch

        self.image = torch.arange(3 * 256 * 256, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, 256, 256)
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        import torch

        top, left = torch.randint(0, 256 - 224 + 1, (2,)).tolist()
        crop = self.image[:, top : top + 224, left : left + 224]
        if torch.rand(()).item() < 0.5:
            crop = crop.flip(2)
        return crop.contiguous()


def token_file() -> str:
    """The 1e8-token file (sparse, 400 MB), made once per run in the temporary directory."""
    import numpy as np

    path = os.path.join(tempfile.gettempdir(), f"torch_input_ckpt_bench_tokens_{TOKENS}.int32")
    if not os.path.exists(path) or os.path.getsize(path) != TOKENS * 4:
        tokens = np.memmap(path + ".tmp", dtype=np.int32, mode="w+", shape=(TOKENS,))
        tokens[::4096] = np.arange(len(tokens[::4096]), dtype=np.int32)  # a few real pages, the rest sparse
        tokens.flush()
        del tokens
        os.replace(path + ".tmp", path)
    return path


def warm_page_cache(path: str) -> None:
    """Read the token file once, so that the first loader measured does not pay for filling the page
    cache on behalf of the others (in one run, the first variant's epoch took 2x its later ones)."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def make_dataset(kind: str, length: int, path: str | None) -> Any:
    if kind == "tokens":
        assert path is not None
        return TokenWindows(path, length)
    return ImageLike(length)


def make_loader(impl: str, dataset: Any, workers: int) -> Any:
    if impl == "torch":
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)
    if impl == "stateful":
        from torchdata.stateful_dataloader import StatefulDataLoader

        return StatefulDataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers)
    from torch_input_ckpt import ResumableDataLoader

    return ResumableDataLoader(
        dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=workers, reseed_rng=impl == "ours"
    )


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: one epoch of one loader over one dataset."""
    dataset = make_dataset(params["dataset"], params["n"], params.get("path"))
    loader = make_loader(params["impl"], dataset, params["workers"])
    start = time.perf_counter()
    batches = 0
    for _ in loader:
        batches += 1
    return {"seconds": time.perf_counter() - start, "batches": batches}


def run(cfg: Config) -> list[Figure]:
    """Figure 9."""
    path = token_file()
    warm_page_cache(path)
    # 12,800 images: an epoch of ~0.4 s with num_workers=0, long enough that a fresh process's first-use
    # costs (a few ms, paid by every loader) and the page-fault noise of 9.6 MB batches stay small.
    sizes = {"tokens": 2_000 if cfg.quick else TOKENS // WINDOW, "image": 256 if cfg.quick else 12_800}
    names = {"tokens": "token window (2,048 int32 from np.memmap)", "image": "image-like (crop + flip, torch RNG)"}
    variants = [
        {"dataset": d, "impl": impl, "workers": w, "n": sizes[d], "path": path}
        for d in sizes
        for w in WORKERS
        for impl in IMPLS
    ]

    # The num_workers=0 epochs are short and vary by ~10% between fresh processes: more repetitions.
    def reps(v: dict[str, Any]) -> int:
        return max(cfg.reps, 5) if v["workers"] == 0 and not cfg.quick else cfg.reps

    results = collect(
        "realistic", variants, cfg, reps, label=lambda v: f"{v['dataset']} {v['impl']} workers={v['workers']}"
    )
    seconds: dict[tuple[str, str, int], float] = {}
    fig = Figure(
        key="realistic",
        title=f"9. Epoch throughput on realistic datasets (batch_size = {BATCH_SIZE})",
        about=(
            "One full shuffled epoch from `iter(loader)` (worker start-up included). The default configuration "
            "(reseed_rng=True) first: it seeds only the RNGs the first samples draw from (torch's for the "
            "image-like dataset, none for the token window) and checks the others once per batch. Ratios are "
            "throughputs, ours / theirs (> 1: ours is faster). " + (__doc__ or "").split("\n\n", 1)[1].strip()
        ),
        columns=[
            "dataset",
            "N",
            "num_workers",
            "loader",
            "epoch time (median)",
            "range",
            "ours/torch",
            "ours/Stateful",
        ],
    )
    for variant, res in zip(variants, results, strict=True):
        expected = -(-variant["n"] // BATCH_SIZE)
        if any(r["batches"] != expected for r in res):
            raise BenchmarkError(f"{variant}: expected {expected} batches, got {[r['batches'] for r in res]}")
        key = (variant["dataset"], variant["impl"], variant["workers"])
        seconds[key] = median_of(res, "seconds")
        ours = variant["impl"].startswith("ours")
        d, w = variant["dataset"], variant["workers"]
        fig.rows.append(
            [
                names[d],
                f"{variant['n']:,}",
                str(w),
                IMPLS[variant["impl"]],
                fmt_time(seconds[key]),
                span(res, "seconds", fmt_time),
                "" if not ours else "pending",
                "" if not ours else "pending",
            ]
        )
    for row, variant in zip(fig.rows, variants, strict=True):
        if row[6] == "pending":
            d, w, impl = variant["dataset"], variant["workers"], variant["impl"]
            row[6] = fmt_ratio(seconds[d, "torch", w], seconds[d, impl, w])
            row[7] = fmt_ratio(seconds[d, "stateful", w], seconds[d, impl, w])
    for d in sizes:
        for w in WORKERS:
            ratio = seconds[d, "torch", w] / seconds[d, "ours", w]
            fig.targets.append(
                Target(
                    f"default configuration >= {TARGET} x torch's DataLoader, {names[d]}, num_workers={w} (issue 17)",
                    ratio >= TARGET,
                    f"{ratio:.2f} x",
                )
            )
    fig.data = {"seconds": {f"{d}/{i}/{w}": s for (d, i, w), s in seconds.items()}}
    return [fig]

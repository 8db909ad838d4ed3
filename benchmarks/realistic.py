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

from .harness import BenchmarkError, Config, Figure, Target, collect, fmt_time, median_of, span

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


# Rounds per child: each round runs one epoch of every loader, in turn. The first round (a fresh
# process's first touches of the data and of torch's code) is reported apart.
ROUNDS = 4


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: ROUNDS rounds of one epoch of each loader in IMPLS, interleaved, over one dataset.

    Interleaving in one process is what makes the ratios stable: on this machine a fresh process's
    epochs were 10-40% slower or faster than another's for every loader alike (torch's own: 323-403 ms
    in five processes), more than the differences measured.
    """
    import statistics

    dataset = make_dataset(params["dataset"], params["n"], params.get("path"))
    loaders = {impl: make_loader(impl, dataset, params["workers"]) for impl in IMPLS}
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    counts: dict[str, set[int]] = {impl: set() for impl in IMPLS}
    for _ in range(1 if params.get("quick") else ROUNDS):
        for impl, loader in loaders.items():
            start = time.perf_counter()
            batches = 0
            for _ in loader:
                batches += 1
            times[impl].append(time.perf_counter() - start)
            counts[impl].add(batches)
    result: dict[str, Any] = {}
    for impl in IMPLS:
        steady = times[impl][1:] or times[impl]
        result[impl] = {"seconds": statistics.median(steady), "first_epoch": times[impl][0]}
        result[impl]["batches"] = sorted(counts[impl])
    return result


def run(cfg: Config) -> list[Figure]:
    """Figure 9."""
    import statistics

    path = token_file()
    warm_page_cache(path)
    # 12,800 images: an epoch of ~0.4 s with num_workers=0, long enough that first-use costs (a few ms,
    # paid by every loader) stay small.
    sizes = {"tokens": 2_000 if cfg.quick else TOKENS // WINDOW, "image": 256 if cfg.quick else 12_800}
    names = {"tokens": "token window (2,048 int32 from np.memmap)", "image": "image-like (crop + flip, torch RNG)"}
    cases = [
        {"dataset": d, "workers": w, "n": sizes[d], "path": path, "quick": cfg.quick} for d in sizes for w in WORKERS
    ]

    # The num_workers=0 epochs are short: more repetitions.
    def reps(v: dict[str, Any]) -> int:
        return max(cfg.reps, 5) if v["workers"] == 0 and not cfg.quick else cfg.reps

    results = collect("realistic", cases, cfg, reps, label=lambda v: f"{v['dataset']} workers={v['workers']}")
    fig = Figure(
        key="realistic",
        title=f"9. Epoch throughput on realistic datasets (batch_size = {BATCH_SIZE})",
        about=(
            f"Each child process builds the four loaders over one dataset and runs {ROUNDS} rounds of one shuffled "
            "epoch of each, in turn, each timed from `iter(loader)` (worker start-up included) to exhaustion. A "
            "loader's epoch time is the median, over the processes, of its median epoch after the first round; a "
            "ratio is the median over the processes of the ratio within each. The first round pays a fresh "
            "process's first touches of the data and of torch's code (its median is the last column). Fresh "
            "processes differed by 10-40% for every loader alike, more than the differences measured, hence the "
            "ratios within a process. The default configuration (reseed_rng=True) first: it seeds only the RNGs "
            "the first samples draw from (torch's for the image-like dataset, none for the token window) and "
            "checks the others once per batch. Ratios are throughputs, ours / theirs (> 1: ours is faster). "
            + (__doc__ or "").split("\n\n", 1)[1].strip()
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
            "first epoch (median)",
        ],
    )
    seconds: dict[tuple[str, str, int], float] = {}
    ratios: dict[tuple[str, str, int], float] = {}
    for case, res in zip(cases, results, strict=True):
        expected = -(-case["n"] // BATCH_SIZE)
        d, w = case["dataset"], case["workers"]
        for impl in IMPLS:
            per_process = [r[impl] for r in res]
            if any(r["batches"] != [expected] for r in per_process):
                raise BenchmarkError(f"{d} {impl} workers={w}: expected {expected} batches per epoch")
            seconds[d, impl, w] = median_of(per_process, "seconds")
            ours = impl.startswith("ours")
            row = [names[d], f"{case['n']:,}", str(w), IMPLS[impl], fmt_time(seconds[d, impl, w])]
            row.append(span(per_process, "seconds", fmt_time))
            for other in ("torch", "stateful"):
                ratio = statistics.median(r[other]["seconds"] / r[impl]["seconds"] for r in res)
                if other == "torch":
                    ratios[d, impl, w] = ratio
                row.append(f"{ratio:.2f}" if ours else "")
            row.append(fmt_time(median_of(per_process, "first_epoch")))
            fig.rows.append(row)
    for d in sizes:
        for w in WORKERS:
            ratio = ratios[d, "ours", w]
            fig.targets.append(
                Target(
                    f"default configuration >= {TARGET} x torch's DataLoader, {names[d]}, num_workers={w} (issue 17)",
                    ratio >= TARGET,
                    f"{ratio:.2f} x",
                )
            )
    fig.data = {"seconds": {f"{d}/{i}/{w}": s for (d, i, w), s in seconds.items()}}
    return [fig]

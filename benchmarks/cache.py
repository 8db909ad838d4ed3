"""Figure: the node-local shard cache against a loopback S3 server — bytes downloaded per epoch / dataset bytes.

Shards are ``.npy`` files uploaded to moto's S3 server on 127.0.0.1; the stream's reads (every position of each
epoch, in the computed order, as a loader's processes of one node read them together) go through
:class:`~torch_input_ckpt.stream.cache.plan.ShardPlanner` and :class:`~torch_input_ckpt.stream.cache.ShardCache`,
whose downloads are real ``ObjectStore.download`` GETs. Rows: a cache >= the working set (one epoch; target <= 1.02
of the dataset's bytes), and a cache of 25% of the dataset over two epochs with next-use (Belady) eviction vs
least-recently-used eviction (the same cache with ``policy="lru"``).

Run alone: ``python -m benchmarks.cache [--quick]``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import Config, Figure, Target

NAMES = ["web", "code", "math", "books", "news", "wiki", "law", "chat", "poems", "papers", "forums", "songs"]


def _shards(root: Path, count: int, rows: int) -> list[Path]:
    import numpy as np

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        path = root / f"{NAMES[n % len(NAMES)]}-{n // len(NAMES)}.npy"  # not in shard order by name
        np.save(path, rng.integers(0, 50_000, size=(rows, 64), dtype=np.int32))
        paths.append(path)
    return paths


def _epochs(stream: Any, planner: Any, epochs: int) -> None:
    """Read every position of ``epochs`` epochs in the stream's order, through the cache (the loader's reads)."""
    import torch

    for epoch in range(epochs):
        order = stream.epoch_order(0, epoch, True)
        planner.note_epoch(epoch)
        for key in order(torch.arange(len(stream))).tolist():
            shard, k = stream.locate(key)
            planner.local_path(shard, k, key)


def _measure(server: Any, bucket: str, paths: list[Path], limit_share: float, epochs: int, policy: str) -> float:
    from torch_input_ckpt import Shard, ShardedStream
    from torch_input_ckpt.remote import ObjectStore
    from torch_input_ckpt.stream.cache import ShardCache
    from torch_input_ckpt.stream.cache.plan import ShardPlanner

    rows = int(__import__("numpy").load(paths[0], mmap_mode="r").shape[0])
    store = ObjectStore(server.storage_options())
    infos = {Path(i.url).name: i for i in store.list(f"s3://{bucket}/")}
    objects = [infos[p.name] for p in paths]
    total = sum(o.size for o in objects)
    stream = ShardedStream([Shard(str(p), rows) for p in paths], lanes=4, seed=1, window=0)
    with tempfile.TemporaryDirectory() as cache_dir:
        download = _Download(store)
        cache = ShardCache(Path(cache_dir) / "cache", int(total * limit_share), download, policy=policy)
        planner = ShardPlanner(stream, cache, objects)
        _epochs(stream, planner, epochs)
        cache.wait_prefetches()
        downloaded = cache.node_totals()["downloaded_bytes"]
        cache.close()
    return downloaded / total / epochs


class _Download:
    """``ObjectStore.download`` of the version the listing gave (picklable, like the stream's)."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def __call__(self, info: Any, dest: Path) -> None:
        self.store.download(info.url, dest, expect=info)


def run(cfg: Config) -> list[Figure]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support.s3server import S3Server

    count, rows = (16, 256) if cfg.quick else (48, 1024)
    figure = Figure(
        key="cache",
        title="Node-local shard cache: bytes downloaded per epoch / dataset bytes (loopback S3)",
        about=(
            f"{count} .npy shards of {rows} x 64 int32 on moto's S3 server on 127.0.0.1, 4 lanes, every position "
            "of each epoch read in the stream's order through ShardPlanner + ShardCache (prefetch on, 2 downloads at "
            "once); downloads are ObjectStore GETs with If-Match. Lower is better; 1.0 = each byte once per epoch."
        ),
        columns=["cache", "epochs", "eviction", "downloaded / dataset, per epoch"],
    )
    load = os.getloadavg()[0]
    server = S3Server.start()
    try:
        bucket = server.bucket("cache-bench")
        with tempfile.TemporaryDirectory() as data:
            paths = _shards(Path(data), count, rows)
            server.upload_dir(Path(data), bucket)
            start = time.perf_counter()
            full = _measure(server, bucket, paths, 1.0, 1, "next-use")
            ours = _measure(server, bucket, paths, 0.25, 2, "next-use")
            lru = _measure(server, bucket, paths, 0.25, 2, "lru")
            elapsed = time.perf_counter() - start
    finally:
        server.stop()
    figure.rows += [
        [">= working set", "1", "next-use", f"{full:.3f}"],
        ["25% of the dataset", "2", "next-use (ours)", f"{ours:.3f}"],
        ["25% of the dataset", "2", "least recently used", f"{lru:.3f}"],
    ]
    figure.targets.append(Target("cache >= working set: downloaded / dataset <= 1.02", full <= 1.02, f"{full:.3f}"))
    figure.targets.append(
        Target("25% cache, 2 epochs: next-use downloads <= LRU's", ours <= lru, f"{ours:.3f} vs {lru:.3f}")
    )
    figure.notes.append(f"load average {load:.2f} at the start (shared machine); {elapsed:.1f} s for the three runs")
    figure.data = {"full": full, "next_use": ours, "lru": lru, "load": load}
    return [figure]


if __name__ == "__main__":
    from .report import render

    quick = "--quick" in sys.argv
    figures = run(Config(quick=quick, reps=1))
    print(render(figures, "python -m benchmarks.cache" + (" --quick" if quick else ""), 0.0, quick, None))

"""Figure 12: ShardedStream over shards on object storage (moto's S3 server on 127.0.0.1) vs the same shards on
local disk: epoch throughput with num_workers 0 and 2, and a resume at 90% of an epoch to its first batch with a
cold cache (time and bytes downloaded).

Run alone: ``python -m benchmarks.remote [--quick]``. The server is started here (tests/support/s3server.py) and
stopped at the end; requests are counted by the suite's request-logging proxy, in front of the server for the
resume only (the throughput runs talk to the server directly).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .harness import Config, Figure, Target, fmt_bytes, fmt_ratio, fmt_time

BATCH, LANES = 64, 2  # 2 lanes: a resume at 90% needs the last shard or two of each


def _shards(root: Path, shards: int, rows: int, row: int) -> Path:
    import numpy as np

    from torch_input_ckpt.stream.shards import write_index

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = ["web", "code", "math", "books", "news", "wiki", "chat", "law"]
    for s in range(shards):
        name = f"{names[s % len(names)]}-{s // len(names):03d}.npy"
        np.save(root / name, rng.integers(0, 50000, size=(rows, row), dtype=np.int32))
    write_index(root)
    return root


def _epoch_seconds(shards: Any, workers: int, **kw: Any) -> tuple[float, int]:
    from torch_input_ckpt import ResumableDataLoader, ShardedStream

    start = time.perf_counter()
    stream = ShardedStream(shards, lanes=LANES, seed=1, window=256, **kw)
    loader = ResumableDataLoader(stream, batch_size=BATCH, num_workers=workers, seed=0)
    samples = sum(len(batch) for batch in loader)
    return time.perf_counter() - start, samples


def _resume_to_first_batch(shards: Any, checkpoint: Path, **kw: Any) -> float:
    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ShardedStream

    start = time.perf_counter()
    stream = ShardedStream(shards, lanes=LANES, seed=1, window=256, **kw)
    loader = ResumableDataLoader(stream, batch_size=BATCH, seed=0)
    with InputCheckpointer(checkpoint, loader) as ckpt:
        ckpt.restore()
        next(iter(loader))
    return time.perf_counter() - start


def _save_at_90(shards: Path, checkpoint: Path) -> tuple[int, int, int]:
    """Save at 90% of epoch 0; the batch saved at, the number of shards the next batch reads and the number the
    rest of the epoch reads."""
    import torch

    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ShardedStream

    stream = ShardedStream(shards, lanes=LANES, seed=1, window=256)
    loader = ResumableDataLoader(stream, batch_size=BATCH, seed=0)
    stop = len(loader) * 9 // 10
    it = iter(loader)
    for _ in range(stop):
        next(it)
    with InputCheckpointer(checkpoint, loader) as ckpt:
        ckpt.save(stop)
    keys = stream.epoch_order(0, 0, True)(torch.arange(stop * BATCH, len(stream)))
    shards = [stream.locate(int(key))[0] for key in keys]
    return stop, len(set(shards[:BATCH])), len(set(shards))


def _measure(cfg: Config, work: Path, server: Any) -> dict[str, Any]:
    from torch_input_ckpt.remote import ObjectStore

    from tests.support.s3server import FaultProxy

    shards, rows, row = (8, 500, 64) if cfg.quick else (32, 2000, 256)
    local = _shards(work / "local", shards, rows, row)
    bucket = server.bucket("bench")
    server.upload_dir(local, bucket, "corpus")
    server.client().delete_object(Bucket=bucket, Key="corpus/torch_input_ckpt_index.json")
    url = f"s3://{bucket}/corpus/"
    from torch_input_ckpt.cli.index import index_directory

    started = time.perf_counter()
    import json

    assert index_directory(url, None, None, json.dumps(server.storage_options())) == 0
    out: dict[str, Any] = {"index_s": time.perf_counter() - started, "shards": shards, "rows": rows, "row": row}
    out["dataset_bytes"] = sum(p.stat().st_size for p in local.glob("*.npy"))
    options = server.storage_options()
    reps = 1 if cfg.quick else cfg.reps
    for workers in (0, 2):
        for side in ("local", "remote"):
            times = []
            for rep in range(reps):  # each remote epoch from a cold cache: every shard downloaded
                kw = {} if side == "local" else {"storage_options": options, "cache_dir": work / f"c{workers}{rep}"}
                seconds, samples = _epoch_seconds(local if side == "local" else url, workers, **kw)
                times.append(seconds)
            out[side, workers] = (statistics.median(times), samples)
    checkpoint = work / "ckpt"
    out["stop"], out["first_batch_shards"], out["needed"] = _save_at_90(local, checkpoint)
    out["resume_local_s"] = _resume_to_first_batch(local, checkpoint)
    with FaultProxy(server.endpoint_url) as proxy:
        remote_options = server.storage_options(proxy.endpoint_url)
        out["resume_remote_s"] = _resume_to_first_batch(
            url, checkpoint, storage_options=remote_options, cache_dir=work / "cold"
        )
        gets = [r for r in proxy.requests("GET") if "/corpus/" in r.path and not r.path.endswith(".json")]
        out["resume_bytes"] = sum(r.body_bytes for r in gets)
        out["resume_objects"] = len(gets)
    out["resume_all_bytes"] = sum(info.size for info in ObjectStore(options).list(url) if info.url.endswith(".npy"))
    return out


def run(cfg: Config) -> list[Figure]:
    from tests.support.s3server import running_server

    with tempfile.TemporaryDirectory(prefix="bench-remote-") as work, running_server() as server:
        for name, value in server.env().items():
            os.environ.setdefault(name, value)
        m = _measure(cfg, Path(work), server)
    fig = Figure(
        key="remote",
        title=f"12. ShardedStream from object storage (moto S3 on 127.0.0.1) vs local disk ({m['shards']} .npy shards "
        f"x {m['rows']:,} rows x {m['row']} int32 tokens, {fmt_bytes(m['dataset_bytes'])}, batch {BATCH}, "
        "window 256)",
        about="One epoch from a cold cache (every shard downloaded once, on first read: no prefetch yet), "
        "stream construction included (remote: one listing + the index); samples/s; ratio = remote / local. "
        "Resume: stream + loader + restore from the checkpoint file at 90% + first batch, cold cache; bytes = "
        "shard bytes GET from the server (counted by a logging proxy).",
        columns=["measure", "local disk", "object storage", "ratio (remote/local)"],
    )
    ratios = []
    for workers in (0, 2):
        local_s, samples = m["local", workers]
        remote_s, _ = m["remote", workers]
        ratio = local_s / remote_s
        ratios.append(ratio)
        fig.rows.append(
            [
                f"epoch, num_workers={workers}",
                f"{samples / local_s:,.0f} samples/s",
                f"{samples / remote_s:,.0f} samples/s",
                f"{ratio:.2f}",
            ]
        )
    fig.rows.append(
        [
            f"resume at 90% (batch {m['stop']}) to first batch",
            fmt_time(m["resume_local_s"]),
            fmt_time(m["resume_remote_s"]),
            fmt_ratio(m["resume_remote_s"], m["resume_local_s"]) + " (time)",
        ]
    )
    fig.rows.append(
        [
            "bytes downloaded by that resume",
            "-",
            f"{fmt_bytes(m['resume_bytes'])} ({m['resume_objects']} of {m['shards']} shards; the first batch "
            f"reads {m['first_batch_shards']}, the rest of the epoch {m['needed']})",
            f"{m['resume_bytes'] / m['resume_all_bytes']:.2f} of the dataset",
        ]
    )
    fig.targets.append(
        Target("epoch throughput from object storage >= 0.9x local", min(ratios) >= 0.9, f"{min(ratios):.2f}")
    )
    fig.targets.append(
        Target(
            "resume to the first batch downloads only the shards at the cursor",
            m["resume_objects"] == m["first_batch_shards"],
            f"{m['resume_objects']} of {m['shards']} shards",
        )
    )
    fig.notes.append(f"indexing the prefix by range reads (.npy headers): {fmt_time(m['index_s'])}")
    fig.notes.append(f"load average at the end: {open('/proc/loadavg').read().split()[:3]}")
    return [fig]


def main(argv: list[str] | None = None) -> int:
    from .report import render

    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    figures = run(Config(quick=quick, reps=1 if quick else 3, in_process=True, verbose=False))
    print(render(figures, "python -m benchmarks.remote" + (" --quick" if quick else ""), 0.0, quick=quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())

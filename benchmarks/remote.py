"""Figure 12: ShardedStream over shards on object storage (moto's S3 server on 127.0.0.1) vs the same shards on
local disk: epoch throughput with num_workers 0 and 2 (.npy and Parquet), and a resume at 90% of an epoch to its
first batch with a cold cache (time and bytes downloaded).

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


def _parquet_shards(npy: Path, root: Path) -> Path:
    """The same token rows as Parquet (a list<int32> column, one row group per 500 rows), indexed."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from torch_input_ckpt.stream.shards import write_index

    root.mkdir(parents=True, exist_ok=True)
    for path in sorted(npy.glob("*.npy")):
        rows = np.load(path)
        flat = pa.array(rows.reshape(-1))
        column = pa.FixedSizeListArray.from_arrays(flat, rows.shape[1]).cast(pa.list_(pa.int32()))
        pq.write_table(pa.table({"input_ids": column}), root / f"{path.stem}.parquet", row_group_size=500)
    write_index(root)
    return root


def _count(batch: list[Any]) -> int:
    """The collate of the Parquet rows (dicts): only counted (the same on both sides)."""
    return len(batch)


def _epoch_seconds(shards: Any, workers: int, collate: Any = None, **kw: Any) -> tuple[float, int]:
    from torch_input_ckpt import ResumableDataLoader, ShardedStream

    start = time.perf_counter()
    stream = ShardedStream(shards, lanes=LANES, seed=1, window=256, **kw)
    extra = {} if collate is None else {"collate_fn": collate}
    loader = ResumableDataLoader(stream, batch_size=BATCH, num_workers=workers, seed=0, **extra)
    samples = sum(batch if isinstance(batch, int) else len(batch) for batch in loader)
    return time.perf_counter() - start, samples


def _resume_to_first_batch(shards: Any, checkpoint: Path, **kw: Any) -> tuple[float, Any]:
    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ShardedStream

    start = time.perf_counter()
    stream = ShardedStream(shards, lanes=LANES, seed=1, window=256, **kw)
    loader = ResumableDataLoader(stream, batch_size=BATCH, seed=0)
    with InputCheckpointer(checkpoint, loader) as ckpt:
        ckpt.restore()
        next(iter(loader))
    return time.perf_counter() - start, stream


def _save_at_90(shards: Path, checkpoint: Path) -> tuple[int, set[str], set[str]]:
    """Save at 90% of epoch 0; the batch saved at, the names of the shards the next batch reads and of those the
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
    names = [Path(stream.shards[stream.locate(int(key))[0]].source).name for key in keys]
    return stop, set(names[:BATCH]), set(names)


def _upload(server: Any, local: Path, bucket: str) -> str:
    """The shards under s3://bucket/corpus/, indexed there by range reads (the local index removed)."""
    import json

    from torch_input_ckpt.cli.index import index_directory

    bucket = server.bucket(bucket)
    server.upload_dir(local, bucket, "corpus")
    server.client().delete_object(Bucket=bucket, Key="corpus/torch_input_ckpt_index.json")
    url = f"s3://{bucket}/corpus/"
    assert index_directory(url, None, None, json.dumps(server.storage_options())) == 0
    return url


def _throughput(out: dict[str, Any], kind: str, local: Path, url: str, options: dict, work: Path, reps: int) -> None:
    """Local, remote from a cold cache, remote from a warm cache (every shard already local: the cache's own cost),
    interleaved per repetition."""
    collate = _count if kind == "parquet" else None
    for workers in (0, 2):
        times: dict[str, list[float]] = {"local": [], "remote": [], "warm": []}
        for rep in range(reps):
            cache = work / f"{kind}{workers}{rep}"
            for side in times:
                kw = {} if side == "local" else {"storage_options": options, "cache_dir": cache}
                seconds, samples = _epoch_seconds(local if side == "local" else url, workers, collate, **kw)
                times[side].append(seconds)
        for side, values in times.items():
            out[kind, side, workers] = (statistics.median(values), samples)
        out[kind, "load", workers] = os.getloadavg()[0]


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _epoch_cpu(server: Any, url: str, options: dict, work: Path) -> dict[str, float]:
    """One cold remote epoch (num_workers=0): its wall time, and the CPU seconds the loader process and the
    server process used in it (both on the same cores)."""
    own, served = time.process_time(), _cpu_s(server.process.pid)
    seconds, _ = _epoch_seconds(url, 0, storage_options=options, cache_dir=work / "cpu")
    return {"wall": seconds, "loader": time.process_time() - own, "server": _cpu_s(server.process.pid) - served}


def _download_all(url: str, options: dict, work: Path) -> float:
    """The server's bound: every shard GET once, 2 at a time (as the prefetch does), nothing read."""
    from concurrent.futures import ThreadPoolExecutor

    from torch_input_ckpt.remote import ObjectStore

    store = ObjectStore(options)
    infos = [info for info in store.list(url) if not info.url.endswith(".json")]
    (work / "bound").mkdir(parents=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda info: store.download(info.url, work / "bound" / info.url.rsplit("/", 1)[1]), infos))
    return time.perf_counter() - start


def _resume(out: dict[str, Any], server: Any, local: Path, url: str, work: Path) -> None:
    from tests.support.s3server import FaultProxy

    checkpoint = work / "ckpt"
    out["stop"], out["first_batch_shards"], out["needed"] = _save_at_90(local, checkpoint)
    out["resume_local_s"], _ = _resume_to_first_batch(local, checkpoint)
    with FaultProxy(server.endpoint_url) as proxy:
        remote_options = server.storage_options(proxy.endpoint_url)
        out["resume_remote_s"], stream = _resume_to_first_batch(
            url, checkpoint, storage_options=remote_options, cache_dir=work / "cold"
        )
        first = [r for r in proxy.requests("GET") if "/corpus/" in r.path and not r.path.endswith(".json")]
        stream._planner.cache.wait_prefetches()  # what the prefetch went on to download meanwhile
        gets = [r for r in proxy.requests("GET") if "/corpus/" in r.path and not r.path.endswith(".json")]
    out["resume_first_names"] = {r.path.rsplit("/", 1)[1] for r in first}
    out["resume_names"] = {r.path.rsplit("/", 1)[1] for r in gets}
    out["resume_bytes"] = sum(r.body_bytes for r in gets)
    out["resume_objects"] = len(gets)


def _measure(cfg: Config, work: Path, server: Any) -> dict[str, Any]:
    from torch_input_ckpt.remote import ObjectStore

    shards, rows, row = (8, 500, 64) if cfg.quick else (32, 2000, 256)
    local = _shards(work / "local", shards, rows, row)
    started = time.perf_counter()
    url = _upload(server, local, "bench")
    out: dict[str, Any] = {"index_s": time.perf_counter() - started, "shards": shards, "rows": rows, "row": row}
    out["dataset_bytes"] = sum(p.stat().st_size for p in local.glob("*.npy"))
    options = server.storage_options()
    reps = 1 if cfg.quick else cfg.reps
    _throughput(out, "npy", local, url, options, work, reps)
    parquet = _parquet_shards(local, work / "parquet")
    out["parquet_bytes"] = sum(p.stat().st_size for p in parquet.glob("*.parquet"))
    _throughput(out, "parquet", parquet, _upload(server, parquet, "bench-parquet"), options, work, reps)
    out["cpu"] = _epoch_cpu(server, url, options, work)
    local_cpu = time.process_time()
    out["cpu"]["local_wall"], _ = _epoch_seconds(local, 0)
    out["cpu"]["local_loader"] = time.process_time() - local_cpu
    out["download_s"] = statistics.median(_download_all(url, options, work / f"d{rep}") for rep in range(reps))
    _resume(out, server, local, url, work)
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
        about="One epoch from a cold cache (every shard downloaded once, ahead of its first read: each process "
        "prefetches the shards it opens next in the stream's order, 2 downloads at a time, in a background thread), "
        "stream construction included (remote: one listing + the index); samples/s; ratio = remote / local; "
        "the load average (1 min) after each pair of runs. The moto server runs on the same cores as the loader. "
        f"Parquet: the same rows as a list<int32> column ({fmt_bytes(m['parquet_bytes'])}), rows collated as "
        "dicts and counted. Resume: stream + loader + restore from the checkpoint file at 90% + first batch, "
        "cold cache; bytes = shard bytes GET from the server (counted by a logging proxy), once the prefetch "
        "started by that first batch has finished.",
        columns=["measure", "local disk", "object storage", "ratio (remote/local)"],
    )
    ratios = []
    for kind in ("npy", "parquet"):
        for workers in (0, 2):
            local_s, samples = m[kind, "local", workers]
            remote_s, _ = m[kind, "remote", workers]
            ratio = local_s / remote_s
            ratios.append(ratio)
            fig.rows.append(
                [
                    f"epoch, {kind}, num_workers={workers} (load {m[kind, 'load', workers]:.1f})",
                    f"{samples / local_s:,.0f} samples/s",
                    f"{samples / remote_s:,.0f} samples/s",
                    f"{ratio:.2f}",
                ]
            )
    for workers in (0, 2):
        local_s, samples = m["npy", "local", workers]
        warm_s, _ = m["npy", "warm", workers]
        fig.rows.append(
            [
                f"epoch, npy, num_workers={workers}, warm cache (every shard local: the cache's own cost)",
                f"{samples / local_s:,.0f} samples/s",
                f"{samples / warm_s:,.0f} samples/s",
                f"{local_s / warm_s:.2f}",
            ]
        )
    bound = max(m["npy", "local", 0][0], m["download_s"])
    fig.rows.append(
        [
            "the server's bound: every .npy shard GET once, 2 at a time, nothing read",
            "-",
            f"{fmt_time(m['download_s'])} ({m['dataset_bytes'] / m['download_s'] / 1e6:.0f} MB/s)",
            f"cold epoch num_workers=0 / max(local epoch, this) = {m['npy', 'remote', 0][0] / bound:.2f}",
        ]
    )
    cpu = m["cpu"]
    fig.rows.append(
        [
            "CPU seconds in one epoch, npy, num_workers=0 (cold cache): loader process / moto server process",
            f"{cpu['local_loader']:.2f} s / - (wall {cpu['local_wall']:.2f} s)",
            f"{cpu['loader']:.2f} s / {cpu['server']:.2f} s (wall {cpu['wall']:.2f} s)",
            f"CPU: {(cpu['loader'] + cpu['server']) / cpu['local_loader']:.2f}x local's",
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
            "shards downloaded by that resume",
            "-",
            f"{fmt_bytes(m['resume_bytes'])}: {m['resume_objects']} of {m['shards']} shards, all read from the "
            f"cursor on (the rest of the epoch reads {len(m['needed'])}); {len(m['resume_first_names'])} by the "
            f"first batch, which reads {len(m['first_batch_shards'])}",
            f"{m['resume_bytes'] / m['resume_all_bytes']:.2f} of the dataset",
        ]
    )
    fig.targets.append(
        Target("epoch throughput from object storage >= 0.9x local", min(ratios) >= 0.9, f"{min(ratios):.2f}")
    )
    fig.targets.append(
        Target(
            "a resume downloads only shards read from the cursor on; the first batch waits only for the cursor's",
            m["resume_names"] <= m["needed"] and m["first_batch_shards"] <= m["resume_first_names"],
            f"{m['resume_objects']} of {m['shards']} shards, {len(m['needed'])} needed",
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

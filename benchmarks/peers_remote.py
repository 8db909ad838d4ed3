"""The peers on object storage: Mosaic Streaming and LitData over a real S3-compatible server on loopback.

The same rows (``N`` documents of token ids, deterministic) are converted to Mosaic's MDS format
(``streaming.MDSWriter``) and to LitData's optimized format (``litdata.optimize``), uploaded to moto's standalone
server, and read back through :class:`tests.support.s3server.FaultProxy`, which logs the bytes of every response:

1. epoch throughput (samples/s) streaming from the server with ``num_workers`` 0 and 2, against each library's own
   local-disk epoch of the same converted files (the ratio is what the issue compares);
2. bytes downloaded in one epoch / dataset bytes, with a cache larger than the dataset;
3. bytes downloaded over two epochs with a cache of 25% of the dataset (Mosaic's ``cache_limit``, least recently
   used eviction; LitData's ``max_cache_size``, which deletes chunks once read when the dataset is larger);
4. resume at 90% of an epoch with a cold cache: seconds and bytes to the first batch (each library's
   ``StreamingDataLoader.state_dict`` / ``load_state_dict``, the state through JSON as a checkpoint holds it).

Every reader shuffles (each library's own shard-aware shuffle, fixed seed), batch size 256. The peers need packages
that would move this project's pins, so this runs in its own venv (``make bench-peers``)::

    PYTHONPATH=$PWD .venv-peers/bin/python benchmarks/peers_remote.py [--quick] [--rows N] [--output PATH]

Mosaic's ``streaming/__init__.py`` imports its vision datasets and so torchvision; PyPI's torchvision 0.28.0 is a
CUDA build whose ``_C.so`` cannot load against torch 2.13.0+cpu. The benchmark uses none of the vision datasets, so
it puts an empty ``streaming.vision`` in ``sys.modules`` before importing streaming (see ``_import_streaming``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.s3server import ACCESS_KEY, REGION, SECRET_KEY, FaultProxy, S3Server  # noqa: E402

BATCH_SIZE = 256
SEED = 1234
VOCAB = 50257
#: Converted files per format: Mosaic refuses a cache_limit below four shards, and 25% of 32 shards is eight.
TARGET_SHARDS = 32
AVERAGE_ROW_BYTES = 300  # 16..128 int32 tokens plus the id and the format's per-row overhead


def token_row(index: int) -> dict[str, object]:
    """Row ``index``: its id and 16..128 token ids, a function of the index alone (so every format gets the same)."""
    length = 16 + (index * 7919) % 113
    tokens = ((np.arange(length, dtype=np.int64) * 2654435761 + index * 40503) % VOCAB).astype(np.int32)
    return {"id": index, "tokens": tokens}


def collate(items: list[dict[str, object]]) -> dict[str, object]:
    """A batch as a dict whose first value has the batch's length (Mosaic's loader counts samples that way)."""
    return {
        "id": torch.tensor([int(item["id"]) for item in items]),
        "tokens": [np.asarray(item["tokens"]) for item in items],
    }


def _import_streaming() -> types.ModuleType:
    """Mosaic's package without its vision datasets (torchvision's CUDA build does not load; they are unused)."""
    if "streaming.vision" not in sys.modules:
        sys.modules["streaming.vision"] = types.ModuleType("streaming.vision")
    import streaming
    from streaming.base.util import clean_stale_shared_memory

    clean_stale_shared_memory()
    return streaming


# --- conversion and upload ----------------------------------------------------------------------------------------


def shard_bytes(rows: int) -> int:
    return max(16 * 1024, rows * AVERAGE_ROW_BYTES // TARGET_SHARDS)


def convert_mosaic(rows: int, out: Path) -> float:
    streaming = _import_streaming()
    start = time.perf_counter()
    columns = {"id": "int", "tokens": "ndarray:int32"}
    with streaming.MDSWriter(out=str(out), columns=columns, size_limit=shard_bytes(rows)) as writer:
        for index in range(rows):
            writer.write(token_row(index))
    return time.perf_counter() - start


def convert_litdata(rows: int, out: Path) -> float:
    import litdata

    start = time.perf_counter()
    litdata.optimize(
        fn=token_row,
        inputs=list(range(rows)),
        output_dir=str(out),
        chunk_bytes=shard_bytes(rows),
        num_workers=1,
        verbose=False,
        keep_data_ordered=True,
    )
    return time.perf_counter() - start


def dir_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


# --- measuring -----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One pass of a reader: what it read, how long it took, what came over the wire."""

    samples: int
    seconds: float
    bytes_downloaded: int
    requests: int


class Meter:
    """Bytes and GET requests the proxy answered since the last :meth:`reset`."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def reset(self) -> None:
        self.proxy.clear()

    def totals(self) -> tuple[int, int]:
        gets = [entry for entry in self.proxy.requests("GET") if entry.status < 400]
        return sum(entry.body_bytes for entry in gets), len(gets)


def iterate(loader: Iterator[dict[str, object]] | torch.utils.data.DataLoader, limit: int | None = None) -> int:
    samples = 0
    for batch_index, batch in enumerate(loader):
        samples += len(batch["id"])
        if limit is not None and batch_index + 1 >= limit:
            break
    return samples


def timed_epochs(make_loader: Callable[[], torch.utils.data.DataLoader], meter: Meter | None, epochs: int = 1) -> Run:
    """Build the loader (its index download counts) and read ``epochs`` full epochs."""
    if meter is not None:
        meter.reset()
    start = time.perf_counter()
    loader = make_loader()
    samples = sum(iterate(loader) for _ in range(epochs))
    seconds = time.perf_counter() - start
    downloaded, requests = meter.totals() if meter is not None else (0, 0)
    del loader
    return Run(samples, seconds, downloaded, requests)


# --- the two peers --------------------------------------------------------------------------------------------------


def _fork(workers: int) -> dict[str, object]:
    """Workers by fork for both peers: ``litdata.optimize`` leaves the start method at spawn, and a spawned
    worker would import Mosaic's vision datasets (see ``_import_streaming``)."""
    return {"multiprocessing_context": "fork"} if workers else {}


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Peer:
    """How one library builds a dataset and a resumable loader; the measurements are the same for both."""

    name = ""
    #: Resume into the same (emptied) cache path: LitData's state names its cache folder and refuses another one.
    resume_in_same_cache_path = False

    def local_loader(self, workers: int) -> torch.utils.data.DataLoader:
        raise NotImplementedError

    def remote_loader(self, workers: int, cache: Path, cache_bytes: int | None) -> torch.utils.data.DataLoader:
        raise NotImplementedError


class Mosaic(Peer):
    name = "Mosaic Streaming 0.13.0"

    def __init__(self, local: Path, remote: str, rows: int) -> None:
        self.local, self.remote = local, remote
        # Shuffle blocks of two shards' rows: Mosaic's default block (262,144 samples) spans the whole dataset, so
        # every batch touches every shard, and with a cache of 25% its LRU re-downloads a shard for nearly every
        # sample (a 20,000-row run did not finish one epoch in 5 minutes).
        self.shuffle_block_size = max(1, 2 * rows // TARGET_SHARDS)

    def _loader(self, workers: int, **dataset_args: object) -> torch.utils.data.DataLoader:
        streaming = _import_streaming()
        dataset = streaming.StreamingDataset(
            shuffle=True,
            shuffle_seed=SEED,
            shuffle_block_size=self.shuffle_block_size,
            batch_size=BATCH_SIZE,
            num_canonical_nodes=1,
            **dataset_args,
        )
        return streaming.StreamingDataLoader(
            dataset, batch_size=BATCH_SIZE, num_workers=workers, collate_fn=collate, **_fork(workers)
        )

    def local_loader(self, workers: int) -> torch.utils.data.DataLoader:
        return self._loader(workers, local=str(self.local))

    def remote_loader(self, workers: int, cache: Path, cache_bytes: int | None) -> torch.utils.data.DataLoader:
        return self._loader(workers, remote=self.remote, local=str(cache), cache_limit=cache_bytes)


class LitData(Peer):
    name = "LitData 0.2.76"
    resume_in_same_cache_path = True

    def __init__(self, local: Path, remote: str, storage_options: dict[str, object]) -> None:
        self.local, self.remote, self.storage_options = local, remote, storage_options

    def _loader(self, workers: int, **dataset_args: object) -> torch.utils.data.DataLoader:
        import litdata
        import litdata.streaming.downloader

        # LitData fetches chunks with obstore when installed; against this plain-http endpoint obstore fails every
        # GET with "HTTP error: builder error" (AWS_ALLOW_HTTP set or not), so chunks go by LitData's boto3 path.
        litdata.streaming.downloader._OBSTORE_AVAILABLE = False

        dataset = litdata.StreamingDataset(shuffle=True, seed=SEED, **dataset_args)
        return litdata.StreamingDataLoader(
            dataset, batch_size=BATCH_SIZE, num_workers=workers, collate_fn=collate, **_fork(workers)
        )

    def local_loader(self, workers: int) -> torch.utils.data.DataLoader:
        return self._loader(workers, input_dir=str(self.local))

    def remote_loader(self, workers: int, cache: Path, cache_bytes: int | None) -> torch.utils.data.DataLoader:
        return self._loader(
            workers,
            input_dir=self.remote,
            cache_dir=str(cache),
            storage_options=self.storage_options,
            max_cache_size=cache_bytes or "1TB",
        )


def resume_at_90(peer: Peer, meter: Meter, scratch: Path, rows: int) -> dict[str, float]:
    """Read 90% of an epoch from the server, checkpoint (state through JSON), resume into a fresh loader over a
    cold cache, and take the first batch: seconds from building the loader, bytes over the wire."""
    batches = int(0.9 * rows) // BATCH_SIZE
    cache = Path(tempfile.mkdtemp(dir=scratch))
    first = peer.remote_loader(0, cache, None)
    iterate(first, limit=batches)
    state = json.loads(json.dumps(first.state_dict()))
    del first
    if peer.resume_in_same_cache_path:
        shutil.rmtree(cache)
        cache.mkdir()
    else:
        cache = Path(tempfile.mkdtemp(dir=scratch))
    meter.reset()
    start = time.perf_counter()
    resumed = peer.remote_loader(0, cache, None)
    resumed.load_state_dict(state)
    batch = next(iter(resumed))
    seconds = time.perf_counter() - start
    downloaded, requests = meter.totals()
    first_id = int(batch["id"][0])
    return {"seconds": seconds, "bytes": downloaded, "requests": requests, "first_id": first_id}


def measure(peer: Peer, meter: Meter, scratch: Path, dataset_bytes: int, rows: int) -> dict[str, object]:
    fresh = lambda: Path(tempfile.mkdtemp(dir=scratch))  # noqa: E731 - a cold cache for each run
    out: dict[str, object] = {"peer": peer.name}
    for workers in (0, 2):
        local = timed_epochs(partial(peer.local_loader, workers), None)
        progress(f"{peer.name}: local epoch, {workers} workers: {local.seconds:.1f} s")
        remote = timed_epochs(lambda w=workers: peer.remote_loader(w, fresh(), None), meter)
        progress(f"{peer.name}: server epoch, {workers} workers: {remote.seconds:.1f} s")
        out[f"workers{workers}"] = {"local": asdict(local), "remote": asdict(remote)}
    quarter = dataset_bytes // 4
    two_epochs = timed_epochs(lambda: peer.remote_loader(0, fresh(), quarter), meter, epochs=2)
    progress(f"{peer.name}: two epochs, cache 25%: {two_epochs.seconds:.1f} s")
    out["cache_25pct_two_epochs"] = {"cache_bytes": quarter, **asdict(two_epochs)}
    out["resume_90pct"] = resume_at_90(peer, meter, scratch, rows)
    progress(f"{peer.name}: resume at 90%: {out['resume_90pct']['seconds']:.1f} s")
    return out


# --- report ---------------------------------------------------------------------------------------------------------


def table(results: dict[str, object]) -> str:
    lines = [
        "| peer | workers | local samples/s | server samples/s | server / local | bytes per epoch / dataset |",
        "|---|---|---|---|---|---|",
    ]
    for name, peer in results["peers"].items():
        size = results["datasets"][name]["bytes"]
        for workers in (0, 2):
            run = peer[f"workers{workers}"]
            local = run["local"]["samples"] / run["local"]["seconds"]
            remote = run["remote"]["samples"] / run["remote"]["seconds"]
            ratio = run["remote"]["bytes_downloaded"] / size
            lines.append(
                f"| {peer['peer']} | {workers} | {local:,.0f} | {remote:,.0f} | {remote / local:.2f}x | {ratio:.3f} |"
            )
    lines += [
        "",
        "| peer | converted bytes | conversion s | 2 epochs, cache 25%: downloaded / dataset | "
        "resume at 90%, cold: s to first batch | resume: bytes / dataset (requests) |",
        "|---|---|---|---|---|---|",
    ]
    for name, peer in results["peers"].items():
        made = results["datasets"][name]
        two = peer["cache_25pct_two_epochs"]
        resume = peer["resume_90pct"]
        lines.append(
            f"| {peer['peer']} | {made['bytes']:,} | {made['convert_s']:.1f} | "
            f"{two['bytes_downloaded'] / made['bytes']:.2f} | {resume['seconds']:.2f} | "
            f"{resume['bytes'] / made['bytes']:.3f} ({resume['requests']}) |"
        )
    return "\n".join(lines)


def run(rows: int, scratch: Path) -> dict[str, object]:
    mds, lit = scratch / "mds", scratch / "litdata"
    datasets = {
        "mosaic": {"convert_s": convert_mosaic(rows, mds), "bytes": dir_bytes(mds)},
        "litdata": {"convert_s": convert_litdata(rows, lit), "bytes": dir_bytes(lit)},
    }
    progress(f"converted {rows:,} rows: {datasets}")
    server = S3Server.start()
    proxy = FaultProxy(server.endpoint_url)
    try:
        buckets = {name: server.bucket(name) for name in datasets}
        server.upload_dir(mds, buckets["mosaic"])
        server.upload_dir(lit, buckets["litdata"])
        # Mosaic reads the endpoint from S3_ENDPOINT_URL and the credentials from boto3's environment; LitData
        # fetches chunks with obstore, which refuses plain http unless AWS_ALLOW_HTTP is set.
        os.environ.update(
            {**server.env(proxy.endpoint_url), "S3_ENDPOINT_URL": proxy.endpoint_url, "AWS_ALLOW_HTTP": "true"}
        )
        storage_options = {
            "endpoint_url": proxy.endpoint_url,
            "aws_access_key_id": ACCESS_KEY,
            "aws_secret_access_key": SECRET_KEY,
            "region_name": REGION,
        }
        peers = {
            "mosaic": Mosaic(mds, f"s3://{buckets['mosaic']}", rows),
            "litdata": LitData(lit, f"s3://{buckets['litdata']}", storage_options),
        }
        meter = Meter(proxy)
        results = {name: measure(peer, meter, scratch, datasets[name]["bytes"], rows) for name, peer in peers.items()}
    finally:
        proxy.close()
        server.stop()
    return {"rows": rows, "datasets": datasets, "peers": results}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few thousand rows: a smoke run, not figures")
    parser.add_argument("--rows", type=int, default=None, help="rows in the dataset (default 200,000; quick 4,000)")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    rows = args.rows or (4_000 if args.quick else 200_000)
    warnings.filterwarnings("ignore", message=".*max_cache_size.*")
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    with tempfile.TemporaryDirectory(prefix="peers-remote-") as scratch:
        results = run(rows, Path(scratch))
    results["load_average"] = {"before": load_before, "after": Path("/proc/loadavg").read_text().split()[:3]}
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results["command"] = shlex.join([Path(sys.executable).name, *sys.argv])
    text = json.dumps(results, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        raise SystemExit(main())

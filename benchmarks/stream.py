"""Figure 11: ShardedStream — resume to the first batch at 90% of an epoch over 10,000 .npy shards, and
streaming throughput beside a plain hand-written IterableDataset."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from torch.utils.data import IterableDataset

from .harness import Config, Figure, PeakMemory, Target, collect, fmt_bytes, fmt_ratio, fmt_time, median_of

ROWS, ROW = 1000, 64  # samples per shard, tokens per sample
WINDOW, PACK = 1024, 2048
BATCH = 8


def make_shards(root: str, shards: int, sparse: bool) -> str:
    """``shards`` .npy files of ROWS x ROW int32 tokens (sparse files: contents never written) + the index."""
    import numpy as np

    from torch_input_ckpt import InputStateError
    from torch_input_ckpt.stream.index import INDEX_FILE, read_index
    from torch_input_ckpt.stream.shards import write_index

    os.makedirs(root, exist_ok=True)
    if os.path.exists(os.path.join(root, INDEX_FILE)):
        try:
            read_index(Path(root))
        except InputStateError:  # written by an older version (no checksum): the shards are there, re-count
            write_index(root)
        return root
    rng = np.random.default_rng(0)
    for s in range(shards):
        array = np.lib.format.open_memmap(os.path.join(root, f"{s:06d}.npy"), "w+", np.int32, (ROWS, ROW))
        if not sparse:
            array[:] = rng.integers(0, 50000, size=(ROWS, ROW), dtype=np.int32)
        array.flush()
        del array
    write_index(root)
    return root


class PackedShards(IterableDataset):
    """The hand-written equivalent: shards in order, rows concatenated and cut into PACK tokens, the
    carry-over in the state (what users write for StatefulDataLoader)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths, self.shard, self.row, self.carry = paths, 0, 0, 0

    def __iter__(self) -> Any:
        import numpy as np
        import torch

        while self.shard < len(self.paths):
            array = np.load(self.paths[self.shard], mmap_mode="r")
            need = PACK
            pieces = []
            while self.row < len(array) and need:
                take = min(need, ROW - self.carry)
                pieces.append(np.asarray(array[self.row, self.carry : self.carry + take]))
                need -= take
                self.carry += take
                if self.carry == ROW:
                    self.row, self.carry = self.row + 1, 0
            if self.row == len(array):
                self.shard, self.row = self.shard + 1, 0
            if pieces:
                yield torch.from_numpy(np.concatenate(pieces).astype(np.int64))

    def state_dict(self) -> dict[str, int]:
        return {"shard": self.shard, "row": self.row, "carry": self.carry}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.shard, self.row, self.carry = state["shard"], state["row"], state["carry"]


def _resume_ours(root: str, pack: bool = True) -> dict[str, Any]:
    from torch_input_ckpt import ResumableDataLoader, ShardedStream

    def build() -> ShardedStream:
        return ShardedStream(root, lanes=64, seed=0, window=WINDOW, pack_to=PACK if pack else None)

    start = time.perf_counter()
    stream = build()
    built = time.perf_counter() - start
    saver = ResumableDataLoader(stream, batch_size=BATCH)
    saver.sampler.move_to(0, int(0.9 * len(stream)))  # the position a run reaches at 90% of the epoch
    state = saver.state_dict()
    loader = ResumableDataLoader(build(), batch_size=BATCH)
    with PeakMemory() as memory:
        start = time.perf_counter()
        loader.load_state_dict(state)
        next(iter(loader))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra": memory.extra, "build": built}


def _resume_stateful(root: str) -> dict[str, Any]:
    from torchdata.stateful_dataloader import StatefulDataLoader

    paths = sorted(os.path.join(root, p) for p in os.listdir(root) if p.endswith(".npy"))
    saver = StatefulDataLoader(PackedShards(paths), batch_size=BATCH)
    it = iter(saver)
    next(it)
    state = saver.state_dict()
    # The same point of the epoch, written into its dataset state (running 90% of 10M rows would take hours).
    state["dataset_state"] = {"shard": int(0.9 * len(paths)), "row": 0, "carry": 0}
    loader = StatefulDataLoader(PackedShards(paths), batch_size=BATCH)
    with PeakMemory() as memory:
        start = time.perf_counter()
        loader.load_state_dict(state)
        next(iter(loader))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra": memory.extra, "build": 0.0}


class PlainRows(IterableDataset):
    """A plain IterableDataset over the same .npy files: each worker takes every k-th shard, rows in order."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __iter__(self) -> Any:
        import numpy as np
        import torch

        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for path in self.paths[worker::workers]:
            array = np.load(path, mmap_mode="r")
            for k in range(len(array)):
                yield np.array(array[k])


def _throughput(root: str, impl: str, workers: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from torch_input_ckpt import ResumableDataLoader, ShardedStream

    if impl == "plain":
        paths = sorted(os.path.join(root, p) for p in os.listdir(root) if p.endswith(".npy"))
        loader: Any = DataLoader(PlainRows(paths), batch_size=64, num_workers=workers)
    else:
        stream = ShardedStream(root, lanes=8, seed=0, window=WINDOW)
        loader = ResumableDataLoader(stream, batch_size=64, num_workers=workers, reseed_rng=impl == "ours_reseed")
    start = time.perf_counter()
    samples = sum(len(batch) for batch in loader)
    return {"seconds": time.perf_counter() - start, "samples": samples}


# -- Mosaic Streaming and LitData, over the same rows converted to their formats ---------------------------

_STUBS = {
    "torchvision/__init__.py": "",
    "torchvision/datasets.py": "class VisionDataset:\n    pass\n\n\nclass CIFAR10(VisionDataset):\n    pass\n",
    "torchvision/transforms/__init__.py": "",
    "torchvision/transforms/functional.py": "def to_tensor(x):\n    raise NotImplementedError\n",
}


def _stub_torchvision(base: str) -> None:
    """Mosaic Streaming imports torchvision at package import (for its vision datasets, unused here); the
    torchvision wheel that installs beside torch 2.13 fails to load, so the child gets stub modules from
    this benchmark's own temp dir. Nothing outside the child sees them."""
    import sys

    root = os.path.join(base, "stubs")
    for name, text in _STUBS.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    sys.path.insert(0, root)


def _rows(root: str) -> Any:
    import numpy as np

    paths = sorted(os.path.join(root, p) for p in os.listdir(root) if p.endswith(".npy"))
    return np.concatenate([np.load(p) for p in paths])


def _convert(impl: str, root: str, out: str) -> dict[str, Any]:
    rows = _rows(root)
    start = time.perf_counter()
    if impl == "mosaic":
        from streaming import MDSWriter

        with MDSWriter(out=out, columns={"tokens": f"ndarray:int32:{ROW}"}, size_limit=1 << 22) as writer:
            for row in rows:
                writer.write({"tokens": row})
    else:
        import litdata

        litdata.optimize(
            fn=_LitRow(rows),
            inputs=list(range(len(rows))),
            output_dir=out,
            chunk_bytes="4MB",
            num_workers=1,
            mode="overwrite",
        )
    return {"seconds": time.perf_counter() - start, "samples": len(rows)}


class _LitRow:
    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def __call__(self, i: int) -> dict[str, Any]:
        return {"tokens": self.rows[i]}


def _resume_other(impl: str, out: str, samples: int) -> dict[str, Any]:
    at = int(0.9 * samples)
    if impl == "mosaic":
        from streaming import StreamingDataLoader, StreamingDataset

        dataset = StreamingDataset(local=out, shuffle=True, batch_size=BATCH, shuffle_seed=0, num_canonical_nodes=1)
        loader: Any = StreamingDataLoader(dataset, batch_size=BATCH, num_workers=0)
        state: dict[str, Any] = {
            "epoch": 0,
            "sample_in_epoch": at,
            "num_canonical_nodes": 1,
            "shuffle_seed": 0,
            "initial_physical_nodes": 1,
        }
    else:
        import litdata

        def build() -> Any:
            return litdata.StreamingDataLoader(litdata.StreamingDataset(out, shuffle=True, seed=0), batch_size=BATCH)

        saver = build()
        next(iter(saver))
        state = saver.state_dict()  # after one batch, then moved to 90% (its own counters)
        state["num_samples_yielded"] = at
        state["dataset"]["num_samples_yielded"] = at
        state["dataset"]["sample_in_epoch"] = at
        loader = build()
    with PeakMemory() as memory:
        start = time.perf_counter()
        loader.load_state_dict(state)
        next(iter(loader))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "extra": memory.extra, "build": 0.0}


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: one resume, one conversion or one throughput pass."""
    import warnings

    warnings.filterwarnings("ignore")  # third-party noise (non-writable arrays, deprecations): not results
    what, impl = params["what"], params["impl"]
    if impl == "mosaic":
        _stub_torchvision(params["base"])
    if what == "convert":
        return _convert(impl, params["root"], params["out"])
    if what == "resume" and impl in ("mosaic", "litdata"):
        return _resume_other(impl, params["out"], params["samples"])
    if what == "resume" and impl == "ours_rows":
        return _resume_ours(params["root"], pack=False)
    if what == "resume":
        return (_resume_ours if impl == "ours" else _resume_stateful)(params["root"])
    return _throughput(params["root"], impl, params["workers"])


def _others(cfg: Config, base: str, root: str) -> list[list[str]]:
    """Rows for Mosaic Streaming and LitData (where they are installed), over ``root``'s rows converted."""
    import importlib.util

    rows = []
    for impl, module, name in (("mosaic", "streaming", "Mosaic Streaming"), ("litdata", "litdata", "LitData")):
        if importlib.util.find_spec(module) is None:
            rows.append([name, "not installed", "", ""])
            continue
        out = os.path.join(base, f"{impl}_{os.path.basename(root)}")
        record = out + ".converted.json"
        if os.path.exists(record):  # converted by an earlier run: its conversion time was recorded then
            with open(record) as f:
                converted = json.load(f)
        else:
            shutil.rmtree(out, ignore_errors=True)
            params = {"what": "convert", "impl": impl, "root": root, "out": out, "base": base}
            converted = collect("stream", [params], cfg, reps=1, label=lambda v: f"convert {v['impl']}")[0][0]
            with open(record, "w") as f:
                json.dump(converted, f)
        resume = {"what": "resume", "impl": impl, "out": out, "samples": converted["samples"], "base": base}
        results = collect("stream", [resume], cfg, label=lambda v: v["impl"])[0]
        rows.append(
            [
                f"{name} ({converted['samples']:,} rows, no packing)",
                fmt_time(median_of(results, "seconds")),
                fmt_bytes(max(r["extra"] for r in results)),
                f"conversion {fmt_time(converted['seconds'])}",
            ]
        )
    return rows


def run(cfg: Config) -> list[Figure]:
    """Figure 11 (two tables)."""
    base = os.path.join(tempfile.gettempdir(), "torch_input_ckpt_bench_stream")
    fig = _resume_figure(cfg, base)
    _same_data_rows(cfg, base, fig)
    return [fig, _throughput_figure(cfg, base)]


def _resume_figure(cfg: Config, base: str) -> Figure:
    shards = 200 if cfg.quick else 10_000
    big = make_shards(os.path.join(base, f"resume_{shards}"), shards, sparse=True)
    resume = [{"what": "resume", "impl": i, "root": big} for i in ("ours", "stateful")]
    r_ours, r_theirs = collect("stream", resume, cfg, label=lambda v: v["impl"])
    t_ours, t_theirs = median_of(r_ours, "seconds"), median_of(r_theirs, "seconds")
    extra = max(r["extra"] for r in r_ours)
    fig = Figure(
        key="stream",
        title=f"11. ShardedStream: resume to the first batch at 90% ({shards:,} shards x {ROWS:,} samples, "
        f".npy, window {WINDOW:,}, packing {PACK:,}, num_workers=0)",
        about="`load_state_dict` + first batch in a fresh process, stream already constructed (construction, "
        "which reads the index and stats every shard, is the last column). torchdata's StatefulDataLoader over "
        "a hand-written packing IterableDataset whose state is (shard, row, carry): its best case, resumable "
        "only on the same topology and without a window shuffle.",
        columns=["loader", "resume to first batch", "extra memory", "construction"],
    )
    fig.rows.append(
        [
            "ShardedStream + ResumableDataLoader",
            fmt_time(t_ours),
            fmt_bytes(extra),
            fmt_time(median_of(r_ours, "build")),
        ]
    )
    fig.rows.append(
        [
            "hand-written IterableDataset + StatefulDataLoader",
            fmt_time(t_theirs),
            fmt_bytes(max(r["extra"] for r in r_theirs)),
            "",
        ]
    )
    fig.targets.append(Target("resume < 100 ms", t_ours < 0.1, fmt_time(t_ours)))
    fig.targets.append(Target("extra memory < 50 MB", extra < 50e6, fmt_bytes(extra)))
    return fig


def _same_data_rows(cfg: Config, base: str, fig: Figure) -> None:
    middle = 20 if cfg.quick else 200
    mid = make_shards(os.path.join(base, f"resume_{middle}"), middle, sparse=False)
    for impl, label, kind in (("ours", "ours 200", "packing"), ("ours_rows", "rows", "no packing")):
        res = collect("stream", [{"what": "resume", "impl": impl, "root": mid}], cfg, label=lambda v, n=label: n)[0]
        fig.rows.append(
            [
                f"ShardedStream ({middle} shards x 1,000 rows, {kind})",
                fmt_time(median_of(res, "seconds")),
                fmt_bytes(max(r["extra"] for r in res)),
                fmt_time(median_of(res, "build")),
            ]
        )
    fig.rows.extend(_others(cfg, base, mid))
    fig.notes.append(
        f"Mosaic Streaming and LitData resume the same {middle * ROWS:,} rows (converted to MDS / LitData chunks once, "
        "timed in the last column), unpacked (neither packs), at sample 90%; their states are written at that "
        "point from a state taken after one batch. Sized so that LitData's conversion (~2,000 rows/s) takes "
        "under two minutes."
    )


def _throughput_figure(cfg: Config, base: str) -> Figure:
    small = make_shards(os.path.join(base, "throughput"), 20 if cfg.quick else 100, sparse=False)
    variants = [
        {"what": "throughput", "impl": i, "workers": w, "root": small}
        for w in (0, 2)
        for i in ("plain", "ours", "ours_reseed")
    ]
    results = collect("stream", variants, cfg, label=lambda v: f"{v['impl']} workers={v['workers']}")
    by = {(v["impl"], v["workers"]): r for v, r in zip(variants, results, strict=True)}
    tp = Figure(
        key="stream_throughput",
        title="11b. ShardedStream streaming throughput vs a plain IterableDataset + DataLoader (rows of .npy shards)",
        about="One epoch, batch 64; samples per second; ratio = ours / plain. `reseed` = per-sample RNG reseeding on.",
        columns=["num_workers", "loader", "samples/s", "ratio"],
    )
    for w in (0, 2):
        plain = by["plain", w][0]["samples"] / median_of(by["plain", w], "seconds")
        for impl, name in (
            ("plain", "plain IterableDataset"),
            ("ours", "ShardedStream"),
            ("ours_reseed", "ShardedStream, reseed"),
        ):
            rate = by[impl, w][0]["samples"] / median_of(by[impl, w], "seconds")
            tp.rows.append([str(w), name, f"{rate:,.0f}", fmt_ratio(rate, plain) if impl != "plain" else ""])
            if impl == "ours":
                tp.targets.append(
                    Target(f">= 0.95x plain, num_workers={w}", rate >= 0.95 * plain, fmt_ratio(rate, plain))
                )
    return tp

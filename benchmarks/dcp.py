"""Figure: the loader's state in torch.distributed.checkpoint, ours vs torchtitan's ParallelAwareDataloader.

Ours: ``ResumableTitanDataLoader`` (one replicated value: every data-parallel rank's state, identical ones
stored once). Theirs: torchtitan's ``ParallelAwareDataloader`` (a ``StatefulDataLoader`` state pickled per
``dp_rank_<r>`` key). The same W gloo ranks (forked), the same number of batches taken, then ``dcp.save`` of
``{"dataloader": loader}`` alone, and ``dcp.load`` into a fresh loader on W ranks and on W + 1 ranks.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from .harness import Config, Figure, collect, fmt_bytes, fmt_ratio, fmt_time, median_of

WORLD = 2
SEQ_LEN = 16
BATCH = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Rows:
    """Map-style rows of SEQ_LEN + 1 token ids (ours reads them through its sampler)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> list[int]:
        return [i] * (SEQ_LEN + 1)


def _their_dataset(n: int, rank: int, world: int) -> Any:
    """What torchtitan's HF text dataset is to its loader: a stateful iterable, this rank's share of the rows."""
    import torch
    from torch.utils.data import IterableDataset

    class Shard(IterableDataset):
        def __init__(self) -> None:
            self.position = 0

        def __iter__(self):
            rows = range(rank, n, world)
            while self.position < len(rows):
                row = torch.full((SEQ_LEN + 1,), rows[self.position])
                self.position += 1
                yield {"input": row[:-1]}, row[1:]

        def state_dict(self) -> dict[str, int]:
            return {"position": self.position}

        def load_state_dict(self, state: dict[str, int]) -> None:
            self.position = state["position"]

    return Shard()


def _loader(kind: str, n: int, rank: int, world: int) -> Any:
    if kind == "ours":
        from torch_input_ckpt.torchtitan import ResumableTitanDataLoader

        config = ResumableTitanDataLoader.Config(seed=3)
        return ResumableTitanDataLoader(
            config, dp_world_size=world, dp_rank=rank, seq_len=SEQ_LEN, local_batch_size=BATCH, dataset=_Rows(n)
        )
    from torchtitan.components.dataloader import ParallelAwareDataloader

    return ParallelAwareDataloader(_their_dataset(n, rank, world), dp_rank=rank, dp_world_size=world, batch_size=BATCH)


def _rank(rank: int, world: int, port: int, params: dict[str, Any], directory: str, queue: Any) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        kind, n, saved_world = params["kind"], params["n"], params["saved_world"]
        loader = _loader(kind, n, rank, world)
        out: dict[str, Any] = {}
        if world == saved_world:
            batches = iter(loader)
            for _ in range(params["batches"]):
                next(batches)
            dist.barrier()
            start = time.perf_counter()
            dcp.save({"dataloader": loader}, checkpoint_id=directory)
            out["save"] = time.perf_counter() - start
            loader = _loader(kind, n, rank, world)  # fresh, as after a restart
        dist.barrier()
        start = time.perf_counter()
        try:
            dcp.load({"dataloader": loader}, checkpoint_id=directory)
            out["load"] = time.perf_counter() - start
        except BaseException as error:  # CheckpointException is a BaseException  # noqa: BLE001
            out["refused"] = f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:160]}"
        queue.put((rank, out))
    except BaseException:  # noqa: BLE001
        queue.put((rank, {"error": traceback.format_exc()}))
    finally:
        dist.destroy_process_group()


def _world(world: int, params: dict[str, Any], directory: str) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, params, directory, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    errors = [r["error"] for r in results.values() if "error" in r]
    if errors:
        raise RuntimeError(errors[0])
    return [results[r] for r in range(world)]


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Child side: W ranks save, then load into fresh loaders; W + 1 ranks load; the checkpoint's bytes."""
    with tempfile.TemporaryDirectory() as directory:
        saved = _world(WORLD, {**params, "saved_world": WORLD}, directory)
        files = {p.name: p.stat().st_size for p in Path(directory).iterdir()}
        other = _world(WORLD + 1, {**params, "saved_world": WORLD}, directory)
    data = sum(size for name, size in files.items() if name.endswith(".distcp"))
    return {
        "save": max(r["save"] for r in saved),
        "load": max(r["load"] for r in saved),
        "data_bytes": data,
        "metadata_bytes": files.get(".metadata", 0),
        "other": [r.get("refused") or "ok" for r in other],
    }


def run(cfg: Config) -> list[Figure]:
    """The DCP figure."""
    n, batches = (10_000, 20) if cfg.quick else (1_000_000, 200)
    variants = [{"kind": "ours", "n": n, "batches": batches}, {"kind": "theirs", "n": n, "batches": batches}]
    ours, theirs = collect("dcp", variants, cfg, label=lambda v: f"{v['kind']}, {WORLD} ranks")
    fig = Figure(
        key="dcp",
        title=(
            f"18. DCP: the loader's state in torch.distributed.checkpoint ({WORLD} gloo ranks, {batches} batches taken)"
        ),
        about=(
            "`dcp.save({'dataloader': loader})` then `dcp.load` into a fresh loader on the same ranks, and on "
            f"{WORLD + 1} ranks. Ours: `ResumableTitanDataLoader` (every data-parallel rank's state in one "
            "replicated value, gathered in `state_dict()`). Theirs: torchtitan 0.3.0's `ParallelAwareDataloader` "
            "(a `StatefulDataLoader` state pickled under `dp_rank_<r>` per rank). Bytes: DCP's data files "
            "(`.distcp`) over all ranks; save and load: the slowest rank, median of the repetitions."
        ),
        columns=["loader", "data bytes (all ranks)", "per rank", "save", "load", f"load on {WORLD + 1} ranks"],
    )
    for name, results in (("ResumableTitanDataLoader", ours), ("ParallelAwareDataloader", theirs)):
        data = median_of(results, "data_bytes")
        other = results[0]["other"]
        verdict = "resumes" if all(o == "ok" for o in other) else "refused: " + next(o for o in other if o != "ok")
        fig.rows.append(
            [
                name,
                fmt_bytes(data),
                fmt_bytes(data / WORLD),
                fmt_time(median_of(results, "save")),
                fmt_time(median_of(results, "load")),
                verdict,
            ]
        )
    fig.rows.append(
        [
            "ours / theirs",
            fmt_ratio(median_of(ours, "data_bytes"), median_of(theirs, "data_bytes")),
            "",
            fmt_ratio(median_of(ours, "save"), median_of(theirs, "save")),
            fmt_ratio(median_of(ours, "load"), median_of(theirs, "load")),
            "",
        ]
    )
    fig.data = {"ours": ours, "theirs": theirs}
    return [fig]

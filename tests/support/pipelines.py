"""Pipelines described by plain JSON configurations, for the state machine and the fresh-process child.

A configuration names what a user builds — a plain map-style dataset, a ``Mixture`` of map-style sources
or of ``ShardedStream`` sources, or one ``ShardedStream`` (packed or not) over real JSON-lines or ``.npy``
shard files — and the loader around it (batch size, ``num_workers``, world size, seed). The same
configuration builds the pipeline here and in a fresh process (``tests/support/pipeline_child.py``).

Every delivered item names itself by its *units*, what must be delivered exactly once per (source)
epoch: a map item's id (``"web:3"``), a document's id (``"code/1-2"``), an ``.npy`` row's first token,
or, packed, every token it holds (tokens are ``TAG * 10**6 + shard * 10**4 + doc * 100 + j``, so a token
says which source, shard and document it came from).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from torch_input_ckpt import InputCheckpointer, Mixture, ResumableDataLoader, ResumableSampler, ShardedStream, World
from torch_input_ckpt.stream.shards import write_index

# Source names are never in alphabetical order by accident: configurations take them in this order
# (or a shuffled one that is checked not to be sorted).
NAMES = ("web", "code", "math", "books")
TAGS = {"plain": 5, "web": 1, "code": 2, "math": 3, "books": 4}
ROW = 2  # tokens per .npy row
MAX_EPOCHS = 3
NEVER = 10**9  # the checkpointers' schedule: the tests save by hand


class Items(Dataset):
    """Item ``i`` of source ``name``: its id and one draw of torch's global RNG (an augmentation)."""

    def __init__(self, name: str, length: int) -> None:
        self.name, self.length = name, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[str, float]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return f"{self.name}:{index}", round(torch.rand(()).item(), 9)


def token(name: str, shard: int, doc: int, j: int) -> int:
    return TAGS[name] * 10**6 + shard * 10**4 + doc * 100 + j


def doc_tokens(name: str, fmt: str, shard: int, doc: int) -> list[int]:
    length = ROW if fmt == "npy" else 1 + (shard + 2 * doc) % 3
    return [token(name, shard, doc, j) for j in range(length)]


def write_shard(directory: Path, name: str, fmt: str, shard: int, size: int, first: int = 0) -> Path:
    """Shard ``shard`` of source ``name``: documents ``first .. first+size-1``."""
    path = directory / f"part-{shard:03d}.{fmt}"
    docs = [doc_tokens(name, fmt, shard, k) for k in range(first, first + size)]
    if fmt == "npy":
        np.save(path, np.array(docs, dtype=np.int64).reshape(size, ROW))
    else:
        path.write_text(
            "".join(json.dumps({"id": f"{name}/{shard}-{k + first}", "tokens": t}) + "\n" for k, t in enumerate(docs))
        )
    return path


def write_stream(directory: Path, name: str, fmt: str, sizes: list[int]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for shard, size in enumerate(sizes):
        write_shard(directory, name, fmt, shard, size)
    write_index(directory, "tokens" if fmt == "jsonl" else None)


def stream_units(name: str, source: dict[str, Any]) -> set[Any]:
    """What a stream source must deliver once per (source) epoch: document ids, first tokens or tokens."""
    out: set[Any] = set()
    for shard, size in enumerate(source["sizes"]):
        for k in range(size):
            tokens = doc_tokens(name, source["format"], shard, k)
            if source["pack_to"]:
                out.update(tokens)
            else:
                out.add(tokens[0] if source["format"] == "npy" else f"{name}/{shard}-{k}")
    return out


def source_units(name: str, source: dict[str, Any]) -> set[Any]:
    if "length" in source:
        return {f"{name}:{i}" for i in range(source["length"])}
    return stream_units(name, source)


def source_of(unit: Any) -> str:
    """The source a unit came from."""
    if isinstance(unit, str):
        return unit.replace("/", ":").split(":")[0]
    tag = unit // 10**6
    return next(name for name, t in TAGS.items() if t == tag)


def describe(sample: Any) -> list[Any]:
    """A delivered sample as ``[units, value]``: what it must cover exactly once, and all of it (values
    and draws) for exactness."""
    if isinstance(sample, tuple):  # Items
        return [[sample[0]], list(sample)]
    if isinstance(sample, dict) and "input_ids" in sample:  # packed
        ids = sample["input_ids"].tolist()
        docs = sample["document_ids"].tolist()
        units = [t for t, d in zip(ids, docs, strict=True) if d != -1]
        return [units, [ids, sample["position_ids"].tolist(), docs]]
    if isinstance(sample, dict):  # a JSON-lines document
        return [[sample["id"]], [sample["id"], list(sample["tokens"])]]
    row = torch.as_tensor(np.asarray(sample)).tolist()  # an .npy row
    return [[row[0]], row]


def collate(batch: list[Any]) -> list[list[Any]]:
    return [describe(sample) for sample in batch]


def build_source(config: dict[str, Any], name: str) -> Any:
    source = config["sources"][name]
    if "length" in source:
        return Items(name, source["length"])
    return ShardedStream(
        source["dir"],
        lanes=min(2, len(source["sizes"])),
        seed=source["seed"],
        window=source["window"],
        pack_to=source["pack_to"],
        tokens="tokens" if source["pack_to"] and source["format"] == "jsonl" else None,
    )


def build_dataset(config: dict[str, Any]) -> Any:
    if config["kind"] in ("plain", "stream"):
        return build_source(config, next(iter(config["sources"])))
    sources = {name: build_source(config, name) for name in config["sources"]}
    return Mixture(sources, config["weights"], samples_per_epoch=config["samples_per_epoch"], allow_growth=True)


def build_loaders(config: dict[str, Any]) -> list[ResumableDataLoader]:
    """One loader per rank of ``config["world"]`` ranks, each over its own dataset object (as real ranks)."""
    loaders = []
    for rank in range(config["world"]):
        dataset = build_dataset(config)
        sampler = ResumableSampler(dataset, num_replicas=config["world"], rank=rank, shuffle=True, seed=config["seed"])
        loaders.append(
            ResumableDataLoader(
                dataset,
                batch_size=config["batch"],
                sampler=sampler,
                num_workers=config["workers"],
                collate_fn=collate,
                seed=config["seed"],
            )
        )
    return loaders


def checkpointers(directory: Path, loaders: list[ResumableDataLoader]) -> list[InputCheckpointer]:
    size = len(loaders)
    return [
        InputCheckpointer(directory, loader, every_n_steps=NEVER, keep_last=None, world=World(rank, size))
        for rank, loader in enumerate(loaders)
    ]


def epochs_of(loader: ResumableDataLoader) -> Iterator[tuple[int, list[Any]]]:
    """The README's loop: the loader's own epoch counter, no set_epoch."""
    for epoch in range(loader.epoch, MAX_EPOCHS):
        for batch in loader:
            yield epoch, batch


class Run:
    """The ranks of one run in lockstep in this process, with the global position of every delivery.

    Rank ``r``'s ``k``-th sample of a segment (from a start or a restore at global cursor ``c0``) is at
    position ``c0 + r + k * W``; positions at or past the epoch's length are ``DistributedSampler``'s
    padding (repeats of the epoch's first samples).
    """

    def __init__(self, config: dict[str, Any], loaders: list[ResumableDataLoader], epoch: int, cursor: int) -> None:
        self.config, self.loaders = config, loaders
        self.world = len(loaders)
        self.epoch, self.c0 = epoch, cursor
        self.k = [0] * self.world
        self.iterators = [epochs_of(loader) for loader in loaders]
        self.finished = False

    def epoch_length(self, epoch: int) -> int:
        return self.loaders[0].sampler.epoch_length(epoch)

    def cursor(self) -> int:
        """Positions consumed in the model's current epoch (all ranks)."""
        return min(self.epoch_length(self.epoch), self.c0 + max(self.k) * self.world)

    def step(self) -> list[tuple[int, int, list[Any], Any]] | None:
        """One batch from every rank: ``(epoch, position, units, value)`` per sample, or None at the end."""
        got = [next(it, None) for it in self.iterators]
        if all(g is None for g in got):
            self.finished = True
            return None
        assert all(g is not None for g in got), f"ranks ran out at different steps: {[g is None for g in got]}"
        epochs = {g[0] for g in got}  # type: ignore[index]
        assert len(epochs) == 1, f"ranks disagree on the epoch: {epochs}"
        epoch = epochs.pop()
        if epoch != self.epoch:
            self.epoch, self.c0, self.k = epoch, 0, [0] * self.world
        assert len({len(g[1]) for g in got}) == 1, "ranks delivered batches of different sizes"  # type: ignore[index]
        out = []
        for rank, (_, batch) in enumerate(got):  # type: ignore[misc]
            for units, value in batch:
                out.append((epoch, self.c0 + rank + self.k[rank] * self.world, units, value))
                self.k[rank] += 1
        return out

    def close(self) -> None:
        self.iterators = []
        self.loaders = []


def dump(config: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(config, sort_keys=True))


def rest_of_run(config: dict[str, Any], directory: Path, step: int, epoch: int, cursor: int) -> list[Any]:
    """Restore every rank of ``config`` from ``directory`` at ``step`` and run to the end: the deliveries."""
    loaders = build_loaders(config)
    ckpts = checkpointers(directory, loaders)
    try:
        for ckpt in ckpts:
            ckpt.restore(step)
    finally:
        for ckpt in ckpts:
            ckpt.close()
    run = Run(config, loaders, epoch, cursor)
    out: list[Any] = []
    while (got := run.step()) is not None:
        out.extend(got)
    return out


def environ_examples(default: int) -> int:
    """``HYPOTHESIS_FUZZ_EXAMPLES`` (set by ``make fuzz``), else ``default``."""
    return int(os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES", default))

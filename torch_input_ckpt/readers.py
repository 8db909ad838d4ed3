"""Shard readers: "open shard ``s`` at sample ``k``", then sequential reads, for three formats or a user opener.

Guarantee: ``open_samples(path, start)`` yields exactly the samples ``start, start + 1, ...`` of the shard,
in the order :func:`count_samples` counts them, so a sample's number within its shard is stable. A
``.npy`` array is memory-mapped and indexed (no read before ``start``); a JSON lines file is skipped
line by line and a tar archive member header by member header (a ``tarfile`` seeks over member data):
the cost of a start is bounded by one shard, never by the epoch.

Formats (by suffix):

- ``.jsonl`` and ``.jsonl.gz``: one JSON value per non-blank line.
- ``.npy``: a sample is ``array[k]`` (a row of a 2-D token array, or one element of a 1-D array).
- ``.tar``: the webdataset layout: consecutive members whose names share a key (the name up to the
  first dot of its last part) form one sample ``{"__key__": key, ext: value, ...}``; ``.json`` members
  are decoded as JSON, ``.npy`` as arrays, ``.txt`` as text, ``.cls`` as an int, others stay bytes.
  stdlib ``tarfile`` rather than the ``webdataset`` package: no new dependency, and the grouping rule
  is ten lines; ``webdataset``'s pipeline stages (shuffle, resample) are what this library replaces.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "FORMATS",
    "ShardReaders",
    "count_samples",
    "format_of",
    "npy_memmap",
    "open_samples",
    "tokens_of",
]

FORMATS = (".jsonl", ".jsonl.gz", ".npy", ".tar")


def format_of(path: str) -> str | None:
    """The format suffix of ``path`` (one of :data:`FORMATS`), or None."""
    name = os.fspath(path).lower()
    for suffix in (".jsonl.gz", ".jsonl", ".npy", ".tar"):
        if name.endswith(suffix):
            return suffix
    return None


# -- JSON lines ------------------------------------------------------------------------------------


def _open_text(path: str) -> Any:
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")  # noqa: SIM115 (closed by the generator that owns it)


def _jsonl(path: str, start: int) -> Iterator[Any]:
    with _open_text(path) as lines:
        seen = 0
        for line in lines:
            if not line.strip():
                continue
            if seen >= start:
                yield json.loads(line)
            seen += 1


# -- tar (webdataset layout) -------------------------------------------------------------------------


def _split_name(name: str) -> tuple[str, str]:
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext if dot else ""


def _decode(ext: str, data: bytes) -> Any:
    last = ext.rsplit(".", 1)[-1]
    if last == "json":
        return json.loads(data)
    if last == "npy":
        import numpy as np

        return np.load(io.BytesIO(data), allow_pickle=False)
    if last == "txt":
        return data.decode("utf-8")
    if last == "cls":
        return int(data)
    return data


def _tar_groups(path: str, decode: bool) -> Iterator[dict[str, Any]]:
    with tarfile.open(path, "r:") as archive:
        sample: dict[str, Any] | None = None
        for member in archive:
            if not member.isfile():
                continue
            key, ext = _split_name(member.name)
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key}
            if decode:
                handle = archive.extractfile(member)
                sample[ext] = _decode(ext, handle.read() if handle is not None else b"")
            else:
                sample[ext] = None
        if sample is not None:
            yield sample


def _tar(path: str, start: int) -> Iterator[Any]:
    # Samples before `start` are grouped by their member headers only; their data is never read.
    skipped = 0
    with tarfile.open(path, "r:") as archive:
        key = None
        members: list[tarfile.TarInfo] = []
        for member in archive:
            if not member.isfile():
                continue
            name_key, _ = _split_name(member.name)
            if key is not None and name_key != key:
                if skipped >= start:
                    yield _tar_sample(archive, key, members)
                skipped += 1
                members = []
            key = name_key
            members.append(member)
        if key is not None and skipped >= start:
            yield _tar_sample(archive, key, members)


def _tar_sample(archive: tarfile.TarFile, key: str, members: list[tarfile.TarInfo]) -> dict[str, Any]:
    sample: dict[str, Any] = {"__key__": key}
    for member in members:
        handle = archive.extractfile(member)
        ext = _split_name(member.name)[1]
        sample[ext] = _decode(ext, handle.read() if handle is not None else b"")
    return sample


# -- .npy ------------------------------------------------------------------------------------------------


def _memmap(path: str) -> Any:
    import numpy as np

    return np.load(path, mmap_mode="r", allow_pickle=False)


def _npy(path: str, start: int) -> Iterator[Any]:
    import numpy as np

    array = _memmap(path)
    for k in range(start, len(array)):
        yield np.array(array[k])


# -- dispatch ------------------------------------------------------------------------------------------

_OPENERS: dict[str, Callable[[str, int], Iterator[Any]]] = {
    ".jsonl": _jsonl,
    ".jsonl.gz": _jsonl,
    ".npy": _npy,
    ".tar": _tar,
}


def open_samples(path: str, start: int = 0) -> Iterator[Any]:
    """The samples ``start, start + 1, ...`` of the shard file ``path``, read sequentially.

    Raises:
        ValueError: for a file of none of the known formats.
    """
    kind = format_of(path)
    if kind is None:
        raise ValueError(f"{path}: not a shard of a known format (expected a name ending in one of {FORMATS})")
    return _OPENERS[kind](os.fspath(path), start)


def count_samples(path: str) -> int:
    """How many samples the shard file ``path`` holds (``.npy``: from its header, no data read)."""
    kind = format_of(path)
    if kind == ".npy":
        return len(_memmap(path))
    if kind == ".tar":
        return sum(1 for _ in _tar_groups(os.fspath(path), decode=False))
    return sum(1 for _ in open_samples(path))


def tokens_of(sample: Any, field: str | Callable[[Any], Any] | None) -> Any:
    """The token sequence of a sample: ``field(sample)``, ``sample[field]``, or the sample itself."""
    if field is None:
        return sample
    if callable(field):
        return field(sample)
    return sample[field]


class ShardReaders:
    """A small per-process cache of open shards, each positioned after the sample it last gave.

    Reading sample ``k`` of a shard continues the open reader when it stands at or before ``k`` (skipping
    forward within the shard), takes it from the shard's last ``keep`` samples read (a window shuffle
    goes back within its window), else reopens the shard at ``k``. ``.npy`` shards are indexed directly.

    Args:
        opener: ``opener(shard_description, start)`` -> iterator of samples from ``start``.
        size: How many shards stay open (the least recently used is closed first).
        memmap: ``memmap(description)`` -> an indexable array, or None when the description is not a
            ``.npy`` file (then ``opener`` is used).
        keep: How many of the samples last read (or skipped) of each open sequential shard are kept.
    """

    def __init__(
        self,
        opener: Callable[[Any, int], Iterator[Any]],
        size: int,
        memmap: Callable[[Any], Any] | None = None,
        keep: int = 0,
    ) -> None:
        self._opener = opener
        self._memmap = memmap
        self._size = max(1, size)
        self._keep = keep
        self._open: OrderedDict[int, list[Any]] = OrderedDict()
        self.reopened = 0  # how many times a shard was (re)opened: the tests bound it

    def read(self, shard: int, description: Any, k: int) -> Any:
        """Sample ``k`` of shard number ``shard`` (described by ``description``)."""
        entry = self._open.get(shard)
        if entry is not None:
            self._open.move_to_end(shard)
            if entry[0] == "array":
                import numpy as np

                return np.array(entry[1][k])
            if entry[0] <= k:
                return self._advance(entry, k)
            if k in entry[2]:
                return entry[2][k]
        array = self._memmap(description) if self._memmap is not None else None
        self.reopened += 1
        if array is not None:
            entry = ["array", array]
        else:
            # Open up to `keep` samples early: a shuffled window may ask for those next, from the kept ones.
            start = max(0, k - self._keep)
            entry = [start, self._opener(description, start), OrderedDict()]
        self._open[shard] = entry
        while len(self._open) > self._size:
            self._open.popitem(last=False)
        return self.read(shard, description, k)

    def array(self, shard: int, description: Any) -> Any:
        """The memory-mapped array of a ``.npy`` shard (kept open), or None for another format."""
        entry = self._open.get(shard)
        if entry is None and self._memmap is not None:
            array = self._memmap(description)
            if array is None:
                return None
            self.reopened += 1
            entry = self._open[shard] = ["array", array]
            while len(self._open) > self._size:
                self._open.popitem(last=False)
        if entry is None or entry[0] != "array":
            return None
        self._open.move_to_end(shard)
        return entry[1]

    def _advance(self, entry: list[Any], k: int) -> Any:
        iterator, recent, keep = entry[1], entry[2], self._keep
        while True:
            sample = next(iterator)
            if keep:
                recent[entry[0]] = sample
                if len(recent) > keep:
                    recent.popitem(last=False)
            entry[0] += 1
            if entry[0] > k:
                return sample


def npy_memmap(description: Any) -> Any:
    """A memory-mapped array for a ``.npy`` path, or None for anything else."""
    if isinstance(description, (str, os.PathLike)) and format_of(os.fspath(description)) == ".npy":
        return _memmap(os.fspath(description))
    return None

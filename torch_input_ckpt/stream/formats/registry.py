"""The one registry of shard formats: :data:`FORMATS`; every suffix list, lookup and dispatch derives from it.

Guarantee: a file name belongs to at most one format, the one with the longest suffix that ends it (case
ignored), so ``x.jsonl.gz`` is JSON lines even beside a format of ``.gz``; the index, the ``index`` command,
the stream's readers and every message listing the known suffixes ask this tuple, so a format added here
(one entry: see ``docs/writing-a-format.md``) is read, counted, indexed and named everywhere at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from .jsonl import JSONL
from .npy import NPY
from .protocol import RandomAccess, ShardFormat
from .tar import TAR

__all__ = [
    "FORMATS",
    "count_samples",
    "format_of",
    "open_samples",
    "random_access",
    "suffix_list",
    "suffixes",
]

# --8<-- [start:registry]
#: The shard formats, one entry each. Their suffixes, in this order, are what messages list.
FORMATS: tuple[ShardFormat, ...] = (JSONL, NPY, TAR)
# --8<-- [end:registry]


def suffixes() -> tuple[str, ...]:
    """Every known suffix, in the registry's order (``(".jsonl", ".jsonl.gz", ".npy", ".tar")``)."""
    return tuple(suffix for form in FORMATS for suffix in form.suffixes)


def suffix_list() -> str:
    """The known suffixes as messages and help texts name them: ``.jsonl, .jsonl.gz, .npy or .tar``."""
    *rest, last = suffixes()
    return f"{', '.join(rest)} or {last}" if rest else last


def format_of(path: str | os.PathLike[str]) -> ShardFormat | None:
    """The format of the file ``path`` by its name's suffix (the longest that matches), or None."""
    name = os.fspath(path).lower()
    found: ShardFormat | None = None
    longest = 0
    for form in FORMATS:
        for suffix in form.suffixes:
            if len(suffix) > longest and name.endswith(suffix):
                found, longest = form, len(suffix)
    return found


def open_samples(path: str | os.PathLike[str], start: int = 0) -> Iterator[Any]:
    """The samples ``start, start + 1, ...`` of the shard file ``path``, read sequentially.

    Raises:
        ValueError: for a file of none of the known formats.
        InputStateError: (as the samples are read) for a file that is not a regular file, or damaged, or
            past a bound, naming the file, the line or sample and what was expected.
    """
    form = format_of(path)
    if form is None:
        raise ValueError(f"{path}: not a shard of a known format (expected a name ending in one of {suffixes()})")
    return form.open(os.fspath(path), start)


def count_samples(path: str | os.PathLike[str]) -> int:
    """How many samples the shard file ``path`` holds (a format counted from its header: no data read).

    Every sample of a JSON lines file is decoded and every tar member header checked, so that a shard
    ``index`` accepts is one the readers read.

    Raises:
        ValueError: for a file of none of the known formats.
        InputStateError: for a file that is not a regular file, or damaged, or past a bound.
    """
    form = format_of(path)
    if form is None:
        raise ValueError(f"{path}: not a shard of a known format (expected a name ending in one of {suffixes()})")
    return form.count(os.fspath(path))


def random_access(description: Any) -> RandomAccess | None:
    """Random access to the shard a path describes, or None: a format read forward only, or a description
    that is not a path (a user's ``open_shard`` reads it)."""
    if not isinstance(description, (str, os.PathLike)):
        return None
    form = format_of(description)
    return form.random_access(os.fspath(description)) if form is not None else None

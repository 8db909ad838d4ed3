"""The one registry of shard formats: :data:`FORMATS`; every suffix list, lookup and dispatch derives from it.

Guarantee: a file name belongs to at most one format, the one with the longest suffix that ends it (case
ignored), so ``x.jsonl.gz`` is JSON lines even beside a format of ``.gz``; the index, the ``index`` command,
the stream's readers and every message listing the known suffixes ask this tuple, so a format added here
(one entry: see ``docs/writing-a-format.md``) is read, counted, indexed and named everywhere at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .arrow import ARROW
from .jsonl import JSONL
from .npy import NPY
from .parquet import PARQUET
from .protocol import RandomAccess, ShardFormat
from .tar import TAR

__all__ = [
    "FORMATS",
    "check_columns",
    "count_samples",
    "format_of",
    "open_samples",
    "random_access",
    "suffix_list",
    "suffixes",
]

# --8<-- [start:registry]
#: The shard formats, one entry each. Their suffixes, in this order, are what messages list.
FORMATS: tuple[ShardFormat, ...] = (JSONL, NPY, TAR, PARQUET, ARROW)
# --8<-- [end:registry]


def suffixes() -> tuple[str, ...]:
    """Every known suffix, in the registry's order (``(".jsonl", ".jsonl.gz", ".npy", ".tar", ...)``)."""
    return tuple(suffix for form in FORMATS for suffix in form.suffixes)


def suffix_list() -> str:
    """The known suffixes as messages and help texts name them: ``.jsonl, .jsonl.gz, ..., .parquet or .arrow``."""
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


def open_samples(path: str | os.PathLike[str], start: int = 0, columns: Sequence[str] | None = None) -> Iterator[Any]:
    """The samples ``start, start + 1, ...`` of the shard file ``path``, read sequentially (of a columnar
    format, only ``columns``: None reads all).

    Raises:
        ValueError: for a file of none of the known formats.
        InputStateError: (as the samples are read) for a file that is not a regular file, or damaged, or
            past a bound, naming the file, the line or sample and what was expected.
    """
    form = format_of(path)
    if form is None:
        raise ValueError(f"{path}: not a shard of a known format (expected a name ending in one of {suffixes()})")
    if columns is not None:
        return form.open(os.fspath(path), start, columns=columns)  # type: ignore[call-arg]
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


def random_access(description: Any, columns: Sequence[str] | None = None) -> RandomAccess | None:
    """Random access to the shard a path describes (of a columnar format, to ``columns`` only), or None: a
    format read forward only, or a description that is not a path (a user's ``open_shard`` reads it)."""
    if not isinstance(description, (str, os.PathLike)):
        return None
    form = format_of(description)
    if form is None:
        return None
    if columns is not None:
        return form.random_access(os.fspath(description), columns=columns)  # type: ignore[call-arg]
    return form.random_access(os.fspath(description))


def check_columns(sources: Iterable[Any], columns: Any) -> tuple[str, ...] | None:
    """``columns`` (``ShardedStream(columns=)``) checked: None, or names every shard's format can select.

    A format that has columns (Parquet, Arrow) sets ``columnar = True`` and takes ``columns=`` in ``open`` and
    ``random_access``; selecting columns of another format's shard is refused rather than ignored.

    Raises:
        ValueError: for names that are not distinct non-empty strings, or a shard of a format without columns.
    """
    if columns is None:
        return None
    if isinstance(columns, str) or not isinstance(columns, Iterable):
        raise ValueError(f"columns must be None or a sequence of column names (got {columns!r})")
    names = tuple(columns)
    if not names or not all(isinstance(c, str) and c for c in names) or len(set(names)) != len(names):
        raise ValueError(f"columns must be distinct non-empty column names (got {columns!r})")
    for source in sources:
        form = format_of(source) if isinstance(source, (str, os.PathLike)) else None
        if form is None or not getattr(form, "columnar", False):
            kind = form.name if form is not None else "not a file of a known format"
            raise ValueError(
                f"{source}: columns= selects columns of Parquet and Arrow shards; this shard is {kind}, which has "
                "none. Select fields with transform= instead."
            )
    return names

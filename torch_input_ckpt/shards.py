"""Shard descriptions with their sample (and token) counts, and the index file that records them.

Guarantee: a stream is built only from shards whose counts are known and current. A count comes from
the user (a :class:`Shard`), from a ``.npy`` header, or from the index file that
``python -m torch_input_ckpt index DIR`` writes next to the shards; an indexed shard whose size or
modification time no longer matches its entry, or that is missing, is refused with an
:class:`~torch_input_ckpt.InputStateError` naming it, since a changed shard would shift every sample
after it and break exactly-once silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputStateError
from .readers import count_samples, format_of, open_samples, tokens_of
from .schema import FORMAT_VERSION, INDEX_KIND, Key, check_header, field

__all__ = ["INDEX_FILE", "Shard", "build_index", "fingerprint", "resolve_shards", "write_index"]

INDEX_FILE = "torch_input_ckpt_index.json"


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard: what the opener is given, and how many samples (and, for packing, tokens) it holds.

    Attributes:
        source: A path, or any picklable description your ``open_shard`` understands.
        count: Its number of samples (documents).
        tokens: Its total number of tokens (needed only with ``pack_to``), or None.
    """

    source: Any
    count: int
    tokens: int | None = None

    @property
    def name(self) -> str:
        """How messages name the shard."""
        return os.fspath(self.source) if isinstance(self.source, (str, os.PathLike)) else repr(self.source)


# -- the index file -------------------------------------------------------------------------------------


def _shard_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and format_of(p.name) is not None)


def _token_total(path: Path, tokens: str | Callable[[Any], Any] | None) -> int:
    return sum(len(tokens_of(sample, tokens)) for sample in open_samples(os.fspath(path)))


def build_index(directory: str | os.PathLike[str], tokens: str | None = None) -> dict[str, Any]:
    """Count every shard file of ``directory`` (by name order) and return the index as plain JSON types.

    Args:
        directory: The directory holding the shards (not searched recursively).
        tokens: Also count tokens, taking each sample's tokens from this field (``sample[tokens]``;
            for ``.npy`` rows, leave it None: a row is its own token sequence).

    Raises:
        ValueError: when the directory holds no shard file.
    """
    root = Path(directory)
    files = _shard_files(root)
    if not files:
        raise ValueError(f"{root}: no shard files (names ending in .jsonl, .jsonl.gz, .npy or .tar)")
    entries = []
    for path in files:
        stat = path.stat()
        count = count_samples(os.fspath(path))
        entry = {
            Key.INDEX_NAME: path.name,
            Key.INDEX_COUNT: count,
            Key.INDEX_SIZE: stat.st_size,
            Key.INDEX_MTIME_NS: stat.st_mtime_ns,
        }
        if tokens is not None or format_of(path.name) == ".npy":
            entry[Key.INDEX_TOKENS] = _npy_tokens(path) if tokens is None else _token_total(path, tokens)
        entries.append(entry)
    return {
        Key.KIND: INDEX_KIND,
        Key.VERSION: FORMAT_VERSION,
        Key.INDEX_TOKENS_FIELD: tokens,
        Key.INDEX_SHARDS: entries,
    }


def _npy_tokens(path: Path) -> int:
    from .readers import npy_memmap

    array = npy_memmap(path)
    return int(array.size)


def write_index(directory: str | os.PathLike[str], tokens: str | None = None) -> Path:
    """Write the index of ``directory`` as ``torch_input_ckpt_index.json`` in it (atomically); return its path."""
    root = Path(directory)
    index = build_index(root, tokens)
    target = root / INDEX_FILE
    temporary = root / f".{INDEX_FILE}.tmp"
    temporary.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, target)
    return target


def _read_index(directory: Path) -> list[Shard]:
    path = directory / INDEX_FILE
    source = os.fspath(path)
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputStateError(f"{source}: cannot read the shard index ({error})") from None
    check_header(index, INDEX_KIND, source)
    shards = []
    for entry in field(index, Key.INDEX_SHARDS, list, source):
        name = field(entry, Key.INDEX_NAME, str, source)
        if "/" in name or name in ("", ".", ".."):
            raise InputStateError(f"{source}: shard name {name!r} is not a file name in {directory}")
        shard_path = directory / name
        _check_current(shard_path, entry, source)
        tokens = entry.get(Key.INDEX_TOKENS)
        count = field(entry, Key.INDEX_COUNT, int, source, low=0)
        shards.append(Shard(os.fspath(shard_path), count, tokens if isinstance(tokens, int) else None))
    return shards


def _check_current(path: Path, entry: Any, source: str) -> None:
    try:
        stat = path.lstat()
    except FileNotFoundError:
        raise InputStateError(
            f"{path}: shard listed in {source} is missing. Restore it, or re-index with "
            f"`python -m torch_input_ckpt index {path.parent}` (that changes the stream: do it between runs)."
        ) from None
    saved = (field(entry, Key.INDEX_SIZE, int, source), field(entry, Key.INDEX_MTIME_NS, int, source))
    if (stat.st_size, stat.st_mtime_ns) != saved:
        raise InputStateError(
            f"{path}: shard changed since it was indexed in {source}: size {saved[0]} -> {stat.st_size}, "
            f"mtime_ns {saved[1]} -> {stat.st_mtime_ns}. Restore it, or re-index with "
            f"`python -m torch_input_ckpt index {path.parent}` (that changes the stream: do it between runs)."
        )


def resolve_shards(shards: Any, needs_tokens: bool) -> list[Shard]:
    """The :class:`Shard` list a stream reads: from a directory (its index), paths, or ``Shard`` values.

    Args:
        shards: A directory with an index file; or a sequence of :class:`Shard` and/or paths (a path is
            looked up in its directory's index, else counted from its ``.npy`` header).
        needs_tokens: Whether token counts are required (packing).

    Raises:
        InputStateError: for a missing or changed indexed shard.
        ValueError: for a shard whose count cannot be known, or a missing token count with packing.
    """
    if isinstance(shards, (str, os.PathLike)):
        root = Path(shards)
        if not (root / INDEX_FILE).is_file():
            raise ValueError(f"{root}: no {INDEX_FILE}; run `python -m torch_input_ckpt index {root}` first")
        resolved = _read_index(root)
    elif isinstance(shards, Sequence) and shards:
        resolved = _from_items(shards)
    else:
        raise ValueError(f"shards must be a directory or a non-empty sequence of paths or Shard (got {shards!r})")
    for shard in resolved:
        if isinstance(shard.count, bool) or not isinstance(shard.count, int) or shard.count < 0:
            raise ValueError(f"shard {shard.name}: count must be an int >= 0 (got {shard.count!r})")
        if needs_tokens and shard.tokens is None:
            raise ValueError(
                f"shard {shard.name}: pack_to needs its token count; give Shard(..., tokens=) or index with "
                "`python -m torch_input_ckpt index DIR --tokens FIELD`"
            )
    if not any(shard.count for shard in resolved):
        raise ValueError(f"all {len(resolved)} shards are empty: a stream needs at least one sample")
    return resolved


def _from_items(items: Sequence[Any]) -> list[Shard]:
    indexes: dict[Path, dict[str, Shard]] = {}
    resolved = []
    for item in items:
        if isinstance(item, Shard):
            resolved.append(item)
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise ValueError(f"a shard must be a path or a Shard (got {item!r})")
        path = Path(item)
        directory = path.parent
        if directory not in indexes:
            has_index = (directory / INDEX_FILE).is_file()
            indexes[directory] = {Path(s.source).name: s for s in _read_index(directory)} if has_index else {}
        known = indexes[directory].get(path.name)
        if known is not None:
            resolved.append(known)
        elif format_of(path.name) == ".npy":
            if not path.exists():
                raise InputStateError(f"{path}: shard is missing")
            resolved.append(Shard(os.fspath(path), count_samples(os.fspath(path)), _npy_tokens(path)))
        else:
            raise ValueError(
                f"{path}: its sample count is unknown: run `python -m torch_input_ckpt index {directory}` "
                "or pass Shard(path, count)"
            )
    return resolved


def fingerprint(shards: Sequence[Shard]) -> str:
    """A short hash of the shard list (names and counts in order): what a saved state was taken over.

    A path counts by its file name only, so that the same shards mounted elsewhere after a restart still match.
    """
    digest = hashlib.sha256()
    for shard in shards:
        name = Path(shard.source).name if isinstance(shard.source, (str, os.PathLike)) else shard.name
        digest.update(f"{name}\0{shard.count}\0{shard.tokens}\n".encode())
    return digest.hexdigest()[:16]


def index_command(directory: str, tokens: str | None) -> int:
    """``python -m torch_input_ckpt index DIR [--tokens FIELD]``: write the index, print a summary.

    Returns 0 on success, 2 for a missing directory or one without shards.
    """
    root = Path(directory)
    if not root.is_dir():
        print(f"torch-input-ckpt: error: {directory} is not a directory", file=sys.stderr)
        return 2
    try:
        path = write_index(root, tokens)
    except (ValueError, OSError, KeyError, TypeError) as error:
        print(f"torch-input-ckpt: error: {error}", file=sys.stderr)
        return 2
    index = json.loads(path.read_text(encoding="utf-8"))
    entries = index[Key.INDEX_SHARDS]
    samples = sum(e[Key.INDEX_COUNT] for e in entries)
    line = f"indexed {len(entries)} shards, {samples} samples"
    if all(Key.INDEX_TOKENS in e for e in entries):
        line += f", {sum(e[Key.INDEX_TOKENS] for e in entries)} tokens"
    print(f"{line} -> {path}")
    return 0

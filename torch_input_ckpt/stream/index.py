"""The shard index file: its JSON layout, its checksum, its bounds, and its checked reading.

Guarantee: an index accepted here is exactly what ``python -m torch_input_ckpt index`` wrote: a sha256 of
its canonical JSON is checked (a hand-edited or partly written index is refused, naming the file and the
fix), its size and entry count are bounded before any per-entry work, and every value is checked (type,
range, a plain file name of a known format, no duplicates), each refusal naming the file, the entry
number, the value and what was expected. It is written like an input checkpoint (``files.write_atomic``:
a random temporary name created with ``O_EXCL|O_NOFOLLOW``, fsync, rename), so concurrent writers both
succeed and a reader never sees a partial index.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.messages import short
from ..errors import InputStateError
from ..state.schema import FORMAT_VERSION, INDEX_KIND, Key
from ..store.files import canonical_json, parse_json, read_regular_file, write_atomic
from .formats import format_of, suffix_list
from .tokens import MAX_IDENTITY_CHARS, describe

__all__ = [
    "INDEX_FILE",
    "MAX_INDEX_BYTES",
    "MAX_INDEX_SHARDS",
    "MAX_UNITS",
    "IndexEntry",
    "ShardIndex",
    "encode_index",
    "parse_index",
    "read_index",
]

INDEX_FILE = "torch_input_ckpt_index.json"
# Bounds checked before the work they guard. An entry is about 200 bytes: 256 MiB holds the entries' bound.
MAX_INDEX_BYTES = 256 * 1024 * 1024
MAX_INDEX_SHARDS = 1 << 20
# Samples or tokens of one shard, and of all shards together: 2**48 (281 T) is past any real corpus and
# leaves room for epoch * length in int64 arithmetic.
MAX_UNITS = 1 << 48
# A shard name is a file name (NAME_MAX); a field or tokenizer name is bounded by stream/tokens.py's bound.
MAX_NAME_BYTES = 255
# A name holding one of these would reach outside the directory (or cannot name a file at all).
_SEPARATORS = "/\0" + ("\\" if os.name == "nt" else "")
_INT64 = (-(1 << 63), (1 << 63) - 1)
_DIGEST = re.compile(r"[0-9a-f]{64}")
_SHA256 = "sha256"
# A local shard's version is its mtime; an object's (on object storage) its ETag.
_COMMON = (Key.INDEX_NAME, Key.INDEX_COUNT, Key.INDEX_SIZE, Key.INDEX_DIGEST)
_REQUIRED_LOCAL = (*_COMMON, Key.INDEX_MTIME_NS)
_REQUIRED_REMOTE = (*_COMMON, Key.INDEX_ETAG)
MAX_ETAG_CHARS = 1024


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One shard of an index: its file name, counts and content identity (size, head/tail digest) and version
    (a local file's mtime, or an object's ETag)."""

    name: str
    count: int
    tokens: int | None
    size: int
    mtime_ns: int | None
    digest: str
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class ShardIndex:
    """A checked index: its file, what its token counts came from, and its entries in shard order."""

    path: Path | str  # the index file, or its URL
    tokens_field: str | None
    tokenizer: str | None
    entries: list[IndexEntry]

    @property
    def token_source(self) -> str:
        """How messages name what the token counts came from."""
        return describe(self.tokens_field, self.tokenizer)


def encode_index(body: dict[str, Any]) -> bytes:
    """The bytes of an index: ``body`` (sorted keys, one entry field per line for people reading it) plus
    ``"sha256"``, the checksum of the body's canonical JSON."""
    signed = {**body, _SHA256: hashlib.sha256(canonical_json(body)).hexdigest()}
    return (json.dumps(signed, indent=1, sort_keys=True, ensure_ascii=True) + "\n").encode()


def write_index_file(path: Path, body: dict[str, Any]) -> None:
    """Write the index atomically (a random temporary name, never through a symlink; fsync; rename)."""
    write_atomic(path, encode_index(body))


def read_index(directory: Path) -> ShardIndex:
    """Read and check ``directory``'s index file.

    Raises:
        FileNotFoundError: when there is none.
        InputStateError: naming the file (and entry, value and expectation) for anything but a valid index.
    """
    path = directory / INDEX_FILE
    data = read_regular_file(path, MAX_INDEX_BYTES)  # the size bound, checked with fstat before reading
    return parse_index(data, path, str(directory))


def parse_index(data: bytes, path: Path | str, directory: str, *, remote: bool = False) -> ShardIndex:
    """Check the bytes of an index file (read from ``path``, the index of ``directory``; ``remote``: of objects
    in a store, whose entries carry ETags instead of mtimes).

    Raises:
        InputStateError: naming ``path`` (and entry, value and expectation) for anything but a valid index.
    """
    fix = f"Re-run `python -m torch_input_ckpt index {directory}` (between runs: a changed index changes the stream)."
    if len(data) > MAX_INDEX_BYTES:
        raise InputStateError(f"{path}: {len(data)} bytes, more than the bound of {MAX_INDEX_BYTES} for an index")
    try:
        doc = parse_json(data)
    except (ValueError, RecursionError, MemoryError, OverflowError) as error:  # incl. UnicodeDecodeError
        reason = f"not JSON, truncated or garbled ({error})"
        raise InputStateError(f"{path}: not a valid shard index: {reason}. {fix}") from None
    return _checked(path, doc, fix, remote)


def _checked(path: Path | str, doc: Any, fix: str, remote: bool) -> ShardIndex:
    def bad(text: str) -> InputStateError:
        return InputStateError(f"{path}: {text}. {fix}")

    if not isinstance(doc, dict) or doc.get(Key.KIND) != INDEX_KIND:
        found = doc.get(Key.KIND) if isinstance(doc, dict) else type(doc).__name__
        raise bad(f"not a shard index (kind {short(found)}, expected {INDEX_KIND!r})")
    version = doc.get(Key.VERSION)
    if type(version) is not int or version != FORMAT_VERSION:
        raise bad(f"index format version {short(version)} is not supported (expected {FORMAT_VERSION})")
    claimed = doc.pop(_SHA256, None)
    if not isinstance(claimed, str):
        raise bad("the index has no checksum (written by an older version, or edited by hand)")
    if hashlib.sha256(canonical_json(doc)).hexdigest() != claimed:
        raise bad("checksum mismatch: the index was edited by hand or partly written")
    field_name = _identity(doc, Key.INDEX_TOKENS_FIELD, bad)
    tokenizer = _identity(doc, Key.INDEX_TOKENIZER, bad)
    if field_name is not None and tokenizer is not None:
        raise bad(f"both tokens_field={field_name!r} and tokenizer={tokenizer!r} (expected at most one)")
    raw = doc.get(Key.INDEX_SHARDS)
    if not isinstance(raw, list):
        raise bad(f"shards={short(raw)} (expected a list of entries)")
    if len(raw) > MAX_INDEX_SHARDS:
        raise bad(f"{len(raw)} shard entries, more than the bound of {MAX_INDEX_SHARDS}")
    required = _REQUIRED_REMOTE if remote else _REQUIRED_LOCAL
    entries = [_entry(item, i, bad, required) for i, item in enumerate(raw)]
    _check_totals(entries, bad)
    return ShardIndex(path, field_name, tokenizer, entries)


def _identity(doc: dict[str, Any], key: str, bad: Any) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_IDENTITY_CHARS or "\0" in value:
        raise bad(f"{key}={short(value)} (expected null or a name of 1 to {MAX_IDENTITY_CHARS} characters)")
    return value


def _entry(item: Any, i: int, bad: Any, required: tuple[str, ...]) -> IndexEntry:
    where = f"shards[{i}]"
    if not isinstance(item, dict):
        raise bad(f"{where}={short(item)} (expected an object with keys {sorted(required)})")
    keys = set(item)
    if not keys >= set(required) or not keys <= {*required, Key.INDEX_TOKENS}:
        raise bad(f"{where} has keys {sorted(keys)} (expected {sorted(required)}, and optionally 'tokens')")
    name = item[Key.INDEX_NAME]
    if not _plain_name(name):
        raise bad(
            f"{where}.name={short(name)} (expected the file name of a shard in this directory: no '/' or NUL, "
            f"at most {MAX_NAME_BYTES} bytes, ending in {suffix_list()})"
        )
    tokens = item.get(Key.INDEX_TOKENS)
    digest = item[Key.INDEX_DIGEST]
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise bad(f"{where}.digest={short(digest)} (expected 64 lowercase hex digits)")
    etag = item.get(Key.INDEX_ETAG)
    if Key.INDEX_ETAG in required and (not isinstance(etag, str) or not 0 < len(etag) <= MAX_ETAG_CHARS):
        raise bad(f"{where}.etag={short(etag)} (expected the object's ETag, 1 to {MAX_ETAG_CHARS} characters)")
    return IndexEntry(
        name=name,
        count=_int(item, Key.INDEX_COUNT, 0, MAX_UNITS, where, bad),
        tokens=None if tokens is None else _int(item, Key.INDEX_TOKENS, 0, MAX_UNITS, where, bad),
        size=_int(item, Key.INDEX_SIZE, 0, _INT64[1], where, bad),
        mtime_ns=_int(item, Key.INDEX_MTIME_NS, *_INT64, where, bad) if Key.INDEX_MTIME_NS in required else None,
        digest=digest,
        etag=etag,
    )


def _plain_name(name: Any) -> bool:
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in _SEPARATORS):
        return False
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no file has that name
        return False
    return size <= MAX_NAME_BYTES and format_of(name) is not None


def _int(item: dict[str, Any], key: str, low: int, high: int, where: str, bad: Any) -> int:
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad(f"{where}.{key}={short(value)} (expected an integer from {low} to {high})")
    return value


def _check_totals(entries: list[IndexEntry], bad: Any) -> None:
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.name in seen:
            raise bad(f"shards[{i}].name={entry.name!r} is listed twice (also shards[{seen[entry.name]}])")
        seen[entry.name] = i
    for what, total in (
        ("samples", sum(e.count for e in entries)),
        ("tokens", sum(e.tokens or 0 for e in entries)),
    ):
        if total > MAX_UNITS:
            raise bad(f"{total} {what} in all, more than the bound of {MAX_UNITS}")

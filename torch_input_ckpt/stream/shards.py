"""Shard descriptions with their sample (and token) counts, the index that records them, and their identity.

Guarantee: a stream is built only from shards whose counts are known and current. A count comes from
the user (a :class:`Shard`), from a ``.npy`` header, or from the index file that
``python -m torch_input_ckpt index DIR`` writes next to the shards (:mod:`~torch_input_ckpt.stream.index`);
an indexed shard whose size or modification time no longer matches its entry, or that is missing, is
refused with an :class:`~torch_input_ckpt.InputStateError` naming it, since a changed shard would shift
every sample after it and break exactly-once silently. Token counts are refused when they came from
another field or tokenizer than the stream's ``tokens=``. Symbolic links are followed when they stay in
the data directory (or, in a Hugging Face hub cache, point from a snapshot into the repository's
``blobs/``), by the index and by the check alike; a link out of it is refused, naming link and target.
The stream's identity (:attr:`ResolvedShards.fingerprint`) covers each shard's path relative to the data
directory (or the shards' common directory), its counts and its content identity, in order.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..errors import InputStateError
from ..remote import ObjectInfo, ObjectStore, is_url
from ..state.schema import FORMAT_VERSION, INDEX_KIND, Key
from .formats import ShardFormat, format_of, open_samples, refuse_special, suffix_list
from .index import INDEX_FILE, MAX_UNITS, IndexEntry, ShardIndex, read_index, write_index_file
from .remote import entries_of_urls, remote_entries
from .tokens import count_tokens, describe, token_identity

__all__ = [
    "INDEX_FILE",
    "ResolvedShards",
    "Shard",
    "build_index",
    "fingerprint",
    "legacy_fingerprint",
    "resolve_shards",
    "write_index",
]

# The content digest reads this much of a shard's start and of its end (the .npy header, the first and last
# lines or members): a cheap identity that survives a copy, computed by `index` only.
_DIGEST_BLOCK = 64 * 1024
_REINDEX = "re-index with `python -m torch_input_ckpt index {}` (that changes the stream: do it between runs)"

Tokens = str | Callable[[Any], Any] | None
_Count = TypeVar("_Count", bound="int | None")


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


@dataclass(frozen=True, slots=True)
class ResolvedShards:
    """The shards a stream reads, and its identity: a hash of each shard's path relative to the data
    directory, counts and content identity (size and digest), in order. For shards on object storage, the
    client and each shard's object as indexed (by URL)."""

    shards: list[Shard]
    fingerprint: str
    store: ObjectStore | None = None
    objects: dict[str, ObjectInfo] = field(default_factory=dict)


# -- following links inside the data directory ------------------------------------------------------------


def _link_roots(directory: Path) -> list[str]:
    """Where a shard's symbolic link may point: into the data directory; and, for a directory inside a
    Hugging Face hub cache snapshot (``<repo>/snapshots/<revision>/...``), into ``<repo>/blobs``."""
    real = Path(os.path.realpath(directory))
    roots = [os.fspath(real)]
    for ancestor in (real, *real.parents):
        if ancestor.parent.name == "snapshots" and (ancestor.parent.parent / "blobs").is_dir():
            roots.append(os.fspath(ancestor.parent.parent / "blobs"))
            break
    return roots


def _regular_stat(path: str | Path, roots: list[str]) -> os.stat_result:
    """``stat`` of a shard file, following a link that stays within ``roots``.

    Raises:
        FileNotFoundError: when it does not exist.
        InputStateError: for a link out of the data directory, a dangling link, or a non-regular file (a
            FIFO would hang a reader), naming the path (and the link's target).
    """
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        target = os.path.realpath(path)
        if not any(os.path.commonpath([target, root]) == root for root in roots):
            raise InputStateError(
                f"{path}: a symbolic link to {target}, outside the data directory {roots[0]}: refused. Link to "
                "a file inside it, or copy the file in."
            )
        try:
            info = os.stat(target)
        except FileNotFoundError:
            raise InputStateError(f"{path}: a symbolic link to {target}, which does not exist") from None
    refuse_special(path, info.st_mode)
    return info


# -- writing the index ---------------------------------------------------------------------------------------


def _shard_files(directory: Path) -> list[tuple[Path, os.stat_result, ShardFormat]]:
    """The files of ``directory`` whose names are of a known format, by name, each with its ``stat``."""
    forms = {entry.name: format_of(entry.name) for entry in os.scandir(directory)}
    named = sorted((name, form) for name, form in forms.items() if form is not None)
    roots = _link_roots(directory)
    return [(directory / name, _regular_stat(directory / name, roots), form) for name, form in named]


def _digest(path: Path, size: int) -> str:
    """sha256 of the size, the first and the last ``_DIGEST_BLOCK`` bytes (the whole file when small)."""
    digest = hashlib.sha256(str(size).encode() + b"\0")
    with open(path, "rb") as file:
        digest.update(file.read(_DIGEST_BLOCK))
        if size > _DIGEST_BLOCK:
            file.seek(max(_DIGEST_BLOCK, size - _DIGEST_BLOCK))
            digest.update(file.read(_DIGEST_BLOCK))
    return digest.hexdigest()


def _token_total(path: Path, tokens: Tokens) -> int:
    return sum(
        count_tokens(sample, tokens, f"{path}: sample {k}") for k, sample in enumerate(open_samples(os.fspath(path)))
    )


# What reading a damaged shard raises (a bad tar, a cut or garbled gzip, a 0-d .npy, a malformed or too deep line).
_DAMAGE = (ValueError, TypeError, OSError, EOFError, RecursionError, MemoryError, zlib.error, tarfile.TarError)


def _reading(path: Path, count: Callable[[], _Count]) -> _Count:
    """``count()``, with any error a damaged shard can raise while it is read made one ``ValueError`` that
    names the file (the `index` command prints it as one line)."""
    try:
        return count()
    except InputStateError:
        raise
    except _DAMAGE as error:
        text = str(error) if os.fspath(path) in str(error) else f"{path}: unreadable ({type(error).__name__}: {error})"
        raise ValueError(text) from None


def _index_entry(path: Path, before: os.stat_result, form: ShardFormat, tokens: Tokens) -> dict[str, Any]:
    entry: dict[str, Any] = {
        Key.INDEX_NAME: path.name,
        Key.INDEX_COUNT: _reading(path, lambda: form.count(os.fspath(path))),
        Key.INDEX_SIZE: before.st_size,
        Key.INDEX_MTIME_NS: before.st_mtime_ns,
        Key.INDEX_DIGEST: _digest(path, before.st_size),
    }
    if tokens is not None:
        entry[Key.INDEX_TOKENS] = _reading(path, lambda: _token_total(path, tokens))
    else:  # a format that knows its tokens without a field (a .npy array: its size), else no count
        own = _reading(path, lambda: form.tokens(os.fspath(path)))
        if own is not None:
            entry[Key.INDEX_TOKENS] = own
    for key in (Key.INDEX_COUNT, Key.INDEX_TOKENS):
        if entry.get(key, 0) > MAX_UNITS:
            raise ValueError(f"{path}: {entry[key]} {key}, more than the bound of {MAX_UNITS} per shard")
    after = os.stat(path)
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        raise ValueError(f"{path}: changed while it was being indexed; run `index` again once it is written")
    return entry


def build_index(directory: str | os.PathLike[str], tokens: Tokens = None) -> dict[str, Any]:
    """Count every shard file of ``directory`` (by name order) and return the index as plain JSON types.

    Args:
        directory: The directory holding the shards (not searched recursively; links are followed within it).
        tokens: Also count tokens, the way ``ShardedStream(tokens=)`` takes them: a field holding token ids
            (``sample[tokens]``; text is refused), or your tokenizer, a callable taking a sample and returning
            its token ids (recorded as ``module:qualname``). ``.npy`` rows: leave it None (a row is its tokens).

    Raises:
        ValueError: when the directory holds no shard file, a field holds text or no integers, the tokenizer
            raises, or a shard changes while it is read (each naming the file and sample).
        InputStateError: for a shard that is a link out of the directory or not a regular file.
    """
    root = Path(directory)
    field, tokenizer = token_identity(tokens)
    files = _shard_files(root)
    if not files:
        raise ValueError(f"{root}: no shard files (names ending in {suffix_list()})")
    return {
        Key.KIND: INDEX_KIND,
        Key.VERSION: FORMAT_VERSION,
        Key.INDEX_TOKENS_FIELD: field,
        Key.INDEX_TOKENIZER: tokenizer,
        Key.INDEX_SHARDS: [_index_entry(path, info, form, tokens) for path, info, form in files],
    }


def write_index(directory: str | os.PathLike[str], tokens: Tokens = None) -> Path:
    """Write the index of ``directory`` as ``torch_input_ckpt_index.json`` in it and return its path.

    Written like an input checkpoint: a random temporary name created with ``O_EXCL|O_NOFOLLOW`` (a planted
    symlink is never written through), fsync, rename; concurrent runs both succeed and a reader never sees
    a partial index. The index carries a sha256 of its content. ``tokens`` as for :func:`build_index`.
    """
    root = Path(directory)
    target = root / INDEX_FILE
    write_index_file(target, build_index(root, tokens))
    return target


# -- reading shards for a stream -------------------------------------------------------------------------------


def _check_current(path: str, entry: IndexEntry, source: Path, roots: list[str]) -> None:
    fix = _REINDEX.format(source.parent)
    try:
        info = _regular_stat(path, roots)
    except FileNotFoundError:
        raise InputStateError(f"{path}: shard listed in {source} is missing. Restore it, or {fix}.") from None
    if (info.st_size, info.st_mtime_ns) != (entry.size, entry.mtime_ns):
        raise InputStateError(
            f"{path}: shard changed since it was indexed in {source}: size {entry.size} -> {info.st_size}, "
            f"mtime_ns {entry.mtime_ns} -> {info.st_mtime_ns}. Restore it, or {fix}."
        )


def _check_token_source(index: ShardIndex, tokens: Tokens) -> None:
    """Refuse packing with token counts taken another way than the stream takes tokens."""
    if not any(e.tokens is not None for e in index.entries):
        return  # no counts at all: resolve_shards says pack_to needs them
    field, tokenizer = token_identity(tokens)
    if (field, tokenizer) == (index.tokens_field, index.tokenizer):
        return
    option = f"--tokenizer {tokenizer}" if tokenizer is not None else f"--tokens {field}" if field else "no --tokens"
    if tokenizer is not None and "<" in tokenizer:  # a lambda or a local function: importable only in Python
        option = "write_index(DIR, tokens=<the same callable>)"
    keep = f"tokens={index.tokens_field!r}" if index.tokenizer is None else f"the callable {index.tokenizer}"
    raise InputStateError(
        f"{index.path}: its token counts came from {index.token_source}, but this ShardedStream takes a "
        f"document's tokens from {describe(field, tokenizer)}: packing would cut sequences at the wrong tokens. "
        f"Give ShardedStream {keep}, or re-index with {option} (between runs: that changes the stream)."
    )


def _read_directory(directory: Path, tokens: Any) -> list[tuple[Shard, str]]:
    """The shards of ``directory``'s index (each with its content identity), checked as current."""
    try:
        index = read_index(directory)
    except FileNotFoundError:
        raise ValueError(
            f"{directory}: no {INDEX_FILE}; run `python -m torch_input_ckpt index {directory}` first"
        ) from None
    if tokens is not _UNUSED:
        _check_token_source(index, tokens)
    roots = _link_roots(directory)
    out = []
    for entry in index.entries:
        path = os.path.join(directory, entry.name)  # strings: a Path per shard costs more than its lstat
        _check_current(path, entry, index.path, roots)
        # Size and digest, not mtime: the same data copied without its times (`cp`, a download) and
        # re-indexed is the same stream; `_check_current` above already ties the index to the mtimes.
        identity = f"{entry.size}\0{entry.digest}"
        out.append((Shard(path, entry.count, entry.tokens), identity))
    return out


_UNUSED = object()  # tokens= of a stream that does not pack: its token counts are not used


def _remote_items(
    shards: Any, tokens: Any, storage_options: dict[str, Any] | None
) -> tuple[list[tuple[Shard, str]], ObjectStore, dict[str, ObjectInfo]]:
    """The shards of a prefix URL's index, or of a list of URLs (each in its prefix's index), checked against
    the store's listing; each with its content identity (size and digest, as for a local shard)."""
    first = shards if isinstance(shards, str) else shards[0]
    store = ObjectStore.for_url(first, storage_options)
    if isinstance(shards, str):
        index, found = remote_entries(shards, store)
        if tokens is not _UNUSED:
            _check_token_source(index, tokens)
    else:
        if not all(isinstance(item, str) and is_url(item) for item in shards):
            raise ValueError(f"shards mixes URLs and local paths or Shard values (got {shards!r}): give one kind")
        found = entries_of_urls(shards, store)
    items = [(Shard(url, entry.count, entry.tokens), f"{entry.size}\0{entry.digest}") for url, entry, _ in found]
    return items, store, {url: info for url, _, info in found}


def _items(
    shards: Any, how: Any, storage_options: dict[str, Any] | None
) -> tuple[list[tuple[Shard, str]], ObjectStore | None, dict[str, ObjectInfo]]:
    """Each shard with its content identity (and, on object storage, the client and the objects)."""
    listed = isinstance(shards, Sequence) and not isinstance(shards, str)
    if is_url(shards) or (listed and any(map(is_url, shards))):
        return _remote_items(shards, how, storage_options)
    if storage_options is not None:
        raise ValueError(
            f"storage_options is for shards on object storage (s3://...), not {shards!r}: leave it out for local files"
        )
    if isinstance(shards, (str, os.PathLike)):
        return _read_directory(Path(shards), how), None, {}
    if listed and shards:
        return _from_items(shards, how), None, {}
    raise ValueError(f"shards must be a directory or a non-empty sequence of paths or Shard (got {shards!r})")


def resolve_shards(
    shards: Any, needs_tokens: bool, tokens: Tokens = None, storage_options: dict[str, Any] | None = None
) -> ResolvedShards:
    """The :class:`Shard` list a stream reads (from a directory's index, paths, or ``Shard`` values) and its
    fingerprint.

    Args:
        shards: A directory with an index file; or a sequence of :class:`Shard` and/or paths (a path is
            looked up in its directory's index, else counted from its ``.npy`` header).
        needs_tokens: Whether token counts are required (packing).
        tokens: The stream's ``tokens=``: with packing, an index's counts must come from the same field or
            tokenizer.
        storage_options: For shards on object storage (a prefix URL ``s3://bucket/prefix/`` with an index, or
            a list of shard URLs): the client's options (:class:`~torch_input_ckpt.remote.ObjectStore`).

    Raises:
        InputStateError: for a missing or changed indexed shard, a damaged index, or token counts of another
            field or tokenizer than ``tokens``.
        ValueError: for a shard whose count cannot be known, or a missing token count with packing.
    """
    token_identity(tokens)  # a bad tokens= is named here, before any file is read
    items, store, objects = _items(shards, tokens if needs_tokens else _UNUSED, storage_options)
    resolved = [shard for shard, _ in items]
    for shard in resolved:
        _check_counts(shard, needs_tokens)
    for what, total in (("samples", sum(s.count for s in resolved)), ("tokens", sum(s.tokens or 0 for s in resolved))):
        if total > MAX_UNITS:
            raise ValueError(f"{len(resolved)} shards hold {total} {what}, more than the bound of {MAX_UNITS}")
    if not any(shard.count for shard in resolved):
        where = f"{os.fspath(shards)}: " if isinstance(shards, (str, os.PathLike)) else ""
        raise ValueError(f"{where}all {len(resolved)} shards are empty: a stream needs at least one sample")
    return ResolvedShards(resolved, fingerprint(items), store, objects)


def _check_counts(shard: Shard, needs_tokens: bool) -> None:
    for what, value in (("count", shard.count), ("tokens", shard.tokens)):
        if what == "tokens" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UNITS:
            raise ValueError(f"shard {shard.name}: {what} must be an int from 0 to {MAX_UNITS} (got {value!r})")
    if needs_tokens and shard.tokens is None:
        raise ValueError(
            f"shard {shard.name}: pack_to needs its token count; give Shard(..., tokens=) or index with "
            "`python -m torch_input_ckpt index DIR --tokens FIELD` (or --tokenizer module:callable)"
        )


def _from_items(items: Sequence[Any], tokens: Any) -> list[tuple[Shard, str]]:
    indexes: dict[Path, dict[str, tuple[Shard, str]]] = {}
    resolved = []
    for item in items:
        if isinstance(item, Shard):
            resolved.append((item, _file_identity(item.source)))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise ValueError(f"a shard must be a path or a Shard (got {item!r})")
        path = Path(item)
        directory = path.parent
        if directory not in indexes:
            has_index = os.path.lexists(directory / INDEX_FILE)
            listed = _read_directory(directory, tokens) if has_index else []
            indexes[directory] = {Path(s.source).name: (s, identity) for s, identity in listed}
        known = indexes[directory].get(path.name)
        form = format_of(path.name)
        if known is not None:
            resolved.append(known)
        elif form is not None and form.counted_from_header:
            resolved.append(_direct(path, form))
        else:
            raise ValueError(
                f"{path}: its sample count is unknown: run `python -m torch_input_ckpt index {directory}` "
                "or pass Shard(path, count)"
            )
    return resolved


def _direct(path: Path, form: ShardFormat) -> tuple[Shard, str]:
    """A path given without an index, of a format counted from its header (``.npy``): its counts from the
    header; its size and mtime are its identity."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputStateError(f"{path}: shard is missing") from None
    refuse_special(os.fspath(path), info.st_mode)  # before np.load, which blocks on a FIFO
    shard = Shard(os.fspath(path), form.count(os.fspath(path)), form.tokens(os.fspath(path)))
    return shard, f"{info.st_size}\0{info.st_mtime_ns}\0"


def _file_identity(source: Any) -> str:
    """A user's ``Shard`` whose source is a local file: its size and mtime; anything else: nothing to stat."""
    if isinstance(source, (str, os.PathLike)):
        try:
            info = os.stat(source)
        except (OSError, ValueError):  # not a local path (a URL, a key of the user's store)
            return ""
        if stat.S_ISREG(info.st_mode):
            return f"{info.st_size}\0{info.st_mtime_ns}\0"
    return ""


def fingerprint(items: Sequence[tuple[Shard, str]]) -> str:
    """A short hash of the shard list, in order: each shard's path relative to the shards' common directory
    (the data directory), its counts and its content identity (size and digest from the index; size and
    mtime for a ``.npy`` path given alone).

    Relative paths, so that the same files mounted elsewhere after a restart still match; full relative
    paths, so that ``web/part-0.npy`` and ``code/part-0.npy`` are told apart.
    """
    paths = [os.path.abspath(s.source) if isinstance(s.source, (str, os.PathLike)) else None for s, _ in items]
    directories = {os.path.dirname(p) for p in paths if p is not None}
    root = os.path.commonpath(sorted(directories)) if directories else ""
    prefix = os.path.join(root, "")  # with its trailing separator
    digest = hashlib.sha256()
    for (shard, identity), path in zip(items, paths, strict=True):
        if path is None:
            name = repr(shard.source)
        else:  # the shards of one directory: a prefix cut (relpath costs 60 us a shard)
            name = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
            name = name.replace(os.sep, "/")
        digest.update(f"{name}\0{shard.count}\0{shard.tokens}\0{identity}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def legacy_fingerprint(shards: Sequence[Shard]) -> str:
    """The fingerprint that earlier versions saved: file names and counts only, in order.

    Checked only to let a run saved by such a version resume (with a warning): it cannot tell
    ``web/part-0.npy`` from ``code/part-0.npy`` nor see a rewrite, which is why it was replaced.
    """
    digest = hashlib.sha256()
    for shard in shards:
        name = Path(shard.source).name if isinstance(shard.source, (str, os.PathLike)) else shard.name
        digest.update(f"{name}\0{shard.count}\0{shard.tokens}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


# -- the command ------------------------------------------------------------------------------------------

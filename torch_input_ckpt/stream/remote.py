"""Shards on object storage: the index beside them (read, checked against the store, written).

Guarantee: a stream over ``s3://`` shards reads exactly the objects its index recorded. When the stream is built,
one listing of each prefix compares every object's size and ETag with the index (a missing or changed object is
refused by name); every download then asks for that ETag (``If-Match``), so an object rewritten later is refused
by the store in the same request, never read. The index counts ``.npy`` shards from their headers and Parquet
shards from their footers by range reads; JSON lines and tar shards have no header that counts their samples,
so they are downloaded whole once, to count them.

A stream reads its shards from their copies in the node cache (:mod:`~torch_input_ckpt.stream.cache`), which
downloads them with :class:`~torch_input_ckpt.stream.cache.StoreDownload` (``If-Match`` the indexed ETag), ahead
of their reads in the stream's order.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import InputStateError, ObjectChangedError, ObjectStoreError
from ..remote import ObjectInfo, ObjectStore
from ..remote.urls import ObjectUrl, join_url
from ..state.schema import FORMAT_VERSION, INDEX_KIND, Key
from .formats import ShardFormat, format_of, suffix_list
from .index import INDEX_FILE, MAX_INDEX_BYTES, MAX_UNITS, IndexEntry, ShardIndex, encode_index, parse_index
from .tokens import count_tokens, token_identity

__all__ = [
    "RangeFile",
    "build_remote_index",
    "content_digest",
    "read_remote_index",
    "split_shard_url",
    "write_remote_index",
]

# As stream/shards.py's _DIGEST_BLOCK: the same digest for the same bytes, local or remote, so the same data
# has the same stream identity wherever it is read from (a run may move from a local copy to the store).
DIGEST_BLOCK = 64 * 1024
# Objects indexed at once (each by its own thread: the requests wait on the network, not on the GIL); below
# botocore's pool of 10 connections, past which requests queue for a connection and may hit the connect timeout.
INDEX_THREADS = 8
_REINDEX = "re-index with `python -m torch_input_ckpt index {}` (that changes the stream: do it between runs)"


def split_shard_url(url: str) -> tuple[str, str]:
    """``(prefix URL ending in "/", file name)`` of a shard's URL."""
    where = ObjectUrl.parse(url)
    head, _, name = where.key.rpartition("/")
    return str(where.child(head + "/" if head else "")), name


# -- reading by ranges ---------------------------------------------------------------------------------------


class RangeFile(io.RawIOBase):
    """A read-only, seekable file over one object, read by range requests (what pyarrow needs to read a
    Parquet footer without the rest); every read asks for the version ``info`` names (``If-Match``)."""

    def __init__(self, store: ObjectStore, info: ObjectInfo) -> None:
        super().__init__()
        self.store, self.info, self.position = store, info, 0
        self.requests = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.info.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer: Any) -> int:
        end = min(self.info.size, self.position + len(buffer))
        if end <= self.position:
            return 0
        data = self.store.read_range(self.info.url, self.position, end, expect=self.info)
        self.requests += 1
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def content_digest(size: int, head: bytes, tail: bytes) -> str:
    """stream/shards.py's digest of a file from its first ``DIGEST_BLOCK`` bytes and the bytes from
    ``max(DIGEST_BLOCK, size - DIGEST_BLOCK)`` to its end (``tail``, empty for a small file)."""
    digest = hashlib.sha256(str(size).encode() + b"\0")
    digest.update(head)
    digest.update(tail)
    return digest.hexdigest()


def _tail(store: ObjectStore, info: ObjectInfo) -> bytes:
    """The bytes the digest takes after the first block (none for a small object)."""
    if info.size <= DIGEST_BLOCK:
        return b""
    return store.read_range(info.url, max(DIGEST_BLOCK, info.size - DIGEST_BLOCK), info.size, expect=info)


def _npy_header_counts(url: str, size: int, head: bytes) -> tuple[int, int]:
    """Samples and tokens of a ``.npy`` object from its header (in ``head``, the object's first bytes)."""
    import numpy as np

    stream = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(stream)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(stream)
    except Exception as error:  # noqa: BLE001 - numpy's parser raises many types for a damaged header
        raise InputStateError(f"{url}: not a readable .npy header ({type(error).__name__}: {error})") from None
    if not shape:
        raise InputStateError(f"{url}: a 0-d array; expected a .npy array of 1 or more dimensions")
    elements = int(np.prod(shape, dtype=object))
    if dtype.itemsize * elements > size - stream.tell():
        raise InputStateError(f"{url}: its header claims {dtype.itemsize * elements} bytes of data, it holds fewer")
    if shape[0] and dtype.itemsize * elements == 0:
        raise InputStateError(f"{url}: {shape[0]} samples of 0 bytes each; expected rows that hold data")
    return int(shape[0]), elements


def _parquet_footer_count(store: ObjectStore, info: ObjectInfo) -> int:
    """Rows of a Parquet object from its footer (range reads of the footer only)."""
    import pyarrow.parquet as pq

    with RangeFile(store, info) as file:
        try:
            return int(pq.read_metadata(file).num_rows)
        except ObjectStoreError:
            raise
        except Exception as error:  # noqa: BLE001 - pyarrow's errors for a damaged footer
            raise InputStateError(f"{info.url}: not a readable Parquet footer ({error})") from None


# -- writing the index ---------------------------------------------------------------------------------------


def _counted_by_ranges(store: ObjectStore, info: ObjectInfo, name: str) -> tuple[int, int | None, str] | None:
    """``(count, tokens, digest)`` of a ``.npy`` or Parquet object by range reads (header or footer, and the
    digest's blocks), or None for another format."""
    lower = name.lower()
    if not lower.endswith((".npy", ".parquet")):
        return None
    head = store.read_range(info.url, 0, min(info.size, DIGEST_BLOCK), expect=info)
    digest = content_digest(info.size, head, _tail(store, info))
    if lower.endswith(".npy"):
        return (*_npy_header_counts(info.url, info.size, head), digest)
    return _parquet_footer_count(store, info), None, digest


def _counted_whole(
    store: ObjectStore, info: ObjectInfo, form: ShardFormat, tokens: Any, scratch: Path
) -> tuple[int, int | None, str]:
    """``(count, tokens, digest)`` of an object downloaded whole (a format without a counting header)."""
    local = scratch / info.url.rpartition("/")[2]
    store.download(info.url, local, expect=info)
    try:
        count = form.count(os.fspath(local))
        if tokens is not None:
            samples = enumerate(form.open(os.fspath(local), 0))
            total = sum(count_tokens(sample, tokens, f"{info.url}: sample {k}") for k, sample in samples)
        else:
            total = form.tokens(os.fspath(local))
        with open(local, "rb") as file:
            head = file.read(DIGEST_BLOCK)
            file.seek(max(DIGEST_BLOCK, info.size - DIGEST_BLOCK))
            tail = file.read() if info.size > DIGEST_BLOCK else b""
    finally:
        local.unlink(missing_ok=True)
    return count, total, content_digest(info.size, head, tail)


def _remote_entry(store: ObjectStore, info: ObjectInfo, tokens: Any, scratch: Path) -> dict[str, Any]:
    name = info.url.rpartition("/")[2]
    form = format_of(name)
    assert form is not None  # listed only when of a known format
    counted = _counted_by_ranges(store, info, name) if tokens is None else None
    count, total, digest = counted or _counted_whole(store, info, form, tokens, scratch)
    entry: dict[str, Any] = {
        Key.INDEX_NAME: name,
        Key.INDEX_COUNT: count,
        Key.INDEX_SIZE: info.size,
        Key.INDEX_ETAG: info.etag,
        Key.INDEX_DIGEST: digest,
    }
    if total is not None:
        entry[Key.INDEX_TOKENS] = total
    for key in (Key.INDEX_COUNT, Key.INDEX_TOKENS):
        if entry.get(key, 0) > MAX_UNITS:
            raise ValueError(f"{info.url}: {entry[key]} {key}, more than the bound of {MAX_UNITS} per shard")
    return entry


def build_remote_index(prefix_url: str, store: ObjectStore, tokens: Any = None) -> dict[str, Any]:
    """The index of the shard objects directly under ``prefix_url`` (by name), as plain JSON types.

    ``.npy`` shards are counted from their headers and Parquet shards from their footers by range reads (two
    more small ranges give the content digest); JSON lines and tar shards (and any shard when token counts
    come from a field or a tokenizer) are downloaded whole to a temporary file, counted, and deleted. Each
    entry records the object's size and ETag.
    """
    field, tokenizer = token_identity(tokens)
    objects = [info for info in store.list(prefix_url) if format_of(info.url.rpartition("/")[2]) is not None]
    if not objects:
        raise ValueError(f"{prefix_url}: no shard objects (names ending in {suffix_list()})")
    with tempfile.TemporaryDirectory(prefix="tic-index-") as scratch, ThreadPoolExecutor(INDEX_THREADS) as pool:
        # Concurrent requests: per-request latency, not bandwidth, bounds indexing by range reads (10,000 shards
        # at 2 ranges x 20 ms each would take 400 s one at a time). map() keeps the name order.
        entries = list(pool.map(lambda info: _remote_entry(store, info, tokens, Path(scratch)), objects))
    return {
        Key.KIND: INDEX_KIND,
        Key.VERSION: FORMAT_VERSION,
        Key.INDEX_TOKENS_FIELD: field,
        Key.INDEX_TOKENIZER: tokenizer,
        Key.INDEX_SHARDS: entries,
    }


def write_remote_index(
    prefix_url: str, storage_options: dict[str, Any] | None = None, tokens: Any = None
) -> tuple[str, dict[str, Any]]:
    """Write the index of ``prefix_url``'s shards beside them (``PREFIX/torch_input_ckpt_index.json``, one PUT:
    a reader sees the old index or the new one, never a part); returns its URL and body."""
    store = ObjectStore.for_url(prefix_url, storage_options)
    body = build_remote_index(prefix_url, store, tokens)
    url = join_url(prefix_url, INDEX_FILE)
    store.put(url, encode_index(body))
    return url, body


# -- reading the index, checked against the store -------------------------------------------------------------


def read_remote_index(prefix_url: str, store: ObjectStore) -> tuple[ShardIndex, list[ObjectInfo]]:
    """The checked index of ``prefix_url`` and, for each entry, the object it names as the store lists it now.

    Raises:
        InputStateError: no index (naming the command that writes one), a damaged index, or a shard object
            missing or changed (size or ETag) since it was indexed, naming it.
    """
    url = join_url(prefix_url, INDEX_FILE)
    listed = {info.url: info for info in store.list(prefix_url)}
    if url not in listed:
        raise InputStateError(
            f"{prefix_url}: no {INDEX_FILE}; run `python -m torch_input_ckpt index {prefix_url}` first"
        )
    if listed[url].size > MAX_INDEX_BYTES:
        raise InputStateError(f"{url}: {listed[url].size} bytes, more than the bound of {MAX_INDEX_BYTES}")
    index = parse_index(store.read(url, expect=listed[url]), url, prefix_url, remote=True)
    fix = _REINDEX.format(prefix_url)
    objects = []
    for entry in index.entries:
        shard_url = join_url(prefix_url, entry.name)
        found = listed.get(shard_url)
        if found is None:
            raise InputStateError(f"{shard_url}: shard listed in {url} is missing. Restore it, or {fix}.")
        if (found.size, found.etag) != (entry.size, entry.etag):
            raise ObjectChangedError(
                f"{shard_url}: changed since it was indexed in {url}: size {entry.size} -> {found.size}, "
                f"ETag {entry.etag} -> {found.etag}. Restore it, or {fix}."
            )
        objects.append(found)
    return index, objects


def remote_entries(prefix_url: str, store: ObjectStore) -> tuple[ShardIndex, list[tuple[str, IndexEntry, ObjectInfo]]]:
    """``(index, [(url, entry, object)...])`` of a prefix, checked as :func:`read_remote_index` does."""
    index, objects = read_remote_index(prefix_url, store)
    return index, [(info.url, entry, info) for entry, info in zip(index.entries, objects, strict=True)]


def entries_of_urls(urls: Sequence[str], store: ObjectStore) -> list[tuple[str, IndexEntry, ObjectInfo]]:
    """The entries of shard URLs, each looked up in its prefix's index (one listing and index read per prefix)."""
    by_prefix: dict[str, dict[str, tuple[str, IndexEntry, ObjectInfo]]] = {}
    found = []
    for url in urls:
        prefix, name = split_shard_url(url)
        if prefix not in by_prefix:
            by_prefix[prefix] = {item[1].name: item for item in remote_entries(prefix, store)[1]}
        item = by_prefix[prefix].get(name)
        if item is None:
            raise InputStateError(
                f"{url}: not in {join_url(prefix, INDEX_FILE)}; run `python -m torch_input_ckpt index {prefix}`"
            )
        found.append(item)
    return found

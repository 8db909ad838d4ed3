"""The cache directory's files: its marker, per-shard locks, the manifest, and the checks that keep it apart from data.

Layout of a cache directory (every name below is the cache's own; nothing else in it is ever touched)::

    .torch_input_ckpt-cache   marker: this directory is a shard cache (JSON: kind, version)
    cache.lock                the bookkeeping lock: held while the manifest is read and rewritten
    manifest.json             the shards downloaded (url, etag, size, last use) and the downloads in flight
    objects/<key>             complete shards, published by ``os.replace`` from ``partial/``
    partial/<key>.<pid>.part  downloads in flight (never read; a dead writer's is removed)
    locks/<key>.lock          per shard: readers hold it shared, a download and an eviction exclusive
    needs/<pid>.json          per process: the shards it reads next and when (what eviction ranks by)

Guarantees: a reader only ever opens ``objects/<key>``, which exists only once a download is complete
(renamed into place); eviction deletes only files the manifest lists, and only under the shard's exclusive
lock taken without waiting, so a shard a process holds open is never deleted under it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER",
    "CacheLayout",
    "close_lock",
    "flock",
    "is_open_lock",
    "key_of",
    "open_lock",
    "read_json",
    "refuse_overlap",
    "temporary_cache_dir",
    "try_exclusive",
    "write_json",
]

MARKER = ".torch_input_ckpt-cache"
_KIND = "torch_input_ckpt shard cache"
_VERSION = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


_FOLDERS = ("objects", "partial", "locks", "needs")


def _own(name: str) -> bool:
    """A name the cache itself makes at its top level (a temporary name of its JSON files included)."""
    own = {MARKER, "cache.lock", "manifest.json", *_FOLDERS}
    return name in own or (name.startswith(".") and name.endswith(".tmp"))


def key_of(url: str) -> str:
    """The cache's file name for an object: a hash of its URL (unique), then its base name (readable, suffix kept)."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:24]
    base = _UNSAFE.sub("_", url.rstrip("/").rsplit("/", 1)[-1])[-80:] or "object"
    return f"{digest}-{base}"


# The lock descriptors open in this process. An flock belongs to the open file description, which a forked child
# shares: the child's copy of a descriptor the parent locks through (a prefetch thread's download, the bookkeeping
# lock held at the moment a DataLoader forks its workers) would keep that lock held after the parent lets go, for as
# long as the child lives, and every process of the node would wait on it (seen: a resume with 2 workers hanging).
# So a forked child closes its copies at once, before any of its code runs.
_LOCK_FDS: set[int] = set()
_LOCK_FDS_GUARD = threading.Lock()


def _hold_guard() -> None:
    _LOCK_FDS_GUARD.acquire()  # no other thread changes the set while the process forks


def _release_guard() -> None:
    _LOCK_FDS_GUARD.release()


def _close_inherited() -> None:
    global _LOCK_FDS_GUARD
    for fd in _LOCK_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _LOCK_FDS.clear()
    _LOCK_FDS_GUARD = threading.Lock()


os.register_at_fork(before=_hold_guard, after_in_parent=_release_guard, after_in_child=_close_inherited)


def open_lock(path: Path) -> int:
    """A descriptor of the lock file ``path`` (created if missing), closed in a forked child: close it with
    :func:`close_lock`."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    with _LOCK_FDS_GUARD:
        fd = os.open(path, flags, 0o644)
        _LOCK_FDS.add(fd)
    return fd


def close_lock(fd: int) -> None:
    """Close a descriptor of :func:`open_lock` (releasing its lock once no other descriptor shares it)."""
    with _LOCK_FDS_GUARD:
        _LOCK_FDS.discard(fd)
        os.close(fd)


def is_open_lock(fd: int) -> bool:
    """Whether ``fd`` is a lock descriptor this process opened (False in a forked child for the parent's)."""
    return fd in _LOCK_FDS


@contextlib.contextmanager
def flock(path: Path, mode: int = fcntl.LOCK_EX) -> Iterator[int]:
    """Hold ``flock(mode)`` on ``path`` (created if missing) for the ``with`` block; yields the descriptor."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, mode)
        yield fd
    finally:
        close_lock(fd)  # closing the last descriptor releases the lock


def try_exclusive(path: Path) -> int | None:
    """An exclusive ``flock`` on ``path`` without waiting: the descriptor (close it to release with
    :func:`close_lock`), or None if held."""
    fd = open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        close_lock(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def read_json(path: Path) -> Any:
    """A JSON file's content, or None if it is missing or damaged (the cache's own files: rebuilt, never trusted)."""
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def write_json(path: Path, body: Any) -> None:
    """Write ``body`` to ``path`` atomically (a temporary name, then ``os.replace``)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(body, sort_keys=True, separators=(",", ":")))
    os.replace(temporary, path)


def refuse_overlap(cache_dir: Path, sources: list[Path]) -> None:
    """Refuse a cache directory that is, holds or lies inside a source directory (mosaicml/streaming#988).

    Raises:
        ValueError: naming both directories.
    """
    cache = cache_dir.resolve()
    for source in sources:
        root = source.resolve()
        if cache == root or root in cache.parents or cache in root.parents:
            raise ValueError(
                f"cache_dir {cache_dir} overlaps the source directory {source} (one is, holds or lies inside the "
                "other): a cache evicts files, and must never be able to delete source data. Choose a cache_dir "
                "outside the data (e.g. on local scratch), or read the local shards without a cache."
            )


class CacheLayout:
    """The paths of a cache directory; creates it (with its marker) or refuses a directory that is not a cache.

    Args:
        root: The cache directory.

    Raises:
        ValueError: if ``root`` holds files but no cache marker (it is someone's data, not a cache), or its
            marker is not this library's.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        marker = root / MARKER
        if root.exists() and not root.is_dir():
            raise ValueError(f"cache_dir {root} is not a directory")
        foreign = [p.name for p in root.iterdir() if not _own(p.name)] if root.is_dir() else []
        if foreign and not marker.exists():
            raise ValueError(
                f"cache_dir {root} already holds files ({', '.join(sorted(foreign)[:3])}, ...) and is not a shard "
                f"cache (no {MARKER} marker): the cache deletes what it evicts, so it only runs in an empty or new "
                "directory. Choose another cache_dir."
            )
        self.manifest = root / "manifest.json"
        self.bookkeeping = root / "cache.lock"
        root.mkdir(parents=True, exist_ok=True)
        with flock(self.bookkeeping):  # processes of a node starting together: one creates, the others find
            for folder in _FOLDERS:
                (root / folder).mkdir(exist_ok=True)
            body = read_json(marker)
            if body is None:
                write_json(marker, {"kind": _KIND, "version": _VERSION})
            elif body.get("kind") != _KIND or body.get("version") != _VERSION:
                raise ValueError(f"{marker}: found {body!r}, expected kind {_KIND!r} version {_VERSION}")

    def object(self, key: str) -> Path:
        """Where a complete shard lives."""
        return self.root / "objects" / key

    def lock(self, key: str) -> Path:
        """A shard's lock file."""
        return self.root / "locks" / f"{key}.lock"

    def partial(self, key: str) -> Path:
        """This process's temporary name for a download of ``key``."""
        return self.root / "partial" / f"{key}.{os.getpid()}.part"

    def needs(self, pid: int) -> Path:
        """A process's published next uses."""
        return self.root / "needs" / f"{pid}.json"


def _remove_if_mine(path: str, pid: int) -> None:
    if os.getpid() == pid:  # never from a forked DataLoader worker: the directory is its parent's
        shutil.rmtree(path, ignore_errors=True)


def temporary_cache_dir(owner: object) -> str:
    """A new empty directory for a cache, removed when ``owner`` is collected or the process that made it exits."""
    path = tempfile.mkdtemp(prefix="torch-input-ckpt-shards-")
    weakref.finalize(owner, _remove_if_mine, path, os.getpid())
    return path

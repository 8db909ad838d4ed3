"""``ShardCache``: a node-local cache of downloaded shards, shared by every rank and worker of the node.

Guarantees:

- a path :meth:`ShardCache.open_path` returns is a complete download (published by ``os.replace`` after its
  size was checked) and stays on disk until :meth:`ShardCache.release`: the reader holds the shard's lock
  shared, and eviction takes it exclusive without waiting, skipping any shard held;
- a process killed mid-download leaves only a ``partial/`` file, which no reader opens and which is removed
  once no live process holds that shard's lock;
- eviction deletes only shards it downloaded (listed in its manifest, in its own ``objects/`` folder), never
  a directory that is not a cache, never one that overlaps a source directory (mosaicml/streaming#988);
- with ``policy="next-use"`` (Belady's rule) the shard whose next use is furthest away goes first, reading
  the next uses every process of the node published (:meth:`ShardCache.publish`); a prefetch only evicts
  shards needed later than the one it fetches; ``policy="lru"`` evicts the least recently opened instead;
- a full disk, or a limit below what must be on disk at once, is a :class:`~torch_input_ckpt.CacheFullError`
  naming the cache, the limit and the shard.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ...errors import CacheFullError, InputStateError
from .files import (
    CacheLayout,
    close_lock,
    flock,
    is_open_lock,
    key_of,
    open_lock,
    read_json,
    refuse_overlap,
    try_exclusive,
    write_json,
)

__all__ = ["POLICIES", "LocalObject", "ObjectRef", "ShardCache", "StoreDownload", "copy_file", "local_object"]

log = logging.getLogger("torch_input_ckpt")
POLICIES = ("next-use", "lru")
# The pause before looking again at an object another process is about to download or read; jittered by a
# generator of its own (never the global ``random``, whose draws belong to the user's samples), so that two
# processes looking at once do not keep meeting.
_RETRY_S = (0.002, 0.02)
_JITTER = random.Random()


class ObjectRef(Protocol):
    """What the cache needs to know of an object (``remote.ObjectInfo`` is one): its URL, size and ETag."""

    url: str
    size: int
    etag: str | None


Download = Callable[[Any, Path], None]


class ShardCache:
    """A node-local shard cache in ``cache_dir``, at most ``limit`` bytes of shards.

    Args:
        cache_dir: A new or empty directory, or one this class made; shared by every process of the node.
        limit: The most bytes of shards kept (every process of a node must pass the same).
        download: ``download(info, dest)`` writes the whole object ``info`` names to the path ``dest``
            (e.g. ``remote.ObjectStore.download``); the cache checks its size and publishes it.
        sources: Local directories the data comes from: a ``cache_dir`` that is, holds or lies inside one
            is refused.
        policy: ``"next-use"`` (Belady's rule, by the published next uses) or ``"lru"``.
        max_downloads: How many prefetches run at once (in a background thread pool of this process).
        wait_s: How long a read waits for room (shards held by other processes, downloads in flight)
            before :class:`~torch_input_ckpt.CacheFullError`.

    Raises:
        ValueError: for a ``cache_dir`` that overlaps a source, or holds files and is not a cache; bad arguments.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        limit: int,
        download: Download,
        *,
        sources: Iterable[str | os.PathLike[str]] = (),
        policy: str = "next-use",
        max_downloads: int = 2,
        wait_s: float = 10.0,
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"cache_limit must be an int >= 1 (bytes) (got {limit!r})")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES} (got {policy!r})")
        if isinstance(max_downloads, bool) or not isinstance(max_downloads, int) or max_downloads < 1:
            raise ValueError(f"max_downloads must be an int >= 1 (got {max_downloads!r})")
        root = Path(cache_dir)
        refuse_overlap(root, [Path(s) for s in sources])
        self.layout = CacheLayout(root)
        self.limit, self.policy, self.max_downloads, self.wait_s = limit, policy, max_downloads, float(wait_s)
        self._download = download
        self.stats = {"downloads": 0, "bytes": 0, "evictions": 0}
        self._reset_process()

    def _reset_process(self) -> None:
        # Locks, threads and counts are this process's: a forked worker starts with its own.
        self._pid = os.getpid()
        self._held: dict[str, tuple[int, int]] = {}  # key -> (descriptor holding the shared lock, opens)
        self._pool: ThreadPoolExecutor | None = None
        self._plan: list[tuple[float, str, Any]] = []  # prefetches to run, soonest first (the latest plan)
        self._active: set[str] = set()
        self._drainers = 0
        self._mutex = threading.Condition()
        self._in_order = threading.Lock()  # prefetches reserve their room in the plan's order
        self.stats = dict.fromkeys(self.stats, 0)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            # A forked child: its copies of the parent's lock descriptors were closed at the fork (files.open_lock;
            # a copy left open would keep a shard locked after the parent let go); what they held is the parent's.
            self._reset_process()

    def __del__(self) -> None:
        # The shared locks of a cache dropped without close(): released with it (never a forked copy's).
        held = getattr(self, "_held", None)
        if held and os is not None and os.getpid() == self._pid:
            for fd, _ in held.values():
                if is_open_lock(fd):
                    close_lock(fd)
            held.clear()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in ("_held", "_pool", "_plan", "_active", "_drainers", "_mutex", "_in_order"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_process()

    def node_totals(self) -> dict[str, int]:
        """What every process of the node downloaded into this cache so far: ``downloads`` and ``downloaded_bytes``."""
        with flock(self.layout.bookkeeping):
            body = self._load()
        return {"downloads": int(body.get("downloads", 0)), "downloaded_bytes": int(body.get("downloaded_bytes", 0))}

    @property
    def root(self) -> Path:
        """The cache directory."""
        return self.layout.root

    # -- reading ---------------------------------------------------------------------------------------

    def open_path(self, info: ObjectRef, next_use: float = 0.0) -> Path:
        """The local path of the complete object ``info``, downloaded if it is not in the cache; held until
        :meth:`release` (each call needs its release).

        Args:
            info: The object (URL, size, ETag).
            next_use: When it is read (the position published with :meth:`publish`; ``0`` now).

        Raises:
            CacheFullError: if the disk is full or the limit cannot hold it besides the shards held.
            InputStateError: if the download's size is not ``info.size``.
        """
        self._check_process()
        key = key_of(info.url)
        if key in self._held:
            fd, opens = self._held[key]
            self._held[key] = (fd, opens + 1)
            return self.layout.object(key)
        while True:
            fd = open_lock(self.layout.lock(key))
            fcntl.flock(fd, fcntl.LOCK_SH)
            if self._complete(key, info, touch=True):
                self._held[key] = (fd, 1)
                return self.layout.object(key)
            # Exclusive access is only tried: a shared lock taken by another process once the object was complete
            # is held while that process reads it, possibly until the loader hands it its next batch, which may
            # wait for this very fetch (seen: a resume with 2 workers hanging). A download in progress holds the
            # lock exclusive, so the shared lock above waits for it; what is left to wait out here is a reader
            # that checked before the object was complete and is about to look again.
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                close_lock(fd)
                time.sleep(_JITTER.uniform(*_RETRY_S))
                continue
            try:
                if not self._complete(key, info, touch=True):
                    self._fetch(key, info, next_use, demand=True)
                fcntl.flock(fd, fcntl.LOCK_SH)  # not atomic: an eviction may slip in, hence the check
            except BaseException:
                close_lock(fd)
                raise
            if self._complete(key, info, touch=False):
                self._held[key] = (fd, 1)
                return self.layout.object(key)
            close_lock(fd)

    def release(self, info: ObjectRef) -> None:
        """Done with a path :meth:`open_path` returned: once every open is released, it may be evicted."""
        self._check_process()
        key = key_of(info.url)
        held = self._held.get(key)
        if held is None:
            return
        fd, opens = held
        if opens > 1:
            self._held[key] = (fd, opens - 1)
            return
        del self._held[key]
        close_lock(fd)

    def close(self) -> None:
        """Release every shard held, stop the prefetches and withdraw this process's published needs."""
        self._check_process()
        if self._pool is not None:
            with self._mutex:
                self._plan.clear()
            self._pool.shutdown(wait=True)
            self._pool = None
        for fd, _ in self._held.values():
            close_lock(fd)
        self._held.clear()
        self.layout.needs(self._pid).unlink(missing_ok=True)

    # -- next uses and prefetch ------------------------------------------------------------------------

    def publish(self, uses: Mapping[str, float], **extra: Any) -> None:
        """Publish this process's next uses (URL -> position of its next read; lower is sooner) for the
        evictions of every process of the node; ``extra`` (plain JSON) is kept beside them."""
        self._check_process()
        body = {"uses": {key_of(url): float(use) for url, use in uses.items()}, **extra}
        write_json(self.layout.needs(self._pid), body)

    def published(self, pid: int) -> dict[str, Any] | None:
        """What process ``pid`` published (None if nothing)."""
        body = read_json(self.layout.needs(pid))
        return body if isinstance(body, dict) else None

    def prefetch(self, upcoming: Iterable[tuple[ObjectRef, float]]) -> None:
        """Download these objects ahead, soonest first, at most ``max_downloads`` at once, in the background.

        The list replaces the previous one (what is not started yet is dropped). A prefetch never waits for a
        lock (a shard being read or downloaded is skipped) and never evicts a shard needed sooner than the one
        it fetches; the first one that finds no room ends the list (the later ones would find none either).
        """
        self._check_process()
        with self._mutex:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.max_downloads, thread_name_prefix="shard-prefetch")
            plan = sorted((use, key_of(info.url), info) for info, use in upcoming)
            self._plan = [item for item in plan if item[1] not in self._active]
            while self._drainers < min(self.max_downloads, len(self._plan)):
                self._drainers += 1
                self._pool.submit(self._drain)

    def wait_prefetches(self) -> None:
        """Wait until the prefetches planned so far have run (their errors are logged, not raised)."""
        with self._mutex:
            self._mutex.wait_for(lambda: self._drainers == 0)

    def _drain(self) -> None:
        while True:
            self._in_order.acquire()  # released once this prefetch has its room (or none): the next may go
            with self._mutex:
                if not self._plan:
                    self._drainers -= 1
                    self._mutex.notify_all()
                    self._in_order.release()
                    return
                use, key, info = self._plan.pop(0)
                self._active.add(key)
            try:
                if not self._prefetch_one(key, info, use, self._in_order):
                    with self._mutex:
                        self._plan.clear()
            finally:
                with self._mutex:
                    self._active.discard(key)

    def _prefetch_one(self, key: str, info: ObjectRef, use: float, in_order: threading.Lock) -> bool:
        """Fetch one shard ahead; False if it found no room. Releases ``in_order`` once its room is settled."""
        released = [False]

        def settled() -> None:
            if not released[0]:
                released[0] = True
                in_order.release()

        fd = try_exclusive(self.layout.lock(key))
        try:
            if fd is not None and not self._complete(key, info, touch=False):
                return self._fetch(key, info, use, demand=False, reserved=settled)
        except (OSError, InputStateError) as error:
            log.warning("shard cache %s: prefetch of %s failed (%s); read on demand", self.root, info.url, error)
        finally:
            settled()
            if fd is not None:
                close_lock(fd)
        return True  # present, or read or downloaded by someone right now

    # -- the manifest -----------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        body = read_json(self.layout.manifest)
        if not isinstance(body, dict):
            body = {}
        body.setdefault("entries", {})
        body.setdefault("flight", {})
        body.setdefault("clock", 0)
        return body

    def _complete(self, key: str, info: ObjectRef, *, touch: bool) -> bool:
        """Whether ``objects/<key>`` is a complete download of this very object (URL, ETag, size)."""
        try:
            size = self.layout.object(key).stat().st_size
        except FileNotFoundError:
            return False
        if size != info.size:
            return False
        with flock(self.layout.bookkeeping):
            body = self._load()
            entry = body["entries"].get(key)
            if entry is None or entry.get("url") != info.url or entry.get("etag") != info.etag:
                return False
            if touch:
                body["clock"] += 1
                entry["used"] = body["clock"]
                write_json(self.layout.manifest, body)
        return True

    # -- downloads ---------------------------------------------------------------------------------------

    def _fetch(
        self, key: str, info: ObjectRef, use: float, *, demand: bool, reserved: Callable[[], None] | None = None
    ) -> bool:
        """Download ``info`` into ``objects/<key>``; the caller holds the shard's lock exclusive. ``reserved`` is
        called once its room is counted (or found missing)."""
        try:
            room = self._reserve(key, info, use, demand=demand)
        finally:
            if reserved is not None:
                reserved()
        if not room:
            return False
        partial = self.layout.partial(key)
        done = False
        try:
            try:
                self._download(info, partial)
                found = partial.stat().st_size
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._full(info, f"the disk is full ({error.strerror}) while downloading it") from None
                raise
            if found != info.size:
                raise InputStateError(
                    f"{info.url}: the download holds {found} bytes, expected {info.size} (the size indexed); the "
                    "object changed or the transfer was cut. Re-index the data if it changed."
                )
            os.replace(partial, self.layout.object(key))
            done = True
        finally:
            partial.unlink(missing_ok=True)
            self._settle(key, info, done)
        self.stats["downloads"] += 1
        self.stats["bytes"] += info.size
        log.debug("shard cache %s: downloaded %s (%d bytes)", self.root, info.url, info.size)
        return True

    def _settle(self, key: str, info: ObjectRef, done: bool) -> None:
        with flock(self.layout.bookkeeping):
            body = self._load()
            body["flight"].pop(key, None)
            if done:
                body["downloads"] = body.get("downloads", 0) + 1  # the node's totals, for reports and tests
                body["downloaded_bytes"] = body.get("downloaded_bytes", 0) + info.size
                body["clock"] += 1
                body["entries"][key] = {"url": info.url, "etag": info.etag, "size": info.size, "used": body["clock"]}
            write_json(self.layout.manifest, body)

    def _reserve(self, key: str, info: ObjectRef, use: float, *, demand: bool) -> bool:
        """Count ``info.size`` bytes in flight, evicting to fit; False if a prefetch finds no room. A read
        waits up to ``wait_s`` for room: other processes release shards and finish downloads as they go."""
        deadline, pause = time.monotonic() + self.wait_s, 0.01
        while True:
            try:
                return self._reserve_once(key, info, use, demand=demand)
            except CacheFullError:
                if time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _reserve_once(self, key: str, info: ObjectRef, use: float, *, demand: bool) -> bool:
        with flock(self.layout.bookkeeping):
            body = self._load()
            self._drop_dead_flights(body, key)
            old = body["entries"].pop(key, None)  # a stale copy (another ETag) is replaced
            if old is not None:
                self.layout.object(key).unlink(missing_ok=True)
            over = _used(body) + info.size - self.limit
            if over > 0 and not self._evict(body, over, None if demand else use):
                write_json(self.layout.manifest, body)
                if not demand:
                    return False
                raise self._full(info, _held_text(body, info.size, self.limit))
            body["flight"][key] = {"pid": os.getpid(), "size": info.size}
            write_json(self.layout.manifest, body)
        return True

    def _drop_dead_flights(self, body: dict[str, Any], mine: str) -> None:
        # A download in flight holds its shard's lock; a flight whose lock is free was killed. The caller
        # holds ``mine``'s lock exclusive, so a flight of ``mine`` is a killed one too.
        for key in list(body["flight"]):
            fd = None if key == mine else try_exclusive(self.layout.lock(key))
            if fd is None and key != mine:
                continue
            try:
                for stale in (self.root / "partial").glob(f"*{key}.*"):
                    stale.unlink(missing_ok=True)
                del body["flight"][key]
            finally:
                if fd is not None:
                    close_lock(fd)

    def _evict(self, body: dict[str, Any], need: int, beyond: float | None) -> bool:
        """Delete unheld shards, in the policy's order, until ``need`` bytes are free. True if enough was freed.

        A prefetch (``beyond``: its own next use) evicts only shards used later than it, and only while the
        policy's next victim is not held: a shard held now is released before that prefetched one is read,
        and would then be the better victim (evicting another instead would cost a download that
        eviction on demand avoids)."""
        freed = 0
        for key in self._victims(body, beyond):
            fd = try_exclusive(self.layout.lock(key))
            if fd is None:
                if beyond is not None:
                    return False
                continue  # held open by a reader (or being replaced): never deleted under it
            try:
                self.layout.object(key).unlink(missing_ok=True)
                freed += int(body["entries"].pop(key)["size"])
            finally:
                close_lock(fd)
            self.stats["evictions"] += 1
            if freed >= need:
                return True
        return False

    def _victims(self, body: dict[str, Any], beyond: float | None) -> list[str]:
        entries = body["entries"]
        if self.policy == "lru":
            return sorted(entries, key=lambda k: entries[k]["used"]) if beyond is None else []
        uses = self._node_uses()
        ranked = sorted(entries, key=lambda k: (-uses.get(k, math.inf), entries[k]["used"]))
        return [k for k in ranked if beyond is None or uses.get(k, math.inf) > beyond]

    def _node_uses(self) -> dict[str, float]:
        """Every live process's next use of each shard (the soonest), from their published files."""
        soonest: dict[str, float] = {}
        for path in (self.root / "needs").glob("*.json"):
            if not _alive(path.stem):
                path.unlink(missing_ok=True)
                continue
            body = read_json(path)
            uses = body.get("uses") if isinstance(body, dict) else None
            for key, use in (uses or {}).items():
                soonest[key] = min(soonest.get(key, math.inf), float(use))
        return soonest

    def _full(self, info: ObjectRef, why: str) -> CacheFullError:
        return CacheFullError(
            f"shard cache {self.root} (cache_limit={self.limit} bytes) cannot hold {info.url} ({info.size} bytes): "
            f"{why}. Raise cache_limit, free the disk, or read with fewer shards open at once (fewer lanes or "
            "workers); nothing partial was kept."
        )


def _used(body: dict[str, Any]) -> int:
    return sum(int(e["size"]) for e in body["entries"].values()) + sum(int(f["size"]) for f in body["flight"].values())


def _held_text(body: dict[str, Any], size: int, limit: int) -> str:
    return (
        f"{_used(body)} bytes are held by shards open or being downloaded ({len(body['entries'])} cached, "
        f"{len(body['flight'])} in flight), and {size} more would pass the limit of {limit}"
    )


def _alive(stem: str) -> bool:
    try:
        os.kill(int(stem), 0)
    except ValueError:
        return False
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class LocalObject:
    """A shard file on a local or network file system, as the cache sees it (its ETag: modification time and size).

    Attributes:
        url: The file's path.
        size: Its size in bytes.
        etag: ``"<mtime_ns>-<size>"`` when described: a rewritten file is another object.
    """

    url: str
    size: int
    etag: str | None


def local_object(source: Any) -> LocalObject:
    """Describe a shard file for the cache.

    Raises:
        ValueError: for a source that is not a file path (a custom opener's description cannot be cached).
    """
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(f"cache_dir caches shard files; the shard {source!r} is not a path")
    path = Path(source)
    try:
        stat = path.stat()
    except OSError as error:
        raise InputStateError(f"{path}: cannot read the shard to cache it ({error.strerror})") from None
    return LocalObject(str(path), stat.st_size, f"{stat.st_mtime_ns}-{stat.st_size}")


def copy_file(info: LocalObject, dest: Path) -> None:
    """The download of a :class:`LocalObject`: a copy of the file (e.g. from a network file system)."""
    shutil.copyfile(info.url, dest)


class StoreDownload:
    """The download of an object on object storage: ``ObjectStore.download`` of exactly the version ``info``
    names (``If-Match``: a rewritten object is refused by the store, never read). Picklable, for workers.

    Args:
        store: The client (:class:`~torch_input_ckpt.remote.ObjectStore`).
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    def __call__(self, info: Any, dest: Path) -> None:
        """Download ``info`` to ``dest``."""
        self.store.download(info.url, dest, expect=info)

"""The node-local shard cache: atomic publication, sharing between processes, next-use eviction, refusals."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest

from torch_input_ckpt.errors import CacheFullError
from torch_input_ckpt.stream.cache import ShardCache

from tests.support.cache_sources import copy_download, digest, full_disk_download, make_objects, slow_download

NAMES = ["web", "code", "math", "books", "news", "wiki"]
SIZE = 4096


@pytest.fixture
def objects(tmp_path):
    return make_objects(tmp_path / "bucket", NAMES, SIZE)


def _resident(cache: ShardCache) -> set[str]:
    return {Path(info.url).name for info in cache._test_objects if cache._complete(_key(info), info, touch=False)}


def _key(info):
    from torch_input_ckpt.stream.cache.files import key_of

    return key_of(info.url)


def test_a_download_is_complete_cached_and_reused(tmp_path, objects):
    cache = ShardCache(tmp_path / "cache", 10 * SIZE, copy_download)
    path = cache.open_path(objects[0])
    assert digest(path) == objects[0].etag
    cache.release(objects[0])
    again = ShardCache(tmp_path / "cache", 10 * SIZE, copy_download)  # another process's view of the same cache
    assert again.open_path(objects[0]) == path
    assert again.stats["downloads"] == 0 and cache.stats["downloads"] == 1
    assert not list((tmp_path / "cache" / "partial").iterdir())


def _reference(trace: list[int], capacity: int, policy: str) -> list[set[int]]:
    """Resident sets after each read: Belady's rule (furthest next use; ties: least recently used) or LRU."""
    resident: dict[int, int] = {}  # item -> last use time
    out = []
    for t, item in enumerate(trace):
        if item not in resident and len(resident) == capacity:

            def rank(other: int, t: int = t) -> tuple[float, int]:
                later = [u for u in range(t + 1, len(trace)) if trace[u] == other]
                return (-(later[0] if later else math.inf), resident[other])

            victim = min(resident, key=rank if policy == "next-use" else resident.get)
            del resident[victim]
        resident[item] = t
        out.append(set(resident))
    return out


@pytest.mark.parametrize("policy", ["next-use", "lru"])
def test_eviction_order_is_the_reference_policy(tmp_path, objects, policy):
    # A trace where the two policies differ (a loop a little larger than the cache: LRU misses every read).
    trace = [0, 1, 2, 3, 0, 1, 2, 3, 4, 0, 1, 5, 2, 3, 0, 4, 1, 5, 0, 2]
    cache = ShardCache(tmp_path / "cache", 3 * SIZE, copy_download, policy=policy)
    cache._test_objects = objects
    expected = _reference(trace, 3, policy)
    for t, item in enumerate(trace):
        uses = {}
        for other, info in enumerate(objects):
            later = [u for u in range(t, len(trace)) if trace[u] == other]
            uses[info.url] = later[0] if later else math.inf
        cache.publish(uses)
        path = cache.open_path(objects[item], next_use=t)
        assert digest(path) == objects[item].etag
        cache.release(objects[item])
        assert _resident(cache) == {NAMES[i] for i in expected[t]}, t
    misses = sum(1 for t, item in enumerate(trace) if t == 0 or item not in expected[t - 1])
    assert cache.stats["downloads"] == misses
    cache.close()


@pytest.mark.parametrize("where", ["same", "inside", "holding"])
def test_a_cache_dir_overlapping_the_source_is_refused_and_nothing_is_deleted(tmp_path, objects, where):
    source = tmp_path / "bucket"
    cache_dir = {"same": source, "inside": source / "cache", "holding": tmp_path}[where]
    with pytest.raises(ValueError, match="overlaps the source directory"):
        ShardCache(cache_dir, SIZE, copy_download, sources=[source])
    assert sorted(p.name for p in source.iterdir()) == sorted(NAMES)


def test_a_directory_of_data_is_never_taken_for_a_cache(tmp_path, objects):
    # Mosaic's #988: a local directory given as the cache lost its shards to eviction. Here it is refused.
    with pytest.raises(ValueError, match="is not a shard cache"):
        ShardCache(tmp_path / "bucket", SIZE, copy_download)
    assert all(digest(Path(info.url)) == info.etag for info in objects)


def test_eviction_deletes_only_what_the_cache_downloaded(tmp_path, objects):
    cache = ShardCache(tmp_path / "cache", 2 * SIZE, copy_download)
    foreign = tmp_path / "cache" / "objects" / "mine.bin"
    foreign.write_bytes(b"not the cache's")
    for info in objects * 2:
        cache.open_path(info)
        cache.release(info)
    assert cache.stats["evictions"] >= len(objects)
    assert foreign.read_bytes() == b"not the cache's"


def test_held_shards_are_never_evicted_and_a_limit_too_small_is_a_clear_error(tmp_path, objects):
    cache = ShardCache(tmp_path / "cache", 2 * SIZE, copy_download, wait_s=0.2)
    held = [cache.open_path(objects[0]), cache.open_path(objects[1])]
    with pytest.raises(CacheFullError) as error:
        cache.open_path(objects[2])
    message = str(error.value)
    assert str(tmp_path / "cache") in message and f"cache_limit={2 * SIZE} bytes" in message and "math" in message
    assert all(digest(path) == info.etag for path, info in zip(held, objects, strict=False))
    assert not list((tmp_path / "cache" / "partial").iterdir())
    cache.release(objects[0])
    assert digest(cache.open_path(objects[2])) == objects[2].etag  # the released one made room


def test_a_full_disk_is_a_clear_error_and_leaves_nothing_to_read(tmp_path, objects):
    cache = ShardCache(tmp_path / "cache", 10 * SIZE, full_disk_download)
    with pytest.raises(CacheFullError, match=r"disk is full .* cache_limit|cache_limit=.*disk is full"):
        cache.open_path(objects[0])
    assert not list((tmp_path / "cache" / "objects").iterdir())
    assert not list((tmp_path / "cache" / "partial").iterdir())
    fixed = ShardCache(tmp_path / "cache", 10 * SIZE, copy_download)
    assert digest(fixed.open_path(objects[0])) == objects[0].etag


def test_prefetch_downloads_ahead_and_never_evicts_what_is_needed_sooner(tmp_path, objects):
    cache = ShardCache(tmp_path / "cache", 3 * SIZE, copy_download, max_downloads=2)
    cache.publish({info.url: use for use, info in enumerate(objects)})
    cache.prefetch([(info, use) for use, info in enumerate(objects)])
    cache.wait_prefetches()
    cache._test_objects = objects
    assert _resident(cache) == set(NAMES[:3])  # the three soonest; the later ones found no room
    downloads = cache.stats["downloads"]
    for info in objects[:3]:
        assert digest(cache.open_path(info)) == info.etag
        cache.release(info)
    assert cache.stats["downloads"] == downloads == 3
    cache.close()


def _read_all(cache_dir: str, limit: int, order: list[int], objects, rounds: int, out) -> None:
    cache = ShardCache(cache_dir, limit, copy_download)
    bad = 0
    for _ in range(rounds):
        for item in order:
            path = cache.open_path(objects[item])
            bad += digest(path) != objects[item].etag
            cache.release(objects[item])
    out.put((bad, cache.stats["downloads"]))


@pytest.mark.slow
@pytest.mark.parametrize("limit_objects", [6, 2])
def test_two_processes_share_one_cache(tmp_path, objects, limit_objects):
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    orders = [[0, 1, 2, 3, 4, 5], [3, 5, 1, 0, 4, 2]]
    workers = [
        context.Process(target=_read_all, args=(str(tmp_path / "cache"), limit_objects * SIZE, o, objects, 3, out))
        for o in orders
    ]
    for worker in workers:
        worker.start()
    results = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
        assert worker.exitcode == 0
    assert [bad for bad, _ in results] == [0, 0]  # every read found the complete object
    downloads = sum(count for _, count in results)
    if limit_objects == len(objects):
        assert downloads == len(objects)  # a cache that holds everything: each object downloaded once per node
    else:
        assert downloads > len(objects)


def _download_slowly(cache_dir: str, info) -> None:
    ShardCache(cache_dir, SIZE, slow_download).open_path(info)


@pytest.mark.slow
def test_a_download_killed_midway_is_never_read_and_is_cleaned_up(tmp_path, objects):
    cache_dir = tmp_path / "cache"
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_download_slowly, args=(str(cache_dir), objects[0]))
    child.start()
    deadline = time.monotonic() + 30
    partial = cache_dir / "partial"
    while not (partial.is_dir() and any(p.stat().st_size > 0 for p in partial.iterdir())):
        assert time.monotonic() < deadline, "the child never started its download"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert not list((cache_dir / "objects").iterdir())  # nothing a reader would take as complete
    # The resume: the limit holds exactly one object, so the dead download's reservation must be gone too.
    cache = ShardCache(cache_dir, SIZE, copy_download)
    assert digest(cache.open_path(objects[0])) == objects[0].etag
    assert not list(partial.iterdir())


def test_a_forked_child_never_keeps_a_lock_its_parent_let_go(tmp_path):
    """flock belongs to the open file description a forked child shares: a DataLoader worker forked while the
    parent's prefetch thread held a shard's lock kept it locked for the worker's life, and the node hung."""
    import fcntl
    import os
    import time

    from torch_input_ckpt.stream.cache.files import close_lock, try_exclusive

    lock = tmp_path / "web.npy.lock"
    held = try_exclusive(lock)
    assert held is not None
    ready_read, ready_write = os.pipe()
    child = os.fork()
    if child == 0:  # the "worker": lives on without touching the cache
        os.write(ready_write, b"x")  # its code runs after the fork's handlers
        time.sleep(3)
        os._exit(0)
    os.close(ready_write)
    try:
        assert os.read(ready_read, 1) == b"x"
        close_lock(held)  # the parent is done with it
        probe = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError if the child's copy still held it
        finally:
            os.close(probe)
    finally:
        os.close(ready_read)
        os.kill(child, 9)
        os.waitpid(child, 0)

"""The cache's plan from the computed order: each shard's first and last read, next uses, released holds."""

from __future__ import annotations

import json
import math

import pytest
import torch

from torch_input_ckpt import Shard, ShardedStream
from torch_input_ckpt.stream.cache import ShardCache
from torch_input_ckpt.stream.cache.plan import EpochSchedule, ShardPlanner, lane_positions
from torch_input_ckpt.stream.lanes import Interleave

from tests.support.cache_sources import LocalObject, copy_download

NAMES = {"web": 9, "code": 4, "math": 12, "books": 7, "news": 3, "wiki": 10, "law": 6}


def _shards(root):
    root.mkdir()
    paths = []
    for name, count in NAMES.items():
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}-{k}"}) + "\n" for k in range(count)))
        paths.append(path)
    return paths


def _stream(paths, **options):
    return ShardedStream([Shard(str(p), NAMES[p.stem]) for p in paths], **options)


@pytest.mark.parametrize("lengths", [[3, 3, 3], [5, 0, 2, 7], [1], [4, 9, 9, 2, 6]])
def test_lane_positions_inverts_the_interleave(lengths):
    interleave = Interleave(lengths)
    positions = torch.arange(interleave.total)
    lane, q = interleave(positions)
    assert torch.equal(lane_positions(interleave, lane, q), positions)


@pytest.mark.parametrize("window", [0, 4])
def test_the_schedule_covers_every_read_of_every_shard(tmp_path, window):
    stream = _stream(_shards(tmp_path / "data"), lanes=3, seed=5, window=window)
    for epoch in (0, 1):
        schedule = EpochSchedule(stream, epoch)
        keys = stream.epoch_order(0, epoch, True)(torch.arange(len(stream)))
        reads: dict[int, list[int]] = {}
        for position, key in enumerate(keys.tolist()):
            reads.setdefault(stream.locate(key)[0], []).append(epoch * len(stream) + position)
        for shard, positions in reads.items():
            first, last = int(schedule.first[shard]), int(schedule.last[shard])
            assert first <= min(positions) and max(positions) <= last, (shard, first, last, positions)
            if window == 0:  # exact without a shuffle window
                assert (first, last) == (min(positions), max(positions))


def test_the_planner_knows_where_it_is_and_releases_what_is_done(tmp_path):
    paths = _shards(tmp_path / "data")
    stream = _stream(paths, lanes=3, seed=5)
    objects = [LocalObject(str(p), p.stat().st_size, None) for p in paths]
    cache = ShardCache(tmp_path / "cache", sum(o.size for o in objects), copy_download)
    planner = ShardPlanner(stream, cache, objects)
    planner.note_epoch(1)
    keys = stream.epoch_order(0, 1, True)(torch.arange(len(stream))).tolist()
    for position, key in enumerate(keys):
        shard, sample = stream.locate(key)
        path = planner.local_path(shard, sample, key)
        assert path.read_text().splitlines()[sample] == json.dumps({"id": f"{paths[shard].stem}-{sample}"})
        if planner.position == len(stream) + position:  # recomputed at each shard opened: exact
            uses = cache.published(__import__("os").getpid())["uses"]
            assert min(uses.values()) == len(stream) + position
    assert len(planner._held) <= 2 * stream.lanes  # two shards per lane at most
    cache.wait_prefetches()
    assert cache.stats["downloads"] == len(NAMES)  # each shard once in the epoch, prefetched or on demand
    assert all(use < math.inf for use in planner._use_by_shard(len(stream)).values())
    cache.close()

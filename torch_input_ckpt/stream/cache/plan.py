"""Next uses from the stream's computed order: when each shard is read first and last, and what to fetch next.

A stream position ``p`` of epoch ``e`` is the absolute position ``e * length + p``, the same on every rank and
worker (the global order does not depend on the topology), so the next uses that processes of a node publish
are comparable. A shard of lane ``l`` covers lane positions ``[q0, q1]``; widened to whole shuffle windows
(a window shuffle permutes inside them), mapped through the round-robin of the lanes, they give the global
positions of its first and last read this epoch. At position ``p`` a shard's next use is then ``p`` while it is
being read, its first position if later, and the next epoch's first position once it is done.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..lanes import Interleave, epoch_shard_order, one_thread
from .cache import ObjectRef, ShardCache

__all__ = ["EpochSchedule", "ShardPlanner", "lane_positions"]

# How many next uses a process publishes (the soonest): a cache holds far fewer shards than this.
_PUBLISHED = 4096


def lane_positions(interleave: Interleave, lane: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The global positions of ``(lane, q)`` pairs: the inverse of :class:`~.lanes.Interleave`."""
    rank = torch.empty_like(interleave.by_length)
    rank[interleave.by_length] = torch.arange(len(interleave.by_length), dtype=torch.int64)
    segment = torch.searchsorted(interleave.segment_round, q, right=True) - 1
    active = interleave.segment_active[segment]
    return interleave.segment_start[segment] + (q - interleave.segment_round[segment]) * active + rank[lane]


def _floor(values: torch.Tensor, by: int) -> torch.Tensor:
    return torch.div(values, by, rounding_mode="floor")


class EpochSchedule:
    """Epoch ``epoch``'s first and last global position of every shard (absolute: ``epoch * length`` added).

    Args:
        stream: The :class:`~torch_input_ckpt.ShardedStream`.
        epoch: The epoch.
    """

    def __init__(self, stream: Any, epoch: int) -> None:
        self.epoch = epoch
        with one_thread():
            order = epoch_shard_order(stream.lane_of, stream.seed, epoch, stream.shuffle)
            units = torch.tensor(stream.units, dtype=torch.int64)[order]
            starts = torch.cumsum(units, 0) - units
            lanes = torch.tensor(stream.lane_of, dtype=torch.int64)[order]
            lane_units = torch.tensor(stream.lane_units, dtype=torch.int64)
            local = starts - (torch.cumsum(lane_units, 0) - lane_units)[lanes]  # first unit within its lane
            per = int(stream.pack_to or 1)
            window = int(stream.window) if stream.shuffle and stream.window > 1 else 1
            q0 = _floor(_floor(local, per), window) * window
            q1 = (_floor(_floor(local + torch.clamp(units - 1, min=0), per), window) + 1) * window
            lengths = torch.tensor(stream.lane_lengths, dtype=torch.int64)[lanes]
            q1 = torch.minimum(q1 - 1, torch.clamp(lengths - 1, min=0))
            base = epoch * stream.length
            self.first = torch.empty(len(order), dtype=torch.int64)
            self.last = torch.empty(len(order), dtype=torch.int64)
            self.first[order] = base + lane_positions(stream.interleave, lanes, q0)
            self.last[order] = base + lane_positions(stream.interleave, lanes, q1)
        self.local = torch.empty_like(local)
        self.local[order] = local  # each shard's first unit within its lane, by shard number


class ShardPlanner:
    """The stream's side of the cache, in one process: a local path for each shard it opens, this process's
    next uses published, the shards read soon prefetched, the shards done with released.

    Args:
        stream: The :class:`~torch_input_ckpt.ShardedStream`.
        cache: The node's :class:`ShardCache`.
        objects: Each shard's object (URL, size, ETag), by shard number.
        horizon: How many shards ahead are published and prefetched (default: two per lane).
    """

    def __init__(
        self, stream: Any, cache: ShardCache, objects: Sequence[ObjectRef], horizon: int | None = None
    ) -> None:
        self.stream, self.cache, self.objects = stream, cache, list(objects)
        self.horizon = horizon if horizon is not None else max(4, 2 * stream.lanes)
        self._pid = os.getpid()
        self._schedules: dict[int, EpochSchedule] = {}
        self._held: dict[int, tuple[Path, int]] = {}  # shard -> (its cached path, the last read of this hold)
        self.epoch_hint: int | None = None
        self.position = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_schedules"], state["_held"] = {}, {}
        return state

    def schedule(self, epoch: int) -> EpochSchedule:
        """The epoch's schedule (two kept: this epoch's and the next's)."""
        if epoch not in self._schedules:
            if len(self._schedules) >= 2:
                self._schedules.pop(min(self._schedules))
            self._schedules[epoch] = EpochSchedule(self.stream, epoch)
        return self._schedules[epoch]

    def note_epoch(self, epoch: int) -> None:
        """The epoch the sampler of this process is in (published for its workers, which cannot see it)."""
        self.epoch_hint = epoch
        self.cache.publish(self._uses(self.position) if self.position else {}, epoch=epoch)

    def _epoch(self) -> int:
        if self.epoch_hint is not None and os.getpid() == self._pid:
            return self.epoch_hint
        parent = self.cache.published(os.getppid())  # a worker: its loader process's epoch
        return int(parent.get("epoch", 0)) if parent else (self.epoch_hint or 0)

    def position_of(self, shard: int, sample: int, key: int) -> int:
        """The absolute position of a read (approximate by at most a window): from the key when packing."""
        stream = self.stream
        if stream.pack_to is not None:
            epoch, rest = divmod(key, stream.length)
            lane = bisect.bisect_right(stream.lane_base, rest) - 1
            q = rest - stream.lane_base[lane]
        else:
            epoch = self._epoch()
            lane = stream.lane_of[shard]
            q = int(self.schedule(epoch).local[shard]) + sample
        position = lane_positions(stream.interleave, torch.tensor([lane]), torch.tensor([q]))
        return epoch * stream.length + int(position[0])

    def local_path(self, shard: int, sample: int, key: int) -> Path:
        """The cached path of ``shard``: held by this process until its last read this epoch is past."""
        if os.getpid() != self._pid:
            self._pid, self._held, self.epoch_hint = os.getpid(), {}, None
        held = self._held.get(shard)
        if held is not None:
            return held[0]
        self.position = self.position_of(shard, sample, key)
        uses = self._uses(self.position)
        self.cache.publish(uses, epoch=self.position // self.stream.length)
        self._release_done(self.position, shard)  # first: the shard this one follows in its lane makes room
        path = self.cache.open_path(self.objects[shard], next_use=self.position)
        epoch = self.position // self.stream.length
        self._held[shard] = (path, int(self.schedule(epoch).last[shard]))
        self.cache.prefetch(self._upcoming(self.position))
        return path

    def _upcoming(self, position: int) -> list[tuple[ObjectRef, float]]:
        """The next ``horizon`` shards to prefetch: those whose first read this epoch is still ahead. Every
        read of such a shard lies after ``position``, so a prefetch never fetches a shard consumed before a
        resume, nor one the run may never reach in a later epoch; the shards being read now are fetched on
        demand (at a resume: only the shards at the cursor make the first batch wait)."""
        epoch = position // self.stream.length
        end = (epoch + 1) * self.stream.length
        firsts = self.schedule(epoch).first.tolist()
        units = self.stream.units  # an empty shard is never read: never fetched
        soon = sorted(
            (first, s) for s, first in enumerate(firsts) if position < first < end and units[s] and s not in self._held
        )
        return [(self.objects[s], float(first)) for first, s in soon[: self.horizon]]

    def held(self, shard: int) -> Path | None:
        """The cached path of ``shard`` if this process holds it."""
        held = self._held.get(shard)
        return held[0] if held is not None else None

    def _use_by_shard(self, position: int) -> dict[int, float]:
        epoch = position // self.stream.length
        now, after = self.schedule(epoch), self.schedule(epoch + 1)
        uses: dict[int, float] = {}
        for shard, (first, last, following) in enumerate(
            zip(now.first.tolist(), now.last.tolist(), after.first.tolist(), strict=True)
        ):
            # A shard this process holds cannot be evicted while it does: it is ranked by its use after that.
            done = last < position or (shard in self._held and first <= position)
            uses[shard] = float(following if done else max(first, position))
        return uses

    def _uses(self, position: int) -> dict[str, float]:
        ranked = sorted(self._use_by_shard(position).items(), key=lambda pair: pair[1])
        # Every shard's next use (the soonest _PUBLISHED of a bigger stream): a shard left out ranks as never read.
        return {self.objects[s].url: use for s, use in ranked[:_PUBLISHED]}

    def _release_done(self, position: int, opened: int) -> None:
        """Release the shards whose last read this epoch is past, and in ``opened``'s lane all but the one before
        it: a process holds at most two shards per lane (a shuffle window can span a lane's boundary between
        shards; the reader keeps its open file, and a later read of a released shard opens it from the cache)."""
        lane = self.stream.lane_of[opened]
        same_lane = sorted(
            (last, shard)
            for shard, (_, last) in self._held.items()
            if shard != opened and self.stream.lane_of[shard] == lane
        )
        keep = {same_lane[-1][1]} if same_lane and same_lane[-1][0] >= position else set()
        for shard, (_, last) in list(self._held.items()):
            if shard == opened or shard in keep:
                continue
            if last < position or self.stream.lane_of[shard] == lane:
                del self._held[shard]
                self.cache.release(self.objects[shard])

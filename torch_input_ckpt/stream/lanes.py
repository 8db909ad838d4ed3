"""Lane arithmetic: which (lane, position in lane) a global stream position is, and the window shuffle.

Guarantees (each a pure function of its arguments, tested by Hypothesis):

- :func:`assign_lanes` deals shards to lanes once per (seed, shard list, lanes): balanced by size
  (largest first, to the lightest lane), so lane lengths, and hence the epoch's length, are the same
  every epoch.
- :class:`Interleave` is a bijection between global positions ``[0, sum(lengths))`` and pairs
  ``(lane, q)`` with ``q < lengths[lane]``: round-robin over the lanes that still have a position
  ``q`` (round ``q`` visits every lane longer than ``q``, longest lanes first, ties by lane number).
  With equal lanes, position ``p`` is lane ``p % lanes``, position ``p // lanes``. Each lane's
  positions appear in increasing order.
- :func:`window_shuffle` permutes each consecutive window of ``window`` positions of a lane (the last
  one shorter) by the keyed Feistel network of :mod:`~torch_input_ckpt.order.feistel`, element by element, chosen by
  ``(seed, epoch, lane, window number)``: a bijection of each window, so a resume re-reads at most one
  window per lane.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from ..order.feistel import M32, mix32, mix64, permute, round_keys

__all__ = ["Interleave", "assign_lanes", "epoch_shard_order", "one_thread", "window_shuffle"]

MAX_WINDOW = 2**31


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops on one intra-op thread: the order's ops are small, and torch's thread pool made them
    5-100x slower on 2 busy cores (measured: 32,768 positions in 10-50 ms on one thread, 100-700 ms on two)."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def assign_lanes(weights: Sequence[int], lanes: int, seed: int, shuffle: bool) -> list[int]:
    """The lane of each shard: heaviest shard first to the lightest lane (ties: seeded, then lane number).

    Args:
        weights: Each shard's size (samples, or tokens when packing).
        lanes: How many lanes.
        seed: Breaks ties between shards of equal weight (with ``shuffle``).
        shuffle: Whether ties are broken by a seeded order rather than the shard order.
    """
    count = len(weights)
    if shuffle:
        generator = torch.Generator().manual_seed(mix64(seed, 0x1A7E) & (2**63 - 1))
        tiebreak = torch.randperm(count, generator=generator).tolist()
    else:
        tiebreak = list(range(count))
    order = sorted(range(count), key=lambda s: (-weights[s], tiebreak[s]))
    heap = [(0, lane) for lane in range(lanes)]
    lane_of = [0] * count
    for shard in order:
        total, lane = heapq.heappop(heap)
        lane_of[shard] = lane
        heapq.heappush(heap, (total + weights[shard], lane))
    return lane_of


def epoch_shard_order(lane_of: Sequence[int], seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The shards of epoch ``epoch`` in lane-major order: lane 0's shards, then lane 1's, ...

    Within a lane the shards are in a seeded order chosen by ``(seed, epoch)`` (the shard order if not
    ``shuffle``). O(shards) per epoch.
    """
    lanes = torch.tensor(list(lane_of), dtype=torch.int64)
    if shuffle:
        generator = torch.Generator().manual_seed(mix64(seed, epoch, 0x5A4D) & (2**63 - 1))
        perm = torch.randperm(len(lanes), generator=generator)
    else:
        perm = torch.arange(len(lanes), dtype=torch.int64)
    return perm[torch.sort(lanes[perm], stable=True).indices]


class Interleave:
    """Global positions <-> ``(lane, position in lane)``: round-robin over the lanes still running.

    Args:
        lengths: Each lane's number of positions (samples or packed sequences).
    """

    def __init__(self, lengths: Sequence[int]) -> None:
        self.lengths = torch.tensor(list(lengths), dtype=torch.int64)
        # Lanes longest first (stable: ties by lane number); round q visits the first m of them.
        self.by_length = torch.sort(-self.lengths, stable=True).indices
        ascending = torch.sort(self.lengths).values
        previous = torch.cat([torch.zeros(1, dtype=torch.int64), ascending[:-1]])
        active = torch.arange(len(ascending), 0, -1, dtype=torch.int64)  # lanes running in segment i
        sizes = (ascending - previous) * active
        self.segment_end = torch.cumsum(sizes, 0)
        self.segment_start = self.segment_end - sizes
        self.segment_round = previous
        self.segment_active = active
        self.total = int(self.segment_end[-1]) if len(sizes) else 0

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lane, q)`` of each global position in ``[0, total)`` (an int64 tensor)."""
        segment = torch.searchsorted(self.segment_end, positions, right=True)
        offset = positions - self.segment_start[segment]
        active = self.segment_active[segment]
        rounds = self.segment_round[segment] + torch.div(offset, active, rounding_mode="floor")
        lane = self.by_length[torch.remainder(offset, active)]
        return lane, rounds


def window_shuffle(
    q: torch.Tensor, lane: torch.Tensor, lane_lengths: torch.Tensor, window: int, seed: int, epoch: int
) -> torch.Tensor:
    """Permute each lane's positions within consecutive windows of ``window`` (the last one shorter).

    Args:
        q: Positions within their lanes (int64).
        lane: Each position's lane (int64, same shape).
        lane_lengths: Every lane's length (int64, indexed by lane).
        window: The window size (>= 1; 1 changes nothing).
        seed: With ``epoch``, chooses the permutations.
        epoch: The epoch.

    Returns:
        The permuted positions (the same window, the same lane).
    """
    if window <= 1 or q.numel() == 0:
        return q
    number = torch.div(q, window, rounding_mode="floor")
    base = number * window
    length = torch.clamp(lane_lengths[lane] - base, max=window)
    # Per element, the round keys of its (lane, window number): each of the (seed, epoch) keys hashed with them.
    keys = [mix32(mix32(number & M32, k) ^ lane, k) for k in round_keys(mix64(seed, epoch, 0x3D0F))]
    return base + permute(q - base, length, keys)


def check_window(window: int) -> None:
    """Raise ``ValueError`` unless ``0 <= window <= 2**31``."""
    if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window <= MAX_WINDOW:
        raise ValueError(f"window must be an int in [0, 2**31] (got {window=})")


def ceil_div(a: int, b: int) -> int:
    """``ceil(a / b)`` for ints."""
    return -(-a // b) if b else math.inf  # type: ignore[return-value]

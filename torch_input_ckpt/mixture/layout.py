"""Where each source's samples sit in a mixture epoch: exact counts, and a layout found by arithmetic.

Invariant: a segment of ``total`` positions holds exactly ``counts[k]`` samples of source ``k``
(``sum(counts) == total``), and source ``k``'s ``j``-th sample of the segment comes before its
``(j+1)``-th, so that the samples of a source consumed before any position are its first ones:
``consumed(q)[k]`` of them, computed in O(#sources * log(total / BLOCK) + BLOCK), never by replaying.

How: source ``k``'s ``j``-th sample has the ideal position ``(2j+1) * total / (2 * counts[k])``;
``prefix_count(x)`` = how many of them fall below ``x`` (exact integers, house-monotone in ``x``). The
key space ``[0, total)`` is cut into blocks of ``BLOCK`` keys; block ``b`` holds, per source,
``prefix_count((b+1)B) - prefix_count(bB)`` samples and starts at position ``P(b)`` = the sum of
``prefix_count(bB)``. Inside a block the slots are permuted by a seeded permutation (or put in ideal
order when not shuffling). A position is found by a binary search on ``b`` plus O(BLOCK) work; the
mixture's proportions hold within every block to within one sample per source.

(Permuting all of ``[0, total)`` and mapping ranges to sources would also give exact counts, but
the counts consumed before a cursor, which a weight change on resume needs, would cost O(cursor).)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch

__all__ = ["BLOCK", "Block", "SegmentLayout", "integer_weights", "largest_remainder", "prefix_count"]

# Keys per block: large enough that a block's fixed cost (one small permutation, O(#sources)
# integer work) is amortised, small enough that the first batch after a resume costs little.
BLOCK = 4096


def integer_weights(weights: Sequence[Fraction | int | float]) -> tuple[int, ...]:
    """Weights as the smallest integers in the same proportions (exact: a float is a dyadic fraction).

    Two weight vectors give the same layout exactly when these are equal.

    Raises:
        ValueError: if a weight is negative or not finite, or all are 0.
    """
    fractions = [Fraction(w) for w in weights]
    if any(f < 0 for f in fractions):
        raise ValueError(f"weights must be >= 0 (got {[str(f) for f in fractions]})")
    denominator = math.lcm(*(f.denominator for f in fractions))
    numerators = [f.numerator * (denominator // f.denominator) for f in fractions]
    common = math.gcd(*numerators)
    if common == 0:
        raise ValueError(f"at least one weight must be > 0 (got {[str(f) for f in fractions]})")
    return tuple(n // common for n in numerators)


def largest_remainder(weights: Sequence[Fraction | int | float], total: int) -> list[int]:
    """Integer counts proportional to ``weights`` that sum exactly to ``total`` (Hamilton's method).

    Each source gets ``floor(w * total / sum(w))``; the samples left over go one each to the largest
    remainders, ties to the earlier source. A weight of 0 gets 0. Exact integer arithmetic throughout.

    Raises:
        ValueError: if a weight is negative or all are 0, or ``total < 0``.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0 (got {total=})")
    integers = integer_weights(weights)
    whole = sum(integers)
    counts = [w * total // whole for w in integers]
    remainders = [w * total % whole for w in integers]
    left = total - sum(counts)
    for k in sorted(range(len(counts)), key=lambda k: (-remainders[k], k))[:left]:
        counts[k] += 1
    return counts


def prefix_count(count: int, total: int, x: int) -> int:
    """How many of a source's ``count`` samples have their ideal position below ``x``.

    That is ``#{j in [0, count) : (2j+1) * total < 2 * x * count}``, exactly, clamped to ``[0, count]``.
    """
    numerator = 2 * x * count - total
    if numerator <= 0 or count == 0:
        return 0
    return min(count, -(-numerator // (2 * total)))


class Block:
    """One block of a segment: which source and which of its samples each delivered slot is.

    Attributes:
        start: The segment position of the block's first slot (``P(b)``).
        before: Per source, its samples in the segment before this block.
        sources: int64, per slot in delivery order, the source.
        numbers: int64, per slot in delivery order, the sample's number within the segment's samples
            of that source.
    """

    __slots__ = ("start", "before", "sources", "numbers")

    def __init__(self, start: int, before: list[int], sources: torch.Tensor, numbers: torch.Tensor) -> None:
        self.start = start
        self.before = before
        self.sources = sources
        self.numbers = numbers

    @property
    def end(self) -> int:
        return self.start + self.sources.numel()


def _renumber(delivered: torch.Tensor, numbers: torch.Tensor, before: list[int]) -> torch.Tensor:
    """Number a source's samples in delivery order (its i-th slot of the block gets its i-th number), so
    that its first samples are the ones consumed first.

    ``numbers`` lists each source's numbers in source order. With few sources, a source's running count
    is a cumulative sum of its one-hot column (O(slots x sources), cheap for a handful); with many, a
    stable sort of the delivered sources lists each source's slots in delivery order, as ``numbers``.
    """
    count = len(before)
    if count <= _ONE_HOT_SOURCES:
        columns = torch.arange(count, dtype=torch.int64)
        running = torch.cumsum((delivered.unsqueeze(1) == columns).to(torch.int64), 0)
        rank = torch.gather(running, 1, delivered.unsqueeze(1)).squeeze(1) - 1
        return rank + torch.tensor(before, dtype=torch.int64).index_select(0, delivered)
    return torch.empty_like(numbers).scatter_(0, torch.sort(delivered, stable=True).indices, numbers)


_ONE_HOT_SOURCES = 16
# Distinct block sizes whose slots in source order a layout keeps (SegmentLayout.delivered).
_KEPT_RUNS = 64

# (block number, number of slots) -> a permutation of range(slots) as an int64 tensor.
BlockShuffle = Callable[[int, int], torch.Tensor]


class SegmentLayout:
    """The layout of one segment of ``total`` positions with the given per-source ``counts``.

    Args:
        counts: Samples of each source in the segment (``sum(counts) == total``).
        shuffle: Permutes the slots of a block, or None for the ideal order.
        block: Keys per block.
    """

    def __init__(self, counts: Sequence[int], shuffle: BlockShuffle | None, block: int = BLOCK) -> None:
        self.counts = list(counts)
        self.total = sum(self.counts)
        self.shuffle = shuffle
        self.block = block
        self.blocks = max(1, -(-self.total // block))
        self._cache: tuple[int, Block] | None = None
        self._sources_cache: tuple[int, tuple[int, list[int], torch.Tensor]] | None = None
        self._runs: dict[tuple[int, ...], torch.Tensor] = {}  # per block sizes, the slots' sources in source order

    def before_block(self, b: int) -> list[int]:
        """Per source, its samples placed before block ``b``."""
        x = min(self.total, b * self.block)
        return [prefix_count(n, self.total, x) for n in self.counts]

    def block_start(self, b: int) -> int:
        """The position of block ``b``'s first slot, ``P(b)``."""
        return sum(self.before_block(b))

    def find(self, q: int) -> int:
        """The block holding position ``q`` (``0 <= q < total``): the last ``b`` with ``P(b) <= q``."""
        # Each prefix count is within one of its share of x, so P(b) is within #sources of b * block:
        # the search window is a few blocks wide, whatever the segment's length.
        spread = len(self.counts) + 1
        lo = max(0, (q - spread) // self.block - 1)
        hi = min(self.blocks - 1, (q + spread) // self.block + 1)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.block_start(mid) <= q:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def at(self, b: int) -> Block:
        """Block ``b``'s slots in delivery order (the last one built is cached)."""
        cached = self._cache
        if cached is not None and cached[0] == b:
            return cached[1]
        before, after = self.before_block(b), self.before_block(b + 1)
        sizes = torch.tensor([a - s for s, a in zip(before, after, strict=True)], dtype=torch.int64)
        size = int(sizes.sum())
        # Slots in source order: source k's run of sizes[k] slots, as the running count of the runs'
        # ends. (Not repeat_interleave, searchsorted or bucketize: they stall on torch's thread pool when
        # the cores are busy, 3-17 ms instead of 10 µs on a few thousand slots.)
        ends = torch.cumsum(sizes, 0)
        slots = torch.arange(size, dtype=torch.int64)
        marks = torch.zeros(size + 1, dtype=torch.int64).scatter_add_(0, ends, torch.ones_like(ends))
        sources = torch.cumsum(marks, 0)[:size]
        # Slot i of source k's run is its sample before[k] + (i - first slot of the run).
        shift = torch.tensor(before, dtype=torch.int64) - (ends - sizes)
        numbers = slots + shift.index_select(0, sources)
        delivered = sources.index_select(0, self._order(b, size, sources, numbers))
        block = Block(sum(before), before, delivered, _renumber(delivered, numbers, before))
        self._cache = (b, block)
        return block

    def delivered(self, b: int) -> tuple[int, list[int], torch.Tensor]:
        """Block ``b``'s start, per source its samples before the block, and its slots' sources in delivery
        order: :meth:`at` without the per-slot sample numbers (the last one built is cached)."""
        cached = self._sources_cache
        if cached is not None and cached[0] == b:
            return cached[1]
        if self.shuffle is None:
            block = self.at(b)
            entry = (block.start, block.before, block.sources)
        else:
            before, after = self.before_block(b), self.before_block(b + 1)
            sizes = tuple(a - s for s, a in zip(before, after, strict=True))
            in_source_order = self._runs.get(sizes)
            if in_source_order is None:
                # The same slots in source order as at() (the running count of the runs' ends). Blocks'
                # sizes differ by at most one per source, so few distinct ones: kept, a few at most.
                ends = torch.tensor(list(itertools.accumulate(sizes)), dtype=torch.int64)
                marks = torch.zeros(sum(sizes) + 1, dtype=torch.int64).scatter_add_(0, ends, torch.ones_like(ends))
                in_source_order = torch.cumsum(marks, 0)[: sum(sizes)]
                if len(self._runs) < _KEPT_RUNS:
                    self._runs[sizes] = in_source_order
            shuffled = in_source_order.index_select(0, self.shuffle(b, in_source_order.numel()))
            entry = (sum(before), before, shuffled)
        self._sources_cache = (b, entry)
        return entry

    def run(self, lo: int, hi: int) -> tuple[torch.Tensor, list[int]]:
        """The sources of the positions ``[lo, hi)`` (``0 <= lo < hi <= total``) in delivery order, and per
        source its samples before ``lo``: source ``k``'s samples in the run are its next ``count(k)`` ones,
        in delivery order (the invariant above), so a caller numbers them with a range, per source."""
        b = self.find(lo)
        start, before, sources = self.delivered(b)
        consumed = list(before)
        if lo > start:
            taken = torch.bincount(sources[: lo - start], minlength=len(before)).tolist()
            consumed = [s + t for s, t in zip(before, taken, strict=True)]
        parts, at = [], lo
        while at < hi:
            start, _, sources = self.delivered(b)
            end = min(hi, start + sources.numel())
            if end > at:
                parts.append(sources[at - start : end - start])
                at = end
            b += 1
        return (parts[0] if len(parts) == 1 else torch.cat(parts)), consumed

    def _order(self, b: int, size: int, sources: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        if self.shuffle is not None:
            return self.shuffle(b, size)
        # Ideal order: by (2j+1) / (2 n_k), ties to the earlier source (a stable sort of sources order).
        counts = torch.tensor(self.counts, dtype=torch.float64)
        ideal = (2 * numbers + 1).to(torch.float64) / counts.index_select(0, sources).clamp_min(1)
        return torch.sort(ideal, stable=True).indices

    # Gathers and scatters use index_select / scatter_ rather than tensor[indices]: advanced indexing,
    # searchsorted and index_put stall on torch's thread pool on busy cores (12 ms vs 5 µs on 4096).
    def locate(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source and per-source sample number (within the segment) of each position in ``[0, total)``.

        Args:
            positions: int64 positions, best ascending (then each block is built once).

        Returns:
            ``(sources, numbers)`` int64 tensors shaped like ``positions``.
        """
        sources = torch.empty_like(positions)
        numbers = torch.empty_like(positions)
        if positions.numel() == 0:
            return sources, numbers
        ordered = bool((positions[1:] >= positions[:-1]).all())
        order = None if ordered else torch.argsort(positions)
        sorted_positions = positions if order is None else positions.index_select(0, order)
        out_sources = torch.empty_like(positions)
        out_numbers = torch.empty_like(positions)
        lo, n = 0, positions.numel()
        while lo < n:
            block = self.at(self.find(int(sorted_positions[lo])))
            hi = lo + int(torch.bucketize(block.end, sorted_positions[lo:]))  # the first >= end
            offsets = sorted_positions[lo:hi] - block.start
            out_sources[lo:hi] = block.sources.index_select(0, offsets)
            out_numbers[lo:hi] = block.numbers.index_select(0, offsets)
            lo = hi
        if order is None:
            return out_sources, out_numbers
        return sources.scatter_(0, order, out_sources), numbers.scatter_(0, order, out_numbers)

    def consumed(self, q: int) -> list[int]:
        """Per source, its samples at positions below ``q`` (``0 <= q <= total``)."""
        if q >= self.total:
            return list(self.counts)
        block = self.at(self.find(q))
        taken = torch.bincount(block.sources[: q - block.start], minlength=len(self.counts)).tolist()
        return [s + t for s, t in zip(block.before, taken, strict=True)]

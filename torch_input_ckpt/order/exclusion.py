"""A persistent exclusion list: dataset indices left out of every epoch from a given epoch on.

Invariant: an epoch with exclusions is a permutation of the ``N - |X|`` indices not excluded, so each of
them is delivered exactly once per epoch (padding aside) and every rule of the sampler (one global
cursor, padding, ``drop_last``, resharding) holds unchanged over the shorter length. ``X`` is held as
sorted, disjoint ranges ``[start_j, stop_j)``; with ``C_j`` the indices in the ranges before ``j``, the
``i``-th index not excluded is ``i + C_k`` where ``k = #{j : start_j - C_j <= i}``: one ``searchsorted``
per chunk of keys, O(log R) per key for R ranges. The epoch in progress when the list grows keeps its
order (it was laid out over the old length): additions apply from the next epoch, or at once at an
epoch's start.

Saved form (sampler state version 2): ``[[first epoch, [start, stop, start, stop, ...]], ...]``,
each entry holding only the ranges *added* at that epoch (flat: half the JSON objects of pairs), so
each index is stored once however many epochs call ``exclude``; a state holds its whole history, so
a restore reads one file. At most :data:`MAX_EXCLUDED_RANGES` ranges are stored: ``exclude``
refuses a list past it before changing anything, so a save never writes a file that restore refuses.
Version 1 states (each entry the complete list of indices) still load: ``schema.SamplerState``
converts them to this form.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ..base.messages import short
from ..errors import InputStateError
from ..state.schema import MAX_EPOCH

__all__ = ["MAX_EXCLUDED_RANGES", "Excluded", "Exclusion", "Exclusions"]

# Ranges of consecutive excluded indices one state may store (all entries together). At most 42 bytes
# each in the file (two 19-digit indices), so the list stays well under the 64 MiB file bound
# (files.MAX_FILE_BYTES) and a save encodes it in about a second at worst.
MAX_EXCLUDED_RANGES = 2**20

# Sorted, disjoint, non-adjacent ``[start, stop)`` ranges: (starts, stops), two int64 tensors.
Ranges = tuple[torch.Tensor, torch.Tensor]


class Exclusion:
    """Sorted distinct dataset indices left out of an epoch, held as ranges.

    Args:
        indices: The excluded dataset indices.
        length: The dataset length (every index must be below it, and at least one must stay).

    Raises:
        ValueError: for an index outside ``[0, length)`` or a list that excludes everything.
    """

    __slots__ = ("ranges", "_count", "_through", "_shifted", "_width", "_table", "_deepest")

    def __init__(self, indices: Iterable[int], length: int, *, ranges: Ranges | None = None) -> None:
        self._build(_ranges_of(indices, length) if ranges is None else _normalized(*ranges), length)

    @classmethod
    def from_ranges(cls, ranges: Ranges, length: int) -> Exclusion:
        """The exclusion of the union of ``[start, stop)`` ranges (any order, overlaps allowed)."""
        return cls((), length, ranges=ranges)

    def _build(self, ranges: Ranges, length: int) -> None:
        self.ranges = ranges
        starts, stops = ranges
        # _through[j]: indices excluded by the ranges before j (one more entry than ranges).
        self._through = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(stops - starts, 0)])
        self._count = int(self._through[-1])
        if self._count >= length:
            raise ValueError(f"cannot exclude all {length} samples of the dataset")
        self._shifted = starts - self._through[:-1]
        self._bucket(length - self._count)

    def _bucket(self, kept: int) -> None:
        """A table of how many shifted values lie below each bucket of ``width`` ranks (about 4 buckets per
        range), so that a rank's count is one lookup plus a few compares within its bucket. torch's
        ``searchsorted`` costs 150-700 ns per key on 2 busy cores (its thread pool); this costs tens.
        Clustered lists (many equal shifted values in one bucket) keep ``searchsorted``."""
        count = len(self._shifted)
        self._width = max(1, -(-kept // max(1, 4 * count)))
        buckets = kept // self._width + 2
        if not count or buckets > 64 * count + 64:
            self._table, self._deepest = None, 0
            return
        starts = torch.arange(buckets, dtype=torch.int64) * self._width
        self._table = torch.searchsorted(self._shifted, starts, right=False)
        self._deepest = int((self._table[1:] - self._table[:-1]).max())

    def __len__(self) -> int:
        """How many indices are excluded."""
        return self._count

    @property
    def indices(self) -> list[int]:
        """The excluded indices, sorted (expands the ranges: for messages and tests of small lists)."""
        return [i for start, stop in zip(*(t.tolist() for t in self.ranges), strict=True) for i in range(start, stop)]

    def select(self, ranks: torch.Tensor) -> torch.Tensor:
        """The ``i``-th index not excluded, for each ``i`` of an int64 tensor."""
        if not self._count:
            return ranks
        return ranks + self._through.index_select(0, self._count_at_most(ranks))

    def _count_at_most(self, ranks: torch.Tensor) -> torch.Tensor:
        """``#{j : shifted[j] <= r}`` for each rank ``r``."""
        if self._table is None or self._deepest > 8:
            return torch.searchsorted(self._shifted, ranks, right=True)
        first = self._table.index_select(0, torch.div(ranks, self._width, rounding_mode="floor"))
        count = first.clone()
        last = len(self._shifted) - 1
        for k in range(self._deepest):
            at = (first + k).clamp_(max=last)
            # Inside the bucket (below the next one's first index) and at most r: one more below r.
            count += (self._shifted.index_select(0, at) <= ranks) & (first + k <= last)
        return count

    def rank(self, index: int) -> int | None:
        """How many indices not excluded are below ``index`` (None: ``index`` is excluded)."""
        if not self._count:
            return index
        starts, stops = self.ranges
        j = int(torch.searchsorted(starts, torch.tensor([index]), right=True)[0]) - 1
        if j >= 0 and index < int(stops[j]):
            return None
        return index - int(self._through[j + 1])

    def union(self, other: Ranges, length: int) -> Exclusion:
        """This list plus ``other``'s ranges."""
        starts, stops = torch.cat([self.ranges[0], other[0]]), torch.cat([self.ranges[1], other[1]])
        return Exclusion.from_ranges((starts, stops), length)


class Excluded:
    """A permutation over the indices not excluded: ``select(perm(positions))``."""

    __slots__ = ("perm", "exclusion", "length")

    def __init__(self, perm: Any, exclusion: Exclusion) -> None:
        self.perm, self.exclusion, self.length = perm, exclusion, perm.length

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return self.exclusion.select(self.perm(positions))


class Exclusions:
    """The exclusion lists of a run: ``(first epoch, complete list, ranges added then)`` entries, oldest
    first (the complete list answers an epoch; the added ranges are what a state stores)."""

    __slots__ = ("entries", "_added")

    def __init__(self, entries: Sequence[tuple[int, Exclusion]] = (), added: Sequence[Ranges] | None = None) -> None:
        self.entries: tuple[tuple[int, Exclusion], ...] = tuple(entries)
        if added is None:
            lists = [_EMPTY, *(e.ranges for _, e in self.entries)]
            added = [_minus(now, before) for before, now in zip(lists, lists[1:], strict=False)]
        self._added: tuple[Ranges, ...] = tuple(added)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def at(self, epoch: int) -> Exclusion | None:
        """The list epoch ``epoch`` leaves out (None: nothing)."""
        found = None
        for first, exclusion in self.entries:
            if first <= epoch:
                found = exclusion
        return found if found is not None and len(found) else None

    def count(self, epoch: int) -> int:
        found = self.at(epoch)
        return 0 if found is None else len(found)

    def starts(self) -> list[int]:
        """The epochs at which the list changes."""
        return [first for first, _ in self.entries]

    def stored(self) -> int:
        """The ranges a state stores (the bound :data:`MAX_EXCLUDED_RANGES` applies to this)."""
        return sum(len(starts) for starts, _ in self._added)

    def added(self, indices: Iterable[int], first: int, length: int) -> Exclusions:
        """These lists plus ``indices`` from epoch ``first`` on. Older entries are kept (one per epoch that
        added something): the epochs they cover stay computable from any later state (``samples``).

        Raises:
            ValueError: for a bad index, a list that leaves nothing, or one that would store more than
                :data:`MAX_EXCLUDED_RANGES` ranges (nothing is changed then).
        """
        new = _ranges_of(indices, length)
        kept = [(f, e) for f, e in self.entries if f < first]
        before = kept[-1][1] if kept else Exclusion((), length)
        current = self.at(first)
        union = (before if current is None else current).union(new, length)
        delta = _minus(union.ranges, before.ranges)
        grew = len(delta[0]) > 0
        result = Exclusions(
            [*kept, *([(first, union)] if grew else [])], [*self._added[: len(kept)], *([delta] if grew else [])]
        )
        if result.stored() > MAX_EXCLUDED_RANGES:
            raise ValueError(
                f"exclude(): the exclusion list would store {result.stored()} ranges of consecutive indices "
                f"({len(union)} indices), more than the bound of {MAX_EXCLUDED_RANGES} ranges that keeps every "
                "input checkpoint restorable; nothing was changed. Exclude fewer, or contiguous, indices; or "
                "build the dataset without these samples (e.g. a torch.utils.data.Subset of the ones to keep) "
                "and start a new run"
            )
        return result

    def to_state(self) -> list[list[Any]]:
        """The saved form: ``[[first epoch, [start, stop, ...]], ...]``, the ranges added at each epoch."""
        return [
            [first, torch.stack(ranges, 1).flatten().tolist()]
            for (first, _), ranges in zip(self.entries, self._added, strict=True)
        ]

    @classmethod
    def from_state(cls, state: Any, length: int, source: str) -> Exclusions:
        """Parse a saved ``excluded`` entry (the version 2 form; ``schema.SamplerState`` converts version 1).

        Raises:
            InputStateError: naming the entry, for a malformed one or one past the bounds.
        """
        where = f"{source}: excluded"
        if not isinstance(state, list) or not all(isinstance(item, list) and len(item) == 2 for item in state):
            raise InputStateError(f"{where} should be a list of [first epoch, [start, stop, ...]] pairs")
        entries: list[tuple[int, Exclusion]] = []
        added: list[Ranges] = []
        stored = 0
        for first, flat in state:
            if type(first) is not int or not 0 <= first <= MAX_EPOCH or not isinstance(flat, list):
                raise InputStateError(f"{where}: [{short(first)}, ...] should be [an epoch, a list of ranges]")
            before = entries[-1][1] if entries else Exclusion((), length)
            try:
                ranges = _checked_ranges(flat, length)
                stored += len(ranges[0])
                if stored > MAX_EXCLUDED_RANGES:
                    # What a save would store again: refused here, as exclude() refuses it.
                    raise ValueError(
                        f"more than the bound of {MAX_EXCLUDED_RANGES} ranges of excluded indices (found "
                        f"{stored} so far); build the dataset without these samples instead"
                    )
                now = before.union(ranges, length)
            except ValueError as error:
                raise InputStateError(f"{where}: {error}") from error
            entries.append((first, now))
            added.append(_minus(now.ranges, before.ranges))
        if [f for f, _ in entries] != sorted({f for f, _ in entries}):
            raise InputStateError(f"{where}: the first epochs should increase")
        return cls(entries, added)


_EMPTY: Ranges = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))


def _ranges_of(indices: Iterable[int], length: int) -> Ranges:
    """Sorted, merged ranges of these indices (checked to be ints in ``[0, length)``)."""
    values = indices if isinstance(indices, (list, tuple)) else list(indices)
    if not values:
        return _EMPTY
    tensor = _int64(values)
    if tensor is None or int(tensor.min()) < 0 or int(tensor.max()) >= length:
        bad = [i for i in values if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < length]
        if bad:
            raise ValueError(f"excluded indices must be ints in [0, {length}) (got {bad[:5]!r})")
        tensor = torch.tensor([int(i) for i in values], dtype=torch.int64)  # int subclasses (not bool)
    return _runs(torch.unique(tensor, sorted=True))


def _int64(values: Sequence[Any]) -> torch.Tensor | None:
    """``values`` as an int64 tensor when all are plain ints that fit (the common case, checked at C speed
    afterwards), else None."""
    if not all(type(i) is int for i in values) or min(values) < -(2**63) or max(values) >= 2**63:
        return None
    return torch.tensor(values, dtype=torch.int64)


def _runs(sorted_: torch.Tensor) -> Ranges:
    """The runs of consecutive values of a sorted, distinct tensor, as ranges."""
    breaks = torch.nonzero(sorted_[1:] - sorted_[:-1] != 1).flatten()
    return torch.cat([sorted_[:1], sorted_[breaks + 1]]), torch.cat([sorted_[breaks] + 1, sorted_[-1:] + 1])


def _checked_ranges(flat: list[Any], length: int) -> Ranges:
    """Saved ``start, stop, ...`` ints: ``0 <= start < stop <= length``, sorted and disjoint."""
    if len(flat) % 2 or not all(type(v) is int for v in flat):
        raise ValueError(f"{short(flat)} should be a flat list of start, stop ints")
    if not flat:
        return _EMPTY
    if not all(0 <= v <= length for v in flat):
        raise ValueError(f"{short(next(v for v in flat if not 0 <= v <= length))} is outside [0, {length}]")
    pairs = torch.tensor(flat, dtype=torch.int64).reshape(-1, 2)
    starts, stops = pairs[:, 0].contiguous(), pairs[:, 1].contiguous()
    wrong = torch.nonzero(starts >= stops).flatten()
    if len(wrong):
        k = int(wrong[0])
        raise ValueError(f"the range [{int(starts[k])}, {int(stops[k])}) is empty; expected start < stop")
    wrong = torch.nonzero(starts[1:] < stops[:-1]).flatten()
    if len(wrong):
        k = int(wrong[0]) + 1
        raise ValueError(
            f"the range [{int(starts[k])}, {int(stops[k])}) starts before the previous one's stop "
            f"{int(stops[k - 1])}; expected sorted, disjoint ranges"
        )
    return starts, stops


def _normalized(starts: torch.Tensor, stops: torch.Tensor) -> Ranges:
    """The union of ranges as sorted, disjoint, non-adjacent ones (vectorized: a sort and a running max)."""
    if not len(starts):
        return _EMPTY
    order = torch.argsort(starts, stable=True)
    starts, stops = starts[order], stops[order]
    reach = torch.cummax(stops, 0).values
    begins = torch.ones(len(starts), dtype=torch.bool)
    begins[1:] = starts[1:] > reach[:-1]
    first = torch.nonzero(begins).flatten()
    last = torch.cat([first[1:] - 1, torch.tensor([len(starts) - 1])])
    return starts[first], reach[last]


def _minus(ranges: Ranges, removed: Ranges) -> Ranges:
    """``ranges`` less ``removed``, where ``removed`` lies inside ``ranges`` (both normalized): in order, the
    pieces run from each "open" boundary (a range's start, a removed range's stop) to the next "close"
    one (a removed range's start, a range's stop); empty pieces are dropped."""
    opens = torch.sort(torch.cat([ranges[0], removed[1]])).values
    closes = torch.sort(torch.cat([removed[0], ranges[1]])).values
    keep = opens < closes
    return opens[keep], closes[keep]

"""A persistent exclusion list: dataset indices left out of every epoch from a given epoch on.

Invariant: an epoch with exclusions is a permutation of the ``N - |X|`` indices not excluded, so each of
them is delivered exactly once per epoch (padding aside) and every rule of the sampler (one global
cursor, padding, ``drop_last``, resharding) holds unchanged over the shorter length. The ``i``-th
index not excluded is ``i + #{j : X[j] - j <= i}`` (X sorted): one ``searchsorted`` per chunk of keys,
O(log |X|) per key. The epoch in progress when the list grows keeps its order (it was laid out over
the old length): additions apply from the next epoch, or at once at an epoch's start. Each entry of a state
is a complete list with the epoch it starts at (one entry per change).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .errors import InputStateError
from .schema import MAX_EPOCH

__all__ = ["Excluded", "Exclusion", "Exclusions"]


class Exclusion:
    """Sorted distinct dataset indices left out of an epoch.

    Args:
        indices: The excluded dataset indices.
        length: The dataset length (every index must be below it, and at least one must stay).

    Raises:
        ValueError: for an index outside ``[0, length)`` or a list that excludes everything.
    """

    __slots__ = ("indices", "_sorted", "_shifted", "_width", "_table", "_deepest")

    def __init__(self, indices: Iterable[int], length: int) -> None:
        values = list(indices)
        bad = [i for i in values if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < length]
        if bad:
            raise ValueError(f"excluded indices must be ints in [0, {length}) (got {bad[:5]!r})")
        values = sorted(set(values))
        if len(values) >= length:
            raise ValueError(f"cannot exclude all {length} samples of the dataset")
        self.indices: tuple[int, ...] = tuple(values)
        self._sorted = torch.tensor(values, dtype=torch.int64)
        self._shifted = self._sorted - torch.arange(len(values), dtype=torch.int64)
        self._bucket(length - len(values))

    def _bucket(self, kept: int) -> None:
        """A table of how many shifted values lie below each bucket of ``width`` ranks (about 4 buckets per
        excluded index), so that a rank's count is one lookup plus a few compares within its bucket.
        torch's ``searchsorted`` costs 150-700 ns per key on 2 busy cores (its thread pool); this costs
        tens. Clustered lists (many equal shifted values in one bucket) keep ``searchsorted``."""
        count = len(self.indices)
        self._width = max(1, -(-kept // max(1, 4 * count)))
        buckets = kept // self._width + 2
        if not count or buckets > 64 * count + 64:
            self._table, self._deepest = None, 0
            return
        starts = torch.arange(buckets, dtype=torch.int64) * self._width
        self._table = torch.searchsorted(self._shifted, starts, right=False)
        self._deepest = int((self._table[1:] - self._table[:-1]).max())

    def __len__(self) -> int:
        return len(self.indices)

    def select(self, ranks: torch.Tensor) -> torch.Tensor:
        """The ``i``-th index not excluded, for each ``i`` of an int64 tensor."""
        if not self.indices:
            return ranks
        return ranks + self._count_at_most(ranks)

    def _count_at_most(self, ranks: torch.Tensor) -> torch.Tensor:
        """``#{j : shifted[j] <= r}`` for each rank ``r``."""
        if self._table is None or self._deepest > 8:
            return torch.searchsorted(self._shifted, ranks, right=True)
        first = self._table.index_select(0, torch.div(ranks, self._width, rounding_mode="floor"))
        count = first.clone()
        last = len(self.indices) - 1
        for k in range(self._deepest):
            at = (first + k).clamp_(max=last)
            # Inside the bucket (below the next one's first index) and at most r: one more below r.
            count += (self._shifted.index_select(0, at) <= ranks) & (first + k <= last)
        return count

    def rank(self, index: int) -> int | None:
        """How many indices not excluded are below ``index`` (None: ``index`` is excluded)."""
        if not self.indices:
            return index
        below = int(torch.searchsorted(self._sorted, torch.tensor([index]), right=False)[0])
        if below < len(self.indices) and self.indices[below] == index:
            return None
        return index - below


class Excluded:
    """A permutation over the indices not excluded: ``select(perm(positions))``."""

    __slots__ = ("perm", "exclusion", "length")

    def __init__(self, perm: Any, exclusion: Exclusion) -> None:
        self.perm, self.exclusion, self.length = perm, exclusion, perm.length

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return self.exclusion.select(self.perm(positions))


class Exclusions:
    """The exclusion lists of a run: ``(first epoch, complete list)`` entries, oldest first."""

    __slots__ = ("entries",)

    def __init__(self, entries: Sequence[tuple[int, Exclusion]] = ()) -> None:
        self.entries: tuple[tuple[int, Exclusion], ...] = tuple(entries)

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

    def added(self, indices: Iterable[int], first: int, length: int) -> Exclusions:
        """These lists plus ``indices`` from epoch ``first`` on. Older entries are kept (one per call): the
        epochs they cover stay computable from any later state (``samples``)."""
        current = self.at(first)
        union = Exclusion([*(current.indices if current else ()), *indices], length)
        return Exclusions([*((f, e) for f, e in self.entries if f < first), (first, union)])

    def to_state(self) -> list[list[Any]]:
        return [[first, list(exclusion.indices)] for first, exclusion in self.entries]

    @classmethod
    def from_state(cls, state: Any, length: int, source: str) -> Exclusions:
        """Parse a saved ``excluded`` entry.

        Raises:
            InputStateError: naming the entry, for a malformed one.
        """
        where = f"{source}: excluded"
        if not isinstance(state, list) or not all(isinstance(item, list) and len(item) == 2 for item in state):
            raise InputStateError(f"{where} should be a list of [first epoch, [indices]] pairs")
        entries = []
        for first, indices in state:
            if type(first) is not int or not 0 <= first <= MAX_EPOCH or not isinstance(indices, list):
                raise InputStateError(f"{where}: [{first!r}, ...] should be [an epoch, a list of indices]")
            try:
                entries.append((first, Exclusion(indices, length)))
            except ValueError as error:
                raise InputStateError(f"{where}: {error}") from error
        if [f for f, _ in entries] != sorted({f for f, _ in entries}):
            raise InputStateError(f"{where}: the first epochs should increase")
        return cls(entries)

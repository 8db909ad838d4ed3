"""A persistent exclusion list: dataset indices left out of every epoch from a given epoch on.

Invariant: an epoch with exclusions is a permutation of the ``N - |X|`` indices not excluded, so each of
them is delivered exactly once per epoch (padding aside) and every rule of the sampler (one global
cursor, padding, ``drop_last``, resharding) holds unchanged over the shorter length. The ``i``-th
index not excluded is ``i + #{j : X[j] - j <= i}`` (X sorted): one ``searchsorted`` per chunk of keys,
O(log |X|) per key. The epoch in progress when the list grows keeps its order (it was laid out over
the old length); the list applies from the next epoch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .errors import InputStateError
from .schema import MAX_EPOCH, Key, field

__all__ = ["Exclusion"]


class Exclusion:
    """Sorted distinct dataset indices excluded from epoch ``first_epoch`` on.

    Args:
        indices: The excluded dataset indices.
        first_epoch: The first epoch they are left out of.
        length: The dataset length (every index must be below it, and at least one must stay).

    Raises:
        ValueError: for an index outside ``[0, length)`` or a list that excludes everything.
    """

    __slots__ = ("indices", "first_epoch", "_sorted", "_shifted")

    def __init__(self, indices: Iterable[int], first_epoch: int, length: int) -> None:
        values = sorted(set(indices))
        bad = [i for i in values if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < length]
        if bad:
            raise ValueError(f"excluded indices must be ints in [0, {length}) (got {bad[:5]!r})")
        if len(values) >= length:
            raise ValueError(f"cannot exclude all {length} samples of the dataset")
        self.indices: tuple[int, ...] = tuple(values)
        self.first_epoch = first_epoch
        self._sorted = torch.tensor(values, dtype=torch.int64)
        self._shifted = self._sorted - torch.arange(len(values), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def select(self, ranks: torch.Tensor) -> torch.Tensor:
        """The ``i``-th index not excluded, for each ``i`` of an int64 tensor."""
        if not self.indices:
            return ranks
        return ranks + torch.searchsorted(self._shifted, ranks, right=True)

    def rank(self, index: int) -> int | None:
        """How many indices not excluded are below ``index`` (None: ``index`` is excluded)."""
        below = int(torch.searchsorted(self._sorted, torch.tensor([index]), right=False)[0]) if self.indices else 0
        if below < len(self.indices) and self.indices[below] == index:
            return None
        return index - below

    def to_state(self) -> dict[str, Any]:
        """The entries a sampler state holds."""
        return {Key.EXCLUDED: list(self.indices), Key.EXCLUDED_FROM: self.first_epoch}

    @classmethod
    def from_sampler_state(cls, state: Mapping[str, Any], source: str) -> Exclusion | None:
        """The exclusion a saved sampler state holds, or None.

        Raises:
            InputStateError: naming the entry, for a malformed list.
        """
        if Key.EXCLUDED not in state:
            return None
        indices = field(state, Key.EXCLUDED, list, source)
        first = field(state, Key.EXCLUDED_FROM, int, source, low=0, high=MAX_EPOCH)
        length = field(state, Key.LENGTH, int, source, low=1)
        try:
            return cls(indices, first, length)
        except ValueError as error:
            raise InputStateError(f"{source}: {Key.EXCLUDED}: {error}") from error

"""Where a stream stands (``Cursor``) and one pass's account of the batches that reached the caller (``Ledger``).

A ``Cursor`` is ``(epoch, value)`` plus a *generation*, bumped whenever the position is moved from
outside (``set_epoch``, ``load_state_dict``), so that an iteration started before the move stops
writing its progress into the new position: ``commit`` from a stale generation is ignored. The
sampler, the replay backend and the iterable backend each own one; nothing else writes them.

A ``Ledger`` numbers the batches of one pass from its start and tracks which reached the caller:
``high`` is one past the highest delivered, ``holes`` the ones below it still in flight (at most
``num_workers * prefetch_factor`` of them, with ``in_order=False``), so the committed prefix is the
first hole. Batches delivered beyond the prefix are what a state saves as ``Ahead``.
"""

from __future__ import annotations

import warnings
from typing import Literal

from ..errors import EpochMismatchWarning
from ..state.schema import Ahead

__all__ = ["Cursor", "EpochRequest", "Ledger", "epoch_request"]

EpochRequest = Literal["keep", "finish", "restart"]

_NOTHING_AHEAD = Ahead()


class Cursor:
    """A position ``(epoch, value)`` with a generation counter for moves from outside.

    Args:
        epoch: The starting epoch.
        value: The starting position within it (samples or batches, as the owner counts).
    """

    __slots__ = ("epoch", "value", "generation", "restored")

    def __init__(self, epoch: int = 0, value: int = 0) -> None:
        self.epoch = epoch
        self.value = value
        self.generation = 0
        # Loaded from a saved state, and neither moved nor advanced since: see epoch_request().
        self.restored = False

    def move_to(self, epoch: int, value: int = 0, *, restored: bool = False) -> None:
        """Move the position from outside (``restored``: to a loaded state): iterations started before
        stop committing."""
        self.epoch, self.value = epoch, value
        self.generation += 1
        self.restored = restored

    def commit(self, generation: int, epoch: int, value: int) -> bool:
        """Record progress of an iteration started at ``generation``; ignored (False) if moved since."""
        if generation != self.generation:
            return False
        self.epoch, self.value = epoch, value
        self.restored = False
        return True

    def __repr__(self) -> str:
        return f"Cursor(epoch={self.epoch}, value={self.value}, generation={self.generation})"


class Ledger:
    """Which batches of one pass reached the caller, numbered from the pass's start.

    Args:
        skip: Batches already delivered beyond the pass's start (loaded from a state's ``ahead``):
            they are neither fetched nor delivered again.
    """

    __slots__ = ("skip", "high", "holes", "next_number")

    def __init__(self, skip: Ahead = _NOTHING_AHEAD) -> None:
        self.skip = skip
        self.high = skip.end
        self.holes = set(skip.missing)
        self.next_number = self.prefix

    @property
    def prefix(self) -> int:
        """How many batches from the pass's start were delivered without a gap."""
        return min(self.holes) if self.holes else self.high

    @property
    def simple(self) -> bool:
        """Nothing to skip and nothing out of order so far: the next batch in order is the prefix."""
        return not self.skip.end and not self.holes

    def next_in_order(self) -> int:
        """The number of the next batch when batches arrive in order (skipping those delivered ahead)."""
        number = self.next_number
        self.next_number += 1
        while self.next_number in self.skip:
            self.next_number += 1
        return number

    def delivered(self, number: int) -> int:
        """Record that batch ``number`` reached the caller; returns the new prefix."""
        if number >= self.high:
            self.holes.update(range(self.high, number))
            self.high = number + 1
        else:
            self.holes.discard(number)
        return self.prefix

    def ahead(self) -> Ahead:
        """The batches delivered beyond the prefix, renumbered from it."""
        prefix = self.prefix
        if not self.holes:
            return Ahead()
        return Ahead(self.high - prefix, frozenset(n - prefix for n in self.holes))


def epoch_request(requested: int, epoch: int, *, restored: bool, at_start: bool, owner: str) -> EpochRequest:
    """What ``set_epoch(requested)`` does to a position (the one rule for samplers and loaders).

    =====================================================  ==========================================
    ``requested``                                          effect
    =====================================================  ==========================================
    the current epoch                                      nothing: a resumed position is kept
    one behind a *restored* position at an epoch's start   ``"finish"``: the rest of that (finished)
    (the saved run had just finished epoch ``requested``)  epoch is empty; warns
    any other epoch behind a restored position             ``"restart"``; warns (the data repeats)
    any other epoch                                        ``"restart"``: that epoch from its start
    =====================================================  ==========================================

    Args:
        requested: The epoch passed to ``set_epoch``.
        epoch: The epoch the next pass produces (a finished one counts as the next).
        restored: The position was loaded from a state and has neither moved nor advanced since.
        at_start: Whether the position is at the start of ``epoch`` (nothing of it consumed).
        owner: The object's name, for the warning.
    """
    if requested == epoch:
        return "keep"
    if not restored or requested > epoch:
        return "restart"
    if requested == epoch - 1 and at_start:
        warnings.warn(
            f"{owner}.set_epoch({requested}) after restoring a position at the end of epoch {requested}: that "
            f"epoch is finished, so its rest is empty and epoch {epoch} comes next. Loop over "
            f"range(loader.epoch, num_epochs) to avoid this; call restart_epoch({requested}) to repeat it.",
            EpochMismatchWarning,
            stacklevel=4,
        )
        return "finish"
    warnings.warn(
        f"{owner}.set_epoch({requested}) after restoring a position in epoch {epoch}: starting epoch "
        f"{requested} over, so its data is seen again. Loop over range(loader.epoch, num_epochs) to resume "
        f"where the checkpoint stopped; call restart_epoch({requested}) to do this without a warning.",
        EpochMismatchWarning,
        stacklevel=4,
    )
    return "restart"

"""The changes a mixture accepts on resume, each keeping every source exactly once per source epoch.

Rules (checked in this order; the README's table says the same):

- nothing changed: the saved plan is kept, so the run continues exactly as if never interrupted;
- ``samples_per_epoch`` changed: only at an epoch boundary (cursor 0), else refused;
- a source shrank: refused (its current source epoch could not be finished);
- a source grew: refused unless ``allow_growth``; then its current source epoch finishes over the old
  length and the next ones use the new length;
- new weights, a new source, a removed source, or another order of sources: a new plan anchored at the
  resume point, each source continuing from its exact next sample; a new source starts at its sample 0,
  a removed one is kept in the state (retired) with its next sample, and continues from it if added back.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InputStateError
from .mixture_layout import integer_weights
from .mixture_plan import Plan
from .mixture_sources import SourceCursor

__all__ = ["Configuration", "resume_plan"]


@dataclass(frozen=True, slots=True)
class Configuration:
    """What a mixture is built with now: the values a saved plan is compared with."""

    total: int
    names: tuple[str, ...]
    weights: tuple[float, ...]
    lengths: tuple[int, ...]
    allow_growth: bool


@dataclass(frozen=True, slots=True)
class Position:
    """Where the state is loaded: the sampler's seed, shuffle, epoch and global cursor."""

    seed: int
    shuffle: bool
    epoch: int
    cursor: int


def resume_plan(saved: Plan, now: Configuration, at: Position, source: str) -> Plan:
    """The plan to continue with, given the saved one and the mixture as built now.

    Raises:
        InputStateError: for a changed ``samples_per_epoch`` mid-epoch, a shrunk source, or a grown one
            without ``allow_growth``, naming both values and the fix.
    """
    same_layout = (saved.total, saved.names, integer_weights(saved.weights)) == (
        now.total,
        now.names,
        integer_weights(now.weights),
    )
    if same_layout and tuple(c.length for c in saved.cursors) == now.lengths:
        return saved
    if saved.total != now.total and at.cursor != 0:
        raise InputStateError(
            f"{source}: the state was saved with samples_per_epoch={saved.total}, but this mixture has "
            f"samples_per_epoch={now.total}, and the state is mid-epoch (epoch {at.epoch}, cursor {at.cursor}). "
            f"Resume with samples_per_epoch={saved.total}, or change it at an epoch boundary (a state the "
            "loader saved after an epoch's last batch)."
        )
    epoch, cursor = (at.epoch + 1, 0) if at.cursor >= saved.total else (at.epoch, at.cursor)
    nexts = saved.consumed(at.seed, at.shuffle, epoch, cursor)
    pool: dict[str, tuple[int, SourceCursor]] = dict(saved.retired)
    for name, g, c in zip(saved.names, nexts, saved.cursors, strict=True):
        pool[name] = (g, c.advance(g))
    bases, cursors = [], []
    for name, length in zip(now.names, now.lengths, strict=True):
        g, c = pool.pop(name, (0, SourceCursor.fresh(length)))
        bases.append(g)
        cursors.append(_resized(name, g, c, length, now.allow_growth, source))
    if same_layout:
        # Only lengths changed: the layout and the anchor stay, the cursors move to the resume point.
        return Plan(
            saved.total,
            saved.names,
            saved.weights,
            saved.anchor_epoch,
            saved.anchor_position,
            saved.bases,
            tuple(cursors),
            pool,
        )
    return Plan(now.total, now.names, now.weights, epoch, cursor, tuple(bases), tuple(cursors), pool)


def _resized(name: str, g: int, cursor: SourceCursor, length: int, allow_growth: bool, source: str) -> SourceCursor:
    if length == cursor.length:
        return cursor
    if length < cursor.length:
        raise InputStateError(
            f"{source}: source {name!r} was saved with length={cursor.length}, but has length={length} now: "
            "a source may grow (data appended) but not shrink, since its current source epoch could not be "
            f"finished. Resume with the source's {cursor.length} items, or remove the source (and add another "
            "under a new name)."
        )
    if not allow_growth:
        raise InputStateError(
            f"{source}: source {name!r} was saved with length={cursor.length}, but has length={length} now. "
            "If data was appended, build the Mixture with allow_growth=True (its current source epoch then "
            "finishes over the old length); otherwise resume with the dataset the state was saved for."
        )
    return cursor.grow(g, length)

"""The changes a mixture accepts on resume, each keeping every source exactly once per source epoch.

Rules (checked in this order; docs/guides/mixtures.md's table says the same):

- nothing changed (sources are matched by name: another order of the same sources is no change): the
  saved plan is kept, so the run continues exactly as if never interrupted;
- ``samples_per_epoch`` changed: only at an epoch boundary (cursor 0), else refused;
- a source shrank: refused (its current source epoch could not be finished);
- a source grew: refused unless ``allow_growth``; then its current source epoch finishes over the old
  length and the next ones use the new length;
- new weights (their exact proportions: ``0.1 + 0.2`` is not ``0.3``), a new weight schedule, a new
  source, or a removed source: a new plan anchored at the resume point, logged with the reason (a warning
  when the weights differ only by float rounding), each source continuing from its exact next sample; a
  new source starts at its sample 0, a removed one is kept in the state (retired) with its next sample,
  and continues from it if added back.

With a weight schedule, "the weights" are the rest of the schedule from the resume point: the weights in
force there and the changes after it. A schedule given now replaces the rest of the saved one (what it says
about samples already delivered is history, not applied); the same rest (the same proportions from the same
samples on) keeps the saved plan.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InputStateError
from .layout import integer_weights
from .plan import Change, Plan, Weights
from .sources import SourceCursor

__all__ = ["Configuration", "ResumePoint", "check_source_orders", "resume_plan"]

_log = logging.getLogger("torch_input_ckpt")


@dataclass(frozen=True, slots=True)
class Configuration:
    """What a mixture is built with now: the values a saved plan is compared with."""

    total: int
    names: tuple[str, ...]
    weights: tuple[float, ...]
    lengths: tuple[int, ...]
    allow_growth: bool
    own_order: frozenset[str] = frozenset()
    schedule: tuple[Change, ...] = ()

    def rest(self, sample: int) -> tuple[Weights, tuple[Change, ...]]:
        """The weights in force at global sample ``sample`` and the changes after it."""
        weights = self.weights
        for start, changed in self.schedule:
            if start <= sample:
                weights = changed
        return weights, tuple(change for change in self.schedule if change[0] > sample)


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where the state is loaded: the sampler's seed, shuffle, epoch and global cursor."""

    seed: int
    shuffle: bool
    epoch: int
    cursor: int


def resume_plan(saved: Plan, now: Configuration, at: ResumePoint, source: str) -> Plan:
    """The plan to continue with, given the saved one and the mixture as built now.

    Sources are matched by name, never by place: a mixture built with its sources in another order keeps
    the saved plan (the mixture then takes the plan's order). A new plan is logged (one line on the
    ``torch_input_ckpt`` logger) with the reason: what changed, by name.

    Raises:
        InputStateError: for a changed ``samples_per_epoch`` mid-epoch, a shrunk source, or a grown one
            without ``allow_growth``, naming both values and the fix.
    """
    saved = _recorded_order(saved, now, source)
    epoch, cursor = (at.epoch + 1, 0) if at.cursor >= saved.total else (at.epoch, at.cursor)
    saved_rest = saved.weights_at(epoch * saved.total + cursor), _after(saved.schedule, epoch * saved.total + cursor)
    now_rest = now.rest(epoch * now.total + cursor)
    same_layout = saved.total == now.total and _rest_shares(saved.names, *saved_rest) == _rest_shares(
        now.names, *now_rest
    )
    lengths = {name: c.length for name, c in zip(saved.names, saved.cursors, strict=True)}
    if same_layout and lengths == dict(zip(now.names, now.lengths, strict=True)):
        return _kept(saved, now, source)
    if saved.total != now.total and at.cursor != 0:
        raise InputStateError(
            f"{source}: the state was saved with samples_per_epoch={saved.total}, but this mixture has "
            f"samples_per_epoch={now.total}, and the state is mid-epoch (epoch {at.epoch}, cursor {at.cursor}). "
            f"Resume with samples_per_epoch={saved.total}, or change it at an epoch boundary (a state the "
            "loader saved after an epoch's last batch)."
        )
    nexts = saved.consumed(at.seed, at.shuffle, epoch, cursor)
    pool: dict[str, tuple[int, SourceCursor]] = dict(saved.retired)
    for name, g, c in zip(saved.names, nexts, saved.cursors, strict=True):
        pool[name] = (g, c.advance(g))
    moved: dict[str, tuple[int, SourceCursor]] = {}
    for name, length in zip(now.names, now.lengths, strict=True):
        g, c = pool.pop(name, (0, SourceCursor.fresh(length)))
        moved[name] = (g, _resized(name, g, c, length, now, source))
    if same_layout:
        # Only lengths changed: the layout and the anchor stay, the cursors move to the resume point.
        return replace(saved, cursors=tuple(moved[name][1] for name in saved.names), retired=pool)
    _log_new_plan(replace(saved, weights=saved_rest[0], schedule=saved_rest[1]), now, now_rest, (epoch, cursor), source)
    bases = tuple(moved[name][0] for name in now.names)
    cursors = tuple(moved[name][1] for name in now.names)
    return Plan(now.total, now.names, now_rest[0], epoch, cursor, bases, cursors, pool, schedule=now_rest[1])


def _log_new_plan(
    saved: Plan, now: Configuration, rest: tuple[Weights, tuple[Change, ...]], at: tuple[int, int], source: str
) -> None:
    """Log why a new plan starts at ``at``; ``saved`` and ``rest`` are the saved and the new weights from there."""
    why, rounding = _why(saved, replace(now, weights=rest[0]))
    if _rest_shares(saved.names, saved.weights, saved.schedule)[1] != _rest_shares(now.names, *rest)[1]:
        why = f"{why}; the schedule after this point changed to {_readable(now.names, rest[1])}"
    # A difference of float rounding alone is most likely not meant: said louder than a deliberate change.
    _log.log(
        logging.WARNING if rounding else logging.INFO,
        "%s: the mixture's plan is new from epoch %d, position %d: %s",
        source,
        *at,
        why,
    )


def _after(schedule: tuple[Change, ...], sample: int) -> tuple[Change, ...]:
    return tuple(change for change in schedule if change[0] > sample)


def _rest_shares(
    names: tuple[str, ...], weights: Weights, changes: tuple[Change, ...]
) -> tuple[dict[str, int], list[tuple[int, dict[str, int]]]]:
    """The rest of a schedule by name and exact proportions, to compare two of them."""
    return _shares(names, weights), [(start, _shares(names, changed)) for start, changed in changes]


def _readable(names: tuple[str, ...], changes: tuple[Change, ...]) -> str:
    return str([(start, dict(zip(names, changed, strict=True))) for start, changed in changes])


def _kept(saved: Plan, now: Configuration, source: str) -> Plan:
    """The saved plan, kept; saying so when the sources are given in another order than saved."""
    if saved.names != now.names:
        _log.info(
            "%s: the mixture's sources are given in another order (%s) than saved (%s): the saved plan is "
            "kept, since sources are matched by name",
            source,
            list(now.names),
            list(saved.names),
        )
    return saved


def _recorded_order(saved: Plan, now: Configuration, source: str) -> Plan:
    """A state saved before the order was recorded holds its sources in its dict's order, which a checkpoint
    file sorts: with the same names as now, the order is taken to be the current one (the same code); with
    other names it is not known, and the layout the state continues depends on it: refused.

    Raises:
        InputStateError: for such a state whose sources differ from the mixture's now.
    """
    if saved.order_recorded or saved.names == now.names or len(saved.names) == 1:
        return saved
    if set(saved.names) != set(now.names):
        raise InputStateError(
            f"{source}: dataset_order: the state does not record the order of its sources {sorted(saved.names)} "
            "(it was saved before that was recorded, and a checkpoint file sorts them by name), and the mixture's "
            f"sources are {list(now.names)} now, so where the state stands in each source is not known. Resume "
            "once with the sources the state was saved with (their order is then recorded), then change them."
        )
    place = {name: k for k, name in enumerate(saved.names)}
    ks = [place[name] for name in now.names]
    return replace(
        saved,
        names=now.names,
        weights=tuple(saved.weights[k] for k in ks),
        bases=tuple(saved.bases[k] for k in ks),
        cursors=tuple(saved.cursors[k] for k in ks),
        order_recorded=True,
    )


def _shares(names: tuple[str, ...], weights: tuple[float, ...]) -> dict[str, int]:
    """Each source's weight as the smallest integers in the same proportions, by name."""
    if not any(weights):
        return dict.fromkeys(names, 0)
    return dict(zip(names, integer_weights(weights), strict=True))


def _why(saved: Plan, now: Configuration) -> tuple[str, bool]:
    """What changed, by name: the reason a new plan starts (one line for the log), and whether the only
    change is weights equal up to float rounding."""
    reasons = []
    if saved.total != now.total:
        reasons.append(f"samples_per_epoch changed from {saved.total} to {now.total}")
    added = [name for name in now.names if name not in saved.names]
    removed = [name for name in saved.names if name not in now.names]
    if added:
        reasons.append(f"sources added: {added}")
    if removed:
        reasons.append(f"sources removed: {removed}")
    weights, rounding = _weights_reason(saved, now)
    if weights:
        reasons.append(weights)
        if rounding and len(reasons) == 1:
            return weights, True
    return "; ".join(reasons) or "the sources' proportions changed", False


def _weights_reason(saved: Plan, now: Configuration) -> tuple[str, bool]:
    """How the weights of the sources present before and now changed ("" if not), and whether they are
    equal up to float rounding."""
    before = dict(zip(saved.names, saved.weights, strict=True))
    after = dict(zip(now.names, now.weights, strict=True))
    common = tuple(name for name in now.names if name in before)
    old = {name: before[name] for name in common}
    new = {name: after[name] for name in common}
    if not common or _shares(common, tuple(old.values())) == _shares(common, tuple(new.values())):
        return "", False
    reason = f"weights changed from {old} to {new}"
    if not _close(list(old.values()), list(new.values())):
        return reason, False
    return (
        f"{reason}; they are equal only up to float rounding: a float weight is taken as the binary fraction it "
        "is (give integer weights, e.g. {'web': 7, 'code': 2}, for decimal shares)"
    ), True


def _close(old: list[float], new: list[float]) -> bool:
    total_old, total_new = sum(old), sum(new)
    if not total_old or not total_new:
        return False
    return all(
        math.isclose(a / total_old, b / total_new, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(old, new, strict=True)
    )


def check_source_orders(
    saved: Plan, own: Mapping[str, Any], sources: Mapping[str, Any], at: ResumePoint, source: str
) -> None:
    """Check each source with its own order against the configuration the state saved for it.

    A source's samples are numbered by its own order when it has one (its source epoch ``e`` is its epoch
    ``e``, read forward) and by the mixture's Feistel permutation otherwise, so a source that gained or lost
    its own order since the save would deliver other samples: refused. A source with its own order checks
    its saved configuration itself (a ``ShardedStream``: seed, lanes, window, ``pack_to``, shard list);
    its ``load_order_state`` gets ``epoch=0, cursor=0``, since its position is the mixture's counters, not
    its own (a ``ShardedStream`` reads no position from it).

    Raises:
        InputStateError: naming the source, what the state recorded and what it is now.
    """
    known = set(saved.names) | set(saved.retired)
    for name, dataset in sources.items():
        if name not in known:
            continue
        recorded = saved.orders.get(name)
        where = f"{source}: dataset_order: sources[{name!r}]"
        if name in own and recorded is None:
            raise InputStateError(
                f"{where}: the source is a {type(dataset).__name__} with its own order now, but the state numbered "
                "its samples by the mixture's permutation (it was saved over a dataset without one, or before a "
                "source kept its own order inside a mixture): resume with the dataset and version it was saved with."
            )
        if name not in own and recorded is not None:
            raise InputStateError(
                f"{where}: the state was saved over a {recorded.get('kind')!r} with its own order, but the source is "
                f"a {type(dataset).__name__} without one now: resume with the dataset the state was saved for."
            )
        if recorded is not None:
            dataset.load_order_state(recorded, seed=at.seed, shuffle=at.shuffle, epoch=0, cursor=0, source=where)


def _resized(name: str, g: int, cursor: SourceCursor, length: int, now: Configuration, source: str) -> SourceCursor:
    if length == cursor.length:
        return cursor
    if length < cursor.length:
        raise InputStateError(
            f"{source}: source {name!r} was saved with length={cursor.length}, but has length={length} now: "
            "a source may grow (data appended) but not shrink, since its current source epoch could not be "
            f"finished. Resume with the source's {cursor.length} items, or remove the source (and add another "
            "under a new name)."
        )
    if name in now.own_order:
        raise InputStateError(
            f"{source}: source {name!r} was saved with length={cursor.length}, but has length={length} now, and it "
            "has its own order (a ShardedStream: its lanes and packed sequences are laid out over its whole "
            "length), so a growth would renumber the samples of its current source epoch: refused, as the "
            "stream alone refuses it. Resume with the data it was saved with, and add new data as a new source "
            "(under a new name)."
        )
    if not now.allow_growth:
        raise InputStateError(
            f"{source}: source {name!r} was saved with length={cursor.length}, but has length={length} now. "
            "If data was appended, build the Mixture with allow_growth=True (its current source epoch then "
            "finishes over the old length); otherwise resume with the dataset the state was saved for."
        )
    return cursor.grow(g, length)

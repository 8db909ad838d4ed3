"""``Mixture``: map-style datasets mixed by weight, exact per epoch, resumable, reshardable, changeable on resume.

Guarantees (docs/guides/mixtures.md has the full table):

- a mixture epoch has ``samples_per_epoch`` samples, exactly ``n_k`` of them from source ``k``
  (largest-remainder rounding of the normalised weights), at positions shuffled by (seed, epoch);
- every source epoch is a permutation of that source: exactly once per source epoch, whatever the
  weights, across mixture epochs and across the changes on resume that ``mixture/resume.py`` accepts;
- the order is computed, so the state is O(#sources) integers and a resume is a seek; resharding,
  workers and per-sample reseeding are the :class:`~torch_input_ckpt.ResumableSampler`'s;
- a weight schedule changes the weights at declared global sample numbers (``epoch * samples_per_epoch +
  position``): each piece of an epoch between changes has exact counts, and every source continues from its
  exact next sample across a change (``mixture/plan.py``).

Limits: positions are shared by all ranks, so under several ranks the padding that
``DistributedSampler``'s rule adds at the end of a mixture epoch repeats a few samples, as for any
map-style dataset. ``restart_epoch`` (or ``set_epoch`` back) to a position before the last change on
resume does not replay what was delivered there before the change (the state no longer holds that
plan): every source continues from its next sample over a new plan anchored there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import torch
from torch.utils.data import Dataset

from ..base.arguments import check_int
from ..errors import InputStateError
from ..order.dataset_order import has_own_order
from .plan import Change, EpochOrder, Plan
from .resume import Configuration, ResumePoint, check_source_orders, resume_plan
from .sources import SourceOrder

__all__ = ["Mixture", "Origin", "Sourced"]

# A weight schedule as given: (the global sample the weights take effect at, name -> weight), ascending.
Schedule = Sequence[tuple[int, Mapping[str, float]]]


class Sourced(NamedTuple):
    """An item with the name of the source it came from (``Mixture(..., with_origin=True)``).

    A named tuple, so that torch's default collate keeps it: a batch is ``Sourced(item=<the items
    collated as usual>, source=(names...))`` (the default collate keeps strings as a sequence of them), and
    ``items, sources = batch`` unpacks it. A dict would collide with items that are dicts themselves; a
    named tuple wraps any item and is one field access away from it.
    """

    item: Any
    source: str


@dataclass(frozen=True, slots=True)
class Origin:
    """Which sample a mixture position delivered: ``sources[source][index]``, in that source's epoch."""

    source: str
    index: int
    source_epoch: int


class Mixture(Dataset):
    """Map-style datasets mixed by weight; pass it to :class:`~torch_input_ckpt.ResumableDataLoader`.

    A key is ``index * #sources + source`` (the source's place in ``sources``), and ``mixture[key]``
    is the source's own item; the order of an epoch (which key at which position) is the mixture's, and
    :class:`~torch_input_ckpt.ResumableSampler` uses it in place of its permutation, and saves the
    mixture's counters with its own state.

    Args:
        sources: Name -> map-style dataset (anything with ``len`` and ``__getitem__``). The name, not
            the place, identifies a source in the saved state. A dataset with its own order (a
            :class:`~torch_input_ckpt.ShardedStream`) keeps it: its source epoch ``e`` is its epoch ``e``,
            read forward as alone; it may not grow, even with ``allow_growth``.
        weights: Name -> non-negative number, one per source (normalised; at least one > 0): the weights
            from the run's first sample. None when ``schedule`` starts at sample 0.
        samples_per_epoch: Samples per mixture epoch; default the sum of the sources' lengths.
        allow_growth: Accept, on resume, a source longer than when the state was saved (data appended):
            its current source epoch finishes over the old length. Off by default, since a changed
            length usually means the wrong dataset.
        schedule: Weight changes over the run: ``[(from_sample, weights), ...]``, ascending, each ``weights``
            naming every source (0 allowed, one > 0) and in force from the run's global sample ``from_sample``
            (``epoch * samples_per_epoch + position``, all ranks together) to the next change. The first may
            be at 0 (then ``weights`` is None). On resume, the schedule given replaces the rest of the saved
            one from the resume point on.
        with_origin: Deliver each item as ``Sourced(item, source_name)`` (for a per-source loss).

    Raises:
        ValueError: for an empty or unsized source, weights that do not name exactly the sources or are
            negative, not finite or all 0, a schedule not ascending or with an entry at 0 beside ``weights``,
            or ``samples_per_epoch < 1``.
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        weights: Mapping[str, float] | None = None,
        *,
        samples_per_epoch: int | None = None,
        allow_growth: bool = False,
        schedule: Schedule = (),
        with_origin: bool = False,
    ) -> None:
        weights, changes = _check_schedule(sources, weights, schedule)
        _check_sources(sources, weights)
        for _, later in changes:
            _check_sources(sources, later)
        self.sources = dict(sources)
        self._weights = dict(weights)
        self._changes = changes
        self.with_origin = with_origin
        self._in_order(tuple(sources))
        total = sum(self.lengths) if samples_per_epoch is None else samples_per_epoch
        check_int("samples_per_epoch", total, minimum=1)
        self.samples_per_epoch = total
        self.allow_growth = allow_growth
        # Sources with their own order (a ShardedStream) keep it: their source epoch e is their epoch e.
        self._own = {name: dataset for name, dataset in self.sources.items() if has_own_order(dataset)}
        fresh = Plan.fresh(total, self.names, self.weights, self.lengths, self.schedule)
        self._plan = self._with_orders(fresh, {})
        self._order: tuple[tuple[int, int, bool], EpochOrder] | None = None

    def _with_orders(self, plan: Plan, saved: Mapping[str, Mapping[str, Any]]) -> Plan:
        """``plan`` holding the present own-order sources' configurations, and the retired ones' saved."""
        orders = {name: order for name, order in saved.items() if name in plan.retired}
        orders.update((name, dataset.order_state()) for name, dataset in self._own.items())
        return replace(plan, orders=orders)

    def _in_order(self, names: tuple[str, ...]) -> None:
        """Number the sources in this order (a key's source is its place in ``names``)."""
        self.names = names
        self.weights = tuple(self._weights[name] for name in names)
        self.schedule: tuple[Change, ...] = tuple(
            (start, tuple(later[name] for name in names)) for start, later in self._changes
        )
        self.lengths = tuple(len(self.sources[name]) for name in names)
        self._getters = [self.sources[name].__getitem__ for name in names]
        # A source that fetches a batch at once (a ShardedStream reads a .npy shard's rows in one index).
        self._batch_getters = [getattr(self.sources[name], "__getitems__", None) for name in names]

    # -- dataset ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """``samples_per_epoch``: the samples of one mixture epoch."""
        return self.samples_per_epoch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        # The epoch order cache holds closures over the own-order sources (not picklable), and workers
        # only fetch: the order is the sampler's, in the main process.
        state["_order"] = None
        return state

    def locate_key(self, key: int) -> tuple[str, int]:
        """The ``(source name, index)`` a key refers to (a key is ``index * #sources + source``)."""
        index, k = divmod(key, len(self.names))
        # A source with its own order has its own keys (a packed stream's name their epoch too): it checks them.
        if key < 0 or (index >= self.lengths[k] and self.names[k] not in self._own):
            raise IndexError(f"mixture key {key} is not that of an item (source {k}, index {index})")
        return self.names[k], index

    def __getitem__(self, key: int) -> Any:
        """The item a key refers to (the source's own item)."""
        name, index = self.locate_key(key)
        if self.with_origin:
            return Sourced(self.sources[name][index], name)
        return self.sources[name][index]

    def __getitems__(self, keys: Sequence[int]) -> list[Any]:
        """Fetch a batch (torch's fetcher calls this): one division routes a key to its source; the keys of a
        source that fetches batches (``__getitems__``) go to it together, in delivery order."""
        if self.with_origin:
            names, count = self.names, len(self.names)
            return [Sourced(item, names[key % count]) for item, key in zip(self._fetch(keys), keys, strict=True)]
        return self._fetch(keys)

    def _fetch(self, keys: Sequence[int]) -> list[Any]:
        getters, count = self._getters, len(self._getters)
        if not any(self._batch_getters):
            return [getters[key % count](key // count) for key in keys]
        out: list[Any] = [None] * len(keys)
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key % count, []).append(i)
        for k, places in groups.items():
            batch = self._batch_getters[k]
            indices = [keys[i] // count for i in places]
            items = batch(indices) if batch is not None else [getters[k](index) for index in indices]
            for i, item in zip(places, items, strict=True):
                out[i] = item
        return out

    # -- the order protocol ResumableSampler uses -----------------------------------------------------

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> EpochOrder:
        """Epoch ``epoch``'s order: a callable on int64 position tensors, returning the mixture's keys."""
        key = (seed, epoch, shuffle)
        if self._order is None or self._order[0] != key or self._order[1].plan is not self._plan:
            orders = [self._source_order(name, seed, shuffle) for name in self._plan.names]
            self._order = (key, EpochOrder(self._plan, seed, epoch, shuffle, orders))
        return self._order[1]

    def _source_order(self, name: str, seed: int, shuffle: bool) -> SourceOrder | None:
        dataset = self._own.get(name)
        if dataset is None:
            return None
        return lambda source_epoch: dataset.epoch_order(seed, source_epoch, shuffle)  # type: ignore[no-any-return]

    def order_state(self) -> dict[str, Any]:
        """The mixture's counters as plain JSON types (O(#sources)); the sampler nests them in its state."""
        return self._plan.to_state()

    def load_order_state(
        self, state: Any, *, seed: int, shuffle: bool, epoch: int, cursor: int, source: str = "state_dict"
    ) -> None:
        """Continue from counters saved by :meth:`order_state`, at the sampler's position.

        Changes since the state was saved are applied at that position, by the rules of
        ``mixture/resume.py`` (new weights, sources added or removed, growth with ``allow_growth``).
        Sources are matched by name: when the saved plan is kept, this mixture numbers its sources in the
        plan's order, whatever the order of ``sources`` now.

        Raises:
            InputStateError: for a malformed state, a changed ``samples_per_epoch`` mid-epoch, a shrunk
                source, or a grown one without ``allow_growth``.
        """
        saved = Plan.from_state(state, f"{source}: dataset_order")
        at = (epoch + 1, 0) if cursor >= saved.total else (epoch, cursor)
        if at < (saved.anchor_epoch, saved.anchor_position):
            raise InputStateError(
                f"{source}: dataset_order: the mixture's plan starts at epoch {saved.anchor_epoch}, position "
                f"{saved.anchor_position}, after the state's position (epoch {epoch}, cursor {cursor}): the plan "
                "does not describe that position (the state was edited or assembled from two runs). Resume from "
                "a state the loader saved."
            )
        position = ResumePoint(seed, shuffle, epoch, cursor)
        check_source_orders(saved, self._own, self.sources, position, source)
        now = Configuration(
            self.samples_per_epoch,
            self.names,
            self.weights,
            self.lengths,
            self.allow_growth,
            frozenset(self._own),
            self.schedule,
        )
        self._plan = self._with_orders(resume_plan(saved, now, position, source), saved.orders)
        self._in_order(self._plan.names)
        self._order = None

    def order_moved(self, at: tuple[int, int], to: tuple[int, int], *, seed: int, shuffle: bool) -> None:
        """The sampler moves from ``at`` to ``to`` (``restart_epoch``, ``set_epoch``): a target before the
        plan's anchor (an epoch started over after a change on resume) gets a new plan anchored there.

        The samples that epoch delivered before the change were laid out by a plan the state no longer
        holds; rather than map those positions onto the current plan (which would repeat samples), every
        source continues from its next sample at ``at``: exactly once per source epoch.
        """
        plan = self._plan
        target = (to[0] + 1, 0) if to[1] >= plan.total else to
        if target >= (plan.anchor_epoch, plan.anchor_position):
            return
        now = (at[0] + 1, 0) if at[1] >= plan.total else at
        nexts = plan.consumed(seed, shuffle, *now) if now >= (plan.anchor_epoch, plan.anchor_position) else plan.bases
        cursors = tuple(c.advance(g) for g, c in zip(nexts, plan.cursors, strict=True))
        self._plan = replace(
            plan, anchor_epoch=target[0], anchor_position=target[1], bases=tuple(nexts), cursors=cursors
        )
        self._order = None

    # -- provenance -------------------------------------------------------------------------------------

    def origins(self, epoch: int, positions: Sequence[int], *, seed: int = 0, shuffle: bool = True) -> list[Origin]:
        """Which ``(source, index, source epoch)`` each global position of ``epoch`` delivers, without fetching.

        Args:
            epoch: The mixture epoch.
            positions: Global positions in the epoch (as ``ResumableSampler`` counts them; a padded position
                past the end wraps, as the sampler's does).
            seed: The loader's (sampler's) seed.
            shuffle: The loader's (sampler's) shuffle.
        """
        tensor = torch.tensor(list(positions), dtype=torch.int64) % self.samples_per_epoch
        sources, epochs, indices = self.epoch_order(seed, epoch, shuffle).origins(tensor)
        return [
            Origin(self.names[k], i, e)
            for k, e, i in zip(sources.tolist(), epochs.tolist(), indices.tolist(), strict=True)
        ]

    def counts(self) -> dict[str, int]:
        """Samples of each source in a whole mixture epoch (exact; they sum to ``samples_per_epoch``), with the
        weights in force at the plan's anchor (see :meth:`pieces` for an epoch a schedule cuts)."""
        return dict(zip(self.names, self._plan.counts, strict=True))

    def pieces(self, epoch: int) -> list[tuple[int, int, dict[str, int]]]:
        """Epoch ``epoch`` cut at the schedule's changes: ``(first position, end position, name -> samples)``
        per piece, exact (largest remainder over each piece); one piece without a change inside the epoch."""
        return [
            (piece.start, piece.end, dict(zip(self.names, piece.counts, strict=True)))
            for piece in self._plan.pieces(epoch)
        ]


def _check_schedule(
    sources: Mapping[str, Any], weights: Mapping[str, float] | None, schedule: Schedule
) -> tuple[Mapping[str, float], list[tuple[int, dict[str, float]]]]:
    """The weights from sample 0 and the changes after it, from ``weights`` and ``schedule`` as given."""
    entries = list(schedule)
    previous = -1
    for entry in entries:
        if not isinstance(entry, tuple | list) or len(entry) != 2 or not isinstance(entry[1], Mapping):
            raise ValueError(f"a schedule entry must be (from_sample, {{name: weight}}) (got {entry!r:.200})")
        check_int("from_sample", entry[0], minimum=0)
        if entry[0] <= previous:
            raise ValueError(f"schedule must be strictly ascending in from_sample (got {entry[0]} after {previous})")
        previous = entry[0]
    if weights is None:
        if not entries or entries[0][0] != 0:
            raise ValueError("give weights, or a schedule whose first entry is at sample 0 (from_sample=0)")
        weights, entries = entries[0][1], entries[1:]
    elif entries and entries[0][0] == 0:
        raise ValueError("weights and a schedule entry at sample 0 both give the first weights: give one of them")
    return weights, [(start, dict(later)) for start, later in entries]


def _check_sources(sources: Mapping[str, Any], weights: Mapping[str, float]) -> None:
    if not isinstance(sources, Mapping) or not sources:
        raise ValueError(f"sources must be a non-empty mapping name -> dataset (got {sources!r})")
    if not isinstance(weights, Mapping) or set(weights) != set(sources):
        missing = sorted(set(sources) - set(weights or {}))
        extra = sorted(set(weights or {}) - set(sources))
        raise ValueError(f"weights must name exactly the sources (missing {missing}, unknown {extra})")
    for name, dataset in sources.items():
        _check_source(name, dataset, weights[name])
    if not any(weights.values()):
        raise ValueError(f"at least one weight must be > 0 (got {dict(weights)})")


def _check_source(name: Any, dataset: Any, weight: Any) -> None:
    if not isinstance(name, str):
        raise ValueError(f"source names must be str (got {name!r})")
    try:
        length = len(dataset)
    except TypeError:
        raise ValueError(f"source {name!r} must be a map-style dataset with len() (got {dataset!r})") from None
    if length < 1:
        raise ValueError(f"source {name!r} is empty (got length={length}); a source needs at least one item")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"weight of {name!r} must be a finite number >= 0 (got {weight!r})")

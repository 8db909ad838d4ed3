"""A mixture's plan: per-source counters anchored at one point of the run, from which every epoch's order is arithmetic.

Invariant: from the anchor ``(anchor_epoch, anchor_position)`` on, source ``k``'s samples are numbered
``bases[k], bases[k] + 1, ...`` in delivery order; the rest of the anchor epoch is one segment laid out
with the plan's weights over ``samples_per_epoch - anchor_position`` positions, and each later epoch is
a whole segment of ``samples_per_epoch``. So the number of source ``k``'s first sample in epoch ``e``
is O(1) arithmetic, and the plan is O(#sources) integers: the state is the plan, never a list.
A weight or source change on resume starts a new plan anchored at the resume point (see
``mixture/resume.py``); a plain resume keeps the saved plan, so it reproduces the uninterrupted run.

A weight schedule (``schedule``: the weights' changes after the anchor, at global sample numbers
``epoch * samples_per_epoch + position``) cuts epochs further: an epoch is a run of *pieces*, cut at the
anchor and at every change inside it, and each piece is laid out with the weights in force at its start,
exact counts by largest remainder over the piece. Without a change inside it, an epoch is one piece: the
same layout as without a schedule. The numbers of each source's first sample in a piece are sums of the
pieces' counts before it, by whole epochs at a time (O(#changes) arithmetic, never a replay).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputStateError
from ..order.permutation import mix64
from ..state.schema import FORMAT_VERSION, MIXTURE_KIND, Key, check_header
from ..state.schema import field as state_field
from .layout import SegmentLayout, integer_weights, largest_remainder
from .sources import SourceCursor, SourceOrder, SourceTable, source_seed

__all__ = ["EpochOrder", "Piece", "Plan"]

Weights = tuple[float, ...]
# A weight change: (the global sample it takes effect at, the weights from then on, in the plan's order).
Change = tuple[int, Weights]

_BLOCK_SALT = 0xB10C
# Positions from which a call takes the per-source route (EpochOrder._run_keys); below, per element.
_RUN_MIN = 256
# Its per-source running counts share an int64 per three sources, a field of 21 bits each (_running_ranks):
# up to 2**21 positions; up to _RUN_SOURCES sources (one cumulative sum per three), beyond which per element.
_RUN_FIELD = 21
_RUN_MASK = (1 << _RUN_FIELD) - 1
_RUN_GROUP = 3
_RUN_MAX = 1 << _RUN_FIELD
_RUN_SOURCES = 12


@dataclass(frozen=True, slots=True)
class Piece:
    """A run of an epoch's positions laid out with one set of weights.

    Attributes:
        start: Its first position in the epoch.
        end: The position after its last.
        weights: The weights in force, in the plan's order.
        counts: Per source, its samples in the piece (largest remainder over ``end - start``).
        bases: Per source, the number of its first sample in the piece.
    """

    start: int
    end: int
    weights: Weights
    counts: list[int]
    bases: tuple[int, ...]


def _span_counts(weights: Weights, lo: int, hi: int, total: int) -> list[int]:
    """Per source, its samples in global samples ``[lo, hi)`` of constant ``weights``: the pieces the
    epochs (of ``total``) cut it into, each by largest remainder; whole epochs by multiplication."""
    integers = integer_weights(weights)
    head_end = min(hi, (lo // total + 1) * total)
    counts = largest_remainder(integers, head_end - lo)
    if head_end == hi:
        return counts
    tail_start = max(head_end, (hi // total) * total)
    whole = (tail_start - head_end) // total
    full = largest_remainder(integers, total)
    tail = largest_remainder(integers, hi - tail_start)
    return [c + whole * f + t for c, f, t in zip(counts, full, tail, strict=True)]


@dataclass(frozen=True)
class Plan:
    """The present sources' counters at the anchor, and the retired sources' counters.

    Attributes:
        total: ``samples_per_epoch``.
        names: The present sources, in the mixture's order.
        weights: Their weights as given (int or float; normalised by the layout).
        anchor_epoch: The epoch the plan starts in.
        anchor_position: The position in that epoch it starts at.
        bases: Per present source, the number of its first sample at the anchor.
        cursors: Per present source, its :class:`SourceCursor`.
        retired: Sources removed earlier: name -> (the number of their next sample, their cursor).
        orders: Per source with its own order (present or retired), that order's saved configuration.
        order_recorded: Whether ``names`` is the recorded order (False for a state saved before the order
            was recorded: ``names`` is then that of the ``sources`` dict, which a file sorts).
        schedule: The weights' changes after the anchor, ascending: ``(global sample, weights)``, the weights
            in the plan's order; ``weights`` are in force from the anchor to the first.
    """

    total: int
    names: tuple[str, ...]
    weights: tuple[float, ...]
    anchor_epoch: int
    anchor_position: int
    bases: tuple[int, ...]
    cursors: tuple[SourceCursor, ...]
    retired: Mapping[str, tuple[int, SourceCursor]] = field(default_factory=dict)
    orders: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    order_recorded: bool = True
    schedule: tuple[Change, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "counts", largest_remainder(integer_weights(self.weights), self.total))

    # Per present source, its samples in a whole epoch with the weights in force at the anchor.
    counts: list[int] = field(init=False, repr=False, compare=False)

    @classmethod
    def fresh(
        cls,
        total: int,
        names: tuple[str, ...],
        weights: Weights,
        lengths: tuple[int, ...],
        schedule: tuple[Change, ...] = (),
    ) -> Plan:
        """The plan of a run that starts now: every source at its sample 0."""
        cursors = tuple(SourceCursor.fresh(n) for n in lengths)
        return cls(total, names, weights, 0, 0, (0,) * len(names), cursors, schedule=schedule)

    @property
    def anchor_sample(self) -> int:
        """The anchor as a global sample number."""
        return self.anchor_epoch * self.total + self.anchor_position

    def weights_at(self, sample: int) -> Weights:
        """The weights in force at global sample number ``sample`` (the anchor's before the first change)."""
        weights = self.weights
        for start, changed in self.schedule:
            if start > sample:
                break
            weights = changed
        return weights

    def counts_at(self, sample: int) -> list[int]:
        """Per present source, its samples in a whole epoch with the weights in force at global ``sample``."""
        return largest_remainder(integer_weights(self.weights_at(sample)), self.total)

    def _spans(self, end: int) -> list[tuple[int, int, Weights]]:
        """The runs ``[lo, hi)`` of global samples from the anchor to ``end`` with constant weights."""
        cuts = [(self.anchor_sample, self.weights), *((s, w) for s, w in self.schedule if s < end)]
        ends = [s for s, _ in cuts[1:]] + [end]
        return [(lo, hi, w) for (lo, w), hi in zip(cuts, ends, strict=True) if hi > lo]

    def epoch_bases(self, epoch: int) -> list[int]:
        """Per present source, the number of its first sample in ``epoch`` (its anchor piece's first, for
        the anchor epoch): the anchor's bases plus every piece's counts in between."""
        if epoch <= self.anchor_epoch:
            # An epoch before the anchor (set_epoch backwards after a change on resume): extrapolated with
            # the anchor's weights, so defined, but not what that epoch delivered before the change.
            return [b - (self.anchor_epoch - epoch) * n for b, n in zip(self.bases, self.counts, strict=True)]
        bases = list(self.bases)
        for lo, hi, weights in self._spans(epoch * self.total):
            for k, n in enumerate(_span_counts(weights, lo, hi, self.total)):
                bases[k] += n
        return bases

    def pieces(self, epoch: int) -> list[Piece]:
        """Epoch ``epoch``'s pieces in position order (one without a change inside the epoch)."""
        first = self.anchor_position if epoch == self.anchor_epoch else 0
        origin = epoch * self.total
        if epoch < self.anchor_epoch:
            starts, changes = [0], [self.weights]
        else:
            inside = [(s - origin, w) for s, w in self.schedule if origin + first < s < origin + self.total]
            starts = [first, *(p for p, _ in inside)]
            changes = [self.weights_at(origin + first), *(w for _, w in inside)]
        ends = [*starts[1:], self.total]
        bases = self.epoch_bases(epoch)
        out = []
        for start, end, weights in zip(starts, ends, changes, strict=True):
            counts = largest_remainder(integer_weights(weights), end - start)
            out.append(Piece(start, end, weights, counts, tuple(bases)))
            bases = [b + n for b, n in zip(bases, counts, strict=True)]
        return out

    def layouts(self, seed: int, epoch: int, shuffle: bool) -> list[tuple[Piece, SegmentLayout]]:
        """Each piece of epoch ``epoch`` with its layout."""
        return [(piece, self._layout(seed, epoch, shuffle, piece)) for piece in self.pieces(epoch)]

    def _layout(self, seed: int, epoch: int, shuffle: bool, piece: Piece) -> SegmentLayout:
        block_seed = mix64(seed, epoch, _BLOCK_SALT, piece.start)

        def permute(b: int, size: int) -> torch.Tensor:
            # A block is small: torch's randperm (the algorithm DistributedSampler's order relies on) is
            # one C shuffle, 20x cheaper than evaluating a Feistel network on every slot.
            generator = torch.Generator().manual_seed(mix64(block_seed, b) & (2**63 - 1))
            return torch.randperm(size, generator=generator)

        return SegmentLayout(piece.counts, permute if shuffle else None)

    def consumed(self, seed: int, shuffle: bool, epoch: int, cursor: int) -> list[int]:
        """Per present source, the number of its next sample at position ``cursor`` of ``epoch``."""
        pieces = self.pieces(epoch)
        piece = next((p for p in reversed(pieces) if p.start <= cursor), pieces[0])
        layout = self._layout(seed, epoch, shuffle, piece)
        within = layout.consumed(min(max(cursor - piece.start, 0), layout.total))
        return [b + c for b, c in zip(piece.bases, within, strict=True)]

    # -- state --------------------------------------------------------------------------------------

    def to_state(self) -> dict[str, Any]:
        """The plan as plain JSON types: O(#sources) integers."""
        sources = {
            name: {Key.SOURCE_WEIGHT: w, Key.SOURCE_BASE: b, **_cursor_state(c), **self._nested(name)}
            for name, w, b, c in zip(self.names, self.weights, self.bases, self.cursors, strict=True)
        }
        retired = {
            name: {Key.SOURCE_BASE: g, **_cursor_state(c), **self._nested(name)}
            for name, (g, c) in sorted(self.retired.items())
        }
        return {
            Key.KIND: MIXTURE_KIND,
            Key.VERSION: FORMAT_VERSION,
            Key.MIXTURE_SAMPLES_PER_EPOCH: self.total,
            Key.MIXTURE_ANCHOR_EPOCH: self.anchor_epoch,
            Key.MIXTURE_ANCHOR_POSITION: self.anchor_position,
            Key.MIXTURE_ORDER: list(self.names),
            Key.MIXTURE_SOURCES: sources,
            Key.MIXTURE_RETIRED: retired,
            **self.schedule_state(),
        }

    def schedule_state(self) -> dict[str, Any]:
        """The schedule's changes ahead as the state holds them (``{}`` without any)."""
        if not self.schedule:
            return {}  # the state of a mixture without a schedule is as before schedules
        return {
            Key.MIXTURE_SCHEDULE: [
                {Key.SCHEDULE_FROM: start, Key.SCHEDULE_WEIGHTS: dict(zip(self.names, weights, strict=True))}
                for start, weights in self.schedule
            ]
        }

    def _nested(self, name: str) -> dict[str, Any]:
        order = self.orders.get(name)
        return {} if order is None else {Key.DATASET_ORDER: dict(order)}

    @classmethod
    def from_state(cls, state: Any, source: str) -> Plan:
        """Read a plan saved by :meth:`to_state`, checking every entry.

        Raises:
            InputStateError: naming the entry, the value found and what was expected.
        """
        state = check_header(state, MIXTURE_KIND, source)
        total = _natural(state, Key.MIXTURE_SAMPLES_PER_EPOCH, source, minimum=1)
        anchor_epoch = _natural(state, Key.MIXTURE_ANCHOR_EPOCH, source)
        anchor_position = _natural(state, Key.MIXTURE_ANCHOR_POSITION, source)
        if anchor_position >= total:
            raise InputStateError(
                f"{source}: {Key.MIXTURE_ANCHOR_POSITION}={anchor_position} is invalid; "
                f"expected < {Key.MIXTURE_SAMPLES_PER_EPOCH}={total}"
            )
        table = state_field(state, Key.MIXTURE_SOURCES, dict, source)
        names = _order(state, table, source)
        weights, bases, cursors = [], [], []
        for name in names:
            entry = table[name]
            where = f"{source}: {Key.MIXTURE_SOURCES}[{name!r}]"
            weight = state_field(entry, Key.SOURCE_WEIGHT, (int, float), where)
            if not weight >= 0 or weight == float("inf"):
                raise InputStateError(
                    f"{where}: {Key.SOURCE_WEIGHT}={weight!r} is invalid; expected a finite number >= 0"
                )
            weights.append(weight)
            bases.append(_natural(entry, Key.SOURCE_BASE, where))
            cursors.append(_cursor(entry, where))
        if not names or not any(weights):
            raise InputStateError(
                f"{source}: {Key.MIXTURE_SOURCES} must hold at least one source of weight > 0 (got {names})"
            )
        retired_table = state_field(state, Key.MIXTURE_RETIRED, dict, source)
        retired = {
            name: (
                _natural(entry, Key.SOURCE_BASE, f"{source}: {Key.MIXTURE_RETIRED}[{name!r}]"),
                _cursor(entry, f"{source}: {Key.MIXTURE_RETIRED}"),
            )
            for name, entry in retired_table.items()
        }
        orders = {
            name: state_field(entry, Key.DATASET_ORDER, dict, f"{source}: {where}[{name!r}]")
            for where, entries in ((Key.MIXTURE_SOURCES, table), (Key.MIXTURE_RETIRED, retired_table))
            for name, entry in entries.items()
            if Key.DATASET_ORDER in entry
        }
        return cls(
            total,
            tuple(names),
            tuple(weights),
            anchor_epoch,
            anchor_position,
            tuple(bases),
            tuple(cursors),
            retired,
            orders,
            order_recorded=Key.MIXTURE_ORDER in state,
            schedule=_schedule(state, tuple(names), anchor_epoch * total + anchor_position, source),
        )


def _schedule(state: Mapping[str, Any], names: tuple[str, ...], anchor: int, source: str) -> tuple[Change, ...]:
    """The schedule's changes after the anchor, each checked: ascending global samples after ``anchor``,
    weights naming exactly the present sources, finite, >= 0, one > 0."""
    if Key.MIXTURE_SCHEDULE not in state:
        return ()
    entries = state_field(state, Key.MIXTURE_SCHEDULE, list, source)
    changes: list[Change] = []
    for i, entry in enumerate(entries):
        where = f"{source}: {Key.MIXTURE_SCHEDULE}[{i}]"
        if not isinstance(entry, Mapping):
            raise InputStateError(f"{where}={entry!r:.100} is invalid; expected an object")
        start = _natural(entry, Key.SCHEDULE_FROM, where)
        previous = changes[-1][0] if changes else anchor
        if start <= previous:
            raise InputStateError(
                f"{where}: {Key.SCHEDULE_FROM}={start} is invalid; expected > {previous} (after the anchor, ascending)"
            )
        table = state_field(entry, Key.SCHEDULE_WEIGHTS, dict, where)
        if set(table) != set(names):
            raise InputStateError(
                f"{where}: {Key.SCHEDULE_WEIGHTS} names {sorted(map(str, table))}; expected the sources {sorted(names)}"
            )
        weights = tuple(table[name] for name in names)
        if not all(_weight(w) for w in weights) or not any(weights):
            raise InputStateError(
                f"{where}: {Key.SCHEDULE_WEIGHTS}={table!r:.200} is invalid; expected finite numbers >= 0, one > 0"
            )
        changes.append((start, weights))
    return tuple(changes)


def _weight(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")


def _order(state: Mapping[str, Any], table: Mapping[str, Any], source: str) -> list[str]:
    """The present sources in the plan's order: the recorded list, or (an older state) the dict's order."""
    if Key.MIXTURE_ORDER not in state:
        return list(table)
    order = state_field(state, Key.MIXTURE_ORDER, list, source)
    if not all(isinstance(name, str) for name in order) or len(set(order)) != len(order) or set(order) != set(table):
        raise InputStateError(
            f"{source}: {Key.MIXTURE_ORDER}={order!r:.200} is invalid; "
            f"expected each of the {Key.MIXTURE_SOURCES} entries "
            f"{sorted(map(str, table))} exactly once"
        )
    return order  # type: ignore[no-any-return]


def _cursor_state(cursor: SourceCursor) -> dict[str, int]:
    return {
        Key.SOURCE_EPOCH_START: cursor.epoch_start,
        Key.SOURCE_EPOCH: cursor.source_epoch,
        Key.SOURCE_EPOCH_LENGTH: cursor.epoch_length,
        Key.SOURCE_LENGTH: cursor.length,
    }


def _cursor(entry: Mapping[str, Any], where: str) -> SourceCursor:
    return SourceCursor(
        _natural(entry, Key.SOURCE_EPOCH_START, where),
        _natural(entry, Key.SOURCE_EPOCH, where),
        _natural(entry, Key.SOURCE_EPOCH_LENGTH, where, minimum=1),
        _natural(entry, Key.SOURCE_LENGTH, where, minimum=1),
    )


def _natural(state: Mapping[str, Any], key: str, source: str, minimum: int = 0) -> int:
    value = state_field(state, key, int, source)
    if value < minimum:
        raise InputStateError(f"{source}: {key}={value} is invalid; expected an integer >= {minimum}")
    return value  # type: ignore[no-any-return]


class EpochOrder:
    """One epoch's order of a mixture: positions in ``[0, samples_per_epoch)`` -> the mixture's keys.

    It is what :class:`~torch_input_ckpt.ResumableSampler` uses in place of its permutation. ``orders``:
    per source of the plan, its own order (see :class:`~torch_input_ckpt.mixture.sources.SourceTable`).
    Positions before the anchor in the anchor epoch (only the wrap-around padding of the epoch's end
    reaches them) repeat samples of the anchor's piece onwards, as padding repeats samples.
    """

    def __init__(
        self, plan: Plan, seed: int, epoch: int, shuffle: bool, orders: Sequence[SourceOrder | None] | None = None
    ) -> None:
        self.plan = plan
        self.epoch = epoch
        self._pieces = [
            (piece.start, piece.end, layout, torch.tensor(piece.bases, dtype=torch.int64))
            for piece, layout in plan.layouts(seed, epoch, shuffle)
        ]
        self._start = self._pieces[0][0]
        seeds = [source_seed(seed, name) for name in plan.names]
        self._table = SourceTable(seeds, list(plan.cursors), orders)

    def origins(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(source numbers, source epochs, item indices)`` of int64 ``positions`` of this epoch."""
        q = torch.remainder(positions - self._start, self.plan.total - self._start)
        if len(self._pieces) == 1:
            _, _, layout, bases = self._pieces[0]
            sources, numbers = layout.locate(q)
            epochs, indices = self._table.locate(sources, bases.index_select(0, sources) + numbers)
            return sources, epochs, indices
        return self._across(q + self._start)

    def _across(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`origins` of positions (in the pieces' range) that may fall in several pieces."""
        sources = torch.empty_like(positions)
        numbers = torch.empty_like(positions)
        for start, end, layout, bases in self._pieces:
            mine = torch.nonzero((positions >= start) & (positions < end)).squeeze(1)
            if not mine.numel():
                continue
            found, within = layout.locate(positions.index_select(0, mine) - start)
            sources.index_copy_(0, mine, found)
            numbers.index_copy_(0, mine, bases.index_select(0, found) + within)
        return (sources, *self._table.locate(sources, numbers))

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """The mixture's keys (``index * #sources + source``) of int64 ``positions``."""
        keys = self._run_keys(positions)
        if keys is not None:
            return keys
        sources, _, indices = self.origins(positions)
        return self._table.keys(sources, indices)

    def _run_keys(self, positions: torch.Tensor) -> torch.Tensor | None:
        """The keys of consecutive positions inside one piece (a rank's chunk when it is the only rank), or None.

        The same values as :meth:`origins`, by fewer and cheaper tensor operations: each source's samples in
        a run of positions are its next ones in delivery order (``layout.py``'s invariant), so their item
        indices are one range per source through its permutation with its keys as Python ints, and a running
        count per source (:func:`_running_ranks`) puts them at the source's slots.
        """
        n = positions.numel()
        if not _RUN_MIN <= n < _RUN_MAX or len(self.plan.names) > _RUN_SOURCES or self._table.has_own_orders:
            return None
        first = int(positions[0])
        piece = next((p for p in self._pieces if p[0] <= first and first + n <= p[1]), None)
        if piece is None or int(positions[-1]) != first + n - 1:
            return None
        if not torch.equal(positions, torch.arange(first, first + n, dtype=torch.int64)):
            return None
        start, _, layout, bases = piece
        sources, consumed = layout.run(first - start, first - start + n)
        count = len(consumed)
        rank, taken = _running_ranks(sources, count)
        starts = torch.tensor(list(itertools.accumulate([0, *taken[:-1]])), dtype=torch.int64)
        base = bases.tolist()
        indices = torch.cat([self._table.run(k, base[k] + consumed[k], taken[k]) for k in range(count)])
        return indices.index_select(0, rank + starts.index_select(0, sources)) * count + sources


def _running_ranks(sources: torch.Tensor, count: int) -> tuple[torch.Tensor, list[int]]:
    """Per slot, how many slots of its source come before it; and per source, its slots (``sources`` < 2**21).

    The running counts of three sources share an int64, a 21-bit field each, so one cumulative sum counts
    them all (a 2-D one-hot costs more, and one past 32768 elements goes to torch's thread pool, which
    stalls on busy cores).
    """
    rank = torch.empty_like(sources)
    taken = []
    for group in range(0, count, _RUN_GROUP):
        local = sources - group if group else sources
        mine = (local >= 0) & (local < _RUN_GROUP) if count > _RUN_GROUP else None
        shifts = (local.clamp(0, _RUN_GROUP - 1) if mine is not None else local) * _RUN_FIELD
        ones = mine.to(torch.int64) if mine is not None else torch.ones_like(sources)
        running = torch.cumsum(torch.bitwise_left_shift(ones, shifts), 0)
        last = int(running[-1])
        taken += [(last >> (_RUN_FIELD * k)) & _RUN_MASK for k in range(min(_RUN_GROUP, count - group))]
        ranks = torch.bitwise_and(torch.bitwise_right_shift(running, shifts), _RUN_MASK) - 1
        if mine is None:
            return ranks, taken
        rank = torch.where(mine, ranks, rank)
    return rank, taken

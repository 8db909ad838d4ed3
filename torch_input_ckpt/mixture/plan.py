"""A mixture's plan: per-source counters anchored at one point of the run, from which every epoch's order is arithmetic.

Invariant: from the anchor ``(anchor_epoch, anchor_position)`` on, source ``k``'s samples are numbered
``bases[k], bases[k] + 1, ...`` in delivery order; the rest of the anchor epoch is one segment laid out
with the plan's weights over ``samples_per_epoch - anchor_position`` positions, and each later epoch is
a whole segment of ``samples_per_epoch``. So the number of source ``k``'s first sample in epoch ``e``
is O(1) arithmetic, and the plan is O(#sources) integers: the state is the plan, never a list.
A weight or source change on resume starts a new plan anchored at the resume point (see
``mixture/resume.py``); a plain resume keeps the saved plan, so it reproduces the uninterrupted run.
"""

from __future__ import annotations

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

__all__ = ["EpochOrder", "Plan"]

_BLOCK_SALT = 0xB10C


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

    def __post_init__(self) -> None:
        integers = integer_weights(self.weights)
        object.__setattr__(self, "counts", largest_remainder(integers, self.total))
        rest = self.total - self.anchor_position
        object.__setattr__(self, "segment_counts", largest_remainder(integers, rest))

    counts: list[int] = field(init=False, repr=False, compare=False)
    segment_counts: list[int] = field(init=False, repr=False, compare=False)

    @classmethod
    def fresh(cls, total: int, names: tuple[str, ...], weights: tuple[float, ...], lengths: tuple[int, ...]) -> Plan:
        """The plan of a run that starts now: every source at its sample 0."""
        return cls(total, names, weights, 0, 0, (0,) * len(names), tuple(SourceCursor.fresh(n) for n in lengths))

    def epoch_bases(self, epoch: int) -> list[int]:
        """Per present source, the number of its first sample in ``epoch`` (its anchor-epoch segment's
        first, for the anchor epoch)."""
        if epoch == self.anchor_epoch:
            return list(self.bases)
        if epoch > self.anchor_epoch:
            later = epoch - self.anchor_epoch - 1
            return [b + s + later * n for b, s, n in zip(self.bases, self.segment_counts, self.counts, strict=True)]
        # An epoch before the anchor (set_epoch backwards after a change on resume): extrapolated with
        # the current weights, so defined, but not what that epoch delivered before the change.
        return [b - (self.anchor_epoch - epoch) * n for b, n in zip(self.bases, self.counts, strict=True)]

    def layout(self, seed: int, epoch: int, shuffle: bool) -> tuple[SegmentLayout, int]:
        """The layout epoch ``epoch`` uses, and the position its segment starts at."""
        start = self.anchor_position if epoch == self.anchor_epoch else 0
        counts = self.segment_counts if epoch == self.anchor_epoch else self.counts
        block_seed = mix64(seed, epoch, _BLOCK_SALT, start)

        def permute(b: int, size: int) -> torch.Tensor:
            # A block is small: torch's randperm (the algorithm DistributedSampler's order relies on) is
            # one C shuffle, 20x cheaper than evaluating a Feistel network on every slot.
            generator = torch.Generator().manual_seed(mix64(block_seed, b) & (2**63 - 1))
            return torch.randperm(size, generator=generator)

        return SegmentLayout(counts, permute if shuffle else None), start

    def consumed(self, seed: int, shuffle: bool, epoch: int, cursor: int) -> list[int]:
        """Per present source, the number of its next sample at position ``cursor`` of ``epoch``."""
        layout, start = self.layout(seed, epoch, shuffle)
        within = layout.consumed(min(max(cursor - start, 0), layout.total))
        return [b + c for b, c in zip(self.epoch_bases(epoch), within, strict=True)]

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
        )


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
    reaches them) repeat samples of the anchor segment, as padding repeats samples.
    """

    def __init__(
        self, plan: Plan, seed: int, epoch: int, shuffle: bool, orders: Sequence[SourceOrder | None] | None = None
    ) -> None:
        self.plan = plan
        self.epoch = epoch
        self._layout, self._start = plan.layout(seed, epoch, shuffle)
        self._bases = torch.tensor(plan.epoch_bases(epoch), dtype=torch.int64)
        seeds = [source_seed(seed, name) for name in plan.names]
        self._table = SourceTable(seeds, list(plan.cursors), orders)

    def origins(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(source numbers, source epochs, item indices)`` of int64 ``positions`` of this epoch."""
        q = torch.remainder(positions - self._start, self._layout.total)
        sources, numbers = self._layout.locate(q)
        epochs, indices = self._table.locate(sources, self._bases.index_select(0, sources) + numbers)
        return sources, epochs, indices

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """The mixture's keys (``index * #sources + source``) of int64 ``positions``."""
        sources, _, indices = self.origins(positions)
        return self._table.keys(sources, indices)

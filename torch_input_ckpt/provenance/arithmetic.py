"""Which keys a loader delivers after a saved position: the arithmetic of provenance, on a state alone.

Guarantee: for a map-style :class:`~torch_input_ckpt.ResumableDataLoader` over a
:class:`~torch_input_ckpt.ResumableSampler`, the batches delivered after a saved state are a pure
function of that state and the configuration it records (seed, shuffle, order, dataset length or mixture
plan, world size, batch size, both ``drop_last`` rules, the exclusion list): batch ``j`` after the
position is located in O(1) (whole epochs are counted, not walked) and its keys are computed without
the dataset. Limits: it knows batches, not optimizer steps (``provenance/history.py`` maps steps to batches with
the counts the checkpoints record), and it refuses states it cannot answer for (another sampler kind,
batches delivered out of order beyond the position, an epoch with no batch at all), naming why. A
``ShardedStream``'s keys (alone, or as a ``Mixture``'s source) come from the shard table its state records
(``stream/table.py``: the counts, never the data); a state saved before tables were recorded keeps
arithmetic positions (so a skip works) and refuses only the keys. A mixture's keys
after a checkpoint come from the plan of the run that continued from it (its next checkpoint's, when that
run re-planned at this position on resume).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import torch

from ..errors import InputStateError
from ..mixture.plan import EpochOrder, Plan
from ..order.exclusion import Exclusions
from ..order.permutation import FeistelPermutation, IdentityPermutation, RandpermPermutation
from ..state.schema import MIXTURE_KIND, SAMPLER_KIND, STREAM_KIND, Ahead, Key, LoaderHeader, SamplerState, field
from .streams import RecordedStream, matches, stream_key, stream_keys, target_of

__all__ = ["Spot", "SavedPosition"]

_ORDERS: dict[str, type] = {"feistel": FeistelPermutation, "randperm": RandpermPermutation}
_SCAN_CHUNK = 1 << 20


def _dataset_order(
    sampler: SamplerState, later: Mapping[str, Any] | None, source: str
) -> tuple[Plan | RecordedStream | None, str | None, int]:
    """A dataset order's mixture plan or stream (None: neither), why its keys are not computable (None: they
    are), and the saved plan's ``samples_per_epoch`` (0: no mixture)."""
    if sampler.dataset_order is None:
        return None, None, 0
    order_kind = sampler.dataset_order.get(Key.KIND)
    if order_kind == STREAM_KIND:
        # Positions are arithmetic whatever the table says (a skip is cursor arithmetic); the keys need it.
        return RecordedStream(sampler.dataset_order, f"{source}: {Key.SAMPLER}"), None, 0
    if order_kind != MIXTURE_KIND:
        return None, f"{source}: the sampler's order comes from a {order_kind!r} dataset, not computable here", 0
    saved = Plan.from_state(sampler.dataset_order, f"{source}: {Key.DATASET_ORDER}")
    plan = _continued_plan(saved, sampler, later, source)
    return plan, _plan_unknown(plan, source), saved.total


def _continued_plan(plan: Plan, sampler: SamplerState, later: Mapping[str, Any] | None, source: str) -> Plan:
    """The plan the steps after ``sampler``'s position were delivered with: the next checkpoint's, when that
    run continued from this position (a resume with new weights or sources starts a plan anchored here),
    else this one's."""
    if later is None:
        return plan
    after = field(later, Key.SAMPLER, dict, f"{source} (next checkpoint)").get(Key.DATASET_ORDER)
    if not isinstance(after, Mapping) or after.get(Key.KIND) != MIXTURE_KIND:
        return plan
    newer = Plan.from_state(after, f"{source} (next checkpoint): {Key.DATASET_ORDER}")
    at = (sampler.epoch + 1, 0) if sampler.cursor >= plan.total else (sampler.epoch, sampler.cursor)
    return newer if (newer.anchor_epoch, newer.anchor_position) <= at else plan


def _plan_unknown(plan: Plan, source: str) -> str | None:
    """Why a mixture's keys are not computable from its plan, or None."""
    if not plan.order_recorded and len(plan.names) > 1:
        return (
            f"{source}: {Key.DATASET_ORDER}: the mixture's state does not record the order of its sources (saved "
            "before that was recorded; a checkpoint file sorts them by name), so a key's source is not known"
        )
    others = {n: plan.orders[n].get(Key.KIND) for n in plan.names if n in plan.orders}
    others = {n: kind for n, kind in others.items() if kind != STREAM_KIND}
    if others:
        return (
            f"{source}: {Key.DATASET_ORDER}: the mixture's sources {others} have their own order, not computable here"
        )
    return None


def _own_order(stream: RecordedStream | None, seed: int, shuffle: bool) -> Any:
    """A mixture source's own order as ``EpochOrder`` takes it (source epoch -> positions -> keys), or None."""
    if stream is None:
        return None
    rebuilt = stream.get()
    return lambda source_epoch: rebuilt.epoch_order(seed, source_epoch, shuffle)


@dataclass(frozen=True, slots=True)
class Spot:
    """Where batch ``j`` after a saved position is: the pass (rest of an epoch) and the batch in it.

    Attributes:
        epoch: The epoch.
        start: The global cursor the pass starts at (the saved cursor, or 0 for a later epoch).
        number: The batch's number in the pass.
        count: Samples each rank takes in the pass.
    """

    epoch: int
    start: int
    number: int
    count: int


@dataclass(frozen=True, slots=True)
class SavedPosition:
    """A saved loader position and the configuration of the run that continues from it.

    Attributes:
        epoch: The saved epoch.
        cursor: The saved global cursor (samples all ranks consumed in ``epoch``).
        length: The length the saved epoch covers.
        next_length: The dataset length later epochs cover (differs after a growth).
        seed: The sampler's seed.
        shuffle: Whether epochs are permuted.
        order: ``"feistel"`` or ``"randperm"``.
        sampler_drop_last: ``DistributedSampler``'s rule for the tail that does not divide over the ranks.
        world: The number of ranks that consume from the position.
        batch_size: The loader's batch size (None: unbatched, each key a batch).
        drop_last: The loader's ``drop_last`` (a partial last batch per rank is dropped).
        plan: A mixture's plan (the sampler's ``dataset_order``), or None.
        stream: A ``ShardedStream``'s saved order, rebuilt from its shard table when keys are asked for, or None.
        source_streams: A mixture's sources that are streams, the same way, by name.
        exclusions: Dataset indices left out of epochs (``order/exclusion.py``).
        opaque: Why the keys are not computable from the state (positions still are: a skip works), or None.
    """

    epoch: int
    cursor: int
    length: int
    next_length: int
    seed: int
    shuffle: bool
    order: str
    sampler_drop_last: bool
    world: int
    batch_size: int | None
    drop_last: bool
    plan: Plan | None = None
    stream: RecordedStream | None = None
    source_streams: Mapping[str, RecordedStream] = dataclass_field(default_factory=dict)
    exclusions: Exclusions = Exclusions()
    opaque: str | None = None

    @classmethod
    def from_state(cls, state: Any, source: str, *, later: Mapping[str, Any] | None = None) -> SavedPosition:
        """The position of a saved ``ResumableDataLoader`` state.

        Args:
            state: The loader's ``state_dict()``.
            source: Where it came from (a file), for messages.
            later: The state of the run that continued from this one, saved later (its next checkpoint):
                its world size, batch size and exclusion lists are those of the steps in between.

        Raises:
            InputStateError: for a state this arithmetic cannot answer for, naming what is missing.
        """
        header = LoaderHeader.from_dict(state, source)
        if header.sampler_kind != SAMPLER_KIND:
            raise InputStateError(
                f"{source}: the loader's sampler_kind is {header.sampler_kind!r}; which samples follow a "
                "position is computable only for a ResumableSampler (a custom sampler's order or an "
                "IterableDataset's items are not recorded in the state)"
            )
        ahead = Ahead.from_dict(field(state, Key.AHEAD, dict, source), source)
        if ahead.end:
            raise InputStateError(
                f"{source}: the state holds batches delivered out of order (in_order=False) beyond its "
                "cursor; the batches after it are not a pure function of the position"
            )
        sampler = SamplerState.from_dict(field(state, Key.SAMPLER, dict, source), f"{source}: {Key.SAMPLER}")
        order, opaque, saved_total = _dataset_order(sampler, later, source)
        plan = order if isinstance(order, Plan) else None
        own = [] if plan is None or opaque else [n for n in plan.names if n in plan.orders]
        where = f"{source}: {Key.DATASET_ORDER}: source"
        streams = {n: RecordedStream(plan.orders[n], f"{where} {n!r}") for n in own}  # type: ignore[union-attr]
        length = sampler.length if plan is None else saved_total
        next_length = field(state, Key.DATASET_LENGTH, int, source, low=1) if plan is None else plan.total
        world, batch_size, excluded = sampler.num_replicas, header.batch_size, sampler.excluded
        if later is not None:
            after = SamplerState.from_dict(field(later, Key.SAMPLER, dict, source), f"{source} (next checkpoint)")
            world, excluded = after.num_replicas, after.excluded
            batch_size = LoaderHeader.from_dict(later, f"{source} (next checkpoint)").batch_size
        return cls(
            epoch=sampler.epoch,
            cursor=min(sampler.cursor, length),
            length=length,
            next_length=next_length,
            seed=sampler.seed,
            shuffle=sampler.shuffle,
            order=sampler.order,
            sampler_drop_last=sampler.drop_last,
            world=world,
            batch_size=batch_size,
            drop_last=header.drop_last,
            plan=plan,
            stream=order if isinstance(order, RecordedStream) else None,
            source_streams=streams,
            exclusions=Exclusions.from_state(excluded or [], next_length, f"{source}: {Key.SAMPLER}"),
            opaque=opaque,
        )

    # -- counts ----------------------------------------------------------------------------------------

    @property
    def unit(self) -> int:
        return self.batch_size or 1

    def epoch_length(self, epoch: int) -> int:
        """The samples epoch ``epoch`` permutes (the dataset's, less the excluded ones)."""
        base = self.length if epoch == self.epoch else self.next_length
        return base - self.exclusions.count(epoch)

    def rank_count(self, start: int, length: int) -> int:
        """Samples each rank takes from global ``start`` to the end of an epoch of ``length``."""
        remaining = length - start
        if remaining <= 0:
            return 0
        return remaining // self.world if self.sampler_drop_last else -(-remaining // self.world)

    def batches(self, count: int) -> int:
        """Batches a pass of ``count`` samples per rank delivers."""
        full, rest = divmod(count, self.unit)
        return full + (1 if rest and not (self.drop_last and self.batch_size) else 0)

    def locate(self, offset: int) -> Spot:
        """Where the batch ``offset`` batches after the position is (0: the first one delivered after it).

        Raises:
            InputStateError: if no later epoch has a batch (fewer samples than ranks with drop_last, ...).
        """
        count = self.rank_count(self.cursor, self.epoch_length(self.epoch))
        first = self.batches(count)
        if offset < first:
            return Spot(self.epoch, self.cursor, offset, count)
        offset -= first
        # Later epochs come in runs of equal epochs (a run ends where the exclusion list changes):
        # whole epochs are counted by division, never walked.
        for begin, epochs, count in self._runs():
            per_epoch = self.batches(count)
            if epochs is not None and offset >= per_epoch * epochs:
                offset -= per_epoch * epochs
                continue
            if per_epoch == 0:
                raise InputStateError(
                    f"an epoch of {self.epoch_length(begin)} samples gives no batch on {self.world} ranks "
                    f"with batch_size={self.batch_size}, drop_last={self.drop_last}: no later batch exists"
                )
            whole, number = divmod(offset, per_epoch)
            return Spot(begin + whole, 0, number, count)
        raise AssertionError("unreachable: the last run is endless")  # pragma: no cover

    def _runs(self) -> list[tuple[int, int | None, int]]:
        """The epochs after the saved one as runs of equal epochs: ``(first epoch, how many (None: all the
        rest), samples per rank)``; a run ends where the exclusion list changes."""
        after = self.epoch + 1
        runs: list[tuple[int, int | None, int]] = []
        for change in sorted(f for f in self.exclusions.starts() if f > after):
            runs.append((after, change - after, self.rank_count(0, self.epoch_length(after))))
            after = change
        runs.append((after, None, self.rank_count(0, self.epoch_length(after))))
        return runs

    def advance(self, offset: int) -> tuple[int, int]:
        """The ``(epoch, cursor)`` after ``offset`` more batches (a skip), as the loader would save it."""
        spot = self.locate(offset)
        cursor = spot.start + min(spot.number * self.unit, spot.count) * self.world
        return spot.epoch, cursor

    # -- keys ------------------------------------------------------------------------------------------

    def positions(self, spot: Spot, rank: int) -> torch.Tensor:
        """The global positions (before the padding wraps) of batch ``spot`` on ``rank``."""
        lo = spot.number * self.unit
        hi = min(lo + self.unit, spot.count)
        return torch.arange(lo, hi, dtype=torch.int64) * self.world + (spot.start + rank)

    def keys(self, epoch: int, positions: torch.Tensor) -> list[Any]:
        """The keys at global ``positions`` of ``epoch``: dataset indices, ``(source, index)`` of a mixture,
        ``(shard file, sample number)`` of a stream, or a packed sequence's pieces (``provenance/streams.py``).

        Raises:
            InputStateError: when the state does not determine the keys (``opaque`` says why).
        """
        if self.opaque is not None:
            raise InputStateError(self.opaque)
        length = self.epoch_length(epoch)
        wrapped = positions % length
        if self.plan is not None:
            streams = self.source_streams
            orders = [_own_order(streams.get(n), self.seed, self.shuffle) for n in self.plan.names]
            sources, _, indices = EpochOrder(self.plan, self.seed, epoch, self.shuffle, orders).origins(wrapped)
            names = self.plan.names
            return [
                (names[k], i) if names[k] not in streams else stream_key(names[k], streams[names[k]].get(), i)
                for k, i in zip(sources.tolist(), indices.tolist(), strict=True)
            ]
        if self.stream is not None:
            return stream_keys(self.stream.get(), epoch, wrapped)
        keys = self.permutation(epoch)(wrapped)
        exclusion = self.exclusions.at(epoch)
        if exclusion is not None:
            keys = exclusion.select(keys)
        return keys.tolist()  # type: ignore[no-any-return]

    def permutation(self, epoch: int) -> Any:
        """The permutation of ``epoch`` over its (exclusion-reduced) length."""
        kind = _ORDERS[self.order] if self.shuffle else IdentityPermutation
        return kind(self.epoch_length(epoch), self.seed, epoch)

    def batch(self, offset: int, rank: int) -> tuple[int, list[Any]]:
        """``(epoch, keys)`` of the batch ``offset`` batches after the position, on ``rank``."""
        spot = self.locate(offset)
        return spot.epoch, self.keys(spot.epoch, self.positions(spot, rank))

    # -- the reverse question --------------------------------------------------------------------------

    def occurrences(self, key: int | tuple[str, int], epoch: int) -> Iterator[tuple[int, int]]:
        """Where a sample is delivered in ``epoch``: ``(rank, batch offset after the position)``, padding
        repeats included; nothing for positions before the saved cursor. ``key``: a dataset index, a
        mixture's ``(source, index)`` or a stream's ``(shard file, sample number)``.

        Raises:
            InputStateError: when the keys are not computable, or for an epoch before the saved one.
            ValueError: for a key of another kind than the loader's dataset, or an unknown source or file.
        """
        if self.opaque is not None:
            raise InputStateError(self.opaque)
        if epoch < self.epoch:
            raise InputStateError(f"epoch {epoch} is before the checkpoint's position (epoch {self.epoch})")
        order = self.plan if self.plan is not None else self.stream.get() if self.stream is not None else None
        if (order is None) != isinstance(key, int):
            wanted = "a dataset index" if order is None else "NAME:NUMBER (a source's or shard file's sample)"
            raise ValueError(f"the loader's dataset takes {wanted} as the sample (got {key!r})")
        length = self.epoch_length(epoch)
        start = self.cursor if epoch == self.epoch else 0
        count = self.rank_count(start, length)
        padded = start + count * self.world
        if order is not None:
            assert isinstance(key, tuple)
            found: Iterator[int] = self._scan(order, target_of(order, key), epoch, start, padded)
        else:
            assert isinstance(key, int)
            found = self._positions_of(key, epoch, start, padded)
        before = self._batches_before(epoch)
        for global_position in found:
            rank, k = (global_position - start) % self.world, (global_position - start) // self.world
            number = k // self.unit
            if k < count and number < self.batches(count):
                yield rank, before + number

    def _positions_of(self, index: int, epoch: int, start: int, padded: int) -> Iterator[int]:
        """The global positions (padding repeats included) that deliver dataset index ``index``: inverted."""
        length = self.epoch_length(epoch)
        exclusion = self.exclusions.at(epoch)
        if exclusion is not None:
            rank_index = exclusion.rank(index)
            if rank_index is None:
                return  # excluded from this epoch
            index = rank_index
        if not 0 <= index < length:
            return
        position = int(self.permutation(epoch).inverse(torch.tensor([index], dtype=torch.int64))[0])
        # The padding repeats the epoch's first positions at position + length (+ 2 length, ... when
        # the world exceeds the length).
        yield from (p for p in range(position, padded, length) if p >= start)

    def _scan(self, order: Any, target: tuple[int, int], epoch: int, start: int, padded: int) -> Iterator[int]:
        """The global positions in ``[start, padded)`` that deliver ``target``: keys computed chunk by chunk
        (a mixture's and a stream's orders are not inverted)."""
        length = self.epoch_length(epoch)
        for lo in range(start, padded, _SCAN_CHUNK):
            positions = torch.arange(lo, min(lo + _SCAN_CHUNK, padded), dtype=torch.int64)
            hits = matches(order, self.seed, epoch, self.shuffle, positions % length, target)
            yield from positions[hits].tolist()

    def _batches_before(self, epoch: int) -> int:
        """Batches after the position and before ``epoch`` starts."""
        if epoch == self.epoch:
            return 0
        total = self.batches(self.rank_count(self.cursor, self.epoch_length(self.epoch)))
        for begin, epochs, count in self._runs():
            end = epoch if epochs is None else min(epoch, begin + epochs)
            total += max(0, end - begin) * self.batches(count)
        return total

    def describe(self) -> Mapping[str, Any]:
        """The configuration provenance uses, for ``inspect`` and messages."""
        plan, sources, schedule = self.plan, None, None
        if plan is not None:  # a weight schedule: the counts in force at the position, and the changes ahead
            at = self.epoch * plan.total + self.cursor
            sources = dict(zip(plan.names, plan.counts_at(at), strict=True))
            ahead = plan.schedule_state().get(Key.MIXTURE_SCHEDULE, [])
            schedule = [change for change in ahead if change[Key.SCHEDULE_FROM] > at] or None
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "order": self.order,
            "world_size": self.world,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "sampler_drop_last": self.sampler_drop_last,
            "dataset_length": self.next_length,
            "mixture_sources": sources,
            "mixture_schedule": schedule,
            "excluded": self.exclusions.to_state(),
        }

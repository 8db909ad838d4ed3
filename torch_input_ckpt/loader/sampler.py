"""``ResumableSampler``: a seeded random-access permutation with one global cursor, sharded over ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, Literal

from torch.utils.data import Sampler

from ..base.arguments import check_int
from ..base.world import World
from ..errors import InputStateError
from ..order.cursor import Cursor, epoch_request
from ..order.dataset_order import DatasetOrder, own_order
from ..order.exclusion import Excluded, Exclusions
from ..order.permutation import (
    MAX_LENGTH,
    FeistelPermutation,
    IdentityPermutation,
    RandpermPermutation,
    SeedRange,
    indices_at,
)
from ..state.schema import Key, SamplerState, check_same

__all__ = ["ResumableSampler"]

Order = Literal["feistel", "randperm"]
_ORDERS: dict[str, type] = {"feistel": FeistelPermutation, "randperm": RandpermPermutation}
# Positions are computed this many at a time: large enough that torch's per-call overhead is
# amortised, small enough that memory stays flat whatever the dataset length.
CHUNK = 32768
_FIRST_CHUNK = 64


class ResumableSampler(Sampler[int]):
    """A map-style sampler whose position is a few integers, so saving is O(1) and resuming is a seek.

    Each epoch is a permutation of the dataset's positions chosen by ``(seed, epoch)``. All ranks
    share one *global cursor*: the number of samples all ranks together have consumed this epoch.
    Rank ``r`` of ``W`` takes positions ``cursor + r, cursor + r + W, ...``, so the state does not
    depend on the world size and a job can resume on a different number of ranks: the new ranks
    split what is left of the epoch. Padding and ``drop_last`` follow ``DistributedSampler``'s rules,
    applied to what is left of the epoch (at cursor 0, the orders are those of
    ``DistributedSampler`` when ``order="randperm"``). The exact rules: docs/concepts/design.md, "One global
    cursor".

    The epoch advances by itself when it is exhausted; :meth:`set_epoch` with another epoch starts
    that epoch from its beginning, and with the current epoch changes nothing (so the usual
    ``set_epoch(epoch)`` loop keeps a resumed position).

    Args:
        data_source_or_length: The dataset (anything with ``len``) or its length.
        shuffle: Permute each epoch; ``False`` takes positions in order.
        seed: Chooses the permutations. Must be the same on every rank.
        num_replicas: World size; defaults to ``torch.distributed``'s when initialised, else 1.
        rank: This rank; defaults to ``torch.distributed``'s when initialised, else 0.
        drop_last: Drop the tail that does not divide evenly over ranks instead of padding it.
        order: ``"feistel"`` (O(1) per index, any length up to 2**62) or ``"randperm"`` (the exact
            order of ``DistributedSampler``/``torch.randperm``; O(length) time and memory per epoch).
        allow_growth: Accept a state saved for a shorter dataset (data appended since): the epoch in
            progress finishes over the old length, exactly as it would have, and the next epochs use the
            new length. Off by default: a changed length usually means the wrong dataset.

    A dataset that provides its own epoch order (a
    :class:`~torch_input_ckpt.order.dataset_order.DatasetOrder`: ``epoch_order``, ``order_state``,
    ``load_order_state``, as :class:`~torch_input_ckpt.Mixture` does) replaces the permutation, and its
    state is nested in this sampler's; it then checks its length itself. If it also has ``order_moved(at, to, *, seed,
    shuffle)``, it is told when the position is moved from ``at`` to ``to`` (``set_epoch``,
    ``restart_epoch``: a mixture re-anchors a plan that starts after ``to``). A state that recorded such
    an order is refused by a sampler whose dataset has none.

    Raises:
        ValueError: for a length outside ``[1, 2**62]``, a bad rank or world size, or an unknown order.
    """

    def __init__(
        self,
        data_source_or_length: Sized | int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
        order: Order = "feistel",
        allow_growth: bool = False,
    ) -> None:
        length = data_source_or_length if isinstance(data_source_or_length, int) else len(data_source_or_length)
        if isinstance(length, bool) or not 1 <= length <= MAX_LENGTH:
            raise ValueError(f"dataset length must be in [1, 2**62] (got {length=})")
        if order not in _ORDERS:
            raise ValueError(f"order must be one of {sorted(_ORDERS)} (got {order=})")
        check_int("seed", seed)
        self.world = World.resolve(rank, num_replicas)
        self.length = length
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.order: Order = order
        self.allow_growth = allow_growth
        # (epoch, old length) after a growth on resume: that epoch finishes over the old length.
        self._grown: tuple[int, int] | None = None
        # A dataset with its own epoch order replaces the permutation (see the class docstring).
        self._dataset_order = None if isinstance(data_source_or_length, int) else own_order(data_source_or_length)
        self._dataset_kind = (
            "a length" if isinstance(data_source_or_length, int) else type(data_source_or_length).__name__
        )
        # The position; its generation is bumped by set_epoch/load_state_dict, so that an iterator
        # started before the change stops writing its progress into the new position.
        self._at = Cursor()
        # Set by load_state_dict: the next iter() continues the saved pass literally, even when it has
        # nothing left, as StatefulDataLoader expects (it re-creates the pass's iterator on load and
        # starts a new pass, i.e. calls iter() again, only after that one is exhausted).
        self._resume_pending = False
        # The chunk a live __iter__ is handing out: (generation, cursor at its start, its list iterator,
        # its length), read by position() to know how far the iteration got.
        self._live: tuple[int, int, Iterator[int], int] | None = None
        self._permutation_cache: tuple[tuple[int, int], Any] | None = None
        # Samples left out of later epochs (exclude()); see order/exclusion.py.
        self._exclusions = Exclusions()

    # -- position ---------------------------------------------------------------------------------

    @property
    def dataset_order(self) -> DatasetOrder | None:
        """The dataset that provides this sampler's epoch order (e.g. a ``Mixture``), or None."""
        return self._dataset_order

    @property
    def num_replicas(self) -> int:
        """The world size this sampler shards over."""
        return self.world.size

    @property
    def rank(self) -> int:
        """This sampler's rank."""
        return self.world.rank

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` produces or resumes (a finished epoch counts as the next one)."""
        return self.position()[0]

    @property
    def cursor(self) -> int:
        """Samples consumed by all ranks together in the current epoch (the global cursor)."""
        return self.position()[1]

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless it is already the current epoch (then keep the position).

        After a restore, an epoch behind the restored one is most likely a loop counter that came from
        elsewhere: see :func:`~torch_input_ckpt.order.cursor.epoch_request` for the rule (it warns with
        :class:`~torch_input_ckpt.EpochMismatchWarning`). :meth:`restart_epoch` starts any epoch over.
        """
        current, cursor = self.position()
        action = epoch_request(
            epoch, current, restored=self._at.restored, at_start=cursor == 0, owner=type(self).__name__
        )
        if action == "restart":
            self.move_to(epoch, 0)
        elif action == "finish":
            # The pass of `epoch` that comes next is its (empty) rest; then `current` starts.
            self.move_to(epoch, self.length)
            self._resume_pending = True

    def restart_epoch(self, epoch: int | None = None) -> None:
        """Start ``epoch`` (default: the current one) from its beginning, whatever the position."""
        self.move_to(self.epoch if epoch is None else epoch, 0)

    def rank_count(self, cursor: int = 0) -> int:
        """How many samples this rank takes from ``cursor`` to the end of the epoch (padding included)."""
        # Only an epoch in progress can be a grown one (see epoch_length): an epoch's start (cursor 0,
        # also the next epoch's start when this one is over) covers the current length.
        # At cursor 0 the epoch is the one the position reads as (the next one when this one is over).
        epoch = self._at.epoch if cursor else self.position()[0]
        base = self._base_length(epoch) if cursor else self.length
        remaining = base - self._exclusions.count(epoch) - cursor
        if remaining <= 0:
            return 0
        size = self.world.size
        return remaining // size if self.drop_last else -(-remaining // size)

    def epoch_length(self, epoch: int) -> int:
        """The samples ``epoch`` covers: the dataset length (the old one for the epoch in progress when the
        dataset grew, ``allow_growth``), less the samples excluded from that epoch (:meth:`exclude`)."""
        return self._base_length(epoch) - self._exclusions.count(epoch)

    def _base_length(self, epoch: int) -> int:
        grown = self._grown
        return grown[1] if grown is not None and grown[0] == epoch else self.length

    def exclude(self, indices: Any) -> None:
        """Leave these dataset indices out of every later epoch (a bad-sample list), persistently: the list
        is saved in the state. The epoch in progress keeps its order; from the next one (or at once, at
        an epoch's start) each epoch is a permutation of the samples not excluded, each exactly once.

        Raises:
            ValueError: for an index outside the dataset, a list that leaves nothing, or a dataset with its
                own order (a ``Mixture``).
        """
        if self._dataset_order is not None:
            raise ValueError("exclude() is not supported for a dataset with its own epoch order (a Mixture)")
        epoch, cursor = self.position()
        first = epoch if cursor == 0 else epoch + 1
        self._exclusions = self._exclusions.added(list(indices), first, self.length)

    def exclude_after(self, indices: Any, epoch: int) -> None:
        """Leave these indices out from epoch ``epoch + 1`` on (the loader's bad samples of ``epoch``): unlike
        :meth:`exclude`, the first epoch does not depend on the position, which a batch delivered out of
        order may not have moved yet."""
        if self._dataset_order is not None:
            raise ValueError("exclude() is not supported for a dataset with its own epoch order (a Mixture)")
        self._exclusions = self._exclusions.added(list(indices), epoch + 1, self.length)

    def __len__(self) -> int:
        """Samples this rank takes in a whole epoch, as ``DistributedSampler.num_samples``."""
        return self.rank_count(0)

    @property
    def generation(self) -> int:
        """Bumped whenever the position is moved from outside (:meth:`set_epoch`, :meth:`load_state_dict`,
        :meth:`move_to`): a consumer that started at an older generation must stop committing."""
        return self._at.generation

    def position(self, normalize: bool = True) -> tuple[int, int]:
        """``(epoch, cursor)`` now. With ``normalize``, a pass with nothing left for any rank reads as
        the start of the next epoch (normalising when the position is read, rather than when the last
        index is handed out, keeps readers consistent); an epoch with nothing in it at all (drop_last
        with fewer samples than ranks) stays put."""
        at, live = self._at, self._live
        if live is not None and live[0] == at.generation:
            _, base, handed, size = live
            at.value = base + (size - handed.__length_hint__()) * self.world.size
        if normalize and not self._resume_pending and at.value > 0 and self.rank_count(at.value) == 0:
            return at.epoch + 1, 0
        return at.epoch, at.value

    def move_to(self, epoch: int, cursor: int = 0) -> None:
        """Put the position at ``(epoch, cursor)`` (a move from outside: a new generation)."""
        # A dataset with its own order may need to know (a Mixture whose plan starts after the target).
        moved = getattr(self._dataset_order, "order_moved", None)
        if moved is not None:
            moved(self.position(), (epoch, cursor), seed=self.seed, shuffle=self.shuffle)
        self._at.move_to(epoch, cursor)
        self._grown = None  # a moved position no longer continues the epoch the dataset grew in
        self._resume_pending = False
        self._live = None

    def commit(self, generation: int, epoch: int, cursor: int) -> None:
        """Record progress made by a consumer started at ``generation`` (ignored if moved since).

        A committed position supersedes any chunk an earlier ``__iter__`` was handing out.
        """
        if self._at.commit(generation, epoch, cursor):
            self._live = None
            self._resume_pending = False

    # -- iteration --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's indices from the current position, recording progress as they are taken.

        Progress is recorded when an index is handed out, so inside a plain ``DataLoader`` with
        workers the state runs ahead of the batches the caller received; ``ResumableDataLoader`` and
        ``StatefulDataLoader`` account for that.
        """
        epoch, start = self.position()
        generation = self.generation
        self._at.commit(generation, epoch, start)
        self._resume_pending = False
        step = self.world.size
        count = self.rank_count(start)
        base = start
        for indices, _ in self.chunks(epoch, start, 0, count, with_seeds=False):
            # No per-index bookkeeping: the chunk's list iterator knows how many it has handed out,
            # and position() asks it. `yield from` a list runs at C speed.
            handed = iter(indices)
            self._live = (generation, base, handed, len(indices))
            yield from handed
            base += len(indices) * step
            self.commit(generation, epoch, base)

    def permutation(self, epoch: int) -> Any:
        """The permutation object for ``epoch`` (a callable on int64 position tensors)."""
        if self._dataset_order is not None:
            return self._dataset_order.epoch_order(self.seed, epoch, self.shuffle)
        cached = self._permutation_cache
        length = self.epoch_length(epoch)
        if cached is not None and cached[0] == (epoch, length):
            return cached[1]
        kind = _ORDERS[self.order] if self.shuffle else IdentityPermutation
        perm = kind(length, self.seed, epoch)
        exclusion = self._exclusions.at(epoch)
        if exclusion is not None:
            perm = Excluded(perm, exclusion)
        self._permutation_cache = ((epoch, length), perm)
        return perm

    def chunks(
        self,
        epoch: int,
        start: int,
        first: int,
        count: int,
        *,
        with_seeds: bool,
        chunk: int = CHUNK,
        unit: int = 1,
    ) -> Iterator[tuple[list[int], list[int] | None]]:
        """Yield this rank's indices ``first..count-1`` of the segment that starts at global ``start``.

        Args:
            epoch: Which epoch's permutation.
            start: The global cursor the segment starts at.
            first: The first of this rank's samples to produce (counted from ``start``).
            count: One past the last of this rank's samples to produce.
            with_seeds: Also yield each sample's RNG seed (from its global position).
            chunk: The most indices per yielded list.
            unit: Every list but the last holds a multiple of this many (e.g. the batch size).

        Yields:
            ``(indices, seeds)``: a list, and a :class:`SeedRange` of as many (None unless ``with_seeds``).
        """
        perm = self.permutation(epoch)
        length = self.epoch_length(epoch)
        step, offset = self.world.size, start + self.world.rank
        largest = max(unit, chunk - chunk % unit)
        # The first list is small, so that the first batch after a resume costs little; then the
        # lists grow to `chunk`, where torch's per-call overhead is amortised.
        size = min(largest, unit * max(1, _FIRST_CHUNK // unit))
        lo = first
        while lo < count:
            # Positions past the end wrap to the epoch's start: DistributedSampler's padding.
            indices = indices_at(perm, lo * step + offset, step, min(count, lo + size) - lo, length)
            # Seeds are computed by the fetch side, only for samples whose RNGs it seeds.
            seeds = SeedRange.of(self.seed, epoch, lo * step + offset, step, len(indices)) if with_seeds else None
            yield indices, seeds
            lo += size
            size = min(largest, size * 4)

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position and the configuration it depends on, as plain JSON types (O(1) in size).

        The position is that of the current pass: at the end of an epoch it is ``(epoch, end)``, and
        the first ``iter()`` after loading it yields what is left of that pass (nothing) before the
        next ``iter()`` starts the next epoch. This is what ``StatefulDataLoader`` expects.
        """
        return self.saved_state(normalize=False).to_dict()

    def saved_state(self, normalize: bool) -> SamplerState:
        """The typed state; with ``normalize``, a finished pass reads as the next epoch's start."""
        epoch, cursor = self.position(normalize)
        return SamplerState(
            epoch=epoch,
            cursor=cursor,
            length=self._base_length(epoch),
            seed=self.seed,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            order=self.order,
            num_replicas=self.world.size,
            dataset_order=None if self._dataset_order is None else self._dataset_order.order_state(),
            excluded=self._exclusions.to_state() or None,
        )

    def load_state_dict(self, state_dict: dict[str, Any], *, source: str = "state_dict") -> None:
        """Restore a position saved by :meth:`state_dict`, on this or another world size.

        Raises:
            InputStateError: (a ``ValueError``) when the state is malformed, of another format version,
                or was saved for another dataset length, seed, shuffle, order or ``drop_last``.
        """
        self.load(SamplerState.from_dict(state_dict, source), source, literal=True)

    def _saved_length(self, state: SamplerState, source: str) -> int:
        """The length the saved epoch covers: the current one, or (``allow_growth``) a shorter one."""
        saved = state.length
        if saved == self.length or self._dataset_order is not None:
            return self.length  # a dataset with its own order checks its length itself
        if saved < self.length and self.allow_growth:
            # At an epoch's start the grown dataset starts a fresh epoch at once.
            return self.length if state.cursor == 0 else saved
        fix = (
            "If data was appended, build the sampler with allow_growth=True (the epoch in progress then "
            "finishes over the old length); otherwise resume with the dataset the state was saved for."
            if saved < self.length
            else "A dataset may grow but not shrink: resume with the dataset the state was saved for."
        )
        raise InputStateError(
            f"{source}: the state was saved with length={saved}, but this pipeline has length={self.length}. {fix}"
        )

    def load(self, state: SamplerState, source: str, *, literal: bool) -> None:
        """Restore a parsed state after checking it fits this sampler's configuration.

        Args:
            state: The parsed state.
            source: Where it came from, for messages.
            literal: The next ``iter()`` continues the saved pass literally, even with nothing left in it,
                as ``StatefulDataLoader`` expects (it re-creates the pass's iterator on load and starts a
                new pass only after that one is exhausted). ``ResumableDataLoader`` normalises instead.

        Raises:
            InputStateError: for another dataset length, seed, shuffle, order or ``drop_last``.
        """
        length = self._saved_length(state, source)
        for name, saved, current in (
            ("seed", state.seed, self.seed),
            ("shuffle", state.shuffle, self.shuffle),
            ("drop_last", state.drop_last, self.drop_last),
            ("order", state.order, self.order),
        ):
            check_same(name, saved, current, source, f"Construct the sampler with {name}={saved!r} to resume.")
        if self._dataset_order is None and state.dataset_order is not None:
            found = state.dataset_order.get(Key.KIND)
            raise InputStateError(
                f"{source}: the state was saved over a dataset with its own order (a {found!r}: its "
                f"{Key.DATASET_ORDER!r} entry), but this sampler's dataset ({self._dataset_kind}) "
                f"has none, so its positions would name other samples. Resume with the {found} the state was "
                "saved for."
            )
        if self._dataset_order is not None:
            if state.dataset_order is None:
                raise InputStateError(
                    f"{source}: the state has no {Key.DATASET_ORDER!r} entry, but this sampler's dataset "
                    f"({type(self._dataset_order).__name__}) provides its own order: resume with the dataset "
                    "the state was saved for."
                )
            self._dataset_order.load_order_state(
                state.dataset_order,
                seed=self.seed,
                shuffle=self.shuffle,
                epoch=state.epoch,
                cursor=state.cursor,
                source=source,
            )
        # Any cursor at or past the end means "this pass is over"; store it as `length` so that a state
        # re-saved under another world size stays within that world's bound.
        self._at.move_to(state.epoch, min(state.cursor, length), restored=True)
        self._grown = (state.epoch, length) if length != self.length else None
        self._exclusions = Exclusions.from_state(state.excluded or [], self.length, source)
        self._live = None
        self._resume_pending = literal

"""Map-style loading, shared by the seek and replay backends: the keys workers fetch, and the batches
that reached the caller.

A pass is the rest of one epoch. torch's iterator draws batches of keys from :class:`KeyBatches`
while it is built; each batch it delivers goes through :class:`DeliveredBatches`, which records it
in the pass's :class:`~torch_input_ckpt.order.cursor.Ledger` and commits the prefix to the backend's
position. The backends differ only in where the position lives and how keys are produced.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import BadSampleError
from ..order.cursor import Ledger
from ..state.schema import Ahead, BadSample, Key, field
from .bad_samples import BadSampleLog
from .fetch import FetchDataset, SkippingCollate, TaggedCollate, TaggedKeys

__all__ = ["DeliveredBatches", "KeyBatches", "MapBackend", "MapOptions", "MapPass"]


@dataclass(frozen=True, slots=True)
class MapOptions:
    """What a map-style backend needs to know of its loader (it keeps no reference to the loader itself).

    Attributes:
        batch_size: The loader's batch size (None: every key is its own "batch").
        drop_last: The loader's ``drop_last``.
        tagged: Batches may arrive out of order (``in_order=False`` with workers): tag each with its number.
        reseed: Reseed each sample's RNGs from its key's seed: False, True (the RNGs found in use) or the
            names of the RNGs declared (see ``rng/policy.py``).
        skip: ``on_error="skip"``: samples whose fetch raises are left out of their batch and reported
            beside it (``loader/bad_samples.py``).
    """

    batch_size: int | None
    drop_last: bool
    tagged: bool
    reseed: bool | tuple[str, ...]
    skip: bool = False

    @property
    def unit(self) -> int:
        return self.batch_size or 1


@dataclass(slots=True)
class MapPass:
    """One pass: its epoch, where it starts, how many batches it has (-1: the sampler decides), the
    generation of the position it started from, and its ledger."""

    epoch: int
    start: int
    count: int
    batches: int
    generation: int
    ledger: Ledger
    # In-process fetching only (num_workers=0): asked right before each batch of keys is handed over,
    # whether that batch needs its seeds (Reseeding.wants_seeds). None: always attach them.
    wants_seeds: Callable[[], bool] | None = None


class MapBackend(ABC):
    """The part of the seek and replay backends that is the same: the worker view, the out-of-order
    batches kept as ``ahead``, and the pass loop. Subclasses say where the position lives."""

    kind = ""

    def __init__(self, dataset: Any, collate_fn: Callable[[Any], Any], options: MapOptions) -> None:
        self.dataset = dataset
        self.options = options
        self._keys = KeyBatches(self)
        self._worker_dataset = (
            FetchDataset(dataset, reseed=options.reseed, tagged=options.tagged, skip=options.skip)
            if options.reseed or options.tagged or options.skip
            else None
        )
        self._worker_collate: Callable[[Any], Any] = (
            SkippingCollate(collate_fn) if options.skip else TaggedCollate(collate_fn) if options.tagged else collate_fn
        )
        # Samples skipped so far (kept, and saved, also by a loader that raises: a resumed state's list).
        self.bad_samples = BadSampleLog(None, None)
        # Batches delivered out of order beyond the committed position, and the generation they belong to.
        self._ahead: tuple[int, Ahead] = (0, Ahead())
        # Handed over while torch's iterator is built (it then asks KeyBatches for keys), and only then,
        # so that no reference cycle holds the backend: a cycle would leave persistent workers to the
        # cycle collector, which closes their queues before the iterator can stop them (a 5 s join each).
        self.building: MapPass | None = None
        # Batches delivered since the run began (None: resumed from a state that did not count them).
        self.batches_total: int | None = 0

    # -- what subclasses provide -----------------------------------------------------------------------

    @property
    @abstractmethod
    def epoch(self) -> int: ...

    @property
    @abstractmethod
    def generation(self) -> int: ...

    @abstractmethod
    def set_epoch(self, epoch: int) -> None: ...

    @abstractmethod
    def restart_epoch(self, epoch: int) -> None: ...

    @abstractmethod
    def begin(self, ledger: Ledger) -> MapPass: ...

    @abstractmethod
    def keys(self, run: MapPass) -> Iterator[list[Any]]: ...

    @abstractmethod
    def commit(self, run: MapPass, prefix: int) -> None: ...

    def finished(self, run: MapPass) -> None:  # noqa: B027 - optional hook: most backends need nothing
        """The pass ran to its end (torch's iterator is exhausted)."""

    @abstractmethod
    def batch_count(self) -> int: ...

    @abstractmethod
    def batches_remaining(self) -> int: ...

    # -- the pass ------------------------------------------------------------------------------------------

    @property
    def poll_workers(self) -> Callable[[], None] | None:
        """Read the workers' RNG reports (once per delivered batch), when samples are reseeded."""
        fetch = self._worker_dataset
        return fetch.poll if fetch is not None and fetch.reseed else None

    def reseeded_rngs(self) -> list[str]:
        """The RNGs seeded before every sample so far (the main process's and its workers' findings)."""
        return self._worker_dataset.reseeded_rngs() if self._worker_dataset is not None else []

    def adopt_reseeded(self, names: list[str]) -> None:
        """Seed ``names`` from the next pass's first sample (a resumed state's set)."""
        if self._worker_dataset is not None:
            self._worker_dataset.adopt_reseeded(names)

    def index_batches(self) -> KeyBatches:
        """What torch's iterators draw their keys from."""
        return self._keys

    def worker_view(self) -> tuple[Any, Callable[[Any], Any]] | None:
        """The dataset and collate function the workers run, when they differ from the user's."""
        if self._worker_dataset is None:
            return None
        return self._worker_dataset, self._worker_collate

    def iterate(self, start_torch: Callable[[], Iterator[Any]], *, in_process: bool) -> DeliveredBatches:
        """One pass: build torch's iterator with ``start_torch()`` and record what it delivers.

        ``in_process``: torch fetches in this process (``num_workers=0``), each batch of keys right
        after it is drawn, so a batch that needs no seeds can go without them.
        """
        owner, ahead = self._ahead
        run = self.begin(Ledger(ahead if owner == self.generation else Ahead()))
        fetch = self._worker_dataset
        if in_process and fetch is not None and fetch.reseeding is not None:
            run.wants_seeds = fetch.reseeding.wants_seeds
        self.building = run
        try:
            batches = start_torch()
        finally:
            self.building = None
        # No workers, nothing to poll: the fetch in this process warns itself.
        return DeliveredBatches(self, run, batches, None if in_process else self.poll_workers)

    def delivered(self, run: MapPass, number: int | None, failures: Any = ()) -> None:
        """Record that batch ``number`` (None: the next in order) reached the caller, less the samples in
        ``failures`` (``(key, error)`` pairs, skip mode), which are then recorded as bad.

        Raises:
            BadSampleError: past ``max_errors``, before anything is recorded (the batch does not count).
        """
        new = self.bad_samples.check(run.epoch, failures) if failures else None
        ledger = run.ledger
        if self.batches_total is not None:
            self.batches_total += 1
        prefix = ledger.delivered(ledger.next_in_order() if number is None else number)
        if self.generation != run.generation:
            return  # set_epoch / load_state_dict moved the position since this pass began
        self.commit(run, prefix)
        if ledger.holes or self._ahead[1].end:
            self._ahead = (run.generation, ledger.ahead())
        if new:
            self.bad_samples.record(new)

    # -- state -------------------------------------------------------------------------------------------

    def ahead(self) -> Ahead:
        owner, ahead = self._ahead
        return ahead if owner == self.generation else Ahead()

    def common_state(self) -> dict[str, Any]:
        total = {} if self.batches_total is None else {Key.BATCHES_TOTAL: self.batches_total}
        bad = self.bad_samples.state()
        return {
            Key.DATASET_LENGTH: len(self.dataset),
            Key.AHEAD: self.ahead().to_dict(),
            **total,
            **({Key.BAD_SAMPLES: bad} if bad else {}),
        }

    def load_ahead(self, state: Any, source: str) -> Ahead:
        """The saved ``ahead`` (and, on the way, the saved batch count, which provenance reads, and the bad
        samples recorded so far)."""
        ahead = Ahead.from_dict(field(state, Key.AHEAD, dict, source), source)
        self.bad_samples.load(BadSample.list_from_state(state, source))
        total = state.get(Key.BATCHES_TOTAL)
        self.batches_total = None if total is None else field(state, Key.BATCHES_TOTAL, int, source, low=0)
        return ahead

    def set_ahead(self, ahead: Ahead) -> None:
        self._ahead = (self.generation, ahead)


class DeliveredBatches:
    """The iterator handed to the caller: torch's iterator, recording each batch as it is delivered."""

    def __init__(
        self, backend: MapBackend, run: MapPass, batches: Iterator[Any], poll: Callable[[], None] | None
    ) -> None:
        self._backend = backend
        self._run = run
        self._batches = batches
        self._tagged = backend.options.tagged
        self._skip = backend.options.skip
        # Workers report RNGs they found drawn from without a seed; the main process warns for them.
        self._poll = poll
        # Set when max_errors was exceeded: the pass ends with that error (its ledger would miscount after).
        self._error: BadSampleError | None = None

    def __iter__(self) -> DeliveredBatches:
        return self

    def __len__(self) -> int:
        return len(self._batches)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        if self._skip:
            return self._next_skipping()
        try:
            item = next(self._batches)
        except StopIteration:
            self._backend.finished(self._run)
            raise
        if self._poll is not None:
            self._poll()
        if not self._tagged:
            self._backend.delivered(self._run, None)
            return item
        number, batch = item
        self._backend.delivered(self._run, number)
        return batch

    def _next_skipping(self) -> Any:
        """Skip mode: batches arrive as ``(number, failures, samples, batch)`` (``fetch.SkippingCollate``); a
        batch whose samples all failed counts as delivered but is not handed over (the next one is)."""
        if self._error is not None:
            raise self._error
        while True:
            try:
                number, failures, count, batch = next(self._batches)
            except StopIteration:
                self._backend.finished(self._run)
                raise
            if self._poll is not None:
                self._poll()
            try:
                self._backend.delivered(self._run, number if self._tagged else None, failures)
            except BadSampleError as error:
                self._error = error
                raise
            if count:
                return batch


class KeyBatches:
    """The index sampler torch's iterators draw from: batches of keys for the pass being built.

    It refers to the backend weakly, and the keys it yields do not refer to it at all, because torch's
    iterator (kept by the loader when workers are persistent) holds it.
    """

    def __init__(self, backend: MapBackend) -> None:
        self._backend = weakref.ref(backend)

    def _owner(self) -> MapBackend:
        backend = self._backend()
        if backend is None:
            raise RuntimeError("the ResumableDataLoader this iterator belonged to is gone")
        return backend

    def __len__(self) -> int:
        return self._owner().batch_count()

    def __iter__(self) -> Iterator[Any]:
        backend = self._owner()
        run = backend.building
        if run is None:
            raise RuntimeError(
                "torch's DataLoader iterator asked for indices outside ResumableDataLoader.__iter__ "
                "(an unsupported torch version?)"
            )
        keys = backend.keys(run)
        if backend.options.batch_size is None:
            # Every key is its own "batch": (index, seed) when it carries a seed.
            return (key for key_batch in keys for key in _single_keys(key_batch))
        return keys


def tag(keys: list[Any], number: int, tagged: bool) -> list[Any]:
    """Keys as torch hands them to a worker; tagged with their batch number when delivery may be out of order."""
    if not tagged:
        return keys
    result = TaggedKeys(keys)
    result.number = number
    return result


def _single_keys(keys: list[Any]) -> Any:
    seeds = getattr(keys, "seeds", None)
    return keys if seeds is None else zip(keys, seeds, strict=True)

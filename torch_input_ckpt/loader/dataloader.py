"""``ResumableDataLoader``: torch's DataLoader whose state is the batches the caller received."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Literal, Protocol

import torch
from torch.utils.data import Dataset, IterableDataset, Sampler

from .._compat.torch import HookedDataLoader
from ..base.arguments import check_int
from ..errors import InputCheckpointWarning
from ..order.permutation import warm_base_seed_draw, worker_generator
from ..rng.policy import RESEEDED_KEY, parse_reseed_rng, saved_reseeded
from ..state.schema import Key, LoaderHeader, check_same, field
from .iterable import IterableBackend
from .passes import MapBackend, MapOptions
from .replay import ReplayBackend
from .sampler import ResumableSampler
from .seek import SeekBackend
from .stats import LoaderStats, TimedBatches, WaitClock

__all__ = ["ResumableDataLoader"]


class Backend(Protocol):
    """One strategy for keeping a loader's position (seek, replay, iterable)."""

    kind: str

    @property
    def epoch(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...

    def restart_epoch(self, epoch: int) -> None: ...

    def batches_remaining(self) -> int: ...

    def iterate(self, start_torch: Callable[[], Iterator[Any]], *, in_process: bool) -> Iterator[Any]: ...

    def state(self) -> dict[str, Any]: ...

    def load(self, state: Any, header: LoaderHeader, source: str) -> None: ...

    def index_batches(self) -> Any: ...

    def worker_view(self) -> tuple[Any, Callable[[Any], Any]] | None: ...


class ResumableDataLoader(HookedDataLoader):
    """A drop-in for ``torch.utils.data.DataLoader`` with ``state_dict()`` / ``load_state_dict()``.

    The state describes the batches *delivered to the caller* (not those fetched ahead by workers),
    so ``state_dict()`` taken after the k-th batch resumes at batch k+1, whatever ``num_workers``,
    ``prefetch_factor``, ``persistent_workers`` or ``in_order``. A finished epoch advances
    :attr:`epoch` by itself, and iterating again after a ``break`` continues where the caller
    stopped (exactly as a restored copy would); :meth:`set_epoch` starts an epoch over.

    An ``IterableDataset`` is iterated by torchdata's ``StatefulDataLoader``, which captures each
    worker's dataset state with the batch it delivers. Its ``set_epoch`` (if any) is called before
    each pass. It resumes exactly if it has ``state_dict``/``load_state_dict`` (otherwise it is
    replayed and listed under ``"external"``), with the same ``num_workers`` and world size;
    ``in_order=False`` is delivered in order, and ``reseed_rng`` does not apply.

    The arguments are those of ``DataLoader``, with these differences:

    Args:
        seed: Chooses the shuffling order, and the workers' base seed, per epoch. Replaces
            ``generator``, whose state would change with every pass and so could not be resumed.
        reseed_rng: Which of torch's, NumPy's and Python's global RNGs to seed from ``(seed, epoch,
            position)`` before each sample of a map-style dataset, so that random augmentations in
            ``__getitem__`` are reproduced exactly after a resume and do not depend on
            ``num_workers`` (in the main process they are put back after the batch). ``True`` (the
            default): those the first 16 samples of each process draw from, and any found drawn from
            later (warned at once with :class:`UnseededDrawWarning`, then seeded); an RNG no sample
            draws from costs nothing per sample. A tuple such as ``("torch", "numpy")``: those from
            the first sample, others found as with ``True`` (declare ``"torch"`` for a dataset that
            only reads ``torch.initial_seed()``). ``False``: none (the order still resumes exactly).
            The state records the set seeded (``"reseeded_rngs"``); a resumed loader seeds it.
        sampler: ``None`` (a :class:`ResumableSampler` is built from ``shuffle`` and ``seed``; under
            ``torch.distributed`` it shards over the ranks), a :class:`ResumableSampler`, or any
            other sampler; another sampler is resumed by restoring its ``state_dict`` (if it has
            one) and replaying its indices up to the position, without fetching samples.
        batch_sampler: Not supported: the loader batches itself so that it knows which samples
            each delivered batch holds.
        on_error: ``"raise"`` (the default): an exception from a sample's fetch ends the loop, as in
            torch. ``"skip"`` (map-style datasets with a ``batch_size``): the sample is left out of its
            batch (which is shorter; a batch with no sample left is not delivered), logged once with its
            key and error, recorded in the state (``"bad_samples"``) and, with one rank and a
            :class:`ResumableSampler` over a dataset without its own order, excluded from later epochs.
            Errors that are not a sample's fault (``MemoryError``, ``InputStateError``, connection
            errors and timeouts, ``KeyboardInterrupt``) are raised. See the guide "Bad samples".
        max_errors: With ``on_error="skip"``, the most bad samples one epoch may have on this rank (None:
            no limit); one more raises :class:`~torch_input_ckpt.BadSampleError` listing them.

    Raises:
        ValueError: for ``generator=`` or ``batch_sampler=``, ``on_error="skip"`` with an
            ``IterableDataset`` or ``batch_size=None``, a negative ``max_errors``, and for everything
            ``DataLoader`` rejects.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Sampler | None = None,
        batch_sampler: Sampler | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: Any = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        seed: int = 0,
        reseed_rng: bool | tuple[str, ...] = True,
        on_error: Literal["raise", "skip"] = "raise",
        max_errors: int | None = 100,
    ) -> None:
        _check_arguments(dataset, batch_size, batch_sampler, num_workers, generator, in_order, seed)
        _check_on_error(dataset, batch_size, on_error, max_errors)
        parse_reseed_rng(reseed_rng)  # ValueError naming a bad value
        iterable = isinstance(dataset, IterableDataset)
        if sampler is None and not iterable:
            sampler = ResumableSampler(dataset, shuffle=bool(shuffle), seed=seed)  # type: ignore[arg-type]
            shuffle = None
        common = dict(
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            drop_last=drop_last,
            timeout=timeout,
            worker_init_fn=worker_init_fn,
            multiprocessing_context=multiprocessing_context,
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            pin_memory_device=pin_memory_device,
            in_order=in_order,
        )
        super().__init__(dataset, shuffle=shuffle, sampler=sampler, **common)  # type: ignore[arg-type]
        self.seed = seed
        self.reseed_rng = reseed_rng
        self.on_error = on_error
        self.max_errors = max_errors
        self._backend: Backend = self._make_backend(iterable, common)
        self._clock = WaitClock()
        self._bad_reported = 0
        warm_base_seed_draw()

    def _make_backend(self, iterable: bool, common: dict[str, Any]) -> Backend:
        if iterable:
            # torchdata's StatefulDataLoader iterates it: see loader/iterable.py for why.
            return IterableBackend(self.dataset, self.seed, common, reseed=self.reseed_rng)  # type: ignore[arg-type]
        resumable = isinstance(self.sampler, ResumableSampler)
        options = MapOptions(
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            # Out-of-order delivery needs to know which batch each result is; in-order delivery does
            # not, and then the hot path stays as torch's.
            tagged=not self.in_order and self.num_workers > 0,
            reseed=(self.reseed_rng or True) if resumable and self.reseed_rng is not False else False,
            skip=self.on_error == "skip",
        )
        backend: MapBackend
        if resumable:
            backend = SeekBackend(self.dataset, self.collate_fn, options, self.sampler)  # type: ignore[arg-type]
        else:
            backend = ReplayBackend(self.dataset, self.collate_fn, options, self.sampler, self.batch_sampler)
        if options.skip:
            sampler = self.sampler
            # Exclusion lists must agree over the ranks, and a dataset with its own order has none: there the
            # bad samples are skipped (and recorded) again in each epoch they fail.
            excludable = isinstance(sampler, ResumableSampler) and sampler.dataset_order is None
            exclude = sampler.exclude_after if excludable and sampler.num_replicas == 1 else None  # type: ignore[union-attr]
            backend.bad_samples.max_errors = self.max_errors
            backend.bad_samples.exclude = exclude
        return backend

    # -- position ---------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` produces or resumes."""
        return self._backend.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless it is the current epoch (then keep the position).

        After a restore, an epoch behind the restored one is most likely a loop counter that came from
        elsewhere than :attr:`epoch`: one behind at an epoch boundary makes the next pass the (empty)
        rest of that finished epoch; any other warns and starts it over (:class:`EpochMismatchWarning`;
        the table is in docs/concepts/design.md). :meth:`restart_epoch` starts an epoch over without a warning.
        """
        self._backend.set_epoch(epoch)

    def restart_epoch(self, epoch: int | None = None) -> None:
        """Start ``epoch`` (default: the current one, :attr:`epoch`) from its beginning, whatever the position."""
        self._backend.restart_epoch(self.epoch if epoch is None else epoch)

    def exclude(self, indices: Any) -> None:
        """Leave these dataset indices out of every later epoch, persistently (saved in the state): see
        :meth:`ResumableSampler.exclude`. Under torch.distributed, call it on every rank.

        Raises:
            ValueError: without a :class:`ResumableSampler`, or for indices the sampler refuses.
        """
        if not isinstance(self.sampler, ResumableSampler):
            raise ValueError(
                f"exclude() needs a ResumableSampler (this loader's sampler is {type(self.sampler).__name__})"
            )
        self.sampler.exclude(indices)

    @property
    def batches_remaining(self) -> int:
        """Batches this rank still delivers in the current epoch: ``len(loader)`` less those already
        delivered (after a mid-epoch resume, the rest of the epoch). ``len`` stays the whole epoch's
        count, since learning-rate schedules are computed from it; show this one in a progress bar:
        ``tqdm(loader, total=loader.batches_remaining)``.

        Raises:
            TypeError: for an ``IterableDataset`` without ``__len__``.
        """
        return self._backend.batches_remaining()

    # -- iteration --------------------------------------------------------------------------------

    def _index_batches(self) -> Any:
        # torch's iterators draw their indices from here: keys the fetch side understands, from the
        # loader's position, skipping batches already delivered.
        backend = getattr(self, "_backend", None)  # None while DataLoader.__init__ runs
        return None if backend is None else backend.index_batches()

    def _worker_view(self) -> tuple[Any, Callable[[Any], Any]] | None:
        backend = getattr(self, "_backend", None)
        return None if backend is None else backend.worker_view()

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        backend = self._backend
        # A generator fixed by (seed, epoch) gives the workers reproducible base seeds.
        self.generator = worker_generator(self.seed, backend.epoch)
        return TimedBatches(backend.iterate(super().__iter__, in_process=self.num_workers == 0), self._clock)

    def stats(self) -> LoaderStats:
        """How long the loop waited for batches since the last call (or its first batch), for your own logger.

        ``wait_fraction`` is the share of the wall time between the two calls spent inside ``next()``: call it
        every N steps and log it; near 1 the input pipeline is the bottleneck. Costs two ``perf_counter``
        calls per batch.
        """
        backend = self._backend
        recorded = backend.bad_samples.new if isinstance(backend, MapBackend) else 0
        stats = self._clock.read(recorded - self._bad_reported)
        self._bad_reported = recorded
        return stats

    @property
    def bad_samples(self) -> list[tuple[int, int, str]]:
        """Every sample skipped as bad so far (``on_error="skip"``; a resumed state's included), as
        ``(epoch, key, "TypeName: message")`` in the order delivered."""
        backend = self._backend
        if not isinstance(backend, MapBackend):
            return []
        return [(b.epoch, b.key, b.error) for b in backend.bad_samples.records]

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch delivered, plus the configuration it depends on.

        Plain JSON types only: it can be written as JSON or with ``torch.save`` and read back with
        ``torch.load(..., weights_only=True)``.
        """
        header = LoaderHeader(
            epoch=self.epoch,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            seed=self.seed,
            reseed_rng=self.reseed_rng is not False,
            sampler_kind=self._backend.kind,
        )
        state = {**header.to_dict(), **self._backend.state()}
        if isinstance(self._backend, MapBackend):
            state[RESEEDED_KEY] = self._backend.reseeded_rngs()
        return state

    def load_state_dict(self, state_dict: dict[str, Any], *, source: str = "state_dict") -> None:
        """Continue from a state saved by :meth:`state_dict` at the next ``iter()``.

        Another ``num_workers``, ``prefetch_factor``, ``persistent_workers`` or ``in_order`` is fine
        for a map-style dataset. With a :class:`ResumableSampler`, so are another batch size (the
        stream continues at the same sample) and another world size (the ranks split what is left of
        the epoch), unless the state holds batches delivered out of order beyond its position.
        An ``IterableDataset``'s state is per worker and per rank: ``num_workers`` and the world must
        be the saved ones (``prefetch_factor``, ``persistent_workers`` may change; the batch size too
        if the dataset has state).

        Raises:
            InputStateError: (a ``ValueError``) for a malformed state, or one saved for another
                dataset length, kind of sampler, or (iterable datasets) ``num_workers`` or world,
                naming the saved and the current value.
        """
        header = LoaderHeader.from_dict(state_dict, source)
        backend = self._backend
        check_same(
            "sampler_kind",
            header.sampler_kind,
            backend.kind,
            source,
            "Build the loader with the same kind of sampler (or dataset) it was saved with.",
        )
        if not isinstance(backend, IterableBackend):
            self._check_dataset_length(field(state_dict, Key.DATASET_LENGTH, int, source), source)
            self._load_reseeded(state_dict, header.reseed_rng, source)
        backend.load(state_dict, header, source)

    def _load_reseeded(self, state: dict[str, Any], saved: bool, source: str) -> None:
        current = self.reseed_rng
        names = saved_reseeded(state, source)
        if saved != (current is not False):
            warnings.warn(
                f"{source}: saved with reseed_rng={saved}, resuming with reseed_rng={current}: "
                "the order resumes exactly but random augmentation draws will differ",
                InputCheckpointWarning,
                stacklevel=3,
            )
            return
        declared = parse_reseed_rng(current) or frozenset()
        # Seeding the saved set too keeps every draw exact (an RNG it lacked was never drawn from, or a
        # warning said so). Declaring more than it seeded changes what a sample reads as its seed.
        if not declared <= set(names):
            warnings.warn(
                f"{source}: reseed_rng={current} declares {sorted(declared - set(names))}, which the saved run "
                f"did not seed (it seeded {names}): a sample that reads that RNG's seed (torch.initial_seed()) "
                "now sees another value than in the saved run. Resume with the saved declaration to avoid this.",
                InputCheckpointWarning,
                stacklevel=3,
            )
        if isinstance(self._backend, MapBackend):
            self._backend.adopt_reseeded(names)

    def _check_dataset_length(self, saved: int, source: str) -> None:
        # A dataset with its own epoch order (a Mixture), or a sampler that accepts growth, has the
        # length checked in the sampler's state.
        own_order = callable(getattr(self.dataset, "load_order_state", None))
        if own_order or getattr(self.sampler, "allow_growth", False):
            return
        length = len(self.dataset)  # type: ignore[arg-type]
        fix = "Resume with the dataset the state was saved for."
        if isinstance(self.sampler, ResumableSampler) and saved < length:
            fix += " If data was appended, pass sampler=ResumableSampler(dataset, allow_growth=True)."
        check_same("dataset_length", saved, length, source, fix)


def _check_on_error(dataset: Any, batch_size: int | None, on_error: Any, max_errors: Any) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip" (got {on_error!r})')
    check_int("max_errors", max_errors, minimum=0, none="set no limit")
    if on_error == "skip" and isinstance(dataset, IterableDataset):
        raise ValueError(
            'on_error="skip" needs a map-style dataset: an IterableDataset yields its samples itself, so a '
            "failing one cannot be told apart from its iterator's end (skip inside its __iter__ instead)"
        )
    if on_error == "skip" and batch_size is None:
        raise ValueError('on_error="skip" needs a batch_size (got batch_size=None): a bad sample leaves its batch')


def _check_arguments(
    dataset: Any,
    batch_size: int | None,
    batch_sampler: Any,
    num_workers: int,
    generator: Any,
    in_order: bool,
    seed: Any,
) -> None:
    if generator is not None:
        raise ValueError(
            "ResumableDataLoader takes seed= instead of generator=: a generator's state changes with "
            "every pass and cannot be restored exactly (got a torch.Generator)"
        )
    if batch_sampler is not None:
        raise ValueError(
            "ResumableDataLoader does not take batch_sampler=: pass batch_size= and drop_last= "
            f"(and sampler=) so that it knows which samples each batch holds (got {batch_sampler!r})"
        )
    check_int("seed", seed)
    if batch_size is None and not in_order and num_workers > 0 and not isinstance(dataset, IterableDataset):
        raise ValueError(
            "in_order=False needs batch_size to be set, so that each delivered batch can be identified "
            f"(got {batch_size=}, {in_order=})"
        )

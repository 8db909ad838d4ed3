"""``ResumableDataLoader``: torch's DataLoader whose state is the batches the caller received."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from .errors import InputCheckpointWarning, InputStateError
from .fetch import FetchDataset, TaggedCollate
from .iterable import IterableState
from .passes import Ahead, DeliveredBatches, KeyBatches, Pass
from .permutation import worker_generator
from .sampler import ResumableSampler
from .state import FORMAT_VERSION, check_header, check_same, field

__all__ = ["ResumableDataLoader"]

log = logging.getLogger("torch_input_ckpt")


class ResumableDataLoader(DataLoader):
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
        reseed_rng: Before each sample of a map-style dataset is fetched, seed torch's, NumPy's and
            Python's global RNGs from ``(seed, epoch, position)`` (and, in the main process, put
            them back after the batch), so random augmentations in ``__getitem__`` are reproduced
            exactly after a resume and do not depend on ``num_workers``. Costs ~10 µs per sample
            (plus ~160 µs per batch with ``num_workers=0``); turn off if you need none of it.
        sampler: ``None`` (a :class:`ResumableSampler` is built from ``shuffle`` and ``seed``; under
            ``torch.distributed`` it shards over the ranks), a :class:`ResumableSampler`, or any
            other sampler; another sampler is resumed by restoring its ``state_dict`` (if it has
            one) and replaying its indices up to the position, without fetching samples.
        batch_sampler: Not supported: the loader batches itself so that it knows which samples
            each delivered batch holds.

    Raises:
        ValueError: for ``generator=`` or ``batch_sampler=``, and for everything ``DataLoader`` rejects.
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
        reseed_rng: bool = True,
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
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"seed must be an int (got {seed=})")
        iterable = isinstance(dataset, IterableDataset)
        if batch_size is None and not in_order and num_workers > 0 and not iterable:
            raise ValueError(
                "in_order=False needs batch_size to be set, so that each delivered batch can be identified "
                f"(got {batch_size=}, {in_order=})"
            )
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
        if iterable:
            # torchdata's StatefulDataLoader iterates it: see iterable.py for why.
            self._iterable: IterableState | None = IterableState(dataset, seed, common)  # type: ignore[arg-type]
            return
        self._iterable = None
        self._resumable = isinstance(self.sampler, ResumableSampler)
        # Out-of-order delivery needs to know which batch each result is; in-order delivery of
        # fixed-size batches does not, and then the hot path stays as torch's.
        self._tagged = not in_order and num_workers > 0
        self._keys = KeyBatches(self)
        self._fetch_dataset = (
            FetchDataset(dataset, reseed=reseed_rng and self._resumable, tagged=self._tagged)
            if (reseed_rng and self._resumable) or self._tagged
            else None
        )
        self._fetch_collate = TaggedCollate(self.collate_fn) if self._tagged else None
        # Batches delivered out of order beyond the committed cursor, as batch numbers relative to
        # it, and the sampler generation they belong to.
        self._ahead: tuple[int, Ahead] = (0, Ahead())
        # The position of a sampler that is not a ResumableSampler: epoch and batches delivered,
        # and the sampler's own state at the start of that epoch's pass (if it has one).
        self._custom_epoch = 0
        self._custom_delivered = 0
        self._custom_start_state: Any = None
        self._custom_generation = 0
        self._pass: Pass | None = None

    # -- position ---------------------------------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` produces or resumes."""
        if self._iterable is not None:
            return self._iterable.epoch
        if self._resumable:
            return self.sampler.epoch  # type: ignore[attr-defined]
        return self._custom_epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless it is the current epoch (then keep the position)."""
        if self._iterable is not None:
            self._iterable.set_epoch(epoch)
        elif self._resumable:
            self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        elif epoch != self._custom_epoch:
            self._move_custom(epoch)
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)

    # -- iteration --------------------------------------------------------------------------------

    @property
    def _index_sampler(self) -> Any:
        # torch's iterators draw their indices from here (a private hook of DataLoader that exists so
        # that `sampler`/`batch_sampler` keep their public meaning): ours yields keys the fetch side
        # understands, from the loader's position, skipping batches already delivered.
        if getattr(self, "_keys", None) is None:
            return super()._index_sampler
        return self._keys

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        if self._iterable is not None:
            return self._iterable.iterate()
        run = Pass(self)
        # A generator fixed by (seed, epoch) gives the workers reproducible base seeds.
        self.generator = worker_generator(self.seed, run.epoch)
        # torch's iterator asks KeyBatches for its keys while it is built (also when persistent
        # workers are reset); the pass is handed over only for that moment, so that the loader is in no
        # reference cycle: a cycle would leave persistent workers to the cycle collector, which closes
        # their queues before the iterator can tell them to stop (each then waits out a 5 s join).
        self._pass = run
        try:
            batches = super().__iter__()
        finally:
            self._pass = None
        return DeliveredBatches(run, batches)

    def _get_iterator(self) -> Any:
        if self._iterable is not None or self._fetch_dataset is None:
            return super()._get_iterator()
        # torch's iterators read `dataset` and `collate_fn` from the loader when they start their
        # workers; show them the key-aware versions for that moment only, so the public attributes
        # stay the user's. DataLoader forbids assigning `dataset` after __init__, hence object.__setattr__.
        user_dataset, user_collate = self.dataset, self.collate_fn
        object.__setattr__(self, "dataset", self._fetch_dataset)
        if self._fetch_collate is not None:
            self.collate_fn = self._fetch_collate
        try:
            return super()._get_iterator()
        finally:
            object.__setattr__(self, "dataset", user_dataset)
            self.collate_fn = user_collate

    # -- state ------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch delivered, plus the configuration it depends on.

        Plain JSON types only: it can be written as JSON or with ``torch.save`` and read back with
        ``torch.load(..., weights_only=True)``.
        """
        state: dict[str, Any] = {
            "kind": "ResumableDataLoader",
            "version": FORMAT_VERSION,
            "epoch": self.epoch,
            "batch_size": self.batch_size,
            "drop_last": self.drop_last,
            "num_workers": self.num_workers,
            "seed": self.seed,
            "reseed_rng": self.reseed_rng,
            "sampler_kind": self._sampler_kind(),
        }
        if self._iterable is not None:
            state.update(self._iterable.state_dict())
            return state
        state["dataset_length"] = len(self.dataset)  # type: ignore[arg-type]
        owner, ahead = self._ahead
        state["ahead"] = (ahead if owner == self._generation() else Ahead()).to_state()
        if self._resumable:
            # Normalised: a finished epoch is saved as the start of the next one, matching `epoch`.
            state["sampler"] = self.sampler._state(normalize=True)  # type: ignore[attr-defined]
        else:
            state["batches_delivered"] = self._custom_delivered
            state["sampler"] = self._custom_start_state
            state["external"] = [] if hasattr(self.sampler, "state_dict") else [self._sampler_kind()]
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
        state = check_header(state_dict, "ResumableDataLoader", source)
        check_same(
            "sampler_kind",
            field(state, "sampler_kind", str, source),
            self._sampler_kind(),
            source,
            "Build the loader with the same kind of sampler (or dataset) it was saved with.",
        )
        if self._iterable is not None:
            self._iterable.load_state_dict(state, source)
            return
        length = len(self.dataset)  # type: ignore[arg-type]
        saved_length = field(state, "dataset_length", int, source)
        # A dataset with its own epoch order (a Mixture), or a sampler that accepts growth, checks the
        # length in the sampler's state.
        own_order = callable(getattr(self.dataset, "load_order_state", None))
        if not own_order and not getattr(self.sampler, "allow_growth", False):
            fix = "Resume with the dataset the state was saved for."
            if self._resumable and saved_length < length:
                fix += " If data was appended, pass sampler=ResumableSampler(dataset, allow_growth=True)."
            check_same("dataset_length", saved_length, length, source, fix)
        saved_reseed = field(state, "reseed_rng", bool, source)
        if saved_reseed != self.reseed_rng:
            warnings.warn(
                f"{source}: saved with reseed_rng={saved_reseed}, resuming with "
                f"reseed_rng={self.reseed_rng}: "
                "the order resumes exactly but random augmentation draws will differ",
                InputCheckpointWarning,
                stacklevel=2,
            )
        batch_size = field(state, "batch_size", (int, type(None)), source)
        ahead = Ahead.from_state(field(state, "ahead", dict, source), source)
        if self._resumable:
            sampler: ResumableSampler = self.sampler  # type: ignore[assignment]
            saved_world = field(field(state, "sampler", dict, source), "num_replicas", int, source)
            if ahead.end and (batch_size, saved_world) != (self.batch_size, sampler.num_replicas):
                raise InputStateError(
                    f"{source}: the state holds batches delivered out of order (in_order=False) beyond its "
                    "cursor, which can only be skipped with the same batch size and world size; saved "
                    f"batch_size={batch_size}, world size={saved_world}, now batch_size={self.batch_size}, "
                    f"world size={sampler.num_replicas}. Resume with the saved values."
                )
            sampler.load_state_dict(state["sampler"], source=source)
            sampler._resume_pending = False  # the loader normalises positions itself
            if batch_size != self.batch_size:
                log.info("%s: batch size %s -> %s; same sample position", source, batch_size, self.batch_size)
        else:
            check_same("batch_size", batch_size, self.batch_size, source, "Resume with the same batch_size.")
            start_state = state.get("sampler")
            epoch = field(state, "epoch", int, source)
            self._move_custom(epoch, field(state, "batches_delivered", int, source), start_state)
            if start_state is not None:
                self.sampler.load_state_dict(start_state)  # type: ignore[attr-defined]
            elif hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
        self._ahead = (self._generation(), ahead)

    def _generation(self) -> int:
        """Bumped whenever the position is moved from outside (set_epoch, load_state_dict)."""
        if self._resumable:
            return self.sampler._generation  # type: ignore[attr-defined,no-any-return]
        return self._custom_generation

    def _move_custom(self, epoch: int, delivered: int = 0, start_state: Any = None) -> None:
        self._custom_epoch, self._custom_delivered, self._custom_start_state = epoch, delivered, start_state
        self._custom_generation += 1

    def _prepare_custom_pass(self) -> None:
        """Put a custom sampler where this epoch's pass began, so that replaying it reaches the position."""
        sampler = self.sampler
        if not hasattr(sampler, "state_dict"):
            return
        if self._custom_delivered == 0 or self._custom_start_state is None:
            self._custom_start_state = sampler.state_dict()
        else:
            sampler.load_state_dict(self._custom_start_state)

    def _sampler_kind(self) -> str:
        if self._iterable is not None:
            return "IterableDataset"
        if self._resumable:
            return "ResumableSampler"
        return type(self.sampler).__qualname__

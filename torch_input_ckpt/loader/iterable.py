"""Iterable datasets: resumed through torchdata's ``StatefulDataLoader``, which snapshots each worker's
dataset state at the batch the caller received. We reuse its worker machinery rather than write our own."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset
from torchdata.stateful_dataloader import StatefulDataLoader

from .._compat import torchdata as compat
from ..base.world import World
from ..errors import InputStateError
from ..order.cursor import Cursor, epoch_request
from ..order.permutation import worker_generator
from ..rng.policy import parse_reseed_rng
from ..rng.reseeded import ReseededIterable
from ..state.schema import ITERABLE_KIND, Key, LoaderHeader, check_plain, field, is_stateful

__all__ = ["IterableBackend"]

log = logging.getLogger("torch_input_ckpt")


class IterableBackend:
    """The epoch counter, and the ``StatefulDataLoader`` that iterates an ``IterableDataset``.

    torchdata's loader captures each worker's dataset state with the batch it sends
    (``snapshot_every_n_steps=1``), so its ``state_dict()`` is the position of the batches delivered,
    not of those prefetched. Around it we keep what it does not: the epoch, a worker base seed chosen
    by ``(seed, epoch)`` rather than by a generator whose state would be lost on resume, the
    configuration checks that torchdata only asserts, and the world the state was saved in.

    Args:
        dataset: The user's ``IterableDataset``.
        seed: The loader's seed.
        options: The ``DataLoader`` arguments (``batch_size``, ``num_workers``, ...).
    """

    def __init__(
        self, dataset: IterableDataset, seed: int, options: dict[str, Any], *, reseed: bool | tuple[str, ...]
    ) -> None:
        if not options.get("in_order", True) and options.get("num_workers", 0) > 0:
            # torchdata gives no resume guarantee for out-of-order iterable batches (it only logs so), and
            # which worker's batch comes first is a race. Delivering in order is one of the orders
            # in_order=False permits, and it is the one that resumes exactly.
            log.info("IterableDataset with in_order=False: delivering batches in order, which resumes exactly")
        options = {**options, "in_order": True}
        self.dataset = dataset
        # A stateful dataset resumes mid-epoch in a fresh worker, whose RNGs would not be where the
        # uninterrupted worker's were: its samples are reseeded one by one (a stateless one is replayed
        # from the epoch's start, draws included).
        declared = parse_reseed_rng(reseed)
        served: IterableDataset = dataset
        # Workers report RNGs they found drawn from without a seed; the main process warns for them.
        self._poll: Callable[[], None] | None = None
        if declared is not None and is_stateful(dataset):
            served = ReseededIterable(dataset, seed, World.detect().rank, declared)
            if options.get("num_workers", 0) > 0:
                self._poll = served.reseeding.poll
        with warnings.catch_warnings():
            # torchdata 0.11 calls torch.set_vital, deprecated in torch 2.13: not the user's concern.
            warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
            self.delegate = StatefulDataLoader(served, snapshot_every_n_steps=1, **options)
        self.seed = seed
        # The epoch; its generation is bumped when the position is moved from outside (set_epoch,
        # load_state_dict), so that a pass started before does not advance the epoch when it ends.
        self._at = Cursor()
        # A loaded torchdata state that no pass has picked up yet: returned as is by state_dict(), so that
        # saving right after loading needs no worker start-up and changes nothing.
        self._pending: dict[str, Any] | None = None
        # The next pass delivers nothing (see set_epoch).
        self._empty_pass = False
        # Whether a pass was started since the last move or the end of an epoch, and whether it is
        # still open (not run to its end).
        self._started = False
        self._open = False

    kind = ITERABLE_KIND

    @property
    def poll_workers(self) -> Callable[[], None] | None:
        """Read the workers' RNG reports (once per delivered batch), when samples are reseeded in workers."""
        return self._poll

    @property
    def num_workers(self) -> int:
        return int(self.delegate.num_workers)

    @property
    def epoch(self) -> int:
        return self._at.epoch

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless it is the current epoch (see :func:`epoch_request`)."""
        at = self._at
        at_start = self._pending is None and not self._started
        action = epoch_request(epoch, at.epoch, restored=at.restored, at_start=at_start, owner="ResumableDataLoader")
        if action != "keep":
            self._move(epoch, {})
            # "finish": the next pass is the (empty) rest of `epoch`, which the restored run had finished.
            self._empty_pass = action == "finish"

    def restart_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, whatever the position."""
        self._move(epoch, {})

    def iterate(self, start_torch: Any = None, *, in_process: bool = False) -> Iterator[Any]:
        """One pass: the rest of the current epoch (torchdata's loader builds its own iterator)."""
        if self._empty_pass:
            self._empty_pass = False
            return _IterablePass(self, iter(()))
        delegate = self.delegate
        if self._pending is None and self._open:
            # The caller left the previous pass early: continue where it stopped, exactly as a restored
            # copy would (a bare StatefulDataLoader would start the epoch over instead).
            delegate.load_state_dict(delegate.state_dict())
        self._pending = None
        self._started = self._open = True
        dataset = delegate.dataset
        if hasattr(dataset, "set_epoch"):
            # Reaches the workers' copies when they are forked for this pass; persistent workers keep
            # theirs, so a dataset used with them must also move to its next epoch by itself.
            dataset.set_epoch(self._at.epoch)
        delegate.generator = worker_generator(self.seed, self._at.epoch)
        return _IterablePass(self, iter(delegate))

    def batches_remaining(self) -> int:
        """``len`` of the loader (the dataset's ``__len__``; TypeError without one) less this epoch's delivered."""
        total = len(self.delegate)
        inner = self.state()[Key.INNER]
        done = compat.stateful_dataloader_batches(inner) if inner else 0
        return max(0, total - (done or 0))

    def state(self) -> dict[str, Any]:
        """The loader state's entries for an iterable dataset (merged into the loader's state)."""
        if self._pending is not None:
            inner = self._pending
        elif not self._started:
            # Nothing iterated since the last move or the end of an epoch: the start of the epoch.
            # (Asking torchdata would start the workers just to report their initial states.)
            inner = {}
        else:
            inner = self.delegate.state_dict()
            try:
                check_plain(inner, "state['inner']")
            except TypeError as error:
                # torchdata's own entries are plain; what is not comes from the dataset's state_dict().
                raise TypeError(
                    f"{error}. The IterableDataset's state_dict() (kept per worker under 'dataset_state') "
                    "must return JSON types so that the state can be saved as JSON and loaded without "
                    "unpickling: convert tensors and NumPy values with .tolist() or int()/float()."
                ) from None
        world = World.detect()
        return {Key.INNER: inner, Key.WORLD_SIZE: world.size, Key.RANK: world.rank, Key.EXTERNAL: self._external()}

    def load(self, state: Any, header: LoaderHeader, source: str) -> None:
        """Restore the entries written by :meth:`state`, after checking they fit this pipeline."""
        saved_workers = header.num_workers
        if saved_workers != self.num_workers:
            raise InputStateError(
                f"{source}: the state was saved with num_workers={saved_workers}, but this pipeline has "
                f"num_workers={self.num_workers}. An IterableDataset's position is kept per worker (each "
                "worker's copy of the dataset holds the position in its own shard), and those positions "
                "cannot be re-split over another number of workers (a map-style dataset's can). Resume "
                f"with num_workers={saved_workers}."
            )
        world = World.detect()
        for name, current in ((Key.WORLD_SIZE, world.size), (Key.RANK, world.rank)):
            saved = field(state, name, int, source, low=0)
            if saved != current:
                raise InputStateError(
                    f"{source}: the state was saved with {name}={saved}, but this process has "
                    f"{name}={current}. An IterableDataset's state is kept per rank and per worker, and "
                    "cannot be re-split over another number of ranks (a map-style dataset's can). Resume "
                    "on the saved world size, each rank loading its own state."
                )
        batch_size = header.batch_size
        if batch_size != self.delegate.batch_size and not is_stateful(self.dataset):
            raise InputStateError(
                f"{source}: the state was saved with batch_size={batch_size}, but this pipeline has "
                f"batch_size={self.delegate.batch_size}. An IterableDataset without state_dict is resumed by "
                "replaying and skipping the batches already delivered, which needs the saved batch size. "
                f"Resume with batch_size={batch_size}."
            )
        inner = field(state, Key.INNER, dict, source)
        key = compat.STATEFUL_INNER_KEY[self.num_workers > 0]
        if inner and key not in inner:
            raise InputStateError(
                f"{source}: the iterable loader state has no {key!r} entry (keys found: {sorted(inner)}); "
                "it is damaged or was not written by ResumableDataLoader"
            )
        self._move(header.epoch, inner, restored=True)

    def _move(self, epoch: int, inner: dict[str, Any], *, restored: bool = False) -> None:
        self._at.move_to(epoch, restored=restored)
        self._empty_pass = False
        self._started = self._open = False
        self._pending = inner or None
        self.delegate.load_state_dict(inner)
        if not inner:
            # StatefulDataLoader.load_state_dict({}) keeps a state loaded before: drop it.
            compat.stateful_dataloader_drop_pending(self.delegate)

    def finished(self, generation: int) -> None:
        """A pass started at ``generation`` ran to its end."""
        if self._at.commit(generation, self._at.epoch + 1, 0):
            # The next epoch's start: saved as {} rather than as torchdata's finished iterator, whose
            # restore would start workers (or replay a whole epoch of a dataset without state) only
            # to find it over. As on the map-style path, a finished epoch reads as the next one.
            self._started = self._open = False

    @property
    def generation(self) -> int:
        return self._at.generation

    def index_batches(self) -> None:
        return None

    def worker_view(self) -> None:
        return None

    def _external(self) -> list[str]:
        dataset = self.dataset
        if is_stateful(dataset):
            return []
        return [
            f"IterableDataset {type(dataset).__qualname__} has no state_dict/load_state_dict: it is resumed "
            "by replaying the epoch from its start and skipping the batches already delivered, which is "
            "exact only if it yields the same items in the same order again (and costs re-reading them)"
        ]


class _IterablePass:
    """The iterator handed to the caller: torchdata's, advancing the epoch when it is exhausted."""

    def __init__(self, owner: IterableBackend, batches: Iterator[Any]) -> None:
        self._owner = owner
        self._generation = owner.generation
        self._batches = batches
        self._poll = owner.poll_workers

    def __iter__(self) -> _IterablePass:
        return self

    def __len__(self) -> int:
        return len(self._batches)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        try:
            batch = next(self._batches)
        except StopIteration:
            self._owner.finished(self._generation)
            raise
        if self._poll is not None:
            self._poll()
        return batch

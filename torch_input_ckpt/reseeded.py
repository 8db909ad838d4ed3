"""A stateful ``IterableDataset`` whose samples' random draws survive a resume: each sample reseeded.

Guarantee: before the user's iterator produces its ``k``-th sample of an epoch, torch's, NumPy's (if
imported) and Python's global RNGs are seeded from ``(seed, epoch, rank, worker, k)``, and ``k`` is
saved with the dataset's own state. A resumed worker therefore draws exactly what the uninterrupted
one drew (same ``num_workers`` and world, as for any iterable state), whereas a worker restarted from
its base seed would not. In the main process (``num_workers=0``) the RNGs are put back after each
sample, so the model's RNG streams are untouched.

Limit: a state saved without the count (by a version before this wrapper) resumes the order exactly
but not the draws; loading one warns.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from . import fetch
from .errors import InputCheckpointWarning
from .permutation import mix64
from .schema import Key

__all__ = ["ReseededIterable"]


class ReseededIterable(IterableDataset):
    """Wraps a stateful ``IterableDataset``: reseeds the global RNGs per sample, and counts the samples.

    Args:
        dataset: The user's dataset (with ``state_dict``/``load_state_dict``).
        seed: The loader's seed.
        rank: This process's rank (samples of different ranks draw differently).
    """

    def __init__(self, dataset: IterableDataset, seed: int, rank: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.rank = rank
        self.epoch = 0
        self.count = 0
        # Whether this copy's last pass ran to its end and no state was loaded since: then the next
        # iter() is the next epoch's (persistent workers never see set_epoch).
        self._exhausted = False

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.count, self._exhausted = epoch, 0, False
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        # Not a generator function: the bookkeeping (and the user's iter()) happens at iter(), before
        # torchdata reads the state of a worker whose new pass has not produced a sample yet.
        if self._exhausted:
            self.epoch, self.count, self._exhausted = self.epoch + 1, 0, False
        info = get_worker_info()
        worker = 0 if info is None else info.id
        in_main = info is None
        samples = self._reseeded(lambda: iter(self.dataset), worker, -1, in_main)
        return self._samples(samples, worker, in_main)

    def _samples(self, samples: Iterator[Any], worker: int, in_main: bool) -> Iterator[Any]:
        while True:
            try:
                item = self._reseeded(lambda: next(samples), worker, self.count, in_main)
            except StopIteration:
                self._exhausted = True
                return
            self.count += 1
            yield item

    def _reseeded(self, call: Any, worker: int, number: int, in_main: bool) -> Any:
        saved = fetch.capture_rngs() if in_main else None
        fetch.reseed(mix64(self.seed, self.epoch, self.rank, worker, number) & 0xFFFFFFFF)
        try:
            return call()
        finally:
            if saved is not None:
                fetch.restore_rngs(saved)

    def state_dict(self) -> dict[str, Any]:
        return {Key.DATASET: self.dataset.state_dict(), Key.YIELDED: self.count, Key.EPOCH: self.epoch}  # type: ignore[attr-defined]

    def load_state_dict(self, state: Any) -> None:
        self._exhausted = False
        if isinstance(state, dict) and Key.YIELDED in state and Key.DATASET in state:
            self.dataset.load_state_dict(state[Key.DATASET])  # type: ignore[attr-defined]
            self.count, self.epoch = int(state[Key.YIELDED]), int(state[Key.EPOCH])
            return
        warnings.warn(
            "an IterableDataset state saved without its sample count (by an older torch_input_ckpt): the "
            "stream resumes exactly, but random draws after the resume differ from the uninterrupted run",
            InputCheckpointWarning,
            stacklevel=2,
        )
        self.dataset.load_state_dict(state)  # type: ignore[attr-defined]
        self.count = 0

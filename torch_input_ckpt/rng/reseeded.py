"""A stateful ``IterableDataset`` whose samples' random draws survive a resume: each sample reseeded.

Guarantee: before the user's iterator produces its ``k``-th sample of an epoch, the global RNGs it
draws from (torch's, NumPy's, Python's) are seeded from ``(seed, epoch, rank, worker, k)``, and ``k``
is saved with the dataset's own state. Which RNGs: the policy of map-style datasets
(:class:`~torch_input_ckpt.rng.policy.Reseeding`: declared, found on the first samples of each
process, or found drawn from later and warned about), applied per sample, its set saved in each
worker's state and adopted on load. A resumed worker therefore draws exactly what the uninterrupted
one drew (same ``num_workers`` and world, as for any iterable state), whereas a worker restarted from
its base seed would not. In the main process (``num_workers=0``) the RNGs seeded are put back after
each sample, so the model's RNG streams are untouched.

Limit: a state saved without the count (by a version before this wrapper) resumes the order exactly
but not the draws; loading one warns. A state saved without the set seeded all three RNGs.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from ..errors import InputCheckpointWarning, InputStateError
from ..order.permutation import mix64
from ..state.schema import Key
from .fingerprints import RNG_NAMES, prepare
from .policy import RESEEDED_KEY, Reseeding

__all__ = ["ReseededIterable"]


class ReseededIterable(IterableDataset):
    """Wraps a stateful ``IterableDataset``: reseeds the global RNGs in use per sample, and counts the samples.

    Args:
        dataset: The user's dataset (with ``state_dict``/``load_state_dict``).
        seed: The loader's seed.
        rank: This process's rank (samples of different ranks draw differently).
        declared: The RNGs to seed from the first sample (the loader's ``reseed_rng`` as names).
    """

    def __init__(self, dataset: IterableDataset, seed: int, rank: int, declared: frozenset[str]) -> None:
        self.dataset = dataset
        self.seed = seed
        self.rank = rank
        self.reseeding = Reseeding(declared)
        prepare()
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
        samples = self._reseeded(lambda: iter(self.dataset), worker, -1)
        return self._samples(samples, worker)

    def _samples(self, samples: Iterator[Any], worker: int) -> Iterator[Any]:
        while True:
            try:
                item = self._reseeded(lambda: next(samples), worker, self.count)
            except StopIteration:
                self._exhausted = True
                return
            self.count += 1
            yield item

    def _reseeded(self, call: Any, worker: int, number: int) -> Any:
        # One "batch" of one sample for the policy: its "index" (named in a warning) is the number.
        seed = mix64(self.seed, self.epoch, self.rank, worker, number) & 0xFFFFFFFF
        return self.reseeding.fetch(_Calls(call), [number], [seed])[0]

    def state_dict(self) -> dict[str, Any]:
        return {
            Key.DATASET: self.dataset.state_dict(),  # type: ignore[attr-defined]
            Key.YIELDED: self.count,
            Key.EPOCH: self.epoch,
            RESEEDED_KEY: sorted(self.reseeding.reseeded),  # this copy's (a worker's) set
        }

    def load_state_dict(self, state: Any) -> None:
        self._exhausted = False
        if isinstance(state, dict) and Key.YIELDED in state and Key.DATASET in state:
            self.dataset.load_state_dict(state[Key.DATASET])  # type: ignore[attr-defined]
            self.count, self.epoch = int(state[Key.YIELDED]), int(state[Key.EPOCH])
            names = state.get(RESEEDED_KEY, RNG_NAMES)  # saved before the key existed: all three seeded
            if not isinstance(names, list | tuple) or not all(isinstance(n, str) and n in RNG_NAMES for n in names):
                raise InputStateError(
                    f"an IterableDataset worker state has {RESEEDED_KEY}={names!r}; expected a list of names "
                    f"from {RNG_NAMES}"
                )
            self.reseeding.adopt(names)
            return
        warnings.warn(
            "an IterableDataset state saved without its sample count (by an older torch_input_ckpt): the "
            "stream resumes exactly, but random draws after the resume differ from the uninterrupted run",
            InputCheckpointWarning,
            stacklevel=2,
        )
        self.dataset.load_state_dict(state)  # type: ignore[attr-defined]
        self.count = 0


class _Calls:
    """A stand-in dataset whose every item is one call of ``call``: the policy's fetch, for one step of
    an iterator."""

    __slots__ = ("call",)

    def __init__(self, call: Any) -> None:
        self.call = call

    def __getitem__(self, _number: int) -> Any:
        return self.call()

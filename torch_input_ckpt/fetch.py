"""What workers run per batch: per-sample RNG reseeding, and tags that say which batch a result is."""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info

__all__ = ["FetchDataset", "TaggedCollate", "TaggedKeys", "capture_rngs", "reseed", "restore_rngs"]


class TaggedKeys(list):
    """A batch of sampler keys that remembers its batch number (survives pickling to workers)."""

    number: int


class _TaggedSamples(list):
    number: int


def reseed(seed: int) -> None:
    """Seed torch's, NumPy's (if imported) and Python's global RNGs with one sample's seed.

    ``torch.default_generator.manual_seed`` is used rather than ``torch.manual_seed``, which also
    visits every accelerator and costs ~90 µs instead of ~1 µs. NumPy is seeded only if the dataset
    imported it: this library does not depend on NumPy.
    """
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed)


def capture_rngs() -> tuple[Any, Any, Any]:
    """The global RNGs' states (torch's, Python's, NumPy's if imported), for :func:`restore_rngs`."""
    numpy = sys.modules.get("numpy")
    return torch.get_rng_state(), random.getstate(), numpy.random.get_state() if numpy is not None else None


def restore_rngs(saved: tuple[Any, Any, Any]) -> None:
    """Put the global RNGs back as :func:`capture_rngs` found them."""
    torch_state, python_state, numpy_state = saved
    torch.set_rng_state(torch_state)
    random.setstate(python_state)
    if numpy_state is not None:
        sys.modules["numpy"].random.set_state(numpy_state)


class FetchDataset(torch.utils.data.Dataset):
    """The dataset as the loader's workers see it: keys in, the user's samples out.

    With ``reseed``, a key is ``(index, seed)`` and the global RNGs are seeded from ``seed`` before
    ``dataset[index]``, then put back as they were after the batch, so the draws a sample makes
    depend on what the sample is, not on which worker fetched it or what ran before, and the main
    process's RNG streams (dropout, ...) are untouched when ``num_workers=0``. (In a worker they are
    left as the last sample's: nothing else there depends on them, and putting them back costs ~160 µs
    per batch.)
    With ``tagged``, the batch number of the keys is handed on to :class:`TaggedCollate`.
    """

    def __init__(self, dataset: Any, *, reseed: bool, tagged: bool) -> None:
        self.dataset = dataset
        self.reseed = reseed
        self.tagged = tagged

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if not self.reseed:
            return self.dataset[key]
        if get_worker_info() is not None:
            return self._fetch_reseeded(key)
        saved = capture_rngs()
        try:
            return self._fetch_reseeded(key)
        finally:
            restore_rngs(saved)

    def _fetch_reseeded(self, key: tuple[int, int]) -> Any:
        index, seed = key
        reseed(seed)
        return self.dataset[index]

    def __getitems__(self, keys: Sequence[Any]) -> list[Any]:
        if self.reseed and get_worker_info() is not None:
            # In a worker nothing else relies on the global RNGs' state: no need to put it back.
            samples = [self._fetch_reseeded(key) for key in keys]
        elif self.reseed:
            # One capture/restore per batch, not per sample: it costs ~160 µs (NumPy's state is most of it).
            saved = capture_rngs()
            try:
                samples = [self._fetch_reseeded(key) for key in keys]
            finally:
                restore_rngs(saved)
        elif getattr(self.dataset, "__getitems__", None):
            samples = self.dataset.__getitems__(list(keys))
        else:
            samples = [self.dataset[index] for index in keys]
        if not self.tagged:
            return samples
        tagged = _TaggedSamples(samples)
        tagged.number = keys.number  # type: ignore[attr-defined]
        return tagged


class TaggedCollate:
    """Collate with the user's function, returning ``(batch_number, batch)`` so that out-of-order
    delivery can still be accounted batch by batch. A tuple survives pin-memory threads unchanged."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: _TaggedSamples) -> tuple[int, Any]:
        return samples.number, self.collate_fn(list(samples))

"""What workers run per batch: per-sample RNG reseeding, tags that say which batch a result is, and (with
``on_error="skip"``) the samples whose fetch raised, carried to the main process beside the batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..rng.fingerprints import prepare
from ..rng.policy import Reseeding, parse_reseed_rng
from .bad_samples import describe, is_sample_error

__all__ = ["FetchDataset", "SkippingCollate", "TaggedCollate", "TaggedKeys"]


class TaggedKeys(list):
    """A batch of sampler keys that remembers its batch number and, when RNGs may be reseeded, the
    samples' seeds (a :class:`~torch_input_ckpt.order.permutation.SeedRange`); both survive pickling to workers."""

    number: int
    seeds: Any = None


class _TaggedSamples(list):
    number: int
    # (key, "Type: message") of each sample whose fetch raised (skip mode only)
    failures: tuple[tuple[int, str], ...] = ()


class FetchDataset(torch.utils.data.Dataset):
    """The dataset as the loader's workers see it: keys in, the user's samples out.

    With ``reseed``, keys are a :class:`TaggedKeys` of indices with their ``seeds`` (a single key, with
    ``batch_size=None``, is ``(index, seed)``), and before ``dataset[index]`` the global RNGs the
    dataset draws from are seeded from ``seed`` (:class:`~torch_input_ckpt.rng.policy.Reseeding`
    decides which: declared, found on the first samples, or found later and warned). In the main
    process (``num_workers=0``) the RNGs seeded are put back as they were after the batch, so that its
    RNG streams (dropout, ...) are untouched; in a worker nothing else relies on them.
    With ``tagged``, the batch number of the keys is handed on to :class:`TaggedCollate`.

    Args:
        dataset: The user's map-style dataset.
        reseed: ``False``, ``True`` (find the RNGs in use) or the names of the RNGs to seed from the
            first sample (others are still found), as the loader's ``reseed_rng``.
        tagged: Keys are :class:`TaggedKeys`.
        skip: ``on_error="skip"``: a batch whose fetch raises a sample's error (:func:`is_sample_error`) is
            fetched again key by key (each with its own seed, so the others come out as they would have),
            the keys that raise are left out, and the result carries them as ``failures`` for
            :class:`SkippingCollate`. The same code runs in a worker and in the main process.
    """

    def __init__(self, dataset: Any, *, reseed: bool | Sequence[str], tagged: bool, skip: bool = False) -> None:
        self.dataset = dataset
        # The dataset's batched read (ShardedStream, Mixture, ...): used whenever no sample is seeded.
        self._getitems = getattr(dataset, "__getitems__", None)
        declared = parse_reseed_rng(reseed)
        self.reseed = declared is not None
        self.reseeding = Reseeding(declared) if declared is not None else None
        if declared is not None:
            prepare()
        self.tagged = tagged
        self.skip = skip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: Any) -> Any:
        if self.reseeding is None:
            return self.dataset[key]
        if type(key) is not tuple:  # an index alone: in process, with no RNG to seed (Reseeding.wants_seeds)
            return self.reseeding.fetch(self.dataset, [key], None)[0]
        index, seed = key
        return self.reseeding.fetch(self.dataset, [index], [seed])[0]

    def __getitems__(self, keys: Sequence[Any]) -> list[Any]:
        if self.skip:
            samples, failures = self._fetch_skipping(keys)
        else:
            samples, failures = self._fetch(keys), ()
        if not self.tagged and not self.skip:
            return samples
        tagged = _TaggedSamples(samples)
        tagged.number = keys.number if self.tagged else -1  # type: ignore[attr-defined]
        tagged.failures = failures
        return tagged

    def _fetch(self, keys: Sequence[Any]) -> list[Any]:
        reseeding = self.reseeding
        if reseeding is not None:
            # Type checks, not getattr: a missing attribute costs an exception, and this runs per batch.
            getitems = self._getitems
            if type(keys) is TaggedKeys:
                return reseeding.fetch(self.dataset, keys, keys.seeds, getitems)
            if keys and type(keys[0]) is tuple:  # keys of (index, seed) pairs
                pairs = [k[1] for k in keys]
                return reseeding.fetch(self.dataset, [k[0] for k in keys], pairs, getitems)
            # without seeds: in process, with no RNG to seed (Reseeding.wants_seeds)
            return reseeding.fetch(self.dataset, keys, None, getitems)
        if self._getitems is not None:
            return self._getitems(list(keys))
        return [self.dataset[index] for index in keys]

    def _fetch_skipping(self, keys: Sequence[Any]) -> tuple[list[Any], tuple[tuple[int, str], ...]]:
        """The batch's samples, less those whose fetch raised a sample's error, and those keys with their errors.

        The batch is fetched whole first (a dataset's ``__getitems__`` may read it at once); only a batch
        that raised is fetched again key by key, to find which samples are bad.
        """
        try:
            return self._fetch(keys), ()
        except Exception as error:
            if not is_sample_error(error):
                raise
        samples: list[Any] = []
        failures: list[tuple[int, str]] = []
        for i in range(len(keys)):
            single = _one_key(keys, i)
            try:
                samples.extend(self._fetch(single))
            except Exception as error:
                if not is_sample_error(error):
                    raise
                key = keys[i]
                failures.append((key[0] if type(key) is tuple else int(key), describe(error)))
        return samples, tuple(failures)

    def reseeded_rngs(self) -> list[str]:
        """The RNGs seeded before every sample so far, here or in the workers (sorted; [] without reseed)."""
        return self.reseeding.current() if self.reseeding is not None else []

    def adopt_reseeded(self, names: Sequence[str]) -> None:
        """Seed ``names`` from the first sample of the next pass on (a resumed state's set)."""
        if self.reseeding is not None:
            self.reseeding.adopt(names)

    def poll(self) -> None:
        """Main process, once per delivered batch: take in (and warn for) what the workers found."""
        if self.reseeding is not None:
            self.reseeding.poll()


def _one_key(keys: Sequence[Any], i: int) -> list[Any]:
    """The ``i``-th key of a batch as a batch of one, with its seed when the batch carries seeds."""
    if type(keys) is not TaggedKeys:
        return [keys[i]]
    single = TaggedKeys([keys[i]])
    single.number = keys.number
    single.seeds = None if keys.seeds is None else keys.seeds.part(i, 1)
    return single


class SkippingCollate:
    """Collate with the user's function, returning ``(batch number or -1, failures, samples, batch)``: the keys
    whose fetch raised (with their errors) travel beside the batch, so that the main process records them
    when the batch is *delivered*, not when a worker fetched it ahead. A batch whose samples all failed is
    not collated (``batch`` None, ``samples`` 0). A tuple survives pin-memory threads unchanged."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: _TaggedSamples) -> tuple[int, tuple[tuple[int, str], ...], int, Any]:
        count = len(samples)
        batch = self.collate_fn(list(samples)) if count else None
        return samples.number, samples.failures, count, batch


class TaggedCollate:
    """Collate with the user's function, returning ``(batch_number, batch)`` so that out-of-order
    delivery can still be accounted batch by batch. A tuple survives pin-memory threads unchanged."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: _TaggedSamples) -> tuple[int, Any]:
        return samples.number, self.collate_fn(list(samples))

"""What workers run per batch: per-sample RNG reseeding, and tags that say which batch a result is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..rng.fingerprints import prepare
from ..rng.policy import Reseeding, parse_reseed_rng

__all__ = ["FetchDataset", "TaggedCollate", "TaggedKeys"]


class TaggedKeys(list):
    """A batch of sampler keys that remembers its batch number and, when RNGs may be reseeded, the
    samples' seeds (a :class:`~torch_input_ckpt.order.permutation.SeedRange`); both survive pickling to workers."""

    number: int
    seeds: Any = None


class _TaggedSamples(list):
    number: int


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
    """

    def __init__(self, dataset: Any, *, reseed: bool | Sequence[str], tagged: bool) -> None:
        self.dataset = dataset
        # The dataset's batched read (ShardedStream, Mixture, ...): used whenever no sample is seeded.
        self._getitems = getattr(dataset, "__getitems__", None)
        declared = parse_reseed_rng(reseed)
        self.reseed = declared is not None
        self.reseeding = Reseeding(declared) if declared is not None else None
        if declared is not None:
            prepare()
        self.tagged = tagged

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
        reseeding = self.reseeding
        if reseeding is not None:
            # Type checks, not getattr: a missing attribute costs an exception, and this runs per batch.
            getitems = self._getitems
            if type(keys) is TaggedKeys:
                samples = reseeding.fetch(self.dataset, keys, keys.seeds, getitems)
            elif keys and type(keys[0]) is tuple:  # keys of (index, seed) pairs
                pairs = [k[1] for k in keys]
                samples = reseeding.fetch(self.dataset, [k[0] for k in keys], pairs, getitems)
            else:  # without seeds: in process, with no RNG to seed (Reseeding.wants_seeds)
                samples = reseeding.fetch(self.dataset, keys, None, getitems)
        elif self._getitems is not None:
            samples = self._getitems(list(keys))
        else:
            samples = [self.dataset[index] for index in keys]
        if not self.tagged:
            return samples
        tagged = _TaggedSamples(samples)
        tagged.number = keys.number  # type: ignore[attr-defined]
        return tagged

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


class TaggedCollate:
    """Collate with the user's function, returning ``(batch_number, batch)`` so that out-of-order
    delivery can still be accounted batch by batch. A tuple survives pin-memory threads unchanged."""

    def __init__(self, collate_fn: Callable[[Any], Any]) -> None:
        self.collate_fn = collate_fn

    def __call__(self, samples: _TaggedSamples) -> tuple[int, Any]:
        return samples.number, self.collate_fn(list(samples))

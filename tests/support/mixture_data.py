"""Shared pieces of the mixture tests: sources of co-prime lengths whose items say what they are, and
the exactly-once check per source epoch, made from the delivered items themselves."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from torch_input_ckpt import Mixture, ResumableDataLoader

# Co-prime lengths; over 31 samples an epoch, "a" (16 of 7 items) is up-sampled and "b" (6 of 11),
# "c" (9 of 13) are down-sampled.
LENGTHS = {"a": 7, "b": 11, "c": 13}
WEIGHTS = {"a": 0.5, "b": 0.2, "c": 0.3}
TAGS = {"a": 0, "b": 1, "c": 2, "d": 3, "e": 4}
SPAN = 1000  # an item's id is TAGS[source] * SPAN + index


class Source(Dataset):
    """Item ``i`` of source ``name``: its id and one draw of torch's global RNG (a random augmentation)."""

    def __init__(self, name: str, length: int) -> None:
        self.name = name
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        return {"id": TAGS[self.name] * SPAN + index, "draw": torch.rand(()).item()}


def mixture(lengths: dict[str, int] | None = None, weights: dict[str, float] | None = None, **options: Any) -> Mixture:
    lengths = LENGTHS if lengths is None else lengths
    weights = WEIGHTS if weights is None else weights
    return Mixture({name: Source(name, n) for name, n in lengths.items()}, weights, **options)


def loader(
    dataset: Mixture | None = None, *, batch_size: int = 4, seed: int = 3, **options: Any
) -> ResumableDataLoader:
    return ResumableDataLoader(
        mixture() if dataset is None else dataset, batch_size=batch_size, shuffle=True, seed=seed, **options
    )


def ids(stream: Iterable[tuple[int, Any]]) -> list[int]:
    """The ids of the samples of a stream of ``(epoch, batch)``, in delivery order."""
    return [i for _, batch in stream for i in batch["id"]]


def by_source(delivered: Sequence[int]) -> dict[str, list[int]]:
    """Per source name, the item indices it delivered, in order."""
    names = {tag: name for name, tag in TAGS.items()}
    out: dict[str, list[int]] = {}
    for i in delivered:
        out.setdefault(names[i // SPAN], []).append(i % SPAN)
    return out


def check_source_epochs(name: str, items: Sequence[int], lengths: Sequence[int] | int) -> None:
    """Assert that ``items`` (one source's deliveries in order) is a run of permutations of its items:
    source epoch ``e`` has length ``lengths[e]`` (the last repeats), and the last one may be partial.
    Nothing missing and nothing duplicated are reported separately."""
    lengths = [lengths] if isinstance(lengths, int) else list(lengths)
    at, epoch = 0, 0
    while at < len(items):
        length = lengths[min(epoch, len(lengths) - 1)]
        chunk = items[at : at + length]
        counts = Counter(chunk)
        duplicated = sorted(i for i, n in counts.items() if n > 1)
        unknown = sorted(i for i in counts if not 0 <= i < length)
        assert not duplicated, f"{name} source epoch {epoch}: delivered more than once: {duplicated}"
        assert not unknown, f"{name} source epoch {epoch}: not among its {length} items: {unknown}"
        if len(chunk) == length:
            assert sorted(chunk) == list(range(length)), f"{name} source epoch {epoch}: missing items"
        at += length
        epoch += 1

"""One pass over (the rest of) an epoch: the keys workers fetch, and the batches that reached the caller."""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InputStateError
from .fetch import TaggedKeys
from .sampler import CHUNK, ResumableSampler
from .state import field

if TYPE_CHECKING:
    from .loader import ResumableDataLoader

__all__ = ["Ahead", "DeliveredBatches", "KeyBatches", "Pass"]


@dataclass(frozen=True, slots=True)
class Ahead:
    """Batches delivered out of order beyond the committed position, numbered from it: all of
    ``[0, end)`` except ``missing``.

    Kept as its holes rather than as the batches delivered: a hole is a batch torch still has in
    flight (at most ``num_workers * prefetch_factor`` of them), while the delivered ones grow for as
    long as one slow batch holds the position back.
    """

    end: int = 0
    missing: frozenset[int] = frozenset()

    def __contains__(self, number: object) -> bool:
        return isinstance(number, int) and number < self.end and number not in self.missing

    def to_state(self) -> dict[str, Any]:
        return {"end": self.end, "missing": sorted(self.missing)}

    @classmethod
    def from_state(cls, state: Any, source: str) -> Ahead:
        end = field(state, "end", int, f"{source}: ahead")
        missing = field(state, "missing", list, f"{source}: ahead")
        numbers = all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < end for n in missing)
        if end < 0 or not numbers:
            raise InputStateError(
                f"{source}: ahead={state!r} is invalid; expected end >= 0 and missing numbers in [0, end)"
            )
        if end and 0 not in missing:
            raise InputStateError(
                f"{source}: ahead={state!r} is invalid; the batch at the cursor (0) is never delivered ahead"
            )
        return cls(end, frozenset(missing))


class Pass:
    """One pass over (the rest of) an epoch: where it started and which batches reached the caller.

    Batches are numbered from the pass's start. ``high`` is one past the highest batch delivered,
    ``holes`` the batches below it not delivered yet (in flight: at most workers x prefetch of them);
    the committed position is the first hole. A state loaded with batches ahead starts with them.
    """

    def __init__(self, loader: ResumableDataLoader) -> None:
        self.loader = loader
        self.batch_size = loader.batch_size or 1
        self.ordered = not loader._tagged
        self.generation = loader._generation()
        owner, ahead = loader._ahead
        self.skip = ahead if owner == self.generation else Ahead()
        if loader._resumable:
            sampler: ResumableSampler = loader.sampler  # type: ignore[assignment]
            self.epoch, self.start = sampler._position()
            self.count = sampler.rank_count(self.start)
            full, rest = divmod(self.count, self.batch_size)
            self.batches = full + (1 if rest and not (loader.drop_last and loader.batch_size) else 0)
        else:
            self.epoch, self.start = loader._custom_epoch, loader._custom_delivered
            self.count = self.batches = -1  # unknown: the sampler decides when the epoch ends
            loader._prepare_custom_pass()
        self.high = self.skip.end
        self.holes = set(self.skip.missing)
        self.next_number = self.prefix

    @property
    def prefix(self) -> int:
        """How many batches from the pass's start were delivered without a gap."""
        return min(self.holes) if self.holes else self.high

    def delivered_next(self) -> None:
        """Record that the next batch in order reached the caller: the hot path of in-order loading."""
        if self.skip.end or not self.loader._resumable:
            self.delivered(None)  # batches to skip, or a custom sampler: the general path
            return
        self.high = self.next_number = self.high + 1
        sampler: ResumableSampler = self.loader.sampler  # type: ignore[assignment]
        taken = self.count if self.high >= self.batches else self.high * self.batch_size
        sampler._commit(self.generation, self.epoch, self.start + taken * sampler.world.size)

    def delivered(self, number: int | None) -> None:
        """Record that batch ``number`` (None: the next in order) reached the caller."""
        if number is None:
            number = self.next_number
            self.next_number += 1
            while self.next_number in self.skip:
                self.next_number += 1
        if number >= self.high:
            self.holes.update(range(self.high, number))
            self.high = number + 1
        else:
            self.holes.discard(number)
        loader = self.loader
        if loader._generation() != self.generation:
            return  # set_epoch / load_state_dict moved the loader since this pass began
        prefix = self.prefix
        if loader._resumable:
            taken = self.count if prefix >= self.batches else prefix * self.batch_size
            sampler: ResumableSampler = loader.sampler  # type: ignore[assignment]
            sampler._commit(self.generation, self.epoch, self.start + taken * sampler.num_replicas)
        else:
            loader._custom_delivered = self.start + prefix
        if self.holes or loader._ahead[1].end:
            holes = frozenset(n - prefix for n in self.holes)
            loader._ahead = (self.generation, Ahead(self.high - prefix, holes) if holes else Ahead())

    def finished(self) -> None:
        """The torch iterator is exhausted: the epoch is over."""
        loader = self.loader
        if not loader._resumable and loader._generation() == self.generation:
            loader._move_custom(self.epoch + 1)


class DeliveredBatches:
    """The iterator handed to the caller: torch's iterator, recording each batch as it is delivered."""

    def __init__(self, run: Pass, batches: Iterator[Any]) -> None:
        self._run = run
        self._batches = batches
        self._ordered = run.ordered
        fetch = run.loader._fetch_dataset
        # Workers report RNGs they found drawn from without a seed; the main process warns for them.
        self._poll = fetch.poll if fetch is not None and fetch.reseed and run.loader.num_workers > 0 else None

    def __iter__(self) -> DeliveredBatches:
        return self

    def __len__(self) -> int:
        return len(self._batches)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        try:
            item = next(self._batches)
        except StopIteration:
            self._run.finished()
            raise
        if self._poll is not None:
            self._poll()
        if self._ordered:
            self._run.delivered_next()
            return item
        number, batch = item
        self._run.delivered(number)
        return batch


class KeyBatches:
    """The index sampler torch's iterators draw from: batches of keys for the current pass.

    For a :class:`ResumableSampler` the keys come straight from its chunked permutation (a seek, not
    a replay); for any other sampler, from its own iterator, replaying the delivered batches
    without fetching them. It refers to the loader weakly, and the keys it yields do not refer to it
    at all, because torch's iterator (kept by the loader when workers are persistent) holds it.
    """

    def __init__(self, loader: ResumableDataLoader) -> None:
        self._loader = weakref.ref(loader)

    def __len__(self) -> int:
        loader = self._loader()
        assert loader is not None  # torch asks only while the loader is in use
        sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
        return len(sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        loader = self._loader()
        # ResumableDataLoader.__iter__ hands the pass over while torch's iterator asks for indices.
        assert loader is not None and loader._pass is not None
        run = loader._pass
        if loader._resumable:
            sampler: ResumableSampler = loader.sampler  # type: ignore[assignment]
            last = run.batches * run.batch_size if loader.drop_last and loader.batch_size else run.count
            chunks = sampler.chunks(
                run.epoch,
                run.start,
                run.prefix * run.batch_size,
                last,
                with_seeds=loader._fetch_dataset is not None and loader._fetch_dataset.reseed,
                chunk=run.batch_size * max(1, CHUNK // run.batch_size),
                unit=run.batch_size,
            )
            keys = _resumable_keys(chunks, run.batch_size, run.prefix, run.skip, loader._tagged)
        else:
            if loader.batch_size is None:
                batches: Iterator[list[Any]] = ([index] for index in loader.sampler)
            else:
                batches = iter(loader.batch_sampler)  # type: ignore[arg-type]
            keys = _replayed_keys(batches, run.start, run.skip, loader._tagged)
        if loader.batch_size is None:
            # batch_size=None: every key is its own "batch" ((index, seed) when it carries a seed).
            return (key for key_batch in keys for key in _single_keys(key_batch))
        return keys


def _resumable_keys(
    chunks: Iterator[tuple[list[int], Any]], size: int, number: int, skip: Ahead, tagged: bool
) -> Iterator[list[Any]]:
    for indices, seeds in chunks:
        for lo in range(0, len(indices), size):
            if number not in skip:
                # A batch that carries seeds is TaggedKeys with its SeedRange (the fetch side reads it).
                keys = _tag(indices[lo : lo + size], number, tagged or seeds is not None)
                if seeds is not None:
                    keys.seeds = seeds[lo : lo + size]  # type: ignore[attr-defined]
                yield keys
            number += 1


def _replayed_keys(batches: Iterator[list[Any]], start: int, skip: Ahead, tagged: bool) -> Iterator[list[Any]]:
    for absolute, batch in enumerate(batches):
        number = absolute - start
        if number >= 0 and number not in skip:
            yield _tag(batch, number, tagged)


def _single_keys(keys: list[Any]) -> Iterable[Any]:
    seeds = getattr(keys, "seeds", None)
    return keys if seeds is None else zip(keys, seeds, strict=True)


def _tag(keys: list[Any], number: int, tagged: bool) -> list[Any]:
    if not tagged:
        return keys
    result = TaggedKeys(keys)
    result.number = number
    return result

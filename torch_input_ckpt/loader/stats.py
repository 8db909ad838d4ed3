"""``loader.stats()``: how long the caller waited for batches, for the user's own logger.

Guarantee: two ``perf_counter`` calls per batch (about 0.1 µs), in the main process, around the call that
hands the caller its next batch; nothing in the workers. The interval a :class:`LoaderStats` covers runs
from the previous ``stats()`` call (or the first batch asked for) to this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

__all__ = ["LoaderStats", "TimedBatches", "WaitClock"]


@dataclass(frozen=True, slots=True)
class LoaderStats:
    """What the loop waited for since the last :meth:`~torch_input_ckpt.ResumableDataLoader.stats` call.

    Attributes:
        batches: Batches delivered in the interval.
        waited_s: Seconds the caller spent inside ``next()`` waiting for them.
        elapsed_s: Seconds of wall time the interval lasted (from the previous ``stats()`` call, or from the
            first batch asked for, to this call).
        wait_fraction: ``waited_s / elapsed_s`` (0.0 for an empty interval): the share of the training step
            spent waiting for input. Near 0: the input keeps up; near 1: the input is the bottleneck.
        bad_samples: Samples skipped as bad (``on_error="skip"``) in the interval.
    """

    batches: int
    waited_s: float
    elapsed_s: float
    wait_fraction: float
    bad_samples: int


class WaitClock:
    """The running totals behind :class:`LoaderStats` (one per loader, shared by its passes)."""

    __slots__ = ("batches", "waited", "since")

    def __init__(self) -> None:
        self.batches = 0
        self.waited = 0.0
        self.since: float | None = None  # None: no batch asked for since the last read

    def read(self, bad_samples: int) -> LoaderStats:
        """The totals since the last read, and start a new interval."""
        now = perf_counter()
        elapsed = 0.0 if self.since is None else now - self.since
        stats = LoaderStats(
            batches=self.batches,
            waited_s=self.waited,
            elapsed_s=elapsed,
            wait_fraction=min(1.0, self.waited / elapsed) if elapsed > 0 else 0.0,
            bad_samples=bad_samples,
        )
        self.batches, self.waited, self.since = 0, 0.0, now
        return stats


class TimedBatches:
    """A pass's iterator, timing each ``next()`` into a :class:`WaitClock`."""

    __slots__ = ("_batches", "_clock")

    def __init__(self, batches: Iterator[Any], clock: WaitClock) -> None:
        self._batches = batches
        self._clock = clock

    def __iter__(self) -> TimedBatches:
        return self

    def __len__(self) -> int:
        return len(self._batches)  # type: ignore[arg-type]

    def __next__(self) -> Any:
        clock = self._clock
        start = perf_counter()
        if clock.since is None:
            clock.since = start
        batch = next(self._batches)
        clock.waited += perf_counter() - start
        clock.batches += 1
        return batch

"""The replay backend: a map-style dataset sampled by any other sampler, resumed by replaying its indices.

Guarantee: exact when the sampler is deterministic given its ``state_dict`` (restored at the start of
the pass) or, without one, given its epoch; the delivered batches are replayed without fetching
samples. Limits: the same batch size; no resharding (the position is per rank); a sampler without
state is listed under ``"external"``, so the checkpointer's policy applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..order.cursor import Cursor, Ledger, epoch_request
from ..state.schema import Key, LoaderHeader, check_same, field
from .passes import MapBackend, MapOptions, MapPass, tag

__all__ = ["ReplayBackend"]


class ReplayBackend(MapBackend):
    """Map-style loading from a custom sampler; the position is ``(epoch, batches delivered)``."""

    def __init__(
        self,
        dataset: Any,
        collate_fn: Callable[[Any], Any],
        options: MapOptions,
        sampler: Any,
        batch_sampler: Any,
    ) -> None:
        super().__init__(dataset, collate_fn, options)
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.kind = type(sampler).__qualname__
        self._at = Cursor()
        # The sampler's own state at the start of the current epoch's pass (if it has state).
        self._start_state: Any = None

    @property
    def epoch(self) -> int:
        return self._at.epoch

    @property
    def generation(self) -> int:
        return self._at.generation

    def set_epoch(self, epoch: int) -> None:
        at = self._at
        action = epoch_request(
            epoch, at.epoch, restored=at.restored, at_start=at.value == 0, owner="ResumableDataLoader"
        )
        if action == "restart":
            self.restart_epoch(epoch)
        elif action == "finish":
            # The next pass replays the whole of `epoch` without fetching or delivering it; then epoch + 1.
            self.restart_epoch(epoch)
            at.value = self.batch_count()

    def restart_epoch(self, epoch: int) -> None:
        self._move(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _move(self, epoch: int, delivered: int = 0, start_state: Any = None, *, restored: bool = False) -> None:
        self._at.move_to(epoch, delivered, restored=restored)
        self._start_state = start_state

    def batch_count(self) -> int:
        return len(self.batch_sampler if self.batch_sampler is not None else self.sampler)

    def batches_remaining(self) -> int:
        ahead = self.ahead()
        return max(0, self.batch_count() - self._at.value - (ahead.end - len(ahead.missing)))

    def begin(self, ledger: Ledger) -> MapPass:
        # Put the sampler where this epoch's pass began, so that replaying it reaches the position.
        if hasattr(self.sampler, "state_dict"):
            if self._at.value == 0 or self._start_state is None:
                self._start_state = self.sampler.state_dict()
            else:
                self.sampler.load_state_dict(self._start_state)
        # -1: the sampler decides when the epoch ends.
        return MapPass(self._at.epoch, self._at.value, -1, -1, self._at.generation, ledger)

    def keys(self, run: MapPass) -> Iterator[list[Any]]:
        if self.options.batch_size is None:
            batches: Iterator[list[Any]] = ([index] for index in self.sampler)
        else:
            batches = iter(self.batch_sampler)
        skip, tagged = run.ledger.skip, self.options.tagged
        for absolute, batch in enumerate(batches):
            number = absolute - run.start
            if number >= 0 and number not in skip:
                yield tag(batch, number, tagged)

    def commit(self, run: MapPass, prefix: int) -> None:
        self._at.commit(run.generation, run.epoch, run.start + prefix)

    def finished(self, run: MapPass) -> None:
        if self._at.generation == run.generation:
            self._move(run.epoch + 1)

    def state(self) -> dict[str, Any]:
        external = [] if hasattr(self.sampler, "state_dict") else [self.kind]
        return {
            **self.common_state(),
            Key.BATCHES_DELIVERED: self._at.value,
            Key.SAMPLER: self._start_state,
            Key.EXTERNAL: external,
        }

    def load(self, state: Any, header: LoaderHeader, source: str) -> None:
        ahead = self.load_ahead(state, source)
        check_same("batch_size", header.batch_size, self.options.batch_size, source, "Resume with the same batch_size.")
        start_state = state.get(Key.SAMPLER)
        delivered = field(state, Key.BATCHES_DELIVERED, int, source, low=0)
        self._move(header.epoch, delivered, start_state, restored=True)
        if start_state is not None:
            self.sampler.load_state_dict(start_state)
        elif hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(header.epoch)
        self.set_ahead(ahead)

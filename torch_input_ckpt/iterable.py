"""Iterable datasets: resumed through torchdata's ``StatefulDataLoader``, which snapshots each worker's
dataset state at the batch the caller received. We reuse its worker machinery rather than write our own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from .state import field

__all__ = ["IterableState"]


class IterableState:
    """The epoch counter and the ``StatefulDataLoader`` that iterates an ``IterableDataset``."""

    def __init__(self, delegate: StatefulDataLoader) -> None:
        self.delegate = delegate
        self.epoch = 0
        self._generation = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._generation += 1
            dataset = self.delegate.dataset
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def iterate(self) -> Iterator[Any]:
        generation = self._generation
        yield from self.delegate
        if generation == self._generation:
            self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.delegate.state_dict(), "external": self._external()}

    def load_state_dict(self, state: Any, source: str) -> None:
        self.epoch = field(state, "epoch", int, source)
        self._generation += 1
        self.delegate.load_state_dict(field(state, "inner", dict, source))

    def _external(self) -> list[str]:
        dataset = self.delegate.dataset
        if hasattr(dataset, "state_dict") and hasattr(dataset, "load_state_dict"):
            return []
        return [f"IterableDataset {type(dataset).__qualname__} (no state_dict: resumed by replaying and skipping)"]

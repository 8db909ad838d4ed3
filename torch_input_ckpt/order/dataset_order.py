"""``DatasetOrder``: the protocol of a dataset that carries its own epoch order (``Mixture``, ``ShardedStream``).

Guarantee: a :class:`~torch_input_ckpt.ResumableSampler` over such a dataset takes each epoch's order from
``epoch_order`` instead of its permutation, nests ``order_state()`` in its own state (key
``dataset_order``), and on restore hands that nested state back to ``load_order_state`` with the saved
position, so the dataset's order resumes exactly where the sampler's cursor does. The dataset then checks
its length itself. A state that recorded such an order is refused by a sampler whose dataset has none.

A dataset is taken to carry its own order when all three methods are present and callable (duck typing:
it need not subclass this protocol). Optionally it also has ``order_moved(at, to, *, seed, shuffle)``:
called when the sampler's position is moved from ``at`` to ``to`` (``set_epoch``, ``restart_epoch``), so
that, e.g., a mixture re-anchors a plan that starts after ``to``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

__all__ = ["ORDER_METHODS", "DatasetOrder", "has_own_order", "own_order"]

ORDER_METHODS = ("epoch_order", "order_state", "load_order_state")


class DatasetOrder(Protocol):
    """A dataset whose epoch order is computed by the dataset itself, resumable from a plain state."""

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        """Epoch ``epoch``'s order: a callable mapping int64 position tensors to dataset keys.

        ``seed`` and ``shuffle`` are the sampler's; a dataset with its own may ignore them.
        """
        ...

    def order_state(self) -> dict[str, Any]:
        """What the order depends on, as plain JSON types (with ``kind`` and ``version`` entries)."""
        ...

    def load_order_state(
        self, state: Any, *, seed: int, shuffle: bool, epoch: int, cursor: int, source: str = "state_dict"
    ) -> None:
        """Continue from ``state`` (an :meth:`order_state`) at the sampler's ``(epoch, cursor)``.

        Raises:
            InputStateError: for a state that does not fit this dataset, naming ``source`` and both values.
        """
        ...


def has_own_order(dataset: Any) -> bool:
    """Whether ``dataset`` carries its own epoch order (all of :data:`ORDER_METHODS` callable)."""
    return all(callable(getattr(dataset, name, None)) for name in ORDER_METHODS)


def own_order(dataset: Any) -> DatasetOrder | None:
    """``dataset`` as a :class:`DatasetOrder` if it carries its own epoch order, else None."""
    return dataset if has_own_order(dataset) else None

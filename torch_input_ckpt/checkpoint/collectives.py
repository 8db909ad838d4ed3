"""The checkpointer's collectives: one save decision for all ranks, and one shared restore plan."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from ..errors import InputStateError

__all__ = ["SaveAgreement", "all_succeeded", "cpu_group", "share_from_first"]


def cpu_group(process_group: Any = None) -> Any:
    """A process group that can run collectives on CPU tensors: the given one, the default one if it is
    gloo, else a new gloo group (a collective call: every rank must reach it together)."""
    if process_group is not None:
        return process_group
    if "gloo" in str(dist.get_backend()):
        return None  # the default group
    return dist.new_group(backend="gloo")


class SaveAgreement:
    """Makes every rank take rank 0's time-based save decision, at the same step.

    Wall clocks differ between ranks, so ``every_n_seconds`` alone would make ranks save at different
    steps. Rank 0's clock decides, and the decision is shared with one broadcast of one integer every
    ``sync_every`` steps (at steps that are multiples of it, which all ranks reach together), so the
    cost is one small collective every few steps and a time-based save lands at most
    ``sync_every - 1`` steps late.
    """

    def __init__(self, group: Any, sync_every: int) -> None:
        self.group = group
        self.sync_every = sync_every
        self._source = 0 if group is None else dist.get_global_rank(group, 0)
        self._flag = torch.zeros(1, dtype=torch.int32)

    def decide(self, step: int, due_here: bool) -> bool:
        """Whether all ranks save at ``step``; ``due_here`` matters on rank 0 only."""
        if step % self.sync_every:
            return False
        self._flag[0] = int(due_here)
        dist.broadcast(self._flag, src=self._source, group=self.group)
        return bool(self._flag[0])


def share_from_first(make: Callable[[], Any], group: Any) -> Any:
    """Rank 0 of ``group`` runs ``make()`` and shares what it returns (plain values: ints, strings, lists,
    dicts) with one broadcast; every rank returns it, or raises the same :class:`InputStateError` (so that
    no rank is left waiting in a collective when rank 0 fails)."""
    source = 0 if group is None else dist.get_global_rank(group, 0)
    error: InputStateError | None = None
    outcome: Any = None
    if dist.get_rank() == source:
        try:
            outcome = ("ok", make())
        except InputStateError as raised:
            error, outcome = raised, ("error", str(raised))
    box = [outcome]
    dist.broadcast_object_list(box, src=source, group=group)
    if error is not None:
        raise error
    kind, value = box[0]
    if kind == "error":
        raise InputStateError(value)
    return value


def all_succeeded(error: Exception | None, group: Any) -> None:
    """Every rank reports whether its step succeeded (one all-gather of a short text); if any failed,
    every rank raises, naming the first rank that failed, so that none is left waiting in a collective.

    Raises:
        InputStateError: ``rank <r>: <its error>``, on every rank.
    """
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, None if error is None else str(error), group=group)
    failed = [(r, text) for r, text in enumerate(out) if text is not None]
    if failed:
        if error is not None:
            raise error
        rank, text = failed[0]
        raise InputStateError(f"rank {rank} could not read its input checkpoint: {text}")

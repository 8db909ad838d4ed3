"""What each input-checkpoint file records about its run, so that steps map to batches without guessing.

Invariant: a file's ``provenance`` record names the save (or restore) before it in the same run and the
batch counts its components had then, so ``batches per step = (batches now - batches then) / (steps now
- steps then)`` is measured over steps that really ran with this configuration (gradient accumulation
included); a restore on another world size or batch size shows in the next file (whose state carries the
new values and whose previous step is the restored one), and the steps skipped on a restore are listed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..errors import InputStateError
from ..state.schema import MAX_LENGTH, Key

__all__ = ["Lineage", "batch_totals", "check_record"]

log = logging.getLogger("torch_input_ckpt")


def check_record(record: Any, source: str) -> dict[str, Any]:
    """A file's ``provenance`` record after checking its types ({} for a file without one).

    Raises:
        InputStateError: naming the file and the entry that is malformed.
    """
    if record is None:
        return {}
    previous = record.get(Key.PREVIOUS_STEP)
    totals = record.get(Key.PREVIOUS_BATCHES, {})
    skipped = record.get(Key.SKIPPED, [])
    ok = (
        (previous is None or (type(previous) is int and 0 <= previous <= MAX_LENGTH))
        and isinstance(totals, Mapping)
        and all(type(v) is int and v >= 0 for v in totals.values())
        and isinstance(skipped, list)
        and all(_is_range(item) for item in skipped)
    )
    if not ok:
        raise InputStateError(
            f"{source}: the provenance record is malformed: expected previous_step (an int or null), "
            "previous_batches (name -> int) and skipped ([[first, last], ...])"
        )
    return dict(record)


def _is_range(item: Any) -> bool:
    return isinstance(item, list) and len(item) == 2 and all(type(v) is int for v in item) and item[0] <= item[1]


def batch_totals(states: Mapping[str, Any]) -> dict[str, int]:
    """Component name -> its delivered-batch count, for the components that keep one."""
    return {
        name: state[Key.BATCHES_TOTAL]
        for name, state in states.items()
        if isinstance(state, Mapping) and type(state.get(Key.BATCHES_TOTAL)) is int
    }


class Lineage:
    """The checkpointer's memory of its run: the last save or restore, and the steps skipped so far."""

    __slots__ = ("previous", "skipped")

    def __init__(self) -> None:
        self.previous: tuple[int, dict[str, int]] | None = None
        self.skipped: list[list[int]] = []

    def record(self, step: int, states: Mapping[str, Any]) -> dict[str, Any]:
        """The record of the file saved at ``step`` (and remember this save as the previous one)."""
        step_before, totals_before = self.previous if self.previous is not None else (None, {})
        self.previous = (step, batch_totals(states))
        return {
            Key.PREVIOUS_STEP: step_before,
            Key.PREVIOUS_BATCHES: dict(totals_before),
            Key.SKIPPED: [list(item) for item in self.skipped],
        }

    def restored(self, step: int, states: Mapping[str, Any], record: Mapping[str, Any] | None) -> None:
        """The run continues from the checkpoint of ``step`` (its skips carry over)."""
        self.previous = (step, batch_totals(states))
        try:
            checked = check_record(record, f"the checkpoint of step {step}")
        except InputStateError as error:  # the states restored fine: only the history of skips is lost
            log.warning("%s; the steps skipped before it are not carried over", error)
            checked = {}
        self.skipped = [list(item) for item in checked.get(Key.SKIPPED, [])]

    def skip(self, first: int, last: int) -> None:
        """Steps ``first..last`` were skipped (never delivered in this run)."""
        self.skipped.append([first, last])

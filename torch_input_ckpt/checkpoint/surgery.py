"""Data surgery on restore: resume as if the ``k`` steps after a checkpoint had been consumed.

Guarantee: the skipped position is computed, not replayed (O(1): whole epochs are counted by division),
by the configuration of the run that consumed those steps (its world size, batch size and batches per
step, as the checkpoints record them), so the rest of the run equals an uninterrupted run with those
steps dropped, exactly once per epoch, on any world size (the position is global). A skip is cursor
arithmetic, so any order the sampler takes works: a permutation, a ``Mixture`` (streams as sources
included), a ``ShardedStream`` (whose keys ``samples`` cannot compute, but whose positions it can).
Limits: only a ``ResumableDataLoader`` over a ``ResumableSampler`` can be skipped; any other component,
or an unknown number of batches per step, is refused with a message naming it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..errors import InputStateError
from ..provenance.history import Provenance
from ..state.schema import Key
from ..store.directory import Location
from ..store.files import InputCheckpoint

__all__ = ["skipped_states"]


def skipped_states(
    directory: Location, checkpoint: InputCheckpoint, steps: int, batches_per_step: int | None
) -> tuple[dict[str, Any], int]:
    """The states of ``checkpoint`` moved ``steps`` optimizer steps on, and the batches skipped per rank.

    Raises:
        InputStateError: for a component that cannot be skipped, or batches per step not recorded.
    """
    provenance = Provenance(directory, batches_per_step=batches_per_step)
    if provenance.read(checkpoint.step) is None:
        raise InputStateError(
            f"{directory}: rank 0 has no valid input checkpoint of step {checkpoint.step} to compute the skip from"
        )
    segment = provenance.segment(checkpoint.step)
    if segment.batches_per_step is None:
        raise InputStateError(f"skip_steps={steps}: {segment.why_unknown}")
    batches = steps * segment.batches_per_step
    epoch, cursor = segment.saved.advance(batches)
    states = {}
    for name, state in checkpoint.states.items():
        if name != provenance.component:
            kind = state.get(Key.KIND) if isinstance(state, Mapping) else type(state).__name__
            raise InputStateError(
                f"{checkpoint.path}: component {name!r} (kind {kind!r}) cannot be moved on by skip_steps; only the "
                f"ResumableDataLoader {provenance.component!r} can. Checkpoint it alone to skip steps."
            )
        states[name] = _moved(state, epoch, cursor, batches)
    return states, batches


def _moved(state: Mapping[str, Any], epoch: int, cursor: int, batches: int) -> dict[str, Any]:
    moved = copy.deepcopy(dict(state))
    sampler = moved[Key.SAMPLER]
    if epoch != sampler[Key.EPOCH]:
        # A later epoch covers the whole dataset (an epoch in progress after a growth covered the old length).
        sampler[Key.LENGTH] = moved[Key.DATASET_LENGTH]
    sampler[Key.EPOCH] = epoch
    sampler[Key.CURSOR] = cursor
    moved[Key.EPOCH] = epoch
    if type(moved.get(Key.BATCHES_TOTAL)) is int:
        moved[Key.BATCHES_TOTAL] += batches  # so that batches per step stays (batches / steps) across the skip
    return moved

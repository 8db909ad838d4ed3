"""Checks of a saved state beyond its schema, made when a file is read: what the first batch would compute.

``files.read_checkpoint`` runs them on every component state of this library's kinds, so that a file a
restore would load and then fail on (or crash on at the first batch) is instead damaged: restore falls
back to an older checkpoint, and ``inspect`` reports the reason. A sampler's exclusion list is parsed as
the sampler parses it; a mixture's plan (its counters) is bounded and evaluated at the saved position, as
the sampler's first batch evaluates it; every integer of a dataset's own order state must fit the 64-bit
arithmetic that order is computed in. O(#sources + #excluded ranges); no data is read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from ..errors import InputStateError
from ..mixture.plan import EpochOrder, Plan
from ..order.exclusion import Exclusions
from ..state.schema import ITERABLE_KIND, LOADER_KIND, MAX_LENGTH, MIXTURE_KIND, SAMPLER_KIND, Key, SamplerState

__all__ = ["check_state"]

# Seeds may use the full unsigned or signed 64-bit range (schema.SamplerState); every other integer of an
# order state (counters, lengths, positions) must stay below MAX_LENGTH, far from int64 overflow.
_SEED_RANGE = (-(2**63), 2**64 - 1)


def check_state(state: Any, source: str) -> None:
    """Check a component state (already valid by ``schema.validate``) as its first batch would use it.

    Raises:
        InputStateError: naming the file, the entry, the value found and what was expected.
    """
    for sampler, where, length in _samplers(state, source):
        if sampler.excluded:
            Exclusions.from_state(sampler.excluded, length, where)
        if sampler.dataset_order is not None:
            order_where = f"{where}: {Key.DATASET_ORDER}"
            _check_integers(sampler.dataset_order, order_where)
            if sampler.dataset_order.get(Key.KIND) == MIXTURE_KIND:
                _check_mixture(sampler, order_where)


def _samplers(state: Any, source: str) -> Iterator[tuple[SamplerState, str, int]]:
    """The sampler states inside a component state, where they are, and the dataset length they index."""
    if not isinstance(state, Mapping):
        return
    kind = state.get(Key.KIND)
    if kind == SAMPLER_KIND:
        sampler = SamplerState.from_dict(state, source)
        # A bare sampler's dataset may have grown since its epoch began: its own load checks the indices
        # against the current length; here, against the bound.
        yield sampler, source, MAX_LENGTH
    elif kind == LOADER_KIND and state.get(Key.SAMPLER_KIND) == SAMPLER_KIND:
        where = f"{source}: {Key.SAMPLER}"
        yield SamplerState.from_dict(state[Key.SAMPLER], where), where, state[Key.DATASET_LENGTH]
    elif kind == LOADER_KIND and state.get(Key.SAMPLER_KIND) == ITERABLE_KIND:
        return


def _check_integers(order: Any, where: str) -> None:
    """Every integer of an order state within its bound (no recursion: the file's depth is bounded, but
    the walk need not rely on it)."""
    stack: list[tuple[str, Any]] = [(where, order)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, Mapping):
            stack.extend((f"{path}[{key!r}]", item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif type(value) is int:
            low, high = _SEED_RANGE if path.endswith(f"[{Key.SEED!r}]") else (0, MAX_LENGTH)
            if not low <= value <= high:
                raise InputStateError(
                    f"{path}={value} is invalid (out of range); expected {low} <= value <= {high}: the state is damaged"
                )


def _check_mixture(sampler: SamplerState, where: str) -> None:
    """The mixture's plan, evaluated at the saved position and at its epoch's last position: each must
    name a sample inside its source's recorded length."""
    plan = Plan.from_state(sampler.dataset_order, where)
    cursors = [*zip(plan.names, plan.cursors, strict=True), *((name, c) for name, (_, c) in plan.retired.items())]
    for name, cursor in cursors:
        # A source may grow (allow_growth), never shrink: its current source epoch is at most as long as
        # the ones after it.
        if cursor.epoch_length > cursor.length:
            raise InputStateError(
                f"{where}: source {name!r} has epoch_length={cursor.epoch_length}, more than its length="
                f"{cursor.length}; expected epoch_length <= length (a source never shrinks): the state is damaged"
            )
    positions = torch.tensor([min(sampler.cursor, plan.total - 1), plan.total - 1], dtype=torch.int64)
    try:
        sources, _, indices = EpochOrder(plan, sampler.seed, sampler.epoch, sampler.shuffle).origins(positions)
    except Exception as error:  # whatever the evaluation raises on a saved plan, the file is what is wrong
        raise InputStateError(
            f"{where}: the mixture's counters cannot be evaluated at the saved position (epoch {sampler.epoch}, "
            f"cursor {sampler.cursor}): {error}; the state is damaged"
        ) from error
    for source, index in zip(sources.tolist(), indices.tolist(), strict=True):
        cursor = plan.cursors[source]
        if not 0 <= index < cursor.length:
            raise InputStateError(
                f"{where}: at the saved position (epoch {sampler.epoch}, cursor {sampler.cursor}) the mixture's "
                f"counters name item {index} of source {plan.names[source]!r}, which has {cursor.length} items; "
                "the state is damaged"
            )

"""Which parts of an input pipeline hold state this library cannot capture (TensorFlow's "external state")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import IterableDataset, SequentialSampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import BatchSampler as StatefulBatchSampler
from torchdata.stateful_dataloader.sampler import RandomSampler as StatefulRandomSampler

from ..state.schema import LOADER_KIND, Key, is_stateful

__all__ = ["external_parts"]


def external_parts(name: str, obj: Any, state: Any) -> list[str]:
    """Descriptions of the parts of one component whose state cannot be captured."""
    label = f"{name} ({type(obj).__name__})"
    if not is_stateful(obj):
        return [f"{label} has no state_dict()/load_state_dict()"]
    if isinstance(state, Mapping) and state.get(Key.KIND) == LOADER_KIND:
        # Our loader lists what it cannot capture in its own state (read here, so the checkpointer's imports
        # never reach the loader).
        return [f"{label}: the state of {item}" for item in state.get(Key.EXTERNAL) or []]
    if isinstance(obj, StatefulDataLoader):
        if isinstance(obj.dataset, IterableDataset):
            if not is_stateful(obj.dataset):
                return [f"{label}: its IterableDataset {type(obj.dataset).__qualname__} has no state_dict()"]
            return []
        found = []
        # torchdata's RandomSampler keeps its state in its iterator, which StatefulDataLoader saves; a
        # SequentialSampler needs none (fast-forwarding it is exact).
        if not isinstance(obj.sampler, (StatefulRandomSampler, SequentialSampler)) and not is_stateful(obj.sampler):
            found.append(f"{label}: its sampler {type(obj.sampler).__qualname__} has no state_dict()")
        batch_sampler = obj.batch_sampler
        if (
            batch_sampler is not None
            and not isinstance(batch_sampler, StatefulBatchSampler)
            and not is_stateful(batch_sampler)
        ):
            found.append(f"{label}: its batch_sampler {type(batch_sampler).__qualname__} has no state_dict()")
        return found
    return []

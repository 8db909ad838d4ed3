"""torch.distributed.checkpoint with the input pipeline: every rank's position in the model's checkpoint.

Call both on every rank (DCP's calls are collective). `load` works on any number of ranks: the same number resumes
each rank where it was; another number splits what is left of the epoch over the new ranks, or raises
`InputStateError` where that cannot be exact (batches delivered out of order, per-worker iterable states).
"""

from __future__ import annotations

from typing import Any

import torch.distributed.checkpoint as dcp

from torch_input_ckpt import DistributedLoaderState


def save(directory: str, model: Any, loader: Any) -> None:
    """The model and every rank's loader position in one DCP checkpoint (``dcp.async_save`` works the same)."""
    dcp.save({"model": model, "dataloader": DistributedLoaderState(loader)}, checkpoint_id=directory)


def load(directory: str, model: Any, loader: Any) -> None:
    """Into fresh objects, on any number of ranks: each rank continues with its share of what is left."""
    dcp.load({"model": model, "dataloader": DistributedLoaderState(loader)}, checkpoint_id=directory)

"""Resumable PyTorch input pipelines: exact, constant-time resume, with input-only checkpoints."""

# torchdata's protocol, re-exported: the same signatures as torch.distributed.checkpoint's Stateful,
# so our objects drop into DCP and StatefulDataLoader as they are.
from torchdata.stateful_dataloader import Stateful

from .checkpointer import InputCheckpointer
from .errors import (
    EpochMismatchWarning,
    ExternalStateWarning,
    InputCheckpointWarning,
    InputStateError,
    UnseededDrawWarning,
)
from .loader import ResumableDataLoader
from .mixture import Mixture, Origin
from .sampler import ResumableSampler
from .samples import samples_at, steps_of_sample
from .shards import Shard
from .stream import ShardedStream
from .world import World

__all__ = [
    "EpochMismatchWarning",
    "ExternalStateWarning",
    "InputCheckpointWarning",
    "InputCheckpointer",
    "InputStateError",
    "Mixture",
    "Origin",
    "ResumableDataLoader",
    "ResumableSampler",
    "Shard",
    "ShardedStream",
    "Stateful",
    "UnseededDrawWarning",
    "World",
    "samples_at",
    "steps_of_sample",
]

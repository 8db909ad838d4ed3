"""Resumable PyTorch input pipelines: exact, constant-time resume, with input-only checkpoints."""

# torchdata's protocol, re-exported: the same signatures as torch.distributed.checkpoint's Stateful,
# so our objects drop into DCP and StatefulDataLoader as they are.
from torchdata.stateful_dataloader import Stateful

from .base.world import World
from .checkpoint.checkpointer import InputCheckpointer
from .checkpoint.dcp import DistributedLoaderState
from .errors import (
    EpochMismatchWarning,
    ExternalStateWarning,
    InputCheckpointWarning,
    InputStateError,
    UnseededDrawWarning,
    UnsupportedVersionError,
)
from .loader.dataloader import ResumableDataLoader
from .loader.sampler import ResumableSampler
from .mixture.mixture import Mixture, Origin
from .order.dataset_order import DatasetOrder
from .provenance.history import samples_at, steps_of_sample
from .stream.dataset import ShardedStream
from .stream.shards import Shard

__all__ = [
    "DatasetOrder",
    "DistributedLoaderState",
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
    "UnsupportedVersionError",
    "World",
    "samples_at",
    "steps_of_sample",
]

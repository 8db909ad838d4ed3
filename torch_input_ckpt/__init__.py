"""Resumable PyTorch input pipelines: exact, constant-time resume, with input-only checkpoints."""

# torchdata's protocol, re-exported: the same signatures as torch.distributed.checkpoint's Stateful,
# so our objects drop into DCP and StatefulDataLoader as they are.
from torchdata.stateful_dataloader import Stateful

from .base.world import World
from .checkpoint.checkpointer import InputCheckpointer
from .checkpoint.dcp import DistributedLoaderState
from .errors import (
    BadSampleError,
    EpochMismatchWarning,
    ExternalStateWarning,
    InputCheckpointWarning,
    InputStateError,
    ObjectChangedError,
    ObjectStoreError,
    UnseededDrawWarning,
    UnsupportedVersionError,
)
from .loader.dataloader import ResumableDataLoader
from .loader.sampler import ResumableSampler
from .loader.stats import LoaderStats
from .mixture.mixture import Mixture, Origin, Sourced
from .order.dataset_order import DatasetOrder
from .provenance.history import samples_at, steps_of_sample
from .stream.dataset import ShardedStream
from .stream.hf_datasets import stream_hf_dataset
from .stream.shards import Shard

__all__ = [
    "BadSampleError",
    "DatasetOrder",
    "DistributedLoaderState",
    "EpochMismatchWarning",
    "ExternalStateWarning",
    "InputCheckpointWarning",
    "InputCheckpointer",
    "InputStateError",
    "LoaderStats",
    "Mixture",
    "ObjectChangedError",
    "ObjectStoreError",
    "Origin",
    "ResumableDataLoader",
    "ResumableSampler",
    "Shard",
    "ShardedStream",
    "Sourced",
    "Stateful",
    "UnseededDrawWarning",
    "UnsupportedVersionError",
    "World",
    "samples_at",
    "steps_of_sample",
    "stream_hf_dataset",
]

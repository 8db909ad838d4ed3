"""Hugging Face integration: ``ResumableTrainer`` (transformers) and ``prepare_resumable`` (accelerate).

Importing this module imports transformers and accelerate; ``import torch_input_ckpt`` never does.
"""

from __future__ import annotations

from .errors import IncompleteCheckpointWarning
from .integrations.hf_accelerate import AcceleratedLoader, prepare_resumable
from .integrations.hf_trainer import (
    INPUT_CHECKPOINT_DIRNAME,
    ResumableTrainer,
    ResumableTrainerMixin,
    restore_input_checkpoint,
)

__all__ = [
    "INPUT_CHECKPOINT_DIRNAME",
    "AcceleratedLoader",
    "IncompleteCheckpointWarning",
    "ResumableTrainer",
    "ResumableTrainerMixin",
    "prepare_resumable",
    "restore_input_checkpoint",
]

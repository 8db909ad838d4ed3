"""PyTorch Lightning integration: ``InputCheckpointCallback`` keeps the train loaders' position in input checkpoints.

Importing this module imports Lightning; ``import torch_input_ckpt`` never does. The code is in
``integrations/lightning.py``.
"""

from __future__ import annotations

from .integrations.lightning import InputCheckpointCallback

__all__ = ["InputCheckpointCallback"]

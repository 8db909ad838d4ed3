"""torchtitan integration: ``ResumableTitanDataLoader``, a torchtitan data loader that resumes exactly once on the
same or another data-parallel degree through torchtitan's own ``CheckpointManager``.

Importing this module imports torchtitan; ``import torch_input_ckpt`` never does. The code is in
``integrations/torchtitan.py``.
"""

from __future__ import annotations

from .integrations.torchtitan import ResumableTitanDataLoader, TitanCollate

__all__ = ["ResumableTitanDataLoader", "TitanCollate"]

"""``python -m torch_input_ckpt inspect DIR``: the command line (also the ``torch-input-ckpt`` script)."""

from __future__ import annotations

import sys

from .cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())

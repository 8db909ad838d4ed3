"""Where the checkout is, and the environment a child process needs to import it and ``tests.support``."""

from __future__ import annotations

import os
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
REPO = SUPPORT.parents[1]


def child_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout first on ``PYTHONPATH`` (so that a child imports this checkout's
    package and ``tests.support.*``, as the tests do), plus ``extra``."""
    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}

"""Child entry point: ``python -m benchmarks._child MODULE PARAMS_JSON`` runs one measurement.

The result is printed as one ``BENCH-RESULT {json}`` line, the last thing on stdout.
"""

from __future__ import annotations

import importlib
import json
import sys
import warnings

from benchmarks.harness import RESULT_PREFIX


def main(argv: list[str]) -> int:
    """Run ``benchmarks.<argv[1]>.measure(json.loads(argv[2]))`` and print its result."""
    if len(argv) != 3:
        print(f"usage: python -m benchmarks._child MODULE PARAMS_JSON (got {argv[1:]!r})", file=sys.stderr)
        return 2
    # torchdata 0.11 calls torch.set_vital, which torch 2.13 deprecates: noise, not a result.
    warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)
    measure = importlib.import_module(f"benchmarks.{argv[1]}").measure
    result = measure(json.loads(argv[2]))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""Fresh-process half of tests/checkpoint/test_fresh_process.py: restore each pipeline from its checkpoint files
and write what it delivers to the end of its run.

Usage: PYTHONPATH=. python tests/support/pipeline_child.py JOBS.json OUT.json, where JOBS.json is a list of
``{"config", "directory", "step", "epoch", "cursor"}``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tests.support.pipelines import rest_of_run


def main() -> None:
    logging.getLogger("torch_input_ckpt").setLevel(logging.ERROR)
    jobs = json.loads(Path(sys.argv[1]).read_text())
    out = []
    for job in jobs:
        deliveries = rest_of_run(job["config"], Path(job["directory"]), job["step"], job["epoch"], job["cursor"])
        out.append([[epoch, position, value] for epoch, position, _, value in deliveries])
    Path(sys.argv[2]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()

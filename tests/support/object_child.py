"""The training loop that test_object_sigkill.py kills at random moments, checkpointing to an object-store prefix:
preempted_child's loop (each step's batch logged, then checkpointed) with the checkpoint on the loopback S3 server.

Usage: python object_child.py URL LOG TOTAL_STEPS STORAGE_OPTIONS_JSON
"""

from __future__ import annotations

import json
import sys

from torch_input_ckpt import ResumableDataLoader

from tests.support.preempted_child import Augmenting, train_logged


def main(url: str, log_path: str, total: int, storage_options: dict) -> None:
    loader = ResumableDataLoader(Augmenting(), batch_size=3, shuffle=True, seed=5)
    train_logged(loader, url, log_path, total, storage_options)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4]))

"""The training loop test_stream_sigkill.py kills: a packed ShardedStream over .npy shards, 2 workers, an
input checkpoint every step; logs every trained step's batch before checkpointing it.

Usage: python stream_child.py SHARDS CKPT_DIR LOG TOTAL_STEPS
"""

from __future__ import annotations

import sys

from torch_input_ckpt import ResumableDataLoader, ShardedStream

from tests.support.preempted_child import train_logged


def main(shards: str, directory: str, log_path: str, total: int) -> None:
    stream = ShardedStream(shards, lanes=3, seed=2, window=3, pack_to=5)
    loader = ResumableDataLoader(stream, batch_size=2, num_workers=2, seed=4)
    train_logged(loader, directory, log_path, total)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

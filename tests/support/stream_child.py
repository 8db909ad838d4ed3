"""The training loop test_stream_sigkill.py kills: a packed ShardedStream over .npy shards, 2 workers, an
input checkpoint every step; logs every trained step's batch before checkpointing it.

Usage: python stream_child.py SHARDS CKPT_DIR LOG TOTAL_STEPS
"""

from __future__ import annotations

import json
import sys

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ShardedStream


def main(shards: str, directory: str, log_path: str, total: int) -> None:
    stream = ShardedStream(shards, lanes=3, seed=2, window=3, pack_to=5)
    loader = ResumableDataLoader(stream, batch_size=2, num_workers=2, seed=4)
    with open(log_path, "a") as log, InputCheckpointer(directory, loader, every_n_steps=1, keep_last=2) as ckpt:
        step = ckpt.restore_or_save_initial() or 0
        log.write("\n" + json.dumps({"restored": step}) + "\n")
        log.flush()
        while step < total:
            for batch in loader:
                step += 1
                record = {"step": step, "batch": {k: v.tolist() for k, v in batch.items()}}
                log.write(json.dumps(record) + "\n")
                log.flush()
                ckpt.after_step(step)
                if step == total:
                    break


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))

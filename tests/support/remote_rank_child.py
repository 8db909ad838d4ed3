"""One rank of a torchrun job (gloo on 127.0.0.1) reading shards on object storage through a node cache that
the ranks share: ``python remote_rank_child.py URL CACHE_DIR OUT_DIR`` (under torchrun; the server's endpoint
and credentials from the AWS_* environment). Writes ``OUT_DIR/rank<r>.json``: the sample ids this rank read, in
order."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from torch_input_ckpt import ResumableDataLoader, ShardedStream


def _ids(batch: list[dict]) -> list[str]:
    return [sample["id"] for sample in batch]


def main() -> None:
    url, cache_dir, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo")
    try:
        # A limit below the dataset: the ranks' prefetches and evictions meet in one cache.
        stream = ShardedStream(url, lanes=2, seed=3, window=4, cache_dir=cache_dir, cache_limit=int(sys.argv[4]))
        loader = ResumableDataLoader(stream, batch_size=4, collate_fn=_ids, seed=7)
        read = [i for batch in loader for i in batch]
        (out / f"rank{dist.get_rank()}.json").write_text(json.dumps(read))
        dist.barrier()  # neither rank's cache closes while the other still reads
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

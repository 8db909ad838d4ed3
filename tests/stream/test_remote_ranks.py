"""Two ranks (gloo on 127.0.0.1, forked processes) read shards on object storage (moto's S3 server on loopback,
started by the suite) through one node cache: each rank reads exactly what it reads from local disk, and the
node downloads each shard once, however the two ranks' reads and prefetches meet.

The ranks are forked (tests/support/distributed.run_world) rather than started by torchrun: on the suite's busy
2 cores a trivial 2-rank torchrun job alone took 13 s (three interpreters importing torch), this whole test ~3 s.
"""

from __future__ import annotations

import json

import pytest

from torch_input_ckpt import ResumableDataLoader, ResumableSampler, ShardedStream
from torch_input_ckpt.cli.main import main
from torch_input_ckpt.stream.cache import ShardCache, copy_file
from torch_input_ckpt.stream.shards import write_index

from tests.support.distributed import run_world

COUNTS = {"web": 9, "code": 4, "math": 12, "books": 7, "news": 5, "wiki": 10}


def _ids(batch):
    return [sample["id"] for sample in batch]


def _reads(shards, rank=None, **kw):
    stream = ShardedStream(shards, lanes=2, seed=3, window=4, **kw)
    sampler = None if rank is None else ResumableSampler(stream, shuffle=False, num_replicas=2, rank=rank)
    return [i for batch in ResumableDataLoader(stream, batch_size=4, sampler=sampler, collate_fn=_ids) for i in batch]


def _rank_reads(rank, world, url, options, cache_dir, limit):
    import torch_input_ckpt.base.world  # noqa: F401  (the loader reads the world from torch.distributed)

    return _reads(url, storage_options=options, cache_dir=cache_dir, cache_limit=limit)


@pytest.mark.slow  # two rank processes
def test_two_ranks_share_one_node_cache_over_the_store(s3_server, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for name, count in COUNTS.items():
        lines = (json.dumps({"id": f"{name}-{k}", "text": name * 20}) + "\n" for k in range(count))
        (root / f"{name}.jsonl").write_text("".join(lines))
    bucket = s3_server.bucket("ranks")
    s3_server.upload_dir(root, bucket, "corpus")
    url = f"s3://{bucket}/corpus/"
    assert main(["index", url, "--storage-options", json.dumps(s3_server.storage_options())]) == 0
    write_index(root)  # the same stream from local disk
    total = sum(p.stat().st_size for p in root.glob("*.jsonl"))
    # A limit the dataset just fits: nothing is evicted, so each shard is downloaded once for the node.
    reads = run_world(_rank_reads, 2, url, s3_server.storage_options(), str(tmp_path / "cache"), total, timeout=60)
    for rank in (0, 1):
        assert reads[rank] == _reads(root, rank), f"rank {rank} read other samples than from local disk"
    totals = ShardCache(tmp_path / "cache", 1, copy_file).node_totals()
    assert totals == {"downloads": len(COUNTS), "downloaded_bytes": total}

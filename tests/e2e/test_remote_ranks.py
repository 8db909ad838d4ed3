"""Two ranks under torchrun (gloo on 127.0.0.1) read shards on object storage (moto's S3 server on loopback,
started by the suite) through one node cache: each rank reads exactly what it reads from local disk, and the
node downloads each shard once, however the two ranks' reads and prefetches meet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from torch_input_ckpt import ResumableDataLoader, ResumableSampler, ShardedStream
from torch_input_ckpt.cli.main import main
from torch_input_ckpt.stream.cache import ShardCache, copy_file
from torch_input_ckpt.stream.shards import write_index

from tests.support.distributed import free_port
from tests.support.paths import child_env

CHILD = Path(__file__).parents[1] / "support" / "remote_rank_child.py"
COUNTS = {"web": 9, "code": 4, "math": 12, "books": 7, "news": 5, "wiki": 10}


def _expected(root: Path, rank: int) -> list[str]:
    stream = ShardedStream(root, lanes=2, seed=3, window=4)
    sampler = ResumableSampler(stream, shuffle=False, num_replicas=2, rank=rank)
    loader = ResumableDataLoader(stream, batch_size=4, sampler=sampler, collate_fn=lambda b: [s["id"] for s in b])
    return [i for batch in loader for i in batch]


@pytest.mark.slow  # torchrun and two rank processes
def test_two_torchrun_ranks_share_one_node_cache_over_the_store(s3_server, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for name, count in COUNTS.items():
        lines = (json.dumps({"id": f"{name}-{k}", "text": name * 20}) + "\n" for k in range(count))
        (root / f"{name}.jsonl").write_text("".join(lines))
    bucket = s3_server.bucket("ranks")
    s3_server.upload_dir(root, bucket, "corpus")
    url = f"s3://{bucket}/corpus/"
    assert main(["index", url, "--storage-options", json.dumps(s3_server.storage_options())]) == 0
    write_index(root)  # for the same stream from local disk
    total = sum(p.stat().st_size for p in root.glob("*.jsonl"))
    command = [
        Path(sys.executable).with_name("torchrun"),
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        CHILD,
        url,
        tmp_path / "cache",
        tmp_path,
        str(total),  # a limit the dataset fits: every shard stays, so each is downloaded once per node
    ]
    env = child_env(OMP_NUM_THREADS="1", **s3_server.env())
    done = subprocess.run([str(c) for c in command], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == _expected(root, rank), f"rank {rank} read other samples than from local disk"
    totals = ShardCache(tmp_path / "cache", 1, copy_file).node_totals()
    assert totals == {"downloads": len(COUNTS), "downloaded_bytes": total}  # each shard once for the node

"""ShardedStream through the node's shard cache: exact as without it, each shard downloaded once per node."""

from __future__ import annotations

import json

import pytest
import torch

from torch_input_ckpt import ResumableDataLoader, Shard, ShardedStream
from torch_input_ckpt.stream.cache import ShardCache, copy_file

from tests.support.distributed import run_world
from tests.support.resume import check_resume, release

COUNTS = {"web": 9, "code": 4, "math": 12, "books": 7, "news": 3, "wiki": 10, "law": 6}
COUNTS |= {"chat": 5, "poems": 8, "papers": 11, "forums": 2, "recipes": 6, "songs": 9, "reviews": 4}


def _shards(root, names=tuple(COUNTS)):
    root.mkdir(exist_ok=True)
    out = []
    for name, count in ((n, COUNTS[n]) for n in names):
        path = root / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": f"{name}-{k}"}) + "\n" for k in range(count)))
        out.append(Shard(str(path), count))
    return out


def _ids(samples):
    return [s["id"] for s in samples]


def _loader(shards, cache_dir, workers, limit=10**9, lanes=3, window=4):
    release()  # the loaders of earlier runs, and the shards their streams hold, go now rather than at a later GC
    limit = None if cache_dir is None else limit
    stream = ShardedStream(shards, lanes=lanes, seed=3, window=window, cache_dir=cache_dir, cache_limit=limit)
    return ResumableDataLoader(stream, batch_size=4, collate_fn=_ids, num_workers=workers, seed=7)


def _node(cache_dir):
    return ShardCache(cache_dir, 1, copy_file).node_totals()


@pytest.mark.slow
def test_two_workers_read_exactly_once_and_download_each_shard_once(tmp_path):
    shards = _shards(tmp_path / "data")
    epoch = [i for batch in _loader(shards, None, 0) for i in batch]
    loader = _loader(shards, tmp_path / "cache", 2)
    cached = [i for batch in loader for i in batch]
    assert cached == epoch  # the same order, the same samples
    assert sorted(cached) == sorted(f"{n}-{k}" for n, c in COUNTS.items() for k in range(c))
    assert _node(tmp_path / "cache")["downloads"] == len(COUNTS)  # a cache >= the working set: once each
    del loader


@pytest.mark.slow
def test_a_resume_through_the_checkpoint_reads_the_same_with_a_small_cache(tmp_path):
    shards = _shards(tmp_path / "data")
    # Room for 60% of the data: evictions in every epoch, while the readers (up to 2 per lane) hold theirs.
    limit = sum((tmp_path / "data" / f"{n}.jsonl").stat().st_size for n in COUNTS) * 6 // 10
    cache = tmp_path / "cache"
    check_resume(
        lambda: _loader(shards, cache, 0, limit, lanes=2, window=0),
        stop_after=5,
        epochs=2,
        resume_with=lambda: _loader(shards, cache, 2, limit, lanes=2, window=0),
    )
    assert _node(cache)["downloads"] > len(COUNTS)  # evictions happened (a shard downloaded again)


def test_a_cache_dir_in_the_data_is_refused_before_anything_is_read(tmp_path):
    shards = _shards(tmp_path / "data")
    for cache_dir in (tmp_path / "data", tmp_path / "data" / "cache", tmp_path):
        with pytest.raises(ValueError, match="overlaps the source directory"):
            ShardedStream(shards, cache_dir=cache_dir, cache_limit=1)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(f"{n}.jsonl" for n in COUNTS)


def _rank_reads(rank, world, shards, cache_dir):
    import torch_input_ckpt.base.world  # noqa: F401  (the loader reads the world from torch.distributed)

    loader = _loader(shards, cache_dir, 0)
    return [i for batch in loader for i in batch]


@pytest.mark.slow
def test_two_ranks_share_one_cache_and_download_each_shard_once(tmp_path):
    shards = _shards(tmp_path / "data")
    reads = run_world(_rank_reads, 2, shards, str(tmp_path / "cache"), timeout=60)
    everything = sorted(reads[0] + reads[1])
    expected = sorted(f"{n}-{k}" for n, c in COUNTS.items() for k in range(c))
    assert sorted(set(everything)) == expected  # together the ranks read every sample (with the sampler's padding)
    assert _node(tmp_path / "cache")["downloads"] == len(COUNTS)
    torch.distributed.is_available()


@pytest.mark.slow
def test_cache_example_resumes_in_a_fresh_process_through_the_same_cache(tmp_path, capfd):
    import ast

    from tests.support.examples import run_fresh, run_here

    capfd.readouterr()
    run_here("stream_cache.py", tmp_path)
    first, second = (ast.literal_eval(line) for line in capfd.readouterr().out.splitlines())
    rest, uninterrupted = (ast.literal_eval(line) for line in run_fresh("stream_cache.py", tmp_path)[0])
    assert [first, second, *rest] == uninterrupted, "the resumed epoch differs from the uninterrupted one"
    ids = [i for batch in uninterrupted for i in batch]
    counts = {"web": 6, "code": 4, "math": 7, "books": 5, "news": 3, "wiki": 6, "law": 4, "chat": 5}
    assert sorted(ids) == sorted(f"{n}-{k}" for n, c in counts.items() for k in range(c)), "not exactly once"
    assert sorted(p.name for p in (tmp_path / "shared-fs").iterdir()) == sorted(f"{n}.jsonl" for n in counts)


# In process: workers with S3 clients cost seconds to start on 2 busy cores; test_remote_stream covers workers.
def test_shards_on_object_storage_through_a_smaller_cache_read_exactly(s3_server, tmp_path):
    from torch_input_ckpt.cli.main import main
    from torch_input_ckpt.stream.index import INDEX_FILE

    names = ("web", "code", "math", "books", "news", "wiki", "law")  # 7 shards: each GET costs on 2 busy cores
    shards = _shards(tmp_path / "data", names)
    bucket = s3_server.bucket("cached")
    s3_server.upload_dir(tmp_path / "data", bucket, "corpus")
    url = f"s3://{bucket}/corpus/"
    options = {**s3_server.storage_options(), "retry": {"attempts": 4, "base_delay_s": 0.01, "total_s": 10.0}}
    assert main(["index", url, "--storage-options", json.dumps(s3_server.storage_options())]) == 0
    total = sum((tmp_path / "data" / f"{n}.jsonl").stat().st_size for n in names)
    by_name = sorted(shards, key=lambda shard: shard.source.rsplit("/", 1)[1])  # the index's order
    local = [i for batch in _loader(by_name, None, 0, lanes=2) for i in batch]

    def remote(epoch_workers):
        stream = ShardedStream(
            url,
            lanes=2,
            seed=3,
            window=4,
            storage_options=options,
            cache_dir=tmp_path / "cache",
            cache_limit=total * 2 // 3,
        )
        return ResumableDataLoader(stream, batch_size=4, collate_fn=_ids, num_workers=epoch_workers, seed=7)

    got = [i for batch in remote(0) for i in batch]
    assert got == local  # the same order and samples as the shards on local disk
    totals = _node(tmp_path / "cache")
    assert len(names) <= totals["downloads"] and totals["downloaded_bytes"] <= 2 * total
    cached = [p.name for p in (tmp_path / "cache" / "objects").iterdir()]
    assert sum((tmp_path / "cache" / "objects" / n).stat().st_size for n in cached) <= total * 2 // 3
    assert not any(INDEX_FILE in name for name in cached)

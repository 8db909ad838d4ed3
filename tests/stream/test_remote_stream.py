"""ShardedStream over shards on object storage, against a real S3 server on loopback (moto's, started by the
suite): the index written beside the shards by range reads, the same epochs as the same shards on local disk
(0 and 2 workers), a resume through the checkpoint file that downloads only the shards it reads from its
position on, faults retried to an exact epoch, and changed or missing objects refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, Shard, ShardedStream
from torch_input_ckpt.cli.main import main
from torch_input_ckpt.errors import InputStateError, ObjectChangedError, ObjectStoreError
from torch_input_ckpt.remote import ObjectStore
from torch_input_ckpt.stream.index import INDEX_FILE, parse_index
from torch_input_ckpt.stream.shards import write_index

from tests.support.remote import settled
from tests.support.resume import check_exactly_once, release, to_py
from tests.support.stream_data import SIZES, all_ids, ids_collate, sample_id, write_shards

LANES, SEED, BATCH = 3, 5, 2
FAST_RETRY = {"attempts": 8, "base_delay_s": 0.01, "max_delay_s": 0.05, "total_s": 20.0}
# Shard names not in shard order (the stream sorts by name): the index order is not the writing order.
NAMES = ("web", "code", "math", "books", "news", "wiki", "chat", "law")


def _shards(root, kind, sizes=SIZES):
    write_shards(root, kind, sizes)
    for number, path in enumerate(sorted(root.iterdir())):
        path.rename(root / f"{NAMES[number]}.{kind}")
    return root


@pytest.fixture(scope="module")
def corpora(s3_server, tmp_path_factory):
    """For each format: the same shards on local disk (indexed there) and under s3://BUCKET/corpus/ (indexed by
    the command)."""
    made = {}
    for kind in ("npy", "jsonl"):
        root = _shards(tmp_path_factory.mktemp(kind), kind)
        write_index(root)
        bucket = s3_server.bucket(kind)
        s3_server.upload_dir(root, bucket, "corpus")
        s3_server.client().delete_object(Bucket=bucket, Key=f"corpus/{INDEX_FILE}")  # the local index
        url = f"s3://{bucket}/corpus/"
        assert main(["index", url, "--storage-options", json.dumps(s3_server.storage_options())]) == 0
        made[kind] = (kind, root, url)
    return made


@pytest.fixture(params=["npy", "jsonl"])
def corpus(request, corpora):
    return corpora[request.param]


@pytest.fixture
def npy_corpus(corpora):
    return corpora["npy"]


@pytest.fixture
def jsonl_corpus(corpora):
    return corpora["jsonl"]


def _stream(shards, **kw):
    return ShardedStream(shards, lanes=LANES, seed=SEED, window=3, **kw)


def _loader(stream, workers=0):
    return ResumableDataLoader(stream, batch_size=BATCH, collate_fn=ids_collate, num_workers=workers, seed=7)


def _options(s3_server, endpoint_url=None, **extra):
    return {**s3_server.storage_options(endpoint_url), "retry": FAST_RETRY, **extra}


def test_the_index_beside_the_shards_records_etags_and_counts_npy_by_range_reads(corpus, s3_server, fault_proxy):
    kind, root, url = corpus
    store = ObjectStore(_options(s3_server, fault_proxy.endpoint_url))
    bucket = url.split("/")[2]
    assert main(["index", url, "--storage-options", json.dumps(_options(s3_server, fault_proxy.endpoint_url))]) == 0
    shard_gets = [r for r in settled(fault_proxy).requests("GET") if f"/{bucket}/corpus/" in r.path]
    whole = [r for r in shard_gets if r.range is None]
    remote = parse_index(store.read(url + INDEX_FILE), url + INDEX_FILE, url, remote=True)
    local = parse_index((root / INDEX_FILE).read_bytes(), root / INDEX_FILE, str(root))
    listed = {info.url.rsplit("/", 1)[1]: info for info in store.list(url)}
    for mine, theirs in zip(remote.entries, local.entries, strict=True):
        assert (mine.name, mine.count, mine.tokens, mine.size, mine.digest) == (
            theirs.name,
            theirs.count,
            theirs.tokens,
            theirs.size,
            theirs.digest,
        )
        assert mine.etag == listed[mine.name].etag and mine.mtime_ns is None
    if kind == "npy":  # headers and digest blocks only: every GET of a shard is a range
        assert not whole and len(shard_gets) >= len(local.entries)
    else:  # JSON lines have no header that counts them: each is downloaded once
        assert len(whole) == len(local.entries)


# A format read by random access (.npy, memory-mapped) with 2 workers; one read forward (JSON lines) with none.
@pytest.mark.slow  # DataLoader worker processes
@pytest.mark.parametrize("kind,workers", [("npy", 2), ("jsonl", 0)])
def test_an_epoch_from_the_store_is_the_epoch_from_local_disk(corpora, s3_server, tmp_path, kind, workers):
    kind, root, url = corpora[kind]
    local = _stream(root)
    remote = _stream(url, storage_options=_options(s3_server), cache_dir=tmp_path / "cache")
    assert remote.fingerprint == local.fingerprint  # the same data, wherever it is read from
    expected = [to_py(batch) for batch in _loader(local)]
    got = [to_py(batch) for batch in _loader(remote, workers)]
    release(workers > 0)
    assert got == expected
    numbers = {name: n for n, name in enumerate(all_ids())}
    check_exactly_once([(0, batch) for batch in got], lambda batch: [numbers[i] for i in batch], len(numbers))
    downloaded = list((tmp_path / "cache" / "objects").iterdir())
    assert len(downloaded) == sum(1 for shard in local.shards if shard.count)  # an empty shard is never fetched


def _needed_shards(stream, position):
    """The shards holding the samples of epoch 0 from ``position`` on."""
    keys = stream.epoch_order(0, 0, True)(torch.arange(position, len(stream)))
    return {stream.shards[stream.locate(int(key))[0]].source.rsplit("/", 1)[1] for key in keys}


@pytest.mark.slow  # DataLoader worker processes
def test_a_resume_through_the_file_downloads_only_the_shards_from_its_position(
    jsonl_corpus, s3_server, fault_proxy, tmp_path
):
    kind, root, url = jsonl_corpus
    options = _options(s3_server, fault_proxy.endpoint_url)
    first = _loader(_stream(url, storage_options=options, cache_dir=tmp_path / "first"))
    batches = iter(first)
    stop = (len(first) * 9) // 10
    before = [to_py(next(batches)) for _ in range(stop)]
    with InputCheckpointer(tmp_path / "ckpt", first) as checkpointer:
        checkpointer.save(stop)
    del batches
    fault_proxy.clear()
    resumed_stream = _stream(url, storage_options=options, cache_dir=tmp_path / "cold")  # a cold cache
    resumed = _loader(resumed_stream, workers=2)
    with InputCheckpointer(tmp_path / "ckpt", resumed) as checkpointer:
        assert checkpointer.restore() == stop
    after = [to_py(batch) for batch in resumed]
    release()
    assert before + after == [to_py(batch) for batch in _loader(_stream(root))]
    bucket = url.split("/")[2]
    gets = settled(fault_proxy).requests("GET")
    shard_gets = [r for r in gets if r.path.startswith(f"/{bucket}/corpus/") and r.range is None]
    fetched = [r.path.rsplit("/", 1)[1] for r in shard_gets if not r.path.endswith(INDEX_FILE)]
    needed = _needed_shards(resumed_stream, stop * BATCH)
    assert sorted(fetched) == sorted(needed), (fetched, needed)  # each once, and no other
    sizes = {info.url.rsplit("/", 1)[1]: info.size for info in ObjectStore(options).list(url)}
    assert sum(r.body_bytes for r in shard_gets if not r.path.endswith(INDEX_FILE)) == sum(sizes[n] for n in needed)
    assert len(needed) < len(NAMES)


def test_faults_are_retried_and_the_epoch_is_exact(jsonl_corpus, s3_server, fault_proxy, tmp_path):
    kind, root, url = jsonl_corpus
    fault_proxy.stall_s = 1.0
    options = _options(s3_server, fault_proxy.endpoint_url, config_kwargs={"read_timeout": 0.5})
    stream = _stream(url, storage_options=options, cache_dir=tmp_path / "cache")

    def shard(method, path):
        return method == "GET" and "/corpus/" in path and INDEX_FILE not in path

    fault_proxy.inject("503", times=3, match=shard)
    fault_proxy.inject("reset", times=1, match=shard)
    fault_proxy.inject("stall", times=1, match=shard)
    got = [to_py(batch) for batch in _loader(stream)]
    assert got == [to_py(batch) for batch in _loader(_stream(root))]
    faults = sorted(r.fault for r in settled(fault_proxy).requests() if r.fault not in (None, "stall"))
    assert faults == ["503"] * 3 + ["reset"]  # the stall: logged when the proxy gives up, maybe after the retry


def test_a_changed_object_is_refused_when_the_stream_opens_and_when_it_reads(s3_server, tmp_path):
    root = _shards(tmp_path / "data", "npy", (3, 2))
    bucket = s3_server.bucket("changed")
    s3_server.upload_dir(root, bucket, "corpus")
    url = f"s3://{bucket}/corpus/"
    assert main(["index", url, "--storage-options", json.dumps(s3_server.storage_options())]) == 0
    stream = _stream(url, storage_options=_options(s3_server), cache_dir=tmp_path / "cache")
    first = stream.shards[0].source
    other = next(name for name in ("web.npy", "code.npy") if not first.endswith(name))
    s3_server.client().upload_file(str(root / other), bucket, first.split("/", 3)[3])  # rewritten in place
    with pytest.raises(ObjectChangedError, match=rf"{first} changed.*ETag.*re-index"):
        [stream[key] for key in range(len(stream))]
    with pytest.raises(ObjectChangedError, match=rf"{first}: changed since it was indexed in {url}{INDEX_FILE}"):
        _stream(url, storage_options=_options(s3_server))


def test_missing_index_bucket_and_object_are_named_with_the_fix(s3_server, tmp_path, capsys):
    bucket = s3_server.bucket("empty")
    options = _options(s3_server)
    with pytest.raises(InputStateError, match=rf"no {INDEX_FILE}; run `python -m torch_input_ckpt index s3://{bucket}"):
        _stream(f"s3://{bucket}/corpus/", storage_options=options)
    with pytest.raises(ObjectStoreError, match=r"no bucket 'no-such-bucket'"):
        _stream("s3://no-such-bucket/corpus/", storage_options=options)
    with pytest.raises(InputStateError, match=r"not in s3://.*/corpus/torch_input_ckpt_index\.json"):
        root = _shards(tmp_path / "data", "npy", (3, 2))
        s3_server.upload_dir(root, bucket, "corpus")
        main(["index", f"s3://{bucket}/corpus/", "--storage-options", json.dumps(s3_server.storage_options())])
        _stream([f"s3://{bucket}/corpus/web.npy", f"s3://{bucket}/corpus/nothing.npy"], storage_options=options)
    with pytest.raises(ValueError, match=r"Shard\('s3://b/web\.npy', \.\.\.\): the built-in readers read"):
        ShardedStream([Shard("s3://b/web.npy", 3)])
    with pytest.raises(ValueError, match="storage_options is for shards on object storage"):
        _stream(root, storage_options=options)
    capsys.readouterr()
    assert main(["index", "s3://no-such-bucket/corpus/", "--storage-options", json.dumps(options)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no bucket 'no-such-bucket'" in err and "Traceback" not in err


def test_a_list_of_urls_reads_those_shards(npy_corpus, s3_server, tmp_path):
    kind, root, url = npy_corpus
    picked = [f"{url}math.{kind}", f"{url}web.{kind}"]
    stream = ShardedStream(picked, lanes=1, shuffle=False, storage_options=_options(s3_server), cache_dir=tmp_path)
    local = ShardedStream([root / f"math.{kind}", root / f"web.{kind}"], lanes=1, shuffle=False)
    assert [sample_id(stream[k]) for k in range(len(stream))] == [sample_id(local[k]) for k in range(len(local))]


@pytest.mark.slow  # a fresh process, with DataLoader workers
def test_object_storage_example_resumes_downloading_only_the_shards_left(s3_server, tmp_path, capfd, monkeypatch):
    from tests.support.examples import run_fresh, run_here
    from tests.test_readme_examples import literals

    for name, value in s3_server.env().items():  # the standard AWS_* environment, as a user's shell has it
        monkeypatch.setenv(name, value)
    bucket_url = f"s3://{s3_server.bucket('example')}"
    capfd.readouterr()
    run_here("object_storage.py", bucket_url, tmp_path)
    indexed, *first = literals(capfd.readouterr().out.splitlines())
    assert str(indexed).startswith("indexed 4 shards, 16 samples, 64 tokens") and len(first) == 2
    rest, downloaded, uninterrupted = literals(run_fresh("object_storage.py", bucket_url, tmp_path)[0])
    assert [*first, *rest] == uninterrupted, "the resumed epoch differs from the uninterrupted one"
    assert sorted(t for batch in uninterrupted for t in batch) == sorted(
        1000 * shard + 4 * row for shard, rows in enumerate((6, 2, 5, 3)) for row in range(rows)
    ), "not exactly once"
    assert downloaded == ["books", "math", "web"]  # "code" was read up before the checkpoint: never downloaded


def test_packing_from_the_store_is_packing_from_local_disk(npy_corpus, s3_server, tmp_path):
    kind, root, url = npy_corpus  # .npy token counts come from the headers: the index has them

    def packed(shards, **kw):
        stream = ShardedStream(shards, lanes=LANES, seed=SEED, window=2, pack_to=5, **kw)
        return [s["input_ids"].tolist() for k in range(len(stream)) for s in [stream[k]]]

    assert packed(url, storage_options=_options(s3_server), cache_dir=tmp_path) == packed(root)

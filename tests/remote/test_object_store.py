"""ObjectStore against a real S3 server on loopback (moto's, started by the suite): reads, atomic downloads,
conditional writes, refusals that name the URL and the fix, bounded retries through a fault-injecting proxy,
and a client that works after a fork."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import time

import pytest

from torch_input_ckpt.errors import (
    InputStateError,
    ObjectChangedError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStoreError,
    ObjectStoreUnavailableError,
)
from torch_input_ckpt.remote import ObjectInfo, ObjectStore, RetryPolicy, is_url

from tests.support.remote import settled

FAST_RETRY = {"attempts": 6, "base_delay_s": 0.01, "max_delay_s": 0.05, "total_s": 10.0}


@pytest.fixture(scope="module")
def bucket(s3_server):
    """Objects the tests read (a test that changes one writes its own key)."""
    name = s3_server.bucket("objects")
    client = s3_server.client()
    for key, body in {
        "corpus/web.bin": b"w" * 3000,
        "corpus/code.bin": b"c" * 10,
        "corpus/math/deep.bin": b"d",
    }.items():
        client.put_object(Bucket=name, Key=key, Body=body)
    return name


def _store(s3_server, endpoint_url=None, **options):
    return ObjectStore(
        {**s3_server.storage_options(endpoint_url), "retry": FAST_RETRY, **options},
    )


def test_is_url_tells_objects_from_local_paths(tmp_path):
    assert is_url("s3://bucket/key") and is_url("gs://b/k")
    assert not is_url(str(tmp_path)) and not is_url(tmp_path) and not is_url("file:///tmp/x") and not is_url(None)


def test_list_head_ranges_download_put_delete(s3_server, bucket, tmp_path):
    store = _store(s3_server)
    top = store.list(f"s3://{bucket}/corpus/")
    assert [info.url.rsplit("/", 1)[1] for info in top] == ["code.bin", "web.bin"]  # sorted; not math/
    assert len(store.list(f"s3://{bucket}/corpus", recursive=True)) == 3
    info = store.head(f"s3://{bucket}/corpus/web.bin")
    assert info == top[1] and info.size == 3000 and info.etag.strip('"')
    assert store.read_range(info.url, 10, 20, expect=info) == b"w" * 10
    assert store.read_range(info.url, 2995, 4000) == b"w" * 5  # past the end: what there is
    assert store.read(info.url, expect=info) == b"w" * 3000
    dest = tmp_path / "cache" / "web.bin"
    assert store.download(info.url, dest, expect=info) == info
    assert dest.read_bytes() == b"w" * 3000 and sorted(p.name for p in dest.parent.iterdir()) == ["web.bin"]
    written = store.put(f"s3://{bucket}/out/books.bin", b"hello")
    assert store.head(written.url) == written
    store.delete(written.url)
    assert store.list(f"s3://{bucket}/out/") == []


def test_a_changed_object_is_refused_and_never_half_written(s3_server, bucket, tmp_path):
    store = _store(s3_server)
    info = store.put(f"s3://{bucket}/changing/web.bin", b"w" * 3000)
    dest = tmp_path / "web.bin"
    dest.write_bytes(b"the old copy")
    s3_server.client().put_object(Bucket=bucket, Key="changing/web.bin", Body=b"rewritten")
    for read in (
        lambda: store.read_range(info.url, 0, 4, expect=info),
        lambda: store.read(info.url, expect=info),
        lambda: store.download(info.url, dest, expect=info),
    ):
        with pytest.raises(ObjectChangedError) as caught:
            read()
        message = str(caught.value)
        assert info.url in message and info.etag in message and "9 bytes" in message and "re-index" in message
    assert dest.read_bytes() == b"the old copy"
    assert [p.name for p in tmp_path.iterdir()] == ["web.bin"]  # no temporary file left behind


def test_a_conditional_write_refuses_an_existing_object(s3_server, bucket):
    store = _store(s3_server)
    url = f"s3://{bucket}/locks/writer"
    store.put(url, b"first", if_absent=True)
    with pytest.raises(ObjectExistsError, match="already exists"):
        store.put(url, b"second", if_absent=True)
    assert store.read(url) == b"first"
    assert isinstance(ObjectExistsError("x"), InputStateError)


def test_missing_bucket_object_and_credentials_are_named_with_the_fix(s3_server, bucket, monkeypatch):
    store = _store(s3_server)
    with pytest.raises(ObjectNotFoundError, match=r"no object at s3://.*/corpus/books\.bin .*check the path"):
        store.head(f"s3://{bucket}/corpus/books.bin")
    with pytest.raises(FileNotFoundError):  # also what code looking for a file that may not be there catches
        store.read(f"s3://{bucket}/corpus/books.bin")
    with pytest.raises(ObjectStoreError, match=r"no object at s3://.*/corpus/books\.bin"):
        store.read(f"s3://{bucket}/corpus/books.bin")
    with pytest.raises(ObjectStoreError, match=r"no bucket 'no-such-bucket' at http://127\.0\.0\.1.*endpoint"):
        store.head("s3://no-such-bucket/web.bin")
    with pytest.raises(ObjectStoreError, match=r"no bucket 'no-such-bucket'"):
        store.list("s3://no-such-bucket/corpus/")
    with pytest.raises(ObjectStoreError, match=r"gs:// scheme is not supported"):
        ObjectStore.for_url("gs://bucket/web.bin")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anonymous = ObjectStore({"endpoint_url": s3_server.endpoint_url, "retry": FAST_RETRY})
    with pytest.raises(ObjectStoreError, match=r"no credentials to HEAD s3://.*AWS_ACCESS_KEY_ID.*storage_options"):
        anonymous.head(f"s3://{bucket}/corpus/web.bin")


def test_transient_faults_are_retried_and_logged_once(s3_server, bucket, fault_proxy, tmp_path, caplog):
    fault_proxy.stall_s = 1.0
    options = {"config_kwargs": {"read_timeout": 0.4, "connect_timeout": 1}}
    store = _store(s3_server, fault_proxy.endpoint_url, **options)
    info = _store(s3_server).head(f"s3://{bucket}/corpus/web.bin")
    faults = ["503", "500", "reset", "stall"]
    for fault in faults:
        fault_proxy.inject(fault, times=1, match=lambda method, path: method == "GET" and "web.bin" in path)
    with caplog.at_level(logging.DEBUG, logger="torch_input_ckpt"):
        store.download(info.url, tmp_path / "web.bin", expect=info)
    assert (tmp_path / "web.bin").read_bytes() == b"w" * 3000
    gets = [entry for entry in settled(fault_proxy).requests("GET") if "web.bin" in entry.path]
    # The stalled request is logged when the proxy gives up stalling, maybe after the retry that succeeded.
    assert [entry.fault for entry in gets if entry.fault != "stall"] == ["503", "500", "reset", None]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and info.url in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_retries_stop_at_the_bound_with_an_error_naming_the_url(s3_server, bucket, fault_proxy):
    store = ObjectStore(s3_server.storage_options(fault_proxy.endpoint_url), retry=RetryPolicy(3, 0.01, 0.02, 5.0))
    fault_proxy.inject("503", times=100, match=lambda method, path: method == "GET")
    url = f"s3://{bucket}/corpus/code.bin"
    with pytest.raises(ObjectStoreUnavailableError, match=rf"GET {url} failed 3 times .*SlowDown.*'retry'"):
        store.read(url)
    assert len(settled(fault_proxy).requests("GET")) == 3


def _child_reads(store: ObjectStore, url: str, queue) -> None:
    queue.put(store.read(url))


@pytest.mark.slow  # a forked child process
def test_the_store_pickles_and_works_in_a_forked_child_after_the_parent_used_it(s3_server, bucket):
    store = _store(s3_server)
    url = f"s3://{bucket}/corpus/code.bin"
    assert store.read(url) == b"c" * 10  # the parent's client (and fsspec's IO thread) now exist
    again = pickle.loads(pickle.dumps(store))
    assert again.read(url) == b"c" * 10 and again.retry == store.retry
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(store, url, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and queue.get(timeout=5) == b"c" * 10


def test_object_info_is_a_value():
    assert ObjectInfo("s3://b/k", 3, '"e"') == ObjectInfo("s3://b/k", 3, '"e"')


def _child_downloads(store: ObjectStore, url: str, dest) -> None:
    store.download(url, dest)


@pytest.mark.slow  # a forked child, killed
def test_a_download_killed_midway_leaves_no_file_a_reader_takes(s3_server, bucket, fault_proxy, tmp_path):
    # The answer's body comes slowly (the proxy stalls it): the child is killed while the temporary file is open.
    fault_proxy.stall_s = 30.0
    store = _store(s3_server, fault_proxy.endpoint_url, config_kwargs={"read_timeout": 60})
    url = f"s3://{bucket}/corpus/web.bin"
    fault_proxy.inject("stall", times=1, match=lambda method, path: method == "GET")
    dest = tmp_path / "web.bin"
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_child_downloads, args=(store, url, dest))
    child.start()
    deadline = time.monotonic() + 20
    while not list(tmp_path.glob(".web.bin.*.part")) and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.join(10)
    assert list(tmp_path.glob(".web.bin.*.part")), "the child was killed before it opened its temporary file"
    assert not dest.exists()  # only the temporary name: nothing a reader would take as the shard
    fault_proxy.clear()
    assert _store(s3_server).download(url, dest).size == 3000 and dest.read_bytes() == b"w" * 3000


def test_a_parquet_footer_is_read_by_ranges_only(s3_server, bucket, fault_proxy, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from torch_input_ckpt.stream.remote import _parquet_footer_count

    path = tmp_path / "books.parquet"
    import numpy as np

    tokens = np.random.default_rng(0).integers(0, 2**40, size=(3000, 64))  # incompressible: 1.5 MB of row groups
    table = pa.table({"tokens": list(tokens), "n": list(range(3000))})
    pq.write_table(table, path, row_group_size=500)
    s3_server.client().upload_file(str(path), bucket, "parquet/books.parquet")
    store = _store(s3_server, fault_proxy.endpoint_url)
    info = store.head(f"s3://{bucket}/parquet/books.parquet")
    assert _parquet_footer_count(store, info) == 3000
    gets = settled(fault_proxy).requests("GET")
    assert gets and all(entry.range for entry in gets)
    assert sum(entry.body_bytes for entry in gets) < info.size // 4  # the footer, not the row groups

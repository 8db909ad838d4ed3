"""InputCheckpointer on object storage, against a real S3-compatible server on loopback (moto's, tests/support/
s3server.py): exact resume through the objects into fresh objects, the same files as on disk, pins, pruning and
damage fallback, one writer per rank by a lease object, a reader racing a saver, and the network's failures (503s,
stalls) retried off the training step or surfaced at the next call."""

from __future__ import annotations

import functools
import json
import os
import socket
import threading
import time
import warnings

import pytest
import torch
from torch.utils.data import Dataset

from torch_input_ckpt import InputCheckpointer, InputCheckpointWarning, InputStateError, ResumableDataLoader
from torch_input_ckpt.errors import ObjectStoreUnavailableError
from torch_input_ckpt.remote import ObjectStore
from torch_input_ckpt.store import files
from torch_input_ckpt.store.directory import ObjectDirectory
from torch_input_ckpt.store.lease import ObjectWriterLease
from torch_input_ckpt.store.planner import plan_restore

from tests.checkpoint.test_ddp_checkpointer import BATCH as DDP_BATCH
from tests.checkpoint.test_ddp_checkpointer import N as DDP_N
from tests.checkpoint.test_ddp_checkpointer import _samples as ddp_samples
from tests.checkpoint.test_ddp_checkpointer import _train as ddp_train
from tests.support.distributed import run_world
from tests.support.examples import run_fresh, run_here
from tests.support.resume import epochs_of, to_py
from tests.support.s3server import FaultProxy

N = 23
# Few, fast retries: an injected fault costs milliseconds, a persistent one gives up within a second.
FAST_RETRY = {"attempts": 4, "base_delay_s": 0.01, "max_delay_s": 0.05, "total_s": 5.0}


class Augmenting(Dataset):
    """The index and a random draw, so that resumed streams also check the random augmentations."""

    def __len__(self):
        return N

    def __getitem__(self, index):
        return {"index": index, "draw": torch.randint(0, 10**6, ()).item()}


def make_loader() -> ResumableDataLoader:
    return ResumableDataLoader(Augmenting(), batch_size=4, shuffle=True, seed=9)


def take(loader, count: int) -> list:
    stream = epochs_of(loader, 3)
    head = [to_py(next(stream)) for _ in range(count)]
    stream.close()
    return head


@pytest.fixture
def prefix(s3_server):
    """A fresh bucket's prefix, the options that reach it, and a boto3 client to look at (or damage) objects."""
    bucket = s3_server.bucket("ckpt")
    options = {**s3_server.storage_options(), "retry": FAST_RETRY}
    return f"s3://{bucket}/run-7/input", options, s3_server.client(), bucket


def keys(client, bucket: str, under: str = "run-7/input/") -> list[str]:
    found = client.list_objects_v2(Bucket=bucket, Prefix=under).get("Contents", [])
    return sorted(item["Key"].removeprefix(under) for item in found)


def test_save_and_restore_through_objects_into_fresh_objects_with_pins_and_pruning(prefix, tmp_path):
    url, options, client, bucket = prefix
    expected = take(make_loader(), 12)
    loader = make_loader()
    stream = epochs_of(loader, 3)
    with InputCheckpointer(url, loader, every_n_steps=1, keep_last=2, storage_options=options) as ckpt:
        assert ckpt.restore_or_save_initial() is None
        for step in range(1, 6):
            next(stream)
            ckpt.after_step(step, pin=step == 2)
        assert ckpt.steps() == [2, 4, 5] and ckpt.pinned() == [2]
    stream.close()
    # Pruned to keep_last=2 plus the pin; the pointer; the released lease; nothing else.
    assert keys(client, bucket) == [
        "checkpoint_input_0",
        "input_0-00000002.json",
        "input_0-00000002.pin",
        "input_0-00000004.json",
        "input_0-00000005.json",
        "input_0.lease-00000000",
    ]
    # The object is the file the disk would hold: a local copy reads and plans as a checkpoint directory does.
    for name in ("checkpoint_input_0", "input_0-00000005.json"):
        (tmp_path / name).write_bytes(client.get_object(Bucket=bucket, Key=f"run-7/input/{name}")["Body"].read())
    assert files.read_pointer(tmp_path, 0) == 5 and files.read_checkpoint(tmp_path / "input_0-00000005.json").step == 5

    fresh = make_loader()
    with InputCheckpointer(url, fresh, every_n_steps=1, keep_last=2, storage_options=options) as ckpt:
        assert ckpt.restore() == 5
        assert take(fresh, 7) == expected[5:]
        assert ckpt.unpin(2) and ckpt.steps() == [4, 5]
    with InputCheckpointer(url, make_loader(), storage_options=options) as ckpt:
        assert ckpt.restore(4) == 4  # an exact older step, as after a model's rollback


def test_damaged_objects_fall_back_and_hostile_keys_are_ignored(prefix):
    url, options, client, bucket = prefix
    loader = make_loader()
    stream = epochs_of(loader, 3)
    with InputCheckpointer(url, loader, every_n_steps=1, keep_last=3, storage_options=options) as ckpt:
        for step in range(1, 4):
            next(stream)
            ckpt.after_step(step)
    stream.close()
    expected = take(make_loader(), 8)[2:]
    # The newest object garbled; keys that are not the prefix's own files (deeper, beside it, another spelling).
    client.put_object(Bucket=bucket, Key="run-7/input/input_0-00000003.json", Body=b'{"sha256": "garbled')
    for key in ("run-7/input/sub/input_0-00000009.json", "run-7/input-other/input_0-00000009.json"):
        client.put_object(Bucket=bucket, Key=key, Body=b"{}")
    client.put_object(Bucket=bucket, Key="run-7/input/input_0-9.json", Body=b"{}")
    fresh = make_loader()
    with InputCheckpointer(url, fresh, storage_options=options) as ckpt:
        with pytest.warns(InputCheckpointWarning, match=r"input_0-00000003\.json: not valid JSON") as caught:
            assert ckpt.restore() == 2
        assert f"{url}/input_0-00000003.json" in str(caught[0].message)  # named by its URL
        assert take(fresh, 6) == expected
        assert ckpt.steps() == [1, 2, 3]
        # An explicit step must be valid: refused, naming the object.
        with pytest.raises(InputStateError, match=r"s3://.*/input_0-00000003\.json"):
            ckpt.restore(3)
    # A pointer past its bound is refused before it is read whole, naming the URL.
    client.put_object(Bucket=bucket, Key="run-7/input/checkpoint_input_0", Body=b"#" * 5000)
    with pytest.raises(InputStateError, match=r"checkpoint_input_0: more than the bound of 4096 bytes"):
        files.read_pointer(ObjectDirectory(url, ObjectStore(options)), 0)


def test_a_second_writer_of_a_rank_is_refused_until_the_first_releases(prefix):
    url, options, client, bucket = prefix
    first = InputCheckpointer(url, make_loader(), storage_options=options)
    with pytest.raises(RuntimeError, match=rf"pid {os.getpid()} on host {socket.gethostname()}.*lease"):
        InputCheckpointer(url, make_loader(), storage_options=options)
    with InputCheckpointer(url, make_loader(), rank=1, storage_options=options):
        pass  # another rank's lease is another object
    first.close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # released: taken without a word
        InputCheckpointer(url, make_loader(), storage_options=options).close()
    assert "input_0.lease-00000001" in keys(client, bucket) and "input_0.lease-00000000" not in keys(client, bucket)


def test_a_lease_of_another_host_is_taken_only_once_expired(prefix):
    url, options, client, bucket = prefix
    lease = {"format": "torch_input_ckpt.writer_lease", "rank": 0, "pid": 4242, "host": "trainer-17", "token": "x"}
    key = "run-7/input/input_0.lease-00000004"
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps({**lease, "expires": 4e9, "released": False}))
    with pytest.raises(RuntimeError, match=r"pid 4242 on host trainer-17, lease s3://.*input_0\.lease-00000004"):
        InputCheckpointer(url, make_loader(), storage_options=options)
    client.put_object(Bucket=bucket, Key=key, Body=json.dumps({**lease, "expires": 1.0, "released": False}))
    with pytest.warns(InputCheckpointWarning, match=r"taking over the writer lease of rank 0 left by pid 4242"):
        InputCheckpointer(url, make_loader(), storage_options=options).close()


def test_a_writer_whose_lease_was_taken_over_stops_writing(prefix):
    url, options, client, bucket = prefix
    loader = make_loader()
    ckpt = InputCheckpointer(url, loader, every_n_steps=1, storage_options=options)
    ckpt.save(1)
    ckpt.flush()
    # What a writer that found this one's lease expired does: create the next generation.
    client.put_object(Bucket=bucket, Key="run-7/input/input_0.lease-00000001", Body=b"{}")
    ckpt.save(2)
    with pytest.raises(RuntimeError, match=r"lost the writer lease of rank 0: another checkpointer took it over"):
        ckpt.flush()
    ckpt.close()
    assert "input_0-00000002.json" not in keys(client, bucket)


def test_a_store_that_ignores_conditional_writes_is_refused_by_name(s3_server):
    bucket = s3_server.bucket("ckpt")
    with FaultProxy(s3_server.endpoint_url) as proxy:
        handler = proxy._server.RequestHandlerClass

        class IgnoringPreconditions(handler):  # a store that drops If-None-Match, as some S3-compatible ones do
            def do_PUT(self):  # noqa: N802 - BaseHTTPRequestHandler's name
                del self.headers["If-None-Match"]
                self._handle()

        proxy._server.RequestHandlerClass = IgnoringPreconditions
        options = s3_server.storage_options(proxy.endpoint_url)
        with pytest.raises(ValueError, match=r"cannot guarantee one writer per rank.*If-None-Match"):
            InputCheckpointer(f"s3://{bucket}/input", make_loader(), storage_options=options)


def test_the_network_is_off_the_training_step_and_failures_surface_at_the_next_call(s3_server):
    bucket = s3_server.bucket("ckpt")
    with FaultProxy(s3_server.endpoint_url, stall_s=1.0) as proxy:
        options = {**s3_server.storage_options(proxy.endpoint_url), "retry": FAST_RETRY}
        url = f"s3://{bucket}/input"
        ckpt = InputCheckpointer(url, make_loader(), every_n_steps=1, storage_options=options)
        saves = ckpt.after_step
        # A stalled upload: after_step returns while the PUT is still held by the proxy.
        proxy.inject("stall", match=lambda method, path: method == "PUT" and "input_0-00000001" in path)
        assert saves(1)
        assert 1 not in files.list_steps(ckpt.directory).get(0, [])
        # Two 503s on the next file: retried by the writer, the save succeeds.
        proxy.inject("503", times=2, match=lambda method, path: method == "PUT" and "input_0-00000002" in path)
        assert saves(2)
        ckpt.flush()
        assert ckpt.steps() == [1, 2]
        assert [r.status for r in proxy.requests("PUT") if "input_0-00000002" in r.path] == [503, 503, 200]
        # A store that stays down: the save fails after the bounded retries, raised by the next call.
        proxy.inject("503", times=1000, match=lambda method, path: method == "PUT" and "input_0-00000003" in path)
        assert saves(3)
        with pytest.raises(ObjectStoreUnavailableError, match=r"input_0-00000003\.json") as raised:
            ckpt.flush()
        assert "while writing the input checkpoint of step 3 (rank 0)" in "".join(raised.value.__notes__)
        proxy.clear()
        ckpt.close()
        with InputCheckpointer(url, make_loader(), storage_options=options) as again:
            # An outage while restoring is raised, naming the object: never taken for damage to fall back past.
            proxy.inject("503", times=1000, match=lambda method, path: method == "GET" and "input_0-00000002" in path)
            with pytest.raises(ObjectStoreUnavailableError, match=r"input_0-00000002\.json"):
                again.restore()
            proxy.clear()
            assert again.restore() == 2


def test_a_reader_racing_a_saver_always_plans_a_committed_step(prefix):
    url, options, _, _ = prefix
    loader = make_loader()
    stream = epochs_of(loader, 6)
    ckpt = InputCheckpointer(url, loader, every_n_steps=1, keep_last=1, storage_options=options)
    ckpt.save(0)
    ckpt.flush()
    done = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def read() -> None:
        directory = ObjectDirectory(url, ObjectStore(options))
        try:
            while not done.is_set():
                plan = plan_restore(directory, 1)
                assert plan is not None and plan.checkpoint is not None and plan.checkpoint.step == plan.step
                seen.append(plan.step)
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for step in range(1, 13):
            next(stream)
            ckpt.after_step(step)
            ckpt.flush()
    finally:
        done.set()
        reader.join()
        stream.close()
        ckpt.close()
    assert not errors, errors
    assert seen and seen == sorted(seen), seen  # never an older step after a newer one, never none
    assert len(set(seen)) > 1, seen  # it did race: it saw the saver move on


def test_storage_options_belong_to_urls():
    with pytest.raises(ValueError, match="storage_options are for an object-store URL"):
        InputCheckpointer("local-dir", make_loader(), storage_options={"anon": True})


@pytest.mark.slow
def test_checkpoint_s3_example_resumes_from_the_objects_in_a_fresh_process(s3_server, monkeypatch, capfd):
    for name, value in s3_server.env().items():  # how the example finds the server: the standard AWS_* variables
        monkeypatch.setenv(name, value)
    bucket = s3_server.bucket("example")
    run_here("checkpoint_s3.py", f"s3://{bucket}/whole/input")
    uninterrupted = capfd.readouterr().out.splitlines()
    assert len(uninterrupted) == 12 and uninterrupted[0].startswith("1 0 ")  # 2 epochs of 6 batches
    run_here("checkpoint_s3.py", f"s3://{bucket}/stopped/input", 5)
    assert capfd.readouterr().out.splitlines() == uninterrupted[:5]
    resumed, log = run_fresh("checkpoint_s3.py", f"s3://{bucket}/stopped/input")
    assert f"s3://{bucket}/stopped/input/input_0-00000004.json at step 4" in log
    assert resumed == uninterrupted[4:]


def test_the_lease_is_renewed_and_its_loss_seen_by_the_renewal(prefix):
    url, options, client, bucket = prefix
    lease = ObjectWriterLease(ObjectDirectory(url, ObjectStore(options)), 5, seconds=0.6)
    key = "run-7/input/input_5.lease-00000000"

    def expires() -> float:
        return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["expires"]

    first = expires()
    deadline = time.monotonic() + 10
    while expires() == first:  # renewed every seconds / 3
        assert time.monotonic() < deadline, "the lease was never renewed"
        time.sleep(0.05)
    lease.check()  # still held
    client.put_object(Bucket=bucket, Key="run-7/input/input_5.lease-00000001", Body=b"{}")
    with pytest.raises(RuntimeError, match=r"lost the writer lease of rank 5: another checkpointer took it over"):
        lease.check()
    lease.release()
    assert json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())["released"] is False  # not its own


@pytest.mark.slow
def test_a_job_of_2_ranks_resumes_on_3_from_the_objects_exactly_once(prefix):
    """torch.distributed (gloo) on both jobs: each rank its own lease; rank 0 plans from the prefix and shares it."""
    url, options, client, bucket = prefix
    train = functools.partial(ddp_train, every_n_steps=1, storage_options=options)
    first = run_world(train, 2, url, 5, None)
    second = run_world(train, 3, url, None, 3)
    assert all(restored == 3 for restored, _, _ in second)
    seen = ddp_samples(first, up_to=3) + ddp_samples(second)
    remaining = DDP_N - 3 * 2 * DDP_BATCH
    padding = -(-remaining // 3) * 3 - remaining
    assert set(seen) == set(range(DDP_N)), "nothing missing"
    assert sum(seen.values()) == DDP_N + padding, "nothing twice but DistributedSampler's padding"
    leases = sorted(name for name in keys(client, bucket) if ".lease-" in name)
    assert leases == ["input_0.lease-00000001", "input_1.lease-00000001", "input_2.lease-00000000"]

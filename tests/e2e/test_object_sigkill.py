"""SIGKILL a training process checkpointing to an object-store prefix (moto's S3 server on loopback) at random
moments, restart it each time: the stream the model trained on equals an uninterrupted run, each restart takes over
the killed writer's lease at once (same host, dead pid), and the prefix is left with the newest objects only."""

from __future__ import annotations

import json
import random
import signal
import time

import pytest

from torch_input_ckpt.remote import ObjectStore
from torch_input_ckpt.store import files
from torch_input_ckpt.store.directory import ObjectDirectory

from tests.e2e.test_sigkill import kill_group, records, trained_stream, wait_for_records
from tests.support import preempted_child
from tests.support.paths import SUPPORT

CHILD = SUPPORT / "object_child.py"
TOTAL = 12  # steps: 10 batches per epoch, so the run crosses an epoch
KILLS = 3
TIMEOUT = 30


def wait_for_commit(proc, directory: ObjectDirectory) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not files.read_pointer(directory, 0):
        assert proc.poll() is None, f"child exited early ({proc.returncode}): {proc.stderr.read().decode()}"
        assert time.monotonic() < deadline, "child committed no checkpoint"
        time.sleep(0.01)


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_the_exact_stream_from_objects(tmp_path, s3_server, forkserver):
    reference_log = tmp_path / "reference.jsonl"
    preempted_child.main(str(tmp_path / "reference"), str(reference_log), TOTAL, 0)  # where it saves: no matter
    expected, _ = trained_stream(reference_log)
    assert len(expected) == TOTAL

    bucket = s3_server.bucket("killed")
    url, options = f"s3://{bucket}/run/input", s3_server.storage_options()
    directory = ObjectDirectory(url, ObjectStore(options))
    rng = random.Random(2024)
    log = tmp_path / "log.jsonl"
    log.touch()
    for kill in range(KILLS):
        before = len(records(log))
        proc = forkserver.start(CHILD, url, log, TOTAL, json.dumps(options))
        try:
            wait_for_records(proc, log, before + 1 + rng.randint(1, 2))
            if kill == KILLS - 1:
                wait_for_commit(proc, directory)  # so that the final run has to restore
            time.sleep(rng.uniform(0, 0.05))  # often mid-upload
        finally:
            kill_group(proc)
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, "the child finished before it was killed: raise TOTAL"
    # The last run is forked too (a fresh process that holds nothing of the killed ones; test_sigkill.py's last run
    # is a fresh interpreter): an interpreter start with torch and the S3 client's imports costs 5-10 s here.
    proc = forkserver.start(CHILD, url, log, TOTAL, json.dumps(options))
    assert proc.wait(timeout=TIMEOUT * 2) == 0, proc.stderr.read().decode()
    proc.stderr.close()

    trained, restores = trained_stream(log)
    assert len(restores) == KILLS + 1 and restores[0] == 0 and restores[-1] > 0
    assert trained == expected
    names = sorted(directory.names())
    assert names == [
        "checkpoint_input_0",
        f"input_0-{TOTAL - 1:08d}.json",
        f"input_0-{TOTAL:08d}.json",
        f"input_0.lease-{KILLS:08d}",  # one generation per run; the superseded ones deleted
    ]
    assert files.read_pointer(directory, 0) == TOTAL

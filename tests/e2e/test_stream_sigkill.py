"""SIGKILL a 2-worker training process reading a packed ShardedStream at random moments (a few times),
restart it each time: the packed sequences trained on, step by step, equal an uninterrupted run's."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from torch_input_ckpt.stream.shards import write_index

from tests.e2e.test_sigkill import finish, kill_group, records, trained_stream, wait_for_records
from tests.support import stream_child
from tests.support.paths import SUPPORT
from tests.support.resume import release, start_child
from tests.support.stream_data import write_shards

CHILD = SUPPORT / "stream_child.py"
TOTAL = 24  # steps: 2 packed sequences a step, ~9 steps an epoch


def start(shards: Path, directory: Path, log: Path) -> subprocess.Popen:
    return start_child(CHILD, shards, directory, log, TOTAL)


@pytest.mark.slow
def test_sigkill_of_a_stream_with_workers_resumes_exactly(tmp_path, forkserver):
    shards = write_shards(tmp_path / "shards", "npy")
    write_index(shards)
    reference_log = tmp_path / "reference.jsonl"
    # The uninterrupted run, in this process: a fresh interpreter is what the killed runs test, not the reference.
    stream_child.main(str(shards), str(tmp_path / "reference"), str(reference_log), TOTAL)
    release()
    expected, _ = trained_stream(reference_log)
    assert len(expected) == TOTAL

    rng = random.Random(14)
    directory, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    log.touch()
    kills = 3
    for _ in range(kills):
        before = len(records(log))
        proc = forkserver.start(CHILD, shards, directory, log, TOTAL)  # as in test_sigkill: the final run is fresh
        try:
            wait_for_records(proc, log, before + 1 + rng.randint(1, 5))
            time.sleep(rng.uniform(0, 0.004))
        finally:
            kill_group(proc)
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, "the child finished before it was killed: raise TOTAL"
    finish(start(shards, directory, log))
    trained, restores = trained_stream(log)
    assert len(restores) == kills + 1 and restores[-1] > 0
    assert trained == expected

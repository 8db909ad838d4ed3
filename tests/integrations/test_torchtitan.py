"""torchtitan's own CheckpointManager (dcp.async_save every step, dcp.load at start) on CPU gloo ranks, running
examples/torchtitan_dcp.py: 2 ranks SIGKILLed at a random step, 3 ranks resume from the newest step folder, and
every packed sequence of the epoch is trained exactly once (DistributedSampler's padding apart); plus the batches'
shape and the loader's refusals, in this process."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from torch_input_ckpt import Mixture
from torch_input_ckpt.stream.shards import write_index
from torch_input_ckpt.torchtitan import ResumableTitanDataLoader, TitanCollate

from tests.support.distributed import free_port
from tests.support.stream_data import write_shards

SIZES = (20, 12, 18, 15, 22)  # documents per shard: ~30 packed sequences of 9 tokens, ~8 steps on 2 ranks
TIMEOUT = 120.0


def _rank(rank: int, world: int, port: int, args: tuple) -> None:
    """One rank of the example, as torchrun starts it (its environment), in a process forked before anything of
    torch.distributed or the run exists here: fresh objects, without paying torchtitan's import per rank."""
    from examples import torchtitan_dcp

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    # A process's own warning filters, not pytest's "error": torchtitan's LR scheduler warns as it loads its state.
    warnings.resetwarnings()
    torchtitan_dcp.main(*args)


def _start_world(world: int, *args: object) -> list[multiprocessing.Process]:
    ctx = multiprocessing.get_context("fork")
    port = free_port()
    runs = [ctx.Process(target=_rank, args=(r, world, port, args)) for r in range(world)]
    for run in runs:
        run.start()
    return runs


def _lines(log: Path) -> list[dict]:
    text = log.read_text() if log.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def _newest_complete_step(folder: Path) -> int:
    """The step torchtitan's CheckpointManager loads: the newest step-N folder that has DCP's .metadata."""
    return max((int(p.name.split("-")[1]) for p in folder.glob("step-*") if (p / ".metadata").is_file()), default=0)


@pytest.mark.slow
def test_checkpoint_manager_sigkill_then_resume_on_another_dp_degree(tmp_path):
    from examples.torchtitan_dcp import LOCAL_BATCH, SEQ_LEN, dataloader_config

    shards = write_shards(tmp_path / "shards", "jsonl", SIZES)
    write_index(shards, "tokens")
    one = dataloader_config(str(shards)).build(
        dp_world_size=1, dp_rank=0, seq_len=SEQ_LEN, local_batch_size=LOCAL_BATCH
    )
    epoch = [tuple(row) for inputs, _ in one for row in inputs["input"].tolist()]
    assert len(set(epoch)) == len(epoch) > 20
    folder, log = tmp_path / "ckpt", tmp_path / "batches.jsonl"

    kill_after = random.Random().randint(2, 5)  # steps logged by both ranks before the SIGKILL
    first = _start_world(2, str(shards), str(folder), 100, str(log))
    deadline = time.monotonic() + TIMEOUT
    # Killed once both ranks logged kill_after steps and some (asynchronous) save has completed: a resume, not a start.
    while not log.exists() or log.read_bytes().count(b"\n") < 2 * kill_after or not _newest_complete_step(folder):
        assert all(run.is_alive() for run in first), [run.exitcode for run in first]
        assert time.monotonic() < deadline, "the 2-rank run made no progress"
        time.sleep(0.02)  # the ranks need the 2 cores more than this loop does
    for run in first:
        os.kill(run.pid, signal.SIGKILL)
    for run in first:
        run.join(TIMEOUT)
    assert [run.exitcode for run in first] == [-signal.SIGKILL] * 2
    saved = _newest_complete_step(folder)
    killed = _lines(log)

    second = _start_world(3, str(shards), str(folder), 100, str(log))
    for run in second:
        run.join(TIMEOUT)
    assert [run.exitcode for run in second] == [0] * 3
    resumed = _lines(log)[len(killed) :]
    assert {r["world"] for r in resumed} == {3} and min(r["step"] for r in resumed) == saved + 1

    # The timeline the model trained on: the killed run up to the step it saved, then the 3 ranks.
    trained = [tuple(row) for r in killed if r["step"] <= saved for row in r["input"]]
    trained += [tuple(row) for r in resumed for row in r["input"]]
    counts = Counter(trained)
    left = len(epoch) - min(len(epoch), saved * 2 * LOCAL_BATCH)
    padding = -(-left // 3) * 3 - left
    assert not set(epoch) - set(counts), f"killed after step {kill_after}: never trained {set(epoch) - set(counts)}"
    assert not set(counts) - set(epoch), "trained sequences that are not in the epoch"
    twice = sorted(k for k, c in counts.items() if c > 1)
    assert sum(c - 1 for c in counts.values()) == padding and len(twice) == padding, (
        f"killed after step {kill_after}, saved at {saved}: trained twice {twice}, expected {padding} padding"
    )


def _rows(tokenizer: object, seq_len: int) -> list[list[int]]:
    """A map-style dataset by name (``dataset="tests.integrations.test_torchtitan:_rows"``): rows of seq_len + 1."""
    return [[100 * i + j for j in range(seq_len + 1)] for i in range(10)]


def _mixed_rows(tokenizer: object, seq_len: int) -> Mixture:
    """A Mixture by name: rows of two sources (web rows start at 0, code rows at 5000), weights 1:1."""
    web = [[100 * i + j for j in range(seq_len + 1)] for i in range(6)]
    code = [[5000 + 100 * i + j for j in range(seq_len + 1)] for i in range(6)]
    return Mixture({"web": web, "code": code}, {"web": 1, "code": 1})


def test_batches_are_inputs_and_labels_shifted_by_one_and_bad_configs_are_refused():
    loader = ResumableTitanDataLoader(
        ResumableTitanDataLoader.Config(dataset="tests.integrations.test_torchtitan:_rows", shuffle=False),
        dp_world_size=2,
        dp_rank=1,
        seq_len=4,
        local_batch_size=3,
    )
    inputs, labels = next(iter(loader))
    # Rank 1 of 2 takes rows 1, 3, 5 (the rows at its positions of the global order).
    assert inputs["input"].tolist() == [[100 * i + j for j in range(4)] for i in (1, 3, 5)]
    assert torch.equal(labels, inputs["input"] + 1)
    mixed = ResumableTitanDataLoader(
        ResumableTitanDataLoader.Config(dataset="tests.integrations.test_torchtitan:_mixed_rows", infinite=False),
        dp_world_size=1,
        dp_rank=0,
        seq_len=4,
        local_batch_size=4,
    )
    rows = [row for inputs, _ in mixed for row in inputs["input"].tolist()]
    assert sorted(row[0] for row in rows) == [100 * i for i in range(6)] + [5000 + 100 * i for i in range(6)]
    with pytest.raises(ValueError, match="exactly one of dataset"):
        ResumableTitanDataLoader(
            ResumableTitanDataLoader.Config(), dp_world_size=1, dp_rank=0, seq_len=4, local_batch_size=1
        )
    with pytest.raises(ValueError, match="a sample of 3 tokens; .* seq_len \\+ 1 = 5"):
        TitanCollate(4)([[1, 2, 3]])

"""Bad samples (on_error="skip"): a dataset that raises on a fixed set of keys, resumed mid-epoch from the checkpoint
file into fresh objects with another num_workers, delivers the uninterrupted run's stream; each bad key is logged
once and recorded in the state, and left out of the next epoch; max_errors raises with the list; on_error="raise"
is torch's behaviour; loader.stats() reports the waits."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import Dataset

from torch_input_ckpt import (
    BadSampleError,
    InputCheckpointer,
    InputStateError,
    Mixture,
    ResumableDataLoader,
    ResumableSampler,
    ShardedStream,
)
from torch_input_ckpt.cli.inspection import format_report, inspect_directory
from torch_input_ckpt.stream.shards import write_index

from tests.support.examples import run_fresh, run_here
from tests.support.resume import release
from tests.support.stream_data import all_ids, deliver_all, write_shards

N = 23
BAD = {4: ValueError, 9: KeyError, 17: OSError}  # an OSError that is the sample's (a truncated file), not I/O's


class Flaky(Dataset):
    """Index ``i``, except that the keys of ``BAD`` raise; ``delay`` seconds per fetch."""

    def __init__(self, bad: dict[int, type[Exception]] | None = None, delay: float = 0.0) -> None:
        self.bad = BAD if bad is None else bad
        self.delay = delay

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> int:
        if self.delay:
            time.sleep(self.delay)
        if index in self.bad:
            raise self.bad[index](f"record {index} is corrupt")
        return index


def _loader(num_workers: int = 0, *, dataset: Dataset | None = None, **options: Any) -> ResumableDataLoader:
    options = {"on_error": "skip", **options}
    return ResumableDataLoader(
        Flaky() if dataset is None else dataset,
        batch_size=4,
        shuffle=True,
        seed=11,
        num_workers=num_workers,
        **options,
    )


def _train(loader: ResumableDataLoader, directory: Path, until: int, epochs: int = 2) -> list[tuple[int, list[int]]]:
    """The loop users write: restore (or save step 0), then a checkpoint file after every step; stop after step
    ``until`` (or at the end of ``epochs``). Returns (epoch, batch) for each step trained."""
    trained = []
    with InputCheckpointer(directory, loader, every_n_steps=1) as ckpt:
        step = ckpt.restore_or_save_initial() or 0
        while loader.epoch < epochs:
            epoch = loader.epoch
            for batch in loader:
                step += 1
                trained.append((epoch, batch if isinstance(batch, list) else batch.tolist()))
                ckpt.after_step(step)
                if step == until:
                    return trained
    return trained


def _logged(caplog: pytest.LogCaptureFixture) -> list[int]:
    return [r.args[0] for r in caplog.records if r.getMessage().startswith("skipped bad sample")]


# 0 -> 2 workers: test_bad_samples_example_resumes_in_a_fresh_process (a fresh process, from the file).
@pytest.mark.parametrize(("first", "then"), [(2, 0)])
def test_resume_from_the_file_with_other_workers_delivers_the_uninterrupted_stream(tmp_path, caplog, first, then):
    caplog.set_level(logging.WARNING, logger="torch_input_ckpt")
    uninterrupted_loader = _loader(first)
    uninterrupted = _train(uninterrupted_loader, tmp_path / "whole", until=-1)
    assert _logged(caplog) and sorted(_logged(caplog)) == sorted(BAD)
    caplog.clear()
    # Stop after the batch that held the first bad key (the others are still ahead: fetched ahead by workers,
    # but not delivered, they must not be logged or recorded by the stopped run).
    flat = [i for _, batch in uninterrupted for i in batch]
    stop = next(k for k, (_, batch) in enumerate(uninterrupted) if len(batch) < 4) + 1
    head = _train(_loader(first), tmp_path / "run", until=stop)
    release()
    fresh = _loader(then)
    rest = _train(fresh, tmp_path / "run", until=-1)
    release()
    assert head + rest == uninterrupted
    # Each bad key logged once over the two runs, recorded once (with its error) in the resumed loader's state.
    assert sorted(_logged(caplog)) == sorted(BAD)
    assert fresh.bad_samples == uninterrupted_loader.bad_samples
    assert {(key, error.split(":")[0]) for _, key, error in fresh.bad_samples} == {
        (k, t.__name__) for k, t in BAD.items()
    }
    # Epoch 0: every good key once, no bad one; epoch 1: the same (the bad ones excluded, never fetched again).
    good = [i for i in range(N) if i not in BAD]
    for epoch in (0, 1):
        delivered = [i for e, batch in uninterrupted if e == epoch for i in batch]
        assert sorted(delivered) == good, f"epoch {epoch}"
    assert [len(b) for e, b in uninterrupted if e == 1] == [4, 4, 4, 4, 4], "epoch 1 has 20 samples, full batches"
    assert len(flat) == 2 * len(good)


def test_max_errors_raises_with_the_list_before_the_batch_counts(tmp_path):
    expected = _train(_loader(), tmp_path / "whole", until=-1, epochs=1)
    loader = _loader(max_errors=2)
    trained = []
    with InputCheckpointer(tmp_path / "run", loader, every_n_steps=1) as ckpt:
        ckpt.restore_or_save_initial()
        with pytest.raises(BadSampleError, match="more than max_errors=2") as raised:
            for step, batch in enumerate(loader, 1):
                trained.append((0, batch.tolist()))
                ckpt.after_step(step)
    assert sorted(key for _, key, _ in raised.value.samples) == sorted(BAD)
    assert all(epoch == 0 for epoch, _, _ in raised.value.samples)
    assert all(f"record {key} is corrupt" in str(raised.value) for key in BAD)
    # The batch that crossed the limit did not count: a resume with a higher limit continues with it.
    resumed = _loader(max_errors=3)
    rest = _train(resumed, tmp_path / "run", until=-1, epochs=1)
    assert trained + rest == expected


def test_two_ranks_skip_in_each_epoch_without_excluding(tmp_path):
    # Exclusion lists must agree over the ranks, and each rank meets only its own bad samples: with several
    # ranks a bad sample is skipped (and recorded, by the rank that met it) in each epoch, never excluded.
    def rank_loader(rank: int) -> ResumableDataLoader:
        sampler = ResumableSampler(Flaky(), shuffle=True, seed=11, num_replicas=2, rank=rank)
        return ResumableDataLoader(Flaky(), batch_size=4, sampler=sampler, on_error="skip")

    loaders = [rank_loader(0), rank_loader(1)]
    for epoch in (0, 1):
        delivered = [i for loader in loaders for batch in loader for i in batch.tolist()]
        # 23 positions padded to 24 over 2 ranks: one good sample twice, or one bad one skipped twice.
        assert set(delivered) == set(range(N)) - set(BAD), f"epoch {epoch}"
    recorded = [(e, key) for loader in loaders for e, key, _ in loader.bad_samples]
    assert sorted(recorded) == sorted((e, key) for e in (0, 1) for key in BAD)
    assert all("excluded" not in loader.state_dict()["sampler"] for loader in loaders)


def test_on_error_raise_is_torchs_behaviour():
    for workers in (0, 2):
        loader = _loader(workers, on_error="raise")
        with pytest.raises(tuple(BAD.values()), match="is corrupt"):
            deliver_all(loader)  # releases torch's iterator before the error goes on (no 5 s join per worker)
        assert loader.bad_samples == [] and "bad_samples" not in loader.state_dict()
        release()


@pytest.mark.parametrize("error", [MemoryError, ConnectionError, TimeoutError, InputStateError])
def test_errors_that_are_not_the_samples_fault_are_raised(error):
    loader = _loader(dataset=Flaky({4: error}))
    with pytest.raises(error):
        list(loader)
    assert loader.bad_samples == []


def test_arguments_are_checked():
    with pytest.raises(ValueError, match='on_error must be "raise" or "skip"'):
        _loader(on_error="ignore")
    with pytest.raises(ValueError, match="max_errors"):
        _loader(max_errors=-1)
    with pytest.raises(ValueError, match="needs a batch_size"):
        ResumableDataLoader(Flaky(), batch_size=None, on_error="skip")


def test_a_malformed_bad_samples_entry_is_refused_naming_it():
    loader = _loader()
    list(loader)
    state = loader.state_dict()
    assert state["bad_samples"][0][1] in BAD
    for damaged in ([[0, -1, "x"]], [[0, 4]], "x", [[0, 4, "e" * 201]]):
        with pytest.raises(InputStateError, match="bad_samples"):
            _loader().load_state_dict({**state, "bad_samples": damaged}, source="ckpt.json")


class _FlakySource(Dataset):
    def __init__(self, name: str, length: int, bad: int | None) -> None:
        self.name, self.length, self.bad = name, length, bad

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> str:
        if index == self.bad:
            raise ValueError(f"{self.name} {index} is corrupt")
        return f"{self.name}{index}"


def _mixture_loader() -> ResumableDataLoader:
    mix = Mixture({"web": _FlakySource("web", 9, 5), "code": _FlakySource("code", 4, None)}, {"web": 2, "code": 1})
    return ResumableDataLoader(mix, batch_size=3, shuffle=True, seed=2, collate_fn=list, on_error="skip")


def test_a_mixture_skips_its_bad_item_in_each_epoch_and_resumes_exactly(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="torch_input_ckpt")
    whole_loader = _mixture_loader()
    whole = _train(whole_loader, tmp_path / "whole", until=-1, epochs=3)
    items = [i for _, batch in whole for i in batch]
    assert "web5" not in items
    # A mixture's order has no exclusion list: the bad item is skipped, logged and recorded in each epoch that
    # draws it (each epoch holds it once here, as web's 9 items fill 9 of 13 places).
    assert [(epoch, error) for epoch, _, error in whole_loader.bad_samples] == [
        (e, "ValueError: web 5 is corrupt") for e in range(3)
    ]
    caplog.clear()
    head = _train(_mixture_loader(), tmp_path / "run", until=5, epochs=3)
    resumed = _mixture_loader()
    rest = _train(resumed, tmp_path / "run", until=-1, epochs=3)
    assert head + rest == whole
    assert resumed.bad_samples == whole_loader.bad_samples
    assert len(_logged(caplog)) == 3


def _rejecting(sample: dict[str, Any]) -> str:
    """A stream's transform that fails on two documents (as a tokenizer may on a malformed one)."""
    if sample["id"] in ("3-4", "5-0"):
        raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, f"document {sample['id']}")
    return sample["id"]


def _stream_loader(root: Path, workers: int) -> ResumableDataLoader:
    stream = ShardedStream(root, lanes=3, seed=3, window=4, transform=_rejecting)
    return ResumableDataLoader(stream, batch_size=3, collate_fn=list, num_workers=workers, seed=7, on_error="skip")


def test_a_stream_skips_what_its_transform_rejects_and_resumes_exactly(tmp_path):
    root = write_shards(tmp_path / "shards", "jsonl")
    write_index(root)
    whole_loader = _stream_loader(root, 0)
    whole = _train(whole_loader, tmp_path / "whole", until=-1)
    for epoch in (0, 1):  # a stream's order has no exclusion list: skipped in each epoch
        delivered = [i for e, batch in whole if e == epoch for i in batch]
        assert sorted(delivered) == sorted(set(all_ids()) - {"3-4", "5-0"}), f"epoch {epoch}"
    assert sorted((e, error.split(":")[0]) for e, _, error in whole_loader.bad_samples) == [
        (e, "UnicodeDecodeError") for e in (0, 0, 1, 1)
    ]
    head = _train(_stream_loader(root, 2), tmp_path / "run", until=7)
    release()
    resumed = _stream_loader(root, 0)
    assert head + _train(resumed, tmp_path / "run", until=-1) == whole
    assert resumed.bad_samples == whole_loader.bad_samples


def test_stats_reports_waits_for_the_caller():
    fast, slow = _loader(), _loader(dataset=Flaky(delay=0.004))
    assert fast.stats().batches == 0
    results = {}
    for name, loader in (("fast", fast), ("slow", slow)):
        loader.stats()
        for step, _ in enumerate(loader, 1):
            time.sleep(0.002)  # the "training step"
            if step == 3:
                results[name] = loader.stats()
    for stats in results.values():
        assert stats.batches == 3
        assert 0.0 <= stats.wait_fraction <= 1.0 and 0.0 < stats.waited_s < stats.elapsed_s
    assert results["slow"].waited_s > results["fast"].waited_s
    assert results["slow"].wait_fraction > results["fast"].wait_fraction
    # The 3 bad samples were met in the first 3 batches or later; all 3 are counted in some interval.
    assert results["fast"].bad_samples + fast.stats().bad_samples == 3
    with pytest.raises(AttributeError):
        results["fast"].batches = 1  # type: ignore[misc]  # frozen


@pytest.mark.slow
def test_bad_samples_example_resumes_in_a_fresh_process(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO)
    capfd.readouterr()
    run_here("bad_samples.py", tmp_path / "whole")
    whole = capfd.readouterr().out.splitlines()
    assert any(r.getMessage().startswith("input wait") for r in caplog.records), "stats() logged"
    caplog.clear()
    # Preempted after step 3 (two bad records were in its batches), resumed in a fresh process with 2 workers.
    run_here("bad_samples.py", tmp_path / "run", "--stop-after", 3)
    head = capfd.readouterr().out.splitlines()
    rest, rest_log = run_fresh("bad_samples.py", tmp_path / "run", "--workers", 2)
    assert head + rest == whole
    assert json.loads(whole[-1])["bad_samples"] == json.loads(rest[-1])["bad_samples"]
    # Each bad record logged once: by the first run (in this process) or by the fresh one.
    assert rest_log.count("skipped bad sample") == 1, "the fresh process met the third one"
    fresh = [line.split()[5] for line in rest_log.splitlines() if "skipped bad sample" in line]
    assert Counter(map(str, _logged(caplog))) + Counter(fresh) == Counter({"4": 1, "9": 1, "17": 1})
    # inspect lists them from the file.
    report = inspect_directory(tmp_path / "run")
    listed = report["ranks"][0]["newest"]["components"]["input"]["bad_samples"]
    assert sorted(key for _, key, _ in listed) == [4, 9, 17]
    assert "bad samples: 3" in format_report(report)

"""InputCheckpointer: exact resume through files, durability rules, damage fallback, policies, failures."""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, IterableDataset, RandomSampler, Sampler
from torchdata.stateful_dataloader import StatefulDataLoader

import torch_input_ckpt.checkpoint.checkpointer as checkpointer_module
from torch_input_ckpt import (
    ExternalStateWarning,
    InputCheckpointer,
    InputCheckpointWarning,
    InputStateError,
    ResumableDataLoader,
    ResumableSampler,
    World,
)
from torch_input_ckpt.store import files
from torch_input_ckpt.store.files import InputFile

from tests.support.resume import epochs_of, to_py

REPO = Path(__file__).resolve().parents[2]
N = 23


class Augmenting(Dataset):
    """The index and a random draw, so that resumed streams also check the random augmentations."""

    def __len__(self):
        return N

    def __getitem__(self, index):
        return {"index": index, "draw": torch.randint(0, 10**6, ()).item()}


def make_loader(num_workers: int = 0, **kwargs) -> ResumableDataLoader:
    return ResumableDataLoader(Augmenting(), batch_size=4, shuffle=True, seed=9, num_workers=num_workers, **kwargs)


def take(loader, count: int, epochs: int = 3) -> list:
    """The first ``count`` items of the README loop, leaving no worker iterator behind."""
    stream = epochs_of(loader, epochs)
    head = [next(stream) for _ in range(count)]
    stream.close()  # drops torch's iterator now, so its workers shut down here and not in a later fork
    return head


def saved_states(directory: Path, count: int = 3, **kwargs) -> dict[int, dict]:
    """A fresh start, then ``count`` steps saving at every step; the loader state at each step."""
    loader = make_loader()
    states = {0: loader.state_dict()}
    with InputCheckpointer(directory, loader, every_n_steps=1, **kwargs) as ckpt:
        assert ckpt.restore_or_save_initial() is None
        stream = epochs_of(loader, 10)
        for step in range(1, count + 1):
            next(stream)
            assert ckpt.after_step(step)
            states[step] = loader.state_dict()
        stream.close()
    return states


# -- exactness -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop", [0, 1, 3, 5, 6, 7])  # 6 batches per epoch: start, one, mid, end-1, end, next
def test_restore_through_files_continues_the_uninterrupted_stream(tmp_path, num_workers, stop):
    expected = list(epochs_of(make_loader(), 2))
    first = make_loader(num_workers)
    head = take(first, stop)
    with InputCheckpointer(tmp_path, first, every_n_steps=100) as ckpt:
        ckpt.save(stop)
    del first
    resumed = make_loader(num_workers)
    assert InputCheckpointer(tmp_path, resumed, every_n_steps=100).restore() == stop
    assert head + list(epochs_of(resumed, 2)) == expected


def test_restore_of_a_dict_of_components(tmp_path):
    """Two named pipelines in one checkpoint: each resumes where it was."""

    def make():
        return {
            "train": make_loader(),
            "aux": ResumableDataLoader(list(range(10)), batch_size=3, shuffle=True, seed=1),
        }

    expected = {name: list(epochs_of(loader, 2)) for name, loader in make().items()}
    first = make()
    heads = {"train": take(first["train"], 4), "aux": take(first["aux"], 2)}
    with InputCheckpointer(tmp_path, first, every_n_steps=1) as ckpt:
        ckpt.save(4)
    resumed = make()
    assert InputCheckpointer(tmp_path, resumed, every_n_steps=1).restore() == 4
    for name in expected:
        assert heads[name] + list(epochs_of(resumed[name], 2)) == expected[name]


def test_stateful_dataloader_with_shuffle_resumes_through_its_saved_generator(tmp_path):
    """torchdata's RandomSampler state holds a generator-state tensor: it is saved as raw bytes."""

    def make(seed):
        torch.manual_seed(seed)  # RandomSampler draws its seed from the global RNG
        return StatefulDataLoader(list(range(N)), batch_size=4, shuffle=True)

    expected = [to_py(b) for b in make(0)]
    first = make(0)
    stream = iter(first)
    head = [to_py(next(stream)) for _ in range(3)]
    with InputCheckpointer(tmp_path, first, every_n_steps=1) as ckpt:
        ckpt.save(3)
    del stream
    resumed = make(12345)  # another permutation unless the saved generator state is restored
    InputCheckpointer(tmp_path, resumed, every_n_steps=1).restore()
    assert head + [to_py(b) for b in resumed] == expected


def test_restore_of_an_exact_step_and_the_missing_step_error(tmp_path):
    states = saved_states(tmp_path, count=4, keep_last=None)
    for step in (1, 3, 0):
        loader = make_loader()
        assert InputCheckpointer(tmp_path, loader, every_n_steps=1).restore(step) == step
        assert loader.state_dict() == states[step]
    with pytest.raises(InputStateError, match=re.escape("at step 7; steps on disk: [0, 1, 2, 3, 4]")):
        InputCheckpointer(tmp_path, make_loader(), every_n_steps=1).restore(7)


def test_restore_or_save_initial(tmp_path):
    loader = make_loader()
    with InputCheckpointer(tmp_path, loader, every_n_steps=2) as ckpt:
        assert ckpt.restore_or_save_initial() is None
        assert ckpt.steps() == [0]
        take(loader, 2)
        assert not ckpt.after_step(1)
        assert ckpt.after_step(2)
        state = loader.state_dict()
    fresh = make_loader()
    with InputCheckpointer(tmp_path, fresh, every_n_steps=2) as ckpt:
        assert ckpt.restore_or_save_initial() == 2
        assert fresh.state_dict() == state
    with pytest.raises(InputStateError, match="no input checkpoint of rank 0"):
        InputCheckpointer(tmp_path / "empty", make_loader(), every_n_steps=1).restore()


def test_restore_logs_file_step_epoch_and_position(tmp_path, caplog):
    saved_states(tmp_path, count=7)  # 6 batches per epoch: step 7 is one batch into epoch 1
    with caplog.at_level(logging.INFO, logger="torch_input_ckpt"):
        InputCheckpointer(tmp_path, make_loader(), every_n_steps=1).restore()
    assert f"restored input pipeline from {tmp_path / 'input_0-00000007.json'} at step 7, epoch 1, position 4" in (
        caplog.text
    )


def test_restoring_different_components_than_saved_is_a_clear_error(tmp_path):
    saved_states(tmp_path, count=1)
    with pytest.raises(InputStateError, match=r"holds the state of \['input'\].*given \['a', 'b'\]"):
        InputCheckpointer(tmp_path, {"a": make_loader(), "b": make_loader()}, every_n_steps=1).restore()


def test_a_state_that_does_not_fit_is_reported_with_the_file(tmp_path):
    saved_states(tmp_path, count=1)
    other = ResumableDataLoader(list(range(N + 1)), batch_size=4, shuffle=True, seed=9)
    with pytest.raises(InputStateError, match=r"input_0-00000001\.json.*dataset_length=23"):
        InputCheckpointer(tmp_path, other, every_n_steps=1).restore()


# -- when it saves -------------------------------------------------------------------------------------


def test_every_n_steps(tmp_path):
    with InputCheckpointer(tmp_path, make_loader(), every_n_steps=3) as ckpt:
        saved = [step for step in range(1, 11) if ckpt.after_step(step)]
        assert saved == [3, 6, 9]
        assert ckpt.steps() == [3, 6, 9]


def test_every_n_seconds_uses_the_time_since_the_last_save(tmp_path):
    clock = [100.0]
    with InputCheckpointer(tmp_path, make_loader(), every_n_seconds=10, clock=lambda: clock[0]) as ckpt:
        decisions = []
        for step, now in enumerate([101, 109.9, 110, 111, 119, 125, 130], start=1):
            clock[0] = now
            decisions.append(ckpt.after_step(step))
        assert decisions == [False, False, True, False, False, True, False]
        ckpt.save(50)  # an explicit save restarts the interval
        clock[0] = 136
        assert not ckpt.after_step(51)
        assert ckpt.steps() == [3, 6, 50]


def test_both_intervals(tmp_path):
    clock = [0.0]
    with InputCheckpointer(
        tmp_path, make_loader(), every_n_steps=5, every_n_seconds=60, clock=lambda: clock[0]
    ) as ckpt:
        assert [s for s in range(1, 11) if ckpt.after_step(s)] == [5, 10]
        clock[0] = 61
        assert ckpt.after_step(11)


def test_without_a_schedule_only_explicit_saves_save(tmp_path):
    with InputCheckpointer(tmp_path, make_loader(), clock=lambda: 10.0**9) as ckpt:
        assert not any(ckpt.after_step(step) for step in range(1, 50))
        ckpt.save(7)
        assert ckpt.after_step(8, pin=True)
        assert ckpt.steps() == [7, 8] and ckpt.pinned() == [8]


def test_a_world_given_by_hand_is_recorded(tmp_path):
    with InputCheckpointer(tmp_path, make_loader(), every_n_steps=1, world=World(1, 4)) as ckpt:
        assert (ckpt.rank, ckpt.world_size, ckpt.world) == (1, 4, World(1, 4))
        ckpt.save(3)
    assert files.read_checkpoint(tmp_path / InputFile(1, 3).name).world_size == 4


def test_keep_last_deletes_older_files_of_its_rank_only(tmp_path):
    saved_states(tmp_path, count=6, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint_input_0",
        "input_0-00000005.json",
        "input_0-00000006.json",
        "input_0.lock",  # the one-writer lock (empty once released)
    ]
    assert (tmp_path / "input_0.lock").read_bytes() == b""
    saved_states(tmp_path / "all", count=4, keep_last=None)
    assert files.list_steps(tmp_path / "all") == {0: [0, 1, 2, 3, 4]}


def test_file_names_and_pointer_content(tmp_path):
    with InputCheckpointer(tmp_path, make_loader(), every_n_steps=1, rank=3) as ckpt:
        ckpt.save(120)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_input_3", "input_3-00000120.json", "input_3.lock"]
    assert (tmp_path / "checkpoint_input_3").read_text().splitlines()[1:] == [
        "latest: input_3-00000120.json",
        "step: 120",
    ]
    doc = json.loads((tmp_path / "input_3-00000120.json").read_text())
    assert (doc["format"], doc["version"], doc["rank"], doc["step"]) == (files.FILE_FORMAT, 1, 3, 120)
    assert doc["world_size"] is None  # a rank given by hand outside torch.distributed: size unknown
    assert abs(doc["wall_time"] - time.time()) < 60
    assert doc["states"]["input"]["kind"] == "ResumableDataLoader"
    claimed = doc.pop("sha256")
    assert claimed == hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_the_one_name_helper_builds_and_parses_only_its_own_names():
    assert InputFile(0, 5).name == "input_0-00000005.json"
    assert InputFile(12, 123456789).name == "input_12-123456789.json"
    assert InputFile.parse("input_12-123456789.json") == InputFile(12, 123456789)
    for foreign in [
        "input_0-5.json",
        "input_00-00000005.json",
        "input_0-00000005.pt",
        "model_0-00000005.json",
        "input_0-00000005.json.tmp12",
        "xinput_0-00000005.json",
    ]:
        assert InputFile.parse(foreign) is None, foreign
    assert InputFile.parse_pointer_name("checkpoint_input_2") == 2
    assert InputFile.parse_pointer_name("checkpoint") is None


def test_files_of_models_other_ranks_and_other_tools_are_never_touched(tmp_path):
    foreign = {
        "model-00000001.pt": b"weights",
        "checkpoint": b"model_checkpoint_path: 'model.ckpt-1'",
        "last.ckpt": b"lightning",
        "input_0-1.json": b"not our spelling",
        "input_1-00000001.json": b"another rank's",
        "checkpoint_input_1": b"another rank's pointer",
        ".input_1-00000001.json.tmp77": b"another rank's temporary",
        "input_0-00000002.json.bak": b"a backup",
    }
    for name, data in foreign.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / ".input_0-00000009.json.tmp77").write_bytes(b"our own leftover from a killed save")
    ckpt = InputCheckpointer(tmp_path, make_loader(), every_n_steps=1, keep_last=1)
    assert not (tmp_path / ".input_0-00000009.json.tmp77").exists()  # ours: cleaned at start
    for step in range(1, 5):
        ckpt.save(step)
    ckpt.restore(4)
    ckpt.save(3)  # after a restore to an earlier step, step 4 is ours and stale
    ckpt.close()
    assert {name: (tmp_path / name).read_bytes() for name in foreign} == foreign
    assert files.list_steps(tmp_path) == {0: [3], 1: [1]}


# -- damage --------------------------------------------------------------------------------------------


def _rewrite(path: Path, change, recompute: bool) -> None:
    doc = json.loads(path.read_text())
    doc.pop("sha256")
    change(doc)
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest() if recompute else "0" * 64
    path.write_text(json.dumps({"sha256": digest, **doc}))


def _bump_cursor(doc):
    doc["states"]["input"]["sampler"]["cursor"] += 4


DAMAGE = {
    "truncated": (
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "not valid JSON, truncated",
    ),
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "garbled": (lambda p: p.write_bytes(b"\xff\xfe" + p.read_bytes()[2:]), "not valid JSON"),
    "not an object": (lambda p: p.write_bytes(b"[1, 2]"), "not an input checkpoint"),
    "bad checksum": (lambda p: _rewrite(p, _bump_cursor, recompute=False), "checksum mismatch"),
    "altered": (
        lambda p: p.write_text(p.read_text().replace('"cursor":12', '"cursor":16')),
        "checksum mismatch",
    ),
    "wrong version": (
        lambda p: _rewrite(p, lambda d: d.update(version=2), recompute=True),
        "file format version 2 is not supported",
    ),
    "other format": (
        lambda p: _rewrite(p, lambda d: d.update(format="x"), recompute=True),
        "not an input checkpoint",
    ),
    "renamed": (
        lambda p: p.write_bytes(p.with_name("input_0-00000002.json").read_bytes()),
        "the file holds rank 0, step 2, but its name says rank 0, step 3",
    ),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_newest_file_falls_back_to_the_next_older_one(tmp_path, kind):
    states = saved_states(tmp_path, count=3)
    damage, reason = DAMAGE[kind]
    newest = tmp_path / "input_0-00000003.json"
    damage(newest)
    loader = make_loader()
    ckpt = InputCheckpointer(tmp_path, loader, every_n_steps=1)
    with pytest.warns(InputCheckpointWarning, match=re.escape(str(newest)) + ".*" + re.escape(reason)):
        assert ckpt.restore() == 2
    assert loader.state_dict() == states[2]
    with pytest.raises(InputStateError, match=re.escape(reason)):
        ckpt.restore(3)  # an explicit step does not fall back


def test_a_pointer_naming_a_missing_file_falls_back(tmp_path):
    states = saved_states(tmp_path, count=3)
    (tmp_path / "input_0-00000003.json").unlink()
    loader = make_loader()
    with pytest.warns(
        InputCheckpointWarning, match=r"checkpoint_input_0: names input_0-00000003\.json, which does not"
    ):
        assert InputCheckpointer(tmp_path, loader, every_n_steps=1).restore_or_save_initial() == 2
    assert loader.state_dict() == states[2]


def test_a_garbled_pointer_is_reported_and_the_files_are_used(tmp_path):
    saved_states(tmp_path, count=3)
    (tmp_path / "checkpoint_input_0").write_text("garbage\n")
    with pytest.warns(InputCheckpointWarning, match="checkpoint_input_0: malformed pointer"):
        assert InputCheckpointer(tmp_path, make_loader(), every_n_steps=1).restore() == 3


def test_a_file_newer_than_the_pointer_was_not_committed_and_is_passed_over(tmp_path):
    """A save killed after its rename but before its pointer update: the pointer's step is restored."""
    saved_states(tmp_path, count=2)
    (tmp_path / "input_0-00000003.json").write_bytes((tmp_path / "input_0-00000002.json").read_bytes())
    assert InputCheckpointer(tmp_path, make_loader(), every_n_steps=1).restore() == 2


def test_when_every_file_is_damaged_restore_raises_naming_each(tmp_path):
    saved_states(tmp_path, count=3)
    for step in (1, 2, 3):
        (tmp_path / InputFile(0, step).name).write_bytes(b"")
    ckpt = InputCheckpointer(tmp_path, make_loader(), every_n_steps=1)
    for restore in (ckpt.restore, ckpt.restore_or_save_initial):  # never silently starts over
        with pytest.raises(InputStateError, match="no valid input checkpoint of rank 0") as info:
            restore()
        assert all(InputFile(0, s).name in str(info.value) for s in (1, 2, 3))


# -- construction --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every_n_steps": 1, "clock": 5}, "clock must be a callable returning seconds (got clock=5)"),
        ({"every_n_steps": 1, "world": (0, 2)}, "world must be a torch_input_ckpt.World (got world=(0, 2))"),
        ({"every_n_steps": 1, "rank": 1, "world": World(0, 2)}, "rank=1 contradicts world=World(rank=0, size=2)"),
        ({"every_n_steps": 0}, "every_n_steps must be an int >= 1 (got every_n_steps=0)"),
        ({"every_n_steps": -3}, "got every_n_steps=-3"),
        ({"every_n_steps": 2.5}, "got every_n_steps=2.5"),
        ({"every_n_steps": True}, "got every_n_steps=True"),
        ({"every_n_seconds": 0}, "every_n_seconds must be a finite number > 0 (got every_n_seconds=0)"),
        ({"every_n_seconds": -1.0}, "got every_n_seconds=-1.0"),
        ({"every_n_seconds": float("inf")}, "got every_n_seconds=inf"),
        ({"every_n_seconds": float("nan")}, "got every_n_seconds=nan"),
        (
            {"every_n_steps": 1, "keep_last": 0},
            "keep_last must be an int >= 1, or None to keep all (got keep_last=0)",
        ),
        ({"every_n_steps": 1, "keep_last": 1.5}, "got keep_last=1.5"),
        ({"every_n_steps": 1, "rank": -1}, "rank must be an int >= 0 (got rank=-1)"),
        (
            {"every_n_steps": 1, "external_state_policy": "warning"},
            "external_state_policy must be one of 'fail', 'warn', 'ignore' (got external_state_policy='warning')",
        ),
    ],
)
def test_bad_arguments_fail_at_construction(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        InputCheckpointer(tmp_path, make_loader(), **kwargs)


def test_bad_directories_fail_at_construction(tmp_path, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=f"directory '{re.escape(str(a_file))}' exists and is not a directory"):
        InputCheckpointer(a_file, make_loader(), every_n_steps=1)
    with pytest.raises(ValueError, match="cannot be created"):
        InputCheckpointer(a_file / "sub", make_loader(), every_n_steps=1)
    created = tmp_path / "new" / "deeper"
    InputCheckpointer(created, make_loader(), every_n_steps=1)
    assert created.is_dir()
    # Root may write anywhere, so make the permission check itself report "no".
    monkeypatch.setattr(checkpointer_module.os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match="is not writable"):
        InputCheckpointer(created, make_loader(), every_n_steps=1)


def test_what_cannot_be_checkpointed_fails_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"must have state_dict\(\) and load_state_dict\(\).*got list"):
        InputCheckpointer(tmp_path, [1, 2], every_n_steps=1)
    with pytest.raises(ValueError, match="empty dict"):
        InputCheckpointer(tmp_path, {}, every_n_steps=1)


def test_a_state_that_is_not_json_names_its_key(tmp_path):
    class Odd:
        def state_dict(self):
            return {"fine": [1, 2], "bad": {"ids": {1, 2}}}

        def load_state_dict(self, state):
            pass

    with InputCheckpointer(tmp_path, Odd(), every_n_steps=1) as ckpt:
        with pytest.raises(TypeError, match=re.escape("input.state_dict()['bad']['ids'] is a set")):
            ckpt.save(1)
        assert ckpt.steps() == []


# -- external state ------------------------------------------------------------------------------------


class PlainSampler(Sampler):
    """A sampler without state_dict."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


class Stream(IterableDataset):
    def __iter__(self):
        return iter(range(10))


EXTERNAL = {
    "component without state_dict": (
        lambda: {"loader": make_loader(), "model_rng": object()},
        r"model_rng \(object\) has no state_dict",
    ),
    "custom sampler": (
        lambda: ResumableDataLoader(list(range(8)), batch_size=2, sampler=PlainSampler(8)),
        r"input \(ResumableDataLoader\): the state of PlainSampler",
    ),
    "iterable dataset": (
        lambda: ResumableDataLoader(Stream(), batch_size=2),
        r"input \(ResumableDataLoader\): the state of IterableDataset Stream",
    ),
    "StatefulDataLoader over an iterable": (
        lambda: StatefulDataLoader(Stream(), batch_size=2),
        r"input \(StatefulDataLoader\): its IterableDataset Stream",
    ),
    "StatefulDataLoader with torch's RandomSampler": (
        lambda: StatefulDataLoader(list(range(8)), batch_size=2, sampler=RandomSampler(list(range(8)))),
        r"input \(StatefulDataLoader\): its sampler RandomSampler has no state_dict",
    ),
}


@pytest.mark.parametrize("case", sorted(EXTERNAL))
def test_external_state_policies(tmp_path, case):
    make, message = EXTERNAL[case]
    failing = InputCheckpointer(tmp_path / "fail", make(), every_n_steps=1)  # construction is fine
    with pytest.raises(ValueError, match=message + ".*external_state_policy='warn' or 'ignore'"):
        failing.save(1)
    assert failing.steps() == []

    warning = InputCheckpointer(tmp_path / "warn", make(), every_n_steps=1, external_state_policy="warn")
    with pytest.warns(ExternalStateWarning, match=message) as record:
        warning.save(1)
        warning.save(2)
    assert len(record) == 1  # once
    assert warning.steps() == [1, 2]
    saved = files.read_checkpoint(tmp_path / "warn" / "input_0-00000002.json")
    assert saved.external and re.search(message, saved.external[0])

    ignoring = InputCheckpointer(tmp_path / "ignore", make(), every_n_steps=1, external_state_policy="ignore")
    ignoring.save(1)  # no warning (warnings are errors in this suite)
    assert ignoring.steps() == [1]
    for ckpt in (failing, warning, ignoring):
        ckpt.close()


def test_what_can_be_captured_passes_the_default_policy(tmp_path):
    for i, stateful in enumerate(
        [
            make_loader(),
            ResumableSampler(10),
            StatefulDataLoader(list(range(8)), batch_size=2, shuffle=True),
            StatefulDataLoader(list(range(8)), batch_size=2, shuffle=False),
        ]
    ):
        with InputCheckpointer(tmp_path / str(i), stateful, every_n_steps=1) as ckpt:
            ckpt.save(1)
            assert ckpt.steps() == [1]


# -- background writes ---------------------------------------------------------------------------------


def test_a_failed_background_write_is_raised_by_the_next_call(tmp_path, monkeypatch):
    real = files.write_atomic

    def broken(path, data):
        raise OSError(28, "No space left on device")

    ckpt = InputCheckpointer(tmp_path, make_loader(), every_n_steps=1)
    monkeypatch.setattr(files, "write_atomic", broken)
    assert ckpt.after_step(1)  # the failure happens later, on the writer thread
    ckpt._writer.flush()
    with pytest.raises(OSError, match="No space left on device") as info:
        ckpt.after_step(2)  # even a step that would not save reports it
    if sys.version_info >= (3, 11):
        assert "while writing the input checkpoint of step 1 (rank 0)" in "".join(info.value.__notes__)
    monkeypatch.setattr(files, "write_atomic", real)
    ckpt.save(3)  # raised once; the checkpointer keeps working
    assert ckpt.steps() == [3]
    monkeypatch.setattr(files, "write_atomic", broken)
    ckpt.save(4)
    with pytest.raises(OSError, match="No space left"):
        ckpt.close()


def test_restore_and_steps_wait_for_pending_writes(tmp_path, monkeypatch):
    real = files.write_atomic

    def slow(path, data):
        time.sleep(0.05)
        real(path, data)

    monkeypatch.setattr(files, "write_atomic", slow)
    ckpt = InputCheckpointer(tmp_path, make_loader(), every_n_steps=1)
    for step in (1, 2, 3):
        ckpt.save(step)
    assert ckpt.steps() == [1, 2, 3]
    ckpt.save(4)
    assert ckpt.restore() == 4
    ckpt.close()


def test_a_collected_checkpointer_flushes_and_does_not_leak(tmp_path):
    ckpt = InputCheckpointer(tmp_path, make_loader(), every_n_steps=1)
    ckpt.save(5)
    ref = weakref.ref(ckpt)
    del ckpt
    gc.collect()
    assert ref() is None
    assert files.list_steps(tmp_path) == {0: [5]}


@pytest.mark.slow
def test_interpreter_exit_flushes_pending_writes(tmp_path):
    """A script that saves and exits without close(): the write still completes (atexit via weakref)."""
    script = (
        "import sys, time\n"
        "from torch_input_ckpt import InputCheckpointer, ResumableSampler\n"
        "from torch_input_ckpt.store import files\n"
        "real = files.write_atomic\n"
        "def slow(path, data):\n"
        "    time.sleep(0.3)\n"
        "    real(path, data)\n"
        "files.write_atomic = slow\n"
        "ckpt = InputCheckpointer(sys.argv[1], ResumableSampler(10), every_n_steps=1)\n"
        "ckpt.save(7)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, timeout=60, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert files.list_steps(tmp_path) == {0: [7]}
    assert files.read_pointer(tmp_path, 0) == 7


def test_rank_and_world_size_come_from_torch_distributed_when_initialised(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with InputCheckpointer(tmp_path / "ckpt", make_loader(), every_n_steps=1) as ckpt:
            assert (ckpt.rank, ckpt.world_size) == (0, 1)
            ckpt.save(1)
        assert files.read_checkpoint(tmp_path / "ckpt" / "input_0-00000001.json").world_size == 1
        with pytest.raises(ValueError, match=re.escape("rank must be < the world size 1 (got rank=1)")):
            InputCheckpointer(tmp_path / "ckpt", make_loader(), every_n_steps=1, rank=1)
    finally:
        dist.destroy_process_group()
    with InputCheckpointer(tmp_path / "plain", make_loader(), every_n_steps=1) as ckpt:
        assert (ckpt.rank, ckpt.world_size) == (0, 1)


def test_commit_order_file_then_pointer_then_pruning(tmp_path, monkeypatch):
    events = []
    real_write, real_prune = files.write_atomic, files.prune
    monkeypatch.setattr(files, "write_atomic", lambda path, data: (events.append(path.name), real_write(path, data)))
    monkeypatch.setattr(files, "prune", lambda *args: (events.append("prune"), real_prune(*args)))
    with InputCheckpointer(tmp_path, make_loader(), every_n_steps=1, keep_last=1) as ckpt:
        ckpt.save(1)
        ckpt.save(2)
    assert events == ["input_0-00000001.json", "checkpoint_input_0", "prune"] + [
        "input_0-00000002.json",
        "checkpoint_input_0",
        "prune",
    ]


def test_an_atomic_write_syncs_the_data_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b)))
    files.write_atomic(tmp_path / "input_0-00000001.json", b"{}")
    assert events == ["fsync file", "rename", "fsync dir"]
    assert os.listdir(tmp_path) == ["input_0-00000001.json"]

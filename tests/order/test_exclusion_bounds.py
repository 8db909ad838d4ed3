"""The exclusion list in the checkpoint file: each index stored once, bounded at ``exclude`` (so that no save
writes a file restore refuses), and version 1 files (complete lists per epoch) still restore."""

from __future__ import annotations

import json

import pytest

from torch_input_ckpt import InputCheckpointer, InputCheckpointWarning, ResumableDataLoader, ResumableSampler
from torch_input_ckpt.errors import InputStateError
from torch_input_ckpt.order import exclusion
from torch_input_ckpt.store import files
from torch_input_ckpt.store.files import InputFile


def epochs(sampler: ResumableSampler, count: int) -> list[list[int]]:
    return [list(sampler) for _ in range(count)]


def saved_sampler(directory, step: int) -> dict:
    return files.read_checkpoint(directory / InputFile(0, step).name).states["input"]


def test_each_excluded_index_is_stored_once_however_many_epochs_exclude(tmp_path):
    """25 epochs each excluding the list so far plus 40 new indices: the file stores each index once (the
    old form stored the whole list again per epoch: 13,000 numbers for 1,000 distinct)."""
    sampler = ResumableSampler(10_000, seed=3)
    bad: list[int] = []
    with InputCheckpointer(tmp_path, sampler, every_n_steps=1) as ckpt:
        for epoch in range(25):
            bad += [(epoch * 397 + k * 241) % 10_000 for k in range(40)]
            sampler.exclude(bad)  # at an epoch's start: applies at once
            list(sampler)
        ckpt.save(1)
    stored = saved_sampler(tmp_path, 1)["excluded"]
    numbers = sum(len(flat) // 2 for _, flat in stored)
    pairs = [zip(flat[::2], flat[1::2], strict=True) for _, flat in stored]
    covered = [i for ranges in pairs for start, stop in ranges for i in range(start, stop)]
    assert sorted(covered) == sorted(set(bad)), "each excluded index exactly once in the file"
    assert numbers <= len(set(bad))
    restored = ResumableSampler(10_000, seed=3)
    with InputCheckpointer(tmp_path, restored) as ckpt:
        ckpt.restore()
    assert list(restored) == [], "saved at the end of epoch 24"
    assert sorted(restored) == sorted(set(range(10_000)) - set(bad))


def test_exclude_refuses_past_the_bound_before_changing_anything_and_a_list_at_the_bound_restores(tmp_path):
    """A list of exactly MAX_EXCLUDED_RANGES ranges saves into a file restore accepts; one more range is
    refused by exclude() itself, naming the count and the bound, with the state unchanged."""
    bound = exclusion.MAX_EXCLUDED_RANGES
    n = 2 * bound + 10
    sampler = ResumableSampler(n, seed=5)
    at_bound = list(range(0, 2 * bound, 2))  # every other index: one range each
    sampler.exclude(at_bound)
    before = sampler.state_dict()
    with pytest.raises(ValueError, match=rf"{bound + 1} ranges .* bound of {bound}"):
        sampler.exclude([n - 1])
    assert sampler.state_dict() == before, "a refused exclude() changed the state"
    with InputCheckpointer(tmp_path, sampler) as ckpt:
        ckpt.save(7)
    size = (tmp_path / InputFile(0, 7).name).stat().st_size
    assert size < files.MAX_FILE_BYTES
    restored = ResumableSampler(n, seed=5)
    with InputCheckpointer(tmp_path, restored) as ckpt:
        assert ckpt.restore() == 7
    assert len(restored) == n - bound
    assert restored.state_dict() == before


def test_a_version_1_file_with_complete_lists_per_epoch_restores_the_same_epochs(tmp_path):
    """A file written before ranges (sampler state version 1, each entry the complete list of its epoch),
    signed as the library signs files, restores into a fresh sampler the epochs a run with the same
    exclusions delivers; re-saved, it is stored as ranges (version 2)."""
    reference = ResumableSampler(50, seed=9)
    reference.exclude([4, 20])
    expected_first = list(reference)
    reference.exclude([4, 20, 21, 22, 30])
    expected = [expected_first, *epochs(reference, 2)]

    current = ResumableSampler(50, seed=9)
    state = current.state_dict()
    state["excluded"] = [[0, [4, 20]], [1, [4, 20, 21, 22, 30]]]  # the version 1 form
    assert state["version"] == 1
    data = files.encode_checkpoint(rank=0, world_size=None, step=3, states={"input": state}, external=[])
    (tmp_path / InputFile(0, 3).name).write_bytes(data)
    restored = ResumableSampler(50, seed=9)
    with InputCheckpointer(tmp_path, restored) as ckpt:
        assert ckpt.restore() == 3
        assert epochs(restored, 3) == expected
        ckpt.save(4)
    resaved = saved_sampler(tmp_path, 4)
    assert resaved["version"] == 2
    assert resaved["excluded"] == [[0, [4, 5, 20, 21]], [1, [21, 23, 30, 31]]]


def test_a_version_2_state_is_refused_by_a_reader_of_version_1_only(tmp_path):
    """What an older release does with a new file: its header check (version 1 only) refuses, never
    ignoring the ranges. Checked with the header function under the old versions tuple."""
    from torch_input_ckpt.errors import InputStateError
    from torch_input_ckpt.state.schema import SAMPLER_KIND, check_header

    sampler = ResumableSampler(50, seed=9)
    sampler.exclude([7])
    state = json.loads(json.dumps(sampler.state_dict()))
    with pytest.raises(InputStateError, match="version 2 is not supported, expected 1"):
        check_header(state, SAMPLER_KIND, "old reader")


@pytest.mark.parametrize(
    ("excluded", "message"),
    [
        ([[0, [5, 3]]], r"the range \[5, 3\) is empty"),
        ([[0, [0, 60]]], r"60 is outside \[0, 50\]"),
        ([[0, [4, 8, 6, 9]]], r"the range \[6, 9\) starts before the previous one's stop 8"),
        ([[0, [4, True]]], "should be a flat list of start, stop ints"),
        ([[0, [4, 5, 6]]], "should be a flat list of start, stop ints"),
        ([[0, [0, 25, 25, 50]]], "cannot exclude all 50"),
        ([[2, [1, 2]], [1, [3, 4]]], "the first epochs should increase"),
    ],
)
def test_a_damaged_range_list_falls_back_to_the_older_file(tmp_path, excluded, message):
    """A loader's file whose list restore would refuse is damaged when read: restore falls back to the older
    file with a warning naming the entry (before, inspect said ok and restore failed at load)."""
    run = ResumableDataLoader(list(range(50)), batch_size=5, shuffle=True, seed=9)
    stream = iter(run)
    with InputCheckpointer(tmp_path, run) as ckpt:
        next(stream)
        ckpt.save(1)
        after_1 = next(stream)
        run.exclude([1])
        ckpt.save(2)
    path = tmp_path / InputFile(0, 2).name
    states = files.read_checkpoint(path).states
    states["input"]["sampler"]["excluded"] = excluded
    path.write_bytes(files.encode_checkpoint(rank=0, world_size=None, step=2, states=states, external=[]))
    fresh = ResumableDataLoader(list(range(50)), batch_size=5, shuffle=True, seed=9)
    with InputCheckpointer(tmp_path, fresh) as ckpt, pytest.warns(InputCheckpointWarning, match=message):
        assert ckpt.restore() == 1
    assert next(iter(fresh)).tolist() == after_1.tolist()


class Bulky:
    """A component whose state is a 65 MiB string (a user keeping data in its state)."""

    def state_dict(self):
        return {"blob": "x" * (files.MAX_FILE_BYTES + 2**20)}

    def load_state_dict(self, state):
        pass


def test_a_save_past_the_file_bound_is_refused_at_save_time_naming_the_component(tmp_path):
    """Before: the save wrote a 65 MiB file that restore then refused ("more than the bound")."""
    with InputCheckpointer(tmp_path, {"input": ResumableSampler(10), "bulky": Bulky()}) as ckpt:
        with pytest.raises(InputStateError, match=rf"more than the bound of {files.MAX_FILE_BYTES} bytes") as raised:
            ckpt.save(1)
        assert "'bulky': 6" in str(raised.value)
        assert ckpt.steps() == []

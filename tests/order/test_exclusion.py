"""A persistent exclusion list: honoured from the next epoch, exactly once per epoch for the rest, across
epochs and after a further resume, and ``samples`` reports it truthfully."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from torch_input_ckpt import ResumableSampler
from torch_input_ckpt.order.exclusion import Exclusion
from torch_input_ckpt.provenance.history import Provenance

from tests.support.provenance_runs import run

BAD = [3, 7, 11]
CONFIG = dict(length=30, batch_size=3, shuffle=True, every=5)  # 3 ranks: 4 steps in epoch 0, then 3 per epoch


def per_epoch(directory, delivered):
    provenance = Provenance(directory)
    seen: dict[int, Counter] = {}
    for step, by_rank in delivered.items():
        answer = provenance.step(step)
        assert dict(answer.keys) == by_rank, f"step {step}"
        (epoch,) = set(answer.epochs)
        seen.setdefault(epoch, Counter()).update(k for keys in by_rank.values() for k in keys)
    return seen


def check_epochs(seen, first_excluded):
    for epoch, counts in seen.items():
        expected = set(range(30)) - (set(BAD) if epoch >= first_excluded else set())
        assert set(counts) == expected, (
            f"epoch {epoch}: missing {expected - set(counts)}, extra {set(counts) - expected}"
        )
        assert set(counts.values()) == {1}, f"epoch {epoch}: duplicated {[k for k, n in counts.items() if n > 1]}"


def test_exclusion_holds_across_epochs_and_a_resume(tmp_path):
    uninterrupted = run(tmp_path / "u", CONFIG, world=3, steps=range(1, 23), exclude_after=(2, BAD))
    check_epochs(per_epoch(tmp_path / "u", uninterrupted), first_excluded=1)  # epochs 0..6
    first = run(tmp_path / "a", CONFIG, world=3, steps=range(1, 13), exclude_after=(2, BAD))
    resumed = run(tmp_path / "a", CONFIG, world=3, steps=range(1, 23), restore=True)  # from step 10
    assert min(resumed) == 11
    assert {**{s: k for s, k in first.items() if s <= 10}, **resumed} == uninterrupted
    assert Provenance(tmp_path / "a").configuration()["excluded"] == [[1, [3, 4, 7, 8, 11, 12]]]


def test_exclusion_at_an_epoch_start_applies_at_once_and_grows():
    sampler = ResumableSampler(30, seed=1)
    sampler.exclude([5])
    epoch0 = list(sampler)
    assert sorted(epoch0) == [i for i in range(30) if i != 5]
    half = iter(sampler)
    taken = [next(half) for _ in range(10)]
    sampler.exclude([6, 7])  # mid-epoch: from the next epoch on
    rest = list(half)
    assert sorted(taken + rest) == [i for i in range(30) if i != 5]
    assert sorted(sampler) == [i for i in range(30) if i not in (5, 6, 7)]
    # Each index stored once: the ranges added at each epoch.
    assert sampler.state_dict()["excluded"] == [[0, [5, 6]], [2, [6, 8]]]


def test_exclusion_refuses_bad_lists():
    sampler = ResumableSampler(4)
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        sampler.exclude([4])
    with pytest.raises(ValueError, match="cannot exclude all 4"):
        sampler.exclude([0, 1, 2, 3])


@pytest.mark.parametrize("bad", [[], [0], [9], [0, 1, 2], [2, 4, 6, 8], [5, 6, 7, 8, 9]])
def test_select_and_rank_are_the_complement(bad):
    exclusion = Exclusion(bad, 10)
    kept = [i for i in range(10) if i not in bad]
    assert exclusion.select(torch.arange(len(kept))).tolist() == kept
    assert [exclusion.rank(i) for i in kept] == list(range(len(kept)))
    assert all(exclusion.rank(i) is None for i in bad)


@pytest.mark.parametrize("layout", ["random", "clustered", "tail"])
def test_select_matches_the_reference_on_larger_lists(layout):
    import random

    n = 20_000
    bad = {
        "random": random.Random(1).sample(range(n), 700),
        "clustered": list(range(5_000, 5_600)) + [7, 19_999],  # many equal shifted values: searchsorted
        "tail": list(range(n - 300, n)),
    }[layout]
    exclusion = Exclusion(bad, n)
    kept = sorted(set(range(n)) - set(bad))
    assert exclusion.select(torch.arange(len(kept))).tolist() == kept

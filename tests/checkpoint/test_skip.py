"""``restore(skip_steps=k)`` equals an uninterrupted run with those steps dropped; exactly once for the rest of
the epoch on another world size; the skip is recorded so that ``samples`` stays truthful; refusals name why."""

from __future__ import annotations

from collections import Counter

import pytest

from torch_input_ckpt import InputStateError
from torch_input_ckpt.provenance.history import Provenance

from tests.support.provenance_runs import run

CONFIG = dict(length=60, batch_size=2, shuffle=True, every=10)  # world 2: 15 steps per epoch


@pytest.mark.parametrize("bps", [1, 2])
def test_skip_equals_the_uninterrupted_run_without_those_steps(tmp_path, bps):
    uninterrupted = run(tmp_path / "u", CONFIG, world=2, steps=range(1, 61), bps=bps)
    run(tmp_path / "a", CONFIG, world=2, steps=range(1, 26), bps=bps)  # saved at 10, 20; spiked at 21..27
    resumed = run(tmp_path / "a", CONFIG, world=2, steps=range(1, 61), bps=bps, restore=True, skip_steps=7)
    assert min(resumed) == 28  # restore returned 20 + 7
    assert resumed == {step: keys for step, keys in uninterrupted.items() if step >= 28}
    # The skip is recorded: the steps skipped report the rolled-back run's keys, flagged; the rest are truthful.
    provenance = Provenance(tmp_path / "a")
    for step in range(21, 28):
        answer = provenance.step(step)
        assert answer.skipped and dict(answer.keys) == uninterrupted[step]
    for step in range(28, 61):
        answer = provenance.step(step)
        assert not answer.skipped and dict(answer.keys) == resumed[step]
    assert provenance.configuration()["skipped_steps"] == [[21, 27]]


def epochs_of_steps(directory, steps):
    provenance = Provenance(directory)
    return {step: set(provenance.step(step).epochs) for step in steps}


def test_skip_on_another_world_size_is_exactly_once_for_the_rest_of_the_epoch(tmp_path):
    uninterrupted = run(tmp_path / "u", CONFIG, world=2, steps=range(1, 31))
    run(tmp_path / "a", CONFIG, world=2, steps=range(1, 26))
    # Skip 4 steps of 2 ranks (16 samples) from step 20: epoch 1 at cursor 36, 24 left for 3 ranks.
    resumed = run(tmp_path / "a", CONFIG, world=3, steps=range(1, 45), restore=True, skip_steps=4)
    assert min(resumed) == 25
    before = epochs_of_steps(tmp_path / "u", range(1, 25))
    after = epochs_of_steps(tmp_path / "a", range(25, 45))
    for epoch in (1, 2):
        seen = Counter(
            key
            for part, epochs in ((uninterrupted, before), (resumed, after))
            for step, by_rank in part.items()
            if step in epochs and epochs[step] == {epoch}
            for keys in by_rank.values()
            for key in keys
        )
        assert sorted(seen) == list(range(60)), f"epoch {epoch}: missing {sorted(set(range(60)) - set(seen))}"
        assert set(seen.values()) == {1}, f"epoch {epoch}: duplicated"
    # The skipped steps are the ones the uninterrupted run delivered, and they are not delivered after.
    skipped = {k for step in range(21, 25) for keys in uninterrupted[step].values() for k in keys}
    rest_of_epoch = {k for step, e in after.items() if e == {1} for keys in resumed[step].values() for k in keys}
    assert skipped and not skipped & rest_of_epoch


def test_skip_refuses_without_batches_per_step(tmp_path):
    config = dict(CONFIG, every=1000)
    run(tmp_path, config, world=1, steps=range(1, 5))  # only the initial save: batches per step unknown
    with pytest.raises(InputStateError, match="skip_steps=2: .*batches per optimizer step are not recorded"):
        run(tmp_path, config, world=1, steps=range(1, 9), restore=True, skip_steps=2)


def test_skip_refuses_a_component_it_cannot_move(tmp_path):
    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader

    class Counter:
        def __init__(self):
            self.n = 0

        def state_dict(self):
            return {"n": self.n}

        def load_state_dict(self, state):
            self.n = state["n"]

    loader = ResumableDataLoader(list(range(10)), batch_size=2)
    with InputCheckpointer(tmp_path, {"loader": loader, "counter": Counter()}, every_n_steps=1) as ckpt:
        ckpt.save(0)
        batches = iter(loader)
        for step in (1, 2):
            next(batches)
            ckpt.after_step(step)
        del batches
        with pytest.raises(InputStateError, match="component 'counter'.*cannot be moved on by skip_steps"):
            ckpt.restore(2, skip_steps=1)

"""Mixture and plain-dataset resumes from the checkpoint FILE into fresh objects, after a change: a plain
dataset refuses a state that recorded a dataset's own order, ``restart_epoch`` after a weight change never
repeats a source's sample within its source epoch, and a plan anchored past the state's cursor is refused.

Source names are never alphabetical ("web", "code", "math")."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from torch_input_ckpt import InputCheckpointer, InputStateError, ResumableDataLoader
from torch_input_ckpt.store.files import InputFile

from tests.support.mixture_files import LENGTHS, ORDERED, WEIGHTS, make_loader, rewrite, run


def check_exactly_once_per_source_epoch(delivered: list[str]) -> None:
    """Each source's deliveries, in order, are runs of permutations of its items (nothing missing within
    a whole source epoch, nothing duplicated), checked separately per source."""
    for name in ORDERED:
        items = [int(s[len(name) :]) for s in delivered if s.startswith(name) and s[len(name) :].isdigit()]
        n = LENGTHS[name]
        for epoch, at in enumerate(range(0, len(items), n)):
            chunk = items[at : at + n]
            duplicated = sorted(i for i, c in Counter(chunk).items() if c > 1)
            assert not duplicated, f"{name} source epoch {epoch}: delivered more than once: {duplicated}"
            if len(chunk) == n:
                assert sorted(chunk) == list(range(n)), f"{name} source epoch {epoch}: missing items"


def test_a_plain_dataset_refuses_a_mixture_state(tmp_path):
    run(tmp_path, WEIGHTS)
    plain = ResumableDataLoader([f"item{i}" for i in range(95)], batch_size=8, shuffle=True, seed=0, collate_fn=list)
    with InputCheckpointer(tmp_path, plain, every_n_steps=1) as ckpt, pytest.raises(InputStateError) as error:
        ckpt.restore(10)
    message = str(error.value)
    assert "'Mixture'" in message and "list" in message and str(InputFile(0, 10).name) in message


def test_restart_epoch_after_a_weight_change_keeps_every_source_exactly_once(tmp_path):
    first = run(tmp_path, WEIGHTS)
    before = [item for step in range(1, 11) for item in first[step]]  # what the run delivered up to step 10
    loader = make_loader({"web": 5, "code": 3, "math": 2})
    with InputCheckpointer(tmp_path, loader, every_n_steps=1) as ckpt:
        ckpt.restore(10)
    loader.restart_epoch()  # epoch 0 from its start: its first 80 positions came from the old plan
    again = [item for batch in loader for item in batch]
    assert len(again) == 95
    check_exactly_once_per_source_epoch(before + again)
    # The restarted epoch follows the new weights over the whole epoch.
    counts = {name: sum(s.startswith(name) for s in again) for name in ORDERED}
    assert counts == loader.dataset.counts() == {"web": 48, "code": 28, "math": 19}


def test_restart_epoch_without_a_change_replays_the_epoch(tmp_path):
    first = run(tmp_path, WEIGHTS)
    loader = make_loader(WEIGHTS)
    with InputCheckpointer(tmp_path, loader, every_n_steps=1) as ckpt:
        ckpt.restore(10)
    loader.restart_epoch()
    again = [batch for batch in loader]
    assert again == [first[step] for step in range(1, 13)]


def test_a_plan_anchored_past_the_cursor_is_refused(tmp_path):
    run(tmp_path, WEIGHTS)
    path = tmp_path / InputFile(0, 10).name
    document = json.loads(path.read_text())
    (state,) = document["states"].values()
    assert state["sampler"]["cursor"] == 80
    state["sampler"]["dataset_order"]["anchor_position"] = 90
    rewrite(path, document)
    loader = make_loader(WEIGHTS)
    with InputCheckpointer(tmp_path, loader, every_n_steps=1) as ckpt, pytest.raises(InputStateError) as error:
        ckpt.restore(10)
    assert "position 90" in str(error.value) and "cursor 80" in str(error.value)

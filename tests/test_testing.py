"""torch_input_ckpt.testing: the public resume-equivalence check passes a correct pipeline and FAILS, naming
what went wrong, on deliberately broken ones (a duplicated sample, a missing one, a reordered rest of the
epoch, a random draw not restored, a state that drifts on load)."""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

from torch_input_ckpt import ResumableDataLoader, testing
from torch_input_ckpt.testing import (
    ResumableIterable,
    assert_equal_output_after_checkpoint,
    assert_exactly_once,
    default_stops,
    resume_chain,
    roundtrip_state,
    stream_epochs,
)

N = 8  # samples per epoch


class Counting:
    """``[index, draw]`` per sample, in a seeded order per epoch, with a per-sample draw seeded by what the
    sample is. ``fault`` breaks the restore on purpose."""

    def __init__(self, fault: str | None = None) -> None:
        self.fault = fault
        self.epoch = 0
        self.position = 0
        self.restored = False
        self.skew = 0  # set by the "duplicate" and "missing" faults: applied when iteration resumes, unsaved
        self.unsaved = random.Random(0)  # drawn from only by the "draw" fault: never in the state

    def _order(self) -> list[int]:
        order = list(range(N))
        random.Random(self.epoch).shuffle(order)
        if self.fault == "reorder" and self.restored:  # the rest of the epoch in another order
            order[self.position :] = reversed(order[self.position :])
        return order

    def __iter__(self) -> Iterator[list[Any]]:
        order = self._order()
        self.position, self.skew = min(max(self.position + self.skew, 0), N), 0
        while self.position < N:
            index = order[self.position]
            self.position += 1
            draw = self.unsaved.random() if self.fault == "draw" else random.Random(1000 * self.epoch + index).random()
            yield [index, draw]
        self.epoch, self.position, self.restored = self.epoch + 1, 0, False

    def state_dict(self) -> dict[str, Any]:
        state = {"epoch": self.epoch, "position": self.position}
        if self.fault == "drift" and self.restored:
            state["restored"] = True
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.restored = state["epoch"], state["position"], True
        self.skew = {"duplicate": -1, "missing": 1}.get(self.fault or "", 0)


def by_index(batch: list[Any]) -> list[int]:
    return [batch[0]]


def kinds(message: str) -> set[str]:
    """The kinds of difference a failure lists, one line each."""
    return set(re.findall(r"^  (missing|duplicated|unexpected|order|values):", message, re.MULTILINE))


def failure(fault: str, stops: Any = None, ids: Any = by_index) -> str:
    with pytest.raises(AssertionError) as raised:
        assert_equal_output_after_checkpoint(lambda: Counting(fault), stops, ids=ids)
    return str(raised.value)


def test_a_correct_pipeline_passes_at_every_default_stop_and_returns_the_run() -> None:
    run = assert_equal_output_after_checkpoint(Counting, ids=by_index)
    assert len(run) == 2 * N and [epoch for epoch, _ in run] == [0] * N + [1] * N
    assert_exactly_once(run, by_index, N)
    assert isinstance(Counting(), ResumableIterable)


def test_default_stops_are_start_one_mid_epoch_end_and_next_epoch() -> None:
    run = list(stream_epochs(Counting(), 2))
    assert default_stops(run) == [0, 1, N // 2, N, N + 1]
    assert default_stops(run[:3]) == [0, 1, 3]  # only those the run reaches


def test_a_duplicated_sample_is_reported_as_duplicated_only() -> None:
    message = failure("duplicate", stops=[3])
    assert "resumed after 3 batches (mid-epoch 0)" in message
    assert "duplicated: 1 samples" in message
    assert kinds(message) == {"duplicated"}, message


def test_a_skipped_sample_is_reported_as_missing_only() -> None:
    message = failure("missing", stops=[3])
    assert "missing: 1 samples never delivered" in message
    assert kinds(message) == {"missing"}, message


def test_a_reordered_rest_of_epoch_is_reported_as_order_only() -> None:
    message = failure("reorder", stops=[3])
    assert re.search(r"order: .* first at sample 3", message), message
    assert kinds(message) == {"order"}, message


def test_a_random_draw_not_restored_is_reported_as_values_with_the_same_samples() -> None:
    message = failure("draw", stops=[3])
    assert "values: the same samples in the same order" in message and "not restored" in message
    assert kinds(message) == {"values"}, message


def test_without_ids_a_draw_not_restored_shows_as_missing_and_unexpected_batches_with_a_hint() -> None:
    message = failure("draw", stops=[3], ids=None)
    # the unsaved generator restarts: every batch after the stop has other values
    assert kinds(message) == {"missing", "unexpected"} and "pass ids=" in message, message
    assert "missing: 13 batches" in message and "unexpected: 13 batches" in message


@pytest.mark.parametrize("fault", ["duplicate", "missing", "reorder", "draw"])
def test_every_broken_pipeline_fails_at_the_default_stops(fault: str) -> None:
    failure(fault)


def test_a_state_that_changes_on_load_is_reported_with_the_key() -> None:
    message = failure("drift", stops=[2])
    assert "loading a state and taking it again changed it" in message and "['restored']" in message


def test_the_end_of_an_epoch_is_named() -> None:
    message = failure("duplicate", stops=[N])
    assert f"resumed after {N} batches (at the end of epoch 0)" in message


def test_a_stop_outside_the_run_is_refused() -> None:
    with pytest.raises(ValueError, match="stop 17 is outside the run, which delivers 16 batches"):
        assert_equal_output_after_checkpoint(Counting, 2 * N + 1)


def test_a_pipeline_without_an_epoch_counter_is_refused_naming_the_fix() -> None:
    with pytest.raises(TypeError, match="no integer `epoch` counter"):
        assert_equal_output_after_checkpoint(lambda: [1, 2, 3])


def test_the_state_goes_through_the_checkpoint_file() -> None:
    assert roundtrip_state({"b": 1, "a": [1, 2]}) == {"a": [1, 2], "b": 1}
    restored = roundtrip_state({"generator": torch.arange(3, dtype=torch.uint8)})  # tensors, as the checkpointer
    assert torch.equal(restored["generator"], torch.arange(3, dtype=torch.uint8))
    assert roundtrip_state({"pair": (1, 2)}) == {"pair": [1, 2]}  # what a restore hands back
    with pytest.raises(AssertionError, match="not plain JSON"):
        roundtrip_state({"pair": (1, 2)}, plain_json=True)
    with pytest.raises(TypeError, match="set"):
        roundtrip_state({"seen": {1, 2}})


def test_a_chain_of_breaks_equals_one_run() -> None:
    run = list(stream_epochs(Counting(), 2))
    chained, states = resume_chain(Counting, [1, 5, N, N + 3])
    assert chained == run
    assert [s["position"] for s in states] == [1, 5, N, 3]


def test_assert_exactly_once_reports_each_kind() -> None:
    with pytest.raises(AssertionError, match=r"epoch 0: delivered more than once: \[1\]"):
        assert_exactly_once([(0, [0, 1]), (0, [1, 2])], list, 3)
    with pytest.raises(AssertionError, match=r"epoch 1: never delivered: \[2\]"):
        assert_exactly_once([(1, [0, 1])], list, 3)
    with pytest.raises(AssertionError, match=r"not in the dataset: \[7\]"):
        assert_exactly_once([(0, [0, 1, 2, 7])], list, 3)


class Noisy(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"id": index, "noise": torch.rand(()).item()}


def test_the_module_docstring_example_passes_on_a_real_loader() -> None:
    def make() -> ResumableDataLoader:
        return ResumableDataLoader(Noisy(), batch_size=3, shuffle=True, seed=7)

    run = assert_equal_output_after_checkpoint(make, epochs=2, ids=lambda batch: batch["id"])
    assert_exactly_once(run, lambda batch: batch["id"], 10)
    assert 'assert_equal_output_after_checkpoint(make, epochs=2, ids=lambda batch: batch["id"])' in testing.__doc__


def test_a_real_loader_whose_draw_is_not_reseeded_fails_as_values() -> None:
    def make() -> ResumableDataLoader:
        return ResumableDataLoader(Noisy(), batch_size=3, shuffle=True, seed=7, reseed_rng=False)

    torch.manual_seed(0)
    with pytest.raises(AssertionError, match="values: the same samples in the same order"):
        assert_equal_output_after_checkpoint(make, [4], ids=lambda batch: batch["id"])


def test_the_public_names_are_sorted_and_exist() -> None:
    assert testing.__all__ == sorted(testing.__all__)
    assert all(hasattr(testing, name) for name in testing.__all__)


def test_without_ids_a_reordered_epoch_is_order_only_and_gives_no_hint() -> None:
    message = failure("reorder", stops=[3], ids=None)
    assert kinds(message) == {"order"} and "pass ids=" not in message, message
    assert "first at batch 3" in message

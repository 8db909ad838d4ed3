"""Map-style pipelines with workers: random augmentations, out-of-order and persistent workers, and a
pipeline changed on resume (num_workers, prefetch_factor, persistent_workers, batch size) resume exactly."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from torch_input_ckpt import InputCheckpointWarning, InputStateError, ResumableDataLoader

from tests.support.resume import (
    assert_freed_without_cycle_collector,
    check_exactly_once,
    check_resume,
    epochs_of,
    resume_chain,
    roundtrip,
    to_py,
)

N = 20
DRAWS = ("torch", "numpy", "python")
# 3 workers on a 2-core machine makes torch warn; the tests use 3 on purpose (an odd change of count).
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")


class Augmenting(Dataset):
    """Each sample: its index and one draw from each of torch's, NumPy's and Python's global RNGs, as
    random augmentations in ``__getitem__`` make them. ``slow`` indices take ``delay`` seconds to fetch."""

    def __init__(self, slow: frozenset[int] = frozenset(), delay: float = 0.0) -> None:
        self.slow = slow
        self.delay = delay

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> dict[str, float | int]:
        if index in self.slow:
            time.sleep(self.delay)
        return {
            "index": index,
            "torch": torch.rand(()).item(),
            "numpy": float(np.random.rand()),
            "python": random.random(),
        }


def _loader(
    num_workers: int = 0,
    *,
    batch_size: int = 3,
    prefetch_factor: int | None = None,
    persistent_workers: bool = False,
    dataset: Dataset | None = None,
    **options,
) -> ResumableDataLoader:
    if num_workers and prefetch_factor is None:
        prefetch_factor = 2
    return ResumableDataLoader(
        Augmenting() if dataset is None else dataset,
        batch_size=batch_size,
        shuffle=True,
        seed=5,
        num_workers=num_workers,
        prefetch_factor=prefetch_factor,
        persistent_workers=persistent_workers,
        **options,
    )


def _samples(stream) -> list[tuple[int, int, float, float, float]]:
    """(epoch, index, draws...) per sample, whatever the batching."""
    return [
        (epoch, *values)
        for epoch, batch in stream
        for values in zip(batch["index"], *(batch[k] for k in DRAWS), strict=True)
    ]


def _indices(batch) -> list[int]:
    return batch["index"]


# 20 samples in batches of 3: 7 batches per epoch.
PER_EPOCH = 7
STOPS = (1, 4, PER_EPOCH, PER_EPOCH + 2)  # one batch, mid-epoch, the epoch's end, into the next epoch


def _reference(epochs: int = 2):
    """The uninterrupted stream in the main process (num_workers=0)."""
    return list(epochs_of(_loader(0), epochs))


@pytest.mark.parametrize("num_workers", [0, 2, 3])
def test_samples_and_draws_resume_exactly(num_workers):
    expected = _reference()
    for stop in STOPS:
        assert check_resume(lambda: _loader(num_workers), stop, expected=expected) == expected
    samples = _samples(expected)
    # The comparison can fail: draws differ from sample to sample and epoch to epoch, and all three
    # RNGs are drawn from.
    for k in range(2, 5):
        assert len({s[k] for s in samples}) == len(samples)


def test_draws_do_not_depend_on_num_workers():
    """Uninterrupted runs with 0, 2 and 3 workers deliver the same samples with the same draws."""
    expected = _reference()
    for num_workers in (2, 3):
        assert list(epochs_of(_loader(num_workers), 2)) == expected


@pytest.mark.parametrize(
    "saved,resumed",
    [
        ({"num_workers": 2}, {"num_workers": 3}),
        ({"num_workers": 2}, {"num_workers": 0}),
        ({"num_workers": 0}, {"num_workers": 2}),
        ({"num_workers": 2}, {"num_workers": 3, "prefetch_factor": 4, "persistent_workers": True}),
        ({"num_workers": 3, "persistent_workers": True}, {"num_workers": 2, "prefetch_factor": 1}),
    ],
)
def test_pipeline_changed_on_resume_is_exact(saved, resumed):
    expected = _reference()
    for stop in (4, PER_EPOCH + 2):
        check_resume(lambda: _loader(**saved), stop, resume_with=lambda: _loader(**resumed), expected=expected)


def test_reseed_off_is_honoured_and_draws_then_depend_on_num_workers():
    def stream(num_workers):
        return list(epochs_of(_loader(num_workers, reseed_rng=False), 1))

    # Without reseeding, the main process's RNGs are drawn from directly, and not put back.
    torch.manual_seed(123)
    first_draw = torch.rand(()).item()
    torch.manual_seed(123)
    in_process = stream(0)
    assert in_process[0][1]["torch"][0] == first_draw
    assert torch.rand(()).item() != first_draw  # the main RNG moved on
    # Same samples as with reseeding, but the draws now depend on which process fetched them.
    with_workers = stream(2)
    assert [b["index"] for _, b in in_process] == [b["index"] for _, b in with_workers]
    for key in DRAWS:
        assert [b[key] for _, b in in_process] != [b[key] for _, b in with_workers], key


def test_reseed_setting_changed_on_resume_warns():
    state = _loader(reseed_rng=False).state_dict()
    with pytest.warns(InputCheckpointWarning, match="reseed_rng=False, resuming with reseed_rng=True"):
        _loader().load_state_dict(state)


def test_persistent_workers_over_three_epochs_resume_in_the_middle_one():
    def make():
        return _loader(2, persistent_workers=True)

    expected = _reference(epochs=3)
    for stop in (PER_EPOCH + 3, 2 * PER_EPOCH):
        check_resume(make, stop, epochs=3, expected=expected)


# Out of order: three slow samples hold their batch back while the other worker delivers later ones.
SLOW = frozenset({0, 7, 13})


def _unordered(num_workers: int = 2, **options) -> ResumableDataLoader:
    return _loader(num_workers, batch_size=2, in_order=False, dataset=Augmenting(SLOW, 0.08), **options)


@pytest.mark.parametrize("persistent_workers", [False, True])
def test_out_of_order_delivers_every_sample_once_with_its_draws(persistent_workers):
    """Stops at many points, some while later batches were delivered before earlier ones ("ahead")."""
    epochs = 3 if persistent_workers else 2
    in_order = _reference(epochs)
    stops = (1, 2, 3, 5, 6, 8, 10, 11, 13, 16, 20, 23, 27)  # 10 batches per epoch
    stream, states = resume_chain(lambda: _unordered(persistent_workers=persistent_workers), stops, epochs)
    check_exactly_once(stream, _indices, N)
    # Each sample carries the draws it has in the in-order run: they follow the sample, not the worker.
    assert sorted(_samples(stream)) == sorted(_samples(in_order))
    # Out-of-order delivery did happen, and some stops fell while batches were delivered ahead.
    assert [i for _, b in stream for i in b["index"]] != [i for _, b in in_order for i in b["index"]]
    assert any(state["ahead"]["end"] for state in states), [state["ahead"] for state in states]


def test_out_of_order_state_may_resume_in_order_with_other_workers():
    """Batches delivered ahead are skipped by a resumed pipeline of another kind (same batch size)."""
    loader = _unordered()
    seen: list[tuple[int, dict]] = []
    state = None
    for item in epochs_of(loader, 1):
        seen.append(item)
        current = loader.state_dict()
        if current["ahead"]["end"]:
            state = roundtrip(current)
            break
    assert state is not None, "no batch was delivered out of order"
    del loader
    resumed = _loader(3, batch_size=2)
    resumed.load_state_dict(state)
    rest = list(epochs_of(resumed, 1))
    check_exactly_once(seen + rest, _indices, N)


def test_out_of_order_state_with_batches_ahead_refuses_another_batch_size():
    state = _loader(batch_size=2).state_dict() | {"ahead": {"end": 2, "missing": [0]}}
    with pytest.raises(InputStateError, match="saved batch_size=2, world size=1, now batch_size=3"):
        _loader(batch_size=3).load_state_dict(state)


def test_batch_size_change_continues_at_the_same_sample_with_its_draws():
    expected = _samples(_reference())
    loader = _loader(2)
    head = []
    for item in epochs_of(loader, 2):
        head.append(item)
        if len(head) == 3:
            break
    state = roundtrip(loader.state_dict())
    del loader
    bigger = _loader(3, batch_size=4)
    bigger.load_state_dict(state)
    tail = list(epochs_of(bigger, 2))
    # 9 samples delivered in batches of 3; the rest of the epoch (11) in batches of 4, then a whole epoch.
    assert [len(b["index"]) for _, b in tail] == [4, 4, 3, 4, 4, 4, 4, 4]
    assert _samples(head) + _samples(tail) == expected


def test_batches_ahead_are_kept_as_their_holes_at_most_workers_times_prefetch():
    """One slow sample holds the position while the other worker delivers many batches: the state
    grows by what is in flight (at most workers x prefetch), not by what was delivered meanwhile."""

    def make():
        return ResumableDataLoader(
            Augmenting(frozenset({0}), 0.5),
            batch_size=1,
            seed=5,
            num_workers=2,
            prefetch_factor=2,
            in_order=False,
        )

    loader = make()
    head, widest = [], None
    for item in epochs_of(loader, 1):
        head.append(item)
        ahead = loader.state_dict()["ahead"]
        assert len(ahead["missing"]) <= 2 * 2, ahead
        if ahead["end"] > 2 * 2:
            widest = roundtrip(loader.state_dict())
            break
    assert widest is not None, "the slow sample did not hold the position back"
    del loader
    resumed = make()
    resumed.load_state_dict(widest)
    check_exactly_once(head + list(epochs_of(resumed, 1)), _indices, N)


@pytest.mark.parametrize(
    "ahead",
    [[1], {"end": 2, "missing": [1]}, {"end": -1, "missing": []}, {"end": 2, "missing": [0, 5]}, {"end": 2}],
)
def test_malformed_ahead_is_an_input_state_error(ahead):
    state = _loader().state_dict() | {"ahead": ahead}
    with pytest.raises(InputStateError, match="ahead"):
        _loader().load_state_dict(state)


@pytest.mark.parametrize("options", [{}, {"in_order": False}])
def test_abandoned_loader_with_persistent_workers_is_freed_at_once(options):
    """No reference cycle: dropping a loader stops its persistent workers right away. (In a cycle, the
    collector closed the workers' queues first and each worker then waited out a 5 s join timeout.)"""
    assert_freed_without_cycle_collector(lambda: _loader(2, persistent_workers=True, **options))


@pytest.mark.parametrize("in_order", [True, False])
def test_iterating_again_after_break_with_persistent_workers_continues_like_a_restored_copy(in_order):
    """The persistent workers are reset for the new pass, which continues where the caller stopped."""
    loader = _loader(2, persistent_workers=True, in_order=in_order)
    it = iter(loader)
    head = [to_py(next(it)) for _ in range(3)]
    state = roundtrip(loader.state_dict())
    rest = [to_py(b) for b in loader]
    restored = _loader(0)
    restored.load_state_dict(state)
    assert sorted(map(str, rest)) == sorted(map(str, (to_py(b) for b in restored)))
    if in_order:
        assert head + rest == [b for _, b in _reference(1)]
    check_exactly_once([(0, b) for b in head + rest], _indices, N)
    assert loader.epoch == 1
    del it, loader


class OwnGenerator(Dataset):
    """A dataset that makes its own NumPy Generator per sample, from the seed reseeding gave torch."""

    def __len__(self) -> int:
        return N

    def __getitem__(self, index: int) -> dict[str, float | int]:
        rng = np.random.default_rng(torch.initial_seed())
        return {"index": index, "own": float(rng.random())}


def test_generator_made_per_sample_from_torch_initial_seed_follows_the_sample():
    """The recipe the README gives for RNG objects: build them in __getitem__ from torch.initial_seed(),
    declaring torch's RNG (reading its seed is no draw, so it would not be found by probing)."""

    def make(num_workers):
        return lambda: _loader(num_workers, dataset=OwnGenerator(), reseed_rng=("torch",))

    expected = list(epochs_of(make(0)(), 2))
    assert list(epochs_of(make(2)(), 2)) == expected
    check_resume(make(2), 4, resume_with=make(3), expected=expected)
    draws = [d for _, b in expected for d in b["own"]]
    assert len(set(draws)) == len(draws)

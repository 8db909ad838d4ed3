"""ResumableSampler(allow_growth=True): a dataset that grew between save and resume finishes the epoch in
progress over its old length (exactly as the uninterrupted run) and uses the new length afterwards;
without the opt-in, a changed length is refused with a message that names it."""

from __future__ import annotations

import pytest

from torch_input_ckpt import InputStateError, ResumableDataLoader, ResumableSampler

from tests.support.resume import check_exactly_once, check_resume, epochs_of, roundtrip


class Numbers:
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return index


def _loader(n: int, allow_growth: bool = True) -> ResumableDataLoader:
    sampler = ResumableSampler(Numbers(n), seed=4, allow_growth=allow_growth)
    return ResumableDataLoader(Numbers(n), batch_size=2, sampler=sampler)


def _state_after(n: int, batches: int) -> dict:
    loader = _loader(n)
    it = iter(loader)
    for _ in range(batches):
        next(it)
    return roundtrip(loader.state_dict())


def _ids(stream) -> list[int]:
    return [i for _, batch in stream for i in batch]


def test_growth_mid_epoch_finishes_the_epoch_over_the_old_length():
    old = list(epochs_of(_loader(10), 1))
    state = _state_after(10, 3)
    grown = _loader(14)
    grown.load_state_dict(state)
    tail = list(epochs_of(grown, 3))
    # Epoch 0 continues exactly as the uninterrupted run over 10 items would have.
    assert _ids(old)[:6] + _ids(s for s in tail if s[0] == 0) == _ids(old)
    check_exactly_once([s for s in tail if s[0] >= 1], lambda batch: batch, 14)
    assert {s[0] for s in tail} == {0, 1, 2}
    # A state taken inside the grown epoch resumes exactly (it records the old length of that epoch).
    again = roundtrip(grown.state_dict())

    def make() -> ResumableDataLoader:
        loader = _loader(14)
        loader.load_state_dict(state)
        return loader

    check_resume(make, 1, 3)
    assert again["sampler"]["length"] == 14


def test_growth_at_an_epoch_boundary_uses_the_new_length_at_once():
    state = _state_after(10, 5)  # 10 items in batches of 2: the epoch's end
    assert state["sampler"]["epoch"] == 1 and state["sampler"]["cursor"] == 0
    grown = _loader(14)
    grown.load_state_dict(state)
    check_exactly_once(list(epochs_of(grown, 3)), lambda batch: batch, 14)


def test_a_changed_length_is_refused_naming_the_opt_in():
    state = _state_after(10, 3)
    with pytest.raises(InputStateError, match=r"length=10, but this pipeline has dataset_length=14.*allow_growth=True"):
        _loader(14, allow_growth=False).load_state_dict(state)
    with pytest.raises(InputStateError, match=r"length=10.*length=8.*grow but not shrink"):
        _loader(8).load_state_dict(state)


def test_the_sampler_alone_refuses_naming_the_opt_in_and_accepts_with_it():
    sampler = ResumableSampler(10, seed=4)
    it = iter(sampler)
    head = [next(it) for _ in range(4)]
    state = roundtrip(sampler.state_dict())
    with pytest.raises(
        InputStateError, match=r"saved with length=10, but this pipeline has length=12.*allow_growth=True"
    ):
        ResumableSampler(12, seed=4).load_state_dict(state)
    grown = ResumableSampler(12, seed=4, allow_growth=True)
    grown.load_state_dict(state)
    rest, following = list(grown), list(grown)
    assert head + rest == list(ResumableSampler(10, seed=4)), "the epoch in progress finishes over 10 items"
    assert sorted(following) == list(range(12)), "the next epoch covers the grown dataset"

"""Epoch boundaries after a restore: the usual set_epoch loop, restart_epoch, and batches_remaining."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from torch.utils.data import IterableDataset, SequentialSampler

from torch_input_ckpt import EpochMismatchWarning, ResumableDataLoader

from tests.support.resume import roundtrip, to_py

N = 40
BATCH = 8


class Counting(IterableDataset):
    """A stateful IterableDataset of N items: its position is how many it yielded this epoch."""

    def __init__(self) -> None:
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.start = epoch, 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.start, N):
            self.start = i + 1
            yield self.epoch * 1000 + i

    def __len__(self) -> int:
        return N

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.start = state["epoch"], state["start"]


def _map_loader() -> ResumableDataLoader:
    return ResumableDataLoader(list(range(N)), batch_size=BATCH, shuffle=True, seed=3)


def _replay_loader() -> ResumableDataLoader:
    data = list(range(N))
    return ResumableDataLoader(data, batch_size=BATCH, sampler=SequentialSampler(data))


def _iterable_loader() -> ResumableDataLoader:
    return ResumableDataLoader(Counting(), batch_size=BATCH)


LOADERS = {"seek": _map_loader, "replay": _replay_loader, "iterable": _iterable_loader}


def _set_epoch_on(loader: ResumableDataLoader, how: str) -> Callable[[int], None]:
    # The DDP idiom calls the sampler's set_epoch; the loader has one too.
    return loader.sampler.set_epoch if how == "sampler" else loader.set_epoch  # type: ignore[union-attr]


def _restored_after_epoch_0(make: Callable[[], ResumableDataLoader]) -> tuple[ResumableDataLoader, list[Any]]:
    first = make()
    epoch0 = [to_py(b) for b in first]  # the last batch of epoch 0 delivered: saved here
    state = roundtrip(first.state_dict())
    restored = make()
    restored.load_state_dict(state)
    return restored, epoch0


def _usual_loop(loader: ResumableDataLoader, set_epoch: Callable[[int], None], saved_epoch: int) -> list[list[Any]]:
    passes = []
    for epoch in range(saved_epoch, 3):
        set_epoch(epoch)
        passes.append([to_py(b) for b in loader])
    return passes


# The sampler's set_epoch is ours only with a ResumableSampler (a custom sampler's is the user's).
@pytest.mark.parametrize(
    "kind,how", [("seek", "loader"), ("seek", "sampler"), ("replay", "loader"), ("iterable", "loader")]
)
def test_usual_set_epoch_loop_after_a_restore_at_an_epoch_end_does_not_repeat_the_epoch(kind, how):
    make = LOADERS[kind]
    uninterrupted = make()
    reference = [[to_py(b) for b in uninterrupted] for _ in range(3)]
    loader, epoch0 = _restored_after_epoch_0(make)
    assert epoch0 == reference[0] and loader.epoch == 1
    set_epoch = _set_epoch_on(loader, how)
    with pytest.warns(EpochMismatchWarning, match=r"set_epoch\(0\) after restoring a position at the end of epoch 0"):
        passes = _usual_loop(loader, set_epoch, saved_epoch=0)
    # Epoch 0's rest is empty; epochs 1 and 2 follow exactly as in the uninterrupted run.
    assert [sum(len(b) for b in p) for p in passes] == [0, N, N]
    assert passes[1:] == reference[1:]


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_the_loop_over_loader_epoch_needs_no_set_epoch_and_warns_nothing(kind):
    make = LOADERS[kind]
    uninterrupted = make()
    reference = [[to_py(b) for b in uninterrupted] for _ in range(3)]
    loader, _ = _restored_after_epoch_0(make)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        passes = []
        for epoch in range(loader.epoch, 3):
            loader.set_epoch(epoch)  # a no-op: it is the loader's own epoch
            passes.append([to_py(b) for b in loader])
    assert passes == reference[1:]


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_an_epoch_further_behind_a_restored_position_warns_and_starts_over(kind):
    make = LOADERS[kind]
    uninterrupted = make()
    reference = [[to_py(b) for b in uninterrupted] for _ in range(2)]
    first = make()
    it = iter(first)
    for _ in range(N // BATCH + 2):  # into epoch 1
        try:
            next(it)
        except StopIteration:
            it = iter(first)
            next(it)
    loader = make()
    loader.load_state_dict(roundtrip(first.state_dict()))
    assert loader.epoch == 1
    with pytest.warns(EpochMismatchWarning, match=r"set_epoch\(0\) after restoring a position in epoch 1: starting"):
        loader.set_epoch(0)
    assert [to_py(b) for b in loader] == reference[0]


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_restart_epoch_starts_the_current_epoch_over_without_a_warning(kind):
    make = LOADERS[kind]
    reference = [to_py(b) for b in make()]
    loader = make()
    it = iter(loader)
    head = [to_py(next(it)) for _ in range(2)]
    assert head == reference[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.restart_epoch()
    assert loader.epoch == 0
    assert [to_py(b) for b in loader] == reference


def test_restart_epoch_after_a_restore_repeats_a_finished_epoch_on_purpose():
    loader, epoch0 = _restored_after_epoch_0(_map_loader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.restart_epoch(0)
    assert [to_py(b) for b in loader] == epoch0


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_batches_remaining_counts_the_rest_of_the_epoch_after_a_mid_epoch_resume(kind):
    make = LOADERS[kind]
    first = make()
    assert first.batches_remaining == len(first) == N // BATCH
    it = iter(first)
    for _ in range(3):
        next(it)
    assert first.batches_remaining == N // BATCH - 3
    resumed = make()
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert len(resumed) == N // BATCH, "len stays the whole epoch (learning-rate schedules use it)"
    assert resumed.batches_remaining == N // BATCH - 3
    again = make()
    again.load_state_dict(roundtrip(first.state_dict()))
    delivered = sum(1 for _ in again)
    assert delivered == N // BATCH - 3
    assert again.batches_remaining == N // BATCH, "the next epoch is whole"

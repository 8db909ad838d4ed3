"""ResumableDataLoader resumes exactly, from the batches delivered to the caller, in a fresh object."""

from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from torch_input_ckpt import InputStateError, ResumableDataLoader, ResumableSampler

from tests.support.resume import check_resume, epochs_of, roundtrip, to_py

N = 23


class Augmenting(Dataset):
    """Returns the index and a random draw from torch's and Python's global RNGs."""

    def __len__(self):
        return N

    def __getitem__(self, index):
        return {"index": index, "torch": torch.rand(()).item(), "python": random.random()}


def _stops(batches_per_epoch: int) -> list[int]:
    """Very start, one batch, mid-epoch, just before the last batch, the epoch's end, into the next."""
    return [0, 1, batches_per_epoch // 2, batches_per_epoch - 1, batches_per_epoch, batches_per_epoch + 1]


def _batches(batch_size: int, drop_last: bool) -> int:
    return N // batch_size if drop_last else -(-N // batch_size)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("batch_size", [1, 4, 5])
@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_equivalence_in_process(shuffle, batch_size, drop_last):
    def make():
        return ResumableDataLoader(list(range(N)), batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, seed=11)

    for stop in _stops(_batches(batch_size, drop_last)):
        stream = check_resume(make, stop)
        assert len(stream) == 2 * _batches(batch_size, drop_last)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_equivalence_with_workers(shuffle, drop_last):
    """Workers prefetch ahead of the caller; the state must still be the delivered position."""

    def make():
        return ResumableDataLoader(
            Augmenting(), batch_size=4, shuffle=shuffle, drop_last=drop_last, seed=3, num_workers=2, prefetch_factor=2
        )

    expected = None  # the uninterrupted run, taken once (by the first check) and compared with at every stop
    for stop in _stops(_batches(4, drop_last)):
        expected = check_resume(make, stop, expected=expected)


def test_uninterrupted_stream_matches_a_plain_dataloader_over_the_same_sampler():
    """Same order as torch's DataLoader would produce from the same indices: we batch, not reorder."""
    sampler = ResumableSampler(N, seed=4)
    ours = [to_py(b) for b in ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True, seed=4)]
    stock = [to_py(b) for b in DataLoader(list(range(N)), batch_size=4, sampler=sampler)]
    assert ours == stock


def test_each_epoch_has_its_own_order_and_covers_everything():
    loader = ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True)
    epochs = [sum((to_py(b) for b in loader), []) for _ in range(3)]
    assert all(sorted(e) == list(range(N)) for e in epochs)
    assert len({tuple(e) for e in epochs}) == 3
    assert loader.epoch == 3


def test_epoch_after_a_resumed_epoch_matches_and_no_replay_of_earlier_epochs():
    """Resuming in epoch 2 must give epoch 2's order, and the epoch after it must be epoch 3's."""

    def make():
        return ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True, seed=9)

    expected = list(epochs_of(make(), 4))
    stream = check_resume(make, stop_after=2 * 6 + 2, epochs=4)
    assert stream == expected
    first_epoch = [b for e, b in expected if e == 1]
    resumed_epoch = [b for e, b in expected if e == 2]
    assert first_epoch != resumed_epoch


def test_iterating_again_after_break_continues_like_a_restored_copy():
    loader = ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True)
    it = iter(loader)
    head = [to_py(next(it)) for _ in range(2)]
    state = roundtrip(loader.state_dict())
    rest = [to_py(b) for b in loader]
    restored = ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True)
    restored.load_state_dict(state)
    assert [to_py(b) for b in restored] == rest
    assert len(head + rest) == 6


def test_set_epoch_starts_over():
    loader = ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True)
    full = [to_py(b) for b in loader]
    loader.set_epoch(0)
    assert [to_py(b) for b in loader] == full


def test_augmentation_draws_survive_a_resume_and_leave_the_main_rng_alone():
    def make():
        return ResumableDataLoader(Augmenting(), batch_size=3, shuffle=True, seed=1)

    stream = check_resume(make, 3)
    draws = [d for _, batch in stream for d in batch["torch"]]
    assert len(set(draws)) == len(draws), "each sample gets its own seed"
    # Reseeding puts the global RNGs back after each batch: loading data does not shift the model's draws.
    torch.manual_seed(0)
    before = (torch.rand(3), random.random())
    torch.manual_seed(0)
    random.seed(0)
    expected_python = random.random()
    torch.manual_seed(0)
    random.seed(0)
    list(make())
    assert torch.equal(torch.rand(3), before[0])
    assert random.random() == expected_python


def test_batch_size_change_continues_at_the_same_sample():
    loader = ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True, seed=2)
    full = sum((to_py(b) for b in ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True, seed=2)), [])
    it = iter(loader)
    head = sum((to_py(next(it)) for _ in range(3)), [])
    bigger = ResumableDataLoader(list(range(N)), batch_size=5, shuffle=True, seed=2)
    bigger.load_state_dict(roundtrip(loader.state_dict()))
    tail = [to_py(b) for b in bigger]
    assert [len(b) for b in tail] == [5, 5, 1]
    assert head + sum(tail, []) == full


def test_custom_sampler_is_replayed_to_the_position():
    def make():
        return ResumableDataLoader(list(range(N)), batch_size=4, sampler=SequentialSampler(range(N)))

    check_resume(make, 3)
    state = make().state_dict()
    assert state["external"] == ["SequentialSampler"]


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("dataset_length", 99, "dataset_length=99, but this pipeline has dataset_length=23"),
        ("sampler_kind", "RandomSampler", "sampler_kind='RandomSampler'"),
        ("version", 2, "version 2 is not supported"),
    ],
)
def test_mismatched_loader_state_names_both_values(key, value, message):
    state = ResumableDataLoader(list(range(N)), batch_size=4).state_dict() | {key: value}
    with pytest.raises(InputStateError, match=message):
        ResumableDataLoader(list(range(N)), batch_size=4).load_state_dict(state)


def test_custom_sampler_batch_size_must_match():
    state = ResumableDataLoader(list(range(N)), batch_size=4, sampler=SequentialSampler(range(N))).state_dict()
    with pytest.raises(InputStateError, match="batch_size=4, but this pipeline has batch_size=5"):
        ResumableDataLoader(list(range(N)), batch_size=5, sampler=SequentialSampler(range(N))).load_state_dict(state)


def test_generator_and_batch_sampler_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="seed= instead of generator="):
        ResumableDataLoader(list(range(N)), generator=torch.Generator())
    with pytest.raises(ValueError, match="batch_sampler"):
        ResumableDataLoader(list(range(N)), batch_sampler=[[0, 1]])  # type: ignore[arg-type]


def test_is_a_dataloader_with_its_attributes():
    loader = ResumableDataLoader(list(range(N)), batch_size=4, shuffle=True, drop_last=True)
    assert isinstance(loader, DataLoader)
    assert isinstance(loader.sampler, ResumableSampler)
    assert loader.batch_size == 4 and loader.drop_last and len(loader) == 5
    assert loader.dataset == list(range(N))

"""ResumableSampler: DistributedSampler's sharding rules, a global cursor, O(1) state, resharding."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from torch_input_ckpt import InputStateError, ResumableSampler, Stateful

from tests.support.resume import check_resume, roundtrip


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


@pytest.mark.parametrize("n", [1, 2, 5, 10, 11, 64])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [True, False])
def test_randperm_order_equals_distributed_sampler(n, world, shuffle, drop_last):
    for rank in range(world):
        for epoch in (0, 3):
            ours = ResumableSampler(
                n, shuffle=shuffle, seed=7, num_replicas=world, rank=rank, drop_last=drop_last, order="randperm"
            )
            ours.set_epoch(epoch)
            stock = DistributedSampler(
                _Sized(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=7, drop_last=drop_last
            )
            stock.set_epoch(epoch)
            assert list(ours) == list(stock)
            assert len(ours) == len(stock)


def test_feistel_epoch_covers_every_index_once():
    n = 1000
    sampler = ResumableSampler(n, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(n)) and sorted(second) == list(range(n))
    assert first != second, "the epoch advances by itself and each epoch has its own order"
    assert sampler.epoch == 2


def test_seeds_give_different_orders():
    assert list(ResumableSampler(100, seed=0)) != list(ResumableSampler(100, seed=1))


def test_shuffle_false_is_in_order():
    assert list(ResumableSampler(10, shuffle=False)) == list(range(10))


def test_state_is_constant_size_whatever_the_length():
    small = ResumableSampler(10, seed=1)
    huge = ResumableSampler(2**62, seed=1)
    for s in (small, huge):
        it = iter(s)
        for _ in range(5):
            next(it)
    sizes = [len(json.dumps(s.state_dict())) for s in (small, huge)]
    assert max(sizes) < 300
    assert huge.state_dict()["cursor"] == 5


def test_set_epoch_keeps_a_resumed_position_and_moves_otherwise():
    sampler = ResumableSampler(20, seed=1)
    it = iter(sampler)
    taken = [next(it) for _ in range(5)]
    state = roundtrip(sampler.state_dict())
    fresh = ResumableSampler(20, seed=1)
    fresh.load_state_dict(state)
    fresh.set_epoch(0)  # the usual DDP loop calls this on resume: it must not rewind
    assert taken + list(fresh) == list(ResumableSampler(20, seed=1))
    fresh.set_epoch(5)
    assert fresh.cursor == 0 and fresh.epoch == 5


def test_iterator_started_before_set_epoch_stops_recording():
    sampler = ResumableSampler(20, seed=1)
    it = iter(sampler)
    next(it)
    sampler.set_epoch(4)
    next(it)
    assert (sampler.epoch, sampler.cursor) == (4, 0)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 300),
    worlds=st.lists(st.integers(1, 5), min_size=1, max_size=4),
    fractions=st.lists(st.floats(0, 1), min_size=4, max_size=4),
    drop_last=st.booleans(),
    seed=st.integers(0, 2**31),
)
def test_any_sequence_of_world_sizes_covers_the_epoch_exactly_once(n, worlds, fractions, drop_last, seed):
    """Ranks run in lockstep, save, and resume on another world size: every sample exactly once,
    except DistributedSampler's padding (duplicates) where the cursor first passes the end, or the
    drop_last tail (omissions) that the last world cannot divide. Each new world takes what is left
    after the saved cursor."""
    seen: Counter[int] = Counter()
    state = None
    padding = None  # duplicates expected where the cursor first passes n
    for i, world in enumerate(worlds):
        last = i == len(worlds) - 1
        samplers = [
            ResumableSampler(n, seed=seed, num_replicas=world, rank=r, drop_last=drop_last) for r in range(world)
        ]
        for s in samplers:
            if state is not None:
                s.load_state_dict(roundtrip(state))
        start = samplers[0].cursor
        per_rank = samplers[0].rank_count(start)
        steps = per_rank if last else int(per_rank * fractions[i])
        iterators = [iter(s) for s in samplers]
        for _ in range(steps):
            for it in iterators:
                seen[next(it)] += 1
        if steps == per_rank:  # a pass that took its share ends there, as a loop over it would see
            assert all(next(it, None) is None for it in iterators)
        if padding is None and start + steps * world >= n:
            padding = start + steps * world - n
        states = [s.state_dict() for s in samplers]
        assert all(st_ == states[0] | {"num_replicas": world} for st_ in states)
        state = states[0]
    if drop_last:
        assert max(seen.values(), default=1) == 1
        assert n - len(seen) == (n - start) % world, "only the last world's indivisible tail is dropped"
    else:
        assert set(seen) == set(range(n))
        assert sum(seen.values()) - n == padding
    if n >= world or not drop_last:  # else every epoch is empty, and the position stays at (0, 0)
        assert all((s.epoch, s.cursor) == (1, 0) for s in samplers)


def test_state_dict_round_trips_and_is_stateful():
    sampler = ResumableSampler(50, seed=2)
    assert isinstance(sampler, Stateful)
    sampler.load_state_dict(roundtrip(sampler.state_dict()))


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("length", 51, "length=51, but this pipeline has length=50"),
        ("seed", 9, "seed=9, but this pipeline has seed=2"),
        ("shuffle", False, "shuffle=False"),
        ("kind", "Other", "kind 'Other', expected 'ResumableSampler'"),
        ("version", 99, "version 99 is not supported, expected 1"),
        ("cursor", 51, "cursor=51 is invalid"),
        ("cursor", "3", "cursor='3' should be int"),
    ],
)
def test_mismatched_state_names_both_values(key, value, message):
    state = ResumableSampler(50, seed=2).state_dict() | {key: value}
    with pytest.raises(InputStateError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ResumableSampler(50, seed=2).load_state_dict(state)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="length=0"):
        ResumableSampler(0)
    with pytest.raises(ValueError, match="order"):
        ResumableSampler(5, order="sorted")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank=3, size=2"):
        ResumableSampler(5, num_replicas=2, rank=3)
    with pytest.raises(InputStateError, match="expected a dict"):
        ResumableSampler(5).load_state_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("stop_after", [0, 1, 4, 7, 8, 9])
def test_resumes_exactly_inside_torchdata_stateful_dataloader(num_workers, stop_after):
    """The sampler is Stateful, so StatefulDataLoader saves and restores it (8 batches per epoch)."""

    def make():
        return StatefulDataLoader(
            list(range(30)), batch_size=4, sampler=ResumableSampler(30, seed=5), num_workers=num_workers
        )

    class Epochs:
        """StatefulDataLoader has no epoch counter: count finished passes, as a training script would
        (the sampler's own epoch runs ahead of the caller when workers prefetch)."""

        def __init__(self):
            self.loader = make()
            self.epoch = 0

        def __iter__(self):
            yield from self.loader
            self.epoch += 1

        def state_dict(self):
            return {"epoch": self.epoch, "loader": self.loader.state_dict()}

        def load_state_dict(self, state):
            self.epoch = state["epoch"]
            self.loader.load_state_dict(state["loader"])

    stream = check_resume(Epochs, stop_after)
    assert len(stream) == 16


def test_a_loader_commit_supersedes_an_abandoned_direct_iteration():
    """Progress read from a chunk that a direct `iter(sampler)` left half-handed-out must not override
    the positions a loader commits afterwards."""
    from torch_input_ckpt import ResumableDataLoader

    sampler = ResumableSampler(40, seed=3)
    abandoned = iter(sampler)
    first = next(abandoned)
    loader = ResumableDataLoader(list(range(40)), batch_size=4, sampler=sampler)
    batches = iter(loader)
    taken = [next(batches).tolist() for _ in range(2)]
    assert sampler.cursor == 1 + 8
    assert [first] + sum(taken, []) == list(ResumableSampler(40, seed=3))[:9]

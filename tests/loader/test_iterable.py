"""IterableDatasets resume exactly through ResumableDataLoader, with and without workers, and refuse
what their per-worker state cannot do (another num_workers, another world) with a clear error."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset, get_worker_info

from torch_input_ckpt import InputStateError, ResumableDataLoader, UnseededDrawWarning

from tests.support.resume import (
    assert_freed_without_cycle_collector,
    check_exactly_once,
    check_resume,
    epochs_of,
    release,
    roundtrip,
    to_py,
)

N = 22


def _shard(items: list[int], skew: bool = False) -> tuple[int, list[int]]:
    """This worker's share of ``items``: worker w of W takes w, w+W, ... (get_worker_info sharding).

    With ``skew``, worker 0 takes the first two thirds and the others share the rest, so that some
    workers run out while another still has batches to deliver.
    """
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    if not skew or workers == 1:
        return worker, items[worker::workers]
    split = 2 * len(items) // 3
    return worker, items[:split] if worker == 0 else items[split:][worker - 1 :: workers - 1]


def _order(seed: int, epoch: int) -> list[int]:
    return torch.randperm(N, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


class ShardedStream(IterableDataset):
    """A stateful stream, sharded over workers, with a new order each epoch (the recipe the README gives).

    Its state is this copy's epoch and position in its own shard: inside a worker, that worker's.
    ``set_epoch`` (called by the loader before each pass, and so seen by the copies forked for it)
    starts an epoch. Persistent workers never see ``set_epoch``, so ``iter()`` on an exhausted copy
    starts the next epoch by itself, unless the state was just loaded: torchdata restores a worker
    whose shard had ended and asks it once more, and it must then find nothing left.
    """

    def __init__(self, seed: int = 0, skew: bool = False) -> None:
        self.seed = seed
        self.skew = skew
        self.epoch = 0
        self.position = 0
        self.restored = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position, self.restored = epoch, 0, False

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.restored = state["epoch"], state["position"], True

    def __iter__(self):
        # Not a generator function: the bookkeeping happens at iter(), before torchdata reads the state.
        worker, shard = _shard(_order(self.seed, self.epoch), self.skew)
        if self.position >= len(shard) and not self.restored:
            self.epoch, self.position = self.epoch + 1, 0
            worker, shard = _shard(_order(self.seed, self.epoch), self.skew)
        self.restored = False
        return self._items(worker, shard)

    def _items(self, worker: int, shard: list[int]):
        while self.position < len(shard):
            item = shard[self.position]
            self.position += 1
            yield {"item": item, "epoch": self.epoch, "worker": worker}


class PlainStream(IterableDataset):
    """The same stream without state: resumable only by replaying it."""

    def __iter__(self):
        worker, shard = _shard(_order(0, 0))
        for item in shard:
            yield {"item": item, "worker": worker}


def _items(batch) -> list[int]:
    return batch["item"]


def _loader(dataset=None, **options) -> ResumableDataLoader:
    options = {"batch_size": 3, **options}
    return ResumableDataLoader(ShardedStream(seed=1) if dataset is None else dataset, **options)


# Batches per epoch: 22 items in batches of 3 -> 8 (one shard of 22, or two of 11 = 3+3+3+2 each).
PER_EPOCH = 8


@pytest.mark.parametrize("num_workers,skew", [(0, False), (2, False), (2, True)])
def test_stateful_sharded_stream_resumes_exactly(num_workers, skew):
    """Start, one batch, mid-epoch, after one worker ran out, after the epoch's last batch, and into the
    next epoch. Skewed: worker 0 has 5 batches, worker 1 has 3 and runs out after the 6th batch."""

    def make():
        return _loader(ShardedStream(seed=1, skew=skew), num_workers=num_workers)

    expected = check_resume(make, 0)
    stops = (1, PER_EPOCH // 2, PER_EPOCH - 1, PER_EPOCH, PER_EPOCH + 2)
    for stop in stops + ((PER_EPOCH - 2,) if skew else ()):
        check_resume(make, stop, expected=expected)
    # The comparison could fail: every item once per epoch, each epoch in its own order, the workers'
    # epochs moved on by the loader.
    check_exactly_once(expected, _items, N)
    assert len(expected) == 2 * PER_EPOCH
    epochs = [sum((_items(b) for e, b in expected if e == epoch), []) for epoch in (0, 1)]
    assert epochs[0] != epochs[1]
    assert {e for _, b in expected for e in b["epoch"]} == {0, 1}
    assert {w for _, b in expected for w in b["worker"]} == set(range(max(num_workers, 1)))


def test_persistent_workers_over_three_epochs_resume_in_the_middle_one():
    def make():
        return _loader(num_workers=2, persistent_workers=True)

    expected = check_resume(make, PER_EPOCH + 3, epochs=3)
    check_resume(make, 2 * PER_EPOCH, epochs=3, expected=expected)
    assert [sorted({e for e in b["epoch"]}) for _, b in expected][::PER_EPOCH] == [[0], [1], [2]]
    check_exactly_once(expected, _items, N)


def test_prefetch_factor_persistent_workers_and_in_order_may_change():
    def save():
        return _loader(num_workers=2, prefetch_factor=2)

    def resume():
        return _loader(num_workers=2, prefetch_factor=3, persistent_workers=True, in_order=False)

    check_resume(save, PER_EPOCH // 2 + 1, resume_with=resume)


def test_state_is_plain_json_with_each_workers_position():
    loader = _loader(num_workers=2)
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = roundtrip(loader.state_dict())  # asserts it is JSON
    del it, loader
    release()
    assert (state["num_workers"], state["world_size"], state["rank"], state["external"]) == (2, 1, 0, [])
    workers = state["inner"]["_snapshot"]["_worker_snapshots"]
    # Three batches delivered: two from worker 0, one from worker 1 (not the batches prefetched beyond).
    # Each worker's dataset state is the dataset's own, with the count of samples it yielded (their RNG
    # seeds follow from it: see test_rng_draws_of_a_stateful_iterable_survive_a_resume).
    # Its set of RNGs seeded per sample (the stream draws nothing: none).
    position = {"worker_0": 6, "worker_1": 3}
    for worker, count in position.items():
        expected = {"dataset": {"epoch": 0, "position": count}, "yielded": count, "epoch": 0, "reseeded_rngs": []}
        assert workers[worker]["dataset_state"] == expected


def test_fresh_state_and_state_after_load_start_no_workers():
    """state_dict() before any iteration, and right after a load, is answered without starting workers."""
    fresh = _loader(num_workers=2)
    state = fresh.state_dict()
    assert state["inner"] == {} and fresh._backend.delegate._iterator is None
    loaded = _loader(num_workers=2)
    loaded.load_state_dict(roundtrip(state))
    assert loaded.state_dict() == state and loaded._backend.delegate._iterator is None


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")  # 2-core CI
@pytest.mark.parametrize("saved,current", [(0, 2), (2, 3), (2, 0)])
def test_another_num_workers_is_refused_naming_both(saved, current):
    state = _loader(num_workers=saved).state_dict()
    with pytest.raises(InputStateError, match=rf"num_workers={saved}, but this pipeline has num_workers={current}"):
        _loader(num_workers=current).load_state_dict(state)


@pytest.mark.parametrize("key,saved", [("world_size", 2), ("rank", 1)])
def test_another_world_is_refused_naming_both(key, saved):
    state = _loader().state_dict() | {key: saved}
    current = 1 if key == "world_size" else 0
    with pytest.raises(InputStateError, match=rf"{key}={saved}, but this process has {key}={current}.*re-split"):
        _loader().load_state_dict(state)


def test_damaged_inner_state_is_an_input_state_error():
    state = _loader().state_dict() | {"inner": {"unexpected": 1}}
    with pytest.raises(InputStateError, match="no '_num_yielded' entry"):
        _loader().load_state_dict(state)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stream_without_state_is_external_and_replayed(num_workers):
    def make():
        return _loader(PlainStream(), num_workers=num_workers)

    state = make().state_dict()
    assert len(state["external"]) == 1 and "PlainStream has no state_dict" in state["external"][0]
    assert "replaying" in state["external"][0]
    expected = check_resume(make, PER_EPOCH // 2)
    check_resume(make, PER_EPOCH + 1, expected=expected)


def test_stream_without_state_refuses_another_batch_size():
    state = _loader(PlainStream()).state_dict()
    with pytest.raises(InputStateError, match="batch_size=3, but this pipeline has batch_size=4.*replaying"):
        _loader(PlainStream(), batch_size=4).load_state_dict(state)


def test_stateful_stream_continues_at_the_same_item_with_another_batch_size():
    full = sum((_items(b) for _, b in epochs_of(_loader(), 1)), [])
    loader = _loader()
    it = iter(loader)
    head = sum((_items(to_py(next(it))) for _ in range(3)), [])
    bigger = _loader(batch_size=4)
    bigger.load_state_dict(roundtrip(loader.state_dict()))
    tail = [_items(to_py(b)) for b in bigger]
    assert [len(b) for b in tail] == [4, 4, 4, 1]
    assert head + sum(tail, []) == full


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterating_again_after_break_continues_like_a_restored_copy(num_workers):
    loader = _loader(num_workers=num_workers)
    it = iter(loader)
    head = [to_py(next(it)) for _ in range(2)]
    state = roundtrip(loader.state_dict())
    rest = [to_py(b) for b in loader]
    restored = _loader(num_workers=num_workers)
    restored.load_state_dict(state)
    assert [to_py(b) for b in restored] == rest
    assert len(head + rest) == PER_EPOCH and loader.epoch == 1
    del it, loader, restored
    release()


def test_set_epoch_starts_an_epoch_over():
    loader = _loader()
    first = [to_py(b) for b in loader]
    it = iter(loader)
    next(it)
    loader.set_epoch(0)
    assert loader.state_dict()["inner"] == {}
    assert [to_py(b) for b in loader] == first


def test_abandoned_loader_with_persistent_workers_is_freed_at_once():
    """No reference cycle: dropping the loader stops its persistent workers by reference counting."""
    assert_freed_without_cycle_collector(lambda: _loader(num_workers=2, persistent_workers=True))


def test_state_taken_between_iter_and_first_batch_of_a_persistent_epoch():
    """Persistent workers restart their shards when the new pass begins; a state taken then (before
    any batch of it) resumes at that epoch's start, not at the end of the previous one."""
    expected = list(epochs_of(_loader(num_workers=2, persistent_workers=True), 2))
    loader = _loader(num_workers=2, persistent_workers=True)
    head = [(0, to_py(b)) for b in loader]
    it = iter(loader)
    state = roundtrip(loader.state_dict())
    del it, loader
    release()
    resumed = _loader(num_workers=2, persistent_workers=True)
    resumed.load_state_dict(state)
    assert resumed.epoch == 1
    assert head + list(epochs_of(resumed, 2)) == expected
    del resumed


class TensorStateStream(ShardedStream):
    def state_dict(self):
        return {"epoch": self.epoch, "position": torch.tensor(self.position)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_dataset_state_that_is_not_json_is_named(num_workers):
    loader = _loader(TensorStateStream(), num_workers=num_workers)
    it = iter(loader)
    next(it)
    with pytest.raises(TypeError, match=r"\['position'\] is a Tensor.*IterableDataset's state_dict\(\).*JSON types"):
        loader.state_dict()
    del it, loader
    release()


@pytest.mark.parametrize(
    "options", [{}, {"num_workers": 2}, {"num_workers": 2, "persistent_workers": True}], ids=["0", "2", "2p"]
)
def test_state_taken_after_an_epoch_ended_resumes_at_the_next_epoch(options):
    """After the pass ran to its end (not just its last batch), the state is the next epoch's start."""
    expected = list(epochs_of(_loader(**options), 2))
    loader = _loader(**options)
    head = [(0, to_py(b)) for b in loader]
    state = roundtrip(loader.state_dict())
    del loader
    release()
    assert (state["epoch"], state["inner"]) == (1, {})
    resumed = _loader(**options)
    resumed.load_state_dict(state)
    assert head + list(epochs_of(resumed, 2)) == expected
    del resumed


class AugmentingStream(ShardedStream):
    """The sharded stream, each sample with draws from torch's, NumPy's and Python's global RNGs."""

    def _items(self, worker: int, shard: list[int]):
        for sample in super()._items(worker, shard):
            yield {
                **sample,
                "torch": torch.rand(()).item(),
                "numpy": float(np.random.rand()),
                "python": random.random(),
            }


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rng_draws_of_a_stateful_iterable_survive_a_resume(num_workers):
    """Each sample's global RNGs are reseeded from (seed, epoch, rank, worker, count): the draws after a
    resume (mid-epoch, after a worker ran out, into the next epoch) are the uninterrupted run's."""

    def make() -> ResumableDataLoader:
        return _loader(AugmentingStream(seed=1, skew=True), num_workers=num_workers)

    expected = check_resume(make, PER_EPOCH // 2)
    for stop in (1, 6, PER_EPOCH + 2):
        check_resume(make, stop, expected=expected)
    draws = [value for _, batch in expected for value in batch["torch"]]
    assert len(set(draws)) == len(draws), "every sample draws afresh"


def test_rng_draws_of_a_stateful_iterable_differ_after_a_resume_without_reseeding():
    """What the reseeding fixes: a fresh worker restored mid-epoch starts from its base seed."""

    def make() -> ResumableDataLoader:
        return _loader(AugmentingStream(seed=1), num_workers=2, reseed_rng=False)

    with pytest.raises(AssertionError, match="diverged"):
        check_resume(make, PER_EPOCH // 2)


def test_rng_draws_in_the_main_process_leave_the_models_rng_alone():
    loader = _loader(AugmentingStream(seed=1), num_workers=0)
    torch.manual_seed(7)
    before = torch.rand(3).tolist()
    torch.manual_seed(7)
    for _ in loader:
        pass
    assert torch.rand(3).tolist() == before


class LateDrawingStream(ShardedStream):
    """The sharded stream whose copies draw from torch's RNG only after ``after`` samples of their own
    (counted over epochs, as a persistent worker would), and nothing before."""

    def __init__(self, after: int, seed: int = 1) -> None:
        super().__init__(seed=seed)
        self.after = after
        self.fetched = 0

    def _items(self, worker: int, shard: list[int]):
        for sample in super()._items(worker, shard):
            self.fetched += 1
            yield {**sample, "torch": torch.rand(()).item() if self.fetched > self.after else -1.0}


def test_a_stateful_iterable_that_draws_nothing_seeds_nothing():
    """The per-RNG policy of map-style datasets: nothing drawn on the first samples, nothing seeded (the
    worker state records the empty set) and the RNGs are left where they were."""
    loader = _loader(ShardedStream(seed=1), num_workers=0)
    torch.manual_seed(3)
    expected = torch.rand(2).tolist()
    torch.manual_seed(3)
    batches = list(epochs_of(loader, 1))
    it = iter(loader)
    batches.append(next(it))
    assert len(batches) == PER_EPOCH + 1
    assert torch.rand(2).tolist() == expected
    state = roundtrip(loader.state_dict())
    del it
    assert state["inner"]["dataset_state"]["reseeded_rngs"] == []


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_stateful_iterable_that_starts_drawing_late_is_warned_and_exact_from_then_on(num_workers):
    """Each copy starts drawing after 18 samples (past the 16 of probation): the main process warns,
    naming torch's RNG; from a state taken after that, a fresh loader continues exactly."""
    after = 18
    epochs = 4 if num_workers else 2  # each of 2 workers sees 11 samples an epoch
    persistent = {"persistent_workers": True} if num_workers else {}

    def make(after_samples: int) -> ResumableDataLoader:
        return _loader(LateDrawingStream(after_samples), num_workers=num_workers, **persistent)

    loader = make(after)
    stream, state = [], None
    with pytest.warns(UnseededDrawWarning, match=r"torch's global RNG \('torch'\)"):
        for item in epochs_of(loader, epochs):
            stream.append(item)
            if len(stream) == epochs * PER_EPOCH - 4:
                state = roundtrip(loader.state_dict())
    assert state is not None
    drawn = [d for _, batch in stream for d in batch["torch"] if d != -1.0]
    assert drawn, "the stream drew after its first samples"
    # From the state on (taken after the warning), the draws are the uninterrupted run's.
    resumed = make(0)  # its copies draw from their first sample: only seeded draws can match
    resumed.load_state_dict(state)
    rest = list(epochs_of(resumed, epochs))
    assert rest == stream[len(stream) - len(rest) :] and len(rest) == 4


def test_a_bad_set_in_an_iterable_worker_state_is_an_input_state_error():
    loader = _loader(num_workers=0)
    it = iter(loader)
    next(it)
    state = roundtrip(loader.state_dict())
    del it
    state["inner"]["dataset_state"]["reseeded_rngs"] = ["cuda"]
    resumed = _loader(num_workers=0)
    resumed.load_state_dict(state)
    with pytest.raises(InputStateError, match=r"reseeded_rngs=\['cuda'\]"):
        next(iter(resumed))

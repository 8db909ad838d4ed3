"""Mixture: exact counts per mixture epoch, exactly once per source epoch, provenance, and exact resume
(any stop, num_workers 0/2 and 2 -> 3, world 2 -> 3 and 3 -> 2, augmentation draws)."""

from __future__ import annotations

from collections import Counter

import pytest

from torch_input_ckpt import InputStateError, Mixture, Origin, ResumableDataLoader, ResumableSampler

from tests.support.mixture_data import LENGTHS, TAGS, Source, by_source, check_source_epochs, ids, loader, mixture
from tests.support.resume import check_resume, epochs_of, release, roundtrip, to_py

EPOCHS = 3
N = sum(LENGTHS.values())  # 31 samples a mixture epoch by default
COUNTS = {"a": 16, "b": 6, "c": 9}  # largest remainder of 0.5, 0.2, 0.3 of 31 (15.5, 6.2, 9.3)
pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")


def _reference(batch_size: int = 4, epochs: int = EPOCHS) -> list[tuple[int, dict]]:
    return list(epochs_of(loader(batch_size=batch_size), epochs))


def test_counts_per_mixture_epoch_are_exact():
    assert mixture().counts() == COUNTS
    stream = _reference(epochs=EPOCHS)
    for epoch in range(EPOCHS):
        delivered = by_source(ids(item for item in stream if item[0] == epoch))
        assert {name: len(items) for name, items in delivered.items()} == COUNTS, f"epoch {epoch}"


def test_exactly_once_per_source_epoch_over_the_whole_run():
    delivered = by_source(ids(_reference(epochs=6)))
    for name, length in LENGTHS.items():
        check_source_epochs(name, delivered[name], length)
    # Up-sampled "a" went through 13 source epochs (96 samples of 7), "b" through 3 (36 of 11).
    assert len(delivered["a"]) == 6 * 16 and len(delivered["b"]) == 6 * 6


def test_mixture_epochs_differ_and_shuffle_false_follows_ideal_positions():
    stream = _reference(epochs=2)
    assert ids(s for s in stream if s[0] == 0) != ids(s for s in stream if s[0] == 1)
    plain = ResumableDataLoader(mixture(), batch_size=31, shuffle=False)
    tags = [i // 1000 for i in ids(epochs_of(plain, 1))]
    # One block (31 < BLOCK): the sources in the order of their samples' ideal positions (2j+1)/(2 n_k).
    names = list(LENGTHS)
    ideal = sorted(((2 * j + 1) / COUNTS[k], names.index(k)) for k in names for j in range(COUNTS[k]))
    assert tags == [TAGS[names[k]] for _, k in ideal]


def test_origins_name_the_delivered_sample_without_fetching():
    m = mixture()
    sampler = ResumableSampler(m, seed=3)
    for epoch in range(EPOCHS):
        keys = list(sampler)
        origins = m.origins(epoch, range(N), seed=3)
        for key, origin in zip(keys, origins, strict=True):
            assert m[key]["id"] == TAGS[origin.source] * 1000 + origin.index
            assert (origin.source, origin.index) == m.locate_key(key)
    # Source epochs: "a" (16 samples of 7 per mixture epoch) is in its source epoch 2 during epoch 0.
    epochs_a = {o.source_epoch for o in m.origins(0, range(N), seed=3) if o.source == "a"}
    assert epochs_a == {0, 1, 2}
    assert isinstance(m.origins(1, [0], seed=3)[0], Origin)


def _boundary_stop() -> int:
    """The batch count (batch size 1) right after source "a" finishes its first source epoch, inside
    mixture epoch 0 (checked: not at the mixture epoch's end)."""
    seen = 0
    for n, i in enumerate(ids(_reference(batch_size=1, epochs=1)), start=1):
        seen += i // 1000 == TAGS["a"]
        if seen == LENGTHS["a"]:
            assert n < N
            return n
    raise AssertionError("source a never finished a source epoch")


def test_resume_at_every_kind_of_stop():
    expected = _reference(batch_size=1)
    boundary = _boundary_stop()
    # start, one sample, mid-epoch, a source-epoch boundary, an epoch's end, mid-next, last epoch's end
    for stop in (0, 1, 13, boundary, N, N + 7, 2 * N + 30, EPOCHS * N):
        check_resume(lambda: loader(batch_size=1), stop, EPOCHS, expected=expected)


def test_resume_with_batches_and_a_batch_size_change():
    expected = _reference(batch_size=4)
    for stop in (3, 8, 19):  # mid-epoch 0; the epoch end (31 samples: 8 batches); mid epoch 2
        check_resume(loader, stop, EPOCHS, expected=expected)
    # Another batch size continues at the same sample.
    first = loader(batch_size=4)
    head = []
    for item in epochs_of(first, EPOCHS):
        head.append(item)
        if len(head) == 5:
            break
    resumed = loader(batch_size=3)
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert ids(head) + ids(epochs_of(resumed, EPOCHS)) == ids(expected)


@pytest.mark.slow
def test_resume_with_workers_and_a_change_of_worker_count():
    expected = _reference(batch_size=4)
    check_resume(lambda: loader(num_workers=2), 5, EPOCHS, expected=expected)
    check_resume(
        lambda: loader(num_workers=2), 11, EPOCHS, resume_with=lambda: loader(num_workers=3), expected=expected
    )
    release()


def _rank_loaders(world: int, batch_size: int) -> list[ResumableDataLoader]:
    return [
        ResumableDataLoader(
            mixture(), batch_size=batch_size, sampler=ResumableSampler(mixture(), seed=3, num_replicas=world, rank=r)
        )
        for r in range(world)
    ]


def _samples(batches) -> list[tuple[int, float]]:
    """(id, augmentation draw) of each sample."""
    return [(i, d) for batch in map(to_py, batches) for i, d in zip(batch["id"], batch["draw"], strict=True)]


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 2)])
def test_world_change_keeps_exactly_once_and_draws(before, after):
    """Ranks run in lockstep; the state of rank 0 (the global cursor) resumes on another world size."""
    batch_size = 2
    # The reference: epoch 0 of one process, position by position.
    reference = _samples(b for _, b in epochs_of(loader(batch_size=1), 1))
    loaders = _rank_loaders(before, batch_size)
    iterators = [iter(x) for x in loaders]
    steps = 3
    head = [_samples(next(it) for _ in range(steps)) for it in iterators]
    states = [roundtrip(x.state_dict()) for x in loaders]
    assert all(s["sampler"]["cursor"] == steps * batch_size * before for s in states)
    resumed = _rank_loaders(after, batch_size)
    for x in resumed:
        x.load_state_dict(states[0])
    tail = [_samples(batch for batch in x) for x in resumed]
    cursor = steps * batch_size * before
    # Order: each rank takes the positions of its stride, from the global cursor, wrapping as padding.
    for r in range(before):
        assert head[r] == [reference[p] for p in range(r, cursor, before)]
    for r in range(after):
        count = -(-(N - cursor) // after)
        positions = [cursor + r + i * after for i in range(count)]
        # A padded position (past the end) repeats the item at its wrapped position; its draw is seeded
        # by its own global position, as for any map-style dataset.
        assert tail[r] == [
            reference[p] if p < N else (reference[p % N][0], tail[r][i][1]) for i, p in enumerate(positions)
        ]
    # Exactly once: every sample of the epoch delivered, duplicates only the wrap-around padding.
    delivered = Counter(i for part in head + tail for i, _ in part)
    expected = Counter(i for i, _ in reference)
    assert not expected - delivered, "missing samples"
    extra = delivered - expected
    assert sum(extra.values()) < after and set(extra) <= {i for i, _ in reference[: after - 1]}


def test_state_is_a_few_integers_per_source_and_plain():
    m = Mixture({f"s{k}": Source("a", 7) for k in range(100)}, {f"s{k}": 1.0 for k in range(100)})
    sampler = ResumableSampler(m, seed=1)
    state = roundtrip(sampler.state_dict())
    entry = state["dataset_order"]["sources"]["s0"]
    assert set(entry) == {"weight", "base", "epoch_start", "source_epoch", "epoch_length", "length"}
    assert len(state["dataset_order"]["sources"]) == 100


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="weights must name exactly the sources"):
        Mixture({"a": Source("a", 3)}, {"b": 1.0})
    with pytest.raises(ValueError, match="finite number >= 0"):
        Mixture({"a": Source("a", 3)}, {"a": -1.0})
    with pytest.raises(ValueError, match="at least one weight must be > 0"):
        Mixture({"a": Source("a", 3)}, {"a": 0})
    with pytest.raises(ValueError, match="is empty"):
        Mixture({"a": Source("a", 0)}, {"a": 1})
    with pytest.raises(ValueError, match="samples_per_epoch must be an int >= 1"):
        Mixture({"a": Source("a", 3)}, {"a": 1}, samples_per_epoch=0)


def test_a_malformed_state_is_refused_naming_the_entry():
    sampler = ResumableSampler(mixture(), seed=3)
    state = roundtrip(sampler.state_dict())
    state["dataset_order"]["sources"]["a"]["base"] = -1
    with pytest.raises(InputStateError, match=r"sources\['a'\].*base=-1"):
        ResumableSampler(mixture(), seed=3).load_state_dict(state)
    del state["dataset_order"]
    with pytest.raises(InputStateError, match="dataset_order"):
        ResumableSampler(mixture(), seed=3).load_state_dict(state)


def test_a_sampler_rebuilt_for_another_world_from_its_dataset_order_keeps_the_mixture():
    """What the Lightning integration does when it reshards a loader's sampler."""
    m = mixture()
    single = ResumableSampler(m, seed=3)
    assert single.dataset_order is m and ResumableSampler(N, seed=3).dataset_order is None
    order = list(ResumableSampler(m, seed=3))
    ranks = [list(ResumableSampler(single.dataset_order, seed=3, num_replicas=2, rank=r)) for r in range(2)]
    assert ranks[0] == order[0::2] and ranks[1] == order[1::2] + order[:1]


def test_a_key_that_is_no_item_is_an_index_error():
    m = mixture()
    assert m.locate_key(3 * 6 + 1) == ("b", 6)
    with pytest.raises(IndexError, match="not that of an item"):
        m.locate_key(3 * 7 + 0)  # "a" has 7 items: index 7 is past its end
    with pytest.raises(IndexError):
        m[-1]

"""ShardedStream across topologies: num_workers 0/2/3 and changes among them, world 2->1 and 2->4 (the same
global order), 2->3 under a real gloo group (exactly once), equal batch counts per rank, refusals; and
Hypothesis for the lane, window and packing arithmetic."""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from itertools import cycle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_input_ckpt import InputStateError, ResumableDataLoader, ResumableSampler, ShardedStream
from torch_input_ckpt.stream.lanes import Interleave, assign_lanes, window_shuffle
from torch_input_ckpt.stream.shards import write_index

from tests.support.distributed import run_world
from tests.support.resume import check_exactly_once, epochs_of, resume_chain, roundtrip, to_py
from tests.support.stream_data import SIZES, all_ids, ids_collate, write_shards

BATCH = 2


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = write_shards(tmp_path_factory.mktemp("jsonl"), "jsonl")
    write_index(path, "tokens")
    return path


def stream(root):
    return ShardedStream(root, lanes=4, seed=1, window=3)


def loader(root, workers=0, world=None, rank=0, batch=BATCH):
    data = stream(root)
    sampler = None if world is None else ResumableSampler(data, num_replicas=world, rank=rank)
    return ResumableDataLoader(data, batch_size=batch, sampler=sampler, num_workers=workers, collate_fn=ids_collate)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")  # 2-core CI
def test_worker_counts_change_on_resume(root):
    expected = list(epochs_of(loader(root), 2))
    counts = cycle([2, 3, 0, 3])
    got, _ = resume_chain(lambda: loader(root, 2), [3, 9, 16, 25], 2, resume_with=lambda: loader(root, next(counts)))
    assert got == expected


def run_world_in_process(root, world, state, steps=None):
    """Ranks of one world in lockstep in this process; the global order (by global batch number, the
    union over ranks) and rank 0's state."""
    loaders = [loader(root, world=world, rank=r) for r in range(world)]
    for one in loaders:
        if state is not None:
            one.load_state_dict(state)
    counts = {len(one) for one in loaders}
    assert len(counts) == 1, f"ranks disagree on the batch count: {counts}"
    iterators = [iter(one) for one in loaders]
    order, taken = [], 0
    while steps is None or taken < steps:
        batches = [next(it, None) for it in iterators]
        if batches[0] is None:
            assert all(b is None for b in batches), "ranks ran out at different steps"
            break
        assert len({len(b) for b in batches}) == 1
        order.extend(b[i] for i in range(len(batches[0])) for b in batches)
        taken += 1
    return order, roundtrip(loaders[0].state_dict())


@pytest.mark.parametrize(("before", "after"), [(2, 1), (2, 4)])
def test_world_change_keeps_the_global_order(root, before, after):
    single, _ = run_world_in_process(root, 1, None)
    head, state = run_world_in_process(root, before, None, steps=5)
    tail, _ = run_world_in_process(root, after, state)
    total = len(all_ids())
    # The padding is DistributedSampler's, on what is left: the first positions of the epoch again.
    left = total - len(head)
    pad = -(-left // after) * after - left
    assert head + tail == single + single[:pad]
    assert sorted(single) == sorted(all_ids())


def test_equal_batch_counts_per_rank_and_exact_padding(root):
    total = len(all_ids())
    for world in (2, 3, 5):
        order, _ = run_world_in_process(root, world, None)
        assert len(order) == -(-total // world) * world
        counts = Counter(order)
        assert set(counts) == set(all_ids())
        assert sum(n - 1 for n in counts.values()) == len(order) - total < world * BATCH


def _ddp_consume(rank, world, root, state, steps):
    data = stream(root)
    one = ResumableDataLoader(data, batch_size=BATCH, collate_fn=ids_collate)  # default sampler: the gloo group
    if state is not None:
        one.load_state_dict(state)
    ids = []
    for step, batch in enumerate(one):
        ids.extend(batch)
        if steps is not None and step + 1 == steps:
            break
    return ids, len(one), json.loads(json.dumps(one.state_dict()))


def test_world_2_to_3_under_gloo_exactly_once(root):
    first = run_world(_ddp_consume, 2, str(root), None, 4, timeout=60)
    state = first[0][2]
    second = run_world(_ddp_consume, 3, str(root), state, None, timeout=60)
    seen = Counter(i for ids, _, _ in first + second for i in ids)
    total = len(all_ids())
    left = total - 2 * 4 * BATCH
    pad = -(-left // 3) * 3 - left
    assert set(seen) == set(all_ids()), "a sample was missed"
    assert sum(n - 1 for n in seen.values()) == pad, "only the padding repeats"
    assert len({len(ids) for ids, _, _ in second}) == 1, "equal batch counts per rank"


def test_changed_or_missing_shard_is_refused_by_name(tmp_path):
    root = write_shards(tmp_path / "d", "jsonl", (3, 2, 4))
    write_index(root)
    ShardedStream(root)
    victim = root / "shard-001.jsonl"
    victim.write_text(victim.read_text() + json.dumps({"id": "x", "tokens": [1]}) + "\n")
    with pytest.raises(InputStateError, match="shard-001.jsonl: shard changed"):
        ShardedStream(root)
    os.remove(victim)
    with pytest.raises(InputStateError, match="shard-001.jsonl: shard listed in .* is missing"):
        ShardedStream(root)
    with pytest.raises(ValueError, match="sample count is unknown"):
        ShardedStream([tmp_path / "other.jsonl"])


def test_state_of_another_stream_is_refused(root):
    saved = loader(root)
    next(iter(saved))
    state = roundtrip(saved.state_dict())
    other = ResumableDataLoader(ShardedStream(root, lanes=3, seed=1, window=3), batch_size=BATCH)
    with pytest.raises(InputStateError, match="lanes=4, but this pipeline has ShardedStream lanes=3"):
        other.load_state_dict(state)


def test_bad_arguments_name_the_value(root):
    for kwargs, match in [({"lanes": 0}, "lanes=0"), ({"window": -1}, "window=-1"), ({"pack_to": 0}, "pack_to=0")]:
        with pytest.raises(ValueError, match=match):
            ShardedStream(root, **kwargs)
    no_tokens = write_shards(root.parent / "notok", "jsonl", (2,))
    write_index(no_tokens)
    with pytest.raises(ValueError, match="pack_to needs its token count"):
        ShardedStream(no_tokens, pack_to=4)


# -- Hypothesis: the arithmetic ----------------------------------------------------------------------

lengths_strategy = st.lists(st.integers(0, 40), min_size=1, max_size=9).filter(lambda xs: sum(xs) > 0)


@settings(max_examples=60, deadline=None)
@given(lengths_strategy)
def test_interleave_is_a_round_robin_bijection(lengths):
    lane, q = Interleave(lengths)(torch.arange(sum(lengths)))
    pairs = list(zip(lane.tolist(), q.tolist(), strict=True))
    assert sorted(pairs) == sorted((j, i) for j, n in enumerate(lengths) for i in range(n))
    for j in range(len(lengths)):
        assert [i for k, i in pairs if k == j] == list(range(lengths[j])), "a lane's positions in order"
    rounds = q.tolist()
    assert rounds == sorted(rounds), "round q before round q + 1"
    if len(set(lengths)) == 1:
        assert lane.tolist() == [p % len(lengths) for p in range(sum(lengths))]


@settings(max_examples=60, deadline=None)
@given(lengths_strategy, st.integers(1, 17), st.integers(0, 2**32), st.integers(0, 5))
def test_window_shuffle_permutes_each_window(lengths, window, seed, epoch):
    lanes = torch.tensor([j for j, n in enumerate(lengths) for _ in range(n)], dtype=torch.int64)
    q = torch.tensor([i for n in lengths for i in range(n)], dtype=torch.int64)
    out = window_shuffle(q, lanes, torch.tensor(lengths), window, seed, epoch)
    for j, n in enumerate(lengths):
        got = out[lanes == j].tolist()
        for w in range(0, n, window):
            assert sorted(got[w : w + window]) == list(range(w, min(n, w + window)))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 50), min_size=1, max_size=30), st.integers(1, 8), st.integers(0, 99))
def test_lane_assignment_is_balanced(weights, lanes, seed):
    lane_of = assign_lanes(weights, lanes, seed, True)
    assert lane_of == assign_lanes(weights, lanes, seed, True)
    totals = [sum(w for w, j in zip(weights, lane_of, strict=True) if j == k) for k in range(lanes)]
    assert max(totals) - min(totals) <= max(weights), "largest-first to the lightest lane"


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.lists(st.integers(1, 9), min_size=0, max_size=6), min_size=1, max_size=6),
    st.integers(1, 7),
    st.integers(1, 3),
    st.integers(0, 4),
)
def test_packing_delivers_every_token_once(lengths, pack_to, lanes, window):
    from torch_input_ckpt import Shard

    if not any(lengths):
        lengths = [[1]]  # a stream needs one document
    docs = [
        [list(range(100 * s + 10 * k, 100 * s + 10 * k + n)) for k, n in enumerate(d)] for s, d in enumerate(lengths)
    ]

    def open_shard(source, start):
        return iter(docs[source][start:])

    shards = [Shard(s, len(d), sum(d)) for s, d in enumerate(lengths)]
    data = ShardedStream(shards, open_shard, lanes=lanes, window=window, pack_to=pack_to, seed=5)
    keys = data.epoch_order(0, 1, True)(torch.arange(len(data))).tolist()
    assert sorted(keys) == [len(data) + i for i in range(len(data))], "epoch 1's keys: each sequence once"
    seen = Counter()
    for key in keys:
        sample = to_py(data[key])
        assert len(sample["input_ids"]) == pack_to
        for t, d, p in zip(sample["input_ids"], sample["document_ids"], sample["position_ids"], strict=True):
            if d >= 0:
                seen[t] += 1
                assert t % 10 == p, "position_ids count from the document's first token"
    assert seen == Counter(t for shard in docs for doc in shard for t in doc)
    assert len(data) == sum(-(-t // pack_to) for t in data.lane_units)


# -- per-sample draws, user openers, shuffle off, the index command, a moved directory --------------------


def draw(sample):
    return [sample["id"], int(torch.randint(0, 10**9, ())), random.randrange(10**9)]


def augmented(root, workers):
    data = ShardedStream(root, lanes=4, seed=1, window=3, transform=draw)
    return ResumableDataLoader(data, batch_size=BATCH, num_workers=workers, collate_fn=list, seed=9)


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")  # 2-core CI
def test_transform_draws_follow_the_sample_across_resumes_and_workers(root):
    expected = list(epochs_of(augmented(root, 0), 2))
    counts = cycle([3, 0])
    got, _ = resume_chain(lambda: augmented(root, 2), [5, 30], 2, resume_with=lambda: augmented(root, next(counts)))
    assert got == expected
    assert len({tuple(x[1:]) for _, batch in expected for x in batch}) == 2 * len(all_ids()), "draws differ"


def test_user_opener_resumes_and_is_read_forward(tmp_path):
    from torch_input_ckpt import Shard

    opened = []

    def open_shard(source, start):
        opened.append((source, start))
        return iter([f"{source}-{k}" for k in range(start, SIZES[source])])

    def make():
        shards = [Shard(s, n) for s, n in enumerate(SIZES)]
        return ResumableDataLoader(
            ShardedStream(shards, open_shard, lanes=3, window=2), batch_size=BATCH, collate_fn=list
        )

    expected = list(epochs_of(make(), 2))
    # Each non-empty shard opened at most once an epoch, at its start: a window that goes back is served
    # from the kept samples (a shard still open from the last epoch may not need opening at all).
    nonempty = {s for s, n in enumerate(SIZES) if n}
    assert {source for source, _ in opened} == nonempty and len(opened) <= 2 * len(nonempty)
    assert {start for _, start in opened} == {0}
    assert check_resume_ids(make, expected)
    check_exactly_once(expected, lambda ids: [all_ids().index(i) for i in ids], len(all_ids()))


def check_resume_ids(make, expected):
    got, _ = resume_chain(make, [1, 7, 25], 2)
    return got == expected


def test_shuffle_off_reads_lanes_in_shard_order(root):
    data = ShardedStream(root, lanes=1, shuffle=False, window=3)
    keys = data.epoch_order(0, 0, True)(torch.arange(len(data))).tolist()
    assert [ids_collate([data[k]])[0] for k in keys] == all_ids()


def test_index_command_and_a_moved_directory(tmp_path):
    from torch_input_ckpt.cli.main import main

    first = write_shards(tmp_path / "a", "tar", (2, 0, 3))
    assert main(["index", str(first), "--tokens", "tokens.json"]) == 0
    index = json.loads((first / "torch_input_ckpt_index.json").read_text())
    assert [e["count"] for e in index["shards"]] == [2, 0, 3]
    assert main(["index", str(tmp_path / "missing")]) == 2
    saved = ResumableDataLoader(ShardedStream(first, pack_to=4, tokens="tokens.json"), batch_size=1)
    next(iter(saved))
    state = roundtrip(saved.state_dict())
    moved = tmp_path / "b"
    os.rename(first, moved)
    resumed = ResumableDataLoader(ShardedStream(moved, pack_to=4, tokens="tokens.json"), batch_size=1)
    resumed.load_state_dict(state)  # the same shards elsewhere: accepted
    assert len(list(resumed)) == len(resumed) - 1


def test_packed_window_reads_each_shard_forward(tmp_path):
    from torch_input_ckpt import Shard

    opened = []
    docs = [[[s * 100 + k] * (1 + (s + k) % 4) for k in range(n)] for s, n in enumerate(SIZES)]

    def open_shard(source, start):
        for doc in docs[source][start:]:
            opened.append(source)
            yield doc

    shards = [Shard(s, len(d), sum(map(len, d))) for s, d in enumerate(docs)]
    data = ShardedStream(shards, open_shard, lanes=3, window=4, pack_to=3)
    stream = list(epochs_of(ResumableDataLoader(data, batch_size=2), 1))
    assert len(stream) == -(-len(data) // 2)
    # A window going back finds its documents by their remembered offsets and the reader's kept ones: each
    # document is read about once (a reopen starts at most `window` documents early), not once per sequence.
    assert len(opened) <= 2 * sum(SIZES), f"{len(opened)} documents read for {sum(SIZES)}"

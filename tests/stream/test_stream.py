"""ShardedStream resumes exactly on real shard files of each format: stops at the start, mid-window, at a
shard boundary, at a lane's end and at the epoch's end, over 2 epochs; window and packing on and off."""

from __future__ import annotations

import pytest
import torch

from torch_input_ckpt import ResumableDataLoader, ShardedStream
from torch_input_ckpt.stream.shards import write_index

from tests.support.resume import check_exactly_once, check_resume, epochs_of, resume_chain
from tests.support.stream_data import SIZES, all_ids, ids_collate, tokens_field, write_shards

FORMATS = ("jsonl", "jsonl.gz", "npy", "tar")
LANES = 3
BATCH = 2


@pytest.fixture(scope="module", params=FORMATS)
def shard_dir(request, tmp_path_factory):
    kind = request.param
    root = write_shards(tmp_path_factory.mktemp(kind.replace(".", "_")), kind)
    write_index(root, tokens_field(kind))
    return kind, root


def make_stream(shard_dir, window=0, pack_to=None, **kw):
    kind, root = shard_dir
    tokens = tokens_field(kind) if pack_to else None
    return ShardedStream(root, lanes=LANES, seed=3, window=window, pack_to=pack_to, tokens=tokens, **kw)


def packed_collate(samples):
    return [(s["document_ids"].tolist(), s["position_ids"].tolist(), s["input_ids"].tolist()) for s in samples]


def loader_factory(shard_dir, window=0, pack_to=None, workers=0, batch=BATCH):
    def make():
        stream = make_stream(shard_dir, window, pack_to)
        collate = packed_collate if pack_to else ids_collate
        return ResumableDataLoader(stream, batch_size=batch, collate_fn=collate, num_workers=workers, seed=7)

    return make


def special_stops(stream: ShardedStream, batch: int) -> dict[str, int]:
    """Batch counts at which a stop lands mid-window, at a shard boundary, a lane's end, the epoch's end."""
    order = stream.epoch_order(0, 0, True)
    lane, q = order.lanes(torch.arange(len(stream)))
    lengths = stream.lane_lengths
    shortest = min((n, j) for j, n in enumerate(lengths) if n)[1]
    lane_end = int(torch.nonzero((lane == shortest) & (q == lengths[shortest] - 1))[0]) + 1
    stops = {"lane_end": lane_end, "epoch_end": len(stream)}
    if stream.pack_to is None:
        flat = order.lane_base[lane] + q
        boundary = torch.isin(flat + 1, order.starts[1:]).nonzero()
        stops["shard_boundary"] = int(boundary[0]) + 1
    stops["mid_window"] = 3
    # In batches (rounded up: the stop is inside or right after that batch).
    return {name: -(-position // batch) for name, position in stops.items()}


@pytest.mark.parametrize("window", [0, 4])
@pytest.mark.parametrize("pack_to", [None, 4])
def test_resume_chain_equals_uninterrupted(shard_dir, window, pack_to):
    make = loader_factory(shard_dir, window, pack_to)
    expected = list(epochs_of(make(), 2))
    stream = make_stream(shard_dir, window, pack_to)
    stops = special_stops(stream, BATCH)
    per_epoch = -(-len(stream) // BATCH)
    chain = sorted({0, *stops.values(), per_epoch + 1, per_epoch + stops["lane_end"]})
    got, states = resume_chain(make, chain, 2)
    assert got == expected
    assert all(len(str(s)) < 2000 for s in states), "the state must stay small"
    if pack_to is None:
        check_exactly_once(got, lambda ids: [all_ids().index(i) for i in ids], len(all_ids()))
    else:
        check_tokens_exactly_once(got, shard_dir[0], shuffled=window > 1)


def check_tokens_exactly_once(stream, kind, shuffled):
    """Every token of every document once per epoch, padding aside; in order within its document
    (with a window shuffle of the packed sequences, in order within each sequence: the pieces of a
    document cut between two sequences may come in either order)."""
    from tests.support.stream_data import ROW, doc_length, tokens

    per_epoch: dict[int, dict[int, list[tuple[int, int]]]] = {}
    base = [sum(SIZES[:s]) for s in range(len(SIZES))]
    for epoch, batch in stream:
        docs = per_epoch.setdefault(epoch, {})
        for document_ids, positions, ids in batch:
            for i in range(1, len(ids)):  # within a sequence, a document's tokens run in order
                if document_ids[i] == document_ids[i - 1] >= 0:
                    assert positions[i] == positions[i - 1] + 1
            for d, p, t in zip(document_ids, positions, ids, strict=True):
                if d >= 0:
                    docs.setdefault(d, []).append((p, t))
    for epoch, docs in per_epoch.items():
        assert sorted(docs) == list(range(sum(SIZES))), f"epoch {epoch}: documents missing or unknown"
        for d, pieces in docs.items():
            shard = max(s for s in range(len(SIZES)) if base[s] <= d and SIZES[s])
            k = d - base[shard]
            length = ROW if kind == "npy" else doc_length(shard, k)
            pieces = sorted(pieces) if shuffled else pieces
            assert pieces == list(enumerate(tokens(shard, k, length))), (
                f"epoch {epoch}: document {d} not once, in order"
            )


@pytest.mark.parametrize("stop", [0, 1, 5])
def test_drift_and_fresh_object_resume(shard_dir, stop):
    check_resume(loader_factory(shard_dir, window=4, pack_to=None), stop, 2)


def test_order_is_a_permutation_per_epoch_and_changes_with_the_epoch(shard_dir):
    stream = make_stream(shard_dir, window=4)
    orders = [stream.epoch_order(0, e, True)(torch.arange(len(stream))).tolist() for e in range(2)]
    for order in orders:
        assert sorted(order) == list(range(len(stream)))
    assert orders[0] != orders[1]
    assert [ids_collate([stream[k]])[0] for k in sorted(orders[0])] == all_ids()

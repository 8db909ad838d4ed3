"""A stream's and a mixture's keys, named for people: ``(shard file, sample number)``, the documents and token
ranges of a packed sequence, and the positions that deliver a given sample (found by a bounded scan).

Guarantee: computed from the order a checkpoint records (a ``ShardedStream`` rebuilt from its shard table,
a mixture's plan): no shard is read. A packed sequence's pieces are token ranges of its shards' concatenated
documents; a piece is named by its document when the shard's documents are of one length (``.npy`` rows:
the document and its token range follow by division), else by its token range in the shard (the index
counts tokens per shard, not per document). Limits: the reverse question (which positions deliver a
sample) is a scan over the epoch's positions, at most ``MAX_SCANNED_POSITIONS`` per question.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InputStateError
from ..mixture.plan import EpochOrder, Plan
from ..state.schema import Key
from ..stream.dataset import ShardedStream, StreamOrder
from ..stream.table import ShardTable

__all__ = ["MAX_SCANNED_POSITIONS", "RecordedStream", "matches", "stream_key", "stream_keys", "target_of"]

# The reverse question scans positions, vectorised in chunks; past this many per question, ask in parts.
MAX_SCANNED_POSITIONS = 50_000_000


class RecordedStream:
    """A stream's saved order state, rebuilt into a ``ShardedStream`` (from its shard table: the index may be
    read, never a shard) only when keys are asked for: a skip or ``inspect`` needs positions alone.

    Args:
        state: The stream's ``order_state()`` as saved.
        where: Where it came from, for messages.
    """

    def __init__(self, state: Any, where: str) -> None:
        self.state, self.where = state, where
        self._stream: ShardedStream | None = None

    def get(self) -> ShardedStream:
        """The rebuilt stream.

        Raises:
            InputStateError: for a state without a usable shard table (saved before tables were recorded, an
                index missing or changed since), naming why.
        """
        if self._stream is None:
            table = ShardTable.from_state(self.state.get(Key.STREAM_TABLE), self.where)
            self._stream = ShardedStream.from_table(self.state, table, self.where)
        return self._stream


def stream_keys(stream: ShardedStream, epoch: int, wrapped: torch.Tensor) -> list[Any]:
    """The keys at (wrapped) positions of ``epoch``: ``(file, sample number)``, or a packed sequence's pieces."""
    keys = StreamOrder(stream, epoch)(wrapped).tolist()
    if stream.pack_to is None:
        out = []
        for key in keys:
            shard, k = stream.locate(key)
            out.append((stream.shards[shard].name, k))
        return out
    return [packed_sequence(stream, key) for key in keys]


def stream_key(name: str, stream: ShardedStream, key: int) -> Any:
    """A mixture's key from a stream source: ``(source, shard file, sample number)``, or a packed sequence's
    pieces with ``"source"``."""
    if stream.pack_to is None:
        shard, k = stream.locate(key)
        return (name, stream.shards[shard].name, k)
    return {"source": name, **packed_sequence(stream, key)}


def packed_sequence(stream: ShardedStream, key: int) -> dict[str, Any]:
    """``{"sequence": number in the epoch, "pieces": [...]}``: each piece a document's token range
    (``{"file", "document", "tokens": [first, end)}``, offsets in the document) or, where documents are of
    varying length, the shard's (``{"file", "document": None, "shard_tokens": [first, end)}``)."""
    pieces: list[dict[str, Any]] = []
    for shard, lo, hi in stream.token_ranges(key):
        name, row = stream.shards[shard].name, _row_length(stream, shard)
        if row is None:
            pieces.append({"file": name, "document": None, "shard_tokens": [lo, hi]})
            continue
        for k in range(lo // row, -(-hi // row)):
            pieces.append(
                {"file": name, "document": k, "tokens": [max(lo, k * row) - k * row, min(hi, (k + 1) * row) - k * row]}
            )
    return {"sequence": key % stream.length, "pieces": pieces}


def _row_length(stream: ShardedStream, shard: int) -> int | None:
    """The one length of a shard's documents, when the format has one (``.npy`` rows), else None."""
    info = stream.shards[shard]
    if not info.name.endswith(".npy") or not info.count or info.tokens is None or info.tokens % info.count:
        return None
    return info.tokens // info.count


def target_of(order: Plan | ShardedStream, key: tuple[str, int]) -> tuple[int, int]:
    """A ``(name, number)`` key as numbers: ``(source number, index)`` of a mixture; ``(sample id, 0)`` of a
    stream (its shard file and sample number), or ``(first, end)`` lane tokens of a packed document.

    Raises:
        ValueError: for a source or file that is not the order's, or a number past its length.
    """
    name, number = key
    if isinstance(order, Plan):
        if name not in order.names:
            raise ValueError(f"source {name!r} is not one of the mixture's sources {list(order.names)}")
        if name in order.orders:
            raise InputStateError(
                f"source {name!r} is a stream with its own order: finding one of its samples is not supported "
                "inside a mixture; ask which samples the steps held (--step, --steps) instead"
            )
        return order.names.index(name), number
    names = [s.name for s in order.shards]
    if name not in names:
        shown = names[:20] + (["..."] if len(names) > 20 else [])
        raise ValueError(f"file {name!r} is not one of the stream's shards {shown}")
    shard = names.index(name)
    if not 0 <= number < order.shards[shard].count:
        raise ValueError(f"{name} holds {order.shards[shard].count} samples: there is no sample {number}")
    if order.pack_to is None:
        return order.sample_base[shard] + number, 0
    row = _row_length(order, shard)
    if row is None:
        raise InputStateError(
            f"{name}: which packed sequences hold one of its documents needs each document's token count, which "
            "the index does not record (it counts tokens per shard); ask which documents a step held instead"
        )
    return shard, number * row


def matches(
    order: Plan | ShardedStream, seed: int, epoch: int, shuffle: bool, wrapped: torch.Tensor, target: tuple[int, int]
) -> torch.Tensor:
    """Which of the (wrapped) positions of ``epoch`` deliver ``target`` (from :func:`target_of`)."""
    if isinstance(order, Plan):
        sources, _, indices = EpochOrder(order, seed, epoch, shuffle).origins(wrapped)
        return (sources == target[0]) & (indices == target[1])
    if order.pack_to is None:
        return StreamOrder(order, epoch)(wrapped) == target[0]
    return _packed_matches(order, epoch, wrapped, target)


def _packed_matches(stream: ShardedStream, epoch: int, wrapped: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    """The packed sequences of ``epoch`` whose tokens overlap a document's (``target``: shard, first token)."""
    shard, first = target
    row = _row_length(stream, shard)
    assert row is not None and stream.pack_to is not None
    order, starts = stream.layout(epoch)
    lane = stream.lane_of[shard]
    place = int((order == shard).nonzero()[0, 0])
    # The document's tokens as offsets in its lane (lane-major layout: the lanes before it come first).
    lane_start = sum(stream.lane_units[:lane])
    lo = int(starts[place]) + first - lane_start
    hi = lo + row
    lanes, q = StreamOrder(stream, epoch).lanes(wrapped)
    begin = q * stream.pack_to
    return (lanes == lane) & (begin < hi) & (begin + stream.pack_to > lo)

"""Token packing: packed sequence ``n`` of a lane is tokens ``[n*L, (n+1)*L)`` of the lane's documents, concatenated.

Guarantee: a lane with ``T`` tokens has ``ceil(T / L)`` packed sequences, all of exactly ``L`` tokens
(the last one padded with ``pad_id``, its padding marked by ``document_ids == -1``); every token of every
document of the lane is in exactly one of them, in order within its document. The carry-over of a
document cut at a sequence's end is computed (the next sequence starts at token ``(n+1)*L``), never
buffered, so it survives any resume, worker count and world size by construction. Locating a sequence
needs only each shard's token count (a prefix sum per epoch: O(shards)); inside a shard, ``.npy`` rows
are found by arithmetic and other formats by reading the shard's documents from its start (bounded by
one shard, continued sequentially from the last read).

The token counts are checked as the documents are read: the document that reaches a shard's recorded
token count must be its last (any after it empty), and no document may run past it, so a count from
another tokenizer or a stale one raises an :class:`~torch_input_ckpt.InputStateError` naming the shard,
the document, the count recorded and the count found, instead of cutting sequences at the wrong tokens
(for ``.npy`` rows: the array's size against the recorded count, before any row is used).

Each packed sample is ``{"input_ids", "position_ids", "document_ids"}``, int64 tensors of length ``L``:
``position_ids`` restart at 0 at every document's first token (tokens of a document cut by the previous
sequence continue its count), and ``document_ids`` name each token's document by its sample id
(``shard offset + number in shard``), for attention masks that do not cross documents.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import InputStateError
from .readers import ShardReaders, as_tokens, tokens_of

__all__ = ["PackedReader"]


class PackedReader:
    """Reads the documents that cover a token range of a shard (a per-process cache of positions).

    Args:
        readers: The process's open shards.
        tokens: How to get a document's tokens from a sample (a field name, a callable, or None).
        row_length: ``row_length(shard)`` -> the fixed document length of a shard whose documents all
            have one (``.npy`` rows), else None.
        shards: Each shard's recorded ``count`` (documents) and ``tokens``, and its ``name`` for messages
            (:class:`~torch_input_ckpt.Shard` values).
        limit: For how many shards the document offsets read are remembered.
    """

    def __init__(
        self,
        readers: ShardReaders,
        tokens: str | Callable[[Any], Any] | None,
        row_length: Callable[[int], int | None],
        shards: Sequence[Any],
        limit: int = 64,
    ) -> None:
        self._readers = readers
        self._tokens = tokens
        self._row_length = row_length
        self._shards = shards
        self._ended: set[int] = set()  # shards whose documents after the recorded end were checked empty
        self._limit = max(1, limit)
        # shard -> (document number, its tokens): the document a sequence's end cut, for the next sequence
        self._at: dict[int, tuple[int, torch.Tensor]] = {}
        # shard -> token offset of the first token of each of its documents read so far (of the `limit`
        # shards used last), so that a window shuffle going back finds its document without a re-read
        self._starts: OrderedDict[int, list[int]] = OrderedDict()

    def _document(self, shard: int, description: Any, k: int) -> torch.Tensor:
        tokens = tokens_of(self._readers.read(shard, description, k), self._tokens)
        if isinstance(tokens, (str, bytes)):
            raise self._not_ids(shard, k, f"text ({len(tokens)} characters)")
        return as_tokens(tokens, f"{self._shards[shard].name}: sample {k}")  # refuses floats, never truncates

    def _not_ids(self, shard: int, k: int, found: str) -> InputStateError:
        return InputStateError(
            f"{self._shards[shard].name}: document {k}: its tokens are {found}, not integer token ids. Give "
            "ShardedStream(tokens=) a field holding token ids or your tokenizer (a callable: sample -> token ids)."
        )

    def pieces(self, shard: int, description: Any, lo: int, hi: int) -> list[tuple[int, int, torch.Tensor]]:
        """The pieces of tokens ``[lo, hi)`` of a shard: ``(document number, offset in it, tokens)``."""
        row = self._row_length(shard)
        if row:
            return self._rows(shard, description, lo, hi, row)
        starts = self._known(shard)
        k = bisect.bisect_right(starts, lo) - 1
        start = starts[k]
        cut = self._at.get(shard)
        document = cut[1] if cut is not None and cut[0] == k else None
        pieces = []
        while start < hi:
            if document is None:
                if k >= self._shards[shard].count:  # the documents end before the recorded count
                    raise self._mismatch(shard, k, start)
                document = self._document(shard, description, k)
            end = start + len(document)
            self._check_count(shard, description, k, end)
            if len(starts) == k + 1:
                starts.append(end)
            if end > lo:
                offset = max(lo, start) - start
                pieces.append((k, offset, document[offset : min(hi, end) - start]))
            if end > hi:
                self._at[shard] = (k, document)  # the document goes on in the next sequence: keep it
                break
            k, start, document = k + 1, end, None
        return pieces

    def _check_count(self, shard: int, description: Any, k: int, end: int) -> None:
        """Document ``k`` of a shard ends at token ``end``: refuse counts that the documents contradict."""
        info = self._shards[shard]
        recorded, last = info.tokens, info.count - 1
        if end > recorded or (k == last and end != recorded):
            raise self._mismatch(shard, k, end)
        if end == recorded and k < last and shard not in self._ended:
            # The recorded count is reached before the last document: the rest must hold no token.
            for j in range(k + 1, info.count):
                extra = len(self._document(shard, description, j))
                if extra:
                    raise self._mismatch(shard, j, end + extra)
            self._ended.add(shard)

    def _mismatch(self, shard: int, k: int, end: int) -> InputStateError:
        info = self._shards[shard]
        if k >= info.count:
            found = f"the shard has only {info.count} documents, holding {end} tokens"
        elif k == info.count - 1 and end <= info.tokens:
            found = f"its last document, number {k}, ends at token {end}: the shard holds {end} tokens"
        else:
            found = f"its documents 0..{k} already hold {end} tokens (document {k} is past the count)"
        return InputStateError(
            f"{info.name}: {info.tokens} tokens recorded for its {info.count} documents, but {found}. The token "
            "counts were not made with this stream's tokens= (another tokenizer or field), or the shard changed: "
            "re-index it with the stream's tokenizer (`python -m torch_input_ckpt index DIR --tokenizer "
            "module:callable` or --tokens FIELD), between runs."
        )

    def _known(self, shard: int) -> list[int]:
        starts = self._starts.get(shard)
        if starts is None:
            starts = self._starts[shard] = [0]
            while len(self._starts) > self._limit:
                evicted, _ = self._starts.popitem(last=False)
                self._at.pop(evicted, None)
        self._starts.move_to_end(shard)
        return starts

    def _rows(self, shard: int, description: Any, lo: int, hi: int, row: int) -> list[tuple[int, int, torch.Tensor]]:
        # Documents of one length (.npy rows): the rows covering [lo, hi) are one slice of the memory map.
        first, last = lo // row, -(-hi // row)
        array = self._readers.array(shard, description)
        info = self._shards[shard]
        if array.size != info.tokens:
            rows = f"{len(array)} rows of {row}"
            raise InputStateError(
                f"{info.name}: {info.tokens} tokens recorded, but the array holds {array.size} ({rows}): the "
                f"shard changed since it was counted; re-index it (between runs)."
            )
        block = as_tokens(array[first:last], f"{info.name}: rows {first}..{last - 1}")  # a copy: writable
        pieces = []
        for k in range(first, last):
            a, b = max(lo, k * row), min(hi, (k + 1) * row)
            pieces.append((k, a - k * row, block[a - first * row : b - first * row]))
        return pieces


def assemble(pieces: list[tuple[int, int, Any]], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """One packed sample from its pieces ``(document id, offset in document, tokens)``, padded to ``length``."""
    input_ids = torch.full((length,), pad_id, dtype=torch.int64)
    position_ids = torch.zeros(length, dtype=torch.int64)
    document_ids = torch.full((length,), -1, dtype=torch.int64)
    at = 0
    for document, offset, tokens in pieces:
        n = len(tokens)
        input_ids[at : at + n] = tokens
        position_ids[at : at + n] = torch.arange(offset, offset + n, dtype=torch.int64)
        document_ids[at : at + n] = document
        at += n
    return {"input_ids": input_ids, "position_ids": position_ids, "document_ids": document_ids}

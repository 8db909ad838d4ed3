"""The shard table a stream's checkpoint records, so that which samples a step held is computed without the data.

Guarantee: a stream's order is a pure function of its configuration and each shard's sample (and token)
count, in order. The checkpoint records that table's sha256 and either the table itself (up to
``MAX_INLINE_SHARDS`` shards) or the index file it came from; :meth:`ShardTable.from_state` returns the
table only when its sha256 matches (an index re-written since the run is refused, naming the file), so an
answer computed from it is the order the run read. It reads the index, never a shard.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.messages import short
from ..errors import InputStateError
from ..state.schema import Key
from ..store.files import canonical_json
from .index import MAX_INDEX_SHARDS, MAX_UNITS, read_index
from .shards import Shard, relative_names

__all__ = ["MAX_INLINE_SHARDS", "ShardTable"]

# Up to this many shards the table is written into every checkpoint (about 60 bytes a shard); past it, the
# checkpoint names the index file and the table's sha256.
MAX_INLINE_SHARDS = 1024
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ShardTable:
    """The shards of a stream, in order: each one's name (relative to the data directory), sample count and
    token count (None: not counted).

    Attributes:
        names: Each shard's relative name, as the stream's fingerprint records it.
        counts: Each shard's samples (documents).
        tokens: Each shard's tokens, or None.
    """

    names: tuple[str, ...]
    counts: tuple[int, ...]
    tokens: tuple[int | None, ...]

    @classmethod
    def of(cls, shards: Sequence[Shard]) -> ShardTable:
        """The table of a stream's shards."""
        return cls(tuple(relative_names(shards)), tuple(s.count for s in shards), tuple(s.tokens for s in shards))

    def rows(self) -> list[list[Any]]:
        return [[n, c, t] for n, c, t in zip(self.names, self.counts, self.tokens, strict=True)]

    @property
    def sha256(self) -> str:
        """The sha256 of the rows' canonical JSON."""
        return hashlib.sha256(canonical_json({Key.TABLE_ROWS: self.rows()})).hexdigest()

    def to_state(self, index: str | None) -> dict[str, Any]:
        """What a checkpoint records: the sha256, the index file (or None), the rows when few enough."""
        return {
            Key.TABLE_SHA256: self.sha256,
            Key.TABLE_INDEX: index,
            Key.TABLE_ROWS: self.rows() if len(self.names) <= MAX_INLINE_SHARDS else None,
        }

    @classmethod
    def from_state(cls, state: Any, source: str) -> ShardTable:
        """The table a checkpoint recorded: its rows, or its index file's entries; checked against its sha256.

        Raises:
            InputStateError: for a state without a table (saved before tables were recorded), a malformed one,
                an index that is missing or whose entries no longer match the sha256 (re-indexed since).
        """
        where = f"{source}: {Key.STREAM_TABLE}"
        if not isinstance(state, Mapping):
            raise InputStateError(
                f"{source}: the stream's state records no shard table (saved by a version before shard tables "
                "were recorded): the order depends on each shard's sample count, so which samples a step held is "
                "not computable from this checkpoint alone"
            )
        digest, index, rows = state.get(Key.TABLE_SHA256), state.get(Key.TABLE_INDEX), state.get(Key.TABLE_ROWS)
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
            raise InputStateError(f"{where}: sha256={short(digest)} (expected 64 lowercase hex digits)")
        if rows is not None:
            table, origin = cls._from_rows(rows, where), "the checkpoint's rows"
        elif isinstance(index, str) and index:
            table, origin = cls._from_index(index, where), index
        else:
            raise InputStateError(
                f"{where}: neither rows nor an index file recorded (index={short(index)}): a stream of more than "
                f"{MAX_INLINE_SHARDS} shards given as a list, not as a directory with its index, so its shard table "
                "is not in the checkpoint; which samples a step held is not computable from it"
            )
        if table.sha256 != digest:
            raise InputStateError(
                f"{where}: the shard table from {origin} does not match the sha256 the run recorded ({digest}): "
                "the shards were re-indexed or changed since; restore the index the run read"
            )
        return table

    @classmethod
    def _from_rows(cls, rows: Any, where: str) -> ShardTable:
        if not isinstance(rows, list) or not 0 < len(rows) <= MAX_INDEX_SHARDS:
            raise InputStateError(f"{where}: rows={short(rows)} (expected a list of 1 to {MAX_INDEX_SHARDS} rows)")
        for i, row in enumerate(rows):
            good = isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)
            if not good or not _count(row[1]) or not (row[2] is None or _count(row[2])):
                raise InputStateError(
                    f"{where}: rows[{i}]={short(row)} (expected [name, samples, tokens or null], "
                    f"counts from 0 to {MAX_UNITS})"
                )
        return cls(tuple(r[0] for r in rows), tuple(r[1] for r in rows), tuple(r[2] for r in rows))

    @classmethod
    def _from_index(cls, index: str, where: str) -> ShardTable:
        try:
            entries = read_index(Path(os.path.dirname(index))).entries
        except FileNotFoundError:
            raise InputStateError(
                f"{where}: the run's shard index {index} is missing (the table has more than {MAX_INLINE_SHARDS} "
                "shards, so the checkpoint names the index instead of holding it); restore it there"
            ) from None
        return cls(tuple(e.name for e in entries), tuple(e.count for e in entries), tuple(e.tokens for e in entries))


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value <= MAX_UNITS

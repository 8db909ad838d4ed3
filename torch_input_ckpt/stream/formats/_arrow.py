"""What the two Arrow-based formats share: pyarrow imported on first use, rows as dicts, random access by group.

Guarantee: a shard of Parquet or Arrow IPC is a sequence of *groups* (Parquet row groups, IPC record
batches) whose row counts come from metadata; sample ``k`` is row ``k`` of the groups concatenated, as a
dict ``{column: Python value}`` (``pyarrow``'s ``to_pylist``: the value a JSON lines shard of the same
records gives). A read decodes only the groups it needs, each checked to hold the rows its metadata
claims (a group that decodes to another count would shift every later sample: refused, naming the file
and the group) and against the group bound before it is decoded. Every error pyarrow raises on a damaged
file is an :class:`~torch_input_ckpt.InputStateError` naming the file; a missing pyarrow is a
``ModuleNotFoundError`` naming the file and the extra to install.
"""

from __future__ import annotations

import abc
import bisect
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ...errors import InputStateError
from ._bounds import MAX_MEMBER_BYTES, MEMBER_BYTES_ENV, bound

__all__ = [
    "ColumnarFormat",
    "GroupedFile",
    "ROW_CHUNK",
    "GroupedShard",
    "arrow_errors",
    "check_columns_present",
    "check_group_bytes",
    "damaged",
    "pyarrow",
    "reraise_missing",
    "rows_of",
]

# Rows converted to Python objects at once: bounds the Python memory of a sequential read of a large group.
ROW_CHUNK = 1024
# Rows converted to Python at once by random access, and how many such chunks each open shard keeps: a window
# shuffle of up to CHUNK_ROWS * (KEEP_CHUNKS - 1) rows of a shard converts each row once (to_pylist has a fixed
# cost per call: a batch's few rows of a shard, converted alone, cost 5x more). At most 2,048 rows per open shard
# are kept as Python objects, as JSON lines keeps the last `window` samples of each.
CHUNK_ROWS = 256
KEEP_CHUNKS = 8
# Decoded groups kept per open shard: a window shuffle within a lane spans at most two groups of a shard
# when the window is no larger than a group; a larger window re-decodes groups (docs/guides/streams.md).
KEEP_GROUPS = 2
# At most this many groups per shard (bounds the per-shard offsets kept, whatever the metadata claims).
MAX_GROUPS = 1 << 20


def pyarrow(path: str, what: str) -> Any:
    """The ``pyarrow`` module, imported on first use.

    Raises:
        ModuleNotFoundError: naming ``path``, the format and the extra that installs it.
    """
    try:
        import pyarrow as pa
    except ImportError:
        raise ModuleNotFoundError(
            f"{path}: reading {what} needs pyarrow, which is not installed: pip install 'torch-input-ckpt[data]' "
            "(or pip install pyarrow)",
            name="pyarrow",
        ) from None
    return pa


def arrow_errors(pa: Any) -> tuple[type[BaseException], ...]:
    """What pyarrow raises on a damaged file (ArrowInvalid is a ValueError, ArrowIOError an OSError; a string
    that is not UTF-8 is a UnicodeDecodeError, a ValueError)."""
    return (pa.ArrowException, ValueError, OSError, EOFError, IndexError, TypeError, OverflowError)


def damaged(path: str, what: str, error: BaseException, where: str = "") -> InputStateError:
    """The error for a damaged file: the file, where in it, pyarrow's words, what was expected."""
    at = f" ({where})" if where else ""
    text = " ".join(str(error).split())[:500]
    return InputStateError(f"{path}: not a readable {what}{at}: {type(error).__name__}: {text}; expected {what}")


def reraise_missing(error: BaseException) -> None:
    """A missing or unreadable file is not a damaged one: let those through as they are."""
    if isinstance(error, (FileNotFoundError, PermissionError, IsADirectoryError)):
        raise error


def check_columns_present(path: str, names: Sequence[str], columns: Sequence[str] | None) -> None:
    """Refuse selected columns the file does not have, naming them and the file's columns."""
    if columns is None:
        return
    missing = [c for c in columns if c not in names]
    if missing:
        raise InputStateError(
            f"{path}: no column {', '.join(map(repr, missing))}; the file has columns {list(names)[:50]}. "
            "Give ShardedStream(columns=) columns every shard holds."
        )


def check_group_bytes(path: str, group: int, size: int, unit: str) -> None:
    """Refuse a group whose metadata claims more decoded bytes than the member bound, before decoding it."""
    limit = bound(MEMBER_BYTES_ENV, MAX_MEMBER_BYTES)
    if size > limit:
        raise InputStateError(
            f"{path}: {unit} {group} holds {size} bytes decoded, more than the bound of {limit} bytes; set "
            f"{MEMBER_BYTES_ENV} to raise the bound"
        )


def rows_of(table: Any, start: int = 0) -> Iterator[dict[str, Any]]:
    """Rows ``start, ...`` of an Arrow table or record batch as dicts, converted :data:`ROW_CHUNK` at a time."""
    for first in range(start, table.num_rows, ROW_CHUNK):
        yield from table.slice(first, ROW_CHUNK).to_pylist()


class GroupedShard:
    """A shard's rows by number, decoding whole groups (the :class:`~.protocol.RandomAccess` of Parquet and Arrow).

    Args:
        path: The file (for messages).
        lengths: Each group's row count, from metadata.
        read_group: ``read_group(g)`` -> group ``g`` as an Arrow table or record batch, its rows checked.
    """

    __slots__ = ("_chunks", "_groups", "_read_group", "bases", "lengths", "path")

    def __init__(self, path: str, lengths: Sequence[int], read_group: Callable[[int], Any]) -> None:
        self.path = path
        self.lengths = list(lengths)
        self.bases = [0]
        for n in self.lengths:
            self.bases.append(self.bases[-1] + n)
        self._read_group = read_group
        self._groups: OrderedDict[int, Any] = OrderedDict()
        self._chunks: OrderedDict[tuple[int, int], list[dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return self.bases[-1]

    def locate(self, k: int) -> tuple[int, int]:
        """``(group, row in group)`` of row ``k``."""
        if not 0 <= k < len(self):
            raise IndexError(f"{self.path}: sample {k} of a shard of {len(self)} samples")
        group = bisect.bisect_right(self.bases, k) - 1
        return group, k - self.bases[group]

    def group(self, g: int) -> Any:
        """Group ``g``, decoded (the last :data:`KEEP_GROUPS` used are kept)."""
        table = self._groups.get(g)
        if table is None:
            table = self._read_group(g)
            if table.num_rows != self.lengths[g]:
                raise InputStateError(
                    f"{self.path}: group {g} decodes to {table.num_rows} rows, its metadata says {self.lengths[g]}: "
                    "the file is damaged (every later sample would shift)"
                )
            self._groups[g] = table
            while len(self._groups) > KEEP_GROUPS:
                self._groups.popitem(last=False)
        else:
            self._groups.move_to_end(g)
        return table

    def sample(self, k: int) -> Any:
        """Row ``k`` as a dict."""
        return self.samples([k])[0]

    def samples(self, ks: Sequence[int]) -> list[Any]:
        """Rows ``ks`` as dicts (each a new dict: a transform may change it), from the converted chunks kept."""
        out = []
        first = end = 0
        rows: list[dict[str, Any]] = []
        for k in ks:
            if not first <= k < end:
                rows, first = self._chunk_of(k)
                end = first + len(rows)
            out.append(dict(rows[k - first]))
        return out

    def _chunk_of(self, k: int) -> tuple[list[dict[str, Any]], int]:
        """The converted rows of the chunk holding row ``k``, and the number of its first row."""
        group, row = self.locate(k)
        key = (group, row // CHUNK_ROWS)
        rows = self._chunks.get(key)
        if rows is None:
            rows = self.group(group).slice(key[1] * CHUNK_ROWS, CHUNK_ROWS).to_pylist()
            self._chunks[key] = rows
            while len(self._chunks) > KEEP_CHUNKS:
                self._chunks.popitem(last=False)
        else:
            self._chunks.move_to_end(key)
        return rows, self.bases[group] + key[1] * CHUNK_ROWS

    def token_rows(self) -> None:
        """None: rows are dicts (packing reads a token column row by row)."""
        return None


class GroupedFile(Protocol):
    """A Parquet or Arrow file opened for reading: its groups' row counts, a group decoded (and checked), and a
    column's token count."""

    pa: Any
    lengths: list[int]

    def read_group(self, group: int) -> Any: ...

    def list_lengths(self, field: str) -> int | None: ...


class ColumnarFormat(abc.ABC):
    """What the Parquet and Arrow formats share: a file read a group (row group, record batch) at a time.

    A subclass names its file class (``opened``), what a file of it is (``what``) and a group (``unit``)."""

    counted_from_header = True
    columnar = True  # open and random_access take columns=
    what = ""
    unit = ""

    @abc.abstractmethod
    def opened(self, path: str, columns: Sequence[str] | None) -> GroupedFile:
        """The file at ``path``, with only ``columns`` read (None: all)."""

    def count(self, path: str) -> int:
        """The sum of the groups' row counts, from the file's metadata (no rows decoded)."""
        return sum(self.opened(path, None).lengths)

    def open(self, path: str, start: int, columns: Sequence[str] | None = None) -> Iterator[Any]:
        """Rows ``start, start + 1, ...``: the groups before ``start``'s are not decoded."""
        file = self.opened(path, columns)
        shard = GroupedShard(path, file.lengths, file.read_group)
        if start >= len(shard):
            return
        group, row = shard.locate(start)
        for g in range(group, len(file.lengths)):
            try:
                yield from rows_of(shard.group(g), row)
            except InputStateError:
                raise
            except arrow_errors(file.pa) as error:  # to_pylist of validated data: not expected, named if met
                raise damaged(path, self.what, error, f"{self.unit} {g}") from None
            row = 0

    def random_access(self, path: str, columns: Sequence[str] | None = None) -> GroupedShard:
        """Rows by number, decoded a group at a time."""
        file = self.opened(path, columns)
        return GroupedShard(path, file.lengths, file.read_group)

    def tokens(self, path: str) -> None:
        """None: a row is a dict; its tokens are a column (``index --tokens FIELD``)."""
        return None

    def field_tokens(self, path: str, field: str) -> int | None:
        """The token count of column ``field`` when it holds lists of integers without nulls (read alone), else
        None (then every row is read and counted as the stream takes its tokens)."""
        return self.opened(path, [field]).list_lengths(field)

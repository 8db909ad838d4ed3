"""Arrow IPC shards (``.arrow``), as Hugging Face ``datasets`` writes them: sample ``k`` is row ``k``, a dict.

Guarantee: the file is memory-mapped (no read of data it does not use); both IPC layouts are read, the
*stream* format that ``datasets`` writes (``save_to_disk``'s ``data-00000-of-00001.arrow`` and its cache
files) and the *file* format (with its footer). The count is the sum of the record batches' lengths, read
from their message headers (the batch bodies stay in the map), so an Arrow path can be given to a stream
without an index; random access finds a batch by arithmetic. Only the selected columns are converted
(``ShardedStream(columns=)``). Each batch is validated in full (offsets, UTF-8) before a row of it is
converted: a damaged map never reaches the conversion. Refused, naming the file: a stream without its
end-of-stream marker (a file cut at a batch boundary would otherwise read short), a damaged message, more
than :data:`~torch_input_ckpt.stream.formats._arrow.MAX_GROUPS` batches, a selected column the file
lacks, a batch larger than the member bound. pyarrow is imported on first use (the ``data`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import InputStateError
from ._arrow import (
    MAX_GROUPS,
    ColumnarFormat,
    arrow_errors,
    check_columns_present,
    check_group_bytes,
    damaged,
    pyarrow,
    reraise_missing,
)
from ._bounds import check_regular

__all__ = ["ARROW", "ArrowIpc"]

_WHAT = "Arrow IPC file (stream or file format)"
_FILE_MAGIC = b"ARROW1"
# The end-of-stream marker ends in a zero metadata length (after a continuation token 0xFFFFFFFF since Arrow 0.15).
_END_OF_STREAM = bytes(4)


class ArrowIpc(ColumnarFormat):
    """The Arrow IPC format: see the module's docstring."""

    name = "Arrow IPC"
    suffixes = (".arrow",)
    what = _WHAT
    unit = "record batch"

    def opened(self, path: str, columns: Sequence[str] | None) -> _ArrowFile:
        return _ArrowFile(path, columns)


ARROW = ArrowIpc()


class _ArrowFile:
    """A memory-mapped IPC file: its record batches (views into the map), their lengths, selected columns."""

    def __init__(self, path: str, columns: Sequence[str] | None) -> None:
        self.path = path
        self.pa = pyarrow(path, _WHAT)
        self.columns = None if columns is None else list(columns)
        check_regular(path)
        try:
            source = self.pa.memory_map(path, "r")
            self.batches = _file_batches(self.pa, source) if source.read(6) == _FILE_MAGIC else None
            if self.batches is None:
                source.seek(0)
                self.batches = _stream_batches(self.pa, source, path)
            names = self.batches.schema.names
        except InputStateError:
            raise
        except arrow_errors(self.pa) as error:
            reraise_missing(error)
            raise damaged(path, _WHAT, error) from None
        self.lengths = [batch.num_rows for batch in self.batches.batches]
        check_columns_present(path, names, self.columns)

    def read_group(self, group: int) -> Any:
        """Record batch ``group`` (the selected columns), validated."""
        batch = self.batches.batches[group]
        try:
            if self.columns is not None:
                batch = batch.select(self.columns)
            check_group_bytes(self.path, group, batch.nbytes, "record batch")
            batch.validate(full=True)  # offsets and UTF-8 of the map: a damaged file must not reach to_pylist
        except InputStateError:
            raise
        except arrow_errors(self.pa) as error:
            raise damaged(self.path, _WHAT, error, f"record batch {group}") from None
        return batch

    def list_lengths(self, field: str) -> int | None:
        pa = self.pa
        kinds = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
        kind = self.batches.schema.field(field).type
        if not any(is_kind(kind) for is_kind in kinds) or not pa.types.is_integer(kind.value_type):
            return None
        total = 0
        for group in range(len(self.lengths)):
            column = self.read_group(group).column(0)
            values = column.flatten()
            if column.null_count or values.null_count:
                return None  # a null is refused row by row, naming its sample
            total += len(values)
        return total


class _Batches:
    __slots__ = ("batches", "schema")

    def __init__(self, schema: Any, batches: list[Any]) -> None:
        self.schema = schema
        self.batches = batches


def _file_batches(pa: Any, source: Any) -> _Batches:
    source.seek(0)
    reader = pa.ipc.open_file(source)
    if reader.num_record_batches > MAX_GROUPS:
        raise ValueError(f"{reader.num_record_batches} record batches, more than the bound of {MAX_GROUPS}")
    return _Batches(reader.schema, [reader.get_batch(i) for i in range(reader.num_record_batches)])


def _stream_batches(pa: Any, source: Any, path: str) -> _Batches:
    reader = pa.ipc.open_stream(source)
    batches = []
    while True:
        before = source.tell()
        try:
            batches.append(reader.read_next_batch())
        except StopIteration:
            break
        if len(batches) > MAX_GROUPS:
            raise ValueError(f"more than the bound of {MAX_GROUPS} record batches")
    # pyarrow ends a stream at its end-of-stream marker and, silently, at the end of the file: a file cut
    # at a batch boundary would read short. The marker is what ended it only if it was read just now.
    end = source.tell()
    source.seek(before)
    if end - before not in (4, 8) or not source.read(end - before).endswith(_END_OF_STREAM):
        raise InputStateError(
            f"{path}: no end-of-stream marker at byte {before} (the file is cut or still being written); "
            f"expected a complete {_WHAT}"
        )
    return _Batches(reader.schema, batches)

"""Parquet shards (``.parquet``): sample ``k`` is row ``k``, a dict ``{column: value}``; counted from the footer.

Guarantee: the count is the footer's row count (no data read; the row groups' counts must add up to it),
so a Parquet path can be given to a stream without an index; a read from sample ``k`` decodes only the
row groups from ``k``'s on, and random access decodes only the row groups of the samples asked for (the
last two kept per open shard). Only the selected columns are read (``ShardedStream(columns=)``; default:
all). A token count from a column of integer lists is summed from that column alone (``index --tokens
FIELD``), the same count a read of every row gives. Refused before the work: a row group whose
uncompressed size passes :data:`~torch_input_ckpt.stream.formats.MAX_MEMBER_BYTES` (raised with
``TORCH_INPUT_CKPT_MAX_MEMBER_BYTES``), a selected column the file lacks. Refused as met, naming the
file: a damaged footer or page, a row group that decodes to another row count than its metadata's.
pyarrow is imported on first use (the ``data`` extra).
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

__all__ = ["PARQUET", "Parquet"]

_WHAT = "Parquet file"


class Parquet(ColumnarFormat):
    """The Parquet format: see the module's docstring."""

    name = "Parquet"
    suffixes = (".parquet",)
    what = _WHAT
    unit = "row group"

    def opened(self, path: str, columns: Sequence[str] | None) -> _ParquetFile:
        return _ParquetFile(path, columns)


PARQUET = Parquet()


class _ParquetFile:
    """An open Parquet file: its row groups' counts (checked) and reads of the selected columns."""

    def __init__(self, path: str, columns: Sequence[str] | None) -> None:
        self.path = path
        self.pa = pyarrow(path, _WHAT)
        self.columns = None if columns is None else list(columns)
        import pyarrow.parquet as pq

        check_regular(path)
        try:
            self.file = pq.ParquetFile(path, memory_map=True)
            meta = self.file.metadata
            groups = meta.num_row_groups
            if groups > MAX_GROUPS:
                raise InputStateError(f"{path}: {groups} row groups, more than the bound of {MAX_GROUPS}")
            self.lengths = [meta.row_group(g).num_rows for g in range(groups)]
            self.sizes = [meta.row_group(g).total_byte_size for g in range(groups)]
            names = self.file.schema_arrow.names
            total = meta.num_rows
        except InputStateError:
            raise
        except arrow_errors(self.pa) as error:
            reraise_missing(error)
            raise damaged(path, _WHAT, error, "its footer") from None
        if any(n < 0 for n in self.lengths) or sum(self.lengths) != total:
            raise InputStateError(
                f"{path}: its row groups hold {sum(self.lengths)} rows, its footer says {total}; expected a "
                f"{_WHAT} whose row groups add up to its row count"
            )
        check_columns_present(path, names, self.columns)

    def read_group(self, group: int) -> Any:
        """Row group ``group`` (the selected columns), decoded and validated."""
        check_group_bytes(self.path, group, self.sizes[group], "row group")
        try:
            table = self.file.read_row_group(group, columns=self.columns)
            table.validate(full=True)  # offsets and UTF-8: a damaged page must not reach to_pylist
        except arrow_errors(self.pa) as error:
            reraise_missing(error)
            raise damaged(self.path, _WHAT, error, f"row group {group}") from None
        return table

    def list_lengths(self, field: str) -> int | None:
        pa = self.pa
        kinds = (pa.types.is_list, pa.types.is_large_list, pa.types.is_fixed_size_list)
        kind = self.file.schema_arrow.field(field).type
        if not any(is_kind(kind) for is_kind in kinds) or not pa.types.is_integer(kind.value_type):
            return None
        total = 0
        for group in range(len(self.lengths)):
            column = self.read_group(group).column(0)
            for chunk in column.chunks:
                values = chunk.flatten()
                if chunk.null_count or values.null_count:
                    return None  # a null is refused row by row, naming its sample
                total += len(values)
        return total

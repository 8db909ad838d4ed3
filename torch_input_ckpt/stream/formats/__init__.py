"""Shard file formats: the :class:`ShardFormat` protocol, the one registry by suffix, JSON lines, ``.npy``, tar,
Parquet and Arrow IPC.

The registry is ``registry.FORMATS``; a new format is one module here plus one entry there
(``docs/writing-a-format.md``). ``open_regular`` and ``bound`` are what a format's reader builds on.
"""

from ._bounds import (
    LINE_CHARS_ENV,
    MAX_LINE_CHARS,
    MAX_MEMBER_BYTES,
    MEMBER_BYTES_ENV,
    bound,
    open_regular,
    refuse_special,
)
from .protocol import RandomAccess, ShardFormat
from .registry import check_columns, count_samples, format_of, open_samples, random_access, suffix_list, suffixes

__all__ = [
    "LINE_CHARS_ENV",
    "MAX_LINE_CHARS",
    "MAX_MEMBER_BYTES",
    "MEMBER_BYTES_ENV",
    "RandomAccess",
    "ShardFormat",
    "bound",
    "check_columns",
    "count_samples",
    "format_of",
    "open_regular",
    "open_samples",
    "random_access",
    "refuse_special",
    "suffix_list",
    "suffixes",
]

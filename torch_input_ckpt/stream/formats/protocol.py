"""What a shard format is: :class:`ShardFormat` (suffixes, count, open at sample k, optional random access and tokens).

Guarantee a format gives (the fuzz tests hold the built-in ones to it): ``open(path, start)`` yields exactly
the samples ``start, start + 1, ...`` of the shard, in the order :meth:`ShardFormat.count` counts them, so a
sample's number within its shard is stable; and a file that cannot be read so is an
:class:`~torch_input_ckpt.InputStateError` naming the file, the line or sample number and what was
expected, raised by the same checks when ``index`` counts the shard and when training reads it — never
another exception type, a hang, or a silent short read. The cost of a start is bounded by one shard,
never by the epoch.

The two optional parts are methods that may answer None: a format without random access (read forward
only, as JSON lines and tar) answers None from :meth:`ShardFormat.random_access`, and the stream keeps
the last ``window`` samples of each open shard instead; a format that cannot count a shard's tokens
without being told which field holds them answers None from :meth:`ShardFormat.tokens`.

Two optional members, outside the protocol (found with ``getattr``, so that a format without them stays
one): ``columnar = True``, with ``open(path, start, columns=None)`` and ``random_access(path, columns=None)``
reading only the columns named (``ShardedStream(columns=)``: Parquet, Arrow); and ``field_tokens(path, field)``,
the token count of a field read without whole samples, or None (then ``index --tokens`` reads every sample).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = ["RandomAccess", "ShardFormat"]


@runtime_checkable
class RandomAccess(Protocol):
    """One shard's samples by number, held open by the reader cache while the stream reads the shard."""

    def __len__(self) -> int:
        """How many samples the shard holds (checked against the count recorded for it)."""
        ...

    def sample(self, k: int) -> Any:
        """Sample ``k``: the value ``open(path, k)`` yields first."""
        ...

    def samples(self, ks: Sequence[int]) -> list[Any]:
        """Samples ``ks`` (one batch's, in that order), read together: one read instead of ``len(ks)``."""
        ...

    def token_rows(self) -> Any | None:
        """The shard as one 2-D integer array, one row of tokens per sample (all of one length), or None.

        With it, packing finds the samples a sequence spans by arithmetic and reads them as one slice.
        """
        ...


@runtime_checkable
class ShardFormat(Protocol):
    """A shard file format, known by the suffixes of its file names (one entry of the registry).

    Attributes:
        name: How messages and the docs name the format.
        suffixes: The file name endings it reads, lower case, with their dot (``(".jsonl", ".jsonl.gz")``).
            A name is matched against the longest suffix of every format first.
        counted_from_header: Whether :meth:`count` reads only a header (no sample): then a path can be
            given to ``ShardedStream`` without an index, its count and tokens read when the stream is built.
    """

    name: str
    suffixes: tuple[str, ...]
    counted_from_header: bool

    def count(self, path: str) -> int:
        """How many samples the shard holds; every sample checked as :meth:`open` would read it, so that a
        shard ``index`` accepts is one the readers read (or only a header, with ``counted_from_header``).

        Raises:
            InputStateError: for a file that is not a regular file, damaged, or past a bound.
        """
        ...

    def open(self, path: str, start: int) -> Iterator[Any]:
        """The samples ``start, start + 1, ...`` of the shard, read forward (samples before ``start``
        skipped, not decoded, where the format allows).

        Raises:
            InputStateError: (as the samples are read) as for :meth:`count`, naming the sample.
        """
        ...

    def random_access(self, path: str) -> RandomAccess | None:
        """The shard's samples by number (kept open by the caller), or None for a format read forward only.

        Raises:
            InputStateError: as for :meth:`count`.
        """
        ...

    def tokens(self, path: str) -> int | None:
        """The shard's token count when every sample is its own token ids and the format knows it without
        a field or tokenizer (a ``.npy`` array: its size), else None (``index --tokens`` then counts them).

        Raises:
            InputStateError: as for :meth:`count`.
        """
        ...

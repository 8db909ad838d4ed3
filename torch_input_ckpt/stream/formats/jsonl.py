"""JSON lines shards (``.jsonl``, ``.jsonl.gz``): one JSON value per non-blank line, read within a line bound.

Guarantee: sample ``k`` is the ``k``-th non-blank line, decoded; a start skips the lines before it without
decoding them (the cost is bounded by one shard). Refused before the work: a line longer than
:data:`~torch_input_ckpt.stream.formats.MAX_LINE_CHARS` characters (read with a bounded ``readline``,
never whole; raised per process with ``TORCH_INPUT_CKPT_MAX_LINE_CHARS``). Refused as met, each naming the
file and the line: a damaged gzip stream, bytes that are not UTF-8, invalid or too deeply nested JSON.
Read forward only (no random access); no token count without ``index --tokens`` or ``--tokenizer``.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from typing import Any

from ...errors import InputStateError
from ._bounds import LINE_CHARS_ENV, MAX_LINE_CHARS, bound, open_regular
from .protocol import RandomAccess

__all__ = ["JSONL", "JsonLines"]

_JSONL = "one JSON value per line (UTF-8 text, or a complete gzip stream of it)"
# What a damaged gzip stream raises while lines are read.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class JsonLines:
    """The JSON lines format (plain or gzip): see the module's docstring."""

    name = "JSON lines"
    suffixes = (".jsonl", ".jsonl.gz")
    counted_from_header = False

    def count(self, path: str) -> int:
        """How many samples: every line is decoded, so that a shard ``index`` accepts is one training reads."""
        return sum(1 for _ in _jsonl(path, 0))

    def open(self, path: str, start: int) -> Iterator[Any]:
        """Samples ``start, start + 1, ...``: the lines before ``start`` are skipped, not decoded."""
        return _jsonl(path, start)

    def random_access(self, path: str) -> RandomAccess | None:
        """None: a line's place in the file is known only by reading the lines before it."""
        return None

    def tokens(self, path: str) -> int | None:
        """None: a line's tokens are in a field or come from a tokenizer (``index --tokens``/``--tokenizer``)."""
        return None


JSONL = JsonLines()


def _text(raw: io.BufferedReader, path: str) -> io.TextIOWrapper:
    # surrogateescape: bytes that are not UTF-8 are found line by line (_utf8), so that the error names its
    # line; the decoder, which reads ahead by chunks, would report them at an earlier line.
    if path.lower().endswith(".gz"):
        gz = gzip.GzipFile(fileobj=raw, mode="rb")
        return io.TextIOWrapper(gz, encoding="utf-8", errors="surrogateescape")  # type: ignore[arg-type]
    return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape")


def _utf8(path: str, number: int, line: str) -> None:
    if not line.isascii():
        try:
            line.encode("utf-8")
        except UnicodeEncodeError as error:
            raise InputStateError(
                f"{path}: line {number} cannot be read (bytes that are not UTF-8 at character {error.start}); "
                f"expected {_JSONL}"
            ) from None


def _lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of each non-blank line, each read with a bounded ``readline``."""
    limit = bound(LINE_CHARS_ENV, MAX_LINE_CHARS)
    # A GzipFile leaves the file it was given open: the outer `with` closes it.
    with open_regular(path) as raw, _text(raw, path) as handle:
        number = 0
        while True:
            number += 1
            try:
                line = handle.readline(limit + 1)
            except _GZIP_ERRORS as error:
                raise InputStateError(
                    f"{path}: line {number} cannot be read ({type(error).__name__}: {error}); expected {_JSONL}"
                ) from None
            if not line:
                return
            if len(line) > limit and not line.endswith("\n"):
                raise InputStateError(
                    f"{path}: line {number} is longer than the bound of {limit} characters; expected {_JSONL} "
                    f"(set {LINE_CHARS_ENV} to raise the bound)"
                )
            if line.strip():
                _utf8(path, number, line)
                yield number, line


def _json_line(path: str, number: int, sample: int, line: str) -> Any:
    try:
        return json.loads(line)
    except RecursionError:
        problem = "nested too deeply to decode"
    except ValueError as error:  # JSONDecodeError, and ints past Python's digit limit
        problem = f"not valid JSON ({error})"
    raise InputStateError(f"{path}: line {number} (sample {sample}): {problem}; expected {_JSONL}")


def _jsonl(path: str, start: int) -> Iterator[Any]:
    for sample, (number, line) in enumerate(_lines(path)):
        if sample >= start:
            yield _json_line(path, number, sample, line)

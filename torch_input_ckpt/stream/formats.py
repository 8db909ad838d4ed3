"""Shard file formats, parsed within bounds: JSON lines (plain or gzip), webdataset tar, ``.npy``.

Guarantee: ``open_samples(path, start)`` yields exactly the samples ``start, start + 1, ...`` of the shard,
in the order :func:`count_samples` counts them, so a sample's number within its shard is stable; and a
file that cannot be read so is an :class:`~torch_input_ckpt.InputStateError` naming the file, the line or
sample number and what was expected, raised by the same checks when ``index`` counts the shard and when
training reads it — never another exception type, a hang, or a silent short read (the fuzz test holds
the readers to this). A ``.npy`` array is memory-mapped and indexed (no read before ``start``); a JSON
lines file is skipped line by line and a tar archive member header by member header (a ``tarfile``
seeks over member data): the cost of a start is bounded by one shard, never by the epoch.

Refused before the work: a path that is not a regular file (a FIFO would block ``np.load`` forever), a
JSON line longer than :data:`MAX_LINE_CHARS` (read with a bounded ``readline``, never whole), a tar
member larger than :data:`MAX_MEMBER_BYTES` (a 10 GiB GNU sparse member fits in a 10 KB tar), a ``.npy``
whose rows hold 0 bytes (a header alone could claim 10**18 of them). Refused as met: a damaged gzip
stream, tar header or ``.npy`` header, bytes that are not UTF-8, invalid or too deeply nested JSON, a
0-d array, a tar archive without its end-of-archive block (``tarfile`` takes a missing or damaged header
for the end: a truncated shard would read short). The two bounds can be raised per process (workers
and the ``index`` command included) with the environment variables :data:`LINE_CHARS_ENV` and
:data:`MEMBER_BYTES_ENV`. ``.npy`` rows in a non-native byte order are converted (exact).

Formats (by suffix):

- ``.jsonl`` and ``.jsonl.gz``: one JSON value per non-blank line.
- ``.npy``: a sample is ``array[k]`` (a row of a 2-D token array, or one element of a 1-D array).
- ``.tar``: the webdataset layout: consecutive members whose names share a key (the name up to the
  first dot of its last part) form one sample ``{"__key__": key, ext: value, ...}``; ``.json`` members
  are decoded as JSON, ``.npy`` as arrays, ``.txt`` as text, ``.cls`` as an int, others stay bytes.
  stdlib ``tarfile`` rather than the ``webdataset`` package: no new dependency, and the grouping rule
  is ten lines; ``webdataset``'s pipeline stages (shuffle, resample) are what this library replaces.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import InputStateError

__all__ = [
    "FORMATS",
    "LINE_CHARS_ENV",
    "MAX_LINE_CHARS",
    "MAX_MEMBER_BYTES",
    "MEMBER_BYTES_ENV",
    "count_samples",
    "format_of",
    "native",
    "npy_memmap",
    "open_samples",
    "refuse_special",
]

FORMATS = (".jsonl", ".jsonl.gz", ".npy", ".tar")

#: The longest JSON line read, in characters (64 Mi): a longer one is refused without being read whole.
MAX_LINE_CHARS = 64 * 2**20
#: The largest tar member read, in bytes (1 GiB), checked on its header before any of its data is read.
MAX_MEMBER_BYTES = 2**30
#: Environment variables that override the two bounds (an int >= 1), in this process and its workers.
LINE_CHARS_ENV = "TORCH_INPUT_CKPT_MAX_LINE_CHARS"
MEMBER_BYTES_ENV = "TORCH_INPUT_CKPT_MAX_MEMBER_BYTES"

_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
    stat.S_IFLNK: "a symbolic link",
}


def format_of(path: str) -> str | None:
    """The format suffix of ``path`` (one of :data:`FORMATS`), or None."""
    name = os.fspath(path).lower()
    for suffix in (".jsonl.gz", ".jsonl", ".npy", ".tar"):
        if name.endswith(suffix):
            return suffix
    return None


def _bound(variable: str, default: int) -> int:
    raw = os.environ.get(variable)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{variable}={raw!r} is not a bound: expected an int >= 1 (the default is {default})")
    return value


def refuse_special(path: str, mode: int) -> None:
    """Refuse a shard path whose ``mode`` is not a regular file's (a FIFO, a device, a directory), by kind."""
    if not stat.S_ISREG(mode):
        kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise InputStateError(
            f"{path}: shard is {kind}, not a regular file: a shard must be a regular file "
            "(reading a FIFO or a device may block forever or never end)"
        )


def _open_regular(path: str) -> io.BufferedReader:
    # O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer comes; checked by fstat
    # on the descriptor itself, so the file cannot be swapped between the check and the read.
    nonblock = getattr(os, "O_NONBLOCK", 0)
    flags = os.O_RDONLY | nonblock | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    except IsADirectoryError:
        refuse_special(path, stat.S_IFDIR)
        raise
    try:
        refuse_special(path, os.fstat(fd).st_mode)
        if nonblock:
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _check_regular(path: str) -> None:
    refuse_special(path, os.stat(path).st_mode)


# -- JSON lines ------------------------------------------------------------------------------------

_JSONL = "one JSON value per line (UTF-8 text, or a complete gzip stream of it)"
# What a damaged gzip stream raises while lines are read.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


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
    limit = _bound(LINE_CHARS_ENV, MAX_LINE_CHARS)
    # A GzipFile leaves the file it was given open: the outer `with` closes it.
    with _open_regular(path) as raw, _text(raw, path) as handle:
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


# -- tar (webdataset layout) -------------------------------------------------------------------------

_TAR = "a complete tar archive (webdataset layout)"


def _split_name(name: str) -> tuple[str, str]:
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{head}/{stem}" if head else stem
    return key, ext if dot else ""


def _decode(ext: str, data: bytes) -> Any:
    last = ext.rsplit(".", 1)[-1]
    if last == "json":
        return json.loads(data)
    if last == "npy":
        import numpy as np

        return native(np.load(_sized_npy(data), allow_pickle=False))
    if last == "txt":
        return data.decode("utf-8")
    if last == "cls":
        return int(data)
    return data


def _sized_npy(data: bytes) -> io.BytesIO:
    """A ``.npy`` member as a stream, once its header is checked against its size: np.load allocates the array
    its header claims before reading it (a header of shape (10**10,) in a 200-byte member: 80 GB)."""
    import numpy as np

    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version}; expected 1.0 or 2.0")
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(stream)
    claimed = dtype.itemsize
    for n in shape:
        claimed *= n
    if claimed > len(data) - stream.tell():
        raise ValueError(
            f"its header claims {claimed} bytes of data (shape {shape}), it holds {len(data) - stream.tell()}"
        )
    stream.seek(0)
    return stream


def _next_member(path: str, archive: tarfile.TarFile) -> tarfile.TarInfo | None:
    try:
        return archive.next()
    except OSError:
        raise
    except Exception as error:  # noqa: BLE001
        # tarfile's header parser raises what a damaged header makes it raise (ReadError, ValueError,
        # IndexError, UnicodeDecodeError, ...): each is a damaged archive, named here.
        raise InputStateError(
            f"{path}: damaged tar header at byte {archive.offset} ({type(error).__name__}: {error}); expected {_TAR}"
        ) from None


def _check_end(path: str, archive: tarfile.TarFile) -> None:
    # tarfile ends its iteration at a missing, short or damaged header as at the end-of-archive block:
    # only a zero block there is the real end (else the shard is truncated or damaged: a silent short read).
    archive.fileobj.seek(archive.offset)  # type: ignore[union-attr]
    if archive.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):  # type: ignore[union-attr]
        raise InputStateError(
            f"{path}: no end-of-archive block at byte {archive.offset} (the archive is truncated or a header "
            f"is damaged); expected {_TAR}"
        )


def _members(path: str, archive: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's regular members, each checked against the member bound on its header alone."""
    limit = _bound(MEMBER_BYTES_ENV, MAX_MEMBER_BYTES)
    previous = -1
    while True:
        member = _next_member(path, archive)
        if member is None:
            _check_end(path, archive)
            return
        if member.offset <= previous or member.size < 0:
            raise InputStateError(
                f"{path}: damaged tar header at byte {member.offset} (size {member.size}); expected {_TAR}"
            )
        previous = member.offset
        if not member.isfile():
            continue
        if member.size > limit:
            raise InputStateError(
                f"{path}: member {member.name!r} holds {member.size} bytes (sparse members count their full "
                f"size), more than the bound of {limit} bytes; set {MEMBER_BYTES_ENV} to raise the bound"
            )
        yield member


def _tar_groups(path: str, archive: tarfile.TarFile) -> Iterator[tuple[str, list[tarfile.TarInfo]]]:
    """``(key, members)`` of each sample, from member headers only (no member data is read)."""
    key: str | None = None
    members: list[tarfile.TarInfo] = []
    for member in _members(path, archive):
        name_key, _ = _split_name(member.name)
        if key is not None and name_key != key:
            yield key, members
            members = []
        key = name_key
        members.append(member)
    if key is not None:
        yield key, members


def _open_tar(path: str, raw: io.BufferedReader) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=raw, mode="r:")
    except tarfile.TarError as error:
        raise InputStateError(f"{path}: not a tar archive ({error}); expected {_TAR}") from None


def _tar(path: str, start: int) -> Iterator[Any]:
    # Samples before `start` are grouped by their member headers only; their data is never read.
    with _open_regular(path) as raw, _open_tar(path, raw) as archive:
        for number, (key, members) in enumerate(_tar_groups(path, archive)):
            if number >= start:
                yield _tar_sample(path, archive, number, key, members)


def _tar_sample(
    path: str, archive: tarfile.TarFile, number: int, key: str, members: list[tarfile.TarInfo]
) -> dict[str, Any]:
    sample: dict[str, Any] = {"__key__": key}
    for member in members:
        ext = _split_name(member.name)[1]
        try:
            handle = archive.extractfile(member)
            data = handle.read() if handle is not None else b""
        except (tarfile.TarError, EOFError, ValueError) as error:
            raise InputStateError(
                f"{path}: member {member.name!r} (sample {number}) cannot be read ({error}); expected {_TAR}"
            ) from None
        try:
            sample[ext] = _decode(ext, data)
        except RecursionError:
            raise InputStateError(f"{path}: member {member.name!r} (sample {number}) is nested too deeply") from None
        except (ValueError, EOFError) as error:  # JSON, UTF-8, int and .npy decoding
            raise InputStateError(
                f"{path}: member {member.name!r} (sample {number}) cannot be decoded as .{ext} ({error})"
            ) from None
    return sample


# -- .npy ------------------------------------------------------------------------------------------------


def native(array: Any) -> Any:
    """``array`` in the machine's byte order (a copy when it is not: exact, and what torch can take)."""
    if not array.dtype.isnative:
        return array.astype(array.dtype.newbyteorder("="))
    return array


def _memmap(path: str) -> Any:
    import numpy as np

    _check_regular(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (FileNotFoundError, PermissionError):
        raise
    except Exception as error:  # noqa: BLE001
        # np.load reports a damaged header or a file shorter than its header says with whatever its parser
        # raises (ValueError, EOFError, OverflowError, SyntaxError, ...): each is a damaged file, named here.
        raise InputStateError(
            f"{path}: not a readable .npy array ({type(error).__name__}: {error}); expected a .npy file "
            "of 1 or more dimensions, one sample per row"
        ) from None
    if array.ndim == 0:
        raise InputStateError(
            f"{path}: a 0-d array (shape ()); expected a .npy array of 1 or more dimensions, one sample per row"
        )
    if len(array) and array.nbytes == 0:
        # Samples of 0 bytes cost no file space: a header alone could claim 10**18 of them.
        raise InputStateError(
            f"{path}: {len(array)} samples of 0 bytes each (dtype {array.dtype.str}, shape {array.shape}); "
            "expected a .npy array whose rows hold data"
        )
    return array


def _npy(path: str, start: int) -> Iterator[Any]:
    import numpy as np

    array = _memmap(path)
    for k in range(start, len(array)):
        yield native(np.array(array[k]))


# -- dispatch ------------------------------------------------------------------------------------------

_OPENERS: dict[str, Callable[[str, int], Iterator[Any]]] = {
    ".jsonl": _jsonl,
    ".jsonl.gz": _jsonl,
    ".npy": _npy,
    ".tar": _tar,
}


def open_samples(path: str, start: int = 0) -> Iterator[Any]:
    """The samples ``start, start + 1, ...`` of the shard file ``path``, read sequentially.

    Raises:
        ValueError: for a file of none of the known formats.
        InputStateError: (as the samples are read) for a file that is not a regular file, or damaged, or
            past a bound, naming the file, the line or sample and what was expected.
    """
    kind = format_of(path)
    if kind is None:
        raise ValueError(f"{path}: not a shard of a known format (expected a name ending in one of {FORMATS})")
    return _OPENERS[kind](os.fspath(path), start)


def count_samples(path: str) -> int:
    """How many samples the shard file ``path`` holds (``.npy``: from its header, no data read).

    Every line of a JSON lines file is decoded and every tar member header checked, so that a shard
    ``index`` accepts is one the readers read.

    Raises:
        ValueError: for a file of none of the known formats.
        InputStateError: for a file that is not a regular file, or damaged, or past a bound.
    """
    kind = format_of(path)
    path = os.fspath(path)
    if kind == ".npy":
        return len(_memmap(path))
    if kind == ".tar":
        with _open_regular(path) as raw, _open_tar(path, raw) as archive:
            return sum(1 for _ in _tar_groups(path, archive))
    return sum(1 for _ in open_samples(path))


def npy_memmap(description: Any) -> Any:
    """A memory-mapped array for a ``.npy`` path, or None for anything else."""
    if isinstance(description, (str, os.PathLike)) and format_of(os.fspath(description)) == ".npy":
        return _memmap(os.fspath(description))
    return None

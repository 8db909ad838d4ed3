"""Webdataset tar shards (``.tar``): consecutive members whose names share a key form one sample.

Guarantee: sample ``k`` is the ``k``-th group of consecutive regular members sharing a key (the name up to
the first dot of its last part), as ``{"__key__": key, ext: value, ...}``: ``.json`` members decoded as
JSON, ``.npy`` as arrays, ``.txt`` as text, ``.cls`` as an int, others kept as bytes. A start groups the
members before it by their headers only (a ``tarfile`` seeks over member data): the cost is bounded by one
shard. Refused before the work: a member larger than
:data:`~torch_input_ckpt.stream.formats.MAX_MEMBER_BYTES` on its header alone (a 10 GiB GNU sparse member
fits in a 10 KB tar; raised per process with ``TORCH_INPUT_CKPT_MAX_MEMBER_BYTES``), a ``.npy`` member
whose header claims more data than it holds. Refused as met, naming the file and the member: a damaged
header, an archive without its end-of-archive block (``tarfile`` takes a missing or damaged header for the
end: a truncated shard would read short), a member that cannot be decoded as its extension says.
Read forward only (no random access); no token count without ``index --tokens`` or ``--tokenizer``.

stdlib ``tarfile`` rather than the ``webdataset`` package: no new dependency, and the grouping rule is ten
lines; ``webdataset``'s pipeline stages (shuffle, resample) are what this library replaces.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from typing import Any

from ...errors import InputStateError
from ._bounds import MAX_MEMBER_BYTES, MEMBER_BYTES_ENV, bound, open_regular
from .npy import npy_bytes
from .protocol import RandomAccess

__all__ = ["TAR", "WebdatasetTar"]

_TAR = "a complete tar archive (webdataset layout)"


class WebdatasetTar:
    """The webdataset tar format: see the module's docstring."""

    name = "webdataset tar"
    suffixes = (".tar",)
    counted_from_header = False

    def count(self, path: str) -> int:
        """How many samples: every member header is checked (member data is not read)."""
        with open_regular(path) as raw, _open_tar(path, raw) as archive:
            return sum(1 for _ in _tar_groups(path, archive))

    def open(self, path: str, start: int) -> Iterator[Any]:
        """Samples ``start, start + 1, ...``: the samples before ``start`` are grouped by header only."""
        return _tar(path, start)

    def random_access(self, path: str) -> RandomAccess | None:
        """None: a sample's members are found only by walking the headers before them."""
        return None

    def tokens(self, path: str) -> int | None:
        """None: a sample's tokens are in a member or come from a tokenizer (``index --tokens``/``--tokenizer``)."""
        return None


TAR = WebdatasetTar()


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
        return npy_bytes(data)
    if last == "txt":
        return data.decode("utf-8")
    if last == "cls":
        return int(data)
    return data


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
    limit = bound(MEMBER_BYTES_ENV, MAX_MEMBER_BYTES)
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
    with open_regular(path) as raw, _open_tar(path, raw) as archive:
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

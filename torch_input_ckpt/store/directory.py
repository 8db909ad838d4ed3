"""Where a rank's checkpoint files live: a local POSIX directory (a ``Path``) or an object-store prefix.

Invariant: every directory operation of the store (listing, a bounded read, a whole atomic write, a delete)
goes through the few functions here, so the rest of ``store/`` is written once. A local directory is a plain
``pathlib.Path`` and keeps its exact behaviour (``files.write_atomic``: temporary, fsync, rename; reads that
never follow a link); an object prefix is an :class:`ObjectDirectory`, whose files are objects written whole
by one request (atomic by the protocol: a reader sees the old object or the new one, never part of one).

Hostile input on an object prefix: only keys directly under the prefix whose remainder is a name this library
writes are ever listed, read or deleted (a key with another ``/``, ``..`` or any other spelling is ignored), so
nothing outside the prefix is touched; a read is one ranged GET of at most ``limit + 1`` bytes, so an oversized
object is never held whole; the bytes are JSON, parsed with the same bounds as on disk. A failure of the store
itself (an outage past the retries, no access, no bucket) is raised as the client's ``ObjectStoreError``, never
turned into "missing" or "damaged".
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import InputStateError, ObjectStoreError

__all__ = [
    "Location",
    "ObjectDirectory",
    "ObjectPath",
    "ObjectStoreClient",
    "as_directory",
    "entry_names",
    "is_missing",
    "is_remote",
]


class ObjectStoreClient(Protocol):
    """What the store needs of an object-store client (``torch_input_ckpt.remote.ObjectStore``)."""

    def list(self, prefix: str) -> Any: ...  # ObjectInfo(url, size, etag) of every object under the prefix

    def head(self, url: str) -> Any: ...  # ObjectInfo; FileNotFoundError if absent

    def read(self, url: str) -> bytes: ...

    def read_range(self, url: str, start: int, end: int) -> bytes: ...

    def put(self, url: str, data: bytes, *, if_absent: bool = False) -> Any: ...

    def delete(self, url: str) -> None: ...


@dataclass(frozen=True)
class ObjectDirectory:
    """An object-store prefix used as a checkpoint directory, e.g. ``s3://bucket/run/input``.

    Attributes:
        url: The prefix, without a trailing ``/`` (its files are ``<url>/<name>``).
        store: The client that reaches it.
    """

    url: str
    store: ObjectStoreClient = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        # As the client spells the URLs it lists (scheme in lower case), so that listed keys match the prefix.
        scheme, sep, rest = self.url.rstrip("/").partition("://")
        object.__setattr__(self, "url", scheme.lower() + sep + rest)

    def __str__(self) -> str:
        return self.url

    def __truediv__(self, name: str) -> ObjectPath:
        return ObjectPath(self, name)

    @property
    def name(self) -> str:
        """The last segment of the prefix."""
        return self.url.rpartition("/")[2]

    def names(self) -> list[str]:
        """The names of the objects directly under the prefix (one listing; deeper keys are not ours)."""
        base = self.url + "/"
        found = []
        for info in self.store.list(base):
            url = str(info.url)
            if url.startswith(base):
                rest = url[len(base) :]
                if rest and "/" not in rest:
                    found.append(rest)
        return found


@dataclass(frozen=True)
class ObjectPath:
    """One object of an :class:`ObjectDirectory`: what a ``Path`` is for a local file, for the few operations
    the store makes (read bounded, write whole, delete, exists).

    Attributes:
        parent: The prefix it lives under.
        name: Its name under the prefix (one this library writes; never contains ``/``).
    """

    parent: ObjectDirectory
    name: str

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"{self.parent}: {self.name!r} is not a name inside the prefix")

    def __str__(self) -> str:
        return f"{self.parent.url}/{self.name}"

    def with_name(self, name: str) -> ObjectPath:
        """The object ``name`` beside this one."""
        return ObjectPath(self.parent, name)

    def is_file(self) -> bool:
        """Whether the object exists (one HEAD request)."""
        try:
            self.parent.store.head(str(self))
        except ObjectStoreError as error:
            if is_missing(error):
                return False
            raise
        return True

    def unlink(self, missing_ok: bool = False) -> None:
        """Delete the object (deleting an absent object is not an error on object stores)."""
        self.parent.store.delete(str(self))

    def read_bounded(self, limit: int) -> bytes:
        """The object's bytes, at most ``limit`` of them: one ranged GET of ``limit + 1`` bytes, so an object
        past the bound is never held whole.

        Raises:
            FileNotFoundError: if the object does not exist.
            InputStateError: naming the URL, for an object past the bound.
            ObjectStoreError: the store's own failures (outage past the retries, access denied), naming the URL.
        """
        store, url = self.parent.store, str(self)
        try:
            data = store.read_range(url, 0, limit + 1)
        except ObjectStoreError as error:
            if is_missing(error):
                raise FileNotFoundError(url) from error
            if _empty(store, url):  # a range of an empty object is "not satisfiable": the object is just empty
                return b""
            raise
        if len(data) > limit:
            raise InputStateError(f"{url}: more than the bound of {limit} bytes")
        return bytes(data)

    def exists(self) -> bool:
        """Whether the object exists, by a GET of its first byte (a missing object then costs one request)."""
        try:
            self.parent.store.read_range(str(self), 0, 1)
        except ObjectStoreError as error:
            if is_missing(error):
                return False
            raise
        return True

    def write_whole(self, data: bytes) -> None:
        """Write the object in one request: readers see the old object or this one, never a part."""
        self.parent.store.put(str(self), data)


Location = Path | ObjectDirectory


def is_missing(error: BaseException) -> bool:
    """Whether a store's error says the object does not exist (and nothing worse: a missing bucket, no access):
    the client's ``ObjectNotFoundError`` is a ``FileNotFoundError``, as a missing local file is."""
    return isinstance(error, FileNotFoundError)


def _empty(store: ObjectStoreClient, url: str) -> bool:
    try:
        return int(store.head(url).size) == 0
    except ObjectStoreError:
        return False


def as_directory(directory: str | os.PathLike[str] | ObjectDirectory) -> Location:
    """A local directory as a ``Path``; an :class:`ObjectDirectory` as it is.

    Raises:
        ValueError: for a URL given as a string: an object prefix needs its client (``InputCheckpointer``
            builds it from the URL and ``storage_options``).
    """
    if isinstance(directory, ObjectDirectory):
        return directory
    if isinstance(directory, str) and "://" in directory:
        raise ValueError(
            f"{directory}: an object-store URL needs a client; give InputCheckpointer the URL (with "
            "storage_options), or an ObjectDirectory"
        )
    return Path(directory)


def is_remote(directory: object) -> bool:
    """Whether ``directory`` (or a file in it) is on an object store."""
    return isinstance(directory, (ObjectDirectory, ObjectPath))


def entry_names(directory: Location) -> Iterator[tuple[str, bool]]:
    """``(name, is_file_or_link)`` for each entry: every object of a prefix is a file; a local entry is one if
    it is a regular file or a symlink (listed so that a link with our name is reported, and refused on read)."""
    if isinstance(directory, ObjectDirectory):
        for name in directory.names():
            yield name, True
        return
    for entry in os.scandir(directory):
        yield entry.name, entry.is_symlink() or entry.is_file(follow_symlinks=False)

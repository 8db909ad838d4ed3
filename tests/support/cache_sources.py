"""Shard-cache test sources: real files in a "remote" directory, downloaded by copying (optionally slowly)."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LocalObject:
    """An object of a local "remote" directory: its URL (a path), size and ETag (a content hash), as ObjectInfo."""

    url: str
    size: int
    etag: str | None


def make_objects(folder: Path, names: list[str], size: int) -> list[LocalObject]:
    """Write one file per name (distinct bytes each) and describe it."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for number, name in enumerate(names):
        data = hashlib.sha256(name.encode()).digest() * (size // 32) + bytes([number % 256]) * (size % 32)
        path = folder / name
        path.write_bytes(data)
        out.append(LocalObject(str(path), size, hashlib.md5(data).hexdigest()))
    return out


def copy_download(info: LocalObject, dest: Path) -> None:
    """Download by copying the source file."""
    shutil.copyfile(info.url, dest)


def slow_download(info: LocalObject, dest: Path) -> None:
    """Copy in small pieces with pauses (a slow network), so that a test can kill the process mid-download."""
    delay = float(os.environ.get("CACHE_TEST_DELAY", "0.05"))
    with open(info.url, "rb") as source, open(dest, "wb") as out:
        while piece := source.read(256):
            out.write(piece)
            out.flush()
            time.sleep(delay)


def full_disk_download(info: LocalObject, dest: Path) -> None:
    """A download onto a full disk: the bytes go through a real write to /dev/full, which fails with ENOSPC."""
    with open(dest, "wb") as out:
        out.write(b"x")
    with open(info.url, "rb") as source, open("/dev/full", "wb", buffering=0) as full:
        full.write(source.read())


def digest(path: Path) -> str:
    """The MD5 of a file (the objects' ETags are theirs)."""
    return hashlib.md5(path.read_bytes()).hexdigest()

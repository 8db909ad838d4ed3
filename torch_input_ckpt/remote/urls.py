"""Object URLs (``s3://bucket/key``): recognised, split and joined without touching the network."""

from __future__ import annotations

import re
from dataclasses import dataclass
from os import PathLike
from typing import Any

from ..base.messages import short
from ..errors import ObjectStoreError

__all__ = ["SUPPORTED_SCHEMES", "ObjectUrl", "is_url", "join_url"]

#: The schemes an :class:`~torch_input_ckpt.remote.store.ObjectStore` reads (S3 and every S3-compatible store:
#: MinIO, R2, GCS's XML API, Ceph, moto...). ``s3a`` is Hadoop's spelling of the same.
SUPPORTED_SCHEMES = ("s3", "s3a")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_url(path: str | PathLike[str] | Any) -> bool:
    """Whether ``path`` names an object in a store (``scheme://...``) rather than a local file.

    ``file://`` is a local file; a :class:`~pathlib.Path` is never a URL (a path cannot hold ``//`` after a
    scheme). Unsupported schemes (``gs://``...) are URLs too: opening one is refused by name.
    """
    if not isinstance(path, str):
        return False
    match = _SCHEME.match(path)
    return match is not None and match.group(1).lower() != "file"


@dataclass(frozen=True)
class ObjectUrl:
    """A URL split into scheme, bucket and key (``key`` is ``""`` for a bucket, ``"a/b/"`` for a prefix)."""

    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> ObjectUrl:
        """Split ``url``; a URL of an unsupported scheme or without a bucket is refused by name."""
        match = _SCHEME.match(url) if isinstance(url, str) else None
        if match is None:
            raise ObjectStoreError(f"{short(url)} is not an object URL: expected s3://BUCKET/KEY")
        scheme = match.group(1).lower()
        if scheme not in SUPPORTED_SCHEMES:
            raise ObjectStoreError(
                f"{short(url)}: the {scheme}:// scheme is not supported (supported: "
                f"{', '.join(s + '://' for s in SUPPORTED_SCHEMES)}); for an S3-compatible store give its "
                f"endpoint, e.g. storage_options={{'endpoint_url': 'https://...'}} with an s3:// URL"
            )
        bucket, _, key = url[match.end() :].partition("/")
        if not bucket:
            raise ObjectStoreError(f"{short(url)} names no bucket: expected {scheme}://BUCKET/KEY")
        return cls(scheme, bucket, key)

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"

    def child(self, key: str) -> ObjectUrl:
        """The URL of ``key`` in the same bucket."""
        return ObjectUrl(self.scheme, self.bucket, key)

    def directory_key(self) -> str:
        """The key as a listing prefix: ``""`` for the bucket, else ending in ``/``."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"


def join_url(prefix_url: str, name: str) -> str:
    """``name`` under ``prefix_url`` (a "directory": a ``/`` is put between them when missing)."""
    return prefix_url + name if prefix_url.endswith("/") else f"{prefix_url}/{name}"

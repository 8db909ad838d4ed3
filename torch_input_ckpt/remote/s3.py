"""The S3 protocol through s3fs's aiobotocore client: requests, and what their failures mean.

Imported only when an ``s3://`` URL is opened (s3fs is the optional ``remote`` extra). The calls go to the
aiobotocore client that ``s3fs.S3FileSystem`` sets up (``set_session``/``get_s3``, its public async API) so that
``storage_options`` mean what they mean everywhere in the fsspec ecosystem (``key``, ``secret``, ``token``,
``endpoint_url``, ``anon``, ``client_kwargs``, ``config_kwargs``, ``profile``...), while the requests themselves
carry the conditions s3fs's file API does not expose: ``If-Match`` on reads (an object changed since it was
indexed is refused by the store itself, in the same request) and ``If-None-Match: *`` on writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import IO, Any

import aiohttp
import botocore.exceptions as boto

__all__ = [
    "CHUNK_BYTES",
    "delete",
    "download_into",
    "error_code",
    "get_bytes",
    "head",
    "head_bucket",
    "is_transient",
    "list_keys",
    "put",
]

#: Bytes per read of a streamed download.
CHUNK_BYTES = 1 << 20

# Answers of S3 and S3-compatible stores that a retry may cure.
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "BandwidthLimitExceeded",
    "RequestTimeout",
    "RequestTimeoutException",
    "InternalError",
    "ServiceUnavailable",
}

# Failures of the connection itself: a reset, a closed connection, a timeout, a truncated body.
_TRANSIENT_TYPES = (
    boto.HTTPClientError,  # connection closed, read/connect timeout, streaming error
    boto.ConnectionError,  # endpoint unreachable (a restarting server), proxy
    boto.IncompleteReadError,
    aiohttp.ClientError,  # payload cut short, server disconnected
    asyncio.TimeoutError,
    ConnectionError,
    TimeoutError,
)


def error_code(error: BaseException) -> tuple[str, int]:
    """The S3 error code and HTTP status of a ``ClientError`` (``("", 0)`` for anything else)."""
    response = getattr(error, "response", None)
    if not isinstance(error, boto.ClientError) or not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code, int(status or (code if code.isdigit() else 0))


def is_transient(error: BaseException) -> bool:
    """Whether a retry may cure ``error`` (throttling, 5xx, timeouts, resets); credentials and missing
    objects are not, and neither is SSL (a wrong endpoint scheme stays wrong)."""
    if isinstance(error, boto.SSLError):
        return False
    if isinstance(error, boto.ClientError):
        code, status = error_code(error)
        return code in _TRANSIENT_CODES or status == 429 or status >= 500
    return isinstance(error, _TRANSIENT_TYPES)


def _if_match(etag: str | None) -> dict[str, str]:
    return {"IfMatch": etag} if etag else {}


async def head(client: Any, bucket: str, key: str) -> tuple[int, str]:
    """Size and ETag of an object."""
    response = await client.head_object(Bucket=bucket, Key=key)
    return int(response["ContentLength"]), str(response["ETag"])


async def head_bucket(client: Any, bucket: str) -> bool:
    """Whether ``bucket`` exists (asked only to word an error: 404 on an object does not say which is missing)."""
    try:
        await client.head_bucket(Bucket=bucket)
    except boto.ClientError as error:
        code, status = error_code(error)
        if status == 404 or code in ("NoSuchBucket", "NotFound", "404"):
            return False
        raise
    return True


async def get_bytes(client: Any, bucket: str, key: str, byte_range: str | None, etag: str | None) -> tuple[bytes, str]:
    """The body of a GET (of ``byte_range``, ``"bytes=a-b"``, when given; ``If-Match: etag`` when given),
    and the ETag the store answered with."""
    extra = {"Range": byte_range} if byte_range else {}
    response = await client.get_object(Bucket=bucket, Key=key, **extra, **_if_match(etag))
    body = response["Body"]
    try:
        data = await body.read()
    finally:
        body.close()
    return data, str(response["ETag"])


async def download_into(
    client: Any, bucket: str, key: str, file: IO[bytes], etag: str | None, on_answer: Callable[[int, str], None]
) -> int:
    """Stream an object into ``file`` (``If-Match: etag`` when given); ``on_answer(size, etag)`` is called with the
    store's answer before the body is read. Returns the bytes written."""
    response = await client.get_object(Bucket=bucket, Key=key, **_if_match(etag))
    on_answer(int(response["ContentLength"]), str(response["ETag"]))
    body = response["Body"]
    written = 0
    try:
        async for chunk in body.iter_chunks(CHUNK_BYTES):
            file.write(chunk)
            written += len(chunk)
    finally:
        body.close()
    return written


async def put(client: Any, bucket: str, key: str, data: bytes, if_absent: bool) -> str:
    """Write an object (``If-None-Match: *`` when ``if_absent``); returns its ETag."""
    extra = {"IfNoneMatch": "*"} if if_absent else {}
    response = await client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
    return str(response.get("ETag", ""))


async def delete(client: Any, bucket: str, key: str) -> None:
    await client.delete_object(Bucket=bucket, Key=key)


async def list_keys(client: Any, bucket: str, prefix: str, recursive: bool) -> list[tuple[str, int, str]]:
    """``(key, size, etag)`` of the objects under ``prefix`` (directly under it unless ``recursive``)."""
    paginator = client.get_paginator("list_objects_v2")
    extra = {} if recursive else {"Delimiter": "/"}
    found = []
    async for page in paginator.paginate(Bucket=bucket, Prefix=prefix, **extra):
        for item in page.get("Contents", ()):
            if not item["Key"].endswith("/"):  # a "directory" marker some tools write
                found.append((item["Key"], int(item["Size"]), str(item["ETag"])))
    return sorted(found)

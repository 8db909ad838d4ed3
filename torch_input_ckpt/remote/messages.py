"""What a permanent object-store failure means, in words that name the URL and the fix."""

from __future__ import annotations

from ..base.messages import short
from ..errors import ObjectExistsError, ObjectNotFoundError, ObjectStoreError

__all__ = ["explain"]

_CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or pass storage_options={'key': ..., "
    "'secret': ...} (storage_options={'anon': True} for a public bucket)"
)
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}


def explain(
    url: str, what: str, error: BaseException, code: str, status: int, endpoint: str, bucket_exists: bool | None
) -> ObjectStoreError:
    """The error to raise for ``error``, a permanent failure of ``what`` (GET, PUT...) on ``url``.

    ``bucket_exists`` is what a HEAD of the bucket found (``None``: not asked or unknown): a 404 on an object does
    not say whether the object or its bucket is missing.
    """
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    kind = type(error).__name__
    if kind in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return ObjectStoreError(f"no credentials to {what} {url} at {endpoint}: {_CREDENTIALS_FIX}")
    if what == "PUT" and (status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict")):
        return ObjectExistsError(f"{url} already exists: a conditional write (if_absent=True) does not replace it")
    if code == "NoSuchBucket" or bucket_exists is False:
        return ObjectStoreError(
            f"no bucket {bucket!r} at {endpoint} (for {url}): check the bucket's name, and the endpoint "
            f"(storage_options={{'endpoint_url': ...}} or AWS_ENDPOINT_URL) for an S3-compatible store"
        )
    if code in ("NoSuchKey", "NotFound") or status == 404:
        return ObjectNotFoundError(
            f"no object at {url} (bucket {bucket!r} at {endpoint}): check the path; an object listed in an index "
            f"but missing now was deleted or moved since the data was indexed"
        )
    if code in _DENIED_CODES or status == 403:
        return ObjectStoreError(
            f"{what} {url} was refused at {endpoint} ({code or status}): the credentials are wrong or lack "
            f"permission; {_CREDENTIALS_FIX}"
        )
    return ObjectStoreError(f"{what} {url} failed at {endpoint}: {kind} {code or ''} {short(error)}".replace("  ", " "))

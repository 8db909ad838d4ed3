"""``ObjectStore``: read, list, download and write objects by URL, with bounded retries and clear refusals.

Why fsspec/s3fs and not obstore (measured against moto's server on 127.0.0.1, 2 shared cores, load ~0.7; the
script and figures are in the notes of issue 24 and benchmarks/remote.py):

- **Fork safety decides.** ``DataLoader`` workers are forked on Linux. obstore's Rust (tokio) runtime is not
  fork-safe: a forked child that touched obstore after its parent had *hung* in the first request, even with a new
  store object (LitData works around this by reading its index with boto3 in the parent). fsspec resets its event
  loop and IO thread in a forked child (``os.register_at_fork`` in fsspec/asyn.py) and clears its instance cache
  when the pid changes; an s3fs client made in the parent raises "not fork-safe" in a child, so this class makes
  its client lazily, once per process, and drops it when pickled.
- **Throughput is a wash where it matters.** 8 whole 16 MiB objects: s3fs 0.21-0.32 s, obstore 0.27-0.29 s,
  boto3 0.17 s; 300 range reads of 64 KiB: s3fs 2.7-2.9 s, obstore 2.0-2.1 s, boto3 2.6 s. Range reads (index
  building: Parquet footers, ``.npy`` headers) are per-request latency of the server, paid once per shard when
  indexing; a shard is read by one whole-object download.
- fsspec's ``storage_options`` are what users of the ecosystem already pass (``key``, ``secret``,
  ``endpoint_url``, ``anon``, ``client_kwargs``, ``config_kwargs``, ``profile``...).

Requests are made on s3fs's aiobotocore client directly (see ``remote/s3.py``): the conditions (``If-Match``,
``If-None-Match``) ride on the request itself, and retries are this module's: botocore's own retries are turned
off (``total_max_attempts=1``, unless ``config_kwargs`` says otherwise) so that the bound given is the bound kept.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ObjectChangedError, ObjectExistsError, ObjectStoreError
from .retry import RetryPolicy, call_with_retries
from .urls import ObjectUrl

__all__ = ["ObjectInfo", "ObjectStore"]


@dataclass(frozen=True)
class ObjectInfo:
    """An object as the store describes it: its URL, size in bytes and ETag (the store's version of its bytes)."""

    url: str
    size: int
    etag: str


class ObjectStore:
    """A client of one kind of object store (S3 and S3-compatible), usable from any process.

    Picklable: only the options travel; the client is made lazily in each process (after a fork, in each
    ``DataLoader`` worker) and shared by the threads of that process.

    Args:
        storage_options: fsspec/s3fs options (``endpoint_url``, ``key``, ``secret``, ``anon``, ``client_kwargs``,
            ``config_kwargs``...), plus ``"retry"``: a mapping of :class:`RetryPolicy` fields.
        retry: the retry policy (overrides ``storage_options["retry"]``).
    """

    def __init__(self, storage_options: dict[str, Any] | None = None, *, retry: RetryPolicy | None = None) -> None:
        options = dict(storage_options or {})
        policy = options.pop("retry", None)
        self.retry = retry if retry is not None else RetryPolicy.from_options(policy)
        self.storage_options = options
        self._client_lock = threading.Lock()
        self._lock_pid = os.getpid()
        self._filesystem: Any = None
        self._client_pid = -1

    @classmethod
    def for_url(
        cls, url: str, storage_options: dict[str, Any] | None = None, *, retry: RetryPolicy | None = None
    ) -> ObjectStore:
        """The store for ``url``'s scheme (refused by name when the scheme is not supported)."""
        ObjectUrl.parse(url)
        return cls(storage_options, retry=retry)

    def __getstate__(self) -> dict[str, Any]:
        return {"storage_options": self.storage_options, "retry": self.retry}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["storage_options"], retry=state["retry"])  # type: ignore[misc]

    def __repr__(self) -> str:
        return f"ObjectStore(endpoint={self.endpoint!r})"

    @property
    def endpoint(self) -> str:
        """The endpoint requests go to, for messages (AWS's when none is configured)."""
        client_kwargs = self.storage_options.get("client_kwargs") or {}
        return str(
            self.storage_options.get("endpoint_url")
            or client_kwargs.get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "AWS S3"
        )

    # --- the client, once per process ---------------------------------------------------------------------

    def _s3fs(self) -> Any:
        if self._lock_pid != os.getpid():  # a forked child: its copy of the lock may be held by a thread it lacks
            self._client_lock, self._lock_pid = threading.Lock(), os.getpid()
        with self._client_lock:
            if self._filesystem is None or self._client_pid != os.getpid():
                import s3fs

                options = dict(self.storage_options)
                if _explicit_credentials(options):
                    options["session"] = _shared_session()
                config = dict(options.pop("config_kwargs", None) or {})
                config.setdefault("retries", {"total_max_attempts": 1})
                self._filesystem = s3fs.S3FileSystem(skip_instance_cache=True, config_kwargs=config, **options)
                self._client_pid = os.getpid()
            return self._filesystem

    def _run(self, url: ObjectUrl, request: Any) -> Any:
        """``await request(client)`` on the filesystem's event loop, blocking this thread."""
        from fsspec.asyn import sync

        filesystem = self._s3fs()

        async def call() -> Any:
            await filesystem.set_session()
            return await request(await filesystem.get_s3(url.bucket))

        return sync(filesystem.loop, call)

    def _call(self, url: ObjectUrl, what: str, request: Any, *, expect: Any = lambda: None) -> Any:
        """``request`` with retries of transient failures; permanent ones become an ``ObjectStoreError``.

        ``expect()`` is the version a GET was conditioned on (a 412 then means the object changed)."""
        from . import s3

        try:
            return call_with_retries(
                lambda: self._run(url, request), url=str(url), what=what, policy=self.retry, transient=s3.is_transient
            )
        except ObjectStoreError:
            raise
        except Exception as error:  # noqa: BLE001 - every failure is worded below; none escapes as it is
            raise self._explain(url, what, error, expect()) from None

    def _explain(self, url: ObjectUrl, what: str, error: Exception, expect: ObjectInfo | None) -> Exception:
        from . import s3
        from .messages import explain

        code, status = s3.error_code(error)
        if status == 412 and expect is not None and what == "GET":
            found = self._best_effort(url, lambda client: s3.head(client, url.bucket, url.key))
            return _changed(str(url), expect, *(found or (None, "(the object is gone)")))
        bucket_exists = None
        if status in (403, 404) and code not in ("NoSuchBucket", "NoSuchKey"):
            bucket_exists = self._best_effort(url, lambda client: s3.head_bucket(client, url.bucket))
        return explain(str(url), what, error, code, status, self.endpoint, bucket_exists)

    def _best_effort(self, url: ObjectUrl, request: Any) -> Any:
        """One more request, only to word a message: ``None`` when it fails (the first error is the one raised)."""
        try:
            return self._run(url, request)
        except Exception:  # noqa: BLE001
            return None

    # --- reading --------------------------------------------------------------------------------------------

    def head(self, url: str) -> ObjectInfo:
        """Size and ETag of the object at ``url``."""
        from . import s3

        where = ObjectUrl.parse(url)
        size, etag = self._call(where, "HEAD", lambda client: s3.head(client, where.bucket, where.key))
        return ObjectInfo(url, size, etag)

    def list(self, prefix_url: str, *, recursive: bool = False) -> list[ObjectInfo]:
        """The objects directly under ``prefix_url`` (a "directory"; every level below it when ``recursive``),
        sorted by key. An empty list when there are none; a missing bucket is refused by name."""
        from . import s3

        where = ObjectUrl.parse(prefix_url)
        prefix = where.directory_key()
        found = self._call(where, "LIST", lambda client: s3.list_keys(client, where.bucket, prefix, recursive))
        return [ObjectInfo(str(where.child(key)), size, etag) for key, size, etag in found]

    def read_range(self, url: str, start: int, end: int, *, expect: ObjectInfo | None = None) -> bytes:
        """Bytes ``[start, end)`` of the object (fewer when the object ends before ``end``).

        With ``expect``, the store serves them only if the object still has ``expect.etag`` (``If-Match``);
        otherwise :class:`~torch_input_ckpt.errors.ObjectChangedError` names the URL and both versions.
        """
        from . import s3

        if not 0 <= start <= end:
            raise ObjectStoreError(f"range [{start}, {end}) of {url}: expected 0 <= start <= end")
        if start == end:
            return b""
        where = ObjectUrl.parse(url)
        byte_range = f"bytes={start}-{end - 1}"
        etag = expect.etag if expect else None
        data, found = self._call(
            where,
            "GET",
            lambda client: s3.get_bytes(client, where.bucket, where.key, byte_range, etag),
            expect=lambda: expect,
        )
        self._check_version(url, expect, None, found)
        return data

    def read(self, url: str, *, expect: ObjectInfo | None = None) -> bytes:
        """The whole object (``If-Match`` with ``expect``, as :meth:`read_range`)."""
        from . import s3

        where = ObjectUrl.parse(url)
        etag = expect.etag if expect else None
        data, found = self._call(
            where,
            "GET",
            lambda client: s3.get_bytes(client, where.bucket, where.key, None, etag),
            expect=lambda: expect,
        )
        self._check_version(url, expect, len(data), found)
        return data

    def _check_version(self, url: str, expect: ObjectInfo | None, size: int | None, etag: str) -> None:
        # A store that ignores If-Match still names the version it served: compare it too.
        if expect is None:
            return
        if etag != expect.etag or (size is not None and size != expect.size):
            raise _changed(url, expect, size, etag)

    def download(self, url: str, dest: str | os.PathLike[str], *, expect: ObjectInfo | None = None) -> ObjectInfo:
        """Copy the object to the file ``dest``, atomically: it is streamed to a temporary name in ``dest``'s
        folder, flushed to disk, then renamed over ``dest``. A reader never sees a partly written ``dest``.

        With ``expect``, only that version is downloaded (``If-Match``); without it, the version of the first
        answer is held for the retries, so a download never mixes two versions of a changing object.

        Returns:
            The object as downloaded (its URL, size and ETag).

        Raises:
            ObjectChangedError: the object is not ``expect`` (``dest`` is left as it was).
        """
        from . import s3

        where = ObjectUrl.parse(url)
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.part"
        held = [expect]

        async def request(client: Any) -> ObjectInfo:
            def check(size: int, etag: str) -> None:
                if held[0] is not None and (etag != held[0].etag or size != held[0].size):
                    raise _changed(url, held[0], size, etag)
                held[0] = ObjectInfo(url, size, etag)

            with open(temporary, "wb") as file:
                await s3.download_into(client, where.bucket, where.key, file, held[0] and held[0].etag, check)
                file.flush()
                os.fsync(file.fileno())
            return held[0]  # type: ignore[return-value]

        try:
            info = self._call(where, "GET", request, expect=lambda: held[0])
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_directory(target.parent)
        return info

    # --- writing --------------------------------------------------------------------------------------------

    def put(self, url: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo:
        """Write the object at ``url`` (replacing it, or, with ``if_absent``, only if there is none:
        ``If-None-Match: *``, decided by the store, so two writers racing cannot both succeed).

        Raises:
            ObjectExistsError: ``if_absent`` and the object exists (written by someone else).
        """
        from . import s3

        where = ObjectUrl.parse(url)
        attempts = [0]

        async def request(client: Any) -> str:
            attempts[0] += 1
            return await s3.put(client, where.bucket, where.key, bytes(data), if_absent)

        try:
            etag = self._call(where, "PUT", request)
        except ObjectExistsError:
            # A retried write whose first attempt did land (its answer was lost) finds its own object: same bytes.
            mine = f'"{hashlib.md5(bytes(data), usedforsecurity=False).hexdigest()}"'
            found = self._best_effort(where, lambda client: s3.head(client, where.bucket, where.key))
            if attempts[0] < 2 or found is None or found[1] != mine:
                raise
            etag = mine
        return ObjectInfo(url, len(data), etag)

    def delete(self, url: str) -> None:
        """Delete the object at ``url`` (nothing happens when there is none)."""
        from . import s3

        where = ObjectUrl.parse(url)
        self._call(where, "DELETE", lambda client: s3.delete(client, where.bucket, where.key))


_SESSION: list[Any] = []  # the one shared aiobotocore session, made on first use


def _explicit_credentials(options: dict[str, Any]) -> bool:
    """Whether the options name the credentials themselves (or none: anonymous), so that a session's own
    credential lookup (environment, profile files) is never consulted and one session can serve them all."""
    return "session" not in options and "profile" not in options and (bool(options.get("anon")) or "key" in options)


def _shared_session() -> Any:
    # One aiobotocore session for the stores that name their credentials: it caches the loaded S3 service model,
    # which costs 0.3-1 s per client otherwise (each ObjectStore). A forked DataLoader worker inherits it: a
    # session holds no connection, event loop or lock that a fork could break (clients do, and each process makes
    # its own), and the credentials it could cache are not used (the client is given them).
    import aiobotocore.session

    if not _SESSION:
        _SESSION.append(aiobotocore.session.AioSession())
    return _SESSION[0]


def _changed(url: str, expect: ObjectInfo, size: int | None, etag: str) -> ObjectChangedError:
    found = f"ETag {etag}" + (f", {size} bytes" if size is not None else "")
    return ObjectChangedError(
        f"{url} changed: expected ETag {expect.etag}, {expect.size} bytes (as indexed or first read), found "
        f"{found}; the recorded order would read other samples than it names. Restore the object, or re-index "
        f"the data (python -m torch_input_ckpt index ...) and start a new run from it"
    )


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is: a crash right after would otherwise lose it.
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)

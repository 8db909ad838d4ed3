"""One writer per (object prefix, rank) without ``flock``: a lease object taken by a conditional write.

Protocol: the lease of rank ``r`` is the newest of the objects ``input_<r>.lease-<generation>``. A writer takes
it by creating generation ``n + 1`` with ``If-None-Match: *`` (the store refuses the second of two creations
of one name, so of two writers racing for ``n + 1`` exactly one wins), only when generation ``n`` is released,
expired, or held by a process of this host that is no longer running (a killed job restarts at once, as a
``flock`` allows). No object is ever overwritten by anyone but its holder, so no conditional replace is needed.
The holder renews its expiry on a daemon thread and, before each commit, checks that no newer generation
exists (fencing): a writer whose lease was taken over (stalled past its expiry) fails its next save with an
error instead of interleaving its files with the new writer's.

A store that ignores the precondition cannot give the guarantee: taking the lease writes the same generation
twice, and a second creation that succeeds is refused at construction, naming the store.
Limits: expiry is wall-clock time, so hosts' clocks must agree to within the lease's duration.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
import warnings
from typing import Any

from ..errors import InputCheckpointWarning, ObjectExistsError, ObjectStoreError
from .directory import ObjectDirectory, ObjectPath
from .lock import _outside_the_package

__all__ = ["LEASE_SECONDS", "ObjectWriterLease"]

log = logging.getLogger("torch_input_ckpt")

#: How long a lease lasts without renewal; the holder renews it every third of this.
LEASE_SECONDS = 60.0
_FORMAT = "torch_input_ckpt.writer_lease"
_MAX_LEASE_BYTES = 4096
_DIGITS = 8


class ObjectWriterLease:
    """The lease of ``rank`` on an object prefix, taken at construction, held until :meth:`release`.

    Raises:
        RuntimeError: if a live writer holds it (naming its pid, host and when its lease expires), or another
            writer took it at the same moment.
        ValueError: if the store does not honour conditional writes (naming the store).
    """

    def __init__(self, directory: ObjectDirectory, rank: int, seconds: float = LEASE_SECONDS) -> None:
        self.directory, self.rank, self.seconds = directory, rank, seconds
        self._pid = os.getpid()
        self._token = secrets.token_hex(8)
        self._lost: str | None = None
        self._released = False
        self.generation = self._take()
        self.path = self._object(self.generation)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"torch_input_ckpt lease (rank {rank})")
        self._thread.daemon = True
        self._thread.start()

    def _object(self, generation: int) -> ObjectPath:
        return self.directory / f"input_{self.rank}.lease-{generation:0{_DIGITS}d}"

    def _generations(self) -> list[int]:
        stem = f"input_{self.rank}.lease-"
        found = []
        for name in self.directory.names():
            tail = name.removeprefix(stem)
            if tail != name and len(tail) == _DIGITS and tail.isdigit() and tail.isascii():
                found.append(int(tail))
        return sorted(found)

    def _take(self) -> int:
        generations = self._generations()
        newest = generations[-1] if generations else None
        if newest is not None:
            holder = self._read(newest)
            fate = _fate(holder, time.time())
            if fate is None:
                raise RuntimeError(
                    f"{self.directory}: the input checkpoints of rank {self.rank} are already being written by another "
                    f"checkpointer (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, lease "
                    f"{self._object(newest)}, expiring in {float(holder['expires']) - time.time():.0f} s unless "
                    "renewed). Close it first, or give each job its own prefix."
                )
            if fate != "released":
                warnings.warn(
                    f"{self._object(newest)}: taking over the writer lease of rank {self.rank} left by pid "
                    f"{holder.get('pid', '?')} on host {holder.get('host', '?')}, {fate}",
                    InputCheckpointWarning,
                    stacklevel=_outside_the_package(),
                )
        generation = 0 if newest is None else newest + 1
        self._create(generation)
        for old in generations:  # superseded: nobody reads them again
            self._delete_quietly(self._object(old))
        return generation

    def _create(self, generation: int) -> None:
        target, body = self._object(generation), self._body(released=False)
        try:
            self.directory.store.put(str(target), body, if_absent=True)
        except ObjectExistsError:
            raise RuntimeError(
                f"{target}: another checkpointer took the writer lease of rank {self.rank} at the same moment; "
                "give each job its own prefix"
            ) from None
        except NotImplementedError as error:
            raise _no_guarantee(self.directory, f"conditional writes are not supported ({error})") from error
        # The same creation again must be refused; a store that accepts it ignores If-None-Match.
        try:
            self.directory.store.put(str(target), body, if_absent=True)
        except ObjectExistsError:
            return
        self._delete_quietly(target)
        raise _no_guarantee(self.directory, "a second creation of the same object with If-None-Match: * succeeded")

    def _body(self, *, released: bool) -> bytes:
        doc = {
            "format": _FORMAT,
            "rank": self.rank,
            "pid": self._pid,
            "host": socket.gethostname(),
            "token": self._token,
            "expires": 0.0 if released else time.time() + self.seconds,
            "released": released,
        }
        return json.dumps(doc, sort_keys=True).encode() + b"\n"

    def _read(self, generation: int) -> dict[str, Any]:
        """The holder a lease object names ({} with a note when it is unreadable or not a lease: taken over)."""
        path = self._object(generation)
        try:
            doc = json.loads(path.read_bounded(_MAX_LEASE_BYTES))
        except FileNotFoundError:  # deleted since the listing: superseded by a newer generation
            return {"released": True}
        except ObjectStoreError:
            raise  # an outage or no access: never a reason to take the lease
        except (ValueError, OSError) as error:
            return {"unreadable": str(error)[:200]}
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            return {"unreadable": "not a writer lease"}
        return doc

    def check(self) -> None:
        """Before a commit: raise if the lease was taken over by another writer (or could not be renewed)."""
        if self._lost is None and self._object(self.generation + 1).exists():
            self._lost = f"another checkpointer took it over (lease {self._object(self.generation + 1)})"
        if self._lost is not None:
            raise RuntimeError(
                f"{self.directory}: this checkpointer lost the writer lease of rank {self.rank}: {self._lost}; "
                "nothing more is written (the other writer owns the prefix now)"
            )

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if self._object(self.generation + 1).exists():
                    self._lost = f"another checkpointer took it over (lease {self._object(self.generation + 1)})"
                    return
                self.path.write_whole(self._body(released=False))
            except Exception as error:  # a stall or an outage: the next renewal tries again
                log.warning("could not renew the writer lease %s: %r", self.path, error)

    def release(self) -> None:
        """Stop renewing and mark the lease released (so the next writer takes it at once). Safe to call twice;
        a no-op in a forked child (the lease is its parent's)."""
        if self._released or os.getpid() != self._pid:
            return
        self._released = True
        self._stop.set()
        self._thread.join()
        if self._lost is None:
            try:
                self.path.write_whole(self._body(released=True))
            except Exception as error:
                log.warning("could not release the writer lease %s (it expires by itself): %r", self.path, error)

    def _delete_quietly(self, path: ObjectPath) -> None:
        try:
            path.unlink(missing_ok=True)
        except Exception as error:
            log.info("could not delete the superseded writer lease %s: %r", path, error)


def _fate(holder: dict[str, Any], now: float) -> str | None:
    """Why the lease may be taken (None: its holder is alive and it has not expired)."""
    if holder.get("released") is True:
        return "released"
    if "unreadable" in holder:
        return f"an unreadable lease ({holder['unreadable']})"
    expires = holder.get("expires")
    if not isinstance(expires, (int, float)) or isinstance(expires, bool) or expires <= now:
        return "which expired without being renewed (killed, or cut off)"
    pid = holder.get("pid")
    if holder.get("host") == socket.gethostname() and type(pid) is int and pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "a process of this host that is no longer running (killed before close())"
        except OSError:
            pass
    return None


def _no_guarantee(directory: ObjectDirectory, why: str) -> ValueError:
    return ValueError(
        f"{directory}: this object store cannot guarantee one writer per rank ({why}); InputCheckpointer needs "
        "conditional writes (If-None-Match: *, as AWS S3, GCS and recent S3-compatible servers support). Use a "
        "store that honours them, or a local or shared directory (its writer lock is a flock)."
    )

"""One writer per (directory, rank): an exclusive ``flock`` on ``input_<rank>.lock``, held until ``close()``."""

from __future__ import annotations

import errno
import inspect
import json
import os
import socket
import stat
import warnings
from pathlib import Path

from ..errors import InputCheckpointWarning

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is then advisory only (holder recorded, not enforced)
    fcntl = None  # type: ignore[assignment]

__all__ = ["WriterLock"]


class WriterLock:
    """An exclusive lock on ``<directory>/input_<rank>.lock``, taken at construction.

    Two jobs writing the same rank's files into one directory would prune each other's checkpoints and
    interleave their steps; the second one fails fast instead. The kernel releases a ``flock`` when its
    holder dies, so a killed job never blocks its own restart; the file still names the dead holder
    (only :meth:`release` empties it), which is reported with a warning when the lock is taken over.

    Raises:
        RuntimeError: if another live checkpointer holds the lock, naming the directory, the rank and
            the holder's pid and host.
    """

    def __init__(self, directory: Path, rank: int) -> None:
        self.path = directory / f"input_{rank}.lock"
        self._pid = os.getpid()
        # O_NONBLOCK: a FIFO planted at the name must not block the open; a regular file ignores the flag.
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd: int | None = os.open(self.path, flags, 0o644)
        except OSError as error:
            raise ValueError(f"cannot open the writer lock {self.path} ({error.strerror})") from error
        try:
            _check_regular(self._fd, self.path)
            self._take(directory, rank)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    def _take(self, directory: Path, rank: int) -> None:
        assert self._fd is not None
        if fcntl is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = self._holder()
                raise RuntimeError(
                    f"{directory}: the input checkpoints of rank {rank} are already being written by another "
                    f"checkpointer (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, lock "
                    f"{self.path}). Close it first, or give each job its own directory."
                ) from None
        previous = self._holder()
        if previous:
            warnings.warn(
                f"{self.path}: taking over the writer lock of rank {rank} left by pid {previous.get('pid', '?')} on "
                f"host {previous.get('host', '?')}, {_fate(previous)}",
                InputCheckpointWarning,
                stacklevel=_outside_the_package(),
            )
        me = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, me + b"\n", 0)

    def _holder(self) -> dict:
        assert self._fd is not None
        try:
            data = os.pread(self._fd, 4096, 0)
            holder = json.loads(data) if data.strip() else {}
        except (OSError, ValueError):
            return {"pid": "?", "host": "? (unreadable lock file)"}
        return holder if isinstance(holder, dict) else {}

    def release(self) -> None:
        """Empty the file (a clean release) and unlock it. Safe to call twice."""
        if self._fd is None or os.getpid() != self._pid:  # a forked worker shares the lock: never its to drop
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            if fcntl is not None:
                # Explicitly: DataLoader workers forked from us share the descriptor, and closing ours alone
                # would leave the lock held until they exit.
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _outside_the_package() -> int:
    """The ``stacklevel`` of the first caller outside this package (the user's line that built the
    checkpointer), however many of our frames lie between (``InputCheckpointer``, an integration's
    callback). Python 3.12's ``skip_file_prefixes`` does this; 3.10 and 3.11 lack it."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # torch_input_ckpt/, not store/
    here = inspect.currentframe()
    frame, level = (here.f_back if here is not None else None), 1  # level 1: our caller, the one that warns
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _check_regular(fd: int, path: Path) -> None:
    """Refuse a lock "file" that is a FIFO, a device or a socket: ``flock`` on one fails with a bare
    ``EINVAL`` (or locks a device shared by every process), and writing the holder into it would be
    written to the device."""
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        kind = (
            "a FIFO (named pipe)"
            if stat.S_ISFIFO(mode)
            else "a character device"
            if stat.S_ISCHR(mode)
            else "a block device"
            if stat.S_ISBLK(mode)
            else "a socket"
            if stat.S_ISSOCK(mode)
            else "not a regular file"
        )
        raise ValueError(
            f"the writer lock {path} is {kind}, not a regular file; remove it (rm {path}) so that the checkpointer "
            "creates its own, or give the checkpointer another directory"
        )


def _fate(holder: dict) -> str:
    pid, host = holder.get("pid"), holder.get("host")
    if host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool):
        return "which did not release it (killed, or on another host)"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "a process that is no longer running (killed before close())"
    except OSError:
        pass
    return "which did not release it (killed before close(); its pid is now another process's)"

"""What every shard format shares: the two size bounds (and their environment variables), regular files only.

Guarantee: a shard is read only through a descriptor checked to be a regular file's (a FIFO would block a
reader forever, a device never end), refused with an :class:`~torch_input_ckpt.InputStateError` naming the
path and its kind; a bound is read from its environment variable at each use (so workers and the ``index``
command see the same), and a value that is not an int >= 1 is a ``ValueError`` naming the variable.
"""

from __future__ import annotations

import io
import os
import stat

from ...errors import InputStateError

__all__ = [
    "LINE_CHARS_ENV",
    "MAX_LINE_CHARS",
    "MAX_MEMBER_BYTES",
    "MEMBER_BYTES_ENV",
    "bound",
    "check_regular",
    "open_regular",
    "refuse_special",
]

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


def bound(variable: str, default: int) -> int:
    """The bound ``variable`` sets in the environment, else ``default``.

    Raises:
        ValueError: for a value that is not an int >= 1, naming the variable and the default.
    """
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


def open_regular(path: str) -> io.BufferedReader:
    """``path`` opened for binary reading, refused (by :func:`refuse_special`) unless a regular file."""
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


def check_regular(path: str) -> None:
    """Refuse ``path`` unless it is a regular file (for readers that open it themselves, as ``np.load``)."""
    refuse_special(path, os.stat(path).st_mode)

"""Input-checkpoint files: their names, the JSON format, atomic writes, and reading any rank's files."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base.messages import short
from ..errors import InputStateError
from ..state import schema
from ..state.encoding import to_json
from . import checks
from .directory import Location, ObjectDirectory, ObjectPath, as_directory, entry_names

__all__ = [
    "FILE_FORMAT",
    "FILE_FORMAT_VERSION",
    "FileVanishedError",
    "InputCheckpoint",
    "InputFile",
    "MAX_FILE_BYTES",
    "canonical_json",
    "encode_checkpoint",
    "list_steps",
    "parse_json",
    "pinned_steps",
    "prune",
    "read_checkpoint",
    "read_pointer",
    "read_regular_file",
    "remove_pin",
    "remove_stale_temporaries",
    "write_atomic",
    "write_pin",
    "write_pointer",
]

FILE_FORMAT = "torch_input_ckpt.input_checkpoint"
# Bump when the file layout changes; readers treat other versions as unreadable (and fall back).
FILE_FORMAT_VERSION = 1
_EXTENSION = ".json"
_STEP_DIGITS = 8
_NAME = re.compile(r"input_(0|[1-9][0-9]*)-([0-9]+)\.json")
_POINTER = re.compile(r"checkpoint_input_(0|[1-9][0-9]*)")
_TEMP = ".tmp"
_PIN = ".pin"
_PIN_NAME = re.compile(r"input_(0|[1-9][0-9]*)-([0-9]+)\.pin")
# Real files are well under 1 KB; anything larger than this is damage (or an attack), refused before it is
# read, so that a huge or sparse file cannot exhaust memory.
MAX_FILE_BYTES = 64 * 1024 * 1024
_MAX_POINTER_BYTES = 4096
# Nesting and integer sizes beyond these are damage: they would raise RecursionError or ValueError deep in
# the JSON parser or the tensor decoder instead of being skipped with a reason.
MAX_DEPTH = 64
MAX_INT_DIGITS = 100
# Steps beyond this are not a real job's (and would break arithmetic downstream); world sizes: schema's.
MAX_STEP = (1 << 63) - 1
# The latest wall_time datetime can show (9999-12-31): a larger or non-finite one is damage.
_MAX_WALL_TIME = 253402300799.0
# How often a reader starts over when a file vanished under it (pruned by a concurrent saver).
READ_ATTEMPTS = 20
_SHA_PREFIX = b'{"sha256":"'
_SHA_END = len(_SHA_PREFIX) + 64


@dataclass(frozen=True, slots=True)
class InputFile:
    """The one place that builds and parses input-checkpoint file names: ``input_<rank>-<step>.json``.

    Attributes:
        rank: The rank that wrote the file.
        step: The global step it was saved at (zero-padded to 8 digits in the name).
    """

    rank: int
    step: int

    @property
    def name(self) -> str:
        """The file name, e.g. ``input_0-00000100.json``."""
        return f"input_{self.rank}-{self.step:0{_STEP_DIGITS}d}{_EXTENSION}"

    @classmethod
    def parse(cls, name: str) -> InputFile | None:
        """The rank and step of a name this library writes, else None (any other file is not ours)."""
        match = _NAME.fullmatch(name)
        if match is None:
            return None
        parsed = cls(int(match[1]), int(match[2]))
        # Only the exact spelling we produce counts, so that e.g. "input_0-1.json" is never ours to delete.
        return parsed if parsed.name == name else None

    @property
    def pin_name(self) -> str:
        """The marker that pins this file (never pruned): ``input_<rank>-<step>.pin``."""
        return self.name.removesuffix(_EXTENSION) + _PIN

    @staticmethod
    def pointer_name(rank: int) -> str:
        """The latest-pointer file of ``rank``: ``checkpoint_input_<rank>``."""
        return f"checkpoint_input_{rank}"

    @staticmethod
    def parse_pointer_name(name: str) -> int | None:
        """The rank of a pointer file name this library writes, else None."""
        match = _POINTER.fullmatch(name)
        return None if match is None else int(match[1])

    @staticmethod
    def temp_name(final_name: str, token: str) -> str:
        """A hidden temporary name in the same directory: ``.<name>.tmp-<token>``, the token random, so that
        nobody can plant a file (or symlink) at the name before we create it."""
        return f".{final_name}{_TEMP}-{token}"

    @staticmethod
    def is_temp_of_rank(name: str, rank: int) -> bool:
        """Whether ``name`` is a temporary this library left behind for ``rank`` (e.g. killed mid-write).

        Also recognises the ``.<name>.tmp<pid>`` temporaries of earlier versions."""
        stem, sep, tail = name.rpartition(_TEMP)
        token = tail[1:] if tail.startswith("-") else tail
        if not sep or not token.isalnum() or not token.isascii() or not stem.startswith("."):
            return False
        final = stem[1:]
        parsed = InputFile.parse(final)
        return (parsed is not None and parsed.rank == rank) or final == InputFile.pointer_name(rank)


@dataclass(frozen=True, slots=True)
class InputCheckpoint:
    """One input-checkpoint file, read and verified.

    Attributes:
        path: The file (an :class:`~torch_input_ckpt.store.directory.ObjectPath` on an object store).
        rank: The rank that wrote it.
        world_size: The number of ranks when it was written (None if unknown).
        step: The global step it was saved at.
        wall_time: ``time.time()`` when the state was taken.
        states: Component name -> its ``state_dict()`` (tensors still in their JSON form; see
            :func:`~torch_input_ckpt.state.encoding.decode_tensors`).
        external: Descriptions of pipeline parts whose state could not be captured.
        size: The file's size in bytes.
        provenance: What the checkpointer recorded about the run (the previous save's step and batch
            counts, the steps skipped on a restore: see ``store/lineage.py``), or None in an older file.
    """

    path: Path | ObjectPath
    rank: int
    world_size: int | None
    step: int
    wall_time: float
    states: dict[str, Any]
    external: list[str]
    size: int
    provenance: dict[str, Any] | None = None


# -- encoding --------------------------------------------------------------------------------------


def encode_checkpoint(
    *,
    rank: int,
    world_size: int | None,
    step: int,
    states: Mapping[str, Any],
    external: list[str],
    provenance: Mapping[str, Any] | None = None,
) -> bytes:
    """The bytes of one input-checkpoint file: canonical JSON carrying a sha256 of everything else.

    Raises:
        TypeError: if a state holds something other than JSON types or CPU tensors, naming its key.
    """
    body = {
        "format": FILE_FORMAT,
        "version": FILE_FORMAT_VERSION,
        "rank": rank,
        "world_size": world_size,
        "step": step,
        "wall_time": time.time(),
        "external": list(external),
        "states": {name: to_json(state, f"{name}.state_dict()") for name, state in states.items()},
        **({} if provenance is None else {"provenance": dict(provenance)}),
    }
    canonical = canonical_json(body)
    digest = hashlib.sha256(canonical).hexdigest()
    # The checksum goes first, then the canonical body verbatim: one json.dumps per save.
    return b'{"sha256":"' + digest.encode() + b'",' + canonical[1:] + b"\n"


def canonical_json(body: Mapping[str, Any]) -> bytes:
    """The canonical bytes of a JSON document (sorted keys, no spaces, ASCII): what a checkpoint's and an index's
    sha256 covers."""
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# -- atomic writes -----------------------------------------------------------------------------------


def write_atomic(path: Path | ObjectPath, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash at any instant leaves either the old file or the new one.

    Writes a temporary name in the same directory, fsyncs it, renames it over ``path`` and fsyncs
    the directory (so the rename itself survives a power loss). An object is written whole by one request,
    which is atomic by the protocol.
    """
    if isinstance(path, ObjectPath):
        path.write_whole(data)
        return
    temp, fd = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new temporary file next to ``path``: a random name, created exclusively and never through a symlink
    (``O_EXCL|O_NOFOLLOW``), so a file planted in a shared directory is never written through."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temp = path.with_name(InputFile.temp_name(path.name, _random_token()))
        try:
            return temp, os.open(temp, flags, 0o644)  # the umask applies, as for any file the user writes
        except FileExistsError:
            continue  # someone else's file (or a planted one) at that name: leave it alone, draw again
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {path} after 100 random draws")


def _random_token() -> str:
    return secrets.token_hex(8)


def _fsync_directory(directory: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory for fsync; its renames are journaled
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as error:
        # Some file systems (e.g. some network mounts) cannot fsync a directory; their renames are as
        # durable as they get.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def write_pointer(directory: Location, rank: int, step: int) -> None:
    """Atomically point ``checkpoint_input_<rank>`` at the file of ``step`` (once that file is durable)."""
    name = InputFile(rank, step).name
    text = (
        f"# torch_input_ckpt: newest input checkpoint of rank {rank} (written once that file was durable)\n"
        f"latest: {name}\n"
        f"step: {step}\n"
    )
    write_atomic(directory / InputFile.pointer_name(rank), text.encode())


def remove_stale_temporaries(directory: Location, rank: int) -> None:
    """Delete temporaries of ``rank`` left by a process killed mid-write (only names this library makes; an
    object store has none: its writes make no temporary)."""
    if isinstance(directory, ObjectDirectory):
        return
    for entry in os.scandir(directory):
        if InputFile.is_temp_of_rank(entry.name, rank):
            Path(entry.path).unlink(missing_ok=True)


def pinned_steps(directory: str | os.PathLike[str] | ObjectDirectory, rank: int) -> list[int]:
    """The sorted steps of ``rank`` that are pinned (see :func:`write_pin`)."""
    found = []
    for name, _ in entry_names(as_directory(directory)):
        match = _PIN_NAME.fullmatch(name)
        if match is not None and int(match[1]) == rank and InputFile(rank, int(match[2])).pin_name == name:
            found.append(int(match[2]))
    return sorted(found)


def write_pin(directory: Location, rank: int, step: int) -> None:
    """Durably mark the checkpoint of ``step`` as pinned: :func:`prune` never deletes it."""
    write_atomic(directory / InputFile(rank, step).pin_name, f"pinned input checkpoint of step {step}\n".encode())


def remove_pin(directory: Location, rank: int, step: int) -> bool:
    """Unpin ``step`` (its file is then pruned like any other). Returns whether it was pinned."""
    path = directory / InputFile(rank, step).pin_name
    existed = path.is_file()
    path.unlink(missing_ok=True)
    return existed


def prune(directory: Location, rank: int, newest: int, keep_last: int | None) -> list[str]:
    """After ``newest`` is durable and pointed to: delete ``rank``'s files beyond the ``keep_last`` newest,
    and files newer than ``newest`` (left from a run restored to an earlier step; never restorable again).
    Pinned steps are never deleted and do not count against ``keep_last``.

    Returns:
        ``"<file>: <error>"`` for each file that could not be deleted. The save itself is committed, so a
        failed deletion is not a failed save: the caller warns.
    """
    steps, pinned = _steps_and_pins(directory, rank)
    kept = [s for s in steps if s <= newest and s not in pinned]
    if keep_last is not None:
        kept = kept[-keep_last:]
    kept += pinned
    failed = []
    for step in steps:
        if step not in kept:
            path = directory / InputFile(rank, step).name
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                failed.append(f"{path}: {error}")
    return failed


def _steps_and_pins(directory: Location, rank: int) -> tuple[list[int], set[int]]:
    """``rank``'s steps (as :func:`list_steps`) and pinned steps (as :func:`pinned_steps`), from one listing."""
    steps, pinned = [], set()
    for name, is_file in entry_names(directory):
        parsed = InputFile.parse(name)
        if parsed is not None and parsed.rank == rank and is_file:
            steps.append(parsed.step)
        match = _PIN_NAME.fullmatch(name)
        if match is not None and int(match[1]) == rank and InputFile(rank, int(match[2])).pin_name == name:
            pinned.add(int(match[2]))
    return sorted(steps), pinned


# -- reading -------------------------------------------------------------------------------------


class FileVanishedError(InputStateError):
    """A file that was listed no longer exists (e.g. pruned by a saver running at the same time)."""


def list_steps(directory: str | os.PathLike[str] | ObjectDirectory) -> dict[int, list[int]]:
    """Rank -> sorted steps of the input-checkpoint files in ``directory`` (other files are ignored).

    A symlink with one of our names is listed (and refused when read), so that it is reported, not hidden.
    """
    found: dict[int, list[int]] = {}
    for name, is_file in entry_names(as_directory(directory)):
        parsed = InputFile.parse(name)
        if parsed is not None and is_file:
            found.setdefault(parsed.rank, []).append(parsed.step)
    return {rank: sorted(steps) for rank, steps in sorted(found.items())}


def read_regular_file(path: Path | ObjectPath, limit: int) -> bytes:
    """The bytes of ``path``, which must be a regular file (a symlink is not followed) of at most ``limit``
    bytes, checked with ``fstat`` before reading (an object: its size, before its bytes are fetched).

    Raises:
        FileNotFoundError: if it does not exist.
        InputStateError: naming the file, for a symlink, a non-regular file, an oversized or unreadable one.
    """
    if isinstance(path, ObjectPath):
        return path.read_bounded(limit)
    # O_NONBLOCK: a FIFO planted at our name must not hang the reader; regular files ignore the flag.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as error:
        if error.errno == errno.ELOOP or path.is_symlink():
            raise InputStateError(f"{path}: is a symbolic link (never followed)") from error
        raise InputStateError(f"{path}: unreadable ({error.strerror})") from error
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InputStateError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise InputStateError(f"{path}: {info.st_size} bytes, more than the bound of {limit} bytes")
        try:
            data = file.read(limit + 1)
        except OSError as error:
            raise InputStateError(f"{path}: unreadable ({error.strerror})") from error
    if len(data) > limit:  # grew after the fstat
        raise InputStateError(f"{path}: more than the bound of {limit} bytes")
    return data


def read_pointer(directory: str | os.PathLike[str] | ObjectDirectory, rank: int) -> int | None:
    """The step ``checkpoint_input_<rank>`` names, or None if there is no pointer.

    Raises:
        InputStateError: if the pointer is unreadable or malformed (naming the file and the reason; its
            content is never echoed, only its length and hash, in case it is a link to a secret).
    """
    path = as_directory(directory) / InputFile.pointer_name(rank)
    try:
        data = read_regular_file(path, _MAX_POINTER_BYTES)
    except FileNotFoundError:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    entries = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(":") for line in text.splitlines())
        if sep and not key.lstrip().startswith("#")
    )
    parsed = InputFile.parse(entries.get("latest", ""))
    if parsed is None or parsed.rank != rank or entries.get("step") != str(parsed.step):
        raise InputStateError(
            f"{path}: malformed pointer (expected a line 'latest: input_{rank}-<step>{_EXTENSION}' and a "
            f"matching 'step: <step>'; found {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:16]})"
        )
    return parsed.step


def read_checkpoint(path: str | os.PathLike[str] | ObjectPath) -> InputCheckpoint:
    """Read and verify one input-checkpoint file, of any rank.

    Every field is checked against its schema (exact types, ranges, the checksum over the file's own
    canonical bytes), so that a file accepted here is one restore can use.

    Raises:
        FileVanishedError: if the file does not exist.
        InputStateError: naming the file and why it cannot be used (missing, empty, oversized, a symlink,
            truncated or garbled JSON, checksum mismatch, another format or version, fields out of range).
    """
    path = path if isinstance(path, ObjectPath) else Path(path)

    def damaged(reason: str) -> InputStateError:
        return InputStateError(f"{path}: {reason}")

    try:
        data = read_regular_file(path, MAX_FILE_BYTES)
    except FileNotFoundError as error:
        raise FileVanishedError(f"{path}: file does not exist") from error
    if not data.strip():
        raise damaged("empty file")
    try:
        doc = parse_json(data)
    except (ValueError, RecursionError, MemoryError, OverflowError) as error:  # incl. JSONDecodeError
        raise damaged(f"not valid JSON, truncated or garbled ({short(error)})") from error
    if not isinstance(doc, dict):
        raise damaged(f"not an input checkpoint (a JSON {type(doc).__name__}, expected an object)")
    if doc.get("format") != FILE_FORMAT:
        raise damaged(f"not an input checkpoint (format={short(doc.get('format'))}, expected {FILE_FORMAT!r})")
    version = doc.get("version")
    if type(version) is not int or version != FILE_FORMAT_VERSION:
        raise damaged(f"file format version {short(version)} is not supported (expected {FILE_FORMAT_VERSION})")
    if not _signed(data, doc):
        raise damaged("checksum mismatch (the file was altered or partly written)")
    try:
        checkpoint = _checkpoint(path, doc, len(data))
    except (KeyError, TypeError, ValueError) as error:
        raise damaged(f"malformed checkpoint ({short(error)})") from error
    for name, state in checkpoint.states.items():
        # Our own components' states, as their loaders will check them: inspect's "ok" is restore's.
        schema.validate(state, f"{path}: component {name!r}")
        checks.check_state(state, f"{path}: component {name!r}")
    named = InputFile.parse(path.name)
    if named is not None and (named.rank, named.step) != (checkpoint.rank, checkpoint.step):
        raise damaged(
            f"the file holds rank {checkpoint.rank}, step {checkpoint.step}, but its name says "
            f"rank {named.rank}, step {named.step}"
        )
    return checkpoint


def parse_json(data: bytes) -> Any:
    """JSON with duplicate keys, huge integers and deep nesting refused (each raises ``ValueError``)."""
    doc = json.loads(data.decode("utf-8"), object_pairs_hook=_unique_keys, parse_int=_bounded_int)
    if _depth(doc) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return doc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {short(twice)}")
    return out


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits (more than {MAX_INT_DIGITS})")
    return int(text)


def _depth(doc: Any) -> int:
    """How deeply ``doc`` nests (up to ``MAX_DEPTH + 1``), without recursion, so the measure cannot overflow."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        obj, depth = stack.pop()
        if isinstance(obj, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((item, depth + 1) for item in (obj.values() if isinstance(obj, dict) else obj))
    return deepest


def _signed(data: bytes, doc: dict[str, Any]) -> bool:
    """Whether the file is exactly what :func:`encode_checkpoint` writes for ``doc``: the checksum first,
    then the canonical bytes it covers (so neither duplicate keys nor reformatting pass)."""
    claimed = doc.pop("sha256", None)
    if not isinstance(claimed, str) or not data.startswith(_SHA_PREFIX) or data[_SHA_END : _SHA_END + 2] != b'",':
        return False
    body = b"{" + data[_SHA_END + 2 :].removesuffix(b"\n")
    return data[len(_SHA_PREFIX) : _SHA_END] == claimed.encode() and (
        hashlib.sha256(body).hexdigest() == claimed and canonical_json(doc) == body
    )


def _checkpoint(path: Path | ObjectPath, doc: Mapping[str, Any], size: int) -> InputCheckpoint:
    """The checked fields; raises ``KeyError``/``TypeError``/``ValueError`` naming the one that is wrong."""
    world_size = doc["world_size"]
    if world_size is not None:
        world_size = _bounded(doc, "world_size", 1, schema.MAX_WORLD_SIZE)
    rank = _bounded(doc, "rank", 0, (world_size or schema.MAX_WORLD_SIZE) - 1)
    wall_time = _typed(doc, "wall_time", (int, float))
    if not 0 <= wall_time <= _MAX_WALL_TIME:  # also refuses NaN
        raise ValueError(f"wall_time={wall_time!r} is not a time between 1970 and 9999")
    external = _typed(doc, "external", list)
    if not all(isinstance(item, str) for item in external):
        raise TypeError(f"external={short(external)} should be a list of strings")
    states = _typed(doc, "states", dict)
    provenance = _typed(doc, "provenance", dict) if "provenance" in doc else None
    return InputCheckpoint(
        path=path,
        rank=rank,
        world_size=world_size,
        step=_bounded(doc, "step", 0, MAX_STEP),
        wall_time=float(wall_time),
        states=states,
        external=external,
        size=size,
        provenance=provenance,
    )


def _typed(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{key}={short(value)} has the wrong type")
    return value


def _bounded(doc: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = _typed(doc, key, int)
    if not low <= value <= high:
        raise ValueError(f"{key}={short(value)} is out of range (expected {low} to {high})")
    return value  # type: ignore[no-any-return]

"""Input-checkpoint files: their names, the JSON format, atomic writes, and reading any rank's files."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .encoding import to_json
from .errors import InputStateError

__all__ = [
    "FILE_FORMAT",
    "FILE_FORMAT_VERSION",
    "InputCheckpoint",
    "InputFile",
    "Newest",
    "encode_checkpoint",
    "find_newest",
    "list_steps",
    "prune",
    "read_checkpoint",
    "read_pointer",
    "remove_stale_temporaries",
    "write_atomic",
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
    def temp_name(final_name: str) -> str:
        """A hidden temporary name in the same directory, unique to this process."""
        return f".{final_name}{_TEMP}{os.getpid()}"

    @staticmethod
    def is_temp_of_rank(name: str, rank: int) -> bool:
        """Whether ``name`` is a temporary this library left behind for ``rank`` (e.g. killed mid-write)."""
        stem, sep, pid = name.rpartition(_TEMP)
        if not sep or not pid.isdigit() or not stem.startswith("."):
            return False
        final = stem[1:]
        parsed = InputFile.parse(final)
        return (parsed is not None and parsed.rank == rank) or final == InputFile.pointer_name(rank)


@dataclass(frozen=True, slots=True)
class InputCheckpoint:
    """One input-checkpoint file, read and verified.

    Attributes:
        path: The file.
        rank: The rank that wrote it.
        world_size: The number of ranks when it was written (None if unknown).
        step: The global step it was saved at.
        wall_time: ``time.time()`` when the state was taken.
        states: Component name -> its ``state_dict()`` (tensors still in their JSON form; see
            :func:`~torch_input_ckpt.encoding.decode_tensors`).
        external: Descriptions of pipeline parts whose state could not be captured.
        size: The file's size in bytes.
    """

    path: Path
    rank: int
    world_size: int | None
    step: int
    wall_time: float
    states: dict[str, Any]
    external: list[str]
    size: int


@dataclass(frozen=True, slots=True)
class Newest:
    """What restore would pick for one rank: the newest valid checkpoint, and what was skipped on the way.

    Attributes:
        checkpoint: The newest valid checkpoint, or None if there is none.
        problems: ``"<file>: <reason>"`` for each damaged file or pointer met, newest first.
        uncommitted: Steps on disk newer than the pointer (a save interrupted before its pointer update).
    """

    checkpoint: InputCheckpoint | None
    problems: list[str]
    uncommitted: list[int]


# -- encoding --------------------------------------------------------------------------------------


def encode_checkpoint(
    *, rank: int, world_size: int | None, step: int, states: Mapping[str, Any], external: list[str]
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
    }
    canonical = _canonical(body)
    digest = hashlib.sha256(canonical).hexdigest()
    # The checksum goes first, then the canonical body verbatim: one json.dumps per save.
    return b'{"sha256":"' + digest.encode() + b'",' + canonical[1:] + b"\n"


def _canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# -- atomic writes -----------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash at any instant leaves either the old file or the new one.

    Writes a temporary name in the same directory, fsyncs it, renames it over ``path`` and fsyncs
    the directory (so the rename itself survives a power loss).
    """
    temp = path.with_name(InputFile.temp_name(path.name))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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


def write_pointer(directory: Path, rank: int, step: int) -> None:
    """Atomically point ``checkpoint_input_<rank>`` at the file of ``step`` (once that file is durable)."""
    name = InputFile(rank, step).name
    text = (
        f"# torch_input_ckpt: newest input checkpoint of rank {rank} (written once that file was durable)\n"
        f"latest: {name}\n"
        f"step: {step}\n"
    )
    write_atomic(directory / InputFile.pointer_name(rank), text.encode())


def remove_stale_temporaries(directory: Path, rank: int) -> None:
    """Delete temporaries of ``rank`` left by a process killed mid-write (only names this library makes)."""
    for entry in os.scandir(directory):
        if InputFile.is_temp_of_rank(entry.name, rank):
            Path(entry.path).unlink(missing_ok=True)


def prune(directory: Path, rank: int, newest: int, keep_last: int | None) -> None:
    """After ``newest`` is durable and pointed to: delete ``rank``'s files beyond the ``keep_last`` newest,
    and files newer than ``newest`` (left from a run restored to an earlier step; never restorable again)."""
    steps = list_steps(directory).get(rank, [])
    kept = [s for s in steps if s <= newest]
    if keep_last is not None:
        kept = kept[-keep_last:]
    for step in steps:
        if step not in kept:
            (directory / InputFile(rank, step).name).unlink(missing_ok=True)


# -- reading -------------------------------------------------------------------------------------


def list_steps(directory: str | os.PathLike[str]) -> dict[int, list[int]]:
    """Rank -> sorted steps of the input-checkpoint files in ``directory`` (other files are ignored)."""
    found: dict[int, list[int]] = {}
    for entry in os.scandir(directory):
        parsed = InputFile.parse(entry.name)
        if parsed is not None and entry.is_file():
            found.setdefault(parsed.rank, []).append(parsed.step)
    return {rank: sorted(steps) for rank, steps in sorted(found.items())}


def read_pointer(directory: str | os.PathLike[str], rank: int) -> int | None:
    """The step ``checkpoint_input_<rank>`` names, or None if there is no pointer.

    Raises:
        InputStateError: if the pointer is unreadable or malformed (naming the file and the reason).
    """
    path = Path(directory) / InputFile.pointer_name(rank)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise InputStateError(f"{path}: unreadable pointer ({error})") from error
    entries = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(":") for line in text.splitlines())
        if sep and not key.lstrip().startswith("#")
    )
    parsed = InputFile.parse(entries.get("latest", ""))
    if parsed is None or parsed.rank != rank or entries.get("step") != str(parsed.step):
        raise InputStateError(
            f"{path}: malformed pointer (expected a line 'latest: input_{rank}-<step>{_EXTENSION}' and a "
            f"matching 'step: <step>'; found {text[:120]!r})"
        )
    return parsed.step


def read_checkpoint(path: str | os.PathLike[str]) -> InputCheckpoint:
    """Read and verify one input-checkpoint file, of any rank.

    Raises:
        InputStateError: naming the file and why it cannot be used (missing, empty, truncated or
            garbled JSON, checksum mismatch, another format or version, fields that do not match).
    """
    path = Path(path)

    def damaged(reason: str) -> InputStateError:
        return InputStateError(f"{path}: {reason}")

    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise damaged("file does not exist") from error
    except OSError as error:
        raise damaged(f"unreadable ({error})") from error
    if not data.strip():
        raise damaged("empty file")
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise damaged(f"not valid JSON, truncated or garbled ({error})") from error
    if not isinstance(doc, dict):
        raise damaged(f"not an input checkpoint (a JSON {type(doc).__name__}, expected an object)")
    claimed = doc.pop("sha256", None)
    if doc.get("format") != FILE_FORMAT:
        raise damaged(f"not an input checkpoint (format={doc.get('format')!r}, expected {FILE_FORMAT!r})")
    if doc.get("version") != FILE_FORMAT_VERSION:
        raise damaged(
            f"file format version {doc.get('version')!r} is not supported (expected {FILE_FORMAT_VERSION})"
        )
    if not isinstance(claimed, str) or hashlib.sha256(_canonical(doc)).hexdigest() != claimed:
        raise damaged("checksum mismatch (the file was altered or partly written)")
    try:
        checkpoint = InputCheckpoint(
            path=path,
            rank=_typed(doc, "rank", int),
            world_size=_typed(doc, "world_size", (int, type(None))),
            step=_typed(doc, "step", int),
            wall_time=float(_typed(doc, "wall_time", (int, float))),
            states=_typed(doc, "states", dict),
            external=_typed(doc, "external", list),
            size=len(data),
        )
    except (KeyError, TypeError) as error:
        raise damaged(f"malformed checkpoint ({error})") from error
    named = InputFile.parse(path.name)
    if named is not None and (named.rank, named.step) != (checkpoint.rank, checkpoint.step):
        raise damaged(
            f"the file holds rank {checkpoint.rank}, step {checkpoint.step}, but its name says "
            f"rank {named.rank}, step {named.step}"
        )
    return checkpoint


def _typed(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{key}={value!r} has the wrong type")
    return value


def find_newest(directory: str | os.PathLike[str], rank: int) -> Newest:
    """The newest valid checkpoint of ``rank`` in ``directory``, as restore picks it.

    The pointer marks the newest *committed* save: files newer than it (a save killed before its
    pointer update, or leftovers of a run restored to an earlier step) are passed over. A pointer
    naming a missing file, and damaged files, are reported and the next older file is tried. With
    no pointer (e.g. killed during the very first save), all files are candidates.
    """
    directory = Path(directory)
    steps = list_steps(directory).get(rank, [])
    problems: list[str] = []
    try:
        pointed = read_pointer(directory, rank)
    except InputStateError as error:
        problems.append(str(error))
        pointed = None
    uncommitted: list[int] = []
    if pointed is not None:
        uncommitted = [s for s in steps if s > pointed]
        steps = [s for s in steps if s <= pointed]
        if pointed not in steps:
            pointer = directory / InputFile.pointer_name(rank)
            problems.append(f"{pointer}: names {InputFile(rank, pointed).name}, which does not exist")
    for step in reversed(steps):
        try:
            return Newest(read_checkpoint(directory / InputFile(rank, step).name), problems, uncommitted)
        except InputStateError as error:
            problems.append(str(error))
    return Newest(None, problems, uncommitted)

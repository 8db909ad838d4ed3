"""Which input checkpoint a restore of 1..W ranks loads: one pure plan, made once, applied by every rank.

Invariant: a plan names one step at which *every* rank of the world that saved it has a valid, committed
file, and for each new rank the one file it loads (its own if that rank existed, else rank 0's). A
single rank is the case world 1 = saved world 1; another world size is resharding, allowed only for
states holding a global position on which all old ranks agree.

Cost: one directory listing, one pointer per old rank, and at most one file per old rank per candidate
step, on the planning rank only; every other rank reads just the file the plan names (O(W) in total).
The planner does no collective: the checkpointer makes the plan on one rank, shares it, and applies it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputStateError, ObjectStoreError
from ..state.schema import positions, reshard_blocker
from . import files
from .directory import Location, ObjectDirectory, ObjectPath, as_directory, entry_names, is_remote
from .files import InputCheckpoint, InputFile

__all__ = ["PARALLEL_READS", "PlanError", "RestorePlan", "check_reshardable", "plan_restore"]

#: On an object store, how many of a plan's reads are in flight at once (below the S3 client's pool of 10
#: connections, so that no read waits for a connection past its connect timeout).
PARALLEL_READS = 8


class PlanError(InputStateError):
    """No restore plan fits; the message names the directory, ranks, steps and every problem met.

    Attributes:
        problems: ``"<file>: <reason>"`` for each damaged or missing file met.
        uncommitted: ``(rank, step)`` of files newer than their rank's pointer.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = (), uncommitted: tuple[tuple[int, int], ...] = ()):
        super().__init__(message)
        self.problems = problems
        self.uncommitted = uncommitted


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """What a restore loads.

    Attributes:
        step: The step restored.
        saved_world: The number of ranks that wrote it.
        problems: ``"<file>: <reason>"`` for each damaged or missing file passed over, newest first.
        uncommitted: ``(rank, step)`` of files newer than their rank's pointer (saves cut short), passed over.
        reads: Files and pointers the planner read (to measure that a restore stays O(W)).
        checkpoint: The file the planning rank loads, already read and verified (None once shared).
    """

    step: int
    saved_world: int
    problems: tuple[str, ...] = ()
    uncommitted: tuple[tuple[int, int], ...] = ()
    reads: int = 0
    checkpoint: InputCheckpoint | None = field(default=None, compare=False)

    def source_rank(self, rank: int) -> int:
        """The old rank whose file new rank ``rank`` loads."""
        return rank if rank < self.saved_world else 0

    def path(self, directory: str | os.PathLike[str] | ObjectDirectory, rank: int) -> Path | ObjectPath:
        """The file new rank ``rank`` loads."""
        return as_directory(directory) / InputFile(self.source_rank(rank), self.step).name

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain values, without the file already read: what is sent to the other ranks."""
        return {
            "step": self.step,
            "saved_world": self.saved_world,
            "problems": list(self.problems),
            "uncommitted": [list(item) for item in self.uncommitted],
            "reads": self.reads,
        }

    @classmethod
    def from_dict(cls, plain: Mapping[str, Any]) -> RestorePlan:
        """The plan :meth:`to_dict` made."""
        return cls(
            step=plain["step"],
            saved_world=plain["saved_world"],
            problems=tuple(plain["problems"]),
            uncommitted=tuple((r, s) for r, s in plain["uncommitted"]),
            reads=plain["reads"],
        )


def plan_restore(
    directory: str | os.PathLike[str] | ObjectDirectory,
    world_size: int,
    step: int | None = None,
    *,
    rank: int = 0,
    alone: bool = False,
) -> RestorePlan | None:
    """Plan the restore of ``rank`` in a world of ``world_size`` ranks: the newest step (or exactly
    ``step``) that every rank of its saved world has valid and committed, falling back past damage.

    Args:
        directory: The checkpoint directory.
        world_size: The number of ranks restoring.
        step: Exactly this step (no fallback), or None for the newest.
        rank: The rank whose file the plan's ``checkpoint`` holds.
        alone: Plan from ``rank``'s own files only (a rank whose world is unknown, or ``inspect`` per rank).

    Returns:
        The plan, or None when the directory holds no input checkpoint at all (nor ``rank``'s pointer).

    Raises:
        InputStateError: naming the directory, the ranks and steps, and every problem met, when no step
            fits (``step`` missing or damaged on some rank, nothing valid) or the state cannot be resharded.
    """
    directory = as_directory(directory)
    seen = None
    for attempt in range(files.READ_ATTEMPTS):
        reader = _Reader(directory)
        planner = _Planner(directory, reader, world_size, rank, alone, exact=step is not None)
        try:
            plan = planner.plan(step)
        except InputStateError:
            if not _again(reader, planner, seen, attempt):
                raise
        else:
            if not _again(reader, planner, seen, attempt):
                return plan
        seen = planner.signature
    raise AssertionError("unreachable")  # pragma: no cover


def _again(reader: _Reader, planner: _Planner, seen: object, attempt: int) -> bool:
    """Whether to plan again: a file vanished under us (pruned by a saver committing a newer step) and the
    directory has changed since the last look. Then a reader racing a saver gets the newest committed
    step, never an older one or none; a pointer that really names a missing file costs one more look."""
    return reader.vanished and planner.signature != seen and attempt < files.READ_ATTEMPTS - 1


class _Reader:
    """Reads and verifies each file at most once, remembering what was wrong with the damaged ones.

    On an object store the reads a plan is about to make (every old rank's pointer; every old rank's file of a
    candidate step) are fetched :data:`PARALLEL_READS` at a time, each request's latency overlapping the others'.
    A failure of the store itself (an outage past the retries, no access) is raised, never taken for damage.
    """

    def __init__(self, directory: Location) -> None:
        self.directory = directory
        self.problems: list[str] = []
        self.reads = 0
        self.vanished = False
        self._cache: dict[tuple[int, int], InputCheckpoint | None] = {}
        self._ahead: dict[tuple[str, int, int], Future[Any]] = {}

    def prefetch_pointers(self, ranks: list[int]) -> None:
        self._prefetch({("pointer", r, 0): functools.partial(files.read_pointer, self.directory, r) for r in ranks})

    def prefetch(self, ranks: Any, step: int) -> None:
        self._prefetch(
            {
                ("file", r, step): functools.partial(files.read_checkpoint, self.directory / InputFile(r, step).name)
                for r in ranks
                if (r, step) not in self._cache
            }
        )

    def _prefetch(self, jobs: dict[tuple[str, int, int], Any]) -> None:
        if not is_remote(self.directory) or len(jobs) < 2:
            return
        with ThreadPoolExecutor(min(PARALLEL_READS, len(jobs)), thread_name_prefix="torch_input_ckpt plan") as pool:
            self._ahead.update({key: pool.submit(job) for key, job in jobs.items()})

    def _fetch(self, key: tuple[str, int, int], read: Any) -> Any:
        ahead = self._ahead.pop(key, None)
        return read() if ahead is None else ahead.result()

    def pointer(self, rank: int) -> int | None:
        self.reads += 1
        try:
            return self._fetch(("pointer", rank, 0), lambda: files.read_pointer(self.directory, rank))  # type: ignore[no-any-return]
        except ObjectStoreError:
            raise
        except InputStateError as error:
            self.problems.append(str(error))
            return None

    def read(self, rank: int, step: int) -> InputCheckpoint | None:
        key = (rank, step)
        if key not in self._cache:
            self.reads += 1
            path = self.directory / InputFile(rank, step).name
            try:
                self._cache[key] = self._fetch(("file", rank, step), lambda: files.read_checkpoint(path))
            except ObjectStoreError:
                raise
            except files.FileVanishedError as error:
                self.vanished = True
                self.problems.append(str(error))
                self._cache[key] = None
            except InputStateError as error:
                self.problems.append(str(error))
                self._cache[key] = None
        return self._cache[key]


class _Planner:
    def __init__(
        self, directory: Location, reader: _Reader, world_size: int, rank: int, alone: bool, exact: bool
    ) -> None:
        self.directory, self.reader, self.world, self.rank, self.alone = directory, reader, world_size, rank, alone
        listing, pointer_ranks = _scan(directory)
        if alone:
            listing = {rank: listing[rank]} if rank in listing else {}
            pointer_ranks &= {rank}
        self.listing = listing
        # One rank's own history (alone, or a world of one whose directory holds only its files): the
        # messages then speak of this rank's steps.
        self.single = alone or (world_size == 1 and set(listing) | pointer_ranks <= {rank})
        self.committed: dict[int, list[int]] = {}
        self.uncommitted: list[tuple[int, int]] = []
        self.pointed: dict[int, int | None] = {}
        # An exact step is restored whatever the pointers say (e.g. a model checkpoint's, after a rollback).
        ranks = [] if exact else sorted(set(listing) | pointer_ranks)
        reader.prefetch_pointers(ranks)
        for r in ranks:
            self._commit_point(r, listing.get(r, []))
        self.signature = (listing, self.pointed)

    def _commit_point(self, rank: int, steps: list[int]) -> None:
        """Steps up to the rank's pointer: a newer file is a save killed before its commit."""
        pointed = self.pointed[rank] = self.reader.pointer(rank)
        if pointed is None:
            self.committed[rank] = steps
            return
        self.uncommitted += [(rank, s) for s in steps if s > pointed]
        self.committed[rank] = [s for s in steps if s <= pointed]
        if pointed not in steps:
            self.reader.vanished = True  # pruned after the pointer moved on, or really missing: look again
            pointer = self.directory / InputFile.pointer_name(rank)
            self.reader.problems.append(f"{pointer}: names {InputFile(rank, pointed).name}, which does not exist")

    def plan(self, step: int | None) -> RestorePlan | None:
        if not self.listing and step is None and not self.reader.problems:
            return None
        if step is not None:
            return self._try(step, exact=True)
        for candidate in sorted(set().union(*self.committed.values()), reverse=True):
            plan = self._try(candidate, exact=False)
            if plan is not None:
                return plan
        raise self._error(self._nothing_valid())

    def _try(self, step: int, *, exact: bool) -> RestorePlan | None:
        """The plan for ``step``, or None (a problem noted) when some old rank has no valid file there."""
        saved_world = self._saved_world(step, exact)
        if saved_world is None:
            return None
        ranks = [self.rank] if self.alone else range(saved_world)
        self.reader.prefetch(ranks, step)
        if not self._complete(step, saved_world, ranks, exact):
            return None
        checkpoints = [self.reader.read(r, step) for r in ranks]
        if not self.alone and saved_world != self.world:
            _check_reshardable(checkpoints, saved_world, self.world)  # type: ignore[arg-type]
        mine = checkpoints[0] if self.alone else checkpoints[self.rank if self.rank < saved_world else 0]
        return RestorePlan(
            step, saved_world, tuple(self.reader.problems), tuple(self.uncommitted), self.reader.reads, mine
        )

    def _saved_world(self, step: int, exact: bool) -> int | None:
        """How many ranks wrote ``step``, from the first valid file of it (None, noted, when there is none)."""
        writers = sorted(r for r, steps in (self.listing if exact else self.committed).items() if step in steps)
        if exact and not writers:
            raise self._error(self._missing(step))
        first = next((c for r in writers if (c := self.reader.read(r, step)) is not None), None)
        if first is None:
            if exact:
                raise self._error(self._missing(step, damaged=True))
            return None
        return 1 if self.alone else (first.world_size or (max(writers) + 1))

    def _complete(self, step: int, saved_world: int, ranks: Any, exact: bool) -> bool:
        """Whether every old rank has a valid file at ``step`` (raises for an exact step, else notes why not)."""
        incomplete = [r for r in ranks if self.reader.read(r, step) is None]
        if not incomplete:
            return True
        text = f"step {step} was saved by {saved_world} ranks, but ranks {incomplete} have no valid file at that step"
        if exact:
            raise self._error(f"{self.directory}: {text}; steps on disk per rank: {_steps_text(self.listing)}")
        self.reader.problems.append(f"step {step}: ranks {incomplete} of {saved_world} have no valid input checkpoint")
        return False

    def _error(self, message: str) -> PlanError:
        return PlanError(message, tuple(self.reader.problems), tuple(self.uncommitted))

    def _missing(self, step: int, damaged: bool = False) -> str:
        if self.single:
            steps = self.listing.get(self.rank, [])
            if damaged:
                return f"{self.directory}: no valid input checkpoint of rank {self.rank} at step {step}" + (
                    _problems_text(self.reader.problems)
                )
            return (
                f"{self.directory}: no input checkpoint of rank {self.rank} at step {step}; "
                f"steps on disk: {steps if steps else 'none'}"
            )
        return (
            f"{self.directory}: no valid input checkpoint at step {step}; steps on disk per rank: "
            f"{_steps_text(self.listing) or 'none'}" + _problems_text(self.reader.problems)
        )

    def _nothing_valid(self) -> str:
        if self.single:
            return f"{self.directory}: no valid input checkpoint of rank {self.rank}: " + "; ".join(
                self.reader.problems
            )
        return (
            f"{self.directory}: no step at which every rank has a valid input checkpoint; steps on disk per rank: "
            f"{_steps_text(self.listing)}" + _problems_text(self.reader.problems)
        )


def _scan(directory: Location) -> tuple[dict[int, list[int]], set[int]]:
    """One listing: rank -> sorted steps of its files, and the ranks that have a pointer."""
    found: dict[int, list[int]] = {}
    pointers: set[int] = set()
    for name, is_file in entry_names(directory):
        parsed = InputFile.parse(name)
        if parsed is not None and is_file:
            found.setdefault(parsed.rank, []).append(parsed.step)
        elif (rank := InputFile.parse_pointer_name(name)) is not None:
            pointers.add(rank)
    return {rank: sorted(steps) for rank, steps in sorted(found.items())}, pointers


def _check_reshardable(checkpoints: list[InputCheckpoint], saved_world: int, world: int) -> None:
    first = checkpoints[0]
    check_reshardable(
        {c.rank: c.states for c in checkpoints},
        saved_world,
        world,
        source=str(first.path),
        where=f"{first.path.parent}: at step {first.step}",
    )


def check_reshardable(
    states_by_rank: Mapping[int, Mapping[str, Any]], saved_world: int, world: int, *, source: str, where: str
) -> None:
    """Only states that hold a global position can move to another world size, and the old ranks must
    agree on it (they do when they consumed in lockstep). Pure: the old ranks' component states (name ->
    state, by old rank), from files or from a DCP checkpoint's replicated value.

    Args:
        states_by_rank: Each old rank's component states.
        saved_world: The number of ranks that saved them.
        world: The number of ranks restoring.
        source: Where rank 0's states come from (a file), for messages.
        where: Where and when they were saved (``"<directory>: at step <n>"``), for messages.

    Raises:
        InputStateError: naming the component and why it cannot be resharded, or the old ranks' positions.
    """
    first = states_by_rank[min(states_by_rank)]
    for name, state in first.items():
        reason = reshard_blocker(state)
        if reason is not None:
            raise InputStateError(
                f"{source}: component {name!r} cannot be resumed on {world} ranks after being saved on "
                f"{saved_world}: {reason}. Resume with {saved_world} ranks."
            )
        found = {rank: positions(states).get(name) for rank, states in states_by_rank.items()}
        if len(set(found.values())) != 1:
            at = {r: None if p is None else (p.epoch, p.position) for r, p in found.items()}
            raise InputStateError(
                f"{where} the {saved_world} old ranks disagree on the position of "
                f"{name!r} (rank: (epoch, cursor) = {at}); they must consume in lockstep to be resharded"
            )


def _steps_text(listing: Mapping[int, list[int]]) -> str:
    return "; ".join(f"rank {r}: {steps}" for r, steps in sorted(listing.items()))


def _problems_text(problems: list[str] | tuple[str, ...]) -> str:
    return (" (" + "; ".join(problems) + ")") if problems else ""

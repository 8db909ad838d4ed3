"""Input checkpoints across ranks: one save decision for all ranks, and restores on any world size."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from . import files
from .errors import InputStateError
from .files import InputCheckpoint, InputFile
from .schema import positions, reshard_blocker

__all__ = ["RestorePlan", "SaveAgreement", "cpu_group", "gather_steps", "plan_restore"]


def cpu_group(process_group: Any = None) -> Any:
    """A process group that can run collectives on CPU tensors: the given one, the default one if it is
    gloo, else a new gloo group (a collective call: every rank must reach it together)."""
    if process_group is not None:
        return process_group
    if "gloo" in str(dist.get_backend()):
        return None  # the default group
    return dist.new_group(backend="gloo")


class SaveAgreement:
    """Makes every rank take rank 0's time-based save decision, at the same step.

    Wall clocks differ between ranks, so ``every_n_seconds`` alone would make ranks save at different
    steps. Rank 0's clock decides, and the decision is shared with one broadcast of one integer every
    ``sync_every`` steps (at steps that are multiples of it, which all ranks reach together), so the
    cost is one small collective every few steps and a time-based save lands at most
    ``sync_every - 1`` steps late.
    """

    def __init__(self, group: Any, sync_every: int) -> None:
        self.group = group
        self.sync_every = sync_every
        self._source = 0 if group is None else dist.get_global_rank(group, 0)
        self._flag = torch.zeros(1, dtype=torch.int32)

    def decide(self, step: int, due_here: bool) -> bool:
        """Whether all ranks save at ``step``; ``due_here`` matters on rank 0 only."""
        if step % self.sync_every:
            return False
        self._flag[0] = int(due_here)
        dist.broadcast(self._flag, src=self._source, group=self.group)
        return bool(self._flag[0])


def gather_steps(step: int | None, group: Any, error: Exception | None = None) -> list[tuple[int | None, str | None]]:
    """Every rank's chosen restore step, or the text of the error it met choosing one.

    Gathering errors too means that a rank that fails does not leave the others waiting in a
    collective. Also a barrier: no rank writes before all have looked.
    """
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, (step, None if error is None else str(error)), group=group)
    return out


@dataclass(frozen=True, slots=True)
class RestorePlan:
    """Which file a rank restores from.

    Attributes:
        checkpoint: The file to load (this rank's own, or an old rank's when resharding).
        saved_world: The number of ranks that wrote the step.
        problems: Damaged or missing files passed over on the way, for warnings.
    """

    checkpoint: InputCheckpoint
    saved_world: int
    problems: list[str] = field(default_factory=list)


def plan_restore(directory: Path, rank: int, world: int, step: int | None = None) -> RestorePlan | None:
    """Choose the step and the file this rank restores: the newest step (or exactly ``step``) at which
    every rank of the world that saved it has a valid, committed file.

    With the same world size, rank ``r`` loads its own file. With another world size, it loads an old
    rank's file (its own number if that rank existed, else rank 0's): only global positions can be
    resharded, and all old ranks must agree on them.

    Returns:
        The plan, or None when the directory holds no input checkpoint at all.

    Raises:
        InputStateError: when ``step`` is missing for some rank, no step is complete on all ranks, the
            old ranks disagree, or the state cannot be resharded; naming the ranks and steps.
    """
    listing = files.list_steps(directory)
    if not listing:
        if step is None:
            return None
        raise InputStateError(f"{directory}: no input checkpoint at step {step}; there are none on disk")
    reader = _Reader(directory)
    usable = {r: steps if step is not None else reader.committed(r, steps) for r, steps in listing.items()}
    candidates = [step] if step is not None else sorted(set().union(*usable.values()), reverse=True)
    for candidate in candidates:
        writers = sorted(r for r, steps in usable.items() if candidate in steps)
        first = next((c for r in writers if (c := reader.read(r, candidate)) is not None), None)
        if first is None:
            if step is not None:
                raise InputStateError(
                    f"{directory}: no valid input checkpoint at step {step}; steps on disk per rank: "
                    f"{_steps_text(listing)}" + _problems_text(reader.problems)
                )
            continue
        saved_world = first.world_size or (max(writers) + 1)
        incomplete = [r for r in range(saved_world) if reader.read(r, candidate) is None]
        if incomplete:
            if step is not None:
                raise InputStateError(
                    f"{directory}: step {step} was saved by {saved_world} ranks, but ranks {incomplete} have no "
                    f"valid file at that step; steps on disk per rank: {_steps_text(listing)}"
                )
            reader.problems.append(
                f"step {candidate}: ranks {incomplete} of {saved_world} have no valid input checkpoint"
            )
            continue
        checkpoints = [reader.read(r, candidate) for r in range(saved_world)]
        mine = checkpoints[rank if rank < saved_world else 0]
        assert mine is not None  # every old rank was read above
        if saved_world != world:
            _check_reshardable(checkpoints, saved_world, world)  # type: ignore[arg-type]
        return RestorePlan(mine, saved_world, reader.problems)
    raise InputStateError(
        f"{directory}: no step at which every rank has a valid input checkpoint; steps on disk per rank: "
        f"{_steps_text(listing)}" + _problems_text(reader.problems)
    )


class _Reader:
    """Reads and verifies each file at most once, remembering what was wrong with the damaged ones."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.problems: list[str] = []
        self._cache: dict[tuple[int, int], InputCheckpoint | None] = {}

    def committed(self, rank: int, steps: list[int]) -> list[int]:
        """Steps up to the rank's pointer: a newer file is a save killed before its commit."""
        try:
            pointed = files.read_pointer(self.directory, rank)
        except InputStateError as error:
            self.problems.append(str(error))
            return steps
        return steps if pointed is None else [s for s in steps if s <= pointed]

    def read(self, rank: int, step: int) -> InputCheckpoint | None:
        key = (rank, step)
        if key not in self._cache:
            path = self.directory / InputFile(rank, step).name
            try:
                self._cache[key] = files.read_checkpoint(path) if path.exists() else None
            except InputStateError as error:
                self.problems.append(str(error))
                self._cache[key] = None
        return self._cache[key]


def _check_reshardable(checkpoints: list[InputCheckpoint], saved_world: int, world: int) -> None:
    """Only states that hold a global position can move to another world size, and the old ranks must
    agree on it (they do when they consumed in lockstep)."""
    first = checkpoints[0]
    for name, state in first.states.items():
        reason = reshard_blocker(state)
        if reason is not None:
            raise InputStateError(
                f"{first.path}: component {name!r} cannot be resumed on {world} ranks after being saved on "
                f"{saved_world}: {reason}. Resume with {saved_world} ranks."
            )
        found = {c.rank: positions(c.states).get(name) for c in checkpoints}
        if len(set(found.values())) != 1:
            where = {r: None if p is None else (p.epoch, p.position) for r, p in found.items()}
            raise InputStateError(
                f"{first.path.parent}: at step {first.step} the {saved_world} old ranks disagree on the position of "
                f"{name!r} (rank: (epoch, cursor) = {where}); they must consume in lockstep to be resharded"
            )


def _steps_text(listing: Mapping[int, list[int]]) -> str:
    return "; ".join(f"rank {r}: {steps}" for r, steps in sorted(listing.items()))


def _problems_text(problems: list[str]) -> str:
    return (" (" + "; ".join(problems) + ")") if problems else ""

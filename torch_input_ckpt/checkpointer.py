"""``InputCheckpointer``: saves only the input pipeline's state, per rank, every N steps or seconds."""

from __future__ import annotations

import functools
import logging
import math
import os
import time
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch.distributed as dist

from . import files
from .distributed import RestorePlan, SaveAgreement, cpu_group, gather_steps, plan_restore
from .encoding import decode_tensors
from .errors import ExternalStateWarning, InputCheckpointWarning, InputStateError
from .external import external_parts
from .files import InputCheckpoint, InputFile
from .loader import ResumableDataLoader
from .sampler import ResumableSampler
from .schema import is_stateful, positions
from .world import World
from .writer import BackgroundWriter

__all__ = ["InputCheckpointer"]

log = logging.getLogger("torch_input_ckpt")

ExternalStatePolicy = Literal["fail", "warn", "ignore"]
_POLICIES = ("fail", "warn", "ignore")
# The name under which a single (non-dict) stateful object is saved.
SINGLE = "input"
# Looked up at each call (not bound at import) so that tests can substitute a fake clock.
_monotonic = time.monotonic


class InputCheckpointer:
    """Saves the input pipeline's state (not the model's) every N steps and/or seconds, per rank.

    Rank ``r`` writes ``input_<r>-<step>.json`` and a pointer ``checkpoint_input_<r>`` into
    ``directory``; names no model checkpoint uses, so the directory can be shared with one. Taking
    the state is synchronous and cheap; writing, fsync, rename and pruning run on a background
    thread, and a failed write is raised by the next call. A crash at any instant leaves the newest
    committed checkpoint loadable; damaged files are skipped with a warning.

    Under torch.distributed all ranks save at the same steps (rank 0's clock decides time-based
    saves) and a restore may use another number of ranks than the save: the ranks then split what is
    left of the epoch.

    Args:
        directory: Where to write; created if missing. May hold other files (they are never touched).
        stateful: An object with ``state_dict()``/``load_state_dict()`` (a ``ResumableDataLoader``,
            a ``ResumableSampler``, a torchdata ``StatefulDataLoader``, ...) or a dict of named ones.
        every_n_steps: Save when ``step`` is a multiple of this.
        every_n_seconds: Save when this many seconds (monotonic clock) have passed since the last
            save. At least one of the two intervals must be given.
        keep_last: How many of this rank's checkpoints to keep (None: all). Older ones are deleted
            only after a newer one is durable.
        rank: This process's rank; defaults to ``torch.distributed``'s when initialised, else 0.
        external_state_policy: What to do, at the first save, when part of the pipeline has state
            this library cannot capture (a component without ``state_dict``, a custom sampler or an
            ``IterableDataset`` without state): ``"fail"`` raises ``ValueError``, ``"warn"`` warns
            once (:class:`ExternalStateWarning`) and saves the rest, ``"ignore"`` saves the rest.
        process_group: Under torch.distributed, the group for the checkpointer's own collectives (one
            broadcast every ``sync_every_n_steps`` steps when ``every_n_seconds`` is set; one gather per
            restore). Default: the default group if it is gloo, else a new gloo group.
        sync_every_n_steps: Under torch.distributed, how often the ranks agree on a time-based save:
            rank 0's clock decides, so all ranks save at the same step, at most this many steps late.

    Raises:
        ValueError: for an invalid or unwritable directory, missing or non-positive intervals, a bad
            ``keep_last``, ``rank`` or policy, or a ``stateful`` without ``state_dict``.

    Example::

        loader = ResumableDataLoader(dataset, batch_size=32, shuffle=True, seed=0)
        with InputCheckpointer("ckpt", loader, every_n_steps=100) as ckpt:
            step = ckpt.restore_or_save_initial() or 0
            ...
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        stateful: Any,
        *,
        every_n_steps: int | None = None,
        every_n_seconds: float | None = None,
        keep_last: int | None = 3,
        rank: int | None = None,
        external_state_policy: ExternalStatePolicy = "fail",
        process_group: Any = None,
        sync_every_n_steps: int = 10,
    ) -> None:
        if every_n_steps is None and every_n_seconds is None:
            raise ValueError(f"give every_n_steps, every_n_seconds or both (got {every_n_steps=}, {every_n_seconds=})")
        if every_n_steps is not None and (not _is_int(every_n_steps) or every_n_steps < 1):
            raise ValueError(f"every_n_steps must be an int >= 1 (got {every_n_steps=})")
        if every_n_seconds is not None and (
            isinstance(every_n_seconds, bool)
            or not isinstance(every_n_seconds, (int, float))
            or not 0 < every_n_seconds < math.inf
        ):
            raise ValueError(f"every_n_seconds must be a finite number > 0 (got {every_n_seconds=})")
        if keep_last is not None and (not _is_int(keep_last) or keep_last < 1):
            raise ValueError(f"keep_last must be an int >= 1, or None to keep all (got {keep_last=})")
        if external_state_policy not in _POLICIES:
            raise ValueError(
                f"external_state_policy must be one of {', '.join(map(repr, _POLICIES))} (got {external_state_policy=})"
            )
        if rank is not None and (not _is_int(rank) or rank < 0):
            raise ValueError(f"rank must be an int >= 0 (got {rank=})")
        if not _is_int(sync_every_n_steps) or sync_every_n_steps < 1:
            raise ValueError(f"sync_every_n_steps must be an int >= 1 (got {sync_every_n_steps=})")
        distributed = dist.is_available() and dist.is_initialized()
        detected = World.detect()
        if distributed and rank is not None and rank >= detected.size:
            raise ValueError(f"rank must be < the world size {detected.size} (got {rank=})")
        self.directory = _usable_directory(directory)
        self.rank: int = detected.rank if rank is None else rank
        # The world size is recorded for inspection and resharding; unknown when a rank is given by hand
        # outside torch.distributed.
        self.world_size: int | None = detected.size if distributed or rank is None else None
        self._components: dict[str, Any] = _components(stateful)
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self.keep_last = keep_last
        self.external_state_policy = external_state_policy
        self._external: list[str] | None = None  # checked at the first save
        self._last_save_time = _monotonic()
        self._writer = BackgroundWriter(f"torch_input_ckpt writer (rank {self.rank})")
        # Flushes at garbage collection or interpreter exit; refers to the writer only, so it does not
        # keep this object alive.
        self._finalizer = weakref.finalize(self, self._writer.close)
        files.remove_stale_temporaries(self.directory, self.rank)
        # Under torch.distributed with several ranks: collectives on a CPU-capable group, to agree on
        # time-based saves and on the step to restore. Built here, where every rank is at the same point.
        self._collective = distributed and detected.size > 1
        self._group = cpu_group(process_group) if self._collective else None
        self._agreement = (
            SaveAgreement(self._group, sync_every_n_steps) if self._collective and every_n_seconds is not None else None
        )

    def __repr__(self) -> str:
        return (
            f"InputCheckpointer({str(self.directory)!r}, components={list(self._components)}, "
            f"rank={self.rank}, every_n_steps={self.every_n_steps}, every_n_seconds={self.every_n_seconds}, "
            f"keep_last={self.keep_last})"
        )

    # -- saving -----------------------------------------------------------------------------------

    def after_step(self, step: int) -> bool:
        """Call once per optimizer step with the global step; saves when an interval has elapsed.

        Returns:
            Whether it saved.

        Raises:
            Exception: the error of a failed background write, if one happened since the last call.
        """
        if self._writer.error is not None:
            self._raise_pending()
        if not self._should_save(step):
            return False
        self.save(step)
        return True

    def _should_save(self, step: int) -> bool:
        """The save decision. A step interval gives the same answer on every rank; a time interval is
        decided by rank 0's clock and shared every ``sync_every_n_steps`` steps under torch.distributed."""
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            return True
        if self.every_n_seconds is None:
            return False
        due = _monotonic() - self._last_save_time >= self.every_n_seconds
        return due if self._agreement is None else self._agreement.decide(step, due)

    def save(self, step: int) -> None:
        """Take the state now and write it in the background as the checkpoint of ``step``.

        Raises:
            ValueError: for a negative step, or (policy ``"fail"``) state this library cannot capture.
            TypeError: if a state holds something that is not JSON (naming its key).
        """
        self._raise_pending()
        if not _is_int(step) or step < 0:
            raise ValueError(f"step must be an int >= 0 (got {step=})")
        states = {name: obj.state_dict() for name, obj in self._components.items() if is_stateful(obj)}
        if self._external is None:
            self._external = self._check_external(states)
        data = files.encode_checkpoint(
            rank=self.rank, world_size=self.world_size, step=step, states=states, external=self._external
        )
        self._writer.submit(functools.partial(_commit, self.directory, self.rank, step, data, self.keep_last))
        self._last_save_time = _monotonic()

    def _check_external(self, states: Mapping[str, Any]) -> list[str]:
        found = [item for name, obj in self._components.items() for item in external_parts(name, obj, states.get(name))]
        if found and self.external_state_policy == "fail":
            raise ValueError(
                "part of the input pipeline has state that cannot be saved, so a resume would not be exact: "
                + "; ".join(found)
                + ". Give it state_dict()/load_state_dict(), or pass external_state_policy='warn' or "
                "'ignore' to save the rest anyway."
            )
        if found and self.external_state_policy == "warn":
            warnings.warn(
                "input checkpoints will not capture: " + "; ".join(found) + " (the rest is saved)",
                ExternalStateWarning,
                stacklevel=3,
            )
        return found

    # -- restoring --------------------------------------------------------------------------------

    def restore_or_save_initial(self) -> int | None:
        """Restore the newest valid checkpoint and return its step; with none on disk, save step 0.

        Under torch.distributed every rank must call it together: the ranks restore the newest step
        that all ranks saved (on another world size, they split what is left of the epoch), and none
        writes its initial checkpoint before all have looked.

        Returns:
            The restored step, or None when there was nothing to restore (a fresh start).

        Raises:
            InputStateError: if checkpoints exist but none is valid, or they do not fit the pipeline.
        """
        self.flush()
        newest = self._own_history()
        if newest is not None:
            if newest.checkpoint is None and not newest.problems:
                self.save(0)
                return None
            return self._restore_newest(newest)
        plan = self._plan(None)
        if plan is None:
            self.save(0)
            return None
        return self._apply_plan(plan)

    def restore(self, step: int | None = None) -> int:
        """Restore the newest valid checkpoint, or exactly the one of ``step`` (e.g. your model checkpoint's).

        Damaged files (and a pointer naming a missing file) are skipped with an
        :class:`InputCheckpointWarning` when restoring the newest; an explicit ``step`` must be valid.
        When the directory was written by another number of ranks, this rank continues with its share of
        what is left of the epoch (see :func:`torch_input_ckpt.distributed.plan_restore`). Under
        torch.distributed every rank must call it together.

        Returns:
            The restored step.

        Raises:
            InputStateError: if there is no (valid) checkpoint, ``step`` is not on disk (the message
                lists the steps that are), or the state does not fit the pipeline.
        """
        self.flush()
        newest = self._own_history()
        if newest is None:
            plan = self._plan(step)
            if plan is None:
                raise InputStateError(f"{self.directory}: no input checkpoint to restore")
            return self._apply_plan(plan)
        if step is None:
            return self._restore_newest(newest)
        steps = self._list()
        if step not in steps:
            raise InputStateError(
                f"{self.directory}: no input checkpoint of rank {self.rank} at step {step}; "
                f"steps on disk: {steps if steps else 'none'}"
            )
        checkpoint = files.read_checkpoint(self.directory / InputFile(self.rank, step).name)
        self._apply(checkpoint)
        return step

    def _own_history(self) -> files.Newest | None:
        """This rank's newest checkpoint, when the restore comes from its own history alone: a job of one
        rank whose directory holds only its own files, saved on this world size (or a rank given by hand
        outside torch.distributed). None when the ranks' files must be planned together."""
        if self._collective:
            return None
        if self.world_size is not None and not set(files.list_steps(self.directory)) <= {self.rank}:
            return None
        newest = files.find_newest(self.directory, self.rank)
        if self.world_size is not None and newest.checkpoint is not None:
            if newest.checkpoint.world_size not in (None, self.world_size):
                return None  # saved by another world size: resharded by the plan
        return newest

    def _plan(self, step: int | None) -> RestorePlan | None:
        """Choose what to restore; under torch.distributed, check that every rank chose the same step."""
        world = self.world_size or 1
        try:
            plan, error = plan_restore(self.directory, self.rank, world, step), None
        except InputStateError as raised:
            plan, error = None, raised
        if self._collective:
            # Also a barrier: no rank saves its initial checkpoint before every rank has looked.
            chosen = gather_steps(None if plan is None else plan.checkpoint.step, self._group, error)
            failed = [(r, text) for r, (_, text) in enumerate(chosen) if text is not None]
            if failed and error is None:
                raise InputStateError(f"rank {failed[0][0]} could not choose an input checkpoint: {failed[0][1]}")
            steps = {s for s, _ in chosen}
            if error is None and len(steps) > 1:
                raise InputStateError(
                    f"{self.directory}: the ranks chose different input checkpoints to restore ("
                    + ", ".join(f"rank {r}: step {s}" for r, (s, _) in enumerate(chosen))
                    + "); is the directory shared by all ranks?"
                )
        if error is not None:
            raise error
        return plan

    def _apply_plan(self, plan: RestorePlan) -> int:
        for problem in plan.problems:
            warnings.warn(f"{problem}; falling back to an older input checkpoint", InputCheckpointWarning, stacklevel=3)
        world = self.world_size or 1
        if plan.saved_world != world:
            log.info(
                "resharding the input pipeline saved by %d ranks at step %d over %d ranks (rank %d reads %s)",
                plan.saved_world,
                plan.checkpoint.step,
                world,
                self.rank,
                plan.checkpoint.path.name,
            )
        self._apply(plan.checkpoint)
        return plan.checkpoint.step

    def steps(self) -> list[int]:
        """The steps of this rank's checkpoints on disk (after pending writes), oldest first."""
        self.flush()
        return self._list()

    def _list(self) -> list[int]:
        return files.list_steps(self.directory).get(self.rank, [])

    def _restore_newest(self, newest: files.Newest) -> int:
        if newest.checkpoint is None:
            if not newest.problems:
                raise InputStateError(f"{self.directory}: no input checkpoint of rank {self.rank} to restore")
            raise InputStateError(
                f"{self.directory}: no valid input checkpoint of rank {self.rank}: " + "; ".join(newest.problems)
            )
        for problem in newest.problems:
            warnings.warn(f"{problem}; falling back to an older input checkpoint", InputCheckpointWarning, stacklevel=3)
        if newest.uncommitted:
            log.info(
                "rank %d: passing over steps %s, newer than the pointer (saves cut short before commit)",
                self.rank,
                newest.uncommitted,
            )
        self._apply(newest.checkpoint)
        return newest.checkpoint.step

    def _apply(self, checkpoint: InputCheckpoint) -> None:
        """Load a checkpoint (of this or, for resharding, another rank) into the components."""
        source = str(checkpoint.path)
        expected = [name for name, obj in self._components.items() if is_stateful(obj)]
        if sorted(checkpoint.states) != sorted(expected):
            raise InputStateError(
                f"{source}: holds the state of {sorted(checkpoint.states)}, but this checkpointer was given "
                f"{sorted(expected)}. Pass the same components, under the same names, as when it was saved."
            )
        for name in expected:
            obj = self._components[name]
            state = decode_tensors(checkpoint.states[name], source)
            if isinstance(obj, (ResumableDataLoader, ResumableSampler)):
                obj.load_state_dict(state, source=source)  # names the file in its own errors
                continue
            try:
                obj.load_state_dict(state)
            except InputStateError:
                raise
            except Exception as error:
                raise InputStateError(f"{source}: {name}.load_state_dict() failed: {error!r}") from error
        self._last_save_time = _monotonic()
        name, position = next(iter(positions(checkpoint.states).items()))
        log.info(
            "restored input pipeline from %s at step %d, epoch %s, position %s",
            checkpoint.path,
            checkpoint.step,
            "?" if position.epoch is None else position.epoch,
            position.text(),
        )

    # -- lifetime ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait until every save so far is durable; raise the error of a failed one."""
        self._writer.flush()
        self._raise_pending()

    def close(self) -> None:
        """Finish pending writes and stop the writer thread (also done at garbage collection and exit)."""
        self._finalizer()
        self._raise_pending()

    def __enter__(self) -> InputCheckpointer:
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # do not hide the exception that is already propagating
            log.error("input checkpoint write failed while handling another exception", exc_info=True)

    def _raise_pending(self) -> None:
        error = self._writer.take_error()
        if error is not None:
            raise error


def _commit(directory: Path, rank: int, step: int, data: bytes, keep_last: int | None) -> None:
    """On the writer thread: the file, then the pointer to it, then pruning, each durable before the next."""
    try:
        files.write_atomic(directory / InputFile(rank, step).name, data)
        files.write_pointer(directory, rank, step)
        files.prune(directory, rank, step, keep_last)
    except BaseException as error:
        if hasattr(error, "add_note"):  # Python >= 3.11
            error.add_note(f"while writing the input checkpoint of step {step} (rank {rank}) to {directory}")
        raise


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _components(stateful: Any) -> dict[str, Any]:
    if isinstance(stateful, Mapping):
        if not stateful:
            raise ValueError("stateful is an empty dict: give at least one component to checkpoint")
        bad = [key for key in stateful if not isinstance(key, str) or not key]
        if bad:
            raise ValueError(f"stateful's keys must be non-empty strings (got {bad!r})")
        if not any(is_stateful(obj) for obj in stateful.values()):
            raise ValueError(f"no component of stateful has state_dict()/load_state_dict() (got {dict(stateful)!r})")
        return dict(stateful)
    if not is_stateful(stateful):
        raise ValueError(
            "stateful must have state_dict() and load_state_dict() (a ResumableDataLoader, "
            "StatefulDataLoader, ResumableSampler, ...) "
            f"or be a dict of named ones (got {type(stateful).__name__})"
        )
    return {SINGLE: stateful}


def _usable_directory(directory: str | os.PathLike[str]) -> Path:
    if not isinstance(directory, (str, os.PathLike)) or not str(directory):
        raise ValueError(f"directory must be a non-empty path (got {directory=})")
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ValueError(f"directory {str(path)!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"directory {str(path)!r} cannot be created ({error})") from error
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"directory {str(path)!r} is not writable")
    return path

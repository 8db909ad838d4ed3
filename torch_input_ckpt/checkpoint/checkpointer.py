"""``InputCheckpointer``: saves only the input pipeline's state, per rank, every N steps or seconds."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import os
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch.distributed as dist

from .._compat.torchdata import FastForwardNoticeFilter
from ..base.arguments import check_choice, check_int, check_positive_number
from ..base.world import World
from ..errors import ExternalStateWarning, InputCheckpointWarning, InputStateError
from ..remote import ObjectStore, is_url
from ..state.encoding import decode_tensors
from ..state.schema import is_stateful, positions
from ..store import files
from ..store.directory import Location, ObjectDirectory
from ..store.files import InputCheckpoint, InputFile
from ..store.lease import ObjectWriterLease
from ..store.lineage import Lineage
from ..store.lock import WriterLock
from ..store.planner import RestorePlan, plan_restore
from ..store.writer import BackgroundWriter
from .collectives import SaveAgreement, all_succeeded, cpu_group, share_from_first
from .external import external_parts
from .surgery import skipped_states

__all__ = ["InputCheckpointer"]

log = logging.getLogger("torch_input_ckpt")

ExternalStatePolicy = Literal["fail", "warn", "ignore"]
_POLICIES = ("fail", "warn", "ignore")
# The name under which a single (non-dict) stateful object is saved.
SINGLE = "input"


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
        directory: Where to write; created if missing. May hold other files (they are never touched). Or an
            object-store URL (``s3://bucket/run/input``, ``gs://...``, ...): each file is then an object under
            that prefix, written whole by one request; one writer per rank is a lease object taken by a
            conditional write (see the checkpointer guide's "Object storage").
        stateful: An object with ``state_dict()``/``load_state_dict()`` (a ``ResumableDataLoader``,
            a ``ResumableSampler``, a torchdata ``StatefulDataLoader``, ...) or a dict of named ones.
        every_n_steps: Save when ``step`` is a multiple of this.
        every_n_seconds: Save when this many seconds (of ``clock``) have passed since the last save.
            With neither interval, only explicit :meth:`save` calls (and ``after_step(step, pin=True)``)
            save.
        keep_last: How many of this rank's checkpoints to keep (None: all). Older ones are deleted
            only after a newer one is durable.
        rank: This process's rank; defaults to ``torch.distributed``'s when initialised, else 0. Given
            by hand outside torch.distributed (without ``world``), the world size is unknown: the files
            record none, and a restore reads this rank's own files only.
        world: This process's :class:`World` (rank and number of ranks), e.g. a trainer's; defaults to
            ``World.detect()`` (``rank`` overrides its rank).
        external_state_policy: What to do, at the first save, when part of the pipeline has state
            this library cannot capture (a component without ``state_dict``, a custom sampler or an
            ``IterableDataset`` without state): ``"fail"`` raises ``ValueError``, ``"warn"`` warns
            once (:class:`ExternalStateWarning`) and saves the rest, ``"ignore"`` saves the rest.
        process_group: Under torch.distributed, the group for the checkpointer's own collectives (one
            broadcast every ``sync_every_n_steps`` steps when ``every_n_seconds`` is set; per restore, one
            broadcast of the plan and one all-gather of a success flag). Default: the default group if it
            is gloo, else a new gloo group.
        sync_every_n_steps: Under torch.distributed, how often the ranks agree on a time-based save:
            rank 0's clock decides, so all ranks save at the same step, at most this many steps late.
        clock: The clock of ``every_n_seconds``, a callable returning seconds (default
            ``time.monotonic``).
        storage_options: For an object-store URL: the client's options (endpoint, credentials, region, ...),
            as ``torch_input_ckpt.remote.ObjectStore.for_url`` takes them.

    Raises:
        ValueError: for an invalid or unwritable directory, non-positive intervals, a bad ``keep_last``,
            ``rank``, ``world`` or policy, a ``stateful`` without ``state_dict``, ``storage_options`` with a
            local directory, or an object store that cannot guarantee one writer per rank (naming it).
        RuntimeError: if another checkpointer holds this directory and rank (naming its pid and host).

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
        world: World | None = None,
        external_state_policy: ExternalStatePolicy = "fail",
        process_group: Any = None,
        sync_every_n_steps: int = 10,
        clock: Callable[[], float] | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, minimum=1, optional=True)
        self.every_n_seconds = check_positive_number("every_n_seconds", every_n_seconds, optional=True)
        self.keep_last = check_int("keep_last", keep_last, minimum=1, none="keep all")
        self.external_state_policy = check_choice("external_state_policy", external_state_policy, _POLICIES)
        check_int("sync_every_n_steps", sync_every_n_steps, minimum=1)
        if clock is not None and not callable(clock):
            raise ValueError(f"clock must be a callable returning seconds (got {clock=})")
        distributed = dist.is_available() and dist.is_initialized()
        #: This process's rank and number of ranks.
        self.world, self._world_known = _resolve_world(rank, world, distributed)
        self.directory: Location = _usable_directory(directory, storage_options)
        self._components: dict[str, Any] = _components(stateful)
        self._clock = clock if clock is not None else time.monotonic
        self._external: list[str] | None = None  # checked at the first save
        self._lineage = Lineage()  # what each file records about the run (for provenance)
        self._last_save_time = self._clock()
        self._start_writing()
        # Under torch.distributed with several ranks: collectives on a CPU-capable group, to agree on
        # time-based saves and to share the restore plan. Built here, where every rank is at the same point.
        self._collective = distributed and self.world.size > 1
        self._group = cpu_group(process_group) if self._collective else None
        self._agreement = (
            SaveAgreement(self._group, sync_every_n_steps) if self._collective and every_n_seconds is not None else None
        )

    def _start_writing(self) -> None:
        # One writer per (directory, rank): taken first, so that a second job fails before touching anything.
        self._lock: WriterLock | ObjectWriterLease = (
            ObjectWriterLease(self.directory, self.rank)
            if isinstance(self.directory, ObjectDirectory)
            else WriterLock(self.directory, self.rank)
        )
        self._writer = BackgroundWriter(f"torch_input_ckpt writer (rank {self.rank})")
        self._quiet = FastForwardNoticeFilter()
        # Flushes at garbage collection or interpreter exit, and reports a write that failed by then (nobody
        # is left to raise it to); refers to the writer only, so it does not keep this object alive.
        self._finalizer = weakref.finalize(
            self, _close_unattended, self._writer, self._lock, self._quiet, str(self.directory), self.rank
        )
        files.remove_stale_temporaries(self.directory, self.rank)

    @property
    def rank(self) -> int:
        """This process's rank (``world.rank``)."""
        return self.world.rank

    @property
    def world_size(self) -> int | None:
        """The number of ranks recorded in the files: ``world.size``, or None when only the rank is known."""
        return self.world.size if self._world_known else None

    def __repr__(self) -> str:
        return (
            f"InputCheckpointer({str(self.directory)!r}, components={list(self._components)}, "
            f"rank={self.rank}, every_n_steps={self.every_n_steps}, every_n_seconds={self.every_n_seconds}, "
            f"keep_last={self.keep_last})"
        )

    # -- saving -----------------------------------------------------------------------------------

    def after_step(self, step: int, *, pin: bool = False) -> bool:
        """Call once per optimizer step with the global step; saves when an interval has elapsed.

        Args:
            step: The global step just completed.
            pin: True at a step where you also save a model checkpoint: the input checkpoint of this step
                is then saved whatever the schedule, and pinned (see :meth:`save`), so that
                ``restore(step)`` always finds it next to the model's. Under torch.distributed, pass the
                same value on every rank.

        Returns:
            Whether it saved.

        Raises:
            Exception: the error of a failed background write, if one happened since the last call.
        """
        error = self._writer.take_error() if self._writer.error is not None else None
        if error is not None:
            _note(error, f"after_step({step}) raised this before deciding on a save: step {step} was not saved")
            raise error
        if not pin and not self._should_save(step):
            return False
        self.save(step, pin=pin)
        return True

    def _should_save(self, step: int) -> bool:
        """The save decision. A step interval gives the same answer on every rank; a time interval is
        decided by rank 0's clock and shared every ``sync_every_n_steps`` steps under torch.distributed."""
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            return True
        if self.every_n_seconds is None:
            return False
        due = self._clock() - self._last_save_time >= self.every_n_seconds
        return due if self._agreement is None else self._agreement.decide(step, due)

    def save(self, step: int, *, pin: bool = False) -> None:
        """Take the state now and write it in the background as the checkpoint of ``step``.

        Args:
            step: The global step.
            pin: Keep this checkpoint until :meth:`unpin` (e.g. it goes with a model checkpoint): pinned
                checkpoints are never pruned and do not count against ``keep_last``.

        Raises:
            ValueError: for a negative step, or (policy ``"fail"``) state this library cannot capture.
            TypeError: if a state holds something that is not JSON (naming its key).
        """
        self._raise_pending()
        check_int("step", step, minimum=0)
        states = {name: obj.state_dict() for name, obj in self._components.items() if is_stateful(obj)}
        if self._external is None:
            self._external = self._check_external(states)
        data = files.encode_checkpoint(
            rank=self.rank,
            world_size=self.world_size,
            step=step,
            states=states,
            external=self._external,
            provenance=self._lineage.record(step, states),
        )
        if len(data) > files.MAX_FILE_BYTES:
            # Refused here, not written: restore refuses a file past the bound, so it could never be loaded.
            sizes = {
                name: len(
                    files.encode_checkpoint(
                        rank=self.rank, world_size=None, step=step, states={name: state}, external=[]
                    )
                )
                for name, state in states.items()
            }
            raise InputStateError(
                f"{self.directory}: the input checkpoint of step {step} would be {len(data)} bytes, more than the "
                f"bound of {files.MAX_FILE_BYTES} bytes that restore reads (files.MAX_FILE_BYTES); nothing was "
                f"written. Bytes per component: {sizes}. Keep state_dict() small (positions and counters, not data)."
            )
        fence = self._lock.check if isinstance(self._lock, ObjectWriterLease) else None
        self._writer.submit(
            functools.partial(_commit, self.directory, self.rank, step, data, self.keep_last, pin, fence)
        )
        self._last_save_time = self._clock()
        if self._writer.error is not None:  # failed while this call waited for room in the queue
            self._raise_pending()

    def pin(self, step: int) -> None:
        """Pin the checkpoint of ``step``, already saved: it is kept until :meth:`unpin`.

        Raises:
            InputStateError: if this rank has no checkpoint of ``step``.
        """
        steps = self.steps()
        if step not in steps:
            raise InputStateError(
                f"{self.directory}: no input checkpoint of rank {self.rank} at step {step} to pin; "
                f"steps on disk: {steps if steps else 'none'}"
            )
        files.write_pin(self.directory, self.rank, step)

    def unpin(self, step: int) -> bool:
        """Unpin ``step`` (e.g. its model checkpoint was deleted) and prune it if ``keep_last`` says so.

        Returns:
            Whether ``step`` was pinned.
        """
        self.flush()
        was = files.remove_pin(self.directory, self.rank, step)
        newest = files.read_pointer(self.directory, self.rank)
        if was and newest is not None:
            for problem in files.prune(self.directory, self.rank, newest, self.keep_last):
                log.warning("could not delete an unpinned input checkpoint: %s", problem)
        return was

    def pinned(self) -> list[int]:
        """The pinned steps of this rank (after pending writes), oldest first."""
        self.flush()
        return files.pinned_steps(self.directory, self.rank)

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
        writes its initial checkpoint before rank 0 has looked.

        Returns:
            The restored step, or None when there was nothing to restore (a fresh start).

        Raises:
            InputStateError: if checkpoints exist but none is valid, or they do not fit the pipeline.
        """
        self.flush()
        plan = self._agree(None)
        if plan is None:
            self.save(0)
            return None
        return self._apply_plan(plan)

    def restore(self, step: int | None = None, *, skip_steps: int = 0, batches_per_step: int | None = None) -> int:
        """Restore the newest valid checkpoint, or exactly the one of ``step`` (e.g. your model checkpoint's).

        Damaged files (and a pointer naming a missing file) are skipped with an
        :class:`InputCheckpointWarning` when restoring the newest; an explicit ``step`` must be valid.
        When the directory was written by another number of ranks, this rank continues with its share of
        what is left of the epoch (see :func:`torch_input_ckpt.store.planner.plan_restore`). Under
        torch.distributed every rank must call it together.

        Args:
            step: Exactly this step (None: the newest valid one).
            skip_steps: Resume as if the ``skip_steps`` steps after the restored one had been consumed (e.g.
                the steps of a loss spike), by the configuration of the run that consumed them, in O(1), on
                any world size. The checkpoint of ``step + skip_steps`` is then saved at once, recording the
                skip, and that step is returned: continue training from it. Outside torch.distributed with
                several ranks, give ``step``: a rank restoring later would otherwise take that new save as
                the newest checkpoint (under torch.distributed the ranks plan together first).
            batches_per_step: Only when the checkpoints do not record it (a run with a single save).

        Returns:
            The restored step (plus ``skip_steps``).

        Raises:
            InputStateError: if there is no (valid) checkpoint, ``step`` is not on disk (the message
                lists the steps that are), the state does not fit the pipeline, or (``skip_steps``) a
                component cannot be skipped or the batches per step are not recorded.
        """
        check_int("skip_steps", skip_steps, minimum=0)
        self.flush()
        plan = self._agree(step)
        if plan is None:
            raise InputStateError(f"{self.directory}: no input checkpoint of rank {self.rank} to restore")
        return self._apply_plan(plan, skip_steps, batches_per_step)

    def _plan(self, step: int | None) -> RestorePlan | None:
        """Plan alone on this rank (this rank's own files only when its world size is unknown)."""
        return plan_restore(self.directory, self.world.size, step, rank=self.rank, alone=not self._world_known)

    def _agree(self, step: int | None) -> RestorePlan | None:
        """Plan -> agree: rank 0 plans (lists, reads and checks every old rank's files) and shares the plan
        with one broadcast; the other ranks read nothing but the one file it names (O(W) reads in all).
        Also a barrier: no rank saves its initial checkpoint before rank 0 has looked."""
        if not self._collective:
            return self._plan(step)
        planned: list[RestorePlan | None] = []

        def plan_here() -> dict[str, Any] | None:
            planned.append(self._plan(step))
            return None if planned[0] is None else planned[0].to_dict()

        shared = share_from_first(plan_here, self._group)
        if planned:  # the planning rank keeps the file it has read already
            return planned[0]
        return None if shared is None else RestorePlan.from_dict(shared)

    def _apply_plan(self, plan: RestorePlan, skip_steps: int = 0, batches_per_step: int | None = None) -> int:
        """Apply: warn about what was passed over, read this rank's file (unless the planner did), load it."""
        for problem in plan.problems:
            warnings.warn(f"{problem}; falling back to an older input checkpoint", InputCheckpointWarning, stacklevel=3)
        mine = [s for r, s in plan.uncommitted if r == self.rank]
        if mine:
            log.info(
                "rank %d: passing over steps %s, newer than the pointer (saves cut short before commit)",
                self.rank,
                mine,
            )
        checkpoint = plan.checkpoint
        error = None
        if checkpoint is None or checkpoint.rank != plan.source_rank(self.rank):
            try:
                checkpoint = files.read_checkpoint(plan.path(self.directory, self.rank))
            except InputStateError as raised:  # e.g. a directory that is not shared by all ranks
                error = raised
        if self._collective:
            all_succeeded(error, self._group)  # every rank raises together: an error, not a hang
        elif error is not None:
            raise error
        assert checkpoint is not None
        if self._world_known and plan.saved_world != self.world.size:
            log.info(
                "resharding the input pipeline saved by %d ranks at step %d over %d ranks (rank %d reads %s)",
                plan.saved_world,
                plan.step,
                self.world.size,
                self.rank,
                checkpoint.path.name,
            )
        if not skip_steps:
            self._apply(checkpoint)
            self._lineage.restored(plan.step, checkpoint.states, checkpoint.provenance)
            return plan.step
        return self._skip(checkpoint, skip_steps, batches_per_step)

    def _skip(self, checkpoint: InputCheckpoint, steps: int, batches_per_step: int | None) -> int:
        """Load ``checkpoint`` moved ``steps`` steps on, and save the result at once (recording the skip)."""
        states, batches = skipped_states(self.directory, checkpoint, steps, batches_per_step)
        self._apply(dataclasses.replace(checkpoint, states=states), skipped_to=checkpoint.step + steps)
        self._lineage.restored(checkpoint.step, checkpoint.states, checkpoint.provenance)
        self._lineage.skip(checkpoint.step + 1, checkpoint.step + steps)
        log.warning("skipped steps %d..%d (%d batches per rank)", checkpoint.step + 1, checkpoint.step + steps, batches)
        self.save(checkpoint.step + steps)
        return checkpoint.step + steps

    def steps(self) -> list[int]:
        """The steps of this rank's checkpoints on disk (after pending writes), oldest first."""
        self.flush()
        return self._list()

    def _list(self) -> list[int]:
        return files.list_steps(self.directory).get(self.rank, [])

    def _apply(self, checkpoint: InputCheckpoint, skipped_to: int | None = None) -> None:
        """Load a checkpoint (of this or, for resharding, another rank) into the components; with
        ``skipped_to``, its states moved on to that step (``restore(skip_steps=...)``)."""
        source = str(checkpoint.path)
        expected = [name for name, obj in self._components.items() if is_stateful(obj)]
        if sorted(checkpoint.states) != sorted(expected):
            raise InputStateError(
                f"{source}: holds the state of {sorted(checkpoint.states)}, but this checkpointer was given "
                f"{sorted(expected)}. Pass the same components, under the same names, as when it was saved."
            )
        if self.external_state_policy == "ignore":
            self._quiet.install()  # the user said the uncaptured parts may be replayed: no notice about it
        for name in expected:
            obj = self._components[name]
            state = decode_tensors(checkpoint.states[name], source)
            if _takes_source(obj):
                obj.load_state_dict(state, source=source)  # names the file in its own errors
                continue
            try:
                obj.load_state_dict(state)
            except InputStateError:
                raise
            except Exception as error:
                raise InputStateError(f"{source}: {name}.load_state_dict() failed: {error!r}") from error
        self._last_save_time = self._clock()
        name, position = next(iter(positions(checkpoint.states).items()))
        # WARNING, the one level Python prints without any logging set-up: a resume changes what the job
        # does, so it must be visible by default (one line per rank; silence it with the logger's level).
        # With a skip, the position is the skipped-to step's, not the file's: say both steps.
        at = (
            f"step {checkpoint.step}" if skipped_to is None else f"step {checkpoint.step}, skipped to step {skipped_to}"
        )
        log.warning(
            "restored input pipeline from %s at %s, epoch %s, position %s",
            checkpoint.path,
            at,
            "?" if position.epoch is None else position.epoch,
            position.text(),
        )

    # -- lifetime ---------------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait until every save so far is durable; raise the error of a failed one."""
        self._writer.flush()
        self._raise_pending()

    def close(self) -> None:
        """Finish pending writes and stop the writer thread (also done at garbage collection and exit).

        Raises:
            Exception: the error of a failed background write. Without ``close()`` (garbage collection, or
                the end of the script), such an error is logged at ERROR and passed to
                ``sys.unraisablehook``, which prints it to stderr.
        """
        self._finalizer.detach()
        try:
            self._writer.close()
        finally:
            self._lock.release()
            self._quiet.uninstall()
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


def _commit(
    directory: Location,
    rank: int,
    step: int,
    data: bytes,
    keep_last: int | None,
    pin: bool,
    fence: Callable[[], None] | None = None,
) -> None:
    """On the writer thread: the file, its pin, then the pointer to it, then pruning, each durable before the
    next (so that a pinned file is never pruned, even by a save interrupted halfway). On an object store,
    ``fence`` checks the writer still holds its lease before anything is written."""
    try:
        if fence is not None:
            fence()
        files.write_atomic(directory / InputFile(rank, step).name, data)
        if pin:
            files.write_pin(directory, rank, step)
        files.write_pointer(directory, rank, step)
    except BaseException as error:
        _note(error, f"while writing the input checkpoint of step {step} (rank {rank}) to {directory}")
        raise
    # Step `step` is committed: a file that cannot be deleted is a warning, not a failed save.
    for problem in files.prune(directory, rank, step, keep_last):
        log.warning("input checkpoint of step %d committed, but an older one could not be deleted: %s", step, problem)


def _note(error: BaseException, text: str) -> None:
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note(text)


def _close_unattended(
    writer: BackgroundWriter,
    lock: WriterLock | ObjectWriterLease,
    quiet: FastForwardNoticeFilter,
    directory: str,
    rank: int,
) -> None:
    """The finalizer (garbage collection or interpreter exit): flush, unlock, and make a failed write loud."""
    try:
        writer.close()
    finally:
        lock.release()
        quiet.uninstall()
    error = writer.take_error()
    if error is None:
        return
    log.error(
        "an input checkpoint write of rank %d in %s failed and was never raised (the checkpointer was not "
        "closed): %r (%s). The newest input checkpoint on disk is older than the last save.",
        rank,
        directory,
        error,
        "; ".join(getattr(error, "__notes__", ())),
    )
    _Unraisable(error)  # at once collected: sys.unraisablehook prints the error with its traceback


class _Unraisable:
    """Hands an error to ``sys.unraisablehook`` the standard way: raised from ``__del__``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __del__(self) -> None:
        raise self.error


def _takes_source(obj: Any) -> bool:
    """Whether ``obj.load_state_dict`` takes a ``source=`` keyword (ours do: they name the file in errors)."""
    try:
        parameter = inspect.signature(obj.load_state_dict).parameters.get("source")
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return parameter is not None and parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD)


def _resolve_world(rank: int | None, world: World | None, distributed: bool) -> tuple[World, bool]:
    """This process's :class:`World`, and whether its size is known (not when only a rank is given by hand
    outside torch.distributed)."""
    check_int("rank", rank, minimum=0, optional=True)
    if world is not None:
        if not isinstance(world, World):
            raise ValueError(f"world must be a torch_input_ckpt.World (got {world=})")
        if rank is not None and rank != world.rank:
            raise ValueError(f"rank={rank} contradicts world={world}")
        return world, True
    detected = World.detect()
    if rank is None:
        return detected, True
    if distributed:
        if rank >= detected.size:
            raise ValueError(f"rank must be < the world size {detected.size} (got {rank=})")
        return World(rank, detected.size), True
    return World(rank, rank + 1), False


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


def _usable_directory(directory: str | os.PathLike[str], storage_options: Mapping[str, Any] | None) -> Location:
    if not isinstance(directory, (str, os.PathLike)) or not str(directory):
        raise ValueError(f"directory must be a non-empty path (got {directory=})")
    if is_url(directory):
        return _object_directory(directory, storage_options)
    if storage_options is not None:
        raise ValueError(
            f"storage_options are for an object-store URL, but directory {directory!r} is a local path; drop them, "
            "or give a URL such as s3://bucket/run/input"
        )
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


def _object_directory(url: str, storage_options: Mapping[str, Any] | None) -> ObjectDirectory:
    """The object prefix of ``url``, with its client (errors name the URL). Checkpointers given the same options
    share one client: making one (a session, the service's model) takes 0.1-1 s."""
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise ValueError(f"storage_options must be a dict of the client's options (got {storage_options!r})")
    options = dict(storage_options or {})
    key = repr(sorted(options.items()))
    made = ObjectStore.for_url(url, options)  # refuses an unsupported URL by name; its client is made lazily
    store = _STORES.pop(key, None) or made
    _STORES[key] = store  # the most recently used last
    while len(_STORES) > _MAX_STORES:
        _STORES.pop(next(iter(_STORES)))
    return ObjectDirectory(url, store)


# Object-store clients by their options, the most recently used last (a few: one per store a job writes to).
_STORES: dict[str, ObjectStore] = {}
_MAX_STORES = 8

"""PyTorch Lightning integration: ``InputCheckpointCallback`` keeps the train loaders' position in input checkpoints."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from types import ModuleType
from typing import Any

from .._compat import lightning as compat
from ..base.arguments import check_int
from ..base.world import World
from ..checkpoint.checkpointer import InputCheckpointer
from ..errors import ExternalStateWarning, InputCheckpointWarning, InputStateError
from ..loader.sampler import ResumableSampler
from ..state.schema import LOADER_KIND, Key, is_stateful

__all__ = ["InputCheckpointCallback"]

log = logging.getLogger("torch_input_ckpt")

_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def _select_lightning(modules: Mapping[str, Any], importer: Callable[[str], ModuleType]) -> ModuleType:
    """The Lightning package to build on: one the program already imported, else the first importable one.

    A callback must subclass the ``Callback`` of the package whose ``Trainer`` runs it; when both
    ``lightning`` and ``pytorch_lightning`` are installed, the one already imported is the one in use.
    """
    for name in _PACKAGES:
        if name in modules:
            return modules[name]
    for name in _PACKAGES:
        try:
            return importer(name)
        except ImportError:
            continue
    raise ImportError(
        "torch_input_ckpt.lightning needs PyTorch Lightning (lightning.pytorch or pytorch_lightning): "
        "pip install 'torch_input_ckpt[lightning]'"
    )


pl = _select_lightning(sys.modules, importlib.import_module)
_RunningStage = importlib.import_module(pl.__name__ + ".trainer.states").RunningStage


# ModelCheckpoint's default file names ("epoch=1-step=250.ckpt") carry the global step.
_STEP_IN_NAME = re.compile(r"(?:^|[^a-z])step=(\d+)")


class InputCheckpointCallback(pl.Callback):  # type: ignore[misc,name-defined]
    """Save the train loaders' position in input checkpoints, and resume it at the model checkpoint's step.

    Input checkpoints are small files of their own (``input_<rank>-<step>.json``, one per global rank),
    written in the background by :class:`~torch_input_ckpt.InputCheckpointer` and numbered by Lightning's
    ``trainer.global_step`` (optimizer steps). One is written

    * every ``every_n_train_steps`` steps and/or every ``train_time_interval``, at the end of the batch
      that completed the step (the last micro-batch with ``accumulate_grad_batches > 1``);
    * whenever Lightning saves a model checkpoint at a step boundary (``ModelCheckpoint``,
      ``trainer.save_checkpoint``), so that such a model checkpoint has its input checkpoint. That one is
      *pinned*: ``keep_last`` never prunes it, and it is unpinned when Lightning deletes the model
      checkpoint (``save_top_k`` rotation; a file of an earlier run by the ``step=N`` in its name);
    * at the start of a fresh run (step 0) when the directory holds none.

    On ``trainer.fit(ckpt_path=...)`` the train loaders are restored from the input checkpoint whose step
    equals the restored model's global step; without ``ckpt_path``, from the newest input checkpoint, if
    any. The copy of the loader state that Lightning keeps inside the model checkpoint is loaded only when
    the input checkpoint of that step is missing or damaged and the copy is a ``ResumableDataLoader``'s
    (with an :class:`~torch_input_ckpt.InputCheckpointWarning`); otherwise the error names both places.
    The restore happens after Lightning builds the train loaders and before it
    iterates them.

    Under DDP with ``use_distributed_sampler=True``, Lightning would wrap a :class:`ResumableSampler` in its
    ``DistributedSamplerWrapper`` (which shards it a second time, and cannot be resumed); the callback has
    Lightning inject a :class:`ResumableSampler` sharded over Lightning's ranks instead, with the loader's
    own seed, shuffle, order and drop_last. With ``use_distributed_sampler=False`` loaders are left alone.

    Args:
        dirpath: Directory for the input checkpoints; ``None`` means ``<trainer.default_root_dir>/input_checkpoints``.
        every_n_train_steps: Save every this many optimizer steps (``None``: not by step count).
        train_time_interval: Save when at least this much time has passed since the last input checkpoint,
            checked after each optimizer step. Under DDP rank 0's clock decides for all ranks, so that they
            save at the same steps; the decision is shared every 10 steps (the checkpointer's
            ``sync_every_n_steps``), so a time-based save may come up to 9 steps late.
        keep_last: How many input checkpoints to keep per rank (older ones are deleted; ``None`` keeps all).
            Keep enough to cover the model checkpoints you may resume from.
        external_state_policy: ``"fail"``, ``"warn"`` or ``"ignore"``: what to do when part of a train loader
            has state that cannot be saved (see :class:`~torch_input_ckpt.InputCheckpointer`).
        clock: The clock of ``train_time_interval``, a callable returning seconds (default
            ``time.monotonic``); for tests and simulations.

    Raises:
        ValueError: for an ``every_n_train_steps`` below 1, a ``train_time_interval`` that is not a positive
            ``timedelta``, a ``keep_last`` below 1, or an unknown ``external_state_policy``.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        keep_last: int | None = 3,
        external_state_policy: str = "fail",
        clock: Callable[[], float] | None = None,
    ) -> None:
        check_int("every_n_train_steps", every_n_train_steps, minimum=1, none="save not by step count")
        if train_time_interval is not None and (
            not isinstance(train_time_interval, timedelta) or train_time_interval.total_seconds() <= 0
        ):
            raise ValueError(
                f"train_time_interval must be a positive datetime.timedelta or None (got {train_time_interval=})"
            )
        check_int("keep_last", keep_last, minimum=1, none="keep all")
        if external_state_policy not in ("fail", "warn", "ignore"):
            raise ValueError(f"external_state_policy must be 'fail', 'warn' or 'ignore' (got {external_state_policy=})")
        super().__init__()
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.train_time_interval = train_time_interval
        self.keep_last = keep_last
        self.external_state_policy = external_state_policy
        self.clock = clock
        self.directory: str | None = None
        self._trainer: Any = None
        self._checkpointer: InputCheckpointer | None = None
        self._restored = False
        # The step the loaders' position corresponds to; whether a batch of the next step has been taken
        # since (then the position is ahead of the model and is saved under no step); the last step saved.
        self._step = 0
        self._ahead = False
        self._saved_step: int | None = None
        # Model checkpoint files of this fit and the steps their input checkpoints are pinned at, and the
        # file being written right now (its step is known in on_save_checkpoint).
        self._model_files: dict[str, int] = {}
        self._writing: str | None = None
        # The loader states Lightning read from the model checkpoint: the fallback when the input
        # checkpoint of the model's step is missing.
        self._stored_states: list[Any] = []

    # -- lifecycle --------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        _check_training_step(pl_module)
        self.directory = self.dirpath or os.path.join(trainer.default_root_dir, "input_checkpoints")
        self._trainer = trainer
        self._restored = False
        self._install(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._uninstall(trainer)
            self._close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning does not call `teardown` when fit fails: make the saves made so far durable (a
        # preempted job resumes from them) and give Lightning its methods back.
        self._uninstall(trainer)
        try:
            self._close()
        except Exception:  # do not hide the exception that ends the run
            log.error("an input checkpoint write failed while fit was failing", exc_info=True)

    def _close(self) -> None:
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            checkpointer.close()

    # -- Lightning's internals --------------------------------------------------------------------
    # Lightning has no callback hook between building the train loaders and iterating them, which is where
    # a loader must be restored (an iterator already made continues from the old position), nor one for
    # the sampler it injects under DDP: _compat shadows one method of this trainer's fit loop and one of
    # its data connector for the duration of `fit`.

    def _install(self, trainer: Any) -> None:
        compat.lightning_install(trainer, pl, self._restore_train_loaders, functools.partial(_resolve_sampler, trainer))
        compat.lightning_track_files(trainer, self._saving_model_file, self._removed_model_file)

    @staticmethod
    def _uninstall(trainer: Any) -> None:
        compat.lightning_uninstall(trainer)

    def _restore_train_loaders(self) -> None:
        """Shadows ``FitLoop._load_combined_loader_states``; runs whenever Lightning (re)builds the train loaders."""
        trainer = self._trainer
        # The copy of the loader state that Lightning read from the model checkpoint: never loaded while
        # this callback is installed (the input checkpoint is the one source of the position), only released.
        self._stored_states = compat.lightning_stored_loader_states(trainer, release=True)
        built = compat.lightning_train_loaders(trainer)
        if built is None:
            return
        loaders = _checked_loaders(built)
        # One loader is saved under the name a plain `InputCheckpointer(directory, loader)` uses, so the
        # files are interchangeable with a loop without Lightning; several, in Lightning's order.
        components = {"input": loaders[0]} if len(loaders) == 1 else {f"train_{i}": dl for i, dl in enumerate(loaders)}
        self._close()  # reloaded loaders (reload_dataloaders_every_n_epochs) get a checkpointer of their own
        interval = None if self.train_time_interval is None else self.train_time_interval.total_seconds()
        self._checkpointer = InputCheckpointer(
            self.directory,  # type: ignore[arg-type]
            components,
            every_n_steps=self.every_n_train_steps,
            every_n_seconds=interval,
            keep_last=self.keep_last,
            world=World(trainer.global_rank, trainer.world_size),
            external_state_policy=self.external_state_policy,  # type: ignore[arg-type]
            clock=self.clock,
        )
        if self._restored:
            return  # a reloaded loader starts at its epoch, which Lightning sets, as without this callback
        self._restored = True
        if trainer.ckpt_path is not None:
            self._restore_at_model_step(trainer, loaders)
        else:
            restored = self._checkpointer.restore_or_save_initial()
            if restored is not None:
                log.info("restored the train loaders from the newest input checkpoint (step %d)", restored)
        self._step = self._saved_step = trainer.global_step
        self._ahead = False

    def _restore_at_model_step(self, trainer: Any, loaders: list[Any]) -> None:
        assert self._checkpointer is not None
        step = trainer.global_step
        _warn_if_lightning_misresumes(trainer)
        try:
            self._checkpointer.restore(step)
        except InputStateError as error:
            self._restore_from_lightnings_copy(trainer, loaders, step, error)
        fit_loop = trainer.fit_loop
        if fit_loop.epoch_loop.batch_progress.is_last_batch:
            # The model checkpoint was taken after the last batch of an epoch (Lightning's epoch, which
            # limit_train_batches may end before the loader's): Lightning goes on with the next epoch and
            # sets it on the samplers, but only after it has made the loaders' iterators, which would then
            # still serve the rest of the old epoch. Set it first (a no-op for a loader already there).
            for loader in loaders:
                _set_epoch(loader, fit_loop.epoch_progress.current.started)
        else:
            _warn_if_lightning_ends_the_epoch_early(trainer, loaders)

    def _restore_from_lightnings_copy(self, trainer: Any, loaders: list[Any], step: int, error: Exception) -> None:
        """The input checkpoint of the model's step is missing or unusable: fall back on the loader states
        Lightning stored inside the model checkpoint, if they are ours (the same position, saved then)."""
        stored = self._stored_states
        ours = len(stored) == len(loaders) and all(
            isinstance(s, Mapping) and s.get(Key.KIND) == LOADER_KIND for s in stored
        )
        if not ours:
            raise InputStateError(
                f"resuming from the model checkpoint {trainer.ckpt_path} at global step {step}: {error}; and the "
                f"model checkpoint holds no ResumableDataLoader state to fall back on (input checkpoints in "
                f"{self.directory})"
            ) from error
        warnings.warn(
            f"no usable input checkpoint of global step {step} in {self.directory} ({error}); resuming the train "
            f"loaders from the state Lightning stored in {trainer.ckpt_path} instead",
            InputCheckpointWarning,
            stacklevel=2,
        )
        for loader, state in zip(loaders, stored, strict=True):
            loader.load_state_dict(state, source=f"{trainer.ckpt_path} (the loader state Lightning stored)")
        assert self._checkpointer is not None
        self._checkpointer.save(step, pin=True)  # the model checkpoint has its input checkpoint again

    # -- model checkpoint files ---------------------------------------------------------------------

    def _saving_model_file(self, path: str) -> None:
        self._writing = path

    def _removed_model_file(self, path: str) -> None:
        """Lightning deleted a model checkpoint file: unpin its step when no other kept file has that step."""
        step = self._model_files.pop(path, None)
        if step is None:
            # A file of an earlier run: ModelCheckpoint's default names carry the step.
            found = _STEP_IN_NAME.search(os.path.basename(path))
            step = int(found[1]) if found else None
        if step is None or self._checkpointer is None or step in self._model_files.values():
            return
        self._checkpointer.unpin(step)

    # -- saving -----------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._ahead = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._step or self._checkpointer is None:
            return  # accumulating: no optimizer step yet, the loaders are ahead of the model
        self._step, self._ahead = step, False
        if self._checkpointer.after_step(step):
            self._saved_step = step

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Lightning is writing a model checkpoint: make sure an input checkpoint exists at its step, pinned
        (kept whatever ``keep_last``) until Lightning deletes that model checkpoint."""
        step = trainer.global_step
        path, self._writing = self._writing, None
        if self._checkpointer is None or self._ahead or step != self._step:
            return  # not fitting, or mid-step (no position matches a step)
        if step != self._saved_step:
            self._checkpointer.save(step, pin=True)
            self._saved_step = step
        else:
            self._checkpointer.pin(step)
        if path is not None:
            self._model_files[path] = step
        # Lightning writes the model checkpoint after this hook: make the input checkpoint of its step
        # durable first, so that a job killed in between still finds it.
        self._checkpointer.flush()


def _set_epoch(loader: Any, epoch: int) -> None:
    # The loader's own set_epoch when it has one (ResumableDataLoader keeps its position for the current
    # epoch), else the sampler's, as Lightning does.
    for owner in (loader, getattr(loader, "sampler", None)):
        if callable(getattr(owner, "set_epoch", None)):
            owner.set_epoch(epoch)
            return


def _checked_loaders(loaders: list[Any]) -> list[Any]:
    if not any(is_stateful(loader) for loader in loaders):
        names = ", ".join(type(loader).__name__ for loader in loaders)
        raise TypeError(
            f"InputCheckpointCallback: no train loader has state_dict()/load_state_dict() (got {names}); "
            "use torch_input_ckpt.ResumableDataLoader"
        )
    lengths = []
    for number, loader in enumerate(loaders):
        try:
            lengths.append(len(loader))
        except TypeError:
            # Without a length Lightning fetches one batch ahead of the step it trains, so a position taken
            # at a step boundary would be one batch early.
            raise TypeError(
                f"InputCheckpointCallback: train loader {number} ({type(loader).__name__}) has no length; "
                "Lightning then prefetches a batch ahead of training and the saved position would not match "
                "the step. Give the dataset a __len__."
            ) from None
    if len(set(lengths)) > 1:
        # Lightning calls set_epoch(its epoch) on every train sampler, also when it resumes mid-epoch; a
        # loader whose own epochs are shorter (cycled, or exhausted early) would then be moved elsewhere
        # than where it was in the uninterrupted run.
        raise ValueError(
            f"InputCheckpointCallback: the train loaders have {lengths} batches per epoch; several train loaders "
            "resume exactly only when they have the same number, because Lightning sets every sampler's epoch "
            "to its own"
        )
    return loaders


def _warn_if_lightning_misresumes(trainer: Any) -> None:
    # Lightning 2.6, resuming iteration-based training (max_steps) from a checkpoint written in
    # on_train_epoch_end, trains one more batch in the finished epoch and then moves every sampler to the
    # epoch after the next (set_epoch), skipping the rest of an epoch. Its own loop does this with or
    # without this callback; the restored position is right, what Lightning does with it next is not.
    progress = trainer.fit_loop.epoch_progress.total
    if trainer.max_steps != -1 and progress.started == progress.processed == progress.completed + 1:
        warnings.warn(
            f"{trainer.ckpt_path} was saved at the end of an epoch and training is bounded by max_steps: "
            f"{pl.__name__} then trains one extra batch in that epoch and skips most of the next one (with "
            "or without InputCheckpointCallback). Resume from a checkpoint saved in a step "
            "(ModelCheckpoint(every_n_train_steps=...)) or bound training by max_epochs.",
            ExternalStateWarning,
            stacklevel=2,
        )


def _warn_if_lightning_ends_the_epoch_early(trainer: Any, loaders: list[Any]) -> None:
    # Resumed mid-epoch on more ranks than saved, each rank has more batches left than Lightning expects:
    # Lightning counts the epoch's batches done as the old world did (its progress counters) against the
    # new world's, shorter, epoch length, and ends the epoch when they meet. (On the same number of ranks
    # the two agree; on fewer, the loader runs out first and Lightning ends the epoch on StopIteration.)
    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    left = [_batches_left(loader) for loader in loaders]
    length = len(loaders[0])
    if any(n is not None and n > length - done for n in left):
        warnings.warn(
            f"resuming mid-epoch on more ranks than the input checkpoint was saved with: each rank has "
            f"{max(n for n in left if n is not None)} batches left in this epoch, but {pl.__name__} counts "
            f"{done} of its {length} as done and ends the epoch after {max(length - done, 0)}; the rest of "
            "the epoch is skipped. Resume on the same or fewer ranks, or from a checkpoint at an epoch boundary.",
            ExternalStateWarning,
            stacklevel=2,
        )


def _batches_left(loader: Any) -> int | None:
    """Batches a ResumableDataLoader with a ResumableSampler has left in its epoch (None for other loaders)."""
    sampler = getattr(loader, "sampler", None)
    if not isinstance(sampler, ResumableSampler) or not loader.batch_size:
        return None
    samples = sampler.rank_count(sampler.cursor)
    return samples // loader.batch_size if loader.drop_last else -(-samples // loader.batch_size)


def _check_training_step(pl_module: Any) -> None:
    if "dataloader_iter" in inspect.signature(pl_module.training_step).parameters:
        raise TypeError(
            "InputCheckpointCallback does not support training_step(dataloader_iter): the module then takes "
            "batches itself and the position at a step boundary is unknown"
        )


def _resolve_sampler(
    trainer: Any, original: Callable[..., Any], dataloader: Any, shuffle: bool, mode: Any = None
) -> Any:
    """Replaces ``_DataConnector._resolve_sampler``: choose the sampler Lightning injects under DDP.

    Lightning calls it when it is about to replace a loader's sampler with a distributed one. A
    :class:`ResumableSampler` already shards itself; it is kept (or re-sharded over Lightning's ranks
    when it was built for another world), with its position. Anything else is Lightning's business.
    """
    sampler = getattr(dataloader, "sampler", None)
    kwargs = trainer.distributed_sampler_kwargs
    if (
        not isinstance(sampler, ResumableSampler)
        or mode == _RunningStage.PREDICTING
        or not kwargs
        or trainer.overfit_batches
    ):
        return original(dataloader, shuffle, mode)
    size, rank = int(kwargs["num_replicas"]), int(kwargs["rank"])
    if (sampler.num_replicas, sampler.rank) == (size, rank):
        return sampler
    resharded = ResumableSampler(
        # A dataset with its own epoch order (a Mixture) keeps it, and its counters, on the new ranks.
        sampler.length if sampler.dataset_order is None else sampler.dataset_order,
        shuffle=sampler.shuffle,
        seed=sampler.seed,
        num_replicas=size,
        rank=rank,
        drop_last=sampler.drop_last,
        order=sampler.order,
        allow_growth=sampler.allow_growth,
    )
    if (sampler.epoch, sampler.cursor) != (0, 0):
        # The position is global (not per rank), so it carries over to the new world size as it is.
        resharded.move_to(sampler.epoch, sampler.cursor)
    return resharded

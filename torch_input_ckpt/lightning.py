"""PyTorch Lightning integration: ``InputCheckpointCallback`` keeps the train loaders' position in input checkpoints."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from types import ModuleType
from typing import Any

from .checkpointer import InputCheckpointer
from .errors import ExternalStateWarning, InputStateError
from .sampler import ResumableSampler
from .state import FORMAT_VERSION, check_header, field

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


def _now() -> float:
    # One indirection so that tests can drive the clock.
    return time.monotonic()


class _TrainLoaders:
    """The ``Stateful`` the checkpointer saves: the position of the loaders Lightning trains on.

    One loader (the usual case) saves its own state, so the file is the same as a plain PyTorch loop
    with ``InputCheckpointer(loader)`` would write; several (a ``CombinedLoader``) save a list, in
    Lightning's order.
    """

    def __init__(self) -> None:
        self.loaders: list[Any] = []

    def state_dict(self) -> dict[str, Any]:
        if len(self.loaders) == 1:
            return self.loaders[0].state_dict()  # type: ignore[no-any-return]
        states = [loader.state_dict() for loader in self.loaders]
        state: dict[str, Any] = {"kind": "LightningTrainLoaders", "version": FORMAT_VERSION, "loaders": states}
        external = sorted({name for s in states for name in s.get("external", [])})
        if external:
            # Lifted to the top so that the checkpointer's external-state policy sees it.
            state["external"] = external
        return state

    def load_state_dict(self, state_dict: dict[str, Any], *, source: str = "state_dict") -> None:
        if len(self.loaders) == 1:
            _load(self.loaders[0], state_dict, source)
            return
        state = check_header(state_dict, "LightningTrainLoaders", source)
        states = field(state, "loaders", list, source)
        if len(states) != len(self.loaders):
            raise InputStateError(
                f"{source}: the input checkpoint holds {len(states)} train loaders, but Lightning trains on "
                f"{len(self.loaders)}. Resume with the train loaders it was saved with."
            )
        for loader, loader_state in zip(self.loaders, states):
            _load(loader, loader_state, source)


def _load(loader: Any, state: dict[str, Any], source: str) -> None:
    # Our loaders name the file in their errors; other Stateful loaders take the state alone.
    if "source" in inspect.signature(loader.load_state_dict).parameters:
        loader.load_state_dict(state, source=source)
    else:
        loader.load_state_dict(state)


class InputCheckpointCallback(pl.Callback):  # type: ignore[misc,name-defined]
    """Save the train loaders' position in input checkpoints, and resume it at the model checkpoint's step.

    Input checkpoints are small files of their own (``input_<rank>-<step>``, one per global rank), written
    in the background by :class:`~torch_input_ckpt.InputCheckpointer` and numbered by Lightning's
    ``trainer.global_step`` (optimizer steps). One is written

    * every ``every_n_train_steps`` steps and/or every ``train_time_interval``, at the end of the batch
      that completed the step (the last micro-batch with ``accumulate_grad_batches > 1``);
    * whenever Lightning saves a model checkpoint at a step boundary (``ModelCheckpoint``,
      ``trainer.save_checkpoint``), so every such model checkpoint has its input checkpoint;
    * at the start of a fresh run (step 0) when the directory holds none.

    On ``trainer.fit(ckpt_path=...)`` the train loaders are restored from the input checkpoint whose step
    equals the restored model's global step (an error naming the available steps if it is missing);
    without ``ckpt_path``, from the newest input checkpoint, if any. This is the only restore of the
    stream: the copy of the loader state that Lightning stores inside the model checkpoint is not loaded
    while this callback is installed. The restore happens after Lightning builds the train loader and
    before it is iterated.

    Under DDP with ``use_distributed_sampler=True`` Lightning would wrap a :class:`ResumableSampler` in its
    ``DistributedSamplerWrapper`` (which shards it a second time and cannot be resumed); the callback
    makes Lightning inject a :class:`ResumableSampler` sharded over Lightning's ranks instead, with the
    loader's own seed, shuffle, order and drop_last. With ``use_distributed_sampler=False`` loaders are
    left as they are.

    Args:
        dirpath: Directory for the input checkpoints; ``None`` means ``<trainer.default_root_dir>/input_checkpoints``.
        every_n_train_steps: Save every this many optimizer steps (``None``: not by step count).
        train_time_interval: Save when at least this much time has passed since the last input checkpoint,
            checked after each optimizer step; rank 0 decides for all ranks, so they save at the same steps.
        keep_last: How many input checkpoints to keep per rank (older ones are deleted). Keep enough to
            cover the model checkpoints you may resume from.
        external_state_policy: What the checkpointer does when part of the pipeline has state it cannot
            capture (see :class:`~torch_input_ckpt.InputCheckpointer`).

    Raises:
        ValueError: for an ``every_n_train_steps`` below 1, a ``train_time_interval`` that is not a
            positive ``timedelta``, or a ``keep_last`` below 1.
    """

    def __init__(
        self,
        dirpath: str | os.PathLike[str] | None = None,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        keep_last: int = 3,
        external_state_policy: str = "fail",
    ) -> None:
        if every_n_train_steps is not None and (
            not isinstance(every_n_train_steps, int) or isinstance(every_n_train_steps, bool) or every_n_train_steps < 1
        ):
            raise ValueError(f"every_n_train_steps must be an int >= 1 or None (got {every_n_train_steps=})")
        if train_time_interval is not None and (
            not isinstance(train_time_interval, timedelta) or train_time_interval.total_seconds() <= 0
        ):
            raise ValueError(f"train_time_interval must be a positive datetime.timedelta or None (got {train_time_interval=})")
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
            raise ValueError(f"keep_last must be an int >= 1 (got {keep_last=})")
        super().__init__()
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self.train_time_interval = train_time_interval
        self.keep_last = keep_last
        self.external_state_policy = external_state_policy
        self._loaders = _TrainLoaders()
        self._checkpointer: InputCheckpointer | None = None
        self._trainer: Any = None
        self._restored = False
        # The step the loaders' position corresponds to, and whether a batch of the next step has been
        # taken since (then the position is ahead of the model and must not be saved under a step).
        self._step = 0
        self._ahead = False
        self._saved_step: int | None = None
        self._last_save_time = 0.0

    @property
    def directory(self) -> str | None:
        """Where the input checkpoints go (known once ``fit`` has started)."""
        return None if self._checkpointer is None else self._resolved_dir

    # -- lifecycle --------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        _check_training_step(pl_module)
        self._resolved_dir = self.dirpath or os.path.join(trainer.default_root_dir, "input_checkpoints")
        self._loaders = _TrainLoaders()
        self._checkpointer = InputCheckpointer(
            self._resolved_dir,
            self._loaders,
            every_n_steps=self.every_n_train_steps,
            keep_last=self.keep_last,
            rank=trainer.global_rank,
            external_state_policy=self.external_state_policy,
        )
        self._trainer = trainer
        self._restored = False
        self._saved_step = None
        self._install(trainer)

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._finish(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        # Lightning does not call `teardown` when fit fails: flush the saves already made (a preempted job
        # resumes from them) and give Lightning its methods back.
        self._finish(trainer)

    def _finish(self, trainer: Any) -> None:
        self._uninstall(trainer)
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            checkpointer.close()

    # -- Lightning's internals --------------------------------------------------------------------
    # Lightning has no callback hook between building the train loader and iterating it, which is where
    # a loader must be restored (an iterator already made would continue from the old position), nor one
    # for the sampler it injects under DDP. So, for the duration of `fit`, two methods of this trainer's
    # own loop and data connector are replaced by wrappers (instance attributes; the classes are untouched).

    def _install(self, trainer: Any) -> None:
        fit_loop, connector = trainer.fit_loop, getattr(trainer, "_data_connector", None)
        missing = [
            name
            for owner, name in ((fit_loop, "_load_combined_loader_states"), (connector, "_resolve_sampler"))
            if not callable(getattr(owner, name, None))
        ]
        if missing or not hasattr(fit_loop, "_combined_loader"):
            raise RuntimeError(
                f"InputCheckpointCallback does not support {pl.__name__} {getattr(pl, '__version__', '?')}: "
                f"it lacks {missing or ['FitLoop._combined_loader']} (tested with 2.6)"
            )
        fit_loop._load_combined_loader_states = self._restore_train_loaders
        connector._resolve_sampler = functools.partial(_resolve_sampler, trainer, connector._resolve_sampler)

    @staticmethod
    def _uninstall(trainer: Any) -> None:
        for owner, name in (
            (trainer.fit_loop, "_load_combined_loader_states"),
            (getattr(trainer, "_data_connector", None), "_resolve_sampler"),
        ):
            if owner is not None and name in vars(owner):
                delattr(owner, name)

    def _restore_train_loaders(self) -> None:
        """Replaces ``FitLoop._load_combined_loader_states``: runs each time Lightning (re)builds the train loaders."""
        trainer = self._trainer
        fit_loop = trainer.fit_loop
        # Lightning's own copy of the loader state, from the model checkpoint: never loaded while this
        # callback is installed (the input checkpoint is the one source of truth), only released.
        fit_loop._combined_loader_states_to_load = []
        combined = fit_loop._combined_loader
        if combined is None or self._checkpointer is None:
            return
        self._loaders.loaders = _checked_loaders(list(combined.flattened))
        if self._restored:
            return  # reloaded loaders (reload_dataloaders_every_n_epochs) start at their epoch, as Lightning's
        self._restored = True
        checkpointer = self._checkpointer
        if trainer.ckpt_path is not None:
            step = trainer.global_step
            _warn_if_lightning_misresumes(trainer)
            try:
                checkpointer.restore(step)
            except InputStateError as error:
                raise InputStateError(
                    f"resuming from the model checkpoint {trainer.ckpt_path} at global step {step}: {error}"
                ) from error
            log.info("restored the train loaders from the input checkpoint at step %d", step)
        else:
            restored = checkpointer.restore_or_save_initial()
            if restored is not None:
                log.info("restored the train loaders from the newest input checkpoint (step %d)", restored)
        if trainer.ckpt_path is not None and fit_loop.epoch_loop.batch_progress.is_last_batch:
            # The model checkpoint was taken after the last batch of an epoch (Lightning's epoch, which
            # limit_train_batches may end before the loader's): Lightning goes on with the next epoch and
            # sets it on the samplers, but only after it has made the loaders' iterators, which would then
            # still serve the rest of the old epoch. Set it first (a no-op for a loader already there).
            next_epoch = fit_loop.epoch_progress.current.started
            for loader in self._loaders.loaders:
                _set_epoch(loader, next_epoch)
        self._step = trainer.global_step
        self._ahead = False
        self._saved_step = self._step
        self._last_save_time = _now()

    # -- saving -----------------------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._ahead = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._step or self._checkpointer is None:
            return  # accumulating: no optimizer step yet, the loaders are ahead of the model
        self._step, self._ahead = step, False
        saved = self._checkpointer.after_step(step)
        if not saved and self._time_due(trainer):
            self._checkpointer.save(step)
            saved = True
        if saved:
            self._saved_step = step
            self._last_save_time = _now()

    def _time_due(self, trainer: Any) -> bool:
        if self.train_time_interval is None:
            return False
        due = _now() - self._last_save_time >= self.train_time_interval.total_seconds()
        # Clocks differ between ranks: rank 0 decides for all, so that every rank saves the same steps
        # (as ModelCheckpoint and Timer do).
        return bool(trainer.strategy.broadcast(due, 0))

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """Lightning is writing a model checkpoint: make sure an input checkpoint exists at its step."""
        if self._checkpointer is None or not self._restored or self._ahead:
            return  # not fitting, or mid-step: no position matches a step
        step = trainer.global_step
        if step != self._step or step == self._saved_step:
            return
        self._checkpointer.save(step)
        self._saved_step = step
        self._last_save_time = _now()


def _set_epoch(loader: Any, epoch: int) -> None:
    # The loader's own set_epoch when it has one (ResumableDataLoader keeps its position for the current
    # epoch), else the sampler's, as Lightning does.
    for owner in (loader, getattr(loader, "sampler", None)):
        if callable(getattr(owner, "set_epoch", None)):
            owner.set_epoch(epoch)
            return


def _checked_loaders(loaders: list[Any]) -> list[Any]:
    lengths = []
    for number, loader in enumerate(loaders):
        if not (callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))):
            raise TypeError(
                f"InputCheckpointCallback: train loader {number} ({type(loader).__name__}) has no "
                "state_dict()/load_state_dict(); use torch_input_ckpt.ResumableDataLoader"
            )
        try:
            lengths.append(len(loader))
        except TypeError:
            # Without a length Lightning fetches one batch ahead of the step it trains, so a position
            # taken at a step boundary would be one batch early.
            raise TypeError(
                f"InputCheckpointCallback: train loader {number} ({type(loader).__name__}) has no length; "
                "Lightning then prefetches a batch ahead of training and the saved position would not match "
                "the step. Give the dataset a __len__."
            ) from None
    if len(set(lengths)) > 1:
        # Lightning calls set_epoch(its epoch) on every train sampler, also when it resumes mid-epoch; a
        # loader whose own epochs are shorter (cycled, or exhausted early) is then moved to another position
        # than the one it had in the uninterrupted run.
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


def _check_training_step(pl_module: Any) -> None:
    if "dataloader_iter" in inspect.signature(pl_module.training_step).parameters:
        raise TypeError(
            "InputCheckpointCallback does not support training_step(dataloader_iter): the module then takes "
            "batches itself and the position at a step boundary is unknown"
        )


def _resolve_sampler(trainer: Any, original: Callable[..., Any], dataloader: Any, shuffle: bool, mode: Any = None) -> Any:
    """Replaces ``_DataConnector._resolve_sampler``: choose the sampler Lightning injects under DDP.

    Lightning calls it when it is about to replace a loader's sampler with a distributed one. A
    :class:`ResumableSampler` already shards itself; it is kept (or re-sharded over Lightning's ranks
    when it was built for another world), with its position. Anything else is Lightning's business.
    """
    sampler = getattr(dataloader, "sampler", None)
    kwargs = trainer.distributed_sampler_kwargs
    if not isinstance(sampler, ResumableSampler) or mode == _RunningStage.PREDICTING or not kwargs or trainer.overfit_batches:
        return original(dataloader, shuffle, mode)
    size, rank = int(kwargs["num_replicas"]), int(kwargs["rank"])
    if (sampler.num_replicas, sampler.rank) == (size, rank):
        return sampler
    resharded = ResumableSampler(
        sampler.length,
        shuffle=sampler.shuffle,
        seed=sampler.seed,
        num_replicas=size,
        rank=rank,
        drop_last=sampler.drop_last,
        order=sampler.order,
    )
    if (sampler.epoch, sampler.cursor) != (0, 0):
        # The position is global (not per rank), so it carries over to the new world size as it is.
        resharded.load_state_dict({**sampler.state_dict(), "epoch": sampler.epoch, "cursor": sampler.cursor})
    return resharded

"""Hugging Face ``Trainer`` whose resume seeks the input stream instead of replaying it.

Guarantee: ``trainer.train(resume_from_checkpoint=...)`` continues with exactly the batch after the
restored checkpoint's step — the same samples, in the same order, with the same per-sample random
draws — on every rank, in O(1) (no batch is replayed), including under gradient accumulation,
``max_steps``/``num_train_epochs`` and ``dataloader_num_workers``. Resumed on another number of
ranks, the rest of the epoch is split over the new ranks, each sample exactly once (the epoch's tail
padded as ``DistributedSampler`` pads it).

How: the training loader is a :class:`ResumableDataLoader` built from the ``TrainingArguments``; the
input checkpoint of ``checkpoint-<step>`` is written inside it, as ``checkpoint-<step>/input/``
(one file per rank, before the model is written), so ``save_total_limit`` prunes both together.
On resume the Trainer is told where the stream really is (epoch, batches of it done) instead of
computing it from ``global_step``, and its own ``skip_first_batches`` replay becomes a no-op for
this loader. The Trainer writes ``checkpoint-<step>`` file by file (transformers dropped its staged,
renamed save), so a kill mid-save leaves a folder that ``get_last_checkpoint`` picks; ``train()``
skips such a folder (no valid ``trainer_state.json``, the file written last) with an
``IncompleteCheckpointWarning`` and resumes from the newest complete checkpoint before it. See the
Hugging Face guide (docs/guides/hugging-face.md, "Why a Trainer mixin and not a callback").

Refused with a ``ValueError``: an ``IterableDataset`` or a dataset without a length,
``train_sampling_strategy`` other than ``"random"``/``"sequential"`` (``group_by_length``,
``batch_rebalance``), an overridden ``_get_train_sampler``, ``auto_find_batch_size``, and the
accelerate settings :func:`~torch_input_ckpt.integrations.hf_accelerate.prepare_resumable` refuses.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from typing import Any

import transformers
import transformers.trainer
from torch.utils.data import IterableDataset
from transformers import Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .._compat.hf import (
    hf_check_trainer,
    hf_collator_for_training,
    hf_output_dir,
    hf_overrides_train_sampler,
    hf_replaced_skip,
)
from ..checkpoint.checkpointer import InputCheckpointer
from ..errors import IncompleteCheckpointWarning, InputStateError
from ..loader.dataloader import ResumableDataLoader
from .hf_accelerate import AcceleratedLoader, prepare_resumable

__all__ = ["INPUT_CHECKPOINT_DIRNAME", "ResumableTrainer", "ResumableTrainerMixin"]

logger = logging.getLogger("torch_input_ckpt")

INPUT_CHECKPOINT_DIRNAME = "input"
"""The sub-directory of ``checkpoint-<step>`` that holds that step's input checkpoint."""

_SUPPORTED_STRATEGIES = {"random": True, "sequential": False}
_CHECKPOINT_NAME = re.compile(re.escape(PREFIX_CHECKPOINT_DIR) + r"-(\d+)")  # get_last_checkpoint's pattern


class ResumableTrainerMixin:
    """Mix into a ``transformers.Trainer`` (before it) to resume the training data exactly and instantly.

    Class attributes a subclass may change: ``input_reseed_rng`` (``ResumableDataLoader``'s
    ``reseed_rng``, default ``True``).
    """

    input_reseed_rng: bool = True
    _input_loader: AcceleratedLoader | None = None

    # -- the training loader ------------------------------------------------------------------------

    def get_train_dataloader(self) -> AcceleratedLoader:
        """A :class:`ResumableDataLoader` configured from the ``TrainingArguments``, prepared for accelerate."""
        trainer: Any = self
        hf_check_trainer(transformers.trainer, Trainer, transformers.__version__)
        args = trainer.args
        dataset = trainer.train_dataset
        _check_supported(trainer, dataset)
        dataset, collator = hf_collator_for_training(trainer, dataset)
        loader = ResumableDataLoader(
            dataset,
            batch_size=args.train_batch_size,
            shuffle=_SUPPORTED_STRATEGIES[args.train_sampling_strategy],
            seed=args.data_seed if args.data_seed is not None else args.seed,
            reseed_rng=self.input_reseed_rng,
            collate_fn=collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            prefetch_factor=args.dataloader_prefetch_factor,
            in_order=args.dataloader_in_order,
            drop_last=args.dataloader_drop_last,
        )
        self._input_loader = prepare_resumable(trainer.accelerator, loader)
        return self._input_loader

    # -- resuming -------------------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``, resumed from the newest *complete* checkpoint, without replaying the epoch.

        ``resume_from_checkpoint`` is the Trainer's: ``True`` for the newest ``checkpoint-<step>`` of
        ``output_dir``, or a folder (such as ``get_last_checkpoint(output_dir)``). A ``checkpoint-<step>``
        folder that an interrupted save left incomplete (no valid ``trainer_state.json``, the file the
        Trainer writes last) is skipped with an :class:`IncompleteCheckpointWarning`, for the newest
        complete one before it, or for a start from scratch if there is none.
        """
        hf_check_trainer(transformers.trainer, Trainer, transformers.__version__)
        resume_from_checkpoint = self._complete_checkpoint(resume_from_checkpoint)
        with hf_replaced_skip(transformers.trainer, self._skip_for):
            return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]

    def _complete_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | bool | None:
        """The checkpoint to resume from: the one asked for, or the newest complete one before it."""
        if resume_from_checkpoint is True:
            trainer: Any = self
            output_dir = trainer.args.output_dir
            newest = get_last_checkpoint(output_dir) if output_dir and os.path.isdir(output_dir) else None
            if newest is None:
                return True  # the Trainer's own error: "No valid checkpoint found in output directory"
            resume_from_checkpoint = newest
        if not isinstance(resume_from_checkpoint, (str, os.PathLike)):
            return resume_from_checkpoint
        path = os.fspath(resume_from_checkpoint)
        step = _checkpoint_step(path)
        if step is None or not os.path.isdir(path):
            return resume_from_checkpoint  # not a folder the Trainer wrote: resumed (or refused by it) as asked
        problem = _incomplete(path, step)
        if problem is None:
            return resume_from_checkpoint
        fallback, skipped = _newest_complete_before(os.path.dirname(path) or ".", step)
        then = (
            f"resuming from {fallback}, the newest complete checkpoint before it"
            if fallback
            else "no complete checkpoint is older: training starts from step 0"
        )
        also = "".join(f"; so is {older}: {older_problem}" for older, older_problem in skipped)
        warnings.warn(
            f"{path} is incomplete: {problem} (the Trainer writes it last: a save was interrupted){also}; {then}. "
            "Delete the incomplete folders to resume without this warning",
            IncompleteCheckpointWarning,
            stacklevel=3,
        )
        return fallback

    def _skip_for(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def skip_first_batches(dataloader: Any, num_batches: int = 0) -> Any:
            if dataloader is not self._input_loader or self._input_loader is None:
                return original(dataloader, num_batches)
            done = len(dataloader) - dataloader.batches_left()
            if num_batches != done:  # the Trainer's numbers come from _init_training_state below
                raise InputStateError(
                    f"the Trainer asks to skip {num_batches} batches of the resumed epoch, the restored input "
                    f"stream has {done} behind it: a subclass changed the resume accounting"
                )
            return dataloader  # already there: nothing to replay

        return skip_first_batches

    def _init_training_state(
        self,
        max_steps: int,
        num_update_steps_per_epoch: int,
        num_train_epochs: int,
        resume_from_checkpoint: Any,
        trial: Any,
    ) -> tuple[int, int]:
        """Restore the input checkpoint of the resumed step and report the stream's real position."""
        trainer: Any = self
        epochs_trained, steps_trained = super()._init_training_state(  # type: ignore[misc]
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        loader = self._input_loader
        if resume_from_checkpoint is None or loader is None or trainer.args.ignore_data_skip:
            return epochs_trained, steps_trained
        step = trainer.state.global_step
        restore_input_checkpoint(resume_from_checkpoint, step, loader)
        epoch, left = loader.epoch, loader.batches_left()
        done = len(loader) - left
        accumulation = trainer.args.gradient_accumulation_steps
        if done % accumulation:
            raise InputStateError(
                f"{resume_from_checkpoint}: the restored input stream is {done} batches into epoch {epoch} on this "
                f"rank, not a whole number of gradient accumulations of {accumulation} (the world size changed "
                "mid-epoch?): resume on the old number of ranks, or from a checkpoint at an epoch's end"
            )
        if (epoch, done) != (epochs_trained, steps_trained):  # the world size changed
            if trainer.args.max_steps <= 0:
                # num_train_epochs decides: the steps left are those of the rest of this epoch and of
                # the epochs after it, counted on this world size (global_step counted the old one's).
                later = max(0, int(num_train_epochs) - epoch - 1)
                trainer.state.max_steps = step + -(-left // accumulation) + later * num_update_steps_per_epoch
            logger.info(
                "input stream resumed at epoch %d, %d batches into it (the Trainer's count from global step %d "
                "on this world size: epoch %d, %d batches)",
                epoch,
                done,
                step,
                epochs_trained,
                steps_trained,
            )
        return epoch, done

    # -- saving ---------------------------------------------------------------------------------------

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Write this rank's input checkpoint into ``checkpoint-<step>/input/``, then the Trainer's checkpoint."""
        trainer: Any = self
        if self._input_loader is not None:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
            directory = os.path.join(hf_output_dir(trainer, trial), folder, INPUT_CHECKPOINT_DIRNAME)
            os.makedirs(directory, exist_ok=True)
            with InputCheckpointer(directory, self._input_loader, every_n_steps=1, keep_last=1) as checkpointer:
                checkpointer.save(trainer.state.global_step)
            # Leaving the block flushed this rank's file; once every rank is here, the input checkpoint
            # of this step is durable on every rank before any model file is written.
            trainer.accelerator.wait_for_everyone()
        super()._save_checkpoint(model, trial)  # type: ignore[misc]


def _checkpoint_step(path: str) -> int | None:
    """The step of a ``checkpoint-<step>`` folder's name, or None for another name."""
    match = _CHECKPOINT_NAME.fullmatch(os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else None


def _checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every ``checkpoint-<step>`` folder in ``run_dir`` (as ``get_last_checkpoint`` sees them)."""
    found = []
    for name in os.listdir(run_dir):
        path = os.path.join(run_dir, name)
        step = _checkpoint_step(path)
        if step is not None and os.path.isdir(path):
            found.append((step, path))
    return found


def _newest_complete_before(run_dir: str, step: int) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete ``checkpoint-<s>`` of ``run_dir`` with ``s < step`` (None if there is none), and
    ``(folder, what is wrong)`` for each incomplete one newer than it."""
    skipped = []
    for older_step, older in sorted(_checkpoints(run_dir), reverse=True):
        if older_step >= step:
            continue
        problem = _incomplete(older, older_step)
        if problem is None:
            return older, skipped
        skipped.append((older, problem))
    return None, skipped


def _incomplete(checkpoint: str, step: int) -> str | None:
    """What shows that the save of ``checkpoint`` (of ``step``) did not finish, or None if it did.

    ``trainer_state.json`` is the last file the Trainer writes into the folder, after the model,
    optimizer, scheduler and RNG states, and the mixin writes every rank's input checkpoint before
    any of these: a valid ``trainer_state.json`` of ``step`` means the rest is there.
    """
    state = os.path.join(checkpoint, TRAINER_STATE_NAME)
    try:
        with open(state, "rb") as file:
            found = json.loads(file.read()).get("global_step")
    except FileNotFoundError:
        return f"it has no {TRAINER_STATE_NAME}"
    except (OSError, ValueError, AttributeError) as error:
        return f"its {TRAINER_STATE_NAME} cannot be read ({type(error).__name__}: {error})"
    if type(found) is not int or found != step:
        return f"its {TRAINER_STATE_NAME} has global_step {found!r}, not {step}"
    return None


class ResumableTrainer(ResumableTrainerMixin, Trainer):
    """``transformers.Trainer`` with :class:`ResumableTrainerMixin`: use it where you use ``Trainer``."""


def restore_input_checkpoint(checkpoint: str | os.PathLike[str], step: int, loader: Any) -> None:
    """Restore ``loader`` from the input checkpoint of ``step`` inside the Trainer checkpoint ``checkpoint``.

    Args:
        checkpoint: A ``checkpoint-<step>`` directory.
        step: The Trainer's ``global_step`` restored from it.
        loader: What was saved (the Trainer's :class:`AcceleratedLoader`).

    Raises:
        InputStateError: if the directory has no input checkpoint of ``step`` for this rank's world.
    """
    directory = os.path.join(os.fspath(checkpoint), INPUT_CHECKPOINT_DIRNAME)
    if not os.path.isdir(directory):
        raise InputStateError(
            f"{checkpoint} has no input checkpoint ({directory} is missing): it was not written by a "
            "ResumableTrainer; resume it with the stock Trainer (which replays the epoch) or from a checkpoint "
            "a ResumableTrainer wrote"
        )
    with InputCheckpointer(directory, loader, every_n_steps=1, keep_last=1) as checkpointer:
        checkpointer.restore(step)


def _check_supported(trainer: Any, dataset: Any) -> None:
    args = trainer.args
    if dataset is None:
        raise ValueError("Trainer: training requires a train_dataset.")
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(
            f"ResumableTrainer needs a map-style dataset with a length (got {type(dataset).__name__}): an "
            "iterable dataset's position is not a cursor; use the stock Trainer for it"
        )
    if args.train_sampling_strategy not in _SUPPORTED_STRATEGIES:
        raise ValueError(
            f"ResumableTrainer does not support train_sampling_strategy={args.train_sampling_strategy!r} "
            f"(supported: {sorted(_SUPPORTED_STRATEGIES)}): its sampler cannot seek"
        )
    if hf_overrides_train_sampler(trainer, Trainer):
        raise ValueError(
            f"{type(trainer).__name__} overrides _get_train_sampler, which ResumableTrainer's loader does not use "
            "(it samples with a ResumableSampler): remove the override or use the stock Trainer"
        )
    if args.auto_find_batch_size:
        raise ValueError(
            "ResumableTrainer does not support auto_find_batch_size=True: the batch size of a resumed stream "
            "must be the one it was saved with"
        )

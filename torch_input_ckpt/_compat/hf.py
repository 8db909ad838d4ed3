"""Hugging Face's private parts: transformers' ``Trainer`` and accelerate's ``GradientState``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from . import unsupported

__all__ = [
    "ACCELERATE_TESTED",
    "TRANSFORMERS_TESTED",
    "hf_check_trainer",
    "hf_collator_for_training",
    "hf_dataloader_begin",
    "hf_dataloader_end",
    "hf_output_dir",
    "hf_overrides_train_sampler",
    "hf_replaced_skip",
]

# -- Hugging Face: transformers' Trainer and accelerate's GradientState ------------------------------
# `ResumableTrainerMixin` (integrations/hf_trainer.py) relies on these private parts of transformers' Trainer:
# - `_init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs,
#   resume_from_checkpoint, trial)` returns `(epochs_trained, steps_trained_in_current_epoch)`, from
#   which `_run_epoch` computes where the resumed epoch starts; the mixin overrides it to answer
#   from the restored input position.
# - `_run_epoch` calls the module-global `transformers.trainer.skip_first_batches` (accelerate's) to
#   replay the resumed epoch; while the mixin's `train()` runs, that name is replaced by a function that
#   returns our loader unchanged (it is already at the position) and calls the original for any other.
# - `_save_checkpoint(model, trial)` writes `<_get_output_dir(trial)>/checkpoint-<global_step>`; the
#   mixin overrides it to write the input checkpoint there first. It writes the model, optimizer,
#   scheduler and RNG states before `trainer_state.json` (`self.state.save_to_json`), in place: the
#   mixin takes a folder without a valid `trainer_state.json` for one a killed save left incomplete.
# - `_get_collator_with_removed_columns` / `_remove_unused_columns` apply `remove_unused_columns`.
# - `_get_train_sampler`: a subclass overriding it is refused (our loader samples by itself).
# `AcceleratedLoader` (integrations/hf_accelerate.py) registers itself with accelerate's `GradientState` while it
# iterates (`_add_dataloader` / `_remove_dataloader`), as accelerate's own loaders do, so that
# `end_of_dataloader` (and with it `accelerator.accumulate`'s sync at an epoch's end) is right.
TRANSFORMERS_TESTED = "5.23.0"
ACCELERATE_TESTED = "1.15.0"

_hf_checked: set[str] = set()


def _version(module: Any) -> str:
    return str(getattr(module, "__version__", "unknown"))


def hf_check_trainer(trainer_module: ModuleType, trainer_cls: type, transformers_version: str) -> None:
    """Check once that transformers' Trainer has the private parts the mixin relies on.

    Args:
        trainer_module: ``transformers.trainer``.
        trainer_cls: ``transformers.Trainer``.
        transformers_version: ``transformers.__version__``, for the message.

    Raises:
        UnsupportedVersionError: naming what is missing, the version found and the one tested.
    """
    if "trainer" in _hf_checked:
        return

    def params(name: str) -> list[str]:
        fn = getattr(trainer_cls, name, None)
        return list(inspect.signature(fn).parameters)[1:] if callable(fn) else []

    run_epoch = getattr(trainer_cls, "_run_epoch", None)
    checks = (
        (
            "Trainer._init_training_state(max_steps, num_update_steps_per_epoch, num_train_epochs, "
            "resume_from_checkpoint, trial)",
            params("_init_training_state")
            == ["max_steps", "num_update_steps_per_epoch", "num_train_epochs", "resume_from_checkpoint", "trial"],
        ),
        ("Trainer._save_checkpoint(model, trial)", params("_save_checkpoint") == ["model", "trial"]),
        (
            "Trainer._save_checkpoint writing trainer_state.json after the model, optimizer and RNG states",
            _writes_in_order(
                getattr(trainer_cls, "_save_checkpoint", None),
                ["save_model(", "_save_optimizer_and_scheduler(", "_save_rng_state(", "save_to_json("],
            ),
        ),
        ("Trainer._get_output_dir(trial)", params("_get_output_dir") == ["trial"]),
        ("Trainer._get_collator_with_removed_columns", bool(params("_get_collator_with_removed_columns"))),
        ("Trainer._remove_unused_columns", bool(params("_remove_unused_columns"))),
        ("transformers.trainer.skip_first_batches", callable(getattr(trainer_module, "skip_first_batches", None))),
        (
            "Trainer._run_epoch calling skip_first_batches(...)",
            callable(run_epoch) and "skip_first_batches(" in inspect.getsource(run_epoch),
        ),
    )
    missing = [name for name, present in checks if not present]
    if missing:
        raise unsupported("transformers", transformers_version, ", ".join(missing), TRANSFORMERS_TESTED)
    _hf_checked.add("trainer")


def _writes_in_order(method: Any, calls: list[str]) -> bool:
    """Whether ``method``'s source makes ``calls`` (each found once at least), first ones first."""
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return False
    found = [source.find(call) for call in calls]
    return -1 not in found and found == sorted(found)


@contextmanager
def hf_replaced_skip(
    trainer_module: ModuleType, make: Callable[[Callable[..., Any]], Callable[..., Any]]
) -> Iterator[None]:
    """Replace ``transformers.trainer.skip_first_batches`` by ``make(original)`` for the ``with`` block."""
    original = trainer_module.skip_first_batches
    trainer_module.skip_first_batches = make(original)
    try:
        yield
    finally:
        trainer_module.skip_first_batches = original


def hf_output_dir(trainer: Any, trial: Any) -> str:
    """The run directory in which ``trainer._save_checkpoint(model, trial)`` writes ``checkpoint-<step>``."""
    return str(trainer._get_output_dir(trial=trial))


def hf_overrides_train_sampler(trainer: Any, trainer_cls: type) -> bool:
    """Whether ``trainer``'s class overrides ``Trainer._get_train_sampler`` (a sampler our loader would ignore)."""
    return type(trainer)._get_train_sampler is not trainer_cls._get_train_sampler


def hf_collator_for_training(trainer: Any, dataset: Any) -> tuple[Any, Callable[..., Any] | None]:
    """The dataset and collator the Trainer itself would use for training (``remove_unused_columns``)."""
    collator = trainer.data_collator
    try:
        import datasets  # noqa: PLC0415 - optional, as in transformers
    except ImportError:
        datasets = None
    if datasets is not None and isinstance(dataset, datasets.Dataset):
        return trainer._remove_unused_columns(dataset, description="Training"), collator
    return dataset, trainer._get_collator_with_removed_columns(collator, description="Training")


def _check_gradient_state(gradient_state: Any) -> None:
    if "gradient_state" in _hf_checked:
        return
    missing = [
        name for name in ("_add_dataloader", "_remove_dataloader") if not callable(getattr(gradient_state, name, None))
    ]
    if missing:
        import accelerate  # noqa: PLC0415 - only for the version in the message

        raise unsupported("accelerate", _version(accelerate), "GradientState." + ", ".join(missing), ACCELERATE_TESTED)
    _hf_checked.add("gradient_state")


def hf_dataloader_begin(gradient_state: Any, loader: Any) -> None:
    """Make ``loader`` accelerate's active dataloader (what its own loaders do in ``begin()``)."""
    _check_gradient_state(gradient_state)
    gradient_state._add_dataloader(loader)


def hf_dataloader_end(gradient_state: Any, loader: Any) -> None:
    """Undo :func:`hf_dataloader_begin` (what accelerate's loaders do in ``end()``)."""
    gradient_state._remove_dataloader(loader)

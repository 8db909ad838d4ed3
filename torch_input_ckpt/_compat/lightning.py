"""Lightning's private parts: the fit loop's loader-state hook and the data connector's sampler choice."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import unsupported

__all__ = [
    "LIGHTNING_TESTED",
    "lightning_install",
    "lightning_stored_loader_states",
    "lightning_track_files",
    "lightning_train_loaders",
    "lightning_uninstall",
]

LIGHTNING_TESTED = "2.6"


# -- Lightning: the fit loop ---------------------------------------------------------------------------
# Lightning has no callback hook between building the train loaders and iterating them, nor one for the
# sampler it injects under DDP. For the duration of `fit`, one method of the trainer's fit loop and one
# of its data connector are shadowed by instance attributes (the classes are untouched).

_LIGHTNING_HOOKS = (("fit_loop", "_load_combined_loader_states"), ("_data_connector", "_resolve_sampler"))
# Public methods, shadowed the same way for the duration of `fit` to learn which model checkpoint file
# goes with which step (ModelCheckpoint saves through the first and deletes through the second).
_LIGHTNING_FILE_HOOKS = ((None, "save_checkpoint"), ("strategy", "remove_checkpoint"))


def lightning_install(trainer: Any, pl: Any, restore: Callable[[], None], resolve: Callable[..., Any]) -> None:
    """Shadow the fit loop's loader-state hook with ``restore()`` and the data connector's sampler choice
    with ``resolve(original, dataloader, shuffle, mode=None)``.

    Raises:
        UnsupportedVersionError: if this Lightning lacks either method or the fit loop's combined loader.
    """
    owners = [getattr(trainer, owner, None) for owner, _ in _LIGHTNING_HOOKS]
    missing = [
        f"{type(owner).__name__ if owner is not None else owner_name}.{name}"
        for owner, (owner_name, name) in zip(owners, _LIGHTNING_HOOKS, strict=True)
        if not callable(getattr(owner, name, None))
    ]
    if not hasattr(trainer.fit_loop, "_combined_loader"):
        missing.append("FitLoop._combined_loader")
    if missing:
        raise unsupported(pl.__name__, getattr(pl, "__version__", "?"), ", ".join(missing), LIGHTNING_TESTED)
    fit_loop, connector = owners
    fit_loop._load_combined_loader_states = restore
    original = connector._resolve_sampler
    connector._resolve_sampler = lambda dataloader, shuffle, mode=None: resolve(original, dataloader, shuffle, mode)


def lightning_track_files(trainer: Any, saving: Callable[[str], None], removed: Callable[[str], None]) -> None:
    """Call ``saving(path)`` before the trainer writes a model checkpoint file and ``removed(path)`` after
    its strategy deletes one."""
    save, strategy = trainer.save_checkpoint, trainer.strategy
    remove = strategy.remove_checkpoint

    def save_checkpoint(filepath: Any, *args: Any, **kwargs: Any) -> Any:
        saving(str(filepath))
        return save(filepath, *args, **kwargs)

    def remove_checkpoint(filepath: Any) -> Any:
        result = remove(filepath)
        removed(str(filepath))
        return result

    trainer.save_checkpoint = save_checkpoint
    strategy.remove_checkpoint = remove_checkpoint


def lightning_uninstall(trainer: Any) -> None:
    """Give the trainer its own methods back (a no-op where nothing is shadowed)."""
    for owner_name, name in _LIGHTNING_HOOKS + _LIGHTNING_FILE_HOOKS:
        owner = trainer if owner_name is None else getattr(trainer, owner_name, None)
        if owner is not None and name in vars(owner):
            delattr(owner, name)


def lightning_train_loaders(trainer: Any) -> list[Any] | None:
    """The train loaders Lightning built, in its order (None before it built them)."""
    combined = trainer.fit_loop._combined_loader
    return None if combined is None else list(combined.flattened)


def lightning_stored_loader_states(trainer: Any, *, release: bool) -> list[Any]:
    """The train loaders' states Lightning read from the model checkpoint (to load); ``release`` drops
    them so that Lightning never loads them itself."""
    fit_loop = trainer.fit_loop
    states = list(getattr(fit_loop, "_combined_loader_states_to_load", None) or [])
    if release:
        fit_loop._combined_loader_states_to_load = []
    return states

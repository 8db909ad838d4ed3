"""Every touch of a third-party private API, in one place, each checked once against the version found.

torch's ``DataLoader`` hooks, the keys of torchdata's ``StatefulDataLoader`` state, and Lightning's
loop internals are not public and may change between releases. Code elsewhere in the package calls
the functions here instead of touching them; each check raises :class:`UnsupportedVersionError`
naming the package, the version found, what is missing and the version this was written for.
Lightning and Hugging Face are never imported here: the functions take their objects as arguments.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

__all__ = [
    "FastForwardNoticeFilter",
    "STATEFUL_INNER_KEY",
    "HookedDataLoader",
    "UnsupportedVersionError",
    "lightning_install",
    "lightning_stored_loader_states",
    "lightning_track_files",
    "lightning_train_loaders",
    "lightning_uninstall",
    "stateful_dataloader_batches",
    "stateful_dataloader_drop_pending",
]

TORCH_TESTED = "2.13.0"
LIGHTNING_TESTED = "2.6"


class UnsupportedVersionError(RuntimeError):
    """A third-party package lacks a private API this library relies on (its version is not supported)."""


def _unsupported(package: str, version: str, missing: str, tested: str) -> UnsupportedVersionError:
    return UnsupportedVersionError(
        f"torch_input_ckpt does not support {package} {version}: it lacks {missing} (written for {tested})"
    )


# -- torch: DataLoader -------------------------------------------------------------------------------
# torch's iterators draw their indices from `DataLoader._index_sampler` (a property that exists so that
# `sampler`/`batch_sampler` keep their public meaning), iterate it synchronously when an iterator is
# built (`_BaseDataLoaderIter.__init__`) and when persistent workers are reset (`_reset`), and read
# `dataset` and `collate_fn` from the loader in `_get_iterator` when they start workers.


def _check_torch() -> None:
    hook = inspect.getattr_static(DataLoader, "_index_sampler", None)
    init_reads_hook = "_index_sampler" in inspect.getsource(_BaseDataLoaderIter.__init__)
    missing = [
        name
        for name, present in (
            ("DataLoader._index_sampler (a property)", isinstance(hook, property)),
            ("DataLoader._get_iterator()", callable(getattr(DataLoader, "_get_iterator", None))),
            ("_BaseDataLoaderIter._reset()", callable(getattr(_BaseDataLoaderIter, "_reset", None))),
            ("_BaseDataLoaderIter.__init__ reading _index_sampler", init_reads_hook),
            ("DataLoader(in_order=...)", "in_order" in inspect.signature(DataLoader.__init__).parameters),
        )
        if not present
    ]
    if missing:
        raise _unsupported("torch", torch.__version__, ", ".join(missing), TORCH_TESTED)


_check_torch()


class HookedDataLoader(DataLoader):
    """torch's ``DataLoader`` with its two private hooks routed to two overridable methods.

    A subclass overrides :meth:`_index_batches` (what torch's iterators draw indices from; ``None``
    keeps torch's own) and :meth:`_worker_view` (the dataset and collate function workers run, shown
    to torch only while it builds an iterator, so the public attributes stay the user's).
    """

    def _index_batches(self) -> Any:
        return None

    def _worker_view(self) -> tuple[Any, Callable[[Any], Any]] | None:
        return None

    @property
    def _index_sampler(self) -> Any:
        keys = self._index_batches()
        return super()._index_sampler if keys is None else keys

    def _get_iterator(self) -> Any:
        view = self._worker_view()
        if view is None:
            return super()._get_iterator()
        user_dataset, user_collate = self.dataset, self.collate_fn
        # DataLoader forbids assigning `dataset` after __init__ (its __setattr__ guard).
        object.__setattr__(self, "dataset", view[0])
        self.collate_fn = view[1]
        try:
            return super()._get_iterator()
        finally:
            object.__setattr__(self, "dataset", user_dataset)
            self.collate_fn = user_collate


# -- torchdata: StatefulDataLoader's state -----------------------------------------------------------
# Its state dict's keys are private constants of `torchdata.stateful_dataloader.stateful_dataloader`:
# single-process states hold `_num_yielded`, multi-process ones a `_snapshot` with `_snapshot_step`.

# The key that tells torchdata's single-process (False) and multi-process (True) iterator states apart;
# loading one into the other fails inside torchdata with a bare AssertionError, so we look first.
STATEFUL_INNER_KEY = {False: "_num_yielded", True: "_snapshot"}


def stateful_dataloader_batches(state: Mapping[str, Any]) -> int | None:
    """Batches torchdata's StatefulDataLoader delivered in its current pass (single- or multi-process)."""
    yielded = state.get("_num_yielded")
    if type(yielded) is int:
        return yielded
    snapshot = state.get("_snapshot")
    if isinstance(snapshot, Mapping) and type(snapshot.get("_snapshot_step")) is int:
        since = state.get("_steps_since_snapshot")
        return snapshot["_snapshot_step"] + (since if type(since) is int else 0)  # type: ignore[no-any-return]
    return None


def stateful_dataloader_drop_pending(loader: Any) -> None:
    """Forget a state loaded into a StatefulDataLoader before (its ``load_state_dict({})`` keeps it)."""
    if not hasattr(loader, "next_iter_state"):
        import torchdata

        raise _unsupported("torchdata", torchdata.__version__, "StatefulDataLoader.next_iter_state", "0.11")
    loader.next_iter_state = None


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
        raise _unsupported(pl.__name__, getattr(pl, "__version__", "?"), ", ".join(missing), LIGHTNING_TESTED)
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


# -- torchdata: StatefulDataLoader's fast-forward notice ----------------------------------------------
# torchdata 0.11 logs a WARNING on its module logger when it resumes an IterableDataset without state by
# re-reading it ("... so we are naively fast-forwarding your dataset by N steps ..."). Under
# external_state_policy="ignore" the user has said that this part is not captured, so the checkpointer
# drops exactly that record (matched on the logger name and the message) while it is open.
_TORCHDATA_LOGGER = "torchdata.stateful_dataloader.stateful_dataloader"
_FAST_FORWARD_TEXT = "naively fast-forwarding your dataset"


class FastForwardNoticeFilter(logging.Filter):
    """Drops torchdata's "naively fast-forwarding" notice while installed (and nothing else)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _FAST_FORWARD_TEXT not in record.getMessage()

    def install(self) -> None:
        """Attach to torchdata's logger (idempotent)."""
        logging.getLogger(_TORCHDATA_LOGGER).addFilter(self)

    def uninstall(self) -> None:
        """Detach (idempotent)."""
        logging.getLogger(_TORCHDATA_LOGGER).removeFilter(self)

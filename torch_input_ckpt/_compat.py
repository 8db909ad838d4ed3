"""Every touch of a third-party private API, in one place, each checked once against the version found.

torch's ``DataLoader`` hooks, the keys of torchdata's ``StatefulDataLoader`` state, Lightning's loop
internals, and transformers' ``Trainer`` and accelerate's ``GradientState`` internals are not public
and may change between releases. Code elsewhere in the package calls the functions here instead of
touching them; each check raises :class:`UnsupportedVersionError` naming the package, the version
found, what is missing and the version this was written for. Lightning and Hugging Face are never
imported here: the functions take their objects as arguments.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

__all__ = [
    "FastForwardNoticeFilter",
    "HookedDataLoader",
    "STATEFUL_INNER_KEY",
    "UnsupportedVersionError",
    "hf_check_trainer",
    "hf_collator_for_training",
    "hf_dataloader_begin",
    "hf_dataloader_end",
    "hf_output_dir",
    "hf_overrides_train_sampler",
    "hf_replaced_skip",
    "lightning_install",
    "lightning_stored_loader_states",
    "lightning_track_files",
    "lightning_train_loaders",
    "lightning_uninstall",
    "numpy_mt19937_words",
    "numpy_state_bytes",
    "python_random_c_seed",
    "python_random_instance",
    "python_random_words",
    "stateful_dataloader_batches",
    "stateful_dataloader_drop_pending",
    "torch_generator_words",
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


# -- Hugging Face: transformers' Trainer and accelerate's GradientState ------------------------------
# `ResumableTrainerMixin` (hf_trainer.py) relies on these private parts of transformers' Trainer:
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
# `AcceleratedLoader` (hf_accelerate.py) registers itself with accelerate's `GradientState` while it
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
        raise _unsupported("transformers", transformers_version, ", ".join(missing), TRANSFORMERS_TESTED)
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

        raise _unsupported("accelerate", _version(accelerate), "GradientState." + ", ".join(missing), ACCELERATE_TESTED)
    _hf_checked.add("gradient_state")


def hf_dataloader_begin(gradient_state: Any, loader: Any) -> None:
    """Make ``loader`` accelerate's active dataloader (what its own loaders do in ``begin()``)."""
    _check_gradient_state(gradient_state)
    gradient_state._add_dataloader(loader)


def hf_dataloader_end(gradient_state: Any, loader: Any) -> None:
    """Undo :func:`hf_dataloader_begin` (what accelerate's loaders do in ``end()``)."""
    gradient_state._remove_dataloader(loader)


# -- CPython: random.Random's C struct -------------------------------------------------------------
# `_random.Random` is `{PyObject_HEAD; int index; uint32_t state[624];}` (Modules/_randommodule.c,
# unchanged from 3.3 to 3.13). Reading `index` and `state[0]` through ctypes costs 40 ns, against 6 µs
# for `getstate()` (a 625-tuple of ints). The layout is checked against `getstate()` before it is used,
# twice (before and after a draw), and not used if it does not match (e.g. a free-threaded build).


def python_random_words(inst: Any) -> tuple[ctypes.c_int, ctypes.c_uint32] | None:
    """ctypes views of ``inst``'s Mersenne Twister index and first state word, or None if the layout
    is not the one expected. ``inst`` must stay alive as long as the views are used."""
    base = id(inst) + object.__basicsize__
    index = ctypes.c_int.from_address(base)
    first = ctypes.c_uint32.from_address(base + ctypes.sizeof(ctypes.c_int))
    saved = inst.getstate()
    try:
        for _ in range(2):
            internal = inst.getstate()[1]
            if (index.value, first.value) != (internal[-1], internal[0]):
                return None
            inst.getrandbits(32)
    finally:
        inst.setstate(saved)
    return index, first


def python_random_instance() -> Any:
    """The ``random.Random`` behind ``random.random()`` & co. (the module's private ``_inst``)."""
    import random

    return random._inst  # type: ignore[attr-defined]


def python_random_c_seed() -> Callable[[Any, int], None]:
    """The C seeding method of ``_random.Random`` (``random.Random.seed`` is a Python wrapper of it)."""
    import _random

    return _random.Random.seed  # type: ignore[return-value]


# -- NumPy: the legacy global RandomState's MT19937 ------------------------------------------------
# `np.random.get_bit_generator()` (public, NumPy >= 1.25) and `BitGenerator.ctypes.state_address`
# (public) point at a `mt19937_state {uint32_t key[624]; int pos;}` (numpy/random/src/mt19937, not
# public): reading `pos` and `key[0]` costs 40 ns, against 28 µs for `np.random.get_state()`. Checked
# against `bit_generator.state` once per bit generator object.


def _numpy_bit_generator_getter(nprandom: Any) -> Callable[[], Any]:
    getter = getattr(nprandom, "get_bit_generator", None)
    if getter is not None:
        return getter  # type: ignore[no-any-return]
    return lambda: nprandom.mtrand._rand._bit_generator  # NumPy < 1.25


def _mt19937_views(bit_generator: Any) -> tuple[ctypes.c_int, ctypes.c_uint32] | None:
    state = getattr(bit_generator, "state", None)
    if not isinstance(state, dict) or state.get("bit_generator") != "MT19937":
        return None
    address = bit_generator.ctypes.state_address
    first = ctypes.c_uint32.from_address(address)
    pos = ctypes.c_int.from_address(address + 624 * 4)
    for _ in range(2):
        inner = bit_generator.state["state"]
        if (pos.value, first.value) != (int(inner["pos"]), int(inner["key"][0])):
            return None
        bit_generator.random_raw()
    bit_generator.state = state
    return pos, first


def numpy_mt19937_words(nprandom: Any) -> Callable[[], tuple[int, int] | None]:
    """A function returning ``(pos, key[0])`` of NumPy's global MT19937, or None when the global bit
    generator is not an MT19937 whose layout was checked (then use :func:`numpy_state_bytes`)."""
    cache: list[Any] = [None, None]  # the bit generator the views belong to, and the views
    bit_generator_now = _numpy_bit_generator_getter(nprandom)

    def probe() -> tuple[int, int] | None:
        bit_generator = bit_generator_now()
        if bit_generator is not cache[0]:
            cache[0], cache[1] = bit_generator, _mt19937_views(bit_generator)
        views = cache[1]
        if views is None:
            return None
        return views[0].value, views[1].value

    return probe


def numpy_state_bytes(nprandom: Any) -> bytes:
    """The whole legacy state of NumPy's global RNG as bytes (slow: the fallback fingerprint)."""
    name, key, pos, has_gauss, gauss = nprandom.get_state()
    return f"{name}:{pos}:{has_gauss}:{gauss!r}:".encode() + key.tobytes()


# -- torch: the CPU generator's Mersenne Twister ---------------------------------------------------
# `torch.default_generator` is a `THPGenerator {PyObject_HEAD; at::Generator cdata;}` whose `cdata` is
# one pointer to an `at::CPUGeneratorImpl`: its `at::mt19937` (`{uint64 seed_; int left_; bool seeded_;
# uint32 next_; uint32 state_[624];}`), then `optional<float>` and `optional<double>` cached normal
# samples (ATen/CPUGeneratorImpl.h, ATen/core/MT19937RNGEngine.h; not public). Every draw moves
# `next_` (and rewrites `state_` every 624 words) or takes a cached normal. Reading `next_`,
# `state_[0]` and both cache flags costs ~0.1 µs, against 1.1 µs for `get_state()` as bytes. The
# layout is found and checked against `get_state()` once per process; None means "use get_state".
_PROBE_SEED = 0x5EED_1234_ABCD_0042
_SCAN_BYTES = 512  # the engine follows GeneratorImpl's fields (vtable, refcounts, mutex, key set, pyobj)
_MT_WORDS = 624


def torch_generator_words(generator: torch.Generator) -> Callable[[], tuple[int, bool, bool]] | None:
    """A function returning ``(next_ and state_[0] as one word, float cached, double cached)`` of
    ``generator``'s engine, or None if the layout is not the one expected (then fingerprint
    ``get_state()``). ``generator`` must be a CPU generator that outlives the function."""
    if generator.device.type != "cpu" or object.__basicsize__ != 16:
        return None
    saved = generator.get_state()
    try:
        return _torch_engine_views(generator)
    finally:
        generator.set_state(saved)


def _torch_engine_views(generator: torch.Generator) -> Callable[[], tuple[int, bool, bool]] | None:
    impl = ctypes.c_void_p.from_address(id(generator) + object.__basicsize__).value
    if not impl or impl % 8:
        return None
    generator.manual_seed(_PROBE_SEED)
    head = ctypes.string_at(impl, _SCAN_BYTES)
    found = [o for o in range(0, _SCAN_BYTES - 8, 8) if int.from_bytes(head[o : o + 8], "little") == _PROBE_SEED]
    if len(found) != 1:
        return None
    engine = impl + found[0]
    moving = ctypes.c_uint64.from_address(engine + 16)  # next_ and state_[0]
    float_cached = ctypes.c_bool.from_address(engine + 20 + 4 * _MT_WORDS + 8)  # optional<float> at +2520
    double_cached = ctypes.c_bool.from_address(engine + 20 + 4 * _MT_WORDS + 20)  # optional<double> at +2528
    for draw in (lambda: None, lambda: torch.randn(1, dtype=torch.float64), lambda: torch.rand(700)):
        draw()
        if not _engine_matches(generator, engine, double_cached.value):
            return None
    if float_cached.value:
        return None

    def probe() -> tuple[int, bool, bool]:
        return moving.value, float_cached.value, double_cached.value

    return probe


def _engine_matches(generator: torch.Generator, engine: int, double_cached: bool) -> bool:
    """Whether the engine's words and the double cache flag read at ``engine`` are ``get_state()``'s
    (its legacy struct: uint64 seed; int left, seeded; uint64 next; uint64 state[624]; double
    normal_x, normal_y, normal_rho; int normal_is_valid; ...)."""
    state = generator.get_state()  # its bytes by ctypes, as rngs.py does: .numpy() fails where NumPy is absent
    legacy = ctypes.string_at(state.data_ptr(), state.numel())
    memory = ctypes.string_at(engine, 20 + 4 * _MT_WORDS)
    left, seeded, next_word = (int.from_bytes(legacy[a:b], "little") for a, b in ((8, 12), (12, 16), (16, 24)))
    words = [int.from_bytes(legacy[24 + 8 * k : 32 + 8 * k], "little") for k in range(_MT_WORDS)]
    normal_valid = int.from_bytes(legacy[24 + 8 * _MT_WORDS + 24 : 24 + 8 * _MT_WORDS + 28], "little")
    expected_words = b"".join(w.to_bytes(4, "little") for w in words)
    read = (int.from_bytes(memory[8:12], "little"), memory[12], int.from_bytes(memory[16:20], "little"))
    return read == (left, seeded, next_word) and memory[20:] == expected_words and bool(normal_valid) == double_cached

"""torch's private parts: the DataLoader hooks, and the CPU generator's Mersenne Twister words."""

from __future__ import annotations

import ctypes
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data.dataloader import _BaseDataLoaderIter

from . import unsupported

__all__ = ["HookedDataLoader", "TORCH_TESTED", "torch_generator_words"]

TORCH_TESTED = "2.13.0"


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
        raise unsupported("torch", torch.__version__, ", ".join(missing), TORCH_TESTED)


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
    # Its bytes by ctypes, as rng/fingerprints.py does: .numpy() fails where NumPy is absent.
    state = generator.get_state()
    legacy = ctypes.string_at(state.data_ptr(), state.numel())
    memory = ctypes.string_at(engine, 20 + 4 * _MT_WORDS)
    left, seeded, next_word = (int.from_bytes(legacy[a:b], "little") for a, b in ((8, 12), (12, 16), (16, 24)))
    words = [int.from_bytes(legacy[24 + 8 * k : 32 + 8 * k], "little") for k in range(_MT_WORDS)]
    normal_valid = int.from_bytes(legacy[24 + 8 * _MT_WORDS + 24 : 24 + 8 * _MT_WORDS + 28], "little")
    expected_words = b"".join(w.to_bytes(4, "little") for w in words)
    read = (int.from_bytes(memory[8:12], "little"), memory[12], int.from_bytes(memory[16:20], "little"))
    return read == (left, seeded, next_word) and memory[20:] == expected_words and bool(normal_valid) == double_cached

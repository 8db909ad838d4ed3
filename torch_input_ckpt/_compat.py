"""Every touch of a third-party private API, in one place, each checked against the version found.

(This branch's part only: the RNG probes. The lead's ``_compat.py`` holds the torch, torchdata and
Lightning parts; merge the sections.)
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

__all__ = ["numpy_mt19937_words", "numpy_state_bytes", "python_random_c_seed", "python_random_words"]


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


def python_random_c_seed() -> Callable[[Any, int], None]:
    """The C seeding method of ``_random.Random`` (``random.Random.seed`` is a Python wrapper of it)."""
    import _random

    return _random.Random.seed  # type: ignore[return-value]


# -- NumPy: the legacy global RandomState's MT19937 ------------------------------------------------
# `np.random.get_bit_generator()` (public, NumPy >= 1.25) and `BitGenerator.ctypes.state_address`
# (public) point at a `mt19937_state {uint32_t key[624]; int pos;}` (numpy/random/src/mt19937, not
# public): reading `pos` and `key[0]` costs 40 ns, against 28 µs for `np.random.get_state()`. Checked
# against `bit_generator.state` once per bit generator object.


def _numpy_bit_generator(nprandom: Any) -> Any:
    getter = getattr(nprandom, "get_bit_generator", None)
    if getter is not None:
        return getter()
    return nprandom.mtrand._rand._bit_generator  # NumPy < 1.25


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

    def probe() -> tuple[int, int] | None:
        bit_generator = _numpy_bit_generator(nprandom)
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

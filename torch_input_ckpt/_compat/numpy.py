"""NumPy's private parts: the legacy global ``RandomState``'s MT19937 words."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

__all__ = ["numpy_mt19937_words", "numpy_state_bytes"]

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

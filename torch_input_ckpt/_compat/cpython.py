"""CPython's private parts: ``random.Random``'s C struct, the global instance and its C seeding method."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

__all__ = ["python_random_c_seed", "python_random_instance", "python_random_words"]

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

"""The global RNGs a dataset may draw from: a cheap check of whether one was drawn from, the cheapest
way to seed it, and saving/restoring its state.

The guarantee this module serves (see :class:`~torch_input_ckpt.loader.fetch.FetchDataset`): a sample that
draws from torch's, NumPy's or Python's global RNG either had that RNG seeded from its own position
first, or is named in an :class:`~torch_input_ckpt.errors.UnseededDrawWarning`. A draw is seen by
comparing a fingerprint of the RNG's state before and after a batch; the fingerprint changes with
every draw (it includes the Mersenne Twister's position and first state word; torch's also its two
cached-normal flags, so a draw that only takes a cached normal is seen). Its limits: a NumPy draw that
only consumes a Gaussian cached by a draw made before the batch moves no state word and is not seen,
and a draw of exactly a multiple of 624 words whose first new state word equals the old one
(probability 2**-32) is not seen either.

Measured on this project's 2-core machine (``timeit``, best of 5 x 20,000; docs/guides/exactness.md has the table):
``torch.default_generator.manual_seed`` 1.0 µs (``torch.manual_seed`` visits every accelerator: 100
µs); ``numpy.random.seed`` 1.4 µs; ``random.seed`` 4.1 µs (the C method ``_random.Random.seed`` 3.9
µs: its 624-word ``init_by_array`` is the floor). Fingerprints: torch's engine words through ctypes 0.1 µs
(``get_state()`` costs 0.5 µs plus 0.6 µs to bytes: the fallback if the layout is not the one
expected); NumPy's and Python's through ctypes 40 ns each (``np.random.get_state()`` costs 28 µs,
``random.getstate()`` 6 µs).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

import torch

from .._compat import cpython as compat_cpython
from .._compat import numpy as compat_numpy
from .._compat import torch as compat_torch

__all__ = ["RNG_NAMES", "Rng", "imported_rngs", "prepare", "rng"]

RNG_NAMES = ("torch", "numpy", "python")
_DESCRIPTION = {"torch": "torch's global RNG", "numpy": "NumPy's global RNG", "python": "Python's random module"}


class Rng:
    """One global RNG: ``seed(s)``, ``fingerprint()`` (changes with every draw), ``capture()``/``restore()``."""

    __slots__ = ("name", "description", "seed", "fingerprint", "capture", "restore")

    def __init__(
        self,
        name: str,
        seed: Callable[[int], Any],
        fingerprint: Callable[[], Any],
        capture: Callable[[], Any],
        restore: Callable[[Any], Any],
    ) -> None:
        self.name = name
        self.description = _DESCRIPTION[name]
        self.seed = seed
        self.fingerprint = fingerprint
        self.capture = capture
        self.restore = restore


def _torch_rng() -> Rng:
    generator = torch.default_generator
    words = compat_torch.torch_generator_words(generator)
    if words is None:
        get_state, string_at = generator.get_state, ctypes.string_at

        def fingerprint() -> bytes:
            state = get_state()  # a uint8 tensor: its bytes, copied by ctypes (cheaper than .numpy().tobytes())
            return string_at(state.data_ptr(), state.numel())

    return Rng("torch", generator.manual_seed, words or fingerprint, generator.get_state, generator.set_state)


def _python_rng() -> Rng:
    inst = compat_cpython.python_random_instance()
    words = compat_cpython.python_random_words(inst)
    c_seed = compat_cpython.python_random_c_seed()

    def seed(value: int) -> None:
        c_seed(inst, value)
        inst.gauss_next = None  # what random.Random.seed does besides the C seeding

    if words is None:

        def fingerprint() -> Any:
            return inst.getstate()

    else:
        index, first = words

        def fingerprint() -> Any:
            return index.value, first.value, inst.gauss_next

    return Rng("python", seed, fingerprint, inst.getstate, inst.setstate)


def _numpy_rng(numpy: Any) -> Rng:
    nprandom = numpy.random
    probe = compat_numpy.numpy_mt19937_words(nprandom)

    def fingerprint() -> Any:
        words = probe()
        return words if words is not None else compat_numpy.numpy_state_bytes(nprandom)

    return Rng("numpy", nprandom.seed, fingerprint, nprandom.get_state, nprandom.set_state)


_CACHE: dict[str, Rng] = {}


def rng(name: str) -> Rng:
    """The :class:`Rng` called ``name`` (one of :data:`RNG_NAMES`); NumPy is imported if it is not yet."""
    found = _CACHE.get(name)
    if found is None:
        if name == "torch":
            found = _torch_rng()
        elif name == "python":
            found = _python_rng()
        else:
            import numpy

            found = _numpy_rng(numpy)
        _CACHE[name] = found
    return found


def imported_rngs() -> tuple[str, ...]:
    """The RNGs this process could be drawing from: torch and Python always, NumPy once ``numpy.random``
    is imported (NumPy imports it lazily; torch imports NumPy but not ``numpy.random``)."""
    return RNG_NAMES if "numpy.random" in sys.modules else _WITHOUT_NUMPY


_WITHOUT_NUMPY = ("torch", "python")


def prepare() -> None:
    """Build the RNGs a loader may seed now, at its construction, rather than in its first batch.

    If NumPy is imported, ``numpy.random`` is imported too (13-28 ms the first time, measured): a
    dataset that draws from it would otherwise import it inside its first sample, and a draw from an RNG
    imported within the batch cannot be told from no draw.
    """
    if "numpy" in sys.modules:
        import numpy.random  # noqa: F401
    for name in imported_rngs():
        rng(name).fingerprint()  # the first call checks the memory layout it reads (~0.1 ms for NumPy's)

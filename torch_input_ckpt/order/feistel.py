"""The one keyed hash and Feistel network behind every order: the sampler's permutation, the stream's windows, the
mixture's sources.

Guarantee: for ``1 <= length <= 2**62`` and any round keys in ``[0, 2**32)``, :func:`permute` is a bijection of
``[0, length)`` and :func:`unpermute` is its inverse, element by element, on int64 tensors, without overflow. Each
value depends only on (position, length, keys): the order is computed, never stored. Lengths, radices and keys are
either one Python int for all elements (a permutation) or an int64 tensor per element (windows of several lanes,
several sources and source epochs in one call); both give the same value for the same element, bit for bit.

The network works on a mixed-radix domain: ``x`` is split into ``left = x // b`` and ``right = x % b`` with
``a = ceil(sqrt(length))`` and ``b = ceil(length / a)``, so ``a * b >= length`` and both parts stay below
``2**31``. Each of the :data:`ROUNDS` rounds adds a keyed hash of one part to the other, modulo that part's range,
alternating; every round is invertible, so the network permutes ``[0, a * b)``. Cycle-walking (applying it again to
a value that lands outside ``[0, length)``) restricts it to ``[0, length)``; since ``a * b - length < a``, hardly
any value walks, whatever the length (a power-of-two domain would make half the values walk for lengths just above
a power of two).

Every constant here is part of the data order of runs in progress (tests/test_golden_vectors.py pins it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch

__all__ = [
    "M32",
    "ROUNDS",
    "feistel_round",
    "inverse_network",
    "mix32",
    "mix64",
    "network",
    "permute",
    "permute_ints",
    "radix",
    "round_keys",
    "unpermute",
]

M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
# Odd multipliers below 2**31, so that a 32-bit value times one of them stays below 2**63 and torch's int64
# arithmetic never overflows (overflow of signed integers is not defined behaviour).
_MUL1 = 0x2C1B3C6D
_MUL2 = 0x297A2D39
ROUNDS = 6

# A Python int, or an int64 tensor of one value per element.
Value = TypeVar("Value", int, torch.Tensor)
PerElement = int | torch.Tensor


def mix64(*values: int) -> int:
    """Hash integers into one 64-bit value (splitmix64 chained): the seeds and round keys of every order."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _M64)) & _M64
        h = (h + 0x9E3779B97F4A7C15) & _M64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        h = z ^ (z >> 31)
    return h


def round_keys(base: int) -> tuple[int, ...]:
    """The :data:`ROUNDS` 32-bit round keys derived from one 64-bit ``base`` (:func:`mix64` of it and the round)."""
    return tuple(mix64(base, i) & M32 for i in range(ROUNDS))


def mix32(x: Value, key: PerElement) -> Value:
    """A 32-bit integer hash of ``x ^ key``, in ``[0, 2**32)``: on a Python int or an int64 tensor (the same value,
    bit for bit), without overflow (each product is a 32-bit value times a multiplier below ``2**31``)."""
    x = (x ^ key) & M32
    x = (x * _MUL1) & M32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & M32
    return x ^ (x >> 13)


def feistel_round(x: Value, key: PerElement) -> Value:
    """The round function: one multiply-xorshift in ``[0, 2**32)``, cheap enough for six rounds.

    ``x < 2**31`` and ``key < 2**32``, so the product stays below 2**63. A product's low bits depend only on the
    factors' low bits; the shift brings the high bits down, so every output bit depends on every input bit.
    """
    h = ((x ^ key) * _MUL1) & M32
    return h ^ (h >> 16)


def radix(length: Value) -> Value:
    """``a = ceil(sqrt(length))`` for ``length >= 1``: the range of a position's left part (exact on tensors too:
    a float estimate, then corrected)."""
    if isinstance(length, int):
        return math.isqrt(length - 1) + 1
    m = length - 1
    s = torch.floor(torch.sqrt(m.to(torch.float64))).to(torch.int64)
    s = torch.where((s + 1) * (s + 1) <= m, s + 1, s)
    s = torch.where(s * s > m, s - 1, s)
    return s + 1


def _ceil_div(n: Value, d: Value) -> Value:
    if isinstance(n, int) and isinstance(d, int):
        return -(-n // d)
    return torch.div(n + d - 1, d, rounding_mode="floor")


# The network is written with torch.div rather than //: Tensor.__floordiv__ is a Python wrapper (torch/_tensor.py),
# measured 3.7 against 3.0 us a call on 64 elements, which shows on the small first chunk of a loader.
def network(x: torch.Tensor, a: PerElement, b: PerElement, keys: Sequence[PerElement]) -> torch.Tensor:
    """The network on ``[0, a * b)``: ``x`` split into ``(x // b, x % b)``, one keyed round per key, alternating."""
    left, right = torch.div(x, b, rounding_mode="floor"), torch.remainder(x, b)
    for i, key in enumerate(keys):
        if i % 2:
            right = torch.remainder(right + feistel_round(left, key), b)
        else:
            left = torch.remainder(left + feistel_round(right, key), a)
    return left * b + right


def inverse_network(y: torch.Tensor, a: PerElement, b: PerElement, keys: Sequence[PerElement]) -> torch.Tensor:
    """:func:`network` undone round by round, last round first."""
    left, right = torch.div(y, b, rounding_mode="floor"), torch.remainder(y, b)
    for i in reversed(range(len(keys))):
        if i % 2:
            right = torch.remainder(right - feistel_round(left, keys[i]), b)
        else:
            left = torch.remainder(left - feistel_round(right, keys[i]), a)
    return left * b + right


def _at(value: PerElement, index: torch.Tensor) -> PerElement:
    """The elements ``index`` of a per-element value; a value shared by all elements as it is."""
    return value if isinstance(value, int) else value.index_select(0, index)


# Up to this many values walk on Python ints rather than tensors (see _walk).
_WALK_INTS = 256


def _walk(
    net: Callable[[torch.Tensor, PerElement, PerElement, Sequence[PerElement]], torch.Tensor],
    x: torch.Tensor,
    length: PerElement,
    keys: Sequence[PerElement],
    a: PerElement | None,
) -> torch.Tensor:
    a = radix(length) if a is None else a
    b = _ceil_div(length, a)
    out = net(x, a, b, keys)
    # Walk the few values outside [0, length) by index (nonzero, index_select): boolean-mask indexing and
    # tensor[indices] stall on torch's thread pool (measured 20x slower on 2 busy cores).
    index = torch.nonzero(out >= length).squeeze(1)
    if net is network and 0 < index.numel() <= _WALK_INTS and all(isinstance(v, int) for v in (length, a, *keys)):
        # A few values walk (a * b - length < a): on Python ints (permute_ints walks a value that lands
        # outside until it is inside), 2 us a value, against ~40 small tensor operations a step.
        walked = permute_ints(out.index_select(0, index).tolist(), length, keys, a)  # type: ignore[arg-type]
        return out.index_copy_(0, index, torch.tensor(walked, dtype=torch.int64))
    while index.numel():
        values = net(out.index_select(0, index), _at(a, index), _at(b, index), [_at(key, index) for key in keys])
        out.index_copy_(0, index, values)
        index = index.index_select(0, torch.nonzero(values >= _at(length, index)).squeeze(1))
    return out


def permute(
    x: torch.Tensor, length: PerElement, keys: Sequence[PerElement], a: PerElement | None = None
) -> torch.Tensor:
    """The keyed bijection of ``[0, length)`` at positions ``x`` (int64, each in ``[0, length)``).

    Args:
        x: The positions.
        length: The domain's length: one int, or an int64 tensor per element (each in ``[1, 2**62]``).
        keys: The round keys (each in ``[0, 2**32)``): ints, or int64 tensors per element.
        a: ``radix(length)``, if the caller has it already (it costs a square root per element).

    Returns:
        The permuted positions, a new tensor.
    """
    return _walk(network, x, length, keys, a)


def unpermute(
    y: torch.Tensor, length: PerElement, keys: Sequence[PerElement], a: PerElement | None = None
) -> torch.Tensor:
    """The inverse of :func:`permute` (the same arguments): the positions at which values ``y`` appear."""
    return _walk(inverse_network, y, length, keys, a)


def permute_ints(positions: Iterable[int], length: int, keys: Sequence[int], a: int | None = None) -> list[int]:
    """:func:`permute` on Python ints (the same values): about 2 us a position, and no torch op, whose first call in
    a process costs 0.2-0.6 ms and 0.3-1.4 MB each (measured for arange, mul, div...).

    The round is inlined here rather than a call to :func:`feistel_round`: on Python ints the six calls cost about
    15% more per position (best of 75 runs: 2.04 against 1.79 us); the tests check that both give the same values.
    """
    a = radix(length) if a is None else a
    b = -(-length // a)
    out = []
    for x in positions:
        while True:
            left, right = divmod(x, b)
            for i, key in enumerate(keys):
                if i % 2:
                    h = ((left ^ key) * _MUL1) & M32
                    right = (right + (h ^ (h >> 16))) % b
                else:
                    h = ((right ^ key) * _MUL1) & M32
                    left = (left + (h ^ (h >> 16))) % a
            x = left * b + right
            if x < length:
                break
        out.append(x)
    return out

"""Seeded random-access permutations of ``[0, n)``: element ``i`` is computed on its own, in O(1)."""

from __future__ import annotations

import torch

__all__ = ["MAX_LENGTH", "FeistelPermutation", "RandpermPermutation", "IdentityPermutation", "mix64"]

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
# Odd multipliers below 2**31, so that a 32-bit value times one of them stays below 2**63 and
# torch's int64 arithmetic never overflows (overflow of signed integers is not defined behaviour).
_MUL1 = 0x2C1B3C6D
_MUL2 = 0x297A2D39
_ROUNDS = 6
# The Feistel halves must fit the 32-bit round function: domains up to 2**62.
MAX_LENGTH = 2**62


def mix64(*values: int) -> int:
    """Hash integers into one 64-bit value (splitmix64 chained), used to derive round keys and seeds."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & _M64)) & _M64
        h = (h + 0x9E3779B97F4A7C15) & _M64
        z = h
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        h = z ^ (z >> 31)
    return h


def _mix32(x: torch.Tensor, key: int) -> torch.Tensor:
    """A 32-bit integer hash of ``x ^ key`` (values in [0, 2**32)), on int64 tensors without overflow."""
    x = (x ^ key) & _M32
    x = (x * _MUL1) & _M32
    x = x ^ (x >> 15)
    x = (x * _MUL2) & _M32
    return x ^ (x >> 13)


class FeistelPermutation:
    """A bijection of ``[0, length)`` chosen by ``(seed, epoch)``, evaluated element by element.

    A balanced Feistel network permutes the smallest domain ``[0, 4**k)`` that holds ``length``;
    cycle-walking (applying it again to values that land outside ``[0, length)``) restricts it to
    ``[0, length)`` while keeping it a bijection. The domain is less than four times ``length``, so a
    value needs fewer than four passes on average. Evaluation is vectorised over int64 tensors, so
    memory is O(chunk) whatever ``length`` is.
    """

    __slots__ = ("length", "_half_bits", "_half_mask", "_keys")

    def __init__(self, length: int, seed: int, epoch: int) -> None:
        if not 1 <= length <= MAX_LENGTH:
            raise ValueError(f"permutation length must be in [1, 2**62] (got {length=})")
        self.length = length
        bits = max(2, (length - 1).bit_length())
        bits += bits % 2
        self._half_bits = bits // 2
        self._half_mask = (1 << self._half_bits) - 1
        base = mix64(seed, epoch)
        self._keys = tuple(mix64(base, i) & _M32 for i in range(_ROUNDS))

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        half, mask = self._half_bits, self._half_mask
        left, right = x >> half, x & mask
        for key in self._keys:
            left, right = right, left ^ (_mix32(right, key) & mask)
        return (left << half) | right

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """Map an int64 tensor of positions in ``[0, length)`` to the permuted indices."""
        out = self._network(positions)
        outside = out >= self.length
        while bool(outside.any()):
            out[outside] = self._network(out[outside])
            outside = out >= self.length
        return out


class RandpermPermutation:
    """The order of ``torch.randperm(length, generator=manual_seed(seed + epoch))``.

    This is exactly the order of ``torch.utils.data.DistributedSampler`` (and so of a plain
    ``RandomSampler`` driven the same way), for users who need the stock order. It materialises the
    whole permutation: O(length) time and memory per epoch.
    """

    __slots__ = ("length", "_table")

    def __init__(self, length: int, seed: int, epoch: int) -> None:
        generator = torch.Generator()
        generator.manual_seed(seed + epoch)
        self.length = length
        self._table = torch.randperm(length, generator=generator)

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return self._table[positions]


class IdentityPermutation:
    """Positions in order (``shuffle=False``)."""

    __slots__ = ("length",)

    def __init__(self, length: int, seed: int = 0, epoch: int = 0) -> None:
        self.length = length

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return positions


def sample_seeds(seed: int, epoch: int, positions: torch.Tensor) -> torch.Tensor:
    """Per-sample RNG seeds in ``[0, 2**32)``, a pure function of (seed, epoch, global position).

    Positions are global (counted over all ranks), so a sample gets the same seed whatever the
    world size or number of workers that fetches it.
    """
    base = mix64(seed, epoch, 0x5EED)
    low = _mix32(positions & _M32, base & _M32)
    return _mix32(low ^ (positions >> 32), base >> 32)

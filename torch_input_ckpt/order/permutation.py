"""Seeded random-access permutations of ``[0, n)``: element ``i`` is computed on its own, in O(1)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = [
    "MAX_LENGTH",
    "FeistelPermutation",
    "RandpermPermutation",
    "IdentityPermutation",
    "PYTHON_INDICES",
    "SeedRange",
    "indices_at",
    "mix64",
    "worker_generator",
]

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
# Odd multipliers below 2**31, so that a 32-bit value times one of them stays below 2**63 and
# torch's int64 arithmetic never overflows (overflow of signed integers is not defined behaviour).
_MUL1 = 0x2C1B3C6D
_MUL2 = 0x297A2D39
_ROUNDS = 6
# Both parts of a position (each below sqrt(length) + 1) must fit the 31-bit round input.
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


def _round(x: torch.Tensor, key: int) -> torch.Tensor:
    """The Feistel round function: one multiply-xorshift in [0, 2**32), cheap enough for six rounds.

    ``x < 2**31`` and ``key < 2**32``, so the product stays below 2**63. A product's low bits depend
    only on the factors' low bits; the shift brings the high bits down, so every output bit depends on
    every input bit.
    """
    x = ((x ^ key) * _MUL1) & _M32
    return x ^ (x >> 16)


class FeistelPermutation:
    """A bijection of ``[0, length)`` chosen by ``(seed, epoch)``, evaluated element by element.

    A Feistel network on a mixed-radix domain: a position ``x`` is split into ``left = x // b`` and
    ``right = x % b`` with ``a * b >= length`` and ``a, b`` near ``sqrt(length)``; each round adds a
    keyed hash of one part to the other, modulo that part's range, alternating. Every round is
    invertible, so the network permutes ``[0, a * b)``; cycle-walking (applying it again to values
    that land outside ``[0, length)``) restricts it to ``[0, length)``. Since ``a * b - length < a``,
    hardly any value walks: the cost per element is flat whatever ``length`` is (a power-of-two domain
    would make lengths just above a power of two walk half their values). Evaluation is vectorised over
    int64 tensors, so memory is O(chunk) whatever ``length`` is.
    """

    __slots__ = ("length", "_a", "_b", "_keys")

    def __init__(self, length: int, seed: int, epoch: int) -> None:
        if not 1 <= length <= MAX_LENGTH:
            raise ValueError(f"permutation length must be in [1, 2**62] (got {length=})")
        self.length = length
        self._a = math.isqrt(length - 1) + 1  # ceil(sqrt(length)): both parts stay below 2**31
        self._b = -(-length // self._a)
        base = mix64(seed, epoch)
        self._keys = tuple(mix64(base, i) & _M32 for i in range(_ROUNDS))

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._a, self._b
        left, right = torch.div(x, b, rounding_mode="floor"), torch.remainder(x, b)
        for i, key in enumerate(self._keys):
            if i % 2:
                right = torch.remainder(right + _round(left, key), b)
            else:
                left = torch.remainder(left + _round(right, key), a)
        return left * b + right

    def values(self, positions: Iterable[int]) -> list[int]:
        """The permuted indices of positions in ``[0, length)``, on Python ints (the same values as
        :meth:`__call__`). For a first batch after a resume: about 2 µs an index, and no torch op, whose
        first call in a process costs 0.2-0.6 ms and 0.3-1.4 MB each (measured for arange, mul, div...)."""
        a, b, keys, length = self._a, self._b, self._keys, self.length
        out = []
        for x in positions:
            while True:
                left, right = divmod(x, b)
                for i, key in enumerate(keys):
                    if i % 2:
                        h = ((left ^ key) * _MUL1) & _M32
                        right = (right + (h ^ (h >> 16))) % b
                    else:
                        h = ((right ^ key) * _MUL1) & _M32
                        left = (left + (h ^ (h >> 16))) % a
                x = left * b + right
                if x < length:
                    break
            out.append(x)
        return out

    def _inverse_network(self, y: torch.Tensor) -> torch.Tensor:
        a, b = self._a, self._b
        left, right = torch.div(y, b, rounding_mode="floor"), torch.remainder(y, b)
        for i in reversed(range(len(self._keys))):
            key = self._keys[i]
            if i % 2:
                right = torch.remainder(right - _round(left, key), b)
            else:
                left = torch.remainder(left - _round(right, key), a)
        return left * b + right

    def inverse(self, indices: torch.Tensor) -> torch.Tensor:
        """The positions at which the given indices (an int64 tensor in ``[0, length)``) appear: the
        network undone round by round, cycle-walking backwards (O(1) per index, as the forward map)."""
        out = self._inverse_network(indices)
        index = torch.nonzero(out >= self.length).squeeze(1)
        while index.numel():
            values = self._inverse_network(out.index_select(0, index))
            out.index_copy_(0, index, values)
            index = index[values >= self.length]
        return out

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """Map an int64 tensor of positions in ``[0, length)`` to the permuted indices."""
        out = self._network(positions)
        # Walk the few values outside [0, length) by index; boolean-mask indexing stalls on torch's
        # thread pool (measured 20x slower on 2 busy cores).
        index = torch.nonzero(out >= self.length).squeeze(1)
        while index.numel():
            values = self._network(out.index_select(0, index))
            out.index_copy_(0, index, values)
            index = index[values >= self.length]
        return out


# Up to this many indices are computed on Python ints rather than tensors (see FeistelPermutation.values).
PYTHON_INDICES = 128


def indices_at(permutation: Any, first: int, step: int, count: int, length: int | None = None) -> list[int]:
    """The permuted indices of global positions ``first, first + step, ...`` (``count`` of them), where a
    position past the end wraps to the start (padding). Few indices of a Feistel permutation are computed
    without torch, so that the first batch of a fresh process costs no torch op."""
    length = permutation.length if length is None else length
    if count <= PYTHON_INDICES and isinstance(permutation, (FeistelPermutation, IdentityPermutation)):
        positions = (p % length for p in range(first, first + step * count, step))
        if isinstance(permutation, IdentityPermutation):
            return list(positions)
        return permutation.values(positions)
    positions_tensor = torch.arange(count, dtype=torch.int64) * step + first
    return permutation(positions_tensor % length).tolist()  # type: ignore[no-any-return]


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

    def inverse(self, indices: torch.Tensor) -> torch.Tensor:
        """The positions of the given indices (O(length): the table is inverted once per call)."""
        where = torch.empty_like(self._table)
        where[self._table] = torch.arange(self.length, dtype=self._table.dtype)
        return where[indices]


class IdentityPermutation:
    """Positions in order (``shuffle=False``)."""

    __slots__ = ("length",)

    def __init__(self, length: int, seed: int = 0, epoch: int = 0) -> None:
        self.length = length

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        return positions

    def inverse(self, indices: torch.Tensor) -> torch.Tensor:
        """The positions of the given indices: themselves."""
        return indices


def worker_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator a loader hands torch's iterator for ``epoch``: torch draws the workers' base seed
    from it, which then depends on (seed, epoch) only, not on how many passes ran before a resume."""
    return torch.Generator().manual_seed(mix64(seed, epoch, 0xB45E) & (2**63 - 1))


_warmed = False


def warm_base_seed_draw() -> None:
    """Draw once, in this process, what torch's iterator draws at its start (the workers' base seed).

    The first such draw in a process pages in torch's kernel code: ~0.5 ms and ~0.8 MB of resident
    memory measured here. A loader does it at construction, so that a restarted job's first batch
    after ``load_state_dict`` does not wait on it (the cold-resume benchmark shows both sides).
    """
    global _warmed
    if not _warmed:
        torch.empty((), dtype=torch.int64).random_(generator=torch.Generator()).item()
        _warmed = True


def sample_seeds(seed: int, epoch: int, positions: torch.Tensor) -> torch.Tensor:
    """Per-sample RNG seeds in ``[0, 2**32)``, a pure function of (seed, epoch, global position).

    Positions are global (counted over all ranks), so a sample gets the same seed whatever the
    world size or number of workers that fetches it.
    """
    base = mix64(seed, epoch, 0x5EED)
    low = _mix32(positions & _M32, base & _M32)
    return _mix32(low ^ (positions >> 32), base >> 32)


def _mix32_int(x: int, key: int) -> int:
    """:func:`_mix32` on one Python int (the same value, bit for bit)."""
    x = ((x ^ key) & _M32) * _MUL1 & _M32
    x ^= x >> 15
    x = x * _MUL2 & _M32
    return x ^ (x >> 13)


class SeedRange:
    """The seeds of ``count`` samples at global positions ``first, first + step, ...``, computed only when
    read: the same values as :func:`sample_seeds`, without a tensor op or a list when no RNG is seeded.

    Plain ints, so a slice of it travels to a worker with its batch for a few bytes.
    """

    __slots__ = ("base", "first", "step", "count")

    def __init__(self, base: int, first: int, step: int, count: int) -> None:
        self.base = base
        self.first = first
        self.step = step
        self.count = count

    @classmethod
    def of(cls, seed: int, epoch: int, first: int, step: int, count: int) -> SeedRange:
        return cls(mix64(seed, epoch, 0x5EED), first, step, count)

    def __len__(self) -> int:
        return self.count

    def part(self, start: int, count: int) -> SeedRange:
        """The ``count`` seeds from the ``start``-th on (``self[start:start + count]`` within range, faster:
        it runs once per batch)."""
        return SeedRange(self.base, self.first + start * self.step, self.step, min(count, self.count - start))

    def __getitem__(self, part: slice) -> SeedRange:
        start, stop, stride = part.indices(self.count)
        if stride != 1:
            raise ValueError(f"SeedRange slices take no stride (got {part!r})")
        return SeedRange(self.base, self.first + start * self.step, self.step, max(0, stop - start))

    def __iter__(self) -> Iterator[int]:
        low_key, high_key = self.base & _M32, self.base >> 32
        position = self.first
        for _ in range(self.count):
            yield _mix32_int(_mix32_int(position & _M32, low_key) ^ (position >> 32), high_key)
            position += self.step

    def __getstate__(self) -> tuple[int, int, int, int]:
        return self.base, self.first, self.step, self.count

    def __setstate__(self, state: tuple[int, int, int, int]) -> None:
        self.base, self.first, self.step, self.count = state

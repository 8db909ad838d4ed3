"""Seeded random-access permutations of ``[0, n)``: element ``i`` is computed on its own, in O(1)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

# mix64 (the seed hash) is defined in order.feistel beside the network it keys; re-exported here for its importers.
from .feistel import M32, mix32, mix64, permute, permute_ints, radix, round_keys, unpermute

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

# Both parts of a position (each below sqrt(length) + 1) must fit the 31-bit round input.
MAX_LENGTH = 2**62


class FeistelPermutation:
    """A bijection of ``[0, length)`` chosen by ``(seed, epoch)``, evaluated element by element.

    The keyed Feistel network of :mod:`~torch_input_ckpt.order.feistel` (a mixed-radix split of ``[0, length)``
    into parts near ``sqrt(length)``, six keyed rounds, cycle-walking), with one length and six round keys for all
    elements: the cost per element is flat whatever ``length`` is, and evaluation is vectorised over int64
    tensors, so memory is O(chunk) whatever ``length`` is.
    """

    __slots__ = ("length", "_a", "_keys")

    def __init__(self, length: int, seed: int, epoch: int) -> None:
        if not 1 <= length <= MAX_LENGTH:
            raise ValueError(f"permutation length must be in [1, 2**62] (got {length=})")
        self.length = length
        self._a = radix(length)  # ceil(sqrt(length)): both parts stay below 2**31
        self._keys = round_keys(mix64(seed, epoch))

    def values(self, positions: Iterable[int]) -> list[int]:
        """The permuted indices of positions in ``[0, length)``, on Python ints (the same values as
        :meth:`__call__`). For a first batch after a resume: about 2 µs an index, and no torch op."""
        return permute_ints(positions, self.length, self._keys, self._a)

    def inverse(self, indices: torch.Tensor) -> torch.Tensor:
        """The positions at which the given indices (an int64 tensor in ``[0, length)``) appear: the
        network undone round by round, cycle-walking backwards (O(1) per index, as the forward map)."""
        return unpermute(indices, self.length, self._keys, self._a)

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        """Map an int64 tensor of positions in ``[0, length)`` to the permuted indices."""
        return permute(positions, self.length, self._keys, self._a)


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
    low = mix32(positions & M32, base & M32)
    return mix32(low ^ (positions >> 32), base >> 32)


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
        low_key, high_key = self.base & M32, self.base >> 32
        position = self.first
        for _ in range(self.count):
            yield mix32(mix32(position & M32, low_key) ^ (position >> 32), high_key)
            position += self.step

    def __getstate__(self) -> tuple[int, int, int, int]:
        return self.base, self.first, self.step, self.count

    def __setstate__(self, state: tuple[int, int, int, int]) -> None:
        self.base, self.first, self.step, self.count = state

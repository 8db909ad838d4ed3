"""Within one source of a mixture: which of its items its ``g``-th sample is, exactly once per source epoch.

Invariant: a source's samples are numbered ``g = 0, 1, 2, ...`` over the whole run, whatever the
weights. Its source epochs cut that numbering into consecutive runs of the source's length, and run
``e`` is a seeded permutation of the source's items chosen by (source seed, ``e``): every item
exactly once per source epoch. A source that grew finishes the source epoch it is in over its old
length (a :class:`SourceCursor` remembers where that epoch began and how long it is); the next ones
use the new length.

The permutation is the keyed Feistel network of :mod:`~torch_input_ckpt.order.feistel` (a mixed-radix split
of ``[0, length)``, six keyed rounds, cycle-walking), with the lengths, round keys and radices held per
element, so that one vectorised call serves every source and source epoch of a chunk (an up-sampled source
of length 2 spans thousands of source epochs in one chunk).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from ..order.feistel import M32, mix32, mix64, permute, radix, round_keys

__all__ = ["SourceCursor", "SourceOrder", "SourceTable", "source_seed"]

# Distinct salts per round key, so that the six keys of one (source, epoch) differ.
_SALTS = round_keys(0x50C)


def source_seed(seed: int, name: str) -> int:
    """A source's 64-bit permutation seed, from the loader's seed and the source's name (not its place),
    so that adding or removing another source does not change this one's order."""
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    return mix64(seed, 0x50C5EED, int.from_bytes(digest, "little"))


@dataclass(frozen=True, slots=True)
class SourceCursor:
    """Where a source's current source epoch begins in its sample numbering, and how long it is.

    Attributes:
        epoch_start: The sample number ``g`` at which source epoch ``source_epoch`` begins.
        source_epoch: The source epoch that starts at ``epoch_start``.
        epoch_length: That source epoch's length (the old length, after a growth mid-source-epoch).
        length: The length of the source epochs after it.
    """

    epoch_start: int
    source_epoch: int
    epoch_length: int
    length: int

    @classmethod
    def fresh(cls, length: int) -> SourceCursor:
        return cls(0, 0, length, length)

    def locate(self, g: int) -> tuple[int, int, int]:
        """``(source_epoch, index within it, its length)`` of sample number ``g`` (Python ints)."""
        d = g - self.epoch_start
        if d < self.epoch_length:
            # d < 0 only for an epoch before the last change (set_epoch backwards): extrapolated.
            return self.source_epoch + d // self.epoch_length, d % self.epoch_length, self.epoch_length
        d -= self.epoch_length
        return self.source_epoch + 1 + d // self.length, d % self.length, self.length

    def advance(self, g: int) -> SourceCursor:
        """The same numbering, re-expressed from the source epoch that sample number ``g`` is in."""
        d = g - self.epoch_start
        if d < self.epoch_length:
            return self
        d -= self.epoch_length
        whole = d // self.length
        return SourceCursor(
            self.epoch_start + self.epoch_length + whole * self.length,
            self.source_epoch + 1 + whole,
            self.length,
            self.length,
        )

    def grow(self, g: int, length: int) -> SourceCursor:
        """After a growth to ``length`` at sample number ``g``: the source epoch ``g`` is in keeps its
        length unless it has not started yet (``g`` is its first sample); later ones use ``length``."""
        cursor = self.advance(g)
        if g == cursor.epoch_start:
            return replace(cursor, epoch_length=length, length=length)
        return replace(cursor, length=length)


# A source's own order (a ShardedStream's): source epoch -> (int64 positions in it -> the source's keys).
SourceOrder = Callable[[int], Callable[[torch.Tensor], torch.Tensor]]


class SourceTable:
    """The current sources as per-source tensors, mapping (source, sample number) to an item.

    Args:
        seeds: Per source, its permutation seed (:func:`source_seed`).
        cursors: Per source, its :class:`SourceCursor`.
        orders: Per source, its own order (its source epoch ``e`` is then that order's epoch ``e``, read
            forward, in place of the Feistel permutation), or None; default none.
    """

    def __init__(
        self, seeds: list[int], cursors: list[SourceCursor], orders: Sequence[SourceOrder | None] | None = None
    ) -> None:
        def tensor(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64)

        self._seed_lo = tensor([s & M32 for s in seeds])
        self._seed_hi = tensor([(s >> 32) & M32 for s in seeds])
        self._start = tensor([c.epoch_start for c in cursors])
        self._epoch = tensor([c.source_epoch for c in cursors])
        # The cursor's source epoch, and the ones after it: their lengths and Feistel radices.
        self._first = tensor([c.epoch_length for c in cursors])
        self._later = tensor([c.length for c in cursors])
        self._first_a = tensor([radix(c.epoch_length) for c in cursors])
        self._later_a = tensor([radix(c.length) for c in cursors])
        self._count = len(seeds)
        self._seeds = list(seeds)
        self._cursors = list(cursors)
        # No source is finishing a source epoch over an older length (the usual case): one length each.
        self._uniform = all(c.epoch_length == c.length for c in cursors)
        self._orders = [(k, order) for k, order in enumerate(orders or []) if order is not None]

    # Gathers use index_select rather than tensor[indices], which stalls on torch's thread pool on
    # busy cores (see mixture/layout.py).
    def locate(self, sources: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(source epochs, item indices)`` of sample numbers ``g`` of ``sources`` (int64 tensors)."""

        def per(values: torch.Tensor) -> torch.Tensor:
            return values.index_select(0, sources)

        d = g - per(self._start)
        if self._uniform:
            length = per(self._later)
            epoch = per(self._epoch) + torch.div(d, length, rounding_mode="floor")
            within = torch.remainder(d, length)
            keys = _epoch_keys(per(self._seed_lo), per(self._seed_hi), epoch)
            return epoch, self._own(sources, epoch, within, permute(within, length, keys, per(self._later_a)))
        first = per(self._first)
        later = d >= first
        rest = d - first
        length = torch.where(later, per(self._later), first)
        epoch = per(self._epoch) + torch.where(
            later,
            1 + torch.div(rest, length, rounding_mode="floor"),
            torch.div(d, first, rounding_mode="floor"),
        )
        within = torch.where(later, torch.remainder(rest, length), torch.remainder(d, first))
        a = torch.where(later, per(self._later_a), per(self._first_a))
        keys = _epoch_keys(per(self._seed_lo), per(self._seed_hi), epoch)
        return epoch, self._own(sources, epoch, within, permute(within, length, keys, a))

    def _own(self, sources: torch.Tensor, epoch: torch.Tensor, within: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out`` with the samples of sources that have their own order replaced by that order's keys of
        their positions in their source epoch (one call per source epoch a chunk spans)."""
        for k, order in self._orders:
            mine = torch.nonzero(sources == k).squeeze(1)
            if not mine.numel():
                continue
            epochs = epoch.index_select(0, mine)
            for e in torch.unique(epochs).tolist():
                at = (
                    mine
                    if len(epochs) and bool((epochs == e).all())
                    else mine.index_select(0, torch.nonzero(epochs == e).squeeze(1))
                )
                out.index_copy_(0, at, order(e)(within.index_select(0, at)))
        return out

    @property
    def has_own_orders(self) -> bool:
        """Whether a source has its own order (then :meth:`run` does not serve it)."""
        return bool(self._orders)

    def run(self, k: int, g: int, count: int) -> torch.Tensor:
        """The item indices of source ``k``'s samples ``g, g + 1, ..., g + count - 1``: the values of
        :meth:`locate` (bit for bit), computed per source epoch with its round keys as Python ints, which
        spares the per-element keys and lengths when the run spans few source epochs (a chunk of a
        large source spans one or two)."""
        cursor, seed = self._cursors[k], self._seeds[k]
        spans, at, left = [], g, count
        while left > 0:
            epoch, within, length = cursor.locate(at)
            n = min(left, length - within)
            spans.append((epoch, within, length, n))
            at, left = at + n, left - n
            if len(spans) > _RUN_SPANS:  # an up-sampled small source: per-element keys, in one call
                sources = torch.full((count,), k, dtype=torch.int64)
                return self.locate(sources, torch.arange(g, g + count, dtype=torch.int64))[1]
        parts = [
            permute(torch.arange(within, within + n, dtype=torch.int64), length, _int_epoch_keys(seed, epoch))
            for epoch, within, length, n in spans
        ]
        if len(parts) == 1:
            return parts[0]
        return torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)

    def keys(self, sources: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The mixture's keys of items ``indices`` of ``sources``: ``index * #sources + source``, so that a
        fetch routes a key with one division, whatever the number of sources."""
        return indices * self._count + sources


# Source epochs a run computes one by one before it falls back to per-element keys.
_RUN_SPANS = 4


def _int_epoch_keys(seed: int, epoch: int) -> list[int]:
    """:func:`_epoch_keys` of one (source seed, source epoch), on Python ints (the same values)."""
    base = mix32(mix32(epoch & M32, seed & M32) ^ ((epoch >> 32) & M32), (seed >> 32) & M32)
    return [base ^ salt for salt in _SALTS]


def _epoch_keys(seed_lo: torch.Tensor, seed_hi: torch.Tensor, epoch: torch.Tensor) -> list[torch.Tensor]:
    """Per element, the six 32-bit round keys of (source seed, source epoch).

    One hash of (seed, epoch) per element, and the rounds' keys differ from it by fixed 32-bit salts:
    each round multiplies and folds its input, so related keys still give unrelated rounds, and this
    is a third of the elementwise work of hashing each key.
    """
    base = mix32(mix32(epoch & M32, seed_lo) ^ ((epoch >> 32) & M32), seed_hi)
    return [base ^ salt for salt in _SALTS]

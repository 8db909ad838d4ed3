"""The topology a process runs in: one frozen ``World(rank, size)`` value."""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["World"]


@dataclass(frozen=True, slots=True)
class World:
    """This process's rank and the number of ranks (data-parallel replicas).

    Attributes:
        rank: This process's global rank, in ``[0, size)``.
        size: The number of ranks.
    """

    rank: int = 0
    size: int = 1

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.rank < self.size:
            raise ValueError(f"need 0 <= rank < size (got rank={self.rank}, size={self.size})")

    @classmethod
    def detect(cls) -> World:
        """The world of ``torch.distributed`` when it is initialised, else a single rank (as DistributedSampler)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @classmethod
    def resolve(cls, rank: int | None, size: int | None) -> World:
        """Fill whichever of ``rank``/``size`` is None from :meth:`detect`."""
        detected = cls.detect() if rank is None or size is None else None
        return cls(
            detected.rank if rank is None else rank,  # type: ignore[union-attr]
            detected.size if size is None else size,  # type: ignore[union-attr]
        )

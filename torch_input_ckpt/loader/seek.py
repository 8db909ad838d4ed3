"""The seek backend: a map-style dataset sampled by a :class:`ResumableSampler`, resumed by a seek.

Guarantee: the position is the sampler's global cursor, so a resume is O(1) on any ``num_workers``,
batch size and world size; keys come straight from the sampler's chunked permutation (nothing is
replayed). Limit: batches delivered out of order beyond the cursor (``in_order=False``) can only be
skipped again with the saved batch size and world size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import InputStateError
from ..order.cursor import Ledger
from ..state.schema import SAMPLER_KIND, Ahead, Key, LoaderHeader, SamplerState, field
from .passes import MapBackend, MapOptions, MapPass, tag
from .sampler import CHUNK, ResumableSampler

__all__ = ["SeekBackend"]

log = logging.getLogger("torch_input_ckpt")


class SeekBackend(MapBackend):
    """Map-style loading from a :class:`ResumableSampler`, whose cursor is the position."""

    kind = SAMPLER_KIND

    def __init__(
        self, dataset: Any, collate_fn: Callable[[Any], Any], options: MapOptions, sampler: ResumableSampler
    ) -> None:
        super().__init__(dataset, collate_fn, options)
        self.sampler = sampler

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def generation(self) -> int:
        return self.sampler.generation

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def restart_epoch(self, epoch: int) -> None:
        self.sampler.restart_epoch(epoch)

    def batch_count(self) -> int:
        return self._batches(self.sampler.rank_count(0))

    def _batches(self, count: int) -> int:
        full, rest = divmod(count, self.options.unit)
        return full + (1 if rest and not (self.options.drop_last and self.options.batch_size) else 0)

    def batches_remaining(self) -> int:
        ahead = self.ahead()
        return self._batches(self.sampler.rank_count(self.sampler.cursor)) - (ahead.end - len(ahead.missing))

    def begin(self, ledger: Ledger) -> MapPass:
        epoch, start = self.sampler.position()
        count = self.sampler.rank_count(start)
        return MapPass(epoch, start, count, self._batches(count), self.sampler.generation, ledger)

    def keys(self, run: MapPass) -> Iterator[list[Any]]:
        options, unit = self.options, self.options.unit
        last = run.batches * unit if options.drop_last and options.batch_size else run.count
        chunks = self.sampler.chunks(
            run.epoch,
            run.start,
            run.ledger.prefix * unit,
            last,
            with_seeds=options.reseed,
            chunk=unit * max(1, CHUNK // unit),
            unit=unit,
        )
        number, skip, wants = run.ledger.prefix, run.ledger.skip, run.wants_seeds
        for indices, seeds in chunks:
            for lo in range(0, len(indices), unit):
                if number not in skip:
                    # A batch that carries seeds is TaggedKeys with its SeedRange (the fetch side reads it).
                    seeded = seeds is not None and (wants is None or wants())
                    keys = tag(indices[lo : lo + unit], number, options.tagged or seeded)
                    if seeded:
                        keys.seeds = seeds.part(lo, unit)  # type: ignore[attr-defined, union-attr]
                    yield keys
                number += 1

    def finished(self, run: MapPass) -> None:
        # Commits the pass's end also when it delivered nothing (the empty rest of a finished epoch).
        self.sampler.commit(run.generation, run.epoch, run.start + run.count * self.sampler.num_replicas)

    def commit(self, run: MapPass, prefix: int) -> None:
        taken = run.count if prefix >= run.batches else prefix * self.options.unit
        self.sampler.commit(run.generation, run.epoch, run.start + taken * self.sampler.num_replicas)

    def state(self) -> dict[str, Any]:
        # Normalised: a finished epoch is saved as the start of the next one, matching the loader's epoch.
        return {**self.common_state(), Key.SAMPLER: self.sampler.saved_state(normalize=True).to_dict()}

    def load(self, state: Any, header: LoaderHeader, source: str) -> None:
        ahead = self.load_ahead(state, source)
        saved = SamplerState.from_dict(field(state, Key.SAMPLER, dict, source), source)
        sampler = self.sampler
        current = (self.options.batch_size, sampler.num_replicas)
        if ahead.end and (header.batch_size, saved.num_replicas) != current:
            raise InputStateError(
                f"{source}: the state holds batches delivered out of order (in_order=False) beyond its "
                "cursor, which can only be skipped with the same batch size and world size; saved "
                f"batch_size={header.batch_size}, world size={saved.num_replicas}, now "
                f"batch_size={current[0]}, world size={current[1]}. Resume with the saved values."
            )
        sampler.load(saved, source, literal=False)  # the loader normalises positions itself
        if header.batch_size != self.options.batch_size:
            log.info("%s: batch size %s -> %s; same sample position", source, header.batch_size, current[0])
        self.set_ahead(ahead if ahead.end else Ahead())

"""Recorded training runs for the provenance tests: W ranks' loaders stepped in lockstep in one process,
each with its own InputCheckpointer (as W processes would), every delivered key recorded per step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ResumableSampler, World
from torch_input_ckpt.store import files


class Rank:
    """One rank's loader, its endless batch stream and its checkpointer."""

    def __init__(self, directory: Path, rank: int, world: int, config: dict[str, Any], keep_last: int | None) -> None:
        make = config.get("make_dataset")
        dataset = make() if make is not None else list(range(config["length"]))
        self.sampler = ResumableSampler(
            dataset,
            shuffle=config["shuffle"],
            seed=config.get("seed", 7),
            num_replicas=world,
            rank=rank,
            drop_last=config.get("sampler_drop_last", False),
            order=config.get("order", "feistel"),
        )
        self.loader = ResumableDataLoader(
            dataset,
            batch_size=config["batch_size"],
            sampler=self.sampler,
            drop_last=config.get("drop_last", False),
            collate_fn=list,
            reseed_rng=False,
        )
        self.ckpt = InputCheckpointer(
            directory, self.loader, every_n_steps=config["every"], world=World(rank, world), keep_last=keep_last
        )
        self._batches: Iterator[Any] | None = None

    def batches(self) -> Iterator[Any]:
        while True:  # epoch after epoch, as a trainer's loop
            yield from self.loader

    def next_batch(self) -> list[Any]:
        if self._batches is None:
            self._batches = self.batches()
        return list(next(self._batches))


def run(
    directory: Path,
    config: dict[str, Any],
    *,
    world: int,
    steps: range,
    bps: int = 1,
    keep_last: int | None = None,
    restore: bool = False,
    skip_steps: int = 0,
    exclude_after: tuple[int, list[int]] | None = None,
) -> dict[int, dict[int, list[Any]]]:
    """Train ``steps`` on ``world`` ranks (``bps`` batches per step), saving every ``config['every']``
    steps; returns step -> rank -> the keys delivered. With ``restore``, each rank first restores (with
    ``skip_steps``), and the steps start after the step it returns."""
    ranks = [Rank(directory, r, world, config, keep_last) for r in range(world)]
    delivered: dict[int, dict[int, list[Any]]] = {}
    try:
        if restore:
            # The newest step every rank saved, fixed before any rank restores: a skip saves at once, and a rank
            # restoring after it (one process here, not a collective) must not see that save as the newest.
            saved = files.list_steps(directory)
            base = max(set.intersection(*(set(steps) for steps in saved.values())))
            restored = {r.ckpt.restore(base, skip_steps=skip_steps) for r in ranks}
            assert len(restored) == 1
            steps = range(restored.pop() + 1, steps.stop)
        elif steps.start == 1:
            for r in ranks:
                r.ckpt.save(0)
        for step in steps:
            if exclude_after is not None and step == exclude_after[0]:
                for r in ranks:
                    r.loader.exclude(exclude_after[1])
            delivered[step] = {i: [k for _ in range(bps) for k in r.next_batch()] for i, r in enumerate(ranks)}
            for r in ranks:
                r.ckpt.after_step(step)
    finally:
        for r in ranks:
            r.ckpt.close()
    return delivered

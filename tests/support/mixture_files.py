"""Shared pieces of the mixture tests that go through checkpoint FILES: the README's web/code/math
mixture (names not in alphabetical order, so that a file's sorted keys cannot hide a lost order), a
run of fresh objects saving every step with ``InputCheckpointer``, and a hand-edited file re-signed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch_input_ckpt import InputCheckpointer, Mixture, ResumableDataLoader
from torch_input_ckpt.store import files

ORDERED = ("web", "code", "math")  # the README's example: not alphabetical
STEPS = 24  # over two mixture epochs of 95 samples (batch 8)


class Tagged:
    """The README's source: item ``i`` of ``name`` is ``f"{name}{i}"``."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> str:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return f"{self.name}{i}"


LENGTHS = {"web": 70, "code": 20, "math": 5}


def make_loader(weights: dict[str, Any], order: tuple[str, ...] = ORDERED) -> ResumableDataLoader:
    sources = {name: Tagged(name, LENGTHS[name]) for name in order}
    mix = Mixture(sources, {name: weights[name] for name in order}, samples_per_epoch=95)
    return ResumableDataLoader(mix, batch_size=8, shuffle=True, seed=0, collate_fn=list)


def run(
    directory: Path, weights: dict[str, Any], *, restore: int | None = None, order: tuple[str, ...] = ORDERED
) -> dict[int, list[str]]:
    """Steps 1..STEPS (or restore+1..STEPS) of fresh objects, saving every step; the batch of each step."""
    return run_steps(directory, make_loader(weights, order), STEPS, restore=restore, epochs=4)


def run_steps(directory: Path, loader: Any, steps: int, *, restore: int | None, epochs: int) -> dict[int, list]:
    """Steps 1..steps (or restore+1..steps, restored from ``directory``) of ``loader`` over up to ``epochs``
    epochs, saving every step through an InputCheckpointer; the batch of each step."""
    out: dict[int, list] = {}
    with InputCheckpointer(directory, loader, every_n_steps=1, keep_last=None) as ckpt:
        first = 1 if restore is None else ckpt.restore(restore) + 1
        batches = (batch for _ in range(epochs) for batch in loader)
        for step in range(first, steps + 1):
            out[step] = next(batches)
            ckpt.after_step(step)
    return out


WEIGHTS = {"web": 7, "code": 2, "math": 1}


def rewrite(path: Path, document: dict[str, Any]) -> None:
    """Write a hand-changed checkpoint document back with a valid checksum, as the checkpointer would."""
    path.write_bytes(
        files.encode_checkpoint(
            rank=document["rank"],
            world_size=document.get("world_size"),
            step=document["step"],
            states=document["states"],
            external=document.get("external", []),
            provenance=document.get("provenance"),
        )
    )

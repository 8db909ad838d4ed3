"""What a run consumed, from its checkpoints alone: per source samples (and tokens of a packed stream), realised
mixture proportions per segment, progress through each source's epoch, per rank batches, skipped steps and bad
samples (the ``report`` command).

Guarantee: computed from rank 0's checkpoints along the run's lineage (newest first, each file's previous save,
``store/lineage.py``), with no data read. A position's counts are arithmetic on the state: a mixture's per-source
sample numbers come from its plan (``Plan.consumed``: exact, whatever the weights, resumes and new plans), a
dataset's or stream's from ``epoch * length + cursor``. Steps skipped on a restore are subtracted (their
positions were passed, never trained on). Limits: counts are positions of the order: the at most
``world - 1`` padding repeats at an epoch's end (``DistributedSampler``'s rule) are not counted; a dataset
that grew counts its earlier epochs at its current length; a packed stream's tokens are ``sequences *
pack_to`` (each lane's last sequence padded); history before the oldest checkpoint kept (``keep_last``) is
counted with that checkpoint's configuration. A realised segment of a mixture counts the positions the order
passed in it (skipped steps included: the order, not the training, is what a segment's weights describe).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputStateError
from ..mixture.plan import Plan
from ..state.schema import LOADER_KIND, MIXTURE_KIND, STREAM_KIND, BadSample, Key, LoaderHeader, SamplerState
from ..store import files
from ..store.files import InputCheckpoint, InputFile
from ..store.lineage import check_record

__all__ = ["Consumption", "Point", "consumption"]

MAX_REPORT_CHECKPOINTS = 10_000  # checkpoints of one rank read for a report (each is one small file)


@dataclass(frozen=True, slots=True)
class Point:
    """The run at one checkpoint of rank 0 on its lineage.

    Attributes:
        step: The step saved.
        epoch: The loader's epoch.
        cursor: Samples all ranks consumed in the epoch (the global cursor).
        epoch_length: Positions in the epoch.
        world_size: Ranks that consumed up to it.
        samples: Samples consumed since the run began, all ranks, skipped steps excluded.
        sources: Per source, its samples consumed (a mixture; else the one dataset, named ``"dataset"``).
        tokens: Tokens consumed, for a packed stream (``samples * pack_to``), else None.
        progress: Per source: ``{"source_epoch", "index", "length", "fraction"}``: where it is in its own epoch.
        skip: This save is the one a restore with ``skip_steps`` made (the steps before it never ran here).
    """

    step: int
    epoch: int
    cursor: int
    epoch_length: int
    world_size: int
    samples: int
    sources: dict[str, int]
    tokens: int | None
    progress: dict[str, dict[str, Any]]
    skip: bool

    def proportions(self) -> dict[str, float]:
        """Each source's share of the samples consumed so far (0 for all before any sample)."""
        total = sum(self.sources.values())
        return {name: (n / total if total else 0.0) for name, n in self.sources.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "cursor": self.cursor,
            "epoch_length": self.epoch_length,
            "world_size": self.world_size,
            "samples": self.samples,
            "sources": dict(self.sources),
            "proportions": self.proportions(),
            "tokens": self.tokens,
            "progress": {name: dict(p) for name, p in self.progress.items()},
            "skip_save": self.skip,
        }


@dataclass(frozen=True, slots=True)
class Consumption:
    """A report of what a run consumed (see the module docstring for what is exact).

    Attributes:
        directory: The checkpoint directory.
        component: The loader's component name.
        kind: ``"mixture"``, ``"stream"`` or ``"dataset"``.
        points: Rank 0's checkpoints on the run's lineage, oldest first.
        history_complete: Whether the lineage reaches the run's first save (else older files were pruned).
        segments: A mixture's realised segments: ``{"from_sample", "to_sample", "weights", "samples",
            "proportions"}`` (empty for other kinds).
        ranks: Per rank, its newest checkpoint: ``{"rank", "step", "batches", "bad_samples", "excluded"}``, and
            ``"samples"``: what its loader delivered along the lineage (padding repeats included; None with
            the loader's ``drop_last``).
        skipped_steps: ``[[first, last], ...]``: steps skipped on a restore.
    """

    directory: str
    component: str
    kind: str
    points: list[Point]
    history_complete: bool
    segments: list[dict[str, Any]] = field(default_factory=list)
    ranks: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (the ``report --json`` output)."""
        newest = self.points[-1]
        return {
            "directory": self.directory,
            "component": self.component,
            "kind": self.kind,
            "step": newest.step,
            "samples": newest.samples,
            "tokens": newest.tokens,
            "sources": {
                name: {"samples": n, "proportion": newest.proportions()[name], **newest.progress[name]}
                for name, n in newest.sources.items()
            },
            "segments": self.segments,
            "ranks": self.ranks,
            "skipped_steps": self.skipped_steps,
            "history_complete": self.history_complete,
            "checkpoints": [p.to_dict() for p in self.points],
        }


def consumption(directory: str | os.PathLike[str], component: str | None = None) -> Consumption:
    """What the run in ``directory`` consumed, from its checkpoints (see :class:`Consumption`).

    Raises:
        InputStateError: for a directory without a valid checkpoint of rank 0 or without a loader state, or a
            state this report cannot read (named).
    """
    root = Path(directory)
    by_rank = files.list_steps(root)
    chain, complete = _lineage(root, by_rank.get(0, []))
    name = _component(chain[-1], component)
    points: list[Point] = []
    skipped_so_far: dict[str, int] = {}
    before: tuple[dict[str, int], int] | None = None
    for checkpoint in chain:
        raw, total = _raw(checkpoint, name)
        if checkpoint.provenance and _is_skip_save(checkpoint) and before is not None:
            for source, n in raw.items():
                skipped_so_far[source] = skipped_so_far.get(source, 0) + n - before[0].get(source, 0)
        before = (raw, total)
        points.append(_point(checkpoint, name, raw, skipped_so_far))
    newest = chain[-1]
    record = check_record(newest.provenance, str(newest.path))
    return Consumption(
        directory=str(root),
        component=name,
        kind=_kind(newest.states[name]),
        points=points,
        history_complete=complete,
        segments=_segments(_plans(chain, name)),
        ranks=_ranks(root, by_rank, name, _rank_samples(chain, name)),
        skipped_steps=[list(r) for r in record.get(Key.SKIPPED, [])],
    )


# -- the lineage --------------------------------------------------------------------------------------


def _lineage(root: Path, steps: list[int]) -> tuple[list[InputCheckpoint], bool]:
    """Rank 0's checkpoints the newest one descends from, oldest first; and whether it reaches the first save."""
    if len(steps) > MAX_REPORT_CHECKPOINTS:
        steps = steps[-MAX_REPORT_CHECKPOINTS:]
    read: dict[int, InputCheckpoint | None] = {}

    def get(step: int) -> InputCheckpoint | None:
        if step not in read:
            try:
                read[step] = files.read_checkpoint(root / InputFile(0, step).name)
            except (InputStateError, files.FileVanishedError):
                read[step] = None
        return read[step]

    newest = next((c for s in reversed(steps) if (c := get(s)) is not None), None)
    if newest is None:
        raise InputStateError(f"{root}: no valid input checkpoint of rank 0 (files input_0-<step>.json)")
    chain = [newest]
    while True:
        previous = check_record(chain[-1].provenance, str(chain[-1].path)).get(Key.PREVIOUS_STEP)
        if previous is None:
            return chain[::-1], True
        found = get(previous) if previous in steps and previous < chain[-1].step else None
        if found is None:
            return chain[::-1], False
        chain.append(found)


def _is_skip_save(checkpoint: InputCheckpoint) -> bool:
    """Whether this file is the save a restore with ``skip_steps`` made at once (previous..step skipped)."""
    record = check_record(checkpoint.provenance, str(checkpoint.path))
    previous = record.get(Key.PREVIOUS_STEP)
    return previous is not None and [previous + 1, checkpoint.step] in record.get(Key.SKIPPED, [])


def _component(checkpoint: InputCheckpoint, wanted: str | None) -> str:
    loaders = sorted(
        n for n, s in checkpoint.states.items() if isinstance(s, Mapping) and s.get(Key.KIND) == LOADER_KIND
    )
    if wanted is not None and wanted not in loaders:
        raise InputStateError(f"{checkpoint.path}: no ResumableDataLoader component {wanted!r} (found {loaders})")
    if wanted is None and len(loaders) != 1:
        raise InputStateError(
            f"{checkpoint.path}: a report is of one ResumableDataLoader; found {loaders or 'none'}"
            + (": name one with --component" if loaders else "")
        )
    return wanted or loaders[0]


# -- one checkpoint ---------------------------------------------------------------------------------------


def _sampler(state: Any, source: str) -> SamplerState:
    header = LoaderHeader.from_dict(state, source)
    if header.sampler_kind != "ResumableSampler":
        raise InputStateError(
            f"{source}: the loader's sampler_kind is {header.sampler_kind!r}; a report reads a ResumableSampler's "
            "position (a custom sampler's or an IterableDataset's is not in the state)"
        )
    return SamplerState.from_dict(state.get(Key.SAMPLER), f"{source}: {Key.SAMPLER}")


def _kind(state: Mapping[str, Any]) -> str:
    order = (state.get(Key.SAMPLER) or {}).get(Key.DATASET_ORDER) or {}
    return {MIXTURE_KIND: "mixture", STREAM_KIND: "stream"}.get(order.get(Key.KIND), "dataset")


def _raw(checkpoint: InputCheckpoint, name: str) -> tuple[dict[str, int], int]:
    """Per source, the positions its order passed since the run began (skipped ones included), and the epoch
    length."""
    source = f"{checkpoint.path}: component {name!r}"
    sampler = _sampler(checkpoint.states[name], source)
    order = sampler.dataset_order
    if order is not None and order.get(Key.KIND) == MIXTURE_KIND:
        plan = Plan.from_state(order, f"{source}: {Key.DATASET_ORDER}")
        numbers = plan.consumed(sampler.seed, sampler.shuffle, sampler.epoch, min(sampler.cursor, plan.total))
        return dict(zip(plan.names, numbers, strict=True)), plan.total
    label = "stream" if order is not None and order.get(Key.KIND) == STREAM_KIND else "dataset"
    return {label: sampler.epoch * sampler.length + min(sampler.cursor, sampler.length)}, sampler.length


def _point(checkpoint: InputCheckpoint, name: str, raw: dict[str, int], skipped: dict[str, int]) -> Point:
    source = f"{checkpoint.path}: component {name!r}"
    sampler = _sampler(checkpoint.states[name], source)
    order = sampler.dataset_order or {}
    sources = {s: n - skipped.get(s, 0) for s, n in raw.items()}
    progress: dict[str, dict[str, Any]] = {}
    if order.get(Key.KIND) == MIXTURE_KIND:
        plan = Plan.from_state(order, f"{source}: {Key.DATASET_ORDER}")
        for s, cursor in zip(plan.names, plan.cursors, strict=True):
            source_epoch, index, length = cursor.locate(raw[s])
            progress[s] = {"source_epoch": source_epoch, "index": index, "length": length, "fraction": index / length}
    else:
        (label,) = raw
        within = min(sampler.cursor, sampler.length)
        progress[label] = {
            "source_epoch": sampler.epoch,
            "index": within,
            "length": sampler.length,
            "fraction": within / sampler.length if sampler.length else 0.0,
        }
    pack_to = order.get(Key.STREAM_PACK_TO) if order.get(Key.KIND) == STREAM_KIND else None
    samples = sum(sources.values())
    return Point(
        step=checkpoint.step,
        epoch=sampler.epoch,
        cursor=sampler.cursor,
        epoch_length=sampler.length,
        world_size=sampler.num_replicas,
        samples=samples,
        sources=sources,
        tokens=samples * pack_to if type(pack_to) is int else None,
        progress=progress,
        skip=_is_skip_save(checkpoint),
    )


def _plans(chain: list[InputCheckpoint], name: str) -> list[tuple[Plan, SamplerState]]:
    """The distinct mixture plans along the lineage (a resume with new weights or sources starts one), oldest
    first, each with the sampler state of the newest checkpoint that holds it."""
    found: dict[tuple[int, int], tuple[Plan, SamplerState]] = {}
    for checkpoint in chain:
        path = f"{checkpoint.path}: component {name!r}"
        sampler = _sampler(checkpoint.states[name], path)
        order = sampler.dataset_order
        if order is None or order.get(Key.KIND) != MIXTURE_KIND:
            return []
        plan = Plan.from_state(order, f"{path}: {Key.DATASET_ORDER}")
        found[(plan.anchor_epoch, plan.anchor_position)] = (plan, sampler)
    return [found[anchor] for anchor in sorted(found)]


def _segments(plans: list[tuple[Plan, SamplerState]]) -> list[dict[str, Any]]:
    """A mixture's realised segments: each plan on the lineage from its anchor to the next plan's, cut at each
    change of its schedule (``Plan.schedule``); before the first plan's anchor (history
    pruned), one segment of earlier weights (the sample numbers at that anchor)."""
    bounds: list[tuple[Plan, int, int, tuple[Any, ...] | None, list[int]]] = []
    for i, (plan, sampler) in enumerate(plans):

        def at(g: int, plan: Plan = plan, sampler: SamplerState = sampler) -> list[int]:
            return plan.consumed(sampler.seed, sampler.shuffle, g // plan.total, g % plan.total)

        anchor = plan.anchor_epoch * plan.total + plan.anchor_position
        if i + 1 < len(plans):
            following = plans[i + 1][0]
            stop = following.anchor_epoch * following.total + following.anchor_position
        else:
            stop = sampler.epoch * plan.total + min(sampler.cursor, plan.total)
        if i == 0 and anchor > 0:
            bounds.append((plan, 0, anchor, None, list(plan.bases)))
        schedule = [(g, tuple(w)) for g, w in plan.schedule if anchor < g < stop]
        changes = [(anchor, tuple(plan.weights)), *schedule]
        for k, (start, weights) in enumerate(changes):
            end = changes[k + 1][0] if k + 1 < len(changes) else stop
            if start < end:
                bounds.append((plan, start, end, weights, [b - a for a, b in zip(at(start), at(end), strict=True)]))
    return [_segment(*bound) for bound in bounds]


def _segment(plan: Plan, start: int, end: int, weights: tuple[Any, ...] | None, counts: list[int]) -> dict[str, Any]:
    total = sum(counts)
    return {
        "from_sample": start,
        "to_sample": end,
        "weights": None if weights is None else dict(zip(plan.names, weights, strict=True)),
        "samples": dict(zip(plan.names, counts, strict=True)),
        "proportions": {n: (c / total if total else 0.0) for n, c in zip(plan.names, counts, strict=True)},
    }


# -- per rank ---------------------------------------------------------------------------------------------


def _rank_samples(chain: list[InputCheckpoint], name: str) -> dict[int, int] | None:
    """Per rank, the samples its loader delivered along the lineage (padding repeats included, skipped steps
    not), from each interval's positions and world size; None with the loader's ``drop_last`` (partial
    batches dropped per rank: not positions)."""
    counts: dict[int, int] = {}
    previous = (0, 0)
    for i, checkpoint in enumerate(chain):
        state = checkpoint.states[name]
        path = f"{checkpoint.path}: component {name!r}"
        header = LoaderHeader.from_dict(state, path)
        if header.drop_last and header.batch_size:
            return None
        sampler = _sampler(state, path)
        here = (sampler.epoch, sampler.cursor)
        if not (i and _is_skip_save(checkpoint)):  # a skip-save's interval was skipped, never delivered
            for rank in range(sampler.num_replicas):
                share = _share(previous, here, sampler.length, sampler.num_replicas, rank, sampler.drop_last)
                counts[rank] = counts.get(rank, 0) + share
        previous = here
    return counts


def _share(start: tuple[int, int], end: tuple[int, int], length: int, world: int, rank: int, tail_dropped: bool) -> int:
    """Positions rank ``rank`` takes from ``start`` to ``end`` (each ``(epoch, cursor)``): a pass from cursor
    ``s`` gives it ``s + rank``, ``s + rank + world``, ... up to the pass's end (padded unless dropped)."""

    def pass_end(s: int) -> int:
        remaining = max(length - s, 0)
        return s + (remaining // world if tail_dropped else -(-remaining // world)) * world

    def taken(s: int, stop: int) -> int:
        return max(0, -(-(stop - s - rank) // world))

    (first, cursor), (last, stop) = start, end
    if first == last:
        return taken(cursor, min(stop, max(pass_end(cursor), cursor)))
    whole = (last - first - 1) * taken(0, pass_end(0))
    return taken(cursor, max(pass_end(cursor), cursor)) + whole + taken(0, min(stop, pass_end(0)))


def _ranks(root: Path, by_rank: Mapping[int, list[int]], name: str, samples: dict[int, int] | None) -> list[Any]:
    out = []
    for rank, steps in sorted(by_rank.items()):
        found = _rank(root, rank, steps, name)
        found["samples"] = None if samples is None else samples.get(rank, 0)
        out.append(found)
    return out


def _rank(root: Path, rank: int, steps: list[int], name: str) -> dict[str, Any]:
    """A rank's newest valid checkpoint: its step, batches delivered, bad samples and excluded samples."""
    for step in reversed(steps):
        try:
            checkpoint = files.read_checkpoint(root / InputFile(rank, step).name)
        except (InputStateError, files.FileVanishedError):
            continue
        state = checkpoint.states.get(name)
        if not isinstance(state, Mapping):
            continue
        sampler = state.get(Key.SAMPLER) if isinstance(state.get(Key.SAMPLER), Mapping) else {}
        return {
            "rank": rank,
            "step": step,
            "batches": state.get(Key.BATCHES_TOTAL),
            "bad_samples": bad_samples(state),
            "excluded": sampler.get(Key.EXCLUDED) or [],
        }
    return {"rank": rank, "step": None, "batches": None, "bad_samples": [], "excluded": []}


def bad_samples(state: Mapping[str, Any], source: str = "state") -> list[dict[str, Any]]:
    """The bad samples a loader state records (``on_error="skip"``), as ``{"epoch", "index", "error"}``.

    Raises:
        InputStateError: for a malformed entry (the checks of :meth:`BadSample.list_from_state`).
    """
    return [
        {"epoch": bad.epoch, "index": bad.key, "error": bad.error} for bad in BadSample.list_from_state(state, source)
    ]

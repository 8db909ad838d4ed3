"""Which samples were in step N, and at which steps a sample was delivered, from a checkpoint directory.

Guarantee: the answer is computed from the newest valid input checkpoint before the step (rank 0's
file: positions are global) and the configuration the checkpoints record, without the dataset and
without reading data: batches per step is measured between two saves of the same run (see
``store/lineage.py``), the world size and batch size are those of the run that continued from the checkpoint
(the next file says so after a resharding restore), and skipped steps are reported as skipped. Where a
needed value is not recorded the answer is refused with an ``InputStateError`` that names it; nothing is
guessed. The step saved as ``S`` is the state *after* step ``S``: step ``S + 1`` is its first batch(es).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..base.messages import short
from ..errors import InputStateError
from ..state.schema import LOADER_KIND, MAX_EPOCH, MAX_LENGTH, SAMPLER_KIND, Key
from ..store import files
from ..store.directory import ObjectDirectory, as_directory
from ..store.files import InputCheckpoint, InputFile
from ..store.lineage import check_record
from .arithmetic import SavedPosition
from .streams import MAX_SCANNED_POSITIONS

__all__ = [
    "MAX_EPOCHS_PER_QUERY",
    "MAX_KEYS_PER_QUERY",
    "MAX_STEPS_PER_QUERY",
    "Occurrence",
    "Provenance",
    "Segment",
    "StepSamples",
    "describe_checkpoint",
    "samples_at",
    "steps_of_sample",
]

# Bounds of one question, checked before any work (each answer costs a few milliseconds per step, per epoch
# and checkpoint, or per million keys): past them, ask in parts.
MAX_STEPS_PER_QUERY = 10_000
MAX_EPOCHS_PER_QUERY = 1_000
MAX_KEYS_PER_QUERY = 10_000_000


@dataclass(frozen=True, slots=True)
class StepSamples:
    """The keys of one optimizer step, per rank.

    Attributes:
        step: The step.
        checkpoint: The step of the checkpoint it was computed from.
        world_size: The ranks that consumed it.
        batches_per_step: Batches each rank consumed per step.
        skipped: The step was skipped on a restore: these keys were delivered by the run that was rolled
            back, and never by the run that continued.
        epochs: The epoch of each of the step's batches.
        keys: Rank -> the step's keys on that rank, batch after batch (dataset indices, ``(source, index)``
            of a mixture, ``(shard file, sample number)`` of a stream, or a packed sequence's pieces as
            ``{"sequence", "pieces"}``: see ``provenance/streams.py``).
    """

    step: int
    checkpoint: int
    world_size: int
    batches_per_step: int
    skipped: bool
    epochs: tuple[int, ...]
    keys: Mapping[int, list[Any]]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (the CLI's ``--json``)."""
        return {
            "step": self.step,
            "checkpoint": self.checkpoint,
            "world_size": self.world_size,
            "batches_per_step": self.batches_per_step,
            "skipped": self.skipped,
            "epochs": list(self.epochs),
            "keys": {
                str(rank): [list(k) if isinstance(k, tuple) else k for k in keys] for rank, keys in self.keys.items()
            },
        }


@dataclass(frozen=True, slots=True)
class Occurrence:
    """One delivery of a sample: in ``epoch``, at ``step`` (batch ``batch`` of the step) on ``rank``."""

    epoch: int
    step: int
    rank: int
    batch: int
    skipped: bool


@dataclass(frozen=True, slots=True)
class Segment:
    """Steps ``(start, end]`` (end None: open), as continued from the checkpoint of ``start``."""

    start: int
    end: int | None
    saved: SavedPosition
    batches_per_step: int | None
    why_unknown: str


class Provenance:
    """A checkpoint directory's history: one listing, and each file read at most once, when an answer needs
    it (a step reads the checkpoint before it, the one after, and the newest: three files at most).

    Args:
        directory: The directory given to ``InputCheckpointer``.
        component: The name of the loader's component (needed only when several components are loaders).
        batches_per_step: Batches each rank consumes per optimizer step, when the checkpoints do not
            record it (a single save so far); checked against what they record.

    Raises:
        InputStateError: for a directory without a valid checkpoint of rank 0, or without a loader state.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | ObjectDirectory,
        *,
        component: str | None = None,
        batches_per_step: int | None = None,
    ) -> None:
        if batches_per_step is not None and (isinstance(batches_per_step, bool) or batches_per_step < 1):
            raise ValueError(f"batches_per_step must be an int >= 1 (got {batches_per_step=})")
        self.directory = as_directory(directory)  # a local directory, or an object prefix
        self.given_batches_per_step = batches_per_step
        self._segments: dict[int, Segment] = {}
        # As restore plans (store/planner.py): a file that vanished between the listing and its reading was pruned by
        # a saver that committed a newer one, so list again (a bounded number of times) rather than fail.
        for _ in range(files.READ_ATTEMPTS):
            self.steps = files.list_steps(self.directory).get(0, [])
            self._files: dict[int, InputCheckpoint | None] = {}
            self._vanished = False
            self.newest = next((c for s in reversed(self.steps) if (c := self.read(s)) is not None), None)
            if self.newest is not None or not self._vanished:
                break
        if self.newest is None:
            raise InputStateError(f"{self.directory}: no valid input checkpoint of rank 0 (files input_0-<step>.json)")
        self.component = _loader_component(self.newest, component)

    # -- the history --------------------------------------------------------------------------------

    def read(self, step: int) -> InputCheckpoint | None:
        """Rank 0's checkpoint of ``step``, read and verified once (None: damaged or gone)."""
        if step not in self._files:
            try:
                self._files[step] = files.read_checkpoint(self.directory / InputFile(0, step).name)
            except files.FileVanishedError:  # pruned since the listing: an older (or, listed again, newer) one
                self._vanished = True
                self._files[step] = None
            except InputStateError:  # damaged: an older one answers
                self._files[step] = None
        return self._files[step]

    @property
    def checkpoints(self) -> list[InputCheckpoint]:
        """Every valid checkpoint of rank 0, oldest first (reads them all)."""
        return [c for s in self.steps if (c := self.read(s)) is not None]

    @property
    def segments(self) -> list[Segment]:
        """One segment per valid checkpoint, oldest first (reads them all)."""
        return [self.segment(c.step) for c in self.checkpoints]

    def segment(self, step: int) -> Segment:
        """The steps after the checkpoint of ``step`` up to the next one, and how to compute them."""
        if step in self._segments:
            return self._segments[step]
        base = self.read(step)
        assert base is not None
        after = next((c for s in self.steps if s > step and (c := self.read(s)) is not None), None)
        source = f"{base.path}: component {self.component!r}"
        state = _state(base, self.component)
        # The next file continues from this one (the same run, or a restore of it) unless it is the save a
        # restore with skip_steps makes at once: the skipped steps ran in the run of `base`.
        continued = (
            after is not None
            and _record(after).get(Key.PREVIOUS_STEP) == base.step
            and [base.step + 1, after.step] not in _record(after).get(Key.SKIPPED, [])
        )
        # The run after `base` is described by the next file's state: a restore on another world size or batch
        # size, or samples excluded since, show there.
        later = _state(after, self.component) if continued else None  # type: ignore[arg-type]
        saved = SavedPosition.from_state(state, source, later=later)
        linked = after is not None and _record(after).get(Key.PREVIOUS_STEP) == base.step
        bps, why = self._batches_per_step(base, after if linked else None)
        segment = Segment(base.step, None if after is None else after.step, saved, bps, why)
        self._segments[step] = segment
        return segment

    def _batches_per_step(self, base: InputCheckpoint, after: InputCheckpoint | None) -> tuple[int | None, str]:
        measured: list[tuple[int, str]] = []
        for file in (after, base):
            if file is None:
                continue
            record = _record(file)
            before, totals = record.get(Key.PREVIOUS_STEP), record.get(Key.PREVIOUS_BATCHES, {})
            now = _state(file, self.component).get(Key.BATCHES_TOTAL)
            then = totals.get(self.component) if isinstance(totals, Mapping) else None
            if type(before) is int and before < file.step and type(now) is int and type(then) is int:
                steps, batches = file.step - before, now - then
                if batches % steps:
                    raise InputStateError(
                        f"{file.path}: {batches} batches over the {steps} steps {before + 1}..{file.step} is not a "
                        "whole number per step: steps consumed a varying number of batches, so which batches a "
                        "step held is not recorded"
                    )
                measured.append((batches // steps, f"{file.path} (steps {before + 1}..{file.step})"))
                break  # the file after the base measures the very steps asked about; the base, the ones before
        given = self.given_batches_per_step
        if measured and given is not None and measured[0][0] != given:
            raise InputStateError(
                f"batches_per_step={given} contradicts the {measured[0][0]} batches per step recorded in "
                f"{measured[0][1]}"
            )
        if measured:
            return measured[0][0], ""
        if given is not None:
            return given, ""
        return None, (
            f"{base.path}: the batches per optimizer step are not recorded (this is the first save of its run, "
            "or it was written before checkpoints recorded batch counts, and no later save continues from it); "
            "pass batches_per_step= (--batches-per-step) if you know it, e.g. 1 without gradient accumulation"
        )

    def _segment_for(self, step: int) -> Segment:
        """The segment that covers ``step``: continued from the newest checkpoint before it."""
        if type(step) is not int or not 1 <= step <= files.MAX_STEP:
            raise ValueError(
                f"step must be an int in [1, {files.MAX_STEP}]: the checkpoint of step S holds the state after it "
                f"(got step={short(step)})"
            )
        start = next((s for s in reversed(self.steps) if s < step and self.read(s) is not None), None)
        if start is None:
            raise InputStateError(
                f"{self.directory}: no valid input checkpoint before step {step} (steps on disk for rank 0: "
                f"{self.steps}); older ones were pruned (keep_last)"
            )
        chosen = self.segment(start)
        if chosen.batches_per_step is None:
            raise InputStateError(chosen.why_unknown)
        return chosen

    def skipped(self, step: int) -> bool:
        """Whether ``step`` was skipped on a restore, by the newest record on disk."""
        assert self.newest is not None
        return any(first <= step <= last for first, last in _record(self.newest).get(Key.SKIPPED, []))

    # -- the questions --------------------------------------------------------------------------------

    def step(self, step: int, rank: int | None = None) -> StepSamples:
        """The keys of ``step`` on every rank (or on ``rank``).

        Raises:
            InputStateError: when a value the answer needs is not recorded (named in the message).
            ValueError: for a step below 1 or a rank outside the world.
        """
        segment = self._segment_for(step)
        saved, bps = segment.saved, segment.batches_per_step
        assert bps is not None
        _check_reach(step, segment, bps)
        ranks = range(saved.world) if rank is None else [rank]
        if rank is not None and not 0 <= rank < saved.world:
            raise ValueError(f"rank {short(rank)} is not in the world of {saved.world} ranks that ran step {step}")
        if bps * saved.unit * len(ranks) > MAX_KEYS_PER_QUERY:
            raise ValueError(
                f"step {step} holds {bps * saved.unit * len(ranks)} keys, more than the bound of "
                f"{MAX_KEYS_PER_QUERY} per question (MAX_KEYS_PER_QUERY); ask for one rank (--rank)"
            )
        first = (step - segment.start - 1) * bps
        spots = [saved.locate(first + b) for b in range(bps)]
        keys: dict[int, list[Any]] = {r: [] for r in ranks}
        for spot in spots:
            # Every rank's positions in one tensor: one permutation call per batch, not one per rank.
            parts = [saved.positions(spot, r) for r in ranks]
            computed = saved.keys(spot.epoch, torch.cat(parts))
            lo = 0
            for r, part in zip(ranks, parts, strict=True):
                keys[r].extend(computed[lo : lo + len(part)])
                lo += len(part)
        return StepSamples(
            step, segment.start, saved.world, bps, self.skipped(step), tuple(s.epoch for s in spots), keys
        )

    def keys_in_step(self, step: int, one_rank: bool = False) -> int:
        """How many keys the answer for ``step`` holds (all ranks, or one), known before computing them."""
        segment = self._segment_for(step)
        if segment.batches_per_step is None:
            raise InputStateError(segment.why_unknown)
        _check_reach(step, segment, segment.batches_per_step)  # refused before a range prints anything
        return segment.batches_per_step * segment.saved.unit * (1 if one_rank else segment.saved.world)

    def sample(self, key: int | tuple[str, int], epochs: range) -> list[Occurrence]:
        """The steps at which a sample was (or will be) delivered in ``epochs``, from the oldest checkpoint on
        disk on (deliveries before it are not reported). ``key``: a dataset index; a mixture's
        ``(source, index)``; a stream's ``(shard file, sample number)`` (file as ``samples`` prints it).

        Raises:
            InputStateError: when the keys are not computable, or batches per step are not recorded.
            ValueError: for a key or epochs out of range, more than ``MAX_EPOCHS_PER_QUERY`` epochs, or (a
                mixture's or stream's key, found by a scan) more than ``MAX_SCANNED_POSITIONS`` positions.
        """
        _check_question(key, epochs)
        segments = self.segments
        if not isinstance(key, int):
            _check_scan(segments, epochs)
        found: list[Occurrence] = []
        for segment in segments:
            saved, bps = segment.saved, segment.batches_per_step
            for epoch in epochs:
                if epoch < saved.epoch:
                    continue
                if bps is None:
                    raise InputStateError(segment.why_unknown)
                for rank, offset in saved.occurrences(key, epoch):
                    step = segment.start + 1 + offset // bps
                    if (segment.end is not None and step > segment.end) or step > files.MAX_STEP:
                        break
                    found.append(Occurrence(epoch, step, rank, offset % bps, self.skipped(step)))
        return sorted(found, key=lambda o: (o.step, o.rank, o.batch))

    def configuration(self) -> dict[str, Any]:
        """What the newest checkpoint's answers are computed from (``inspect`` shows it)."""
        assert self.newest is not None
        segment = self.segment(self.newest.step)
        return {
            "checkpoint": segment.start,
            "component": self.component,
            **segment.saved.describe(),
            "batches_per_step": segment.batches_per_step,
            "skipped_steps": _record(self.newest).get(Key.SKIPPED, []),
        }


def samples_at(
    directory: str | os.PathLike[str], step: int, rank: int | None = None, *, batches_per_step: int | None = None
) -> StepSamples:
    """The sample keys of optimizer step ``step`` per rank, from a checkpoint directory (no data is read).

    Args:
        directory: The directory given to ``InputCheckpointer``.
        step: The step (the checkpoint saved at ``S`` holds the state after step ``S``).
        rank: One rank, or None for all.
        batches_per_step: Only when the checkpoints do not record it (see :class:`Provenance`).

    Raises:
        InputStateError: when something the answer needs is not recorded; the message names it.
    """
    return Provenance(directory, batches_per_step=batches_per_step).step(step, rank)


def steps_of_sample(
    directory: str | os.PathLike[str],
    index: int | tuple[str, int],
    epochs: range,
    *,
    batches_per_step: int | None = None,
) -> list[Occurrence]:
    """At which steps (and ranks) a sample is delivered in ``epochs`` (see :meth:`Provenance.sample`)."""
    return Provenance(directory, batches_per_step=batches_per_step).sample(index, epochs)


def describe_checkpoint(checkpoint: InputCheckpoint) -> dict[str, Any]:
    """What provenance computes from in one file, per loader component (``inspect`` shows it): the
    configuration, the batches per step the file records, and the skipped steps; or why it cannot."""
    found: dict[str, Any] = {}
    try:
        record = _record(checkpoint)
    except InputStateError as error:
        return {name: {"unavailable": str(error)} for name in checkpoint.states}
    for name, state in checkpoint.states.items():
        if not isinstance(state, Mapping) or state.get(Key.KIND) != LOADER_KIND:
            continue
        try:
            described = dict(SavedPosition.from_state(state, f"{checkpoint.path}: component {name!r}").describe())
        except InputStateError as error:
            found[name] = {"unavailable": str(error)}
            continue
        before, totals, now = (
            record.get(Key.PREVIOUS_STEP),
            record.get(Key.PREVIOUS_BATCHES),
            state.get(Key.BATCHES_TOTAL),
        )
        then = totals.get(name) if isinstance(totals, Mapping) else None
        known = all(type(v) is int for v in (before, then, now)) and before < checkpoint.step
        steps = checkpoint.step - before if known else 0
        described["batches_per_step"] = (now - then) // steps if known and (now - then) % steps == 0 else None
        described["skipped_steps"] = record.get(Key.SKIPPED, [])
        found[name] = described
    return found


# -- reading ------------------------------------------------------------------------------------------


def _loader_component(checkpoint: InputCheckpoint, wanted: str | None) -> str:
    loaders = [
        name
        for name, state in checkpoint.states.items()
        if isinstance(state, Mapping) and state.get(Key.KIND) == LOADER_KIND
    ]
    if wanted is not None:
        if wanted not in loaders:
            raise InputStateError(f"{checkpoint.path}: no ResumableDataLoader component {wanted!r} (found {loaders})")
        return wanted
    if len(loaders) != 1:
        kinds = {
            name: state.get(Key.KIND) if isinstance(state, Mapping) else None
            for name, state in checkpoint.states.items()
        }
        raise InputStateError(
            f"{checkpoint.path}: which samples a step held is computed from one ResumableDataLoader's state; "
            f"found components {kinds}" + (": name one with component=" if loaders else "")
        )
    if checkpoint.states[loaders[0]].get(Key.SAMPLER_KIND) != SAMPLER_KIND:
        SavedPosition.from_state(
            checkpoint.states[loaders[0]], f"{checkpoint.path}: component {loaders[0]!r}"
        )  # raises
    return loaders[0]


def _check_question(key: Any, epochs: range) -> None:
    """A sample and epochs within their bounds, before any work."""
    number = key if isinstance(key, int) else key[1] if isinstance(key, tuple) and len(key) == 2 else None
    if type(number) is not int or not 0 <= number < MAX_LENGTH:
        raise ValueError(f"a sample must be an index in [0, {MAX_LENGTH}), or (name, index) (got {short(key)})")
    if not 0 <= epochs.start < epochs.stop <= MAX_EPOCH + 1 or epochs.step != 1:
        raise ValueError(f"epochs must be a range A:B with 0 <= A < B <= {MAX_EPOCH + 1} (got {epochs})")
    if len(epochs) > MAX_EPOCHS_PER_QUERY:
        raise ValueError(
            f"{len(epochs)} epochs asked ({epochs.start}:{epochs.stop}), more than the bound of "
            f"{MAX_EPOCHS_PER_QUERY} per question (MAX_EPOCHS_PER_QUERY); ask in parts"
        )


def _check_scan(segments: list[Segment], epochs: range) -> None:
    """Refuse a scan (a mixture's or stream's sample) past ``MAX_SCANNED_POSITIONS`` before it starts."""
    total = sum(s.saved.epoch_length(e) for s in segments for e in epochs if e >= s.saved.epoch)
    if total > MAX_SCANNED_POSITIONS:
        raise ValueError(
            f"finding a mixture's or stream's sample scans each epoch's positions: {total} for epochs "
            f"{epochs.start}:{epochs.stop} over {len(segments)} checkpoint(s), more than the bound of "
            f"{MAX_SCANNED_POSITIONS} (MAX_SCANNED_POSITIONS); ask for fewer epochs"
        )


def _check_reach(step: int, segment: Segment, bps: int) -> None:
    """Refuse a step whose sample positions pass the bound of a dataset position (MAX_LENGTH) before they
    are computed: past it, the 64-bit arithmetic of the permutation overflows."""
    saved = segment.saved
    reach = (step - segment.start) * bps * saved.unit * saved.world
    if reach > MAX_LENGTH:
        raise ValueError(
            f"step {step} lies {step - segment.start} steps after the checkpoint of step {segment.start}: "
            f"{reach} samples on, past the bound of {MAX_LENGTH} positions; ask about a step of the run"
        )


def _state(checkpoint: InputCheckpoint, component: str) -> Mapping[str, Any]:
    state = checkpoint.states.get(component)
    if not isinstance(state, Mapping):
        raise InputStateError(
            f"{checkpoint.path}: holds no component {component!r} (found {sorted(checkpoint.states)})"
        )
    return state


def _record(checkpoint: InputCheckpoint) -> Mapping[str, Any]:
    return check_record(checkpoint.provenance, str(checkpoint.path))

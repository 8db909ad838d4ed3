"""Which global RNGs get seeded per sample: the declared ones, those the first samples draw from, and
any found drawn from later (warned at once).

The guarantee: a sample that draws from torch's, NumPy's or Python's global RNG has that RNG seeded
from the sample's own seed (a function of ``(seed, epoch, position)``) before it runs, or is named in
an :class:`~torch_input_ckpt.errors.UnseededDrawWarning`. Its draws are then the same whatever the
number of workers and however many resumes came before, unless a warning said otherwise.

How, per process (the main one with ``num_workers=0``, each worker otherwise):

* **Probation.** The first :data:`PROBATION` samples seed every RNG the process has imported and
  watch, sample by sample, which ones the sample drew from; those are seeded from then on. An RNG
  no sample drew from is not seeded afterwards, so it costs nothing per sample.
* **Watch.** After probation, every batch compares a fingerprint of each RNG not seeded (see
  :mod:`~torch_input_ckpt.rng.fingerprints`) before and after: a change means a sample of that batch drew from
  an RNG it had not seeded. It is warned at once, naming the RNG and the batch's samples, and seeded
  from the next sample on. The check is per batch (about 1.5 µs), not per sample: the warning names
  the batch, which is the sample itself with ``batch_size=1``.
* **Declared.** ``reseed_rng=("torch", ...)`` seeds those from the first sample, with no probation
  for them; the others are still probed and watched.
* Workers report what they found through a small shared array; the main process reads it once per
  delivered batch (:meth:`Reseeding.poll`), warns for the workers, records the set in the loader's
  state and hands it to the next workers it starts. A loader resumed from a state seeds the saved set
  from its first sample (and probes the others on its first samples, as any new process does: the
  saved run may have been saved before its own probation ended).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch.utils.data import get_worker_info

from ..errors import InputStateError, UnseededDrawWarning
from .fingerprints import RNG_NAMES, Rng, imported_rngs, rng

__all__ = ["PROBATION", "RESEEDED_KEY", "Reseeding", "parse_reseed_rng", "saved_reseeded"]

PROBATION = 16
# The loader state's key for the RNGs seeded before every sample (a sorted list of names).
RESEEDED_KEY = "reseeded_rngs"
# Per RNG, in the shared array: [in use (0/1), late finds, worker, number of indices, indices...].
_SHOWN = 8
_SLOT = 4 + _SHOWN


def parse_reseed_rng(value: Any) -> frozenset[str] | None:
    """``reseed_rng`` as the set of RNGs declared (``True``: none declared, found by probing), or None
    for ``False``.

    Raises:
        ValueError: for anything but a bool or a collection of names from ``("torch", "numpy", "python")``.
    """
    if isinstance(value, bool):
        return frozenset() if value else None
    if isinstance(value, (tuple, list, set, frozenset)) and all(isinstance(v, str) for v in value):
        unknown = sorted(set(value) - set(RNG_NAMES))
        if not unknown:
            return frozenset(value)
    raise ValueError(f"reseed_rng must be True, False or a tuple of names from {RNG_NAMES} (got reseed_rng={value!r})")


def saved_reseeded(state: dict[str, Any], source: str) -> list[str]:
    """The RNGs a saved loader state seeded before every sample.

    States written before :data:`RESEEDED_KEY` existed seeded all three whenever ``reseed_rng`` was on.

    Raises:
        InputStateError: if the entry is not a list of names from ``("torch", "numpy", "python")``.
    """
    names = state.get(RESEEDED_KEY)
    if names is None:
        return list(RNG_NAMES) if state.get("reseed_rng") is True else []
    if not isinstance(names, list) or not all(isinstance(n, str) and n in RNG_NAMES for n in names):
        raise InputStateError(
            f"{source}: {RESEEDED_KEY}={names!r} is invalid; expected a list of names from {RNG_NAMES}"
        )
    return sorted(names)


class Reseeding:
    """The per-process policy: which RNGs are seeded before each sample (see the module docstring)."""

    def __init__(self, declared: frozenset[str]) -> None:
        self.declared = declared
        self.reseeded: set[str] = set(declared)
        self.probation = PROBATION
        self._report: Any = multiprocessing.RawArray(ctypes.c_longlong, len(RNG_NAMES) * _SLOT)
        self._late_seen = [0] * len(RNG_NAMES)
        # The report's bytes when last read: a per-batch check is one copy and compare (~0.2 µs) instead
        # of reading every slot, and it sees any worker's write (a shared counter could lose one).
        self._report_read = bytes(ctypes.sizeof(self._report))
        self._report_view: memoryview | None = None
        self._plan: _Plan | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_plan"] = None  # holds Rng objects (closures): rebuilt in the process that uses it
        state["_report_view"] = None
        if multiprocessing.context.get_spawning_popen() is None:
            state["_report"] = None  # shared memory only travels to a process being started
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- what the loader asks -------------------------------------------------------------------------

    def adopt(self, names: Sequence[str]) -> None:
        """Seed ``names`` from the next sample on (the set a resumed state was saved with)."""
        self.reseeded.update(names)

    def current(self) -> list[str]:
        """The RNGs seeded per sample so far, in this process or reported by its workers (sorted)."""
        self.poll()
        return sorted(self.reseeded)

    def poll(self) -> None:
        """Main process: take in what workers found, and warn for draws they saw unseeded."""
        report = self._report
        if report is None or not self._report_changed():
            return
        for k, name in enumerate(RNG_NAMES):
            base = k * _SLOT
            if report[base] and name not in self.reseeded:
                self.reseeded.add(name)
            late = report[base + 1]
            if late > self._late_seen[k]:
                count = report[base + 3]
                indices = list(report[base + 4 : base + 4 + min(count, _SHOWN)])
                more = late - self._late_seen[k] - 1
                self._late_seen[k] = late
                self.reseeded.add(name)
                _warn(rng(name), indices, count, f" in worker {report[base + 2]}", more)

    # -- the fetch ------------------------------------------------------------------------------------

    def wants_seeds(self) -> bool:
        """Whether the next batch seeds an RNG (probation, or an RNG in use): in process, a batch for which
        this is False is handed over without seeds."""
        return self.probation > 0 or bool(self.reseeded)

    def fetch(
        self,
        dataset: Any,
        indices: Sequence[int],
        seeds: Iterable[int] | None,
        fetch_all: Callable[[list[int]], list[Any]] | None = None,
    ) -> list[Any]:
        """``dataset[index]`` for each index, seeding the RNGs in use from its seed (``seeds`` is only read
        when an RNG is seeded: a :class:`~torch_input_ckpt.order.permutation.SeedRange` computes them then; it
        is None only when :meth:`wants_seeds` said so just before). ``fetch_all``: the dataset's
        ``__getitems__``, used for a batch that seeds nothing (seeding goes sample by sample)."""
        info = get_worker_info()
        if info is not None and self._report is not None and self._report_changed():
            self._take_reported()
        seeds = self._seeds_or_none_needed(seeds)
        names = imported_rngs()
        if self.probation > 0:
            return self._fetch_probing(dataset, indices, seeds, names, info)
        plan = self._plan
        if plan is None or plan.names is not names or plan.size != len(self.reseeded):
            plan = self._plan = _Plan(names, self.reseeded)
        before = plan.fingerprints()
        if plan.seeded:
            samples = _fetch_seeded(dataset, indices, seeds, plan.seeded, restore=info is None)
        else:
            samples = fetch_all(list(indices)) if fetch_all is not None else [dataset[index] for index in indices]
        after = plan.fingerprints()
        if after != before:
            drawn = [r for r, a, b in zip(plan.watched, after, before, strict=True) if a != b]
            self._found_late(drawn, list(indices), info)
        return samples

    def _seeds_or_none_needed(self, seeds: Iterable[int] | None) -> Iterable[int]:
        if seeds is None:
            if self.wants_seeds():
                raise RuntimeError("internal error: a batch without seeds reached a fetch that seeds them")
            return ()
        return seeds

    def _fetch_probing(
        self, dataset: Any, indices: Sequence[int], seeds: Iterable[int], names: tuple[str, ...], info: Any
    ) -> list[Any]:
        """Probe at most the probation's remaining samples of this batch; fetch the rest as usual."""
        count = min(self.probation, len(indices))
        self.probation -= count
        if count == len(indices):
            return self._probe(dataset, indices, seeds, names, info)
        listed = list(seeds)
        head = self._probe(dataset, indices[:count], listed[:count], names, info)
        return head + self.fetch(dataset, indices[count:], listed[count:])

    def _probe(
        self, dataset: Any, indices: Sequence[int], seeds: Iterable[int], names: Sequence[str], info: Any
    ) -> list[Any]:
        """Seed every imported RNG before each sample and see which ones the sample drew from."""
        rngs = [rng(n) for n in names]
        saved = [r.capture() for r in rngs] if info is None else None
        found: set[str] = set()
        samples = []
        try:
            for index, seed in zip(indices, seeds, strict=True):
                seeded = []
                for r in rngs:
                    r.seed(seed)
                    seeded.append(r.fingerprint())
                samples.append(dataset[index])
                found.update(r.name for r, fp in zip(rngs, seeded, strict=True) if r.fingerprint() != fp)
        finally:
            if saved is not None:
                for r, state in zip(rngs, saved, strict=True):
                    r.restore(state)
        new = found - self.reseeded
        self.reseeded |= found
        if info is not None and self._report is not None:
            for name in new:
                self._report[RNG_NAMES.index(name) * _SLOT] = 1
        return samples

    def _report_changed(self) -> bool:
        """Whether the shared report changed since this process last looked (and remember it as seen)."""
        view = self._report_view
        if view is None:
            view = self._report_view = memoryview(self._report).cast("B")
        now = bytes(view)
        if now == self._report_read:
            return False
        self._report_read = now
        return True

    def _take_reported(self) -> None:
        """A worker: seed what other workers found in use, from this batch on."""
        report = self._report
        for k, name in enumerate(RNG_NAMES):
            if name not in self.reseeded and (report[k * _SLOT] or report[k * _SLOT + 1]):
                self.reseeded.add(name)

    def _found_late(self, drawn: list[Rng], indices: list[int], info: Any) -> None:
        self.reseeded.update(r.name for r in drawn)
        if info is None or self._report is None:
            for r in drawn:
                _warn(r, indices[:_SHOWN], len(indices), "", 0)
            return
        for r in drawn:
            base = RNG_NAMES.index(r.name) * _SLOT
            shown = indices[:_SHOWN]
            self._report[base + 2] = info.id
            self._report[base + 3] = len(indices)
            self._report[base + 4 : base + 4 + len(shown)] = shown
            self._report[base + 1] += 1  # last: the main process reads the details once it sees this


class _Plan:
    """For one set of imported and seeded RNGs: which to seed, which to watch, and one call that takes
    every watched fingerprint (this runs twice per batch: a few calls fewer matter at ~0.3 µs a sample)."""

    __slots__ = ("names", "size", "seeded", "watched", "fingerprints")

    def __init__(self, names: tuple[str, ...], reseeded: set[str]) -> None:
        self.names = names
        self.size = len(reseeded)
        self.seeded = [rng(n) for n in names if n in reseeded]
        self.watched = [rng(n) for n in names if n not in reseeded]
        probes = [r.fingerprint for r in self.watched]
        if len(probes) == 3:
            a, b, c = probes
            self.fingerprints: Callable[[], tuple[Any, ...]] = lambda: (a(), b(), c())
        else:
            self.fingerprints = lambda: tuple(probe() for probe in probes)


def _fetch_seeded(
    dataset: Any, indices: Sequence[int], seeds: Iterable[int], seeded: list[Rng], *, restore: bool
) -> list[Any]:
    """Fetch with ``seeded`` seeded per sample; in the main process (``restore``) put them back after."""
    saved = [r.capture() for r in seeded] if restore else None
    try:
        return _fetch(dataset, indices, seeds, seeded)
    finally:
        if saved is not None:
            for r, state in zip(seeded, saved, strict=True):
                r.restore(state)


def _fetch(dataset: Any, indices: Sequence[int], seeds: Iterable[int], seeded: list[Rng]) -> list[Any]:
    if not seeded:
        return [dataset[index] for index in indices]
    if len(seeded) == 1:
        seed_one = seeded[0].seed
        samples = []
        for index, seed in zip(indices, seeds, strict=True):
            seed_one(seed)
            samples.append(dataset[index])
        return samples
    samples = []
    for index, seed in zip(indices, seeds, strict=True):
        for r in seeded:
            r.seed(seed)
        samples.append(dataset[index])
    return samples


def _warn(r: Rng, indices: list[int], count: int, where: str, more: int) -> None:
    shown = ", ".join(map(str, indices)) + (", ..." if count > len(indices) else "")
    also = f" ({more} more such batches in workers)" if more > 0 else ""
    warnings.warn(
        f"a sample drew from {r.description} ({r.name!r}) without it being seeded: one of the {count} "
        f"samples with indices [{shown}]{where}{also}. Its draws are not reproducible (they depend on what ran "
        f"before); from now on {r.name!r} is seeded before every sample. Pass "
        f"reseed_rng=({r.name!r}, ...) to seed it from the first sample.",
        UnseededDrawWarning,
        stacklevel=3,
    )

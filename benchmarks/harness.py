"""Shared machinery: one fresh interpreter per measurement, peak-memory probes, medians, tables.

Method (written into results.md too):

* Every measurement runs in its own ``python -m benchmarks._child`` process, so imports, allocator
  state and peak memory of one measurement never leak into another.
* Repetitions are interleaved (A, B, C, A, B, C, ...) rather than grouped, so that a slow spell of this
  shared machine hits every contender alike; tables show medians and the min-max range.
* Extra memory is the peak resident set size (``VmHWM``) during the measured section minus the resident
  size just before it. The peak is reset right before the section by writing ``5`` to
  ``/proc/self/clear_refs`` (Linux >= 4.0), so an earlier peak (imports, setup) cannot hide it; this is
  more honest than ``ru_maxrss``, which only grows. Without that file (not Linux), ``ru_maxrss`` is used
  instead and ``PeakMemory.exact`` is False: the figure may then include an earlier, higher peak.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BenchmarkError",
    "Config",
    "Figure",
    "IndexDataset",
    "PeakMemory",
    "Target",
    "available_bytes",
    "collect",
    "fmt_bytes",
    "fmt_ratio",
    "fmt_time",
    "median_of",
    "run_child",
    "span",
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT_PREFIX = "BENCH-RESULT "


class BenchmarkError(RuntimeError):
    """A child measurement failed; the message carries its command and the end of its stderr."""


@dataclass(frozen=True, slots=True)
class Config:
    """How a run is carried out.

    Attributes:
        quick: CI smoke sizes and one repetition (under a minute in all).
        reps: Repetitions per measurement (each in a fresh process), unless a figure says otherwise.
        in_process: Call the measurement in this process instead of a child (tests only: memory
            figures are then meaningless, the structure is the same).
        timeout: Seconds one child may take.
        verbose: Print one progress line per measurement to stderr.
    """

    quick: bool = False
    reps: int = 3
    in_process: bool = False
    timeout: float = 900.0
    verbose: bool = True


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from the issues and whether this run met it (None: not measured in this run)."""

    name: str
    met: bool | None
    detail: str


@dataclass(slots=True)
class Figure:
    """One table of results, with what it measures and the targets it checks."""

    key: str
    title: str
    about: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


class IndexDataset:
    """A map-style dataset of ``length`` items whose item ``i`` is ``i``: no list of N items is built."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> int:
        return index


# -- memory -----------------------------------------------------------------------------------------


def _status_kib(name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(rf"^{name}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            match = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


class PeakMemory:
    """Context manager: ``extra`` = peak RSS inside the block minus RSS at its start, in bytes."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
            self.exact = True
        except OSError:
            self.exact = False
        self.before = (_status_kib("VmRSS") or 0) * 1024
        self.extra = 0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.exact:
            peak = (_status_kib("VmHWM") or 0) * 1024
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        self.extra = max(0, peak - self.before)


# -- children ---------------------------------------------------------------------------------------


def run_child(module: str, params: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """Run ``benchmarks.<module>.measure(params)`` in a fresh interpreter and return its result dict."""
    if cfg.in_process:
        measure = importlib.import_module(f"benchmarks.{module}").measure
        return json.loads(json.dumps(measure(params)))
    cmd = [sys.executable, "-m", "benchmarks._child", module, json.dumps(params)]
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        raise BenchmarkError(f"{' '.join(cmd)} took more than {cfg.timeout} s") from e
    if proc.returncode != 0:
        raise BenchmarkError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])  # type: ignore[no-any-return]
    raise BenchmarkError(f"{' '.join(cmd)} printed no result line:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def collect(
    module: str,
    variants: Sequence[dict[str, Any]],
    cfg: Config,
    reps: int | Callable[[dict[str, Any]], int] | None = None,
    label: Callable[[dict[str, Any]], str] | None = None,
) -> list[list[dict[str, Any]]]:
    """Measure every variant ``reps`` times, interleaving the repetitions; results per variant.

    Args:
        module: The module under ``benchmarks`` whose ``measure`` runs in the child.
        variants: The parameter dicts, one per contender/size.
        cfg: The run's configuration.
        reps: Repetitions (a number, or a function of the variant); defaults to ``cfg.reps``.
        label: How a variant is named in progress lines.
    """
    counts = [(reps(v) if callable(reps) else reps or cfg.reps) for v in variants]
    results: list[list[dict[str, Any]]] = [[] for _ in variants]
    for rep in range(max(counts, default=0)):
        for i, variant in enumerate(variants):
            if rep >= counts[i]:
                continue
            start = time.perf_counter()
            results[i].append(run_child(module, variant, cfg))
            if cfg.verbose:
                name = label(variant) if label else json.dumps(variant)
                took = time.perf_counter() - start
                print(f"  [{module}] {name} rep {rep + 1}/{counts[i]} ({took:.1f} s)", file=sys.stderr, flush=True)
    return results


def median_of(results: Iterable[dict[str, Any]], key: str) -> float:
    """The median of ``key`` over a variant's repetitions."""
    return float(statistics.median(r[key] for r in results))


def span(results: Sequence[dict[str, Any]], key: str, fmt: Callable[[float], str]) -> str:
    """``min–max`` of ``key`` over the repetitions (a single value when there is one)."""
    values = [r[key] for r in results]
    if len(values) == 1:
        return "1 rep"
    return f"{fmt(min(values))} – {fmt(max(values))} ({len(values)} reps)"


# -- formatting -------------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    """Seconds with a unit that keeps three significant digits (ns .. s)."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:.3g} µs"
    return f"{seconds * 1e9:.3g} ns"


def fmt_bytes(n: float) -> str:
    """Bytes in decimal units (1 MB = 10**6 bytes, as the targets are stated)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def fmt_ratio(ours: float, theirs: float) -> str:
    """``ours / theirs`` to two decimals (``n/a`` when it is not defined)."""
    if theirs <= 0:
        return "n/a"
    ratio = ours / theirs
    return f"{ratio:.2f}" if ratio >= 0.01 else f"{ratio:.1e}"

"""The results as markdown (machine, method, targets, one table per figure) and the resume-time plot."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
from collections.abc import Sequence

from .harness import ROOT, Figure, fmt_time

__all__ = ["load_now", "machine", "plot_resume", "render", "table"]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine(load_at_start: float | None = None) -> list[tuple[str, str]]:
    """What the numbers were measured on (and how busy the machine was: it is shared)."""
    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.MULTILINE)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return [
        ("CPU", f"{cpu.group(1) if cpu else platform.processor() or 'unknown'}, nproc = {os.cpu_count()}"),
        ("memory", f"{int(mem.group(1)) / 2**20:.1f} GiB" if mem else "unknown"),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("Python", platform.python_version()),
        ("torch / torchdata", f"{_version('torch')} / {_version('torchdata')}"),
        ("commit", commit),
        ("date", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("load average (1 min), start / end of the run", f"{_load(load_at_start)} / {_load(_loadavg())}"),
    ]


def load_now() -> float | None:
    """The 1-minute load average (None where the OS does not report one)."""
    return _loadavg()


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _load(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _met(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "not measured"}[met]


METHOD = """\
- Every measurement runs in a fresh interpreter (`python -m benchmarks._child ...`), so imports and the
  allocator state of one measurement never reach another, and peak memory is clean.
- Repetitions are interleaved (A, B, C, A, B, C, ...), so a slow spell of this shared machine hits every
  contender alike. Tables give the median and the min – max range. The machine is shared and noisy:
  ratios within one run are the honest figure, absolute times less so.
- Extra memory = peak RSS during the measured section minus RSS just before it. The peak (`VmHWM`) is
  reset right before the section by writing `5` to `/proc/self/clear_refs`, so the peak of imports
  or set-up cannot hide it (`ru_maxrss` only grows, which is why it is not used). 1 MB = 10^6 bytes.
- The dataset is `IndexDataset(N)`: `__len__` is N and `__getitem__(i)` returns `i`; no list of N items
  exists, so the loaders' own cost is what is measured.
"""


def render(
    figures: Sequence[Figure], command: str, elapsed: float, quick: bool, load_at_start: float | None = None
) -> str:
    """The whole results document."""
    out = [
        "# Benchmarks: torch_input_ckpt vs torch DataLoader vs torchdata StatefulDataLoader",
        "",
        f"Command: `{command}` ({'quick smoke mode: small sizes, 1 repetition' if quick else 'full mode'}); "
        f"the run took {fmt_time(elapsed)}.",
        "",
        table(["machine", ""], machine(load_at_start)),
        "",
        *(
            ["**Quick mode**: sizes too small to judge the targets by (fixed costs dominate); see a full run.", ""]
            if quick
            else []
        ),
        "## Method",
        "",
        METHOD,
        "## Targets",
        "",
    ]
    targets = [(t, f) for f in figures for t in f.targets]
    out.append(
        table(
            ["target", "result", "figure", "measured"],
            [[t.name, _met(t.met), f.title.split(".")[0], t.detail] for t, f in targets],
        )
    )
    out.append("")
    for fig in figures:
        out += [f"## {fig.title}", "", fig.about, "", table(fig.columns, fig.rows), ""]
        out += [f"- {note}" for note in fig.notes]
        if fig.notes:
            out.append("")
        out += [f"- Target: {t.name}: **{_met(t.met)}** ({t.detail})." for t in fig.targets]
        if fig.targets:
            out.append("")
    return "\n".join(out)


def plot_resume(figures: Sequence[Figure], path: str) -> str:
    """Draw resume time vs N (log-log) from figure 2; returns what happened, for the console."""
    resume = next((f for f in figures if f.key == "resume"), None)
    if resume is None:
        return "no resume figure in this run: no plot"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not importable: skipped the plot (it is not a dependency of this project)"
    seconds = resume.data["seconds"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label, marker in (("ours", "ResumableDataLoader", "o"), ("stateful", "StatefulDataLoader", "s")):
        points = sorted(seconds[key].items())
        if points:
            ax.plot([n for n, _ in points], [s for _, s in points], marker=marker, label=label)
    ax.axhline(0.010, color="grey", linestyle="--", linewidth=1, label="10 ms target")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dataset length N")
    ax.set_ylabel("load_state_dict → first batch (s)")
    ax.set_title("Resume at 90% of an epoch, num_workers=0 (median)")
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"wrote {path}"

"""``torch-input-ckpt report DIR``: what a run consumed, from its checkpoints: per source samples (tokens of a
packed stream), realised mixture proportions per segment, progress through each source's epoch, per rank
batches, skipped steps and bad samples; ``--plot FILE.png`` draws proportions and progress over the steps.

Exit status: 0 a report; 1 the checkpoints do not hold what it needs (the message says what); 2 a usage error
(a missing directory, ``--plot`` without matplotlib or to an unwritable path); 3 an internal error (one line,
never a traceback). matplotlib is the optional extra ``plot`` (``pip install torch-input-ckpt[plot]``),
imported only for ``--plot``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import InputStateError
from ..provenance.consumption import Consumption, consumption

__all__ = ["add_parser", "plot_report", "run"]

EXIT_ANSWER, EXIT_NOT_RECORDED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
_NO_MATPLOTLIB = "--plot needs matplotlib, the optional extra `plot`: pip install 'torch-input-ckpt[plot]'"


def add_parser(commands: Any) -> None:
    """Add the ``report`` subcommand to the ``torch-input-ckpt`` parser."""
    parser = commands.add_parser(
        "report",
        help="what the run consumed: per source samples/tokens, mixture proportions, epoch progress, bad samples",
        description=(
            "Computed from rank 0's checkpoints along the run's lineage (and each rank's newest); no data is "
            "read. Exit status: 0 a report, 1 when the checkpoints do not record what it needs, 2 for usage "
            "errors (a missing directory, --plot without matplotlib), 3 for an internal error."
        ),
    )
    parser.add_argument("directory", help="the directory given to InputCheckpointer")
    parser.add_argument("--component", help="the loader's component name, when the checkpoint holds several loaders")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="also draw realised proportions and epoch progress over the steps"
    )


def run(args: argparse.Namespace) -> int:
    """Answer one ``report`` command; returns the exit status (never raises, never prints a traceback)."""
    try:
        return _answer(args)
    except InputStateError as error:
        return _fail(str(error), EXIT_NOT_RECORDED)
    except (ValueError, OverflowError) as error:
        return _fail(str(error), EXIT_USAGE)
    except OSError as error:
        return _fail(f"cannot read {args.directory} or write {args.plot}: {error}", EXIT_USAGE)
    except Exception as error:  # a bug of ours, not the user's: still one line, never a traceback
        return _fail(f"internal error reporting on {args.directory}: {error!r}"[:600], EXIT_INTERNAL)


def _fail(message: str, status: int) -> int:
    print(f"torch-input-ckpt report: {message}", file=sys.stderr)
    return status


def _answer(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        return _fail(f"{args.directory} {what}", EXIT_USAGE)
    if args.plot is not None:  # checked before any work
        if importlib.util.find_spec("matplotlib") is None:
            return _fail(_NO_MATPLOTLIB, EXIT_USAGE)
        folder = Path(args.plot).resolve().parent
        if not folder.is_dir():
            return _fail(f"--plot {args.plot}: its directory {folder} does not exist", EXIT_USAGE)
    report = consumption(directory, args.component)
    if args.plot is not None:
        plot_report(report, args.plot)
    print(json.dumps(report.to_dict(), indent=1) if args.json else format_report(report))
    return EXIT_ANSWER


def format_report(report: Consumption) -> str:
    """The report as text."""
    data = report.to_dict()
    tokens = f", {data['tokens']} tokens" if data["tokens"] is not None else ""
    lines = [
        f"{data['directory']}: component {data['component']!r} ({data['kind']}), step {data['step']}: "
        f"{data['samples']} samples consumed{tokens}"
    ]
    if not data["history_complete"]:
        lines.append(f"  (history from step {data['checkpoints'][0]['step']}: older checkpoints were pruned)")
    lines.append("  per source: samples, share, progress through its epoch")
    for name, s in data["sources"].items():
        lines.append(
            f"    {name}: {s['samples']} ({s['proportion']:.2%}), epoch {s['source_epoch']}: "
            f"{s['index']}/{s['length']} ({s['fraction']:.1%})"
        )
    for segment in data["segments"]:
        shares = ", ".join(f"{n} {p:.2%}" for n, p in segment["proportions"].items())
        weights = "earlier weights: history pruned" if segment["weights"] is None else f"weights {segment['weights']}"
        lines.append(f"  segment samples {segment['from_sample']}..{segment['to_sample']} ({weights}): {shares}")
    lines.append(f"  skipped steps: {data['skipped_steps'] or 'none'}")
    for rank in data["ranks"]:
        bad = "; ".join(f"epoch {b['epoch']} index {b['index']}: {b['error']}" for b in rank["bad_samples"])
        lines.append(
            f"  rank {rank['rank']}: step {rank['step']}, {rank['samples']} samples in {rank['batches']} batches, "
            f"bad samples: {bad or 'none'}, excluded: {rank['excluded'] or 'none'}"
        )
    return "\n".join(lines)


def plot_report(report: Consumption, path: str | os.PathLike[str]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Draw the realised proportions and each source's progress (source epochs, fractional) over the steps
    into a PNG; return what was drawn, read back from the figure's lines: ``{"proportions" | "progress":
    {source: [(step, value), ...]}}``.

    Raises:
        ModuleNotFoundError: without matplotlib (the optional extra ``plot``).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: a file is written
    from matplotlib import pyplot

    steps = [p.step for p in report.points]
    figure, (shares, progress) = pyplot.subplots(2, 1, figsize=(8, 6), dpi=80, sharex=True)
    try:
        for name in report.points[-1].sources:
            shares.plot(steps, [p.proportions().get(name, 0.0) for p in report.points], marker="o", label=name)
            values = [p.progress[name]["source_epoch"] + p.progress[name]["fraction"] for p in report.points]
            progress.plot(steps, values, marker="o", label=name)
        shares.set_ylabel("share of samples so far")
        shares.set_title(f"{Path(report.directory).name}: {report.component} ({report.kind})")
        shares.legend(loc="best")
        progress.set_ylabel("source epochs consumed")
        progress.set_xlabel("step")
        figure.tight_layout()
        figure.savefig(path, format="png")
        return {
            "proportions": {line.get_label(): _xy(line) for line in shares.get_lines()},
            "progress": {line.get_label(): _xy(line) for line in progress.get_lines()},
        }
    finally:
        pyplot.close(figure)


def _xy(line: Any) -> list[tuple[int, float]]:
    return [(int(x), float(y)) for x, y in zip(line.get_xdata(), line.get_ydata(), strict=True)]

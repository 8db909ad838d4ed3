"""``python -m benchmarks [--quick] [--only KEYS] [--reps N] [--output PATH]``: run the figures, print the tables."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable

from . import (
    blocking,
    cache,
    checkpoint_s3,
    cold_resume,
    dcp,
    ddp_sync,
    hf_resume,
    mixture,
    parquet,
    provenance,
    realistic,
    remote,
    restore_scale,
    resume,
    sampler_cost,
    state_cost,
    stream,
    throughput,
)
from .harness import ROOT, Config, Figure
from .report import load_now, plot_resume, render

# In the order of the report; each key runs one function (throughput also yields figure 6).
FIGURES: dict[str, Callable[[Config], list[Figure]]] = {
    "throughput": throughput.run,
    "realistic": realistic.run,
    "resume": resume.run,
    "cold_resume": cold_resume.run,
    "state_cost": state_cost.run,
    "blocking": blocking.run,
    "sampler_memory": sampler_cost.run_memory,
    "permutation": sampler_cost.run_epoch,
    "ddp_sync": ddp_sync.run,
    "mixture": mixture.run,
    "restore_scale": restore_scale.run,
    "provenance": provenance.run,
    "hf_resume": hf_resume.run,
    "stream": stream.run,
    "parquet": parquet.run,
    "remote": remote.run,
    "cache": cache.run,
    "checkpoint_s3": checkpoint_s3.run,
    "dcp": dcp.run,
}
_ORDER = [
    "throughput",
    "realistic",
    "resume",
    "cold_resume",
    "state_cost",
    "blocking",
    "sampler_memory",
    "reseed",
    "permutation",
    "ddp_sync",
]
_ORDER += ["mixture_resume", "mixture_throughput", "mixture_streams", "restore_scale", "hf_resume"]
_ORDER += ["stream", "stream_throughput", "parquet", "remote", "provenance", "exclusion", "cache"]
_ORDER += ["checkpoint_s3_blocking", "checkpoint_s3_restore"]
_ORDER += ["dcp"]
RESULTS = os.path.join(ROOT, "benchmarks", "results.md")
PLOT = os.path.join(ROOT, "benchmarks", "resume_time.png")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; full runs write ``benchmarks/results.md`` and ``benchmarks/resume_time.png``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="CI smoke: small sizes, one repetition (< 1 min)")
    parser.add_argument("--only", default="", help=f"comma-separated figures to run, of: {','.join(FIGURES)}")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 3; quick 1)")
    parser.add_argument(
        "--output",
        default=None,
        help="markdown file to write (default: benchmarks/results.md for a full run of every figure, none otherwise)",
    )
    args = parser.parse_args(argv)
    only = [key for key in args.only.split(",") if key]
    unknown = sorted(set(only) - set(FIGURES))
    if unknown:
        parser.error(f"--only: unknown figures {unknown}; expected some of {list(FIGURES)}")
    reps = args.reps or (1 if args.quick else 3)
    if reps < 1:
        parser.error(f"--reps must be >= 1 (got {reps})")
    cfg = Config(quick=args.quick, reps=reps)
    command = "python -m benchmarks" + "".join(
        " " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )

    start, load_at_start = time.perf_counter(), load_now()
    figures: list[Figure] = []
    for key, run in FIGURES.items():
        if only and key not in only:
            continue
        print(f"== {key}", file=sys.stderr, flush=True)
        figures.extend(run(cfg))
    figures.sort(key=lambda f: _ORDER.index(f.key))
    elapsed = time.perf_counter() - start

    markdown = render(figures, command, elapsed, args.quick, load_at_start)
    print(markdown)
    output = args.output or (RESULTS if not args.quick and not only else None)
    if output:
        with open(output, "w") as f:
            f.write(markdown)
        print(f"wrote {output}", file=sys.stderr)
        if output == RESULTS:
            print(plot_resume(figures, PLOT), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

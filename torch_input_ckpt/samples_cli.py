"""``torch-input-ckpt samples DIR --step N``: which samples a step held, or at which steps a sample was delivered."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .errors import InputStateError
from .samples import Occurrence, Provenance, StepSamples

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add the ``samples`` subcommand to the ``torch-input-ckpt`` parser."""
    parser = commands.add_parser(
        "samples",
        help="the sample keys of step N per rank (or the steps at which sample K was delivered), from the checkpoints",
        description=(
            "Computed from the newest input checkpoint before the step and the configuration the checkpoints "
            "record; no data is read. Exit status: 0 on an answer, 1 when the checkpoints do not record what "
            "the answer needs (the message says what), 2 for usage errors."
        ),
    )
    parser.add_argument("directory", help="the directory given to InputCheckpointer")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--step", type=int, help="one optimizer step")
    what.add_argument("--steps", help="a range of steps A:B (A to B-1)")
    what.add_argument("--sample", type=int, help="a dataset index: the steps at which it was delivered")
    parser.add_argument("--epochs", help="with --sample: the epochs A:B to look in (default: the checkpoint's epoch)")
    parser.add_argument("--rank", type=int, help="one rank (default: every rank)")
    parser.add_argument("--component", help="the loader's component name, when the checkpoint holds several loaders")
    parser.add_argument("--batches-per-step", type=int, help="only when the checkpoints do not record it")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Answer one ``samples`` command; returns the exit status."""
    try:
        provenance = Provenance(args.directory, component=args.component, batches_per_step=args.batches_per_step)
        if args.sample is not None:
            epochs = _range(args.epochs, "--epochs") if args.epochs else None
            if epochs is None:
                first = provenance.segments[0].stream.epoch
                epochs = range(first, first + 1)
            found = provenance.sample(args.sample, epochs)
            print(_occurrences(args.sample, epochs, found, args.json))
            return 0
        steps = [args.step] if args.step is not None else list(_range(args.steps, "--steps"))
        answers = [provenance.step(step, args.rank) for step in steps]
    except (InputStateError, ValueError) as error:
        print(f"torch-input-ckpt samples: {error}", file=sys.stderr)
        return 1 if isinstance(error, InputStateError) else 2
    if args.json:
        print(json.dumps([a.to_dict() for a in answers] if args.steps else answers[0].to_dict()))
    else:
        print("\n".join(_text(answer) for answer in answers))
    return 0


def _range(text: str, option: str) -> range:
    first, sep, last = text.partition(":")
    try:
        lo, hi = int(first), int(last)
    except ValueError:
        raise ValueError(f"{option} takes A:B, two integers (got {text!r})") from None
    if not sep or hi <= lo:
        raise ValueError(f"{option} takes A:B with A < B (got {text!r})")
    return range(lo, hi)


def _text(answer: StepSamples) -> str:
    epochs = sorted(set(answer.epochs))
    head = (
        f"step {answer.step}: epoch {', '.join(map(str, epochs))}, {answer.batches_per_step} batch(es) per rank, "
        f"{answer.world_size} rank(s), from the checkpoint of step {answer.checkpoint}"
    )
    if answer.skipped:
        head += " (SKIPPED on a restore: delivered only by the run that was rolled back)"
    lines = [head]
    for rank, keys in answer.keys.items():
        lines.append(f"  rank {rank}: {' '.join(_key(k) for k in keys)}")
    return "\n".join(lines)


def _key(key: Any) -> str:
    return f"{key[0]}:{key[1]}" if isinstance(key, tuple) else str(key)


def _occurrences(index: int, epochs: range, found: list[Occurrence], as_json: bool) -> str:
    if as_json:
        return json.dumps(
            [{"epoch": o.epoch, "step": o.step, "rank": o.rank, "batch": o.batch, "skipped": o.skipped} for o in found]
        )
    plural = "y" if len(found) == 1 else "ies"
    lines = [f"sample {index} in epochs {epochs.start}..{epochs.stop - 1}: {len(found)} deliver{plural}"]
    for o in found:
        skipped = " (skipped on a restore)" if o.skipped else ""
        lines.append(f"  epoch {o.epoch}: step {o.step}, rank {o.rank}, batch {o.batch} of the step{skipped}")
    return "\n".join(lines)

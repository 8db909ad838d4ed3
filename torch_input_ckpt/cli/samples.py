"""``torch-input-ckpt samples DIR --step N``: which samples a step held, or at which steps a sample was delivered.

Every argument and range is bounded and checked before any work (``MAX_STEPS_PER_QUERY`` steps,
``MAX_EPOCHS_PER_QUERY`` epochs, ``MAX_KEYS_PER_QUERY`` keys, indices and steps within the library's
bounds); a range's answer is printed step by step as it is computed (``--json``: one JSON array, streamed).
Exit status: 0 an answer; 1 the checkpoints do not hold what the answer needs (the message says what);
2 a usage error (an argument out of its bound, a missing directory); 3 an internal error (a bug: one line,
never a traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import InputStateError
from ..provenance.history import (
    MAX_EPOCHS_PER_QUERY,
    MAX_KEYS_PER_QUERY,
    MAX_STEPS_PER_QUERY,
    Occurrence,
    Provenance,
    StepSamples,
)
from ..state.schema import MAX_EPOCH, MAX_LENGTH, MAX_WORLD_SIZE
from ..store import files

__all__ = ["EXIT_ANSWER", "EXIT_INTERNAL", "EXIT_NOT_RECORDED", "EXIT_USAGE", "add_parser", "run"]

EXIT_ANSWER, EXIT_NOT_RECORDED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
MAX_SAMPLE_CHARS = 4096  # --sample NAME:INDEX: a shard's relative path and a number


def add_parser(commands: Any) -> None:
    """Add the ``samples`` subcommand to the ``torch-input-ckpt`` parser."""
    parser = commands.add_parser(
        "samples",
        help="the sample keys of step N per rank (or the steps at which sample K was delivered), from the checkpoints",
        description=(
            "Computed from the newest input checkpoint before the step and the configuration the checkpoints "
            "record; no data is read. Exit status: 0 on an answer, 1 when the checkpoints do not record what "
            "the answer needs (the message says what), 2 for usage errors (an argument past its bound, a "
            f"missing directory), 3 for an internal error. Bounds: {MAX_STEPS_PER_QUERY} steps, "
            f"{MAX_EPOCHS_PER_QUERY} epochs, {MAX_KEYS_PER_QUERY} keys per question."
        ),
    )
    parser.add_argument("directory", help="the directory given to InputCheckpointer")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--step", type=int, help="one optimizer step")
    what.add_argument("--steps", help=f"a range of steps A:B (A to B-1; at most {MAX_STEPS_PER_QUERY} steps)")
    what.add_argument(
        "--sample",
        help="the steps at which a sample was delivered: a dataset index, a mixture's SOURCE:INDEX, or a stream's "
        "FILE:ROW (the shard file as `samples --step` prints it)",
    )
    parser.add_argument(
        "--epochs",
        help=f"with --sample: the epochs A:B to look in (default: the checkpoint's; at most {MAX_EPOCHS_PER_QUERY})",
    )
    parser.add_argument("--rank", type=int, help="one rank (default: every rank)")
    parser.add_argument("--component", help="the loader's component name, when the checkpoint holds several loaders")
    parser.add_argument("--batches-per-step", type=int, help="only when the checkpoints do not record it")
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    """Answer one ``samples`` command; returns the exit status (never raises, never prints a traceback)."""
    try:
        return _answer(args)
    except BrokenPipeError:  # the reader stopped (e.g. `| head`): not an error of ours, and nothing to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ANSWER
    except InputStateError as error:
        return _fail(str(error), EXIT_NOT_RECORDED)
    except (ValueError, OverflowError) as error:
        return _fail(str(error), EXIT_USAGE)
    except OSError as error:
        return _fail(f"cannot read {args.directory}: {error}", EXIT_USAGE)
    except Exception as error:  # a bug of ours, not the user's: still one line, never a traceback
        return _fail(f"internal error answering for {args.directory}: {error!r}", EXIT_INTERNAL)


def _fail(message: str, status: int) -> int:
    print(f"torch-input-ckpt samples: {message}", file=sys.stderr)
    return status


def _answer(args: argparse.Namespace) -> int:
    directory = Path(args.directory)
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        return _fail(f"{args.directory} {what}", EXIT_USAGE)
    _check_arguments(args)
    steps = None if args.step is None and args.steps is None else _steps(args)
    epochs = _range(args.epochs, "--epochs", 0, MAX_EPOCH + 1, MAX_EPOCHS_PER_QUERY) if args.epochs else None
    provenance = Provenance(directory, component=args.component, batches_per_step=args.batches_per_step)
    if steps is None:
        if epochs is None:
            first = provenance.segments[0].saved.epoch
            epochs = range(first, first + 1)
        found = provenance.sample(args.sample, epochs)
        print(_occurrences(args.sample, epochs, found, args.json))
        return EXIT_ANSWER
    keys = sum(provenance.keys_in_step(step, one_rank=args.rank is not None) for step in steps)
    if keys > MAX_KEYS_PER_QUERY:
        raise ValueError(
            f"steps {steps.start}:{steps.stop} hold {keys} keys, more than the bound of {MAX_KEYS_PER_QUERY} per "
            "question (MAX_KEYS_PER_QUERY); ask for fewer steps or one rank (--rank)"
        )
    _print_steps(provenance, steps, args)
    return EXIT_ANSWER


def _check_arguments(args: argparse.Namespace) -> None:
    """The integer arguments within their bounds, before any file is read."""
    bounds = {
        "--step": (args.step, 1, files.MAX_STEP),
        "--rank": (args.rank, 0, MAX_WORLD_SIZE - 1),
        "--batches-per-step": (args.batches_per_step, 1, MAX_KEYS_PER_QUERY),
    }
    for option, (value, low, high) in bounds.items():
        if value is not None and not low <= value <= high:
            raise ValueError(f"{option} {_number(value)} is out of range; expected {low} <= {option[2:]} <= {high}")
    if args.epochs and args.sample is None:
        raise ValueError("--epochs goes with --sample")
    if args.sample is not None:
        args.sample = _sample_key(args.sample)


def _sample_key(text: str) -> int | tuple[str, int]:
    """``--sample``: ``INDEX``, or ``NAME:INDEX`` (the name may hold ``:``; the last one splits), bounded."""
    name, sep, number = text.rpartition(":")
    if not _integer(number) or len(text) > MAX_SAMPLE_CHARS or (sep and not name):
        raise ValueError(
            f"--sample takes INDEX or NAME:INDEX (a mixture's source, a stream's shard file), at most "
            f"{MAX_SAMPLE_CHARS} characters (got {_number(text)})"
        )
    if len(number) > 25 or not 0 <= int(number) < MAX_LENGTH:
        raise ValueError(f"--sample {_number(text)} is out of range; expected 0 <= index < {MAX_LENGTH}")
    return (name, int(number)) if sep else int(number)


def _steps(args: argparse.Namespace) -> range:
    if args.step is not None:
        return range(args.step, args.step + 1)
    return _range(args.steps, "--steps", 1, files.MAX_STEP + 1, MAX_STEPS_PER_QUERY)


def _print_steps(provenance: Provenance, steps: range, args: argparse.Namespace) -> None:
    """Each step's answer printed as soon as it is computed: memory stays one step's, whatever the range."""
    as_list = args.json and args.steps is not None
    if as_list:
        print("[", end="")
    for i, step in enumerate(steps):
        answer = provenance.step(step, args.rank)
        if args.json:
            print(("," if i else "") + json.dumps(answer.to_dict()), end="" if as_list else "\n")
        else:
            print(_text(answer))
        sys.stdout.flush()
    if as_list:
        print("]")


def _range(text: str, option: str, low: int, high: int, most: int) -> range:
    """``A:B`` with ``low <= A < B <= high`` and at most ``most`` values, checked before any work."""
    first, sep, last = text.partition(":")
    if not sep or not _integer(first) or not _integer(last):
        raise ValueError(f"{option} takes A:B, two integers (got {_number(text)})")
    if len(first) > 25 or len(last) > 25 or not low <= int(first) < int(last) <= high:
        raise ValueError(f"{option} takes A:B with {low} <= A < B <= {high} (got {_number(text)})")
    lo, hi = int(first), int(last)
    if hi - lo > most:
        raise ValueError(
            f"{option} {text} asks for {hi - lo} values, more than the bound of {most} per question; ask in parts"
        )
    return range(lo, hi)


def _integer(text: str) -> bool:
    return text.strip().lstrip("+-").isdigit() and text.strip().isascii()


def _number(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 40 else f"<{len(text)} characters>"


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
    if isinstance(key, dict):  # a packed sequence: its pieces, FILE#DOCUMENT[a:b] or FILE@tokens[a:b]
        pieces = [
            f"{p['file']}#{p['document']}[{p['tokens'][0]}:{p['tokens'][1]}]"
            if p["document"] is not None
            else f"{p['file']}@tokens[{p['shard_tokens'][0]}:{p['shard_tokens'][1]}]"
            for p in key["pieces"]
        ]
        source = f"{key['source']}:" if "source" in key else ""
        return f"{source}seq{key['sequence']}=" + "+".join(pieces)
    return ":".join(map(str, key)) if isinstance(key, tuple) else str(key)


def _occurrences(index: Any, epochs: range, found: list[Occurrence], as_json: bool) -> str:
    if as_json:
        return json.dumps(
            [{"epoch": o.epoch, "step": o.step, "rank": o.rank, "batch": o.batch, "skipped": o.skipped} for o in found]
        )
    plural = "y" if len(found) == 1 else "ies"
    lines = [f"sample {_key(index)} in epochs {epochs.start}..{epochs.stop - 1}: {len(found)} deliver{plural}"]
    for o in found:
        skipped = " (skipped on a restore)" if o.skipped else ""
        lines.append(f"  epoch {o.epoch}: step {o.step}, rank {o.rank}, batch {o.batch} of the step{skipped}")
    return "\n".join(lines)

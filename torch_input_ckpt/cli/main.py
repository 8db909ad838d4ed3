"""The ``torch-input-ckpt`` command line (``python -m torch_input_ckpt``): one parser, one module per command.

Each command module (``inspection``, ``samples``, ``report``, ``index``) adds its subparser (``add_parser``) and
answers with an exit status (``run``); this module builds the parser and turns anything unexpected into
one line and an exit status, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from . import index, inspection, report, samples

__all__ = ["main"]

# In the order `--help` lists them.
_COMMANDS = {"inspect": inspection, "samples": samples, "report": report, "index": index}


def main(argv: list[str] | None = None) -> int:
    """The ``torch-input-ckpt`` command: never a traceback, whatever the command meets.

    Exit status: ``inspect``: 0 if every rank has a valid checkpoint, 1 if not, 2 for a usage error or a
    missing or unreadable directory. ``samples``: 0 an answer, 1 the checkpoints do not record what it
    needs, 2 a usage error (see ``cli/samples.py``). ``report``: 0 a report, 1 the checkpoints do not
    record what it needs, 2 a usage error or ``--plot`` without matplotlib (see ``cli/report.py``).
    ``index``: 0 written, 2 a missing directory or bad shards (see ``cli/index.py``). Every command: 3 for
    an internal error (a bug to report, one line), 130 when interrupted.
    """
    try:
        return _command(argv)
    except KeyboardInterrupt:
        print("torch-input-ckpt: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug of ours, not a file's or the user's: still one line, never a traceback
        print(f"torch-input-ckpt: internal error: {_one_line(error)}", file=sys.stderr)
        return 3


def _one_line(error: BaseException) -> str:
    text = " ".join(repr(error).split())
    return text if len(text) <= 500 else text[:497] + "..."


def _command(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(
        prog="torch-input-ckpt",
        description="Inspect the input-pipeline checkpoints written by InputCheckpointer.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS.values():
        module.add_parser(commands)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # argparse exits on --help (0) and on usage errors (2)
        return int(exit.code or 0)
    return _COMMANDS[args.command].run(args)  # type: ignore[no-any-return]

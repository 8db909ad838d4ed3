"""``torch-input-ckpt index DIR``: count the samples (and tokens) of the shard files in DIR for ``ShardedStream``.

Writes the index (``stream/shards.build_index``, ``stream/index.write_index_file``) and prints a one-line
summary. Every error is one line on stderr naming the file, the value and what was expected; never a
traceback. Exit status: 0 written; 2 for bad input: a missing directory, one without shards, a shard that
cannot be read or counted, a field holding text, a tokenizer that cannot be loaded or raises, or an
unwritable index.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..state.schema import Key
from ..stream.formats import suffix_list
from ..stream.index import INDEX_FILE, write_index_file
from ..stream.shards import build_index
from ..stream.tokens import describe, load_tokenizer

__all__ = ["add_parser", "index_directory", "run"]


def add_parser(commands: Any) -> None:
    """Add the ``index`` subcommand to the ``torch-input-ckpt`` parser."""
    index = commands.add_parser("index", help="count the samples of the shard files in DIR for ShardedStream")
    index.add_argument("directory", help=f"the directory holding the shards (files ending in {suffix_list()})")
    index.add_argument("--tokens", default=None, help="also count tokens: this field holds token ids")
    index.add_argument("--tokenizer", default=None, help="also count tokens with module:callable(sample) -> token ids")


def run(args: argparse.Namespace) -> int:
    """Answer one ``index`` command; returns the exit status."""
    return index_directory(args.directory, args.tokens, args.tokenizer)


def index_directory(directory: str, tokens: str | None, tokenizer: str | None = None) -> int:
    """Index ``directory`` (``--tokens FIELD`` or ``--tokenizer MODULE:CALLABLE``) and print the summary.

    Returns:
        0 on success; 2 for bad input (the one line on stderr says what).
    """
    root = Path(directory)
    try:
        if tokens is not None and tokenizer is not None:
            raise ValueError(f"give --tokens {tokens} or --tokenizer {tokenizer}, not both")
        if not root.is_dir():
            raise ValueError(f"{directory} is not a directory" if root.exists() else f"{directory} does not exist")
        how = load_tokenizer(tokenizer) if tokenizer is not None else tokens
        body = build_index(root, how)
        write_index_file(root / INDEX_FILE, body)
    except (ValueError, OSError, ImportError) as error:  # InputStateError is a ValueError; ImportError: pyarrow
        print(f"torch-input-ckpt: error: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return 2
    entries = body[Key.INDEX_SHARDS]
    line = f"indexed {len(entries)} shards, {sum(e[Key.INDEX_COUNT] for e in entries)} samples"
    if all(Key.INDEX_TOKENS in e for e in entries):
        source = describe(body[Key.INDEX_TOKENS_FIELD], body[Key.INDEX_TOKENIZER])
        line += f", {sum(e[Key.INDEX_TOKENS] for e in entries)} tokens (from {source})"
    print(f"{line} -> {root / INDEX_FILE}")
    return 0

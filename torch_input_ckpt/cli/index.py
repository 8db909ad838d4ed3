"""``torch-input-ckpt index DIR``: count the samples (and tokens) of the shard files in DIR for ``ShardedStream``.

DIR may be a prefix on object storage (``s3://bucket/prefix/``): the index is then written beside the objects,
``.npy`` and Parquet shards counted by range reads of their headers and footers (JSON lines and tar shards are
downloaded once to be counted); credentials and the endpoint come from the ``AWS_*`` environment or
``--storage-options '{"endpoint_url": ...}'`` (JSON).

Writes the index (``stream/shards.build_index``, ``stream/index.write_index_file``) and prints a one-line
summary. Every error is one line on stderr naming the file, the value and what was expected; never a
traceback. Exit status: 0 written; 2 for bad input: a missing directory, one without shards, a shard that
cannot be read or counted, a field holding text, a tokenizer that cannot be loaded or raises, or an
unwritable index.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..remote import is_url
from ..state.schema import Key
from ..stream.formats import suffix_list
from ..stream.index import INDEX_FILE, write_index_file
from ..stream.remote import write_remote_index
from ..stream.shards import build_index
from ..stream.tokens import describe, load_tokenizer

__all__ = ["add_parser", "index_directory", "run"]


def add_parser(commands: Any) -> None:
    """Add the ``index`` subcommand to the ``torch-input-ckpt`` parser."""
    index = commands.add_parser("index", help="count the samples of the shard files in DIR for ShardedStream")
    index.add_argument("directory", help=f"the directory holding the shards (files ending in {suffix_list()})")
    index.add_argument("--tokens", default=None, help="also count tokens: this field holds token ids")
    index.add_argument("--tokenizer", default=None, help="also count tokens with module:callable(sample) -> token ids")
    index.add_argument(
        "--storage-options",
        default=None,
        help='for an s3:// DIR: the client\'s options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'',
    )


def run(args: argparse.Namespace) -> int:
    """Answer one ``index`` command; returns the exit status."""
    return index_directory(args.directory, args.tokens, args.tokenizer, args.storage_options)


def _storage_options(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        options = json.loads(text)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise ValueError(f"--storage-options {text[:80]!r}: expected a JSON object, e.g. '{{\"anon\": true}}'")
    return options


def _index(directory: str, how: Any, storage_options: str | None) -> tuple[dict[str, Any], str]:
    """Write the index of a directory or prefix URL; returns its body and where it went."""
    if is_url(directory):
        url, body = write_remote_index(directory, _storage_options(storage_options), how)
        return body, url
    if storage_options is not None:
        raise ValueError(f"--storage-options is for a directory on object storage (s3://...), not {directory}")
    root = Path(directory)
    if not root.is_dir():
        raise ValueError(f"{directory} is not a directory" if root.exists() else f"{directory} does not exist")
    body = build_index(root, how)
    write_index_file(root / INDEX_FILE, body)
    return body, str(root / INDEX_FILE)


def index_directory(
    directory: str, tokens: str | None, tokenizer: str | None = None, storage_options: str | None = None
) -> int:
    """Index ``directory`` (``--tokens FIELD`` or ``--tokenizer MODULE:CALLABLE``) and print the summary.

    Returns:
        0 on success; 2 for bad input (the one line on stderr says what).
    """
    try:
        if tokens is not None and tokenizer is not None:
            raise ValueError(f"give --tokens {tokens} or --tokenizer {tokenizer}, not both")
        how = load_tokenizer(tokenizer) if tokenizer is not None else tokens
        body, written = _index(directory, how, storage_options)
    except (ValueError, OSError) as error:  # InputStateError is a ValueError
        print(f"torch-input-ckpt: error: {' '.join(str(error).splitlines())}", file=sys.stderr)
        return 2
    entries = body[Key.INDEX_SHARDS]
    line = f"indexed {len(entries)} shards, {sum(e[Key.INDEX_COUNT] for e in entries)} samples"
    if all(Key.INDEX_TOKENS in e for e in entries):
        source = describe(body[Key.INDEX_TOKENS_FIELD], body[Key.INDEX_TOKENIZER])
        line += f", {sum(e[Key.INDEX_TOKENS] for e in entries)} tokens (from {source})"
    print(f"{line} -> {written}")
    return 0

"""Where a stream's token counts come from: a field holding token ids, or the user's tokenizer, never text.

Guarantee: a token count is the number of token ids the stream will pack, computed the way the stream
computes them (``tokens=`` of :class:`~torch_input_ckpt.ShardedStream`: a field name, or a callable taking
a sample and returning its token ids). A field holding text is refused rather than counted by characters,
and so is anything that is not a flat sequence of integers. A tokenizer is named by its module and
qualified name (``module:qualname``), which the index records and the stream compares with its own.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from .readers import tokens_of

__all__ = ["MAX_IDENTITY_CHARS", "callable_identity", "count_tokens", "describe", "load_tokenizer", "token_identity"]

# A field or tokenizer name longer than this is not a name (stream/index.py bounds what it reads the same way).
MAX_IDENTITY_CHARS = 1000


def callable_identity(tokenizer: Callable[[Any], Any]) -> str:
    """``module:qualname`` of a tokenizer (of its type for a callable object without a qualified name)."""
    module = getattr(tokenizer, "__module__", None) or type(tokenizer).__module__
    name = getattr(tokenizer, "__qualname__", None) or type(tokenizer).__qualname__
    return f"{module}:{name}"


def token_identity(tokens: Any) -> tuple[str | None, str | None]:
    """``(field, tokenizer identity)`` of a ``tokens=`` argument (None, a field name, or a callable).

    Raises:
        ValueError: for anything else, naming it.
    """
    if tokens is None:
        return None, None
    if isinstance(tokens, str):
        if not 0 < len(tokens) <= MAX_IDENTITY_CHARS or "\0" in tokens:
            raise ValueError(f"tokens must be a field name of 1 to {MAX_IDENTITY_CHARS} characters (got {tokens!r})")
        return tokens, None
    if callable(tokens):
        return None, callable_identity(tokens)
    raise ValueError(f"tokens must be None, a field name or a callable(sample) -> token ids (got {tokens!r})")


def describe(field: str | None, tokenizer: str | None) -> str:
    """How messages name a token source."""
    if tokenizer is not None:
        return f"tokenizer {tokenizer!r}"
    if field is not None:
        return f"field {field!r}"
    return "the samples themselves (a .npy row is its own tokens)"


def load_tokenizer(spec: str) -> Callable[[Any], Any]:
    """The callable ``module:attribute`` names (``--tokenizer``); the current directory is importable, as
    under ``python -m``, so that a ``tokenize.py`` next to the data works from the installed script too.

    Raises:
        ValueError: naming the spec and what went wrong (not ``module:callable``, import failed, not callable).
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute or len(spec) > MAX_IDENTITY_CHARS:
        raise ValueError(f"--tokenizer {spec!r}: expected module:callable, e.g. mytokenizer:encode_sample")
    added = os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            obj = getattr(obj, part)
    except Exception as error:  # the user's module may raise anything at import: one line, not a traceback
        raise ValueError(f"--tokenizer {spec!r}: cannot load it ({type(error).__name__}: {error})") from None
    finally:
        if added:
            sys.path.remove(os.getcwd())
    if not callable(obj):
        raise ValueError(f"--tokenizer {spec!r}: {type(obj).__name__} is not callable(sample) -> token ids")
    return obj  # type: ignore[no-any-return]


def count_tokens(sample: Any, tokens: str | Callable[[Any], Any] | None, where: str) -> int:
    """How many token ids the stream will take from ``sample``.

    Raises:
        ValueError: naming ``where`` (file and sample number): a missing field, a tokenizer that raised, text
            instead of token ids, or values that are not integers.
    """
    try:
        value = tokens_of(sample, tokens)
    except Exception as error:  # a missing field, or anything the user's tokenizer raises
        how = f"tokenizer {callable_identity(tokens)}" if callable(tokens) else f"field {tokens!r}"  # type: ignore[arg-type]
        raise ValueError(f"{where}: cannot take its tokens with {how} ({type(error).__name__}: {error})") from None
    if isinstance(value, (str, bytes)):
        fix = (
            "Index with your tokenizer: `--tokenizer module:callable` (or write_index(DIR, tokens=callable)), a "
            "callable taking a sample and returning its token ids, and give ShardedStream the same callable."
        )
        what = f"field {tokens!r}" if isinstance(tokens, str) else "the sample"
        if callable(tokens):
            what = f"tokenizer {callable_identity(tokens)}"
        raise ValueError(
            f"{where}: {what} gives text ({len(value)} characters), not token ids: a character count is not a "
            f"token count. {fix}"
        )
    return _integer_count(value, where)


def _integer_count(value: Any, where: str) -> int:
    import numpy as np

    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as error:  # ragged nesting, or an object numpy cannot take
        raise ValueError(f"{where}: its tokens are not a sequence of integer token ids ({error})") from None
    if array.size and array.dtype.kind not in "iu":
        raise ValueError(
            f"{where}: its tokens are {array.dtype} values (e.g. {array.reshape(-1)[0]!r}), expected integer token ids"
        )
    return int(array.size)

"""Shard readers: "open shard ``s`` at sample ``k``", then sequential reads, for the built-in formats or a user opener.

Guarantee: :class:`ShardReaders` gives sample ``k`` of a shard whatever order the samples are asked in
(continuing an open reader forward, from the samples it kept, or reopening the shard), and a shard that
holds fewer samples than the count recorded for it is an :class:`~torch_input_ckpt.InputStateError`
naming it, the count recorded and the count found: never an early end of the epoch (a
``StopIteration`` out of a fetch is how torch's DataLoader learns that an epoch ended, so none may
escape from here). A document's tokens for packing are integers or refused (:func:`as_tokens`): a float
id is never truncated. The formats themselves, and their bounds, are :mod:`~torch_input_ckpt.stream.formats`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import InputStateError
from .formats import RandomAccess

__all__ = ["ShardReaders", "as_tokens", "tokens_of"]


def tokens_of(sample: Any, field: str | Callable[[Any], Any] | None) -> Any:
    """The token sequence of a sample: ``field(sample)``, ``sample[field]``, or the sample itself."""
    if field is None:
        return sample
    if callable(field):
        return field(sample)
    return sample[field]


def as_tokens(values: Any, where: str) -> torch.Tensor:
    """A document's tokens as a 1-D int64 tensor (a copy); refuses what is not integers, never truncates.

    Args:
        values: A sequence, array or tensor of token ids (any shape: it is flattened).
        where: How messages name the document (file and sample number).

    Raises:
        InputStateError: for floats, booleans, strings, ragged lists, or ids past the int64 range,
            naming ``where`` and the type found.
    """
    import numpy as np

    if isinstance(values, torch.Tensor):
        values = values.numpy(force=True)
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError) as error:
        raise InputStateError(f"{where}: tokens are not an array of integers ({error})") from None
    if array.size == 0:
        return torch.zeros(0, dtype=torch.int64)
    big = array.dtype == np.uint64 and int(array.max()) > np.iinfo(np.int64).max
    if array.dtype.kind not in "iu" or big:
        found = "uint64 ids past the int64 range" if big else f"dtype {array.dtype}"
        raise InputStateError(
            f"{where}: tokens must be integers (found {found}): a float or boolean id would be truncated. "
            "Store token ids as integers (e.g. an int32 or int64 .npy array)."
        )
    return torch.from_numpy(np.array(array, dtype=np.int64).reshape(-1))


@dataclass(slots=True)
class _Indexed:
    """An open shard of a format with random access: any sample by number."""

    access: RandomAccess


@dataclass(slots=True)
class _Sequential:
    """An open shard read forward: the number of the sample it gives next, its reader, the samples kept."""

    position: int
    samples: Iterator[Any]
    recent: OrderedDict[int, Any] = field(default_factory=OrderedDict)


class ShardReaders:
    """A small per-process cache of open shards, each positioned after the sample it last gave.

    Reading sample ``k`` of a shard continues the open reader when it stands at or before ``k`` (skipping
    forward within the shard), takes it from the shard's last ``keep`` samples read (a window shuffle
    goes back within its window), else reopens the shard at ``k``. A shard of a format with random access
    (``.npy``) is indexed directly.

    A shard that holds fewer samples than its count in ``counts`` (a sequential reader that ends first, or a
    random-access shard of another length) raises :class:`~torch_input_ckpt.InputStateError` naming the
    shard, the count recorded and the count found.

    Args:
        opener: ``opener(shard_description, start)`` -> iterator of samples from ``start``.
        size: How many shards stay open (the least recently used is closed first).
        random_access: ``random_access(description)`` -> the shard's
            :class:`~torch_input_ckpt.stream.formats.RandomAccess`, or None when its format has none (then
            ``opener`` is used).
        keep: How many of the samples last read (or skipped) of each open sequential shard are kept.
        counts: Each shard's recorded sample count (by shard number), checked as the shard is read.
    """

    def __init__(
        self,
        opener: Callable[[Any, int], Iterator[Any]],
        size: int,
        random_access: Callable[[Any], RandomAccess | None] | None = None,
        keep: int = 0,
        counts: Sequence[int] | None = None,
    ) -> None:
        self._opener = opener
        self._random_access = random_access
        self._size = max(1, size)
        self._keep = keep
        self._counts = counts
        self._open: OrderedDict[int, _Indexed | _Sequential] = OrderedDict()
        self.reopened = 0  # how many times a shard was (re)opened: the tests bound it

    def read(self, shard: int, description: Any, k: int) -> Any:
        """Sample ``k`` of shard number ``shard`` (described by ``description``).

        Raises:
            InputStateError: when the shard ends before sample ``k`` or holds another count than recorded.
        """
        entry = self._open.get(shard)
        if entry is not None:
            self._open.move_to_end(shard)
            if isinstance(entry, _Indexed):
                return entry.access.sample(k)
            if entry.position <= k:
                try:
                    return self._advance(entry, shard, description, k)
                except BaseException:
                    # A reader that raised is finished: the next read reopens the shard instead of taking
                    # the generator's end for the shard's.
                    self._open.pop(shard, None)
                    raise
            if k in entry.recent:
                return entry.recent[k]
        access = self._random_access(description) if self._random_access is not None else None
        self.reopened += 1
        if access is not None:
            entry = _Indexed(self._checked(shard, description, access))
        else:
            # Open up to `keep` samples early: a shuffled window may ask for those next, from the kept ones.
            start = max(0, k - self._keep)
            entry = _Sequential(start, iter(self._opener(description, start)))
        self._keep_open(shard, entry)
        return self.read(shard, description, k)

    def random_access(self, shard: int, description: Any) -> RandomAccess | None:
        """The random access to a shard (kept open), or None for a format read forward only.

        Raises:
            InputStateError: when the shard's length is not its recorded count.
        """
        entry = self._open.get(shard)
        if entry is None and self._random_access is not None:
            access = self._random_access(description)
            if access is None:
                return None
            self.reopened += 1
            entry = _Indexed(self._checked(shard, description, access))
            self._keep_open(shard, entry)
        if not isinstance(entry, _Indexed):
            return None
        self._open.move_to_end(shard)
        return entry.access

    def array(self, shard: int, description: Any) -> Any:
        """The token rows of a random-access shard whose samples are rows of one length (a 2-D ``.npy``
        array), kept open; None for another shard (:meth:`RandomAccess.token_rows`).

        Raises:
            InputStateError: when the shard's length is not its recorded count.
        """
        access = self.random_access(shard, description)
        return access.token_rows() if access is not None else None

    def _keep_open(self, shard: int, entry: _Indexed | _Sequential) -> None:
        self._open[shard] = entry
        while len(self._open) > self._size:
            self._open.popitem(last=False)

    def _checked(self, shard: int, description: Any, access: RandomAccess) -> RandomAccess:
        if self._counts is not None and len(access) != self._counts[shard]:
            raise InputStateError(
                f"{_name(description)}: shard holds {len(access)} samples but its recorded count is "
                f"{self._counts[shard]}: it changed since it was counted. {_FIX}"
            )
        return access

    def _advance(self, entry: _Sequential, shard: int, description: Any, k: int) -> Any:
        keep = self._keep
        while True:
            # Never next() without a default here: its StopIteration, out of a fetch, would end the epoch.
            sample = next(entry.samples, _END)
            if sample is _END:
                recorded = "" if self._counts is None else f"its recorded count is {self._counts[shard]}, "
                raise InputStateError(
                    f"{_name(description)}: shard ended after {entry.position} samples, but {recorded}and sample "
                    f"{k} was asked for: it changed since it was counted (the index checks size and modification "
                    f"time only), or open_shard stops early. {_FIX}"
                )
            if keep:
                entry.recent[entry.position] = sample
                if len(entry.recent) > keep:
                    entry.recent.popitem(last=False)
            entry.position += 1
            if entry.position > k:
                return sample


_END = object()
_FIX = (
    "Restore the shard, or re-count it (`python -m torch_input_ckpt index DIR`, or the count in Shard(path, "
    "count)) and start the stream anew: a new count changes the stream."
)


def _name(description: Any) -> str:
    return os.fspath(description) if isinstance(description, (str, os.PathLike)) else repr(description)

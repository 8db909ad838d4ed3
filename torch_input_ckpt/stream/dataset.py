"""``ShardedStream``: samples read from shard files, in a computed lane order; map-style under the hood.

Guarantees (the table is in docs/guides/streams.md):

- the order of an epoch is a pure function of ``(seed, epoch, shard list, lanes, window, pack_to)``:
  shards are dealt to lanes once (balanced), each epoch reorders every lane's shards, a window shuffle
  permutes each window of a lane, and global position ``p`` is the ``p``-th of a fixed round-robin
  over the lanes (:mod:`~torch_input_ckpt.stream.lanes`). Position -> (lane, position in lane) -> (shard,
  sample in shard) is arithmetic, so the stream is a map-style dataset whose keys
  :class:`~torch_input_ckpt.ResumableSampler` takes from this order instead of its permutation;
- hence everything the sampler guarantees holds as it is: one global cursor (the state is a few
  integers, plus this stream's configuration to check), a resume is a seek, any ``num_workers``, any
  batch size and world size (the global order is the same whatever the topology: the ranks split what
  is left, with ``DistributedSampler``'s padding), per-sample RNG reseeding from the global position;
- with ``pack_to=L``, a position is a packed sequence of a lane (:mod:`~torch_input_ckpt.stream.packing`):
  every token exactly once per epoch, the carry-over computed rather than buffered.

Limits: a worker reads a lane's shard forward, skipping what other workers and ranks take, and keeps
open the shards a window of every lane spans (at most 512); a format without random access (JSON lines,
tar) keeps the last ``window`` samples of each open shard, so a window that goes back is served from
them, and is reopened only when asked for a sample before those (after a resume: at most one shard per
lane). With a window shuffle and packing, the packed sequences are shuffled, so the two pieces of a
document cut between sequences may arrive in either order.
"""

from __future__ import annotations

import bisect
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..base.arguments import check_int
from ..errors import InputCheckpointWarning
from ..remote import is_url
from ..state.schema import FORMAT_VERSION, STREAM_KIND, Key, check_header, check_same, field
from .formats import open_samples, random_access
from .lanes import Interleave, assign_lanes, check_window, epoch_shard_order, one_thread, window_shuffle
from .packing import PackedReader, assemble
from .readers import ShardReaders
from .remote import ShardFetcher
from .shards import Shard, legacy_fingerprint, resolve_shards

__all__ = ["ShardedStream", "StreamOrder"]

Opener = Callable[[Any, int], Iterator[Any]]
# At most this many shards open per process (file handles and memory maps).
_MAX_OPEN = 512


def _default_opener(source: Any, start: int) -> Iterator[Any]:
    return open_samples(source, start)


class ShardedStream(Dataset):
    """Samples of shard files (JSON lines, ``.npy``, webdataset tar, or your own) as a resumable stream.

    Use it as the dataset of a :class:`~torch_input_ckpt.ResumableDataLoader`; its ``seed`` seeds the
    per-sample RNGs, this stream's ``seed`` chooses the order (the workers need it to locate packed
    sequences, so the stream owns it; the loader's ``shuffle`` is not used).

    Args:
        shards: A directory holding an index file (``python -m torch_input_ckpt index DIR``), or a
            sequence of paths and/or :class:`~torch_input_ckpt.Shard` values (a path's count is taken
            from its directory's index, else from its ``.npy`` header).
        open_shard: ``open_shard(source, start)`` -> an iterator of the shard's samples from number
            ``start`` on; default: the built-in readers, by file suffix.
        lanes: How many lanes shards are dealt to (default ``min(64, #shards)``). Part of the order.
        seed: Chooses the lane assignment's ties, each epoch's shard order and the windows' shuffles.
        shuffle: ``False`` reads every lane's shards in the given order, without a window shuffle.
        window: Shuffle each consecutive window of this many positions of a lane (0 or 1: none).
        pack_to: Pack each lane's documents into sequences of exactly this many tokens (None: no packing).
        tokens: With ``pack_to``, how to get a document's tokens from a sample: a field name, a callable
            (your tokenizer: sample -> token ids), or None (the sample is its tokens, as a ``.npy`` row is).
            An index's token counts must have been made the same way (``index --tokens FIELD`` or
            ``--tokenizer module:callable``, recorded in the index).
        pad_id: The token that pads a lane's last packed sequence.
        storage_options: For shards on object storage (``shards="s3://bucket/prefix/"`` with an index written
            by ``python -m torch_input_ckpt index s3://bucket/prefix/``, or a list of shard URLs): the client's
            fsspec/s3fs options (``endpoint_url``, ``key``, ``secret``, ``anon``, ``client_kwargs``,
            ``config_kwargs``, and ``retry``: see :class:`~torch_input_ckpt.remote.RetryPolicy`).
        cache_dir: Where shards on object storage are downloaded (each once, shared by the loader's workers);
            None: a temporary directory, removed when the process exits. A shard is downloaded when it is
            first read: a resume downloads only the shards it reads from its position on.
        transform: Applied to each sample (or packed sequence) as it is fetched. Its random draws from
            torch's, NumPy's and Python's global RNGs are reseeded per sample from ``(loader seed, epoch,
            global position)`` by the loader (``reseed_rng=True``), so they survive resumes and changes of
            ``num_workers`` and world size.

    Raises:
        ValueError: for bad arguments, a shard whose count is unknown, or (packing) no token counts.
        InputStateError: for an indexed shard (file or object) that is missing or changed since it was indexed
            (:class:`~torch_input_ckpt.errors.ObjectChangedError` for an object), a damaged index, an object
            store that refuses (no credentials, no such bucket: :class:`~torch_input_ckpt.errors.ObjectStoreError`),
            or (packing) an index whose token counts came from another field or tokenizer than ``tokens``; when
            reading, for a shard whose documents do not hold the tokens recorded for it.
    """

    def __init__(
        self,
        shards: Any,
        open_shard: Opener | None = None,
        *,
        lanes: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        window: int = 0,
        pack_to: int | None = None,
        tokens: str | Callable[[Any], Any] | None = None,
        pad_id: int = 0,
        transform: Callable[[Any], Any] | None = None,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        _check_arguments(open_shard, lanes, seed, window, pack_to)
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable(sample) (got {transform!r})")
        self.transform = transform
        resolved = resolve_shards(shards, pack_to is not None, tokens, storage_options)
        self.shards: list[Shard] = resolved.shards
        self.lanes = min(64, len(self.shards)) if lanes is None else lanes
        self.seed, self.shuffle, self.window = seed, bool(shuffle), window
        self.pack_to, self.tokens, self.pad_id = pack_to, tokens, pad_id
        self._opener = open_shard or _default_opener
        self._builtin = open_shard is None
        self._remote(resolved, cache_dir)
        counts = [s.count for s in self.shards]
        weights = counts if pack_to is None else [int(s.tokens or 0) for s in self.shards]
        self.lane_of = assign_lanes(weights, self.lanes, seed, self.shuffle)
        self.sample_base = _prefix(counts)  # sample id of each shard's first sample, in shard order
        self.units = weights  # per shard: samples, or tokens when packing
        self.lane_units = _lane_totals(self.lane_of, weights, self.lanes)
        self.lane_lengths = self.lane_units if pack_to is None else [-(-t // pack_to) for t in self.lane_units]
        self.lane_base = _prefix(self.lane_lengths)  # first position (in lane-major order) of each lane
        self.length = sum(self.lane_lengths)
        self.interleave = Interleave(self.lane_lengths)
        self.fingerprint = resolved.fingerprint  # relative paths, order, counts, content identity
        self.open_shards = _open_budget(weights, self.lanes, window, pack_to)
        self._caches: dict[str, Any] = {}

    # -- dataset -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Positions in an epoch: samples, or packed sequences with ``pack_to``."""
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_caches"] = {}  # open files and epoch layouts stay in the process that made them
        return state

    def locate(self, key: int) -> tuple[int, int]:
        """``(shard number, sample number in the shard)`` of a sample id (a key without packing)."""
        shard = bisect.bisect_right(self.sample_base, key) - 1
        return shard, key - self.sample_base[shard]

    def __getitem__(self, key: int) -> Any:
        """The sample with id ``key`` or, with ``pack_to``, the packed sequence ``key`` names."""
        if self.pack_to is not None:
            sample = self._packed(int(key))
        else:
            shard, k = self.locate(int(key))
            sample = self._readers().read(shard, self.shards[shard].source, k)
        return sample if self.transform is None else self.transform(sample)

    def __getitems__(self, keys: Sequence[int]) -> list[Any]:
        """A batch (torch's fetcher calls this): the keys of one random-access shard are read together."""
        if self.pack_to is not None or not self._builtin or self.transform is not None:
            return [self[key] for key in keys]
        shards = [self.locate(int(key)) for key in keys]
        out: list[Any] = [None] * len(shards)
        groups: dict[int, list[int]] = {}
        for i, (shard, _) in enumerate(shards):
            groups.setdefault(shard, []).append(i)
        for shard, places in groups.items():
            access = self._readers().random_access(shard, self.shards[shard].source)
            if access is None:
                for i in places:
                    out[i] = self._readers().read(shard, self.shards[shard].source, shards[i][1])
                continue
            for sample, i in zip(access.samples([shards[i][1] for i in places]), places, strict=True):
                out[i] = sample
        return out

    # -- shards on object storage: read from the local file the fetcher gives ----------------------------

    def _remote(self, resolved: Any, cache_dir: str | os.PathLike[str] | None) -> None:
        """Set up the fetcher of shards on object storage (none for local shards)."""
        self.fetcher = ShardFetcher(resolved.store, cache_dir) if resolved.store is not None else None
        objects = resolved.objects
        self._objects = {s.source: (n, objects[s.source]) for n, s in enumerate(self.shards)} if objects else {}
        if self.fetcher is not None and self._builtin:
            self._opener = self._open_remote
        elif self._builtin and self.fetcher is None and any(is_url(shard.source) for shard in self.shards):
            url = next(shard.source for shard in self.shards if is_url(shard.source))
            raise ValueError(
                f"Shard({url!r}, ...): the built-in readers read a shard on object storage given by its URL alone "
                "(its count and version come from the index beside it), or give open_shard= that reads it"
            )

    def _local(self, source: Any) -> Any:
        """The local file of a shard (downloaded by the fetcher for a shard on object storage)."""
        if self.fetcher is None or source not in self._objects:
            return source
        shard, info = self._objects[source]
        return self.fetcher.local_path(shard, source, info)

    def _open_remote(self, source: Any, start: int) -> Iterator[Any]:
        return open_samples(self._local(source), start)

    def _random_access(self, source: Any) -> Any:
        return random_access(self._local(source))

    def _readers(self) -> ShardReaders:
        readers = self._caches.get("readers")
        if readers is None:
            readers = self._caches["readers"] = ShardReaders(
                self._opener,
                self.open_shards,
                self._random_access if self._builtin else None,
                keep=self.window if self.shuffle else 0,
                counts=[s.count for s in self.shards],
            )
        return readers

    # -- epoch layout --------------------------------------------------------------------------------

    def layout(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch ``epoch``'s shards in lane-major order and each one's first unit (sample or token) in it."""
        cached = self._caches.get("layout")
        if cached is not None and cached[0] == epoch:
            return cached[1]
        with one_thread():
            order = epoch_shard_order(self.lane_of, self.seed, epoch, self.shuffle)
            units = torch.tensor(self.units, dtype=torch.int64)[order]
            starts = torch.cumsum(units, 0) - units
        self._caches["layout"] = (epoch, (order, starts))
        return order, starts

    def epoch_order(self, seed: int, epoch: int, shuffle: bool) -> StreamOrder:
        """Epoch ``epoch``'s order for :class:`~torch_input_ckpt.ResumableSampler` (positions -> keys).

        ``seed`` and ``shuffle`` (the sampler's) are not used: the stream's own choose the order.
        """
        return StreamOrder(self, epoch)

    def order_state(self) -> dict[str, Any]:
        """The configuration the order depends on, as plain JSON types (nested in the sampler's state)."""
        return {
            Key.KIND: STREAM_KIND,
            Key.VERSION: FORMAT_VERSION,
            Key.SEED: self.seed,
            Key.SHUFFLE: self.shuffle,
            Key.STREAM_LANES: self.lanes,
            Key.STREAM_WINDOW: self.window,
            Key.STREAM_PACK_TO: self.pack_to,
            Key.STREAM_SHARDS: len(self.shards),
            Key.STREAM_SAMPLES: self.length,
            Key.STREAM_FINGERPRINT: self.fingerprint,
        }

    def load_order_state(
        self, state: Any, *, seed: int, shuffle: bool, epoch: int, cursor: int, source: str = "state_dict"
    ) -> None:
        """Check that a saved order state is this stream's (the position itself is the sampler's cursor).

        Raises:
            InputStateError: for another seed, shuffle, lanes, window, pack_to or shard list, naming both values.
        """
        where = f"{source}: dataset_order"
        check_header(state, STREAM_KIND, where)
        current = self.order_state()
        for key in (Key.SEED, Key.SHUFFLE, Key.STREAM_LANES, Key.STREAM_WINDOW, Key.STREAM_PACK_TO):
            check_same(
                f"ShardedStream {key}",
                state.get(key),
                current[key],
                where,
                f"Build the stream with {key}={state.get(key)!r}.",
            )
        shards = field(state, Key.STREAM_SHARDS, int, where)
        saved = field(state, Key.STREAM_FINGERPRINT, str, where)
        if shards == len(self.shards) and saved != self.fingerprint and saved == legacy_fingerprint(self.shards):
            warnings.warn(
                f"{where}: the state was saved by an older torch_input_ckpt, whose fingerprint covered only the "
                f"shards' file names and counts ({saved!r}); they match, so the stream resumes, but a shard "
                "rewritten or passed in another order with the same names cannot be seen. The next save records "
                f"the full identity ({self.fingerprint!r}).",
                InputCheckpointWarning,
                stacklevel=2,
            )
            return
        check_same(
            "ShardedStream (number of shards, fingerprint of their relative paths, order, counts and contents)",
            (shards, saved),
            (len(self.shards), self.fingerprint),
            where,
            "Resume over the same shard files, in the same order, unchanged (the same data mounted at another "
            "path is fine; a shard rewritten, re-indexed after a change, or passed in another order is not).",
        )

    # -- packing ---------------------------------------------------------------------------------------

    def _packed(self, key: int) -> dict[str, torch.Tensor]:
        length = int(self.pack_to or 0)  # set: _packed is only called with pack_to
        epoch, rest = divmod(key, self.length)
        lane = bisect.bisect_right(self.lane_base, rest) - 1
        n = rest - self.lane_base[lane]
        order, starts = self.layout(epoch)
        lane_start = self._lane_token_start(order, starts, lane)
        lo = lane_start + n * length
        hi = min(lo + length, lane_start + self.lane_units[lane])
        first = int(torch.searchsorted(starts, torch.tensor(lo), right=True)) - 1
        pieces = []
        reader = self._packed_reader()
        for index in range(first, len(order)):
            start = int(starts[index])
            if start >= hi:
                break
            shard = int(order[index])
            end = start + self.units[shard]
            if end <= lo:
                continue
            for k, offset, tokens in reader.pieces(
                shard, self.shards[shard].source, max(lo, start) - start, min(hi, end) - start
            ):
                pieces.append((self.sample_base[shard] + k, offset, tokens))
        return assemble(pieces, length, self.pad_id)

    def _lane_token_start(self, order: torch.Tensor, starts: torch.Tensor, lane: int) -> int:
        # Lane-major order: the lane's first token is the sum of the tokens of the lanes before it.
        return sum(self.lane_units[:lane])

    def _packed_reader(self) -> PackedReader:
        reader = self._caches.get("packed")
        if reader is None:
            reader = self._caches["packed"] = PackedReader(
                self._readers(), self.tokens, self._row_length, self.shards, limit=self.open_shards
            )
        return reader

    def _row_length(self, shard: int) -> int | None:
        rows = self._caches.setdefault("rows", {})
        if shard not in rows:
            access = self._random_access(self.shards[shard].source) if self._builtin else None
            array = access.token_rows() if access is not None else None
            rows[shard] = int(array.shape[1]) if array is not None else None
        return rows[shard]


class StreamOrder:
    """One epoch's order: global positions -> keys (sample ids, or packed sequence keys)."""

    def __init__(self, stream: ShardedStream, epoch: int) -> None:
        self.stream = stream
        self.epoch = epoch
        self.lane_lengths = torch.tensor(stream.lane_lengths, dtype=torch.int64)
        self.lane_base = torch.tensor(stream.lane_base, dtype=torch.int64)
        if stream.pack_to is None:
            self.order, self.starts = stream.layout(epoch)
            self.sample_base = torch.tensor(stream.sample_base, dtype=torch.int64)

    def lanes(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lane, position in lane)`` of each global position, after the window shuffle."""
        stream = self.stream
        lane, q = stream.interleave(positions)
        if stream.shuffle and stream.window > 1:
            q = window_shuffle(q, lane, self.lane_lengths, stream.window, stream.seed, self.epoch)
        return lane, q

    def __call__(self, positions: torch.Tensor) -> torch.Tensor:
        with one_thread():
            return self._keys(positions)

    def _keys(self, positions: torch.Tensor) -> torch.Tensor:
        lane, q = self.lanes(positions)
        flat = self.lane_base[lane] + q
        if self.stream.pack_to is not None:
            return self.epoch * self.stream.length + flat
        index = torch.searchsorted(self.starts, flat, right=True) - 1
        return self.sample_base[self.order[index]] + (flat - self.starts[index])


def _lane_totals(lane_of: Sequence[int], weights: Sequence[int], lanes: int) -> list[int]:
    totals = [0] * lanes
    for shard, lane in enumerate(lane_of):
        totals[lane] += weights[shard]
    return totals


def _open_budget(weights: Sequence[int], lanes: int, window: int, pack_to: int | None) -> int:
    """How many shards a process keeps open: what a window of every lane spans (the smallest non-empty
    shard decides), so that no read within a window reopens a shard; at most ``_MAX_OPEN``."""
    smallest = min((w for w in weights if w), default=1)
    span = max(window, 1) * (pack_to or 1)  # in samples, or tokens when packing
    return min(lanes * (2 + span // smallest) + 2, _MAX_OPEN)


def _prefix(values: Sequence[int]) -> list[int]:
    out, total = [], 0
    for value in values:
        out.append(total)
        total += value
    return out


def _check_arguments(open_shard: Any, lanes: Any, seed: Any, window: Any, pack_to: Any) -> None:
    if open_shard is not None and not callable(open_shard):
        raise ValueError(f"open_shard must be callable(shard, start) (got {open_shard!r})")
    check_int("lanes", lanes, minimum=1, optional=True)
    check_int("seed", seed)
    check_window(window)
    if pack_to is not None and (isinstance(pack_to, bool) or not isinstance(pack_to, int) or pack_to < 1):
        raise ValueError(f"pack_to must be None or an int >= 1 (got {pack_to=})")

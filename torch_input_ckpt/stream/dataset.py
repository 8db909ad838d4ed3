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
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..base.arguments import check_int
from ..errors import InputCheckpointWarning, InputStateError
from ..remote import is_url
from ..state.schema import FORMAT_VERSION, STREAM_KIND, Key, check_header, check_same, field
from .cache import ShardCache, StoreDownload, copy_file, local_object
from .cache.files import temporary_cache_dir
from .cache.plan import ShardPlanner
from .formats import check_columns, open_samples, random_access
from .lanes import Interleave, assign_lanes, check_window, epoch_shard_order, one_thread, window_shuffle
from .packing import PackedReader, assemble
from .readers import ShardReaders
from .shards import Shard, legacy_fingerprint, resolve_shards
from .table import ShardTable

__all__ = ["ShardedStream", "StreamOrder"]

Opener = Callable[[Any, int], Iterator[Any]]
# At most this many shards open per process (file handles and memory maps).
_MAX_OPEN = 512


def _default_opener(source: Any, start: int) -> Iterator[Any]:
    return open_samples(source, start)


_UNLIMITED = sys.maxsize  # the cache of shards on object storage without cache_limit: nothing is evicted


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
        columns: Read only these columns of Parquet and Arrow shards (each sample a dict of them); None: all.
            Not part of the order: it may change between runs. Refused for shards of other formats.
        storage_options: For shards on object storage (``shards="s3://bucket/prefix/"`` with an index written
            by ``python -m torch_input_ckpt index s3://bucket/prefix/``, or a list of shard URLs): the client's
            fsspec/s3fs options (``endpoint_url``, ``key``, ``secret``, ``anon``, ``client_kwargs``,
            ``config_kwargs``, and ``retry``: see :class:`~torch_input_ckpt.remote.RetryPolicy`).
        cache_dir: The node-local shard cache (:mod:`~torch_input_ckpt.stream.cache`) that shards on object
            storage are read through: each downloaded once per node, ahead of its first read in the stream's
            order (a few at a time, in a background thread of each worker); a resume downloads only the shards
            it reads from its position on. None: a temporary directory, removed when the process exits. Without
            ``cache_limit`` nothing is evicted. Ignored for local shards without ``cache_limit``.
        transform: Applied to each sample (or packed sequence) as it is fetched. Its random draws from
            torch's, NumPy's and Python's global RNGs are reseeded per sample from ``(loader seed, epoch,
            global position)`` by the loader (``reseed_rng=True``), so they survive resumes and changes of
            ``num_workers`` and world size.
        cache_limit: With ``cache_dir``: the node-local shard cache (:mod:`~torch_input_ckpt.stream.cache`),
            for shards on object storage or on a shared file system, keeping at most this many bytes: every rank
            and worker of the node shares it, shards are read ahead in the stream's order and evicted by next
            use. ``cache_dir`` must then be new, empty or made by it, and not be, hold or lie inside a source
            directory.
        cache_policy: With ``cache_limit``: ``"next-use"`` (evict the shard read furthest ahead; the default)
            or ``"lru"``.

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
        columns: Sequence[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | None = None,
        cache_policy: str = "next-use",
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
        self._refuse_url_shards(resolved)
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
        # What provenance computes the order from (stream/table.py): recorded in every checkpoint.
        self._table_state = ShardTable.of(self.shards).to_state(resolved.index)
        self.open_shards = _open_budget(weights, self.lanes, window, pack_to)
        self._caches: dict[str, Any] = {}
        self.columns = _selected_columns(columns, self._builtin, self.shards, pack_to, tokens)
        self._planner = self._planned(resolved, cache_dir, cache_limit, cache_policy)

    def _planned(
        self, resolved: Any, cache_dir: str | os.PathLike[str] | None, limit: int | None, policy: str
    ) -> ShardPlanner | None:
        """The node cache the shards are read through: always for shards on object storage (one read path, with
        prefetch; without ``cache_dir`` a temporary one, removed when the process that made it exits), for local
        shards only with ``cache_limit``."""
        if limit is not None and cache_dir is None:
            raise ValueError("cache_limit needs cache_dir (the node-local directory of the shard cache)")
        if limit is None and resolved.store is None:
            return None
        if cache_dir is None:
            cache_dir = temporary_cache_dir(self)
        return self._shard_cache(resolved, cache_dir, _UNLIMITED if limit is None else limit, policy)

    def _shard_cache(self, resolved: Any, cache_dir: str | os.PathLike[str], limit: int, policy: str) -> ShardPlanner:
        """The node's shard cache over these shards (objects, or files of a shared file system), and this stream's
        plan."""
        download: Callable[[Any, Path], None]
        if resolved.store is not None:
            objects, download, sources = (
                [resolved.objects[s.source] for s in self.shards],
                StoreDownload(resolved.store),
                [],
            )
        else:
            objects = [local_object(shard.source) for shard in self.shards]
            download, sources = copy_file, sorted({str(Path(o.url).parent) for o in objects})
        cache = ShardCache(cache_dir, limit, download, sources=sources, policy=policy)
        return ShardPlanner(self, cache, objects)

    def note_epoch(self, epoch: int) -> None:
        """The sampler of this process is in ``epoch``: told to the node cache, where this process's
        ``DataLoader`` workers read it (they see only keys). Nothing without ``cache_limit``."""
        if self._planner is not None:
            self._planner.note_epoch(epoch)

    def _source(self, shard: int, sample: int, key: int) -> Any:
        """What the reader opens: the shard's source, or its copy in the node's cache."""
        if self._planner is None:
            return self.shards[shard].source
        return self._planner.local_path(shard, sample, key)

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
            sample = self._readers().read(shard, self._source(shard, k, int(key)), k)
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
            source = self._source(shard, shards[places[0]][1], int(keys[places[0]]))
            access = self._readers().random_access(shard, source)
            if access is None:
                for i in places:
                    out[i] = self._readers().read(shard, source, shards[i][1])
                continue
            for sample, i in zip(access.samples([shards[i][1] for i in places]), places, strict=True):
                out[i] = sample
        return out

    # -- shards on object storage: read from their copies in the node cache -------------------------------

    def _refuse_url_shards(self, resolved: Any) -> None:
        """A ``Shard(URL, count)`` outside an index: the built-in readers cannot know its version."""
        if self._builtin and resolved.store is None and any(is_url(shard.source) for shard in self.shards):
            url = next(shard.source for shard in self.shards if is_url(shard.source))
            raise ValueError(
                f"Shard({url!r}, ...): the built-in readers read a shard on object storage given by its URL alone "
                "(its count and version come from the index beside it), or give open_shard= that reads it"
            )

    def _open_builtin(self, source: Any, start: int) -> Iterator[Any]:
        """The built-in readers on the shard's local file, only the selected columns (Parquet, Arrow)."""
        return open_samples(source, start, **self._column_args())

    def _random_access(self, source: Any) -> Any:
        return random_access(source, **self._column_args())

    def _column_args(self) -> dict[str, Any]:
        return {} if self.columns is None else {"columns": self.columns}

    def _readers(self) -> ShardReaders:
        readers = self._caches.get("readers")
        if readers is None:
            readers = self._caches["readers"] = ShardReaders(
                self._open_builtin if self._builtin else self._opener,
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
            Key.STREAM_TABLE: self._table_state,
        }

    @classmethod
    def from_table(cls, state: Any, table: ShardTable, source: str) -> ShardedStream:
        """A stream of a saved configuration (``order_state()``) over a shard table: it computes the order and
        locates samples and packed sequences, and never reads a shard (provenance uses it).

        Raises:
            InputStateError: for a malformed configuration, or a table that does not give the saved length.
        """
        where = f"{source}: dataset_order"
        check_header(state, STREAM_KIND, where)
        pack_to = state.get(Key.STREAM_PACK_TO)
        shards = [Shard(_Recorded(n), c, t) for n, c, t in zip(table.names, table.counts, table.tokens, strict=True)]
        try:
            stream = cls(
                shards,
                _unreadable,
                lanes=field(state, Key.STREAM_LANES, int, where, low=1),
                seed=field(state, Key.SEED, int, where),
                shuffle=field(state, Key.SHUFFLE, bool, where),
                window=field(state, Key.STREAM_WINDOW, int, where, low=0),
                pack_to=None if pack_to is None else field(state, Key.STREAM_PACK_TO, int, where, low=1),
            )
        except ValueError as error:
            raise InputStateError(f"{where}: {error}") from None
        check_same(
            f"ShardedStream {Key.STREAM_SAMPLES} (from the shard table)",
            state.get(Key.STREAM_SAMPLES),
            stream.length,
            where,
            "The shard table does not give the order the run read; restore the index the run read.",
        )
        return stream

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

    def token_ranges(self, key: int) -> list[tuple[int, int, int]]:
        """The tokens packed sequence ``key`` holds, in order: ``(shard number, first token, end token)``, token
        offsets in the shard's concatenated documents (computed from the token counts; nothing is read)."""
        length = int(self.pack_to or 0)  # set: only called with pack_to
        epoch, rest = divmod(key, self.length)
        lane = bisect.bisect_right(self.lane_base, rest) - 1
        n = rest - self.lane_base[lane]
        order, starts = self.layout(epoch)
        lane_start = self._lane_token_start(order, starts, lane)
        lo = lane_start + n * length
        hi = min(lo + length, lane_start + self.lane_units[lane])
        first = int(torch.searchsorted(starts, torch.tensor(lo), right=True)) - 1
        ranges = []
        for index in range(first, len(order)):
            start = int(starts[index])
            if start >= hi:
                break
            shard = int(order[index])
            end = start + self.units[shard]
            if end > lo:
                ranges.append((shard, max(lo, start) - start, min(hi, end) - start))
        return ranges

    def _packed(self, key: int) -> dict[str, torch.Tensor]:
        pieces = []
        reader = self._packed_reader()
        for shard, lo, hi in self.token_ranges(key):
            for k, offset, tokens in reader.pieces(shard, self._source(shard, 0, key), lo, hi):
                pieces.append((self.sample_base[shard] + k, offset, tokens))
        return assemble(pieces, int(self.pack_to or 0), self.pad_id)

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
            held = self._planner.held(shard) if self._planner is not None else None
            access = self._random_access(held or self.shards[shard].source) if self._builtin else None
            array = access.token_rows() if access is not None else None
            rows[shard] = int(array.shape[1]) if array is not None else None
        return rows[shard]


class StreamOrder:
    """One epoch's order: global positions -> keys (sample ids, or packed sequence keys)."""

    def __init__(self, stream: ShardedStream, epoch: int) -> None:
        self.stream = stream
        self.epoch = epoch
        stream.note_epoch(epoch)
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


class _Recorded:
    """A shard known only by its recorded name: not a path, so nothing is opened or ``stat``-ed."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _unreadable(source: Any, start: int) -> Iterator[Any]:
    raise InputStateError(f"{source}: a stream rebuilt from a checkpoint's shard table computes its order only")


def _selected_columns(
    columns: Any, builtin: bool, shards: Sequence[Shard], pack_to: int | None, tokens: Any
) -> tuple[str, ...] | None:
    """``columns=`` checked against the shards' formats, the opener and the token field (formats/registry.py)."""
    if columns is None:
        return None
    if not builtin:
        raise ValueError("columns= selects columns of the built-in Parquet and Arrow readers; open_shard reads its own")
    names = check_columns([shard.source for shard in shards], columns)
    if pack_to is not None and isinstance(tokens, str) and tokens not in (names or ()):
        raise ValueError(f"columns={list(columns)} leaves out tokens={tokens!r}, the column packing reads")
    return names


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

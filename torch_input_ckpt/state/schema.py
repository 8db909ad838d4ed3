"""The saved-state schema: versions, key names, typed states, and what a state says about its position.

Every key of a state this library writes is spelled here and nowhere else. A state is a plain dict
(JSON types only) with a ``"kind"`` and a ``"version"``; the typed values below parse one with exact
type checks (``True`` is not an int) and range checks, and write it back with ``to_dict``. The
loaders, the restore planner and ``inspect`` all read states through this module, so "inspect says
ok" and "restore accepts it" mean the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._compat.torchdata import stateful_dataloader_batches
from ..base.messages import short
from ..errors import InputStateError

__all__ = [
    "FORMAT_VERSION",
    "INDEX_KIND",
    "ITERABLE_KIND",
    "LOADER_KIND",
    "MAX_EPOCH",
    "MAX_LENGTH",
    "MAX_WORLD_SIZE",
    "MIXTURE_KIND",
    "SAMPLER_KIND",
    "SAMPLER_RANGES_VERSION",
    "STREAM_KIND",
    "Ahead",
    "Key",
    "LoaderHeader",
    "Position",
    "SamplerState",
    "check_header",
    "check_plain",
    "check_same",
    "field",
    "is_stateful",
    "not_plain",
    "position",
    "positions",
    "reshard_blocker",
    "to_plain",
    "validate",
]

# Bump when a saved state's meaning changes; loaders refuse versions they do not know.
FORMAT_VERSION = 1
# A sampler state with an exclusion list stores it as ranges added per epoch (order/exclusion.py): version 2,
# so that a library that reads only version 1 (complete index lists) refuses it instead of misreading
# it. A state without exclusions stays version 1, readable by every release; both versions are read.
SAMPLER_RANGES_VERSION = 2
LOADER_KIND = "ResumableDataLoader"
SAMPLER_KIND = "ResumableSampler"
# The loader's "sampler_kind" for an IterableDataset (there is no sampler).
ITERABLE_KIND = "IterableDataset"
# The `kind` of a ShardedStream's nested order state and of a shard index file (stream/dataset.py, stream/shards.py).
STREAM_KIND = "ShardedStream"
INDEX_KIND = "ShardIndex"
# A Mixture's plan, nested as the sampler's dataset_order (mixture/plan.py).
MIXTURE_KIND = "Mixture"
# Bounds that no real job reaches; past them a number is damage, not a position.
MAX_LENGTH = 2**62
MAX_EPOCH = 2**62
MAX_WORLD_SIZE = 2**20


class Key:
    """The key names of saved states (one place, so that no other module spells one)."""

    KIND = "kind"
    VERSION = "version"
    EPOCH = "epoch"
    # ResumableSampler
    CURSOR = "cursor"
    LENGTH = "length"
    SEED = "seed"
    SHUFFLE = "shuffle"
    DROP_LAST = "drop_last"
    ORDER = "order"
    NUM_REPLICAS = "num_replicas"
    # The nested state of a dataset that provides its own epoch order (a Mixture: mixture/plan.py)
    DATASET_ORDER = "dataset_order"
    # ResumableDataLoader
    BATCH_SIZE = "batch_size"
    NUM_WORKERS = "num_workers"
    RESEED_RNG = "reseed_rng"
    SAMPLER_KIND = "sampler_kind"
    DATASET_LENGTH = "dataset_length"
    AHEAD = "ahead"
    AHEAD_END = "end"
    AHEAD_MISSING = "missing"
    SAMPLER = "sampler"
    BATCHES_DELIVERED = "batches_delivered"
    EXTERNAL = "external"
    # ResumableDataLoader over an IterableDataset
    INNER = "inner"
    WORLD_SIZE = "world_size"
    RANK = "rank"
    # ... each worker's dataset state inside `inner`, when its samples are reseeded (rng/reseeded.py)
    DATASET = "dataset"
    YIELDED = "yielded"
    # -- Mixture (mixture/plan.py): its plan, nested as the sampler's DATASET_ORDER -------------------
    MIXTURE_SAMPLES_PER_EPOCH = "samples_per_epoch"
    MIXTURE_ANCHOR_EPOCH = "anchor_epoch"
    MIXTURE_ANCHOR_POSITION = "anchor_position"
    MIXTURE_SOURCES = "sources"  # name -> its entry (the SOURCE_* keys)
    # The present sources' names in the plan's order, as a list: checkpoint files are canonical JSON with
    # sorted keys, so the order of the `sources` dict does not survive a file.
    MIXTURE_ORDER = "order"
    MIXTURE_RETIRED = "retired"  # name -> its entry, for sources no longer mixed
    # ... each source's entry (a source with its own order, a ShardedStream, also nests that order's
    # configuration under DATASET_ORDER, checked on resume)
    SOURCE_WEIGHT = "weight"
    SOURCE_BASE = "base"
    SOURCE_EPOCH_START = "epoch_start"
    SOURCE_EPOCH = "source_epoch"
    SOURCE_EPOCH_LENGTH = "epoch_length"
    SOURCE_LENGTH = "length"
    # -- provenance and data surgery (provenance/arithmetic.py, checkpoint/surgery.py) ------------------
    # ResumableDataLoader (map-style): batches this rank delivered since the run began, plus the ones
    # skipped on a restore (so that batches per step = difference / steps between two checkpoints)
    BATCHES_TOTAL = "batches_total"
    # ResumableSampler: [[first epoch, [dataset indices]], ...], left out of every epoch from that one on
    EXCLUDED = "excluded"
    # An input-checkpoint file's "provenance" record, written by InputCheckpointer
    PROVENANCE = "provenance"
    PREVIOUS_STEP = "previous_step"  # the step of the save (or restore) before this one in the same run
    PREVIOUS_BATCHES = "previous_batches"  # component name -> its BATCHES_TOTAL then
    SKIPPED = "skipped"  # [[first, last], ...]: steps skipped on a restore (never delivered)
    # -- end of provenance -----------------------------------------------------------------------------
    # -- ShardedStream (stream/dataset.py) and its shard index file (stream/shards.py) ---------------------------
    # The stream's nested `dataset_order` state: its configuration, checked on load.
    STREAM_LANES = "lanes"
    STREAM_WINDOW = "window"
    STREAM_PACK_TO = "pack_to"
    STREAM_SHARDS = "shards"
    STREAM_SAMPLES = "samples"
    STREAM_FINGERPRINT = "fingerprint"
    # The index file `python -m torch_input_ckpt index DIR` writes: one entry per shard.
    INDEX_SHARDS = "shards"
    INDEX_NAME = "name"
    INDEX_COUNT = "count"
    INDEX_TOKENS = "tokens"
    INDEX_TOKENS_FIELD = "tokens_field"
    INDEX_SIZE = "size"
    INDEX_MTIME_NS = "mtime_ns"
    INDEX_TOKENIZER = "tokenizer"  # "module:qualname" of the callable that counted the tokens, or None
    INDEX_DIGEST = "digest"  # sha256 of the shard's first and last 64 KiB (its content identity)
    INDEX_ETAG = "etag"  # an object's ETag, in the index of shards on object storage (instead of mtime_ns)


def is_stateful(obj: Any) -> bool:
    """Whether ``obj`` has callable ``state_dict`` and ``load_state_dict`` (the ``Stateful`` protocol)."""
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


# -- field checks ------------------------------------------------------------------------------------


def check_header(
    state: Any, kind: str, source: str, versions: tuple[int, ...] = (FORMAT_VERSION,)
) -> Mapping[str, Any]:
    """Check that ``state`` is a mapping of this ``kind`` and format version, and return it.

    Args:
        state: What was passed to ``load_state_dict``.
        kind: The expected ``"kind"`` entry, e.g. ``"ResumableSampler"``.
        source: Where the state came from (a file name, or ``"state_dict"``), for messages.
        versions: The format versions of this kind that this library reads.

    Raises:
        InputStateError: naming the value found and the value expected.
    """
    if not isinstance(state, Mapping):
        raise InputStateError(f"{source}: expected a dict state of kind {kind!r}, got {type(state).__name__}")
    found_kind = state.get(Key.KIND)
    if found_kind != kind:
        raise InputStateError(
            f"{source}: state is of kind {found_kind!r}, expected {kind!r} "
            "(was it saved from another kind of sampler or loader?)"
        )
    version = state.get(Key.VERSION)
    if type(version) is not int or version not in versions:
        expected = " or ".join(map(str, versions))
        raise InputStateError(f"{source}: state format version {short(version)} is not supported, expected {expected}")
    return state


def field(
    state: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    source: str,
    *,
    low: int | None = None,
    high: int | None = None,
) -> Any:
    """Return ``state[key]`` after checking it is present, of the given type (bool is not an int here)
    and, for an int, within ``[low, high]`` where given."""
    if not isinstance(state, Mapping):
        raise InputStateError(f"{source}: expected a dict holding {key!r}, got {type(state).__name__}")
    if key not in state:
        raise InputStateError(f"{source}: state has no {key!r} entry (keys found: {sorted(map(str, state))})")
    value = state[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise InputStateError(f"{source}: {key}={short(value)} should be {_names(kinds)}")
    if isinstance(value, int) and not isinstance(value, bool):
        if (low is not None and value < low) or (high is not None and value > high):
            raise InputStateError(
                f"{source}: {key}={short(value)} is invalid (out of range); expected {_range(low, high)}"
            )
    return value


def check_same(name: str, saved: Any, current: Any, source: str, fix: str) -> None:
    """Raise when a configuration value differs between the saved state and the current object.

    The message prints both values and how to fix it, as Grain's ``_validate_state`` does.
    """
    if saved != current:
        raise InputStateError(
            f"{source}: the state was saved with {name}={saved!r}, but this pipeline has {name}={current!r}. {fix}"
        )


def to_plain(obj: Any, path: str = "state", leaf: Callable[[Any, str], Any] | None = None) -> Any:
    """``obj`` built only of JSON types (dict with str keys, list, str, int, float, bool, None), tuples as
    lists: the one walker over saved states. A value of another type is handed to ``leaf(value, path)``,
    which returns its JSON form (e.g. a tensor's) or raises; without ``leaf`` it is a ``TypeError``.

    Raises:
        TypeError: naming the key (``path``) and the type, so that a checkpoint can be written as JSON and
            read without unpickling.
    """
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Mapping):
        out = {}
        for key, item in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{path} has a non-string key {key!r}: states must be JSON-compatible")
            out[key] = to_plain(item, f"{path}[{key!r}]", leaf)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_plain(item, f"{path}[{i}]", leaf) for i, item in enumerate(obj)]
    if leaf is not None:
        return leaf(obj, path)
    raise not_plain(obj, path)


def not_plain(obj: Any, path: str) -> TypeError:
    """The error for a value that is not of a JSON type."""
    return TypeError(
        f"{path} is a {type(obj).__name__}; states must be built of JSON types "
        "(dict, list, str, int, float, bool, None)"
    )


def check_plain(obj: Any, path: str = "state") -> None:
    """Raise ``TypeError`` unless ``obj`` is built only of JSON types (see :func:`to_plain`)."""
    to_plain(obj, path)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join("None" if k is type(None) else k.__name__ for k in kinds)


def _range(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"{low} <= value <= {high}"
    return f"value >= {low}" if low is not None else f"value <= {high}"


# -- typed states ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SamplerState:
    """A :class:`~torch_input_ckpt.ResumableSampler`'s state: the global position and its configuration.

    Attributes:
        epoch: The epoch of the position.
        cursor: Samples all ranks together consumed in ``epoch`` (``length`` or more: the pass is over).
        length: The dataset length the permutation is over.
        seed: The permutation seed.
        shuffle: Whether epochs are permuted.
        drop_last: DistributedSampler's rule for the tail that does not divide over the ranks.
        order: ``"feistel"`` or ``"randperm"``.
        num_replicas: The world size the state was taken in.
        dataset_order: The state of a dataset that provides its own epoch order (a ``Mixture``), or None.
        excluded: ``[[first epoch, [start, stop, ...]], ...]``: the ranges of samples left out from each
            epoch on (``order/exclusion.py``; a version 1 state's complete lists per epoch are converted), or None.
    """

    epoch: int
    cursor: int
    length: int
    seed: int
    shuffle: bool
    drop_last: bool
    order: str
    num_replicas: int
    dataset_order: Mapping[str, Any] | None = None
    excluded: list[Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            Key.KIND: SAMPLER_KIND,
            Key.VERSION: SAMPLER_RANGES_VERSION if self.excluded else FORMAT_VERSION,
            Key.EPOCH: self.epoch,
            Key.CURSOR: self.cursor,
            Key.LENGTH: self.length,
            Key.SEED: self.seed,
            Key.SHUFFLE: self.shuffle,
            Key.DROP_LAST: self.drop_last,
            Key.ORDER: self.order,
            Key.NUM_REPLICAS: self.num_replicas,
            **({} if self.dataset_order is None else {Key.DATASET_ORDER: self.dataset_order}),
            **({} if not self.excluded else {Key.EXCLUDED: self.excluded}),
        }

    @classmethod
    def from_dict(cls, state: Any, source: str) -> SamplerState:
        """Parse and check a saved sampler state.

        Raises:
            InputStateError: naming the key, the value found and what was expected.
        """
        state = check_header(state, SAMPLER_KIND, source, (FORMAT_VERSION, SAMPLER_RANGES_VERSION))
        excluded = field(state, Key.EXCLUDED, list, source) if Key.EXCLUDED in state else None
        if excluded and state[Key.VERSION] == FORMAT_VERSION:
            excluded = _ranges_from_lists(excluded, f"{source}: {Key.EXCLUDED}")
        length = field(state, Key.LENGTH, int, source, low=1, high=MAX_LENGTH)
        world = field(state, Key.NUM_REPLICAS, int, source, low=1, high=MAX_WORLD_SIZE)
        return cls(
            epoch=field(state, Key.EPOCH, int, source, low=0, high=MAX_EPOCH),
            cursor=field(state, Key.CURSOR, int, source, low=0, high=length + world - 1),
            length=length,
            seed=field(state, Key.SEED, int, source, low=-(2**63), high=2**64 - 1),
            shuffle=field(state, Key.SHUFFLE, bool, source),
            drop_last=field(state, Key.DROP_LAST, bool, source),
            order=field(state, Key.ORDER, str, source),
            num_replicas=world,
            dataset_order=field(state, Key.DATASET_ORDER, dict, source) if Key.DATASET_ORDER in state else None,
            excluded=excluded,
        )


def _ranges_from_lists(excluded: list[Any], source: str) -> list[Any]:
    """A version 1 ``excluded`` entry (each epoch's complete list of indices) in the version 2 form (the
    ranges each epoch adds, flat: ``[start, stop, ...]``), so that one parser reads both. The indices'
    range is checked by that parser; here only their types."""
    converted, before = [], set()
    for item in excluded:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], list)):
            raise InputStateError(f"{source}: {short(item)} should be [first epoch, [indices]]")
        if not all(type(i) is int for i in item[1]):
            raise InputStateError(f"{source}: the indices of epoch {short(item[0])} should be ints")
        now = set(item[1]) | before
        flat: list[int] = []
        for index in sorted(now - before):
            if flat and flat[-1] == index:
                flat[-1] = index + 1
            else:
                flat += [index, index + 1]
        converted.append([item[0], flat])
        before = now
    return converted


@dataclass(frozen=True, slots=True)
class Ahead:
    """Batches delivered out of order beyond the committed position, numbered from it: all of
    ``[0, end)`` except ``missing``.

    Kept as its holes rather than as the batches delivered: a hole is a batch torch still has in
    flight (at most ``num_workers * prefetch_factor`` of them), while the delivered ones grow for as
    long as one slow batch holds the position back.
    """

    end: int = 0
    missing: frozenset[int] = frozenset()

    def __contains__(self, number: object) -> bool:
        return isinstance(number, int) and number < self.end and number not in self.missing

    def to_dict(self) -> dict[str, Any]:
        return {Key.AHEAD_END: self.end, Key.AHEAD_MISSING: sorted(self.missing)}

    @classmethod
    def from_dict(cls, state: Any, source: str) -> Ahead:
        where = f"{source}: {Key.AHEAD}"
        end = field(state, Key.AHEAD_END, int, where, low=0, high=MAX_LENGTH)
        missing = field(state, Key.AHEAD_MISSING, list, where)
        if not all(type(n) is int and 0 <= n < end for n in missing) or len(set(missing)) != len(missing):
            raise InputStateError(
                f"{where}={short(dict(state))} is invalid; expected distinct missing numbers in [0, end)"
            )
        if end and 0 not in missing:
            raise InputStateError(
                f"{where}={short(dict(state))} is invalid; the batch at the cursor (0) is never delivered ahead"
            )
        return cls(end, frozenset(missing))


@dataclass(frozen=True, slots=True)
class LoaderHeader:
    """The entries every :class:`~torch_input_ckpt.ResumableDataLoader` state has, whatever its backend.

    Attributes:
        epoch: The epoch the next ``iter()`` produces or resumes.
        batch_size: The loader's batch size (None: unbatched).
        drop_last: The loader's ``drop_last``.
        num_workers: The loader's ``num_workers`` when saved.
        seed: The loader's seed.
        reseed_rng: Whether samples' RNGs were reseeded.
        sampler_kind: ``"ResumableSampler"``, ``"IterableDataset"`` or a custom sampler's class name.
    """

    epoch: int
    batch_size: int | None
    drop_last: bool
    num_workers: int
    seed: int
    reseed_rng: bool
    sampler_kind: str

    def to_dict(self) -> dict[str, Any]:
        return {
            Key.KIND: LOADER_KIND,
            Key.VERSION: FORMAT_VERSION,
            Key.EPOCH: self.epoch,
            Key.BATCH_SIZE: self.batch_size,
            Key.DROP_LAST: self.drop_last,
            Key.NUM_WORKERS: self.num_workers,
            Key.SEED: self.seed,
            Key.RESEED_RNG: self.reseed_rng,
            Key.SAMPLER_KIND: self.sampler_kind,
        }

    @classmethod
    def from_dict(cls, state: Any, source: str) -> LoaderHeader:
        """Parse and check the common entries of a saved loader state.

        Raises:
            InputStateError: naming the key, the value found and what was expected.
        """
        state = check_header(state, LOADER_KIND, source)
        batch_size = field(state, Key.BATCH_SIZE, (int, type(None)), source, low=1, high=MAX_LENGTH)
        return cls(
            epoch=field(state, Key.EPOCH, int, source, low=0, high=MAX_EPOCH),
            batch_size=batch_size,
            drop_last=field(state, Key.DROP_LAST, bool, source),
            num_workers=field(state, Key.NUM_WORKERS, int, source, low=0, high=MAX_WORLD_SIZE),
            seed=field(state, Key.SEED, int, source, low=-(2**63), high=2**64 - 1),
            reseed_rng=field(state, Key.RESEED_RNG, bool, source),
            sampler_kind=field(state, Key.SAMPLER_KIND, str, source),
        )


def validate(state: Any, source: str) -> None:
    """Check a component state of one of this library's kinds as a restore would, before any object
    loads it (``inspect`` calls this, so that its "ok" means restore accepts the file). States of
    other kinds (a torchdata ``StatefulDataLoader``'s, a user's) are left to their own loaders.

    Raises:
        InputStateError: naming the key, the value found and what was expected.
    """
    if not isinstance(state, Mapping):
        return
    kind = state.get(Key.KIND)
    if kind == SAMPLER_KIND:
        SamplerState.from_dict(state, source)
    elif kind == LOADER_KIND:
        header = LoaderHeader.from_dict(state, source)
        if header.sampler_kind == ITERABLE_KIND:
            field(state, Key.INNER, dict, source)
            field(state, Key.WORLD_SIZE, int, source, low=1, high=MAX_WORLD_SIZE)
            field(state, Key.RANK, int, source, low=0, high=MAX_WORLD_SIZE - 1)
            return
        field(state, Key.DATASET_LENGTH, int, source, low=1, high=MAX_LENGTH)
        Ahead.from_dict(field(state, Key.AHEAD, dict, source), source)
        if header.sampler_kind == SAMPLER_KIND:
            SamplerState.from_dict(field(state, Key.SAMPLER, dict, source), f"{source}: {Key.SAMPLER}")
        else:
            field(state, Key.BATCHES_DELIVERED, int, source, low=0, high=MAX_LENGTH)


# -- what a state says about its position ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where one component's state stands, as far as its kind lets us tell.

    Attributes:
        kind: The state's ``"kind"`` entry, or a guess from its keys (e.g. ``"StatefulDataLoader"``).
        epoch: The epoch, or None if the state does not record one.
        position: How far into the epoch (or pass), in ``unit``; None if unknown.
        unit: What ``position`` counts.
    """

    kind: str
    epoch: int | None
    position: int | None
    unit: str

    def text(self) -> str:
        """E.g. ``"40 (samples into the epoch, all ranks)"``, or ``"?"``."""
        return "?" if self.position is None else f"{self.position} ({self.unit})"


def positions(states: Mapping[str, Any]) -> dict[str, Position]:
    """The :class:`Position` of each saved component state, by name."""
    return {name: position(state) for name, state in states.items()}


def position(state: Any) -> Position:
    """The :class:`Position` of one saved component state (of any kind; never raises)."""
    if not isinstance(state, Mapping):
        return Position(type(state).__name__, None, None, "")
    kind = state.get(Key.KIND)
    epoch = _int(state.get(Key.EPOCH))
    if kind in (LOADER_KIND, SAMPLER_KIND):
        sampler = state.get(Key.SAMPLER) if kind == LOADER_KIND else state
        if isinstance(sampler, Mapping) and _int(sampler.get(Key.CURSOR)) is not None:
            return Position(kind, epoch, sampler[Key.CURSOR], "samples into the epoch, all ranks")
        if _int(state.get(Key.BATCHES_DELIVERED)) is not None:
            return Position(kind, epoch, state[Key.BATCHES_DELIVERED], "batches into the epoch")
        inner = state.get(Key.INNER)
        if isinstance(inner, Mapping):
            return Position(kind, epoch, stateful_dataloader_batches(inner), "batches into the epoch")
        return Position(kind, epoch, None, "")
    batches = stateful_dataloader_batches(state)
    if batches is not None:
        return Position("StatefulDataLoader", epoch, batches, "batches into the current pass")
    for key in ("cursor", "position", "samples_yielded", "yielded", "step", "index"):
        if _int(state.get(key)) is not None:
            return Position(str(kind or "state"), epoch, state[key], key)
    return Position(str(kind or "state"), epoch, None, "")


def reshard_blocker(state: Any) -> str | None:
    """Why this component state cannot move to another world size, or None when it can (it holds one
    global position: a ResumableSampler's cursor, with no batches delivered out of order beyond it)."""
    if not isinstance(state, Mapping):
        return "its state is not a dict"
    kind = state.get(Key.KIND)
    if kind == SAMPLER_KIND:
        return None
    if kind == LOADER_KIND:
        sampler_kind = state.get(Key.SAMPLER_KIND)
        if sampler_kind != SAMPLER_KIND:
            return (
                f"its position (sampler_kind={sampler_kind!r}) is per rank or per worker; only a "
                "ResumableSampler's global cursor can be split over another number of ranks"
            )
        ahead = state.get(Key.AHEAD)
        if isinstance(ahead, Mapping) and ahead.get(Key.AHEAD_END):
            return "it holds batches delivered out of order (in_order=False) beyond its cursor"
        return None
    return f"its state (kind={kind!r}) has no global position that could be split over another number of ranks"


def _int(value: Any) -> int | None:
    return value if type(value) is int else None

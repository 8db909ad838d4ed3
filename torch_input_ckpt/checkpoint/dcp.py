"""``DistributedLoaderState``: an input pipeline's state for torch.distributed.checkpoint, every rank's in one value.

Why one replicated value: DCP writes a non-tensor value once per key (its planner keeps one writer among
the ranks holding the same key: ``torch/distributed/checkpoint/_dedup_save_plans.py``), so ranks' own
states under one key come back as one rank's state on every rank; and keys per rank are stored, but a
``dcp.load`` that asks for a key only the new world has fails every rank (``CheckpointException``) unless
the caller passes ``allow_partial_load`` or reads the checkpoint's metadata first, which is user code that
torchtitan's checkpointer does not run. DCP calls ``state_dict()`` collectively, on every rank, at
``dcp.save``/``async_save`` and at ``dcp.load``: there it all-gathers each rank's state (small, O(W) in
all, identical states stored once) into one value that every rank holds the same. At load each rank takes
its own state, or, on another number of ranks, the one the restore planner names after the planner's own
resharding check (:func:`torch_input_ckpt.store.planner.check_reshardable`): the rule of our files.

The value is one JSON text (DCP pickles a string; the text is parsed with this library's bounded parser),
under one key whatever the world size, so the keys DCP asks for at load are the keys it wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch.distributed as dist

from ..base.messages import short
from ..errors import InputStateError
from ..state.encoding import decode_tensors, to_json
from ..state.schema import MAX_WORLD_SIZE, check_header, field, is_stateful
from ..store.files import MAX_FILE_BYTES, canonical_json, parse_json
from ..store.planner import RestorePlan, check_reshardable
from .checkpointer import _takes_source
from .collectives import cpu_group

__all__ = ["DISTRIBUTED_KIND", "STATE_KEY", "DistributedLoaderState", "replicated_value"]

log = logging.getLogger("torch_input_ckpt")

DISTRIBUTED_KIND = "DistributedLoaderState"
_VERSION = 1
#: The one key of :meth:`DistributedLoaderState.state_dict` (DCP stores it as ``"<your key>.input_state"``).
STATE_KEY = "input_state"
_WORLD = "world_size"
_STATES = "states"  # the distinct per-rank states
_RANKS = "ranks"  # rank r's state is states[ranks[r]]


class DistributedLoaderState:
    """Wraps a loader (any ``state_dict``/``load_state_dict`` object) for ``torch.distributed.checkpoint``.

    ``dcp.save({"model": ..., "dataloader": DistributedLoaderState(loader)}, checkpoint_id=...)`` stores every
    rank's state, and ``dcp.load`` of the same dict gives each rank its own, or, on another number of ranks,
    splits what is left over the new ranks (as :class:`~torch_input_ckpt.InputCheckpointer` does with its
    files), or refuses with :class:`~torch_input_ckpt.InputStateError` where that cannot be exact (batches
    delivered out of order, per-worker iterable states). ``dcp.async_save`` stores the position after the
    batches delivered before the call (the state is taken in the call).

    ``loader.state_dict()`` itself stays per rank and collective-free (for our files, Lightning, HF).

    Args:
        loader: A ``ResumableDataLoader``, ``ResumableSampler`` or other stateful object.
        rank: This process's rank among those that own distinct data, e.g. torchtitan's ``dp_rank``
            (tensor- and pipeline-parallel peers share it and must hold the same state). Default: the rank in
            ``process_group``.
        world_size: The number of such ranks (``dp_world_size``). Default: the size of ``process_group``.
        process_group: The group whose ranks are gathered (every rank of it calls ``state_dict``, as DCP
            does). Default: the default group if it is gloo, else a gloo group made at the first call.
        name: The component's name in messages.

    Raises:
        ValueError: for a ``loader`` without ``state_dict``/``load_state_dict``, or a rank outside the world.
    """

    def __init__(
        self,
        loader: Any,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        process_group: Any = None,
        name: str = "dataloader",
    ) -> None:
        if not is_stateful(loader):
            raise ValueError(f"{type(loader).__name__} has no state_dict()/load_state_dict(): nothing to save")
        if (rank is None) != (world_size is None):
            raise ValueError(f"give both rank and world_size or neither (got {rank=}, {world_size=})")
        if world_size is not None and not (isinstance(world_size, int) and 0 <= rank < world_size):  # type: ignore[operator]
            raise ValueError(f"rank must be in [0, world_size) (got {rank=}, {world_size=})")
        self.loader = loader
        self.name = name
        self._rank, self._world, self._given_group = rank, world_size, process_group
        self._group: Any = None
        self._group_made = False

    def __repr__(self) -> str:
        return f"DistributedLoaderState({type(self.loader).__name__}, rank={self._rank}, world_size={self._world})"

    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    def _place(self) -> tuple[int, int]:
        """(rank, world size) of this process among the ranks that own data."""
        if self._world is not None:
            return self._rank, self._world  # type: ignore[return-value]
        if not self._distributed():
            return 0, 1
        group = self._collective_group()
        return dist.get_rank(group), dist.get_world_size(group)

    def _collective_group(self) -> Any:
        # Made at the first call, which DCP makes on every rank together (a new group is a collective).
        if not self._group_made:
            self._group, self._group_made = cpu_group(self._given_group), True
        return self._group

    def state_dict(self) -> dict[str, str]:
        """Every rank's state in one value (a collective under torch.distributed: call it on every rank)."""
        rank, world = self._place()
        mine = to_json(self.loader.state_dict(), f"{self.name}.state_dict()")
        if self._distributed():
            group = self._collective_group()
            gathered: list[Any] = [None] * dist.get_world_size(group)
            dist.all_gather_object(gathered, (rank, world, mine), group=group)
        else:
            gathered = [(rank, world, mine)]
        return {STATE_KEY: canonical_json(replicated_value(gathered, self.name)).decode("ascii")}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load this rank's state out of the value :meth:`state_dict` made (on any rank, any number of ranks).

        Raises:
            InputStateError: for a malformed value, or a state that cannot be split over this number of
                ranks, naming the saved and the current number of ranks and why.
        """
        rank, world = self._place()
        source = f"{self.name} (a {DISTRIBUTED_KIND} value in a torch.distributed.checkpoint)"
        saved = _parse(state_dict, source)
        states = [saved[_STATES][index] for index in saved[_RANKS]]
        saved_world = saved[_WORLD]
        if saved_world != world:
            check_reshardable(
                {r: {self.name: state} for r, state in enumerate(states)},
                saved_world,
                world,
                source=source,
                where=f"{source}:",
            )
            log.info("resharding %s saved by %d ranks over %d ranks", self.name, saved_world, world)
        origin = RestorePlan(step=0, saved_world=saved_world).source_rank(rank)
        state = decode_tensors(states[origin], source)
        where = f"{source}, saved by rank {origin} of {saved_world}"
        if _takes_source(self.loader):
            self.loader.load_state_dict(state, source=where)
            return
        try:
            self.loader.load_state_dict(state)
        except InputStateError:
            raise
        except Exception as error:
            raise InputStateError(f"{where}: load_state_dict() failed: {error!r}") from error


def replicated_value(gathered: list[Any], name: str) -> dict[str, Any]:
    """One value from every group member's ``(rank, world size, state)``: each rank's state once, identical
    states once; peers of one rank (tensor-parallel) must hold the same state and agree on the world."""
    worlds = {world for _, world, _ in gathered}
    if len(worlds) != 1:
        raise InputStateError(f"{name}: the processes disagree on the number of data ranks: {sorted(worlds)}")
    world = worlds.pop()
    by_rank: dict[int, Any] = {}
    for rank, _, state in gathered:
        if rank in by_rank and by_rank[rank] != state:
            raise InputStateError(
                f"{name}: two processes of data rank {rank} hold different states (tensor- or pipeline-parallel "
                "peers must read the same data); give each data-parallel replica its own rank"
            )
        by_rank[rank] = state
    if sorted(by_rank) != list(range(world)):
        raise InputStateError(f"{name}: states of data ranks {sorted(by_rank)} were gathered, expected 0..{world - 1}")
    texts = [canonical_json({"state": by_rank[r]}) for r in range(world)]
    first_rank: dict[bytes, int] = {}  # each distinct state, in order, and the first rank that holds it
    for rank, text in enumerate(texts):
        first_rank.setdefault(text, rank)
    numbers = {text: number for number, text in enumerate(first_rank)}
    return {
        "kind": DISTRIBUTED_KIND,
        "version": _VERSION,
        _WORLD: world,
        _STATES: [by_rank[rank] for rank in first_rank.values()],
        _RANKS: [numbers[text] for text in texts],
    }


def _parse(state_dict: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The checked replicated value (bounded parse; every rank's entry present and in range)."""
    text = state_dict.get(STATE_KEY) if isinstance(state_dict, Mapping) else None
    if not isinstance(text, str):
        raise InputStateError(f"{source}: expected {{{STATE_KEY!r}: <JSON text>}}, got {short(state_dict)}")
    if len(text) > MAX_FILE_BYTES:
        raise InputStateError(f"{source}: {len(text)} characters, more than the {MAX_FILE_BYTES} allowed")
    try:
        saved = parse_json(text.encode("utf-8"))
    except ValueError as error:
        raise InputStateError(f"{source}: not a valid state: {error}") from error
    saved = check_header(saved, DISTRIBUTED_KIND, source, (_VERSION,))
    world = field(saved, _WORLD, int, source, low=1, high=MAX_WORLD_SIZE)
    states = field(saved, _STATES, list, source)
    ranks = field(saved, _RANKS, list, source)
    if len(ranks) != world or not all(type(i) is int and 0 <= i < len(states) for i in ranks):
        raise InputStateError(
            f"{source}: {_RANKS}={short(ranks)} should name one of the {len(states)} states for each of {world} ranks"
        )
    return saved

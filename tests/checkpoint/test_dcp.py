"""torch.distributed.checkpoint with the input pipeline, on real gloo ranks (127.0.0.1), through the checkpoint
directory DCP writes, into fresh objects: 2 ranks save (``dcp.save`` and ``dcp.async_save``) beside a model;
2 ranks resume exactly where each left off, ranks' states differing (out-of-order holes, per-worker iterable
states); 3 ranks split what is left (exclusions, a Mixture over a ShardedStream), or are refused where that
cannot be exact. Three launches in all (the multi-process budget)."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from examples import dcp_loader as example
from torch_input_ckpt import (
    DistributedLoaderState,
    InputStateError,
    Mixture,
    ResumableDataLoader,
    ResumableSampler,
    ShardedStream,
)
from torch_input_ckpt.checkpoint.dcp import replicated_value
from torch_input_ckpt.stream.shards import write_index

from tests.support.distributed import run_world
from tests.support.mixture_files import Tagged
from tests.support.stream_data import all_ids, sample_id, write_shards

HOLES_N, EXCL_N, MIX_N, ITER_N = 24, 30, 36, 28
EXCLUDED = (3, 17, 22)
STREAM_SIZES = (7, 3, 9, 5)


class SlowFirst(Dataset):
    """Index ``i`` is ``i``; the sample at ``slow`` takes a while, so that a worker's later batches overtake it."""

    def __init__(self, slow: int) -> None:
        self.slow = slow

    def __len__(self) -> int:
        return HOLES_N

    def __getitem__(self, index: int) -> int:
        if index == self.slow:
            time.sleep(0.4)
        return index


class RankStream(IterableDataset):
    """A stateful stream split over ranks and workers: items ``rank + world * k``, each worker every other one."""

    def __init__(self, rank: int, world: int) -> None:
        self.items = list(range(rank, ITER_N, world))
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]

    def __iter__(self):
        info = get_worker_info()
        mine = self.items if info is None else self.items[info.id :: info.num_workers]
        while self.position < len(mine):
            self.position += 1
            yield mine[self.position - 1]


def _loaders(rank: int, world: int, shards: Path) -> dict[str, ResumableDataLoader]:
    first_of_rank0 = next(iter(ResumableSampler(HOLES_N, seed=4, num_replicas=world, rank=0)))
    holes = ResumableDataLoader(
        SlowFirst(first_of_rank0), batch_size=2, shuffle=True, seed=4, num_workers=2, in_order=False
    )
    excluded = ResumableDataLoader(list(range(EXCL_N)), batch_size=3, shuffle=True, seed=9)
    excluded.exclude(list(EXCLUDED))
    mixed = _mixed(shards)
    iterable = ResumableDataLoader(RankStream(rank, world), batch_size=2, num_workers=2)
    return {"holes": holes, "excl": excluded, "mix": mixed, "iter": iterable}


def _mixed(shards: Path) -> ResumableDataLoader:
    """24 stream samples and 12 of 20 others per mixture epoch (weights 2:1): each at most once."""
    stream = ShardedStream(shards, seed=2)
    mix = Mixture({"web": stream, "code": Tagged("code", 20)}, {"web": 2, "code": 1}, samples_per_epoch=MIX_N)
    return ResumableDataLoader(mix, batch_size=4, shuffle=True, seed=1, collate_fn=_names)


def _names(batch: list[Any]) -> list[str]:
    return [_name(s) for s in batch]


def _name(sample: Any) -> str:
    return sample if isinstance(sample, str) else sample_id(sample)


def _flat(batch: Any) -> list[Any]:
    return batch.tolist() if isinstance(batch, torch.Tensor) else list(batch)


def _take(loader: ResumableDataLoader, batches: int | None) -> list[Any]:
    out: list[Any] = []
    iterator = iter(loader)
    for count, batch in enumerate(iterator, 1):
        out += _flat(batch)
        if count == batches:
            break
    del iterator
    return out


def _save(rank: int, world: int, root: Path, shards: Path) -> dict[str, Any]:
    """Each loader a few batches, then dcp.save (holes, iter), a plain save of the bare loader, and
    dcp.async_save (excl, mix) followed by one more batch before the save is waited for."""
    loaders = _loaders(rank, world, shards)
    # Rank 1 takes one batch more of "holes": states that differ, whatever the workers' timing.
    head = {name: _take(loader, 3 + (rank if name == "holes" else 0)) for name, loader in loaders.items()}
    holes_state = loaders["holes"].state_dict()
    model = torch.nn.Linear(3, 2)
    wrapped = {name: DistributedLoaderState(loader, name=name) for name, loader in loaders.items()}
    example.save(str(root / "holes"), model, loaders["holes"])  # the docs' example
    dcp.save({"iter": wrapped["iter"]}, checkpoint_id=root / "differ")
    dcp.save({"holes": loaders["holes"]}, checkpoint_id=root / "plain")  # what DCP does with the bare loader
    future = dcp.async_save({"model": model, "excl": wrapped["excl"], "mix": wrapped["mix"]}, checkpoint_id=root / "a")
    after = {name: _take(loaders[name], 1) for name in ("excl", "mix")}  # delivered after the save call
    future.result()
    dist.barrier()
    return {"head": head, "after": after, "holes_state": holes_state}


def _resume(rank: int, world: int, root: Path, shards: Path) -> dict[str, Any]:
    """Fresh loaders from the checkpoints; the rest of each epoch (or the error, on every rank)."""
    loaders = _loaders(rank, world, shards)
    model = torch.nn.Linear(3, 2)
    out: dict[str, Any] = {}
    wrapped = {name: DistributedLoaderState(loader, name=name) for name, loader in loaders.items()}
    loads = {
        "holes": lambda: example.load(str(root / "holes"), model, loaders["holes"]),
        "iter": lambda: dcp.load({"iter": wrapped["iter"]}, checkpoint_id=root / "differ"),
    }
    for name, load in loads.items():
        try:
            load()
        except InputStateError as error:  # raised by every rank, after DCP's collectives: nobody waits
            out[f"{name}_error"] = str(error)
        else:
            out[name] = _take(loaders[name], None)
    dcp.load({"model": model, "excl": wrapped["excl"], "mix": wrapped["mix"]}, checkpoint_id=root / "a")
    out["excl"], out["mix"] = _take(loaders["excl"], None), _take(loaders["mix"], None)
    if world == 2:
        plain = _loaders(rank, world, shards)["holes"]
        try:
            dcp.load({"holes": plain}, checkpoint_id=root / "plain")
        except InputStateError as error:  # a mix of two ranks' values, refused by the state's own checks
            out["plain_error"] = str(error)
        else:
            out["plain_state"] = plain.state_dict()
    dist.barrier()
    return out


def _once(delivered: list[Any], universe: list[Any], padding: int = 0) -> None:
    counts = Counter(delivered)
    missing = sorted(set(universe) - set(counts), key=str)
    extra = sorted(set(counts) - set(universe), key=str)
    twice = sorted((k for k, c in counts.items() if c > 1), key=str)
    assert not missing, f"never delivered: {missing}"
    assert not extra, f"not in the data: {extra}"
    assert sum(c - 1 for c in counts.values()) == padding and max(counts.values()) <= 2, (
        f"delivered twice: {twice}, expected {padding} padding duplicates"
    )


def _padding(name: str, heads: dict[str, list[Any]], world: int) -> int:
    """DistributedSampler's padding of what is left of the epoch over ``world`` ranks."""
    left = {"excl": EXCL_N - len(EXCLUDED), "mix": MIX_N}[name] - len(heads[name])
    return -(-left // world) * world - left


@pytest.mark.slow
def test_dcp_save_then_load_on_the_same_and_on_another_number_of_ranks(tmp_path):
    shards = write_shards(tmp_path / "shards", "jsonl", STREAM_SIZES)
    write_index(shards)
    mix_epoch = _take(_mixed(shards), None)  # one process: the same global order as any number of ranks
    root = tmp_path / "dcp"
    saved = run_world(_save, 2, root, shards)
    assert any(s["holes_state"]["ahead"]["end"] for s in saved), "the slow sample should leave batches out of order"
    same = run_world(_resume, 2, root, shards)
    other = run_world(_resume, 3, root, shards)
    heads = {name: [x for s in saved for x in s["head"][name]] for name in saved[0]["head"]}
    after = {name: [x for s in saved for x in s["after"][name]] for name in ("excl", "mix")}
    kept = [i for i in range(EXCL_N) if i not in EXCLUDED]
    universes = {"holes": list(range(HOLES_N)), "iter": list(range(ITER_N)), "excl": kept}
    universes["mix"] = mix_epoch

    # Same number of ranks: each rank resumes its own state, holes and per-worker states included.
    for name in ("holes", "iter"):
        _once(heads[name] + [x for r in same for x in r[name]], universes[name])
    for name in ("excl", "mix"):  # async_save: the batch taken after the call is delivered again, once
        _once(heads[name] + [x for r in same for x in r[name]], universes[name], _padding(name, heads, 2))
        assert set(after[name]) <= {x for r in same for x in r[name]}
    assert len(set(mix_epoch)) == MIX_N and set(all_ids(STREAM_SIZES)) < set(mix_epoch)
    # The bare loader under DCP (why the wrapper exists): DCP keeps one writer per non-tensor key, chosen key by
    # key, so the ranks' different states come back as one state on both ranks, or as a mix of two ranks' values
    # that the state's checks refuse; never as each rank's own.
    assert saved[0]["holes_state"] != saved[1]["holes_state"]
    refused = [r["plain_error"] for r in same if "plain_error" in r]
    assert refused or same[0]["plain_state"] == same[1]["plain_state"], same
    assert all("ahead" in error or "invalid" in error for error in refused), refused

    # Three ranks: the global position is split (DistributedSampler's padding); per-rank states are refused.
    for name in ("excl", "mix"):
        _once(heads[name] + [x for r in other for x in r[name]], universes[name], _padding(name, heads, 3))
    for result in other:
        assert "holes" not in result and "iter" not in result
        assert "out of order" in result["holes_error"] and "Resume with 2 ranks" in result["holes_error"]
        assert "per rank or per worker" in result["iter_error"] and "saved on 2" in result["iter_error"]


@pytest.mark.parametrize(
    "value,message",
    [
        ({"input_state": "{not json"}, "not a valid state"),
        ({"input_state": '{"kind": "ResumableDataLoader", "version": 1}'}, "expected 'DistributedLoaderState'"),
        (
            {"input_state": '{"kind":"DistributedLoaderState","version":1,"world_size":2,"states":[{}],"ranks":[0,1]}'},
            "should name one of the 1 states for each of 2 ranks",
        ),
        ({"dataloader": {}}, "expected {'input_state': <JSON text>}"),
    ],
)
def test_a_damaged_value_is_refused_naming_what_is_wrong(value, message):
    loader = ResumableDataLoader(list(range(8)), batch_size=2)
    with pytest.raises(InputStateError, match=re.escape(message)):
        DistributedLoaderState(loader).load_state_dict(value)


def test_peers_of_a_data_rank_are_stored_once_and_must_agree():
    """Tensor-parallel peers (the same data rank) hold one state, stored once; a disagreement is refused."""
    same = replicated_value([(0, 2, {"c": 1}), (1, 2, {"c": 1}), (0, 2, {"c": 1}), (1, 2, {"c": 1})], "dl")
    assert same["states"] == [{"c": 1}] and same["ranks"] == [0, 0]
    differ = replicated_value([(1, 2, {"c": 3}), (0, 2, {"c": 1})], "dl")
    assert differ["states"] == [{"c": 1}, {"c": 3}] and differ["ranks"] == [0, 1]
    with pytest.raises(InputStateError, match="two processes of data rank 1 hold different states"):
        replicated_value([(0, 2, {"c": 1}), (1, 2, {"c": 1}), (1, 2, {"c": 2})], "dl")
    with pytest.raises(InputStateError, match=r"states of data ranks \[0\] were gathered, expected 0..1"):
        replicated_value([(0, 2, {"c": 1})], "dl")

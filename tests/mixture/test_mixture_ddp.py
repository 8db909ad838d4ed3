"""A Mixture under a real gloo process group: the default sampler shards it, and its state (global cursor
plus the mixture's counters) resumes on another world size with every sample exactly once."""

from __future__ import annotations

from collections import Counter

import pytest
import torch.distributed as dist

from torch_input_ckpt import ResumableDataLoader

from tests.support.distributed import run_world
from tests.support.mixture_data import LENGTHS, mixture
from tests.support.resume import roundtrip, to_py

N = sum(LENGTHS.values())


def _consume(rank: int, world: int, state: dict | None, batches: int | None) -> tuple:
    loader = ResumableDataLoader(mixture(), batch_size=2, shuffle=True, seed=3)
    assert loader.sampler.num_replicas == world and loader.sampler.rank == rank
    if state is not None:
        loader.load_state_dict(state)
    seen = []
    for batch in loader:
        seen.extend(to_py(batch)["id"])
        if batches is not None and len(seen) == batches * 2:
            break
    dist.barrier()
    return seen, roundtrip(loader.state_dict())


@pytest.mark.slow
def test_mixture_shards_by_default_and_reshards_3_to_2():
    first = run_world(_consume, 3, None, 2)
    states = [s for _, s in first]
    assert states[0] == states[1] == states[2], "all ranks save the same global position and counters"
    second = run_world(_consume, 2, states[0], None)
    reference = ResumableDataLoader(mixture(), batch_size=N, shuffle=True, seed=3)
    expected = Counter(to_py(next(iter(reference)))["id"])
    seen = Counter(i for part, _ in first + second for i in part)
    assert not expected - seen, "missing samples"
    remaining = N - 3 * 2 * 2
    assert sum((seen - expected).values()) == -(-remaining // 2) * 2 - remaining, "only the padding repeats"

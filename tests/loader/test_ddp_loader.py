"""Under a real gloo process group: the loader shards by default and resumes on another world size."""

from __future__ import annotations

from collections import Counter

import torch.distributed as dist

from torch_input_ckpt import ResumableDataLoader

from tests.support.distributed import run_world
from tests.support.resume import roundtrip, to_py

N = 50


def _consume(rank: int, world: int, state: dict | None, batches: int | None, batch_size: int) -> tuple:
    loader = ResumableDataLoader(list(range(N)), batch_size=batch_size, shuffle=True, seed=21)
    assert loader.sampler.num_replicas == world and loader.sampler.rank == rank
    if state is not None:
        loader.load_state_dict(state)
    seen = []
    for batch in loader:
        seen.extend(to_py(batch))
        if batches is not None and len(seen) == batches * batch_size:
            break
    dist.barrier()
    return seen, roundtrip(loader.state_dict())


def test_default_sampler_shards_over_the_process_group_and_reshards_on_resume():
    """2 ranks take 3 batches each, save; 3 ranks finish the epoch: every sample exactly once."""
    first = run_world(_consume, 2, None, 3, 4)
    states = [s for _, s in first]
    assert states[0] == states[1], "all ranks save the same global position"
    assert states[0]["sampler"]["cursor"] == 2 * 3 * 4
    second = run_world(_consume, 3, states[0], None, 4)
    seen = Counter(i for part, _ in first + second for i in part)
    remaining = N - 24
    padding = -(-remaining // 3) * 3 - remaining
    assert set(seen) == set(range(N))
    assert sum(seen.values()) == N + padding
    assert all(s["epoch"] == 1 and s["sampler"]["cursor"] == 0 for _, s in second)


def test_same_world_resume_equals_uninterrupted_per_rank():
    full = run_world(_consume, 2, None, None, 5)
    head = run_world(_consume, 2, None, 2, 5)
    tail = run_world(_consume, 2, head[0][1], None, 5)
    for rank in range(2):
        assert head[rank][0] + tail[rank][0] == full[rank][0]

"""InputCheckpointer under real gloo process groups: agreed save steps, restores on any world size."""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch.distributed as dist

from torch_input_ckpt import InputCheckpointer, InputStateError, ResumableDataLoader, World
from torch_input_ckpt.store.files import InputFile
from torch_input_ckpt.store.planner import plan_restore

from tests.support.distributed import run_world
from tests.support.resume import to_py

N, BATCH = 60, 4


def _loader(**kwargs) -> ResumableDataLoader:
    return ResumableDataLoader(list(range(N)), batch_size=BATCH, shuffle=True, seed=5, **kwargs)


def _train(rank, world, directory, stop_at, restore_step, epochs=1, **ckpt_kwargs):
    """A training loop: restore, then train until step ``stop_at`` (None: the end of ``epochs``).

    Returns (restored step, [(step, epoch, indices)], warnings seen)."""
    loader = _loader()
    kwargs = ckpt_kwargs or {"every_n_steps": 1}
    trained = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with InputCheckpointer(directory, loader, keep_last=None, **kwargs) as ckpt:
            if restore_step is None:
                step = ckpt.restore_or_save_initial() or 0
            else:
                step = ckpt.restore(None if restore_step == "newest" else restore_step)
            restored = step
            for epoch in range(loader.epoch, epochs):
                for batch in loader:
                    step += 1
                    trained.append((step, epoch, to_py(batch)))
                    ckpt.after_step(step)
                    if step == stop_at:
                        break
                if step == stop_at:
                    break
    return restored, trained, [str(w.message) for w in seen]


def _samples(results, up_to=None):
    return Counter(
        i for _, trained, _ in results for step, _, batch in trained if up_to is None or step <= up_to for i in batch
    )


@pytest.mark.parametrize("old,new", [(2, 2), (2, 3), (3, 2), (2, 1)])
def test_resume_on_any_world_size_trains_each_sample_exactly_once(tmp_path, old, new):
    """Job 1 trains 5 steps on `old` ranks; job 2 resumes from the step-3 model checkpoint on `new`."""
    first = run_world(_train, old, tmp_path, 5, None)
    second = run_world(_train, new, tmp_path, None, 3)
    assert all(restored == 3 for restored, _, _ in second)
    seen = _samples(first, up_to=3) + _samples(second)
    remaining = N - 3 * old * BATCH
    padding = -(-remaining // new) * new - remaining
    assert set(seen) == set(range(N)), "nothing missing"
    assert sum(seen.values()) == N + padding, "nothing twice but DistributedSampler's padding"
    if old == new:  # the same world continues each rank's own stream exactly
        uninterrupted = run_world(_train, old, tmp_path / "reference", None, None)
        for rank in range(old):
            head = [t for t in first[rank][1] if t[0] <= 3]
            assert head + second[rank][1] == uninterrupted[rank][1]


def test_newest_common_step_when_rank_files_differ(tmp_path):
    run_world(_train, 2, tmp_path, 6, None)
    (tmp_path / InputFile(1, 6).name).unlink()  # rank 1's save of step 6 never happened
    (tmp_path / InputFile(1, 5).name).write_text("{garbled")  # and its step 5 is damaged
    results = run_world(_train, 2, tmp_path, 7, "newest")
    assert [r for r, _, _ in results] == [4, 4]
    assert any("falling back" in w and "ranks [1] of 2" in w for w in results[0][2])


def test_time_based_saves_land_on_the_same_step_on_every_rank(tmp_path):
    """Rank 1's clock runs late (it sleeps); saves still happen at the same steps, decided by rank 0."""

    def slow_train(rank, world, directory):
        import time

        loader = _loader()
        with InputCheckpointer(directory, loader, every_n_seconds=0.05, sync_every_n_steps=2, keep_last=None) as c:
            step = c.restore_or_save_initial() or 0
            for _batch in loader:
                step += 1
                time.sleep(0.01 * (1 + rank))
                c.after_step(step)
                dist.barrier()
            return c.steps()

    steps = run_world(slow_train, 2, tmp_path)
    assert steps[0] == steps[1]
    assert len(steps[0]) >= 3 and all(s % 2 == 0 for s in steps[0])


def test_restore_of_a_step_some_ranks_lack_names_them(tmp_path):
    run_world(_train, 2, tmp_path, 4, None)
    (tmp_path / InputFile(1, 3).name).unlink()
    with pytest.raises(InputStateError, match=r"step 3 was saved by 2 ranks, but ranks \[1\] have no valid file"):
        plan_restore(tmp_path, 3, step=3)
    with pytest.raises(InputStateError, match=r"no valid input checkpoint at step 9; steps on disk per rank: rank 0"):
        plan_restore(tmp_path, 2, step=9)


def test_per_rank_state_cannot_be_resharded(tmp_path):
    from torch.utils.data import SequentialSampler

    for rank in range(2):
        loader = ResumableDataLoader(list(range(N)), batch_size=BATCH, sampler=SequentialSampler(range(N)))
        world = World(rank, 2)  # as if saved under a 2-rank process group
        with InputCheckpointer(tmp_path, loader, every_n_steps=1, world=world, external_state_policy="ignore") as c:
            c.save(1)
    with pytest.raises(InputStateError, match="cannot be resumed on 3 ranks after being saved on 2.*per rank"):
        plan_restore(tmp_path, 3)
    assert plan_restore(tmp_path, 2, rank=1).checkpoint.rank == 1, "the same world size restores its own files"


def test_fresh_start_saves_initial_on_every_rank_after_all_have_looked(tmp_path):
    results = run_world(_train, 3, tmp_path, 2, None)
    assert all(restored == 0 for restored, _, _ in results)
    assert sorted(Path(tmp_path).glob("input_*-00000000.json")) == [tmp_path / InputFile(r, 0).name for r in range(3)]


def test_only_global_positions_are_reshardable():
    from torch_input_ckpt.state.schema import reshard_blocker as _not_reshardable

    loader_state = _loader().state_dict()
    assert _not_reshardable(loader_state) is None
    assert _not_reshardable(loader_state["sampler"]) is None
    ahead = loader_state | {"ahead": {"end": 2, "missing": [0]}}
    assert "out of order" in _not_reshardable(ahead)
    assert "per rank or per worker" in _not_reshardable(loader_state | {"sampler_kind": "IterableDataset"})
    assert "no global position" in _not_reshardable({"kind": "StatefulDataLoader"})


def test_old_ranks_that_disagree_on_the_position_are_not_resharded(tmp_path):
    for rank, batches in ((0, 2), (1, 3)):  # rank 1 ran a batch ahead: not lockstep
        loader = _loader()
        it = iter(loader)
        for _ in range(batches):
            next(it)
        with InputCheckpointer(tmp_path, loader, every_n_steps=1, world=World(rank, 2)) as c:  # as under 2 ranks
            c.save(2)
    with pytest.raises(InputStateError, match=r"the 2 old ranks disagree on the position of 'input'.*lockstep"):
        plan_restore(tmp_path, 3)


def _count_restore_reads(rank, world, directory):
    """Restore the newest step, counting every file this rank opens for reading."""
    from torch_input_ckpt.store import files

    opened = []
    real = files.read_regular_file

    def counting(path, limit):
        opened.append(path.name)
        return real(path, limit)

    files.read_regular_file = counting
    try:
        with InputCheckpointer(directory, _loader(), every_n_steps=1, keep_last=None) as ckpt:
            step = ckpt.restore()
    finally:
        files.read_regular_file = real
    return step, opened


@pytest.mark.parametrize("old,new", [(3, 3), (3, 2)])
def test_only_rank_0_plans_and_every_other_rank_reads_one_file(tmp_path, old, new):
    run_world(_train, old, tmp_path, 4, None)
    results = run_world(_count_restore_reads, new, tmp_path)
    assert [step for step, _ in results] == [4] * new
    planner = results[0][1]
    assert sorted(planner) == sorted(
        [f"checkpoint_input_{r}" for r in range(old)] + [InputFile(r, 4).name for r in range(old)]
    )
    for rank in range(1, new):
        assert results[rank][1] == [InputFile(rank, 4).name]  # its own old rank's file, nothing else


def _restore_from_own_directory(rank, world, directory):
    """Each rank restores from a directory of its own (not shared): only rank 0's holds rank 1's file."""
    mine = Path(directory) / f"node{rank}"
    with InputCheckpointer(mine, _loader(), every_n_steps=1) as ckpt:
        try:
            ckpt.restore()
        except InputStateError as error:
            return str(error)
    return None


def test_a_directory_not_shared_by_all_ranks_fails_every_rank_not_a_hang(tmp_path):
    run_world(_train, 2, tmp_path / "node0", 3, None)  # node0 holds both ranks' files; node1 none
    (tmp_path / "node1").mkdir()
    errors = run_world(_restore_from_own_directory, 2, tmp_path, timeout=60)
    assert errors[1] is not None and "input_1-00000003.json: file does not exist" in errors[1]
    assert errors[0] == f"rank 1 could not read its input checkpoint: {errors[1]}"

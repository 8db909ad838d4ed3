"""``samples`` equals what the real loader delivered: many steps, epoch boundaries, worlds 1 and 3, a
resharded run 2 -> 3, gradient accumulation, and the refusals that name what is missing."""

from __future__ import annotations

import pytest

from torch_input_ckpt import InputStateError
from torch_input_ckpt.provenance.history import Provenance, samples_at

from tests.support.provenance_runs import run


def check_all(directory, delivered):
    """Every recorded step after the oldest checkpoint equals what samples computes, per rank."""
    provenance = Provenance(directory)
    oldest = provenance.checkpoints[0].step
    checked = 0
    for step, by_rank in delivered.items():
        if step <= oldest:
            continue
        answer = provenance.step(step)
        assert dict(answer.keys) == by_rank, f"step {step}"
        checked += 1
    assert checked >= len(delivered) // 2
    return provenance


CASES = [
    # length, world, batch size, shuffle, loader drop_last, sampler drop_last
    (23, 1, 4, True, False, False),
    (23, 1, 4, False, True, False),
    (23, 3, 2, True, False, False),
    (23, 3, 2, True, True, False),
    (23, 3, 2, False, False, True),
    (25, 3, 3, True, True, True),
]


def _case_config(length, batch_size, shuffle, drop_last, sampler_drop_last):
    """One of CASES as the recorded run's configuration (checkpoints every 5 steps)."""
    return dict(
        length=length,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        sampler_drop_last=sampler_drop_last,
        every=5,
    )


@pytest.mark.parametrize(("length", "world", "batch_size", "shuffle", "drop_last", "sampler_drop_last"), CASES)
def test_samples_equal_the_recorded_run(tmp_path, length, world, batch_size, shuffle, drop_last, sampler_drop_last):
    config = _case_config(length, batch_size, shuffle, drop_last, sampler_drop_last)
    # 40 steps: several epochs (4 or fewer batches per epoch per rank), checkpoints mid-epoch and at ends.
    delivered = run(tmp_path, config, world=world, steps=range(1, 41))
    provenance = check_all(tmp_path, delivered)
    assert len({e for s in range(2, 41) for e in provenance.step(s).epochs}) >= 4  # epoch boundaries crossed
    one = samples_at(tmp_path, 17, rank=world - 1)
    assert list(one.keys) == [world - 1] and one.keys[world - 1] == delivered[17][world - 1]


def test_randperm_order(tmp_path):
    config = dict(length=23, batch_size=2, shuffle=True, every=5, order="randperm")
    delivered = run(tmp_path, config, world=3, steps=range(1, 25))
    provenance = check_all(tmp_path, delivered)
    found = [(o.step, o.rank) for o in provenance.sample(5, range(0, 10)) if o.step <= 24]
    assert found == sorted((s, r) for s, by_rank in delivered.items() for r, keys in by_rank.items() if 5 in keys)


def test_gradient_accumulation_is_measured_between_saves(tmp_path):
    config = dict(length=50, batch_size=2, shuffle=True, every=4)
    delivered = run(tmp_path, config, world=2, steps=range(1, 30), bps=3)
    provenance = check_all(tmp_path, delivered)
    assert provenance.step(29).batches_per_step == 3


def test_resharded_run_2_to_3(tmp_path):
    config = dict(length=31, batch_size=2, shuffle=True, every=10)
    first = run(tmp_path, config, world=2, steps=range(1, 26))  # saved at 10, 20; "crashed" after 25
    second = run(tmp_path, config, world=3, steps=range(1, 61), restore=True)  # from 20, on 3 ranks
    assert min(second) == 21
    truth = {**{s: k for s, k in first.items() if s <= 20}, **second}
    provenance = check_all(tmp_path, truth)
    assert provenance.step(25).world_size == 3 and provenance.step(15).world_size == 2


def test_refuses_without_batches_per_step_and_names_it(tmp_path):
    config = dict(length=20, batch_size=2, shuffle=True, every=1000)
    run(tmp_path, config, world=1, steps=range(1, 5))  # only the initial save at step 0
    with pytest.raises(InputStateError, match="batches per optimizer step are not recorded.*batches_per_step="):
        samples_at(tmp_path, 3)
    assert samples_at(tmp_path, 3, batches_per_step=1).keys[0]


def test_refuses_a_step_before_every_checkpoint(tmp_path):
    config = dict(length=20, batch_size=2, shuffle=True, every=5)
    run(tmp_path, config, world=1, steps=range(1, 30), keep_last=2)
    with pytest.raises(InputStateError, match="no valid input checkpoint before step 3.*pruned"):
        samples_at(tmp_path, 3)


@pytest.mark.parametrize(("length", "world", "batch_size", "shuffle", "drop_last", "sampler_drop_last"), CASES)
def test_sample_k_inverts_it(tmp_path, length, world, batch_size, shuffle, drop_last, sampler_drop_last):
    config = _case_config(length, batch_size, shuffle, drop_last, sampler_drop_last)
    delivered = run(tmp_path, config, world=world, steps=range(1, 41), bps=2)
    provenance = Provenance(tmp_path)
    last = max(delivered)
    epochs = range(0, provenance.step(last).epochs[-1] + 1)
    for index in range(length):
        expected = sorted(
            (step, rank)
            for step, by_rank in delivered.items()
            for rank, keys in by_rank.items()
            for key in keys
            if key == index
        )
        found = [(o.step, o.rank) for o in provenance.sample(index, epochs) if o.step <= last]
        assert found == expected, f"sample {index}"
        assert all(not o.skipped for o in provenance.sample(index, epochs))


def test_refuses_a_custom_sampler_and_names_it(tmp_path):
    from torch.utils.data import SequentialSampler

    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader

    data = list(range(10))
    loader = ResumableDataLoader(data, batch_size=2, sampler=SequentialSampler(data))
    with InputCheckpointer(tmp_path, loader, external_state_policy="ignore") as ckpt:
        ckpt.save(0)
    with pytest.raises(InputStateError, match="sampler_kind is 'SequentialSampler'.*only for a ResumableSampler"):
        samples_at(tmp_path, 1, batches_per_step=1)


def test_given_batches_per_step_is_checked_against_the_record(tmp_path):
    config = dict(length=20, batch_size=2, shuffle=True, every=2)
    run(tmp_path, config, world=1, steps=range(1, 6), bps=2)
    with pytest.raises(InputStateError, match="batches_per_step=3 contradicts the 2 batches per step recorded"):
        samples_at(tmp_path, 5, batches_per_step=3)
    assert samples_at(tmp_path, 5, batches_per_step=2).batches_per_step == 2


def test_a_sharded_stream_saved_without_its_shard_table_is_refused_naming_it(tmp_path):
    import json

    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ShardedStream
    from torch_input_ckpt.store.files import InputFile
    from torch_input_ckpt.stream.shards import write_index

    from tests.support.mixture_files import rewrite
    from tests.support.stream_data import write_shards

    shards = write_shards(tmp_path / "shards", "jsonl")
    write_index(shards)
    stream = ShardedStream(shards, lanes=2, seed=3)
    loader = ResumableDataLoader(stream, batch_size=2, collate_fn=list)
    with InputCheckpointer(tmp_path / "ckpt", loader) as ckpt:
        ckpt.save(0)
    assert samples_at(tmp_path / "ckpt", 1, batches_per_step=1).keys[0]  # answered from the shard table
    path = tmp_path / "ckpt" / InputFile(0, 0).name
    document = json.loads(path.read_text())
    for state in document["states"].values():
        del state["sampler"]["dataset_order"]["shard_table"]  # as a version before shard tables saved it
    rewrite(path, document)
    with pytest.raises(InputStateError, match="records no shard table.*each shard's sample count"):
        samples_at(tmp_path / "ckpt", 1, batches_per_step=1)

"""``samples`` and ``skip_steps`` from checkpoint FILES after changes: a mixture's keys come from the plan of
the checkpoint that holds it (a resume with new weights starts one), its sources' order from the file's
recorded list (not the sorted dict); a ``ShardedStream`` skips by cursor arithmetic.

Source names are never alphabetical ("web", "code", "math")."""

from __future__ import annotations

import json

import pytest

from torch_input_ckpt import InputStateError, Mixture, ShardedStream
from torch_input_ckpt.provenance.history import Provenance
from torch_input_ckpt.store.files import InputFile
from torch_input_ckpt.stream.shards import write_index

from tests.support.mixture_files import rewrite
from tests.support.provenance_runs import run
from tests.support.stream_data import write_shards

LENGTHS = {"web": 11, "code": 7, "math": 5}


def mixture_config(weights: dict[str, int]) -> dict:
    def make() -> Mixture:
        # Items say what they are: (source, index), as samples reports keys.
        return Mixture({name: [(name, i) for i in range(n)] for name, n in LENGTHS.items()}, weights)

    return dict(make_dataset=make, batch_size=2, shuffle=True, every=5)  # 23 samples an epoch


def check(directory, delivered) -> None:
    provenance = Provenance(directory)
    for step, by_rank in delivered.items():
        answer = provenance.step(step)
        assert {r: [tuple(k) for k in keys] for r, keys in answer.keys.items()} == by_rank, f"step {step}"


def test_samples_of_a_mixture_whose_names_are_not_sorted(tmp_path):
    delivered = run(tmp_path, mixture_config({"web": 5, "code": 3, "math": 2}), world=2, steps=range(1, 30))
    check(tmp_path, delivered)


def test_samples_after_a_resume_with_new_weights_use_the_new_plan(tmp_path):
    first = run(tmp_path, mixture_config({"web": 5, "code": 3, "math": 2}), world=2, steps=range(1, 13))
    second = run(tmp_path, mixture_config({"web": 1, "code": 1, "math": 6}), world=2, steps=range(1, 31), restore=True)
    assert min(second) == 11
    check(tmp_path, {**{s: k for s, k in first.items() if s <= 10}, **second})


def test_samples_refuse_a_mixture_state_without_the_recorded_order(tmp_path):
    run(tmp_path, mixture_config({"web": 5, "code": 3, "math": 2}), world=1, steps=range(1, 13))
    for step in (0, 5, 10):
        path = tmp_path / InputFile(0, step).name
        document = json.loads(path.read_text())
        for state in document["states"].values():
            del state["sampler"]["dataset_order"]["order"]
        rewrite(path, document)
    with pytest.raises(InputStateError, match="does not record the order of its sources"):
        Provenance(tmp_path).step(7)


def stream_config(shards) -> dict:
    return dict(
        make_dataset=lambda: ShardedStream(shards, lanes=3, seed=5, window=4), batch_size=2, every=5, shuffle=True
    )


def test_skip_steps_on_a_sharded_stream_is_cursor_arithmetic(tmp_path):
    shards = write_shards(tmp_path / "shards", "jsonl.gz")
    write_index(shards)
    config = stream_config(shards)
    uninterrupted = run(tmp_path / "u", config, world=2, steps=range(1, 40))
    run(tmp_path / "a", config, world=2, steps=range(1, 13))  # saved at 5, 10
    resumed = run(tmp_path / "a", config, world=2, steps=range(1, 40), restore=True, skip_steps=9)  # over an epoch end
    assert min(resumed) == 20
    assert resumed == {step: keys for step, keys in uninterrupted.items() if step >= 20}
    # Which samples a step held: from the shard table the checkpoints record, after the skip as before it.
    provenance = Provenance(tmp_path / "a")
    for step in (3, 21, 30):
        delivered = (uninterrupted if step >= 20 else resumed | uninterrupted)[step]
        named = {
            r: [(f"shard-{int(i['id'].split('-')[0]):03d}.jsonl.gz", int(i["id"].split("-")[1])) for i in items]
            for r, items in delivered.items()
        }
        assert dict(provenance.step(step).keys) == named, step
    assert provenance.step(15).skipped


def test_the_samples_command_in_a_fresh_process_uses_the_new_plan(tmp_path):
    import subprocess
    import sys

    run(tmp_path, mixture_config({"web": 5, "code": 3, "math": 2}), world=1, steps=range(1, 13))
    second = run(tmp_path, mixture_config({"web": 1, "code": 1, "math": 6}), world=1, steps=range(1, 17), restore=True)
    done = subprocess.run(
        [sys.executable, "-m", "torch_input_ckpt", "samples", str(tmp_path), "--step", "12", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(done.stdout)
    assert [tuple(k) for k in answer["keys"]["0"]] == second[12][0]

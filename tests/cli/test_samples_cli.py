"""``python -m torch_input_ckpt samples``: one step, a range, ``--sample K``, JSON, refusals with exit 1;
and ``inspect`` shows the configuration provenance uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torch_input_ckpt.__main__ import main

from tests.support.provenance_runs import run

REPO = Path(__file__).resolve().parents[2]
CONFIG = dict(length=40, batch_size=2, shuffle=True, every=5)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    return directory, run(directory, CONFIG, world=2, steps=range(1, 24), bps=2)


def test_module_entry_point_prints_a_step(recorded):
    directory, delivered = recorded
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "torch_input_ckpt", "samples", str(directory), "--step", "23"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    lines = done.stdout.splitlines()
    assert (
        lines[0].startswith("step 23: epoch ")
        and "2 batch(es) per rank, 2 rank(s), from the checkpoint of step 20" in lines[0]
    )
    assert lines[1] == "  rank 0: " + " ".join(map(str, delivered[23][0]))
    assert lines[2] == "  rank 1: " + " ".join(map(str, delivered[23][1]))


def test_json_range_and_one_rank(recorded, capsys):
    directory, delivered = recorded
    assert main(["samples", str(directory), "--steps", "3:13", "--rank", "1", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["step"] for a in answers] == list(range(3, 13))
    assert all(a["keys"] == {"1": delivered[a["step"]][1]} for a in answers)


def test_sample_k(recorded, capsys):
    directory, delivered = recorded
    assert main(["samples", str(directory), "--sample", "17", "--epochs", "0:5", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert [o["epoch"] for o in every] == [0, 1, 2, 3, 4]  # once per epoch (40 divides over 2 ranks: no padding)
    found = [(o["step"], o["rank"]) for o in every if o["step"] <= 23]
    assert found == sorted((s, r) for s, by_rank in delivered.items() for r, keys in by_rank.items() if 17 in keys)


def test_refusals_exit_1_and_name_what_is_missing(tmp_path, capsys):
    run(tmp_path, dict(CONFIG, every=1000), world=1, steps=range(1, 4))
    assert main(["samples", str(tmp_path), "--step", "2"]) == 1
    assert "batches per optimizer step are not recorded" in capsys.readouterr().err
    assert main(["samples", str(tmp_path), "--step", "2", "--batches-per-step", "1"]) == 0
    assert main(["samples", str(tmp_path), "--steps", "5:2"]) == 2
    assert "A < B" in capsys.readouterr().err


def test_inspect_shows_the_configuration(recorded, capsys):
    directory, _ = recorded
    assert main(["inspect", str(directory)]) == 0
    out = capsys.readouterr().out
    assert (
        "configuration: seed 7, shuffle True (feistel), world size 2, batch size 2, drop_last False "
        "(sampler False), dataset length 40, batches per step 2" in out
    )
    assert main(["inspect", str(directory), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    described = report["ranks"][0]["newest"]["provenance"]["input"]
    assert (described["seed"], described["world_size"], described["batches_per_step"]) == (7, 2, 2)


def test_a_malformed_provenance_record_is_refused_by_samples_and_shown_by_inspect(tmp_path, capsys):
    from torch_input_ckpt import InputCheckpointer, ResumableDataLoader
    from torch_input_ckpt.store import files

    loader = ResumableDataLoader(list(range(10)), batch_size=2)
    with InputCheckpointer(tmp_path, loader) as ckpt:
        ckpt.save(3)
    good = files.read_checkpoint(tmp_path / "input_0-00000003.json")
    data = files.encode_checkpoint(
        rank=0, world_size=1, step=3, states=good.states, external=[], provenance={"skipped": 5}
    )
    (tmp_path / "input_0-00000003.json").write_bytes(data)  # signed: only the record is wrong
    assert main(["samples", str(tmp_path), "--step", "4", "--batches-per-step", "1"]) == 1
    assert "the provenance record is malformed" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 0
    assert "samples: unavailable" in capsys.readouterr().out
    with InputCheckpointer(tmp_path, ResumableDataLoader(list(range(10)), batch_size=2)) as ckpt:
        assert ckpt.restore() == 3  # the state itself is fine

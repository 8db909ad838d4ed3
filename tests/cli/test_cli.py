"""``python -m torch_input_ckpt inspect DIR``: text and JSON reports, damaged files, exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader, ResumableSampler
from torch_input_ckpt.__main__ import main

REPO = Path(__file__).resolve().parents[2]


def write_rank(directory: Path, rank: int, steps: list[int], world: int = 2) -> None:
    """Rank ``rank`` of ``world``: a loader sharded over the ranks, checkpointed at ``steps``."""
    sampler = ResumableSampler(40, seed=3, num_replicas=world, rank=rank)
    loader = ResumableDataLoader(list(range(40)), batch_size=2, sampler=sampler)

    def stream():
        while True:  # epoch after epoch
            yield from loader

    batches = stream()
    with InputCheckpointer(directory, loader, every_n_steps=1, rank=rank, keep_last=None) as ckpt:
        done = 0
        for step in steps:
            for _ in range(step - done):
                next(batches)
            done = step
            ckpt.save(step)
    batches.close()


@pytest.fixture
def two_ranks(tmp_path) -> Path:
    for rank in (0, 1):
        write_rank(tmp_path, rank, [4, 8, 13])  # 10 batches per epoch per rank: step 13 is epoch 1
    (tmp_path / "model-00000013.pt").write_bytes(b"not ours")
    return tmp_path


def run(*argv: str) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "torch_input_ckpt", *argv], env=env, capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


@pytest.mark.slow
def test_module_entry_point_prints_the_text_report(two_ranks):
    code, out, err = run("inspect", str(two_ranks))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"input checkpoints in {two_ranks}"
    assert "rank 0: steps 4, 8, 13" in lines and "rank 1: steps 4, 8, 13" in lines
    assert any(line.startswith("  input_1-00000013.json ") and line.endswith(" B  ok") for line in lines)
    assert "  checkpoint_input_0 -> step 13" in lines
    # 2 ranks x 13 batches x 2 samples = 52 samples; the epoch has 40: 12 into epoch 1.
    assert lines.count("    input (ResumableDataLoader): epoch 1, position 12 (samples into the epoch, all ranks)") == 2
    assert any(
        line.startswith("  newest: step 13 (input_0-00000013.json, ") and "world size ?" in line for line in lines
    )
    assert lines[-1] == "newest step 13 on every rank (2 ranks)"
    assert "model" not in out


def test_json_report(two_ranks, capsys):
    assert main(["inspect", str(two_ranks), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] and report["all_ranks_share_newest"] and report["newest_common_step"] == 13
    rank0 = report["ranks"][0]
    assert rank0["rank"] == 0 and rank0["steps"] == [4, 8, 13]
    assert [f["file"] for f in rank0["files"]] == [f"input_0-0000000{s}.json" for s in (4, 8)] + [
        "input_0-00000013.json"
    ]
    assert all(f["valid"] and f["bytes"] > 100 for f in rank0["files"])
    assert rank0["pointer"] == {"file": "checkpoint_input_0", "step": 13, "problem": None}
    newest = rank0["newest"]
    assert (newest["step"], newest["file"], newest["external"]) == (13, "input_0-00000013.json", [])
    assert newest["components"] == {
        "input": {
            "kind": "ResumableDataLoader",
            "epoch": 1,
            "position": 12,
            "unit": "samples into the epoch, all ranks",
            "bad_samples": [],
        }
    }
    assert newest["saved_at"].endswith("+00:00")


def test_damage_is_reported_with_its_reason_not_a_traceback(two_ranks, capsys):
    (two_ranks / "input_1-00000013.json").write_bytes(b'{"sha256": "ab", "format": ')
    assert main(["inspect", str(two_ranks)]) == 0  # rank 1 can still restore step 8
    out = capsys.readouterr().out
    assert "  input_1-00000013.json  27 B  DAMAGED: not valid JSON, truncated or garbled" in out
    assert "  newest: step 8 (input_1-00000008.json" in out
    assert "ranks DISAGREE on the newest step: rank 0 -> 13, rank 1 -> 8" in out
    assert "newest step valid on every rank: 8" in out
    assert "Traceback" not in out
    assert main(["inspect", str(two_ranks), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    rank1 = report["ranks"][1]
    assert rank1["files"][2]["valid"] is False and "not valid JSON" in rank1["files"][2]["problem"]
    assert rank1["problems"][0].startswith(f"{two_ranks / 'input_1-00000013.json'}: not valid JSON")
    assert not report["all_ranks_share_newest"] and report["newest_common_step"] == 8


def test_a_rank_without_a_valid_checkpoint_fails(two_ranks, capsys):
    for step in (4, 8, 13):
        (two_ranks / f"input_1-{step:08d}.json").write_bytes(b"")
    assert main(["inspect", str(two_ranks)]) == 1
    out = capsys.readouterr().out
    assert "  input_1-00000004.json  0 B  DAMAGED: empty file" in out
    assert "  newest: NONE VALID (restore would fail on this rank)" in out
    assert "rank 1 -> none" in out


def test_pointer_problems_are_reported(two_ranks, capsys):
    (two_ranks / "input_0-00000013.json").unlink()
    assert main(["inspect", str(two_ranks)]) == 0
    out = capsys.readouterr().out
    assert "  newest: step 8 (input_0-00000008.json" in out
    assert main(["inspect", str(two_ranks), "--json"]) == 0
    problems = json.loads(capsys.readouterr().out)["ranks"][0]["problems"]
    assert problems == [f"{two_ranks / 'checkpoint_input_0'}: names input_0-00000013.json, which does not exist"]


def test_a_directory_without_checkpoints_exits_1(tmp_path, capsys):
    (tmp_path / "model.pt").write_bytes(b"x")
    assert main(["inspect", str(tmp_path)]) == 1
    assert "none found" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ranks"] == [] and report["valid"] is False


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert f"error: {tmp_path / 'missing'} does not exist" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["inspect", str(tmp_path / "file")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["inspect"]) == 2
    assert main(["frobnicate", str(tmp_path)]) == 2
    assert "usage:" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "inspect" in capsys.readouterr().out


@pytest.mark.slow
def test_module_entry_point_exit_statuses(tmp_path):
    code, out, err = run("inspect", str(tmp_path / "missing"))
    assert code == 2 and "does not exist" in err and out == ""
    code, out, err = run("inspect", str(tmp_path))
    assert code == 1 and "none found" in out

"""``python -m torch_input_ckpt report``: per source samples, realised proportions per segment and epoch progress
of a real multi-source run (a Mixture on 2 ranks, restored on 3 with new weights), equal to what the loop
logged; its PNG exists, is non-trivial and draws the JSON's numbers; a packed stream's tokens and a skip; bad
directories get one line and an exit status, never a traceback."""

from __future__ import annotations

import json

import numpy as np
import pytest

from torch_input_ckpt import Mixture, ShardedStream
from torch_input_ckpt.__main__ import main
from torch_input_ckpt.cli import report
from torch_input_ckpt.stream.shards import write_index

from tests.support.provenance_runs import run

# 36 samples an epoch: whole batches of 3 on 2 and on 3 ranks, so no padding repeats (counted by the log, not
# by the report's positions) at epoch ends.
LENGTHS = {"web": 12, "code": 8, "math": 7, "books": 9}
FIRST = {"web": 4, "code": 2, "math": 1, "books": 3}
SECOND = {"web": 1, "code": 1, "math": 4, "books": 1}


def config(weights):
    def make():
        return Mixture({name: [(name, i) for i in range(n)] for name, n in LENGTHS.items()}, weights)

    return dict(make_dataset=make, batch_size=3, shuffle=True, every=4)


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    directory = tmp_path_factory.mktemp("report") / "run"
    first = run(directory, config(FIRST), world=2, steps=range(1, 14))  # saved at 0, 4, 8, 12; step 13 lost
    second = run(directory, config(SECOND), world=3, steps=range(1, 30), restore=True)  # 13..29, saved 16..28
    return directory, {**{s: k for s, k in first.items() if s <= 12}, **second}


def counted(delivered, last, first=1):
    counts = dict.fromkeys(LENGTHS, 0)
    for step, ranks in delivered.items():
        if first <= step <= last:
            for keys in ranks.values():
                for name, _ in keys:
                    counts[name] += 1
    return counts


def test_report_of_a_mixture_run_equals_the_log_and_its_plot_draws_it(mixture_run, tmp_path, capsys, monkeypatch):
    directory, delivered = mixture_run
    png = tmp_path / "run.png"
    drawings = []  # what the command drew, read back from the figure's lines by plot_report
    plot = report.plot_report
    monkeypatch.setattr(report, "plot_report", lambda *args: drawings.append(plot(*args)) or drawings[-1])
    assert main(["report", str(directory), "--json", "--plot", str(png)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "mixture" and data["step"] == 28 and data["history_complete"]
    # Every checkpoint on the lineage: per source samples equal to the log's up to its step.
    assert [c["step"] for c in data["checkpoints"]] == [0, 4, 8, 12, 16, 20, 24, 28]
    for point in data["checkpoints"]:
        assert point["sources"] == counted(delivered, point["step"]), point["step"]
    final = counted(delivered, 28)
    assert {n: s["samples"] for n, s in data["sources"].items()} == final and data["samples"] == sum(final.values())
    for name, source in data["sources"].items():
        assert (source["source_epoch"], source["index"]) == divmod(final[name], LENGTHS[name])
    # Two segments: the first weights up to the restore at step 12, the new ones after it.
    early, late = data["segments"]
    assert early["samples"] == counted(delivered, 12) and early["weights"] == FIRST
    assert late["samples"] == counted(delivered, 28, first=13) and late["weights"] == SECOND
    assert late["from_sample"] == early["to_sample"] == sum(counted(delivered, 12).values())
    assert [r["rank"] for r in data["ranks"]] == [0, 1, 2] and data["skipped_steps"] == []
    per_rank = [sum(len(ranks.get(r, [])) for s, ranks in delivered.items() if s <= 28) for r in range(3)]
    assert [r["samples"] for r in data["ranks"]] == per_rank and per_rank[2] < per_rank[0]
    # The PNG: a real image with the four sources' colours; the lines drawn are the JSON's numbers.
    assert png.stat().st_size > 20_000
    image = __import__("matplotlib.image", fromlist=["imread"]).imread(png)[..., :3]
    colours = {tuple(c) for c in (image.reshape(-1, 3) * 255).round().astype(int).tolist()}
    for hex_colour in ("1f77b4", "ff7f0e", "2ca02c", "d62728"):  # matplotlib's first four line colours
        assert tuple(int(hex_colour[i : i + 2], 16) for i in (0, 2, 4)) in colours, hex_colour
    (drawn,) = drawings
    for name in LENGTHS:
        assert drawn["proportions"][name] == [(c["step"], c["proportions"][name]) for c in data["checkpoints"]]
        expected = [
            (c["step"], c["progress"][name]["source_epoch"] + c["progress"][name]["fraction"])
            for c in data["checkpoints"]
        ]
        assert drawn["progress"][name] == expected


def test_report_of_a_packed_stream_with_a_skip(tmp_path, capsys):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for i, name in enumerate(["web", "code", "math"]):
        np.save(data_dir / f"{name}.npy", np.arange(20, dtype=np.int64).reshape(5, 4) + 100 * i)
    # 60 tokens: lanes of 40 and 20 tokens, packed into 8 + 4 sequences of 5: 12 an epoch, no padding repeat.
    write_index(data_dir)
    cfg = dict(
        make_dataset=lambda: ShardedStream(data_dir, lanes=2, seed=4, pack_to=5), batch_size=2, shuffle=True, every=3
    )
    first = run(tmp_path / "run", cfg, world=2, steps=range(1, 8))  # saved at 0, 3, 6
    second = run(tmp_path / "run", cfg, world=2, steps=range(1, 14), restore=True, skip_steps=2)  # 9..13, saved 12
    trained = {**{s: k for s, k in first.items() if s <= 6}, **second}
    assert main(["report", str(tmp_path / "run"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    sequences = sum(len(keys) for step, ranks in trained.items() if step <= 12 for keys in ranks.values())
    assert data["kind"] == "stream" and data["step"] == 12 and data["skipped_steps"] == [[7, 8]]
    assert data["samples"] == sequences and data["tokens"] == 5 * sequences
    per_rank = [sum(len(ranks[r]) for step, ranks in trained.items() if step <= 12) for r in range(2)]
    assert [r["samples"] for r in data["ranks"]] == per_rank
    assert main(["report", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert f"{sequences} samples consumed, {5 * sequences} tokens" in text and "skipped steps: [[7, 8]]" in text


def test_report_bad_input_is_one_line_and_an_exit_status(mixture_run, tmp_path, capsys, monkeypatch):
    directory, _ = mixture_run
    (tmp_path / "empty").mkdir()
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "input_0-00000003.json").write_text("{not json")
    cases = {
        (str(tmp_path / "missing"),): (2, "does not exist"),
        (str(tmp_path / "empty"),): (1, "no valid input checkpoint of rank 0"),
        (str(tmp_path / "garbage"),): (1, "no valid input checkpoint of rank 0"),
        (str(directory), "--component", "other"): (1, "no ResumableDataLoader component 'other'"),
        (str(directory), "--plot", str(tmp_path / "no-such-dir" / "x.png")): (2, "no-such-dir does not exist"),
    }
    for args, (status, message) in cases.items():
        assert main(["report", *args]) == status, args
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err, (args, err)
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None)  # as without the extra
    assert main(["report", str(directory), "--plot", str(tmp_path / "x.png")]) == 2
    assert "pip install 'torch-input-ckpt[plot]'" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_report_of_a_scheduled_mixture_has_one_segment_per_weights_in_force(tmp_path, capsys):
    third = {"web": 0, "code": 3, "math": 1, "books": 2}
    # 6 samples a step on 2 ranks: the changes at samples 30 (inside epoch 1) and 54 (inside epoch 2) fall after
    # steps 5 and 9; the run's last checkpoint is step 12 (72 samples).
    schedule = [(0, FIRST), (30, SECOND), (54, third)]

    def make():
        return Mixture({name: [(name, i) for i in range(n)] for name, n in LENGTHS.items()}, schedule=schedule)

    delivered = run(
        tmp_path / "run", dict(make_dataset=make, batch_size=3, shuffle=True, every=4), world=2, steps=range(1, 15)
    )
    assert main(["report", str(tmp_path / "run"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["step"] == 12
    bounds = [(s["from_sample"], s["to_sample"]) for s in data["segments"]]
    assert bounds == [(0, 30), (30, 54), (54, 72)], bounds
    assert [s["weights"] for s in data["segments"]] == [FIRST, SECOND, third]
    for segment, (first, last) in zip(data["segments"], [(1, 5), (6, 9), (10, 12)], strict=True):
        assert segment["samples"] == counted(delivered, last, first=first), segment
    assert data["segments"][2]["samples"]["web"] == 0  # a weight of 0 in force: none read

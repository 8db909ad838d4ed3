"""Pipelines saved through InputCheckpointer here and restored from the files in a fresh process (one child for
all of them, bounded): the rest of the run equals the uninterrupted one, position by position, values and
draws. The configurations are the state machine's (tests/support/pipelines.py)."""

from __future__ import annotations

import copy
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import SUPPORT, child_env
from tests.support.pipelines import Run, build_loaders, checkpointers, write_stream

CHILD = SUPPORT / "pipeline_child.py"


def _stream(fmt: str, sizes: list[int], pack_to: int | None) -> dict[str, Any]:
    return {"format": fmt, "sizes": sizes, "pack_to": pack_to, "window": 2, "seed": 1}


# (configuration, batches taken before the save): names never in alphabetical order.
CASES = {
    "plain on 2 ranks": ({"kind": "plain", "sources": {"plain": {"length": 11}}, "world": 2}, 2),
    "mixture of map sources": (
        {
            "kind": "mixture",
            "sources": {"web": {"length": 7}, "code": {"length": 5}, "math": {"length": 3}},
            "weights": {"web": 3, "code": 2, "math": 1},
            "samples_per_epoch": 12,
            "world": 1,
        },
        3,
    ),
    "mixture of streams, one packed": (
        {
            "kind": "streams",
            "sources": {"math": _stream("jsonl", [3, 0, 4], 4), "code": _stream("npy", [2, 3], None)},
            "weights": {"math": 2, "code": 1},
            "samples_per_epoch": 10,
            "world": 1,
        },
        4,
    ),
    "packed .npy stream on 3 ranks": (
        {"kind": "stream", "sources": {"web": _stream("npy", [3, 1, 4], 3)}, "world": 3},
        1,
    ),
    "unpacked JSON-lines stream": (
        {"kind": "stream", "sources": {"code": _stream("jsonl", [2, 4, 0, 3], None)}, "world": 1},
        3,
    ),
}


def _config(base: dict[str, Any], root: Path) -> dict[str, Any]:
    config = {"batch": 2, "seed": 3, "workers": 0, **copy.deepcopy(base)}
    for name, source in config["sources"].items():
        if "sizes" in source:
            source["dir"] = str(root / f"{name}-data")
            write_stream(Path(source["dir"]), name, source["format"], source["sizes"])
    return config


@pytest.mark.slow
def test_pipelines_restore_from_the_files_in_a_fresh_process(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="torch_input_ckpt")
    jobs, expected = [], []
    for k, (base, stop) in enumerate(CASES.values()):
        config = _config(base, tmp_path / f"case-{k}")
        reference = Run(config, build_loaders(config), 0, 0)
        whole = []
        while (got := reference.step()) is not None:
            whole.extend([epoch, position, value] for epoch, position, _, value in got)
        loaders = build_loaders(config)
        run = Run(config, loaders, 0, 0)
        head = sum(len(run.step() or []) for _ in range(stop))
        directory = tmp_path / f"case-{k}" / "ckpt"
        ckpts = checkpointers(directory, loaders)
        for ckpt in ckpts:
            ckpt.save(stop)
        for ckpt in ckpts:
            ckpt.close()
        jobs.append(
            {"config": config, "directory": str(directory), "step": stop, "epoch": run.epoch, "cursor": run.cursor()}
        )
        expected.append(whole[head:])
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    out = tmp_path / "out.json"
    child = subprocess.run(
        [sys.executable, str(CHILD), str(tmp_path / "jobs.json"), str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        env=child_env(),
    )
    assert child.returncode == 0, child.stderr[-3000:]
    got = json.loads(out.read_text())
    failures = [
        f"{name}: resumed {rest[:4]}..., uninterrupted {want[:4]}..."
        for name, rest, want in zip(CASES, got, expected, strict=True)
        if rest != want
    ]
    assert not failures, "\n".join(failures)

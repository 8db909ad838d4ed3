"""Smoke test of benchmarks/parquet.py (figure 12), in-process at tiny sizes: the structure of the output and that
every reader read every row, never timings."""

from __future__ import annotations

from benchmarks.harness import Config
from benchmarks.parquet import run
from benchmarks.report import render


def test_parquet_figure_structure(tmp_path) -> None:
    figures = run(Config(quick=True, reps=1, in_process=True, verbose=False), rows=300, group=100, base=str(tmp_path))
    assert [f.key for f in figures] == ["parquet"]
    fig = figures[0]
    assert len(fig.rows) == 4 and all(len(row) == len(fig.columns) for row in fig.rows)
    assert len(fig.targets) == 1 and fig.targets[0].met in (True, False)
    assert set(fig.data["rates"]) == {"plain", "plain_batches", "ours", "ours_window"}
    assert "| reader | rows/s | ratio to the row-group loop | ratio to iter_batches |" in render(
        figures, "python -m benchmarks --only parquet", 1.0, quick=True
    )

"""Smoke test of benchmarks/mixture.py (figures 9, 10 and 10b), in-process at the quick sizes: the structure of
the output and the benchmark's own check of its crafted state, never timings."""

from __future__ import annotations

from benchmarks.harness import Config
from benchmarks.mixture import run
from benchmarks.report import render


def test_mixture_figures_structure() -> None:
    figures = run(Config(quick=True, reps=1, in_process=True, verbose=False))
    assert [f.key for f in figures] == ["mixture_resume", "mixture_throughput", "mixture_streams"]
    resume, throughput, streams = figures
    assert len(streams.rows) == 2 and len(streams.targets) == 1
    assert len(resume.rows) == 3 and all(len(row) == len(resume.columns) for row in resume.rows)
    assert any("crafted" in note for note in resume.notes)
    assert len(throughput.rows) == 2 and len(throughput.targets) == 1
    assert "| pipeline |" in render(figures, "python -m benchmarks --only mixture", 1.0, quick=True)

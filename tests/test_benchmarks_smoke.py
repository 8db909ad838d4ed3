"""Smoke test of the benchmarks package: figure 2 (resume) runs in-process at tiny sizes.

It checks the shape of the output, never timings. It also exercises the benchmark's own check that the
crafted 90% states (ours and StatefulDataLoader's) equal states reached by iterating, which the
figure raises on if it fails.
"""

from __future__ import annotations

import torch

from benchmarks.harness import Config, Figure
from benchmarks.report import render
from benchmarks.resume import run


def test_resume_figure_structure() -> None:
    cfg = Config(quick=True, reps=1, in_process=True, verbose=False)
    sizes = [1_000, 5_000]
    # The StatefulDataLoader side seeds torch's global RNG: keep that from leaking into other tests.
    with torch.random.fork_rng():
        figures = run(cfg, sizes=sizes)

    assert len(figures) == 1
    fig = figures[0]
    assert isinstance(fig, Figure) and fig.key == "resume"
    assert len(fig.rows) == 2 * len(sizes)  # ours and StatefulDataLoader per N
    assert all(len(row) == len(fig.columns) for row in fig.rows)
    assert [row[1] for row in fig.rows] == ["ResumableDataLoader", "StatefulDataLoader"] * len(sizes)
    assert [t.met in (True, False) for t in fig.targets] == [True, True]
    assert set(fig.data["seconds"]["ours"]) == set(sizes) == set(fig.data["seconds"]["stateful"])
    assert all(s > 0 for side in fig.data["seconds"].values() for s in side.values())
    assert any("crafted" in note for note in fig.notes)

    markdown = render(figures, "python -m benchmarks --only resume", 1.0, quick=True)
    assert "| N | loader |" in markdown and "## Targets" in markdown


def test_every_figure_has_a_place_in_the_report() -> None:
    """``python -m benchmarks`` sorts the figures by ``_ORDER``: a figure missing there ends the run with a
    traceback after every measurement was taken (figure 10b did, until it was added)."""
    import re
    from pathlib import Path

    from benchmarks.__main__ import _ORDER

    sources = Path(__file__).resolve().parents[1].joinpath("benchmarks").glob("*.py")
    keys = {key for path in sources for key in re.findall(r'\bkey="(\w+)"', path.read_text())}
    assert len(keys) >= 19
    assert sorted(keys - set(_ORDER)) == []

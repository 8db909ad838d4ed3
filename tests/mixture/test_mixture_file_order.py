"""A Mixture resumed from its checkpoint FILE (canonical JSON, sorted keys) into fresh objects is the same
stream whatever its source names' order; a re-plan on resume says why, in one log line.

Source names are never in alphabetical order ("web", "code", "math"): a file sorts a state's dicts, so a
test whose names happen to be sorted cannot see an order lost on the way.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from torch_input_ckpt import InputCheckpointer, InputStateError
from torch_input_ckpt.store.files import InputFile

from tests.support.mixture_files import ORDERED, WEIGHTS, make_loader, rewrite, run
from tests.support.paths import child_env


def test_the_file_sorts_the_sources_and_records_their_order(tmp_path):
    run(tmp_path, WEIGHTS)
    saved = json.loads((tmp_path / InputFile(0, 10).name).read_text())
    ((state,),) = [[s for s in saved["states"].values()]]
    order_state = state["sampler"]["dataset_order"]
    assert list(order_state["sources"]) == sorted(ORDERED), "the file is canonical JSON"
    assert order_state["order"] == list(ORDERED)


def test_readme_mixture_restored_from_the_file_is_the_uninterrupted_stream(tmp_path):
    uninterrupted = run(tmp_path / "u", WEIGHTS)
    run(tmp_path / "r", WEIGHTS)
    resumed = run(tmp_path / "r", WEIGHTS, restore=10)
    assert resumed[11] == uninterrupted[11]
    assert resumed == {s: b for s, b in uninterrupted.items() if s > 10}


@pytest.mark.parametrize("order", [("math", "web", "code"), ("code", "math", "web")])
def test_another_order_of_the_same_sources_keeps_the_stream(tmp_path, order):
    uninterrupted = run(tmp_path / "u", WEIGHTS)
    run(tmp_path / "r", WEIGHTS)
    resumed = run(tmp_path / "r", WEIGHTS, restore=10, order=order)
    assert resumed == {s: b for s, b in uninterrupted.items() if s > 10}


def test_the_interrupted_epoch_has_the_promised_counts(tmp_path):
    first = run(tmp_path, WEIGHTS)
    resumed = run(tmp_path, WEIGHTS, restore=10)
    # Epoch 0 is 12 batches (11 of 8 and one of 7): steps 1..10 before the restore, 11..12 after it.
    epoch_0 = [item for step in range(1, 13) for item in (first if step <= 10 else resumed)[step]]
    counts = {name: sum(item.startswith(name) for item in epoch_0) for name in ORDERED}
    assert counts == {"web": 67, "code": 19, "math": 9}


def test_an_older_state_without_the_order_takes_the_current_one(tmp_path):
    """A file written before the order was recorded: same names as now -> the current order (same code)."""
    uninterrupted = run(tmp_path / "u", WEIGHTS)
    run(tmp_path / "r", WEIGHTS)
    path = tmp_path / "r" / InputFile(0, 10).name
    document = json.loads(path.read_text())
    for state in document["states"].values():
        del state["sampler"]["dataset_order"]["order"]
    rewrite(path, document)
    resumed = run(tmp_path / "r", WEIGHTS, restore=10)
    assert resumed == {s: b for s, b in uninterrupted.items() if s > 10}


def test_fresh_process_restores_the_readme_example(tmp_path):
    uninterrupted = run(tmp_path / "u", WEIGHTS)
    run(tmp_path / "r", WEIGHTS)
    script = textwrap.dedent(
        f"""
        import json
        from tests.support.mixture_files import WEIGHTS, run
        from pathlib import Path
        print(json.dumps(run(Path({str(tmp_path / "r")!r}), WEIGHTS, restore=10)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env=child_env(),
    )
    resumed = {int(s): b for s, b in json.loads(done.stdout.splitlines()[-1]).items()}
    assert resumed == {s: b for s, b in uninterrupted.items() if s > 10}


# -- a re-plan says why ------------------------------------------------------------------------------


def _replans(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "torch_input_ckpt" and "plan is new" in r.getMessage()]


@pytest.mark.parametrize(
    ("weights", "order", "expected", "level"),
    [
        ({"web": 5, "code": 3, "math": 2}, ORDERED, "weights changed", logging.INFO),
        ({"web": 0.3, "code": 0.1 + 0.2, "math": 0.3}, ORDERED, "float rounding", logging.WARNING),
        ({"web": 7, "code": 2}, ("web", "code"), "sources removed: ['math']", logging.INFO),
    ],
)
def test_a_replan_on_resume_logs_one_line_saying_why(tmp_path, caplog, weights, order, expected, level):
    first = {"web": 0.3, "code": 0.3, "math": 0.3} if expected == "float rounding" else WEIGHTS
    run(tmp_path, first)
    caplog.set_level(logging.INFO, logger="torch_input_ckpt")
    loader = make_loader(weights, order)
    with InputCheckpointer(tmp_path, loader, every_n_steps=1) as ckpt:
        ckpt.restore(10)
    (record,) = _replans(caplog)
    assert expected in record.getMessage() and record.levelno == level
    assert "\n" not in record.getMessage()


def test_a_kept_plan_logs_nothing(tmp_path, caplog):
    run(tmp_path, WEIGHTS)
    caplog.set_level(logging.INFO, logger="torch_input_ckpt")
    loader = make_loader({"web": 14, "code": 4, "math": 2}, ("math", "code", "web"))  # same proportions
    with InputCheckpointer(tmp_path, loader, every_n_steps=1) as ckpt:
        ckpt.restore(10)
    assert _replans(caplog) == []
    (kept,) = [r for r in caplog.records if r.name == "torch_input_ckpt" and "matched by name" in r.getMessage()]
    assert "['math', 'code', 'web']" in kept.getMessage() and "['web', 'code', 'math']" in kept.getMessage()


def test_an_older_state_without_the_order_refuses_other_sources(tmp_path):
    run(tmp_path, WEIGHTS)
    path = tmp_path / InputFile(0, 10).name
    document = json.loads(path.read_text())
    for state in document["states"].values():
        del state["sampler"]["dataset_order"]["order"]
    rewrite(path, document)
    loader = make_loader({"web": 7, "code": 2}, ("web", "code"))
    with InputCheckpointer(tmp_path, loader, every_n_steps=1) as ckpt, pytest.raises(InputStateError) as error:
        ckpt.restore(10)
    assert "does not record the order of its sources" in str(error.value)

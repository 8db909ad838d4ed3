"""The commands under hostile arguments: every range and number bounded before the work, named errors with
documented exit codes, never a traceback; ``samples`` racing a saver at ``keep_last=1`` re-lists as restore
re-plans. Resource cases run in a child with ``RLIMIT_AS`` and a timeout."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from torch_input_ckpt import InputCheckpointer, ResumableDataLoader
from torch_input_ckpt.__main__ import main
from torch_input_ckpt.provenance import history
from torch_input_ckpt.provenance.history import Provenance, samples_at
from torch_input_ckpt.store import files

from tests.support.provenance_runs import run

CONFIG = dict(length=30, batch_size=3, shuffle=True, every=5)
# Literal, so that this file also runs (and fails) against a version without the bounds.
STEPS, EPOCHS = 10_000, 1_000

# A child that runs the command in-process for each argument list, each under an alarm, and reports the
# exit status and stderr (or the traceback's last line) as JSON: one interpreter start for many cases.
CHILD = r"""
import contextlib, io, json, resource, signal, sys, traceback
resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))
from torch_input_ckpt.__main__ import main
def alarm(signum, frame):
    raise TimeoutError("still running after 20 s")
signal.signal(signal.SIGALRM, alarm)
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    signal.alarm(20)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(argv)
    except BaseException as error:
        code, err = "raised", io.StringIO(traceback.format_exc(limit=2))
    signal.alarm(0)
    results.append({"argv": argv, "code": code, "stderr": err.getvalue(), "out_bytes": len(out.getvalue())})
print(json.dumps(results))
"""


def child(cases: list[list[str]], timeout: int = 240) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cases)], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("samples") / "run"
    run(directory, CONFIG, world=2, steps=range(1, 23))
    return directory


def test_samples_bounds_every_range_and_number_before_the_work(run_dir):
    """Each case answered in well under the alarm with exit 2 and a message naming the bound and the value:
    before, 1:10**12 was a MemoryError traceback (3 GB limit), 1:3000000 and --epochs 0:10**12 ran for
    minutes, and 10**27 was answered (rc 0) as if it were a step of the run."""
    d = str(run_dir)
    huge = str(10**27)
    expected = {
        ("--steps", "1:1000000000000"): f"more than the bound of {STEPS}",
        ("--steps", "1:3000000"): f"asks for 2999999 values, more than the bound of {STEPS}",
        ("--sample", "7", "--epochs", "0:1000000000000"): f"more than the bound of {EPOCHS}",
        ("--sample", "7", "--epochs", f"0:{huge}"): "--epochs takes A:B with 0 <= A < B <=",
        ("--step", huge): f"--step {huge} is out of range; expected 1 <= step <= {files.MAX_STEP}",
        ("--sample", huge): f"--sample {huge} is out of range",
        ("--rank", huge, "--step", "3"): f"--rank {huge} is out of range",
        ("--batches-per-step", huge, "--step", "3"): "--batches-per-step",
        ("--step", str(2**62)): "past the bound of",
        ("--steps", f"1:{'9' * 5000}"): "--steps takes A:B with 1 <= A < B <= 9223372036854775808 (got <5002 chara",
        ("--steps", "1:x"): "--steps takes A:B, two integers (got 1:x)",
    }
    results = child([["samples", d, *args] for args in expected])
    for (args, message), result in zip(expected.items(), results, strict=True):
        assert result["code"] == 2, (args, result)
        assert message in result["stderr"], (args, result["stderr"])
        assert "Traceback" not in result["stderr"]
        assert result["stderr"].count("\n") == 1, "one line"


def test_commands_never_print_a_traceback_and_exit_with_their_documented_codes(tmp_path, run_dir):
    """Through `python -m torch_input_ckpt`: a missing directory (samples: before, a FileNotFoundError
    traceback with exit 1), a file that is not a tar for `index` (before, a ReadError traceback)."""
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-0.tar").write_bytes(b"not a tar archive at all" * 40)
    cases = {
        ("samples", str(tmp_path / "missing"), "--step", "3"): (2, "does not exist"),
        ("inspect", str(tmp_path / "missing")): (2, "does not exist"),
        ("index", str(shards)): ((2, 3), "part-0.tar"),
    }
    for args, (codes, message) in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "torch_input_ckpt", *args], capture_output=True, text=True, timeout=120
        )
        assert result.returncode in (codes if isinstance(codes, tuple) else (codes,)), (args, result)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        if result.returncode != 3:  # an internal error names the exception, whatever it says
            assert message in result.stderr, (args, result.stderr)


def test_an_unexpected_error_in_samples_is_one_line_with_exit_3(run_dir, monkeypatch, capsys):
    def broken(self, step, rank=None):
        raise RuntimeError("an unexpected failure\nover two lines")

    monkeypatch.setattr(Provenance, "step", broken)
    assert main(["samples", str(run_dir), "--step", "3"]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "an unexpected failure" in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_long_range_is_streamed_as_one_json_array(run_dir, capsys):
    assert main(["samples", str(run_dir), "--steps", "3:40", "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    assert [a["step"] for a in answers] == list(range(3, 40))
    assert answers[0] == samples_at(run_dir, 3).to_dict()


def test_samples_relists_when_the_newest_file_is_pruned_between_listing_and_reading(tmp_path, monkeypatch):
    """The interleaving of the race, made certain: a saver at keep_last=1 commits step s+1 (pruning s)
    right after `samples` listed s. Before, that answer was "no valid input checkpoint of rank 0"."""
    loader = ResumableDataLoader(list(range(1000)), batch_size=4, shuffle=True, seed=2)
    stream = iter(loader)
    ckpt = InputCheckpointer(tmp_path, loader, every_n_steps=1, keep_last=1)
    ckpt.save(1)
    ckpt.flush()
    listing = files.list_steps
    saved = []

    def list_then_save(directory):
        found = listing(directory)
        if not saved:  # once: the saver commits the next step between our listing and our reading
            saved.append(2)  # first: the saver's own pruning lists too
            next(stream)
            ckpt.save(2)
            ckpt.flush()
        return found

    monkeypatch.setattr(files, "list_steps", list_then_save)
    try:
        provenance = Provenance(tmp_path, batches_per_step=1)
    finally:
        ckpt.close()
    assert saved == [2] and provenance.newest is not None and provenance.newest.step == 2


def test_samples_racing_a_saver_at_keep_last_1_always_answers(tmp_path):
    """A bounded race (300 saves in a thread, keep_last=1): every `samples` question made meanwhile is
    answered from a committed checkpoint."""
    loader = ResumableDataLoader(list(range(10**5)), batch_size=4, shuffle=True, seed=4)
    ckpt = InputCheckpointer(tmp_path, loader, every_n_steps=1, keep_last=1)
    ckpt.save(0)
    ckpt.flush()
    done = threading.Event()
    stream = iter(loader)

    def save_repeatedly():
        try:
            for step in range(1, 301):
                next(stream)
                ckpt.save(step)
        finally:
            ckpt.close()
            done.set()

    saver = threading.Thread(target=save_repeatedly)
    saver.start()
    failures, answers = [], 0
    try:
        while not done.is_set():
            try:
                Provenance(tmp_path, batches_per_step=1)
            except Exception as error:  # noqa: BLE001 - any failure is the finding
                failures.append(repr(error))
            answers += 1
    finally:
        saver.join(timeout=120)
    assert answers > 0 and failures == []


def test_the_bounds_are_the_librarys():
    assert (history.MAX_STEPS_PER_QUERY, history.MAX_EPOCHS_PER_QUERY) == (STEPS, EPOCHS)


def test_exit_codes_are_documented_in_the_help(capsys):
    assert main(["samples", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("0 on an answer", "1 when the checkpoints do not record", "2 for usage errors", "3 for an internal"):
        assert phrase in text

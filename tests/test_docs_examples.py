"""The examples the docs pages include (`--8<-- "examples/NAME.py"`) run and resume exactly: an uninterrupted run,
then a fresh process resuming from the files it wrote (from its newest model checkpoint, or an earlier one: a
rollback), whose data must equal the uninterrupted run's from the resume point on. The first run is made in this
process (tests/support/examples.py: the interpreter's start-up and torch's imports are paid once per session) unless
it ends with DataLoader workers still running (forked from this threaded process, they take seconds to shut down,
where a process that ends kills them at once); the resume is always a fresh process, which is what the docs
promise. Every example a page includes is run by a test here or in tests/test_readme_examples.py."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.support.examples import run_fresh as run
from tests.support.examples import run_here

# The repository root, wherever this file sits under tests/.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
INCLUDE = re.compile(r'^--8<-- "([^":]+)(?::\w+)?"$', re.MULTILINE)  # a file, or a section of it: "FILE:NAME"
# Each example a docs page includes, and the test that runs it (a test function somewhere under tests/).
RUN_BY = {
    "examples/quickstart.py": "test_quickstart_resumes_from_the_model_step",
    "examples/stream_packing.py": "test_stream_packing_resumes_every_token_once",
    "examples/lightning_quickstart.py": "test_lightning_quickstart_resumes_exactly",
    "examples/hf_trainer.py": "test_hf_trainer_example_resumes_exactly",
    "examples/accelerate_loop.py": "test_accelerate_example_resumes_exactly",
    "examples/rng_objects.py": "test_rng_objects_follow_the_sample",
    "examples/provenance.py": "test_provenance_example_computes_the_steps_and_skips_them",
    "examples/mixture_quickstart.py": "test_mixture_quickstart_resumes_from_the_file_in_a_fresh_process",
    "examples/mixture_schedule.py": "test_a_fresh_process_resumes_the_example_exactly_at_a_change",
    "examples/stream_quickstart.py": "test_stream_quickstart_resumes_from_the_file_in_a_fresh_process_with_workers",
    "examples/stream_cache.py": "test_cache_example_resumes_in_a_fresh_process_through_the_same_cache",
    "examples/dcp_loader.py": "test_dcp_save_then_load_on_the_same_and_on_another_number_of_ranks",
    "examples/torchtitan_dcp.py": "test_checkpoint_manager_sigkill_then_resume_on_another_dp_degree",
    "examples/testing_own_dataset.py": "test_testing_example_passes_the_reseeded_dataset_and_catches_its_own_generator",
    "examples/bad_samples.py": "test_bad_samples_example_resumes_in_a_fresh_process",
    "examples/steering_provenance.py": "test_steering_example_finds_the_documents_of_a_step_and_reports_the_anneal",
    "examples/hf_datasets.py": "test_hf_datasets_example_resumes_both_loaders_in_a_fresh_process",
    "examples/object_storage.py": "test_object_storage_example_resumes_downloading_only_the_shards_left",
    "examples/checkpoint_s3.py": "test_checkpoint_s3_example_resumes_from_the_objects_in_a_fresh_process",
}


def included_files() -> dict[str, list[Path]]:
    """Every file a docs page includes, with the pages that include it."""
    out: dict[str, list[Path]] = {}
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for path in INCLUDE.findall(page.read_text()):
            out.setdefault(path, []).append(page)
    return out


def test_every_included_example_exists_and_is_run_by_a_test():
    included = included_files()
    examples = {path for path in included if path.startswith("examples/")}
    assert "examples/quickstart.py" in examples, "the getting-started page lost its quick start"
    for path, pages in included.items():
        assert (ROOT / path).is_file(), f"{pages} include {path}, which does not exist"
    not_run = sorted(examples - set(RUN_BY))
    assert not not_run, f"docs pages include examples no test runs: {not_run}"
    tests = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("test_*.py"))
    for path in examples:
        assert f"def {RUN_BY[path]}(" in tests, f"{path}: the test {RUN_BY[path]} that runs it does not exist"


def run_first(capfd: pytest.CaptureFixture[str], name: str, *args: object, cwd: Path | None = None) -> list[str]:
    """An example's first run, in this process: its stdout lines (subprocesses it starts included)."""
    capfd.readouterr()
    run_here(name, *args, cwd=cwd, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return capfd.readouterr().out.splitlines()


def by_step(lines: list[str]) -> list[tuple[int, str]]:
    """Lines that start with a step number, as (step, the whole line)."""
    return [(int(line.split()[0]), line) for line in lines if line.split() and line.split()[0].isdigit()]


@pytest.mark.slow
def test_quickstart_resumes_from_the_model_step(tmp_path, capfd):
    uninterrupted = run_first(capfd, "quickstart.py", tmp_path)
    steps = by_step(uninterrupted)
    assert [s for s, _ in steps] == list(range(1, 40)), "3 epochs of 13 batches"
    # Run again, a fresh process (as after a kill at any step after 30): the newest model checkpoint is step 30,
    # mid-epoch 2.
    resumed, log = run("quickstart.py", tmp_path)
    assert "input_0-00000030.json at step 30, epoch 2" in log, "resumed from the input checkpoint of the model's step"
    # Model and data restored: steps 31.. train on the same samples and draws, so their losses are the same.
    assert by_step(resumed) == steps[30:], "the resumed run differs from the uninterrupted one"


@pytest.mark.slow
def test_stream_packing_resumes_every_token_once(tmp_path, capfd):
    first = run_first(capfd, "stream_packing.py", tmp_path, cwd=tmp_path)
    assert first[0].startswith("indexed 3 shards, 15 samples, 91 tokens")
    assert first[1] == "12 packed sequences of 8 tokens an epoch"
    head = [*ast.literal_eval(first[2]), *ast.literal_eval(first[3])]
    second, log = run("stream_packing.py", tmp_path, cwd=tmp_path)
    assert "at step 2" in log
    rest, uninterrupted = (ast.literal_eval(line) for line in second)
    epoch = [seq for batch in uninterrupted for seq in batch]
    assert head + [seq for batch in rest for seq in batch] == epoch, "the resumed epoch differs (another num_workers)"
    assert len(epoch) == 12
    # Token 100 * doc + t is token t of document doc: every token of every document once, at its position.
    seen = Counter()
    for input_ids, position_ids, document_ids in epoch:
        for token, position, document in zip(input_ids, position_ids, document_ids, strict=True):
            if document == -1:
                continue
            assert token % 100 == position, f"token {token} at position {position}"
            seen[token] += 1
    expected = {
        100 * (10 * s + d) + t for s in range(3) for d in range(4 + s) for t in range((7 * (10 * s + d)) % 11 + 1)
    }
    assert not [t for t, n in seen.items() if n > 1], "a token packed twice"
    assert set(seen) == expected, "a token missing or unknown"


@pytest.mark.slow
def test_lightning_quickstart_resumes_exactly(tmp_path, capfd):
    uninterrupted = run_first(capfd, "lightning_quickstart.py", tmp_path)
    steps = by_step(uninterrupted)
    assert [s for s, _ in steps] == list(range(1, 21)), "20 steps, over 2 epochs of 10 batches"
    models = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert "epoch=0-step=6.ckpt" in models and "epoch=1-step=18.ckpt" in models, models
    # A fresh process, from the model checkpoint of step 6 (a rollback; after a kill it would be the newest).
    resumed, log = run("lightning_quickstart.py", tmp_path, 6)
    assert "input_0-00000006.json at step 6" in log, "the input checkpoint of the model's step"
    assert by_step(resumed) == steps[6:], "steps 7.. differ from the uninterrupted run (samples or draws)"


@pytest.mark.slow
def test_hf_trainer_example_resumes_exactly(tmp_path):
    uninterrupted, _ = run("hf_trainer.py", tmp_path)  # stopped mid-epoch with live workers: a process of its own
    steps = by_step(uninterrupted)
    assert [s for s, _ in steps] == [s for s in range(1, 13) for _ in range(2)], "2 micro-batches per step"
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint-"))
    assert kept == ["checkpoint-12", "checkpoint-8"], "save_total_limit=2"
    resumed, _ = run("hf_trainer.py", tmp_path, tmp_path / "checkpoint-8")
    # From checkpoint-8: every micro-batch of steps 9..12 holds the uninterrupted run's samples and draws.
    assert by_step(resumed) == steps[16:], "the resumed run differs from the uninterrupted one"


@pytest.mark.slow
def test_accelerate_example_resumes_exactly(tmp_path):
    uninterrupted, _ = run("accelerate_loop.py", tmp_path)  # live workers at its end: a process of its own
    steps = by_step(uninterrupted)
    assert [s for s, _ in steps] == list(range(1, 21)), "2 epochs of 10 batches"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-10", "step-15", "step-20", "step-5"]
    resumed, _ = run("accelerate_loop.py", tmp_path, 5)  # load_state of step 5, in a fresh process
    assert by_step(resumed) == steps[5:], "steps 6.. differ from the uninterrupted run (samples or draws)"


@pytest.mark.slow
def test_rng_objects_follow_the_sample(tmp_path):
    first, _ = run("rng_objects.py", tmp_path / "ckpt")  # "preempted" with 2 live workers: a process that ends
    head = [ast.literal_eval(line) for line in first]
    assert len(head) == 2, "preempted after two batches"
    second, log = run("rng_objects.py", tmp_path / "ckpt")
    assert "at step 2" in log
    rest, uninterrupted = (ast.literal_eval(line) for line in second)
    assert head + rest == uninterrupted, "2 workers then none: other samples or draws"
    assert sorted(i for batch in uninterrupted for i, _ in batch) == list(range(24))
    assert len({draw for batch in uninterrupted for _, draw in batch}) == 24, "every sample its own draw"


@pytest.mark.slow
def test_provenance_example_computes_the_steps_and_skips_them(tmp_path, capfd, caplog):
    lines = run_first(capfd, "provenance.py", tmp_path / "ckpt")  # one run: its `samples` commands are subprocesses
    log = caplog.text
    trained, computed = ast.literal_eval(lines[0]), ast.literal_eval(lines[1])
    assert trained == computed and len(trained) == 8, "samples_at(113) is what step 113 trained on"
    assert lines[2] == "step 113: epoch 0, 2 batch(es) per rank, 1 rank(s), from the checkpoint of step 100"
    assert lines[3].split() == ["rank", "0:", *map(str, trained)]
    step, predicted, first = lines[4].split(" ", 2)
    assert (step, predicted) == ("120", "True"), "after the skip, step 121 trains on what samples_at(121) said"
    assert not set(ast.literal_eval(first)) & set(trained), "a sample of a skipped step came back in epoch 0"
    assert "(SKIPPED on a restore" in lines[5], "samples marks the skipped step"
    assert "skipped steps 101..120" in log


@pytest.mark.slow
def test_steering_example_finds_the_documents_of_a_step_and_reports_the_anneal(tmp_path):
    lines, stderr = run("steering_provenance.py", tmp_path)  # a fresh process: computed from the files alone
    documents = ast.literal_eval(lines[0])
    assert len(documents) == 4 and all(name.startswith("part") for name, _ in documents)
    assert lines[1:3] == ["True", "45 True"], "samples_at(43) named the step's documents; the skip resumed at 46"
    assert "skipped steps 41..45" in stderr
    before, after = (line for line in lines if line.startswith("  segment samples"))
    assert before.startswith("  segment samples 0..240 (weights {'web': 6, 'code': 3, 'books': 1}): web 5")
    assert "books 9." in before
    assert "(weights {'web': 2, 'code': 2, 'books': 6}): web 2" in after and "books 5" in after
    assert (tmp_path / "mixture.png").stat().st_size > 20_000


@pytest.mark.slow
def test_testing_example_passes_the_reseeded_dataset_and_catches_its_own_generator(capfd):
    # In this process: the check itself restores into fresh objects, with and without workers.
    lines = run_first(capfd, "testing_own_dataset.py")
    assert lines[:2] == [
        "Augmented: 6 batches over 2 epochs, resumed exactly at every stop",
        "Augmented: resumed with 2 workers after 4 batches, the same run",
    ]
    assert lines[2].startswith("OwnGenerator: resumed after 1 batches (mid-epoch 0), the run diverged")
    assert lines[3].startswith("  values: the same samples in the same order, with other values in 5 batches")
    assert len(lines) == 4, "the failure lists nothing missing, duplicated or reordered: only the values"

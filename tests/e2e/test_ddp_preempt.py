"""SIGKILL a whole torchrun job at a random moment, resume it (same or another world size): the
surviving timeline trains each sample of the epoch exactly once. Runs examples/train_ddp.py, so the
demo that the README shows is what is tested."""

from __future__ import annotations

import random

import pytest

from examples.ddp_demo import DATASET_SIZE, preempt_and_resume


@pytest.mark.slow
@pytest.mark.parametrize("second_world", [2, 3])
def test_sigkill_whole_job_at_a_random_step_then_resume(tmp_path, second_world):
    kill_after = random.Random().randint(6, 25)  # the step is printed on failure by the assertion message
    seen, padding = preempt_and_resume(tmp_path, 2, second_world, kill_after)
    missing = sorted(set(range(DATASET_SIZE)) - set(seen))
    twice = sorted(i for i, c in seen.items() if c > 1)
    assert not missing, f"killed after step {kill_after}: missing {missing}"
    assert len(twice) == padding and max(seen.values()) <= 2, (
        f"killed after step {kill_after}: trained twice {twice}, expected only {padding} padding duplicates"
    )

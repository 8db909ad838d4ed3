"""``samples`` for a Mixture: ``(source, index)`` per key, equal to what the real loader delivered, across
mixture epochs, on 1 and 3 ranks and after a resharding restore; ``--sample SOURCE:INDEX`` equal to the steps
the loop logged."""

from __future__ import annotations

import pytest

from torch_input_ckpt import Mixture
from torch_input_ckpt.provenance.history import Provenance

from tests.support.provenance_runs import run

LENGTHS = {"a": 7, "b": 11, "c": 13}
WEIGHTS = {"a": 0.5, "b": 0.2, "c": 0.3}


def make_mixture() -> Mixture:
    # Items say what they are: (source, index), as samples reports keys.
    return Mixture({name: [(name, i) for i in range(n)] for name, n in LENGTHS.items()}, WEIGHTS)


CONFIG = dict(make_dataset=make_mixture, batch_size=2, shuffle=True, every=5)  # 31 samples an epoch


def check(directory, delivered):
    provenance = Provenance(directory)
    epochs = set()
    for step, by_rank in delivered.items():
        answer = provenance.step(step)
        assert dict(answer.keys) == by_rank, f"step {step}"
        epochs.update(answer.epochs)
    assert len(epochs) >= 3
    return provenance


@pytest.mark.parametrize("world", [1, 3])
def test_mixture_samples_equal_the_recorded_run(tmp_path, world):
    delivered = run(tmp_path, CONFIG, world=world, steps=range(1, 31 if world == 3 else 50))
    provenance = check(tmp_path, delivered)
    assert provenance.configuration()["mixture_sources"] == make_mixture().counts()
    last = max(delivered)
    for key in [("b", 3), ("c", 12), ("a", 0)]:
        logged = sorted((s, r) for s, ranks in delivered.items() for r, keys in ranks.items() for k in keys if k == key)
        found = sorted((o.step, o.rank) for o in provenance.sample(key, range(0, 8)) if o.step <= last)
        assert logged and found == logged, key
    with pytest.raises(ValueError, match="NAME:NUMBER"):
        provenance.sample(3, range(0, 2))
    with pytest.raises(ValueError, match="not one of the mixture's sources"):
        provenance.sample(("web", 3), range(0, 2))


def test_mixture_resharded_2_to_3(tmp_path):
    first = run(tmp_path, CONFIG, world=2, steps=range(1, 13))  # saved at 5, 10
    second = run(tmp_path, CONFIG, world=3, steps=range(1, 31), restore=True)
    check(tmp_path, {**{s: k for s, k in first.items() if s <= 10}, **second})


def test_mixture_skip_equals_the_uninterrupted_run_without_those_steps(tmp_path):
    uninterrupted = run(tmp_path / "u", CONFIG, world=2, steps=range(1, 40))
    run(tmp_path / "a", CONFIG, world=2, steps=range(1, 13))  # saved at 5, 10
    resumed = run(tmp_path / "a", CONFIG, world=2, steps=range(1, 40), restore=True, skip_steps=9)  # over an epoch end
    assert min(resumed) == 20
    assert resumed == {step: keys for step, keys in uninterrupted.items() if step >= 20}

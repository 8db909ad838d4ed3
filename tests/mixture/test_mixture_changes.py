"""Mixture changes on resume: new weights, a new source, a removed and re-added source, a grown source,
each with its exactly-once check per source epoch; and the refusals, each naming both values and the fix."""

from __future__ import annotations

from fractions import Fraction

import pytest

from torch_input_ckpt import InputStateError
from torch_input_ckpt.mixture.layout import largest_remainder

from tests.support.mixture_data import LENGTHS, WEIGHTS, by_source, check_source_epochs, ids, loader, mixture
from tests.support.resume import check_resume, epochs_of, roundtrip

N = sum(LENGTHS.values())


def _run(pieces: list[tuple[dict, int | None]], epochs: int) -> tuple[list[tuple[int, dict]], list[dict]]:
    """Run the loaders of ``pieces`` one after the other, each built from its mixture options and run
    for its number of samples (None: to the end of ``epochs``), each loading the state the previous
    one saved. Returns the whole stream and the states."""
    stream: list[tuple[int, dict]] = []
    states: list[dict] = []
    for options, samples in pieces:
        current = loader(mixture(**options), batch_size=1)
        if states:
            current.load_state_dict(states[-1])
        taken = 0
        if samples != 0:
            for item in epochs_of(current, epochs):
                stream.append(item)
                taken += 1
                if taken == samples:
                    break
        states.append(roundtrip(current.state_dict()))
    return stream, states


def _per_epoch_counts(stream: list[tuple[int, dict]]) -> dict[int, dict[str, int]]:
    out: dict[int, dict[str, int]] = {}
    for epoch in {e for e, _ in stream}:
        items = by_source(ids(s for s in stream if s[0] == epoch))
        out[epoch] = {name: len(v) for name, v in items.items()}
    return out


def test_new_weights_take_effect_at_the_resume_point():
    new = {"a": 0.1, "b": 0.6, "c": 0.3}
    stop = 12
    stream, states = _run([({}, stop), ({"weights": new}, None)], epochs=4)
    head = ids(stream[:stop])
    assert head == ids(list(epochs_of(loader(batch_size=1), 1))[:stop]), "the run before the change"
    delivered = by_source(ids(stream))
    for name, length in LENGTHS.items():
        check_source_epochs(name, delivered[name], length)
    # The rest of epoch 0 follows the new weights over what was left of it; later epochs over all of it.
    before = {name: len(v) for name, v in by_source(head).items()}
    rest = largest_remainder([Fraction(new[k]) for k in LENGTHS], N - stop)
    counts = _per_epoch_counts(stream)
    assert counts[0] == {k: before.get(k, 0) + r for k, r in zip(LENGTHS, rest, strict=True)}
    full = dict(zip(LENGTHS, largest_remainder([Fraction(new[k]) for k in LENGTHS], N), strict=True))
    assert counts[1] == counts[2] == counts[3] == full
    # The state saved after the change resumes exactly (the new plan is kept, not re-anchored again).
    expected = list(epochs_of(_loaded(new, states[0]), 3))
    check_resume(lambda: _loaded(new, states[0]), 20, 3, expected=expected)


def _loaded(weights: dict, state: dict):
    current = loader(mixture(weights=weights), batch_size=1)
    current.load_state_dict(state)
    return current


def test_a_new_source_starts_at_its_first_source_epoch():
    lengths = {**LENGTHS, "d": 5}
    weights = {**WEIGHTS, "d": 0.25}
    stream, _ = _run([({}, 40), ({"lengths": lengths, "weights": weights, "samples_per_epoch": N}, None)], epochs=5)
    delivered = by_source(ids(stream))
    for name, length in lengths.items():
        check_source_epochs(name, delivered[name], length)
    assert "d" not in by_source(ids(stream[:40])) and len(delivered["d"]) > 2 * 5


def test_a_removed_source_continues_where_it_stopped_when_added_back():
    without_b = {"lengths": {"a": 7, "c": 13}, "weights": {"a": 0.5, "c": 0.5}, "samples_per_epoch": N}
    back = {"samples_per_epoch": N}
    stream, states = _run([({}, 17), (without_b, 30), (back, None)], epochs=5)
    assert "b" in states[1]["sampler"]["dataset_order"]["retired"], "the removed source's cursor is kept"
    assert "b" not in by_source(ids(stream[17:47]))
    delivered = by_source(ids(stream))
    for name, length in LENGTHS.items():
        check_source_epochs(name, delivered[name], length)


@pytest.mark.parametrize("stop", [9, 31])
def test_a_grown_source_finishes_its_source_epoch_over_the_old_length(stop):
    grown = {"lengths": {**LENGTHS, "c": 17}, "samples_per_epoch": N, "allow_growth": True}
    stream, _ = _run([({"samples_per_epoch": N}, stop), (grown, None)], epochs=5)
    delivered = by_source(ids(stream))
    before = len(by_source(ids(stream[:stop])).get("c", []))
    old_epochs = -(-before // 13)  # the source epoch in progress finishes over 13 items
    check_source_epochs("c", delivered["c"], [13] * old_epochs + [17])
    assert max(delivered["c"]) == 16, "the grown items are delivered"
    for name in ("a", "b"):
        check_source_epochs(name, delivered[name], LENGTHS[name])


def test_samples_per_epoch_may_change_at_an_epoch_boundary():
    stream, _ = _run([({}, N), ({"samples_per_epoch": 40}, None)], epochs=4)
    counts = _per_epoch_counts(stream)
    assert sum(counts[0].values()) == N and sum(counts[1].values()) == 40
    delivered = by_source(ids(stream))
    for name, length in LENGTHS.items():
        check_source_epochs(name, delivered[name], length)


def _state_after(samples: int, **options) -> dict:
    _, states = _run([(options, samples)], epochs=3)
    return states[0]


def test_refusals_name_both_values_and_the_fix():
    state = _state_after(10, samples_per_epoch=N)
    with pytest.raises(
        InputStateError, match=r"samples_per_epoch=31.*samples_per_epoch=40.*Resume with samples_per_epoch=31"
    ):
        loader(mixture(samples_per_epoch=40), batch_size=1).load_state_dict(state)
    shrunk = mixture(lengths={**LENGTHS, "b": 10}, samples_per_epoch=N)
    with pytest.raises(InputStateError, match=r"'b' was saved with length=11, but has length=10.*not shrink"):
        loader(shrunk, batch_size=1).load_state_dict(state)
    grown = mixture(lengths={**LENGTHS, "b": 12}, samples_per_epoch=N)
    with pytest.raises(InputStateError, match=r"'b' was saved with length=11, but has length=12.*allow_growth=True"):
        loader(grown, batch_size=1).load_state_dict(state)

"""Weight schedules (issue 26): exact counts per piece of an epoch, exactly once per source epoch over a whole
run across the changes, resumes through the checkpoint FILE at and around every change (and with workers), a
new schedule on resume replacing the rest, 2 -> 3 ranks across a change with ``samples`` answering what the
loop delivered, a fresh process resuming exactly at a change, and ``with_origin`` through the default collate.

Source names are never sorted (web, code, math, books); books has one item."""

from __future__ import annotations

import json
import os
import runpy
from collections import Counter
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from torch_input_ckpt import InputCheckpointer, InputStateError, Mixture, ResumableDataLoader, Sourced
from torch_input_ckpt.mixture.sources import SourceCursor, SourceTable, source_seed
from torch_input_ckpt.provenance.history import Provenance
from torch_input_ckpt.testing import assert_equal_output_after_checkpoint, roundtrip_state

from tests.support.examples import EXAMPLES, run_fresh, run_here
from tests.support.provenance_runs import run as run_ranks

LENGTHS = {"web": 13, "code": 7, "math": 5, "books": 1}
TOTAL = 26  # samples an epoch
# A change mid-epoch 0, one exactly at epoch 2's start, one mid-epoch 2; books and math get 0 in some pieces.
SCHEDULE = [
    (0, {"web": 3, "code": 1, "math": 1, "books": 0}),
    (10, {"web": 1, "code": 3, "math": 0, "books": 1}),
    (52, {"web": 1, "code": 1, "math": 2, "books": 1}),
    (61, {"web": 0, "code": 0, "math": 1, "books": 1}),
]
EPOCHS = 4
BATCH = 2


def sources() -> dict[str, list[tuple[str, int]]]:
    # Items say what they are: (source, index), as `samples` reports keys.
    return {name: [(name, i) for i in range(n)] for name, n in LENGTHS.items()}


def make_mixture(schedule=SCHEDULE, **kwargs) -> Mixture:
    return Mixture(sources(), schedule=schedule, samples_per_epoch=TOTAL, **kwargs)


def make_loader(schedule=SCHEDULE, num_workers: int = 0) -> ResumableDataLoader:
    return ResumableDataLoader(
        make_mixture(schedule), batch_size=BATCH, shuffle=True, seed=5, collate_fn=list, num_workers=num_workers
    )


def hamilton(weights: dict[str, int], total: int) -> dict[str, int]:
    """Largest remainder, written out independently: floor of the exact quota, the rest to the largest
    remainders, ties to the earlier source."""
    whole = sum(weights.values())
    quotas = {name: Fraction(w * total, whole) for name, w in weights.items()}
    counts = {name: int(q) for name, q in quotas.items()}
    order = sorted(weights, key=lambda name: (-(quotas[name] - counts[name]), list(weights).index(name)))
    for name in order[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


def expected_pieces(schedule, epoch: int, total: int = TOTAL) -> list[tuple[int, int, dict[str, int]]]:
    """Epoch ``epoch`` cut at the changes inside it, each piece's counts by largest remainder."""
    origin = epoch * total
    cuts = [0] + [s - origin for s, _ in schedule if origin < s < origin + total]
    out = []
    for start, end in zip(cuts, [*cuts[1:], total], strict=True):
        weights = [w for s, w in schedule if s <= origin + start][-1]
        out.append((start, end, hamilton(weights, end - start)))
    return out


def delivered(loader: ResumableDataLoader, epochs: int = EPOCHS) -> list[list[tuple[str, int]]]:
    """Each epoch's items in delivery order (one rank: the global position order)."""
    return [[item for batch in loader for item in batch] for _ in range(epochs)]


def check_exactly_once_per_source_epoch(items: list[tuple[str, int]], lengths=LENGTHS) -> None:
    """Each source's deliveries, in order, are consecutive source epochs: a permutation of its items each
    (the last may be partial: nothing duplicated in it). Missing and duplicated are checked separately."""
    for name, n in lengths.items():
        mine = [i for source, i in items if source == name]
        for at in range(0, len(mine), n):
            chunk = mine[at : at + n]
            duplicated = sorted(i for i, c in Counter(chunk).items() if c > 1)
            assert not duplicated, f"{name}, source epoch {at // n}: delivered more than once: {duplicated}"
            if len(chunk) == n:
                missing = sorted(set(range(n)) - set(chunk))
                assert not missing, f"{name}, source epoch {at // n}: missing {missing}"


def source_items(name: str, first: int, count: int) -> Counter:
    """Source ``name``'s samples number ``first .. first + count - 1`` over the run: its own permutation of each
    source epoch (the mixture's within-source order, at the loader's seed), whatever the weights."""
    table = SourceTable([source_seed(5, name)], [SourceCursor.fresh(LENGTHS[name])])
    g = torch.arange(first, first + count, dtype=torch.int64)
    _, indices = table.locate(torch.zeros_like(g), g)
    return Counter((name, i) for i in indices.tolist())


def test_each_piece_has_its_exact_counts_and_each_source_is_exactly_once_across_changes():
    loader = make_loader()
    run = delivered(loader)
    taken = dict.fromkeys(LENGTHS, 0)  # per source, its samples delivered before the piece (from the counts alone)
    for epoch, items in enumerate(run):
        want = expected_pieces(SCHEDULE, epoch)
        assert loader.dataset.pieces(epoch) == want
        for start, end, counts in want:
            got = Counter(name for name, _ in items[start:end])
            assert {name: got[name] for name in LENGTHS} == counts, f"epoch {epoch}, positions {start}..{end}"
            # Each source continues from its exact cursor: the piece holds its next samples, no other.
            for name, n in counts.items():
                mine = Counter(item for item in items[start:end] if item[0] == name)
                assert mine == source_items(name, taken[name], n), f"{name}, epoch {epoch}, piece at {start}"
                taken[name] += n
    assert len(expected_pieces(SCHEDULE, 0)) == 2 and len(expected_pieces(SCHEDULE, 2)) == 2
    check_exactly_once_per_source_epoch([item for items in run for item in items])


def boundary_stops() -> list[int]:
    """Batch counts at, just before and just after every change (batches of BATCH samples)."""
    stops = set()
    for start, _ in SCHEDULE[1:]:
        at = start // BATCH
        stops.update({at - 1, at, at + 1})
    return sorted(stops)


def test_resumes_through_the_file_at_and_around_every_change():
    expected = assert_equal_output_after_checkpoint(make_loader, boundary_stops(), epochs=EPOCHS)
    # With two workers on the resumed side, exactly at a change that is also an epoch boundary.
    assert_equal_output_after_checkpoint(
        make_loader, 26, epochs=EPOCHS, resume_with=lambda: make_loader(num_workers=2), expected=expected
    )


def test_a_new_schedule_on_resume_replaces_the_rest(tmp_path):
    first = make_loader()
    with InputCheckpointer(tmp_path, first, every_n_steps=1) as ckpt:
        batches = iter(first)
        before = []
        for step in range(1, 9):  # 16 samples: past the change at 10
            before.extend(next(batches))
            ckpt.after_step(step)
    # The new schedule: its past (the entry at 10 differs) is history; from sample 16 on, its weights hold,
    # and its change at 40 replaces the saved ones at 52 and 61.
    new = [
        (0, {"web": 1, "code": 1, "math": 1, "books": 1}),
        (10, {"web": 2, "code": 0, "math": 1, "books": 1}),
        (40, {"web": 1, "code": 4, "math": 1, "books": 0}),
    ]
    second = make_loader(new)
    with InputCheckpointer(tmp_path, second, every_n_steps=1) as ckpt:
        assert ckpt.restore(8) == 8
        rest = [item for batch in second for item in batch]
        later = delivered(second, 2)
    state = json.loads(json.dumps(second.state_dict()))["sampler"]["dataset_order"]
    assert state["anchor_epoch"] == 0 and state["anchor_position"] == 16
    assert state["schedule"] == [{"from_sample": 40, "weights": {"web": 1, "code": 4, "math": 1, "books": 0}}]
    assert Counter(name for name, _ in rest) == Counter(hamilton(new[1][1], TOTAL - 16))
    epoch1 = expected_pieces(new, 1)
    assert [(s, e) for s, e, _ in epoch1] == [(0, 14), (14, 26)]
    for start, end, counts in epoch1:
        got = Counter(name for name, _ in later[0][start:end])
        assert {name: got[name] for name in LENGTHS} == counts
    check_exactly_once_per_source_epoch(before + rest + later[0] + later[1])


def test_the_same_schedule_on_resume_keeps_the_saved_plan(tmp_path):
    # Weights scaled by 2 are the same proportions: the saved plan is kept, no new anchor.
    scaled = [(s, {name: 2 * w for name, w in weights.items()}) for s, weights in SCHEDULE]
    first = make_loader()
    with InputCheckpointer(tmp_path, first, every_n_steps=1) as ckpt:
        batches = iter(first)
        for step in range(1, 7):
            next(batches)
            ckpt.after_step(step)
    second = make_loader(scaled)
    with InputCheckpointer(tmp_path, second, every_n_steps=1) as ckpt:
        ckpt.restore(6)
    order = second.state_dict()["sampler"]["dataset_order"]
    assert (order["anchor_epoch"], order["anchor_position"]) == (0, 0)
    assert [entry["from_sample"] for entry in order["schedule"]] == [10, 52, 61]


CONFIG = dict(make_dataset=make_mixture, batch_size=2, shuffle=True, every=4, seed=5)


def test_samples_across_changes_after_2_to_3_ranks(tmp_path):
    # 2 ranks: steps 1..14 saved every 4 (epoch 0 is 7 steps: the change at 10 is in step 3); 3 ranks restore
    # at step 12 (mid epoch 1) and run across the changes at 52 (epoch 2's start) and 61, into epoch 3.
    first = run_ranks(tmp_path, CONFIG, world=2, steps=range(1, 15))
    second = run_ranks(tmp_path, CONFIG, world=3, steps=range(1, 24), restore=True)  # to epoch 3's end
    logged = {**{s: k for s, k in first.items() if s <= 12}, **second}
    provenance = Provenance(tmp_path)
    by_epoch: dict[int, Counter] = {}
    for step, by_rank in logged.items():
        answer = provenance.step(step)
        assert dict(answer.keys) == by_rank, f"step {step}"
        (epoch,) = set(answer.epochs)
        by_epoch.setdefault(epoch, Counter()).update(item for keys in by_rank.values() for item in keys)
    # Against the one-rank run in position order: the same samples per epoch; only the padding that
    # DistributedSampler's rule adds at the end of a 3-rank pass repeats a few (at most 2 an epoch).
    reference = delivered(make_loader(), EPOCHS)
    assert sorted(by_epoch) == [0, 1, 2, 3]
    for epoch in range(EPOCHS):
        want = Counter(reference[epoch])
        assert not want - by_epoch[epoch], f"epoch {epoch}: missing {want - by_epoch[epoch]}"
        assert sum((by_epoch[epoch] - want).values()) <= 2, f"epoch {epoch}: more than the padding repeats"
    assert sum((by_epoch[0] - Counter(reference[0])).values()) == 0  # 2 ranks divide 26: no padding
    # inspect's configuration: the counts of the weights in force at the newest checkpoint (step 20: sample 94,
    # after the last change), and no change ahead.
    configuration = provenance.configuration()
    assert (
        configuration["mixture_sources"]
        == hamilton(SCHEDULE[-1][1], TOTAL)
        == {"web": 0, "code": 0, "math": 13, "books": 13}
    )
    assert configuration["mixture_schedule"] is None


@pytest.mark.slow
def test_a_fresh_process_resumes_the_example_exactly_at_a_change(tmp_path, capfd):
    directory = tmp_path / "ckpt"
    capfd.readouterr()
    run_here("mixture_schedule.py", directory)
    first = capfd.readouterr().out.splitlines()
    lines, _ = run_fresh("mixture_schedule.py", directory)
    assert lines[:2] == first[:2]
    steps = [line for line in first[2:] + lines[2:] if line.split()[0].isdigit()]
    example = runpy.run_path(str(EXAMPLES / "mixture_schedule.py"), run_name="example")
    mix, loader = example["make_loader"]()
    batches = (batch for _ in range(3) for batch in loader)
    uninterrupted = [next(batches) for _ in range(30)]
    assert [line.split("{")[0].split()[1:] for line in steps] == [list(batch.item) for batch in uninterrupted]
    assert [int(line.split()[0]) for line in steps] == list(range(1, 31))
    items = [
        (item.rstrip("0123456789"), int(item.lstrip("abcdefghijklmnopqrstuvwxyz")))
        for b in uninterrupted
        for item in b.item
    ]
    check_exactly_once_per_source_epoch(items, {"web": 60, "code": 24, "math": 12, "books": 4})
    schedule = [(s, dict(w)) for s, w in example["schedule"]]
    for epoch in range(3):
        assert mix.pieces(epoch) == expected_pieces(schedule, epoch, 100)


def test_with_origin_collates_the_source_names_beside_the_items():
    numbers = {name: torch.arange(n) + 100 * k for k, (name, n) in enumerate(LENGTHS.items())}
    mix = Mixture(numbers, schedule=SCHEDULE, samples_per_epoch=TOTAL, with_origin=True)
    loader = ResumableDataLoader(mix, batch_size=5, shuffle=True, seed=5)
    batch = next(iter(loader))
    assert isinstance(batch, Sourced) and batch.item.shape == (5,) and len(batch.source) == 5
    items, names = batch  # unpacks as a pair
    names = list(names)  # the default collate keeps a batch of str as a sequence of them
    assert [list(LENGTHS)[int(v) // 100] for v in items] == names
    plain = ResumableDataLoader(make_mixture(), batch_size=5, shuffle=True, seed=5, collate_fn=list)
    assert [name for name, _ in next(iter(plain))] == names, "the same order with and without origins"
    per_source = {name: items[[n == name for n in names]].float().mean() for name in set(names)}
    assert set(per_source) <= set(LENGTHS)


@pytest.mark.parametrize(
    ("weights", "schedule", "message"),
    [
        (None, [(5, {"web": 1, "code": 1, "math": 1, "books": 1})], "first entry is at sample 0"),
        ({"web": 1, "code": 1, "math": 1, "books": 1}, [(0, {"web": 1, "code": 1, "math": 1, "books": 1})], "both"),
        (
            None,
            [(0, {"web": 1, "code": 1, "math": 1, "books": 1}), (0, {"web": 1, "code": 1, "math": 1, "books": 1})],
            "ascending",
        ),
        (
            None,
            [(0, {"web": 1, "code": 1, "math": 1, "books": 1}), (9, {"web": 1, "code": 1})],
            "missing \\['books', 'math'\\]",
        ),
        (
            None,
            [(0, {"web": 1, "code": 1, "math": 1, "books": 1}), (9, {"web": 0, "code": 0, "math": 0, "books": 0})],
            "> 0",
        ),
    ],
)
def test_a_bad_schedule_is_refused_naming_it(weights, schedule, message):
    with pytest.raises(ValueError, match=message):
        Mixture(sources(), weights, schedule=schedule)


def test_a_malformed_saved_schedule_is_refused_naming_the_entry(tmp_path):
    loader = make_loader()
    state = json.loads(json.dumps(loader.state_dict()))
    order = state["sampler"]["dataset_order"]
    order["schedule"][1]["from_sample"] = 3  # before the previous change
    with pytest.raises(InputStateError, match=r"schedule\[1\]: from_sample=3 is invalid; expected > 10"):
        make_loader().load_state_dict(state)
    order["schedule"][1] = {"from_sample": 52, "weights": {"web": 1}}
    with pytest.raises(InputStateError, match=r"schedule\[1\]: weights names \['web'\]"):
        make_loader().load_state_dict(state)


# make test: a few examples from a fixed seed; make fuzz: HYPOTHESIS_FUZZ_EXAMPLES of them, from fresh seeds.
FUZZ_EXAMPLES = os.environ.get("HYPOTHESIS_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(FUZZ_EXAMPLES) if FUZZ_EXAMPLES else 25,
    derandomize=not FUZZ_EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NAMES = tuple(LENGTHS)  # web, code, math, books: not sorted


@st.composite
def schedules(draw):
    lengths = {name: draw(st.integers(1, 6)) for name in NAMES}  # a source of length 1 is likely
    total = draw(st.integers(3, 17))
    weights = st.lists(st.integers(0, 3), min_size=4, max_size=4).filter(any)  # 0 in a piece is likely
    starts = sorted(draw(st.sets(st.integers(1, 3 * total - 1), max_size=3)))
    schedule = [(start, dict(zip(NAMES, draw(weights), strict=True))) for start in [0, *starts]]
    return lengths, total, schedule, draw(st.integers(0, 3 * total)), draw(st.integers(1, 4))


@pytest.mark.fuzz
@FUZZ
@given(schedules())
def test_random_schedules_are_exact_once_per_source_epoch_and_resume_anywhere(case):
    lengths, total, schedule, stop, batch = case

    def make():
        mix = Mixture(
            {name: [(name, i) for i in range(n)] for name, n in lengths.items()},
            schedule=schedule,
            samples_per_epoch=total,
        )
        return ResumableDataLoader(mix, batch_size=batch, shuffle=True, seed=11, collate_fn=list)

    loader = make()
    run = delivered(loader, 3)
    for epoch, items in enumerate(run):
        for start, end, counts in expected_pieces(schedule, epoch, total):
            got = Counter(name for name, _ in items[start:end])
            assert {name: got[name] for name in NAMES} == counts, f"epoch {epoch}, positions {start}..{end}"
    flat = [item for items in run for item in items]
    check_exactly_once_per_source_epoch(flat, lengths)
    # Stop after `stop` samples (rounded down to a batch of its epoch), resume through the file.
    epoch, within = divmod(stop, total)
    if epoch < 3:
        first = make()
        for _ in range(epoch):
            list(first)
        batches = iter(first)
        taken = [item for _ in range(within // batch) for item in next(batches)]
        state = roundtrip_state(first.state_dict())
        second = make()
        second.load_state_dict(state)
        rest = [item for b in second for item in b] + [item for _ in range(2 - epoch) for b in second for item in b]
        assert taken + rest == flat[epoch * total :]

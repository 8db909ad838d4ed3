"""Per-RNG reseeding: each global RNG a dataset draws from resumes exactly, an RNG first drawn from
after some samples is warned about and seeded from then on, a declared set, and the state's record."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from torch_input_ckpt import InputCheckpointWarning, InputStateError, ResumableDataLoader, UnseededDrawWarning
from torch_input_ckpt.rng.policy import PROBATION

from tests.support.resume import check_resume, epochs_of, roundtrip

DRAW = {
    "torch": lambda: torch.rand(()).item(),
    "numpy": lambda: float(np.random.rand()),
    "python": lambda: random.random(),
}


class Drawing(Dataset):
    """Sample ``i``: its index and one draw from each RNG in ``rngs``, once this copy of the dataset has
    fetched ``after`` samples (each worker counts its own)."""

    def __init__(self, rngs: tuple[str, ...], length: int = 20, after: int = 0) -> None:
        self.rngs = rngs
        self.length = length
        self.after = after
        self.calls = 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, float | int]:
        self.calls += 1
        drawing = self.calls > self.after
        return {"index": index, **{name: DRAW[name]() if drawing else -1.0 for name in self.rngs}}


def _loader(dataset: Dataset, num_workers: int = 0, batch_size: int = 3, **options) -> ResumableDataLoader:
    return ResumableDataLoader(dataset, batch_size=batch_size, shuffle=True, seed=7, num_workers=num_workers, **options)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("name", ["torch", "numpy", "python"])
def test_each_rng_drawn_from_resumes_exactly_without_a_warning(name, num_workers):
    def make():
        return _loader(Drawing((name,)), num_workers)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseededDrawWarning)  # probing finds it: no warning
        expected = list(epochs_of(make(), 2))
        for stop in (1, 4, 9):
            check_resume(make, stop, expected=expected)
    draws = [d for _, batch in expected for d in batch[name]]
    assert len(set(draws)) == len(draws)  # the comparison can fail: every sample draws something new
    # Found on the first batch, so the state records it (with workers: once the first batch arrived).
    loader = make()
    next(iter(loader))
    assert loader.state_dict()["reseeded_rngs"] == [name]


def test_draws_do_not_depend_on_num_workers_for_each_rng():
    def stream(num_workers):
        return list(epochs_of(_loader(Drawing(("torch", "numpy", "python")), num_workers), 2))

    assert stream(2) == stream(0)


def test_a_dataset_that_draws_nothing_seeds_nothing_and_leaves_the_rngs_alone():
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    loader = _loader(Drawing(()))
    assert len(list(epochs_of(loader, 2))) == 14
    assert loader.state_dict()["reseeded_rngs"] == []
    # The main process's RNGs are where they were: nothing was seeded, nothing was drawn.
    after = (torch.rand(()).item(), float(np.random.rand()), random.random())
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    assert after == (torch.rand(()).item(), float(np.random.rand()), random.random())


def test_main_process_rngs_are_put_back_after_each_batch():
    torch.manual_seed(11)
    expected = torch.rand(3).tolist()
    torch.manual_seed(11)
    loader = _loader(Drawing(("torch",)))
    list(epochs_of(loader, 1))
    assert torch.rand(3).tolist() == expected


@pytest.mark.parametrize("num_workers", [0, 2])
def test_rng_first_drawn_after_some_samples_is_warned_and_resumes_exactly_from_then_on(num_workers):
    """Each copy of the dataset starts drawing from torch's RNG after 3 x PROBATION samples of its own."""
    after = 3 * PROBATION
    n, batch_size = 200, 4  # 50 batches per epoch; with 2 workers each fetches ~25
    # Persistent workers keep their copy's count over both epochs.
    persistent = {"persistent_workers": True} if num_workers else {}
    loader = _loader(Drawing(("torch",), n, after), num_workers, batch_size, **persistent)
    stream, state = [], None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for item in epochs_of(loader, 2):
            stream.append(item)
            if len(stream) == 40:
                state = roundtrip(loader.state_dict())
    found = [w for w in caught if issubclass(w.category, UnseededDrawWarning)]
    assert 1 <= len(found) <= max(1, num_workers), [str(w.message) for w in caught]
    message = str(found[0].message)
    assert "torch's global RNG ('torch')" in message
    # It names samples of a batch that drew without a seed: their draws are not the -1 placeholder.
    named = [int(i) for i in message.split("indices [")[1].split("]")[0].replace(", ...", "").split(", ")]
    drawn = {i for _, b in stream for i, d in zip(b["index"], b["torch"], strict=True) if d != -1.0}
    assert set(named) <= drawn
    assert state is not None and state["reseeded_rngs"] == ["torch"]

    # From the state on, a fresh loader (whose dataset draws from the first sample) continues exactly.
    resumed = _loader(Drawing(("torch",), n, 0), num_workers, batch_size, **persistent)
    resumed.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnseededDrawWarning)
        rest = list(epochs_of(resumed, 2))
    assert rest == stream[40:]
    assert all(d != -1.0 for _, b in rest for d in b["torch"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_declared_set_is_seeded_from_the_first_sample_and_recorded(num_workers):
    def make():
        return _loader(Drawing(("numpy", "python")), num_workers, reseed_rng=("numpy",))

    assert make().state_dict()["reseeded_rngs"] == ["numpy"]
    assert make().state_dict()["reseed_rng"] is True
    expected = list(epochs_of(make(), 2))
    for stop in (2, 8):
        check_resume(make, stop, expected=expected)
    loader = make()
    list(epochs_of(loader, 1))
    assert loader.state_dict()["reseeded_rngs"] == ["numpy", "python"]  # python found by probing


def test_state_without_the_key_resumes_as_it_was_saved_all_three_seeded():
    """A state written before `reseeded_rngs` existed: reseed_rng=True then seeded all three."""
    every = ("numpy", "python", "torch")

    def make(reseed_rng=True):
        return _loader(Drawing(("torch",)), reseed_rng=reseed_rng)

    reference = make(every)
    head = [b for _, b in zip(range(4), epochs_of(reference, 2), strict=False)]
    state = roundtrip(reference.state_dict())
    tail = list(epochs_of(reference, 2))
    del state["reseeded_rngs"]
    state["reseed_rng"] = True
    resumed = make()
    resumed.load_state_dict(state)
    assert list(epochs_of(resumed, 2)) == tail and len(head) == 4
    assert resumed.state_dict()["reseeded_rngs"] == list(every)


def test_resume_declaring_an_rng_the_saved_run_did_not_seed_warns():
    saved = _loader(Drawing(("torch",)), reseed_rng=("torch",)).state_dict()
    loader = _loader(Drawing(("torch",)), reseed_rng=("numpy", "torch"))
    with pytest.warns(InputCheckpointWarning, match=r"declares \['numpy'\], which the saved run did not seed"):
        loader.load_state_dict(saved)


def test_resume_adopts_the_saved_set_beyond_the_declared_one_silently():
    saved = _loader(Drawing(("torch",)), reseed_rng=("numpy", "torch")).state_dict()
    loader = _loader(Drawing(("torch",)), reseed_rng=("torch",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loader.load_state_dict(saved)
    assert loader.state_dict()["reseeded_rngs"] == ["numpy", "torch"]


@pytest.mark.parametrize("value", ["torch", ("torch", "cuda"), 1, None, [1]])
def test_bad_reseed_rng_is_a_value_error(value):
    with pytest.raises(ValueError, match="reseed_rng must be True, False or a tuple of names"):
        _loader(Drawing(()), reseed_rng=value)


@pytest.mark.parametrize("names", ["torch", ["cuda"], [1]])
def test_bad_reseeded_rngs_in_a_state_is_an_input_state_error(names):
    state = _loader(Drawing(())).state_dict() | {"reseeded_rngs": names}
    with pytest.raises(InputStateError, match="reseeded_rngs"):
        _loader(Drawing(())).load_state_dict(state)


TORCH_DRAWS = {
    "rand": lambda: torch.rand(1),
    "randn (makes a cached normal)": lambda: torch.randn(1, dtype=torch.float64),
    "randn again (takes the cached normal only)": lambda: torch.randn(1, dtype=torch.float64),
    "randint": lambda: torch.randint(0, 5, (1,)),
    "randperm": lambda: torch.randperm(3),
    "624 words (the engine's whole state)": lambda: torch.randint(0, 2**31, (624,), dtype=torch.int64),
    "bernoulli_": lambda: torch.empty(3).bernoulli_(0.5),
    "normal_ of 1000": lambda: torch.empty(1000).normal_(),
    "multinomial": lambda: torch.multinomial(torch.ones(4), 2),
    "exponential_": lambda: torch.empty(5).exponential_(),
}


def test_torch_fingerprint_reads_the_engine_and_sees_every_kind_of_draw():
    """The ctypes view of torch's engine is in use on the tested torch, leaves the state alone, stays
    put without a draw and moves with each draw (a cached normal taken alone included)."""
    from torch_input_ckpt._compat import torch as compat_torch
    from torch_input_ckpt.rng.fingerprints import rng

    assert compat_torch.torch_generator_words(torch.default_generator) is not None
    fingerprint = rng("torch").fingerprint
    torch.manual_seed(5)
    for name, draw in TORCH_DRAWS.items():
        state = torch.get_rng_state()
        before = fingerprint()
        assert fingerprint() == before and torch.equal(torch.get_rng_state(), state), name
        draw()
        assert fingerprint() != before, name
    # A state set back is the fingerprint set back.
    torch.manual_seed(5)
    seeded = fingerprint()
    torch.rand(10)
    torch.manual_seed(5)
    assert fingerprint() == seeded


def test_in_process_batches_carry_seeds_only_while_an_rng_is_seeded():
    """num_workers=0: a dataset that draws nothing gets no seeds after probation; one that draws gets
    them for every batch (the keys are what the fetch sees)."""
    from torch_input_ckpt.loader.fetch import FetchDataset

    seen: list[bool] = []
    original = FetchDataset.__getitems__

    def spy(self, keys):
        seen.append(getattr(keys, "seeds", None) is not None)
        return original(self, keys)

    for rngs, expected_after_probation in (((), False), (("numpy",), True)):
        seen.clear()
        FetchDataset.__getitems__ = spy
        try:
            list(epochs_of(_loader(Drawing(rngs, length=200), batch_size=4), 1))
        finally:
            FetchDataset.__getitems__ = original
        probation_batches = PROBATION // 4
        assert all(seen[:probation_batches]) and len(seen) == 50
        assert set(seen[probation_batches:]) == {expected_after_probation}

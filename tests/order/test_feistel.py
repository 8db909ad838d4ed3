"""The one keyed network: a bijection of [0, length) for every length, its inverse undoes it, cycle-walking stays in
range, and the per-element, scalar and Python-int forms give the same values."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_input_ckpt.order.feistel import (
    M32,
    ROUNDS,
    feistel_round,
    inverse_network,
    mix32,
    mix64,
    network,
    permute,
    permute_ints,
    radix,
    round_keys,
    unpermute,
)

# 1, 2, small primes, a length whose square root is an integer, 2**31 - 1 (prime), 2**31 + 1, 2**61 - 1 (prime)
# and the largest length the network supports.
LENGTHS = [1, 2, 3, 5, 7, 13, 97, 4096, 65537, 2**31 - 1, 2**31 + 1, 2**61 - 1, 2**62]
# The largest keys (all ones) are there to catch an int64 overflow: 2**62 with them stays in range only without.
KEYS = [round_keys(mix64(7, 3)), (M32,) * ROUNDS, (0,) * ROUNDS]


def _domain(length: int) -> tuple[int, int]:
    a = radix(length)
    return a, -(-length // a)


def _walkers(length: int, keys: tuple[int, ...], count: int) -> torch.Tensor:
    """Positions whose first pass through the network lands outside [0, length): those that must walk."""
    a, b = _domain(length)
    outside = torch.arange(length, min(a * b, length + count), dtype=torch.int64)
    before = inverse_network(outside, a, b, keys)
    return before[before < length]  # an x outside [0, length) is no position (it may walk forever)


def _sample(length: int, count: int = 500) -> torch.Tensor:
    """Both ends of [0, length) and positions spread over it."""
    ends = [*range(min(length, 20)), *range(max(0, length - 20), length)]
    spread = torch.randint(0, length, (count,), generator=torch.Generator().manual_seed(length % 2**63))
    return torch.cat([torch.tensor(ends, dtype=torch.int64), spread])


@pytest.mark.parametrize("keys", KEYS, ids=["keyed", "ones", "zeros"])
@pytest.mark.parametrize("length", LENGTHS)
def test_permute_stays_in_range_and_unpermute_undoes_it(length, keys):
    x = torch.cat([_sample(length), _walkers(length, keys, 200)])
    y = permute(x, length, keys)
    assert int(y.min()) >= 0 and int(y.max()) < length
    assert torch.equal(unpermute(y, length, keys), x)
    assert torch.equal(permute(unpermute(x, length, keys), length, keys), x)


@pytest.mark.parametrize("length", LENGTHS)
def test_the_walk_is_exercised_where_the_domain_is_larger(length):
    """The walkers of _walkers do leave [0, length) on their first pass and come back in range (the tests above
    would otherwise check no walk at all)."""
    keys = KEYS[0]
    a, b = _domain(length)
    walkers = _walkers(length, keys, 200)
    assert (walkers.numel() > 0) == (a * b > length)
    assert bool((network(walkers, a, b, keys) >= length).all())
    assert bool((permute(walkers, length, keys) < length).all())


@pytest.mark.parametrize("length", [n for n in LENGTHS if n <= 65537])
def test_permute_is_a_bijection_of_small_lengths(length):
    for keys in KEYS:
        out = permute(torch.arange(length), length, keys)
        assert torch.equal(torch.sort(out).values, torch.arange(length))


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1, 3000), keys=st.lists(st.integers(0, M32), min_size=ROUNDS, max_size=ROUNDS))
def test_permute_is_a_bijection_for_any_length_and_keys(length, keys):
    out = permute(torch.arange(length), length, keys)
    assert torch.equal(torch.sort(out).values, torch.arange(length))
    assert torch.equal(unpermute(out, length, keys), torch.arange(length))


@settings(max_examples=100, deadline=None)
@given(length=st.integers(1, 2**62), seed=st.integers(0, 2**64 - 1))
def test_network_and_walk_invert_for_random_lengths(length, seed):
    keys = round_keys(seed)
    a, b = _domain(length)
    assert a <= 2**31 and b <= 2**31 and a * b >= length and a * b - length < a  # parts below 2**31
    inside = _sample(a * b, 100)
    assert torch.equal(inverse_network(network(inside, a, b, keys), a, b, keys), inside)
    x = torch.cat([_sample(length, 100), _walkers(length, keys, 50)])
    y = permute(x, length, keys)
    assert int(y.min()) >= 0 and int(y.max()) < length
    assert torch.equal(unpermute(y, length, keys), x)


def test_per_element_lengths_and_keys_equal_one_call_per_domain():
    """One call over elements of many (length, keys) equals one call per domain: the form lanes and mixtures use."""
    domains = [(n, round_keys(mix64(n, 1))) for n in LENGTHS]
    xs = [torch.cat([_sample(n, 50), _walkers(n, k, 20)]) for n, k in domains]
    expected = torch.cat([permute(x, n, k) for x, (n, k) in zip(xs, domains, strict=True)])
    x = torch.cat(xs)
    length = torch.cat([torch.full((len(part),), n) for part, (n, _) in zip(xs, domains, strict=True)])
    keys = [
        torch.cat([torch.full((len(part),), k[r]) for part, (_, k) in zip(xs, domains, strict=True)])
        for r in range(ROUNDS)
    ]
    assert torch.equal(permute(x, length, keys), expected)
    assert torch.equal(permute(x, length, keys, a=radix(length)), expected)
    assert torch.equal(unpermute(expected, length, keys), x)


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 2**62))
def test_radix_on_tensors_equals_the_integer_square_root(length):
    lengths = [n for n in (length, length - 1, length + 1, math.isqrt(length) ** 2) if 1 <= n <= 2**62]
    assert radix(torch.tensor(lengths)).tolist() == [math.isqrt(n - 1) + 1 for n in lengths]


@pytest.mark.parametrize("length", [1, 2, 3, 7, 100, 65537, 2**31 + 1, 2**62])
def test_python_ints_equal_the_tensors(length):
    keys = KEYS[0]
    x = torch.cat([_sample(length, 200), _walkers(length, keys, 20)])
    assert permute_ints(x.tolist(), length, keys) == permute(x, length, keys).tolist()


@settings(max_examples=200, deadline=None)
@given(x=st.integers(0, 2**62), key=st.integers(0, M32))
def test_hash_and_round_on_ints_equal_on_tensors(x, key):
    assert mix32(x, key) == mix32(torch.tensor([x]), key).item() == mix32(torch.tensor([x]), torch.tensor([key])).item()
    assert 0 <= mix32(x, key) <= M32
    part = x % 2**31
    assert feistel_round(part, key) == feistel_round(torch.tensor([part]), key).item()
    assert 0 <= feistel_round(part, key) <= M32

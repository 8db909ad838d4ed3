"""The permutation is a bijection for every length, differs by seed and epoch, and seeks in O(1)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_input_ckpt.order.permutation import (
    FeistelPermutation,
    IdentityPermutation,
    RandpermPermutation,
    sample_seeds,
)

SPECIAL_LENGTHS = [
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    9,
    13,
    15,
    16,
    17,
    31,
    32,
    33,
    63,
    64,
    65,
    97,
    127,
    128,
    129,
    255,
    256,
    257,
    1009,
    1023,
    1024,
    1025,
    4095,
    4096,
    4097,
    65535,
    65536,
    65537,
]


def _is_permutation(perm: FeistelPermutation) -> bool:
    out = perm(torch.arange(perm.length))
    return bool(torch.equal(torch.sort(out).values, torch.arange(perm.length)))


def test_bijection_for_special_lengths():
    for n in SPECIAL_LENGTHS:
        for seed, epoch in [(0, 0), (1, 0), (0, 7), (2**40 + 3, 12)]:
            assert _is_permutation(FeistelPermutation(n, seed, epoch)), (n, seed, epoch)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 20_000), seed=st.integers(-(2**63), 2**64), epoch=st.integers(0, 10**6))
def test_bijection_for_any_length(n, seed, epoch):
    assert _is_permutation(FeistelPermutation(n, seed, epoch))


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 2**62), seed=st.integers(0, 2**32), data=st.data())
def test_random_access_matches_chunked_evaluation(n, seed, data):
    """Element p computed alone equals element p computed inside any chunk: seeking is exact."""
    perm = FeistelPermutation(n, seed, 1)
    start = data.draw(st.integers(0, n - 1))
    stop = min(n, start + data.draw(st.integers(1, 300)))
    chunk = perm(torch.arange(start, stop)).tolist()
    p = data.draw(st.integers(start, stop - 1))
    assert perm(torch.tensor([p])).item() == chunk[p - start]
    assert all(0 <= v < n for v in chunk)
    assert len(set(chunk)) == len(chunk)


def test_seeds_and_epochs_give_different_orders():
    n = 1000
    orders = {tuple(FeistelPermutation(n, s, e)(torch.arange(n)).tolist()) for s in range(4) for e in range(4)}
    assert len(orders) == 16
    # and each is far from the identity (a weak shuffle would leave many fixed points)
    for order in orders:
        assert sum(i == v for i, v in enumerate(order)) < 20


def test_large_domain_seek_is_cheap_in_memory():
    perm = FeistelPermutation(10**12, 5, 0)
    values = perm(torch.arange(10**12 - 64, 10**12)).tolist()
    assert len(set(values)) == 64 and all(0 <= v < 10**12 for v in values)


def test_randperm_order_matches_torch():
    g = torch.Generator().manual_seed(3 + 2)
    expected = torch.randperm(50, generator=g).tolist()
    assert RandpermPermutation(50, 3, 2)(torch.arange(50)).tolist() == expected


def test_sample_seeds_depend_on_seed_epoch_and_position():
    positions = torch.arange(1000)
    a = sample_seeds(0, 0, positions)
    assert len(set(a.tolist())) == 1000
    assert not torch.equal(a, sample_seeds(1, 0, positions))
    assert not torch.equal(a, sample_seeds(0, 1, positions))
    assert int(a.min()) >= 0 and int(a.max()) < 2**32
    assert torch.equal(a[500:], sample_seeds(0, 0, positions[500:]))


@pytest.mark.parametrize("length", [1, 2, 7, 100, 4**5 + 1, 10**6 + 3, 2**40 + 5])
def test_python_ints_path_equals_the_tensor_path(length):
    """The first batch of a fresh process is computed on Python ints (no torch op): same indices."""
    from torch_input_ckpt.order.permutation import PYTHON_INDICES, IdentityPermutation, indices_at

    perm = FeistelPermutation(length, 3, 1)
    first = max(0, length - 50)  # near the end, so that positions wrap (padding) too
    count = min(PYTHON_INDICES, 3 * length)
    expected = perm((torch.arange(count, dtype=torch.int64) * 3 + first) % length).tolist()
    assert indices_at(perm, first, 3, count) == expected
    assert perm.values(range(min(length, 300))) == perm(torch.arange(min(length, 300))).tolist()
    identity = IdentityPermutation(length)
    assert indices_at(identity, first, 3, count) == [(first + 3 * k) % length for k in range(count)]


@pytest.mark.parametrize("length", [1, 2, 3, 17, 100, 1023, 1024, 1025, 65537])
@pytest.mark.parametrize("kind", [FeistelPermutation, RandpermPermutation, IdentityPermutation])
def test_inverse_undoes_the_permutation(kind, length):
    perm = kind(length, 11, 2)
    positions = torch.arange(length, dtype=torch.int64)
    indices = perm(positions)
    assert perm.inverse(indices).tolist() == positions.tolist()
    assert perm(perm.inverse(positions)).tolist() == positions.tolist()


def test_feistel_inverse_at_a_billion():
    perm = FeistelPermutation(10**9 + 7, 5, 3)
    positions = torch.tensor([0, 1, 123456789, 10**9 + 6], dtype=torch.int64)
    assert perm.inverse(perm(positions)).tolist() == positions.tolist()

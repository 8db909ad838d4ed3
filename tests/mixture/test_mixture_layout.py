"""The mixture's arithmetic, for any weights and lengths (Hypothesis): largest-remainder counts, the
house-monotone prefix counts, the block layout, and the per-source numbering with growth."""

from __future__ import annotations

from collections import Counter
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_input_ckpt import Mixture, ResumableSampler
from torch_input_ckpt.mixture.layout import SegmentLayout, largest_remainder, prefix_count
from torch_input_ckpt.mixture.sources import SourceCursor, SourceTable, source_seed
from torch_input_ckpt.order.permutation import FeistelPermutation

weights_st = st.lists(st.integers(0, 1000) | st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=8).filter(
    lambda ws: any(ws)
)


@given(weights_st, st.integers(0, 10**6))
def test_largest_remainder_sums_exactly_and_rounds_each_share(weights, total):
    fractions = [Fraction(w) for w in weights]
    counts = largest_remainder(fractions, total)
    assert sum(counts) == total
    whole = sum(fractions)
    for w, n in zip(fractions, counts, strict=True):
        share = w * total / whole
        assert share - 1 < n < share + 1, (share, n)
        if w == 0:
            assert n == 0


@given(st.integers(0, 10**4), st.integers(1, 10**4))
def test_prefix_count_is_monotone_and_ends_at_the_count(count, extra):
    total = count + extra
    previous = 0
    for x in range(0, total + 1, max(1, total // 97)):
        current = prefix_count(count, total, x)
        assert previous <= current <= count
        previous = current
    assert prefix_count(count, total, 0) == 0 and prefix_count(count, total, total) == count


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=1, max_size=6).filter(lambda cs: sum(cs) > 0),
    st.integers(3, 40),
    st.booleans(),
    st.integers(0, 2**32),
)
def test_layout_places_each_sample_once_in_order_and_counts_consumption(counts, block, shuffle, seed):
    def permute(b: int, size: int) -> torch.Tensor:
        return FeistelPermutation(size, seed, b)(torch.arange(size, dtype=torch.int64))

    layout = SegmentLayout(counts, permute if shuffle else None, block=block)
    total = sum(counts)
    positions = torch.arange(total, dtype=torch.int64)
    sources, numbers = layout.locate(positions)
    pairs = list(zip(sources.tolist(), numbers.tolist(), strict=True))
    assert Counter(pairs) == Counter((k, j) for k, n in enumerate(counts) for j in range(n)), "each sample once"
    for k in range(len(counts)):
        assert [j for s, j in pairs if s == k] == list(range(counts[k])), "a source's samples in order"
    for q in range(0, total + 1, max(1, total // 13)):
        assert layout.consumed(q) == [sum(1 for s, _ in pairs[:q] if s == k) for k in range(len(counts))]
    # Random access agrees with the whole-segment pass, in any order.
    shuffled = positions[torch.randperm(total)]
    again = layout.locate(shuffled)
    assert torch.equal(again[0], sources[shuffled]) and torch.equal(again[1], numbers[shuffled])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 40), st.integers(0, 120), st.integers(0, 2**40))
def test_source_numbering_is_exactly_once_per_source_epoch_with_growth(length, growth, grow_at, seed):
    cursor = SourceCursor.fresh(length)
    grown = cursor.grow(grow_at, length + growth) if growth else cursor
    table = SourceTable([source_seed(seed, "s")], [grown])
    g = torch.arange(grow_at, grow_at + 3 * (length + growth) + 5, dtype=torch.int64)
    epochs, indices = table.locate(torch.zeros_like(g), g)
    # Expected source epochs: those begun before the growth keep the old length (the one in progress is
    # finished over it, unless grow_at is its first sample), later ones use the new length.
    by_epoch: dict[int, list[int]] = {}
    for e, i in zip(epochs.tolist(), indices.tolist(), strict=True):
        by_epoch.setdefault(e, []).append(i)
    for e, items in by_epoch.items():
        size = length if e * length < grow_at else length + growth
        assert len(items) == len(set(items)) and all(0 <= i < size for i in items), (e, size, items)
        if e not in (min(by_epoch), max(by_epoch)):
            assert sorted(items) == list(range(size))
    # The numbering is a pure function: the same from the first cursor for samples before any growth.
    if not growth:
        plain = SourceTable([source_seed(seed, "s")], [cursor]).locate(torch.zeros_like(g), g)
        assert torch.equal(plain[1], indices)


def test_a_source_of_length_one_and_a_weight_of_zero():
    counts = largest_remainder([Fraction(0), Fraction(1), Fraction(3)], 100)
    assert counts == [0, 25, 75]
    table = SourceTable([source_seed(0, "one"), source_seed(0, "two")], [SourceCursor.fresh(1), SourceCursor.fresh(2)])
    epochs, indices = table.locate(torch.zeros(4, dtype=torch.int64), torch.arange(4))
    assert epochs.tolist() == [0, 1, 2, 3] and indices.tolist() == [0, 0, 0, 0]
    # Keys interleave the sources: index * #sources + source.
    assert table.keys(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])).tolist() == [0, 1, 3]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 20), st.integers(0, 5)), min_size=1, max_size=5).filter(
        lambda s: any(w for _, w in s)
    ),
    st.integers(1, 90),
    st.integers(0, 2**31),
)
def test_any_mixture_has_exact_counts_and_exactly_once_per_source_epoch(spec, total, seed):
    names = [f"s{k}" for k in range(len(spec))]
    sources = {name: list(range(n)) for name, (n, _) in zip(names, spec, strict=True)}
    mixture = Mixture(sources, {name: w for name, (_, w) in zip(names, spec, strict=True)}, samples_per_epoch=total)
    expected = largest_remainder([Fraction(w) for _, w in spec], total)
    sampler = ResumableSampler(mixture, seed=seed)
    delivered: dict[str, list[int]] = {name: [] for name in names}
    for _ in range(3):
        per_epoch = Counter()
        for key in sampler:
            name, index = mixture.locate_key(key)
            delivered[name].append(index)
            per_epoch[name] += 1
        assert [per_epoch[name] for name in names] == expected
    for name, (n, _) in zip(names, spec, strict=True):
        items = delivered[name]
        for at in range(0, len(items), n):
            chunk = items[at : at + n]
            assert len(set(chunk)) == len(chunk), f"{name}: a source epoch repeats an item"
            assert len(chunk) < n or sorted(chunk) == list(range(n)), f"{name}: a source epoch misses an item"


@pytest.mark.parametrize("sources", [3, 40])  # both ways of numbering a block's slots (one-hot, sort)
def test_many_sources_are_numbered_in_delivery_order(sources):
    counts = [7 + 5 * k for k in range(sources)]

    def permute(b: int, size: int) -> torch.Tensor:
        return torch.randperm(size, generator=torch.Generator().manual_seed(b))

    layout = SegmentLayout(counts, permute, block=300)
    found, numbers = layout.locate(torch.arange(sum(counts), dtype=torch.int64))
    for k in range(sources):
        assert numbers[found == k].tolist() == list(range(counts[k]))
    assert layout.consumed(1000) == torch.bincount(found[:1000], minlength=sources).tolist()

"""Patterns: exact counts, deterministic ties, and agreement with brute-force selection."""

import itertools
import math

import numpy as np
import pytest
import torch

import sparsity_lab as sl
from sparsity_lab import patterns
from sparsity_lab import patterns as patterns_mod
from sparsity_lab.patterns import (
    NM,
    Block,
    Channel,
    Input,
    Unstructured,
    prune_lowest,
    prune_lowest_by_sorting,
)


def scores(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def brute_force_keep(values, n_prune):
    """Python-only reference: prune the n lowest (value, index) pairs."""
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    keep = [True] * len(values)
    for i in order[:n_prune]:
        keep[i] = False
    return keep


@pytest.mark.parametrize("shape", [(10, 7), (6, 4, 3, 3), (13,)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_unstructured_exact_count_and_brute_force(shape, sparsity):
    s = scores(shape)
    keep = Unstructured().mask(s, sparsity)
    n = math.prod(shape)
    # round half up, and never every element below a sparsity of 1 (13 at 99% keeps one)
    assert int((~keep).sum()) == min(math.floor(sparsity * n + 0.5), n - 1)
    expected = brute_force_keep(s.flatten().tolist(), int((~keep).sum()))
    assert keep.flatten().tolist() == expected


def test_ties_are_broken_by_lower_index_first():
    keep = Unstructured().mask(torch.ones(2, 5), 0.3)
    assert keep.flatten().tolist() == [False, False, False] + [True] * 7


@pytest.mark.parametrize("reduction", ["l1", "l2", "sum", "max"])
def test_channel_prunes_whole_rows_with_lowest_reduced_score(reduction):
    s = torch.randn(8, 3, 2, generator=torch.Generator().manual_seed(1))
    keep = Channel().mask(s, 0.5, reduction=reduction)
    rows = s.reshape(8, -1).numpy()
    ref = {
        "l1": np.abs(rows).sum(1),
        "l2": np.sqrt((rows**2).sum(1)),
        "sum": rows.sum(1),
        "max": rows.max(1),
    }[reduction]
    expected_kept_rows = sorted(np.argsort(ref, kind="stable")[4:].tolist())
    kept_rows = [i for i in range(8) if keep[i].all()]
    assert kept_rows == expected_kept_rows
    assert all(keep[i].all() or (~keep[i]).all() for i in range(8))


def test_input_prunes_whole_input_channels_of_a_conv():
    s = scores((4, 6, 3, 3), seed=2)
    keep = Input().mask(s, 1 / 3)
    per_input = s.abs().sum(dim=(0, 2, 3))
    pruned = [j for j in range(6) if not keep[:, j].any()]
    assert len(pruned) == 2
    assert sorted(pruned) == sorted(torch.argsort(per_input)[:2].tolist())
    assert all(keep[:, j].all() for j in range(6) if j not in pruned)


def test_block_tiles_are_all_or_nothing_and_chosen_by_norm():
    s = scores((8, 12), seed=3)
    keep = Block(2, 3).mask(s, 0.25)
    tiles = []
    for bi, bj in itertools.product(range(4), range(4)):
        tile = keep[2 * bi : 2 * bi + 2, 3 * bj : 3 * bj + 3]
        assert tile.all() or (~tile).all()
        norm = float(s[2 * bi : 2 * bi + 2, 3 * bj : 3 * bj + 3].abs().sum())
        tiles.append((norm, bi * 4 + bj, bool(tile.all())))
    pruned = [t for t in tiles if not t[2]]
    assert len(pruned) == 4
    assert sorted(pruned) == sorted(tiles)[:4]


def test_block_on_conv_uses_the_matrix_view():
    keep = Block(2, 9).mask(scores((4, 2, 3, 3)), 0.5)
    flat = keep.reshape(4, 18)
    assert (~flat).sum() == 36
    for bi, bj in itertools.product(range(2), range(2)):
        tile = flat[2 * bi : 2 * bi + 2, 9 * bj : 9 * bj + 9]
        assert tile.all() or (~tile).all()


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (3, 5)])
def test_nm_keeps_the_n_largest_of_every_m_along_inputs(n, m):
    s = scores((6, 4 * m), seed=4)
    keep = NM(n, m).mask(s)
    for row in range(6):
        for g in range(4):
            block = s[row, g * m : (g + 1) * m]
            k = keep[row, g * m : (g + 1) * m]
            assert int(k.sum()) == n
            assert sorted(torch.argsort(block, descending=True)[:n].tolist()) == sorted(
                torch.nonzero(k).flatten().tolist()
            )


def test_nm_on_conv_groups_input_channels_at_each_kernel_position():
    s = scores((3, 8, 2, 2), seed=5)
    keep = NM(2, 4).mask(s)
    for o, i0, kh, kw in itertools.product(range(3), (0, 4), range(2), range(2)):
        assert int(keep[o, i0 : i0 + 4, kh, kw].sum()) == 2


def test_nm_fixed_sparsity_and_mismatch():
    assert NM(2, 4).fixed_sparsity == 0.5
    with pytest.raises(ValueError, match="by construction"):
        NM(2, 4).mask(scores((2, 8)), 0.9)


def test_prior_pruned_groups_stay_pruned():
    s = scores((10,), seed=6)
    prior = torch.ones(10, dtype=torch.bool)
    prior[torch.argmax(s)] = False  # the best weight was pruned before
    keep = Unstructured().mask(s, 0.3, prior=prior)
    assert not keep[torch.argmax(s)]
    assert int((~keep).sum()) == 3


@pytest.mark.parametrize("bad", [1.0, 1.2, -0.1, float("nan")])
def test_sparsity_outside_unit_interval_fails(bad):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        Unstructured().mask(scores((4, 4)), bad)


def test_impossible_structures_fail_clearly():
    with pytest.raises(ValueError, match="not a multiple of 4"):
        NM(2, 4).mask(scores((4, 6)))
    with pytest.raises(ValueError, match="does not tile"):
        Block(4, 4).mask(scores((6, 8)), 0.5)
    with pytest.raises(ValueError, match="at least 2 dims"):
        Channel().mask(scores((6,)), 0.5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        Channel().mask(scores((6, 2)), 0.5, reduction="median")
    with pytest.raises(ValueError, match="NaN"):
        Unstructured().mask(torch.tensor([1.0, float("nan")]), 0.5)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("unstructured", Unstructured()),
        ("2:4", NM(2, 4)),
        ("nm:4:8", NM(4, 8)),
        ("nm", NM(2, 4)),
        ("block", Block(4, 4)),
        ("block:8x1", Block(8, 1)),
        ("channel", Channel()),
        ("input", Input()),
    ],
)
def test_pattern_specs(spec, expected):
    assert patterns.get(spec) == expected


def test_unknown_pattern_lists_choices():
    with pytest.raises(ValueError, match="unknown pattern 'chanel'.*channel"):
        patterns.get("chanel")


def test_sparsity_may_be_any_real_scalar_and_rounds_half_up_exactly():
    s = scores((100,))
    assert int((~Unstructured().mask(s, np.float32(0.5))).sum()) == 50
    assert int((~Unstructured().mask(s, torch.tensor(0.25))).sum()) == 25
    assert patterns.count(0.145, 100) == 15  # 14.5 rounds up, despite binary floating point
    with pytest.raises(TypeError, match="must be a number"):
        Unstructured().mask(s, "0.5")
    with pytest.raises(TypeError, match="must be a number"):
        Unstructured().mask(s, True)


@pytest.mark.parametrize("reduction", ["l1", "l2", "sum", "max"])
def test_a_single_weight_is_ranked_by_its_signed_score(reduction):
    """Signed criteria (GraSP, movement, exact-Hessian OBD) define higher = keep on the
    signed value; abs() would prune the small positives and keep the large negatives."""
    scores = torch.tensor([[-3.0, 1.0, 2.0, -0.5]])
    keep = Unstructured().prune_groups(scores, 2, reduction)
    assert keep.tolist() == [[False, True, True, False]]


def test_count_differs_from_torch_only_at_decimal_ties():
    from fractions import Fraction

    from torch.nn.utils.prune import _compute_nparams_toprune

    from sparsity_lab.patterns import count

    ties = differ = 0
    for percent in range(1, 100):
        s = percent / 100
        for n in range(1, 120):
            tie = (Fraction(repr(s)) * n).denominator == 2
            ties += tie
            if count(s, n) != _compute_nparams_toprune(s, n):
                differ += 1
                assert tie, (s, n)  # only a tie may round differently
                assert count(s, n) == math.floor(Fraction(repr(s)) * n) + 1  # ours: half up
    assert 0 < differ <= ties


@pytest.mark.parametrize(
    ("pattern", "shape", "sparsity"),
    [(Input(), (3, 5), 0.9), (Channel(), (1, 4), 0.5), (Channel(), (3, 4), 0.99)],
)
def test_a_sparsity_below_one_never_empties_a_tensor(pattern, shape, sparsity):
    keep = pattern.mask(torch.rand(shape), sparsity)
    assert keep.any()
    model = torch.nn.Sequential(torch.nn.Linear(shape[1], shape[0]))
    sl.prune(model, "magnitude", sparsity, pattern=pattern, budget="uniform")
    assert int(sl.masks.get_mask(model, "0.weight").sum()) == int(keep.sum())  # one rule


@pytest.mark.parametrize("bracketed", [False, True], ids=["kthvalue", "bracketed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prune_lowest_selects_what_a_stable_sort_selects_ties_and_infinities_included(
    bracketed, dtype, monkeypatch
):
    """The partial selection against the reference sort, on scores full of ties (small
    integers), -inf (already pruned groups), -0.0 beside 0.0, and every count; with the
    threshold from kthvalue and from the bracketed selection that large inputs use."""
    monkeypatch.setattr(patterns_mod, "BRACKETED_SELECTION", 0 if bracketed else 2**62)
    gen = torch.Generator().manual_seed(0)
    for trial in range(200):
        n = int(torch.randint(1, 60, (1,), generator=gen))
        scores = torch.randint(0, 4, (n,), generator=gen).to(dtype)
        scores[torch.rand(n, generator=gen) < 0.2] = -math.inf
        if trial % 2:
            scores[scores == 0] = -0.0
        for k in range(n + 2):
            got = prune_lowest(scores, k)
            assert torch.equal(got, prune_lowest_by_sorting(scores, k)), (scores, k)
            assert int((~got).sum()) == min(k, n)


@pytest.mark.parametrize("bracketed", [False, True], ids=["kthvalue", "bracketed"])
def test_lowest_counts_split_what_a_stable_sort_of_the_concatenation_prunes(bracketed, monkeypatch):
    """The global budget's selection over several layers, none concatenated, against the
    reference: a stable sort of the concatenation, its pruned entries counted per part.
    Ties (small integers) cross the parts, with -inf, -0.0 beside 0.0, mixed dtypes and
    empty parts, at every count."""
    monkeypatch.setattr(patterns_mod, "BRACKETED_SELECTION", 0 if bracketed else 2**62)
    gen = torch.Generator().manual_seed(3)
    for trial in range(150):
        parts = []
        for p in range(int(torch.randint(1, 5, (1,), generator=gen))):
            n = int(torch.randint(0 if p else 1, 25, (1,), generator=gen))
            x = torch.randint(0, 4, (n,), generator=gen).to(
                torch.float32 if (trial + p) % 2 else torch.float64
            )
            x[torch.rand(n, generator=gen) < 0.2] = -math.inf
            x[x == 0] = -0.0 if trial % 3 else 0.0
            parts.append(x)
        joined = torch.cat(parts)
        for k in range(joined.numel() + 2):
            pruned = ~prune_lowest_by_sorting(joined, k)
            expected = [int(c.sum()) for c in pruned.split([p.numel() for p in parts])]
            assert patterns_mod.lowest_counts(parts, k) == expected, (parts, k)
    with pytest.raises(ValueError, match="NaN"):
        patterns_mod.lowest_counts([torch.ones(2), torch.tensor([math.nan])], 1)
    # 0.1 in float32 is 0.10000000149: above 0.1 in float64, whichever part comes first
    tenth = [torch.tensor([0.1, 5.0]), torch.tensor([0.1, 5.0], dtype=torch.float64)]
    assert patterns_mod.lowest_counts(tenth, 1) == [0, 1]
    assert patterns_mod.lowest_counts(tenth[::-1], 1) == [1, 0]
    assert patterns_mod.lowest_counts([], 3) == []


def test_prune_lowest_on_a_layer_sized_input_selects_what_a_stable_sort_selects():
    """At a real layer's size the default path selects in a bracket (LeNet-300-100's first
    layer: 235,200 weights): against the reference sort, on magnitudes with many ties
    (rounded), zeros and -inf, at low, middle and high counts."""
    n = 300 * 784
    assert n > patterns_mod.BRACKETED_SELECTION  # the path the methods take every step
    gen = torch.Generator().manual_seed(4)
    scores = (torch.randn(n, generator=gen).abs() * 50).round()
    scores[torch.rand(n, generator=gen) < 0.05] = -math.inf
    for k in (1, n // 10, n // 2, 9 * n // 10, n - 3):
        got = prune_lowest(scores, k)
        assert torch.equal(got, prune_lowest_by_sorting(scores, k)), k
        assert int((~got).sum()) == k


def test_infinities_of_both_signs_are_not_taken_for_nan():
    """The NaN check sums the scores first, and +inf plus -inf sums to NaN too."""
    scores = torch.tensor([math.inf, -math.inf, 1.0, 2.0])
    assert prune_lowest(scores, 2).tolist() == [True, False, False, True]
    with pytest.raises(ValueError, match="NaN"):
        prune_lowest(torch.tensor([math.inf, -math.inf, math.nan]), 1)


def test_the_bracketed_kth_smallest_equals_kthvalue():
    """Against torch's kthvalue: ties, both infinities and both zeros at every k, with the
    default bracket and with none (margin 0, which often misses and falls back)."""
    gen = torch.Generator().manual_seed(1)
    for trial in range(100):
        n = int(torch.randint(1, 40, (1,), generator=gen))
        x = (torch.randn(n, generator=gen, dtype=torch.float64) * 3).round() / 7
        x[torch.rand(n, generator=gen) < 0.15] = -math.inf
        x[torch.rand(n, generator=gen) < 0.1] = math.inf
        x[x == 0] = -0.0 if trial % 2 else 0.0
        for k in range(1, n + 1):
            for margin in (4.0, 0.0):
                got = patterns_mod.kth_smallest_bracketed(x, k, margin)
                assert got == x.kthvalue(k).values, (x, k, margin)
    with pytest.raises(ValueError, match="k must be in"):
        patterns_mod.kth_smallest_bracketed(torch.ones(3), 4)


def test_a_misleading_sample_falls_back_to_the_full_selection(monkeypatch):
    """A strided sample that sees only the even positions: zeros there, ones elsewhere.
    The bracket [0, 0] cannot hold the 75th percentile, so the full kthvalue answers."""
    n = 2**21  # the sample takes every 32nd score: all at even positions
    x = torch.zeros(n)
    x[1::2] = 1.0
    calls = []
    real = torch.Tensor.kthvalue
    monkeypatch.setattr(
        torch.Tensor, "kthvalue", lambda t, k: calls.append(t.numel()) or real(t, k)
    )
    assert patterns_mod.kth_smallest_bracketed(x, 3 * n // 4) == 1.0
    assert calls[-1] == n  # the last selection ran over everything
    calls.clear()
    x = torch.randn(n, generator=torch.Generator().manual_seed(2))
    assert patterns_mod.kth_smallest_bracketed(x, n // 3) == real(x, n // 3).values
    assert max(calls[2:]) < n // 50  # a fair sample: the selection ran on a small bracket

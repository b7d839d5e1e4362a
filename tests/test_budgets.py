"""Budgets: per-layer sparsities that meet the global target exactly, by formula."""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsity_lab as sl
from sparsity_lab import budgets, masks, registry, sensitivity
from sparsity_lab.patterns import Channel

SHAPES = {
    "conv1.weight": (16, 3, 3, 3),
    "conv2.weight": (32, 16, 3, 3),
    "fc1.weight": (128, 512),
    "fc2.weight": (10, 128),
}


def zeros(plan, shapes=SHAPES):
    return sum(round(plan[n] * math.prod(s)) for n, s in shapes.items())


def total(shapes=SHAPES):
    return sum(math.prod(s) for s in shapes.values())


@pytest.mark.parametrize("name", ["uniform", "er", "erk"])
@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.9, 0.987])
def test_shape_budgets_hit_the_target_exactly_in_parameters(name, sparsity):
    plan = budgets.allocate(name, SHAPES, sparsity)
    assert zeros(plan) == math.floor(sparsity * total() + 0.5)
    for n, s in plan.items():
        assert 0 <= s <= 1
        k = s * math.prod(SHAPES[n])
        assert abs(k - round(k)) < 1e-6  # a whole number of weights per layer


def test_uniform_gives_every_layer_the_same_sparsity_up_to_one_weight():
    plan = budgets.allocate("uniform", SHAPES, 0.8)
    for n, s in plan.items():
        assert abs(s - 0.8) <= 1 / math.prod(SHAPES[n])


def test_erk_density_is_proportional_to_its_formula():
    plan = budgets.allocate("erk", SHAPES, 0.9)
    ratios = [(1 - plan[n]) / (sum(s) / math.prod(s)) for n, s in SHAPES.items() if plan[n] > 0]
    assert max(ratios) / min(ratios) == pytest.approx(1, rel=0.05)  # rounding to whole weights


def test_er_ignores_kernel_size_and_erk_does_not():
    plan_er = budgets.allocate("er", SHAPES, 0.9)
    ratios = [
        (1 - plan_er[n]) * s[0] * s[1] / (s[0] + s[1]) for n, s in SHAPES.items() if plan_er[n] > 0
    ]
    assert max(ratios) / min(ratios) == pytest.approx(1, rel=0.05)
    assert budgets.allocate("erk", SHAPES, 0.9) != plan_er


def test_erk_saturated_layers_become_dense_and_the_rest_compensate():
    # At 50% the tiny first conv would need density > 1 under ERK's formula.
    plan = budgets.allocate("erk", SHAPES, 0.5)
    assert plan["conv1.weight"] == 0.0
    assert zeros(plan) == math.floor(0.5 * total() + 0.5)


def test_dense_layers_are_kept_and_counted_in_the_target():
    dense = ["conv1.weight", "fc2.weight"]
    for name in ["uniform", "erk", "er"]:
        plan = budgets.allocate(name, SHAPES, 0.8, dense=dense)
        assert plan["conv1.weight"] == plan["fc2.weight"] == 0
        assert zeros(plan) == math.floor(0.8 * total() + 0.5)


def test_impossible_dense_request_fails_clearly():
    with pytest.raises(ValueError, match="keep fewer layers dense"):
        budgets.allocate("uniform", SHAPES, 0.95, dense=["fc1.weight"])
    with pytest.raises(ValueError, match="not among the pruned tensors"):
        budgets.allocate("uniform", SHAPES, 0.5, dense=["fc3.weight"])


def test_global_matches_a_brute_force_threshold():
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(s, generator=g) for n, s in SHAPES.items()}
    plan = budgets.allocate("global", SHAPES, 0.7, scores=scores)
    everything = torch.cat([s.flatten() for s in scores.values()])
    threshold = torch.sort(everything).values[math.floor(0.7 * everything.numel() + 0.5) - 1]
    for n, s in scores.items():
        assert plan[n] * s.numel() == pytest.approx(int((s <= threshold).sum()))


def test_global_needs_scores():
    with pytest.raises(ValueError, match="scores"):
        budgets.allocate("global", SHAPES, 0.5)


def test_structured_budgets_prune_whole_groups_near_the_target():
    plan = budgets.allocate("uniform", SHAPES, 0.5, pattern=Channel())
    for n, s in SHAPES.items():
        pruned_rows = plan[n] * s[0]
        assert pruned_rows == pytest.approx(round(pruned_rows))
        assert abs(plan[n] - 0.5) <= 0.5 / s[0] + 1e-9


def lenet_like(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 5)
    )


def test_global_magnitude_equals_torch_global_unstructured():
    ours, theirs = lenet_like(), lenet_like()
    sl.prune(ours, "magnitude", 0.8, budget="global")
    params = [(theirs[i], "weight") for i in (0, 2, 4)]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, amount=0.8)
    for i in (0, 2, 4):
        assert torch.equal(
            sl.masks.get_mask(ours, f"{i}.weight").bool(), theirs[i].weight_mask.bool()
        )


def test_uniform_magnitude_equals_torch_l1_unstructured():
    ours, theirs = lenet_like(), lenet_like()
    sl.prune(ours, "magnitude", 0.75, budget="uniform")
    for i in (0, 2, 4):
        torch_prune.l1_unstructured(theirs[i], "weight", amount=0.75)
        assert torch.equal(
            sl.masks.get_mask(ours, f"{i}.weight").bool(), theirs[i].weight_mask.bool()
        )


def test_structured_budgets_take_the_nearest_total_of_whole_groups():
    shapes = {"a": (7, 100), "b": (7, 100), "c": (7, 100)}
    for sparsity in [0.07, 0.3, 0.5, 0.8]:
        plan = budgets.allocate("uniform", shapes, sparsity, pattern=Channel())
        pruned_groups = sum(round(plan[n] * 7) for n in shapes)
        assert pruned_groups == math.floor(sparsity * 21 + 0.5)  # 100 weights per group


def test_structured_rounding_never_empties_a_layer_the_budget_keeps_alive():
    shapes = {"a": (7, 100), "b": (7, 100), "c": (7, 100)}
    plan = budgets.allocate("uniform", shapes, 0.9, pattern=Channel())
    assert all(plan[n] < 1 for n in shapes)


def test_unequal_group_sizes_get_close_to_the_target():
    shapes = {"a": (7, 100), "b": (5, 30), "c": (9, 64)}
    total = 700 + 150 + 576
    for sparsity in [0.3, 0.5, 0.8]:
        plan = budgets.allocate("erk", shapes, sparsity, pattern=Channel())
        zeros_got = sum(round(plan[n] * s[0]) * s[1] for n, s in shapes.items())
        assert abs(zeros_got - sparsity * total) <= 100  # within the largest group size


# --- LAMP and sensitivity budgets -------------------------------------------------------------


def test_lamp_budget_on_a_hand_example_spares_the_layer_of_few_large_weights():
    shapes = {"a": (4,), "b": (2,)}
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([10.0, 20.0])}
    # LAMP: a -> 1/30, 4/29, 9/25, 1 and b -> 100/500, 1; the three lowest are a1, a2, b1
    assert budgets.allocate("lamp_budget", shapes, 0.5, scores=scores) == {"a": 0.5, "b": 0.5}
    # a global magnitude threshold takes a1, a2, a3 instead
    assert budgets.allocate("global", shapes, 0.5, scores=scores) == {"a": 0.75, "b": 0.0}


def test_lamp_and_sensitivity_budgets_need_scores():
    with pytest.raises(ValueError, match="scores"):
        budgets.allocate("lamp_budget", SHAPES, 0.5)
    with pytest.raises(ValueError, match="curves"):
        budgets.allocate("sensitivity_budget", SHAPES, 0.5)


def test_sensitivity_budget_equalises_measured_curves():
    # loss increase s in layer a and 4 s^2 in layer b: at 50% overall, s_a = 4 s_b^2 and
    # s_a + s_b = 1, so s_b = (sqrt(17) - 1) / 8
    shapes = {"a": (1000,), "b": (1000,)}
    grid = [i / 100 for i in range(1, 100)]
    curves = {"a": [(s, s) for s in grid], "b": [(s, 4 * s * s) for s in grid]}
    plan = budgets.sensitivity_budget(shapes, 0.5, curves=curves)
    s_b = (math.sqrt(17) - 1) / 8
    assert plan["b"] == pytest.approx(s_b, abs=2e-3)
    assert plan["a"] + plan["b"] == pytest.approx(1.0)


def test_sensitivity_budget_from_scores_cannot_be_improved_by_moving_one_weight():
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(s, generator=g) * (i + 1) for i, (n, s) in enumerate(SHAPES.items())}
    plan = budgets.allocate("sensitivity_budget", SHAPES, 0.8, scores=scores)
    assert zeros(plan) == math.floor(0.8 * total() + 0.5)
    paid, next_cost = [], []
    for n, s in scores.items():
        squares = torch.sort(s.flatten().double().pow(2)).values
        share = squares.cumsum(0) / squares.sum()  # cost of pruning the k smallest
        k = round(plan[n] * s.numel())
        paid.append(float(share[k - 1]) if k else 0.0)
        next_cost.append(float(share[k]) if k < s.numel() else math.inf)
    assert max(paid) <= min(next_cost) + 1e-9


def test_measure_sensitivity_prunes_one_layer_at_a_time():
    model = lenet_like()
    g = torch.Generator().manual_seed(0)
    data = (torch.randn(64, 30, generator=g), torch.randint(0, 5, (64,), generator=g))
    curves = sensitivity.measure(model, data, sparsities=[0.5, 0.9])
    loss = nn.CrossEntropyLoss()
    with torch.no_grad():
        base = float(loss(model(data[0]), data[1]))
        for i in (0, 2, 4):
            for s, measured in zip([0.5, 0.9], curves[f"{i}.weight"], strict=True):
                other = lenet_like()
                torch_prune.l1_unstructured(other[i], "weight", amount=s)
                assert measured[0] == s
                assert measured[1] == pytest.approx(float(loss(other(data[0]), data[1])) - base)
    plan = budgets.sensitivity_budget(
        {n: tuple(model.get_parameter(n).shape) for n in curves}, 0.7, curves=curves
    )
    assert sum(plan[n] * model.get_parameter(n).numel() for n in plan) == pytest.approx(
        round(0.7 * sum(model.get_parameter(n).numel() for n in plan)), abs=0.5
    )


def test_prune_by_sensitivity_meets_the_target_with_per_layer_magnitude_masks():
    model = lenet_like()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(64, 30, generator=g), torch.randint(0, 5, (64,), generator=g))
    plan = sensitivity.prune_by_sensitivity(model, 0.8, data, sparsities=[0.5, 0.8, 0.95])
    names = ["0.weight", "2.weight", "4.weight"]
    total = sum(masks.weight(model, n).numel() for n in names)
    zeros = sum(int((masks.get_mask(model, n) == 0).sum()) for n in names)
    assert zeros == round(0.8 * total)
    assert len(set(plan.values())) > 1  # the sweep spreads the zeros unevenly
    for i, n in zip((0, 2, 4), names, strict=True):
        # each layer pruned alone by magnitude, as torch would at the planned count
        other = lenet_like()
        count = round(plan[n] * other[i].weight.numel())
        torch_prune.l1_unstructured(other[i], "weight", amount=count)
        assert torch.equal(masks.get_mask(model, n).bool(), other[i].weight_mask.bool())


def test_sensitivity_budget_empties_a_layer_only_when_the_target_forces_it():
    # pruning "a" costs nothing as far as measured, yet its last weight is never taken
    # while "b" still has weights to give
    shapes = {"a": (10,), "b": (10,)}
    curves = {"a": [(0.5, 0.0), (0.9, 0.0)], "b": [(0.5, 1.0), (0.9, 2.0)]}
    plan = budgets.sensitivity_budget(shapes, 0.5, curves=curves)
    assert plan == {"a": 0.9, "b": 0.1}
    plan = budgets.sensitivity_budget(shapes, 0.95, curves=curves)
    assert plan == {"a": 0.9, "b": 1.0} or plan == {"a": 1.0, "b": 0.9}


@pytest.mark.parametrize("budget", ["lamp_budget", "sensitivity_budget"])
def test_budgets_that_square_scores_refuse_signed_ones(budget):
    shapes = {"a": (4, 4), "b": (4, 4)}
    signed = {"a": torch.linspace(-1, 1, 16).reshape(4, 4), "b": torch.rand(4, 4)}
    with pytest.raises(ValueError, match="magnitudes"):
        budgets.allocate(budget, shapes, 0.5, scores=signed)
    plan = budgets.allocate(budget, shapes, 0.5, scores={n: s.abs() for n, s in signed.items()})
    assert sum(plan.values()) == pytest.approx(1.0)


def test_densities_are_the_erk_formula_before_rounding_and_allocate_rounds_them():
    shapes = {"a": (64, 32), "b": (32, 16, 3, 3), "c": (10, 32)}
    dens = budgets.densities("erk", shapes, 0.8)
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}  # (n_in + n_out + kh + kw) / size
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    kept = sum(sizes.values()) - round(0.8 * sum(sizes.values()))  # whole weights kept
    unsaturated = {n for n in shapes if dens[n] < 1}
    eps = (kept - sum(sizes[n] for n in shapes if n not in unsaturated)) / sum(
        raw[n] * sizes[n] for n in unsaturated
    )
    for n in unsaturated:
        assert dens[n] == pytest.approx(eps * raw[n])
    plan = budgets.allocate("erk", shapes, 0.8)
    for n in shapes:  # whole weights: within one weight of the continuous density
        assert abs((1 - plan[n]) - dens[n]) <= 1 / sizes[n] + 1e-12
    with pytest.raises(ValueError, match="ranks scores"):
        budgets.densities("global", shapes, 0.8)


def test_budgets_declare_whether_they_rank_scores(monkeypatch):
    registry.available()  # load the built-in ones; the test's own goes with the patch
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    assert [b for b in registry.available("budget") if budgets.needs_scores(b)] == [
        "global",
        "lamp_budget",
        "owl",
        "sensitivity_budget",
    ]

    @registry.register("budget", "by_hand_scored")
    @budgets.scored
    def by_hand(shapes, sparsity, *, scores=None, **options):
        return budgets.global_(shapes, sparsity, scores=scores, **options)

    assert budgets.needs_scores("by_hand_scored")
    with pytest.raises(KeyError, match="Did you mean"):
        budgets.needs_scores("globall")


# --- OWL ------------------------------------------------------------------------------------


def outlier_scores(size, outliers):
    """Scores of ones with ``outliers`` entries of 100: above 5x the mean while fewer than
    about a fifth of the entries are outliers."""
    s = torch.ones(size, dtype=torch.float64)
    s[:outliers] = 100.0
    return s


def test_owl_gives_the_layer_with_more_outliers_lambda_less_sparsity_by_hand():
    """Two layers of 100: A has 10 outliers (10 > 5 x mean 10.9 ... its 100s), B none.
    Scaled to [0, 2 lam] the ratios are 0.16 and 0; shifted to a mean density of 0.5 they
    are 0.58 and 0.42, the paper's formula (density = spread - mean + 1 - s)."""
    shapes = {"a": (10, 10), "b": (10, 10)}
    scores = {"a": outlier_scores(100, 10), "b": outlier_scores(100, 0)}
    plan = budgets.owl(shapes, 0.5, scores=scores)
    assert plan == pytest.approx({"a": 0.42, "b": 0.58})
    wider = budgets.owl(shapes, 0.5, scores=scores, lam=0.2)
    assert wider == pytest.approx({"a": 0.30, "b": 0.70})


def test_owl_meets_the_target_exactly_with_layers_of_different_sizes_and_dense_ones():
    shapes = {"a": (30, 10), "b": (7, 13), "c": (50, 4), "d": (5, 5)}
    gen = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(math.prod(s), generator=gen) ** 8 for n, s in shapes.items()}
    for sparsity in (0.3, 0.6, 0.9):
        plan = budgets.owl(shapes, sparsity, scores=scores, dense=["d"])
        zeros = sum(round(plan[n] * math.prod(shapes[n])) for n in shapes)
        assert zeros == round(sparsity * sum(math.prod(s) for s in shapes.values()))
        assert plan["d"] == 0.0
    with pytest.raises(ValueError, match="scores"):
        budgets.owl(shapes, 0.5)


def test_owl_is_registered_as_a_budget_that_needs_scores_and_prunes_with_wanda():
    assert budgets.needs_scores("owl")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    x = torch.randn(64, 16)
    x[:, 0] *= 50  # an outlier feature: fc1's column 0 scores high under wanda
    sl.prune(model, "wanda", 0.6, budget="owl", data=(x, None))
    found = masks.masks(model)
    zeros = sum(int((m == 0).sum()) for m in found.values())
    assert zeros == round(0.6 * (16 * 32 + 32 * 8))


def test_the_global_budget_ranks_integer_and_float_scores_exactly_together():
    """Integer scores beside float32 ones: the float32 concatenation would round 2**24 + 1
    to 2**24 and tie it with the float score; in float64 it stays larger."""
    big = 2**24
    shapes = {"a": (2,), "b": (2,)}
    scores = {"a": torch.tensor([big + 1, 10**9]), "b": torch.tensor([float(big), 1e9])}
    densities = budgets.global_(shapes, 0.25, scores=scores)
    assert densities == {"a": 0.0, "b": 0.5}  # b's 2**24 is the lowest score
    masked = budgets.global_(shapes, 0.25, scores=scores, min_density=0.5)
    assert masked == {"a": 0.0, "b": 0.5}

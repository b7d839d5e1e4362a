"""Data-free criteria against hand examples, brute force and exact output preservation."""

import math

import pytest
import torch
from helpers import mlp
from torch import nn

import sparsity_lab as sl
from sparsity_lab import budgets, masks
from sparsity_lab.criteria import data_free
from sparsity_lab.criteria.base import Context


def deep_mlp(seed=0, sizes=(6, 8, 5, 3)):
    return mlp(*sizes, seed=seed)


class TinyCNN(nn.Module):
    """conv -> relu -> pool -> conv -> relu -> flatten -> linear, on 1x8x8 images."""

    def __init__(self):
        super().__init__()
        self.input_shape = (1, 8, 8)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


def test_lamp_scores_match_a_hand_computed_example():
    # sorted squares 1, 4, 9, 16: each over the sum of itself and the larger ones
    w = torch.tensor([3.0, -1.0, 4.0, 2.0])
    expected = torch.tensor([9 / 25, 1 / 30, 16 / 16, 4 / 29], dtype=torch.float64)
    assert torch.allclose(budgets.lamp_scores(w.double()), expected, rtol=1e-15, atol=0)
    assert torch.equal(w, torch.tensor([3.0, -1.0, 4.0, 2.0]))  # left as it was
    # float32 weights get float32 scores: the float64 ones, rounded; 16-bit ones too
    assert torch.equal(budgets.lamp_scores(w), expected.float())
    assert torch.equal(budgets.lamp_scores(w.half()), expected.float())
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(w.reshape(1, 4))
    scores = data_free.Lamp().scores(model, ["weight"], Context())
    assert torch.equal(scores["weight"].flatten(), expected.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lamp_scores_keep_pruned_entries_at_minus_infinity(dtype):
    values = torch.tensor([-math.inf, 1.0, 2.0], dtype=dtype)
    kept = values.clone()
    out = budgets.lamp_scores(values)
    assert torch.equal(values, kept)  # the input is left as it was
    assert out[0] == -math.inf
    assert torch.equal(out[1:], torch.tensor([1 / 5, 1.0], dtype=torch.float64).to(dtype))


def test_lamp_global_equals_magnitude_with_the_lamp_budget():
    a, b = deep_mlp(), deep_mlp()
    sl.prune(a, "lamp", 0.8, budget="global")
    sl.prune(b, "magnitude", 0.8, budget="lamp_budget")
    for n in sl.pruning.default_targets(a):
        assert torch.equal(masks.get_mask(a, n), masks.get_mask(b, n))


def test_lamp_never_empties_a_layer_where_global_magnitude_does():
    model = deep_mlp()
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # a layer of tiny weights
    lamp, magnitude = deep_mlp(), deep_mlp()
    lamp.load_state_dict(model.state_dict())
    magnitude.load_state_dict(model.state_dict())
    sl.prune(lamp, "lamp", 0.9)
    sl.prune(magnitude, "magnitude", 0.9)
    assert masks.get_mask(magnitude, "2.weight").sum() == 0
    for n in sl.pruning.default_targets(lamp):
        mask, w = masks.get_mask(lamp, n), model.get_parameter(n).abs()
        assert mask.flatten()[w.flatten().argmax()] == 1  # each layer keeps its largest weight


def test_lamp_on_channels_ranks_rows_by_their_l2_norms():
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]]))  # norms 5, 1, 2
    scores = data_free.Lamp().group_scores(model, ["weight"], sl.patterns.Channel(), Context())
    expected = torch.tensor([25 / 25, 1 / 30, 4 / 29], dtype=torch.float64)
    assert torch.allclose(scores["weight"], expected)


@pytest.mark.parametrize("p", [1, 2])
def test_group_norm_keeps_the_rows_of_largest_norm(p):
    model = deep_mlp()
    sl.prune(
        model, "group_norm", 0.5, pattern="channel", budget="uniform", p=p, targets=["0.weight"]
    )
    w = deep_mlp()[0].weight.detach()
    norms = w.abs().sum(1) if p == 1 else w.pow(2).sum(1).sqrt()
    kept_rows = masks.get_mask(model, "0.weight").any(dim=1)
    assert set(torch.nonzero(kept_rows).flatten().tolist()) == set(norms.argsort()[4:].tolist())


def test_group_norm_on_inputs_keeps_the_columns_of_largest_l1_norm():
    model = deep_mlp()
    sl.prune(model, "group_norm", 0.5, pattern="input", budget="uniform", targets=["0.weight"])
    norms = deep_mlp()[0].weight.detach().abs().sum(0)
    kept = masks.get_mask(model, "0.weight").any(dim=0)
    assert set(torch.nonzero(kept).flatten().tolist()) == set(norms.argsort()[3:].tolist())


def test_group_norm_rejects_other_norms():
    with pytest.raises(ValueError, match="p=1"):
        sl.prune(deep_mlp(), "group_norm", 0.5, pattern="channel", p=3)


def test_fpgm_removes_the_filter_nearest_the_geometric_median_not_the_smallest():
    model = nn.Linear(1, 4)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.0], [1.0], [2.0], [10.0]]))
    # summed distances to the others: 13, 11, 11, 27; the tie goes to the lower index
    scores = data_free.fpgm_scores(model.weight.detach())
    assert torch.allclose(scores, torch.tensor([13.0, 11.0, 11.0, 27.0], dtype=torch.float64))
    sl.prune(model, "fpgm", 0.25, pattern="channel")
    assert masks.get_mask(model, "weight").flatten().tolist() == [1, 0, 1, 1]


def test_fpgm_scores_equal_a_brute_force_sum_of_distances():
    w = torch.randn(6, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    brute = [sum(float((w[i] - w[j]).norm()) for j in range(6)) for i in range(6)]
    assert torch.allclose(data_free.fpgm_scores(w), torch.tensor(brute, dtype=torch.float64))


def test_fpgm_needs_the_channel_pattern():
    with pytest.raises(ValueError, match="pattern='channel'"):
        sl.prune(deep_mlp(), "fpgm", 0.5)


def duplicate_unit(layer, source, copy_to, scale=1.0):
    with torch.no_grad():
        layer.weight[copy_to] = scale * layer.weight[source]
        layer.bias[copy_to] = scale * layer.bias[source]


def test_neuron_merge_of_duplicated_neurons_leaves_the_output_unchanged():
    model = deep_mlp()
    duplicate_unit(model[0], 1, 5)
    duplicate_unit(model[2], 0, 3)
    x = torch.randn(50, 6)
    before = model(x)
    # one unit out of each layer: exactly one twin (no other unit costs nothing)
    sl.prune(model, "neuron_merge", 1 / 8, pattern="channel", targets=["0.weight"])
    sl.prune(model, "neuron_merge", 1 / 5, pattern="channel", targets=["2.weight"])
    assert not masks.get_mask(model, "0.weight")[[1, 5]].all()  # one twin went ...
    assert not masks.get_mask(model, "2.weight")[[0, 3]].all()
    assert torch.allclose(model(x), before, atol=1e-6)  # ... into the other


def test_neuron_merge_of_duplicated_filters_before_a_flatten_leaves_the_output_unchanged():
    torch.manual_seed(0)
    model = TinyCNN()
    duplicate_unit(model.conv2, 4, 1)
    x = torch.randn(10, 1, 8, 8)
    before = model(x)
    sl.prune(model, "neuron_merge", 0.2, pattern="channel", targets=["conv2.weight"])
    assert masks.get_mask(model, "conv2.weight")[1].sum() == 0
    assert torch.allclose(model(x), before, atol=1e-6)


def test_neuron_merge_removes_first_the_unit_of_least_saliency():
    model = deep_mlp()
    w = torch.cat([model[0].weight, model[0].bias[:, None]], 1).detach()
    a = model[2].weight.detach()
    saliency = [
        float(a[:, j].pow(2).mean())
        * min(float((w[j] - w[i]).pow(2).sum()) for i in range(8) if i != j)
        for j in range(8)
    ]
    sl.prune(model, "neuron_merge", 1 / 8, pattern="channel", targets=["0.weight"])
    removed = torch.nonzero(~masks.get_mask(model, "0.weight").bool().any(1)).flatten().tolist()
    assert removed == [min(range(8), key=saliency.__getitem__)]


def test_neuron_merge_needs_a_layer_that_reads_the_units():
    with pytest.raises(ValueError, match="exclude"):
        sl.prune(deep_mlp(), "neuron_merge", 0.5, pattern="channel")
    with pytest.raises(ValueError, match="pattern='channel'"):
        sl.prune(deep_mlp(), "neuron_merge", 0.5, exclude=["4.weight"])


BUDGETS = sl.registry.available("budget")


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", ["magnitude", "random", "lamp", "group_norm"])
def test_unstructured_criteria_hit_the_target_exactly_with_every_budget(method, budget):
    model = deep_mlp()
    sl.prune(model, method, 0.7, budget=budget)
    names = sl.pruning.default_targets(model)
    total = sum(masks.weight(model, n).numel() for n in names)
    assert sl.pruning.sparsity(model) * total == round(0.7 * total)


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", ["lamp", "group_norm", "fpgm", "neuron_merge"])
def test_unit_criteria_remove_whole_units_to_the_exact_target_with_every_budget(method, budget):
    # hidden units of 6 inputs each: half the weights of the two layers is exactly 6 units
    model = deep_mlp(sizes=(6, 6, 6, 3))
    sl.prune(model, method, 0.5, pattern="channel", budget=budget, exclude=["4.weight"])
    removed = 0
    for n in ["0.weight", "2.weight"]:
        rows = masks.get_mask(model, n).sum(1)
        assert set(rows.tolist()) <= {0.0, 6.0}  # each unit whole
        removed += int((rows == 0).sum())
    assert removed == 6

"""Data-driven criteria against direct computations, and merges that keep the output."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from torch import nn

import sparsity_lab as sl
from sparsity_lab import masks
from sparsity_lab.criteria import data_driven
from sparsity_lab.criteria.base import Context
from sparsity_lab.patterns import Channel


def deep_mlp(seed=0, sizes=(6, 8, 5, 3)):
    return mlp(*sizes, seed=seed)


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 4, 3)

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        return self.fc(torch.relu(self.conv2(x)).flatten(1))


def batch(n=64, shape=(6,), seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def unit_scores(criterion, model, names, data, **options):
    crit = sl.criteria.get(criterion, **options)
    return crit.group_scores(model, names, Channel(), Context(data=data))


# --- statistics of the units -------------------------------------------------------------


def test_apoz_and_mean_activation_equal_direct_statistics_of_the_relu_output():
    model, data = deep_mlp(), batch()
    z = model[0](data[0]).detach()
    apoz = unit_scores("apoz", model, ["0.weight"], data)["0.weight"]
    mean = unit_scores("mean_activation", model, ["0.weight"], data)["0.weight"]
    assert torch.allclose(apoz, (z > 0).double().mean(0))  # 1 - APoZ
    assert torch.allclose(mean, torch.relu(z).double().mean(0))


def test_apoz_averages_over_the_positions_of_a_feature_map():
    torch.manual_seed(0)
    model, data = TinyCNN(), batch(8, (1, 8, 8))
    z = model.conv1(data[0]).detach()
    apoz = unit_scores("apoz", model, ["conv1.weight"], data)["conv1.weight"]
    assert torch.allclose(apoz, (z > 0).double().mean(dim=(0, 2, 3)))


def test_apoz_prunes_the_unit_that_is_never_active():
    model, data = deep_mlp(), batch()
    with torch.no_grad():
        model[0].bias[3] = -100.0  # unit 3 is always zero after the ReLU
    sl.prune(model, "apoz", 1 / 8, pattern="channel", targets=["0.weight"], data=data)
    assert masks.get_mask(model, "0.weight")[3].sum() == 0


@pytest.mark.parametrize("name", ["apoz", "mean_activation", "sensitivity", "nisp"])
def test_unit_criteria_need_the_channel_pattern_and_data(name):
    with pytest.raises(ValueError, match="pattern='channel'"):
        sl.prune(deep_mlp(), name, 0.5, data=batch())
    with pytest.raises(ValueError, match="needs data"):
        sl.prune(deep_mlp(), name, 0.5, pattern="channel")


def test_activation_variance_scores_the_variance_of_the_relu_output():
    model, data = deep_mlp(), batch()
    a = torch.relu(model[0](data[0])).detach().double()
    scores = unit_scores("activation_variance", model, ["0.weight"], data)["0.weight"]
    assert torch.allclose(scores, a.var(0, unbiased=False))


def make_constant(layer, unit, value=0.7):
    with torch.no_grad():
        layer.weight[unit] = 0.0
        layer.bias[unit] = value


def test_folding_a_constant_neuron_into_the_next_bias_leaves_the_output_unchanged():
    model, data = deep_mlp(), batch()
    make_constant(model[0], 2)
    before = model(data[0])
    sl.prune(
        model, "activation_variance", 1 / 8, pattern="channel", targets=["0.weight"], data=data
    )
    assert masks.get_mask(model, "0.weight")[2].sum() == 0
    assert torch.all(model[2].weight[:, 2] == 0)  # nothing reads the removed unit any more
    assert torch.allclose(model(data[0]), before, atol=1e-6)


def test_folding_a_constant_filter_before_a_flatten_leaves_the_output_unchanged():
    torch.manual_seed(0)
    model, data = TinyCNN(), batch(8, (1, 8, 8))
    make_constant(model.conv2, 1)
    before = model(data[0])
    sl.prune(
        model, "activation_variance", 0.2, pattern="channel", targets=["conv2.weight"], data=data
    )
    assert masks.get_mask(model, "conv2.weight")[1].sum() == 0
    assert torch.allclose(model(data[0]), before, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_correlation_merge_of_duplicated_or_scaled_neurons_leaves_the_output_unchanged(scale):
    model, data = deep_mlp(), batch()
    with torch.no_grad():  # relu(s z) = s relu(z) for s > 0: unit 6 is s times unit 1
        model[0].weight[6] = scale * model[0].weight[1]
        model[0].bias[6] = scale * model[0].bias[1]
    before = model(data[0])
    sl.prune(model, "correlation_merge", 1 / 8, pattern="channel", targets=["0.weight"], data=data)
    removed = torch.nonzero(masks.get_mask(model, "0.weight").sum(1) == 0).flatten().tolist()
    assert removed in ([1], [6])
    assert torch.allclose(model(data[0]), before, atol=1e-5)


def test_correlation_merge_folds_a_constant_unit_into_the_bias():
    model, data = deep_mlp(), batch()
    make_constant(model[0], 4)
    before = model(data[0])
    sl.prune(model, "correlation_merge", 1 / 8, pattern="channel", targets=["0.weight"], data=data)
    assert masks.get_mask(model, "0.weight")[4].sum() == 0
    assert torch.allclose(model(data[0]), before, atol=1e-5)


def test_folding_criteria_need_a_reader_with_a_bias():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3, bias=False))
    with pytest.raises(ValueError, match="has none"):
        sl.prune(
            model, "activation_variance", 0.5, pattern="channel", exclude=["2.weight"], data=batch()
        )


def test_sensitivity_equals_its_closed_form_on_a_two_layer_network():
    # o = W2 relu(W1 x + b1) + b2, so d o_k / d z_j = W2[k, j] * [z_j > 0]
    model, data = deep_mlp(sizes=(6, 8, 3)), batch()
    z = model[0](data[0]).detach().double()
    w2 = model[2].weight.detach().double()
    expected = ((z > 0).double() * w2.pow(2).sum(0)).mean(0).sqrt()
    scores = unit_scores("sensitivity", model, ["0.weight"], data)["0.weight"]
    assert torch.allclose(scores, expected)


# --- reconstruction of the next layer -----------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    bundle = sl.data.load("digits", seed=0)
    train, val, _ = bundle.loaders(batch_size=128, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10)
    )
    sl.train.fit(model, train, epochs=15, lr=0.05, progress=False, seed=0)
    calib = bundle.train.tensors
    held_out = bundle.val.tensors
    return model, calib, held_out


def layer_output_error(model, reference, x):
    """Squared error of fc2's output (pre-activation) against the unpruned model."""
    with torch.no_grad():
        h = torch.relu(reference[0](x))
        return float((model[2](h) - reference[2](h)).pow(2).sum())


@pytest.mark.parametrize("method", ["thinet", "lasso_channel"])
@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_reconstruction_is_no_worse_than_magnitude_channel_selection(trained, method, sparsity):
    model, calib, held_out = trained
    errors = {}
    for name in ["magnitude", method]:
        pruned = copy.deepcopy(model)
        sl.prune(pruned, name, sparsity, pattern="input", targets=["2.weight"], data=calib)
        assert masks.get_mask(pruned, "2.weight").any(0).sum() == round((1 - sparsity) * 32)
        errors[name] = layer_output_error(pruned, model, held_out[0])
    assert errors[method] <= errors["magnitude"]


def test_thinet_removes_first_the_channel_whose_removal_changes_the_output_least(trained):
    model, calib, _ = trained
    x = calib[0]
    change = []
    for c in range(32):  # brute force: zero one input channel of fc2 and measure
        pruned = copy.deepcopy(model)
        with torch.no_grad():
            pruned[2].weight[:, c] = 0
        change.append(layer_output_error(pruned, model, x))
    pruned = copy.deepcopy(model)
    crit = sl.criteria.get("thinet", refit=False)
    sl.prune(pruned, crit, 1 / 32, pattern="input", targets=["2.weight"], data=(x, calib[1]))
    removed = torch.nonzero(~masks.get_mask(pruned, "2.weight").bool().any(0)).flatten().tolist()
    assert removed == [int(np.argmin(change))]


def test_lasso_refit_equals_least_squares_on_the_kept_inputs(trained):
    model, calib, _ = trained
    pruned = copy.deepcopy(model)
    sl.prune(pruned, "lasso_channel", 0.5, pattern="input", targets=["2.weight"], data=calib)
    kept = masks.get_mask(pruned, "2.weight").bool().any(0).numpy()
    h = torch.relu(model[0](calib[0])).detach().double().numpy()
    y = h @ model[2].weight.detach().double().numpy().T
    solution, *_ = np.linalg.lstsq(h[:, kept], y, rcond=None)
    refit = masks.weight(pruned, "2.weight").detach().double().numpy()[:, kept]
    assert np.allclose(refit, solution.T, atol=1e-4)


def test_lasso_keeps_longest_the_channel_most_correlated_with_the_output(trained):
    model, calib, _ = trained
    h = torch.relu(model[0](calib[0])).detach().double()
    w = model[2].weight.detach().double()
    contributions = h[:, None, :] * w[None, :, :]  # (N, out, channel): y_c
    y = contributions.sum(-1)
    correlation = (contributions * y[..., None]).sum((0, 1)).abs()
    scores = sl.criteria.get("lasso_channel").group_scores(
        model, ["2.weight"], sl.patterns.Input(), Context(data=calib)
    )["2.weight"]
    assert int(scores.argmax()) == int(correlation.argmax())
    assert float(scores.max()) == pytest.approx(1.0)


def test_thinet_and_lasso_need_the_input_pattern():
    for name in ["thinet", "lasso_channel"]:
        with pytest.raises(ValueError, match="pattern='input'"):
            sl.prune(deep_mlp(), name, 0.5, pattern="channel", data=batch())


# --- NISP -----------------------------------------------------------------------------------


def test_inf_fs_equals_the_series_of_paths_and_prefers_a_non_redundant_feature():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, generator=g), torch.randn(200, generator=g)
    features = torch.stack([a, a, b], dim=1)  # features 0 and 1 are copies
    scores = data_driven.inf_fs(features)
    assert scores[2] > scores[0] and scores[0] == pytest.approx(float(scores[1]))
    # independent computation: sum of (r A)^l over path lengths l = 1, 2, ...
    x = features.double().numpy()
    std = x.std(0)
    rho = np.corrcoef(x.T)
    spread = std / std.max()
    adj = 0.5 * np.maximum.outer(spread, spread) + 0.5 * (1 - np.abs(rho))
    r = 0.9 / np.max(np.abs(np.linalg.eigvalsh(adj)))
    series = sum(np.linalg.matrix_power(r * adj, k) for k in range(1, 400))
    assert np.allclose(scores.numpy(), series.sum(1), rtol=1e-6)


def test_nisp_propagates_importance_back_with_absolute_weights():
    model = deep_mlp(sizes=(6, 8, 5, 3))
    final = torch.tensor([1.0, 2.0, 0.5, 0.0, 3.0])
    scores = sl.criteria.get("nisp", final_scores=final).group_scores(
        model, ["0.weight", "2.weight", "4.weight"], Channel(), Context()
    )
    expected = model[2].weight.detach().abs().double().T @ final.double()
    assert torch.allclose(scores["0.weight"], expected)
    assert torch.equal(scores["2.weight"], final.double())
    assert torch.equal(scores["4.weight"], torch.ones(3, dtype=torch.float64))


def test_nisp_ranks_the_final_response_layer_from_data():
    model, data = deep_mlp(sizes=(6, 8, 5, 3)), batch()
    h = torch.relu(model[2](torch.relu(model[0](data[0])))).detach()
    scores = unit_scores("nisp", model, ["2.weight"], data)["2.weight"]
    assert torch.allclose(scores, data_driven.inf_fs(h))


BUDGETS = sl.registry.available("budget")
UNIT_CRITERIA = [
    "apoz",
    "mean_activation",
    "activation_variance",
    "correlation_merge",
    "sensitivity",
    "nisp",
]


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", UNIT_CRITERIA + ["thinet", "lasso_channel"])
def test_data_driven_criteria_remove_whole_units_with_every_budget(method, budget):
    # every unit is a group of 6 weights (rows of 6 inputs, or columns of 6 outputs), so
    # half the weights is exactly half the units
    model, data = deep_mlp(sizes=(6, 6, 6, 6)), batch(classes=6)
    pattern = "input" if method in ("thinet", "lasso_channel") else "channel"
    names = ["2.weight", "4.weight"] if pattern == "input" else ["0.weight", "2.weight"]
    sl.prune(model, method, 0.5, pattern=pattern, budget=budget, targets=names, data=data)
    removed = 0
    for n in names:
        mask = masks.get_mask(model, n)
        groups = mask.sum(0) if pattern == "input" else mask.sum(1)
        assert set(groups.tolist()) <= {0.0, 6.0}  # whole units only
        removed += int((groups == 0).sum())
    assert removed == 6

"""Layer collapse: the path-count detector against brute-force path enumeration."""

import copy
import itertools

import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import masks
from sparsity_lab.phenomena import collapse


class MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.input_shape = (sizes[0],)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def brute_force_paths(mask_list):
    """Count input->output paths by enumerating every sequence of units."""
    sizes = [mask_list[0].shape[1]] + [m.shape[0] for m in mask_list]
    total = 0
    through = [torch.zeros_like(m, dtype=torch.float64) for m in mask_list]
    for units in itertools.product(*(range(s) for s in sizes)):
        edges = [(units[i + 1], units[i]) for i in range(len(mask_list))]
        if all(mask_list[i][e] for i, e in enumerate(edges)):
            total += 1
            for i, e in enumerate(edges):
                through[i][e] += 1
    return total, through


def test_path_counts_match_enumeration_on_a_hand_built_mask():
    torch.manual_seed(0)
    model = MLP([3, 4, 3, 2])
    hand = [
        torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 1]]),
        torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 0]]),
        torch.tensor([[1, 0, 1], [0, 1, 0]]),
    ]
    for i, m in enumerate(hand):
        masks.attach(model, f"layers.{i}.weight", m)
    total, through = collapse.path_counts(model)
    want_total, want_through = brute_force_paths([m.bool() for m in hand])
    assert total == want_total
    for i, want in enumerate(want_through):
        assert torch.equal(through[f"layers.{i}.weight"], want)


def test_detector_finds_dead_weights_and_a_collapsed_network():
    model = MLP([2, 2, 1])
    # unit 1 of the hidden layer gets an input but does not reach the output: its weight is dead
    masks.attach(model, "layers.0.weight", torch.tensor([[1, 0], [0, 1]]))
    masks.attach(model, "layers.1.weight", torch.tensor([[1, 0]]))
    df = collapse.connectivity(model).set_index("name")
    assert df.loc["layers.0.weight", "kept"] == 2
    assert df.loc["layers.0.weight", "dead"] == 1
    assert not df.attrs["disconnected"]
    # now cut the only remaining output weight: every path is gone, both layers collapse
    masks.set_mask(model, "layers.1.weight", torch.tensor([[0, 0]]))
    df = collapse.connectivity(model)
    assert df.attrs["disconnected"] and df.attrs["paths"] == 0
    assert df["collapsed"].all()
    assert collapse.is_disconnected(model)


def test_biases_and_trained_values_do_not_change_the_count():
    model = MLP([3, 3, 2])
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-5.0)  # negative weights and biases would kill a ReLU network's output
    total, _ = collapse.path_counts(model)
    assert total == 3 * 3 * 2


def test_maxpool_and_batchnorm_networks_count_every_path():
    net = nn.Sequential(
        nn.Conv1d(1, 2, 3, padding=1),
        nn.BatchNorm1d(2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Flatten(),
        nn.Linear(4, 1),
    )
    net.input_shape = (1, 4)
    total, through = collapse.path_counts(net)
    assert total > 0
    # with the max replaced by an average, every conv weight lies on some path
    assert (through["0.weight"] > 0).all()


def test_unknown_input_shape_and_method_fail_clearly():
    with pytest.raises(ValueError, match="input_shape"):
        collapse.path_counts(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="choose one of"):
        collapse.prune_at_init(MLP([2, 2]), "grasp", 0.5, data=None)


def test_synflow_avoids_collapse_where_global_magnitude_collapses():
    torch.manual_seed(0)
    summaries = {}
    for method in ("magnitude", "synflow"):
        model = MLP([20, 40, 40, 3])
        with torch.no_grad():
            model.layers[2].weight.mul_(0.01)  # a small last layer: global magnitude empties it
        collapse.prune_at_init(model, method, 0.98, data=None)
        summaries[method] = collapse.collapse_summary(model)
    assert summaries["magnitude"]["disconnected"]
    assert not summaries["synflow"]["disconnected"]


def test_lenet5s_fast_pool_is_averaged_like_torchs():
    model = sl.models.build("lenet5", input_shape=(1, 8, 8), n_classes=3)
    twin = copy.deepcopy(model)
    twin.pool = nn.MaxPool2d(2, ceil_mode=True)
    (total, through), (total_twin, through_twin) = map(collapse.path_counts, (model, twin))
    assert total == total_twin > 0
    assert all(torch.equal(through[k], through_twin[k]) for k in through_twin)
    assert (through["conv1.weight"] > 0).all()  # a max would leave most weights off every path

"""Tickets, shuffling, large-sparse vs small-dense and transfer on a tiny teacher task."""

import pytest
import torch

from sparsity_lab import masks, recipes
from sparsity_lab.phenomena import scale, shuffle, tickets, transfer


@pytest.fixture(scope="module")
def tiny():
    return recipes.task("lenet300", "teacher_student", seed=0, n_samples=300, dim=8, n_classes=3)


def test_shuffle_keeps_layer_densities_and_changes_positions():
    torch.manual_seed(0)
    found = {"a": torch.rand(20, 10) < 0.3, "b": torch.rand(5, 20) < 0.5}
    shuffled = shuffle.shuffle_masks(found, seed=0)
    assert shuffle.layer_densities(shuffled) == shuffle.layer_densities(found)
    assert not torch.equal(shuffled["a"], found["a"])


def test_shuffle_experiment_uses_the_same_initial_weights(tiny):
    found = shuffle.masks_found(tiny, "magnitude", 0.5, "init")
    # at init, global magnitude keeps the largest weights of the untrained model
    model = tiny.build()
    w = torch.cat([masks.weight(model, n).abs().flatten() for n in found])
    kept = torch.cat([found[n].flatten() for n in found])
    assert w[kept].min() >= w[~kept].max()
    out = shuffle.shuffle_experiment(tiny, "magnitude", 0.5, "init", epochs=1)
    assert set(out) == {"original", "shuffled"}
    with pytest.raises(ValueError, match="when"):
        shuffle.masks_found(tiny, "magnitude", 0.5, "later")


def test_ticket_rounds_table_and_advantage(tiny):
    table = tickets.ticket_rounds(tiny, 0.75, rounds=2, epochs=1, dense_epochs=1)
    assert set(table["network"]) == {"dense", *tickets.NETWORKS}
    assert table[table["round"] == 2]["sparsity"].iloc[0] == pytest.approx(0.75)
    adv = tickets.ticket_advantage(table)
    wide = table[table["round"] == 1].set_index("network")["test_accuracy"]
    best = max(wide[tickets.NETWORKS[2]], wide[tickets.NETWORKS[3]])
    assert adv.set_index("round").loc[1, "theta0_advantage"] == pytest.approx(
        wide[tickets.NETWORKS[0]] - best
    )


def test_realised_width_counts_the_units_built():
    # 12.5/32 rounds to 12 channels (Python rounds halves to even): 12/32 of the width
    assert scale.realised_width("cnn1d", 12.5 / 32) == 12 / 32
    assert scale.realised_width("cnn1d", 0.4) == 13 / 32
    assert scale.realised_width("lenet300", 0.5) == 150 / 300


def test_matching_model_is_nearest_in_cost(tiny):
    target = 2000.0
    f, model = scale.matching_model(tiny, target, "nonzeros")
    got = scale.cost(model, "nonzeros")
    assert abs(got - target) / target < 0.05
    # a model one step wider costs more than the target
    wider = tiny.build(**scale.WIDTH_OPTIONS["lenet300"](f + 0.05))
    assert scale.cost(wider, "nonzeros") > target
    # for an MLP, FLOPs are exactly 2 x nonzeros, so both matches agree
    assert scale.cost(model, "flops") == pytest.approx(2 * got)
    with pytest.raises(ValueError, match="measure"):
        scale.cost(model, "bytes")


def test_resized_and_variant_data():
    digits = recipes.task("lenet300", "digits", seed=0).bundle
    big = transfer.resized(digits, 28)
    assert big.input_shape == (784,) and big.train.tensors[0].shape[1] == 784
    v = transfer.mnist1d_variant(num_samples=200, n_val=20)
    assert v.input_shape == (1, 40) and len(v.val) == 20
    assert sorted(set(v.train.tensors[1].tolist())) == list(range(10))


def test_linear_probe_trains_only_the_head(tiny):
    up = tiny.build()
    from sparsity_lab.pruning import prune

    prune(up, "magnitude", 0.5)
    before = masks.weight(up, "fc1.weight").clone()
    acc = transfer.transfer(up, tiny.bundle, "linear", epochs=1)
    assert 0 <= acc <= 1
    assert torch.equal(masks.weight(up, "fc1.weight"), before)  # upstream copy untouched
    with pytest.raises(ValueError, match="mode"):
        transfer.transfer(up, tiny.bundle, "partial")

"""The shared comparison protocol: every method reaches its target on the same footing."""

import pytest
import torch
from torch.utils.data import TensorDataset

import sparsity_lab as sl
from sparsity_lab.data import DataBundle
from sparsity_lab.recipes import Task
from sparsity_lab.regularizers import compare


def tiny_task():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(192, 10, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    parts = [TensorDataset(x[i : i + 64], y[i : i + 64]) for i in (0, 64, 128)]
    bundle = DataBundle("toy", *parts, n_classes=2, input_shape=(10,))
    return Task("lenet300", "toy", bundle, seed=0, batch_size=32)


@pytest.mark.parametrize(
    ("method", "pattern"),
    [("l1", "unstructured"), ("gmp", "unstructured"), ("group_lasso", "channel"),
     ("l0_hard_concrete", "unstructured")],
)  # fmt: skip
def test_every_method_reaches_its_target_over_the_same_tensors(method, pattern):
    r = compare.run(tiny_task(), method, 0.5, pattern=pattern, epochs=1, finetune_epochs=1)
    if pattern == "unstructured":
        assert r["measured_sparsity"] == pytest.approx(0.5, abs=1e-3)
    else:  # whole rows of fc1 (10 weights) and fc2 (300 weights), fc3 left dense
        assert 0.4 <= r["measured_sparsity"] <= 0.6
    assert 0 <= r["test_accuracy"] <= 1 and r["seconds_per_epoch"] > 0
    assert 0 <= r["reached"] <= 1


def test_dense_reference_and_extra_parameters():
    task = tiny_task()
    assert compare.run(task, "dense", 0.0, epochs=1, finetune_epochs=0)["measured_sparsity"] == 0
    r = compare.run(task, "l0_hard_concrete", 0.5, epochs=1, finetune_epochs=0)
    weights = sum(w.numel() for n, w in task.build().named_parameters() if n.endswith("weight"))
    assert r["extra_parameters"] == weights  # one gate per weight
    assert set(r["layer_sparsity"]) == set(sl.pruning.default_targets(task.build()))


def test_gmp_with_channels_prunes_repeatedly():
    # a schedule prunes again on top of its previous channel masks at every update
    r = compare.run(tiny_task(), "gmp", 0.5, pattern="channel", epochs=2, frequency=1)
    assert 0.4 <= r["measured_sparsity"] <= 0.6


def test_runs_carry_their_flags_and_finetune_budget():
    r = compare.run(tiny_task(), "l1", 0.5, epochs=1, finetune_epochs=1)
    assert r["flags"] == ""  # a healthy run
    # fine-tuning FLOPs counted independently: 3 forward passes per example, a multiply and
    # an add per kept weight (LeNet-300-100 on 10 inputs, 2 classes, half the weights kept)
    kept = (10 * 300 + 300 * 100 + 100 * 2) // 2
    assert r["finetune_epochs"] == 1
    assert r["finetune_flops"] == pytest.approx(3 * 2 * kept * 64 * 1)


def test_a_layer_pruned_away_is_flagged():
    # a global channel budget at 97% removes every unit of fc2 (its rows' norms are lowest)
    r = compare.run(tiny_task(), "group_lasso", 0.97, pattern="channel", epochs=1,
                    finetune_epochs=0, budget="global")  # fmt: skip
    assert "pruned to 100%" in r["flags"] and "fc2.weight" in r["flags"]
    assert "fc1.weight" not in r["flags"]  # fc1 keeps some units
    assert r["measured_sparsity"] >= 30000 / 33000  # fc2's 30000 weights of the 33000 pruned


def test_a_list_of_finetune_rates_keeps_the_one_best_on_validation():
    task = tiny_task()
    single = {
        rate: compare.run(
            task, "l1", 0.9, epochs=1, finetune_epochs=2, finetune_lr=rate, finetune_optimizer="sgd"
        )  # fmt: skip
        for rate in (0.0, 0.5)
    }
    assert single[0.0]["val_accuracy"] != single[0.5]["val_accuracy"]  # the choice matters
    best = max(single, key=lambda rate: single[rate]["val_accuracy"])
    for rates in ([0.0, 0.5], [0.5, 0.0]):
        model = task.build()
        r = compare.run(task, "l1", 0.9, epochs=1, finetune_epochs=2, finetune_lr=rates,
                        finetune_optimizer="sgd", model=model)  # fmt: skip
        assert r["finetune_lr"] == best
        # the same model as a run at that rate alone, and the caller's model holds it
        assert r["val_accuracy"] == single[best]["val_accuracy"]
        assert r["test_accuracy"] == single[best]["test_accuracy"]
        assert sl.sparsity(model) == pytest.approx(single[best]["measured_sparsity"], abs=0.01)
    with pytest.raises(ValueError, match="empty"):
        compare.run(task, "l1", 0.5, epochs=1, finetune_lr=[])

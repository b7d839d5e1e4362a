"""AC/DC: phases switch at the configured epochs; sparse phases hold the exact target."""

import math

import pytest
import torch
from helpers import mlp
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import masks, registry
from sparsity_lab.methods.acdc import phase_plan
from sparsity_lab.train import Callback

NAMES = ("0.weight", "2.weight")
TOTAL = 12 * 16 + 16 * 2


def loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(48, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16, generator=g)


model = mlp  # Linear(12, 16), ReLU, Linear(16, 2)


def test_phase_plan_by_hand():
    # 2 warm-up, phases of 2, 2 final epochs in 12: D D S S D D S S D D S S
    assert (
        phase_plan(12, 2, 2, 2)
        == ["dense"] * 2 + (["sparse"] * 2 + ["dense"] * 2) * 2 + ["sparse"] * 2
    )
    # an odd number of phases merges the last sparse phase into the final one
    assert (
        phase_plan(7, 1, 2, 2) == ["dense", "sparse", "sparse", "dense", "dense"] + ["sparse"] * 2
    )
    with pytest.raises(ValueError, match="do not fit"):
        phase_plan(4, 3, 1, 2)
    with pytest.raises(ValueError, match="phase_epochs"):
        phase_plan(4, 1, 0, 1)


class Steps(Callback):
    """After every step: whether masks exist and how sparse they are; dense weights at ends."""

    def __init__(self):
        self.rows, self.epoch_end_weights = [], {}

    def on_step_end(self, trainer):
        found = masks.masks(trainer.model)
        zeros = sum(int((m == 0).sum()) for m in found.values())
        self.rows.append((trainer.epoch, bool(found), zeros))

    def on_epoch_end(self, trainer):
        self.epoch_end_weights[trainer.epoch] = {
            k: v.detach().clone() for k, v in masks.plain_state_dict(trainer.model).items()
        }


def test_acdc_switches_at_the_configured_epochs_with_exact_sparsity():
    m, watch = model(), Steps()
    acdc = registry.get("acdc", "training")(
        0.8, warmup_epochs=2, phase_epochs=2, final_epochs=2, budget="uniform"
    )
    history = acdc.fit(m, loader(), loader(1), epochs=10, lr=0.05, callbacks=[watch])
    plan = ["dense", "dense", "sparse", "sparse", "dense", "dense", "sparse", "sparse"]
    plan += ["sparse", "sparse"]
    assert list(history["phase"]) == plan
    target = math.floor(0.8 * TOTAL + 0.5)
    for epoch, has_masks, zeros in watch.rows:
        if plan[epoch] == "sparse":
            assert has_masks and zeros == target, epoch
        else:
            assert not has_masks, epoch
    # the model ends sparse; the dense member is the end of the last dense phase (epoch 5)
    assert sl.sparsity(m) == target / TOTAL
    sparse, dense = acdc.pair(m)
    assert sparse is m and not masks.masks(dense)
    for key, value in watch.epoch_end_weights[5].items():
        assert torch.equal(dense.state_dict()[key], value), key
    assert sl.sparsity(dense) < 0.5


def test_decompressed_phases_restart_pruned_weights_from_zero():
    m = model()
    seen = {}

    class FirstDenseStep(Callback):
        def on_epoch_begin(self, trainer):
            if trainer.epoch == 2:  # after acdc's hook: the first dense epoch begins
                seen["weights"] = masks.dense_weight(trainer.model, "0.weight").detach().clone()
                w = masks.dense_weight(trainer.model, "0.weight")
                seen["momentum"] = trainer.optimizer.state[w]["momentum_buffer"].clone()

    acdc = registry.get("acdc", "training")(
        0.5, warmup_epochs=1, phase_epochs=1, final_epochs=1, budget="uniform"
    )
    acdc.fit(m, loader(), epochs=4, lr=0.05, callbacks=[FirstDenseStep()])
    zero = seen["weights"] == 0
    assert int(zero.sum()) == math.floor(0.5 * 192 + 0.5)  # layer 0's pruned half, at zero
    assert torch.all(seen["momentum"][zero] == 0)


def test_default_phases_follow_the_paper_proportions():
    acdc = registry.get("acdc", "training")(0.9)
    assert acdc.epochs_of(100) == (10, 5, 10)
    assert acdc.epochs_of(8) == (1, 1, 1)

"""Pruning during training follows its schedule exactly and keeps masks monotone."""

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab.pruner import ScheduledPruning
from sparsity_lab.train import Callback, fit


def loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 12, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))


class Watch(Callback):
    """Records the model's sparsity and masks after every step (runs after the pruner)."""

    def __init__(self):
        self.sparsity, self.masks = [], []

    def on_step_end(self, trainer):
        self.sparsity.append(sl.sparsity(trainer.model))
        self.masks.append({n: m.clone() for n, m in sl.masks.masks(trainer.model).items()})


def test_gradual_magnitude_pruning_follows_the_cubic_schedule_exactly():
    m, watch = model(), Watch()
    pruner = ScheduledPruning(
        "magnitude", 0.8, schedule="cubic", begin_step=6, end_step=24, frequency=6, budget="uniform"
    )
    fit(m, loader(), epochs=5, lr=0.1, callbacks=[pruner, watch], seed=0)
    total = 12 * 16 + 16 * 2
    for step, measured in enumerate(watch.sparsity, start=1):
        expected = sl.schedules.cubic(step, 0.8, 6, 24, frequency=6)
        # uniform budget: every layer rounds to whole weights, the total is exact
        assert measured == math.floor(expected * total + 0.5) / total, step
    assert pruner.log[-1] == (24, 0.8)
    # masks only shrink, and the pruned weights stay zero while training goes on
    for earlier, later in zip(watch.masks, watch.masks[1:], strict=False):
        for n in later:
            if n in earlier:
                assert torch.all(later[n] <= earlier[n])
    assert sl.sparsity(m) == watch.sparsity[-1]


def test_history_records_the_sparsity_per_epoch():
    history = fit(
        model(),
        loader(),
        epochs=3,
        callbacks=[ScheduledPruning("random", 0.5, schedule="linear", frequency=6)],
    )
    assert list(history["sparsity"]) == sorted(history["sparsity"])
    assert history["sparsity"].iloc[-1] == 0.5


def test_the_optimizer_built_before_pruning_still_trains_the_masked_weights():
    m = model()
    seen = {}

    class Check(Callback):
        def on_train_end(self, trainer):
            params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
            seen["original"] = id(sl.masks.dense_weight(trainer.model, "0.weight")) in params

    fit(m, loader(), epochs=1, callbacks=[ScheduledPruning("magnitude", 0.5, frequency=1), Check()])
    assert seen["original"]

"""GMP: the sparsity follows the cubic schedule between the fractions of training given."""

import math

import pytest
import torch
from helpers import mlp
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import registry
from sparsity_lab.train import Callback

TOTAL = 12 * 16 + 16 * 2


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16, generator=g)


model = mlp  # Linear(12, 16), ReLU, Linear(16, 2)


class Watch(Callback):
    def __init__(self):
        self.sparsity = []

    def on_step_end(self, trainer):
        self.sparsity.append(sl.sparsity(trainer.model))


def test_gmp_follows_the_cubic_ramp_between_its_fractions():
    m, watch = model(), Watch()
    gmp = registry.get("gmp", "training")(0.9, begin=0.25, end=0.75, frequency=3, budget="uniform")
    history = gmp.fit(m, loader(), epochs=4, lr=0.05, callbacks=[watch])
    # 24 steps: the ramp runs from step 6 to step 18, updated every 3 steps
    assert (gmp.begin_step, gmp.end_step) == (6, 18)
    for step, measured in enumerate(watch.sparsity, start=1):
        if step < 6:
            expected = 0.0
        else:
            p = (min(step, 18) - 6) // 3 * 3 / 12
            expected = 0.9 + (0.0 - 0.9) * (1 - p) ** 3  # Zhu & Gupta by hand
        assert measured == math.floor(expected * TOTAL + 0.5) / TOTAL, step
    assert history["sparsity"].iloc[-1] == 0.9


def test_gmp_takes_any_schedule_and_criterion():
    m = model()
    gmp = registry.get("gmp", "training")(
        0.5, schedule="linear", criterion="random", frequency=6, pattern="channel", end=0.5
    )
    gmp.fit(m, loader(), epochs=2)
    for name, rows in (("0.weight", 16), ("2.weight", 2)):
        mask = sl.masks.get_mask(m, name)
        # whole output rows pruned, half of them in each layer (uniform budget)
        assert torch.all((mask.sum(1) == 0) | (mask.sum(1) == mask.shape[1]))
        assert int((mask.sum(1) == 0).sum()) == math.floor(0.5 * rows + 0.5)
    assert gmp.log[-1][1] == 0.5


def test_gmp_fractions_are_checked():
    cls = registry.get("gmp", "training")
    with pytest.raises(ValueError, match="begin must be a fraction"):
        cls(0.9, begin=1.5)
    with pytest.raises(ValueError, match="must not come before"):
        cls(0.9, begin=0.5, end=0.2)


def test_gmp_with_a_data_driven_criterion_scores_on_the_training_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g)
    data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    m = model()
    gmp = registry.get("gmp")(0.5, criterion="snip", frequency=2)
    gmp.fit(m, data, epochs=2, progress=False)
    assert sl.sparsity(m) == pytest.approx(0.5, abs=0.01)
    # the same schedule with the first batch given explicitly prunes to the same target
    fixed = registry.get("gmp")(0.5, criterion="snip", frequency=2, data=tuple(next(iter(data))))
    other = model()
    fixed.fit(other, data, epochs=2, progress=False)
    assert sl.sparsity(other) == pytest.approx(0.5, abs=0.01)


def test_gmp_with_whole_channels_waits_when_a_step_overshoots_its_target():
    # three channels: removing one already gives 33%, past the next steps' targets, which
    # used to raise that pruning never revives weights
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    loader = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 32, 8)]
    gmp = registry.get("gmp", "training")(
        0.6, pattern="channel", targets=["0.weight"], frequency=1, budget="uniform"
    )
    gmp.fit(m, loader, epochs=5, lr=0.1, progress=False)
    kept = sl.masks.masks(m)["0.weight"].sum(dim=1)
    assert sorted(kept.tolist()) == [0.0, 0.0, 4.0]  # whole rows: 2 of 3 channels, >= 60%

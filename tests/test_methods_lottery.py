"""Lottery tickets: IMP's rounds and rewinding, its baselines, and early-bird detection."""

import math

import pytest
import torch
from helpers import mlp
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import masks, registry
from sparsity_lab.methods.lottery import mask_distance, random_masks, reinitialize
from sparsity_lab.train import Callback

NAMES = ("0.weight", "2.weight")
TOTAL = 12 * 16 + 16 * 2


def loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16, generator=g)


model = mlp  # Linear(12, 16), ReLU, Linear(16, 2)


def weights(m):
    return {k: v.detach().clone() for k, v in masks.plain_state_dict(m).items()}


class RoundStarts(Callback):
    """The weights at the start of every training run (one per IMP round)."""

    def __init__(self):
        self.starts, self.ends, self.at_step = [], [], {}

    def on_train_begin(self, trainer):
        found = masks.masks(trainer.model)
        self.starts.append((weights(trainer.model), {n: found[n].clone() for n in found}))

    def on_step_end(self, trainer):
        if len(self.starts) == 1:
            self.at_step[trainer.step] = weights(trainer.model)

    def on_train_end(self, trainer):
        self.ends.append(weights(trainer.model))


@pytest.mark.parametrize("rewind", ["init", "step", "lr"])
def test_imp_rewinding_restores_exactly_the_saved_weights_where_the_mask_survives(rewind):
    m = model()
    theta0 = weights(m)
    spy = RoundStarts()
    imp = registry.get("imp", "training")(0.8, rounds=3, rewind=rewind, rewind_step=2)
    history = imp.fit(m, loader(), loader(1), epochs=2, lr=0.1, callbacks=[spy])
    assert len(spy.starts) == 4 and list(history["round"].unique()) == [0, 1, 2, 3]
    for r in range(1, 4):
        state, mask = spy.starts[r]
        if rewind == "init":
            saved = theta0
        elif rewind == "step":
            saved = spy.at_step[2]  # recorded independently during the dense run
        else:
            saved = spy.ends[r - 1]  # lr rewinding keeps the trained weights
        for key, value in state.items():
            if key in NAMES:
                keep = mask[key].bool()
                assert torch.equal(value[keep], saved[key][keep]), (r, key)
                assert torch.all(value[~keep] == 0)
            else:  # biases rewind too (not for lr rewinding)
                assert torch.equal(value, saved[key]), (r, key)


def test_imp_rounds_prune_the_same_share_each_time():
    m = model()
    imp = registry.get("imp", "training")(0.875, rounds=3)
    imp.fit(m, loader(), epochs=1)
    densities = [1.0] + [0.125 ** (r / 3) for r in (1, 2, 3)]  # 0.5, 0.25, 0.125
    for r, row in imp.rounds_table.iterrows():
        assert row["sparsity"] == pytest.approx(1 - densities[r])
    # global budget: exact totals; tickets are nested
    for r, ticket in enumerate(imp.tickets, start=1):
        zeros = sum(int((t == 0).sum()) for t in ticket.values())
        assert zeros == math.floor((1 - densities[r]) * TOTAL + 0.5)
    for earlier, later in zip(imp.tickets, imp.tickets[1:], strict=False):
        for n in NAMES:
            assert torch.all(later[n] <= earlier[n])


def test_imp_baselines_are_trained_each_round():
    m = model()
    imp = registry.get("imp", "training")(0.75, rounds=2, baselines=("reinit", "random_mask"))
    imp.fit(m, loader(), loader(1), epochs=1)
    table = imp.rounds_table
    assert {"reinit_val_accuracy", "random_mask_val_accuracy"} <= set(table.columns)
    assert table.loc[1:, "reinit_val_accuracy"].notna().all()
    last = registry.get("imp", "training")(
        0.75, rounds=2, baselines="reinit", baseline_rounds="last"
    )
    last.fit(model(), loader(), loader(1), epochs=1)
    assert list(last.rounds_table["reinit_val_accuracy"].notna()) == [False, False, True]


def test_reinit_keeps_the_masks_and_draws_new_weights():
    m = sl.prune(model(), "magnitude", 0.7)
    fresh = reinitialize(m, seed=5)
    for n in NAMES:
        assert torch.equal(masks.get_mask(fresh, n), masks.get_mask(m, n))
        keep = masks.get_mask(m, n).bool()
        assert not torch.allclose(masks.weight(fresh, n)[keep], masks.weight(m, n)[keep])
    assert torch.equal(reinitialize(m, 5)[0].bias, fresh[0].bias)  # repeatable


def test_random_masks_keep_each_layers_count():
    m = sl.prune(model(), "magnitude", 0.7, budget="global")
    other = random_masks(m, seed=1)
    for n in NAMES:
        assert int(other[n].sum()) == int(masks.get_mask(m, n).sum())
    assert not torch.equal(other["0.weight"], masks.get_mask(m, "0.weight").bool())


def test_imp_options_are_checked():
    cls = registry.get("imp", "training")
    with pytest.raises(ValueError, match="rewind must be one of"):
        cls(0.9, rewind="weights")
    with pytest.raises(ValueError, match="unknown baselines"):
        cls(0.9, baselines=("shuffle",))
    with pytest.raises(ValueError, match="rounds must be"):
        cls(0.9, rounds=0)
    with pytest.raises(ValueError, match="beyond"):
        cls(0.9, rounds=1, rewind="step", rewind_step=10**6).fit(model(), loader(), epochs=1)


# --- early bird -----------------------------------------------------------------------------


def test_mask_distance_by_hand():
    a = {"x": torch.tensor([1, 1, 0, 0]), "y": torch.tensor([1, 0])}
    b = {"x": torch.tensor([1, 0, 1, 0]), "y": torch.tensor([1, 0])}
    assert mask_distance(a, b) == pytest.approx(2 / 6)


def test_early_bird_draws_when_the_masks_settle():
    m = model()
    eb = registry.get("early_bird", "training")(0.8, epsilon=1.0, window=2, max_search=1.0)
    history = eb.fit(m, loader(), epochs=5, lr=0.05)
    # distances exist from epoch 1; two of them (epochs 1, 2) below 1.0 -> ticket at epoch 2
    assert eb.found_epoch == 2
    assert list(history["sparsity"]) == [0.0, 0.0, 0.8, 0.8, 0.8]
    assert sl.sparsity(m) == pytest.approx(math.floor(0.8 * TOTAL + 0.5) / TOTAL)
    assert history["mask_distance"].iloc[1:3].notna().all()


def test_early_bird_falls_back_to_max_search():
    m = model()
    eb = registry.get("early_bird", "training")(0.8, epsilon=1e-9, window=2, max_search=0.5)
    eb.fit(m, loader(), epochs=4)
    assert eb.found_epoch == 1  # round(0.5 * 4) epochs searched


def test_imp_records_test_accuracy_and_keeps_its_baselines():
    m = model()
    imp = registry.get("imp", "training")(0.75, rounds=1, baselines=("reinit",))
    data = loader()
    imp.fit(m, data, data, epochs=1, test_loader=data, progress=False)
    table = imp.rounds_table
    assert {"test_accuracy", "reinit_test_accuracy"} <= set(table.columns)
    other = imp.baseline_models[(1, "reinit")]
    # the kept handle is the network the table scored
    assert sl.train.evaluate(other, data)["accuracy"] == table["reinit_test_accuracy"].iloc[-1]
    assert sl.train.evaluate(m, data)["accuracy"] == table["test_accuracy"].iloc[-1]


def test_imp_callbacks_follow_the_ticket_not_its_control_trainings():
    # the re-initialised twin is a control experiment: its training is not the ticket's
    spy = RoundStarts()
    imp = registry.get("imp", "training")(0.8, rounds=2, baselines=("reinit",))
    imp.fit(model(), loader(), loader(1), epochs=1, lr=0.1, callbacks=[spy])
    assert len(spy.starts) == 3  # the dense run and two rounds; the twin is not seen
    assert len(imp.baseline_models) == 2  # a twin per round, trained without the callbacks

"""Pruning during training follows its schedule exactly and keeps masks monotone."""

import math

import pytest
import torch
from helpers import mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import registry, schedules
from sparsity_lab.scheduled import ScheduledPruning, change_masks, reset_state
from sparsity_lab.train import Callback, fit


def loader(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 12, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)


model = mlp  # Linear(12, 16), ReLU, Linear(16, 2)


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


# --- optimizer state and non-monotone schedules ---------------------------------------------


def test_reset_state_zeroes_per_element_state_only():
    p = nn.Parameter(torch.ones(2, 3))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    where = torch.tensor([[True, False, False], [False, False, True]])
    reset_state(opt, p, where)
    state = opt.state[p]
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.all(state[key][where] == 0)
        assert torch.all(state[key][~where] != 0)
    assert float(state["step"]) == 1  # per tensor: untouched


def test_change_masks_restarts_grown_entries_from_zero_without_momentum():
    m = model()
    sl.masks.attach(m, "0.weight", torch.ones(16, 12))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    w = sl.masks.dense_weight(m, "0.weight")
    m(torch.randn(4, 12)).sum().backward()
    opt.step()
    old = torch.ones(16, 12, dtype=torch.bool)
    new = old.clone()
    new[0, :3] = False  # prune three
    changes = change_masks(m, {"0.weight": new}, opt)
    assert changes == {"0.weight": {"pruned": 3, "grown": 0}}
    buf = opt.state[w]["momentum_buffer"]
    assert torch.all(buf[~new] == 0) and torch.all(w[~new] == 0)
    # further steps leave pruned entries exactly at zero: no stale momentum moves them
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(4, 12)).sum().backward()
        opt.step()
    assert torch.all(w[~new] == 0)
    # grow them back: they start at zero with no momentum, and the count is exact
    changes = change_masks(m, {"0.weight": old}, opt)
    assert changes == {"0.weight": {"pruned": 0, "grown": 3}}
    assert torch.all(w[~new] == 0) and torch.all(buf[~new] == 0)
    assert int(sl.masks.get_mask(m, "0.weight").sum()) == 16 * 12


class Steps(Callback):
    """Mask sparsity (fraction of masked entries) after every step, and the optimizer."""

    def __init__(self):
        self.sparsity = []

    def on_step_end(self, trainer):
        found = sl.masks.masks(trainer.model)
        total = 12 * 16 + 16 * 2
        zeros = sum(int((m == 0).sum()) for m in found.values())
        self.sparsity.append(zeros / total)
        self.optimizer = trainer.optimizer


@pytest.mark.parametrize("name", ["iht", "dsd"])
def test_dense_phases_remove_the_masks_and_sparse_phases_prune_again(name):
    """The pruned model follows the schedule through its phase boundaries, step by step."""
    m, watch = model(), Steps()
    kw = dict(begin_step=6, end_step=24, frequency=6)
    pruner = ScheduledPruning("magnitude", 0.75, schedule=name, budget="uniform", **kw)
    fit(m, loader(), epochs=5, lr=0.1, callbacks=[pruner, watch], seed=0)
    fn = registry.get(name, "schedule")
    total = 12 * 16 + 16 * 2
    for step, measured in enumerate(watch.sparsity, start=1):
        expected = fn(step, 0.75, **kw)
        assert measured == math.floor(expected * total + 0.5) / total, step
    # entries that came back in a dense phase carry no momentum from before their pruning
    for name_, mask in sl.masks.masks(m).items():
        buf = watch.optimizer.state[sl.masks.dense_weight(m, name_)]["momentum_buffer"]
        assert torch.all(buf[mask == 0] == 0)


def test_a_regrown_weight_restarts_at_zero_after_a_sparse_phase():
    m = model()
    seen = {}

    class Peek(Callback):
        def on_step_end(self, trainer):
            if trainer.step == 12:  # the first step of the dense phase has not run yet
                seen["mask"] = sl.masks.get_mask(trainer.model, "0.weight")
                seen["weight"] = trainer.model[0].weight.detach().clone()

    pruner = ScheduledPruning(
        "magnitude", 0.5, schedule="iht", begin_step=6, end_step=100, frequency=6
    )
    fit(m, loader(), epochs=3, lr=0.1, callbacks=[pruner, Peek()], seed=0)
    # at step 12 the masks were just removed: the weights pruned at step 6 are back, at zero
    assert seen["mask"] is None
    assert (seen["weight"] == 0).float().mean() >= 0.4


ALL_SCHEDULES = [
    "one_shot",
    "iterative",
    "linear",
    "cubic",
    "exponential",
    "cosine",
    "iht",
    "dsd",
    "adaptive",
]


def test_the_schedule_list_below_is_every_registered_schedule():
    assert sorted(ALL_SCHEDULES) == sorted(registry.available("schedule"))


@pytest.mark.parametrize("schedule", ALL_SCHEDULES)
@pytest.mark.parametrize("method", ["magnitude", "random"])
@pytest.mark.parametrize("pattern", ["channel", "block:2x2"])
def test_every_schedule_works_with_any_criterion_and_pattern(schedule, method, pattern):
    m, watch = model(), Steps()
    kw = dict(begin_step=0, end_step=18, frequency=6)
    pruner = ScheduledPruning(
        method, 0.5, schedule=schedule, budget="uniform", pattern=pattern, **kw
    )
    fit(m, loader(), epochs=4, lr=0.1, callbacks=[pruner, watch], seed=0)
    pat = sl.patterns.get(pattern)
    if schedule == "adaptive":
        # no validation data: the generalisation loss stays 0, so every update prunes at
        # the full rate from the previous target
        target = 0.0
        for step, _ in pruner.log:
            target = schedules.adaptive(
                step, 0.5, 0, 18, frequency=6, current_sparsity=target, generalization_loss=0.0
            )
    else:
        target = registry.get(schedule, "schedule")(24, 0.5, **kw)
    if schedule == "dsd":
        assert target == 0  # dense-sparse-dense ends dense: the masks are gone
    for name, shape in {"0.weight": (16, 12), "2.weight": (2, 16)}.items():
        mask = sl.masks.get_mask(m, name)
        zeros = 0 if mask is None else int((mask == 0).sum())
        assert zeros % pat.group_size(shape) == 0, name  # whole groups only
        # uniform budget, whole groups: round(target * groups) in every layer
        assert zeros // pat.group_size(shape) == math.floor(target * pat.n_groups(shape) + 0.5)
    assert target > 0 or schedule == "dsd"


def test_adaptive_schedule_reads_the_validation_loss():
    m = model()
    pruner = ScheduledPruning(
        "magnitude", 0.9, schedule="adaptive", begin_step=0, end_step=60, frequency=6
    )
    history = fit(m, loader(), loader(1), epochs=4, lr=0.1, callbacks=[pruner], seed=0)
    # the first update prunes at the full rate (no validation loss yet: GL = 0)
    assert pruner.log[0] == (0, pytest.approx(0.5))
    assert list(history["sparsity"]) == sorted(history["sparsity"])
    # every later target is what the schedule gives for the losses seen so far
    for (step, target), (_, prev) in zip(pruner.log[1:], pruner.log, strict=False):
        finished = (step - 1) // 6  # epochs whose validation loss was known at this step
        gl = schedules.prechelt_gl(list(history["val_loss"][:finished]))
        expected = schedules.adaptive(
            step, 0.9, 0, 60, frequency=6, current_sparsity=prev, generalization_loss=gl
        )
        assert target == pytest.approx(expected), step
    # and the feedback acted: at least one update pruned less than the full rate would
    full = [1 - (1 - prev) * 0.5 for (_, prev) in pruner.log[:-1]]
    assert any(t < f - 1e-9 for (_, t), f in zip(pruner.log[1:], full, strict=True))


def test_nm_pattern_turns_a_ramp_into_one_switch():
    m, watch = model(), Steps()
    pruner = ScheduledPruning(
        "magnitude", 0.5, schedule="cubic", begin_step=6, end_step=18, frequency=6, pattern="2:4"
    )
    fit(m, loader(), epochs=3, callbacks=[pruner, watch])
    # N:M fixes the sparsity: dense while the ramp is at 0 (up to its first update after
    # begin_step, step 12), then exactly 2 of every 4
    assert watch.sparsity[:11] == [0.0] * 11
    assert all(s == 0.5 for s in watch.sparsity[11:])
    assert pruner.log == [(12, 0.5)]

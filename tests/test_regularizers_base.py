"""The regularizer protocol: registration, projection, targets, tuning and clear errors."""

import warnings

import helpers
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import registry
from sparsity_lab.regularizers.base import Regularizer, project

NAMES = [
    "l1", "prox_l1", "hoyer", "group_lasso", "slimming", "polarization", "l0_hard_concrete",
    "str", "ltp", "continuous_sparsification", "admm", "targeted_dropout",
    "variational_dropout", "structured_bayesian", "bayesian_compression",
]  # fmt: skip
STRUCTURED = ["group_lasso", "slimming", "polarization", "structured_bayesian",
              "bayesian_compression"]  # fmt: skip


def loader(n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long()), batch_size=32, generator=g)


def mlp():
    return helpers.mlp(12, 16, 8, 2)


def test_every_regularizer_is_registered_with_a_cited_docstring():
    assert sorted(registry.available("regularizer")) == sorted(NAMES)
    for name in NAMES:
        cls = registry.get(name, "regularizer")
        assert issubclass(cls, Regularizer) and cls.name == name
        doc = cls.__doc__
        assert "Rule:" in doc and "Supports:" in doc, name
        assert any(str(year) in doc for year in range(1989, 2025)), name  # the paper's year


@pytest.mark.parametrize("name", NAMES)
def test_every_regularizer_reaches_the_target_exactly_and_leaves_a_plain_masked_model(name):
    m = mlp()
    reg = registry.get(name)(sparsity=0.6)
    history = reg.fit(m, loader(), epochs=2, optimizer="adam", lr=1e-3, progress=False)
    assert {"reg_sparsity", "strength"} <= set(history.columns)
    names = reg.names(m)
    # nothing of the method is left in the model: only sparsity_lab masks
    for _, module in m.named_modules():
        assert not hasattr(module, "sparsity_gate")
    assert set(sl.masks.masks(m)) >= set(names)
    kept = sum(int(sl.masks.get_mask(m, n).sum()) for n in names)
    total = sum(sl.masks.get_mask(m, n).numel() for n in names)
    if name in STRUCTURED:
        assert names == ["0.weight", "2.weight"]  # the class layer is left out
        assert abs((1 - kept / total) - 0.6) < 0.06  # whole rows of 12 or 16 weights
        for n in names:
            rows = sl.masks.get_mask(m, n)
            assert ((rows.sum(1) == 0) | (rows.sum(1) == rows.shape[1])).all()
    else:
        assert total - kept == round(0.6 * total)
    assert 0.0 <= reg.reached <= 1.0
    assert set(reg.layer_sparsity) == set(names)
    with torch.no_grad():
        m(torch.randn(3, 12))


def test_project_is_the_exact_top_k_under_each_budget():
    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(4, 5, generator=g), "b": torch.rand(3, 5, generator=g)}
    keep = project(scores, 0.6, budget="global")
    flat = torch.cat([s.flatten() for s in scores.values()])
    threshold = flat.sort().values[round(0.6 * flat.numel()) - 1]
    for n, s in scores.items():
        assert torch.equal(keep[n], s > threshold)
    keep = project(scores, 0.6, budget="uniform")
    for n, s in scores.items():
        k = (~keep[n]).sum()
        assert torch.equal(keep[n], s > s.flatten().sort().values[k - 1])
    rows = project(scores, 0.5, pattern="channel", reduction="l2", budget="uniform")
    norms = scores["a"].norm(dim=1)
    assert torch.equal(rows["a"][:, 0], norms > norms.sort().values[1])


def test_the_projection_prefers_what_the_rule_keeps_then_the_methods_score():
    m = mlp()
    reg = registry.get("l1")(threshold=0.1, sparsity=0.9, tune=False)
    reg.prepare(m)
    rank = reg.ranking(m)
    for n in reg.names_:
        w = reg.weight(n).detach()
        kept, pruned = rank[n][w.abs() > 0.1], rank[n][w.abs() <= 0.1]
        assert kept.min() > pruned.max()  # rule-kept always above rule-pruned
        order = torch.argsort(w.abs()[w.abs() > 0.1])
        assert (kept[order].diff() >= 0).all()  # inside, by magnitude


def test_the_learned_budget_scales_every_layers_density_alike():
    m = mlp()
    reg = registry.get("l1")(threshold=0.0, sparsity=0.9, tune=False)
    reg.prepare(m)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # the rule keeps 50%, 25% and 100% of the three layers
        for n, density in (("0.weight", 0.5), ("2.weight", 0.25), ("4.weight", 1.0)):
            w = reg.weight(n)
            w.copy_(torch.rand(w.shape, generator=g) + 0.1)
            w.view(-1)[: round((1 - density) * w.numel())] = 0.0
    keep = reg.project_learned(m, reg.keep(m), 0.9)
    rule_kept = {n: int(k.sum()) for n, k in reg.keep(m).items()}  # 96, 32 and 16
    total_keep = round(0.1 * sum(k.numel() for k in keep.values()))  # 34 of 336
    for n, k in keep.items():
        share = total_keep * rule_kept[n] / sum(rule_kept.values())
        assert abs(int(k.sum()) - share) < 1  # proportional, largest-remainder rounded
        assert not (k & ~reg.keep(m)[n]).any()  # only what the rule kept
        w = reg.weight(n).detach()
        assert w[k].min() >= w[reg.keep(m)[n] & ~k].max()  # the largest of them
    assert sum(int(k.sum()) for k in keep.values()) == total_keep


def test_the_learned_budget_warns_when_it_empties_a_layer_the_rule_emptied():
    m = mlp()
    reg = registry.get("l1")(threshold=0.0, sparsity=0.5, tune=False)
    reg.prepare(m)
    with torch.no_grad():  # the rule keeps every weight of the first layers, none of the last
        for n in reg.names_:
            reg.weight(n).fill_(1.0)
        reg.weight("4.weight").zero_()
    with pytest.warns(
        UserWarning, match=r"no weight in 4\.weight \(the rule kept 0 of .*budget='uniform'"
    ):
        keep = reg.project_learned(m, reg.keep(m), 0.5)
    assert int(keep["4.weight"].sum()) == 0  # the warning describes what happened
    with torch.no_grad():
        reg.weight("4.weight").fill_(1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a budget that empties no layer stays silent
        keep = reg.project_learned(m, reg.keep(m), 0.5)
    assert all(int(k.sum()) > 0 for k in keep.values())


def test_the_tuner_raises_a_strength_that_is_too_weak():
    m = mlp()
    reg = registry.get("l1")(1e-6, sparsity=0.8, tune_every=2)
    reg.fit(m, loader(256), epochs=6, optimizer="adam", lr=3e-3, progress=False)
    assert reg.strength > 1e-5
    assert reg.log and reg.log[-1]["goal"] == pytest.approx(0.8)
    no_target = registry.get("l1")(1e-6)
    no_target.fit(mlp(), loader(), epochs=1, progress=False)
    assert no_target.strength == 1e-6 and not no_target.tune


def test_the_tuner_keeps_the_strength_within_its_range_when_the_sparsity_cannot_follow():
    """With lr=0 the weights never move, so the rule's sparsity stays 0 whatever the
    strength: the tuner raises it at every reading, up to tune_range times its start and no
    further (unbounded, it wound up until the penalty's gradients overflowed)."""
    reg = registry.get("l1")(1e-3, sparsity=0.9, tune_every=1, tune_range=10.0)
    reg.fit(mlp(), loader(256), epochs=4, optimizer="adam", lr=0.0, progress=False)
    assert len(reg.log) > 20  # enough readings for e^0.5 steps to pass a factor of 10
    assert reg.strength == pytest.approx(1e-2)
    assert max(row["strength"] for row in reg.log) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="tune_range must be a factor >= 1"):
        registry.get("l1")(sparsity=0.9, tune_range=0.5)


def test_a_user_built_optimizer_must_see_the_added_parameters():
    m = mlp()
    reg = registry.get("str")()
    with pytest.raises(RuntimeError, match="prepare"):
        sl.train.fit(m, loader(), epochs=1, callbacks=[reg], progress=False)
    m = mlp()
    reg = registry.get("str")()
    reg.prepare(m)  # the thresholds exist before the optimizer is built
    sl.train.fit(m, loader(), epochs=1, callbacks=[reg], progress=False)
    assert sl.masks.masks(m)


def test_bad_input_says_how_to_fix_it():
    reg = registry.get("l1")
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\)"):
        reg(sparsity=1.2)
    with pytest.raises(ValueError, match="strength must be a number >= 0"):
        reg(-1.0)
    with pytest.raises(ValueError, match="supports the patterns"):
        reg(pattern="channel")
    with pytest.raises(ValueError, match="needs a target"):
        reg(tune=True)
    with pytest.raises(ValueError, match="no strength"):
        registry.get("admm")(sparsity=0.5, tune=True)
    with pytest.raises(registry.UnknownNameError, match="Did you mean"):
        reg(budget="globl")
    m = sl.prune(mlp(), "magnitude", 0.5)
    with pytest.raises(ValueError, match="squash"):
        reg().prepare(m)
    with pytest.raises(ValueError, match="not pruning targets"):
        reg(exclude=["9.weight"]).prepare(mlp())


def test_structured_defaults_leave_out_the_class_layer_and_targets_are_respected():
    m = mlp()
    assert registry.get("group_lasso")().names(m) == ["0.weight", "2.weight"]
    assert registry.get("l1")().names(m) == ["0.weight", "2.weight", "4.weight"]
    reg = registry.get("l1")(targets=["2.weight"], sparsity=0.5)
    reg.fit(m, loader(), epochs=1, progress=False)
    assert list(sl.masks.masks(m)) == ["2.weight"]


def test_threshold_rule_alone_decides_without_a_target():
    m = mlp()
    reg = registry.get("prox_l1")(0.5)
    reg.fit(m, loader(), epochs=3, optimizer="sgd", lr=0.1, progress=False)
    # prox_l1's rule is "exactly zero", and no target: the masks are the zeros themselves
    for n in reg.names(m):
        w, mask = sl.masks.weight(m, n), sl.masks.get_mask(m, n)
        assert torch.equal(mask.bool(), w != 0)
    assert sl.sparsity(m) == pytest.approx(reg.reached)
    assert reg.reached > 0


@pytest.mark.parametrize("name", STRUCTURED)
def test_structured_masks_feed_shrink(name):
    from sparsity_lab import shrink

    torch.manual_seed(0)
    model = sl.models.build("lenet300", input_shape=(12,), n_classes=2, hidden=(16, 8))
    reg = registry.get(name)(sparsity=0.5)
    reg.fit(model, loader(), epochs=1, optimizer="adam", lr=1e-3, progress=False)
    x = torch.randn(6, 12)
    model.eval()
    small = shrink.shrink(model, x[:2])
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-4)
    units = small.fc1.out_features + small.fc2.out_features
    kept = sum(int(sl.masks.get_mask(model, n).any(1).sum()) for n in ("fc1.weight", "fc2.weight"))
    assert units == kept < 24  # every pruned unit is physically gone


def test_a_gate_scales_a_linear_layers_units_on_sequences_and_a_convolutions_channels():
    from sparsity_lab.regularizers.base import OutputGate, attach_gate

    class Fixed(OutputGate):
        def __init__(self, values):
            super().__init__()
            self.values = values

        def gate(self, n):
            return self.values

    torch.manual_seed(0)
    linear, x = nn.Linear(4, 3), torch.randn(2, 5, 4)  # a batch of 2 sequences of 5 tokens
    plain = linear(x)
    attach_gate(linear, Fixed(torch.tensor([1.0, 0.0, 2.0])))
    # the units are the last axis: unit 1 silenced, unit 2 doubled, at every position
    assert torch.allclose(linear(x), plain * torch.tensor([1.0, 0.0, 2.0]))
    conv, images = nn.Conv2d(1, 3, 3), torch.randn(2, 1, 6, 6)
    plain = conv(images)
    attach_gate(conv, Fixed(torch.tensor([1.0, 0.0, 2.0])))
    assert torch.allclose(conv(images), plain * torch.tensor([1.0, 0.0, 2.0]).view(1, 3, 1, 1))

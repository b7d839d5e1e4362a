"""Penalties: one training step against the formulas, exact zeros of whole groups, shrink."""

import math

import helpers
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import registry
from sparsity_lab.regularizers.penalties import following_norm, soft_threshold

LR = 0.1


def batch(n=32, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, 0] - x[:, 1] > 0).long()


def one_batch_loader(n=32, d=12):
    return DataLoader(TensorDataset(*batch(n, d)), batch_size=n)


def mlp(d=12):
    return helpers.mlp(d, 16, 8, 2)


def grads(model):
    """Gradients of the plain cross-entropy on the batch, computed independently."""
    x, y = batch()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def one_sgd_step(name, model, **options):
    reg = registry.get(name)(**options)
    reg.fit(model, one_batch_loader(), epochs=1, lr=LR, momentum=0.0, progress=False)
    return reg


def test_soft_threshold_by_hand():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.2, 2.0])
    assert torch.equal(soft_threshold(x, 1.0), torch.tensor([-2.0, 0.0, 0.0, 0.0, 1.0]))


def test_prox_l1_step_is_the_soft_thresholding_formula():
    m = mlp()
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    g = grads(m)
    one_sgd_step("prox_l1", m, strength=0.05)
    t = LR * 0.05
    for n in ("0.weight", "2.weight", "4.weight"):
        v = w0[n] - LR * g[n]
        expected = torch.sign(v) * torch.clamp(v.abs() - t, min=0)
        assert torch.allclose(sl.masks.weight(m, n), expected, atol=1e-7)
        # the rule is "exactly zero": the mask is the zero pattern of the step
        assert torch.equal(sl.masks.get_mask(m, n).bool(), expected != 0)
    assert torch.allclose(m[0].bias, w0["0.bias"] - LR * g["0.bias"])  # biases untouched


def test_l1_adds_strength_times_sign_to_the_gradient():
    m = mlp()
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    g = grads(m)
    one_sgd_step("l1", m, strength=0.01, threshold=0.0)
    for n in ("0.weight", "2.weight", "4.weight"):
        expected = w0[n] - LR * (g[n] + 0.01 * torch.sign(w0[n]))
        assert torch.allclose(sl.masks.weight(m, n), expected, atol=1e-7)


def test_hoyer_square_by_hand_and_scale_invariance():
    m = nn.Sequential(nn.Linear(4, 2, bias=False))
    reg = registry.get("hoyer")()
    reg.prepare(m)
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    assert float(reg.penalty(m).detach()) == pytest.approx(8.0**2 / 26.0)
    with torch.no_grad():
        m[0].weight.mul_(7.0)
    assert float(reg.penalty(m).detach()) == pytest.approx(8.0**2 / 26.0)  # scale invariant
    rows = registry.get("hoyer")(pattern="channel", targets=["0.weight"])
    m2 = nn.Sequential(nn.Linear(4, 2, bias=False))
    rows.prepare(m2)
    with torch.no_grad():
        m2[0].weight.copy_(torch.tensor([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]))
    # group norms 5 and 1: (5 + 1)^2 / (25 + 1)
    assert float(rows.penalty(m2).detach()) == pytest.approx(36.0 / 26.0)


@pytest.mark.parametrize("size_weighted", [True, False])
def test_group_lasso_step_is_block_soft_thresholding(size_weighted):
    m = mlp()
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    g = grads(m)
    one_sgd_step("group_lasso", m, strength=0.3, size_weighted=size_weighted)
    # rows of 12 and 16 inputs: Yuan & Lin's sqrt(group size) scales each layer's threshold
    for n, size in (("0.weight", 12), ("2.weight", 16)):
        t = LR * 0.3 * (math.sqrt(size) if size_weighted else 1.0)
        v = w0[n] - LR * g[n]
        factor = torch.clamp(1 - t / v.norm(dim=1, keepdim=True), min=0)
        assert torch.allclose(sl.masks.weight(m, n), v * factor, atol=1e-6)
    assert not sl.masks.is_masked(m, "4.weight")  # the class layer is left out


def test_group_lasso_input_groups_are_columns():
    m = mlp()
    w0 = m[0].weight.detach().clone()
    g = grads(m)["0.weight"]
    one_sgd_step("group_lasso", m, strength=0.2, pattern="input", targets=["0.weight"])
    v = w0 - LR * g
    t = LR * 0.2 * math.sqrt(16)  # a column holds one weight per output unit: 16
    factor = torch.clamp(1 - t / v.norm(dim=0, keepdim=True), min=0)
    assert torch.allclose(sl.masks.weight(m, "0.weight"), v * factor, atol=1e-6)


def test_group_lasso_subgradient_penalty_weights_each_group_norm_by_its_size():
    m = mlp()
    reg = registry.get("group_lasso")(strength=1.0, proximal=False)
    reg.prepare(m)
    by_hand = sum(
        math.sqrt(w.shape[1]) * float(w.detach().norm(dim=1).sum())
        for w in (m[0].weight, m[2].weight)
    )
    assert float(reg.penalty(m)) == pytest.approx(by_hand, rel=1e-6)
    assert registry.get("group_lasso")(size_weighted=False).strength == 3.0
    assert registry.get("group_lasso")().strength == 0.15


@pytest.mark.parametrize("name", ["group_lasso", "slimming"])
def test_groups_driven_to_zero_come_out_exactly_zero(name):
    m = mlp()
    x, y = batch(256)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    reg = registry.get(name)(3.0)
    reg.fit(m, loader, epochs=4, lr=LR, momentum=0.0, progress=False)
    dead_total = 0
    for n in reg.names(m):
        w = sl.masks.weight(m, n)
        mask = sl.masks.get_mask(m, n)
        dead = mask.sum(1) == 0
        dead_total += int(dead.sum())
        assert torch.equal(w[dead], torch.zeros_like(w[dead]))  # exactly zero rows
        assert (w[~dead].norm(dim=1) > 0).all()  # threshold 0: every other row survives
        bias = sl.masks.weight(m, n.replace("weight", "bias"))
        if name == "slimming":  # the unit's whole output is scaled by its zero gamma
            assert torch.equal(bias[dead], torch.zeros_like(bias[dead]))
    assert dead_total > 0


class Outputs(sl.train.Callback):
    """Records the model's eval-mode outputs at the end of training, before the
    regularizer (a later callback) finalizes."""

    def __init__(self, x):
        self.x = x

    def on_train_end(self, trainer):
        trainer.model.eval()
        with torch.no_grad():
            self.before = trainer.model(self.x)


def test_slimming_finalize_keeps_the_function_and_the_shrunk_model_agrees():
    from sparsity_lab import shrink

    torch.manual_seed(0)
    model = sl.models.build("lenet300", input_shape=(12,), n_classes=2, hidden=(16, 8))
    x, y = batch(256)
    reg, outputs = registry.get("slimming")(2.0), Outputs(x)
    reg.prepare(model)
    sl.train.fit(
        model,
        DataLoader(TensorDataset(x, y), batch_size=32),
        epochs=3,
        lr=LR,
        momentum=0.0,
        callbacks=[outputs, reg],
        progress=False,
    )
    with torch.no_grad():
        after = model(x)
    assert torch.allclose(outputs.before, after, atol=1e-6)  # folding changes nothing
    assert sum(int((sl.masks.get_mask(model, n).sum(1) == 0).sum()) for n in reg.names_) > 0
    small = shrink.shrink(model, x[:4])
    with torch.no_grad():
        assert torch.allclose(small(x), after, atol=1e-4)
    assert small.fc1.out_features < 16 or small.fc2.out_features < 8


def test_slimming_uses_the_following_batchnorm_gamma():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    assert following_norm(model, "0") == "1"
    assert following_norm(model, "3") is None
    x, y = batch(256)
    reg = registry.get("slimming")(5.0)
    gamma0 = model[1].weight.detach().clone()
    reg.fit(model, DataLoader(TensorDataset(x, y), batch_size=32), epochs=3, lr=LR, progress=False)
    assert not hasattr(model[0], "sparsity_gate")  # no extra scale where a BatchNorm is
    gamma_mask = sl.masks.get_mask(model, "1.weight")
    rows = sl.masks.get_mask(model, "0.weight")
    assert torch.equal(gamma_mask.bool(), rows.bool().any(1))
    assert (gamma_mask == 0).any() and not torch.equal(gamma0, model[1].weight)


def test_polarization_penalty_by_hand_and_clamping():
    m = mlp()
    reg = registry.get("polarization")(t=1.5)
    reg.prepare(m)
    gammas = [torch.tensor([0.2, 0.9] * 8), torch.tensor([0.0, 0.5, 1.0, 0.3] * 2)]
    with torch.no_grad():
        for n, v in zip(reg.names_, gammas, strict=True):
            reg.scale(n).copy_(v)
    g = torch.cat(gammas)
    expected = 1.5 * g.abs().sum() - (g - g.mean()).abs().sum()
    assert float(reg.penalty(m).detach()) == pytest.approx(float(expected))
    with torch.no_grad():
        reg.scale("0.weight")[0] = -0.3
        reg.scale("0.weight")[1] = 1.7
    reg.after_step(None)
    gamma = reg.scale("0.weight").detach()
    assert float(gamma[0]) == 0.0 and float(gamma[1]) == 1.0

"""Mixture of experts: routing counts, capacity, gate values and the balancing losses."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparsity_lab import registry
from sparsity_lab.ephemeral import moe as M


def test_registered():
    assert registry.get("moe_topk") is M.NoisyTopKGate
    assert registry.get("switch") is M.SwitchGate


def test_capacity_and_cv_by_hand():
    assert M.capacity_of(10, 4, 1.25) == 4  # ceil(3.125)
    assert M.capacity_of(10, 4, 1.0, k=2) == 5
    x = torch.tensor([1.0, 2.0, 3.0])
    assert float(M.cv_squared(x)) == pytest.approx(1.0 / 4.0)  # var 1 (unbiased), mean 2


def _switch_with_router(weight: torch.Tensor, capacity_factor: float) -> M.SwitchGate:
    gate = M.SwitchGate(weight.shape[1], weight.shape[0], capacity_factor=capacity_factor)
    with torch.no_grad():
        gate.w_gate.weight.copy_(weight)
    return gate


def test_switch_routes_to_argmax_and_drops_beyond_capacity():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=gen)
    w = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.1], [-1.0, -1.0, -1.0]])
    gate = _switch_with_router(w, capacity_factor=1.0)  # capacity 3
    routing = gate(x)
    # independent: argmax of x w^T, then a first-come queue per expert
    choice = (x @ w.T).argmax(1).tolist()
    capacity = 3
    taken = [0] * 4
    kept = []
    for e in choice:
        kept.append(taken[e] < capacity)
        taken[e] += kept[-1]
    assert routing.capacity == capacity
    assert routing.experts.flatten().tolist() == choice
    assert routing.kept.flatten().tolist() == kept
    assert routing.counts.tolist() == taken
    assert routing.dropped == len(choice) - sum(taken)
    probs = (x @ w.T).softmax(1)
    expected = probs.max(1).values * torch.tensor(kept, dtype=torch.float32)
    torch.testing.assert_close(routing.weights.flatten(), expected)


def test_switch_aux_loss_formula():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 4, generator=gen)
    gate = M.SwitchGate(4, 3, capacity_factor=2.0, alpha=0.01)
    routing = gate(x)
    probs = gate.w_gate(x).softmax(1).detach().numpy()
    f = np.bincount(probs.argmax(1), minlength=3) / 20
    expected = 0.01 * 3 * float((f * probs.mean(0)).sum())
    assert routing.aux_loss.item() == pytest.approx(expected, rel=1e-5)
    # uniform routing reaches the minimum alpha
    uniform = M.SwitchGate(4, 3, capacity_factor=2.0)
    with torch.no_grad():
        uniform.w_gate.weight.zero_()
    assert uniform(x).aux_loss.item() == pytest.approx(0.01 * 3 * (1.0 * 1 / 3), rel=1e-6)


@pytest.mark.parametrize("router", ["switch", "moe_topk"])
def test_experts_never_exceed_capacity(router):
    torch.manual_seed(0)
    options = {"capacity_factor": 0.75}
    if router == "moe_topk":
        options["k"] = 2
    layer = M.MoEMLP(6, 8, n_experts=4, router=router, **options)
    with torch.no_grad():  # a skewed router: most tokens want expert 0
        layer.router.w_gate.weight.normal_()
        layer.router.w_gate.weight[0] += 3.0
    seen = [0] * 4
    for e, expert in enumerate(layer.experts):
        expert.register_forward_hook(lambda m, a, o, e=e: seen.__setitem__(e, seen[e] + len(a[0])))
    x = torch.rand(40, 6) + 0.5
    layer.train()
    layer(x)
    capacity = layer.last_routing.capacity
    assert capacity == math.ceil(0.75 * layer.router.k * 40 / 4)
    assert max(seen) <= capacity
    assert seen == layer.last_routing.counts.tolist()
    assert layer.last_routing.dropped > 0  # the skew did overflow expert 0


def test_topk_gate_without_noise_and_moe_output_by_hand():
    torch.manual_seed(0)
    layer = M.MoEMLP(5, 7, n_experts=4, router="moe_topk", k=2)
    with torch.no_grad():
        layer.router.w_gate.weight.normal_()
    layer.eval()  # no noise in eval mode
    x = torch.randn(6, 5)
    out = layer(x)
    logits = layer.router.w_gate(x)
    routing = layer.last_routing
    assert routing.counts.sum() == 12  # 6 tokens x 2 experts
    expected = torch.zeros(6, 5)
    for i in range(6):
        top = logits[i].topk(2)
        weights = top.values.softmax(0)
        assert sorted(routing.experts[i].tolist()) == sorted(top.indices.tolist())
        for w, e in zip(weights, top.indices, strict=True):
            expected[i] += w * layer.experts[int(e)](x[i : i + 1])[0]
    torch.testing.assert_close(out, expected)


def test_smooth_load_matches_monte_carlo():
    torch.manual_seed(0)
    gate = M.NoisyTopKGate(3, 4, k=2)
    with torch.no_grad():
        gate.w_gate.weight.normal_()
        gate.w_noise.weight.normal_(std=0.5)
    x = torch.randn(3, 3)
    clean = gate.w_gate(x).detach()
    std = (F.softplus(gate.w_noise(x)) + 1e-2).detach()
    # P(x, i): expert i in the top 2 when only ITS noise is redrawn, the rest fixed
    base = clean + torch.randn(clean.shape) * std
    top = base.topk(3, dim=1).values
    smooth = gate._smooth_load(clean, std, base, top)
    draws = 20000
    eps = torch.randn(draws, *clean.shape)
    counts = torch.zeros(clean.shape)
    for i in range(4):
        trial = base.expand(draws, -1, -1).clone()
        trial[:, :, i] = clean[:, i] + eps[:, :, i] * std[:, i]
        rank = (trial > trial[:, :, i : i + 1]).sum(2)  # experts strictly above i
        counts[:, i] = (rank < 2).float().mean(0)
    torch.testing.assert_close(smooth, counts.sum(0), atol=0.04, rtol=0)


def test_importance_loss_has_a_gradient_to_the_router():
    torch.manual_seed(0)
    layer = M.MoEMLP(4, 4, n_experts=3, router="moe_topk", k=1)
    layer.train()
    layer(torch.randn(16, 4))
    layer.aux_loss.backward()
    assert layer.router.w_gate.weight.grad is not None
    assert layer.router.w_gate.weight.grad.abs().sum() > 0


def test_classifier_and_loss_wrapper():
    torch.manual_seed(0)
    model = M.MoEClassifier((8,), 3, dim=6, hidden=5, n_experts=2, router="switch")
    x, y = torch.randn(10, 8), torch.randint(0, 3, (10,))
    out = model(x)
    loss = M.with_aux_loss(torch.nn.CrossEntropyLoss(), model)(out, y)
    assert loss.item() == pytest.approx((F.cross_entropy(out, y) + model.aux_loss).item())


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="k must be in"):
        M.NoisyTopKGate(4, 3, k=4)
    with pytest.raises(ValueError, match="capacity_factor"):
        M.SwitchGate(4, 3, capacity_factor=0.0)
    with pytest.raises(ValueError, match="router must be"):
        M.MoEMLP(4, 4, router="hash")
    with pytest.raises(ValueError, match="no MoEMLP"):
        M.with_aux_loss(F.cross_entropy, torch.nn.Linear(2, 2))

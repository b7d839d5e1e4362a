"""Pruning at initialisation: closed forms, finite differences and layer collapse."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from torch import nn
from torch.func import functional_call

import sparsity_lab as sl
from sparsity_lab import masks, models
from sparsity_lab.criteria import at_init
from sparsity_lab.criteria.base import Context


def small_mlp(seed=0, act=nn.ReLU):
    return mlp(5, 7, 3, seed=seed, activation=act).double()


def batch(n=32, seed=0, dim=5, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g)


NAMES = ["0.weight", "2.weight"]


def test_exponential_steps_shrink_the_density_by_a_constant_factor():
    steps = at_init.exponential_steps(0.99, 4)
    densities = [1 - s for s in steps]
    assert steps[-1] == 0.99
    ratios = [b / a for a, b in zip([1.0, *densities], densities, strict=False)]
    assert ratios == pytest.approx([0.01**0.25] * 4)
    with pytest.raises(ValueError, match="sparsity must be in"):
        at_init.exponential_steps(1.0, 3)


# --- GraSP -------------------------------------------------------------------------------


def test_grasp_equals_its_closed_form_on_a_linear_least_squares_model():
    # L = |W X^T - Y^T|^2 / (2N): g = (W X^T - Y^T) X / N and H g = g X^T X / N
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    model = nn.Linear(4, 2, bias=False).double()

    def loss(out, target):
        return 0.5 * (out - target).pow(2).sum() / len(out)

    w = model.weight.detach()
    grad = (w @ x.T - y.T) @ x / len(x)
    expected = w * (grad @ x.T @ x / len(x))
    scores = sl.criteria.get("grasp").scores(model, ["weight"], Context(data=(x, y), loss_fn=loss))
    assert torch.allclose(scores["weight"], expected)


def test_grasp_hessian_gradient_product_matches_finite_differences():
    model, data = small_mlp(act=nn.Tanh), batch()
    params = dict(model.named_parameters())

    def gradient(shift):
        shifted = {n: p + shift.get(n, 0) for n, p in params.items()}
        loss = F.cross_entropy(functional_call(model, shifted, (data[0],)), data[1])
        return torch.autograd.grad(loss, [shifted[n] for n in NAMES])

    g = {n: t.detach() for n, t in zip(NAMES, gradient({}), strict=True)}
    eps = 1e-5
    up = gradient({n: eps * g[n] for n in NAMES})
    down = gradient({n: -eps * g[n] for n in NAMES})
    scores = sl.criteria.get("grasp").scores(model, NAMES, Context(data=data))
    for n, a, b in zip(NAMES, up, down, strict=True):
        hg = (a - b).detach() / (2 * eps)
        assert torch.allclose(scores[n], params[n].detach() * hg, atol=1e-8)


# --- SynFlow -----------------------------------------------------------------------------


def test_synflow_score_equals_its_closed_form_on_a_two_layer_network():
    # R = 1^T |W2| (|W1| 1 + |b1|) + 1^T |b2|, and ReLU is the identity on positive inputs
    model = small_mlp()
    model.input_shape = (5,)
    w1, b1, w2 = (model.get_parameter(n).detach().abs() for n in ["0.weight", "0.bias", "2.weight"])
    scores = sl.criteria.get("synflow").scores(model, NAMES, Context())
    assert torch.allclose(scores["0.weight"], w1 * w2.sum(0).reshape(-1, 1))
    assert torch.allclose(scores["2.weight"], w2 * (w1.sum(1) + b1).reshape(1, -1))


def test_synflow_masks_do_not_depend_on_the_data():
    found = []
    for data in [None, batch(seed=1), batch(seed=2)]:
        model = small_mlp()
        model.input_shape = (5,)
        sl.prune(model, "synflow", 0.9, data=data, iterations=5)
        found.append(masks.masks(model))
    for other in found[1:]:
        assert all(torch.equal(found[0][n], other[n]) for n in NAMES)


def test_synflow_needs_an_input_shape():
    with pytest.raises(ValueError, match="input_shape"):
        sl.prune(small_mlp(), "synflow", 0.5)


def test_synflow_leaves_no_layer_empty_where_global_magnitude_empties_some():
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(784,), n_classes=10)
    magnitude, synflow = copy.deepcopy(model), copy.deepcopy(model)
    sl.prune(magnitude, "magnitude", 0.999)
    sl.prune(synflow, "synflow", 0.999, iterations=20)
    assert min(int(m.sum()) for m in masks.masks(magnitude).values()) == 0  # layer collapse
    assert min(int(m.sum()) for m in masks.masks(synflow).values()) > 0
    assert sl.pruning.sparsity(synflow) == pytest.approx(0.999, abs=1e-6)


# --- FORCE -------------------------------------------------------------------------------


def test_force_in_one_step_is_snip():
    data = batch()
    force, snip = small_mlp(), small_mlp()
    sl.prune(force, "force", 0.8, data=data, iterations=1)
    sl.prune(snip, "snip", 0.8, data=data)
    for n in NAMES:
        assert torch.equal(masks.get_mask(force, n), masks.get_mask(snip, n))


def test_force_matches_a_direct_implementation_and_lets_pruned_weights_return():
    data, sparsity, steps = batch(), 0.9, 4
    model = small_mlp()
    theta = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = {n: torch.ones_like(theta[n]) for n in NAMES}
    history = []
    for s in at_init.exponential_steps(sparsity, steps):
        # gradient of the loss at the pruned network, for every weight
        masked = {
            n: (theta[n] * reference[n] if n in NAMES else theta[n]).requires_grad_() for n in theta
        }
        loss = F.cross_entropy(functional_call(model, masked, (data[0],)), data[1])
        grads = torch.autograd.grad(loss, [masked[n] for n in NAMES])
        scores = torch.cat(
            [(theta[n] * g).abs().flatten() for n, g in zip(NAMES, grads, strict=True)]
        )
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep[scores.argsort(descending=True)[: round((1 - s) * len(scores))]] = True
        sizes = [theta[n].numel() for n in NAMES]
        reference = {
            n: k.reshape(theta[n].shape).double()
            for n, k in zip(NAMES, keep.split(sizes), strict=True)
        }
        history.append(reference)
    sl.prune(model, "force", sparsity, data=data, iterations=steps)
    for n in NAMES:
        assert torch.equal(masks.get_mask(model, n), reference[n])
        # default gradient mode: the stored weights are zero where pruned
        assert torch.all(masks.dense_weight(model, n)[reference[n] == 0] == 0)
    revived = sum(int(((history[-2][n] == 0) & (history[-1][n] == 1)).sum()) for n in NAMES)
    assert revived > 0  # some weights pruned at the third step came back at the last


# --- the shuffled-mask check ---------------------------------------------------------------


def test_shuffled_masks_keep_each_layers_count_and_move_the_weights():
    model = small_mlp()
    sl.prune(model, "snip", 0.7, data=batch())
    found = masks.masks(model)
    shuffled = at_init.shuffle_masks(found, seed=3)
    for n, mask in found.items():
        assert shuffled[n].sum() == mask.sum()
        assert not torch.equal(shuffled[n], mask)
    again = at_init.shuffle_masks(found, seed=3)
    assert all(torch.equal(again[n], shuffled[n]) for n in found)


@pytest.mark.parametrize("budget", sl.registry.available("budget"))
@pytest.mark.parametrize("method", ["grasp", "synflow", "force"])
def test_at_init_criteria_hit_the_target_exactly_with_every_budget(method, budget):
    model = small_mlp()
    model.input_shape = (5,)
    options = {"iterations": 3} if method != "grasp" else {}
    if method == "grasp" and budget in ("lamp_budget", "sensitivity_budget"):
        # GraSP's score is signed (it keeps the weights whose removal shrinks the gradient
        # flow least); these budgets square scores, which would reorder them
        with pytest.raises(ValueError, match="magnitudes"):
            sl.prune(model, method, 0.6, budget=budget, data=batch(), **options)
        return
    sl.prune(model, method, 0.6, budget=budget, data=batch(), **options)
    assert sl.pruning.sparsity(model) * 56 == pytest.approx(round(0.6 * 56))


def test_rescale_fan_in_scales_each_unit_by_its_kept_fan_in():
    torch.manual_seed(0)
    layer = nn.Linear(8, 3)
    mask = torch.tensor([[1.0] * 8, [1.0, 1.0] + [0.0] * 6, [0.0] * 8])
    original = layer.weight.detach().clone()
    masks.attach(layer, "weight", mask)
    at_init.rescale_fan_in(layer)
    expected = original * mask * torch.tensor([[1.0], [2.0], [1.0]])  # sqrt(8 / 2) = 2
    assert torch.allclose(masks.weight(layer, "weight"), expected)


def test_rescale_fan_in_restores_the_variance_of_a_randomly_masked_layer():
    torch.manual_seed(0)
    layer = nn.Linear(400, 300, bias=False)
    x = torch.randn(2000, 400)
    with torch.no_grad():
        dense_var = layer(x).var()
    keep = torch.rand(300, 400, generator=torch.Generator().manual_seed(1)) < 0.1
    masks.attach(layer, "weight", keep)
    with torch.no_grad():
        assert layer(x).var() < 0.2 * dense_var  # a 90% sparse layer fades the signal
        at_init.rescale_fan_in(layer)
        assert layer(x).var() == pytest.approx(float(dense_var), rel=0.1)

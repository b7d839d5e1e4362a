"""First-order criteria against finite differences and hand-derived training trajectories."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsity_lab as sl
from sparsity_lab import masks
from sparsity_lab.criteria import first_order
from sparsity_lab.criteria.base import Context
from sparsity_lab.patterns import Channel
from sparsity_lab.scheduled import ScheduledPruning

EPS = 1e-6


def tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()


def batch(n=16, seed=0, shape=(3,), classes=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=g)


def loss_at(model, data):
    with torch.no_grad():
        return float(F.cross_entropy(model(data[0]), data[1]))


def finite_gradient(model, name, data):
    """Central differences of the loss in every entry of the weight ``name``."""
    w = model.get_parameter(name)
    grad = torch.zeros_like(w)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in w.shape]).reshape(-1, w.dim()):
        idx = tuple(idx.tolist())
        old = float(w[idx].detach())
        with torch.no_grad():
            w[idx] = old + EPS
            up = loss_at(model, data)
            w[idx] = old - EPS
            down = loss_at(model, data)
            w[idx] = old
        grad[idx] = (up - down) / (2 * EPS)
    return grad


def scores_of(name, model, data, **options):
    names = ["0.weight", "2.weight"]
    return sl.criteria.get(name, **options).scores(model, names, Context(data=data))


def test_snip_equals_the_finite_difference_of_a_gate_on_each_weight():
    model, data = tiny(), batch()
    scores = scores_of("snip", model, data)
    for n in ["0.weight", "2.weight"]:
        # d L / d c at c = 1 for w -> c * w is w * dL/dw
        expected = (finite_gradient(model, n, data) * model.get_parameter(n)).abs()
        assert torch.allclose(scores[n], expected.detach(), atol=1e-7)


def test_taylor_weight_averages_squared_first_order_terms_over_batches():
    model, first, second = tiny(), batch(seed=1), batch(seed=2)
    scores = scores_of("taylor_weight", model, [first, second])
    for n in ["0.weight", "2.weight"]:
        w = model.get_parameter(n).detach()
        terms = [(finite_gradient(model, n, b) * w).pow(2) for b in (first, second)]
        assert torch.allclose(scores[n], (terms[0] + terms[1]) / 2, atol=1e-9)


def test_taylor_weight_group_score_is_the_sum_over_the_group():
    model, data = tiny(), batch()
    element = scores_of("taylor_weight", model, data)["0.weight"]
    sl.prune(model, "taylor_weight", 0.5, pattern="channel", targets=["0.weight"], data=data)
    kept = masks.get_mask(model, "0.weight").bool().any(1)
    assert set(torch.nonzero(kept).flatten().tolist()) == set(element.sum(1).argsort()[2:].tolist())


def gated_losses(model, data, alpha):
    """Per-example losses of ``tiny`` with unit j of the first layer multiplied by alpha[j]."""
    h = torch.relu(model[0](data[0]) * alpha)
    return F.cross_entropy(model[2](h), data[1], reduction="none").detach()


def gate_derivatives(model, data):
    """d l_n / d alpha_j at alpha = 1 by central differences: shape (examples, units)."""
    out = []
    for j in range(4):
        up, down = torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
        up[j], down[j] = 1 + EPS, 1 - EPS
        out.append((gated_losses(model, data, up) - gated_losses(model, data, down)) / (2 * EPS))
    return torch.stack(out, dim=1)


def test_skeletonization_relevance_is_minus_the_gate_derivative_of_the_loss():
    model, data = tiny(), batch()
    relevance = sl.criteria.get("skeletonization").group_scores(
        model, ["0.weight"], Channel(), Context(data=data)
    )["0.weight"]
    assert torch.allclose(relevance, -gate_derivatives(model, data).mean(0), atol=1e-7)


def test_skeletonization_relevance_predicts_the_loss_of_removing_a_linear_unit():
    # with a linear readout of a loss linear in the gate, first order is exact
    model, data = tiny(), batch()

    def loss(output, target):
        return output.sum(1).mean()

    crit = sl.criteria.get("skeletonization")
    relevance = crit.group_scores(model, ["2.weight"], Channel(), Context(data=data, loss_fn=loss))
    for j in range(2):
        removed = tiny()
        with torch.no_grad():
            removed[2].weight[j] = 0
            removed[2].bias[j] = 0
        with torch.no_grad():
            expected = float(loss(removed(data[0]), None) - loss(model(data[0]), None))
        assert float(relevance["2.weight"][j]) == pytest.approx(expected, abs=1e-9)


def test_taylor_is_the_mean_absolute_per_example_gate_derivative():
    model, data = tiny(), batch()
    crit = sl.criteria.get("taylor", normalize=False)
    theta = crit.group_scores(model, ["0.weight"], Channel(), Context(data=data))["0.weight"]
    assert torch.allclose(theta, gate_derivatives(model, data).abs().mean(0), atol=1e-7)
    normalized = sl.criteria.get("taylor").group_scores(
        model, ["0.weight"], Channel(), Context(data=data)
    )["0.weight"]
    assert torch.allclose(normalized, theta / theta.norm())


def test_taylor_divides_by_the_size_of_a_feature_map():
    torch.manual_seed(0)
    conv, head = nn.Conv2d(1, 3, 3, padding=1).double(), nn.Linear(3 * 25, 2).double()
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), head)
    data = batch(6, shape=(1, 5, 5))

    def losses(alpha):
        h = torch.relu(conv(data[0]) * alpha.reshape(1, 3, 1, 1))
        return F.cross_entropy(head(h.flatten(1)), data[1], reduction="none").detach()

    expected = []
    for j in range(3):
        up, down = torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        up[j], down[j] = 1 + EPS, 1 - EPS
        expected.append(((losses(up) - losses(down)) / (2 * EPS)).abs().mean() / 25)
    crit = sl.criteria.get("taylor", normalize=False)
    theta = crit.group_scores(model, ["0.weight"], Channel(), Context(data=data))["0.weight"]
    assert torch.allclose(theta, torch.stack(expected), atol=1e-8)


# --- scores accumulated during training -----------------------------------------------------


def linear_problem(steps=5, lr=0.05):
    """A linear least-squares model trained by full-batch SGD; the trajectory by hand."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.1
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False).double()
    w = model.weight.detach().clone()
    trajectory, grads = [w.clone()], []
    for _ in range(steps):
        grad = 2 / len(x) * (x @ w.T - y).T @ x  # d mean((x w - y)^2) / dw
        grads.append(grad)
        w = w - lr * grad
        trajectory.append(w.clone())
    return model, [(x, y)], trajectory, grads


def train(model, loader, tracker, steps=5, lr=0.05):
    sl.train.fit(
        model,
        loader,
        epochs=steps,
        lr=lr,
        momentum=0.0,
        loss_fn=nn.MSELoss(),
        callbacks=[tracker],
        progress=False,
    )


def test_movement_scores_accumulate_minus_gradient_times_weight():
    model, loader, trajectory, grads = linear_problem()
    tracker = first_order.MovementScores()
    train(model, loader, tracker)
    expected = -sum(g * w for g, w in zip(grads, trajectory, strict=False))
    assert torch.allclose(tracker.scores["weight"], expected)
    assert torch.allclose(model.weight.detach(), trajectory[-1])


def test_karnin_sensitivity_equals_his_formula_for_plain_sgd():
    lr = 0.05
    model, loader, trajectory, _ = linear_problem(lr=lr)
    tracker = first_order.KarninScores()
    train(model, loader, tracker, lr=lr)
    steps = [b - a for a, b in zip(trajectory, trajectory[1:], strict=False)]
    w_i, w_f = trajectory[0], trajectory[-1]
    expected = sum(d.pow(2) for d in steps) / lr * w_f / (w_f - w_i)
    scores = sl.criteria.get("karnin").scores(model, ["weight"], Context(tracker=tracker))
    assert torch.allclose(scores["weight"], expected)


def test_a_tracker_loaded_from_its_state_gives_the_same_scores():
    lr = 0.05
    model, loader, *_ = linear_problem(lr=lr)
    tracker = first_order.KarninScores()
    train(model, loader, tracker, lr=lr)
    state = tracker.state_dict()
    assert set(state) == {"scores", "initial"}  # Karnin's formula needs the initial weights
    loaded = first_order.KarninScores()
    loaded.load_state_dict(state)
    state["scores"]["weight"].zero_()  # the loaded tracker holds copies, not the originals
    karnin = sl.criteria.get("karnin")
    expected = karnin.scores(model, ["weight"], Context(tracker=tracker))["weight"]
    found = karnin.scores(model, ["weight"], Context(tracker=loaded))["weight"]
    assert torch.equal(found, expected)
    assert loaded.names == ["weight"]
    with pytest.raises(ValueError, match="lacks"):
        first_order.KarninScores().load_state_dict({"scores": state["scores"]})


def test_soft_movement_scores_follow_their_update_rule():
    lr, lam = 0.05, 0.3
    model, loader, trajectory, grads = linear_problem(lr=lr)
    tracker = first_order.SoftMovementScores(lam=lam)
    train(model, loader, tracker, lr=lr)
    s = torch.zeros(1, 3, dtype=torch.float64)
    for g, w in zip(grads, trajectory, strict=False):
        s = s - lr * (g * w + lam * torch.sigmoid(s) * (1 - torch.sigmoid(s)))
    assert torch.allclose(tracker.scores["weight"], s)


def test_soft_movement_with_a_threshold_keeps_the_scores_above_it():
    model, loader, *_ = linear_problem()
    tracker = first_order.SoftMovementScores()
    train(model, loader, tracker)
    threshold = float(tracker.scores["weight"].median())
    sl.prune(model, "soft_movement", None, tracker=tracker, threshold=threshold)
    assert torch.equal(masks.get_mask(model, "weight").bool(), tracker.scores["weight"] > threshold)
    with pytest.raises(ValueError, match="sparsity=None"):
        sl.prune(model, "soft_movement", 0.5, tracker=tracker, threshold=0.0)


def test_tracked_criteria_need_their_tracker():
    for name in ["movement", "karnin", "soft_movement"]:
        with pytest.raises(ValueError, match="tracker="):
            sl.prune(tiny(), name, 0.5)
    with pytest.raises(ValueError, match="KarninScores"):
        sl.prune(tiny(), "karnin", 0.5, tracker=first_order.MovementScores())


def test_movement_pruning_during_training_reaches_the_target():
    bundle = sl.data.load("digits", seed=0)
    train_loader, _, _ = bundle.loaders(batch_size=128, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    tracker = first_order.MovementScores()
    pruner = ScheduledPruning("movement", 0.8, frequency=5, tracker=tracker)
    sl.train.fit(model, train_loader, epochs=3, callbacks=[tracker, pruner], progress=False)
    assert sl.pruning.sparsity(model) == pytest.approx(0.8, abs=1e-3)


BUDGETS = sl.registry.available("budget")


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", ["snip", "taylor_weight"])
def test_weight_criteria_hit_the_target_exactly_with_every_budget(method, budget):
    model = tiny()
    sl.prune(model, method, 0.6, budget=budget, data=batch())
    assert sl.pruning.sparsity(model) * 20 == pytest.approx(12)


def two_hidden(seed=0):
    """Two hidden layers with 4 inputs each, so every unit is a group of 4 weights."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)
    ).double()


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", ["skeletonization", "taylor"])
def test_unit_criteria_remove_whole_units_to_the_exact_target_with_every_budget(method, budget):
    model = two_hidden()
    hidden = ["0.weight", "2.weight"]
    if method == "skeletonization" and budget in ("lamp_budget", "sensitivity_budget"):
        # relevance is signed (removing a unit may lower the loss); these budgets square it
        with pytest.raises(ValueError, match="magnitudes"):
            sl.prune(
                model, method, 0.5, pattern="channel", budget=budget, targets=hidden,
                data=batch(shape=(4,)),
            )  # fmt: skip
        return
    sl.prune(
        model,
        method,
        0.5,
        pattern="channel",
        budget=budget,
        targets=hidden,
        data=batch(shape=(4,)),
    )
    for n in hidden:
        rows = masks.get_mask(model, n).sum(1)
        assert set(rows.tolist()) <= {0.0, 4.0}  # each unit whole: all its weights or none
    # 8 units of 4 weights: half the 32 weights is exactly 4 units
    removed = sum(int((masks.get_mask(model, n).sum(1) == 0).sum()) for n in hidden)
    assert removed == 4

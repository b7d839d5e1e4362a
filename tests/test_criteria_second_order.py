"""Second-order criteria against brute force: constrained quadratic problems solved directly,
dense inverses, and the formulas of each paper evaluated by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp
from torch import nn

import sparsity_lab as sl
from sparsity_lab import curvature, masks, models
from sparsity_lab.criteria import second_order as so

NAMES = ["0.weight", "2.weight"]


def tiny_data(n: int = 32, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


def trained_mlp():
    """A tiny MLP near a minimum, where the quadratic picture of OBD/OBS applies."""
    model, (x, y) = tiny_mlp(), tiny_data()
    opt = torch.optim.LBFGS(model.parameters(), max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) + 1e-3 * sum(p.pow(2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model, (x, y)


def flat_weights(model, names=NAMES):
    return torch.cat([masks.weight(model, n).detach().flatten() for n in names])


def loop_gradients(model, x, y):
    params = [model.get_parameter(n) for n in NAMES]
    rows = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def dampened(h, damp):
    """``H + damp * mean(|diag H|) I``: the dampening the criteria document."""
    return h + damp * h.diagonal().abs().mean() * torch.eye(len(h), dtype=h.dtype)


def kkt(h, w, pruned):
    """Brute force: min 1/2 dw^T H dw subject to dw_q = -w_q for q in ``pruned``,
    solved as one linear system of the Lagrangian's stationarity conditions."""
    idx = pruned.nonzero().flatten()
    p, k = len(w), len(idx)
    e = torch.zeros(p, k, dtype=w.dtype)
    e[idx, torch.arange(k)] = 1
    system = torch.zeros(p + k, p + k, dtype=w.dtype)
    system[:p, :p], system[:p, p:], system[p:, :p] = h, e, e.T
    rhs = torch.cat([torch.zeros(p, dtype=w.dtype), -w[idx]])
    dw = torch.linalg.solve(system, rhs)[:p]
    return dw, 0.5 * dw @ h @ dw


# --- OBS ---------------------------------------------------------------------------------------


def test_obs_saliency_and_update_equal_the_constrained_quadratic_for_each_weight():
    model, data = trained_mlp()
    h = dampened(curvature.exact_hessian(model, NAMES, data), 1e-4)
    hinv = torch.linalg.inv(h)
    w = flat_weights(model)
    saliency = so.obs_saliency(w, hinv.diagonal())
    for q in range(len(w)):
        pruned = torch.zeros(len(w), dtype=torch.bool)
        pruned[q] = True
        dw, loss = kkt(h, w, pruned)
        assert abs(saliency[q] - loss) <= 1e-6 * max(1.0, abs(loss))
        single = -(w[q] / hinv[q, q]) * hinv[:, q]  # the paper's formula
        torch.testing.assert_close(single, dw, rtol=0, atol=1e-6)
        torch.testing.assert_close(so.obs_update(w, hinv, pruned), dw, rtol=0, atol=1e-6)


@pytest.mark.parametrize("damp_mode", ["relative", "absolute"])
def test_obs_prunes_the_lowest_saliencies_with_the_joint_update_through_prune(damp_mode):
    model, data = trained_mlp()
    h = curvature.exact_hessian(model, NAMES, data)
    if damp_mode == "relative":
        h = dampened(h, 1e-4)
    else:  # the published form: lambda itself, whatever the Hessian's scale
        h = h + 1e-4 * torch.eye(len(h), dtype=h.dtype)
    w = flat_weights(model)
    brute = torch.stack(
        [kkt(h, w, torch.arange(len(w)) == q)[1] for q in range(len(w))]
    )  # each weight's saliency, by brute force
    pruned = torch.zeros(len(w), dtype=torch.bool)
    pruned[torch.argsort(brute, stable=True)[:12]] = True
    dw, _ = kkt(h, w, pruned)
    out = sl.prune(copy.deepcopy(model), "obs", 12 / 32, data=data, damp_mode=damp_mode)
    assert torch.equal(flat_weights(out) == 0, pruned)
    torch.testing.assert_close(
        flat_weights(out), torch.where(pruned, 0.0, w + dw), atol=1e-6, rtol=0
    )
    # mask only: the same mask, the surviving weights untouched, and a larger quadratic cost
    only_mask = sl.prune(
        copy.deepcopy(model), "obs", 12 / 32, data=data, update=False, damp_mode=damp_mode
    )
    torch.testing.assert_close(flat_weights(only_mask), torch.where(pruned, 0.0, w))
    no_move = torch.where(pruned, -w, 0.0)
    assert 0.5 * dw @ h @ dw < 0.5 * no_move @ h @ no_move


def test_obs_keeps_earlier_zeros_and_compensates_across_a_dense_layer():
    model, data = trained_mlp()
    sl.prune(model, "magnitude", 0.25)
    before = flat_weights(model) == 0
    sl.prune(model, "obs", 0.5, data=data, dense=["2.weight"])
    after = flat_weights(model)
    assert torch.all(after[before] == 0)
    assert int((after[:20] == 0).sum()) == 16  # 0.5 of 32 weights, all in layer 0


# --- OBD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", ["global", "uniform"])
def test_obd_with_identity_hessian_is_magnitude_pruning(budget):
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(20,), n_classes=4, hidden=(16, 8))
    a = sl.prune(copy.deepcopy(model), "obd", 0.7, hessian="identity", budget=budget)
    b = sl.prune(copy.deepcopy(model), "magnitude", 0.7, budget=budget)
    for n, mask in masks.masks(a).items():
        assert torch.equal(mask, masks.get_mask(b, n))


def test_obd_scores_are_half_the_hessian_diagonal_times_squared_weights():
    model, data = trained_mlp()
    h = curvature.exact_hessian(model, NAMES, data)
    w = flat_weights(model)
    context = sl.criteria.Context(data=data)
    scores = sl.criteria.get("obd", hessian="exact").scores(model, NAMES, context)
    torch.testing.assert_close(curvature.flatten(scores), 0.5 * h.diagonal() * w**2)
    # Hutchinson with many probes ranks the weights like the exact diagonal
    est = sl.criteria.get("obd", hessian="hutchinson", n_probes=512).scores(model, NAMES, context)
    est = curvature.flatten(est)
    exact = curvature.flatten(scores)
    assert torch.corrcoef(torch.stack([est, exact]))[0, 1] > 0.99


def test_obd_default_uses_the_gauss_newton_diagonal_and_needs_cross_entropy():
    model, data = trained_mlp()
    context = sl.criteria.Context(data=data)
    scores = sl.criteria.get("obd").scores(model, NAMES, context)
    diag = curvature.flatten(curvature.gauss_newton_diagonal(model, NAMES, data))
    torch.testing.assert_close(curvature.flatten(scores), 0.5 * diag * flat_weights(model) ** 2)
    with pytest.raises(ValueError, match="hessian='hutchinson'"):
        sl.prune(model, "obd", 0.5, data=data, loss_fn=nn.MSELoss())


def test_fisher_diag_scores_use_the_mean_squared_per_example_gradient():
    model, (x, y) = trained_mlp()
    g = loop_gradients(model, x[:20], y[:20])
    scores = sl.criteria.get("fisher_diag", n_samples=20).scores(
        model, NAMES, sl.criteria.Context(data=(x, y))
    )
    expected = 0.5 * g.pow(2).mean(0) * flat_weights(model) ** 2
    torch.testing.assert_close(curvature.flatten(scores), expected)


# --- WoodFisher ----------------------------------------------------------------------------------


@pytest.mark.parametrize("damp_mode, damp", [("relative", 1e-2), ("absolute", 1e-5)])
def test_woodfisher_blocks_are_the_direct_inverse_of_the_dampened_fisher(damp_mode, damp):
    model, (x, y) = trained_mlp()
    g = loop_gradients(model, x, y)
    crit = sl.criteria.get("woodfisher", n_samples=32, block_size=8, damp=damp, damp_mode=damp_mode)
    context = sl.criteria.Context(data=(x, y))
    scores = crit.scores(model, NAMES, context)
    lam = damp * g.pow(2).mean() if damp_mode == "relative" else damp
    fisher = lam * torch.eye(32, dtype=g.dtype) + g.T @ g / len(g)
    inverse_diag = []
    for name, offset, size in [("0.weight", 0, 20), ("2.weight", 20, 12)]:
        blocks = context.state["blocks"][name]  # what the weight update will use
        for b in range(len(blocks)):
            part = slice(offset + 8 * b, offset + min(8 * b + 8, size))
            n = part.stop - part.start
            direct = torch.linalg.inv(fisher[part, part])
            torch.testing.assert_close(blocks[b, :n, :n], direct)
            inverse_diag.append(direct.diagonal())
    expected = flat_weights(model) ** 2 / (2 * torch.cat(inverse_diag))
    torch.testing.assert_close(curvature.flatten(scores), expected)


def test_woodfisher_multi_weight_update_matches_the_closed_form():
    model, (x, y) = trained_mlp()
    g = loop_gradients(model, x, y)
    lam = 1e-2 * g.pow(2).mean()
    fisher = lam * torch.eye(32, dtype=g.dtype) + g.T @ g / len(g)
    w = flat_weights(model)
    out = sl.prune(
        copy.deepcopy(model), "woodfisher", 0.5, data=(x, y), n_samples=32, block_size=10, damp=1e-2
    )
    new = flat_weights(out)
    pruned = new == 0
    assert int(pruned.sum()) == 16
    # per block: the kept weights R move by F_RR^-1 F_RQ w_Q, the minimiser of the
    # quadratic with the pruned weights Q fixed at zero (no inverse of F needed)
    expected = torch.zeros_like(w)
    for lo, hi in [(0, 10), (10, 20), (20, 30), (30, 32)]:
        q = torch.arange(lo, hi)[pruned[lo:hi]]
        r = torch.arange(lo, hi)[~pruned[lo:hi]]
        if len(r):
            move = torch.linalg.solve(fisher[r][:, r], fisher[r][:, q] @ w[q])
            expected[r] = w[r] + move
    torch.testing.assert_close(new, expected, atol=1e-8, rtol=1e-8)


def test_woodfisher_update_false_keeps_surviving_weights_and_steps_reach_the_target():
    model, data = trained_mlp()
    w = flat_weights(model)
    out = sl.prune(copy.deepcopy(model), "woodfisher", 0.5, data=data, update=False)
    new = flat_weights(out)
    torch.testing.assert_close(new, torch.where(new == 0, 0.0, w))
    stepped = sl.prune(copy.deepcopy(model), "woodfisher", 0.75, data=data, steps=3)
    assert sl.sparsity(stepped) == 0.75


def test_updates_land_in_the_effective_weights_also_with_dense_gradients():
    model, data = trained_mlp()
    w = flat_weights(model)
    plain = sl.prune(copy.deepcopy(model), "woodfisher", 0.5, data=data, block_size=8)
    straight = sl.prune(
        copy.deepcopy(model), "woodfisher", 0.5, data=data, block_size=8, dense_grad=True
    )
    torch.testing.assert_close(flat_weights(straight), flat_weights(plain))
    # the stored dense weights keep the old values of pruned entries, for regrowth
    stored = torch.cat([masks.dense_weight(straight, n).detach().flatten() for n in NAMES])
    pruned = flat_weights(plain) == 0
    torch.testing.assert_close(stored[pruned], w[pruned])


# --- M-FAC ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("damp_mode, damp", [("relative", 1e-2), ("absolute", 1e-5)])
def test_mfac_scores_and_update_equal_those_of_the_dense_inverse(damp_mode, damp):
    model, (x, y) = trained_mlp()
    g = loop_gradients(model, x[:8], y[:8])  # m = 8 gradients, fewer than the 32 weights
    lam = damp * g.pow(2).mean() if damp_mode == "relative" else damp
    inverse = torch.linalg.inv(lam * torch.eye(32, dtype=g.dtype) + g.T @ g / len(g))
    w = flat_weights(model)
    options = dict(n_samples=8, damp=damp, damp_mode=damp_mode)
    scores = sl.criteria.get("mfac", **options).scores(
        model, NAMES, sl.criteria.Context(data=(x, y))
    )
    saliency = w**2 / (2 * inverse.diagonal())
    torch.testing.assert_close(curvature.flatten(scores), saliency)
    out = sl.prune(copy.deepcopy(model), "mfac", 0.25, data=(x, y), **options)
    pruned = torch.zeros(32, dtype=torch.bool)
    pruned[torch.argsort(saliency, stable=True)[:8]] = True
    step = torch.where(pruned, w / inverse.diagonal(), torch.zeros_like(w))
    expected = torch.where(pruned, 0.0, w - inverse @ step)
    torch.testing.assert_close(flat_weights(out), expected)


def test_mfac_update_false_prunes_the_same_weights_and_leaves_the_others_unchanged():
    model, (x, y) = trained_mlp()
    g = loop_gradients(model, x[:8], y[:8])
    lam = 1e-2 * g.pow(2).mean()
    inverse = torch.linalg.inv(lam * torch.eye(32, dtype=g.dtype) + g.T @ g / len(g))
    w = flat_weights(model)
    # the 8 lowest saliencies w^2 / (2 [F^-1]_qq) of the dense inverse go, with or without update
    pruned = torch.zeros(32, dtype=torch.bool)
    pruned[torch.argsort(w**2 / (2 * inverse.diagonal()), stable=True)[:8]] = True
    mask_only = flat_weights(
        sl.prune(copy.deepcopy(model), "mfac", 0.25, data=(x, y), n_samples=8, update=False)
    )
    assert torch.equal(mask_only == 0, pruned)
    # mask only: every surviving weight keeps its exact trained value
    assert torch.equal(mask_only[~pruned], w[~pruned])
    updated = flat_weights(
        sl.prune(copy.deepcopy(model), "mfac", 0.25, data=(x, y), n_samples=8, update=True)
    )
    assert torch.equal(updated == 0, pruned)
    # with the update the survivors move by -F^-1 sum_q e_q w_q / [F^-1]_qq, and do move
    move = -(inverse @ torch.where(pruned, w / inverse.diagonal(), torch.zeros_like(w)))
    torch.testing.assert_close(updated[~pruned], w[~pruned] + move[~pruned])
    assert (updated[~pruned] - w[~pruned]).abs().max() > 1e-3


# --- K-FAC and EigenDamage -----------------------------------------------------------------------


@pytest.mark.parametrize("damp_mode", ["relative", "absolute"])
def test_kfac_scores_use_the_inverse_of_the_kronecker_product(damp_mode):
    model, data = trained_mlp()
    context = sl.criteria.Context(data=data)
    factors = curvature.kronecker_factors(model, NAMES, data)
    obs = sl.criteria.get("kfac", damp=1e-2, damp_mode=damp_mode).scores(model, NAMES, context)
    obd = sl.criteria.get("kfac", mode="obd").scores(model, NAMES, context)
    for n in NAMES:
        a, g = factors[n]

        def damp(m, root=1e-1):  # sqrt(damp), times each factor's mean diagonal if relative
            scale = m.diagonal().mean() if damp_mode == "relative" else 1.0
            return m + root * scale * torch.eye(len(m), dtype=m.dtype)

        fisher_inv = torch.linalg.inv(torch.kron(damp(g), damp(a)))  # dense, row-major vec
        w = masks.weight(model, n).detach().flatten()
        torch.testing.assert_close(obs[n].flatten(), w**2 / (2 * fisher_inv.diagonal()))
        fisher = torch.kron(g, a)
        torch.testing.assert_close(obd[n].flatten(), 0.5 * fisher.diagonal() * w**2)


def test_kfac_update_is_the_summed_obs_update_through_the_kronecker_inverse():
    model, data = trained_mlp()
    factors = curvature.kronecker_factors(model, NAMES, data)
    before = {n: masks.weight(model, n).detach().clone() for n in NAMES}
    pruned_model = sl.prune(copy.deepcopy(model), "kfac", 0.5, data=data, budget="uniform",
                            damp=1e-2)  # fmt: skip
    for n in NAMES:
        a, g = factors[n]

        def damp(m, root=1e-1):
            return m + root * m.diagonal().mean() * torch.eye(len(m), dtype=m.dtype)

        fisher_inv = torch.linalg.inv(torch.kron(damp(g), damp(a)))  # dense, row-major vec
        w = before[n].flatten()
        keep = masks.get_mask(pruned_model, n).bool().flatten()
        step = torch.where(~keep, w / fisher_inv.diagonal(), torch.zeros_like(w))
        expected = torch.where(keep, w - fisher_inv @ step, torch.zeros_like(w))
        got = masks.weight(pruned_model, n).detach().flatten()
        torch.testing.assert_close(got, expected)
    mask_only = sl.prune(copy.deepcopy(model), "kfac", 0.5, data=data, budget="uniform",
                         damp=1e-2, update=False)  # fmt: skip
    for n in NAMES:
        keep = masks.get_mask(mask_only, n).bool()
        torch.testing.assert_close(masks.weight(mask_only, n), before[n] * keep)


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 25, 4)
    ).double()


def cnn_data():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(16, 1, 5, 5, generator=gen, dtype=torch.float64), torch.randint(0, 4, (16,))


def test_eigendamage_rewrite_keeps_the_function_and_diagonalises_the_kronecker_fisher():
    model, data = small_cnn(), cnn_data()
    names = ["0.weight", "3.weight"]
    factors = curvature.kronecker_factors(model, names, data)
    crit = sl.criteria.get("eigendamage")
    rewritten = copy.deepcopy(model)
    sl.prune(rewritten, crit, 0.0, data=data)
    torch.testing.assert_close(rewritten(data[0]), model(data[0]))
    assert isinstance(rewritten[0], so.EigenbasisConv2d)
    for n in names:
        a, g = factors[n]
        module = rewritten.get_submodule(n.rpartition(".")[0])
        q = torch.kron(module.eig_out.double(), module.eig_in.double())  # row-major vec
        rotated = q.T @ torch.kron(g, a) @ q
        off = rotated - torch.diag(rotated.diagonal())
        assert off.abs().max() < 1e-10 * rotated.abs().max()


def test_eigendamage_rewrites_conv1d_layers_with_stride_and_padding_too():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)
    ).double()
    x = torch.randn(10, 2, 8, dtype=torch.float64)
    data = (x, torch.randint(0, 3, (10,)))
    rewritten = sl.prune(copy.deepcopy(model), "eigendamage", 0.0, data=data)
    assert isinstance(rewritten[0], so.EigenbasisConv1d)
    torch.testing.assert_close(rewritten(x), model(x))


def test_eigendamage_prunes_the_lowest_eigenbasis_saliencies():
    model, data = small_cnn(), cnn_data()
    pruned = sl.prune(copy.deepcopy(model), "eigendamage", 0.6, data=data, budget="uniform")
    assert sl.sparsity(pruned) == round(0.6 * 327) / 327  # 27 + 300 weights
    factors = curvature.kronecker_factors(model, ["3.weight"], data)
    a, g = factors["3.weight"]
    module = pruned[3]
    eig_g = (module.eig_out.T @ g @ module.eig_out).diagonal().clamp(min=0)
    eig_a = (module.eig_in.T @ a @ module.eig_in).diagonal().clamp(min=0)
    fisher = torch.outer(eig_g, eig_a)
    core = module.eig_out.T @ model[3].weight.detach() @ module.eig_in  # the dense W*
    saliency = (0.5 * fisher * core**2).flatten()
    kept = masks.get_mask(pruned, "3.weight").flatten().bool()
    assert saliency[~kept].max() <= saliency[kept].min() + 1e-12
    with pytest.raises(ValueError, match="apply it once"):
        sl.prune(pruned, "eigendamage", 0.7, data=data)


# --- every criterion through sl.prune ------------------------------------------------------------


@pytest.mark.parametrize(
    "method", ["obd", "fisher_diag", "woodfisher", "kfac", "mfac", "eigendamage"]
)
def test_second_order_criteria_prune_a_cnn_exactly(method):
    model = models.build("lenet5", input_shape=(1, 8, 8), n_classes=4)
    gen = torch.Generator().manual_seed(0)
    data = (torch.randn(24, 1, 8, 8, generator=gen), torch.randint(0, 4, (24,), generator=gen))
    sl.prune(model, method, 0.8, data=data)
    total = sum(masks.weight(model, n).numel() for n in sl.pruning.default_targets(model))
    assert sl.sparsity(model) == round(0.8 * total) / total
    assert torch.isfinite(model(data[0])).all()


def test_second_order_criteria_need_data_and_valid_options():
    model = tiny_mlp()
    with pytest.raises(ValueError, match="needs data"):
        sl.prune(model, "woodfisher", 0.5)
    with pytest.raises(ValueError, match="hessian must be one of"):
        sl.criteria.get("obd", hessian="fisher")
    with pytest.raises(ValueError, match="mode must be one of"):
        sl.criteria.get("kfac", mode="eig")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sl.criteria.get("mfac", steps=0)


@pytest.mark.parametrize("first", [0.25, 0.5])
def test_obs_after_earlier_pruning_scores_the_constrained_problem(first):
    """From the second step on, the pruned weights are held at zero: the saliency of q is
    the cost of also removing q with those constraints (brute force), which the Hessian of
    the surviving weights gives; the full Hessian's inverse does not."""
    model, data = trained_mlp()
    sl.prune(model, "magnitude", first)
    before = flat_weights(model) == 0
    alive = ~before
    h = curvature.exact_hessian(model, NAMES, data)
    lam = 1e-4 * h.diagonal()[alive].abs().mean()
    h = h + lam * torch.eye(len(h), dtype=h.dtype)
    w = flat_weights(model)
    context = sl.criteria.Context(data=data)
    scores = curvature.flatten(sl.criteria.get("obs", damp=1e-4).scores(model, NAMES, context))
    for q in alive.nonzero().flatten().tolist():
        pruned = before.clone()
        pruned[q] = True
        _, loss = kkt(h, w, pruned)  # w is zero on `before`: only q moves the cost
        assert abs(scores[q] - loss) <= 1e-6 * max(1.0, abs(float(loss))), q

"""Variational methods against independent computations: numerical KL divergences, scipy's
truncated normal, log-normal, Gamma and half-Cauchy distributions, Monte Carlo moments of
the local reparameterisation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from scipy import integrate, stats
from torch import nn

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import registry
from sparsity_lab.regularizers.variational import (
    GroupHorseshoeGate,
    LogNormalGate,
    kl_log_uniform,
    kl_lognormal_gamma,
    kl_lognormal_inv_gamma,
)


def exact_kl_log_uniform(log_alpha: float) -> float:
    """KL(N(theta, alpha theta^2) || log-uniform), the constant fixed so that it vanishes as
    alpha grows: -KL = 0.5 log alpha - E log|1 + sqrt(alpha) z| + E log|z|, z ~ N(0, 1)."""
    r = math.sqrt(math.exp(log_alpha))
    f = lambda z: math.log(abs(1 + r * z)) * stats.norm.pdf(z)  # noqa: E731
    pole = -1 / r
    e_log = sum(
        integrate.quad(f, lo, hi, limit=400)[0]
        for lo, hi in [(-np.inf, pole), (pole, 0), (0, np.inf)]
    )
    e_log_z = -(np.euler_gamma + math.log(2)) / 2
    return -(0.5 * log_alpha - e_log + e_log_z)


@pytest.mark.parametrize("log_alpha", [-4.0, -2.0, 0.0, 1.0, 3.0, 6.0])
def test_vd_kl_matches_molchanovs_approximation_at_reference_points(log_alpha):
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    alpha = math.exp(log_alpha)
    formula = -(k1 / (1 + math.exp(-(k2 + k3 * log_alpha))) - 0.5 * math.log1p(1 / alpha) - k1)
    ours = float(kl_log_uniform(torch.tensor(log_alpha)))
    assert ours == pytest.approx(formula, abs=1e-5)
    # and the approximation is close to the divergence itself (Molchanov et al.: < 0.01)
    assert ours == pytest.approx(exact_kl_log_uniform(log_alpha), abs=0.012)


def test_vd_prunes_log_alpha_above_3_and_keeps_the_function():
    m = mlp()
    reg = registry.get("variational_dropout")()
    reg.prepare(m)
    theta = reg.weight("0.weight").detach()
    target = torch.where(torch.rand(theta.shape, generator=torch.Generator().manual_seed(0)) < 0.3,
                         4.0, 1.0)  # fmt: skip
    with torch.no_grad():
        reg.params["0.weight"].log_sigma2.copy_(target + torch.log(theta**2 + 1e-8))
    assert torch.allclose(reg.log_alpha("0.weight"), target, atol=1e-4)
    x = torch.randn(5, 12)
    m.eval()
    with torch.no_grad():
        before = m(x)
        manual = m[2](F.relu(F.linear(x, theta * (target < 3), m[0].bias)))
    assert torch.allclose(before, manual, atol=1e-6)  # eval mode already drops log alpha >= 3
    reg.finalize(m)
    assert torch.equal(sl.masks.get_mask(m, "0.weight").bool(), target < 3)
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-6)


def test_vd_local_reparameterisation_has_the_right_mean_and_variance():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(6, 3))
    reg = registry.get("variational_dropout")(log_alpha_init=-1.0)
    reg.prepare(layer)
    theta = reg.weight("0.weight").detach()
    sigma2 = reg.params["0.weight"].log_sigma2.detach().exp()
    x = torch.randn(1, 6).expand(20000, 6)
    layer.train()
    with torch.no_grad():
        out = layer(x)
    mean = F.linear(x[:1], theta, layer[0].bias)
    var = F.linear(x[:1] ** 2, sigma2)
    assert torch.allclose(out.mean(0), mean[0], atol=4 * float(var.max().sqrt()) / 100)
    assert torch.allclose(out.var(0), var[0], rtol=0.05)


# --- structured Bayesian pruning ----------------------------------------------------------


PARAMS = [(0.0, -2.0), (-1.0, 0.0), (-5.0, 1.0), (-19.0, 2.5), (-10.0, -4.0)]


def gate():
    g = LogNormalGate(len(PARAMS), -20.0, 0.0, 1.0, -2.0)
    with torch.no_grad():
        g.mu.copy_(torch.tensor([p[0] for p in PARAMS]))
        g.log_sigma.copy_(torch.tensor([p[1] for p in PARAMS]))
    return g


def truncated(mu, log_sigma):
    s = math.exp(log_sigma)
    return stats.truncnorm((-20 - mu) / s, (0 - mu) / s, loc=mu, scale=s)


def test_sbp_kl_snr_and_mean_match_scipy():
    g = gate()
    kl, snr, mean = g.kl().detach(), g.snr().detach(), g.mean().detach()
    for i, (mu, log_sigma) in enumerate(PARAMS):
        tn = truncated(mu, log_sigma)
        assert float(kl[i]) == pytest.approx(math.log(20) - tn.entropy(), rel=1e-4, abs=1e-5)
        # where the density lives: quad misses a narrow peak inside a wide interval
        sd = math.exp(log_sigma)
        lo, hi = max(-20.0, mu - 12 * sd), min(0.0, mu + 12 * sd)
        m1 = integrate.quad(lambda x: math.exp(x) * tn.pdf(x), lo, hi, limit=400)[0]  # noqa: B023
        var = integrate.quad(lambda x: (math.exp(x) - m1) ** 2 * tn.pdf(x), lo, hi, limit=400)[0]  # noqa: B023
        assert float(mean[i]) == pytest.approx(m1, rel=1e-4)
        assert float(snr[i]) == pytest.approx(m1 / math.sqrt(var), rel=1e-3)


def test_sbp_samples_follow_the_truncated_log_normal():
    torch.manual_seed(0)
    g = gate()
    with torch.no_grad():
        theta = g.sample(200_000)
    assert (theta > 0).all() and (theta <= 1).all()  # exp of [-20, 0]
    assert torch.allclose(theta.mean(0), g.mean().detach(), rtol=0.02, atol=1e-4)


def test_sbp_prunes_units_with_snr_below_one_and_keeps_the_function():
    m = mlp()
    reg = registry.get("structured_bayesian")()
    reg.prepare(m)
    g = reg.gates["0.weight"]
    with torch.no_grad():
        g.mu.copy_(torch.linspace(-15, 0, 16))
        g.log_sigma.copy_(torch.linspace(2, -3, 16))
    snr = g.snr().detach()
    assert (snr < 1).any() and (snr >= 1).any()
    x = torch.randn(5, 12)
    m.eval()
    with torch.no_grad():
        before = m(x)
    reg.finalize(m)
    rows = sl.masks.get_mask(m, "0.weight")
    assert torch.equal(rows.bool().all(1), snr >= 1) and torch.equal(rows.bool().any(1), snr >= 1)
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-5)


# --- Bayesian compression -------------------------------------------------------------------


def test_bc_jeffreys_kl_by_hand_mask_and_function():
    m = mlp()
    reg = registry.get("bayesian_compression")(prior="jeffreys")
    reg.prepare(m)
    g = reg.gates["0.weight"]
    with torch.no_grad():
        g.mu_z.copy_(torch.linspace(0.05, 1.0, 16))
        g.log_sigma2_z.copy_(torch.full((16,), -1.0))
        g.log_sigma2_w.uniform_(-6, -2)
    log_alpha = -1.0 - torch.log(torch.linspace(0.05, 1.0, 16) ** 2)
    assert torch.allclose(g.log_alpha().detach(), log_alpha, atol=1e-5)
    theta = reg.weight("0.weight").detach()
    s2 = g.log_sigma2_w.detach()
    k1, k2, k3 = 0.63576, 1.87320, 1.48695
    kl_z = -(
        k1 * torch.sigmoid(k2 + k3 * log_alpha) - 0.5 * torch.log1p(torch.exp(-log_alpha)) - k1
    )
    kl_w = 0.5 * (-s2 + s2.exp() + theta**2 - 1)
    assert float(reg.kl().detach()) == pytest.approx(float(kl_z.sum() + kl_w.sum()), rel=1e-5)
    x = torch.randn(5, 12)
    m.eval()
    alive = log_alpha < 3
    with torch.no_grad():
        before = m(x)
        hidden = F.linear(x, theta, m[0].bias) * (torch.linspace(0.05, 1.0, 16) * alive)
        assert torch.allclose(before, m[2](F.relu(hidden)), atol=1e-5)
    reg.finalize(m)
    assert torch.equal(sl.masks.get_mask(m, "0.weight").bool().any(1), alive)
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-5)


# --- Bayesian compression, group horseshoe ---------------------------------------------------


def lognormal_kl_by_quadrature(mu, log_sigma2, prior):
    """KL(LogNormal(mu, sigma^2) || prior) = -H(q) - E_q[log prior], with scipy's entropy and
    E_q[log prior] integrated over t = log x ~ N(mu, sigma^2)."""
    sd = math.exp(0.5 * log_sigma2)
    q = stats.lognorm(s=sd, scale=math.exp(mu))
    cross = integrate.quad(
        lambda t: stats.norm.pdf(t, mu, sd) * prior.logpdf(math.exp(t)),
        mu - 12 * sd,
        mu + 12 * sd,
        limit=400,
    )[0]
    return -q.entropy() - cross


KL_CASES = [
    (0.0, -6.0, 0.5, 1.0),
    (-2.0, 0.0, 0.5, 1e-2),
    (1.5, 0.7, 0.5, 4.0),
    (-0.5, -1.0, 2.0, 0.3),
]


@pytest.mark.parametrize(("mu", "log_sigma2", "shape", "rate"), KL_CASES)
def test_lognormal_kls_match_quadrature_and_monte_carlo(mu, log_sigma2, shape, rate):
    g, ig = stats.gamma(shape, scale=1 / rate), stats.invgamma(shape, scale=rate)
    args = (torch.tensor(mu, dtype=torch.float64), torch.tensor(log_sigma2, dtype=torch.float64))
    kl_g = float(kl_lognormal_gamma(*args, shape, rate))
    kl_ig = float(kl_lognormal_inv_gamma(*args, shape, rate))  # rate is IG's scale here
    assert kl_g == pytest.approx(lognormal_kl_by_quadrature(mu, log_sigma2, g), rel=1e-6)
    assert kl_ig == pytest.approx(lognormal_kl_by_quadrature(mu, log_sigma2, ig), rel=1e-6)
    # and by sampling: the mean of log q(x) - log p(x) within 4 standard errors
    sd = math.exp(0.5 * log_sigma2)
    x = np.exp(mu + sd * np.random.default_rng(0).standard_normal(400_000))
    log_q = stats.lognorm(s=sd, scale=math.exp(mu)).logpdf(x)
    for ours, prior in [(kl_g, g), (kl_ig, ig)]:
        diff = log_q - prior.logpdf(x)
        assert abs(diff.mean() - ours) < 4 * diff.std() / math.sqrt(x.size) + 1e-9


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_gamma_times_inverse_gamma_is_the_half_cauchy(tau):
    # the decomposition the gate's priors rest on: sqrt(Gamma(1/2, rate 1/tau^2) *
    # InvGamma(1/2, 1)) ~ C+(0, tau)
    rng = np.random.default_rng(1)
    a = stats.gamma(0.5, scale=tau**2).rvs(200_000, random_state=rng)
    b = stats.invgamma(0.5, scale=1.0).rvs(200_000, random_state=rng)
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    sampled = np.quantile(np.sqrt(a * b), qs)
    assert np.allclose(sampled, stats.halfcauchy(scale=tau).ppf(qs), rtol=0.03)


def horseshoe_gate(tau=0.5):
    torch.manual_seed(0)
    g = GroupHorseshoeGate(torch.randn(4, 3), threshold=0.0, global_scale=tau)
    with torch.no_grad():
        g.mu_sa.fill_(-0.4), g.log_sigma2_sa.fill_(-1.5)
        g.mu_sb.fill_(0.3), g.log_sigma2_sb.fill_(-0.5)
        g.mu_za.copy_(torch.tensor([0.2, -1.0, 1.5, -3.0]))
        g.log_sigma2_za.copy_(torch.tensor([-2.0, 0.0, -1.0, 0.5]))
        g.mu_zb.copy_(torch.tensor([-0.1, 0.4, 0.0, -2.0]))
        g.log_sigma2_zb.copy_(torch.tensor([-3.0, -1.0, 0.3, -0.2]))
        g.log_sigma2_w.uniform_(-4, -1)
    return g


def test_horseshoe_gate_kl_is_the_sum_of_the_factor_kls_against_scipy_priors():
    tau = 0.5
    g = horseshoe_gate(tau)
    theta = torch.randn(4, 3)
    priors = {
        "sa": stats.gamma(0.5, scale=tau**2),  # rate 1 / tau^2
        "sb": stats.invgamma(0.5, scale=1.0),
        "za": stats.gamma(0.5, scale=1.0),
        "zb": stats.invgamma(0.5, scale=1.0),
    }
    expected = 0.0
    for f, prior in priors.items():
        mus, log_s2s = getattr(g, f"mu_{f}").tolist(), getattr(g, f"log_sigma2_{f}").tolist()
        for mu, ls2 in zip(mus, log_s2s, strict=True):
            expected += lognormal_kl_by_quadrature(mu, ls2, prior)
    s2 = g.log_sigma2_w.detach().exp()
    for t, v in zip(theta.flatten().tolist(), s2.flatten().tolist(), strict=True):
        expected += float(torch.distributions.kl_divergence(
            torch.distributions.Normal(t, math.sqrt(v)), torch.distributions.Normal(0.0, 1.0)
        ))  # fmt: skip
    assert float(g.kl(theta).detach()) == pytest.approx(expected, rel=1e-5)


def test_horseshoe_samples_follow_the_log_normal_and_share_the_layer_scale():
    g = horseshoe_gate()
    torch.manual_seed(0)
    with torch.no_grad():
        z = g.sample(200_000).double()
    # log(s z_c) = (log s_a + log s_b + log z_a + log z_b) / 2, a sum of independent normals
    mu = {f: getattr(g, f"mu_{f}").detach().double() for f in g.FACTORS}
    var = {f: getattr(g, f"log_sigma2_{f}").detach().double().exp() for f in g.FACTORS}
    m = sum(mu.values()) / 2
    v = sum(var.values()) / 4
    qs = [0.1, 0.5, 0.9]
    for c in range(4):
        expected = stats.lognorm(s=math.sqrt(float(v[c])), scale=math.exp(float(m[c]))).ppf(qs)
        sampled = np.quantile(z[:, c].numpy(), qs)
        assert np.allclose(sampled, expected, rtol=0.02)
    # units covary through the layer's s only: cov(log z_i, log z_j) = var(log s)
    cov = torch.cov(z.log().T)
    var_s = float(var["sa"] + var["sb"]) / 4
    off = cov[~torch.eye(4, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, var_s), atol=0.01)
    assert float(g.mean().detach()[0]) == pytest.approx(math.exp(float(m[0] + v[0] / 2)), rel=1e-6)


def test_horseshoe_training_output_has_the_local_reparameterisation_mean():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 3))
    reg = registry.get("bayesian_compression")(targets=["0.weight"])
    reg.prepare(m)
    g = reg.gates["0.weight"]
    with torch.no_grad():
        g.mu_za.copy_(torch.tensor([0.3, -0.5, 0.0]))
        g.log_sigma2_za.fill_(-2.0)
        g.log_sigma2_w.fill_(-3.0)
    x = torch.randn(1, 6).expand(100_000, 6)
    m.train()
    with torch.no_grad():
        out = m(x)
        plain = F.linear(x[:1], reg.weight("0.weight"), m[0].bias)[0]
        scale = g.mean()
    # E[s z (layer(x) + noise)] = E[s z] layer(x): the scale and the noise are independent
    assert torch.allclose(out.mean(0), scale * plain, atol=0.02)


def test_horseshoe_is_the_default_and_prunes_a_unit_driven_to_zero():
    m = mlp()
    reg = registry.get("bayesian_compression")()
    assert reg.prior == "horseshoe" and reg.threshold == 0.0
    reg.prepare(m)
    g = reg.gates["0.weight"]
    assert isinstance(g, GroupHorseshoeGate)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[3, 7, 11]] = True
    with torch.no_grad():
        g.mu_za.copy_(torch.where(dead, -30.0, 0.5))  # E[log z_c^2] -> -15 for the dead
    log_var = g.log_variance().detach()
    assert torch.equal(log_var < 0, dead)
    x = torch.randn(5, 12)
    theta = reg.weight("0.weight").detach()
    m.eval()
    with torch.no_grad():
        before = m(x)
        scale = g.mean() * ~dead
        manual = m[2](F.relu(F.linear(x, theta, m[0].bias) * scale))
        assert torch.allclose(before, manual, atol=1e-6)
    keep = reg.finalize(m)
    assert reg.reached == pytest.approx(3 / 16)
    assert torch.equal(keep["0.weight"].any(1), ~dead) and torch.equal(
        keep["0.weight"].all(1), ~dead
    )
    w = sl.masks.weight(m, "0.weight")
    assert (w[dead] == 0).all() and (m[0].bias[dead] == 0).all()  # the whole unit is silent
    assert (w[~dead] != 0).all()
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-5)


def test_horseshoe_masks_feed_shrink():
    from sparsity_lab import shrink

    torch.manual_seed(0)
    model = sl.models.build("lenet300", input_shape=(12,), n_classes=2, hidden=(16, 8))
    reg = registry.get("bayesian_compression")()
    reg.prepare(model)
    with torch.no_grad():
        reg.gates["fc1.weight"].mu_zb[:5] = -20.0
        reg.gates["fc2.weight"].mu_zb[[0, 6]] = -20.0
    reg.finalize(model)
    x = torch.randn(6, 12)
    model.eval()
    small = shrink.shrink(model, x[:2])
    assert (small.fc1.out_features, small.fc2.out_features) == (11, 6)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)


def test_variational_methods_refuse_what_they_cannot_handle():
    m = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="Linear or Conv"):
        registry.get("variational_dropout")(targets=["0.weight"]).prepare(m)
    with pytest.raises(ValueError, match="a < b"):
        registry.get("structured_bayesian")(a=0.0, b=-1.0)
    with pytest.raises(ValueError, match="warmup"):
        registry.get("bayesian_compression")(warmup=2.0)
    with pytest.raises(ValueError, match="prior must be one of"):
        registry.get("bayesian_compression")(prior="cauchy")
    with pytest.raises(ValueError, match="global_scale"):
        registry.get("bayesian_compression")(global_scale=0.0)


def _conv_bn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 3),
    )  # fmt: skip


def _norm(bn, y):
    """``bn``'s eval-mode output, without the forward hooks a gate puts on it."""
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize("method", ["bayesian_compression", "structured_bayesian"])
def test_unit_gates_scale_the_output_of_a_following_batchnorm(method):
    # Behind a BatchNorm, a scale on the conv's units is undone by the norm: the gate must
    # act on the norm's output for its scale to matter to the loss.
    m = _conv_bn()
    reg = registry.get(method)(targets=["0.weight"])
    reg.prepare(m)
    assert reg.norms["0.weight"] == "1"
    g = reg.gates["0.weight"]
    # the norm stays the model's: not the gate's submodule, nor the regularizer's parameter
    norm_params = {id(p) for p in m[1].parameters()}
    assert not norm_params & {id(p) for p in reg.parameters()}
    assert all(k.startswith(("0.", "1.", "4.")) and "sparsity_gate.1" not in k
               and "_norm" not in k for k in m.state_dict())  # fmt: skip
    m.eval()
    x = torch.randn(4, 2, 4, 4)
    with torch.no_grad():
        scale = g.gate(1).reshape(-1)
        normed = _norm(m[1], F.conv2d(x, reg.weight("0.weight"), padding=1))
        by_hand = m[4](F.relu(normed * scale.reshape(1, -1, 1, 1)).flatten(1))
        assert torch.allclose(m(x), by_hand, atol=1e-5)
        if method == "bayesian_compression":
            g.mu_za[2] += 2.0  # doubles E[log s z] of unit 2 (m_c = sum of mus / 2): scale x e
        else:
            g.mu[2] -= 1.0
        assert not torch.equal(g.gate(1).reshape(-1)[2], scale[2])
        # the norm's output moves with the scale: the pre-norm scale it replaced did not
        now = g.gate(1).reshape(1, -1, 1, 1)
        assert torch.allclose(m[1](F.conv2d(x, reg.weight("0.weight"), padding=1)), normed * now)
        assert torch.allclose(m(x), m[4](F.relu(normed * now).flatten(1)), atol=1e-5)


@pytest.mark.parametrize("method", ["bayesian_compression", "structured_bayesian"])
def test_unit_gates_behind_a_batchnorm_fold_into_it_and_silence_pruned_units(method):
    m = _conv_bn()
    reg = registry.get(method)(targets=["0.weight"])
    reg.prepare(m)
    g = reg.gates["0.weight"]
    dead = torch.tensor([False, True, False, True, True, False])
    with torch.no_grad():
        if method == "bayesian_compression":
            g.mu_za.copy_(torch.where(dead, -30.0, 0.5))  # E[log (s z)^2] < 0: pruned
        else:
            g.mu.copy_(torch.where(dead, -15.0, 0.0))
            g.log_sigma.copy_(torch.where(dead, 2.0, -3.0))  # SNR < 1: pruned
    m.train()
    with torch.no_grad():
        m(torch.randn(32, 2, 4, 4))  # BatchNorm statistics that are not the identity
    m.eval()
    x = torch.randn(5, 2, 4, 4)
    with torch.no_grad():
        before = m(x)
    keep = reg.finalize(m)["0.weight"].reshape(6, -1).any(1)
    assert torch.equal(keep, ~dead)
    bn = m[1]
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-5)  # the gates folded into the norm
        normed = bn(F.conv2d(x, sl.masks.weight(m, "0.weight"), padding=1))
        assert (normed[:, dead] == 0).all() and (normed[:, ~dead] != 0).any()
        assert (sl.masks.weight(m, "1.bias")[dead] == 0).all()  # the norm's shift masked too
        assert not hasattr(bn, "sparsity_gate") and not bn._forward_hooks
        assert not m[0]._forward_hooks
    # training moves neither the masked norm entries nor the masked rows
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    m.train()
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(8, 2, 4, 4)).square().mean().backward()
        opt.step()
    assert (sl.masks.weight(m, "1.bias")[dead] == 0).all()
    assert (sl.masks.weight(m, "1.weight")[dead] == 0).all()
    assert (sl.masks.weight(m, "0.weight")[dead] == 0).all()


def test_a_model_with_a_gate_on_a_batchnorm_deepcopies_with_its_own_gate():
    import copy

    m = _conv_bn()
    reg = registry.get("bayesian_compression")(targets=["0.weight"])
    reg.prepare(m)
    twin = copy.deepcopy(m)
    with torch.no_grad():
        twin[0].sparsity_gate.mu_za.fill_(-30.0)  # closes every unit of the copy only
    m.eval(), twin.eval()
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(twin(x), twin[4].bias.expand(3, -1))  # the copy's own gate
        assert not torch.allclose(m(x), m[4].bias.expand(3, -1))


def test_vd_tuner_holds_the_strength_through_the_kl_warm_up():
    # The warm-up raises the KL's weight by itself; a tuner acting then raises the strength
    # as well, and the KL at full weight swamps the data term when the warm-up ends.
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(640, 12, generator=g)
    data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32, generator=g)
    m = mlp()
    reg = registry.get("variational_dropout")(sparsity=0.9, warmup=0.5, tune_every=2)
    seen = []

    class Record(sl.callbacks.Callback):
        def on_step_end(self, trainer):
            seen.append((trainer.step, reg.warm, reg.strength))

    reg.fit(m, data, epochs=4, optimizer="adam", lr=1e-3, seed=0, progress=False,
            callbacks=[Record()])  # fmt: skip
    warming = [s for _, warm, s in seen if warm < 1]
    after = [s for _, warm, s in seen if warm >= 1]
    assert len(warming) >= 30 and len(after) >= 30  # 80 steps, the first half warming up
    assert set(warming) == {1.0}  # untouched while the KL's weight ramps up
    assert len(set(after)) > 5  # the tuner steers it from then on

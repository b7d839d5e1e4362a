"""Variational methods against independent computations: numerical KL divergences, scipy's
truncated normal, Monte Carlo moments of the local reparameterisation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats
from torch import nn

import sparsity_lab as sl
import sparsity_lab.regularizers  # noqa: F401
from sparsity_lab import registry
from sparsity_lab.regularizers.variational import LogNormalGate, kl_log_uniform


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))


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


def test_bc_kl_by_hand_mask_and_function():
    m = mlp()
    reg = registry.get("bayesian_compression")()
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


def test_variational_methods_refuse_what_they_cannot_handle():
    m = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match="Linear or Conv"):
        registry.get("variational_dropout")(targets=["0.weight"]).prepare(m)
    with pytest.raises(ValueError, match="a < b"):
        registry.get("structured_bayesian")(a=0.0, b=-1.0)
    with pytest.raises(ValueError, match="warmup"):
        registry.get("bayesian_compression")(warmup=2.0)

"""Variational methods (survey section 3.7): noise on the weights or the units, a
sparsity-inducing prior, and pruning of what turns out to be mostly noise.

* ``variational_dropout``: Gaussian noise per weight with a log-uniform prior
  (Molchanov et al. 2017); prune ``log alpha > 3``;
* ``structured_bayesian``: log-normal multiplicative noise per unit (Neklyudov et al.
  2017); prune units whose signal-to-noise ratio is below 1;
* ``bayesian_compression``: a scale per unit over Gaussian weights (Louizos et al. 2017),
  with the group horseshoe prior (half-Cauchy scales, log-normal posteriors; prune units
  whose expected log scale falls below a threshold) or the group normal-Jeffreys prior
  (Gaussian scales; prune units whose ``log alpha`` is above a threshold).

Each trains ``batch loss + strength * KL / N`` (``N`` training examples; ``strength = 1``
is the evidence lower bound) and samples the noise with the local reparameterisation
trick: the noise of the layer's *output* is drawn directly from its distribution, which
is cheaper and less noisy than sampling weights.  A forward hook adds it in training mode;
eval mode computes with the means and the final masks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register
from .base import (
    OutputGate,
    Regularizer,
    attach_gate,
    detach_gate,
    following_norm,
    layer_of,
    reparametrize,
    unparametrize,
)

# Molchanov et al.'s fit of the KL divergence to the log-uniform prior (their eq. 14).
K1, K2, K3 = 0.63576, 1.87320, 1.48695


def kl_log_uniform(log_alpha: torch.Tensor) -> torch.Tensor:
    """``KL(q || p)`` per weight, ``-(k1 sigmoid(k2 + k3 log_alpha) - 0.5 log(1 + 1/alpha) - k1)``.

    Molchanov et al.'s approximation (error below 0.01 everywhere) of the divergence of
    ``N(theta, alpha theta^2)`` from the log-uniform prior; it falls to 0 as alpha grows.
    """
    neg = K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - K1
    return -neg


def _apply(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The layer's linear map with another weight and no bias (Linear or Conv)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight)
    if isinstance(layer, nn.modules.conv._ConvNd):
        return layer._conv_forward(x, weight, None)
    raise TypeError(
        f"variational methods support Linear and Conv layers, got {type(layer).__name__}; "
        f"exclude it"
    )


def _variance_noise(layer: nn.Module, x: torch.Tensor, var_weight: torch.Tensor, out):
    """Local reparameterisation: noise with the variance ``layer(x^2)`` under ``var_weight``."""
    var = _apply(layer, x * x, var_weight)
    return torch.sqrt(var + 1e-8) * torch.randn_like(out)


def _check_layers(model: nn.Module, names: list[str]) -> None:
    for n in names:
        layer, tensor_name = layer_of(model, n)
        if tensor_name != "weight" or not isinstance(layer, (nn.Linear, nn.modules.conv._ConvNd)):
            raise ValueError(
                f"{n}: variational methods act on the weight of a Linear or Conv layer; exclude it"
            )


class _Variational(Regularizer):
    """Shared by the variational methods: ``warm * strength * KL / N``.

    ``warm`` rises linearly from 0 to 1 over the first ``warmup`` fraction of training
    (KL annealing, as in Molchanov et al.'s code): at the start the KL of hundreds of
    thousands of barely trained weights would swamp the data term and prune everything.
    """

    default_strength = 1.0

    def __init__(self, strength: float | None = None, *, warmup: float = 0.25, **options):
        super().__init__(strength, **options)
        if not 0 <= warmup <= 1:
            raise ValueError(f"warmup must be a fraction of training in [0, 1], got {warmup}")
        self.warmup = float(warmup)
        self.warm = 1.0

    def kl(self) -> torch.Tensor:
        """The KL divergence of the whole posterior from the prior."""
        raise NotImplementedError

    def penalty(self, model):
        return self.warm * self.kl() / (self.n_train or 1)

    def on_after_backward(self, trainer):
        ramp = self.warmup * trainer.total_steps
        self.warm = min(1.0, trainer.step / ramp) if ramp > 0 else 1.0
        super().on_after_backward(trainer)

    def _tune(self, step):
        # The warm-up raises the penalty by itself: a tuner that read the sparsity lagging
        # behind it would raise the strength too, and at the end of the warm-up the KL,
        # then at full weight, would swamp the data term (LeNet-5, seed 0: the strength
        # rose 4x in the first 32 steps and the network fell to chance level for good).
        if self.warm >= 1:
            super()._tune(step)


# --- sparse variational dropout -----------------------------------------------------------


class VariationalWeight(nn.Module):
    """Parametrization of ``theta`` holding ``log sigma^2``; eval mode zeroes the weights
    with ``log alpha >= threshold`` (training adds the noise in the layer's forward hook)."""

    def __init__(self, theta: torch.Tensor, log_alpha_init: float, threshold: float) -> None:
        super().__init__()
        self.log_sigma2 = nn.Parameter(log_alpha_init + torch.log(theta.detach() ** 2 + 1e-8))
        self.threshold = threshold

    def log_alpha(self, theta: torch.Tensor) -> torch.Tensor:
        """``log alpha = log sigma^2 - log theta^2``, clipped to [-10, 10] as in the paper."""
        return torch.clamp(self.log_sigma2 - torch.log(theta * theta + 1e-8), -10.0, 10.0)

    def forward(self, theta: torch.Tensor) -> torch.Tensor:
        if self.training:
            return theta
        return theta * (self.log_alpha(theta) < self.threshold).to(theta.dtype)


@register("regularizer", "variational_dropout", section="3.7")
class VariationalDropout(_Variational):
    """Sparse variational dropout (Molchanov et al. 2017).

    Rule: each weight is ``w = theta * (1 + sqrt(alpha) eps)``, i.e. ``N(theta, sigma^2)``
    with ``alpha = sigma^2 / theta^2``, under the log-uniform prior; minimise ``loss +
    strength * KL / N`` with ``KL ~ -(k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) -
    k1)`` per weight (k1, k2, k3 = 0.63576, 1.87320, 1.48695), sampling the layer's output
    by the local reparameterisation trick with the additive parameterisation (``theta`` and
    ``log sigma^2`` trained, ``log alpha`` derived).  Threshold: prune ``log alpha >= 3``
    (``alpha > 20``: the weight is almost pure noise); the final weight is ``theta``.
    Train with Adam, as Molchanov et al. do: plain SGD at ``lr=0.05`` with the noise
    scales at ten times that rate diverges.  Supports: unstructured.  A target tunes the
    strength, then projects on ``-log alpha``.
    """

    name = "variational_dropout"

    def __init__(
        self,
        strength: float | None = None,
        *,
        threshold: float = 3.0,
        log_alpha_init: float = -4.0,
        **options,
    ):
        super().__init__(strength, **options)
        self.threshold, self.log_alpha_init = float(threshold), float(log_alpha_init)

    def setup(self, model):
        _check_layers(model, self.names_)
        self.params: dict[str, VariationalWeight] = {}
        self._hooks = []
        for n in self.names_:
            vw = VariationalWeight(self.weight(n), self.log_alpha_init, self.threshold)
            self.params[n] = reparametrize(model, n, vw)
            layer, _ = layer_of(model, n)

            def hook(layer, args, out, vw=vw):
                if not layer.training:
                    return out
                return out + _variance_noise(layer, args[0], torch.exp(vw.log_sigma2), out)

            self._hooks.append(layer.register_forward_hook(hook))

    def parameters(self):
        return [p.log_sigma2 for p in self.params.values()]

    def log_alpha(self, name: str) -> torch.Tensor:
        """``log alpha`` of every weight of ``name``."""
        return self.params[name].log_alpha(self.weight(name)).detach()

    def kl(self):
        return sum(
            kl_log_uniform(p.log_alpha(self.weight(n))).sum() for n, p in self.params.items()
        )

    def keep(self, model):
        return {n: self.log_alpha(n) < self.threshold for n in self.names_}

    def scores(self, model):
        return {n: -self.log_alpha(n) for n in self.names_}

    def release(self, model, keep):
        for h in self._hooks:
            h.remove()
        for n in self.names_:
            unparametrize(model, n, fold=False)  # theta; the masks zero the rest
        return {}


# --- structured Bayesian pruning ----------------------------------------------------------


def log_ndtr_diff(hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """``log(Phi(hi) - Phi(lo))`` for ``hi > lo``, accurate in both tails."""
    log_ndtr = torch.special.log_ndtr
    # in the upper tail Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi), whose logs do not round to 0
    upper = (hi + lo) > 0
    a = torch.where(upper, -lo, hi)
    b = torch.where(upper, -hi, lo)
    return log_ndtr(a) + torch.log1p(-torch.exp(log_ndtr(b) - log_ndtr(a)).clamp(max=1 - 1e-15))


class LogNormalGate(OutputGate):
    """Multiplicative noise ``theta_c = exp(phi_c)`` per output unit, with ``phi_c`` a
    normal ``N(mu_c, sigma_c^2)`` truncated to ``[a, b]`` (Neklyudov et al. 2017).

    The moments of a truncated log-normal mix huge and tiny factors (``exp(sigma^2)``
    against differences of normal CDFs), so they are computed in log space and double
    precision.
    """

    def __init__(
        self, channels: int, a: float, b: float, snr_threshold: float, log_sigma_init: float
    ) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(channels))
        self.log_sigma = nn.Parameter(torch.full((channels,), float(log_sigma_init)))
        self.a, self.b, self.snr_threshold = a, b, snr_threshold

    def _standard(self):
        mu = self.mu.double().clamp(self.a, self.b)
        # sigma beyond the interval's width changes nothing but the numerics
        sigma = self.log_sigma.double().clamp(-10.0, math.log(self.b - self.a)).exp()
        alpha, beta = (self.a - mu) / sigma, (self.b - mu) / sigma
        return mu, sigma, alpha, beta, log_ndtr_diff(beta, alpha)

    def kl(self) -> torch.Tensor:
        """KL from the log-uniform prior on ``[a, b]``: ``log(b - a) - H(q)`` per unit, with
        ``H = log(sqrt(2 pi e) sigma Z) + (alpha phi(alpha) - beta phi(beta)) / (2 Z)``,
        ``Z = Phi(beta) - Phi(alpha)`` (the entropy of the truncated normal)."""
        mu, sigma, alpha, beta, log_z = self._standard()
        log_pdf_over_z = -0.5 * math.log(2 * math.pi) - log_z  # phi(x) / Z = exp(-x^2/2 + this)
        tails = alpha * torch.exp(-0.5 * alpha**2 + log_pdf_over_z) - beta * torch.exp(
            -0.5 * beta**2 + log_pdf_over_z
        )
        entropy = 0.5 * math.log(2 * math.pi * math.e) + torch.log(sigma) + log_z + tails / 2
        return (math.log(self.b - self.a) - entropy).to(self.mu.dtype)

    def snr(self) -> torch.Tensor:
        """``E[theta] / std[theta]`` per unit (Neklyudov et al., eq. 13):
        ``1 / sqrt(E[theta^2] / E[theta]^2 - 1)`` with ``E[theta^k] = exp(k mu + k^2 sigma^2
        / 2) (Phi(k sigma - alpha) - Phi(k sigma - beta)) / Z``."""
        mu, sigma, alpha, beta, log_z = self._standard()
        ld1 = log_ndtr_diff(sigma - alpha, sigma - beta)
        ld2 = log_ndtr_diff(2 * sigma - alpha, 2 * sigma - beta)
        log_ratio = sigma**2 + ld2 - 2 * ld1 + log_z  # log(E[theta^2] / E[theta]^2)
        return (1 / torch.sqrt(torch.expm1(log_ratio).clamp_min(1e-30))).to(self.mu.dtype)

    def mean(self) -> torch.Tensor:
        """``E[theta] = exp(mu + sigma^2 / 2) (Phi(sigma - alpha) - Phi(sigma - beta)) / Z``."""
        mu, sigma, alpha, beta, log_z = self._standard()
        ld1 = log_ndtr_diff(sigma - alpha, sigma - beta)
        return torch.exp(mu + sigma**2 / 2 + ld1 - log_z).to(self.mu.dtype)

    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws of ``theta`` per unit, shape (n, C), by the inverse CDF."""
        mu, sigma, alpha, beta, log_z = self._standard()
        u = torch.rand(n, mu.numel(), device=mu.device, dtype=mu.dtype)
        p = (torch.special.ndtr(alpha) + u * log_z.exp()).clamp(1e-12, 1 - 1e-12)
        phi = (mu + sigma * torch.special.ndtri(p)).clamp(self.a, self.b)
        return torch.exp(phi).to(self.mu.dtype)

    def gate(self, n):
        if self.training:
            return self.sample(n)
        return self.mean() * (self.snr() >= self.snr_threshold).to(self.mu.dtype)

    def fold(self):
        # the mean scale of every unit: the masks prune, so a unit that a target revives
        # comes back with its learned scale
        with torch.no_grad():
            return self.mean().detach()


class _UnitNoise(_Variational):
    """Variational methods with a gate on each output unit (channel masks).

    Where a BatchNorm follows a layer (:func:`~.base.following_norm`), the gate's scale
    multiplies the norm's output, and a pruned unit's norm scale and shift are masked with
    its row.  On the norm's input a unit's scale would be undone by the normalisation, so
    the prior would shrink it at no cost to the loss: on the small ResNet the threshold
    rule then emptied the stem's convolution in 2 of 3 seeds and the network lost its input.
    """

    supported_patterns = ("channel",)
    reduction = "max"  # every element of a unit carries the unit's score

    def make(self, name: str, layer: nn.Module) -> OutputGate:
        """The gate for layer ``name``."""
        raise NotImplementedError

    def setup(self, model):
        _check_layers(model, self.names_)
        self.gates, self.norms = {}, {}
        for n in self.names_:
            layer, _ = layer_of(model, n)
            # behind a BatchNorm a unit's scale would be free for the prior to shrink (the
            # norm undoes it): the gate scales the norm's output, as slimming's gamma does
            self.norms[n] = following_norm(model, n.rpartition(".")[0])
            norm = None if self.norms[n] is None else model.get_submodule(self.norms[n])
            self.gates[n] = attach_gate(layer, self.make(n, layer), norm)

    def parameters(self):
        return [p for g in self.gates.values() for p in g.parameters()]

    def unit_scores(self, name: str) -> torch.Tensor:
        """One score per unit of ``name`` (higher = keep)."""
        raise NotImplementedError

    def unit_keep(self, name: str) -> torch.Tensor:
        """The threshold rule per unit of ``name``."""
        raise NotImplementedError

    def _expand(self, name: str, per_unit: torch.Tensor) -> torch.Tensor:
        return self.pattern.expand(per_unit, tuple(self.weight(name).shape))

    @torch.no_grad()
    def keep(self, model):
        return {n: self._expand(n, self.unit_keep(n)) for n in self.names_}

    @torch.no_grad()
    def scores(self, model):
        return {n: self._expand(n, self.unit_scores(n)) for n in self.names_}

    def release(self, model, keep):
        extra = {}
        for n in self.names_:
            units = keep[n].reshape(keep[n].shape[0], -1).any(dim=1)
            # rows and bias (or the norm's scale and shift) times the mean scale
            detach_gate(layer_of(model, n)[0], units)
            if self.norms[n] is not None:  # a pruned unit's norm outputs zero, and stays so
                extra[f"{self.norms[n]}.weight"] = units
                extra[f"{self.norms[n]}.bias"] = units
        return extra


@register("regularizer", "structured_bayesian", section="3.7")
class StructuredBayesian(_UnitNoise):
    """Structured Bayesian pruning via log-normal multiplicative noise (Neklyudov et al. 2017).

    Rule: each output unit's value is multiplied by ``theta = exp(phi)``, ``phi ~
    N(mu, sigma^2)`` truncated to ``[a, b] = [-20, 0]``, drawn per example, under the
    log-uniform prior truncated to the same interval; minimise ``loss + strength * KL / N``
    with the exact KL of the truncated normal from the uniform on ``[a, b]`` (in log
    space).  Threshold: prune units whose ``SNR = E[theta] / std[theta] < 1``; the others
    keep ``E[theta]``, folded into their weight row and bias.  Neklyudov et al. put the
    noise on each layer's inputs; here it is on the outputs, so that the masks are output
    units.  Supports: channel; the masks feed :func:`sparsity_lab.shrink.shrink`.  A target
    projects globally on the SNR, with the strength fixed (no tuning: in a short run the
    noise grows slowly and then the SNRs of many units fall under 1 at once, too late and
    too suddenly for a feedback rule on the strength).
    """

    name = "structured_bayesian"
    tunable = False

    def __init__(
        self,
        strength: float | None = None,
        *,
        snr_threshold: float = 1.0,
        a: float = -20.0,
        b: float = 0.0,
        log_sigma_init: float = -2.0,
        **options,
    ):
        super().__init__(strength, **options)
        if not a < b:
            raise ValueError(f"the truncation interval needs a < b, got [{a}, {b}]")
        self.snr_threshold, self.a, self.b = float(snr_threshold), float(a), float(b)
        self.log_sigma_init = float(log_sigma_init)

    def make(self, name, layer):
        shape = self.weight(name).shape
        return LogNormalGate(shape[0], self.a, self.b, self.snr_threshold, self.log_sigma_init)

    def kl(self):
        return sum(g.kl().sum() for g in self.gates.values())

    def unit_scores(self, name):
        return self.gates[name].snr()

    def unit_keep(self, name):
        return self.gates[name].snr() >= self.snr_threshold


# --- Bayesian compression -----------------------------------------------------------------


def kl_lognormal_gamma(
    mu: torch.Tensor, log_sigma2: torch.Tensor, shape: float, rate: float
) -> torch.Tensor:
    """``KL(LogNormal(mu, sigma^2) || Gamma(shape, rate))`` in closed form.

    ``-H(q) - E_q[log p]`` with the log-normal's entropy ``H = mu + 0.5 log(2 pi e sigma^2)``
    and ``E_q[log x] = mu``, ``E_q[x] = exp(mu + sigma^2 / 2)``.
    """
    entropy = mu + 0.5 * (math.log(2 * math.pi) + 1 + log_sigma2)
    log_p = (
        shape * math.log(rate)
        - math.lgamma(shape)
        + (shape - 1) * mu
        - rate * torch.exp(mu + 0.5 * log_sigma2.exp())
    )
    return -log_p - entropy


def kl_lognormal_inv_gamma(
    mu: torch.Tensor, log_sigma2: torch.Tensor, shape: float, scale: float
) -> torch.Tensor:
    """``KL(LogNormal(mu, sigma^2) || InvGamma(shape, scale))`` in closed form, as
    :func:`kl_lognormal_gamma` with ``E_q[1 / x] = exp(-mu + sigma^2 / 2)``."""
    entropy = mu + 0.5 * (math.log(2 * math.pi) + 1 + log_sigma2)
    log_p = (
        shape * math.log(scale)
        - math.lgamma(shape)
        - (shape + 1) * mu
        - scale * torch.exp(-mu + 0.5 * log_sigma2.exp())
    )
    return -log_p - entropy


class _ScaleGate(OutputGate):
    """A scale per output unit over Gaussian weights ``w ~ N(theta, sigma_w^2)``, sampled by
    the local reparameterisation trick: ``out = scale * (layer(x) + noise)``, with one
    scale draw per example.  Subclasses give the scale's posterior."""

    def __init__(self, weight: torch.Tensor, threshold: float) -> None:
        super().__init__()
        self.log_sigma2_w = nn.Parameter(torch.full(tuple(weight.shape), -9.0))
        self.threshold = threshold

    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws of every unit's scale, shape (n, C)."""
        raise NotImplementedError

    def mean(self) -> torch.Tensor:
        """The posterior mean of every unit's scale, shape (C,)."""
        raise NotImplementedError

    def alive(self) -> torch.Tensor:
        """The threshold rule per unit (True: keep)."""
        raise NotImplementedError

    def kl_weights(self, theta: torch.Tensor) -> torch.Tensor:
        """``KL(N(theta, sigma_w^2) || N(0, 1))`` summed over the weights."""
        s2 = self.log_sigma2_w
        return (0.5 * (-s2 + s2.exp() + theta**2 - 1)).sum()

    def perturb(self, layer, x, out):
        if not self.training:
            return out
        return out + _variance_noise(layer, x, torch.exp(self.log_sigma2_w), out)

    def gate(self, n):
        if self.training:
            return self.sample(n)
        return self.mean() * self.alive().to(self.log_sigma2_w.dtype)

    def fold(self):
        # the mean scale of every unit: the masks prune (see LogNormalGate.fold)
        with torch.no_grad():
            return self.mean().detach().clone()


class GroupNJGate(_ScaleGate):
    """Scale ``z_c ~ N(mu_c, sigma_c^2)`` per output unit (Louizos et al. 2017, group
    normal-Jeffreys); prune ``log alpha_c = log sigma_c^2 - log mu_c^2 >= threshold``."""

    def __init__(self, weight: torch.Tensor, threshold: float) -> None:
        super().__init__(weight, threshold)
        channels = weight.shape[0]
        self.mu_z = nn.Parameter(torch.ones(channels))
        self.log_sigma2_z = nn.Parameter(torch.full((channels,), -8.0))

    def log_alpha(self) -> torch.Tensor:
        """``log alpha_z = log sigma_z^2 - log mu_z^2`` per unit, clipped to [-10, 10]."""
        return torch.clamp(self.log_sigma2_z - torch.log(self.mu_z**2 + 1e-8), -10.0, 10.0)

    def sample(self, n):
        eps = torch.randn(n, self.mu_z.numel(), device=self.mu_z.device)
        return self.mu_z + torch.exp(0.5 * self.log_sigma2_z) * eps

    def mean(self):
        return self.mu_z

    def alive(self):
        return self.log_alpha() < self.threshold

    def kl(self, theta: torch.Tensor) -> torch.Tensor:
        """KL of the layer: ``sum_c KL_VD(log alpha_c)`` plus the weights'."""
        return kl_log_uniform(self.log_alpha()).sum() + self.kl_weights(theta)


class GroupHorseshoeGate(_ScaleGate):
    """Scale ``s z_c`` per output unit under the group horseshoe (Louizos et al. 2017).

    Prior: ``s ~ C+(0, tau0)`` for the layer, ``z_c ~ C+(0, 1)`` per unit, non-centred:
    ``s = sqrt(s_a s_b)`` with ``s_a ~ Gamma(1/2, rate 1/tau0^2)``, ``s_b ~ InvGamma(1/2,
    1)``, and ``z_c = sqrt(z_a z_b)`` likewise with ``tau0 = 1`` (a half-Cauchy
    ``C+(0, A)`` is ``A |g1 / g2|`` for standard normals ``g``: ``A^2 g1^2 / 2`` is the
    Gamma and ``2 / g2^2`` the inverse Gamma).  Posterior: each of ``s_a, s_b, z_a, z_b``
    log-normal, so ``log(s z_c)`` is normal with mean ``m_c = (mu_sa + mu_sb + mu_za +
    mu_zb) / 2`` and variance ``v_c = (sigma_sa^2 + sigma_sb^2 + sigma_za^2 +
    sigma_zb^2) / 4``; the KL of each factor is closed-form (log-normal against Gamma or
    inverse Gamma).  Initialised at ``s z_c = 1`` with little noise, so that the layer
    starts as the plain layer.
    """

    FACTORS = ("sa", "sb", "za", "zb")

    def __init__(self, weight: torch.Tensor, threshold: float, global_scale: float) -> None:
        super().__init__(weight, threshold)
        channels = weight.shape[0]
        self.global_scale = global_scale
        for f in self.FACTORS:
            size = 1 if f[0] == "s" else channels  # one global scale per layer
            setattr(self, f"mu_{f}", nn.Parameter(torch.zeros(size)))
            setattr(self, f"log_sigma2_{f}", nn.Parameter(torch.full((size,), -6.0)))

    def _log_normal(self, *factors: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``log sqrt(prod factors)``."""
        mean = sum(getattr(self, f"mu_{f}") for f in factors) / 2
        var = sum(getattr(self, f"log_sigma2_{f}").exp() for f in factors) / 4
        return mean, var

    def log_scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m_c, v_c)``: mean and variance of ``log(s z_c)`` per unit."""
        return self._log_normal(*self.FACTORS)

    def log_variance(self) -> torch.Tensor:
        """``E_q[log (s z_c)^2] = 2 m_c``: the expected log prior variance of unit ``c``'s
        weights, the quantity the threshold rule compares."""
        return 2 * self.log_scale()[0]

    def sample(self, n):
        # non-centred: the layer's s is drawn once per example and shared by its units
        mean_s, var_s = self._log_normal("sa", "sb")
        mean_z, var_z = self._log_normal("za", "zb")
        eps_s = torch.randn(n, 1, device=mean_s.device)
        eps_z = torch.randn(n, mean_z.numel(), device=mean_z.device)
        return torch.exp(mean_s + var_s.sqrt() * eps_s + mean_z + var_z.sqrt() * eps_z)

    def mean(self):
        m, v = self.log_scale()
        return torch.exp(m + v / 2)

    def alive(self):
        return self.log_variance() >= self.threshold

    def kl(self, theta: torch.Tensor) -> torch.Tensor:
        """KL of the layer: the four scale factors against their Gamma / inverse-Gamma
        priors, plus the weights'."""
        g, ig = kl_lognormal_gamma, kl_lognormal_inv_gamma
        return (
            g(self.mu_sa, self.log_sigma2_sa, 0.5, 1 / self.global_scale**2).sum()
            + ig(self.mu_sb, self.log_sigma2_sb, 0.5, 1.0).sum()
            + g(self.mu_za, self.log_sigma2_za, 0.5, 1.0).sum()
            + ig(self.mu_zb, self.log_sigma2_zb, 0.5, 1.0).sum()
            + self.kl_weights(theta)
        )


#: Default thresholds of the two priors: ``log alpha_c`` for the normal-Jeffreys,
#: ``E_q[log (s z_c)^2]`` for the horseshoe.
DEFAULT_THRESHOLDS = {"jeffreys": 3.0, "horseshoe": 0.0}


@register("regularizer", "bayesian_compression", section="3.7")
class BayesianCompression(_UnitNoise):
    """Bayesian compression (Louizos et al. 2017): a scale per output unit over Gaussian
    weights, under a group horseshoe (default) or group normal-Jeffreys prior.

    Rule: unit ``c`` of a layer computes with the weights ``scale_c * w``, ``w ~ N(theta,
    sigma_w^2)`` under the prior ``N(0, 1)``; minimise ``loss + strength * KL / N`` with
    ``KL = sum 0.5 (-log sigma_w^2 + sigma_w^2 + theta^2 - 1) + KL_scales``.

    * ``prior="horseshoe"`` (BC-GHS): ``scale_c = s z_c`` with half-Cauchy priors ``s ~
      C+(0, global_scale)`` per layer and ``z_c ~ C+(0, 1)`` per unit, non-centred as
      ``s = sqrt(s_a s_b)``, ``z_c = sqrt(z_a z_b)`` with ``s_a ~ Gamma(1/2, rate
      1/global_scale^2)``, ``z_a ~ Gamma(1/2, 1)``, ``s_b, z_b ~ InvGamma(1/2, 1)``; each
      factor has a log-normal posterior and ``KL_scales`` is the sum of their closed-form
      KLs (:func:`kl_lognormal_gamma`, :func:`kl_lognormal_inv_gamma`).  The noise is one
      log-normal ``s`` per example and layer times one ``z_c`` per example and unit.
      Threshold: prune units whose expected log prior variance ``E_q[log (s z_c)^2] =
      mu_sa + mu_sb + mu_za + mu_zb`` is below ``threshold`` (default 0: the posterior
      median of ``s z_c`` fell below 1, where every scale starts and, for
      ``global_scale = 1``, the prior's median).  The KL alone leaves that quantity at
      ``2 log global_scale``; the data lifts the units it uses into the prior's heavy tail and
      pushes the units whose noise only hurts toward zero, where the weights' marginal
      prior has its spike.  Louizos et al.
      read their threshold on ``E_q[log z]`` off the bimodal histogram of each trained
      network; here it is one fixed value.  Scales move slowly: a run of a few hundred
      steps prunes little by this rule, and a target's projection does the work.
    * ``prior="jeffreys"`` (BC-GNJ): ``scale_c = z_c ~ N(mu_c, sigma_c^2)`` under ``p(z)
      ~ 1/|z|``; ``KL_scales = sum_c KL_VD(log alpha_c)`` with ``log alpha_c = log
      sigma_c^2 - log mu_c^2`` and Molchanov et al.'s approximation ``KL_VD``.
      Threshold: prune ``log alpha_c >= threshold`` (default 3, the rule of variational
      dropout).

    The kept units keep ``E_q[scale_c] * theta``, folded into the weight row and bias.
    Supports: channel; the masks feed :func:`sparsity_lab.shrink.shrink`.  A target
    projects globally on the rule's quantity (``E_q[log (s z_c)^2]``, or ``-log
    alpha_c``), with the strength fixed (no tuning, for the reason given under
    ``structured_bayesian``).  Not implemented from the paper: the bit precision read off
    the posterior variances.
    """

    name = "bayesian_compression"
    tunable = False

    def __init__(
        self,
        strength: float | None = None,
        *,
        prior: str = "horseshoe",
        threshold: float | None = None,
        global_scale: float = 1.0,
        **options,
    ):
        super().__init__(strength, **options)
        if prior not in DEFAULT_THRESHOLDS:
            raise ValueError(
                f"prior must be one of {sorted(DEFAULT_THRESHOLDS)}, got {prior!r}; "
                f"'horseshoe' is BC-GHS, 'jeffreys' BC-GNJ"
            )
        if not global_scale > 0:
            raise ValueError(
                f"global_scale is the half-Cauchy scale of s and must be > 0, got {global_scale}"
            )
        self.prior, self.global_scale = prior, float(global_scale)
        self.threshold = float(DEFAULT_THRESHOLDS[prior] if threshold is None else threshold)

    def make(self, name, layer):
        if self.prior == "horseshoe":
            return GroupHorseshoeGate(self.weight(name), self.threshold, self.global_scale)
        return GroupNJGate(self.weight(name), self.threshold)

    def kl(self):
        return sum(g.kl(self.weight(n)) for n, g in self.gates.items())

    def unit_scores(self, name):
        g = self.gates[name]
        return g.log_variance() if self.prior == "horseshoe" else -g.log_alpha()

    def unit_keep(self, name):
        return self.gates[name].alive()

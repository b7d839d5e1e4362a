"""Learned gates and thresholds (survey sections 3.6.1 and 3.6.2): the layer's weight is
reparameterised with ``torch.nn.utils.parametrize`` so that training itself decides which
weights are zero.

* ``l0_hard_concrete``: stochastic gates in [0, 1] with an expected-L0 penalty;
* ``str``: a learned soft threshold, ``sign(w) * relu(|w| - sigmoid(s))``;
* ``ltp``: a learned threshold on ``w^2`` behind a sigmoid soft mask;
* ``continuous_sparsification``: a sigmoid mask ``sigmoid(beta * s)`` whose temperature
  ``1 / beta`` goes to zero.

At the end each parametrization is folded into a plain weight (its test-time value) and
the mask is attached with :func:`sparsity_lab.masks.attach`, so the result is an ordinary
masked model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import register
from ..train import Trainer
from .base import Regularizer, following_norm, reparametrize, unparametrize

# Louizos et al.'s hard concrete constants: temperature and the stretch interval (gamma, zeta).
BETA, GAMMA, ZETA = 2 / 3, -0.1, 1.1


def hard_concrete(
    log_alpha: torch.Tensor,
    u: torch.Tensor | None = None,
    *,
    beta: float = BETA,
    gamma: float = GAMMA,
    zeta: float = ZETA,
) -> torch.Tensor:
    """Hard concrete gates (Louizos et al. 2018, eq. 10); deterministic when ``u`` is None.

    ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)`` is stretched to
    ``(gamma, zeta)`` and clipped to [0, 1]; without noise the test-time gate
    ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``.
    """
    if u is None:
        s = torch.sigmoid(log_alpha)
    else:
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return torch.clamp(s * (zeta - gamma) + gamma, 0.0, 1.0)


def prob_nonzero(
    log_alpha: torch.Tensor, *, beta: float = BETA, gamma: float = GAMMA, zeta: float = ZETA
) -> torch.Tensor:
    """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))`` (Louizos et al., eq. 12).

    The sum over gates is the expected L0 norm, the differentiable penalty.
    """
    return torch.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


class HardConcreteGate(nn.Module):
    """Parametrization ``w -> w * z`` with hard concrete gates ``z``.

    One gate per weight, or per output unit (``channels=True``).  Training samples fresh
    gates at every forward pass; eval mode uses the deterministic test-time gate.
    """

    def __init__(self, shape: tuple[int, ...], channels: bool, init_drop: float) -> None:
        super().__init__()
        self.channels = channels
        gate_shape = (shape[0],) if channels else shape
        # Louizos et al. initialise log alpha = log(1 - p) - log(p) for a drop rate p.
        init = math.log(1 - init_drop) - math.log(init_drop)
        self.log_alpha = nn.Parameter(torch.full(gate_shape, init))

    def gates(self) -> torch.Tensor:
        """Sampled gates in training mode, test-time gates in eval mode."""
        if self.training:
            u = torch.rand_like(self.log_alpha).clamp(1e-6, 1 - 1e-6)
            return hard_concrete(self.log_alpha, u)
        return hard_concrete(self.log_alpha)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        z = self.gates()
        if self.channels:
            z = z.reshape(-1, *([1] * (w.dim() - 1)))
        return w * z


class _Reparam(Regularizer):
    """A regularizer whose state is one parametrization per target tensor."""

    #: Whether the final weight is the parametrization's test-time value (True) or the
    #: stored weight, masked (False).
    fold = True

    def make(self, name: str, weight: torch.Tensor) -> nn.Module:
        """The parametrization for tensor ``name``."""
        raise NotImplementedError

    def setup(self, model):
        self.params: dict[str, nn.Module] = {}
        for n in self.names_:
            self.params[n] = reparametrize(model, n, self.make(n, self.weight(n).detach()))

    def parameters(self):
        return [p for module in self.params.values() for p in module.parameters()]

    def release(self, model, keep):
        for n in self.names_:
            unparametrize(model, n, fold=self.fold)
        return {}


#: The initial drop rates of Louizos et al.'s code: their MLP and LeNet-5, and their wide
#: ResNet, whose convolutions a BatchNorm follows.
INIT_DROP, INIT_DROP_NORMED = 0.5, 0.3


@register("regularizer", "l0_hard_concrete", section="3.6.1")
class L0HardConcrete(_Reparam):
    """L0 regularisation with hard concrete gates (Louizos et al. 2018).

    Rule: ``w_eff = w * z`` with ``z = clip(sigmoid((log u - log(1-u) + log_alpha) / beta)
    * (zeta - gamma) + gamma, 0, 1)``, ``u ~ U(0, 1)``, ``beta = 2/3``, ``(gamma, zeta) =
    (-0.1, 1.1)``; minimise ``loss + strength * E[L0]`` with the closed form
    ``E[L0] = sum_g |g| * sigmoid(log_alpha_g - beta * log(-gamma / zeta))``.  Threshold: a
    weight (or unit) is pruned when its test-time gate ``clip(sigmoid(log_alpha)
    (zeta - gamma) + gamma, 0, 1)`` is exactly 0, i.e. ``sigmoid(log_alpha) <= -gamma /
    (zeta - gamma)``; surviving weights keep ``w * z``.  Supports: unstructured (a gate per
    weight), channel (a gate per output unit).  A target projects on the expected
    magnitude ``|w| P(z != 0)``, with the strength fixed (no tuning: the gates all start
    alike and, in a short run, close together late, a jump that a feedback rule on the
    strength cannot steer).

    ``init_drop`` is the gates' initial drop rate, ``log alpha = log(1 - p) - log p``; by
    default the authors' (their code): 0.5 (their MLP and LeNet-5) and 0.3 for a layer
    that a BatchNorm follows (their wide ResNet).  On the small ResNet, 0.5 left training
    so noisy that 100 steps did not lift the network off chance level in 1 of 3 seeds.
    """

    name = "l0_hard_concrete"
    supported_patterns = ("unstructured", "channel")
    default_strength = 3e-5
    tunable = False
    reduction = "l1"

    def __init__(self, strength: float | None = None, *, init_drop: float | None = None, **options):
        super().__init__(strength, **options)
        if init_drop is not None and not 0 < init_drop < 1:
            raise ValueError(f"init_drop must be in (0, 1) or None (the default), got {init_drop}")
        self.init_drop = init_drop

    def make(self, name, weight):
        drop = self.init_drop
        if drop is None:
            normed = following_norm(self.model, name.rpartition(".")[0]) is not None
            drop = INIT_DROP_NORMED if normed else INIT_DROP
        return HardConcreteGate(tuple(weight.shape), self.structured, drop)

    def _expand(self, name: str, per_gate: torch.Tensor) -> torch.Tensor:
        shape = tuple(self.weight(name).shape)
        return self.pattern.expand(per_gate, shape) if self.structured else per_gate

    def penalty(self, model):
        total = 0.0
        for n, gate in self.params.items():
            size = self.pattern.group_size(tuple(self.weight(n).shape))
            total = total + size * prob_nonzero(gate.log_alpha).sum()
        return total

    def expected_l0(self) -> float:
        """The expected number of nonzero weights under the current gates."""
        with torch.no_grad():
            return float(self.penalty(self.model))

    def tune_signal(self) -> float:
        """``1 - E[L0] / n``: unlike the count of closed test-time gates, which stays at 0
        and then jumps when the gates, all started alike, close together, it moves
        smoothly with the strength, so the tuner can follow it."""
        total = sum(self.weight(n).numel() for n in self.names_)
        return 1 - self.expected_l0() / total

    def keep(self, model):
        return {
            n: self._expand(n, hard_concrete(g.log_alpha.detach()) > 0)
            for n, g in self.params.items()
        }

    def scores(self, model):
        # the expected magnitude |w| P(z != 0): a gate's probability alone ignores the weight
        return {
            n: self.weight(n).detach().abs() * self._expand(n, prob_nonzero(g.log_alpha.detach()))
            for n, g in self.params.items()
        }


class SoftThreshold(nn.Module):
    """Parametrization ``w -> sign(w) * relu(|w| - sigmoid(s))`` with one learned ``s``."""

    def __init__(self, s_init: float) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.tensor(float(s_init)))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return torch.sign(w) * torch.relu(w.abs() - torch.sigmoid(self.s))


@register("regularizer", "str", section="3.6.1")
class STR(_Reparam):
    """Soft threshold reparameterisation, STR (Kusupati et al. 2020).

    Rule: ``w_eff = sign(w) * relu(|w| - g(s))`` with ``g = sigmoid`` and one learned
    threshold parameter ``s`` per layer (initialised at ``s_init = -6``), trained by the
    loss and pulled up by ``strength * s^2 / 2``; every weight under the threshold is
    exactly zero in every forward pass, so layers learn their own sparsity.  Kusupati et
    al. apply the network's weight decay to ``s``; here the decay on ``s`` is the strength,
    separate from the weights' decay, so that a target can tune it without shrinking the
    weights.  Threshold: ``|w| <= sigmoid(s)`` (``w_eff`` exactly 0); the final weight is
    ``w_eff``.  Supports: unstructured.  A target tunes the strength, then projects on
    ``|w| - sigmoid(s)``.
    """

    name = "str"
    default_strength = 0.3

    def __init__(self, strength: float | None = None, *, s_init: float = -6.0, **options):
        super().__init__(strength, **options)
        self.s_init = float(s_init)

    def make(self, name, weight):
        return SoftThreshold(self.s_init)

    def threshold(self, name: str) -> float:
        """The current threshold ``sigmoid(s)`` of tensor ``name``."""
        return float(torch.sigmoid(self.params[name].s.detach()))

    def penalty(self, model):
        return sum(0.5 * p.s**2 for p in self.params.values())

    def keep(self, model):
        return {n: self.weight(n).detach().abs() > self.threshold(n) for n in self.names_}

    def scores(self, model):
        return {n: self.weight(n).detach().abs() - self.threshold(n) for n in self.names_}


class LearnedThreshold(nn.Module):
    """Parametrization ``w -> w * sigmoid((w^2 - tau) / T)`` with a learned ``tau``.

    ``tau = t * scale`` and ``T = temperature * scale``, with ``scale`` the layer's mean
    ``w^2`` at the start, so that ``t`` is of order one in every layer.
    """

    def __init__(self, scale: float, temperature: float) -> None:
        super().__init__()
        self.t = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.temperature = temperature

    @property
    def tau(self) -> torch.Tensor:
        """The threshold on ``w^2``."""
        return self.t * self.scale

    def soft_mask(self, w: torch.Tensor) -> torch.Tensor:
        """``sigmoid((w^2 - tau) / T)``."""
        return torch.sigmoid((w * w - self.tau) / (self.temperature * self.scale))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.soft_mask(w)


@register("regularizer", "ltp", section="3.6.1")
class LTP(_Reparam):
    """Learned threshold pruning, LTP (Azarian et al. 2020).

    Rule: ``w_eff = w * sigmoid((w^2 - tau_l) / T_l)`` with a learned threshold ``tau_l``
    per layer; minimise ``loss + strength * sum sigmoid((w^2 - tau_l) / T_l)``, the soft
    count of kept weights (a differentiable L0).  ``tau_l`` and ``T_l = temperature *
    mean(w^2)`` are measured in units of the layer's initial mean ``w^2`` (``temperature =
    0.1``).  Threshold: ``w^2 <= tau_l``; the final weight is ``w`` under that hard mask.
    Supports: unstructured.  A target tunes the strength, then projects on
    ``(w^2 - tau_l) / T_l``, the logit of the soft mask.
    """

    name = "ltp"
    default_strength = 1e-3
    fold = False

    def __init__(self, strength: float | None = None, *, temperature: float = 0.1, **options):
        super().__init__(strength, **options)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def make(self, name, weight):
        return LearnedThreshold(float(weight.pow(2).mean()) + 1e-12, self.temperature)

    def penalty(self, model):
        return sum(p.soft_mask(self.weight(n)).sum() for n, p in self.params.items())

    def keep(self, model):
        return {n: self.weight(n).detach() ** 2 > p.tau.detach() for n, p in self.params.items()}

    def scores(self, model):
        return {
            n: (self.weight(n).detach() ** 2 - p.tau.detach()) / (p.temperature * p.scale)
            for n, p in self.params.items()
        }


class SigmoidMask(nn.Module):
    """Parametrization ``w -> w * sigmoid(beta * s)``; ``beta`` is set from outside."""

    def __init__(self, shape: tuple[int, ...], s_init: float) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.full(shape, float(s_init)))
        self.beta = 1.0

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * torch.sigmoid(self.beta * self.s)


@register("regularizer", "continuous_sparsification", section="3.6.1")
class ContinuousSparsification(_Reparam):
    """Continuous sparsification (Savarese et al. 2020).

    Rule: ``w_eff = w * sigmoid(beta * s)`` with a learned ``s`` per weight (``s_init =
    0.5``); minimise ``loss + strength * sum sigmoid(beta * s)``, while ``beta`` grows
    geometrically from 1 to ``beta_final = 200`` over training, so the soft mask becomes
    the step function ``H(s)``.  Threshold: ``s <= 0`` (the limit ``beta -> inf``); the final
    weight is ``w`` under that mask.  Savarese et al. repeat such rounds with weight
    rewinding to find tickets; this is one round.  Supports: unstructured.  A target
    tunes the strength, then projects on ``|w sigmoid(beta s)|``.
    """

    name = "continuous_sparsification"
    default_strength = 3e-5
    fold = False

    def __init__(
        self,
        strength: float | None = None,
        *,
        s_init: float = 0.5,
        beta_final: float = 200.0,
        **options,
    ):
        super().__init__(strength, **options)
        if not beta_final >= 1:
            raise ValueError(f"beta_final must be >= 1, got {beta_final}")
        self.s_init, self.beta_final = float(s_init), float(beta_final)
        self._total = 1

    def make(self, name, weight):
        return SigmoidMask(tuple(weight.shape), self.s_init)

    def on_train_begin(self, trainer: Trainer) -> None:
        super().on_train_begin(trainer)
        self._total = max(1, trainer.total_steps)
        self.set_beta(1.0)

    def set_beta(self, beta: float) -> None:
        """Set the inverse temperature of every mask."""
        for p in self.params.values():
            p.beta = beta

    def after_step(self, trainer):
        self.set_beta(self.beta_final ** (trainer.step / self._total))

    def penalty(self, model):
        return sum(torch.sigmoid(p.beta * p.s).sum() for p in self.params.values())

    def keep(self, model):
        return {n: p.s.detach() > 0 for n, p in self.params.items()}

    def scores(self, model):
        # |w sigmoid(beta s)|, the weight the mask lets through: s alone stops moving once
        # sigmoid(beta s) saturates at 1, so it cannot rank the kept weights
        return {
            n: (self.weight(n).detach() * torch.sigmoid(p.beta * p.s.detach())).abs()
            for n, p in self.params.items()
        }

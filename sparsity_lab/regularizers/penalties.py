"""Penalties on the weights (survey section 3.6): L1, its proximal step, Hoyer, group lasso,
and the L1-type penalties on channel scales (network slimming, polarization).

Each adds ``strength * penalty`` to the loss, or takes the equivalent proximal step after
the optimizer's step, then thresholds.  Proximal steps give exact zeros; the plain
gradient of an L1-type term only makes weights oscillate around zero, so those methods
threshold small magnitudes instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import register
from ..train import Trainer
from .base import OutputGate, Regularizer, attach_gate, detach_gate, following_norm, layer_of


def soft_threshold(x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """``sign(x) * max(|x| - t, 0)``: the proximal map of ``t * |x|`` (ISTA's shrinkage)."""
    return torch.sign(x) * torch.clamp(x.abs() - t, min=0)


def lr_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> float:
    """The learning rate of the parameter group that holds ``param``."""
    for group in optimizer.param_groups:
        if any(p is param for p in group["params"]):
            return group["lr"]
    raise KeyError("the optimizer does not hold this parameter; build it after prepare()")


def _check_threshold(threshold: float) -> float:
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")
    return float(threshold)


class _Penalty(Regularizer):
    """A penalty on the stored weights themselves, thresholded on group norms at the end.

    ``keep``: a group survives when its L2 norm (for single weights, ``|w|``) is above
    ``threshold``.  ``scores``: ``w^2``, summed per group at a projection (so groups rank by
    their norm).
    """

    def __init__(self, strength: float | None = None, *, threshold: float = 1e-3, **options):
        super().__init__(strength, **options)
        self.threshold = _check_threshold(threshold)

    def group_norms(self, w: torch.Tensor) -> torch.Tensor:
        """L2 norm of each group of ``w`` under the pattern, shape (n_groups,)."""
        return self.pattern._grouped(w).norm(dim=1)

    def keep(self, model):
        out = {}
        for n in self.names_:
            w = self.weight(n).detach()
            out[n] = self.pattern.expand(self.group_norms(w) > self.threshold, tuple(w.shape))
        return out

    def scores(self, model):
        return {n: self.weight(n).detach() ** 2 for n in self.names_}


@register("regularizer", "l1", section="3.6.2")
class L1(_Penalty):
    """L1 (lasso) penalty, then a threshold (Tibshirani 1996; for pruning, Han et al. 2015).

    Rule: minimise ``loss + strength * sum |w|`` by (sub)gradient descent, then prune
    ``|w| <= threshold`` (default ``1e-3``).  The subgradient makes small weights oscillate
    around zero rather than reach it, hence the threshold.  Supports: unstructured.
    A target tunes the strength, then projects on ``|w|``.
    """

    name = "l1"
    default_strength = 1e-3

    def penalty(self, model):
        return sum(self.weight(n).abs().sum() for n in self.names_)


@register("regularizer", "prox_l1", section="3.6.2")
class ProxL1(_Penalty):
    """Proximal L1: the ISTA shrinkage step after every optimizer step (Beck & Teboulle 2009;
    pruning with it: e.g. Yang et al. 2019).

    Rule: after the step ``w <- w - lr * grad(loss)``, shrink
    ``w <- sign(w) * max(|w| - lr * strength, 0)``, the proximal map of
    ``lr * strength * |w|``; weights reach exactly zero, so the threshold is ``|w| = 0``.
    With plain SGD this is exactly ISTA on ``loss + strength * sum |w|``; with momentum or
    Adam it is the usual proximal heuristic.  Supports: unstructured.  A target tunes the
    strength, then projects on ``|w|``.
    """

    name = "prox_l1"
    default_strength = 0.5

    def __init__(self, strength: float | None = None, *, threshold: float = 0.0, **options):
        super().__init__(strength, threshold=threshold, **options)

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        for n in self.names_:
            w = self.weight(n)
            w.copy_(soft_threshold(w, lr_of(trainer.optimizer, w) * self.strength))


@register("regularizer", "hoyer", section="3.6.2")
class Hoyer(_Penalty):
    """DeepHoyer (Yang et al. 2020): the Hoyer-Square penalty, then a threshold.

    Rule: per layer ``H_S(w) = (sum |w|)^2 / sum w^2`` (unstructured) or, for groups,
    ``(sum_g ||w_g||)^2 / sum_g ||w_g||^2`` (Group-HS); minimise ``loss + strength * sum_l
    H_S``, then prune groups with norm ``<= threshold`` (default ``1e-3``).  ``H_S`` is scale
    invariant: it changes the *shape* of the weight vector toward few large entries
    without shrinking it, and it equals the number of nonzeros for equal magnitudes, an
    almost-everywhere differentiable stand-in for L0.  Supports: unstructured, channel,
    input.  A target tunes the strength, then projects on the group norms.
    """

    name = "hoyer"
    supported_patterns = ("unstructured", "channel", "input")
    default_strength = 3e-4

    def penalty(self, model):
        total = 0.0
        for n in self.names_:
            norms = self.group_norms(self.weight(n))  # |w| for single weights
            total = total + norms.sum() ** 2 / (norms.pow(2).sum() + 1e-12)
        return total


@register("regularizer", "group_lasso", section="3.6.3")
class GroupLasso(_Penalty):
    """Group lasso, structured sparsity learning (Wen et al. 2016; Yuan & Lin 2006).

    Rule: ``loss + strength * sum_g sqrt(p_g) ||w_g||_2`` over the groups of the pattern
    (output units for ``channel``, input units for ``input``), ``p_g`` the group's size:
    Yuan & Lin's weighting, which sets a group's penalty by its size so that a layer of
    small groups (a first convolution's filters: 25 weights in LeNet-5) is not shrunk away
    by a strength that suits large ones (its fully connected rows: 400).  Without it, at
    its default strength LeNet-5 lost both convolutions (``benchmarks/convergence.py``);
    ``size_weighted=False`` gives the unweighted sum of Wen et al.  By default
    (``proximal=True``) it is applied as the proximal step
    ``w_g <- w_g * max(0, 1 - lr * strength * sqrt(p_g) / ||w_g||)`` after every optimizer
    step, which sets whole groups exactly to zero; the threshold is then ``||w_g|| = 0``.
    ``proximal=False`` adds the subgradient instead (as Wen et al.) and thresholds
    ``||w_g|| <= threshold`` (``1e-3``).  Supports: channel, input; masks are structured and
    feed :func:`sparsity_lab.shrink.shrink`.  A target tunes the strength, then projects on
    the group norms.
    """

    name = "group_lasso"
    supported_patterns = ("channel", "input")
    # about the old unweighted default (3.0) over sqrt(p_g) of LeNet-300-100's rows (17-28)
    default_strength = 0.15

    def __init__(
        self,
        strength: float | None = None,
        *,
        proximal: bool = True,
        threshold: float | None = None,
        size_weighted: bool = True,
        **options,
    ):
        threshold = (0.0 if proximal else 1e-3) if threshold is None else threshold
        if strength is None and not size_weighted:
            strength = 3.0  # the unweighted rule's default, set for LeNet-300-100
        super().__init__(strength, threshold=threshold, **options)
        self.proximal = proximal
        self.size_weighted = bool(size_weighted)

    def group_weight(self, w: torch.Tensor) -> float:
        """The factor of this tensor's group norms in the penalty: ``sqrt(p_g)`` or 1."""
        return math.sqrt(self.pattern.group_size(tuple(w.shape))) if self.size_weighted else 1.0

    def penalty(self, model):
        if self.proximal:
            return None
        return sum(
            self.group_weight(w) * self.group_norms(w).sum()
            for w in (self.weight(n) for n in self.names_)
        )

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        if not self.proximal:
            return
        for n in self.names_:
            w = self.weight(n)
            t = lr_of(trainer.optimizer, w) * self.strength * self.group_weight(w)
            norms = self.group_norms(w)
            factor = torch.clamp(1 - t / norms.clamp_min(1e-12), min=0)
            w.mul_(self.pattern.expand(factor, tuple(w.shape)))


# --- channel scales: network slimming and polarization --------------------------------------


class ChannelScale(OutputGate):
    """A learnable scale per output unit, ``out_c <- gamma_c * out_c`` (initialised at 1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))

    def gate(self, n: int) -> torch.Tensor:
        return self.gamma


class _Scales(Regularizer):
    """Penalties on one scale per output unit: a BatchNorm's gamma where one follows the
    layer (as Liu et al. and Zhuang et al.), else a :class:`ChannelScale` on its output.

    A unit whose scale is pruned outputs a constant (its BatchNorm shift, or its bias times
    a zero scale), so its weight row is masked and :func:`sparsity_lab.shrink.shrink` can
    remove the unit.  Without a BatchNorm the scale and the row are interchangeable
    (``gamma * w = (gamma / c) * (c * w)``), so use weight decay with these methods, as the
    papers do.  A unit whose scale reached exactly zero but that a target's projection
    keeps comes back with its unscaled weights.
    """

    supported_patterns = ("channel",)
    reduction = "max"  # every element of a unit carries the unit's |gamma|
    # All scales start at 1 and shrink alike, so they reach zero together: by the time the
    # threshold rule moves, a feedback rule on the strength has overshot.  A target is met
    # by the projection alone.
    tunable = False

    def __init__(self, strength: float | None = None, *, threshold: float = 0.0, **options):
        super().__init__(strength, **options)
        self.threshold = _check_threshold(threshold)
        self.norms: dict[str, str | None] = {}

    def setup(self, model):
        for n in self.names_:
            path = n.rpartition(".")[0]
            self.norms[n] = following_norm(model, path)
            if self.norms[n] is None:
                layer, _ = layer_of(model, n)
                attach_gate(layer, ChannelScale(self.weight(n).shape[0]))

    def scale(self, name: str) -> nn.Parameter:
        """The scale vector of the units of ``name`` (BatchNorm gamma or the gate's)."""
        norm = self.norms[name]
        if norm is not None:
            return self.model.get_submodule(norm).weight
        return layer_of(self.model, name)[0].sparsity_gate.gamma

    def parameters(self):
        return [self.scale(n) for n in self.names_ if self.norms[n] is None]

    def keep(self, model):
        out = {}
        for n in self.names_:
            alive = self.scale(n).detach().abs() > self.threshold
            out[n] = self.pattern.expand(alive, tuple(self.weight(n).shape))
        return out

    def scores(self, model):
        return {
            n: self.pattern.expand(self.scale(n).detach().abs(), tuple(self.weight(n).shape))
            for n in self.names_
        }

    def release(self, model, keep):
        extra = {}
        for n in self.names_:
            units = keep[n].reshape(keep[n].shape[0], -1).any(dim=1)
            gamma = self.scale(n)
            with torch.no_grad():
                # A unit whose scale reached exactly zero but that a target keeps comes back
                # with its unscaled weights: a zero scale would keep it dead under its mask.
                gamma[units & (gamma == 0)] = 1.0
            if self.norms[n] is None:
                detach_gate(layer_of(model, n)[0], units)
            else:  # the unit's gamma goes with its row
                extra[f"{self.norms[n]}.weight"] = units
        return extra


@register("regularizer", "slimming", section="3.6.2")
class Slimming(_Scales):
    """Network slimming (Liu et al. 2017): L1 on the channel scaling factors.

    Rule: ``loss + strength * sum |gamma|`` over the scale of every output unit (the
    BatchNorm's gamma, or an added scale where no BatchNorm follows), applied as the
    proximal step ``gamma <- sign(gamma) max(|gamma| - lr * strength, 0)`` so that scales
    reach exactly zero; a unit is pruned when ``|gamma| <= threshold`` (default 0).  Liu et
    al. take the subgradient and prune a global percentile of ``|gamma|``; a target here
    projects on ``|gamma|`` with the strength fixed (no tuning: the scales all start at 1
    and shrink together, too suddenly for a feedback rule).
    Supports: channel; the masks feed :func:`sparsity_lab.shrink.shrink`.
    """

    name = "slimming"
    default_strength = 0.03

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        for n in self.names_:
            g = self.scale(n)
            g.copy_(soft_threshold(g, lr_of(trainer.optimizer, g) * self.strength))


@register("regularizer", "polarization", section="3.6.1")
class Polarization(_Scales):
    """Polarization regularizer (Zhuang et al. 2020): push channel scales to 0 or away.

    Rule: ``loss + strength * (t * ||gamma||_1 - ||gamma - mean(gamma)||_1)`` over all the
    scales together, with ``gamma`` clamped to ``[0, upper]`` after each step (``t=1.2``,
    ``upper=1``).  The second term rewards distance from the mean, so scales split into a
    group at exactly 0 (clamped) and a group near the top, instead of all shrinking as
    under L1; units with ``gamma <= threshold`` (default ``0.05``, in the gap between the
    two groups) are pruned.  Supports: channel; masks feed :func:`sparsity_lab.shrink.shrink`.
    A target projects on ``gamma`` with the strength fixed (no tuning, as for slimming).
    """

    name = "polarization"
    default_strength = 0.01

    def __init__(
        self,
        strength: float | None = None,
        *,
        t: float = 1.2,
        upper: float = 1.0,
        threshold: float = 0.05,
        **options,
    ):
        super().__init__(strength, threshold=threshold, **options)
        if t <= 0 or upper <= 0:
            raise ValueError(f"t and upper must be positive, got t={t}, upper={upper}")
        self.t, self.upper = float(t), float(upper)

    def penalty(self, model):
        g = torch.cat([self.scale(n) for n in self.names_])
        return self.t * g.abs().sum() - (g - g.mean()).abs().sum()

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        for n in self.names_:
            self.scale(n).clamp_(0.0, self.upper)

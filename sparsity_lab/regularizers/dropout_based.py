"""Targeted dropout (survey section 3.6): train the network to survive its own pruning."""

from __future__ import annotations

import torch
from torch import nn

from ..patterns import Pattern, count, kth_smallest
from ..registry import register
from .base import Regularizer, reparametrize, unparametrize


class TargetedDropoutMask(nn.Module):
    """Parametrization ``w -> w * (1 - targeted * bernoulli(alpha))`` in training mode.

    ``targeted`` marks the ``round(gamma * n_groups)`` groups of lowest L2 norm (single
    weights: lowest ``|w|``), recomputed at every forward pass; eval mode is the identity.
    """

    def __init__(self, gamma: float, alpha: float, pattern: Pattern) -> None:
        super().__init__()
        self.gamma, self.alpha, self.pattern = gamma, alpha, pattern

    def targeted(self, w: torch.Tensor) -> torch.Tensor:
        """Bool mask of the targeted (lowest-magnitude) groups, in ``w``'s shape.

        A k-th value threshold (``patterns.kth_smallest``) instead of a full sort, since it
        runs at every step; with tied magnitudes at the threshold all the ties are targeted.
        """
        shape = tuple(w.shape)
        norms = self.pattern._grouped(w.detach() ** 2).sum(dim=1)
        k = count(self.gamma, norms.numel())
        if k == 0:
            return torch.zeros(shape, dtype=torch.bool, device=w.device)
        threshold = kth_smallest([norms], k)
        return self.pattern.expand(norms <= threshold, shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training or self.alpha == 0:
            return w
        shape = tuple(w.shape)
        # one coin per group, so that unit dropout drops whole units
        coins = torch.rand(self.pattern.n_groups(shape), device=w.device) < self.alpha
        dropped = self.targeted(w) & self.pattern.expand(coins, shape)
        return w * (~dropped).to(w.dtype)


@register("regularizer", "targeted_dropout", section="3.6")
class TargetedDropout(Regularizer):
    """Targeted dropout (Gomez et al. 2019).

    Rule: at every training step, in each layer, the fraction ``gamma`` of weights (or, with
    ``pattern="channel"``, of output units) with the lowest magnitude is *targeted*, and
    each targeted weight (unit) is dropped with probability ``alpha = strength`` (default
    0.5).  The network learns not to rely on what will be pruned; at the end the targeted
    set is pruned.  ``gamma`` is the target ``sparsity`` (0.5 when none is given), so the
    threshold rule and the target coincide: per layer (budget ``"uniform"``), prune the
    ``gamma`` lowest-magnitude weights; no tuning.  Supports: unstructured (weight
    dropout), channel (unit dropout).
    """

    name = "targeted_dropout"
    supported_patterns = ("unstructured", "channel")
    default_strength = 0.5
    default_budget = "uniform"
    tunable = False

    def __init__(self, strength: float | None = None, **options):
        super().__init__(strength, **options)
        if self.strength > 1:
            raise ValueError(
                f"targeted_dropout's strength is the drop rate alpha in [0, 1], got {self.strength}"
            )
        self.gamma = 0.5 if self.sparsity is None else self.sparsity

    def setup(self, model):
        self.params = {
            n: reparametrize(model, n, TargetedDropoutMask(self.gamma, self.strength, self.pattern))
            for n in self.names_
        }

    def keep(self, model):
        return {n: ~p.targeted(self.weight(n)) for n, p in self.params.items()}

    def scores(self, model):
        return {n: self.weight(n).detach() ** 2 for n in self.names_}

    def release(self, model, keep):
        for n in self.names_:
            unparametrize(model, n, fold=False)
        return {}

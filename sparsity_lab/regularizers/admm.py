"""ADMM pruning (survey section 3.6): sparsity as a hard constraint, split off the loss."""

from __future__ import annotations

import torch

from ..patterns import target_sparsity
from ..registry import register
from ..train import Trainer
from .base import Regularizer, project


@register("regularizer", "admm", section="3.6")
class ADMM(Regularizer):
    """ADMM weight pruning (Zhang et al. 2018).

    Rule: minimise ``loss(W)`` subject to ``W`` in ``S`` (at most the target's number of
    nonzeros, spread by ``budget``) by splitting ``W = Z``: train on ``loss(W) + strength/2
    * ||W - Z + U||^2`` (``strength`` is ADMM's rho) and every ``update_every`` steps set
    ``Z <- proj_S(W + U)`` (the exact top-k by magnitude, i.e. the Euclidean projection
    onto ``S``) and ``U <- U + W - Z``.  At the end the mask is ``proj_S(W)``: ADMM needs
    a target, and it is always met by this projection (no strength tuning).  For
    reporting, the threshold rule counts weights with ``|w| <= threshold`` (``1e-3``), how
    far the weights themselves have gone to zero.  Supports: unstructured, channel, input,
    block, kernel, N:M (the projection keeps the best groups).
    """

    name = "admm"
    supported_patterns = ("unstructured", "channel", "input", "block", "kernel", "nm")
    default_strength = 1e-2
    default_budget = "uniform"
    tunable = False

    def __init__(
        self,
        strength: float | None = None,
        *,
        sparsity: float | None = None,
        update_every: int = 20,
        threshold: float = 1e-3,
        **options,
    ):
        super().__init__(strength, sparsity=sparsity, **options)
        if self.sparsity is None and self.pattern.fixed_sparsity is None:
            raise ValueError(
                "admm prunes to a constraint set: pass sparsity=... (the fraction of zeros)"
            )
        self.sparsity = target_sparsity(self.pattern, self.sparsity)
        if update_every < 1:
            raise ValueError(f"update_every must be a positive number of steps, got {update_every}")
        if self.budget == "learned":
            raise ValueError("admm's constraint set needs a registered budget, e.g. 'uniform'")
        self.update_every, self.threshold = int(update_every), float(threshold)
        self.Z: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}

    def projection(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``proj_S(values)``: the values with all but the largest (groups of) entries zeroed."""
        keep = project(
            {n: v.detach() ** 2 for n, v in values.items()},
            self.sparsity,
            pattern=self.pattern,
            budget=self.budget,
        )
        return {n: v.detach() * keep[n] for n, v in values.items()}

    @torch.no_grad()
    def setup(self, model):
        self.Z = self.projection({n: self.weight(n) for n in self.names_})
        self.U = {n: torch.zeros_like(z) for n, z in self.Z.items()}

    def penalty(self, model):
        return sum(0.5 * (self.weight(n) - self.Z[n] + self.U[n]).pow(2).sum() for n in self.names_)

    @torch.no_grad()
    def after_step(self, trainer: Trainer) -> None:
        if trainer.step % self.update_every:
            return
        w = {n: self.weight(n) for n in self.names_}
        self.Z = self.projection({n: w[n] + self.U[n] for n in self.names_})
        for n in self.names_:
            self.U[n] += w[n] - self.Z[n]

    def keep(self, model):
        out = {}
        for n in self.names_:
            w = self.weight(n).detach()
            alive = self.pattern._grouped(w).norm(dim=1) > self.threshold
            out[n] = self.pattern.expand(alive, tuple(w.shape))
        return out

    def scores(self, model):
        return {n: self.weight(n).detach() ** 2 for n in self.names_}

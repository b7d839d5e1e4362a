"""Supermasks: train the mask, never the weights (survey section 8.3)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch
from torch import nn

from .. import masks
from ..registry import register
from ..train import Callback, Trainer, fit, make_optimizer
from .base import TrainingMethod

INITS = ("signed_constant", "keep")


@register("training", "edge_popup", section="8")
class EdgePopup(TrainingMethod):
    """Edge-popup (Ramanujan et al. 2020), supermasks in random weights (Zhou et al. 2019).

    Rule: the weights stay frozen at their random initialisation; each weight ``w`` has a
    learned score ``s``, and the forward pass uses the weights whose ``|s|`` is in the top
    ``1 - sparsity`` of their layer.  The scores learn by the straight-through estimate
    through the mask of ``|s|``, ``dL/ds = dL/dw_eff * w * sign(s)``, where ``w_eff`` is the
    masked weight (the reference code masks by ``scores.abs()``, so autograd adds the sign).
    ``init``: ``"signed_constant"`` (the paper's best: ``w = ±sqrt(2 / fan_in)`` with random signs)
    or ``"keep"`` (the model's own weights).  ``scale_fan`` (default on) divides the signed
    constant by ``sqrt(k)``, ``k`` the layer's kept fraction, as the paper's scaled
    initialisations and the reference code's ``scale_fan`` do: a unit then sums ``k * fan_in``
    inputs of the right size, as a dense unit sums ``fan_in``.  Without it the signal shrinks
    by ``sqrt(k)`` at every layer: at 90% sparsity, LeNet-5 trained for 5 epochs stayed at
    chance on 2 of 3 seeds in ``benchmarks/convergence.py`` before this option existed.  The
    optimizer trains the scores only; biases and every other parameter stay as they are.
    Supports every pattern (group scores are the pattern's reduction of ``|s|``); uniform
    budget by default.
    """

    name = "edge_popup"
    default_budget = "uniform"

    def __init__(
        self,
        sparsity: float | None,
        *,
        init: str = "signed_constant",
        scale_fan: bool = True,
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.init = init
        self.scale_fan = bool(scale_fan)
        self.scores: dict[str, nn.Parameter] = {}

    def prepare(self, model: nn.Module) -> None:
        """Initialise weights and scores, and attach the first masks."""
        gen = torch.Generator().manual_seed(self.seed)
        self.scores = {}
        for n in self.masked_names(model):
            w = masks.dense_weight(model, n)
            fan_in = w[0].numel() if w.dim() > 1 else w.numel()
            if self.init == "signed_constant":
                signs = torch.randint(0, 2, w.shape, generator=gen).to(w) * 2 - 1
                with torch.no_grad():
                    w.copy_(signs * math.sqrt(2.0 / fan_in))
            # Kaiming-uniform scores, as for a weight of this shape.
            bound = math.sqrt(6.0 / fan_in)
            s = (torch.rand(w.shape, generator=gen) * 2 - 1) * bound
            self.scores[n] = nn.Parameter(s.to(w))
        self.reselect(model)
        if self.init == "signed_constant" and self.scale_fan:
            for n in self.scores:
                kept = float(masks.get_mask(model, n).float().mean())
                if kept > 0:  # an emptied layer has no fan to scale
                    with torch.no_grad():
                        masks.dense_weight(model, n).div_(math.sqrt(kept))

    def reselect(self, model: nn.Module) -> None:
        """Masks = top ``|s|`` per the budget; the weights underneath never change."""
        scores = {n: s.detach().abs() for n, s in self.scores.items()}
        for n, keep in self.select(model, scores).items():
            if masks.is_masked(model, n):
                masks.set_mask(model, n, keep)
            else:
                # dense_grad: the gradient of the masked weight reaches every entry, which
                # the straight-through estimate of the scores needs.
                masks.attach(model, n, keep, dense_grad=True)

    def fit(
        self,
        model: nn.Module,
        train_loader: Any,
        val_loader: Any = None,
        *,
        epochs: int = 10,
        callbacks: Iterable[Callback] = (),
        optimizer: str = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        **fit_options: Any,
    ) -> pd.DataFrame:
        """Train the scores of ``model``'s masks; the weights stay frozen.

        ``optimizer``, ``lr``, ``momentum`` and ``weight_decay`` apply to the scores.
        """
        self.prepare(model)
        weights = {id(masks.dense_weight(model, n)) for n in self.scores}
        # Only the masked weights need a gradient (it becomes the scores'); nothing else.
        frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in weights]
        for p in frozen:
            p.requires_grad_(False)

        def score_optimizer(_params):
            return make_optimizer(
                optimizer,
                list(self.scores.values()),
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
            )

        try:
            return fit(
                model,
                train_loader,
                val_loader,
                epochs=epochs,
                optimizer=score_optimizer,
                callbacks=[self, *callbacks],
                **fit_options,
            )
        finally:
            for p in frozen:
                p.requires_grad_(True)

    def on_after_backward(self, trainer: Trainer) -> None:
        for n, s in self.scores.items():
            w = masks.dense_weight(trainer.model, n)
            if w.grad is None:
                continue
            # straight-through through the mask of |s|: dL/ds = dL/dw_eff * w * sign(s).
            # Without the sign, a negative score moves the wrong way (its |s| shrinks when
            # the weight should be kept), and half the scores start negative.
            s.grad = w.grad * w.detach() * s.detach().sign()
            w.grad = None  # no optimizer holds w, and it must not accumulate

    def on_step_end(self, trainer: Trainer) -> None:
        self.reselect(trainer.model)

    def on_epoch_end(self, trainer: Trainer) -> None:
        trainer.history[-1]["sparsity"] = self.sparsity

    def step_flops(self, trainer: Trainer, sparse: float, dense: float) -> float:
        """The scores need a dense weight gradient: ``2 * sparse + dense``."""
        return 2 * sparse + dense

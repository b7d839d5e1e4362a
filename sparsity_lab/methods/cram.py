"""CrAM: train a dense model that survives one-shot compression (Peste et al. 2023).

The idea follows sharpness-aware minimisation: instead of the gradient at the current
weights, each step uses the gradient at a nearby point where the loss is high *and* the
model is compressed.  A model trained this way can be pruned in one shot, with no
fine-tuning, to any of the sparsities it saw; re-estimating the BatchNorm statistics on a
few calibration batches (:func:`reestimate_batchnorm`) repairs what pruning shifted.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .. import masks
from ..patterns import check_sparsity
from ..pruning import prune
from ..registry import register
from ..train import Trainer
from .base import TrainingMethod

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@register("training", "cram", section="2.4.2")
class CrAM(TrainingMethod):
    """Compression-aware minimiser, CrAM and CrAM+ (Peste et al. 2023).

    Rule: ``theta <- theta - lr * grad f(C_s(theta + rho * grad f(theta)))``: ascend by
    ``rho`` along the gradient, compress the result with ``C_s`` (keep the top ``|w|`` at
    sparsity ``s`` per the budget, or the N:M projection), and descend from ``theta`` with
    the gradient taken there.  That gradient is masked to the weights the compression kept
    (``sparse_grad=True``, the derivative of ``C_s`` and the default of the authors' code);
    ``sparse_grad=False`` passes it straight through to every weight.  ``s`` is drawn
    uniformly from ``sparsities`` at every step (CrAM-Multi; default
    :func:`multi_sparsities`, 30%, 40%, ... up to the target; ``[s]`` is single-sparsity
    CrAM).  ``plus=True`` is CrAM+, which adds the dense gradient:
    ``grad f(theta~) + grad f(theta)``.  The model stays dense; BatchNorm statistics are
    not updated by the extra pass.  Supports unstructured, N:M and every budget.

    Prune afterwards with :func:`one_shot` (magnitude pruning, then BatchNorm re-estimation).
    One global threshold at 90% empties a layer of the small ResNet at initialisation; in
    the committed CrAM table (ten seeds) CrAM's dense model then failed on 9 of 10 seeds
    with the straight-through gradient and on none with the masked one, which trained as
    well as with ERK (``benchmarks/configs/training-cram-resnet_small-digits.yaml``, whose
    ablation arms measure it; with ERK the straight-through gradient's one-shot accuracy
    was 1.7 points higher at 90%).

    Both defaults were chosen on runs of ``benchmarks/convergence.py``'s protocol (90%,
    three seeds, LeNet-300-100, LeNet-5, the MNIST-1D CNN and the small ResNet):
    single-sparsity CrAM stayed near its initial loss on LeNet-5 (2 of 3 seeds with the
    gradient passed straight through, 3 of 3 with the sparse one) and ended at 15-30% on
    the small ResNet with the sparse gradient; with the straight-through gradient the
    CNN's training loss (its recipe's Adam) rose above the prior's on every seed.  The
    defaults trained on every seed of every bundled model (``convergence.json``).
    """

    name = "cram"
    supported_patterns = ("unstructured", "nm")
    ends_dense = True

    def __init__(
        self,
        sparsity: float | None,
        *,
        sparsities: Sequence[float] | None = None,
        rho: float = 0.05,
        plus: bool = False,
        sparse_grad: bool = True,
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        if self.pattern.fixed_sparsity is not None:
            sparsities = [self.sparsity]
        if sparsities is None:
            sparsities = multi_sparsities(self.sparsity)
        self.sparsities = [float(s) for s in sparsities]
        if not self.sparsities:
            raise ValueError("sparsities must list at least one sparsity, e.g. [0.5, 0.7, 0.9]")
        for s in self.sparsities:
            check_sparsity(s)
        if rho < 0:
            raise ValueError(f"rho must be >= 0 (the ascent radius), got {rho}")
        self.rho, self.plus, self.sparse_grad = rho, bool(plus), bool(sparse_grad)

    def on_train_begin(self, trainer: Trainer) -> None:
        self._random = random.Random(self.seed)
        self.drawn: list[float] = []

    def compress(self, model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
        """``C_s`` in place: zero the lowest ``|w|`` of the target tensors; returns the
        keep-masks by tensor name."""
        names = self.names(model)
        scores = {n: masks.dense_weight(model, n).detach().abs() for n in names}
        kept = self.select(model, scores, sparsity)
        with torch.no_grad():
            for n, keep in kept.items():
                masks.dense_weight(model, n).mul_(keep)
        return kept

    def on_after_backward(self, trainer: Trainer) -> None:
        model = trainer.model
        params = [p for p in model.parameters() if p.grad is not None]
        saved = [p.detach().clone() for p in params]
        dense_grads = [p.grad.detach().clone() for p in params]
        sparsity = self._random.choice(self.sparsities)
        self.drawn.append(sparsity)
        with torch.no_grad():
            for p, g in zip(params, dense_grads, strict=True):
                p.add_(g, alpha=self.rho)
        kept = self.compress(model, sparsity)
        buffers = _batchnorm_buffers(model)
        for p in params:
            p.grad = None
        inputs, targets = trainer.batch
        trainer.loss_fn(model(inputs), targets).backward()
        _restore(buffers)
        with torch.no_grad():
            if self.sparse_grad:
                for n, keep in kept.items():
                    weight = masks.dense_weight(model, n)
                    if weight.grad is not None:
                        weight.grad.mul_(keep)
            for p, theta, g in zip(params, saved, dense_grads, strict=True):
                p.copy_(theta)
                if p.grad is None:  # a parameter the compressed point does not reach
                    p.grad = torch.zeros_like(p)
                if self.plus:
                    p.grad.add_(g)

    def step_flops(self, trainer: Trainer, sparse: float, dense: float) -> float:
        """Two passes: a dense one, and one at the compressed point with a dense weight
        gradient (``2 * s_forward + dense``, counted at the mean drawn density)."""
        density = 1 - sum(self.sparsities) / len(self.sparsities)
        return 3 * dense + 2 * density * dense + dense


@register("training", "cram_plus", section="2.4.2")
class CrAMPlus(CrAM):
    """CrAM+ (Peste et al. 2023): CrAM's step with the dense gradient added.

    Rule: ``theta <- theta - lr * (grad f(C_s(theta + rho * grad f(theta))) + grad f(theta))``.
    The extra term optimises the dense model as well as its compressed neighbours, so the
    dense model keeps its accuracy while one-shot pruning to the sampled sparsities stays
    cheap.  Costs nothing over CrAM: the dense gradient is already computed for the ascent.
    Same options as :class:`CrAM` (``sparsities``, ``rho``, budget, pattern); supports
    unstructured and N:M.
    """

    name = "cram_plus"

    def __init__(self, sparsity: float | None, **options) -> None:
        if "plus" in options:
            raise ValueError("cram_plus always adds the dense gradient; use 'cram' for plus=False")
        super().__init__(sparsity, plus=True, **options)


def multi_sparsities(target: float) -> list[float]:
    """CrAM-Multi's default draw for a ``target``: 30%, 40%, ... below it, and the target.

    The grid of the authors' CIFAR-10 runs (30-90%).  At a single high sparsity the
    compressed point of an untrained network without normalisation carries almost no
    signal: plain CrAM at 90% alone stayed at its initial loss on LeNet-5, where drawing
    from this grid trained on every seed (``benchmarks/convergence.py``).
    """
    grid = [round(0.1 * k, 1) for k in range(3, 10)]
    return [s for s in grid if s < target - 1e-9] + [target]


def _batchnorm_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (buf, buf.detach().clone())
        for m in model.modules()
        if isinstance(m, _BATCHNORM)
        for buf in m.buffers()
    ]


def _restore(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    with torch.no_grad():
        for buf, value in saved:
            buf.copy_(value)


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, data: Iterable, max_batches: int | None = None) -> int:
    """Recompute every BatchNorm's running mean and variance on ``data``; returns examples seen.

    Statistics are reset and averaged over all batches (cumulative, ``momentum=None``); the
    rest of the model runs in eval mode (no dropout) and every module's mode and momentum
    are restored afterwards.  A model without BatchNorm is left as it is.
    """
    norms = [m for m in model.modules() if isinstance(m, _BATCHNORM) and m.track_running_stats]
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        if isinstance(data, tuple) and len(data) == 2 and torch.is_tensor(data[0]):
            data = [data]
        for i, (x, _) in enumerate(data):
            if max_batches is not None and i >= max_batches:
                break
            model(x)
            seen += len(x)
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, training in modes:
            m.training = training
    if seen == 0:
        raise ValueError("no calibration batches: pass data with at least one (inputs, targets)")
    return seen


def one_shot(
    model: nn.Module,
    sparsity: float | None,
    *,
    data: Iterable | None = None,
    max_batches: int | None = None,
    **prune_options: Any,
) -> nn.Module:
    """Prune ``model`` once by magnitude (no fine-tuning), then re-estimate BatchNorm.

    ``prune_options`` go to :func:`sparsity_lab.prune` (pattern, budget, ...); ``data`` are
    the calibration batches (needed only when the model has BatchNorm).
    """
    prune(model, "magnitude", sparsity, **prune_options)
    has_bn = any(isinstance(m, _BATCHNORM) for m in model.modules())
    if has_bn:
        if data is None:
            raise ValueError("the model has BatchNorm: pass data=... to re-estimate its statistics")
        reestimate_batchnorm(model, data, max_batches)
    return model

"""Pruning at initialisation: criteria meant to run before training (survey section 2.4.3).

``snip`` (in :mod:`.first_order`) scores weights once from one batch.  Here: ``grasp``
keeps the gradient flowing, ``synflow`` needs no data and prunes iteratively so that no
layer collapses, and ``force`` is SNIP repeated on the network as pruned so far, letting
removed weights come back.  All of them also run on trained networks.

Frankle et al. (2021) found that shuffling such masks within each layer before training
changes little: what these criteria choose well is the sparsity of each layer
(:func:`shuffle_masks`).  Networks without normalisation layers need their initial weights
rescaled to the sparse fan-in of each unit (:func:`rescale_fan_in`) for that comparison to
be fair: otherwise a random mask fails because the signal fades, not because of its choice.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import replace

import torch
from torch.nn.utils import parametrize

from .. import masks
from ..registry import register
from .base import Criterion, current_sparsity, exponential_steps, unfrozen
from .first_order import weight_gradients
from .units import evaluating


@register("criterion", "grasp", section="2.4.3")
class GraSP(Criterion):
    """Gradient signal preservation, GraSP (Wang et al. 2020).

    Removing weights should not shrink the gradient norm, so that the pruned network still
    trains.  Wang et al. remove the weights with the largest ``-w * (H g)``: the keep score
    here is ``w * (H g)``, with ``g`` the gradient of the loss on ``batches`` batches and
    ``H g`` a Hessian-vector product (restricted to the pruned tensors).  Supports every
    pattern and budget; use ``reduction="sum"`` for groups, as scores are signed.
    """

    name = "grasp"
    needs_data = True

    def __init__(self, batches: int | None = 1) -> None:
        self.batches = batches

    def scores(self, model, names, context):
        with evaluating(model):
            batches = list(context.batches(self.batches))
            g = {n: 0.0 for n in names}
            for batch in batches:
                grads = weight_gradients(model, names, batch, context.loss_fn)
                g = {n: g[n] + grads[n] / len(batches) for n in names}
            hg = {n: 0.0 for n in names}
            for x, y in batches:
                with parametrize.cached():
                    weights = [masks.weight(model, n) for n in names]
                    loss = context.loss_fn(model(x), y)
                    first = torch.autograd.grad(loss, weights, create_graph=True)
                    dot = sum((a * g[n]).sum() for a, n in zip(first, names, strict=True))
                    second = torch.autograd.grad(dot, weights)
                hg = {
                    n: hg[n] + s.detach() / len(batches) for n, s in zip(names, second, strict=True)
                }
        return {n: masks.weight(model, n).detach() * hg[n] for n in names}


@register("criterion", "synflow", section="2.4.3")
class SynFlow(Criterion):
    """Iterative synaptic flow pruning, SynFlow (Tanaka et al. 2020), data-free.

    With every parameter replaced by its absolute value and an input of ones, the network's
    summed output is the synaptic flow ``R = 1^T (prod_l |W_l|) 1``; the score of a weight
    is ``|dR/dw * w|``.  Pruning in ``iterations`` steps of exponentially growing sparsity,
    re-scoring in between, keeps the flow spread over every layer, so even extreme
    sparsities leave no layer empty (no layer collapse).  Scores never read ``data``;
    the input shape comes from ``model.input_shape`` or ``input_shape``.  Supports every
    pattern and budget (global in the paper).
    """

    name = "synflow"

    def __init__(self, iterations: int = 100, input_shape: tuple[int, ...] | None = None):
        self.iterations, self.input_shape = iterations, input_shape
        self.steps = iterations  # Criterion.prune takes the exponential steps

    def scores(self, model, names, context):
        shape = self.input_shape or getattr(model, "input_shape", None)
        if shape is None:
            raise ValueError(
                "synflow feeds an input of ones: give the model an input_shape attribute "
                "or pass input_shape=(...) (the shape of one example)"
            )
        # A copy with |theta| everywhere; its masks stay, so masked weights stay 0.  (Removing
        # the masks of a deep copy would break the original: they share parametrize's class.)
        net = copy.deepcopy(model).double()
        with torch.no_grad():
            for t in itertools.chain(net.parameters(), net.buffers()):
                if t.is_floating_point():
                    t.abs_()
        with evaluating(net), parametrize.cached():
            weights = [masks.weight(net, n) for n in names]
            flow = net(torch.ones(1, *shape, dtype=torch.float64)).sum()
            grads = torch.autograd.grad(flow, weights)
        return {n: (g * w).detach().abs() for n, g, w in zip(names, grads, weights, strict=True)}


@register("criterion", "force", section="2.4.3")
class FORCE(Criterion):
    """FORCE, foresight connection sensitivity (de Jorge et al. 2021).

    SNIP's score ``|w * dL/dw|`` taken on the network *as pruned so far*: the gradient is
    computed with the current mask, for every weight (pruned ones included), and the mask is
    chosen afresh from all weights at each of ``iterations`` steps of exponentially growing
    sparsity, so a weight removed early can come back.  Each step reads ``batches``
    batches, cycling through ``data``.  Supports every pattern and budget.
    """

    name = "force"
    needs_data = True

    def __init__(self, iterations: int = 10, batches: int = 1) -> None:
        self.iterations, self.batches = iterations, batches

    def scores(self, model, names, context):
        total, count = {n: 0.0 for n in names}, 0
        with evaluating(model):
            for batch in context.batches(self.batches):
                grads = weight_gradients(model, names, batch, context.loss_fn)
                total = {n: total[n] + grads[n] for n in names}
                count += 1
        # the stored weight, not the masked one: a pruned weight keeps its value to return
        return {n: (total[n] / count * masks.dense_weight(model, n).detach()).abs() for n in names}

    def choose(self, model, names, request, context):
        """Re-choose the masks from every weight at each step, on the network as pruned."""
        pruned = [n for n in names if n not in request.dense]
        start = {}
        for n in pruned:
            prior = request.priors[n]
            start[n] = torch.ones_like(masks.weight(model, n)) if prior is None else prior.clone()
            # straight-through masks keep the values of pruned weights, so they can return
            masks.attach(model, n, start[n], dense_grad=True)
        batches = itertools.cycle(list(context.batches()))
        steps = [request.sparsity]
        if request.pattern.fixed_sparsity is None:
            already = current_sparsity(model, names)
            steps = exponential_steps(request.sparsity, self.iterations, already)
        for step in steps:
            data = [next(batches) for _ in range(self.batches)]
            with torch.enable_grad(), unfrozen(model, names):
                scores = self.scores(model, names, replace(context, data=data))
            for n in pruned:  # every weight competes again, from the masks we started with
                masks.set_mask(model, n, start[n])
            new_masks = replace(request, sparsity=step).select({n: scores[n] for n in names})
            for n, keep in new_masks.items():
                masks.attach(model, n, keep, dense_grad=True)
        return new_masks  # prune() attaches them in the caller's gradient mode

    def __repr__(self) -> str:
        return f"FORCE(iterations={self.iterations})"


def shuffle_masks(found: Mapping[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Each mask of ``found`` (e.g. ``masks.masks(model)``) permuted at random in its layer.

    Each layer keeps its number of weights, only their positions change: the sanity check
    of Frankle et al. (2021).  If a pruning-at-initialisation method trains as well after
    this, what it found is a good sparsity per layer, not which weights matter.  Attach
    the result to a fresh copy of the *initial* model: a pruned model's stored weights are
    zero where it was pruned.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in found.items():
        order = torch.randperm(mask.numel(), generator=gen).to(mask.device)
        out[name] = mask.flatten()[order].reshape(mask.shape).clone()
    return out


@torch.no_grad()
def rescale_fan_in(
    model: torch.nn.Module, names: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """Scale the kept weights of each unit by ``sqrt(fan_in / kept)``, in place; returns the
    factors per tensor (a unit with no kept input is left alone: factor 1).

    A standard initialisation draws weights of variance proportional to ``1 / fan_in``, so
    that a unit's pre-activation has the variance of its inputs.  A mask that keeps
    ``kept`` of the ``fan_in`` inputs of a unit divides that variance by ``fan_in / kept``;
    through a few layers without normalisation the signal fades, and a sparse network
    trains badly whatever weights were chosen.  Evci et al. (2022) correct the
    initialisation of each unit for its own sparse fan-in, which this does.  Call it on a
    freshly masked network, before training (default: every masked weight).
    """
    found = masks.masks(model)
    factors = {}
    with torch.no_grad():
        for name in found if names is None else names:
            mask = found[name]
            rows = mask.reshape(mask.shape[0], -1)
            kept = rows.sum(dim=1)
            factor = torch.where(kept > 0, (rows.shape[1] / kept.clamp_min(1)).sqrt(), 1.0)
            weight = masks.dense_weight(model, name)
            factor = factor.to(weight.dtype)
            weight.mul_(factor.reshape(-1, *([1] * (weight.dim() - 1))))
            factors[name] = factor
    return factors

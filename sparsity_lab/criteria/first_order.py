"""First-order criteria: scores from gradients (survey section 3.4).

One-shot criteria (``snip``, ``taylor_weight``, ``taylor``, ``skeletonization``) read
``data`` in eval mode; ``batches`` limits how many batches they read.  Training-time
criteria (``karnin``, ``movement``, ``soft_movement``) accumulate their scores while the
model trains: add their tracker to the training loop's callbacks and hand it to ``prune``,
which puts it in the criterion's :class:`~sparsity_lab.criteria.Context`, as it does data::

    tracker = MovementScores()
    fit(model, train, epochs=3, callbacks=[tracker])
    sl.prune(model, "movement", 0.9, tracker=tracker)

Gradients are taken with respect to the weights the model computes with (masked weights
included), through :func:`torch.nn.utils.parametrize.cached`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import masks
from ..callbacks import Callback
from ..registry import register
from ..targets import default_targets

if TYPE_CHECKING:
    from ..train import Trainer
from .base import Context, Criterion
from .units import GroupCriterion, evaluating, forward_hooks, module_of, unit_gate


def weight_gradients(
    model: nn.Module, names: list[str], batch: tuple[torch.Tensor, torch.Tensor], loss_fn
) -> dict[str, torch.Tensor]:
    """``d loss / d w`` on one batch for each named weight, as the model uses it (masked).

    For a masked weight this is the gradient with respect to ``original * mask``, so it is
    dense: it says how the loss would change if a pruned weight came back.
    """
    x, y = batch
    with parametrize.cached():  # one tensor per weight, shared by every use in the forward
        weights = [masks.weight(model, n) for n in names]
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, weights, allow_unused=True)
    return {
        n: (torch.zeros_like(w) if g is None else g.detach())
        for n, w, g in zip(names, weights, grads, strict=True)
    }


class _GradientCriterion(Criterion):
    needs_data = True

    def __init__(self, batches: int | None = None) -> None:
        self.batches = batches

    def _gradients(self, model, names, context) -> Iterable[dict[str, torch.Tensor]]:
        with evaluating(model):
            for batch in context.batches(self.batches):
                yield weight_gradients(model, names, batch, context.loss_fn)


@register("criterion", "snip", section="2.4.3")
class SNIP(_GradientCriterion):
    """SNIP, single-shot network pruning by connection sensitivity (Lee et al. 2019).

    Score: ``|g * w|``, with ``g`` the gradient of the loss on one batch (``batches=1``, the
    paper's setting; more batches average the gradient).  It is ``|dL/dc|`` for a gate
    ``c = 1`` multiplying the weight, the first-order change of the loss when the weight
    is removed.  Meant for initialisation, works at any time.  Supports every pattern and
    budget (group score: the pattern's ``reduction`` of the element scores).
    """

    name = "snip"

    def __init__(self, batches: int | None = 1) -> None:
        super().__init__(batches)

    def scores(self, model, names, context):
        total, count = {n: 0.0 for n in names}, 0
        for grads in self._gradients(model, names, context):
            total = {n: total[n] + grads[n] for n in names}
            count += 1
        return {n: (total[n] / count * masks.weight(model, n).detach()).abs() for n in names}


@register("criterion", "taylor_weight", section="3.4")
class TaylorWeight(_GradientCriterion):
    """First-order Taylor importance of weights (Molchanov et al. 2019).

    Score of a weight: ``(g * w)^2``, the squared first-order change of the loss when it is
    removed, averaged over batches; a group's importance is the sum over its weights (use
    ``reduction="l1"`` or ``"sum"``, the default).  Supports every pattern and budget.
    """

    name = "taylor_weight"

    def scores(self, model, names, context):
        total, count = {n: 0.0 for n in names}, 0
        for grads in self._gradients(model, names, context):
            total = {
                n: total[n] + (grads[n] * masks.weight(model, n).detach()).pow(2) for n in names
            }
            count += 1
        return {n: total[n] / count for n in names}


def gate_gradients(
    model: nn.Module, names: list[str], context: Context, batches: int | None, per_example: bool
):
    """Yield, per batch, ``dL/d gate`` for a gate of 1 on every output unit of each layer.

    The gate multiplies the unit's output (all positions of a feature map); its gradient is
    ``sum_p a_p dL/da_p``.  ``per_example``: one gate per (example, unit), shape ``(N, C)``;
    otherwise one per unit, shape ``(C,)``.
    """
    modules = {n: module_of(model, n) for n in names}
    with evaluating(model):
        for x, y in context.batches(batches):
            gates: dict[str, torch.Tensor] = {}

            def hook(key, inputs, output, gates=gates):
                shape = output.shape[:2] if per_example else output.shape[1:2]
                gates[key] = torch.ones(shape, dtype=output.dtype, requires_grad=True)
                g = gates[key] if per_example else gates[key].expand(output.shape[:2])
                return unit_gate(output, g)

            with forward_hooks(modules, hook):
                loss = context.loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, [gates[n] for n in names])
            yield {n: g.detach().double() for n, g in zip(names, grads, strict=True)}


@register("criterion", "skeletonization", section="3.4")
class Skeletonization(GroupCriterion):
    """Skeletonization (Mozer & Smolensky 1988): relevance of a unit by a gate.

    Each unit's output is multiplied by a gate ``alpha_j = 1``; its relevance, the increase
    of the loss if the unit were removed, is estimated to first order as ``rho_j = -dL /
    d alpha_j`` (summed over batches).  Units of lowest relevance go first.  The gate acts
    on the layer's output, before the activation function, which for ReLU units is the same
    as gating their activation (``relu(alpha z) = alpha relu(z)``).  The loss is the
    criterion's ``loss_fn`` (cross-entropy by default; Mozer & Smolensky used a linear
    error).  Pattern: ``channel``.
    """

    name = "skeletonization"
    needs_data = True
    supported_patterns = ("channel",)

    def __init__(self, batches: int | None = None) -> None:
        self.batches = batches

    def group_scores(self, model, names, pattern, context):
        total = {n: 0.0 for n in names}
        for grads in gate_gradients(model, names, context, self.batches, per_example=False):
            total = {n: total[n] - grads[n] for n in names}
        return total


@register("criterion", "taylor", section="3.4")
class Taylor(GroupCriterion):
    """First-order Taylor expansion on feature maps (Molchanov et al. 2017).

    For each example, the change of the loss when feature map ``j`` is set to zero is, to
    first order, ``|(1/M) sum_m a_m dL/da_m|`` over its ``M`` positions; the score is its
    mean over the examples.  ``normalize`` (the paper's layer-wise L2 normalisation) divides
    each layer's scores by their L2 norm so that layers compare under a global budget.
    The per-example gradient assumes a loss averaged over the batch.  Pattern: ``channel``.
    """

    name = "taylor"
    needs_data = True
    supported_patterns = ("channel",)

    def __init__(self, batches: int | None = None, normalize: bool = True) -> None:
        self.batches, self.normalize = batches, normalize

    def group_scores(self, model, names, pattern, context):
        positions = {}
        modules = {n: module_of(model, n) for n in names}

        def hook(key, inputs, output):
            positions[key] = math.prod(output.shape[2:])

        total, examples = {n: 0.0 for n in names}, 0
        with forward_hooks(modules, hook):
            for grads in gate_gradients(model, names, context, self.batches, per_example=True):
                size = next(iter(grads.values())).shape[0]
                # dL/dgate[n, j] = (1/N) dl_n/dgate[n, j] for a loss averaged over the batch
                total = {n: total[n] + (grads[n] * size).abs().sum(dim=0) for n in names}
                examples += size
        out = {}
        for n in names:
            theta = total[n] / examples / positions[n]
            if self.normalize:
                theta = theta / theta.norm().clamp_min(1e-300)
            out[n] = theta
        return out


# --- scores accumulated during training --------------------------------------------------


class ScoreTracker(Callback):
    """Base of the callbacks that accumulate a score per weight during training.

    ``names``: the weights to track (default: every Linear/Conv weight).  ``scores`` maps
    each name to a float64 tensor of the weight's shape; training again continues the sums.
    """

    def __init__(self, names: Iterable[str] | None = None) -> None:
        self.names = None if names is None else list(names)
        self.scores: dict[str, torch.Tensor] = {}

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.names is None:
            self.names = default_targets(trainer.model)
        for n in self.names:
            if n not in self.scores:
                w = masks.weight(trainer.model, n)
                self.scores[n] = torch.zeros(w.shape, dtype=torch.float64, device=w.device)

    #: The attributes that hold what a training accumulated, each a name -> tensor dict.
    state_fields: tuple[str, ...] = ("scores",)

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """What the tracker accumulated, as plain tensors (kept beside a dense checkpoint)."""
        return {
            f: {n: t.detach().clone() for n, t in getattr(self, f).items()}
            for f in self.state_fields
        }

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Take the sums of :meth:`state_dict`, as if this tracker had watched that training."""
        missing = set(self.state_fields) - set(state)
        if missing:
            raise ValueError(f"{type(self).__name__} state lacks {sorted(missing)}")
        for f in self.state_fields:
            setattr(self, f, {n: t.clone() for n, t in state[f].items()})
        self.names = list(self.scores)

    @staticmethod
    def grad(model: nn.Module, name: str) -> torch.Tensor | None:
        """The gradient that reached the stored weight in this step (None if none)."""
        g = masks.dense_weight(model, name).grad
        return None if g is None else g.detach().double()


class MovementScores(ScoreTracker):
    """Accumulates movement scores ``S -= g * w`` after every backward pass (Sanh et al. 2020).

    ``S`` grows for weights that move away from zero and shrinks for those pulled towards
    it.  Read by the ``movement`` criterion.
    """

    def on_after_backward(self, trainer: Trainer) -> None:
        for n in self.names:
            g = self.grad(trainer.model, n)
            if g is not None:
                self.scores[n] -= g * masks.weight(trainer.model, n).detach().double()


class KarninScores(ScoreTracker):
    """Accumulates Karnin's (1990) sensitivity sums during training.

    After each step it adds ``-g * dw`` (the gradient times the update actually taken), and
    it keeps the initial weights; the ``karnin`` criterion turns them into sensitivities.
    With plain SGD ``-g * dw = dw^2 / lr``, Karnin's sum.
    """

    state_fields = ("scores", "initial")

    def on_train_begin(self, trainer: Trainer) -> None:
        super().on_train_begin(trainer)
        if not hasattr(self, "initial"):
            self.initial = {n: self._w(trainer.model, n).clone() for n in self.names}

    def _w(self, model: nn.Module, name: str) -> torch.Tensor:
        return masks.weight(model, name).detach().double()

    def on_after_backward(self, trainer: Trainer) -> None:
        self._before = {
            n: (self.grad(trainer.model, n), self._w(trainer.model, n).clone()) for n in self.names
        }

    def on_step_end(self, trainer: Trainer) -> None:
        for n, (g, w) in self._before.items():
            if g is not None:
                self.scores[n] -= g * (self._w(trainer.model, n) - w)


class SoftMovementScores(ScoreTracker):
    """Learns soft movement scores during training (Sanh et al. 2020).

    The mask ``S > tau`` is learnt with a straight-through estimator, so ``dL/dS = g * w``,
    plus a penalty ``lam * sum sigmoid(S)`` that pushes scores down.  Each step:
    ``S -= lr * (g * w + lam * sigmoid'(S))``, with the optimizer's learning rate unless
    ``lr`` is given.  Read by the ``soft_movement`` criterion.
    """

    def __init__(
        self, names: Iterable[str] | None = None, lam: float = 0.0, lr: float | None = None
    ) -> None:
        super().__init__(names)
        if lam < 0:
            raise ValueError(f"lam is a penalty weight and must be >= 0, got {lam}")
        self.lam, self.lr = lam, lr

    def on_after_backward(self, trainer: Trainer) -> None:
        lr = trainer.optimizer.param_groups[0]["lr"] if self.lr is None else self.lr
        for n in self.names:
            g = self.grad(trainer.model, n)
            s = self.scores[n]
            step = self.lam * torch.sigmoid(s) * (1 - torch.sigmoid(s))
            if g is not None:
                step = step + g * masks.weight(trainer.model, n).detach().double()
            s -= lr * step


class _TrackedCriterion(Criterion):
    """A criterion that ranks scores a :class:`ScoreTracker` accumulated (``context.tracker``)."""

    tracker_type: type[ScoreTracker] = ScoreTracker

    def _tracker(self, context: Context) -> ScoreTracker:
        tracker = context.tracker
        if not isinstance(tracker, self.tracker_type):
            raise ValueError(
                f"{self.name} accumulates its scores during training: train with "
                f"{self.tracker_type.__name__}() among the callbacks, then pass it as "
                f"tracker=..., got {tracker!r}"
            )
        return tracker

    def _tracked(self, names: list[str], context: Context) -> dict[str, torch.Tensor]:
        tracker = self._tracker(context)
        missing = [n for n in names if n not in tracker.scores]
        if missing:
            raise ValueError(
                f"the tracker has no scores for {missing}; train with it first, tracking "
                f"these weights ({type(tracker).__name__}(names=...))"
            )
        return {n: tracker.scores[n] for n in names}


@register("criterion", "movement", section="3.4")
class Movement(_TrackedCriterion):
    """Movement pruning (Sanh et al. 2020), hard top-k.

    Score: ``S = -sum_t g_t * w_t``, accumulated over training steps by
    :class:`MovementScores` (pass ``tracker=``).  Weights moving away from zero are kept,
    whatever their magnitude.  Supports every pattern and budget (group score: the
    pattern's ``reduction``, e.g. ``reduction="sum"``).
    """

    name = "movement"
    tracker_type = MovementScores

    def scores(self, model, names, context):
        return self._tracked(names, context)


@register("criterion", "soft_movement", section="3.4")
class SoftMovement(_TrackedCriterion):
    """Soft movement pruning (Sanh et al. 2020): keep the weights whose learnt score
    ``S > threshold``.

    ``S`` is learnt by :class:`SoftMovementScores` (pass ``tracker=``).  With ``threshold``
    the sparsity is whatever the scores give (pass ``sparsity=None``; ``unstructured``
    pattern); without it the top-k of ``S`` is kept at the requested sparsity, with any
    pattern and budget.
    """

    name = "soft_movement"
    tracker_type = SoftMovementScores

    def __init__(self, threshold: float | None = None):
        self.threshold = threshold

    def scores(self, model, names, context):
        return self._tracked(names, context)

    def target(self, pattern, sparsity):
        if self.threshold is None:
            return super().target(pattern, sparsity)
        if sparsity is not None or pattern.name != "unstructured":
            raise ValueError(
                "soft_movement with a threshold sets the sparsity itself: pass sparsity=None "
                "and pattern='unstructured', or drop threshold to keep the top-k at a sparsity"
            )
        return None

    def choose(self, model, names, request, context):
        if self.threshold is None:
            return super().choose(model, names, request, context)
        new_masks = {}
        for n, s in self._tracked(names, context).items():
            if n in request.dense:
                continue
            keep = s > self.threshold
            prior = request.priors[n]
            new_masks[n] = keep if prior is None else keep & prior.bool()
        return new_masks


@register("criterion", "karnin", section="3.4")
class Karnin(_TrackedCriterion):
    """Karnin's (1990) sensitivity, estimated during training.

    ``S = sum_t (-g_t * dw_t) * w_f / (w_f - w_i)``: the loss change integrated along the
    training path, rescaled from the path ``w_i -> w_f`` to ``0 -> w_f``, an estimate of how
    much the loss would rise if the weight were zero.  With plain SGD it is Karnin's
    ``sum_t dw_t^2 / lr * w_f / (w_f - w_i)``.  Sums come from :class:`KarninScores`
    (pass ``tracker=``); a weight that never moved scores 0.  Every pattern and budget.
    """

    name = "karnin"
    tracker_type = KarninScores

    def scores(self, model, names, context):
        out = {}
        initial = self._tracker(context).initial
        for n, total in self._tracked(names, context).items():
            final = masks.weight(model, n).detach().double()
            moved = final - initial[n]
            safe = torch.where(moved == 0, torch.ones_like(moved), moved)
            out[n] = torch.where(moved == 0, torch.zeros_like(total), total * final / safe)
        return out

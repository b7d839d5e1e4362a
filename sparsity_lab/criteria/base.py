"""The criterion protocol shared by every family.

A criterion answers one question: how important is each element of each target tensor?
Its :meth:`Criterion.scores` returns one score per element (higher = keep).  Everything
around that is shared and lives in :meth:`Criterion.prune`, which no criterion replaces:
checks, rounds, refusing to revive pruned weights, and attaching the masks.  Families plug
in through hooks, at the level they need:

* data-free criteria (magnitude, random, LAMP) override only ``scores``;
* data-driven, first- and second-order criteria read ``context.data`` (batches of inputs and
  targets), ``context.loss_fn`` and helpers such as :meth:`Context.batches` to collect
  activations, gradients, Hessian or Fisher information inside ``scores``;
* criteria that rewrite the model before scoring (EigenDamage) override :meth:`prepare`;
* criteria that change the surviving weights (OBS, merges, bias folding) override
  :meth:`Criterion.update_weights`, which runs after the masks are chosen;
* ``steps`` > 1 prunes in rounds, the scores recomputed in between;
* criteria whose rule is the choice of the masks itself override :meth:`choose`: the
  layer-wise reconstruction methods (OBC, SparseGPT, Wanda), which prune one layer at a time
  on calibration inputs, the searches over layer sparsities or masks (AMC, evolutionary),
  FORCE's rounds in which pruned weights compete again, and soft movement's threshold.
  Their masks still go through the shared checks and are attached by :meth:`prune`;
* :meth:`target` says what the round aims at (a sparsity by default; AMC's fraction of
  FLOPs, none for a threshold).
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from .. import calibration, masks, registry
from ..calibration import Batch
from ..patterns import Pattern, check_sparsity, count, target_sparsity
from ..schedules import geometric
from ..selection import plan, select


@dataclass
class Context:
    """What a criterion may use besides the model.

    ``data`` is anything that yields ``(inputs, targets)`` batches: a DataLoader, a list of
    batches, or a single ``(inputs, targets)`` tuple.  Criteria that need no labels
    (activation statistics, layer-wise calibration) also accept inputs alone: a tensor
    ``X``, a tuple ``(X,)``, or a loader over ``TensorDataset(X)``.  Every batch is checked
    in :meth:`batches`, the one place where calibration data enters a criterion.
    """

    data: Any = None
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = field(
        default_factory=nn.CrossEntropyLoss
    )
    seed: int = 0
    #: The pattern being pruned, for criteria whose rule is defined per group of it.
    pattern: Pattern | None = None
    #: The least fraction of each layer the global budget keeps (``prune(min_density=)``).
    min_density: float = 0.0
    #: Scores accumulated while the model trained (a callback such as ``MovementScores``
    #: that was among the training loop's): what the training-time criteria rank.
    tracker: Any = None
    #: What a criterion works out while scoring and needs again in ``update_weights`` (an
    #: inverse Hessian, a merge plan): it lives with this one pruning call, not on the
    #: criterion, so a criterion object holds no state between calls.
    state: dict[str, Any] = field(default_factory=dict)

    def batches(self, limit: int | None = None, *, labels: bool = True) -> Iterator[Batch]:
        """Yield up to ``limit`` checked ``(inputs, targets)`` batches from ``data``.

        Every batch is validated by :func:`sparsity_lab.calibration.batches` before a
        criterion sees it.  With ``labels=False`` (criteria that never read the targets)
        unlabeled batches are accepted and yield ``(inputs, None)``; with ``labels=True``
        they are refused, since the criterion needs a loss.
        """
        return calibration.batches(self.data, limit, labels=labels)


@dataclass(frozen=True)
class Request:
    """What one round of pruning asks for: all that :func:`select` needs besides scores.

    ``sparsity`` is the round's target (N:M's fixed value filled in; ``None`` when the
    criterion sets the sparsity itself, as a threshold does).  ``priors`` are the current
    keep-masks (``None``: unmasked); pruned groups stay pruned.
    """

    sparsity: float | None
    pattern: Pattern
    budget: str
    dense: frozenset[str]
    priors: dict[str, torch.Tensor | None]
    reduction: str = "l1"
    min_density: float = 0.0

    def select(self, scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keep-masks this request gives ``scores`` (see :func:`select`)."""
        return select(
            scores,
            self.sparsity,
            pattern=self.pattern,
            budget=self.budget,
            dense=self.dense,
            priors=self.priors,
            reduction=self.reduction,
            min_density=self.min_density,
        )

    def plan(
        self,
        shapes: dict[str, tuple[int, ...]],
        group_scores: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, int]:
        """Groups to prune per tensor under this request's budget (see :func:`plan`), for
        criteria that choose the masks within each tensor their own way."""
        return plan(
            shapes,
            self.sparsity,
            pattern=self.pattern,
            budget=self.budget,
            dense=self.dense,
            group_scores=group_scores,
            min_density=self.min_density,
        )


class Criterion:
    """Base class of every criterion; subclasses set ``name`` and implement :meth:`scores`."""

    name: ClassVar[str] = "criterion"
    #: Whether :meth:`scores` reads ``context.data``.
    needs_data: ClassVar[bool] = False
    #: The budget :func:`sparsity_lab.prune` uses when none is given: the paper's.
    default_budget: ClassVar[str] = "global"
    #: The patterns the rule is defined for, by name (``"channel"``, ``"nm"``); None: all.
    supported_patterns: ClassVar[tuple[str, ...] | None] = None
    #: Whether the criterion chooses the layer sparsities itself (a search such as AMC):
    #: the budget is then ignored and the target is met as a bound, not exactly.
    searches_layer_sparsities: ClassVar[bool] = False
    #: Whether the criterion rewrites the layers it prunes (EigenDamage's eigenbasis), so
    #: that a pruned model cannot be pruned again by it.
    prunes_once: ClassVar[bool] = False
    #: The reduction every group score uses whatever the caller asks (a rule defined per
    #: group hands each element its group's score, read back with ``max``); None: the
    #: caller's.
    group_reduction: ClassVar[str | None] = None
    #: Pruning steps towards the target, scores recomputed in between (SynFlow, multi-step
    #: WoodFisher and M-FAC); the density shrinks by the same factor at each step.
    steps: int = 1

    def check_pattern(self, pattern: Pattern) -> None:
        """Refuse a pattern the rule is not defined for, naming those it is."""
        allowed = self.supported_patterns
        if allowed is not None and pattern.name not in allowed:
            raise ValueError(
                f"{self.name} supports the patterns {', '.join(allowed)}, got {pattern!r}; "
                f"pass pattern={allowed[0]!r}, or use a criterion defined for every pattern "
                f"(e.g. 'magnitude', 'woodfisher')"
            )

    def scores(
        self, model: nn.Module, names: list[str], context: Context
    ) -> dict[str, torch.Tensor]:
        """One importance score per element of each named tensor (higher = keep)."""
        raise NotImplementedError

    def prepare(
        self, model: nn.Module, names: list[str], dense: set[str], context: Context
    ) -> None:
        """Before scoring, in each round: rewrite the model, or work out what :meth:`scores`
        reads and keep it in ``context.state`` (default: nothing)."""

    def update_weights(
        self, model: nn.Module, new_masks: dict[str, torch.Tensor], context: Context
    ) -> None:
        """Change the surviving weights after the masks are chosen (default: nothing)."""

    def target(self, pattern: Pattern, sparsity: float | None) -> float | None:
        """What the rounds aim at, checked: the sparsity ``pattern`` reaches (default), or
        what a criterion that sets its own target reads instead (``None`` for a threshold,
        a fraction of FLOPs for AMC).  A ``None`` target takes one round."""
        return target_sparsity(pattern, sparsity)

    def choose(
        self, model: nn.Module, names: list[str], request: Request, context: Context
    ) -> dict[str, torch.Tensor]:
        """The keep-masks of one round: the scores, selected as ``request`` asks (default).

        Criteria whose rule is the choice of masks itself (layer-wise reconstruction, a
        search) replace this; :meth:`prune` attaches what it returns."""
        with torch.enable_grad(), unfrozen(model, names):
            scores = self.scores(model, names, context)
        return request.select({n: scores[n] for n in names})

    def prune(
        self,
        model: nn.Module,
        names: list[str],
        sparsity: float | None,
        *,
        pattern: Pattern,
        budget: str,
        dense: Iterable[str] = (),
        reduction: str = "l1",
        dense_grad: bool = False,
        context: Context | None = None,
    ) -> dict[str, torch.Tensor]:
        """Score, allocate, choose masks and attach them; returns ``{name: keep_mask}``.

        Already pruned groups stay pruned (their score is ``-inf``, and new masks are
        intersected with the old ones), so a second call with a higher sparsity continues
        from the first; asking for less sparsity than the model already has is an error.
        With ``steps`` > 1 the target is reached in that many rounds (see
        :func:`exponential_steps`); N:M patterns, whose sparsity is fixed, take one.
        """
        self.check_pattern(pattern)
        target = self.target(pattern, sparsity)
        context = replace(context or Context(), pattern=pattern)
        if self.needs_data and context.data is None:
            raise ValueError(
                f"criterion {self.name!r} needs data: pass data=... to prune(), the "
                f"calibration data it scores the weights on"
            )
        options = dict(pattern=pattern, budget=budget, dense=frozenset(dense))
        options.update(reduction=self.group_reduction or reduction, dense_grad=dense_grad)
        if self.steps == 1 or target is None or pattern.fixed_sparsity is not None:
            return self._prune_once(model, names, target, context=context, **options)
        new_masks: dict[str, torch.Tensor] = {}
        for step in exponential_steps(target, self.steps, current_sparsity(model, names)):
            new_masks = self._prune_once(model, names, step, context=context, **options)
        return new_masks

    def _prune_once(
        self,
        model: nn.Module,
        names: list[str],
        target: float | None,
        *,
        pattern: Pattern,
        budget: str,
        dense: frozenset[str],
        reduction: str,
        dense_grad: bool,
        context: Context,
    ) -> dict[str, torch.Tensor]:
        context = replace(context, state={})  # fresh for every round of pruning
        self.prepare(model, names, set(dense), context)
        shapes = {n: tuple(masks.weight(model, n).shape) for n in names}
        for n in names:
            if n not in dense:
                pattern.check_layer(model, n)
        priors = {n: masks.get_mask(model, n) for n in names}
        if target is not None and not self.searches_layer_sparsities:
            _check_no_revival(priors, shapes, target)
        request = Request(target, pattern, budget, dense, priors, reduction, context.min_density)
        new_masks = self.choose(model, names, request, context)
        self.update_weights(model, new_masks, context)
        for n, keep in new_masks.items():
            masks.attach(model, n, keep, dense_grad=dense_grad)
        return new_masks

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def exponential_steps(sparsity: float, iterations: int, start: float = 0.0) -> list[float]:
    """Sparsities from ``start`` to ``s`` in ``n`` steps: ``1 - (1 - start) r^(k / n)`` for
    ``k = 1..n`` with ``r = (1 - s) / (1 - start)``.  The density shrinks by the same factor
    at each step and the last step reaches ``s`` exactly; ``start`` is the sparsity the
    tensors already have, so pruning a pruned model continues from it."""
    check_sparsity(sparsity)
    if iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations}")
    if start >= sparsity:  # nothing left to spread; prune() explains a request below start
        return [sparsity]
    steps = [geometric(start, sparsity, k / iterations) for k in range(1, iterations)]
    return [*steps, sparsity]


def current_sparsity(model: nn.Module, names: list[str]) -> float:
    """The fraction of zeros the masks of ``names`` already impose (unmasked: none)."""
    total = sum(masks.weight(model, n).numel() for n in names)
    found = [masks.get_mask(model, n) for n in names]
    return sum(int((m == 0).sum()) for m in found if m is not None) / total


@contextlib.contextmanager
def unfrozen(model: nn.Module, names: Iterable[str]) -> Iterator[None]:
    """Let the named weights take gradients while a criterion scores them.

    A frozen model (``requires_grad=False``, as for inference or a fine-tuning that trains
    only a head) can still be scored: gradient criteria need ``dL/dw`` of the weights they
    rank, whatever the training plan.  The flags are restored afterwards.
    """
    params = [masks.dense_weight(model, n) for n in names]
    frozen = [p for p in params if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _check_no_revival(
    priors: dict[str, torch.Tensor | None], shapes: dict[str, tuple[int, ...]], target: float
) -> None:
    total = sum(math.prod(shape) for shape in shapes.values())
    already = sum(int((p == 0).sum()) for p in priors.values() if p is not None)
    if already > count(target, total):
        raise ValueError(
            f"the pruned tensors are already {already / total:.4f} sparse and pruning never "
            f"revives weights; ask for a sparsity of at least that, or start over with "
            f"sparsity_lab.masks.remove(model)"
        )


def get(name: str | Criterion, **options: Any) -> Criterion:
    """A criterion instance from a registered name (``options`` go to its constructor)."""
    if isinstance(name, Criterion):
        if options:
            raise TypeError(f"options {sorted(options)} cannot apply to an instance {name!r}")
        return name
    cls = registry.get(name, "criterion")
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("args", "kwargs")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"unknown option(s) {', '.join(unknown)} for criterion {name!r}; it accepts "
            f"{', '.join(accepted) or 'no options'} (prune() itself takes pattern, budget, "
            f"data, targets, exclude, dense, reduction, dense_grad, loss_fn, seed and tracker)"
        )
    return cls(**options)

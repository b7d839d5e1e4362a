"""The criterion protocol shared by every family.

A criterion answers one question: how important is each element of each target tensor?
Its :meth:`Criterion.scores` returns one score per element (higher = keep).  Everything
after that, turning scores into masks with a pattern and a budget, is shared and lives in
:meth:`Criterion.prune`.  Families plug in at the level they need:

* data-free criteria (magnitude, random, LAMP) override only ``scores``;
* data-driven, first- and second-order criteria read ``context.data`` (batches of inputs and
  targets), ``context.loss_fn`` and helpers such as :meth:`Context.batches` to collect
  activations, gradients, Hessian or Fisher information inside ``scores``;
* criteria that change the surviving weights (OBS, merges, bias folding) override
  :meth:`Criterion.update_weights`, which runs after the masks are chosen;
* layer-wise reconstruction methods (OBC, SparseGPT, Wanda) that prune one layer at a time
  with calibration inputs override :meth:`Criterion.prune` itself.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from .. import budgets, masks, registry
from ..patterns import Pattern, check_sparsity, count

Batch = tuple[torch.Tensor, torch.Tensor | None]


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
    options: dict[str, Any] = field(default_factory=dict)

    def batches(self, limit: int | None = None, *, labels: bool = True) -> Iterator[Batch]:
        """Yield up to ``limit`` checked ``(inputs, targets)`` batches from ``data``.

        Every batch is validated before a criterion sees it, because bad calibration data
        does not fail on its own: an empty batch or NaN inputs give all-tied scores, and
        ties prune whole layers silently.  With ``labels=False`` (criteria that never read
        the targets) unlabeled batches are accepted and yield ``(inputs, None)``; with
        ``labels=True`` they are refused, since the criterion needs a loss.
        """
        if self.data is None:
            raise ValueError(
                "this criterion needs data: pass data=(inputs, targets) or a DataLoader"
            )
        yielded = 0
        for i, batch in enumerate(_batch_source(self.data)):
            if limit is not None and i >= limit:
                break
            yield _check_batch(batch, i, labels)
            yielded += 1
        if yielded == 0 and (limit is None or limit > 0):
            raise ValueError(
                "data yielded no batches: pass at least one batch, e.g. data=(inputs, targets) "
                "or a non-empty DataLoader"
            )


_EXPECTED = (
    "data must be a DataLoader, a list of batches or an (inputs, targets) tuple of batched "
    "tensors (inputs alone for criteria that need no labels)"
)


def _batch_source(data: Any) -> Iterable:
    """The batches of ``data``: a lone tensor or tuple of tensors is one batch.

    A ``Dataset`` is refused rather than batched here: iterating it yields single examples,
    which a criterion would score as batches of one (SNIP would score one example), and
    the batch size is the caller's choice.
    """
    if torch.is_tensor(data):
        return [(data,)]
    if isinstance(data, tuple) and 1 <= len(data) <= 2 and torch.is_tensor(data[0]):
        return [data]
    if isinstance(data, Dataset):
        raise TypeError(
            f"{_EXPECTED}; got a {type(data).__name__}: wrap it in "
            f"DataLoader(dataset, batch_size=...)"
        )
    if not isinstance(data, Iterable):
        raise TypeError(f"{_EXPECTED}; got a {type(data).__name__}")
    return data


def _check_batch(batch: Any, i: int, labels: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, targets or None)`` of batch ``i``, or an error saying how to fix it."""
    if torch.is_tensor(batch):
        batch = (batch,)
    if not isinstance(batch, (tuple, list)) or not 1 <= len(batch) <= 2:
        raise TypeError(
            f"{_EXPECTED}; batch {i} is a {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    x, y = batch[0], (batch[1] if len(batch) == 2 else None)
    if not torch.is_tensor(x) or (y is not None and not torch.is_tensor(y)):
        raise TypeError(f"{_EXPECTED}; batch {i} holds a non-tensor")
    if x.ndim == 0 or (y is not None and y.ndim == 0):
        raise ValueError(
            f"batch {i} is a single unbatched example (a 0-d tensor); {_EXPECTED}: "
            f"wrap a dataset in DataLoader(dataset, batch_size=...)"
        )
    if len(x) == 0:
        raise ValueError(
            f"batch {i} has 0 examples, which would give every weight the same score; "
            f"pass batches with at least one example (check the split and the slicing)"
        )
    if y is not None and len(y) != len(x):
        raise ValueError(
            f"batch {i} has {len(x)} inputs but {len(y)} targets; pass one target per input"
        )
    for what, t in (("inputs", x), ("targets", y)):
        if t is not None and t.is_floating_point() and not torch.isfinite(t).all():
            raise ValueError(
                f"batch {i} has non-finite (NaN or inf) {what}, which would give every "
                f"weight the same score; clean or impute the data before pruning"
            )
    if y is None and labels:
        raise ValueError(
            f"batch {i} has inputs but no targets, and this criterion computes a loss: pass "
            f"data=(inputs, targets) or a DataLoader over TensorDataset(inputs, targets) "
            f"(label-free criteria such as wanda, sparsegpt or apoz accept inputs alone)"
        )
    return x, y


class Criterion:
    """Base class of every criterion; subclasses set ``name`` and implement :meth:`scores`."""

    name: ClassVar[str] = "criterion"
    #: Whether :meth:`scores` reads ``context.data``.
    needs_data: ClassVar[bool] = False

    def scores(
        self, model: nn.Module, names: list[str], context: Context
    ) -> dict[str, torch.Tensor]:
        """One importance score per element of each named tensor (higher = keep)."""
        raise NotImplementedError

    def update_weights(
        self, model: nn.Module, new_masks: dict[str, torch.Tensor], context: Context
    ) -> None:
        """Change the surviving weights after the masks are chosen (default: nothing)."""

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
        """
        context = context or Context()
        if self.needs_data and context.data is None:
            raise ValueError(f"criterion {self.name!r} needs data: pass data=... to prune()")
        dense = set(dense)
        shapes = {n: tuple(masks.weight(model, n).shape) for n in names}
        for n in names:
            if n not in dense:
                pattern.check_layer(model, n)
        with torch.enable_grad():
            scores = self.scores(model, names, context)
        priors = {n: masks.get_mask(model, n) for n in names}
        group_scores = {
            n: pattern.group_scores(scores[n], reduction, priors[n])
            for n in names
            if n not in dense
        }
        fixed = pattern.fixed_sparsity
        if fixed is not None and sparsity is not None and abs(sparsity - fixed) > 1e-9:
            raise ValueError(
                f"{pattern!r} fixes the sparsity at {fixed:g}, got sparsity={sparsity}; "
                f"pass sparsity=None (or {fixed:g})"
            )
        target = fixed if sparsity is None else sparsity
        if target is None:
            raise ValueError(f"pattern {pattern!r} needs a sparsity in [0, 1), got None")
        check_sparsity(target)
        _check_no_revival(priors, shapes, target)
        plan = budgets.allocate(
            budget, shapes, target, pattern=pattern, dense=dense, scores=group_scores
        )
        new_masks = {}
        for n in names:
            if n in dense:
                continue
            n_prune = count(plan[n], pattern.n_groups(shapes[n]))
            keep = pattern.prune_groups(scores[n], n_prune, reduction, priors[n])
            if priors[n] is not None:
                # Masks only shrink, even where a new budget plans fewer zeros for a layer
                # than it already has (the total may then exceed the target).
                keep = keep & priors[n].bool()  # out of place: keep may be a broadcast view
            new_masks[n] = keep
        self.update_weights(model, new_masks, context)
        for n, keep in new_masks.items():
            masks.attach(model, n, keep, dense_grad=dense_grad)
        return new_masks

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


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
            f"data, targets, exclude, dense, reduction, dense_grad, loss_fn and seed)"
        )
    return cls(**options)

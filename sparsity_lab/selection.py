"""From scores to masks: the one selection every pruning path goes through.

A criterion, a training method that re-selects every step, a regularizer's final
projection and the layer-wise reconstruction methods all end the same way: per-element
scores (higher = keep) become group scores under a pattern, a budget spreads the target
over tensors, and each tensor drops its lowest-scoring groups.  :func:`select` is that
step, a pure function of tensors: it reads no model and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from . import budgets
from .patterns import Pattern, count, target_sparsity


def select(
    scores: Mapping[str, torch.Tensor],
    sparsity: float | None,
    *,
    pattern: Pattern,
    budget: str,
    dense: Iterable[str] = (),
    priors: Mapping[str, torch.Tensor | None] | None = None,
    reduction: str = "l1",
) -> dict[str, torch.Tensor]:
    """Bool keep-masks that meet ``sparsity`` over the tensors of ``scores``.

    ``scores`` has one tensor per name in the count, dense ones included (only their shape
    is read: they are counted in the target and get no mask).  ``priors`` are current
    keep-masks: a group pruned before scores ``-inf`` and stays pruned, so masks only
    shrink (``None``: start from dense, as methods that re-select every step do).
    ``sparsity`` is ``None`` for N:M patterns, which fix it.
    """
    target = target_sparsity(pattern, sparsity)
    dense = set(dense)
    priors = priors or {}
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    group_scores = {
        n: pattern.group_scores(s, reduction, priors.get(n))
        for n, s in scores.items()
        if n not in dense
    }
    plan = budgets.allocate(
        budget, shapes, target, pattern=pattern, dense=dense, scores=group_scores
    )
    out = {}
    for n, s in scores.items():
        if n in dense:
            continue
        prior = priors.get(n)
        keep = pattern.prune_groups(
            s, count(plan[n], pattern.n_groups(shapes[n])), reduction, prior
        )
        if prior is not None:
            # Masks only shrink, even where a new budget plans fewer zeros for a layer than
            # it already has (the total may then exceed the target).
            keep = keep & prior.bool()  # out of place: keep may be a broadcast view
        out[n] = keep
    return out

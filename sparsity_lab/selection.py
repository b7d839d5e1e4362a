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
    min_density: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Bool keep-masks that meet ``sparsity`` over the tensors of ``scores``.

    ``scores`` has one tensor per name in the count, dense ones included (only their shape
    is read: they are counted in the target and get no mask).  ``priors`` are current
    keep-masks: a group pruned before scores ``-inf`` and stays pruned, so masks only
    shrink (``None``: start from dense, as methods that re-select every step do).
    ``sparsity`` is ``None`` for N:M patterns, which fix it.  ``min_density`` keeps at
    least that fraction of each tensor (global budget; see :func:`budgets.global_`).
    """
    dense = set(dense)
    priors = priors or {}
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    group_scores = {
        n: pattern.group_scores(s, reduction, priors.get(n))
        for n, s in scores.items()
        if n not in dense
    }
    counts = plan(
        shapes,
        sparsity,
        pattern=pattern,
        budget=budget,
        dense=dense,
        group_scores=group_scores,
        min_density=min_density,
    )
    out = {}
    for n, s in scores.items():
        if n in dense:
            continue
        prior = priors.get(n)
        keep = pattern.prune_groups(s, counts[n], reduction, prior)
        if prior is not None:
            # Masks only shrink (the counts above already include every pruned group).
            keep = keep & prior.bool()  # out of place: keep may be a broadcast view
        out[n] = keep
    return out


def plan(
    shapes: Mapping[str, tuple[int, ...]],
    sparsity: float | None,
    *,
    pattern: Pattern,
    budget: str,
    dense: Iterable[str] = (),
    group_scores: Mapping[str, torch.Tensor] | None = None,
    min_density: float = 0.0,
) -> dict[str, int]:
    """Groups of ``pattern`` to prune in each tensor that is not ``dense``: the budget's plan.

    The part of :func:`select` that criteria choosing their own masks within each layer use
    (layer-wise reconstruction, the evolutionary search).  ``group_scores`` are needed by
    budgets that rank groups across tensors; where given, a tensor never gets fewer pruned
    groups than it has already (those scoring ``-inf``), and the total stays at the target.
    """
    target = target_sparsity(pattern, sparsity)
    dense = set(dense)
    allocation = budgets.allocate(
        budget,
        dict(shapes),
        target,
        pattern=pattern,
        dense=dense,
        scores=None if group_scores is None else dict(group_scores),
        min_density=min_density,
    )
    counts = {
        n: count(allocation[n], pattern.n_groups(shapes[n])) for n in shapes if n not in dense
    }
    if pattern.fixed_sparsity is None and group_scores is not None:
        counts = _keep_pruned_groups(counts, group_scores, shapes, pattern)
    return counts


def _keep_pruned_groups(
    counts: dict[str, int],
    group_scores: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    pattern: Pattern,
) -> dict[str, int]:
    """Groups to prune per tensor, never fewer than it has pruned already.

    A per-layer budget rounds each layer on its own, and a larger total can round a layer
    down (the Alabama paradox of largest-remainder rounding).  Pruned groups cannot come
    back, so such a layer keeps its count, and the groups it keeps over the plan are taken
    back from the layers with the most planned beyond their own floor: the total stays at
    the target instead of overshooting it (which the next, slightly higher target of a
    schedule would then find already exceeded).
    """
    floors = {n: int(torch.isneginf(g).count_nonzero()) for n, g in group_scores.items()}
    size = {n: pattern.group_size(shapes[n]) for n in counts}
    excess = sum((floors[n] - k) * size[n] for n, k in counts.items() if floors[n] > k)
    counts = {n: max(k, floors[n]) for n, k in counts.items()}
    order = list(counts)
    while excess > 0:
        movable = [n for n in order if counts[n] > floors[n] and size[n] <= excess]
        if not movable:
            break
        n = max(movable, key=lambda m: (counts[m] - floors[m], -order.index(m)))
        counts[n] -= 1
        excess -= size[n]
    return counts

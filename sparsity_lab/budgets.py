"""Budgets: *how much* to prune in each layer (survey section 3.9).

A budget turns one target sparsity for a set of tensors into a sparsity per tensor.  The
functions here are pure: they take shapes (and, for ``global``, scores) and return
``{name: sparsity}``.

Exact accounting: the target is counted in parameters over *all* the given tensors,
including those kept dense, and each returned sparsity is ``k / n_groups`` for an integer
``k``, so that pruning with it removes exactly the planned groups.  For unstructured
patterns the total number of zeros is exactly ``round(sparsity * total)``; for structured
patterns with equal group sizes it is the nearest multiple of the group size, and with
unequal group sizes a greedy choice of whole groups near the target.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from . import registry
from .patterns import (
    Pattern,
    Unstructured,
    check_sparsity,
    count,
    lowest_counts,
    prune_lowest,
)
from .registry import register

Shape = tuple[int, ...]


def largest_remainder(
    total: int,
    desired: Sequence[float],
    capacity: Sequence[int],
    floor: Sequence[int] | None = None,
) -> list[int]:
    """Whole numbers ``k_i`` with ``floor_i <= k_i <= capacity_i`` summing to ``total``, as
    close to ``desired`` as rounding allows (largest remainders first, ties to the lower
    index).

    Every integer split of the library goes through this: a budget's groups per layer, and
    a layer-wise method's weights per row or block.  When the floors alone exceed
    ``total`` (groups pruned before count as floors), the floors are returned; when the
    capacities cannot hold ``total``, the capacities are.
    """
    floor = list(floor) if floor is not None else [0] * len(capacity)
    k = [min(c, max(f, math.floor(d))) for c, f, d in zip(capacity, floor, desired, strict=True)]
    by_remainder = sorted(range(len(k)), key=lambda i: -(desired[i] - k[i]))
    while sum(k) < total and any(k[i] < capacity[i] for i in by_remainder):
        for i in by_remainder:
            if sum(k) < total and k[i] < capacity[i]:
                k[i] += 1
    by_excess = sorted(range(len(k)), key=lambda i: -(k[i] - desired[i]))
    while sum(k) > total and any(k[i] > floor[i] for i in by_excess):
        for i in by_excess:
            if sum(k) > total and k[i] > floor[i]:
                k[i] -= 1
    return k


def _target_zeros(shapes: Mapping[str, Shape], sparsity: float, dense: Iterable[str]) -> int:
    check_sparsity(sparsity)
    total = sum(math.prod(s) for s in shapes.values())
    zeros = count(sparsity, total)
    prunable = sum(math.prod(s) for n, s in shapes.items() if n not in set(dense))
    if zeros > prunable:
        raise ValueError(
            f"sparsity {sparsity} over {total} parameters needs {zeros} zeros, but only "
            f"{prunable} parameters are outside the dense layers; keep fewer layers dense "
            f"or lower the sparsity"
        )
    return zeros


def _continuous(
    shapes: Mapping[str, Shape],
    sparsity: float,
    dense: Iterable[str],
    weights: Callable[[Shape], float] | None,
) -> dict[str, float]:
    """Per-tensor densities before rounding to whole groups (see :func:`densities`)."""
    dense = set(dense)
    _check_names(shapes, dense)
    zeros = _target_zeros(shapes, sparsity, dense)
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    pool = [n for n in shapes if n not in dense]
    density: dict[str, float] = {n: 1.0 for n in shapes}
    if weights is None:
        # the unrounded target: rounding the total first could round a layer to empty
        share = min(1.0, sparsity * sum(sizes.values()) / max(1, sum(sizes[n] for n in pool)))
        for n in pool:
            density[n] = 1.0 - share
    else:
        nonzeros_left = sum(sizes[n] for n in pool) - zeros
        active = list(pool)
        while active:
            eps = nonzeros_left / sum(weights(shapes[n]) * sizes[n] for n in active)
            saturated = [n for n in active if eps * weights(shapes[n]) > 1.0]
            if not saturated:
                for n in active:
                    density[n] = eps * weights(shapes[n])
                break
            for n in saturated:
                density[n] = 1.0
                nonzeros_left -= sizes[n]
                active.remove(n)
    return density


def _by_weights(
    shapes: Mapping[str, Shape],
    sparsity: float,
    pattern: Pattern,
    dense: Iterable[str],
    weights: Callable[[Shape], float] | None,
) -> dict[str, float]:
    """Shared engine of the shape-based budgets.

    ``weights=None`` spreads the zeros uniformly over the prunable parameters; otherwise the
    *density* of a layer is proportional to ``weights(shape)`` (ER, ERK), with layers that
    would exceed density 1 made dense and the rest rescaled, as in the RigL reference code.
    """
    return _in_groups(
        shapes, sparsity, pattern, dense, _continuous(shapes, sparsity, dense, weights)
    )


def _in_groups(
    shapes: Mapping[str, Shape],
    sparsity: float,
    pattern: Pattern,
    dense: Iterable[str],
    density: Mapping[str, float],
) -> dict[str, float]:
    """Per-tensor sparsities in whole groups near the continuous ``density`` of each tensor,
    whose zeros add up to the target."""
    dense = set(dense)
    zeros = _target_zeros(shapes, sparsity, dense)
    pool = [n for n in shapes if n not in dense]
    # Convert to whole groups per layer whose parameters add up to the target.
    gsize = {n: pattern.group_size(shapes[n]) for n in pool}
    groups = {n: pattern.n_groups(shapes[n]) for n in pool}
    desired = {n: (1.0 - density[n]) * groups[n] for n in pool}
    # Rounding must not empty a layer the budget keeps alive (density above 0): one rule
    # for weights, channels and blocks, the same as Pattern.mask's.
    capacity = {n: groups[n] - (desired[n] < groups[n] - 1e-9) for n in pool}
    if len(set(gsize.values())) <= 1:
        # Equal group sizes (always true for unstructured): whole groups, nearest total.
        size = next(iter(gsize.values()), 1)
        wanted = min(sum(capacity.values()), int(math.floor(zeros / size + 0.5)))
        order = list(desired)
        if wanted > sum(capacity.values()) or wanted < 0:
            raise ValueError("the budget cannot be met: not enough prunable parameters")
        split = largest_remainder(wanted, [desired[n] for n in order], [capacity[n] for n in order])
        k = dict(zip(order, split, strict=True))
    else:
        k = _nearest_in_groups(desired, capacity, gsize, zeros)
    return {n: (k[n] / groups[n] if n in k else 0.0) for n in shapes}


def _nearest_in_groups(
    desired: Mapping[str, float], groups: Mapping[str, int], gsize: Mapping[str, int], zeros: int
) -> dict[str, int]:
    """Whole groups per layer near ``desired`` whose parameters total near ``zeros``.

    Groups of different sizes make the exact total a subset-sum problem; this floors every
    layer, then adds one group at a time, largest fractional part first, while that brings
    the total closer to the target.
    """
    k = {n: min(groups[n], math.floor(desired[n])) for n in desired}
    order = sorted(desired, key=lambda n: -(desired[n] - math.floor(desired[n])))
    improved = True
    while improved:
        improved = False
        for n in order:
            missing = zeros - sum(k[m] * gsize[m] for m in k)
            if k[n] < groups[n] and abs(missing - gsize[n]) < abs(missing):
                k[n] += 1
                improved = True
    return k


def _check_names(shapes: Mapping[str, Shape], dense: set[str]) -> None:
    unknown = dense - set(shapes)
    if unknown:
        raise ValueError(
            f"dense layers {sorted(unknown)} are not among the pruned tensors "
            f"{list(shapes)}; use parameter names such as 'fc1.weight'"
        )


@register("budget", "uniform", section="3.9")
def uniform(
    shapes: Mapping[str, Shape],
    sparsity: float,
    *,
    pattern: Pattern | None = None,
    dense: Iterable[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Uniform: every prunable layer gets the same sparsity.

    With dense layers the others share their zeros, so that the total still meets the target.
    """
    return _by_weights(shapes, sparsity, pattern or Unstructured(), dense, None)


def _er_weight(shape: Shape) -> float:
    n_out, n_in = shape[0], (shape[1] if len(shape) > 1 else 1)
    return (n_in + n_out) / (n_in * n_out)


def _erk_weight(shape: Shape) -> float:
    return sum(shape) / math.prod(shape)


@register("budget", "er", section="3.9")
def er(
    shapes: Mapping[str, Shape],
    sparsity: float,
    *,
    pattern: Pattern | None = None,
    dense: Iterable[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Erdos-Renyi (Mocanu et al. 2018): density of a layer ∝ (n_in + n_out) / (n_in * n_out).

    Kernel dimensions are ignored (see ``erk`` for the convolutional version).
    """
    return _by_weights(shapes, sparsity, pattern or Unstructured(), dense, _er_weight)


@register("budget", "erk", section="3.9")
def erk(
    shapes: Mapping[str, Shape],
    sparsity: float,
    *,
    pattern: Pattern | None = None,
    dense: Iterable[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Erdos-Renyi-Kernel (Evci et al. 2020, RigL): density ∝ sum(shape) / prod(shape).

    For a conv weight (out, in, kh, kw): (out + in + kh + kw) / (out * in * kh * kw).
    """
    return _by_weights(shapes, sparsity, pattern or Unstructured(), dense, _erk_weight)


def scored(budget: Any) -> Any:
    """Mark a budget function as one that ranks scores (see :func:`needs_scores`)."""
    budget.needs_scores = True
    return budget


@register("budget", "global", section="3.9")
@scored
def global_(
    shapes: Mapping[str, Shape],
    sparsity: float,
    *,
    pattern: Pattern | None = None,
    dense: Iterable[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
    min_density: float = 0.0,
) -> dict[str, float]:
    """Global: one threshold across layers; the lowest-scoring groups anywhere go first.

    ``scores`` are group scores per layer (``pattern.group_scores``).  Ties across layers go
    to the earlier layer, then the lower index.  With groups of different sizes the pruned
    set is the prefix of the global order whose parameter count is nearest the target.

    One threshold can empty a layer whose scores are all low (often the output layer), and
    nothing then crosses it.  ``min_density`` keeps at least that fraction of every layer's
    groups (rounded up): a layer's groups beyond it leave the ranking, and the rest of the
    target is taken from the other layers, as Torch-Pruning's ``max_pruning_ratio`` does.
    """
    if scores is None:
        raise ValueError("the global budget ranks scores across layers: pass scores=...")
    pattern = pattern or Unstructured()
    dense = set(dense)
    _check_names(shapes, dense)
    zeros = _target_zeros(shapes, sparsity, dense)
    pool = [n for n in shapes if n not in dense]
    # In the scores' own dtype: a conversion to float64 is exact and changes no order, but
    # doubles the memory of the largest step of pruning a large model.
    flat = [_as_float(scores[n].flatten()) for n in pool]
    if min_density > 0:
        flat = [_floored(f, min_density) for f in flat]
        prunable = sum(
            int((f < math.inf).count_nonzero()) * pattern.group_size(shapes[n])
            for n, f in zip(pool, flat, strict=True)
        )
        if zeros > prunable:
            total = sum(math.prod(shapes[n]) for n in shapes)
            raise ValueError(
                f"min_density={min_density} keeps too much: at most {prunable / total:.1%} "
                f"of the weights can be pruned, below the target {sparsity:.1%}; lower "
                f"min_density or the sparsity"
            )
    result = dict.fromkeys(shapes, 0.0)
    if all(pattern.group_size(shapes[n]) == 1 for n in pool):
        # One selection over every layer's scores, none of them copied.
        pruned = lowest_counts(flat, zeros)
    else:
        pruned = _nearest_prefix(flat, [pattern.group_size(shapes[n]) for n in pool], zeros)
    for n, f, k in zip(pool, flat, pruned, strict=True):
        result[n] = k / f.numel()
    return result


def _nearest_prefix(flat: Sequence[torch.Tensor], sizes: Sequence[int], zeros: int) -> list[int]:
    """Groups pruned per layer when groups differ in size: the prefix of the stable order of
    every group score whose parameter count is nearest ``zeros``, never past the floors
    (``+inf``)."""
    counts = [f.numel() for f in flat]
    all_scores = torch.cat(list(flat))
    all_sizes = torch.cat([torch.full((k,), s) for k, s in zip(counts, sizes, strict=True)])
    order = torch.argsort(all_scores, stable=True)
    cumulative = torch.cat(
        [torch.zeros(1, dtype=torch.float64), all_sizes[order].to(torch.float64).cumsum(0)]
    )
    n_prune = int(torch.argmin((cumulative - zeros).abs()))
    n_prune = min(n_prune, int((all_scores < math.inf).count_nonzero()))
    keep = prune_lowest(all_scores, n_prune)
    return [int((~part).count_nonzero()) for part in keep.split(counts)]


def _as_float(scores: torch.Tensor) -> torch.Tensor:
    """Floating scores as they are; integer ones in float64, so that concatenation with
    floats cannot round them and ``inf`` can mark groups."""
    return scores if torch.is_floating_point(scores) else scores.double()


def _floored(group_scores: torch.Tensor, min_density: float) -> torch.Tensor:
    """``group_scores`` with the best ``ceil(min_density * n)`` groups out of the ranking
    (``+inf``: never among the lowest)."""
    keep = math.ceil(min_density * group_scores.numel() - 1e-9)
    out = group_scores.clone()
    if keep:
        order = torch.argsort(group_scores, stable=True)
        out[order[group_scores.numel() - keep :]] = math.inf
    return out


def lamp_scores(values: torch.Tensor) -> torch.Tensor:
    """LAMP scores (Lee et al. 2021) of the magnitudes ``values`` of one layer, same shape.

    With the magnitudes sorted ascending, ``score_u = v_u^2 / sum_{w >= u} v_w^2``: the
    square over the sum of the squares of itself and every larger entry.  Ties are ordered
    by index (the lower index counts as smaller); ``-inf`` entries (groups pruned before)
    count as zero in the sums and stay ``-inf``.

    The sums run in float64 (a float32 running sum over millions of squares loses the
    small ones); the scores come back in float32 for float32 (or 16-bit) weights, as in the
    paper's code, so that a large model's scores take the weights' memory and not twice
    it, and in float64 for float64 or integer values.  Rounding never reorders scores, but
    two neighbours can become equal (then the lower index counts as smaller, as for ties):
    only where a score falls below float32's smallest normal number, about 1e-38, which
    takes weights some 19 orders of magnitude below their layer's largest.
    """
    dtype = (
        torch.promote_types(values.dtype, torch.float32)
        if torch.is_floating_point(values)
        else torch.float64
    )
    flat = values.detach().flatten()
    dead = torch.isneginf(flat)
    squares = flat.to(torch.float64, copy=True).masked_fill_(dead, 0.0).square_()
    sorted_sq, order = torch.sort(squares, stable=True)
    del squares
    tail = sorted_sq.flip(0).cumsum_(0).flip(0)  # sum over this entry and every larger one
    # tail >= the entry itself, and both are 0 only together: 0 / tiny is the score 0
    ratio = sorted_sq.div_(tail.clamp_min_(1e-300))
    del tail
    out = torch.empty(ratio.shape, dtype=dtype, device=ratio.device)
    out[order] = ratio.to(dtype)
    out[dead] = -math.inf
    return out.reshape(values.shape)


@register("budget", "lamp_budget", section="3.9")
@scored
def lamp_budget(
    shapes: Mapping[str, Shape],
    sparsity: float,
    *,
    pattern: Pattern | None = None,
    dense: Iterable[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """LAMP allocation (Lee et al. 2021): a global threshold on the LAMP scores of ``scores``.

    Each layer's group scores (magnitudes, for the ``magnitude`` criterion) become LAMP
    scores (:func:`lamp_scores`), which are ranked across layers like ``global``.  Every
    layer keeps its largest group, and layers with few large weights are protected.
    """
    if scores is None:
        raise ValueError("lamp_budget ranks the LAMP scores of the criterion: pass scores=...")
    _check_magnitudes("lamp_budget", scores)
    lamp = {n: lamp_scores(s) for n, s in scores.items()}
    return global_(shapes, sparsity, pattern=pattern, dense=dense, scores=lamp)


#: OWL's outlier threshold (a score above ``OWL_M`` times its layer's mean is an outlier)
#: and half-width of its band of layer sparsities, the values Yin et al. use most.
OWL_M, OWL_LAMBDA = 5.0, 0.08


@register("budget", "owl", section="3.9")
@scored
def owl(
    shapes: Mapping[str, Shape],
    sparsity: float,
    *,
    pattern: Pattern | None = None,
    dense: Iterable[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
    m: float = OWL_M,
    lam: float = OWL_LAMBDA,
) -> dict[str, float]:
    """Outlier-weighted layer-wise sparsity, OWL (Yin et al. 2024).

    A layer's outlier ratio is the fraction of its scores above ``m`` times their mean (the
    paper's scores are Wanda's ``|W_ij| * ||X_j||``: prune with ``wanda`` to match it).
    Layers with more outliers keep more: the ratios, scaled linearly to ``[0, 2 * lam]``,
    are shifted so that the densities meet the target, giving every layer a sparsity
    within ``lam`` of the target's when they are of one size, as in the paper.  The paper
    averages over layers (its layers are of one size); here the shift is the one that
    meets the target in parameters, so layers of different sizes still give exact totals.
    The paper pools each transformer block's layers into one ratio; here each tensor has
    its own.  Other ``m`` and ``lam``: register ``functools.partial(owl, m=..., lam=...)``
    under a name of your own.
    """
    if scores is None:
        raise ValueError(
            "owl ranks layers by the outliers among the criterion's scores: pass scores=..."
        )
    if not m > 0 or not 0 <= lam < 1:
        raise ValueError(f"owl needs m > 0 and 0 <= lam < 1, got m={m}, lam={lam}")
    pattern = pattern or Unstructured()
    dense = set(dense)
    _check_names(shapes, dense)
    pool = [n for n in shapes if n not in dense]
    ratio = {}
    for n in pool:
        s = scores[n].flatten().double()
        s = s[torch.isfinite(s)]  # groups pruned before are not outliers, nor in the mean
        ratio[n] = float((s > m * s.mean()).double().mean()) if s.numel() else 0.0
    low, high = min(ratio.values()), max(ratio.values())
    spread = {
        n: 0.0 if high == low else (r - low) / (high - low) * 2 * lam for n, r in ratio.items()
    }
    sizes = {n: math.prod(shapes[n]) for n in shapes}
    keep = (
        sum(sizes.values()) - _target_zeros(shapes, sparsity, dense) - sum(sizes[n] for n in dense)
    )

    def kept(shift: float) -> float:
        return sum(sizes[n] * min(1.0, max(0.0, spread[n] + shift)) for n in pool)

    below, above = -1.0 - 2 * lam, 1.0  # kept() rises from 0 to every weight between them
    for _ in range(100):  # bisection: kept() is continuous and non-decreasing in the shift
        middle = (below + above) / 2
        below, above = (middle, above) if kept(middle) < keep else (below, middle)
    density = {n: 1.0 for n in shapes}
    density.update({n: min(1.0, max(0.0, spread[n] + above)) for n in pool})
    return _in_groups(shapes, sparsity, pattern, dense, density)


Curve = Sequence[tuple[float, float]]


def _check_magnitudes(budget: str, scores: Mapping[str, torch.Tensor]) -> None:
    """Refuse signed scores for a budget that squares them: squaring would reorder them,
    while the criterion contract promises only that higher means keep."""
    for n, s in scores.items():
        finite = s[torch.isfinite(s)]
        if finite.numel() and bool((finite < 0).any()):
            raise ValueError(
                f"{budget} reads scores as magnitudes (it squares them), but the scores of "
                f"{n!r} are negative in places, and squaring would reorder them; use "
                f"budget='global' for signed scores (grasp, movement, ...)"
            )


def _curve_keys(curve: Curve, n_groups: int) -> torch.Tensor:
    """Cost of pruning each successive group of a layer, read from a measured curve.

    The ``k``-th group costs the curve at sparsity ``k / n_groups``: linear interpolation
    from ``(0, 0)``, continued beyond the last point with the slope of the last segment,
    made non-decreasing.  The layer's last group (emptying it) costs infinity, so a layer
    is emptied only if the target leaves no other choice.  A tiny multiple of the sparsity
    breaks ties so that layers of equal cost are pruned evenly, not one first.
    """
    points = sorted({0.0: 0.0, **{float(s): float(c) for s, c in curve}}.items())
    xs = torch.tensor([p[0] for p in points], dtype=torch.float64)
    ys = torch.tensor([p[1] for p in points], dtype=torch.float64).cummax(0).values
    s = torch.arange(1, n_groups + 1, dtype=torch.float64) / n_groups
    idx = torch.searchsorted(xs, s, right=True).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = xs[idx - 1], xs[idx], ys[idx - 1], ys[idx]
    cost = y0 + (s - x0) * (y1 - y0) / (x1 - x0).clamp_min(1e-300)  # extrapolates past the end
    cost = cost.cummax(0).values + 1e-12 * s
    cost[-1] = math.inf
    return cost


def _mass_keys(group_scores: torch.Tensor) -> torch.Tensor:
    """Cost of pruning each group in turn: the share of the layer's squared scores removed."""
    flat = group_scores.detach().flatten().double()
    dead = torch.isneginf(flat)
    squares = torch.where(dead, torch.zeros_like(flat), flat).pow(2)
    order = torch.argsort(squares, stable=True)
    share = squares[order].cumsum(0) / squares.sum().clamp_min(1e-300)
    keys = torch.empty_like(flat)
    keys[order] = share + 1e-12 * torch.arange(1, len(flat) + 1) / len(flat)
    keys[dead] = -math.inf
    return keys


@register("budget", "sensitivity_budget", section="3.9")
@scored
def sensitivity_budget(
    shapes: Mapping[str, Shape],
    sparsity: float,
    *,
    pattern: Pattern | None = None,
    dense: Iterable[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
    curves: Mapping[str, Curve] | None = None,
) -> dict[str, float]:
    """Sensitivity-based allocation (Han et al. 2015), from measured curves or a proxy.

    Han et al. prune each layer alone at several sparsities, measure how much the network
    suffers, and give sensitive layers less sparsity.  Here the layers are pruned so that
    the most sensitive one is as little hurt as possible: groups are taken one at a time
    from the layer whose next group costs least, until the target is met exactly.

    Two sources for the cost of pruning a share of a layer:

    * ``curves`` (Han's per-layer sweep): measured sensitivities ``{name: [(sparsity,
      loss increase), ...]}`` from :func:`sparsity_lab.sensitivity.measure`, which
      prunes each layer alone on a copy of the model and evaluates the loss on data.  Call
      it directly, or use :func:`sparsity_lab.sensitivity.prune_by_sensitivity`, which
      measures, allocates and prunes.
    * **a proxy, without data**: this is what ``sparsity_lab.prune(...,
      budget="sensitivity_budget")`` uses, since a budget there sees only shapes and the
      criterion's scores, not the model or data.  The cost of pruning a layer's lowest
      groups is the share of the layer's squared group scores they hold (for
      ``magnitude``, the relative change ``||dW||^2 / ||W||^2``), not a measured loss.
    """
    pattern = pattern or Unstructured()
    if curves is not None:
        missing = [n for n in shapes if n not in set(dense) and n not in curves]
        if missing:
            raise ValueError(f"curves has no measurement for {missing}; measure every layer")
        keys = {
            n: _curve_keys(curves[n], pattern.n_groups(shapes[n]))
            for n in shapes
            if n not in set(dense)
        }
    elif scores is not None:
        _check_magnitudes("sensitivity_budget", scores)
        keys = {n: _mass_keys(s) for n, s in scores.items()}
    else:
        raise ValueError("sensitivity_budget needs scores=... or measured curves=...")
    return global_(shapes, sparsity, pattern=pattern, dense=dense, scores=keys)


def needs_scores(budget: str) -> bool:
    """Whether ``budget`` ranks group scores; shape-only budgets (uniform, er, erk) do not,
    so a caller can skip computing scores for them.  A budget declares it with a
    ``needs_scores = True`` attribute (:func:`scored`), so a newly registered one can too."""
    # a misspelt name fails in registry.get, with suggestions
    return bool(getattr(registry.get(budget, "budget"), "needs_scores", False))


_WEIGHTS = {
    "uniform": None,
    "er": lambda shape: _er_weight(shape),
    "erk": lambda shape: _erk_weight(shape),
}


def densities(
    budget: str, shapes: Mapping[str, Shape], sparsity: float, *, dense: Iterable[str] = ()
) -> dict[str, float]:
    """The continuous per-tensor densities of a shape-only budget, before rounding to whole
    groups: what ER and ERK define (and what plots of them show).  :func:`allocate` rounds
    them to exact counts.  Budgets that rank scores (global, LAMP, sensitivity) have no
    densities before the scores: :func:`allocate` with scores gives their allocation."""
    registry.get(budget, "budget")
    if budget not in _WEIGHTS:
        raise ValueError(
            f"budget {budget!r} ranks scores, so its densities follow from them: call "
            f"allocate({budget!r}, shapes, sparsity, scores=...) instead"
        )
    return _continuous(shapes, sparsity, dense, _WEIGHTS[budget])


def allocate(
    budget: str,
    shapes: Mapping[str, Shape],
    sparsity: float,
    *,
    pattern: Pattern | None = None,
    dense: Iterable[str] = (),
    scores: Mapping[str, torch.Tensor] | None = None,
    min_density: float = 0.0,
) -> dict[str, float]:
    """Per-tensor sparsities for ``budget`` (a registered name such as ``"erk"``).

    ``min_density`` (the ``global`` budget only) keeps at least that fraction of every
    layer; see :func:`global_`.
    """
    fn = registry.get(budget, "budget")
    pattern = pattern or Unstructured()
    check_min_density(min_density, budget)
    if pattern.fixed_sparsity is not None:
        # N:M fixes every layer's sparsity; a budget has nothing to distribute.
        return {n: (0.0 if n in set(dense) else pattern.fixed_sparsity) for n in shapes}
    if min_density:
        return fn(shapes, sparsity, pattern=pattern, dense=dense, scores=scores,
                  min_density=min_density)  # fmt: skip
    return fn(shapes, sparsity, pattern=pattern, dense=dense, scores=scores)


def check_min_density(min_density: float, budget: str) -> None:
    """Refuse a ``min_density`` outside [0, 1) or given to a budget that does not rank."""
    if isinstance(min_density, bool) or not isinstance(min_density, (int, float)):
        raise TypeError(f"min_density must be a number in [0, 1), got {min_density!r}")
    if not 0 <= min_density < 1:
        raise ValueError(f"min_density must be in [0, 1), got {min_density}")
    if min_density and budget != "global":
        raise ValueError(
            f"min_density applies to the global budget, whose one threshold can empty a "
            f"layer; budget {budget!r} sets each layer's density itself (uniform and "
            f"ER/ERK never empty one).  Use budget='global', or keep a layer whole with "
            f"dense=[...]"
        )

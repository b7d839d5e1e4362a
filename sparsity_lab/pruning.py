"""``prune``: the one call that covers the common case."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from . import budgets, criteria, masks, patterns, registry
from .targets import PRUNABLE, default_targets, resolve

__all__ = ["PRUNABLE", "default_targets", "prune", "sparsity"]


def prune(
    model: nn.Module,
    method: str | criteria.Criterion,
    sparsity: float | None,
    *,
    pattern: str | patterns.Pattern = "unstructured",
    budget: str | None = None,
    data: Any = None,
    targets: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    dense: Iterable[str] = (),
    reduction: str = "l1",
    dense_grad: bool = False,
    loss_fn: Callable | None = None,
    seed: int = 0,
    tracker: Any = None,
    coupled: bool = False,
    min_density: float = 0.0,
    **options: Any,
) -> nn.Module:
    """Prune ``model`` in place by attaching masks; returns the model.

    Args:
        method: a criterion's registered name (``"magnitude"``, ``"random"``, ...) or instance.
        sparsity: target fraction of zeros over the pruned tensors, counted in parameters
            (``None`` for N:M patterns, whose sparsity is 1 - N/M); a whole number of 1 or
            more is an exact number of weights to prune instead (as torch's ``amount``).
        pattern: what is pruned together: ``"unstructured"``, ``"2:4"``, ``"block:4x4"``,
            ``"channel"``, ``"input"`` or a :class:`~sparsity_lab.patterns.Pattern`.
        budget: how the zeros are spread over layers: ``"global"``, ``"uniform"``, ``"er"``,
            ``"erk"``; default the criterion's (``default_budget``): global, except uniform
            for the layer-wise wanda, sparsegpt, obc and lobs, as in their papers.
        data: batches for criteria that need data (a DataLoader or an ``(x, y)`` tuple);
            label-free criteria (wanda, sparsegpt, apoz...) also take inputs alone (``x``).
            Empty, non-finite or unbatched data is refused (see ``Context.batches``).
        targets: parameter names to prune; default: every Linear/Conv weight.
        exclude: names left out of pruning and out of the sparsity count.
        dense: names kept dense but counted in the target (e.g. the first and last layers).
        reduction: how element scores combine into a group score: l1, l2, sum or max.
        dense_grad: let gradients reach masked weights (for RigL, DPF, AC/DC, Top-KAST).
        loss_fn: loss for data-driven criteria (default cross-entropy).
        seed: seed of random criteria.
        tracker: for criteria that rank scores accumulated in training (``movement``,
            ``soft_movement``, ``karnin``): the score tracker that was among the training
            loop's callbacks (e.g. ``MovementScores()``).
        coupled: prune what must go together as one group, so that
            :func:`sparsity_lab.shrink.shrink` can remove it (DepGraph, Fang et al. 2023):
            with ``pattern="channel"`` a channel of a residual stream goes from every layer
            that writes or reads it; ``"head"`` and ``"layer"`` prune attention heads and
            residual blocks.  ``sparsity`` then counts groups, ranked across the model;
            ``targets``, ``exclude``, ``dense`` and ``budget`` do not apply.  See
            :func:`sparsity_lab.shrink.prune_coupled`.
        min_density: with the global budget, the least fraction of every layer to keep
            (rounded up to whole groups): one threshold across layers can otherwise empty a
            layer, often the output layer, and nothing then crosses it.  ``0.05`` keeps 5%.
        options: passed to the criterion's constructor.

    Pruning an already pruned model continues from its masks: groups pruned before stay
    pruned and ``sparsity`` is the new total.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if coupled:
        ignored = {"targets": targets, "exclude": exclude, "dense": dense, "budget": budget}
        ignored["min_density"] = min_density or None
        return _prune_coupled(
            model,
            method,
            sparsity,
            pattern,
            ignored,
            data=data,
            reduction=reduction,
            dense_grad=dense_grad,
            seed=seed,
            tracker=tracker,
            **options,
        )
    criterion = criteria.get(method, **options)
    pat = patterns.get(pattern)
    budget = criterion.default_budget if budget is None else budget
    registry.get(budget, "budget")  # fail early, with suggestions, on a misspelt budget
    budgets.check_min_density(min_density, budget)
    if min_density and criterion.searches_layer_sparsities:
        raise ValueError(
            f"{criterion.name!r} searches each layer's sparsity itself, so min_density does "
            f"not apply; bound its search with its own options, or keep a layer with dense="
        )
    names = resolve(model, targets, exclude, dense)
    sparsity = _as_fraction(model, names, sparsity)
    context = criteria.Context(data=data, seed=seed, min_density=min_density, tracker=tracker)
    if loss_fn is not None:
        context.loss_fn = loss_fn
    criterion.prune(
        model,
        names,
        sparsity,
        pattern=pat,
        budget=budget,
        dense=dense,
        reduction=reduction,
        dense_grad=dense_grad,
        context=context,
    )
    found = masks.masks(model)
    emptied = [n for n in names if n in found and not bool(found[n].any())]
    if emptied and (sparsity is None or sparsity < 1):
        warnings.warn(
            f"budget {budget!r} pruned {', '.join(emptied)} to 100%: no signal crosses "
            "an empty layer.  Keep part of every layer with min_density=0.05 (global budget), "
            "keep it whole with dense=[...], or spread the zeros with budget='erk' or "
            "'uniform'",
            stacklevel=2,
        )
    if pat.name == "channel":
        _warn_uncoupled(model)
    return model


def _warn_uncoupled(model: nn.Module) -> None:
    """Warn when a channel prune split a coupled space (shrink then keeps those channels)."""
    from . import shrink  # loads pandas, which ``import sparsity_lab`` does without

    split = shrink.uncoupled_channels(model)
    if split:
        where = ", ".join(f"{name!r} ({n})" for name, n in split.items())
        warnings.warn(
            f"pattern='channel' pruned different channels in the layers that share a coupled "
            f"space (a residual stream or a concatenation): {where}.  shrink removes only "
            f"the channels every one of them drops, so those stay in the shrunk model; "
            f"prune with coupled=True to remove whole groups",
            stacklevel=3,
        )


def sparsity(model: nn.Module, names: Iterable[str] | None = None) -> float:
    """Fraction of zeros over the named tensors (default: every Linear/Conv weight)."""
    names = list(default_targets(model) if names is None else names)
    total = sum(masks.weight(model, n).numel() for n in names)
    zeros = sum(int((masks.weight(model, n) == 0).sum()) for n in names)
    return zeros / total if total else 0.0


def _prune_coupled(
    model: nn.Module,
    method: Any,
    sparsity: float | None,
    pattern: Any,
    ignored: dict[str, Any],
    **settings: Any,
) -> nn.Module:
    """``prune(..., coupled=True)``: the coupled groups of :mod:`sparsity_lab.shrink`."""
    from . import shrink  # loads pandas, which ``import sparsity_lab`` does without

    refused = [k for k, value in ignored.items() if value not in (None, (), [])]
    if refused:
        raise ValueError(
            f"coupled=True prunes whole coupled groups ranked across the model, so "
            f"{', '.join(refused)} cannot apply; drop them or use coupled=False"
        )
    name = pattern if isinstance(pattern, str) else getattr(pattern, "name", pattern)
    granularity = str(name).split(":")[0]
    if granularity not in ("channel", "head", "layer"):
        raise ValueError(
            f"coupled=True prunes channels, heads or layers, got pattern={pattern!r}; pass "
            f"pattern='channel', 'head' or 'layer'"
        )
    if sparsity is None:
        raise ValueError("coupled=True needs a sparsity: the fraction of groups to prune")
    if settings["reduction"] == "l1":  # prune's default; a coupled group is scored by l2
        settings["reduction"] = "l2"
    shrink.prune_coupled(model, granularity, sparsity, method=method, **settings)
    return model


def _as_fraction(model: nn.Module, names: list[str], sparsity: Any) -> Any:
    """A whole number of weights to prune as the fraction of the targets it is."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, int) or sparsity < 1:
        return sparsity  # a fraction (or None): checked where it is used
    total = sum(masks.weight(model, n).numel() for n in names)
    if sparsity >= total:
        raise ValueError(
            f"cannot prune {sparsity} weights: the targets hold {total}; ask for fewer (or a "
            f"fraction below 1)"
        )
    return sparsity / total

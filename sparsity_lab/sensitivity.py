"""Han et al.'s (2015) sensitivity analysis: prune each layer alone, measure, allocate.

The sweep trains nothing but evaluates the model many times, so it lives here rather than
in :mod:`sparsity_lab.budgets`, whose allocations are pure functions of shapes and scores:
:func:`measure` produces the curves that :func:`~sparsity_lab.budgets.sensitivity_budget`
turns into per-layer sparsities, and :func:`prune_by_sensitivity` does all three steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from . import patterns
from .budgets import sensitivity_budget
from .patterns import Pattern
from .pruning import prune
from .targets import default_targets
from .train import evaluate

__all__ = ["measure", "prune_by_sensitivity"]


def measure(
    model: torch.nn.Module,
    data: Any,
    *,
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
    method: str = "magnitude",
    pattern: str | Pattern = "unstructured",
    names: Iterable[str] | None = None,
    loss_fn: Callable | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """Han et al.'s (2015) sensitivity analysis: prune one layer at a time, measure the loss.

    For each layer and each sparsity a copy of ``model`` has only that layer pruned (with
    ``method`` and ``pattern``); the entry is the increase of the mean loss on ``data`` (a
    DataLoader or an ``(inputs, targets)`` tuple).  Returns ``{name: [(sparsity, increase),
    ...]}``, ready for ``sensitivity_budget(..., curves=...)``.
    """
    batches = [data] if isinstance(data, tuple) else data
    names = list(default_targets(model) if names is None else names)
    base = evaluate(model, batches, loss_fn)["loss"]
    curves: dict[str, list[tuple[float, float]]] = {}
    for n in names:
        curves[n] = []
        for s in sparsities:
            pruned = prune(
                copy.deepcopy(model),
                method,
                s,
                pattern=pattern,
                budget="uniform",
                targets=[n],
                data=data,
            )
            curves[n].append((float(s), evaluate(pruned, batches, loss_fn)["loss"] - base))
    return curves


def prune_by_sensitivity(
    model: torch.nn.Module,
    sparsity: float,
    data: Any,
    *,
    method: str = "magnitude",
    pattern: str | Pattern = "unstructured",
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
    names: Iterable[str] | None = None,
    loss_fn: Callable | None = None,
) -> dict[str, float]:
    """Han et al.'s (2015) full recipe: sweep each layer alone, allocate, then prune.

    Measures the curves with :func:`measure` on ``data``, turns them into one
    sparsity per layer with :func:`sensitivity_budget` (the total meets ``sparsity``), and
    prunes each layer of ``model`` in place to its sparsity with ``method``.  Returns the
    plan ``{name: sparsity}``.  Pass validation data: the sweep *chooses* the allocation,
    so it must not see the data the pruned model is reported on.
    """
    names = list(default_targets(model) if names is None else names)
    curves = measure(
        model,
        data,
        sparsities=sparsities,
        method=method,
        pattern=pattern,
        names=names,
        loss_fn=loss_fn,
    )
    shapes = {n: tuple(model.get_parameter(n).shape) for n in names}
    plan = sensitivity_budget(shapes, sparsity, pattern=patterns.get(pattern), curves=curves)
    for n, s in plan.items():
        if s > 0:
            prune(model, method, s, pattern=pattern, budget="uniform", targets=[n], data=data)
    return plan

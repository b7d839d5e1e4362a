"""Efficiency metrics for comparing sparse networks of different sizes.

The survey (Hoefler et al. 2021, JMLR 22(241), its discussion section) defines "a metric
of pruned parameter efficiency that could serve as a baseline for comparison of different
sparse networks".  Its formula could not be checked against the paper's text for this
library, so none of the functions below claims to be it.  They are the three readings the
field uses, each under its own name:

- :func:`accuracy_per_parameter`: accuracy per remaining (nonzero) parameter, in points per
  million.  Compares a sparse network with a dense one of the same size.
- :func:`accuracy_change_per_removed_parameter`: the change of accuracy against the dense
  model per removed parameter, in points per million.  Near 0 while pruning is free; it
  turns sharply negative past the point where pruning starts to cost accuracy.
- :func:`iso_accuracy_compression`: the largest compression ``dense / remaining`` whose
  mean accuracy is within ``tolerance`` of dense, a summary that needs no baseline method.

Parameter counts alone overstate what sparsity saves, so a comparison also reports the
FLOPs saved (:func:`flops_saved`) and the storage cost in bits with the index overhead
(:func:`sparsity_lab.accounting.report`'s ``bytes``, which the benchmark harness records).
Accuracies are fractions in [0, 1]; "points" are percentage points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _positive(value: float, name: str) -> float:
    if not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return float(value)


def accuracy_per_parameter(accuracy: float, nonzeros: float) -> float:
    """Accuracy in percentage points per million remaining parameters.

    A 90%-sparse ResNet-50 of 74.3% top-1 with 2.49 M weights left scores
    ``accuracy_per_parameter(0.743, 2.49e6)``, 29.8 points per million.
    """
    return 100.0 * accuracy / (_positive(nonzeros, "nonzeros") / 1e6)


def accuracy_change_per_removed_parameter(
    accuracy: float, dense_accuracy: float, nonzeros: float, parameters: float
) -> float:
    """``(accuracy - dense_accuracy)`` in points per million removed parameters.

    NaN when nothing was removed (the dense model itself): no change per nothing.
    """
    removed = _positive(parameters, "parameters") - nonzeros
    if removed < 0:
        raise ValueError(f"nonzeros ({nonzeros}) exceed the parameters ({parameters})")
    if removed == 0:
        return math.nan
    return 100.0 * (accuracy - dense_accuracy) / (removed / 1e6)


def flops_saved(flops: float, dense_flops: float) -> float:
    """The fraction of the dense forward FLOPs a sparse model no longer computes."""
    return 1.0 - flops / _positive(dense_flops, "dense_flops")


def compression(nonzeros: float, parameters: float) -> float:
    """``parameters / nonzeros``: 10 for a 90%-sparse model."""
    return _positive(parameters, "parameters") / _positive(nonzeros, "nonzeros")


def iso_accuracy_compression(
    accuracies: Sequence[float],
    nonzeros: Sequence[float],
    dense_accuracy: float,
    parameters: float,
    *,
    tolerance: float = 0.01,
) -> float:
    """The largest compression among the models within ``tolerance`` of dense accuracy.

    ``accuracies`` and ``nonzeros`` describe the sparse models of one method (usually the
    mean over seeds at each sparsity); ``tolerance`` is a fraction (0.01: one point).
    Returns 1.0 when none is within it: only the dense model is.
    """
    acc = np.asarray(accuracies, dtype=float)
    kept = np.asarray(nonzeros, dtype=float)
    if acc.shape != kept.shape:
        raise ValueError(f"{len(acc)} accuracies but {len(kept)} nonzero counts")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    # a model exactly ``tolerance`` below dense is within it, whatever the float rounding
    within = acc >= dense_accuracy - tolerance - 1e-12
    if not within.any():
        return 1.0
    return max(compression(k, parameters) for k in kept[within])

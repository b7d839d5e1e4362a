"""Linear mode connectivity: are two trainings from one starting point in one basin?

Survey section 8.3; Frankle et al. (2020), "Linear mode connectivity and the lottery ticket
hypothesis" (ICML).  Two copies of a network start from the same weights (its
initialisation ``theta_0``, or ``theta_k`` after ``k`` steps of training) and train with
different data orders.  Along the straight line between the two trained networks,
``theta(alpha) = (1 - alpha) theta_a + alpha theta_b``, the error rises by the *error
barrier*: the highest error on the line minus the mean of the two ends' errors.  Training
from that start is *stable* to SGD noise when the barrier is about zero (the paper's
threshold: 2 points).  The paper finds small networks (LeNet-300-100 on MNIST) stable from
``theta_0``, and deeper ones only from a ``theta_k`` some way into training, where IMP's
sparse subnetworks also start to match the dense network's accuracy.

Sparse networks are interpolated under their shared mask: both ends keep the same zeros,
so every point of the line has them too.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from .. import masks


def interpolate(a: nn.Module, b: nn.Module, alpha: float) -> nn.Module:
    """A copy of ``a`` whose floating tensors are ``(1 - alpha) a + alpha b``.

    Parameters and floating buffers are interpolated (BatchNorm statistics along with the
    weights, which is only an approximation for a network with BatchNorm: the paper's
    networks re-estimate them, or have none, as LeNet-300-100); integer buffers (counters)
    and masks come from ``a``, and ``a`` and ``b`` must have the same masks.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    found_a, found_b = masks.masks(a), masks.masks(b)
    if found_a.keys() != found_b.keys() or any(
        not torch.equal(found_a[n], found_b[n]) for n in found_a
    ):
        raise ValueError(
            "the two networks have different masks, so the line between them leaves both "
            "sparsity patterns; interpolate networks trained from one start under one mask"
        )
    state_a, state_b = a.state_dict(), b.state_dict()
    if state_a.keys() != state_b.keys():
        raise ValueError("the two networks have different layers; interpolate copies of one model")
    mixed = {
        k: torch.lerp(v, state_b[k], alpha) if torch.is_floating_point(v) else v
        for k, v in state_a.items()
    }
    out = copy.deepcopy(a)
    out.load_state_dict(mixed)
    return out


def error_barrier(
    a: nn.Module,
    b: nn.Module,
    error: Callable[[nn.Module], float],
    alphas: Sequence[float] = tuple(i / 10 for i in range(11)),
) -> tuple[float, pd.DataFrame]:
    """``(barrier, path)``: the error barrier between ``a`` and ``b`` and the error at each
    ``alpha`` of the line (``error`` measures a network, e.g. test error in [0, 1]).

    The barrier is ``max_alpha error(alpha) - (error(0) + error(1)) / 2`` (Frankle et al.
    2020), at least 0 because the ends are on the line.  ``alphas`` must hold 0 and 1.
    """
    alphas = sorted(float(x) for x in alphas)
    if alphas[0] != 0.0 or alphas[-1] != 1.0:
        raise ValueError("alphas must include both ends, 0 and 1")
    path = pd.DataFrame(
        {"alpha": alphas, "error": [float(error(interpolate(a, b, x))) for x in alphas]}
    )
    ends = (path["error"].iloc[0] + path["error"].iloc[-1]) / 2
    return float(path["error"].max() - ends), path

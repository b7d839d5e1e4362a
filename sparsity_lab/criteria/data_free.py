"""Data-free criteria: scores computed from the weights alone (survey section 3.2)."""

from __future__ import annotations

import torch
from torch import nn

from .. import masks
from ..registry import register
from .base import Context, Criterion


@register("criterion", "magnitude")
class Magnitude(Criterion):
    """Magnitude pruning (Janowsky 1989; Han et al. 2015): remove the smallest ``|w|``.

    Score: ``|w|``.  With a group pattern the group score is a norm of its weights
    (``reduction``: L1 by default, as in Li et al. 2017).  Supports every pattern and budget.
    """

    name = "magnitude"

    def scores(self, model: nn.Module, names: list[str], context: Context):  # noqa: D102
        return {n: masks.weight(model, n).detach().abs() for n in names}


@register("criterion", "random")
class Random(Criterion):
    """Random pruning: a baseline every method must beat.  Score: i.i.d. uniform in [0, 1).

    Seeded by ``context.seed``, independently of the global random state, so the same seed
    gives the same mask.  Supports every pattern and budget.
    """

    name = "random"

    def scores(self, model: nn.Module, names: list[str], context: Context):  # noqa: D102
        gen = torch.Generator().manual_seed(context.seed)
        out = {}
        for n in names:
            w = masks.weight(model, n)
            out[n] = torch.rand(w.shape, generator=gen, dtype=torch.float64).to(w.device)
        return out

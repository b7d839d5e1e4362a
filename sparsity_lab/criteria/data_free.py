"""Data-free criteria: scores computed from the weights alone (survey section 3.2)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import masks
from ..budgets import lamp_scores
from ..patterns import Pattern, reduce_groups
from ..registry import register
from .base import Context, Criterion
from .units import (
    GroupCriterion,
    alive_units,
    element_wise,
    greedy_merge,
    links,
    ordered_scores,
    removed_units,
)


@register("criterion", "magnitude", section="3.2")
class Magnitude(Criterion):
    """Magnitude pruning (Janowsky 1989; Han et al. 2015): remove the smallest ``|w|``.

    Score: ``|w|``.  With a group pattern the group score is a norm of its weights
    (``reduction``: L1 by default, as in Li et al. 2017).  Supports every pattern and budget.
    """

    name = "magnitude"

    def scores(self, model: nn.Module, names: list[str], context: Context):
        return {n: masks.weight(model, n).detach().abs() for n in names}


@register("criterion", "random", section="3.2")
class Random(Criterion):
    """Random pruning: a baseline every method must beat.  Score: i.i.d. uniform in [0, 1).

    Seeded by ``context.seed``, independently of the global random state, so the same seed
    gives the same mask.  Supports every pattern and budget.
    """

    name = "random"

    def scores(self, model: nn.Module, names: list[str], context: Context):
        gen = torch.Generator().manual_seed(context.seed)
        out = {}
        for n in names:
            w = masks.weight(model, n)
            out[n] = torch.rand(w.shape, generator=gen, dtype=torch.float64).to(w.device)
        return out


@register("criterion", "lamp", section="3.2")
class Lamp(GroupCriterion):
    """Layer-adaptive magnitude-based pruning, LAMP (Lee et al. 2021).

    With the weights of a layer sorted by magnitude, ``|w_1| <= |w_2| <= ...``, the score of
    ``w_u`` is ``w_u^2 / sum_{v >= u} w_v^2``: its square over the sum of the squares of
    itself and every larger weight of its layer.  The largest weight of every layer scores
    1, so a global threshold on LAMP scores never empties a layer.  Use it with the
    ``global`` budget (that is LAMP); ``magnitude`` with ``lamp_budget`` gives the same masks.

    Patterns: element-wise for ``unstructured`` and N:M; for group patterns (``channel``,
    ``input``, ``block``) the rule is applied to the groups' L2 norms.
    """

    name = "lamp"

    def group_scores(self, model, names, pattern: Pattern, context):
        out = {}
        for n in names:
            w = masks.weight(model, n).detach()
            if element_wise(pattern, tuple(w.shape)):
                values = w.abs()  # LAMP scores in the weights' dtype (see lamp_scores)
            else:
                values = reduce_groups(pattern._grouped(w.double()), "l2")
            out[n] = lamp_scores(values)
        return out


@register("criterion", "group_norm", section="3.2")
class GroupNorm(GroupCriterion):
    """Group norm (Li et al. 2017): remove the groups with the smallest ``||w_g||_p``.

    Li et al. rank the filters of a conv layer by the L1 norm of their kernels; ``p=2``
    gives the L2 variant.  Patterns: every pattern; the groups are the pattern's (filters and
    neurons with ``channel``, input channels with ``input``, tiles with ``block``).  With
    ``unstructured`` or N:M it is plain magnitude.
    """

    name = "group_norm"

    def __init__(self, p: float = 1) -> None:
        if p not in (1, 2):
            raise ValueError(f"group_norm takes p=1 (L1, Li et al. 2017) or p=2, got p={p!r}")
        self.p = p

    def group_scores(self, model, names, pattern: Pattern, context):
        out = {}
        for n in names:
            w = masks.weight(model, n).detach().double()
            if element_wise(pattern, tuple(w.shape)):
                out[n] = w.abs()
            else:
                out[n] = reduce_groups(pattern._grouped(w), "l1" if self.p == 1 else "l2")
        return out

    def __repr__(self) -> str:
        return f"GroupNorm(p={self.p})"


def fpgm_scores(filters: torch.Tensor, alive: torch.Tensor | None = None) -> torch.Tensor:
    """FPGM score of each row of ``filters`` (units x features): its summed L2 distance to the
    other alive rows.  The filter with the smallest sum is the one nearest the geometric
    median of the layer; dead rows score ``-inf``."""
    flat = filters.reshape(filters.shape[0], -1).double()
    alive = torch.ones(flat.shape[0], dtype=torch.bool) if alive is None else alive
    distance = torch.cdist(flat, flat)
    scores = distance[:, alive].sum(dim=1)
    return torch.where(alive, scores, torch.full_like(scores, -math.inf))


@register("criterion", "fpgm", section="3.2")
class FPGM(GroupCriterion):
    """Filter pruning via geometric median, FPGM (He et al. 2019).

    Filters near the geometric median of their layer are the most replaceable by the
    others.  Score of filter ``i``: ``sum_j ||F_i - F_j||_2`` over the layer's filters (the
    paper's approximation of the distance to the geometric median); the smallest go first,
    whatever their norm.  Pattern: ``channel`` (filters of a conv, neurons of a Linear).
    """

    name = "fpgm"
    supported_patterns = ("channel",)

    def group_scores(self, model, names, pattern, context):
        return {
            n: fpgm_scores(masks.weight(model, n).detach(), alive_units(model, n)) for n in names
        }


def merge_order(
    features: torch.Tensor, outgoing: torch.Tensor, alive: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy neuron merging of Srinivas & Babu (2015); returns ``(order, saliency, into)``.

    ``features``: a row per unit (incoming weights and bias); ``outgoing``: ``(out, units,
    k)`` weights that read the units.  At each step the unit ``j`` with the smallest
    ``<a_j^2> * min_i ||f_j - f_i||^2`` (mean squared outgoing weight times the squared
    distance to its nearest alive unit) is merged into that unit ``i``: ``a_i += a_j``.
    """
    f = features.double()
    return greedy_merge(torch.cdist(f, f).pow(2), outgoing, alive, mean=True)


def unit_features(model: nn.Module, name: str) -> torch.Tensor:
    """A row per output unit of ``name``: its incoming weights, then its bias (if any)."""
    w = masks.weight(model, name).detach()
    rows = w.reshape(w.shape[0], -1)
    bias = model.get_submodule(name.rpartition(".")[0]).bias
    return rows if bias is None else torch.cat([rows, bias.detach().reshape(-1, 1)], dim=1)


@register("criterion", "neuron_merge", section="3.2")
class NeuronMerge(GroupCriterion):
    """Data-free neuron merging (Srinivas & Babu 2015).

    Two units with the same incoming weights compute the same output, so one of them can be
    removed and its outgoing weights added to the other's without changing the network.
    Saliency of removing unit ``j`` into unit ``i``: ``<a_j^2> * ||f_j - f_i||^2``, with
    ``f`` a unit's incoming weights and bias and ``<a_j^2>`` the mean square of its outgoing
    weights; units are removed greedily, lowest saliency first, each into its nearest unit.

    Changes weights: the outgoing weights of a removed unit are added to those of the unit
    it merges into and zeroed, in the layer that reads it (the next Linear/Conv layer in
    module order, or ``next_layers={"fc1.weight": "fc2.weight"}``).  Pattern: ``channel``;
    exclude the output layer (nothing reads it).
    """

    name = "neuron_merge"
    supported_patterns = ("channel",)

    def __init__(self, next_layers: dict[str, str] | None = None) -> None:
        self.next_layers = next_layers

    def group_scores(self, model, names, pattern, context):
        found = context.state["links"] = links(model, names, self.next_layers, "neuron_merge")
        plan, out = context.state.setdefault("plan", {}), {}
        for n in names:
            alive = alive_units(model, n)
            outgoing = found[n].outgoing(model)
            order, saliency, into = merge_order(unit_features(model, n), outgoing, alive)
            plan[n] = (order, into, alive)
            out[n] = ordered_scores(order, saliency, len(alive))
        return out

    @torch.no_grad()
    def update_weights(self, model, new_masks, context):
        for n, keep in new_masks.items():
            order, into, alive = context.state["plan"][n]
            removed = set(removed_units(keep, alive).tolist())
            prefix = order[: len(removed)].tolist()
            # The scores follow the merge order strictly, so the pruned units are its prefix.
            assert set(prefix) == removed, "neuron_merge: pruned units are not the merge prefix"
            outgoing = context.state["links"][n].outgoing(model)
            for j, i in zip(prefix, into[: len(prefix)].tolist(), strict=True):
                if i >= 0:  # the layer's last unit has nowhere to go
                    outgoing[:, i] += outgoing[:, j]
                    outgoing[:, j] = 0

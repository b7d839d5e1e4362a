"""Machinery shared by the criteria that score units and groups rather than single weights.

Nothing here is registered; the criteria families build on it:

* :class:`GroupCriterion`: a criterion that computes one score per group of the pattern
  (a neuron, a filter, an input channel, a block) and hands it to every element of the group;
* :func:`ordered_scores`: scores that reproduce a greedy removal order (merges, ThiNet);
* :class:`Link` and :func:`links`: which layer reads the units of a layer, for criteria that
  move a removed unit's contribution into the next layer (merges, bias folding, NISP);
* forward hooks that watch (or gate) what flows out of a layer, and the unfolded inputs of a
  Linear or Conv layer for reconstruction criteria (ThiNet, LASSO channel selection).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import masks
from ..modes import evaluating
from ..patterns import NM, Pattern, Unstructured
from ..targets import default_targets
from .base import Context, Criterion

#: Layers whose units these helpers understand.
UNIT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


# --- groups -------------------------------------------------------------------------------


class GroupCriterion(Criterion):
    """A criterion whose rule is defined per group of the pattern, not per weight.

    Subclasses implement :meth:`group_scores`, returning per tensor either one score per
    group (shape ``(n_groups,)``) or, where the rule is element-wise for this pattern, a
    score per element.  Every element of a group receives the group's score and the group
    score is read back with ``max`` (so the user's ``reduction`` does not apply).
    ``supported_patterns`` names the patterns the rule is defined for (``None``: all).
    """

    group_reduction = "max"  # every element of a group carries the group's score

    def group_scores(
        self, model: nn.Module, names: list[str], pattern: Pattern, context: Context
    ) -> dict[str, torch.Tensor]:
        """One score per group of ``pattern`` (or per element) for each named tensor."""
        raise NotImplementedError

    def scores(self, model: nn.Module, names: list[str], context: Context):
        pattern = context.pattern or Unstructured()
        out = {}
        for n, g in self.group_scores(model, names, pattern, context).items():
            shape = tuple(masks.weight(model, n).shape)
            out[n] = g.reshape(shape) if g.numel() == math.prod(shape) else pattern.expand(g, shape)
        return out


def element_wise(pattern: Pattern, shape: tuple[int, ...]) -> bool:
    """Whether ``pattern`` chooses single elements of ``shape`` (unstructured or N:M)."""
    return isinstance(pattern, NM) or pattern.group_size(shape) == 1


def alive_units(model: nn.Module, name: str) -> torch.Tensor:
    """Bool per output unit of ``name``: True unless its whole row is masked."""
    mask = masks.get_mask(model, name)
    units = masks.weight(model, name).shape[0]
    if mask is None:
        return torch.ones(units, dtype=torch.bool)
    return mask.reshape(units, -1).bool().any(dim=1).cpu()


def removed_units(keep: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
    """Indices of units alive before and dropped by the element keep-mask ``keep``."""
    kept = keep.reshape(keep.shape[0], -1).any(dim=1).cpu()
    return torch.nonzero(alive & ~kept).flatten()


def ordered_scores(order: torch.Tensor, saliency: torch.Tensor, size: int) -> torch.Tensor:
    """Scores (float64, one per unit) under which the lowest ``k`` are the greedy's first ``k``.

    ``order`` lists unit indices in the order a greedy procedure removes them, ``saliency``
    the cost it paid at each removal.  The scores follow the running maximum of the cost, so
    that they are comparable across layers (global budget), nudged to the next float where
    the cost went down so that the greedy order is kept exactly.  Units not in ``order``
    score ``-inf`` (already pruned).
    """
    out = torch.full((size,), -math.inf, dtype=torch.float64)
    previous = -math.inf
    for unit, cost in zip(order.tolist(), saliency.double().tolist(), strict=True):
        value = max(cost, previous)
        if value <= previous:  # equal to the last one: the next float up keeps the order
            value = math.nextafter(previous, math.inf)
        out[unit] = previous = value
    return out


def greedy_merge(
    pair_cost: torch.Tensor,
    outgoing: torch.Tensor,
    alive: torch.Tensor,
    alpha: torch.Tensor | None = None,
    mean: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy unit merging, shared by ``neuron_merge`` and ``correlation_merge``.

    ``pair_cost[j, i]``: how badly unit ``i`` stands in for unit ``j``; ``outgoing``: the
    ``(out, units, k)`` weights that read the units.  At each step the alive unit ``j`` with
    the smallest ``|a_j|^2 * min_i pair_cost[j, i]`` (``|a_j|^2``: sum, or with ``mean`` the
    mean, of the squares of its outgoing weights) goes into its best stand-in ``i``, whose
    outgoing weights become ``a_i + alpha[j, i] * a_j`` (``alpha`` 1 by default).  The last
    alive unit has nowhere to go; it comes last, at the highest cost paid before.

    Returns ``(order, saliency, into)``: the units in the order they merge, the cost paid at
    each step, and where each went (-1 for the last).
    """
    # NumPy: a loop of small steps, where torch's per-call overhead would dominate.
    out = outgoing.detach().double().cpu().numpy().copy()
    alive = alive.cpu().numpy().copy()
    cost = pair_cost.detach().double().cpu().numpy().copy()
    np.fill_diagonal(cost, np.inf)
    cost[:, ~alive] = np.inf
    ratio = None if alpha is None else alpha.detach().double().cpu().numpy()

    def weight(squares: np.ndarray) -> np.ndarray:
        return squares.mean(axis=(0, -1)) if mean else squares.sum(axis=(0, -1))

    scale = weight(out**2)
    best, stand_in = cost.min(axis=1), cost.argmin(axis=1)
    order, saliency, into = [], [], []
    while alive.sum() > 1:
        with np.errstate(invalid="ignore"):  # 0 * inf on dead rows, masked right away
            s = np.where(alive, scale * best, np.inf)
        j = int(np.argmin(s))  # the first minimum: ties go to the lower index
        i = int(stand_in[j])
        order.append(j)
        saliency.append(float(s[j]))
        into.append(i)
        out[:, i] += (1.0 if ratio is None else ratio[j, i]) * out[:, j]
        scale[i] = weight(out[:, i : i + 1] ** 2)[0]
        alive[j] = False
        cost[:, j] = np.inf
        stale = alive & (stand_in == j)  # rows whose best stand-in was j look again
        if stale.any():
            best[stale], stand_in[stale] = cost[stale].min(axis=1), cost[stale].argmin(axis=1)
    if alive.sum() == 1:  # nowhere to go: ranked last, at the highest cost seen
        order.append(int(np.flatnonzero(alive)[0]))
        saliency.append(max(saliency, default=0.0))
        into.append(-1)
    return (
        torch.tensor(order, dtype=torch.long),
        torch.tensor(saliency, dtype=torch.float64),
        torch.tensor(into, dtype=torch.long),
    )


# --- which layer reads a layer's units ---------------------------------------------------


def module_of(model: nn.Module, name: str, criterion: str = "this criterion") -> nn.Module:
    """The Linear or Conv module whose ``weight`` is ``name``; a clear error otherwise."""
    path, _, tensor = name.rpartition(".")
    module = model.get_submodule(path) if path else model
    if tensor != "weight" or not isinstance(module, UNIT_LAYERS):
        raise ValueError(
            f"{criterion} looks at the units of Linear, Conv1d and Conv2d layers, but {name!r} "
            f"is not the weight of one ({type(module).__name__}); exclude it"
        )
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
        raise ValueError(f"{criterion} does not handle grouped convolutions ({name!r}); exclude it")
    return module


@dataclass(frozen=True)
class Link:
    """Layer ``target`` reads the output units of layer ``source``.

    Unit ``j`` of ``source`` feeds ``per_unit`` consecutive inputs of ``target``: one for a
    Linear or Conv after a layer of the same kind, ``H * W`` for a Linear reading a conv's
    feature maps through a flatten (channel-major, as ``x.flatten(1)`` on NCHW gives).
    """

    source: str
    target: str
    units: int
    per_unit: int

    def outgoing(self, model: nn.Module) -> torch.Tensor:
        """``(out, units, k)`` view of ``target``'s stored weight: ``[:, j]`` reads unit ``j``.

        A view, so that editing it edits the layer (the dense tensor an optimizer updates).
        """
        w = masks.dense_weight(model, self.target)
        return w.view(w.shape[0], self.units, -1)

    def bias(self, model: nn.Module) -> torch.Tensor | None:
        """The bias of ``target`` (None when it has none)."""
        return model.get_submodule(self.target.rpartition(".")[0]).bias

    def unit_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """``target``'s input ``x`` as ``(samples, units, k)``; k matches :meth:`outgoing`.

        For a conv target every spatial position is a sample and ``k`` is 1 (the unit's
        value multiplies every tap of its kernel slice).
        """
        if x.dim() == 2:
            return x.reshape(x.shape[0], self.units, self.per_unit)
        return x.movedim(1, -1).reshape(-1, self.units, 1)


def links(
    model: nn.Module,
    names: list[str],
    next_layers: Mapping[str, str] | None = None,
    criterion: str = "this criterion",
) -> dict[str, Link]:
    """The layer that reads each named layer's units.

    By default it is the next Linear or Conv layer in module order, which is the data flow
    of a chain (MLP, LeNet).  For other networks pass ``next_layers={"conv1.weight":
    "conv2.weight", ...}``.  A layer with no reader of matching shape is an error.
    """
    order = default_targets(model)
    next_layers = dict(next_layers or {})
    found = {}
    for n in names:
        module_of(model, n, criterion)
        units = masks.weight(model, n).shape[0]
        target = next_layers.get(n)
        if target is None and n in order and order.index(n) + 1 < len(order):
            target = order[order.index(n) + 1]
        if target is None:
            raise ValueError(
                f"{criterion} moves the contribution of a removed unit into the layer that "
                f"reads it, and {n!r} has none (the output layer?); exclude it, e.g. "
                f"exclude=[{n!r}], or name its reader with next_layers={{{n!r}: ...}}"
            )
        reader = module_of(model, target, criterion)
        fan_in = reader.in_features if isinstance(reader, nn.Linear) else reader.in_channels
        linear_ok = isinstance(reader, nn.Linear) and fan_in % units == 0
        if not (linear_ok or fan_in == units):
            raise ValueError(
                f"{target!r} reads {fan_in} inputs, which do not match the {units} units of "
                f"{n!r}; pass next_layers={{{n!r}: <the layer that reads it>}}"
            )
        found[n] = Link(n, target, units, fan_in // units)
    return found


# --- watching what flows through layers ---------------------------------------------------


@contextlib.contextmanager
def forward_hooks(
    modules: Mapping[str, nn.Module],
    hook: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor | None],
) -> Iterator[None]:
    """Call ``hook(key, input, output)`` after each forward of each module.

    A hook that returns a tensor replaces the module's output (a gate on the units).
    """

    def make(key: str) -> Callable[..., Any]:
        return lambda module, inputs, output: hook(key, inputs[0], output)

    handles = [m.register_forward_hook(make(k)) for k, m in modules.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def per_unit(x: torch.Tensor) -> torch.Tensor:
    """A layer's output ``(N, C, *spatial)`` as ``(N, C, positions)`` (positions 1 for Linear)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


def unit_gate(output: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``output`` with unit ``j`` of example ``n`` scaled by ``gate[n, j]``."""
    return output * gate.reshape(gate.shape + (1,) * (output.dim() - 2))


def unfolded(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``module`` as rows ``(samples, fan_in)``, columns ordered like the weight.

    ``weight.reshape(out, -1) @ row`` is the layer's output (without bias) for that row:
    for a Linear one row per example, for a conv one row per example and output position
    (``torch.nn.functional.unfold``).
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if module.padding_mode != "zeros" or isinstance(module.padding, str):
        raise ValueError(
            "unfolding supports convolutions with numeric zero padding; set padding to an int"
        )
    if isinstance(module, nn.Conv1d):
        patches = F.unfold(
            x.unsqueeze(2),
            (1, module.kernel_size[0]),
            dilation=(1, module.dilation[0]),
            padding=(0, module.padding[0]),
            stride=(1, module.stride[0]),
        )
    else:
        patches = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def input_gram(
    model: nn.Module, name: str, context: Context, batches: int | None = None
) -> tuple[torch.Tensor, int]:
    """``(X^T X, rows)``: the Gram matrix (float64) of the unfolded inputs of layer ``name``."""
    module = module_of(model, name)
    gram: dict[str, torch.Tensor] = {}
    rows = 0

    def hook(key, inputs, output):
        nonlocal rows
        x = unfolded(module, inputs.detach()).double()
        gram[key] = gram.get(key, 0) + x.T @ x
        rows += x.shape[0]

    with evaluating(model), torch.no_grad(), forward_hooks({name: module}, hook):
        for x, _ in context.batches(batches, labels=False):
            model(x)
    return gram[name], rows

"""Layer collapse: when pruning at initialisation cuts every path through the network.

Survey section 2.4 and Tanaka et al. (2020).  At extreme sparsity a criterion that ranks
weights across layers (SNIP, global magnitude) can empty a whole layer, or leave weights
that lie on no path from the input to the output: the network then computes a constant,
whatever it is trained on.  SynFlow avoids this by design, and shape-based budgets (ERK)
keep every layer alive by construction.

The detector counts paths.  In a copy of the network, every kept weight is set to 1, every
pruned one stays 0, biases to 0 and normalisations to the identity; with an input of ones,
the summed output is then the number of input-to-output paths, and its gradient with
respect to a weight is the number of paths through that weight (the synaptic flow of
SynFlow with unit weights).  A kept weight on no path is *dead*; a layer whose weights are
all dead is *collapsed*; a network with zero paths is *disconnected*.  Counts are exact for
networks of Linear and Conv layers with ReLU, average pooling, residual sums and
normalisation layers; max pooling is replaced by average pooling in the copy (a maximum
would pass only one of several positive paths).  Attention is not supported.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize

from .. import masks
from ..pruning import prune
from ..targets import default_targets

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
_MAXPOOLS = {nn.MaxPool1d: nn.AvgPool1d, nn.MaxPool2d: nn.AvgPool2d, nn.MaxPool3d: nn.AvgPool3d}


def _unit_network(model: nn.Module, names: list[str]) -> nn.Module:
    """A float64 copy in which kept weights are 1, pruned ones 0 and everything else the
    identity: biases 0, norms with unit scale and statistics, max pooling averaged."""
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, _NORMS):
                for attr, value in (("running_mean", 0.0), ("running_var", 1.0)):
                    if getattr(module, attr, None) is not None:
                        getattr(module, attr).fill_(value)
                module.eps = 0.0
            for attr, child in list(module.named_children()):
                # isinstance: LeNet-5's pool is a faster subclass of nn.MaxPool2d
                swap = next((avg for mx, avg in _MAXPOOLS.items() if isinstance(child, mx)), None)
                if swap is not None:
                    setattr(
                        module,
                        attr,
                        swap(child.kernel_size, child.stride, child.padding, child.ceil_mode),
                    )
        for full_name, p in net.named_parameters():
            plain = full_name.replace(".parametrizations.", ".").replace(".original", "")
            if plain in names and full_name.endswith(".original"):
                p.fill_(1.0)  # through its mask, a masked weight becomes the mask itself
            elif plain in names:
                p.copy_(p != 0)  # an unmasked (e.g. squashed) weight: its zeros are pruned
            elif plain.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)  # norm scales, unpruned weights: pass everything through
    return net


def path_counts(
    model: nn.Module,
    names: Iterable[str] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> tuple[float, dict[str, torch.Tensor]]:
    """``(total paths, {name: paths through each weight})`` of the masked network.

    ``names`` defaults to every Linear/Conv weight; ``input_shape`` (one example) to
    ``model.input_shape``.  Paths through pruned weights are 0.  Counts are float64,
    exact up to 2**53.
    """
    names = list(default_targets(model) if names is None else names)
    shape = input_shape or getattr(model, "input_shape", None)
    if shape is None:
        raise ValueError(
            "the detector feeds an input of ones: pass input_shape=(...) (one example's "
            "shape) or give the model an input_shape attribute"
        )
    net = _unit_network(model, names)
    with parametrize.cached():
        weights = [masks.weight(net, n) for n in names]
        out = net(torch.ones(1, *shape, dtype=torch.float64))
        if out.dim() > 2:
            raise ValueError("path counting needs a (batch, outputs) network output")
        total = out.sum()
        grads = torch.autograd.grad(total, weights, allow_unused=True)
    through = {}
    for n, w, g in zip(names, weights, grads, strict=True):
        g = torch.zeros_like(w) if g is None else g
        # dR/dw counts the paths through w's position; a pruned weight carries none
        through[n] = (g * (w != 0)).detach()
    return float(total.detach()), through


def connectivity(
    model: nn.Module,
    names: Iterable[str] | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> pd.DataFrame:
    """One row per layer: ``name, weights, kept, connected, dead, collapsed``.

    ``connected``: kept weights on at least one input-to-output path; ``dead``: kept
    weights on none (they can change nothing the network computes); ``collapsed``: the
    layer keeps no connected weight.  ``df.attrs["paths"]`` is the total number of paths
    and ``df.attrs["disconnected"]`` whether it is zero.
    """
    total, through = path_counts(model, names, input_shape)
    rows = []
    for n, t in through.items():
        kept = int((masks.weight(model, n) != 0).sum())
        connected = int((t > 0).sum())
        rows.append(
            {
                "name": n,
                "weights": t.numel(),
                "kept": kept,
                "connected": connected,
                "dead": kept - connected,
                "collapsed": connected == 0,
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["paths"] = total
    df.attrs["disconnected"] = total == 0
    return df


def is_disconnected(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> bool:
    """Whether no path from the input reaches the output (see :func:`path_counts`)."""
    return path_counts(model, input_shape=input_shape)[0] == 0


# --- the experiment ---------------------------------------------------------------------

#: Methods compared at initialisation: criterion and budget for :func:`sparsity_lab.prune`.
AT_INIT = {
    "snip": ("snip", "global"),
    "magnitude": ("magnitude", "global"),
    "synflow": ("synflow", "global"),
    "erk": ("random", "erk"),
}


def prune_at_init(
    model: nn.Module, method: str, sparsity: float, data: Any, seed: int = 0
) -> nn.Module:
    """Prune an untrained ``model`` in place with one of :data:`AT_INIT`; returns it."""
    if method not in AT_INIT:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(AT_INIT)}")
    criterion, budget = AT_INIT[method]
    return prune(model, criterion, sparsity, budget=budget, data=data, seed=seed)


def masks_at_init(
    model: nn.Module, method: str, sparsity: float, data: Any, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The masks one of :data:`AT_INIT` picks for an untrained ``model``, left untouched.

    Start a network from them with :func:`sparsity_lab.recipes.sparse_start` (kept weights
    rescaled to their sparse fan-in), as every comparison at initialisation does.
    """
    pruned = prune_at_init(copy.deepcopy(model), method, sparsity, data=data, seed=seed)
    return {n: m.detach().bool().clone() for n, m in masks.masks(pruned).items()}


def collapse_summary(model: nn.Module) -> dict[str, Any]:
    """``{"paths", "disconnected", "collapsed_layers", "dead_share", "min_layer_density"}``:
    the detector's verdict on one pruned model, in plain numbers."""
    df = connectivity(model)
    kept = int(df["kept"].sum())
    return {
        "paths": df.attrs["paths"],
        "disconnected": bool(df.attrs["disconnected"]),
        "collapsed_layers": int(df["collapsed"].sum()),
        "dead_share": float(df["dead"].sum() / kept) if kept else 1.0,
        "min_layer_density": float((df["kept"] / df["weights"]).min()),
    }

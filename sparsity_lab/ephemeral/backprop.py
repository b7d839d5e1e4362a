"""Sparse back-propagation: compute the backward pass from a few entries only.

Training spends about two thirds of its arithmetic in the backward pass.  Two ways to make
it sparse (survey sections 2.3, 5 and 6), both written as ``torch.autograd.Function`` for
a Linear layer ``y = x W^T + b``:

* **meProp** (Sun 2017) keeps, for each example, only the ``k`` largest entries of the
  error ``dL/dy`` arriving at the layer; the weight gradient and the error sent further
  down are computed from those ``k`` entries.
* **SWAT** (Raihan 2020) computes the forward pass with the top-``K`` weights only, and
  stores only the top-``K`` activations for the backward pass: the error is propagated
  through the sparse weights and the weight gradient is formed from the sparse
  activations, yet every weight receives an update.

:func:`sparsify_backprop` swaps a model's Linear layers for :class:`MePropLinear` or
:class:`SWATLinear` (same parameters and names, so optimizers and masks still apply).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..patterns import prune_lowest
from ..registry import register

__all__ = [
    "topk_per_row",
    "topk_mask",
    "MePropFunction",
    "SWATFunction",
    "MePropLinear",
    "SWATLinear",
    "meprop",
    "swat",
    "sparsify_backprop",
]


def topk_per_row(x: torch.Tensor, k: int) -> torch.Tensor:
    """``x`` with all but the ``k`` entries of largest ``|x|`` of each row set to 0.

    Rows are the examples (all dimensions but the last are flattened into rows).
    """
    flat = x.reshape(-1, x.shape[-1])
    if k >= flat.shape[1]:
        return x
    idx = flat.abs().topk(k, dim=1).indices
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
    return (flat * keep).reshape(x.shape)


def topk_mask(x: torch.Tensor, density: float) -> torch.Tensor:
    """Bool mask of the ``max(1, round(density * numel))`` entries of largest ``|x|``.

    NaN counts as the largest, as in ``topk``; of equal entries the later ones are kept
    (:func:`~sparsity_lab.patterns.prune_lowest`'s order).  One partial selection, not
    ``topk``: SWAT selects over every weight and input of a layer at every step, and
    ``topk`` of half of LeNet-300-100's first layer took 9.5 ms on one thread against 1.5.
    """
    n = x.numel()
    k = max(1, round(density * n))
    if k >= n:
        return torch.ones_like(x, dtype=torch.bool)
    scores = x.detach().abs().flatten().nan_to_num(math.inf)
    return prune_lowest(scores, n - k).view(x.shape)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer (entries kept per example), got {k!r}")
    return k


def _check_density(density: float, what: str) -> float:
    if not 0 < density <= 1:
        raise ValueError(f"{what} must be in (0, 1] (the fraction kept), got {density!r}")
    return float(density)


class MePropFunction(torch.autograd.Function):
    """``y = x W^T + b``; backward from the top-``k`` entries of each row of ``dL/dy``."""

    @staticmethod
    def forward(ctx, x, weight, bias, k: int, record: dict | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.k, ctx.record = k, record
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        sparse = topk_per_row(grad_out, ctx.k)
        if ctx.record is not None:
            ctx.record["grad_output"] = sparse.detach()
        grad_x = sparse @ weight
        grad_w = sparse.reshape(-1, sparse.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        grad_b = sparse.reshape(-1, sparse.shape[-1]).sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None


class SWATFunction(torch.autograd.Function):
    """``y = x (W*M_w)^T + b``; backward with the sparse weights and sparse saved inputs."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_density: float, act_density: float, record):
        w_sparse = weight * topk_mask(weight, weight_density)
        # only the top-K activations are stored for the backward pass: the memory saving
        x_sparse = x * topk_mask(x, act_density)
        ctx.save_for_backward(x_sparse, w_sparse)
        ctx.has_bias = bias is not None
        if record is not None:
            record["weight"], record["input"] = w_sparse.detach(), x_sparse.detach()
        return F.linear(x, w_sparse, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x_sparse, w_sparse = ctx.saved_tensors
        grad_x = grad_out @ w_sparse
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_w = g2.T @ x_sparse.reshape(-1, x_sparse.shape[-1])  # dense: every weight learns
        grad_b = g2.sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None, None


class _SparseBackpropLinear(nn.Linear):
    """A Linear that shares the parameters of the Linear it replaces."""

    def __init__(self, linear: nn.Linear) -> None:
        if parametrize.is_parametrized(linear):
            raise ValueError(
                "this Linear carries a parametrization (a mask?); sparse back-propagation "
                "layers need plain weights: squash the masks first (sparsity_lab.masks.squash)"
            )
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.record: dict[str, torch.Tensor] | None = None  # set to {} to keep the tensors


class MePropLinear(_SparseBackpropLinear):
    """A Linear whose backward pass uses the top-``k`` output errors of each example."""

    def __init__(self, linear: nn.Linear, k: int) -> None:
        super().__init__(linear)
        self.k = _check_k(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return MePropFunction.apply(x, self.weight, self.bias, self.k, self.record)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k}"


class SWATLinear(_SparseBackpropLinear):
    """A Linear trained with sparse weights and sparse stored activations (SWAT)."""

    def __init__(self, linear: nn.Linear, weight_density: float, act_density: float) -> None:
        super().__init__(linear)
        self.weight_density = _check_density(weight_density, "weight_density")
        self.act_density = _check_density(act_density, "act_density")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return SWATFunction.apply(
            x, self.weight, self.bias, self.weight_density, self.act_density, self.record
        )

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, weight_density={self.weight_density}, "
            f"act_density={self.act_density}"
        )


@register("ephemeral", "meprop", section="5")
def meprop(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, k: int):
    """meProp (Sun 2017): a Linear layer that back-propagates only the top-k errors.

    Rule: forward ``y = x W^T + b``; backward with ``d = top_k(dL/dy)`` (per example, by
    ``|.|``, the rest set to 0): ``dL/dx = d W``, ``dL/dW = d^T x``, ``dL/db = sum d``.
    With ``k`` = ``out_features`` it is exactly the dense gradient.  Linear layers.
    """
    return MePropFunction.apply(x, weight, bias, _check_k(k), None)


@register("ephemeral", "swat", section="5")
def swat(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_density: float,
    act_density: float,
):
    """SWAT (Raihan 2020): sparse weights forward and backward, sparse stored activations.

    Rule: ``W_s = top_K(W)``, ``x_s = top_K(x)`` (by ``|.|`` over the whole tensor, keeping
    ``weight_density`` / ``act_density`` of the entries); forward ``y = x W_s^T + b``;
    backward ``dL/dx = (dL/dy) W_s``, ``dL/dW = (dL/dy)^T x_s`` (dense: every weight is
    updated), ``dL/db = sum dL/dy``.  With both densities 1 it is exactly the dense
    gradient.  SWAT-U (unstructured), Linear layers.
    """
    return SWATFunction.apply(
        x,
        weight,
        bias,
        _check_density(weight_density, "weight_density"),
        _check_density(act_density, "act_density"),
        None,
    )


def sparsify_backprop(
    model: nn.Module,
    method: str = "meprop",
    *,
    layers: Iterable[str] | None = None,
    k: int | None = None,
    density: float | None = None,
    weight_density: float = 1.0,
    act_density: float = 1.0,
) -> nn.Module:
    """Swap Linear layers of ``model`` (in place) for meProp or SWAT layers; returns ``model``.

    ``method="meprop"``: give ``k`` (errors kept per example) or ``density`` (fraction of
    each layer's outputs, ``k = max(1, round(density * out_features))``).
    ``method="swat"``: give ``weight_density`` and ``act_density``.  ``layers`` are module
    paths (default: every Linear).  Parameters are shared, so names and optimizers are
    unaffected.
    """
    if method not in ("meprop", "swat"):
        raise ValueError(f"method must be 'meprop' or 'swat', got {method!r}")
    if method == "meprop" and (k is None) == (density is None):
        raise ValueError("meprop needs exactly one of k= (errors kept) or density=")
    if layers is None:
        layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n]
    for path in list(layers):
        linear = model.get_submodule(path)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{path!r} is a {type(linear).__name__}, not a Linear layer")
        if method == "meprop":
            keep = (
                k
                if k is not None
                else max(1, round(_check_density(density, "density") * linear.out_features))
            )
            new: nn.Module = MePropLinear(linear, min(keep, linear.out_features))
        else:
            new = SWATLinear(linear, weight_density, act_density)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model

"""Activation functions that make activations sparse on purpose: k-WTA and FATReLU.

A ReLU zeros whatever is negative, so how many zeros it makes depends on the data.  The
two functions here *force* a level of activation sparsity:

* :class:`KWTA` keeps the ``k`` largest activations of each example (a fixed count);
* :class:`FATReLU` zeros every activation below a threshold ``T > 0`` (a fixed level), and
  can add an L1 penalty on the activations to push more of them below it.

Both drop into the bundled models without editing them: :func:`swap_relu` replaces every
ReLU a model applies (``F.relu``, ``torch.relu``, ``nn.ReLU``, ``Tensor.relu``) by the given
activation during the model's forward pass.  The activation module counts the zeros it
makes, so its sparsity can be read after a pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..registry import register

__all__ = [
    "SparseActivation",
    "KWTA",
    "FATReLU",
    "kwta",
    "fatrelu",
    "swap_relu",
    "activation_penalty",
    "with_activation_penalty",
]

_RELUS = {F.relu, torch.relu, torch.Tensor.relu}
_RELUS_INPLACE = {F.relu_, torch.relu_, torch.Tensor.relu_}


def kwta(x: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of each example of ``x`` (batch first), zero the rest.

    Ties at the k-th value are broken by position (``torch.topk``), so exactly ``k`` entries
    per example survive.  The gradient flows to the winners only.
    """
    flat = x.flatten(1)
    if not 1 <= k <= flat.shape[1]:
        raise ValueError(f"k must be in [1, {flat.shape[1]}] (units per example), got {k}")
    winners = flat.topk(k, dim=1).indices
    keep = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, winners, True)
    return (flat * keep).reshape(x.shape)


def fatrelu(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Forced-activation-threshold ReLU: ``x`` where ``x >= threshold``, else 0."""
    return x * (x >= threshold)


class SparseActivation(nn.Module):
    """Base class: an activation that counts the zeros it outputs.

    ``zeros`` and ``activations`` accumulate over forward passes until :meth:`reset`;
    :attr:`sparsity` is their ratio.  ``penalty`` holds the L1 penalty of the latest pass
    (a tensor in the autograd graph; 0 when ``l1 == 0``).
    """

    def __init__(self, l1: float = 0.0) -> None:
        super().__init__()
        if l1 < 0:
            raise ValueError(f"l1 must be >= 0, got {l1}")
        self.l1 = float(l1)
        self.reset()

    def reset(self) -> None:
        """Forget the counts and the penalty."""
        self.zeros = 0
        self.activations = 0
        self.penalty: torch.Tensor | float = 0.0

    @property
    def sparsity(self) -> float:
        """Fraction of the outputs since the last :meth:`reset` that were exactly 0."""
        return self.zeros / self.activations if self.activations else float("nan")

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        """The activation itself."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.activate(x)
        self.zeros += int((y == 0).sum())
        self.activations += y.numel()
        if self.l1:
            # mean over examples of the summed |activation|: the penalty of Kurtz et al.
            self.penalty = self.penalty + self.l1 * y.abs().sum() / max(1, len(y))
        return y


@register("ephemeral", "kwta", section="5")
class KWTA(SparseActivation):
    """k winners take all (Makhzani & Frey 2015): keep the ``k`` largest units per example.

    Rule: ``y_i = x_i`` if ``x_i`` is among the ``k`` largest entries of its example, else
    0.  Give ``k`` (a count) or ``density`` (a fraction of each layer's units, so one
    module fits layers of any width; ``k = max(1, round(density * units))``).  Winners are
    taken over all units of an example (channels x positions for a convolution).  Ties at
    the k-th value are broken by position, so exactly ``k`` units survive.  As in k-sparse
    autoencoders the winners keep their value, even a negative one.
    """

    def __init__(self, k: int | None = None, *, density: float | None = None) -> None:
        super().__init__()
        if (k is None) == (density is None):
            raise ValueError("give exactly one of k (units kept) or density (fraction kept)")
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if density is not None and not 0 < density <= 1:
            raise ValueError(f"density must be in (0, 1], got {density!r}")
        self.k, self.density = k, density

    def units_kept(self, units: int) -> int:
        """``k`` for a layer with ``units`` units per example."""
        if self.k is not None:
            return min(self.k, units)
        return max(1, round(self.density * units))

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        return kwta(x, self.units_kept(x[0].numel()))

    def extra_repr(self) -> str:
        return f"k={self.k}" if self.k is not None else f"density={self.density}"


@register("ephemeral", "fatrelu", section="5")
class FATReLU(SparseActivation):
    """Forced activation threshold ReLU (Kurtz 2020), with an optional L1 penalty.

    Rule: ``y = x`` if ``x >= T`` else 0 (a ReLU for ``T = 0``).  With ``l1 > 0`` each
    forward pass stores ``penalty = l1 * mean over examples of sum |y|``, to be added to
    the loss (:func:`with_activation_penalty`): the L1 regularisation Kurtz et al. use to
    induce activation sparsity before raising the threshold.  Element-wise, any layer.
    """

    def __init__(self, threshold: float = 0.0, *, l1: float = 0.0) -> None:
        super().__init__(l1=l1)
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0 (0 gives a ReLU), got {threshold}")
        self.threshold = float(threshold)

    def activate(self, x: torch.Tensor) -> torch.Tensor:
        return fatrelu(x, self.threshold)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, l1={self.l1}"


class _ReplaceReLU(TorchFunctionMode):
    """Routes every ReLU call to ``activation`` while it is active."""

    def __init__(self, activation: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.activation = activation

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS:
            out = self.activation(args[0])
            # nn.ReLU(inplace=True) calls F.relu(x, inplace=True): honour the in-place write
            inplace = (kwargs or {}).get("inplace", False) or (len(args) > 1 and args[1])
            return args[0].copy_(out) if inplace else out
        if func in _RELUS_INPLACE:
            return args[0].copy_(self.activation(args[0]))
        return func(*args, **(kwargs or {}))


class SwappedReLU:
    """Handle returned by :func:`swap_relu`; :meth:`remove` restores the plain ReLUs."""

    def __init__(self, model: nn.Module, activation: nn.Module) -> None:
        self.model, self.activation = model, activation
        self._mode: _ReplaceReLU | None = None
        self._relu_modules = [m for m in model.modules() if isinstance(m, nn.ReLU)]
        self._handles = [
            model.register_forward_pre_hook(self._enter),
            model.register_forward_hook(self._leave, always_call=True),
        ]

    def _enter(self, module, args) -> None:
        if self.activation.l1:
            self.activation.penalty = 0.0  # the penalty of this pass only
        self._mode = _ReplaceReLU(self.activation)
        self._mode.__enter__()

    def _leave(self, module, args, output) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def remove(self) -> None:
        """Stop replacing the model's ReLUs."""
        for h in self._handles:
            h.remove()
        self._handles = []


def swap_relu(model: nn.Module, activation: nn.Module) -> SwappedReLU:
    """Replace every ReLU that ``model`` applies by ``activation`` (in place, reversible).

    Works on the bundled models as they are: it intercepts the ReLU calls during the
    model's forward pass, so parameter names and the state dict do not change.  Returns a
    handle; ``handle.remove()`` restores the ReLUs.  One ``activation`` serves every site:
    :class:`KWTA` with ``density`` adapts ``k`` to each layer's width.
    """
    if not isinstance(activation, nn.Module):
        raise TypeError(f"activation must be an nn.Module such as KWTA(...), got {activation!r}")
    return SwappedReLU(model, activation)


def activation_penalty(model_or_activation: nn.Module | SwappedReLU) -> torch.Tensor | float:
    """The L1 activation penalty of the latest forward pass (0 when there is none).

    Accepts a :class:`SparseActivation`, a :class:`SwappedReLU` handle, or a model whose
    submodules include sparse activations (their penalties are summed).
    """
    if isinstance(model_or_activation, SwappedReLU):
        return model_or_activation.activation.penalty
    found = [m for m in model_or_activation.modules() if isinstance(m, SparseActivation)]
    return sum((m.penalty for m in found), 0.0)


def with_activation_penalty(
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    source: nn.Module | SwappedReLU,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``loss_fn`` plus the activation penalty of ``source`` (for ``train.fit(loss_fn=...)``)."""

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(output, target) + activation_penalty(source)

    return loss

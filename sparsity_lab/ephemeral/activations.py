"""Activation sparsity: the zeros a network makes on its own, example by example.

A ReLU outputs exactly zero for every negative input, so a trained ReLU network carries
*ephemeral* sparsity in its activations: which entries are zero changes with the input,
unlike a weight mask (survey section 2.3, "model vs ephemeral sparsity").
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..registry import register

__all__ = ["relu_stats"]

# Every way a ReLU is applied: the module (which calls F.relu), the functional, the tensor
# method and their in-place forms.
_RELUS = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _Sites:
    """Accumulates, per ReLU site, the count of activations, exact zeros and live units."""

    def __init__(self) -> None:
        self.stats: dict[str, dict[str, Any]] = {}

    def add(self, site: str, out: torch.Tensor, batch: int) -> None:
        zero = (out == 0).detach()
        per_example = zero.reshape(batch, -1) if batch and out.shape[0] == batch else None
        s = self.stats.setdefault(
            site,
            {"shape": tuple(out.shape[1:]), "activations": 0, "zeros": 0, "ever_on": None},
        )
        s["activations"] += zero.numel()
        s["zeros"] += int(zero.sum())
        if per_example is not None:  # a unit is dead if it is zero for every example
            on = (~per_example).any(dim=0)
            s["ever_on"] = on if s["ever_on"] is None else s["ever_on"] | on


class _Watch(TorchFunctionMode):
    """Sees every ReLU call and names its site after the layer that produced its input."""

    def __init__(self, model: nn.Module, sites: _Sites) -> None:
        super().__init__()
        self.sites = sites
        self.batch = 0
        self.modules = dict(model.named_modules())
        # id of a module's output -> (module path, the output).  Holding the output keeps
        # its id from being reused by a later tensor within the same forward pass.
        self.producer: dict[int, tuple[str, torch.Tensor]] = {}
        self.stack: list[str] = []  # modules being run, innermost last
        self.calls: dict[str, int] = {}
        self.handles = []
        for path, module in self.modules.items():
            self.handles.append(module.register_forward_pre_hook(self._enter(path)))
            self.handles.append(module.register_forward_hook(self._leave(path)))

    def _enter(self, path: str):
        def hook(module, args):
            self.stack.append(path)

        return hook

    def _leave(self, path: str):
        def hook(module, args, out):
            self.stack.pop()
            if isinstance(out, torch.Tensor):
                self.producer[id(out)] = (path, out)

        return hook

    def reset(self, batch: int) -> None:
        """Forget the previous batch's tensors before running one of ``batch`` examples."""
        self.batch = batch
        self.producer.clear()
        self.calls.clear()
        self.stack.clear()

    def site(self, x: torch.Tensor) -> str:
        """The name of the ReLU site that rectifies ``x``."""
        inner = self.stack[-1] if self.stack else ""
        if isinstance(self.modules.get(inner), nn.ReLU):
            return inner
        if id(x) in self.producer:
            return f"relu({self.producer[id(x)][0] or 'model'})"
        # a ReLU of something no layer returned (a sum, a reshape): name it by position
        k = self.calls.get(inner, 0)
        self.calls[inner] = k + 1
        return f"{inner or 'model'}:relu#{k}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in _RELUS and isinstance(out, torch.Tensor):
            self.sites.add(self.site(args[0]), out, self.batch)
        return out

    def remove(self) -> None:
        """Remove the hooks from the model."""
        for h in self.handles:
            h.remove()


def _inputs(data: Any, limit: int | None) -> Iterator[Any]:
    """Inputs from a tensor, an ``(inputs, targets)`` tuple or an iterable of batches."""
    if isinstance(data, torch.Tensor):
        yield data
        return
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        yield data[0]
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            f"data must be a tensor, an (inputs, targets) tuple or a DataLoader, got "
            f"{type(data).__name__}"
        )
    for i, batch in enumerate(data):
        if limit is not None and i >= limit:
            return
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@register("ephemeral", "relu_stats", section="5")
def relu_stats(model: nn.Module, data: Any, *, limit: int | None = None) -> pd.DataFrame:
    """Activation sparsity of every ReLU (measured; see Glorot et al. 2011, Kurtz et al. 2020).

    Rule: sparsity of a ReLU = fraction of its outputs that are exactly 0 over ``data``;
    a unit (one output position of one example) is dead when it is 0 for every example.

    Runs ``model`` in eval mode without gradients on up to ``limit`` batches of ``data``
    (a tensor, an ``(inputs, targets)`` tuple or a DataLoader) and watches every ReLU,
    whether a ``nn.ReLU`` module, ``F.relu``, ``torch.relu`` or ``Tensor.relu``.  A site is
    named after the ReLU module, else ``relu(<layer>)`` after the layer whose output it
    rectifies, else ``<module>:relu#k`` (the k-th such ReLU inside that module's forward).

    Returns one row per site with columns site, shape (one example), activations, zeros,
    sparsity, dead_units (fraction of units never active).  Applies to any model; a model
    without ReLU raises a ValueError.
    """
    sites = _Sites()
    watch = _Watch(model, sites)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in _inputs(data, limit):
                watch.reset(len(x))
                with watch:
                    model(x)
    finally:
        watch.remove()
        model.train(was_training)
    if not sites.stats:
        raise ValueError(
            f"{type(model).__name__} applied no ReLU to this data, so there is no ReLU "
            f"activation sparsity to measure (a GELU, say, is almost never exactly 0)"
        )
    rows = []
    for site, s in sites.stats.items():
        dead = float("nan") if s["ever_on"] is None else 1 - float(s["ever_on"].float().mean())
        rows.append(
            {
                "site": site,
                "shape": s["shape"],
                "activations": s["activations"],
                "zeros": s["zeros"],
                "sparsity": s["zeros"] / s["activations"],
                "dead_units": dead,
            }
        )
    return pd.DataFrame(rows)

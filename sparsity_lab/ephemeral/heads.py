"""Attention head pruning: many heads can go once the model is trained.

Two ways to decide which heads of a trained transformer matter:

* :func:`head_importance` (Michel 2019): put a gate ``xi_h = 1`` on the output of every
  head and score it by ``|dL / d xi_h|``, the first-order change of the loss if the head
  were removed;
* :class:`HeadL0Gates` (Voita 2019): learn a stochastic Hard Concrete gate per head with
  an L0 penalty; heads whose gate closes are pruned.

Either way :func:`prune_heads` turns the decision into masks with the ``head`` pattern
(rows of q, k, v and columns of the output projection), and
:func:`sparsity_lab.shrink.shrink` then removes the heads physically, giving a smaller
dense model that computes the same function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .. import masks, models, shrink
from ..patterns import Head, check_sparsity, count, prune_lowest
from ..registry import register

__all__ = [
    "attention_layers",
    "head_importance",
    "HeadL0Gates",
    "prune_heads",
    "head_masks",
    "heads_kept",
    "shrink_heads",
]


def attention_layers(model: nn.Module) -> dict[str, models.MultiHeadSelfAttention]:
    """Every self-attention layer of ``model`` by path (raises if there is none)."""
    found = {p: m for p, m in model.named_modules() if isinstance(m, models.MultiHeadSelfAttention)}
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no MultiHeadSelfAttention layer; head pruning needs "
            f"a transformer such as models.build('tiny_transformer', ...)"
        )
    return found


def _head_size(attn: models.MultiHeadSelfAttention) -> int:
    return attn.q.out_features // attn.n_heads


def _gate_hooks(model: nn.Module, gates: Callable[[str], torch.Tensor]) -> list:
    """Multiply each head's output by ``gates(path)`` (one value per head), in place.

    The heads' outputs are the input of the output projection ``out``, laid out as
    ``(B, L, H * d)`` with head ``h`` in columns ``h*d : (h+1)*d``.
    """
    handles = []
    for path, attn in attention_layers(model).items():
        size = _head_size(attn)

        def pre(module, args, path=path, d=size):
            return (args[0] * gates(path).repeat_interleave(d),)

        handles.append(attn.out.register_forward_pre_hook(pre))
    return handles


def _batches(data: Any, limit: int | None):
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        yield data
        return
    for i, batch in enumerate(data):
        if limit is not None and i >= limit:
            return
        yield batch


@register("ephemeral", "head_importance", section="6.2")
def head_importance(
    model: nn.Module,
    data: Any,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    limit: int | None = None,
    normalize: bool = True,
) -> dict[str, torch.Tensor]:
    """Head importance scores (Michel 2019): ``I_h = E_batches |dL / d xi_h|`` at ``xi = 1``.

    Rule: every head's output is multiplied by a gate ``xi_h`` (all 1, so the model is
    unchanged); ``I_h`` accumulates ``|dL/d xi_h|`` over up to ``limit`` batches of
    ``data`` (an ``(inputs, targets)`` pair or a DataLoader), which equals
    ``|sum_x A_h(x)^T dL/dA_h(x)|`` with ``A_h`` the head's output: the first-order change
    of the loss when the head is removed.  With ``normalize`` each layer's scores are
    divided by their L2 norm, as the paper does before ranking heads across layers.
    Returns ``{attention layer path: (n_heads,) scores}``.  Pattern: ``head``.
    """
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    layers = attention_layers(model)
    xi = {p: torch.ones(m.n_heads, requires_grad=True) for p, m in layers.items()}
    scores = {p: torch.zeros(m.n_heads) for p, m in layers.items()}
    handles = _gate_hooks(model, lambda p: xi[p])
    was = model.training
    model.eval()  # deterministic forward: no dropout while measuring
    try:
        seen = 0
        for inputs, targets in _batches(data, limit):
            loss = loss_fn(model(inputs), targets)
            grads = torch.autograd.grad(loss, list(xi.values()))
            for p, g in zip(xi, grads, strict=True):
                scores[p] += g.abs()
            seen += 1
        if seen == 0:
            raise ValueError("data gave no batch; pass an (inputs, targets) pair or a DataLoader")
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if normalize:
        scores = {p: s / s.norm().clamp(min=1e-12) for p, s in scores.items()}
    return scores


@register("ephemeral", "head_l0", section="6.2")
class HeadL0Gates(nn.Module):
    """Stochastic Hard Concrete gates on attention heads with an L0 penalty (Voita 2019).

    Rule (Louizos 2018's Hard Concrete, ``beta = 2/3``, ``gamma = -0.1``, ``zeta = 1.1``):
    in training ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + log_alpha) / beta)``,
    ``z = clamp(s (zeta - gamma) + gamma, 0, 1)``; in eval
    ``z = clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0, 1)``.  Each head's output is
    multiplied by its ``z``.  Penalty (expected number of open gates)
    ``L0 = sum_h sigmoid(log_alpha_h - beta log(-gamma / zeta))``; train with
    ``loss + l0_weight * gates.penalty()``.  Heads with eval gate 0 are pruned
    (:meth:`keep`).  Installs itself on ``model`` (hooks; parameter names unchanged); its
    ``log_alpha`` parameters are not the model's: give ``gates.parameters()`` to the
    optimizer too.  Pattern: ``head``.
    """

    beta, gamma, zeta = 2.0 / 3.0, -0.1, 1.1

    def __init__(self, model: nn.Module, init_log_alpha: float = 2.0) -> None:
        super().__init__()
        layers = attention_layers(model)
        self.paths = list(layers)
        self.log_alpha = nn.ParameterList(
            nn.Parameter(torch.full((m.n_heads,), float(init_log_alpha))) for m in layers.values()
        )
        self._index = {p: i for i, p in enumerate(self.paths)}
        self._handles = _gate_hooks(model, self.gate)

    def gate(self, path: str) -> torch.Tensor:
        """The gates ``z`` of the heads of layer ``path`` for one forward pass."""
        log_alpha = self.log_alpha[self._index[path]]
        if self.training:
            u = torch.rand_like(log_alpha).clamp(1e-6, 1 - 1e-6)
            s = torch.sigmoid((u.log() - (1 - u).log() + log_alpha) / self.beta)
        else:
            s = torch.sigmoid(log_alpha)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def penalty(self) -> torch.Tensor:
        """Expected number of open gates: ``sum_h P(z_h != 0)``."""
        shift = self.beta * math.log(-self.gamma / self.zeta)
        return sum(torch.sigmoid(a - shift).sum() for a in self.log_alpha)

    def open_probability(self) -> dict[str, torch.Tensor]:
        """``P(z_h != 0)`` of every head, by layer."""
        shift = self.beta * math.log(-self.gamma / self.zeta)
        return {
            p: torch.sigmoid(a - shift).detach()
            for p, a in zip(self.paths, self.log_alpha, strict=True)
        }

    @torch.no_grad()
    def keep(self) -> dict[str, torch.Tensor]:
        """Bool per head, by layer: True where the eval-mode gate is open (``z > 0``)."""
        was = self.training
        self.eval()
        try:
            return {p: self.gate(p) > 0 for p in self.paths}
        finally:
            self.train(was)

    def remove(self) -> None:
        """Take the gates off the model."""
        for h in self._handles:
            h.remove()
        self._handles = []


def head_masks(model: nn.Module, keep: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weight keep-masks for ``keep`` (bool per head, by layer) with the ``head`` pattern.

    Rows of ``q``, ``k``, ``v`` (``Head(n)``) and columns of ``out`` (``Head(n, 'in')``).
    """
    layers = attention_layers(model)
    found: dict[str, torch.Tensor] = {}
    for path, flags in keep.items():
        if path not in layers:
            raise KeyError(f"{path!r} is not an attention layer; layers: {list(layers)}")
        attn = layers[path]
        flags = torch.as_tensor(flags, dtype=torch.bool)
        if flags.shape != (attn.n_heads,):
            raise ValueError(f"{path}: need one flag per head ({attn.n_heads}), got {flags.shape}")
        for role in "qkv":
            w = masks.weight(model, f"{path}.{role}.weight")
            found[f"{path}.{role}.weight"] = Head(attn.n_heads).expand(flags, tuple(w.shape))
        w = masks.weight(model, f"{path}.out.weight")
        found[f"{path}.out.weight"] = Head(attn.n_heads, "in").expand(flags, tuple(w.shape))
    return found


def prune_heads(
    model: nn.Module,
    scores: dict[str, torch.Tensor] | None = None,
    sparsity: float | None = None,
    *,
    keep: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Mask heads of ``model`` in place; returns the bool keep-flags per layer.

    Either ``scores`` (e.g. from :func:`head_importance`) and ``sparsity``: the fraction
    ``sparsity`` of all heads with the lowest scores, ranked across layers as Michel et
    al. do; or ``keep`` directly (e.g. :meth:`HeadL0Gates.keep`).  A masked head's
    columns of ``out`` are zero, so it contributes nothing, exactly as a gate of 0.
    Masks only shrink: heads masked before stay masked.  Then
    :func:`sparsity_lab.shrink.shrink` removes them physically.
    """
    if (keep is None) == (scores is None or sparsity is None):
        raise ValueError("give either scores= and sparsity=, or keep=")
    if keep is None:
        check_sparsity(sparsity)
        paths = list(scores)
        flat = torch.cat([scores[p].detach().double().flatten() for p in paths])
        kept = prune_lowest(flat, count(sparsity, len(flat)))
        keep, start = {}, 0
        for p in paths:
            n = scores[p].numel()
            keep[p] = kept[start : start + n]
            start += n
    for name, mask in head_masks(model, keep).items():
        old = masks.get_mask(model, name)
        if old is not None:
            mask = mask & old.bool()
        masks.attach(model, name, mask)
    return {p: torch.as_tensor(k, dtype=torch.bool).clone() for p, k in keep.items()}


def heads_kept(model: nn.Module) -> dict[str, int]:
    """Number of heads per attention layer whose output still reaches the model."""
    result = {}
    for path, attn in attention_layers(model).items():
        w = masks.weight(model, f"{path}.out.weight").detach()
        d = _head_size(attn)
        alive = w.reshape(w.shape[0], attn.n_heads, d).ne(0).any(dim=2).any(dim=0)
        result[path] = int(alive.sum())
    return result


def shrink_heads(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """A smaller dense copy of ``model`` without its masked heads (:func:`shrink.shrink`)."""
    return shrink.shrink(model, example_input)

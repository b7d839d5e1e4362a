"""Conditional computation: a mixture of experts runs only a few experts per token.

A mixture-of-experts (MoE) layer holds ``E`` expert networks and a *router* that sends
each token (an example, or a position of a sequence) to ``k`` of them; the other experts
do no work for that token, so the computation per token is sparse while the parameter
count grows with ``E`` (survey sections 2.3, 5, 6).  Two routers:

* :class:`NoisyTopKGate` (``moe_topk``, Shazeer 2017): softmax over the ``k`` largest of
  noisy logits, with an importance and a load loss that balance the experts;
* :class:`SwitchGate` (``switch``, Fedus 2021): one expert per token (top-1), at most
  ``capacity`` tokens per expert, and an auxiliary loss ``E * sum_i f_i P_i``.

:class:`MoEMLP` is a small MoE feed-forward layer built on either router, and
:class:`MoEClassifier` a tiny model around it.  The routing of the latest forward pass is
kept in ``last_routing`` (which expert each token went to, whether it was dropped, the
count per expert) for pictures and tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register

__all__ = [
    "Routing",
    "NoisyTopKGate",
    "SwitchGate",
    "MoEMLP",
    "MoEClassifier",
    "cv_squared",
    "capacity_of",
    "with_aux_loss",
]


def cv_squared(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Squared coefficient of variation ``var(x) / mean(x)**2`` (0 for a single entry)."""
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.float().var() / (x.float().mean() ** 2 + eps)


def capacity_of(n_tokens: int, n_experts: int, capacity_factor: float, k: int = 1) -> int:
    """Tokens one expert may take: ``ceil(capacity_factor * k * n_tokens / n_experts)``."""
    if not capacity_factor > 0:
        raise ValueError(f"capacity_factor must be positive, got {capacity_factor!r}")
    return math.ceil(capacity_factor * k * n_tokens / n_experts)


@dataclass
class Routing:
    """Where the tokens of one batch went.

    ``experts`` and ``weights``: ``(N, k)`` chosen experts and their gate values;
    ``kept``: ``(N, k)`` False where a choice was dropped because the expert was full;
    ``counts``: ``(E,)`` tokens each expert processed; ``capacity``: the limit (None: no
    limit); ``aux_loss``: the balancing loss (a scalar in the autograd graph).
    """

    experts: torch.Tensor
    weights: torch.Tensor
    kept: torch.Tensor
    counts: torch.Tensor
    capacity: int | None
    aux_loss: torch.Tensor

    @property
    def dropped(self) -> int:
        """Number of (token, expert) choices dropped for lack of capacity."""
        return int((~self.kept).sum())


def _apply_capacity(experts: torch.Tensor, n_experts: int, capacity: int | None):
    """Keep, for each expert, its first ``capacity`` tokens in batch order (then slot order)."""
    n, k = experts.shape
    if capacity is None:
        kept = torch.ones_like(experts, dtype=torch.bool)
    else:
        # position of each choice in its expert's queue: the first choices of all tokens
        # queue before any second choice (as in GShard / Switch implementations)
        order = experts.T.reshape(-1)  # slot-major
        onehot = F.one_hot(order, n_experts)
        position = (onehot.cumsum(0) * onehot).sum(1) - 1
        kept = (position < capacity).reshape(k, n).T
    counts = torch.bincount(experts[kept], minlength=n_experts)
    return kept, counts


class _Router(nn.Module):
    """Shared parts of the routers: a linear router over ``dim`` features to ``n_experts``."""

    def __init__(self, dim: int, n_experts: int, capacity_factor: float | None) -> None:
        super().__init__()
        if n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {n_experts}")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ValueError(f"capacity_factor must be positive or None, got {capacity_factor!r}")
        self.n_experts = n_experts
        self.capacity_factor = capacity_factor
        self.w_gate = nn.Linear(dim, n_experts, bias=False)

    def capacity(self, n_tokens: int, k: int) -> int | None:
        """Tokens per expert allowed for a batch of ``n_tokens`` (None: unlimited)."""
        if self.capacity_factor is None:
            return None
        return capacity_of(n_tokens, self.n_experts, self.capacity_factor, k)


@register("ephemeral", "moe_topk", section="5")
class NoisyTopKGate(_Router):
    """Noisy top-k gating (Shazeer 2017) with the importance and load balancing losses.

    Rule: ``H(x)_i = (x W_g)_i + eps * softplus((x W_noise)_i)``, ``eps ~ N(0, 1)`` (noise
    only in training); ``G(x) = softmax(KeepTopK(H(x), k))``.  Balancing:
    ``importance_i = sum_x G(x)_i``; ``load_i = sum_x P(x, i)`` with ``P(x, i) =
    Phi((clean_i - kth_excluding_i) / noise_std_i)``, the probability that expert ``i``
    is still among the top ``k`` when only its own noise is redrawn (a smooth count);
    ``aux = w_importance * CV(importance)**2 + w_load * CV(load)**2``.  Without noise the
    load is the plain count (no gradient).  Optional ``capacity_factor`` drops choices
    beyond ``ceil(cf * k * N / E)`` per expert.  Routes tokens (rows of features).
    """

    def __init__(
        self,
        dim: int,
        n_experts: int,
        k: int = 2,
        *,
        noisy: bool = True,
        w_importance: float = 0.01,
        w_load: float = 0.01,
        capacity_factor: float | None = None,
    ) -> None:
        super().__init__(dim, n_experts, capacity_factor)
        if not 1 <= k <= n_experts:
            raise ValueError(f"k must be in [1, n_experts={n_experts}], got {k}")
        self.k = k
        self.noisy = noisy
        self.w_importance, self.w_load = w_importance, w_load
        self.w_noise = nn.Linear(dim, n_experts, bias=False)
        # start from equal logits and unit-scale noise: every expert gets a chance at first
        nn.init.zeros_(self.w_gate.weight)
        nn.init.zeros_(self.w_noise.weight)

    def forward(self, x: torch.Tensor) -> Routing:
        """Route the rows of ``x`` ``(N, dim)``."""
        clean = self.w_gate(x)
        noisy_now = self.noisy and self.training
        if noisy_now:
            noise_std = F.softplus(self.w_noise(x)) + 1e-2
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        top = logits.topk(min(self.k + 1, self.n_experts), dim=1)
        experts = top.indices[:, : self.k]
        weights = top.values[:, : self.k].softmax(dim=1)
        gates = torch.zeros_like(logits).scatter(1, experts, weights)
        importance = gates.sum(0)
        if noisy_now and self.k < self.n_experts:
            load = self._smooth_load(clean, noise_std, logits, top.values)
        else:
            load = torch.bincount(experts.flatten(), minlength=self.n_experts).to(x.dtype)
        aux = self.w_importance * cv_squared(importance) + self.w_load * cv_squared(load)
        kept, counts = _apply_capacity(experts, self.n_experts, self.capacity(len(x), self.k))
        return Routing(experts, weights * kept, kept, counts, self.capacity(len(x), self.k), aux)

    def _smooth_load(self, clean, noise_std, noisy, top_values) -> torch.Tensor:
        """``sum_x P(x, i)`` (Shazeer et al., appendix A)."""
        # threshold an expert must beat to be in the top k, all other noise kept fixed:
        # the k-th largest of the others = the (k+1)-th value if it is in, else the k-th
        in_top = noisy >= top_values[:, self.k - 1 : self.k]
        threshold = torch.where(
            in_top, top_values[:, self.k : self.k + 1], top_values[:, self.k - 1 : self.k]
        )
        normal = torch.distributions.Normal(0.0, 1.0)
        return normal.cdf((clean - threshold) / noise_std).sum(0)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, k={self.k}, noisy={self.noisy}"


@register("ephemeral", "switch", section="5")
class SwitchGate(_Router):
    """Switch routing (Fedus 2021): top-1 expert per token, with a capacity factor.

    Rule: ``p = softmax(x W_r)``; expert ``e(x) = argmax_i p_i``, gate value ``p_e(x)``;
    an expert takes at most ``capacity = ceil(capacity_factor * N / E)`` tokens, in batch
    order, and the rest are dropped (the layer outputs 0 for them, so a residual
    connection passes them on unchanged).  Auxiliary loss
    ``alpha * E * sum_i f_i P_i`` with ``f_i`` the fraction of tokens whose argmax is
    ``i`` and ``P_i`` the mean of ``p_i``: minimal (``alpha``) when routing is uniform.
    Routes tokens (rows of features).
    """

    k = 1

    def __init__(
        self, dim: int, n_experts: int, *, capacity_factor: float = 1.25, alpha: float = 0.01
    ) -> None:
        if capacity_factor is None:
            raise ValueError("switch routing needs a capacity_factor (e.g. 1.25)")
        super().__init__(dim, n_experts, capacity_factor)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> Routing:
        """Route the rows of ``x`` ``(N, dim)``."""
        probs = self.w_gate(x).softmax(dim=1)
        weights, experts = probs.max(dim=1, keepdim=True)
        fraction = torch.bincount(experts.flatten(), minlength=self.n_experts) / len(x)
        aux = self.alpha * self.n_experts * (fraction.to(probs.dtype) * probs.mean(0)).sum()
        capacity = self.capacity(len(x), 1)
        kept, counts = _apply_capacity(experts, self.n_experts, capacity)
        return Routing(experts, weights * kept, kept, counts, capacity, aux)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, capacity_factor={self.capacity_factor}"


class MoEMLP(nn.Module):
    """A mixture-of-experts MLP: ``y(x) = sum_{chosen i} g_i(x) E_i(x)``, each expert an MLP.

    ``router``: ``"moe_topk"`` (options ``k``, ``noisy``, ...) or ``"switch"`` (option
    ``capacity_factor``, ...); the options go to the router.  Accepts ``(..., dim)`` and
    routes every row (token) independently.  After a forward pass, ``last_routing`` and
    ``aux_loss`` hold the routing and the balancing loss.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int = 4,
        *,
        out_dim: int | None = None,
        router: str = "moe_topk",
        **router_options,
    ) -> None:
        super().__init__()
        out_dim = dim if out_dim is None else out_dim
        if router == "moe_topk":
            self.router: _Router = NoisyTopKGate(dim, n_experts, **router_options)
        elif router == "switch":
            self.router = SwitchGate(dim, n_experts, **router_options)
        else:
            raise ValueError(f"router must be 'moe_topk' or 'switch', got {router!r}")
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))
            for _ in range(n_experts)
        )
        self.out_dim = out_dim
        self.last_routing: Routing | None = None
        self.aux_loss: torch.Tensor = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        routing = self.router(tokens)
        out = tokens.new_zeros(len(tokens), self.out_dim)
        for e, expert in enumerate(self.experts):
            # every (token, slot) sent to expert e and not dropped
            token_idx, slot = torch.nonzero((routing.experts == e) & routing.kept, as_tuple=True)
            if len(token_idx) == 0:
                continue  # an idle expert does no work at all: the sparsity of an MoE
            weight = routing.weights[token_idx, slot].unsqueeze(1)
            out = out.index_add(0, token_idx, weight * expert(tokens[token_idx]))
        self.last_routing = routing
        self.aux_loss = routing.aux_loss
        return out.reshape(*x.shape[:-1], self.out_dim)


class MoEClassifier(nn.Module):
    """A tiny MoE model: flatten, Linear stem + ReLU, :class:`MoEMLP` (residual), Linear head."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        n_classes: int,
        dim: int = 64,
        hidden: int = 64,
        n_experts: int = 4,
        router: str = "moe_topk",
        **router_options,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.stem = nn.Linear(math.prod(self.input_shape), dim)
        self.moe = MoEMLP(dim, hidden, n_experts, router=router, **router_options)
        self.head = nn.Linear(dim, n_classes)

    @property
    def aux_loss(self) -> torch.Tensor:
        """The balancing loss of the latest forward pass."""
        return self.moe.aux_loss

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x.flatten(1)))
        return self.head(h + self.moe(h))


def with_aux_loss(loss_fn, model: nn.Module):
    """``loss_fn`` plus the balancing losses of every :class:`MoEMLP` in ``model``."""
    layers = [m for m in model.modules() if isinstance(m, MoEMLP)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no MoEMLP layer")

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return loss_fn(output, target) + sum(m.aux_loss for m in layers)

    return loss

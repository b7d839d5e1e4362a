"""Sparse attention: each query looks at a few keys instead of all of them.

Dense self-attention compares every query with every key, ``L**2`` scores per head.  Two
ways to make the attention matrix sparse (survey sections 2.3, 5 and 6):

* a **fixed pattern**, the same for every input, built as a boolean ``(L, L)`` mask
  (True where query ``i`` may attend to key ``j``): :func:`local_attention` (a sliding
  window), :func:`strided_attention` (Child 2019) and :func:`bigbird` (Zaheer 2020:
  window + random + global tokens);
* a **data-dependent** choice: :func:`topk_attention` keeps the ``k`` largest scores of
  each query (Zhao 2019), and the normalisers :func:`sparsemax` (Martins 2016) and
  :func:`entmax` (Peters 2019) replace softmax and return exact zeros themselves.

:func:`use_attention` plugs any of them into the tiny transformer
(:class:`sparsity_lab.models.TinyTransformer`) without editing it: each
:class:`~sparsity_lab.models.MultiHeadSelfAttention` is replaced by a
:class:`SparseSelfAttention` that shares its projections (same parameter names) and
calls an attention function ``fn(q, k, v, key_padding_mask)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .. import models
from ..registry import register

__all__ = [
    "local_attention",
    "strided_attention",
    "bigbird",
    "topk_attention",
    "sparsemax",
    "sparsemax_by_sorting",
    "entmax",
    "entmax15",
    "entmax_bisect",
    "sparse_attention_weights",
    "attention_fn",
    "SparseSelfAttention",
    "use_attention",
    "attention_maps",
]

AttentionFn = Callable[..., torch.Tensor]


def _check_length(length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive integer (sequence length), got {length!r}")


# ------------------------------------------------------------------------- fixed patterns


@register("ephemeral", "local_attention", section="6.2")
def local_attention(length: int, window: int, *, causal: bool = False) -> torch.Tensor:
    """Sliding-window attention mask: query ``i`` sees keys ``j`` with ``|i - j| <= window``.

    Rule: ``M_ij = |i - j| <= window`` (and ``j <= i`` when ``causal``).  Each query sees at
    most ``2 * window + 1`` keys, so the cost is linear in ``length``.  Returns a bool
    ``(length, length)`` mask, True where attention is allowed.
    """
    _check_length(length)
    if window < 0:
        raise ValueError(f"window must be >= 0, got {window}")
    i = torch.arange(length)
    diff = i[:, None] - i[None, :]
    mask = diff.abs() <= window
    return mask & (diff >= 0) if causal else mask


@register("ephemeral", "strided_attention", section="6.2")
def strided_attention(length: int, stride: int, *, causal: bool = False) -> torch.Tensor:
    """Strided attention mask (Child 2019): a local band plus every ``stride``-th key.

    Rule: ``M_ij = |i - j| < stride  or  (i - j) mod stride == 0`` (and ``j <= i`` when
    ``causal``, the setting of the paper, whose two heads each take one of the two terms).
    With ``stride ~ sqrt(L)`` each query sees ``O(sqrt(L))`` keys.  Bool ``(L, L)`` mask.
    """
    _check_length(length)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    i = torch.arange(length)
    diff = i[:, None] - i[None, :]
    mask = (diff.abs() < stride) | (diff.remainder(stride) == 0)
    return mask & (diff >= 0) if causal else mask


@register("ephemeral", "bigbird", section="6.2")
def bigbird(
    length: int, window: int = 1, n_random: int = 2, n_global: int = 1, *, seed: int = 0
) -> torch.Tensor:
    """BigBird attention mask (Zaheer 2020): window + random keys + global tokens.

    Rule: ``M = local(window) | R | G`` where every query gets ``n_random`` keys drawn
    uniformly among the others (from a generator seeded by ``seed``), and the first
    ``n_global`` tokens attend to all and are attended by all (rows and columns of ones).
    Token-level, not the paper's blocks.  Bool ``(L, L)`` mask.
    """
    _check_length(length)
    if n_random < 0 or n_global < 0:
        raise ValueError(f"n_random and n_global must be >= 0, got {n_random}, {n_global}")
    mask = local_attention(length, window)
    gen = torch.Generator().manual_seed(seed)
    for i in range(length):
        candidates = torch.nonzero(~mask[i]).flatten()
        if len(candidates):
            pick = candidates[torch.randperm(len(candidates), generator=gen)[:n_random]]
            mask[i, pick] = True
    g = min(n_global, length)
    mask[:g, :] = True
    mask[:, :g] = True
    return mask


# ---------------------------------------------------------------- sparse normalisers


@register("ephemeral", "sparsemax", section="6.2")
def sparsemax(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sparsemax (Martins 2016): the Euclidean projection of ``z`` onto the simplex.

    Rule: sort ``z`` descending; ``k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}``;
    ``tau = (sum_{j<=k(z)} z_(j) - 1) / k(z)``; ``p = max(z - tau, 0)``.  Sums to 1, with
    exact zeros for every entry below ``tau``.  Differentiable: the gradient is the paper's
    Jacobian ``diag(s) - s s^T / |S|`` (``s`` the support) applied directly, which is what
    autograd through the sort of :func:`sparsemax_by_sorting` computes, at a fraction of its
    cost (with that graph, a tiny transformer trained 1.7 times as long as with softmax).
    """
    return _Sparsemax.apply(z.transpose(dim, -1)).transpose(dim, -1)


def sparsemax_by_sorting(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """:func:`sparsemax` by the rule alone, differentiated by autograd: the reference."""
    z = z.transpose(dim, -1)
    z = z - z.max(dim=-1, keepdim=True).values.detach()  # shift-invariant; keeps sums small
    sorted_z = z.sort(dim=-1, descending=True).values
    ks = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumsum = sorted_z.cumsum(-1)
    support = 1 + ks * sorted_z > cumsum
    k = support.sum(-1, keepdim=True)  # the support is a prefix of the sorted entries
    tau = (cumsum.gather(-1, k - 1) - 1) / k.to(z.dtype)
    return (z - tau).clamp(min=0).transpose(dim, -1)


class _Sparsemax(torch.autograd.Function):
    """Sparsemax over the last dimension, with the paper's Jacobian as its backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            p = sparsemax_by_sorting(z)
        ctx.save_for_backward(p)
        return p

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (p,) = ctx.saved_tensors
        support = (p > 0).to(grad.dtype)
        mean_on_support = (grad * support).sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        return support * (grad - mean_on_support)


def entmax15(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """1.5-entmax by sorting (Peters 2019, Algorithm 2): exact, differentiable.

    Rule: ``p_i = [z_i / 2 - tau]_+^2`` with ``tau`` such that ``sum p = 1``.  On the
    sorted ``u = z / 2``, for each support size ``k``: ``mean_k``, ``ss_k`` (mean of the
    squares), ``delta_k = (1 - k (ss_k - mean_k**2)) / k``, ``tau_k = mean_k -
    sqrt(delta_k)``; the support is the largest ``k`` with ``tau_k <= u_(k)``.
    """
    z = z.transpose(dim, -1)
    u = (z - z.max(dim=-1, keepdim=True).values.detach()) / 2
    sorted_u = u.sort(dim=-1, descending=True).values
    ks = torch.arange(1, u.shape[-1] + 1, device=u.device, dtype=u.dtype)
    mean = sorted_u.cumsum(-1) / ks
    mean_sq = (sorted_u**2).cumsum(-1) / ks
    # The support size is found without a gradient: at a size past the support, delta
    # can round to exactly 0, and the gradient of its square root there (infinite, times
    # the zero that flows back to an unchosen size) would be NaN.  The gradient flows
    # through tau at the chosen size only, where delta is positive.
    with torch.no_grad():
        delta = ((1 - ks * (mean_sq - mean**2)) / ks).clamp(min=0)
        k = (mean - delta.sqrt() <= sorted_u).sum(-1, keepdim=True).clamp(min=1)
    mean_k, mean_sq_k = mean.gather(-1, k - 1), mean_sq.gather(-1, k - 1)
    delta_k = (1 - k * (mean_sq_k - mean_k**2)) / k
    tau_star = mean_k - delta_k.clamp(min=torch.finfo(u.dtype).tiny).sqrt()
    return (u - tau_star).clamp(min=0).pow(2).transpose(dim, -1)


def entmax_bisect(
    z: torch.Tensor, alpha: float = 1.5, dim: int = -1, n_iter: int = 50
) -> torch.Tensor:
    """alpha-entmax for any ``alpha > 1`` by bisection on ``tau`` (Peters 2019; Blondel 2020).

    Rule: ``p_i = [(alpha - 1) z_i - tau]_+^(1 / (alpha - 1))`` with ``tau`` found by
    bisection so that ``sum p = 1`` (the sum decreases in ``tau``; ``tau`` lies in
    ``[max - 1, max - (1/d)**(alpha - 1)]`` of ``(alpha - 1) z``).  Renormalised at the
    end.  No gradient of ``tau`` is formed: use :func:`entmax15` or :func:`sparsemax` to
    train.
    """
    if not alpha > 1:
        raise ValueError(f"alpha must be > 1 (1 is softmax, 2 is sparsemax), got {alpha!r}")
    z = z.transpose(dim, -1)
    x = (alpha - 1) * z
    d = x.shape[-1]
    top = x.max(dim=-1, keepdim=True).values
    lo = top - 1.0
    hi = top - (1.0 / d) ** (alpha - 1)
    power = 1.0 / (alpha - 1)
    for _ in range(n_iter):
        tau = (lo + hi) / 2
        total = (x - tau).clamp(min=0).pow(power).sum(-1, keepdim=True)
        too_low = total >= 1  # tau too small: the mass exceeds 1
        lo = torch.where(too_low, tau, lo)
        hi = torch.where(too_low, hi, tau)
    p = (x - lo).clamp(min=0).pow(power)
    return (p / p.sum(-1, keepdim=True)).transpose(dim, -1)


@register("ephemeral", "entmax", section="6.2")
def entmax(z: torch.Tensor, alpha: float = 1.5, dim: int = -1, n_iter: int = 50) -> torch.Tensor:
    """alpha-entmax (Peters 2019): between softmax (alpha -> 1) and sparsemax (alpha = 2).

    Rule: ``p = argmax_{p in simplex} p^T z + H_alpha(p)`` with the Tsallis entropy
    ``H_alpha``, i.e. ``p_i = [(alpha - 1) z_i - tau]_+^(1 / (alpha - 1))``, ``sum p = 1``.
    Exact zeros for small scores.  ``alpha = 1.5`` uses the exact sorting algorithm
    (:func:`entmax15`), ``alpha = 2`` is :func:`sparsemax`, any other ``alpha > 1`` uses
    bisection (:func:`entmax_bisect`, ``n_iter`` halvings).
    """
    if alpha == 1.5:
        return entmax15(z, dim)
    if alpha == 2:
        return sparsemax(z, dim)
    return entmax_bisect(z, alpha, dim, n_iter)


# ------------------------------------------------------------------- attention functions


def _block(scores: torch.Tensor, allowed: torch.Tensor, normaliser: str) -> torch.Tensor:
    """Scores with the disallowed entries pushed out of reach of the normaliser.

    Softmax gets the most negative float (its exp is exactly 0).  Sparsemax and entmax do
    arithmetic on the scores, where that number would overflow; any score more than 2
    below the row's maximum already gets exactly 0 from them, so "row minimum - 10" is
    enough and stays finite.  A row with nothing allowed gets uniform weights, as in
    :func:`sparsity_lab.models.attention_weights`.
    """
    if normaliser == "softmax":
        fill = torch.finfo(scores.dtype).min
        return scores.masked_fill(~allowed, fill)
    fill = scores.detach().amin(dim=-1, keepdim=True) - 10.0
    return torch.where(allowed, scores, fill)


def sparse_attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    *,
    mask: torch.Tensor | None = None,
    topk: int | None = None,
    normaliser: str = "softmax",
) -> torch.Tensor:
    """Attention weights ``(..., L_q, L_k)`` with an optional fixed ``mask``, a top-k choice
    and a normaliser (``"softmax"``, ``"sparsemax"`` or ``"entmax"``).

    ``mask``: bool ``(L_q, L_k)``, True where allowed; ``key_padding_mask``: ``(B, L_k)``,
    True at padding, for ``q``/``k`` of shape ``(B, H, L, d)``; ``topk``: keep only the
    ``topk`` largest allowed scores of each query.
    """
    if normaliser not in ("softmax", "sparsemax", "entmax"):
        raise ValueError(
            f"normaliser must be 'softmax', 'sparsemax' or 'entmax', got {normaliser!r}"
        )
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    allowed = torch.ones_like(scores, dtype=torch.bool)
    if mask is not None:
        if mask.shape != scores.shape[-2:]:
            raise ValueError(
                f"mask has shape {tuple(mask.shape)}, but the scores are "
                f"{tuple(scores.shape[-2:])} (queries x keys); build it for this length"
            )
        allowed = allowed & mask.to(scores.device)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    if topk is not None:
        if topk < 1:
            raise ValueError(f"topk must be a positive integer, got {topk}")
        ranked = scores.masked_fill(~allowed, -math.inf)
        if topk < scores.shape[-1]:
            idx = ranked.topk(topk, dim=-1).indices
            chosen = torch.zeros_like(allowed).scatter_(-1, idx, True)
            allowed = allowed & chosen
    blocked = _block(scores, allowed, normaliser)
    if normaliser == "softmax":
        return blocked.softmax(dim=-1)
    if normaliser == "sparsemax":
        return sparsemax(blocked, dim=-1)
    return entmax15(blocked, dim=-1)


@register("ephemeral", "topk_attention", section="6.2")
def topk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None = None,
    *,
    topk: int = 4,
) -> torch.Tensor:
    """Explicit sparse attention (Zhao 2019): each query keeps its ``topk`` largest scores.

    Rule: ``A = softmax(T_k(q k^T / sqrt(d)))`` where ``T_k`` sets every score below the
    row's ``k``-th largest to ``-inf``; output ``A v``.  Data-dependent: the pattern
    changes with the input.  Same signature as :func:`sparsity_lab.models.attention`.
    """
    return sparse_attention_weights(q, k, key_padding_mask, topk=topk) @ v


def attention_fn(
    *,
    mask: torch.Tensor | None = None,
    topk: int | None = None,
    normaliser: str = "softmax",
) -> AttentionFn:
    """An attention function ``fn(q, k, v, key_padding_mask)`` for :func:`use_attention`.

    ``attention_fn(mask=local_attention(16, 2))`` gives sliding-window attention,
    ``attention_fn(topk=4)`` top-k attention, ``attention_fn(normaliser="entmax")``
    1.5-entmax attention; they combine.
    """

    def fn(q, k, v, key_padding_mask=None):
        return (
            sparse_attention_weights(
                q, k, key_padding_mask, mask=mask, topk=topk, normaliser=normaliser
            )
            @ v
        )

    fn.options = {"mask": mask, "topk": topk, "normaliser": normaliser}
    return fn


class SparseSelfAttention(models.MultiHeadSelfAttention):
    """:class:`~sparsity_lab.models.MultiHeadSelfAttention` with a pluggable attention function.

    Shares the ``q``, ``k``, ``v`` and ``out`` projections of the layer it replaces.  With
    ``record = True`` the attention weights of the latest pass are kept in
    ``last_weights`` ``(B, H, L, L)`` (only for functions made by :func:`attention_fn`).
    """

    def __init__(self, layer: models.MultiHeadSelfAttention, fn: AttentionFn) -> None:
        nn.Module.__init__(self)
        self.n_heads = layer.n_heads
        self.q, self.k, self.v, self.out = layer.q, layer.k, layer.v, layer.out
        self.fn = fn
        self.record = False
        self.last_weights: torch.Tensor | None = None

    def forward(
        self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        if self.record and hasattr(self.fn, "options"):
            self.last_weights = sparse_attention_weights(
                q, k, key_padding_mask, **self.fn.options
            ).detach()
        heads = self.fn(q, k, v, key_padding_mask)
        return self.out(heads.transpose(1, 2).flatten(2))


def use_attention(model: nn.Module, fn: AttentionFn | None) -> nn.Module:
    """Make every self-attention layer of ``model`` use ``fn`` (in place); returns ``model``.

    ``fn(q, k, v, key_padding_mask)`` as :func:`sparsity_lab.models.attention`; ``None``
    goes back to dense softmax attention.  Parameter names do not change, so a trained
    dense model can be evaluated with sparse attention and back.
    """
    found = False
    for path, module in list(model.named_modules()):
        if not isinstance(module, models.MultiHeadSelfAttention):
            continue
        found = True
        if isinstance(module, SparseSelfAttention):
            module.fn = fn if fn is not None else models.attention
            continue
        new = SparseSelfAttention(module, fn if fn is not None else models.attention)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    if not found:
        raise ValueError(f"{type(model).__name__} has no MultiHeadSelfAttention layer")
    return model


@torch.no_grad()
def attention_maps(model: nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Attention weights ``(B, H, L, L)`` of every layer for ``tokens``, by layer path.

    Runs the model in eval mode; layers must use a function from :func:`attention_fn`
    (call ``use_attention(model, attention_fn())`` for dense softmax attention).
    """
    layers = {p: m for p, m in model.named_modules() if isinstance(m, SparseSelfAttention)}
    if not layers:
        raise ValueError("no SparseSelfAttention layer: call use_attention(model, fn) first")
    was = model.training
    model.eval()
    try:
        for m in layers.values():
            m.record = True
        model(tokens)
    finally:
        for m in layers.values():
            m.record = False
        model.train(was)
    return {p: m.last_weights for p, m in layers.items()}

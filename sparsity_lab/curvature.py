"""Curvature: the Hessian and Fisher pieces behind second-order pruning (survey section 3.5).

Second-order criteria ask how much the loss grows when a weight is removed.  Around a
minimum the loss is a quadratic in the weight change, ``dL = 1/2 dw^T H dw``, so every
method needs some handle on ``H`` (or on its inverse).  The handles here, cheapest last:

* :func:`exact_hessian` -- the full ``P x P`` Hessian, for tiny models (tests, the 2-D
  picture);
* :func:`hessian_vector_product` and :func:`hutchinson_diagonal` -- ``H v`` without ``H``,
  and the diagonal ``E[z * (H z)]`` over random sign vectors ``z`` (Hutchinson 1989);
* :func:`gauss_newton_diagonal` -- the positive Gauss-Newton part of the diagonal, exact,
  for softmax cross-entropy;
* :func:`per_sample_gradients` -- the empirical Fisher ``F = 1/N sum_n g_n g_n^T`` kept as
  its ``N x P`` gradients, never as a ``P x P`` matrix; :func:`fisher_diagonal` reads its
  diagonal;
* :func:`woodbury_inverse` / :func:`woodbury_block_inverse` -- ``(lambda I + F)^-1``
  built one gradient at a time with the Sherman-Morrison formula (WoodFisher, Singh &
  Alistarh 2020), per diagonal block;
* :class:`InverseFisher` -- matrix-free inverse-Fisher-vector products from the same
  recursion, in ``O(m P)`` memory (M-FAC, Frantar et al. 2021);
* :func:`kronecker_factors` -- a layer's ``F ~ G (x) A`` with ``A`` the second moment of its
  inputs and ``G`` that of the loss gradient at its outputs (K-FAC, Martens & Grosse 2015).

Everything is taken with respect to the weights the model computes with (masked entries
included, at zero), through a plain copy of the model, so masks never get in the way of
``torch.func``.  ``data`` is whatever :class:`~sparsity_lab.criteria.Context` accepts: an
``(inputs, targets)`` tuple, a list of them, or a DataLoader.
"""

from __future__ import annotations

import copy
import math
import pickle
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from . import calibration, masks

__all__ = [
    "plain_copy",
    "flatten",
    "unflatten",
    "layer_input_rows",
    "exact_hessian",
    "hessian_vector_product",
    "hutchinson_diagonal",
    "gauss_newton_diagonal",
    "per_sample_gradients",
    "fisher_diagonal",
    "woodbury_inverse",
    "woodbury_block_inverse",
    "block_diagonal",
    "InverseFisher",
    "kronecker_factors",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --- plumbing -----------------------------------------------------------------------------


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with its masks folded in (plain parameters).

    ``torch.func`` swaps parameters by name, which a mask parametrization refuses; on the
    copy, ``"fc1.weight"`` is simply the weight the model computes with.  Eval mode makes
    dropout and batch norm deterministic, as curvature at a fixed point requires.
    """
    if masks.masks(model):
        # A pickle round trip, not deepcopy: a deep copy shares parametrize's generated
        # class with the original, and removing the copy's masks would delete the
        # original's ``weight`` property from that shared class.
        clone = pickle.loads(pickle.dumps(model))
        masks.remove(clone)
    else:
        clone = copy.deepcopy(model)
    return clone.eval()


def _targets(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(
            f"{missing} are not parameters of the model; use names such as 'fc1.weight' "
            f"(see sparsity_lab.pruning.default_targets(model))"
        )
    return {n: params[n].detach() for n in names}


def flatten(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector, in the dict's order."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split a flat vector back into tensors shaped like ``like`` (inverse of :func:`flatten`)."""
    sizes = [t.numel() for t in like.values()]
    if flat.shape[-1] != sum(sizes):
        raise ValueError(f"flat vector has {flat.shape[-1]} entries, the tensors {sum(sizes)}")
    parts = flat.split(sizes, dim=-1)
    return {
        n: p.reshape(*flat.shape[:-1], *t.shape)
        for (n, t), p in zip(like.items(), parts, strict=True)
    }


def _loss_reduction_scale(loss_fn: LossFn, batch_size: int) -> float:
    """Factor that turns d(batch loss)/d(output) into per-example loss gradients."""
    return 1.0 if getattr(loss_fn, "reduction", "mean") == "sum" else float(batch_size)


def layer_input_rows(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The inputs of a Linear or Conv layer as a matrix, one row per output position.

    A Linear layer sees ``(..., in)`` -> ``(rows, in)``.  A convolution is a matrix product
    over unfolded patches: ``(B, C, *spatial)`` -> ``(B * positions, C * prod(kernel))``, in
    the column order of ``weight.reshape(out, -1)``, so that ``rows @ W.T`` is the layer's
    output without bias.
    """
    if isinstance(module, nn.Linear):
        return inputs.reshape(-1, inputs.shape[-1])
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        if module.groups != 1:
            raise ValueError(
                f"grouped convolutions (groups={module.groups}) are not one matrix product; "
                f"exclude this layer"
            )
        if module.padding_mode != "zeros":
            raise ValueError(
                f"padding_mode={module.padding_mode!r} is not supported; only 'zeros' unfolds "
                f"into a matrix here; exclude this layer"
            )
        x = inputs if isinstance(module, nn.Conv2d) else inputs.unsqueeze(2)
        pad = _padding(module, tuple(x.shape[2:]))
        x = F.pad(x, pad)

        def two_d(v):
            return tuple(v) if isinstance(module, nn.Conv2d) else (1, v[0])

        patches = F.unfold(
            x,
            kernel_size=two_d(module.kernel_size),
            dilation=two_d(module.dilation),
            stride=two_d(module.stride),
        )  # (B, C * k, positions)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise TypeError(
        f"{type(module).__name__} is not a Linear, Conv1d or Conv2d layer; second-order and "
        f"layer-wise criteria read those only (exclude the others)"
    )


def _padding(module: nn.Module, spatial: tuple[int, ...]) -> tuple[int, ...]:
    """Explicit (left, right) paddings for F.pad, last dimension first."""
    dims = len(module.kernel_size)
    if module.padding == "valid":
        per_dim = [(0, 0)] * dims
    elif module.padding == "same":  # stride 1 by definition; the extra pixel goes right
        per_dim = []
        for k, d in zip(module.kernel_size, module.dilation, strict=True):
            total = d * (k - 1)
            per_dim.append((total // 2, total - total // 2))
    else:
        per_dim = [(p, p) for p in module.padding]
    if len(spatial) > dims:  # Conv1d seen as 2-D with a height of 1
        per_dim = [(0, 0)] + per_dim
    out: list[int] = []
    for left, right in reversed(per_dim):
        out += [left, right]
    return tuple(out)


# --- the loss as a function of a flat weight vector ----------------------------------------


class _FlatLoss:
    """``loss(flat_weights, x, y)`` of a plain model, for ``torch.func`` transforms."""

    def __init__(self, model: nn.Module, names: list[str], loss_fn: LossFn | None) -> None:
        self.model = model
        self.like = _targets(model, names)
        self.loss_fn = loss_fn or nn.CrossEntropyLoss()

    def point(self) -> torch.Tensor:
        return flatten(self.like)

    def __call__(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(functional_call(self.model, unflatten(flat, self.like), (x,)), y)


def _mean_loss(loss: _FlatLoss, batches: list[tuple[torch.Tensor, torch.Tensor]]):
    """The loss averaged over every example of ``batches`` (batches weighted by size)."""
    total = sum(len(x) for x, _ in batches)

    def f(flat: torch.Tensor) -> torch.Tensor:
        return sum(loss(flat, x, y) * (len(x) / total) for x, y in batches)

    return f


def _device_batches(model: nn.Module, data: Any, limit: int | None, *, labels: bool = True) -> list:
    device = next(model.parameters()).device
    batches = [
        (x.to(device), y if y is None else y.to(device))
        for x, y in calibration.batches(data, limit, labels=labels)
    ]
    if not batches:
        raise ValueError("data yielded no batches; pass at least one (inputs, targets) batch")
    return batches


# --- Hessian ------------------------------------------------------------------------------


def exact_hessian(
    model: nn.Module,
    names: list[str],
    data: Any,
    *,
    loss_fn: LossFn | None = None,
    limit: int | None = None,
    max_params: int = 5000,
) -> torch.Tensor:
    """The full Hessian of the mean loss w.r.t. the named weights, flattened in order.

    ``P x P`` for ``P`` weights in total, in the model's dtype (use a float64 model for
    exact comparisons).  Only for tiny models: ``P > max_params`` raises.
    """
    plain = plain_copy(model)
    loss = _FlatLoss(plain, names, loss_fn)
    w = loss.point()
    if w.numel() > max_params:
        raise ValueError(
            f"the exact Hessian of {w.numel()} weights needs {w.numel() ** 2} entries; it is "
            f"meant for tiny models (max_params={max_params}). Use hutchinson_diagonal, "
            f"woodbury_block_inverse or InverseFisher instead"
        )
    f = _mean_loss(loss, _device_batches(plain, data, limit))
    with torch.enable_grad():
        # reverse over reverse: forward-mode AD would work too but warns inside torch
        return jacrev(jacrev(f))(w).detach()


def hessian_vector_product(
    model: nn.Module,
    names: list[str],
    data: Any,
    *,
    loss_fn: LossFn | None = None,
    limit: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``v -> H v`` (flat vectors) for the mean loss over ``data``.

    Differentiates ``g(w) . v`` once more (Pearlmutter's trick), so ``H`` itself is never
    formed.  The returned function accepts a batch of vectors ``(k, P)`` too.
    """
    plain = plain_copy(model)
    loss = _FlatLoss(plain, names, loss_fn)
    w = loss.point()
    f = _mean_loss(loss, _device_batches(plain, data, limit))

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return grad(lambda p: grad(f)(p) @ v)(w)

    def apply(v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            v = v.to(w)
            return (vmap(hvp)(v) if v.dim() == 2 else hvp(v)).detach()

    return apply


def hutchinson_diagonal(
    model: nn.Module,
    names: list[str],
    data: Any,
    *,
    n_probes: int = 32,
    loss_fn: LossFn | None = None,
    limit: int | None = None,
    seed: int = 0,
    chunk: int = 8,
) -> dict[str, torch.Tensor]:
    """Hutchinson's estimate of diag(H): the mean of ``z * (H z)`` over Rademacher ``z``.

    Unbiased because ``E[z_i z_j] = 0`` for ``i != j`` and ``z_i^2 = 1``; its error shrinks
    like ``1 / sqrt(n_probes)``.  Probes are drawn from a generator seeded by ``seed`` and
    evaluated ``chunk`` at a time.
    """
    if n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes}")
    hvp = hessian_vector_product(model, names, data, loss_fn=loss_fn, limit=limit)
    like = {n: masks.weight(model, n).detach() for n in names}
    w = flatten(like)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(w.numel(), dtype=torch.float64)
    done = 0
    while done < n_probes:
        k = min(chunk, n_probes - done)
        z = (torch.randint(0, 2, (k, w.numel()), generator=gen) * 2 - 1).to(w)
        total += (z * hvp(z)).double().sum(0).cpu()
        done += k
    return unflatten(total / n_probes, like)


def gauss_newton_diagonal(
    model: nn.Module,
    names: list[str],
    data: Any,
    *,
    n_samples: int | None = None,
    chunk: int = 8,
) -> dict[str, torch.Tensor]:
    """Exact diagonal of the Gauss-Newton matrix of softmax cross-entropy, per weight.

    The Hessian without the terms of the network's own curvature, ``J^T (diag p - p p^T) J``
    averaged over examples, which for softmax outputs equals
    ``1/N sum_n sum_c p_nc (d log p_nc / dw)^2``: a positive diagonal, as OBD (LeCun et al.
    1990) used, that needs no labels and no random probes.  Costs one gradient per example
    and class (first ``n_samples`` examples; ``chunk`` at a time).  Only for models trained
    with cross-entropy on their logits.
    """
    plain = plain_copy(model)
    loss = _FlatLoss(plain, names, None)
    w = loss.point()

    def weighted_squares(flat, x):
        def log_probs(f):
            logits = functional_call(plain, unflatten(f, loss.like), (x.unsqueeze(0),))
            return torch.log_softmax(logits, dim=-1)[0]

        jac = jacrev(log_probs)(flat)  # (classes, P)
        probs = log_probs(flat).exp().detach()
        return (probs[:, None] * jac.pow(2)).sum(0)

    per_example = vmap(weighted_squares, in_dims=(None, 0))
    total = torch.zeros_like(w, dtype=torch.float64)
    taken = 0
    with torch.enable_grad():
        for x, _ in _device_batches(plain, data, None, labels=False):
            if n_samples is not None:
                x = x[: max(0, n_samples - taken)]
            for start in range(0, len(x), chunk):
                total += per_example(w, x[start : start + chunk]).detach().double().sum(0)
            taken += len(x)
            if n_samples is not None and taken >= n_samples:
                break
    return unflatten(total / max(taken, 1), loss.like)


# --- empirical Fisher ---------------------------------------------------------------------


def per_sample_gradients(
    model: nn.Module,
    names: list[str],
    data: Any,
    *,
    n_samples: int | None = None,
    loss_fn: LossFn | None = None,
    chunk: int = 32,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """One loss gradient per example, ``(N, P)``: the empirical Fisher kept as gradients.

    ``F = 1/N G^T G`` is never formed.  The first ``n_samples`` examples of ``data`` are
    used (all of them when ``data`` holds fewer, or when ``n_samples`` is None);
    gradients are computed ``chunk`` examples at a time with ``vmap`` and stored in
    ``dtype`` (default: the model's).
    """
    plain = plain_copy(model)
    loss = _FlatLoss(plain, names, loss_fn)
    w = loss.point()
    dtype = dtype or w.dtype

    def one(flat, x, y):
        return loss(flat, x.unsqueeze(0), y.unsqueeze(0))

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    rows: list[torch.Tensor] = []
    taken = 0
    with torch.enable_grad():
        for x, y in _device_batches(plain, data, None):
            if n_samples is not None and taken >= n_samples:
                break
            if n_samples is not None:
                x, y = x[: n_samples - taken], y[: n_samples - taken]
            for start in range(0, len(x), chunk):
                rows.append(per_example(w, x[start : start + chunk], y[start : start + chunk]))
                rows[-1] = rows[-1].detach().to(dtype)
            taken += len(x)
    return torch.cat(rows)


def fisher_diagonal(grads: torch.Tensor) -> torch.Tensor:
    """Diagonal of the empirical Fisher ``1/N sum_n g_n^2`` from per-sample gradients."""
    return grads.pow(2).mean(0)


DAMP_MODES = ("relative", "absolute")


def check_damping(damp: float, mode: str = "relative") -> None:
    """Refuse a damping that :func:`damping` cannot use, when a criterion is built."""
    if mode not in DAMP_MODES:
        raise ValueError(f"damp_mode must be one of {', '.join(DAMP_MODES)}, got {mode!r}")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp > 0:
        raise ValueError(
            f"damp must be a positive number (it keeps the matrix invertible), got {damp!r}"
        )


def damping(damp: float, diagonal: torch.Tensor, mode: str = "relative") -> float:
    """The ``lambda`` added to a curvature matrix's diagonal to keep it invertible.

    ``mode="relative"`` scales ``damp`` by the mean absolute diagonal entry, as SparseGPT
    and OBC do ("percdamp"), so one value suits curvature of any scale; an all-zero diagonal
    falls back to ``damp`` itself.  ``mode="absolute"`` uses ``damp`` as given, as the
    WoodFisher, M-FAC and K-FAC papers state their dampening, so a published value can be
    used unchanged.
    """
    check_damping(damp, mode)
    if mode == "absolute":
        return float(damp)
    scale = float(diagonal.abs().mean()) if diagonal.numel() else 0.0
    return damp * scale if scale > 0 else float(damp)


def woodbury_inverse(grads: torch.Tensor, damp: float, *, chunk: int = 1) -> torch.Tensor:
    """``(damp I + 1/N G^T G)^-1`` built by the Woodbury recursion, ``(P, P)``.

    Start from ``F_0^-1 = I / damp``; adding one gradient ``g`` (``g g^T / N``) is the
    Sherman-Morrison step::

        F_n^-1 = F_{n-1}^-1 - (F_{n-1}^-1 g)(F_{n-1}^-1 g)^T / (N + g^T F_{n-1}^-1 g)

    One ``P x P`` matrix: for small ``P`` only (see :func:`woodbury_block_inverse`, which
    also explains ``chunk``).
    """
    return woodbury_block_inverse(grads, grads.shape[1], damp, chunk=chunk)[0]


def woodbury_block_inverse(
    grads: torch.Tensor,
    block_size: int,
    damp: float,
    *,
    chunk: int = 32,
    direct: bool | None = None,
) -> torch.Tensor:
    """Inverse of each diagonal block of ``damp I + 1/N G^T G``: ``(n_blocks, B, B)``.

    WoodFisher (Singh & Alistarh 2020): the empirical Fisher restricted to consecutive
    blocks of ``B = block_size`` weights, each inverted by the recursion of
    :func:`woodbury_inverse`, all blocks at once.  ``chunk`` gradients ``U`` are added per
    step with the Woodbury identity
    ``F^-1 <- F^-1 - F^-1 U (N I + U^T F^-1 U)^-1 U^T F^-1`` (``chunk=1`` is
    Sherman-Morrison): the same result, with ``N / chunk`` passes over the ``P * B``
    entries instead of ``N``.  Memory ``P * B``, time ``N * P * B``.  When ``B`` does not
    divide ``P`` the last block is padded with weights of zero gradient, whose inverse
    entries are ``1 / damp`` and touch nothing else.

    ``direct=True`` forms each block ``damp I + 1/N G_b^T G_b`` and inverts it by Cholesky
    instead: the same inverse, with one batched factorisation in place of ``N / chunk``
    rounds of small solves, which is several times faster when ``B <= N`` (``direct=None``,
    the default, chooses it then).
    """
    if damp <= 0:
        raise ValueError(f"damp must be positive (it makes the Fisher invertible), got {damp}")
    if block_size < 1 or chunk < 1:
        raise ValueError(f"block_size and chunk must be positive, got {block_size}, {chunk}")
    n, size = grads.shape
    n_blocks = math.ceil(size / block_size)
    padded = torch.zeros(n, n_blocks * block_size, dtype=grads.dtype, device=grads.device)
    padded[:, :size] = grads
    g = padded.reshape(n, n_blocks, block_size).transpose(0, 1)  # (blocks, N, B)
    eye = torch.eye(block_size, dtype=grads.dtype, device=grads.device)
    if direct is None:
        direct = block_size <= n
    if direct:
        blocks = (eye * damp).expand(n_blocks, block_size, block_size)
        fisher = torch.baddbmm(blocks, g.transpose(1, 2), g, alpha=1.0 / n)
        return torch.cholesky_inverse(torch.linalg.cholesky(fisher))
    inverse = (eye / damp).expand(n_blocks, block_size, block_size).clone()
    chunk = min(chunk, block_size)  # a rank-c step costs c^3 per block: keep c <= B
    for start in range(0, n, chunk):
        u = g[:, start : start + chunk, :].transpose(1, 2)  # (blocks, B, c)
        fu = inverse @ u  # F^-1 U
        small = u.transpose(1, 2) @ fu  # U^T F^-1 U
        small.diagonal(dim1=1, dim2=2).add_(n)
        # F^-1 U (N I + U^T F^-1 U)^-1, via a Cholesky solve of the small SPD system
        right = torch.cholesky_solve(fu.transpose(1, 2), torch.linalg.cholesky(small))
        inverse.baddbmm_(fu, right, alpha=-1)
    return inverse


def block_diagonal(blocks: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """The dense ``(P, P)`` matrix of ``(n_blocks, B, B)`` blocks, cut to ``size`` rows."""
    dense = torch.block_diag(*blocks)
    return dense if size is None else dense[:size, :size]


_COLUMNS = 4096  # columns of the stored vectors that diagonal() squares at once


def sherman_morrison_vectors(grads: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The vectors ``v_i`` and denominators ``d_i`` of :class:`InverseFisher`, by the
    recursion as written there, one gradient at a time (the reference its faster
    construction is tested against)."""
    m = grads.shape[0]
    v = torch.empty_like(grads)
    denom = torch.empty(m, dtype=grads.dtype, device=grads.device)
    for i in range(m):
        g = grads[i]
        # v_i = F_{i-1}^-1 g_i, with F_{i-1}^-1 applied through the vectors found so far
        coef = (v[:i] @ g) / denom[:i]
        v[i] = g / damp - coef @ v[:i]
        denom[i] = m + g @ v[i]
    return v, denom


class InverseFisher:
    """Matrix-free ``(damp I + 1/m G^T G)^-1`` from ``m`` gradients (M-FAC, Frantar 2021).

    The Sherman-Morrison recursion of :func:`woodbury_inverse` writes the inverse as::

        F^-1 = I / damp - sum_i v_i v_i^T / d_i,   v_i = F_{i-1}^-1 g_i,
                                                  d_i = m + g_i^T v_i

    so storing the ``m`` vectors ``v_i`` (``m x P``, like the gradients themselves) is
    enough for any inverse-Fisher-vector product (:meth:`ifvp`, ``O(m P)``), any column
    and the diagonal.  Building them costs ``O(m^2 P)``: each ``v_i`` is a combination
    ``C_i G`` of the gradients, so the recursion runs on the ``m x m`` Gram matrix
    ``G G^T`` and two matrix products do the ``P``-sized work (the dynamic algorithm of
    the M-FAC paper; :func:`sherman_morrison_vectors` is the recursion written plainly).
    """

    def __init__(self, grads: torch.Tensor, damp: float) -> None:
        if damp <= 0:
            raise ValueError(f"damp must be positive (it makes the Fisher invertible), got {damp}")
        m, self.size = grads.shape
        self.damp = damp
        gram = grads @ grads.T
        coef = torch.zeros(m, m, dtype=grads.dtype, device=grads.device)  # v_i = coef[i] @ G
        self.denom = torch.empty(m, dtype=grads.dtype, device=grads.device)
        for i in range(m):
            # v_j . g_i = coef[j] @ gram[:, i] for the vectors found so far
            weights = (coef[:i] @ gram[:, i]) / self.denom[:i]
            coef[i] = -(weights @ coef[:i])
            coef[i, i] += 1.0 / damp
            self.denom[i] = m + coef[i] @ gram[:, i]
        self.v = coef @ grads

    def ifvp(self, x: torch.Tensor) -> torch.Tensor:
        """``F^-1 x`` for a vector ``(P,)`` or each row of a matrix ``(k, P)``."""
        coef = (x @ self.v.T) / self.denom
        return x / self.damp - coef @ self.v

    def diagonal(self) -> torch.Tensor:
        """``diag(F^-1)``, ``(P,)``."""
        weights, out = 1.0 / self.denom, torch.empty_like(self.v[0])
        for start in range(0, self.size, _COLUMNS):  # a slice of columns at a time: no m x P copy
            out[start : start + _COLUMNS] = weights @ self.v[:, start : start + _COLUMNS].square()
        return 1.0 / self.damp - out

    def columns(self, index: torch.Tensor) -> torch.Tensor:
        """Columns ``F^-1[:, index]`` as rows: ``(len(index), P)``."""
        coef = self.v[:, index].T / self.denom
        cols = -(coef @ self.v)
        cols[torch.arange(len(index)), index] += 1.0 / self.damp
        return cols


# --- Kronecker factors ----------------------------------------------------------------------


def kronecker_factors(
    model: nn.Module,
    names: list[str],
    data: Any,
    *,
    loss_fn: LossFn | None = None,
    limit: int | None = None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """K-FAC factors ``(A, G)`` of each named Linear/Conv weight, in float64.

    ``A = mean over rows of a a^T`` (the layer's inputs as :func:`layer_input_rows`) and
    ``G = 1/N sum_n sum_t d d^T`` with ``d`` the gradient of example ``n``'s loss w.r.t. the
    layer's output at position ``t`` (one position for an MLP).  The Fisher of the weight
    (row-major ``vec``) is then approximated by ``kron(G, A)``; for an MLP layer both
    factors are exact second moments over the ``N`` examples.  ``loss_fn`` should average
    over the batch, like the default cross-entropy (a ``reduction="sum"`` loss is fine too).
    """
    plain = plain_copy(model)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    modules = {}
    for n in names:
        path, _, tensor_name = n.rpartition(".")
        module = plain.get_submodule(path) if path else plain
        if tensor_name != "weight" or not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            raise ValueError(
                f"Kronecker factors need the weight of a Linear or Conv1d/2d layer, got {n!r}"
            )
        modules[n] = module
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    outputs: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    sums = {n: [0.0, 0.0] for n in names}  # A, G accumulators
    rows = dict.fromkeys(names, 0)
    examples = 0

    def hook(name):
        def record(module, args, output):
            inputs[name].append(layer_input_rows(module, args[0].detach()).double())
            outputs[name].append(output)

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        for x, y in _device_batches(plain, data, limit):
            for n in names:
                inputs[n].clear()
                outputs[n].clear()
            with torch.enable_grad():
                loss = loss_fn(plain(x), y)
                flat_outputs = [o for n in names for o in outputs[n]]
                grads = torch.autograd.grad(loss, flat_outputs, allow_unused=True)
            scale = _loss_reduction_scale(loss_fn, len(x))
            it = iter(grads)
            for n in names:
                for a, out in zip(inputs[n], outputs[n], strict=True):
                    g = next(it)
                    g = torch.zeros_like(out) if g is None else g
                    if isinstance(modules[n], (nn.Conv1d, nn.Conv2d)):
                        g = g.movedim(1, -1)  # channels last: one row per position
                    d = g.reshape(-1, g.shape[-1]).double() * scale
                    sums[n][0] = sums[n][0] + a.T @ a
                    sums[n][1] = sums[n][1] + d.T @ d
                    rows[n] += len(a)
            examples += len(x)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n][0] / rows[n], sums[n][1] / examples) for n in names}

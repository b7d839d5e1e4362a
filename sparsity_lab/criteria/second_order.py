"""Second-order criteria: which weights the loss misses least (survey section 3.5).

Around a trained point the loss change of a weight change ``dw`` is, to second order,
``dL = g^T dw + 1/2 dw^T H dw`` with ``g ~ 0``.  Removing weight ``q`` means ``dw_q = -w_q``:

* **OBD** (LeCun 1990) keeps only the diagonal of ``H``: removing ``q`` costs
  ``1/2 H_qq w_q^2``.  With ``H = I`` that is magnitude pruning.
* **OBS** (Hassibi & Stork 1993) lets the other weights move to compensate.  The best move
  solves ``min 1/2 dw^T H dw`` subject to ``dw_q = -w_q``::

      saliency  L_q = w_q^2 / (2 [H^-1]_qq),     update  dw = -(w_q / [H^-1]_qq) H^-1 e_q

  and for a set ``Q`` removed together ``dw = -H^-1 E_Q (E_Q^T H^-1 E_Q)^-1 w_Q``.

The rest approximate ``H`` by the empirical Fisher ``F = 1/N sum g_n g_n^T`` and differ in
how they make it tractable: its diagonal (``fisher_diag``), its Woodbury-inverted diagonal
blocks (``woodfisher``), matrix-free products with its inverse (``mfac``) or a Kronecker
product per layer (``kfac``, and ``eigendamage`` in that product's eigenbasis).  The pieces
live in :mod:`sparsity_lab.curvature`.

Methods that move the surviving weights (``obs``, ``woodfisher``, ``mfac``) do so in
:meth:`~sparsity_lab.criteria.Criterion.update_weights`, after the masks are chosen; pass
``update=False`` for the mask alone.

How much calibration data they read: what is built from per-example gradients (the
empirical Fisher of ``fisher_diag``, ``woodfisher`` and ``mfac``, OBD's Gauss-Newton
diagonal) counts *examples*, ``n_samples``, since each example adds its own ``g_n g_n^T``
whatever the batching; what is built per batch (K-FAC factors, exact or Hutchinson
Hessians) counts ``batches``, as every other criterion of the library does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import curvature, masks
from ..registry import register
from .base import Context, Criterion

__all__ = [
    "obd_saliency",
    "obs_saliency",
    "obs_update",
    "block_obs_update",
    "blockwise_obs_update",
    "store_update",
    "OBD",
    "OBS",
    "FisherDiag",
    "WoodFisher",
    "KFAC",
    "EigenDamage",
    "MFAC",
    "EigenbasisLinear",
    "EigenbasisConv1d",
    "EigenbasisConv2d",
    "to_eigenbasis",
]


# --- the formulas -------------------------------------------------------------------------


def obd_saliency(weight: torch.Tensor, hessian_diag: torch.Tensor) -> torch.Tensor:
    """OBD's loss increase of removing each weight alone: ``1/2 H_qq w_q^2``."""
    return 0.5 * hessian_diag * weight.pow(2)


def obs_saliency(weight: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
    """OBS's loss increase of removing each weight alone, others compensating:
    ``w_q^2 / (2 [H^-1]_qq)``."""
    return weight.pow(2) / (2 * hinv_diag)


def block_obs_update(
    weight: torch.Tensor, hinv: torch.Tensor, pruned: torch.Tensor
) -> torch.Tensor:
    """Joint OBS update of each block: ``dw = -H^-1[:, Q] (H^-1[Q, Q])^-1 w_Q``.

    ``weight`` and ``pruned`` (bool) are ``(n_blocks, B)``, ``hinv`` is ``(n_blocks, B, B)``.
    The solve runs on all blocks at once: outside ``Q x Q`` the matrix is replaced by the
    identity and the right-hand side by zero, which leaves ``z_Q = (H^-1_QQ)^-1 w_Q`` and
    ``z = 0`` elsewhere.  Returns ``dw``; ``w + dw`` is zero on ``Q`` (up to rounding).
    """
    both = pruned.unsqueeze(-1) & pruned.unsqueeze(-2)
    eye = torch.eye(hinv.shape[-1], dtype=hinv.dtype, device=hinv.device).expand_as(hinv)
    system = torch.where(both, hinv, eye)
    rhs = torch.where(pruned, weight, torch.zeros_like(weight)).unsqueeze(-1)
    factor, info = torch.linalg.cholesky_ex(system)
    if bool(info.any()):  # an indefinite H (an exact Hessian away from a minimum)
        z = torch.linalg.solve(system, rhs)
    else:  # the usual case, a dampened Fisher: Cholesky is twice as fast as LU
        z = torch.cholesky_solve(rhs, factor)
    return -(hinv @ z).squeeze(-1)


def obs_update(weight: torch.Tensor, hinv: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """Joint OBS update ``dw`` of a flat ``weight`` for removing the ``pruned`` set together."""
    return block_obs_update(weight[None], hinv[None], pruned[None])[0]


# --- shared plumbing ----------------------------------------------------------------------


def _effective(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """The weights the model computes with (masked entries at zero), detached, float64."""
    return {n: masks.weight(model, n).detach().double() for n in names}


def store_update(model: nn.Module, name: str, new: torch.Tensor, keep: torch.Tensor) -> None:
    """Store updated weights ``new`` in the kept entries of ``name``'s stored dense weight.

    Pruned entries are left to :func:`masks.attach`, which zeroes them (or, with
    ``dense_grad``, keeps their old dense value for regrowth), so the effective weight after
    attaching is exactly ``new * keep``.
    """
    stored = masks.dense_weight(model, name)
    keep = keep.to(torch.bool).to(stored.device)
    with torch.no_grad():
        stored[keep] = new.reshape(stored.shape).to(stored)[keep]


def _alive(model: nn.Module, names: list[str]) -> torch.Tensor:
    """Flat bool over the targets: the weights not pruned before (unmasked: all)."""
    return torch.cat(
        [
            (
                m.bool()
                if (m := masks.get_mask(model, n)) is not None
                else torch.ones_like(masks.weight(model, n), dtype=torch.bool)
            ).flatten()
            for n in names
        ]
    )


def _keep_all(
    model: nn.Module, weights: dict[str, torch.Tensor], new_masks: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Keep-masks of every tensor a joint update covers.

    Layers kept dense are in the curvature too: they are not pruned but they compensate,
    except where an earlier mask already holds them at zero.
    """
    keep = {}
    for n, w in weights.items():
        mask = new_masks.get(n, masks.get_mask(model, n))
        keep[n] = torch.ones_like(w, dtype=torch.bool) if mask is None else mask.to(torch.bool)
    return keep


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


class _Stepwise(Criterion):
    """Prune in ``steps`` rounds of equal density ratio, recomputing curvature each round
    (:meth:`Criterion.prune` takes the rounds).

    A quadratic model is trusted only near the point it was taken at; removing most weights
    in one jump leaves that region.  WoodFisher and M-FAC reach high sparsity in several
    steps, each with fresh gradients at the updated weights.
    """


def _check_steps(steps: int) -> int:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return steps


# --- OBD ----------------------------------------------------------------------------------


@register("criterion", "obd", section="3.5")
class OBD(Criterion):
    """Optimal Brain Damage (LeCun et al. 1990): remove the lowest ``1/2 H_qq w_q^2``.

    ``hessian`` chooses the diagonal:

    * ``"gauss_newton"`` (default): the exact diagonal of the Gauss-Newton matrix of softmax
      cross-entropy over ``n_samples`` examples, positive like the approximation of the
      paper (:func:`~sparsity_lab.curvature.gauss_newton_diagonal`);
    * ``"hutchinson"``: ``n_probes`` random sign probes of the full Hessian, clamped at 0
      (at a minimum the Hessian is positive semi-definite, so a negative estimate is noise);
      any loss, but noisy for large models;
    * ``"exact"``: the Hessian's diagonal, for tiny models;
    * ``"identity"``: ``H = I``, which is magnitude pruning (for the lesson).

    ``batches`` limits the data of the Hessian-based choices.  Group patterns sum the
    element saliencies (``reduction="sum"`` is the faithful choice).  Supports every
    pattern and budget.
    """

    name = "obd"
    needs_data = True

    def __init__(
        self,
        hessian: str = "gauss_newton",
        n_samples: int = 256,
        n_probes: int = 32,
        batches: int | None = 4,
    ) -> None:
        _check_choice("hessian", hessian, ("gauss_newton", "hutchinson", "exact", "identity"))
        self.hessian, self.n_samples = hessian, n_samples
        self.n_probes, self.batches = n_probes, batches
        self.needs_data = hessian != "identity"

    def scores(self, model: nn.Module, names: list[str], context: Context):
        w = _effective(model, names)
        if self.hessian == "identity":
            diag = {n: torch.ones_like(t) for n, t in w.items()}
        elif self.hessian == "gauss_newton":
            if not isinstance(context.loss_fn, nn.CrossEntropyLoss):
                raise ValueError(
                    "hessian='gauss_newton' is the diagonal for softmax cross-entropy; with "
                    "another loss use hessian='hutchinson'"
                )
            diag = curvature.gauss_newton_diagonal(
                model, names, context.data, n_samples=self.n_samples
            )
        elif self.hessian == "exact":
            h = curvature.exact_hessian(
                model, names, context.data, loss_fn=context.loss_fn, limit=self.batches
            )
            diag = curvature.unflatten(h.diagonal().double(), w)
        else:
            diag = curvature.hutchinson_diagonal(
                model,
                names,
                context.data,
                n_probes=self.n_probes,
                loss_fn=context.loss_fn,
                limit=self.batches,
                seed=context.seed,
            )
            diag = {n: d.clamp(min=0) for n, d in diag.items()}
        return {n: obd_saliency(w[n], diag[n].to(w[n])) for n in names}


# --- OBS with the exact Hessian -----------------------------------------------------------


@register("criterion", "obs", section="3.5")
class OBS(Criterion):
    """Optimal Brain Surgeon (Hassibi & Stork 1993) with the exact Hessian, for tiny models.

    Saliency ``w_q^2 / (2 [H^-1]_qq)`` of the dampened Hessian ``H + lambda I`` over all
    target weights, ``lambda = damp * mean(diag H)`` (``damp_mode="absolute"``: ``lambda =
    damp``, see :func:`~sparsity_lab.curvature.damping`); the chosen set ``Q`` is removed
    with the joint update
    ``dw = -H^-1 E_Q (E_Q^T H^-1 E_Q)^-1 w_Q`` (``update=False``: mask only).  At most
    ``max_params`` weights (the Hessian is ``P x P``).  Supports every pattern and budget.
    """

    name = "obs"
    needs_data = True

    def __init__(
        self,
        damp: float = 1e-4,
        update: bool = True,
        batches: int | None = None,
        max_params: int = 5000,
        damp_mode: str = "relative",
    ) -> None:
        curvature.check_damping(damp, damp_mode)
        self.damp, self.damp_mode, self.update = damp, damp_mode, update
        self.batches, self.max_params = batches, max_params

    def hessian_inverse(self, model: nn.Module, names: list[str], context: Context):
        """``(H + lambda I)^-1`` over the flattened targets, float64."""
        h = curvature.exact_hessian(
            model,
            names,
            context.data,
            loss_fn=context.loss_fn,
            limit=self.batches,
            max_params=self.max_params,
        ).double()
        # The weights pruned before are constrained to zero: OBS works on the Hessian of
        # the surviving ones (H_AA), as the reference codes restrict their curvature.
        alive = _alive(model, names).to(h.device)
        lam = curvature.damping(self.damp, h.diagonal()[alive], self.damp_mode)
        inverse = torch.zeros_like(h)
        h_aa = h[alive][:, alive]
        eye = torch.eye(len(h_aa), dtype=h.dtype, device=h.device)
        inverse[alive.nonzero(), alive.nonzero().T] = torch.linalg.inv(h_aa + lam * eye)
        inverse[~alive, ~alive] = 1.0 / lam  # decoupled: their weights are zero already
        return inverse

    def scores(self, model: nn.Module, names: list[str], context: Context):
        w = _effective(model, names)
        hinv = self.hessian_inverse(model, names, context)
        context.state.update(names=list(names), hinv=hinv)
        return curvature.unflatten(obs_saliency(curvature.flatten(w), hinv.diagonal()), w)

    def update_weights(self, model, new_masks, context):
        hinv = context.state.get("hinv")
        if not self.update or hinv is None:
            return
        w = _effective(model, context.state["names"])
        keep = _keep_all(model, w, new_masks)
        pruned = ~curvature.flatten(keep)
        flat = curvature.flatten(w)
        new = flat + obs_update(flat, hinv.to(flat.device), pruned)
        new[pruned] = 0.0
        for n, t in curvature.unflatten(new, w).items():
            store_update(model, n, t, keep[n])


# --- the diagonal empirical Fisher --------------------------------------------------------


@register("criterion", "fisher_diag", section="3.5")
class FisherDiag(Criterion):
    """Fisher pruning (Theis et al. 2018): OBD with the diagonal of the empirical Fisher.

    Score ``1/2 F_qq w_q^2`` with ``F_qq = 1/N sum_n g_nq^2`` over ``n_samples`` per-example
    gradients.  For a group of weights Theis et al. use the Fisher along the group; here the
    element scores are summed by the pattern's ``reduction`` (the diagonal approximation of
    that).  Supports every pattern and budget.
    """

    name = "fisher_diag"
    needs_data = True

    def __init__(self, n_samples: int = 256) -> None:
        self.n_samples = n_samples

    def scores(self, model: nn.Module, names: list[str], context: Context):
        w = _effective(model, names)
        grads = curvature.per_sample_gradients(
            model, names, context.data, n_samples=self.n_samples, loss_fn=context.loss_fn
        )
        diag = curvature.unflatten(curvature.fisher_diagonal(grads.double()), w)
        return {n: obd_saliency(w[n], diag[n].to(w[n])) for n in names}


def _fisher_grads(model, names, context, n_samples):
    """Per-example gradients of the surviving weights (those pruned before get zero
    columns, which decouples them: the Fisher of the constrained problem is F_AA)."""
    grads = curvature.per_sample_gradients(
        model, names, context.data, n_samples=n_samples, loss_fn=context.loss_fn
    )
    return grads.double() * _alive(model, names).to(grads.device)


# --- WoodFisher ---------------------------------------------------------------------------


@register("criterion", "woodfisher", section="3.5.2")
class WoodFisher(_Stepwise):
    """WoodFisher (Singh & Alistarh 2020): OBS with a block-diagonal inverse empirical Fisher.

    ``F = lambda I + 1/N sum_n g_n g_n^T`` over ``n_samples`` per-example gradients, with
    ``lambda = damp * mean(diag F)`` (``damp_mode="absolute"``: ``lambda = damp``, the
    paper's form), restricted to blocks of ``block_size`` consecutive weights of each layer and
    inverted by the Woodbury (Sherman-Morrison) recursion
    (:func:`~sparsity_lab.curvature.woodbury_block_inverse`).  Saliency
    ``w_q^2 / (2 [F^-1]_qq)``; the pruned set of each block is removed with the joint OBS
    update (``update=False``: mask only).  ``steps > 1`` prunes in rounds with fresh
    gradients.  Supports every pattern and budget.
    """

    name = "woodfisher"
    needs_data = True

    def __init__(
        self,
        n_samples: int = 128,
        block_size: int = 128,
        damp: float = 1e-2,
        update: bool = True,
        steps: int = 1,
        damp_mode: str = "relative",
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size}")
        curvature.check_damping(damp, damp_mode)
        self.n_samples, self.block_size = n_samples, block_size
        self.damp, self.damp_mode = damp, damp_mode
        self.update, self.steps = update, _check_steps(steps)

    def scores(self, model: nn.Module, names: list[str], context: Context):
        w = _effective(model, names)
        grads = _fisher_grads(model, names, context, self.n_samples)
        alive = _alive(model, names).to(grads.device)
        lam = curvature.damping(self.damp, curvature.fisher_diagonal(grads)[alive], self.damp_mode)
        out, offset, found = {}, 0, context.state.setdefault("blocks", {})
        for n in names:
            size = w[n].numel()
            blocks = curvature.woodbury_block_inverse(
                grads[:, offset : offset + size], self.block_size, lam
            )
            offset += size
            found[n] = blocks
            diag = blocks.diagonal(dim1=1, dim2=2).reshape(-1)[:size]
            out[n] = obs_saliency(w[n].reshape(-1), diag).reshape(w[n].shape)
        return out

    def update_weights(self, model, new_masks, context):
        blocks = context.state.get("blocks", {})
        if not self.update:
            return
        for n, keep in new_masks.items():
            w = masks.weight(model, n).detach().double().reshape(-1)
            pruned = ~keep.to(torch.bool).reshape(-1).to(w.device)
            new = w + blockwise_obs_update(w, blocks[n], pruned)
            new[pruned] = 0.0
            store_update(model, n, new, keep)


def blockwise_obs_update(
    w: torch.Tensor, blocks: torch.Tensor, pruned: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """:func:`block_obs_update` of a flat weight vector split into the blocks of ``blocks``
    (``(n_blocks, B, B)``, the last one padded), ``chunk`` blocks at a time to bound memory."""
    n_blocks, size = blocks.shape[0], blocks.shape[1]
    pad = n_blocks * size - w.numel()
    wb = F.pad(w, (0, pad)).reshape(n_blocks, size)
    pb = F.pad(pruned, (0, pad), value=False).reshape(n_blocks, size)
    delta = torch.zeros_like(wb)
    for i in range(0, n_blocks, chunk):
        part = slice(i, i + chunk)
        if pb[part].any():
            delta[part] = block_obs_update(wb[part], blocks[part], pb[part])
    return delta.reshape(-1)[: w.numel()]


# --- M-FAC --------------------------------------------------------------------------------


@register("criterion", "mfac", section="3.5.2")
class MFAC(_Stepwise):
    """M-FAC (Frantar, Kurtic & Alistarh 2021): OBS with matrix-free inverse-Fisher products.

    The same dampened empirical Fisher as ``woodfisher`` over ``n_samples`` gradients, but
    over *all* target weights at once, never as a matrix: ``F^-1 x`` and ``diag(F^-1)`` come
    from ``m`` stored vectors (:class:`~sparsity_lab.curvature.InverseFisher`).  Saliency
    ``w_q^2 / (2 [F^-1]_qq)``; the update is the sum of the single-weight OBS updates,
    ``dw = -F^-1 sum_{q in Q} e_q w_q / [F^-1]_qq``, one inverse-Fisher-vector product, as in
    the reference implementation (``update=False``: mask only).  The sum ignores the
    interaction of weights removed together, so high sparsities use ``steps > 1``.
    Supports every pattern and budget.
    """

    name = "mfac"
    needs_data = True

    def __init__(
        self,
        n_samples: int = 64,
        damp: float = 1e-2,
        update: bool = True,
        steps: int = 1,
        damp_mode: str = "relative",
    ) -> None:
        curvature.check_damping(damp, damp_mode)
        self.n_samples, self.damp, self.damp_mode = n_samples, damp, damp_mode
        self.update, self.steps = update, _check_steps(steps)

    def scores(self, model: nn.Module, names: list[str], context: Context):
        w = _effective(model, names)
        grads = _fisher_grads(model, names, context, self.n_samples)
        alive = _alive(model, names).to(grads.device)
        lam = curvature.damping(self.damp, curvature.fisher_diagonal(grads)[alive], self.damp_mode)
        inverse = curvature.InverseFisher(grads, lam)
        diag = inverse.diagonal()
        context.state.update(names=list(names), inverse=inverse, diag=diag)
        return curvature.unflatten(obs_saliency(curvature.flatten(w), diag), w)

    def update_weights(self, model, new_masks, context):
        inverse = context.state.get("inverse")
        if not self.update or inverse is None:
            return
        w = _effective(model, context.state["names"])
        keep = _keep_all(model, w, new_masks)
        pruned = ~curvature.flatten(keep)
        flat = curvature.flatten(w)
        # newly pruned weights only: those pruned before are already zero
        step = torch.where(pruned, flat / context.state["diag"], torch.zeros_like(flat))
        new = flat - inverse.ifvp(step)
        new[pruned] = 0.0
        for n, t in curvature.unflatten(new, w).items():
            store_update(model, n, t, keep[n])


# --- Kronecker-factored -------------------------------------------------------------------


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    """A Linear or Conv weight as the matrix ``(out, in * prod(kernel))``."""
    return weight.reshape(weight.shape[0], -1)


def _dampened(factor: torch.Tensor, damp: float, mode: str) -> torch.Tensor:
    lam = curvature.damping(damp, factor.diagonal(), mode)
    return factor + lam * torch.eye(len(factor), dtype=factor.dtype, device=factor.device)


@register("criterion", "kfac", section="3.5.2")
class KFAC(Criterion):
    """Kronecker-factored saliency (Zeng & Urtasun 2018; Wang et al. 2019, "C-OBS"/"C-OBD").

    Each layer's Fisher is ``kron(G, A)`` (:func:`~sparsity_lab.curvature.kronecker_factors`),
    whose inverse is ``kron(G^-1, A^-1)``, so OBS's diagonal needs only the two small
    inverses: ``mode="obs"`` scores ``w_ij^2 / (2 [G^-1]_ii [A^-1]_jj)`` with each factor
    dampened by ``sqrt(damp)`` times its mean diagonal (``damp_mode="absolute"``: by
    ``sqrt(damp)`` itself); ``mode="obd"`` scores
    ``1/2 G_ii A_jj w_ij^2``.  With ``mode="obs"`` the surviving weights get the OBS
    update through the same inverse, the sum of the single-weight updates as in the K-FAC
    baseline of the WoodFisher paper: ``dW = -G^-1 S A^-1`` with ``S_ij = w_ij / ([G^-1]_ii
    [A^-1]_jj)`` on the newly pruned weights (``update=False``: mask only).  Linear and
    Conv1d/2d weights; every pattern and budget.
    """

    name = "kfac"
    needs_data = True

    def __init__(
        self,
        mode: str = "obs",
        damp: float = 1e-3,
        batches: int | None = 8,
        update: bool = True,
        damp_mode: str = "relative",
    ) -> None:
        _check_choice("mode", mode, ("obs", "obd"))
        curvature.check_damping(damp, damp_mode)
        self.mode, self.damp, self.damp_mode = mode, damp, damp_mode
        self.batches, self.update = batches, update

    def scores(self, model: nn.Module, names: list[str], context: Context):
        factors = curvature.kronecker_factors(
            model, names, context.data, loss_fn=context.loss_fn, limit=self.batches
        )
        out, inverses = {}, context.state.setdefault("inverses", {})
        for n in names:
            w = masks.weight(model, n).detach().double()
            a, g = factors[n]
            if self.mode == "obd":
                curv = torch.outer(g.diagonal(), a.diagonal())
                s = obd_saliency(_matrix(w), curv.to(w))
            else:
                root = math.sqrt(self.damp)
                a_inv = torch.linalg.inv(_dampened(a, root, self.damp_mode)).to(w)
                g_inv = torch.linalg.inv(_dampened(g, root, self.damp_mode)).to(w)
                inverses[n] = (g_inv, a_inv)
                s = obs_saliency(_matrix(w), torch.outer(g_inv.diagonal(), a_inv.diagonal()))
            out[n] = s.reshape(w.shape)
        return out

    def update_weights(self, model, new_masks, context):
        if self.mode != "obs" or not self.update:
            return
        for n, keep in new_masks.items():
            g_inv, a_inv = context.state["inverses"][n]
            w = _matrix(masks.weight(model, n).detach().double())
            pruned = ~_matrix(keep.to(torch.bool)).to(w.device)
            diag = torch.outer(g_inv.diagonal(), a_inv.diagonal())
            s = torch.where(pruned, w / diag, torch.zeros_like(w))  # zero where pruned before
            new = w - g_inv @ s @ a_inv
            new[pruned] = 0.0
            store_update(model, n, new.reshape(keep.shape), keep)


# --- EigenDamage: pruning in the Kronecker-factored eigenbasis -------------------------------


class EigenbasisLinear(nn.Linear):
    """A Linear layer in its K-FAC eigenbasis: ``y = Q_G W* Q_A^T x + b``.

    ``weight`` holds ``W* = Q_G^T W Q_A`` (same shape as before, so masks, budgets and
    reports address it by the same name); the buffers ``eig_in = Q_A`` and ``eig_out = Q_G``
    are orthogonal, so before pruning the layer computes exactly what it did.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.linear(x, self.eig_in.T)  # coordinates in the input eigenbasis
        z = F.linear(z, self.weight)  # the (pruned) core
        return F.linear(z, self.eig_out, self.bias)


class _EigenbasisConv:
    """Shared forward of the conv versions: a conv whose filters are the input eigenvectors
    (stride, padding and dilation of the original), then two 1x1 convs (core, output basis)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        basis = self.eig_in.T.reshape(-1, *w.shape[1:])
        z = self._conv_forward(x, basis, None)
        ones = (1,) * (w.dim() - 2)
        conv = F.conv1d if w.dim() == 3 else F.conv2d
        z = conv(z, w.reshape(w.shape[0], -1, *ones))
        return conv(z, self.eig_out.reshape(*self.eig_out.shape, *ones), self.bias)


class EigenbasisConv1d(_EigenbasisConv, nn.Conv1d):
    """A Conv1d layer in its K-FAC eigenbasis (see :class:`EigenbasisLinear`)."""


class EigenbasisConv2d(_EigenbasisConv, nn.Conv2d):
    """A Conv2d layer in its K-FAC eigenbasis (see :class:`EigenbasisLinear`)."""


_EIGENBASIS = {
    nn.Linear: EigenbasisLinear,
    nn.Conv1d: EigenbasisConv1d,
    nn.Conv2d: EigenbasisConv2d,
}


def to_eigenbasis(module: nn.Module, eig_in: torch.Tensor, eig_out: torch.Tensor) -> nn.Module:
    """Rewrite a Linear/Conv layer in place as ``Q_G W* Q_A^T`` (see :class:`EigenbasisLinear`).

    ``eig_in`` (``Q_A``) and ``eig_out`` (``Q_G``) must be orthogonal, of sizes
    ``in * prod(kernel)`` and ``out``.  Returns the same module object, with a new class.
    """
    cls = _EIGENBASIS.get(type(module))
    if cls is None:
        raise TypeError(
            f"cannot rewrite a {type(module).__name__} in an eigenbasis; only unmasked "
            f"nn.Linear, nn.Conv1d and nn.Conv2d layers (groups=1) are supported"
        )
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
        raise ValueError(f"grouped convolutions (groups={module.groups}) are not supported")
    w = module.weight
    with torch.no_grad():
        core = eig_out.T.double() @ _matrix(w).double() @ eig_in.double()
        w.copy_(core.reshape(w.shape).to(w))
    module.__class__ = cls
    module.register_buffer("eig_in", eig_in.detach().to(w).clone())
    module.register_buffer("eig_out", eig_out.detach().to(w).clone())
    return module


@register("criterion", "eigendamage", section="3.5.2")
class EigenDamage(Criterion):
    """EigenDamage (Wang et al. 2019): prune in the Kronecker-factored eigenbasis.

    With ``A = Q_A diag(a) Q_A^T`` and ``G = Q_G diag(g) Q_G^T`` (the K-FAC factors), the
    layer is rewritten as ``W = Q_G W* Q_A^T`` (:func:`to_eigenbasis`).  In these
    coordinates the K-FAC Fisher ``kron(G, A)`` is diagonal, ``g_i a_j``, so OBD and OBS
    agree exactly: score ``1/2 g_i a_j W*_ij^2``.  The masks apply to ``W*``, under the
    layer's usual name; with ``pattern="channel"`` / ``"input"`` whole eigen-directions go,
    which is the structured pruning of the paper (the bases ``Q`` stay as dense buffers of
    ``out^2 + (in * k)^2`` entries, which only structured pruning can shrink).  The model
    is changed in place, so the target layers must be unmasked Linear/Conv1d/Conv2d.
    Eigenvalues are the plain K-FAC ones.  Every pattern and budget.
    """

    name = "eigendamage"
    prunes_once = True
    needs_data = True

    def __init__(self, batches: int | None = 8) -> None:
        self.batches = batches

    def prepare(self, model, names, dense, context):
        """Rewrite the target layers in their K-FAC eigenbases; their eigenvalues go to
        ``context.state``, where :meth:`scores` reads them."""
        rewrite = [n for n in names if n not in dense]
        for n in rewrite:
            module = model.get_submodule(n.rpartition(".")[0])
            if masks.is_masked(model, n) or isinstance(module, tuple(_EIGENBASIS.values())):
                raise ValueError(
                    f"{n!r} is already masked or in an eigenbasis; eigendamage rewrites "
                    f"layers, so apply it once to an unpruned model"
                )
        factors = curvature.kronecker_factors(
            model, rewrite, context.data, loss_fn=context.loss_fn, limit=self.batches
        )
        eigenvalues = context.state["eigenvalues"] = {}
        for n in rewrite:
            a, g = factors[n]
            eig_a, q_a = torch.linalg.eigh(a)
            eig_g, q_g = torch.linalg.eigh(g)
            # eigenvalues of a positive semi-definite matrix: tiny negatives are rounding
            eigenvalues[n] = (eig_g.clamp(min=0), eig_a.clamp(min=0))
            to_eigenbasis(model.get_submodule(n.rpartition(".")[0]), q_a, q_g)

    def scores(self, model: nn.Module, names: list[str], context: Context):
        out = {}
        eigenvalues = context.state.get("eigenvalues", {})
        for n in names:
            w = masks.weight(model, n).detach().double()
            if n not in eigenvalues:  # a dense layer: never ranked
                out[n] = torch.zeros_like(w)
                continue
            eig_g, eig_a = eigenvalues[n]
            out[n] = obd_saliency(_matrix(w), torch.outer(eig_g, eig_a).to(w)).reshape(w.shape)
        return out

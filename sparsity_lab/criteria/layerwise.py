"""Layer-wise reconstruction: prune one layer at a time, keeping its outputs (survey 3.5, +).

Instead of the loss of the whole network, each layer keeps what it computes on calibration
inputs ``X`` (one row per example and position): find a sparse ``W'`` with
``||X W^T - X W'^T||^2`` small.  For one output row ``w`` this error is the quadratic
``(w - w')^T H (w - w') / 2`` with the *layer Hessian* ``H = 2 X^T X / n``, the same for every
row, so OBS applies exactly and cheaply, one layer at a time:

* **L-OBS** (Dong et al. 2017): OBS saliencies ``w_j^2 / (2 [H^-1]_jj)`` computed once, the
  lowest pruned over the layer, each row corrected by the joint OBS update;
* **OBC** (Frantar & Alistarh 2022): exact greedy OBS, row by row: remove the cheapest
  weight, update the row and ``H^-1`` (drop the weight's row and column), repeat;
* **SparseGPT** (Frantar & Alistarh 2023): the column-by-column approximation of OBC that
  shares one ``H^-1`` sequence (a Cholesky factor) across rows, with lazy block updates;
* **Wanda** (Sun et al. 2024): no update at all, score ``|W_ij| * ||X_j||_2`` compared
  within each output row.

The calibration pattern (as in SparseGPT's code): for each layer in the order the forward
pass calls them, ``add_batch`` its inputs (:class:`Calibration`), prune it, ``free`` the
statistics.  Inputs are recomputed for every layer, so a layer sees what the already
pruned layers before it produce.  Convolutions are matrix products over unfolded patches
(:func:`~sparsity_lab.curvature.layer_input_rows`).

Supported patterns: ``unstructured`` and N:M (``"2:4"``, ``"4:8"``; L-OBS unstructured
only).  The budget sets each layer's sparsity: ``uniform`` is the papers' choice; ``global``
(the default of :func:`sparsity_lab.prune`) ranks each method's own layer saliency over all
layers, measured once on the dense model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from .. import budgets, curvature, masks
from ..budgets import largest_remainder
from ..curvature import layer_input_rows
from ..patterns import NM, Pattern, prune_lowest
from ..registry import register
from ..targets import default_targets
from .base import Context, Criterion
from .second_order import block_obs_update, obs_saliency, store_update
from .units import evaluating, module_of

__all__ = [
    "Calibration",
    "spread",
    "wanda",
    "sparsegpt",
    "obc",
    "lobs",
    "reconstruction_error",
    "reconstruction_errors",
    "LOBS",
    "OBC",
    "SparseGPT",
    "Wanda",
]


# --- calibration statistics ------------------------------------------------------------------


class Calibration:
    """Running statistics of one layer's inputs: ``add_batch`` -> read -> ``free``.

    Keeps ``X^T X`` (``full=True``) or only the squared column norms, accumulated in
    float64 over every row of the inputs (examples x positions).
    """

    def __init__(self, module: nn.Module, *, full: bool = True) -> None:
        self.module, self.full = module, full
        self.rows = 0
        self.xtx: torch.Tensor | None = None
        self.sq_norms: torch.Tensor | None = None

    def add_batch(self, inputs: torch.Tensor) -> None:
        """Add one batch of the layer's inputs, exactly as the layer receives them."""
        x = layer_input_rows(self.module, inputs.detach()).double()
        if self.sq_norms is None:
            self.sq_norms = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
            if self.full:
                self.xtx = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype, device=x.device)
        self.sq_norms += x.pow(2).sum(0)
        if self.full:
            self.xtx += x.T @ x
        self.rows += len(x)

    def hessian(self) -> torch.Tensor:
        """The layer Hessian ``2 X^T X / n`` of the reconstruction error of one output row."""
        if not self.full or self.xtx is None:
            raise ValueError("no X^T X was collected: build the Calibration with full=True")
        return 2 * self.xtx / max(self.rows, 1)

    def column_norms(self) -> torch.Tensor:
        """``||X_j||_2`` of every input column over all rows (Wanda's activation norm)."""
        if self.sq_norms is None:
            raise ValueError("no batch was added: call add_batch first")
        return self.sq_norms.sqrt()

    def permute(self, order: torch.Tensor) -> None:
        """Reorder the input columns (used to make conv N:M groups consecutive)."""
        self.sq_norms = self.sq_norms[order]
        if self.xtx is not None:
            self.xtx = self.xtx[order][:, order]

    def free(self) -> None:
        """Drop the statistics."""
        self.xtx = self.sq_norms = None


# --- counting -------------------------------------------------------------------------------


def spread(total: int, capacity: list[int], floor: list[int] | None = None) -> list[int]:
    """Whole numbers ``k_i`` with ``floor_i <= k_i <= capacity_i`` summing to ``total``,
    proportional to ``capacity`` (:func:`~sparsity_lab.budgets.largest_remainder`)."""
    whole = sum(capacity)
    desired = [total * c / whole if whole else 0.0 for c in capacity]
    return largest_remainder(total, desired, capacity, floor)


def _pruned(prior: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Bool matrix of the entries pruned before (False everywhere without a prior mask)."""
    if prior is None:
        return torch.zeros_like(like, dtype=torch.bool)
    return ~prior.to(torch.bool)


# --- the layer solvers (pure functions on one weight matrix) ---------------------------------


def wanda(
    weight: torch.Tensor,
    column_norms: torch.Tensor,
    n_prune: int | None = None,
    *,
    nm: tuple[int, int] | None = None,
    prior: torch.Tensor | None = None,
) -> torch.Tensor:
    """Wanda's keep-mask (bool) of a ``(rows, cols)`` weight.

    Score ``|W_ij| * ||X_j||_2``; each output row loses its lowest scores: ``n_prune`` in
    total, spread evenly over rows, or ``M - N`` of every ``M`` consecutive columns when
    ``nm=(N, M)``.  Entries pruned before (``prior`` False) go first.
    """
    score = weight.abs().double() * column_norms.double()[None, :]
    before = _pruned(prior, score)
    score = score.masked_fill(before, -math.inf)
    rows, cols = score.shape
    if nm is not None:
        n, m = nm
        order = torch.argsort(score.reshape(rows, cols // m, m), dim=-1, stable=True)
        keep = torch.ones(rows, cols // m, m, dtype=torch.bool, device=score.device)
        keep.scatter_(-1, order[..., : m - n], False)
        return keep.reshape(rows, cols)
    per_row = spread(n_prune, [cols] * rows, before.sum(1).tolist())
    order = torch.argsort(score, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(cols, device=score.device).expand(rows, cols))
    return rank >= torch.tensor(per_row, device=score.device)[:, None]


def _dampened(
    hessian: torch.Tensor, damp: float, mode: str = "relative", dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``H + lambda I`` in ``dtype``, ``lambda = damp * mean(diag H)`` (``mode="absolute"``:
    ``lambda = damp``; see :func:`~sparsity_lab.curvature.damping`).

    The damping keeps ``H`` invertible and makes an input that is always zero (``H_jj = 0``)
    nearly free to prune: its weights cost ``lambda w^2``, as they change nothing on the
    calibration data.
    """
    h = hessian.to(dtype, copy=True)
    diag = h.diagonal()
    diag += curvature.damping(damp, diag, mode)
    return h


def sparsegpt(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    n_prune: int | None = None,
    *,
    nm: tuple[int, int] | None = None,
    prior: torch.Tensor | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    damp_mode: str = "relative",
    quantizer: Any = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on a ``(rows, cols)`` weight: returns ``(new_weight, keep)`` (``dtype``, bool).

    With ``H^-1 = U^T U`` (``U`` upper Cholesky factor), column ``j`` is pruned and the
    error ``(w_j - q_j) / U_jj`` is spread over the later columns by row ``j`` of ``U``:
    the OBS update restricted to the columns not yet processed.  The mask of a block of
    ``block_size`` columns is chosen when the block starts, from ``w^2 / U_jj^2`` (the OBS
    saliency) over all its rows: ``n_prune`` weights in total, spread over blocks by size.
    N:M chooses ``M - N`` of every ``M`` columns per row when their group starts.  Updates
    for later blocks are applied lazily, one matrix product per block.

    ``quantizer`` (:class:`sparsity_lab.quantization.ColumnQuantizer`) also quantizes each
    kept weight as its column comes, ``q_j`` being the pruned-or-quantized column: GPTQ
    with ``n_prune=0``, SparseGPT's joint sparsification and quantization otherwise.

    ``dtype`` is the precision of the whole solve.  float64 is the reference; float32, the
    precision of the paper's code, halves the memory (about one float64 Hessian in all) and
    most of the time, and gives the same masks and reconstruction error up to rounding on
    well-conditioned layers (tested).
    """
    if nm is not None and block_size % nm[1]:
        raise ValueError(f"block_size {block_size} must be a multiple of M={nm[1]}")
    rows, cols = weight.shape
    # H -> H^-1 -> its upper Cholesky factor, each step written over the last, so that the
    # extra memory stays near two Hessians while it is computed
    u = _dampened(hessian, damp, damp_mode, dtype)
    torch.linalg.cholesky(u, out=u)
    torch.cholesky_inverse(u, out=u)
    torch.linalg.cholesky(u, upper=True, out=u)
    # work on W^T, where a column of W is a contiguous row
    wt = torch.empty(cols, rows, dtype=dtype, device=weight.device)
    wt.copy_(weight.detach().T)
    before = None if prior is None else ~prior.to(torch.bool).T
    pruned = torch.zeros(cols, rows, dtype=torch.bool, device=weight.device)
    starts = list(range(0, cols, block_size))
    if nm is None:
        sizes = [min(block_size, cols - s) * rows for s in starts]
        floors = [0 if before is None else int(before[s : s + block_size].sum()) for s in starts]
        per_block = spread(n_prune, sizes, floors)
    for b, i1 in enumerate(starts):
        i2 = min(i1 + block_size, cols)
        w1, u1, mask = wt[i1:i2], u[i1:i2, i1:i2], pruned[i1:i2]  # views: updates land in wt
        old = None if before is None else before[i1:i2]
        d = u1.diagonal()
        if nm is None:  # the block's mask, from the OBS saliency w^2 / U_jj^2
            score = w1.pow(2) / d.pow(2)[:, None]
            if old is not None:
                score.masked_fill_(old, -math.inf)
            mask |= ~prune_lowest(score.flatten(), per_block[b]).reshape(score.shape)
        err = torch.empty_like(w1)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:  # the group's mask, from the updated weights
                n, m = nm
                score = w1[i : i + m].pow(2) / d[i : i + m, None].pow(2)
                if old is not None:
                    score.masked_fill_(old[i : i + m], -math.inf)
                drop = torch.argsort(score, dim=0, stable=True)[: m - n]
                mask[i : i + m].scatter_(0, drop, True)
            if quantizer is None:
                e = w1[i] * mask[i] / d[i]  # (w - q) / U_jj, zero where the weight is kept
                w1[i:].addr_(u1[i, i:], e, alpha=-1)  # spread over the block's later columns
            else:
                q = quantizer.column(w1, i, i1 + i).masked_fill(mask[i], 0.0)
                e = (w1[i] - q) / d[i]
                w1[i:].addr_(u1[i, i:], e, alpha=-1)
                w1[i] = q  # exactly on the grid (the update leaves it there up to rounding)
            err[i] = e
        w1.masked_fill_(mask, 0.0)
        wt[i2:].addmm_(u[i1:i2, i2:].T, err, alpha=-1)  # the lazy update of later blocks
    return wt.T, ~pruned.T


def _obc_rows(
    w: torch.Tensor,
    hinv: torch.Tensor,
    steps: torch.Tensor,
    before: torch.Tensor,
    nm: tuple[int, int] | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy exact OBS on each row of ``w`` (all rows at once), ``steps[r]`` removals.

    Returns the new rows, the pruned mask and the loss of each step, ``(r, max_steps)``.
    """
    r, c = w.shape
    w = w.clone()
    hinv = hinv.expand(r, c, c).clone()
    pruned = torch.zeros_like(before)
    rows = torch.arange(r, device=w.device)
    n_steps = int(steps.max()) if r else 0
    losses = torch.zeros(r, n_steps, dtype=w.dtype, device=w.device)
    for s in range(n_steps):
        diag = hinv.diagonal(dim1=1, dim2=2)
        score = w.pow(2) / diag
        score = score.masked_fill(before & ~pruned, -math.inf)  # pruned before: first, free
        if nm is not None:
            n, m = nm
            full = pruned.reshape(r, c // m, m).sum(-1) >= m - n
            score = score.masked_fill(full.repeat_interleave(m, dim=1), math.inf)
        score = score.masked_fill(pruned, math.inf)
        j = score.argmin(dim=1)
        active = s < steps
        d = diag[rows, j]
        # (r, c): row j of each row's H^-1, which is symmetric: its column, read contiguously
        col = hinv[rows, j, :]
        losses[:, s] = w[rows, j].pow(2) / d / 2
        shift = torch.where(active, w[rows, j] / d, torch.zeros_like(d))
        w.sub_(shift[:, None] * col)
        pruned[rows[active], j[active]] = True
        w.masked_fill_(pruned, 0.0)
        # remove weight j from each active row's problem: H^-1 <- H^-1 - c c^T / c_j,
        # in place (one batched rank-1 update, no (r, c, c) temporary)
        scaled = col * torch.where(active, 1.0 / d, torch.zeros_like(d))[:, None]
        hinv.baddbmm_(scaled[:, :, None], col[:, None, :], alpha=-1)
    return w, pruned, losses


def obc(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    n_prune: int | None = None,
    *,
    nm: tuple[int, int] | None = None,
    prior: torch.Tensor | None = None,
    damp: float = 0.01,
    damp_mode: str = "relative",
    chunk_bytes: int = 2**25,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact layer-wise OBS (OBC's ExactOBS) on a ``(rows, cols)`` weight: ``(new, keep)``.

    Each row is pruned greedily with the exact OBS step: remove ``argmin w_q^2/[H^-1]_qq``,
    update the row by ``-w_q H^-1 e_q / [H^-1]_qq``, drop ``q`` from ``H^-1``.  Unstructured:
    every row is traced to the end, the ``n_prune`` cheapest steps over the whole layer set
    how many weights each row loses, and the rows are replayed to those counts.  N:M: each
    row removes the cheapest weight among groups that still have more than N.  Costs
    ``rows * cols^3``: for small layers.  Rows run together, as many as have their copies
    of ``H^-1`` in ``chunk_bytes`` (sized to stay in cache); ``dtype`` is the precision of
    the solve (float64, the reference, or float32).
    """
    w = weight.to(dtype)
    rows, cols = w.shape
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(_dampened(hessian, damp, damp_mode, dtype)))
    before = _pruned(prior, w)
    chunk = max(1, chunk_bytes // (w.element_size() * cols * cols))
    parts = [slice(i, i + chunk) for i in range(0, rows, chunk)]
    if nm is None:
        full = torch.full((rows,), cols, device=w.device)
        losses = torch.cat([_obc_rows(w[p], hinv, full[p], before[p], None)[2] for p in parts])
        losses = losses.masked_fill(
            torch.arange(cols, device=w.device)[None, :] < before.sum(1, keepdim=True),
            -math.inf,  # the first steps of a row remove its weights pruned before
        )
        chosen = ~prune_lowest(losses.flatten(), n_prune).reshape(rows, cols)
        steps = chosen.sum(1)
    else:
        steps = torch.full((rows,), cols * (nm[1] - nm[0]) // nm[1], device=w.device)
    new, pruned = [], []
    for p in parts:
        a, b, _ = _obc_rows(w[p], hinv, steps[p], before[p], nm)
        new.append(a)
        pruned.append(b)
    return torch.cat(new), ~torch.cat(pruned)


def lobs(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    n_prune: int,
    *,
    prior: torch.Tensor | None = None,
    damp: float = 0.01,
    damp_mode: str = "relative",
    chunk_bytes: int = 2**28,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-wise OBS (L-OBS) on a ``(rows, cols)`` weight: ``(new, keep)``.

    Saliencies ``w_ij^2 / (2 [H^-1]_jj)`` from one ``H^-1`` (no downdating, unlike OBC);
    the ``n_prune`` lowest over the layer are removed, and each row gets the joint OBS
    update for its pruned set, ``dw = -H^-1 E_Q (E_Q^T H^-1 E_Q)^-1 w_Q``.  ``dtype`` is
    the precision of the solve (float64, the reference, or float32).
    """
    w = weight.to(dtype)
    rows, cols = w.shape
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(_dampened(hessian, damp, damp_mode, dtype)))
    before = _pruned(prior, w)
    score = obs_saliency(w, hinv.diagonal()[None, :]).masked_fill(before, -math.inf)
    keep = prune_lowest(score.flatten(), n_prune).reshape(rows, cols)
    new = w.clone()
    chunk = max(1, chunk_bytes // (w.element_size() * cols * cols))
    for i in range(0, rows, chunk):
        part = slice(i, i + chunk)
        blocks = hinv.expand(len(w[part]), cols, cols)
        new[part] += block_obs_update(w[part], blocks, ~keep[part])
    return new.masked_fill(~keep, 0.0), keep


# --- reconstruction error --------------------------------------------------------------------


def reconstruction_error(
    weight: torch.Tensor, new_weight: torch.Tensor, inputs: torch.Tensor
) -> float:
    """``||X W^T - X W'^T||_F^2`` for input rows ``X`` (``(n, cols)``) of a matrix weight."""
    diff = (weight.detach().double() - new_weight.detach().double()).reshape(weight.shape[0], -1)
    return float((inputs.detach().double() @ diff.T).pow(2).sum())


def reconstruction_errors(
    dense: nn.Module,
    pruned: nn.Module,
    data: Any,
    names: Iterable[str] | None = None,
    *,
    batches: int | None = 8,
) -> dict[str, float]:
    """Relative output error of each layer of ``pruned`` against the same layer of ``dense``.

    The inputs are those ``pruned`` feeds the layer (after its own earlier pruned layers):
    ``||X W^T - X W'^T||^2 / ||X W^T||^2``, the quantity layer-wise methods minimise.
    """
    names = list(default_targets(pruned) if names is None else names)
    calib = {n: Calibration(module_of(pruned, n, "layer-wise criteria")) for n in names}
    inputs = [x for x, _ in Context(data=data).batches(batches, labels=False)]
    with evaluating(pruned), torch.no_grad():
        handles = [
            module_of(pruned, n, "layer-wise criteria").register_forward_hook(
                lambda mod, args, out, c=calib[n]: c.add_batch(args[0])
            )
            for n in names
        ]
        try:
            for x in inputs:
                pruned(x)
        finally:
            for h in handles:
                h.remove()
    out = {}
    for n in names:
        w = masks.weight(dense, n).detach().double()
        w = w.reshape(w.shape[0], -1)
        d = w - masks.weight(pruned, n).detach().double().reshape(w.shape)
        xtx = calib[n].xtx
        out[n] = float(torch.trace(d @ xtx @ d.T) / torch.trace(w @ xtx @ w.T).clamp(min=1e-300))
    return out


# --- the criteria -----------------------------------------------------------------------------


class _Stop(Exception):
    """Raised by a calibration hook once it has the layer's inputs: skip the rest."""


def _nm_order(shape: tuple[int, ...]) -> torch.Tensor | None:
    """Column permutation that makes a conv weight's N:M groups consecutive.

    The matrix view has columns in (channel, kernel position) order; N:M groups run along
    channels at a fixed kernel position (:class:`~sparsity_lab.patterns.NM`), so reorder to
    (kernel position, channel).  None for Linear weights (already in order).
    """
    if len(shape) <= 2:
        return None
    channels, positions = shape[1], math.prod(shape[2:])
    return torch.arange(channels * positions).reshape(channels, positions).T.reshape(-1)


def _stack(batches: list[torch.Tensor]) -> torch.Tensor | None:
    """The calibration batches as one batch, or None when their shapes differ."""
    first = batches[0]
    same = (x.shape[1:] == first.shape[1:] and x.dtype == first.dtype for x in batches)
    if all(torch.is_tensor(x) for x in batches) and all(same):
        return torch.cat(batches) if len(batches) > 1 else first
    return None


class _Layerwise(Criterion):
    """The sequential calibration loop shared by the layer-wise criteria."""

    needs_data = True
    #: whether the method needs ``X^T X`` (False: column norms only)
    full_hessian: ClassVar[bool] = True
    supported_patterns = ("unstructured", "nm")
    # The papers prune every layer to the same sparsity (their reconstruction is per layer).
    default_budget = "uniform"
    #: Calibrate every layer in one forward pass when the batches stack (see :meth:`choose`).
    one_pass: bool = True

    #: The precisions a solve can run in: float64 is the reference; float32, the precision
    #: of the papers' code, halves the memory and most of the time on large layers.
    PRECISIONS: ClassVar[dict[str, torch.dtype]] = {
        "float64": torch.float64,
        "float32": torch.float32,
    }

    def __init__(
        self,
        batches: int | None = 8,
        damp: float = 0.01,
        update: bool = True,
        damp_mode: str = "relative",
        sequential: bool = True,
        precision: str = "float64",
    ):
        curvature.check_damping(damp, damp_mode)
        if precision not in self.PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(self.PRECISIONS)}, got {precision!r}"
            )
        self.batches, self.damp, self.damp_mode, self.update = batches, damp, damp_mode, update
        self.sequential = sequential
        self.precision = precision
        self.dtype = self.PRECISIONS[precision]

    # what each method implements
    def prune_layer(
        self,
        weight: torch.Tensor,
        calib: Calibration,
        n_prune: int | None,
        nm: tuple[int, int] | None,
        prior: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(new_weight, keep)`` of one ``(rows, cols)`` weight matrix."""
        raise NotImplementedError

    def layer_scores(self, weight: torch.Tensor, calib: Calibration) -> torch.Tensor:
        """Element saliencies of one dense layer, for budgets that rank across layers."""
        hinv = torch.cholesky_inverse(
            torch.linalg.cholesky(_dampened(calib.hessian(), self.damp, self.damp_mode))
        )
        return obs_saliency(weight.double(), hinv.diagonal()[None, :])

    def scores(self, model, names, context):
        raise TypeError(
            f"{self.name} prunes layer by layer; call sparsity_lab.prune(model, {self.name!r}, "
            f"...) rather than reading element scores"
        )

    def choose(self, model, names, request, context):
        """Prune each layer in forward order on calibration inputs; returns the keep-masks.

        Each layer is calibrated on the inputs it gets from the layers before it *as
        pruned* (``sequential=True``, the papers' pipeline), or on the dense model's inputs
        (``sequential=False``: every layer's calibration comes from one pass before any is
        pruned).  When the calibration batches can be stacked into one (same shape but for
        the first dimension), the sequential pipeline takes one forward pass: each layer is
        pruned in a hook just before it runs.  Otherwise the model is run again up to each
        layer (``one_pass = False`` forces this reference path; the tests check both agree).
        """
        nm = self._nm(request.pattern)
        layers = {n: module_of(model, n, "layer-wise criteria") for n in names}
        device = masks.weight(model, names[0]).device
        batches = [x.to(device) for x, _ in context.batches(self.batches, labels=False)]
        if not batches:
            raise ValueError("the calibration data yielded no batches")
        todo = [n for n in names if n not in request.dense]
        with evaluating(model), torch.no_grad():
            order = [n for n in self._forward_order(model, layers, batches[0]) if n in todo]
            n_prune = self._plan(model, names, layers, request, batches)

            def prune_on(n: str, calib: Calibration) -> torch.Tensor:
                new, keep = self._prune_weight(model, n, calib, n_prune[n], nm)
                calib.free()
                if self.update:
                    store_update(model, n, new, keep)
                masks.attach(model, n, keep)  # the layers after it see it pruned
                return keep

            stacked = _stack(batches) if self.one_pass else None
            if not self.sequential:
                calibs = self._calibrate_all(model, layers, order, batches)
                new_masks = {n: prune_on(n, calibs[n]) for n in order}
            elif stacked is None:
                new_masks = {
                    n: prune_on(n, self._calibrate(model, layers[n], batches)) for n in order
                }
            else:
                new_masks = self._prune_in_one_pass(model, layers, order, stacked, prune_on)
        return {n: new_masks[n] for n in names if n in new_masks}

    def _prune_in_one_pass(self, model, layers, order, inputs, prune_on):
        """One forward pass on all calibration inputs; each layer is pruned by a hook on
        its first call, so what runs after it sees it pruned, as in the reference loop."""
        new_masks: dict[str, torch.Tensor] = {}

        def before(module, args, n):
            if n not in new_masks:
                calib = Calibration(module, full=self.full_hessian)
                calib.add_batch(args[0])
                new_masks[n] = prune_on(n, calib)

        handles = [
            layers[n].register_forward_pre_hook(lambda mod, args, n=n: before(mod, args, n))
            for n in order
        ]
        try:
            model(inputs)
        finally:
            for h in handles:
                h.remove()
        return new_masks

    # the loop's pieces
    def _nm(self, pattern: Pattern) -> tuple[int, int] | None:
        self.check_pattern(pattern)
        return (pattern.n, pattern.m) if isinstance(pattern, NM) else None

    @staticmethod
    def _forward_order(model: nn.Module, layers: dict[str, nn.Module], x: torch.Tensor):
        called: list[str] = []
        handles = [
            m.register_forward_hook(lambda mod, args, out, n=n: called.append(n))
            for n, m in layers.items()
        ]
        try:
            model(x)
        finally:
            for h in handles:
                h.remove()
        order = list(dict.fromkeys(called))
        missing = [n for n in layers if n not in order]
        if missing:
            raise ValueError(
                f"layers {missing} are never called in the forward pass, so they have no "
                f"calibration inputs; exclude them"
            )
        return order

    def _calibrate(self, model: nn.Module, layer: nn.Module, batches: list) -> Calibration:
        calib = Calibration(layer, full=self.full_hessian)

        def record(module, args):
            calib.add_batch(args[0])
            raise _Stop  # the rest of the forward pass is not needed

        handle = layer.register_forward_pre_hook(record)
        try:
            for x in batches:
                try:
                    model(x)
                except _Stop:
                    pass
        finally:
            handle.remove()
        return calib

    def _prune_weight(self, model, name, calib, n_prune, nm):
        w = masks.weight(model, name).detach()
        matrix = w.reshape(w.shape[0], -1).double()
        prior = masks.get_mask(model, name)
        prior = None if prior is None else prior.reshape(matrix.shape).to(torch.bool)
        order = _nm_order(tuple(w.shape)) if nm is not None else None
        if order is not None:
            matrix, calib_order = matrix[:, order], order
            prior = None if prior is None else prior[:, order]
            calib.permute(calib_order)
        new, keep = self.prune_layer(matrix, calib, None if nm is not None else n_prune, nm, prior)
        if order is not None:
            inverse = torch.argsort(order)
            new, keep = new[:, inverse], keep[:, inverse]
        return new.reshape(w.shape), keep.reshape(w.shape)

    def _plan(self, model, names, layers, request, batches):
        """Weights to prune per layer: the budget's plan, on each layer's own saliency on
        the current model's inputs when the budget ranks across layers."""
        shapes = {n: tuple(masks.weight(model, n).shape) for n in names}
        if request.pattern.fixed_sparsity is not None or not budgets.needs_scores(request.budget):
            return request.plan(shapes)
        scores = self._dense_scores(model, names, layers, request.dense, batches)
        group_scores = {
            n: request.pattern.group_scores(s, request.reduction, request.priors[n])
            for n, s in scores.items()
        }
        return request.plan(shapes, group_scores)

    def _calibrate_all(self, model, layers, todo, batches) -> dict[str, Calibration]:
        """Every layer's calibration on the current model's inputs, all in one pass each
        batch (the first call of a layer, as in the sequential pipeline)."""
        calib = {n: Calibration(layers[n], full=self.full_hessian) for n in todo}
        seen: set[str] = set()

        def record(args, n):
            if n not in seen:
                calib[n].add_batch(args[0])
                seen.add(n)

        handles = [
            layers[n].register_forward_pre_hook(lambda mod, args, n=n: record(args, n))
            for n in todo
        ]
        try:
            for x in batches:
                seen.clear()
                model(x)
        finally:
            for h in handles:
                h.remove()
        return calib

    def _dense_scores(self, model, names, layers, dense, batches):
        """Each layer's own saliency on the current model's inputs, all in one pass."""
        todo = [n for n in names if n not in dense]
        calib = self._calibrate_all(model, layers, todo, batches)
        out = {}
        for n in todo:
            w = masks.weight(model, n).detach()
            out[n] = self.layer_scores(w.reshape(w.shape[0], -1), calib[n]).reshape(w.shape)
            calib[n].free()
        return out


@register("criterion", "wanda", section="3.3")
class Wanda(_Layerwise):
    """Wanda (Sun et al. 2024): pruning by weights and activations, no weight update.

    Score ``|W_ij| * ||X_j||_2`` (``X_j``: input feature ``j`` over all calibration rows),
    compared within each output row; N:M keeps the N best of every M inputs per row.
    Layer-wise with sequential calibration (``batches`` batches).  Patterns: unstructured,
    N:M.
    """

    name = "wanda"
    full_hessian = False

    def __init__(self, batches: int | None = 8, sequential: bool = True) -> None:
        super().__init__(batches=batches, update=False, sequential=sequential)

    def prune_layer(self, weight, calib, n_prune, nm, prior):
        keep = wanda(weight, calib.column_norms(), n_prune, nm=nm, prior=prior)
        return weight, keep

    def layer_scores(self, weight, calib):
        return weight.abs().double() * calib.column_norms()[None, :]


@register("criterion", "sparsegpt", section="3.5")
class SparseGPT(_Layerwise):
    """SparseGPT (Frantar & Alistarh 2023): column-wise OBS with lazy Cholesky updates.

    Per layer, ``H = 2 X^T X / n + lambda I`` (``lambda = damp * mean(diag)``, or ``damp``
    with ``damp_mode="absolute"``); columns are processed left to
    right, each pruned column's error spread over the remaining ones through the Cholesky
    factor of ``H^-1`` (:func:`sparsegpt`); the mask of each ``block_size`` block is chosen
    adaptively from ``w^2 / [U]_jj^2``.  ``update=False``: the same mask, original weights.
    ``precision="float32"`` solves in single precision, as the paper's code does.
    Patterns: unstructured, N:M.
    """

    name = "sparsegpt"

    def __init__(
        self,
        batches: int | None = 8,
        damp: float = 0.01,
        block_size: int = 128,
        update: bool = True,
        damp_mode: str = "relative",
        sequential: bool = True,
        precision: str = "float64",
    ) -> None:
        super().__init__(
            batches=batches,
            damp=damp,
            update=update,
            damp_mode=damp_mode,
            sequential=sequential,
            precision=precision,
        )
        self.block_size = block_size

    def quantizer_for(self, weight: torch.Tensor) -> Any:
        """What quantizes each kept weight in the column loop (default: nothing)."""
        return None

    def prune_layer(self, weight, calib, n_prune, nm, prior):
        block = self.block_size
        if nm is not None:
            block = max(nm[1], block - block % nm[1])
        return sparsegpt(
            weight,
            calib.hessian(),
            n_prune,
            nm=nm,
            prior=prior,
            block_size=block,
            damp=self.damp,
            damp_mode=self.damp_mode,
            quantizer=self.quantizer_for(weight),
            dtype=self.dtype,
        )


@register("criterion", "obc", section="3.5")
class OBC(_Layerwise):
    """Optimal Brain Compression's ExactOBS (Frantar & Alistarh 2022): exact greedy OBS per row.

    Per layer and row: remove ``argmin w_q^2 / [H^-1]_qq``, update the row by
    ``-w_q H^-1 e_q / [H^-1]_qq`` and drop ``q`` from ``H^-1``, repeat (:func:`obc`);
    unstructured sparsity is spread over rows by the cheapest steps of the layer.
    ``update=False``: the same mask, original weights.  Cost ``rows * cols^3`` per layer.
    ``precision="float32"`` solves in single precision, as the paper's code does.
    Patterns: unstructured, N:M.
    """

    name = "obc"

    def prune_layer(self, weight, calib, n_prune, nm, prior):
        return obc(
            weight,
            calib.hessian(),
            n_prune,
            nm=nm,
            prior=prior,
            damp=self.damp,
            damp_mode=self.damp_mode,
            dtype=self.dtype,
        )


@register("criterion", "lobs", section="3.5")
class LOBS(_Layerwise):
    """Layer-wise OBS (Dong et al. 2017) on the reconstruction Hessian ``H = 2 X^T X / n``.

    Saliency ``w_ij^2 / (2 [H^-1]_jj)`` from one dampened inverse, the lowest removed over
    the layer, each row corrected by the joint OBS update (:func:`lobs`).  ``update=False``:
    the mask alone.  ``precision="float32"`` solves in single precision.
    Pattern: unstructured.
    """

    name = "lobs"
    supported_patterns = ("unstructured",)

    def prune_layer(self, weight, calib, n_prune, nm, prior):
        return lobs(
            weight,
            calib.hessian(),
            n_prune,
            prior=prior,
            damp=self.damp,
            damp_mode=self.damp_mode,
            dtype=self.dtype,
        )

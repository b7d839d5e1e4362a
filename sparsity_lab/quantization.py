"""Quantization of the weights a pruned model keeps: sparsity and quantization combined.

Survey section 2.4.5 (combining compression methods); the LLM recipes that followed it
prune and then quantize the survivors, or do both in one pass.  Weights are quantized
symmetrically to ``bits`` bits: a scale ``s`` per output row (``group_size=None``, "per
channel") or per group of ``group_size`` consecutive inputs of a row ("grouped"), with
``s = max |w| / (2^(bits-1) - 1)`` over the group, and ``q = s * clamp(round(w / s))`` on
the integer grid ``-(2^(bits-1) - 1) .. 2^(bits-1) - 1``.  The grid is symmetric, so a
pruned weight (0) stays exactly 0 and needs no value at all in a sparse format.

- :func:`rtn` rounds every weight to its nearest grid point (round to nearest, RTN).
- :func:`gptq` quantizes one input column at a time and spreads each column's rounding
  error over the columns not yet quantized with the OBS update (Frantar et al. 2023,
  GPTQ), the same column loop as :func:`~sparsity_lab.criteria.layerwise.sparsegpt`;
  with ``n_prune`` it prunes and quantizes in the one pass, as SparseGPT's joint variant.
- :func:`quantize` applies either to a model's (masked) weights in place; masks stay.
- :func:`prune_and_quantize` prunes a model with SparseGPT and quantizes what it keeps in
  the same column loop, layer after layer on the pruned model's inputs (the joint variant).
- :func:`storage_bits` counts a quantized sparse tensor exactly: its values at ``bits``
  each with the format's indices or N:M metadata (:mod:`sparsity_lab.formats`), plus one
  scale per row or group at ``scale_bits``.

The values are stored dequantized (``s * q`` in the weight's dtype): this is fake
quantization, which measures accuracy; :func:`storage_bits` gives what the quantized
model would take.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from . import formats, masks
from .criteria import layerwise
from .criteria.base import Context
from .pruning import prune
from .targets import resolve

METHODS = ("rtn", "gptq")


def levels(bits: int) -> int:
    """The largest integer of the symmetric ``bits``-bit grid: ``2^(bits-1) - 1``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be a whole number from 2 to 16, got {bits!r}")
    return 2 ** (bits - 1) - 1


def _check_group(group_size: int | None, cols: int) -> None:
    if group_size is None:
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive whole number or None, got {group_size!r}")
    if cols % group_size:
        raise ValueError(
            f"group_size {group_size} does not divide the {cols} inputs of each row; pick a "
            f"divisor of {cols}, or None for one scale per row"
        )


def scales(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """One scale per row of ``weight`` (rows, n): ``max |w| / levels(bits)``, 0 for a row
    of zeros (whose weights then all quantize to 0)."""
    return weight.abs().amax(dim=1) / levels(bits)


def round_to_grid(weight: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """``s * clamp(round(w / s), -L, L)`` with ``L = levels(bits)``, per row of ``weight``
    (``scale`` has one entry per row, or per entry); a zero scale gives 0."""
    top = levels(bits)
    s = scale if scale.dim() == weight.dim() else scale.reshape(-1, *[1] * (weight.dim() - 1))
    safe = torch.where(s > 0, s, torch.ones_like(s))
    q = torch.clamp(torch.round(weight / safe), -top, top)
    return torch.where(s > 0, q * s, torch.zeros_like(weight))


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], -1)


def rtn(
    weight: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    keep: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Round to nearest: returns ``(quantized weight, scales)``.

    ``weight`` is (out, in, ...) and is read as rows of inputs; ``scales`` is (rows,) per
    channel or (rows, in / group_size) grouped.  ``keep`` (bool, like ``weight``) zeroes
    the pruned weights first, so the scales come from the kept ones.
    """
    levels(bits)
    w = _matrix(weight.detach())
    if keep is not None:
        w = w * _matrix(keep).to(w.dtype)
    rows, cols = w.shape
    _check_group(group_size, cols)
    g = group_size or cols
    groups = w.reshape(rows, cols // g, g)
    s = groups.abs().amax(dim=2) / levels(bits)  # (rows, groups)
    q = round_to_grid(groups, s.unsqueeze(2), bits)
    out = q.reshape(weight.shape)
    return out, (s[:, 0] if group_size is None else s)


class ColumnQuantizer:
    """Quantizes the columns of a weight one at a time for :func:`gptq` and the joint
    SparseGPT pass (``layerwise.sparsegpt(..., quantizer=...)``).

    Per channel, the scales come from the whole weight before any update (as GPTQ's
    reference code); grouped, from the group's current weights when its first column comes,
    so the error spread into a group is quantized with the group.
    """

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int | None = None) -> None:
        self.bits, self.group_size = bits, group_size
        _check_group(group_size, weight.shape[1])
        self.scale = scales(weight.detach().double(), bits) if group_size is None else None
        self.all_scales: list[torch.Tensor] = []

    def column(self, block: torch.Tensor, i: int, j: int) -> torch.Tensor:
        """The quantized column ``j`` (row ``i`` of ``block``, the columns being processed,
        stored as rows)."""
        if self.group_size is not None and j % self.group_size == 0:
            self.scale = scales(block[i : i + self.group_size].T, self.bits)
            self.all_scales.append(self.scale.clone())
        return round_to_grid(block[i], self.scale, self.bits)

    def scales(self) -> torch.Tensor:
        """(rows,) per channel, or (rows, groups) in the order the groups came."""
        if self.group_size is None:
            return self.scale
        return torch.stack(self.all_scales, dim=1)


def gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    keep: torch.Tensor | None = None,
    n_prune: int | None = None,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on a (rows, cols) weight with layer Hessian ``hessian`` (cols, cols): returns
    ``(quantized weight, keep, scales)``.

    Columns are quantized in order; each column's error ``(w_j - q_j) / U_jj`` moves the
    later columns by row ``j`` of ``U``, the upper Cholesky factor of ``H^-1``.  ``keep``
    fixes a mask (pruned weights stay 0); ``n_prune`` instead prunes that many weights in
    the same pass by SparseGPT's rule (the joint variant).  ``group_size`` must divide
    ``block_size``, so that a group's columns are up to date when its scales are taken.
    """
    if weight.dim() != 2:
        raise ValueError(f"gptq takes a (rows, cols) weight, got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if group_size is not None and block_size % group_size:
        raise ValueError(f"group_size {group_size} must divide block_size {block_size}")
    if keep is not None and n_prune is not None:
        raise ValueError("give keep (a fixed mask) or n_prune (prune in the pass), not both")
    quantizer = ColumnQuantizer(weight, bits, group_size)
    prior = None if keep is None else keep.to(torch.bool)
    count = int((~prior).sum()) if prior is not None else (n_prune or 0)
    new, kept = layerwise.sparsegpt(
        weight.double(),
        hessian,
        count,
        prior=prior,
        block_size=block_size,
        damp=damp,
        quantizer=quantizer,
    )
    return new.to(weight.dtype), kept, quantizer.scales()


def quantize(
    model: nn.Module,
    bits: int,
    *,
    method: str = "rtn",
    group_size: int | None = None,
    data: Any = None,
    targets: Iterable[str] | None = None,
    damp: float = 0.01,
) -> dict[str, torch.Tensor]:
    """Quantize ``model``'s target weights in place (default: every Linear/Conv weight);
    returns their scales by name.  Masks stay attached and pruned weights stay 0.

    ``method="gptq"`` needs calibration ``data`` (batches or an ``(x, y)`` tuple): each
    layer's Hessian comes from its inputs in one pass through the model as it is (not layer
    by layer on the quantized model, as GPTQ's sequential mode does).  Conv weights are
    quantized per output channel over their ``in * k * k`` inputs.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    names = resolve(model, targets)
    hessians = _hessians(model, names, data) if method == "gptq" else {}
    found = {}
    for name in names:
        stored = masks.dense_weight(model, name)
        mask = masks.get_mask(model, name)
        keep = None if mask is None else mask.detach().bool()
        if method == "rtn":
            new, found[name] = rtn(stored, bits, group_size=group_size, keep=keep)
        else:
            w = _matrix(stored.detach())
            keep2 = None if keep is None else _matrix(keep)
            block = 128 if group_size is None else group_size * math.ceil(128 / group_size)
            q, _, found[name] = gptq(
                w, hessians[name], bits, group_size=group_size, keep=keep2,
                block_size=block, damp=damp,
            )  # fmt: skip
            new = q.reshape(stored.shape)
        with torch.no_grad():
            stored.copy_(new.to(stored.dtype))
    return found


class _JointSparseGPT(layerwise.SparseGPT):
    """SparseGPT whose column loop also quantizes each kept weight (the joint variant)."""

    def __init__(self, bits: int, group_size: int | None, **options: Any) -> None:
        super().__init__(**options)
        levels(bits)
        self.bits, self.group_size = bits, group_size
        if group_size is not None:  # a group's columns must be up to date when it starts
            self.block_size = group_size * math.ceil(self.block_size / group_size)

    def quantizer_for(self, weight):
        return ColumnQuantizer(weight, self.bits, self.group_size)


def prune_and_quantize(
    model: nn.Module,
    sparsity: float | None,
    bits: int,
    *,
    data: Any,
    group_size: int | None = None,
    pattern: str = "unstructured",
    **options: Any,
) -> nn.Module:
    """Prune ``model`` with SparseGPT and quantize the kept weights to ``bits`` in the same
    pass (Frantar & Alistarh 2023's joint sparsification and quantization); returns it.

    Layer by layer in forward order, each on the inputs the already pruned and quantized
    layers give (SparseGPT's sequential calibration on ``data``); every column is pruned or
    rounded as it comes and its error spread over the columns still to come.  ``options``
    go to :func:`sparsity_lab.prune` (``targets``, ``exclude``, ``budget``, ...; the budget
    defaults to SparseGPT's uniform).  Masks are attached as by any criterion.
    """
    criterion = _JointSparseGPT(bits, group_size)
    return prune(model, criterion, sparsity, pattern=pattern, data=data, **options)


def _hessians(model: nn.Module, names: list[str], data: Any) -> dict[str, torch.Tensor]:
    """Each target layer's Hessian ``2 X^T X / n`` from one pass over ``data``."""
    if data is None:
        raise ValueError("method='gptq' needs calibration data: pass data=(x, y) or batches")
    layers = {n: model.get_submodule(n.rsplit(".", 1)[0]) for n in names}
    calib = {n: layerwise.Calibration(layer) for n, layer in layers.items()}
    hooks = [
        layer.register_forward_pre_hook(lambda _m, args, n=n: calib[n].add_batch(args[0]))
        for n, layer in layers.items()
    ]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in Context(data=data).batches(labels=False):  # GPTQ reads inputs only
                model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    return {n: c.hessian() for n, c in calib.items()}


def storage_bits(
    weight: torch.Tensor,
    bits: int,
    *,
    group_size: int | None = None,
    fmt: str = "dense",
    scale_bits: int = 16,
    index_bits: int | None = None,
) -> int:
    """Exact bits of ``weight`` quantized to ``bits``-bit values and stored in format
    ``fmt`` (``dense``, ``bitmap``, ``csr``, ``nm_format``, ...; its indices or N:M
    metadata counted by :func:`sparsity_lab.formats.bits`), plus one ``scale_bits`` scale
    per row (per channel) or per group of ``group_size`` inputs of a row."""
    levels(bits)
    rows, cols = _matrix(weight).shape
    _check_group(group_size, cols)
    n_scales = rows * (1 if group_size is None else cols // group_size)
    values = formats.bits(weight, fmt, value_bits=bits, index_bits=index_bits)
    return values + n_scales * scale_bits

"""Patterns: *what* is pruned together (survey sections 2.3 and 3.1).

A pattern splits a weight tensor into groups of elements that are kept or removed together:
single weights (``unstructured``), N:M groups (``nm``), r x c tiles (``block``), output units
(``channel``), input units (``input``), convolution kernels (``kernel``), attention heads
(``head``), whole layers (``layer``) or embedding rows (``embedding``).  Given element scores
(higher = more important) it reduces them to one score per group and keeps the best groups.

A pattern that does not fit a tensor raises a ValueError naming it; it never skips it.
:func:`misfits` lists, for a whole model, which layers a pattern does not fit and why, so
that a caller can keep those dense on purpose (``prune(..., dense=...)``).  Patterns act on
one tensor at a time; heads, residual blocks and residual channel groups span several
tensors, and :func:`sparsity_lab.shrink.prune_coupled` prunes those together.

Counting is exact: for a sparsity ``s`` a pattern with ``G`` groups prunes exactly
``round(s * G)`` groups (``round`` half up), so ``unstructured`` zeroes exactly
``round(s * numel)`` weights.  Ties are broken deterministically: among equal scores the
group with the lower index is pruned first.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Sequence
from fractions import Fraction
from numbers import Real
from typing import ClassVar

import torch
from torch import nn

from . import masks, registry
from .registry import register
from .targets import default_targets

REDUCTIONS = ("l1", "l2", "sum", "max")
_LAYER_NAMES = {nn.modules.conv._ConvNd: "Conv"}


def count(sparsity: float, n: int) -> int:
    """Number of groups pruned out of ``n`` for ``sparsity``: ``round(sparsity * n)``, half up.

    The product is taken in decimal (``0.145 * 100`` is 14.5, not 14.4999...), and a tie
    rounds up.  ``torch.nn.utils.prune`` computes ``round(amount * n)`` in binary floating
    point with Python's round-half-to-even, so the two differ by one exactly where the
    decimal product ends in .5 (about 1% of (sparsity, size) pairs on a grid of
    percentages), and agree everywhere else.  Accepts 1.0: a budget may empty a whole
    layer (layer collapse), though a user's target must stay below 1
    (:func:`check_sparsity`).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"a layer's sparsity must be in [0, 1], got {sparsity!r}")
    # Exact decimal arithmetic: 0.145 * 100 is 14.4999... in binary floating point.
    return min(n, math.floor(Fraction(repr(float(sparsity))) * n + Fraction(1, 2)))


def target_sparsity(pattern: Pattern, sparsity: float | None) -> float:
    """The sparsity to reach with ``pattern``: ``sparsity``, or the one N:M fixes.

    N:M patterns fix the sparsity at ``1 - N/M``: ``None`` means that one, and any other
    value is an error (a 2:4 model cannot be 30% sparse).  Other patterns need a value.
    """
    fixed = pattern.fixed_sparsity
    if sparsity is None:
        if fixed is None:
            raise ValueError(f"pattern {pattern!r} needs a sparsity in [0, 1), got None")
        return fixed
    check_sparsity(sparsity)
    if fixed is not None and abs(sparsity - fixed) > 1e-9:
        raise ValueError(
            f"{pattern!r} fixes the sparsity at {fixed:g}, got sparsity={sparsity}; "
            f"pass sparsity=None (or {fixed:g})"
        )
    return float(sparsity)


def check_sparsity(sparsity: float) -> None:
    """Raise a ValueError unless ``0 <= sparsity < 1``."""
    is_scalar_tensor = torch.is_tensor(sparsity) and sparsity.numel() == 1
    if isinstance(sparsity, bool) or not (isinstance(sparsity, Real) or is_scalar_tensor):
        raise TypeError(f"sparsity must be a number in [0, 1), got {type(sparsity).__name__}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(
            f"sparsity must be in [0, 1), got {sparsity!r}; it is the fraction of zeros, "
            f"e.g. 0.9 keeps 10% of the weights"
        )


def prune_lowest(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep-mask (bool) of a 1-D ``scores`` with its ``n_prune`` lowest entries removed.

    Ties are deterministic: among equal scores the lower index goes first, as in a stable
    sort (:func:`prune_lowest_by_sorting`, the reference).  One partial selection
    (:func:`kth_smallest`) finds the threshold instead of sorting every score.
    """
    flat = scores.flatten()
    _refuse_nan(flat)
    n = flat.numel()
    if n_prune <= 0:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    if n_prune >= n:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    threshold = kth_smallest([flat], n_prune)
    # Everything above the threshold stays, everything below goes; of the scores equal to
    # it, the first ones by index go until n_prune are gone and the last ones stay.  (Two
    # passes where ties are rare: methods re-select masks at every step.)
    keep = flat > threshold
    ties_kept = (n - n_prune) - int(keep.count_nonzero())
    if ties_kept:
        ties = torch.nonzero(flat == threshold).flatten()
        keep[ties[ties.numel() - ties_kept :]] = True
    return keep


def lowest_counts(parts: Sequence[torch.Tensor], n_prune: int) -> list[int]:
    """How many of the ``n_prune`` lowest scores over all of ``parts`` lie in each part.

    The order is that of a stable sort of the parts' concatenation (ties go to the earlier
    part, then the lower index), so pruning each part's count with :func:`prune_lowest`
    removes exactly the scores a pruning of the concatenation would.  Nothing is
    concatenated: a global budget over a large model selects in a few boolean passes over
    each part instead of copying every score.
    """
    parts = _common_dtype(parts)
    for part in parts:
        _refuse_nan(part)
    sizes = [p.numel() for p in parts]
    n_prune = max(0, min(n_prune, sum(sizes)))
    if n_prune == 0:
        return [0] * len(parts)
    threshold = kth_smallest(parts, n_prune)
    counts = [int((p < threshold).count_nonzero()) for p in parts]
    ties_left = n_prune - sum(counts)
    for i, part in enumerate(parts):
        ties = min(ties_left, int((part == threshold).count_nonzero()))
        counts[i] += ties
        ties_left -= ties
    return counts


def _common_dtype(parts: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``parts`` in one dtype, the promotion of theirs: a float32 score compared with a
    float64 threshold is compared in float32 (torch's rule for a 0-d tensor), which can
    round the threshold and misplace it.  Parts already in that dtype are not copied."""
    if not parts:
        return []
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in parts))
    return [p.to(dtype) for p in parts]


def _refuse_nan(scores: torch.Tensor) -> None:
    # A sum is NaN where a score is (one fast pass); only then is every score looked at,
    # since +inf and -inf also sum to NaN.
    if torch.isnan(scores.sum()) and torch.isnan(scores).any():
        raise ValueError("scores contain NaN; check the criterion's inputs (e.g. a diverged model)")


#: Above this many scores, :func:`kth_smallest` finds its threshold in a bracket
#: (:func:`kth_smallest_bracketed`).  It is faster there: on one CPU thread ``kthvalue``
#: takes about 2.3 ms on the 235,200 weights of LeNet-300-100's first layer and the bracket
#: 0.8 ms, which counts for methods that re-select their masks at every step (Top-KAST,
#: edge-popup); below it ``kthvalue`` wins (``benchmarks/pruning_cost.py`` times the
#: selection against torch's).
#: And it uses less memory: ``kthvalue`` copies the scores and makes int64 indices (3x the
#: float32 scores), and pruning a large model with one global threshold selects over every
#: weight at once.
BRACKETED_SELECTION = 2**16


def kth_smallest(parts: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """The ``k``-th smallest score of the 1-D ``parts`` taken together (as ``kthvalue`` of
    their concatenation), by ``kthvalue`` when they are few and in a bracket otherwise."""
    if sum(p.numel() for p in parts) > BRACKETED_SELECTION:
        return kth_smallest_bracketed(parts, k)
    return _joined(parts).kthvalue(k).values


def _joined(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def kth_smallest_bracketed(
    parts: torch.Tensor | Sequence[torch.Tensor], k: int, margin: float = 4.0
) -> torch.Tensor:
    """The ``k``-th smallest of the 1-D ``parts`` taken together (``kthvalue`` of their
    concatenation), found in a small bracket instead of over everything (Floyd and
    Rivest's idea, made deterministic).

    An evenly strided sample (a sixteenth of the scores, at least 2,048 and at most 65,536
    of them: more costs more than it narrows the bracket) gives two values whose sample
    ranks lie ``margin`` standard deviations below and above ``k``'s; one pass counts the
    scores below the lower value, and ``kthvalue`` runs only on the scores between the two.  If
    the answer is not between them (the sample misled), the full ``kthvalue`` answers: the
    result is exact either way.  Extra memory: a few boolean passes over one part at a time
    and the bracket (a bool tensor's ``count_nonzero``, not its ``sum``, which widens every
    entry to int64).
    """
    parts = _common_dtype([parts] if isinstance(parts, torch.Tensor) else list(parts))
    n = sum(p.numel() for p in parts)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    stride = max(1, n // min(2**16, max(2**11, n // 16)))
    sample = torch.cat([p[::stride] for p in parts])
    m = sample.numel()
    centre = k / n * m
    spread = margin * math.sqrt(max(centre * (1 - k / n), 1.0)) + 1
    low = sample.kthvalue(max(1, int(centre - spread))).values
    high = sample.kthvalue(min(m, int(math.ceil(centre + spread)))).values
    below = sum(int((p < low).count_nonzero()) for p in parts)
    inside = torch.cat([p[(p >= low).logical_and_(p <= high)] for p in parts])
    if below < k <= below + inside.numel():
        return inside.kthvalue(k - below).values
    return _joined(parts).kthvalue(k).values  # the bracket missed the k-th score


def prune_lowest_by_sorting(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """:func:`prune_lowest` by a stable sort of every score: the readable reference."""
    _refuse_nan(scores)
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        order = torch.argsort(scores.flatten(), stable=True)
        keep[order[:n_prune]] = False
    return keep


def reduce_groups(grouped: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce ``grouped`` of shape (n_groups, group_size) to one score per group.

    A group of one element keeps its own score, sign included, whatever the reduction: a
    criterion whose score is signed (GraSP, movement, OBD with the exact Hessian) defines
    "higher = keep" on the signed value, and ``abs`` would rank it by magnitude instead.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    if grouped.shape[1] == 1:
        return grouped[:, 0]
    if reduction == "l1":
        return grouped.abs().sum(dim=1)
    if reduction == "l2":
        return grouped.pow(2).sum(dim=1).sqrt()
    if reduction == "sum":
        return grouped.sum(dim=1)
    if reduction == "max":
        return grouped.amax(dim=1)
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def per_element(reduction: str, n: int) -> float:
    """Divisor that turns a ``reduction`` over ``n`` elements into a per-element score.

    ``l1`` and ``sum`` become means, ``l2`` the root mean square, ``max`` stays; groups of
    different sizes (whole layers, residual blocks) can then be compared.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    n = max(1, n)
    return {"l1": n, "sum": n, "l2": math.sqrt(n), "max": 1.0}[reduction]


class Pattern:
    """Base class.  Subclasses say how a tensor splits into groups (``_grouped``/``expand``)."""

    name: ClassVar[str] = "pattern"
    #: Sparsity a pattern imposes on every layer by itself (N:M), or None.
    fixed_sparsity: float | None = None
    #: Layer types the pattern makes sense for (checked by :func:`misfits`); None: any.
    layers: ClassVar[tuple[type[nn.Module], ...] | None] = None

    def validate(self, shape: torch.Size | tuple[int, ...], name: str = "tensor") -> None:
        """Raise a ValueError naming ``name`` if this pattern cannot apply to ``shape``."""

    def check_layer(self, model: nn.Module, name: str) -> None:
        """Raise a ValueError naming ``name`` if its layer in ``model`` is not one this
        pattern makes sense for (:attr:`layers`), or if its shape does not fit."""
        layer = _layer_of(model, name)
        if self.layers is not None and not isinstance(layer, self.layers):
            kinds = " or ".join(_LAYER_NAMES.get(t, t.__name__) for t in self.layers)
            raise ValueError(
                f"{self!r} applies to {kinds} layers, but {name} belongs to a "
                f"{type(layer).__name__}; exclude it or keep it dense"
            )
        self.validate(tuple(masks.weight(model, name).shape), name)

    def n_groups(self, shape: tuple[int, ...]) -> int:
        """Number of groups in a tensor of ``shape``."""
        return math.prod(shape) // self.group_size(shape)

    def group_size(self, shape: tuple[int, ...]) -> int:
        """Elements per group."""
        return 1

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` rearranged to (n_groups, group_size)."""
        return x.reshape(-1, 1)

    def expand(self, keep_groups: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Element keep-mask of ``shape`` from a bool keep-mask over groups."""
        return keep_groups.reshape(shape)

    def group_scores(
        self, scores: torch.Tensor, reduction: str = "l1", prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One score per group; groups with nothing kept in ``prior`` score ``-inf``.

        ``prior`` is the current keep-mask: a group pruned before stays pruned, so masks
        only shrink when pruning is repeated.
        """
        self.validate(scores.shape)
        grouped = self._grouped(scores.detach())
        if grouped.shape[1] > 1 or not torch.is_floating_point(grouped):
            grouped = grouped.double()  # sums over a group, and integers, in float64
        # a group of one keeps its score as it is, in its dtype (a view: no copy)
        g = reduce_groups(grouped, reduction)
        if prior is not None:
            alive = self._grouped(prior.detach().to(torch.bool)).any(dim=1)
            g = torch.where(alive, g, torch.full_like(g, -math.inf))
        return g

    def mask(
        self,
        scores: torch.Tensor,
        sparsity: float,
        reduction: str = "l1",
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bool keep-mask of ``scores``' shape that prunes ``round(sparsity * n_groups)`` groups.

        A sparsity below 1 never empties the tensor: at most ``n_groups - 1`` groups go (a
        one-row Linear keeps its row), the rule :func:`sparsity_lab.prune`'s budgets follow
        for a layer they keep alive.  The ``layer`` pattern, whose one group is the whole
        tensor, is the exception: pruning it means emptying it.
        """
        check_sparsity(sparsity)
        n_groups = self.n_groups(scores.shape)
        n_prune = count(sparsity, n_groups)
        if not isinstance(self, Layer):
            n_prune = min(n_prune, max(n_groups - 1, 0))
        return self.prune_groups(scores, n_prune, reduction, prior)

    def prune_groups(
        self,
        scores: torch.Tensor,
        n_prune: int,
        reduction: str = "l1",
        prior: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bool keep-mask that removes exactly the ``n_prune`` lowest-scoring groups."""
        g = self.group_scores(scores, reduction, prior)
        return self.expand(prune_lowest(g, n_prune), tuple(scores.shape))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(vars(self).items()))))


def _as_matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """(rows, columns) of a weight seen as a matrix: outputs x (inputs * kernel)."""
    if len(shape) < 2:
        return (shape[0] if shape else 1), 1
    return shape[0], math.prod(shape[1:])


@register("pattern", "unstructured", section="3.1")
class Unstructured(Pattern):
    """Single weights (fine-grained sparsity).  Every element is its own group."""

    name = "unstructured"


def _refuse_transposed(pattern: Pattern, model: nn.Module, name: str) -> None:
    """A transposed convolution stores its weight as (in, out, ...): dim 0 holds its
    *input* channels, so ``channel`` would prune inputs and ``input`` outputs."""
    layer = _layer_of(model, name)
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        raise ValueError(
            f"{name} belongs to a {type(layer).__name__}, whose weight is (in_channels, "
            f"out_channels, ...): pattern {pattern.name!r} would prune its "
            f"{'input' if pattern.name == 'channel' else 'output'} channels, not its "
            f"{'output' if pattern.name == 'channel' else 'input'} ones.  Exclude it, keep it "
            f"dense, or prune it with pattern='unstructured'"
        )


@register("pattern", "channel", section="3.1")
class Channel(Pattern):
    """Output units: rows of a Linear weight, filters of a Conv weight (dim 0)."""

    name = "channel"

    def check_layer(self, model, name):
        _refuse_transposed(self, model, name)
        super().check_layer(model, name)

    def validate(self, shape, name="tensor"):
        if len(shape) < 2:
            raise ValueError(
                f"channel pattern needs a weight with at least 2 dims, {name} has shape "
                f"{tuple(shape)}; exclude it or use pattern='unstructured'"
            )

    def group_size(self, shape):
        return _as_matrix_shape(shape)[1]

    def _grouped(self, x):
        return x.reshape(x.shape[0], -1)

    def expand(self, keep_groups, shape):
        rows, cols = _as_matrix_shape(shape)
        return keep_groups.reshape(rows, 1).expand(rows, cols).reshape(shape)


@register("pattern", "input", section="3.1")
class Input(Pattern):
    """Input units: columns of a Linear weight, input channels of a Conv weight (dim 1)."""

    name = "input"

    def check_layer(self, model, name):
        _refuse_transposed(self, model, name)
        super().check_layer(model, name)

    def validate(self, shape, name="tensor"):
        Channel().validate(shape, name)

    def group_size(self, shape):
        return shape[0] * math.prod(shape[2:])

    def _grouped(self, x):
        return x.transpose(0, 1).reshape(x.shape[1], -1)

    def expand(self, keep_groups, shape):
        view = (1, shape[1]) + (1,) * (len(shape) - 2)
        return keep_groups.reshape(view).expand(shape).clone()


@register("pattern", "block", section="3.1")
class Block(Pattern):
    """``rows x cols`` tiles of the weight seen as a matrix (outputs x inputs*kernel)."""

    name = "block"

    def __init__(self, rows: int = 4, cols: int = 4) -> None:
        if rows < 1 or cols < 1:
            raise ValueError(f"block size must be positive, got {rows}x{cols}")
        self.rows, self.cols = int(rows), int(cols)

    def validate(self, shape, name="tensor"):
        r, c = _as_matrix_shape(shape)
        if r % self.rows or c % self.cols:
            raise ValueError(
                f"a {self.rows}x{self.cols} block does not tile {name} of shape {tuple(shape)} "
                f"(seen as a {r}x{c} matrix); choose a block size that divides both, or exclude "
                f"the layer"
            )

    def group_size(self, shape):
        return self.rows * self.cols

    def _grouped(self, x):
        r, c = _as_matrix_shape(tuple(x.shape))
        tiles = x.reshape(r // self.rows, self.rows, c // self.cols, self.cols)
        return tiles.permute(0, 2, 1, 3).reshape(-1, self.rows * self.cols)

    def expand(self, keep_groups, shape):
        r, c = _as_matrix_shape(shape)
        grid = keep_groups.reshape(r // self.rows, c // self.cols)
        full = grid.repeat_interleave(self.rows, 0).repeat_interleave(self.cols, 1)
        return full.reshape(shape)

    def __repr__(self) -> str:
        return f"Block({self.rows}, {self.cols})"


@register("pattern", "nm", section="3.1")
class NM(Pattern):
    """N:M sparsity: in every M consecutive weights along the input dimension, N are kept.

    2:4 is what sparse tensor cores accelerate.  For a Conv weight (out, in, *kernel) the
    groups run along the input channels at each kernel position, as in NVIDIA's ASP.
    The sparsity is fixed at ``1 - N/M``.
    """

    name = "nm"
    layers = (nn.Linear, nn.modules.conv._ConvNd)

    def __init__(self, n: int = 2, m: int = 4) -> None:
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
        self.n, self.m = int(n), int(m)

    @property
    def fixed_sparsity(self) -> float:  # type: ignore[override]
        return 1 - self.n / self.m

    def validate(self, shape, name="tensor"):
        if len(shape) < 2 or shape[1] % self.m:
            size = shape[1] if len(shape) >= 2 else None
            raise ValueError(
                f"{self.n}:{self.m} sparsity groups {self.m} weights along the input dimension, "
                f"but {name} of shape {tuple(shape)} has input size {size}, not a multiple of "
                f"{self.m}; exclude this layer (e.g. exclude=['{name}']) or choose another M"
            )

    def group_size(self, shape):
        return self.m

    def _grouped(self, x):
        return x.movedim(1, -1).reshape(-1, self.m)

    def expand(self, keep_groups, shape):
        moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
        return keep_groups.reshape(moved).movedim(-1, 1).contiguous()

    def mask(self, scores, sparsity=None, reduction="l1", prior=None):
        if sparsity is not None and abs(sparsity - self.fixed_sparsity) > 1e-9:
            raise ValueError(
                f"{self.n}:{self.m} sparsity is {self.fixed_sparsity:g} by construction, got "
                f"sparsity={sparsity}; pass sparsity={self.fixed_sparsity:g} (or None)"
            )
        return self.prune_groups(scores, None, reduction, prior)

    def prune_groups(self, scores, n_prune=None, reduction="l1", prior=None):
        """Keep the N best of every M; ``n_prune`` is implied (1 - N/M of the elements)."""
        self.validate(scores.shape)
        grouped = self._grouped(scores.detach().double())
        if prior is not None:
            alive = self._grouped(prior.detach().to(torch.bool))
            grouped = torch.where(alive, grouped, torch.full_like(grouped, -math.inf))
        if torch.isnan(grouped).any():
            raise ValueError("scores contain NaN; check the criterion's inputs")
        order = torch.argsort(grouped, dim=1, stable=True)
        keep = torch.ones_like(grouped, dtype=torch.bool)
        keep.scatter_(1, order[:, : self.m - self.n], False)
        return self.expand(keep.flatten(), tuple(scores.shape))

    def __repr__(self) -> str:
        return f"NM({self.n}, {self.m})"


@register("pattern", "kernel", section="3.1")
class Kernel(Pattern):
    """Convolution kernels (Mao et al. 2017): the ``k`` (Conv1d) or ``kh x kw`` (Conv2d)
    weights that connect one input channel to one output channel, kept or removed whole.

    Groups: ``G[o, i] = W[o, i, ...]``, ``out * in`` of them with ``prod(kernel)`` weights
    each; a kernel's score is the reduction of its element scores.  Applies to Conv1d and
    Conv2d; Linear and Embedding weights have no kernels, and the pattern refuses them.
    """

    name = "kernel"
    layers = (nn.modules.conv._ConvNd,)

    def validate(self, shape, name="tensor"):
        if len(shape) < 3:
            raise ValueError(
                f"kernel pattern prunes the kernels of a convolution (weight of shape "
                f"(out, in, *kernel)), but {name} has shape {tuple(shape)}, which has no "
                f"kernel dimensions; exclude it (or keep it dense) or use pattern='unstructured'"
            )

    def group_size(self, shape):
        return math.prod(shape[2:])

    def _grouped(self, x):
        return x.reshape(x.shape[0] * x.shape[1], -1)

    def expand(self, keep_groups, shape):
        view = tuple(shape[:2]) + (1,) * (len(shape) - 2)
        return keep_groups.reshape(view).expand(shape).clone()


@register("pattern", "head", section="6.2")
class Head(Pattern):
    """Attention heads (Michel et al. 2019): the slice of a projection that belongs to a head.

    Groups: with ``n_heads`` heads of size ``d = rows / n_heads``, head ``h`` owns rows
    ``h*d : (h+1)*d`` of the q, k and v projections (``axis="out"``, the default) and the same
    columns of the output projection (``axis="in"``), as in
    :class:`~sparsity_lab.models.MultiHeadSelfAttention`.  Specs: ``"head:4"`` (rows),
    ``"head:4:in"`` (columns).  Applies to the Linear projections of an attention layer.
    On one tensor this prunes that tensor's slices of the heads;
    :func:`sparsity_lab.shrink.prune_coupled` with ``"head"`` removes a head from q, k, v and
    out together, which is what :func:`~sparsity_lab.shrink.shrink` removes physically.
    """

    name = "head"
    layers = (nn.Linear,)

    def __init__(self, n_heads: int, axis: str = "out") -> None:
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads < 1:
            raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
        if axis not in ("out", "in"):
            raise ValueError(
                f"axis must be 'out' (rows of q, k, v) or 'in' (columns of the output "
                f"projection), got {axis!r}"
            )
        self.n_heads, self.axis = n_heads, axis

    @property
    def _dim(self) -> int:
        return 0 if self.axis == "out" else 1

    def validate(self, shape, name="tensor"):
        if len(shape) != 2:
            raise ValueError(
                f"head pattern prunes attention projections (Linear weights), but {name} has "
                f"shape {tuple(shape)}; exclude it or use another pattern"
            )
        size = shape[self._dim]
        if size % self.n_heads:
            what = "rows (outputs)" if self.axis == "out" else "columns (inputs)"
            raise ValueError(
                f"{name} has {size} {what}, which do not split into {self.n_heads} heads; "
                f"pass the model's number of heads (e.g. 'head:{self.n_heads}') and only "
                f"attention projections as targets"
            )

    def n_groups(self, shape):
        return self.n_heads

    def group_size(self, shape):
        return math.prod(shape) // self.n_heads

    def _grouped(self, x):
        rows, cols = x.shape
        if self.axis == "out":
            return x.reshape(self.n_heads, -1)
        return (
            x.reshape(rows, self.n_heads, cols // self.n_heads)
            .transpose(0, 1)
            .reshape(self.n_heads, -1)
        )

    def expand(self, keep_groups, shape):
        per_head = keep_groups.repeat_interleave(shape[self._dim] // self.n_heads)
        view = (-1, 1) if self.axis == "out" else (1, -1)
        return per_head.reshape(view).expand(shape).clone()

    def check_layer(self, model, name):
        path = name.rpartition(".")[0]
        parent_path, _, role = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        heads = getattr(parent, "n_heads", None)
        roles = ("q", "k", "v") if self.axis == "out" else ("out",)
        if heads is None or role not in roles:
            where = "q, k or v projection" if self.axis == "out" else "output projection"
            raise ValueError(
                f"{self!r} prunes the {where} of an attention layer (a module with n_heads), "
                f"but {name} is not one; exclude it, or use Head(n, 'in') for 'out' and "
                f"Head(n) for q, k and v"
            )
        if heads != self.n_heads:
            raise ValueError(
                f"{name} belongs to an attention layer with {heads} heads, not "
                f"{self.n_heads}; use 'head:{heads}'"
            )
        super().check_layer(model, name)

    def __repr__(self) -> str:
        return f"Head({self.n_heads})" if self.axis == "out" else f"Head({self.n_heads}, 'in')"


@register("pattern", "layer", section="3.1")
class Layer(Pattern):
    """Whole layers: the tensor is one group, kept or zeroed whole (a gate on the layer).

    Groups: ``G = W``, one per tensor; applies to any layer.  Zeroing every weight of a
    residual branch closes the gate of that block: the block then computes its shortcut
    plus a constant, and :func:`sparsity_lab.shrink.shrink` replaces it (as in LayerDrop,
    Fan et al. 2020, applied for good).  :func:`sparsity_lab.shrink.prune_coupled` with
    ``"layer"`` closes whole blocks; with :func:`~sparsity_lab.pruning.prune` each target
    tensor is its own gate.

    Layers differ in size, so a layer's score is per element: mean ``|s|`` for ``l1``, the
    root mean square for ``l2``, the mean for ``sum``, the maximum for ``max``; otherwise a
    norm would always pick the smallest layer first.
    """

    name = "layer"

    def group_size(self, shape):
        return math.prod(shape)

    def _grouped(self, x):
        return x.reshape(1, -1)

    def expand(self, keep_groups, shape):
        return keep_groups.reshape((1,) * len(shape)).expand(shape).clone()

    def group_scores(self, scores, reduction="l1", prior=None):
        g = super().group_scores(scores, reduction, prior)
        return g / per_element(reduction, scores.numel())


@register("pattern", "embedding", section="6.2")
class EmbeddingRows(Pattern):
    """Embedding rows: the vector of one token, kept or removed whole (survey, Hoefler et
    al. 2021, section 3.1): the vocabulary shrinks and a pruned token embeds to zero.

    Groups: ``G[t] = E[t, :]``, one per row of a ``(num_embeddings, dim)`` table.  Only
    ``nn.Embedding`` weights make sense here (:func:`misfits` checks the layer type; on
    a bare shape any 2-D table is accepted, and for a Linear weight this grouping is
    ``channel``).
    """

    name = "embedding"
    layers = (nn.Embedding,)

    def validate(self, shape, name="tensor"):
        if len(shape) != 2:
            raise ValueError(
                f"embedding pattern prunes rows of an embedding table (num_embeddings, dim), "
                f"but {name} has shape {tuple(shape)}; target the nn.Embedding weights (e.g. "
                f"'tok_emb.weight') or use another pattern"
            )

    def group_size(self, shape):
        return shape[1]

    def _grouped(self, x):
        return x.reshape(x.shape[0], -1)

    def expand(self, keep_groups, shape):
        return keep_groups.reshape(-1, 1).expand(shape).clone()


def _layer_of(model: nn.Module, name: str) -> nn.Module:
    path = name.rpartition(".")[0]
    return model.get_submodule(path) if path else model


def misfits(
    model: nn.Module, pattern: str | Pattern, names: Iterable[str] | None = None
) -> dict[str, str]:
    """``{name: reason}`` for the tensors of ``model`` that ``pattern`` does not fit.

    A tensor misfits when its layer type is not one the pattern makes sense for (a kernel
    needs a convolution, an embedding row an ``nn.Embedding``) or when its shape cannot be
    grouped (:meth:`Pattern.validate`).  ``names`` defaults to every Linear/Conv weight.
    Pass the result as ``dense=`` (counted, kept dense) or ``exclude=`` to
    :func:`~sparsity_lab.pruning.prune` to decide explicitly what happens to those layers.
    """
    pat = get(pattern)
    names = default_targets(model) if names is None else list(names)
    found: dict[str, str] = {}
    for n in names:
        try:
            pat.check_layer(model, n)
        except ValueError as err:
            found[n] = str(err)
    return found


def get(spec: str | Pattern) -> Pattern:
    """A pattern from an instance or a spec string.

    Specs: ``"unstructured"``, ``"channel"``, ``"input"``, ``"nm"`` (2:4), ``"2:4"`` or
    ``"nm:2:4"``, ``"block"`` (4x4), ``"block:8x1"``, ``"kernel"``, ``"head:4"`` (rows of
    q, k, v) or ``"head:4:in"`` (columns of the output projection), ``"layer"``,
    ``"embedding"``.
    """
    if isinstance(spec, Pattern):
        return spec
    text = str(spec).strip().lower()
    if match := re.fullmatch(r"(?:nm:)?(\d+):(\d+)", text):
        return NM(int(match[1]), int(match[2]))
    if match := re.fullmatch(r"block:(\d+)x(\d+)", text):
        return Block(int(match[1]), int(match[2]))
    if match := re.fullmatch(r"head:(\d+)(?::(in|out))?", text):
        return Head(int(match[1]), match[2] or "out")
    if text == "head":
        raise ValueError(
            "the head pattern needs the number of heads: use 'head:4' (rows of q, k, v) or "
            "'head:4:in' (columns of the output projection), or Head(4)"
        )
    try:
        cls = registry.get(text, "pattern")
    except KeyError as err:
        raise ValueError(
            f"unknown pattern {spec!r}; use one of {', '.join(registry.available('pattern'))}, "
            f"'N:M' such as '2:4', or 'block:RxC' such as 'block:4x4'"
        ) from err
    return cls()

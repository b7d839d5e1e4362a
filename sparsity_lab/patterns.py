"""Patterns: *what* is pruned together (survey sections 2.3 and 3.1).

A pattern splits a weight tensor into groups of elements that are kept or removed together:
single weights (``unstructured``), N:M groups (``nm``), r x c tiles (``block``), output units
(``channel``) or input units (``input``).  Given element scores (higher = more important) it
reduces them to one score per group and keeps the best groups.

Counting is exact: for a sparsity ``s`` a pattern with ``G`` groups prunes exactly
``round(s * G)`` groups (``round`` half up), so ``unstructured`` zeroes exactly
``round(s * numel)`` weights.  Ties are broken deterministically: among equal scores the
group with the lower index is pruned first.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from numbers import Real
from typing import ClassVar

import torch

from . import registry
from .registry import register

REDUCTIONS = ("l1", "l2", "sum", "max")


def count(sparsity: float, n: int) -> int:
    """Number of groups pruned out of ``n`` for ``sparsity``: ``round(sparsity * n)``, half up.

    Accepts 1.0: a budget may empty a whole layer (layer collapse), though a user's target
    must stay below 1 (:func:`check_sparsity`).
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"a layer's sparsity must be in [0, 1], got {sparsity!r}")
    # Exact decimal arithmetic: 0.145 * 100 is 14.4999... in binary floating point.
    return min(n, math.floor(Fraction(repr(float(sparsity))) * n + Fraction(1, 2)))


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

    A stable sort makes ties deterministic: the lower index goes first.
    """
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN; check the criterion's inputs (e.g. a diverged model)")
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_prune > 0:
        order = torch.argsort(scores.flatten(), stable=True)
        keep[order[:n_prune]] = False
    return keep


def reduce_groups(grouped: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce ``grouped`` of shape (n_groups, group_size) to one score per group."""
    if reduction == "l1":
        return grouped.abs().sum(dim=1)
    if reduction == "l2":
        return grouped.pow(2).sum(dim=1).sqrt()
    if reduction == "sum":
        return grouped.sum(dim=1)
    if reduction == "max":
        return grouped.amax(dim=1)
    raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")


class Pattern:
    """Base class.  Subclasses say how a tensor splits into groups (``_grouped``/``expand``)."""

    name: ClassVar[str] = "pattern"
    #: Sparsity a pattern imposes on every layer by itself (N:M), or None.
    fixed_sparsity: float | None = None

    def validate(self, shape: torch.Size | tuple[int, ...], name: str = "tensor") -> None:
        """Raise a ValueError naming ``name`` if this pattern cannot apply to ``shape``."""

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
        g = reduce_groups(self._grouped(scores.detach().double()), reduction)
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
        """Bool keep-mask of ``scores``' shape that prunes ``round(sparsity * n_groups)`` groups."""
        check_sparsity(sparsity)
        return self.prune_groups(
            scores, count(sparsity, self.n_groups(scores.shape)), reduction, prior
        )

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


@register("pattern", "unstructured")
class Unstructured(Pattern):
    """Single weights (fine-grained sparsity).  Every element is its own group."""

    name = "unstructured"


@register("pattern", "channel")
class Channel(Pattern):
    """Output units: rows of a Linear weight, filters of a Conv weight (dim 0)."""

    name = "channel"

    def validate(self, shape, name="tensor"):  # noqa: D102
        if len(shape) < 2:
            raise ValueError(
                f"channel pattern needs a weight with at least 2 dims, {name} has shape "
                f"{tuple(shape)}; exclude it or use pattern='unstructured'"
            )

    def group_size(self, shape):  # noqa: D102
        return _as_matrix_shape(shape)[1]

    def _grouped(self, x):
        return x.reshape(x.shape[0], -1)

    def expand(self, keep_groups, shape):  # noqa: D102
        rows, cols = _as_matrix_shape(shape)
        return keep_groups.reshape(rows, 1).expand(rows, cols).reshape(shape)


@register("pattern", "input")
class Input(Pattern):
    """Input units: columns of a Linear weight, input channels of a Conv weight (dim 1)."""

    name = "input"

    def validate(self, shape, name="tensor"):  # noqa: D102
        Channel().validate(shape, name)

    def group_size(self, shape):  # noqa: D102
        return shape[0] * math.prod(shape[2:])

    def _grouped(self, x):
        return x.transpose(0, 1).reshape(x.shape[1], -1)

    def expand(self, keep_groups, shape):  # noqa: D102
        view = (1, shape[1]) + (1,) * (len(shape) - 2)
        return keep_groups.reshape(view).expand(shape).clone()


@register("pattern", "block")
class Block(Pattern):
    """``rows x cols`` tiles of the weight seen as a matrix (outputs x inputs*kernel)."""

    name = "block"

    def __init__(self, rows: int = 4, cols: int = 4) -> None:
        if rows < 1 or cols < 1:
            raise ValueError(f"block size must be positive, got {rows}x{cols}")
        self.rows, self.cols = int(rows), int(cols)

    def validate(self, shape, name="tensor"):  # noqa: D102
        r, c = _as_matrix_shape(shape)
        if r % self.rows or c % self.cols:
            raise ValueError(
                f"a {self.rows}x{self.cols} block does not tile {name} of shape {tuple(shape)} "
                f"(seen as a {r}x{c} matrix); choose a block size that divides both, or exclude "
                f"the layer"
            )

    def group_size(self, shape):  # noqa: D102
        return self.rows * self.cols

    def _grouped(self, x):
        r, c = _as_matrix_shape(tuple(x.shape))
        tiles = x.reshape(r // self.rows, self.rows, c // self.cols, self.cols)
        return tiles.permute(0, 2, 1, 3).reshape(-1, self.rows * self.cols)

    def expand(self, keep_groups, shape):  # noqa: D102
        r, c = _as_matrix_shape(shape)
        grid = keep_groups.reshape(r // self.rows, c // self.cols)
        full = grid.repeat_interleave(self.rows, 0).repeat_interleave(self.cols, 1)
        return full.reshape(shape)

    def __repr__(self) -> str:
        return f"Block({self.rows}, {self.cols})"


@register("pattern", "nm")
class NM(Pattern):
    """N:M sparsity: in every M consecutive weights along the input dimension, N are kept.

    2:4 is what sparse tensor cores accelerate.  For a Conv weight (out, in, *kernel) the
    groups run along the input channels at each kernel position, as in NVIDIA's ASP.
    The sparsity is fixed at ``1 - N/M``.
    """

    name = "nm"

    def __init__(self, n: int = 2, m: int = 4) -> None:
        if not 0 < n < m:
            raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
        self.n, self.m = int(n), int(m)

    @property
    def fixed_sparsity(self) -> float:  # type: ignore[override]
        return 1 - self.n / self.m

    def validate(self, shape, name="tensor"):  # noqa: D102
        if len(shape) < 2 or shape[1] % self.m:
            size = shape[1] if len(shape) >= 2 else None
            raise ValueError(
                f"{self.n}:{self.m} sparsity groups {self.m} weights along the input dimension, "
                f"but {name} of shape {tuple(shape)} has input size {size}, not a multiple of "
                f"{self.m}; exclude this layer (e.g. exclude=['{name}']) or choose another M"
            )

    def group_size(self, shape):  # noqa: D102
        return self.m

    def _grouped(self, x):
        return x.movedim(1, -1).reshape(-1, self.m)

    def expand(self, keep_groups, shape):  # noqa: D102
        moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
        return keep_groups.reshape(moved).movedim(-1, 1).contiguous()

    def mask(self, scores, sparsity=None, reduction="l1", prior=None):  # noqa: D102
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


def get(spec: str | Pattern) -> Pattern:
    """A pattern from an instance or a spec string.

    Specs: ``"unstructured"``, ``"channel"``, ``"input"``, ``"nm"`` (2:4), ``"2:4"`` or
    ``"nm:2:4"``, ``"block"`` (4x4), ``"block:8x1"``.
    """
    if isinstance(spec, Pattern):
        return spec
    text = str(spec).strip().lower()
    if match := re.fullmatch(r"(?:nm:)?(\d+):(\d+)", text):
        return NM(int(match[1]), int(match[2]))
    if match := re.fullmatch(r"block:(\d+)x(\d+)", text):
        return Block(int(match[1]), int(match[2]))
    try:
        cls = registry.get(text, "pattern")
    except KeyError as err:
        raise ValueError(
            f"unknown pattern {spec!r}; use one of {', '.join(registry.available('pattern'))}, "
            f"'N:M' such as '2:4', or 'block:RxC' such as 'block:4x4'"
        ) from err
    return cls()

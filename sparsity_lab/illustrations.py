"""Figures of the toy problems the notebooks teach with: each draws one idea.

A loss bowl of two weights and where each second-order criterion takes them
(:func:`quadratic_bowl`), a surface with the step that removing a weight takes
(:func:`contour_arrows`), the lines of units that read a plane (:func:`unit_lines`), the
level sets of penalties and the path of the penalised minimum (:func:`penalty_paths`,
:func:`objective_map`), and the connections a tiny network keeps (:func:`connection_diagram`).
Plots of measured results, for any method and model, are in :mod:`sparsity_lab.viz`.

The conventions are :mod:`~sparsity_lab.viz`'s: plain tensors or arrays in (never a model),
an optional ``ax``, the Axes returned (the Figure for several panels), and no backend set.
On a plane of two weights (:func:`quadratic_bowl`, :func:`penalty_paths`,
:func:`objective_map`) the axes through 0 are drawn (a removed weight lands on one), the
unpenalised, unpruned minimum is a black star and the aspect is equal.  In :func:`unit_lines` and
:func:`quadratic_bowl` red (C3) marks what pruning removes or moves (a removed unit, dashed;
Optimal Brain Surgeon's move); kept units, like the kept connections of
:func:`connection_diagram`, are blue (C0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .viz import _as_2d, _axes


def unit_lines(
    weight: np.ndarray | torch.Tensor,
    bias: np.ndarray | torch.Tensor,
    kept: Sequence[bool] | np.ndarray | torch.Tensor,
    ax: Axes | None = None,
    *,
    points: np.ndarray | torch.Tensor | None = None,
    limit: float = 4.0,
) -> Axes:
    """Units that read a two-dimensional input, each drawn as its line ``w_j . x + b_j = 0``
    with an arrow to the side where it is active (where a ReLU passes it) and its index.

    ``weight`` is (units, 2) and ``bias`` (units,).  Kept units are solid blue, removed ones
    dashed red; ``points`` (n, 2), the data the units read, are a grey cloud beneath.  The
    view is the square ``|x_i| <= limit``; a line that misses it cannot be seen, and a unit
    whose weights are both zero has no line at all (its output is the same for every
    input) and is not drawn.  Returns the Axes.
    """
    w = torch.as_tensor(weight).detach().cpu().double().numpy()
    b = torch.as_tensor(bias).detach().cpu().double().numpy()
    keep = torch.as_tensor(kept).detach().cpu().bool().numpy()
    if w.ndim != 2 or w.shape[1] != 2 or b.shape != (len(w),) or len(keep) != len(w):
        raise ValueError(f"need (n, 2) weights, n biases, n kept flags; got {w.shape}, {b.shape}")
    ax = _axes(ax)
    if points is not None:
        ax.scatter(*torch.as_tensor(points).detach().cpu().double().numpy().T, s=4, color="0.7")
    for j, (row, offset, on) in enumerate(zip(w, b, keep, strict=True)):
        length = np.linalg.norm(row)
        if length == 0:
            continue  # a constant unit: no line divides the plane
        normal = row / length
        foot = -offset * normal / length  # the line's point nearest the origin
        along = np.array([-normal[1], normal[0]]) * 4 * limit
        colour = "C0" if on else "C3"
        ax.plot(*np.stack([foot - along, foot + along]).T, color=colour, ls="-" if on else "--")
        arrow = {"arrowstyle": "->", "color": colour}
        ax.annotate("", xy=foot + 0.5 * normal, xytext=foot, arrowprops=arrow)
        ax.text(*(foot + 0.7 * normal), str(j), color=colour, fontsize=8, clip_on=True)
    ax.set(xlim=(-limit, limit), ylim=(-limit, limit), aspect="equal")
    return ax


def contour_arrows(
    x: torch.Tensor | np.ndarray,
    y: torch.Tensor | np.ndarray,
    z: torch.Tensor | np.ndarray,
    start: Sequence[float],
    ends: Sequence[Sequence[float]],
    labels: Sequence[str],
    ax: Axes | None = None,
    *,
    colors: Sequence[str] | None = None,
    levels: int = 20,
    offset: tuple[float, float] = (0.05, 0.05),
) -> Axes:
    """Contours of a surface ``z`` over the grid (``x``, ``y``), the point ``start`` and a
    coloured arrow from it to each of ``ends``, labelled beside its head.

    For a toy loss of two weights: where removing one (setting it to zero) moves the point,
    and what that costs.  ``colors`` are the arrows' and labels' (default C0, C1, ...);
    ``offset`` places each label from its arrow's head, in data units.  Returns the Axes.
    """
    ax = _axes(ax)
    ax.contour(x, y, z, levels=levels, cmap="Greys", linewidths=0.7)
    start = [float(v) for v in start]
    ax.plot(*start, "ko")
    colors = [f"C{k}" for k in range(len(ends))] if colors is None else colors
    for end, label, color in zip(ends, labels, colors, strict=True):
        end = [float(v) for v in end]
        arrow = {"arrowstyle": "->", "color": color, "linewidth": 2}
        ax.annotate("", xy=end, xytext=start, arrowprops=arrow)
        ax.text(end[0] + offset[0], end[1] + offset[1], label, color=color, fontsize=8)
    return ax


def quadratic_bowl(
    hessian: torch.Tensor | np.ndarray,
    minimum: Sequence[float] | torch.Tensor | np.ndarray,
    ax: Axes | None = None,
    *,
    points: Mapping[str, tuple[Sequence[float] | torch.Tensor, str]] | None = None,
    moves: Mapping[str, Sequence[float] | torch.Tensor] | None = None,
    span: tuple[float, float] = (-0.6, 2.2),
    levels: Sequence[float] = (0.05, 0.2, 0.5, 1, 2, 3),
    title: str | None = None,
    legend: bool = False,
) -> Axes:
    """Contours of the loss ``1/2 (w - w*)^T H (w - w*)`` of two weights around its
    minimum ``w*`` (a black star), with where pruning takes the weights.

    ``points`` (label -> (point, marker)) are drawn as hollow markers, e.g. one weight set to
    zero with the other left alone; ``moves`` (label -> point) as red arrows from the
    minimum to a filled dot, e.g. a weight removed with Optimal Brain Surgeon's update of
    the other.  The lines w1 = 0 and w2 = 0, where a removed weight lands, are drawn, and
    the axes are equal so the bowl keeps its shape.  ``legend`` puts the legend in the
    upper right corner, away from the points on the w1 axis.  (For contours of any
    surface with labelled arrows, see :func:`contour_arrows`.)  Returns the Axes.
    """
    ax = _axes(ax)
    h = np.asarray(hessian, dtype=float)
    centre = np.asarray(minimum, dtype=float)
    if h.shape != (2, 2) or centre.shape != (2,):
        raise ValueError(
            f"need a 2x2 Hessian and a point of 2 weights, got {h.shape}, {centre.shape}"
        )
    grid = np.linspace(*span, 200)
    a, b = np.meshgrid(grid, grid)
    d = np.stack([a - centre[0], b - centre[1]])
    loss = 0.5 * np.einsum("i...,ij,j...->...", d, h, d)
    ax.contour(a, b, loss, levels=list(levels), colors="0.6", linewidths=0.8)
    _weight_plane(ax, centre, markersize=12, label="trained w*")
    for label, (point, marker) in (points or {}).items():
        xy = np.asarray(point, dtype=float)
        ax.plot(*xy, marker, markersize=10, fillstyle="none", label=label)
    for label, point in (moves or {}).items():
        xy = np.asarray(point, dtype=float)
        ax.annotate("", xy=xy, xytext=centre, arrowprops={"arrowstyle": "->", "color": "C3"})
        ax.plot(*xy, "o", color="C3", label=label)
    ax.set(xlabel="w1", ylabel="w2")
    if title is not None:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=8, loc="upper right")
    return ax


def penalty_paths(
    x: np.ndarray,
    y: np.ndarray,
    loss: np.ndarray,
    penalties: Mapping[str, np.ndarray],
    paths: Mapping[str, np.ndarray],
    strengths: Sequence[float] | np.ndarray,
    minimum: Sequence[float],
    *,
    on_axes: Sequence[str] = (),
    loss_levels: Sequence[float] = (0.02, 0.08, 0.2, 0.4),
) -> Figure:
    """A panel per penalty on a plane of two weights: the penalty's level sets (grey), the
    loss's (blue, at ``loss_levels``), the loss's own ``minimum`` (a star) and the path of
    the penalised minimum as the strength grows (dots, darker for a larger strength).

    ``x``, ``y`` and the arrays of ``loss`` and ``penalties`` are on one grid (as from
    ``np.meshgrid``); ``paths`` maps each penalty to its minima, one ``(w1, w2)`` row per
    entry of ``strengths``.  A penalty named in ``on_axes`` changes value only on the axes
    (L0, a count of nonzero weights): the axes are drawn thick instead of its level sets.
    For seeing why some penalties give exact zeros: a corner on an axis catches the path.
    Returns the Figure.
    """
    fig, axes = plt.subplots(
        1, len(penalties), figsize=(3.25 * len(penalties), 3.4), layout="constrained"
    )
    for ax, (name, penalty) in zip(np.ravel(axes), penalties.items(), strict=True):
        if name in on_axes:
            ax.axhline(0, color="0.6", linewidth=3)
            ax.axvline(0, color="0.6", linewidth=3)
        else:
            ax.contour(x, y, penalty, levels=8, colors="0.6", linewidths=0.7)
        ax.contour(x, y, loss, levels=list(loss_levels), colors="tab:blue", linewidths=0.8)
        path = np.asarray(paths[name])
        ax.scatter(path[:, 0], path[:, 1], c=strengths, cmap="plasma_r", s=12, zorder=3)
        _weight_plane(ax, minimum, markersize=9)
        ax.set(title=name, xlabel="$w_1$")
    np.ravel(axes)[0].set_ylabel("$w_2$")
    return fig


def objective_map(
    x: np.ndarray,
    y: np.ndarray,
    objective: np.ndarray,
    minimum: Sequence[float] | None = None,
    ax: Axes | None = None,
    *,
    percentiles: Sequence[float] = (1, 3, 8, 15, 30, 50),
) -> Axes:
    """An objective over a grid of two weights, shaded (darkest lowest), with its minimum
    on the grid as a red dot, named in the title, and a reference ``minimum`` (e.g. the
    unpenalised one) as a black star.

    The shades are cut at ``percentiles`` of the objective, so the basin shows whatever its
    scale; percentiles that coincide (a plateau) make one cut, and a flat objective is one
    shade.  NaN cells (a penalty undefined at the origin) are left out.  Returns the Axes.
    """
    ax = _axes(ax)
    best = np.nanargmin(objective)
    cuts = np.nanpercentile(objective, list(percentiles))
    levels = np.unique([np.nanmin(objective), *cuts])  # contourf needs them increasing
    if len(levels) < 2:  # a flat objective: one shade
        levels = np.array([levels[0], levels[0] + 1.0])
    ax.contourf(x, y, objective, levels=levels, cmap="Blues_r")
    _weight_plane(ax, minimum, markersize=8)
    ax.plot(np.ravel(x)[best], np.ravel(y)[best], "o", color="tab:red")
    ax.set_title(f"minimum at ({np.ravel(x)[best]:.2f}, {np.ravel(y)[best]:.2f})", fontsize=8)
    return ax


def connection_diagram(
    masks: Sequence[torch.Tensor | np.ndarray],
    ax: Axes | None = None,
    *,
    title: str | None = None,
    color: str = "C0",
) -> Axes:
    """A stack of fully connected layers drawn as a network: a column of units per layer and
    a line for every kept weight.

    ``masks`` are the layers' masks in order, each shaped (out, in) as a Linear weight; the
    units of a layer are spread evenly from 0 to 1 in its column.  What pruning leaves of
    a small network, e.g. whether any path still leads from the inputs to the outputs.
    Returns the Axes.
    """
    ax = _axes(ax)
    arrays = [_as_2d(mask) for mask in masks]
    widths = [arrays[0].shape[1], *(a.shape[0] for a in arrays)]
    for col, array in enumerate(arrays):
        ys_in, ys_out = np.linspace(0, 1, widths[col]), np.linspace(0, 1, widths[col + 1])
        for i, j in zip(*np.nonzero(array), strict=True):
            ax.plot([col, col + 1], [ys_in[j], ys_out[i]], color=color, linewidth=0.8)
    for col, width in enumerate(widths):
        ax.scatter([col] * width, np.linspace(0, 1, width), s=12, color="k", zorder=3)
    if title is not None:
        ax.set_title(title)
    ax.axis("off")
    return ax


def _weight_plane(
    ax: Axes,
    minimum: Sequence[float] | np.ndarray | None,
    markersize: float,
    label: str | None = None,
) -> None:
    """The axes of a plane of two weights drawn through 0 (where a removed weight lands),
    ``minimum`` as a black star named ``label`` in a legend, and an equal aspect, so that
    a bowl keeps its shape and a corner on an axis looks like one."""
    ax.axhline(0, color="k", linewidth=0.5)
    ax.axvline(0, color="k", linewidth=0.5)
    if minimum is not None:
        ax.plot(*minimum, "k*", markersize=markersize, label=label)
    ax.set_aspect("equal")

"""Plots of measured results: masks, layer densities, a metric against sparsity with its
confidence interval, bars, matrices, and functions of the training step.

- Masks: :func:`mask_heatmap`, :func:`mask_gallery` (:func:`block_density` shrinks a large
  mask) and :func:`density_bars` (each layer's density).
- A metric against sparsity, the mean over seeds with a Student-t interval:
  :func:`sparsity_curve` (error bars, :func:`errorbars` computes them) and its grid
  :func:`sparsity_curve_grid`; :func:`mean_ci_fitted`, :func:`mean_ci_zoom` and
  :func:`stage_grid`, which draw :func:`~sparsity_lab.experiments.plot_mean_ci`'s bands;
  :func:`interval_lines` and :func:`interval_barh` for a summary already computed;
  :func:`mean_lines` and :func:`mean_markers` for means without intervals.
- Bars: :func:`grouped_bars`, :func:`value_bars`, :func:`column_bars`, :func:`log_bars`.
- Matrices and pictures: :func:`matrix_heatmap` (any matrix: signed, annotated, with
  blanked zeros) and its row :func:`matrix_panels`; :func:`image_grid` for pictures on one
  colour scale.
- Functions of a step or an epoch: :func:`curves`, :func:`function_grid`,
  :func:`step_logs`, :func:`phase_curve`, :func:`target_trace`.
- Points: :func:`prediction_scatter`, :func:`kept_scatter`.
- Helpers: :func:`figure_legend` (one legend for a grid), :func:`plain_log_axis`.

Every function takes plain tensors, arrays, dicts or DataFrames (never a model), so the same
plot works for the results of any method.  A single-panel function takes an optional ``ax``
(a new figure without one) and returns the :class:`~matplotlib.axes.Axes` it drew on; a
multi-panel one returns the :class:`~matplotlib.figure.Figure`; each docstring says what it
returns.  Only matplotlib is used, and no function sets a backend.  Figures of the toy
problems the notebooks teach with are in :mod:`sparsity_lab.illustrations`.

Conventions:

- In a mask picture, kept weights are dark and pruned weights white.
- A mean any of whose runs raised a sanity flag is circled in red, wherever a function
  knows the flags (a ``flags`` column, or ``flagged``).
- Where a y axis is fitted to the unflagged means (:func:`sparsity_curve_grid`,
  :func:`stage_grid` with ``fit``, :func:`mean_ci_fitted`), a mean off the axis is marked
  at its edge with its value, and the axis stays within the values the metric can take
  ([0, 1] for an accuracy; none for a loss).
- In a figure of several panels with one legend, each ``hue`` value keeps one colour in
  every panel, even in a panel where another value is missing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator

from .experiments import (
    fit_y,
    flagged_groups,
    flagged_summary,
    mark_flagged,
    plot_mean_ci,
    summarize,
)
from .stats import bounds_for

# Sparsities worth a tick on the -log10(1 - s) axis: each step is roughly one equal distance.
_LOGIT_TICKS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)


def _axes(ax: Axes | None) -> Axes:
    if ax is None:
        _, ax = plt.subplots()
    return ax


def _check_ncols(ncols: int) -> None:
    if ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols}")


def _hue_colours(values: Sequence[object] | pd.Series, cmap: str | None = None) -> dict:
    """A colour per distinct value of ``values``, in order of first appearance: the colours
    of the default cycle (C0, C1, ...) or of ``cmap`` (a listed map such as tab20), repeated
    when they run out.

    Fixed once over a whole frame, a value keeps its colour in every panel of a grid, even
    in a panel where another value is missing; otherwise each panel would colour its own
    values from the start of the cycle and one legend would be wrong for some panels.
    """
    if cmap is None:
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    else:
        cycle = list(plt.get_cmap(cmap).colors)
    return {v: cycle[i % len(cycle)] for i, v in enumerate(pd.unique(pd.Series(values)))}


def _fit_options(
    y: str,
    means: pd.DataFrame,
    bounds: tuple[float, float] | None = None,
    fmt: str | None = None,
) -> dict:
    """The ``bounds`` and ``fmt`` for :func:`~sparsity_lab.experiments.fit_y` of a metric
    ``y`` whose summary is ``means`` (columns ``mean``, ``ci_low``, ``ci_high``).

    ``bounds`` default to the values ``y`` can take (:func:`~sparsity_lab.stats.bounds_for`:
    [0, 1] for a fraction such as accuracy), and a mean off the axis is then written as a
    percentage.  A metric without bounds (a loss) gets the range of all of ``means`` widened
    by its span on each side: finite, as fit_y pads the axis by a share of the bounds'
    width, and wide enough never to cut what the axis fits; its values are written with
    three significant digits.  ``fmt`` (``"{:+.2f}"``) overrides the format.
    """
    known = bounds if bounds is not None else bounds_for(y)
    if known is None:
        values = means[["mean", "ci_low", "ci_high"]].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        span = max(high - low, 0.1 * max(abs(low), abs(high)), 1e-9)
        bounds = (low - span, high + span)
    else:
        bounds = known
    if fmt is None:
        fmt = "{:.1%}" if known is not None else "{:.3g}"
    return {"bounds": bounds, "fmt": fmt.format}


def figure_legend(fig: Figure, axes, *, strip: str = "", **options) -> Legend:
    """One legend for a figure of panels, beside them, with the entries of *every* panel.

    Panels of a grid often share their lines, but not always (a criterion missing from one
    model, a sanity-flag circle drawn in one panel only); taking the first panel's legend
    would leave those out.  Entries are kept in order of first appearance, one per label;
    ``strip`` is removed from each label (``"criterion="``); ``options`` go to
    ``fig.legend``.  Returns the :class:`~matplotlib.legend.Legend`.
    """
    found: dict[str, object] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            found.setdefault(label.replace(strip, "") if strip else label, handle)
    options = {"loc": "outside right center", "fontsize": 8, **options}
    return fig.legend(list(found.values()), list(found), **options)


def _as_2d(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """A mask as a float (rows, cols) array: (out, rest) for >2 dims, (1, n) for a vector."""
    array = torch.as_tensor(mask).detach().cpu().to(torch.float32).numpy()
    if array.ndim == 0:
        raise ValueError("mask must have at least 1 dimension, got a scalar")
    if array.ndim == 1:
        return array.reshape(1, -1)
    return array.reshape(array.shape[0], -1)


def block_density(mask: torch.Tensor | np.ndarray, max_size: int = 300) -> np.ndarray:
    """Average a 2-D mask over blocks so that neither side exceeds ``max_size``.

    Blocks are ``ceil(rows / max_size)`` by ``ceil(cols / max_size)``; each output cell is the
    fraction of kept entries in its block (its density).  Blocks on the bottom and right edges
    may be smaller when the sides do not divide evenly; they are averaged over the entries they
    really hold.  Returns the array of block densities; a mask that already fits is
    returned unchanged (as a float array).
    """
    if max_size < 1:
        raise ValueError(f"max_size must be a positive integer, got {max_size}")
    array = _as_2d(mask)
    rows, cols = array.shape
    fr, fc = math.ceil(rows / max_size), math.ceil(cols / max_size)
    if fr == 1 and fc == 1:
        return array
    # Pad with NaN up to whole blocks, then nanmean ignores the padding in edge blocks.
    padded = np.full((math.ceil(rows / fr) * fr, math.ceil(cols / fc) * fc), np.nan)
    padded[:rows, :cols] = array
    blocks = padded.reshape(padded.shape[0] // fr, fr, padded.shape[1] // fc, fc)
    return np.nanmean(blocks, axis=(1, 3))


def mask_heatmap(
    mask: torch.Tensor,
    ax: Axes | None = None,
    title: str | None = None,
    max_size: int = 300,
) -> Axes:
    """Draw a mask as a picture: rows are output units, columns the inputs they read.

    Masks with more than two dimensions (conv kernels) are shown as (out, in x kernel).  Masks
    larger than ``max_size`` on a side are block-averaged (see :func:`block_density`); the
    colour bar then reads as the density of each block.  Axis ticks always count original
    rows and columns.  The title defaults to the shape and the sparsity.  Returns the Axes.
    """
    array = _as_2d(mask)
    shape = tuple(torch.as_tensor(mask).shape)
    image = block_density(array, max_size)
    downsampled = image.shape != array.shape
    ax = _axes(ax)
    rows, cols = array.shape
    im = ax.imshow(
        image,
        cmap="Greys",
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
        aspect="auto",
        # extent in original coordinates, so ticks stay true after block-averaging
        extent=(-0.5, cols - 0.5, rows - 0.5, -0.5),
    )
    ax.grid(False)  # grid lines would read as pruned rows and columns
    bar = ax.figure.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    if downsampled:
        fr, fc = math.ceil(rows / image.shape[0]), math.ceil(cols / image.shape[1])
        bar.set_label(f"density per {fr}x{fc} block")
    else:
        bar.set_ticks([0.0, 1.0], labels=["pruned", "kept"])
    # integer ticks: they count rows and columns
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))
    if rows == 1:
        ax.set_yticks([0])
    ax.set_ylabel("output")
    ax.set_xlabel("input" if len(shape) <= 2 else "input x kernel")
    if title is None:
        title = f"{shape}, sparsity {1.0 - float(array.mean()):.1%}"
    ax.set_title(title)
    return ax


def mask_gallery(masks: Mapping[str, torch.Tensor], ncols: int = 3, max_size: int = 200) -> Figure:
    """One :func:`mask_heatmap` per entry of ``masks`` (name -> mask), ``ncols`` to a row,
    titled with the name and the sparsity.  Returns the Figure."""
    if not masks:
        raise ValueError("masks is empty; pass a dict of name -> mask, e.g. masks(model)")
    _check_ncols(ncols)
    ncols = min(ncols, len(masks))
    nrows = math.ceil(len(masks) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows), squeeze=False, layout="constrained"
    )
    flat = axes.ravel()
    for ax, (name, mask) in zip(flat, masks.items(), strict=False):
        sparsity = 1.0 - float(_as_2d(mask).mean())
        mask_heatmap(mask, ax=ax, title=f"{name}\nsparsity {sparsity:.1%}", max_size=max_size)
    for ax in flat[len(masks) :]:
        ax.set_visible(False)
    return fig


def density_bars(
    report_or_dict: pd.DataFrame | Mapping[str, float], ax: Axes | None = None
) -> Axes:
    """Bar chart of each layer's density (1 - sparsity), labelled in percent.

    Accepts a dict name -> sparsity or a DataFrame with columns ``name`` and ``sparsity``.  A
    row (or key) named ``"total"`` is not drawn as a bar but as a dashed horizontal line at the
    overall density.  Returns the Axes.
    """
    if isinstance(report_or_dict, pd.DataFrame):
        missing = {"name", "sparsity"} - set(report_or_dict.columns)
        if missing:
            raise ValueError(
                f"DataFrame needs columns 'name' and 'sparsity'; missing {sorted(missing)}"
            )
        items = list(zip(report_or_dict["name"], report_or_dict["sparsity"], strict=True))
    elif isinstance(report_or_dict, Mapping):
        items = list(report_or_dict.items())
    else:
        raise TypeError(
            "density_bars takes a dict name -> sparsity or a DataFrame with columns "
            f"'name' and 'sparsity', got {type(report_or_dict).__name__}"
        )
    for name, sparsity in items:
        if not 0.0 <= float(sparsity) <= 1.0:
            raise ValueError(f"sparsity of {name!r} must be in [0, 1], got {sparsity}")
    layers = [(str(n), 1.0 - float(s)) for n, s in items if n != "total"]
    totals = [1.0 - float(s) for n, s in items if n == "total"]

    ax = _axes(ax)
    bars = ax.bar([n for n, _ in layers], [d for _, d in layers], color="C0")
    ax.bar_label(bars, labels=[f"{100 * d:.1f}%" for _, d in layers], padding=2, fontsize=8)
    for density in totals:
        ax.axhline(density, color="k", linestyle="--", linewidth=1, label=f"total {density:.1%}")
    if totals:
        ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0.0, 1.15)  # head room for the labels above full-density bars
    ax.set_ylabel("density = 1 - sparsity")
    if len(layers) > 4:
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    return ax


def errorbars(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Mean of ``y`` per (``hue``, ``x``) with a Student-t confidence half-width.

    ``half_width = t_{(1 + confidence) / 2, n - 1} * s / sqrt(n)`` with ``s`` the sample
    standard deviation (ddof = 1) over the ``n`` rows (seeds) of a group.  Groups with a
    single row have ``half_width`` NaN: one run says nothing about the spread.

    Returns columns ``[hue,] x, "mean", "half_width", "n"`` (named after the inputs), sorted.
    The half-width is the interval's own; :func:`sparsity_curve` clips the drawn bar to
    [0, 1] for fractions such as accuracy.
    """
    keys = [x] if hue is None else [hue, x]
    missing = [c for c in [*keys, y] if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the DataFrame; it has {list(df.columns)}")
    summary = summarize(df, keys, y, confidence, bounds=None)
    summary = summary.sort_values(keys).reset_index(drop=True)
    out = summary[keys].copy()
    out["mean"] = summary["mean"].astype(float)
    out["half_width"] = summary["ci_high"] - summary["mean"]
    out["n"] = summary["n"].astype(int)
    return out


def logit_sparsity_axis(ax: Axes, ticks: Sequence[float] | None = None) -> Axes:
    """Put the x axis on -log10(1 - sparsity), so 90%, 99%, 99.9% are equally spaced, with
    percent ticks at ``ticks`` (the sparsities measured, say; default 0, 50, 80, 90, 95,
    98, 99% and on).  matplotlib's own "logit" scale labels 50% "1/2" and 90% "1-10^-1".
    Returns ``ax``.
    """

    def forward(s: np.ndarray) -> np.ndarray:
        # clip keeps s = 1 finite (it would be infinitely far to the right)
        return -np.log10(np.clip(1.0 - np.asarray(s, dtype=float), 1e-12, None))

    def inverse(u: np.ndarray) -> np.ndarray:
        return 1.0 - 10.0 ** (-np.asarray(u, dtype=float))

    ax.set_xscale("function", functions=(forward, inverse))
    ax.xaxis.set_major_locator(FixedLocator(_LOGIT_TICKS if ticks is None else sorted(ticks)))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda s, _: f"{100 * s:.10g}%"))
    ax.autoscale_view()  # a plot drawn before keeps its data, now spaced on this scale
    return ax


def sparsity_curve(
    df: pd.DataFrame,
    x: str = "sparsity",
    y: str = "accuracy",
    hue: str | None = None,
    ax: Axes | None = None,
    confidence: float = 0.95,
    baseline: float | None = None,
    logit_x: bool = False,
) -> Axes:
    """Mean ``y`` against ``x``, one line per ``hue``, with confidence bars over seeds.

    Bars come from :func:`errorbars` (Student-t, no bar for a single run).  ``baseline`` draws
    a dashed reference line, e.g. the dense accuracy.  ``logit_x=True`` spaces the x axis as
    -log10(1 - x) so that 90%, 99% and 99.9% sparsity are equally far apart; it needs x < 1.
    A point any of whose runs raised a sanity flag (a ``flags`` column) is circled in red,
    as in :func:`~sparsity_lab.experiments.plot_mean_ci`.  Lines take the Axes' colour
    cycle in sorted order of ``hue``.  Returns the Axes.
    """
    table = errorbars(df, x, y, hue=hue, confidence=confidence)
    if logit_x and (table[x] >= 1.0).any():
        raise ValueError(f"logit_x needs {x} < 1 (a fully pruned net is infinitely far right)")
    ax = _axes(ax)
    if logit_x:
        logit_sparsity_axis(ax)  # before plotting, so autoscaling happens on the new scale
    groups = [(None, table)] if hue is None else list(table.groupby(hue, sort=True))
    low, high = bounds_for(y) or (-np.inf, np.inf)
    for key, part in groups:
        mean, half = part["mean"].to_numpy(), part["half_width"].fillna(0.0).to_numpy()
        # an accuracy bar stops at 0 and 1: below or above is no accuracy at all
        below, above = mean - np.maximum(mean - half, low), np.minimum(mean + half, high) - mean
        ax.errorbar(
            part[x].to_numpy(),
            mean,
            yerr=np.vstack([below, above]),
            marker="o",
            markersize=4,
            capsize=3,
            label=None if hue is None else f"{hue} = {key}",
        )
    flagged = flagged_groups(df, [x] if hue is None else [hue, x])
    if flagged is not None and flagged.any():
        keys = [(k if isinstance(k, tuple) else (k,)) for k in flagged[flagged].index]
        means = table.set_index([x] if hue is None else [hue, x])["mean"]
        points = [(k[-1], means.loc[k if len(k) > 1 else k[0]]) for k in keys]
        mark_flagged(ax, [p[0] for p in points], [p[1] for p in points])
    if baseline is not None:
        ax.axhline(
            baseline, color="gray", linestyle="--", linewidth=1, label=f"baseline {baseline:.4g}"
        )
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean, {confidence:.0%} CI)")
    if hue is not None or baseline is not None:
        ax.legend(fontsize=8)
    return ax


def image_grid(
    images: Mapping[str, torch.Tensor | np.ndarray],
    ncols: int,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str | None = None,
    colorbar: str | None = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One picture per entry of ``images`` (panel title -> 2-D array), ``ncols`` to a row.

    Every panel shares one colour scale, so the pictures compare: ``vmin`` and ``vmax``
    default to the smallest and largest value of all of them (NaN pixels left out).
    ``colorbar`` labels one colour bar for the whole grid (None: no bar); ``title`` goes
    above the grid.  The axes are off: the pixels are the picture (for matrices whose rows
    and columns are read off labelled axes, see :func:`matrix_panels`).  Spare panels of
    the last row are hidden.  Returns the Figure.
    """
    if not images:
        raise ValueError("images is empty; pass a dict of title -> 2-D array")
    _check_ncols(ncols)
    arrays = {k: torch.as_tensor(v).detach().cpu().float().numpy() for k, v in images.items()}
    vmin = min(float(np.nanmin(a)) for a in arrays.values()) if vmin is None else vmin
    vmax = max(float(np.nanmax(a)) for a in arrays.values()) if vmax is None else vmax
    nrows = math.ceil(len(arrays) / ncols)
    figsize = (2.4 * ncols, 2.4 * nrows) if figsize is None else figsize
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False, layout="constrained")
    for ax, (name, array) in zip(axes.flat, arrays.items(), strict=False):
        image = ax.imshow(array, vmin=vmin, vmax=vmax, cmap=cmap)
        ax.set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    if colorbar is not None:
        fig.colorbar(image, ax=axes, label=colorbar, shrink=0.8)
    if title is not None:
        fig.suptitle(title)
    return fig


def grouped_bars(
    table: pd.DataFrame,
    ax: Axes | None = None,
    *,
    low: pd.DataFrame | None = None,
    high: pd.DataFrame | None = None,
    width: float | None = None,
    legend_title: str | None = None,
    fontsize: float | None = None,
) -> Axes:
    """Bars of ``table``: a group per row, named on the x axis by the index, and a bar per
    column, side by side, coloured and named in the legend.

    ``low`` and ``high`` (frames of the same rows and columns, e.g. the ends of confidence
    intervals) draw error bars; a missing end draws none.  ``width`` is one bar's (by
    default the bars of a group fill 80% of the space between groups); ``fontsize`` sets
    the tick labels' and the legend's.  Returns the Axes.
    """
    ax = _axes(ax)
    width = 0.8 / len(table.columns) if width is None else width
    text = {} if fontsize is None else {"fontsize": fontsize}
    x = np.arange(len(table))
    for i, column in enumerate(table.columns):
        errors = None
        if low is not None and high is not None:
            errors = np.nan_to_num((table[column] - low[column], high[column] - table[column]))
        offset = (i - (len(table.columns) - 1) / 2) * width
        ax.bar(x + offset, table[column], width, yerr=errors, capsize=3, label=str(column))
    ax.set_xticks(x, [str(label) for label in table.index], **text)
    ax.legend(title=legend_title, **text)
    return ax


def phase_curve(
    epochs: Sequence[float],
    values: Sequence[float],
    phases: Sequence[str],
    shaded: str,
    ax: Axes | None = None,
    label: str | None = None,
) -> Axes:
    """``values`` against ``epochs`` as a line, with every epoch whose phase is ``shaded``
    shaded behind it: what a schedule of alternating phases (AC/DC's compressed and
    decompressed ones, a warm-up) does, seen beside the phases.  ``label`` names the line.
    Returns the Axes."""
    ax = _axes(ax)
    for epoch, phase in zip(epochs, phases, strict=True):
        if phase == shaded:
            ax.axvspan(epoch - 0.5, epoch + 0.5, color="C1", alpha=0.15, lw=0)
    ax.plot(epochs, values, "o-", label=label)
    return ax


def interval_lines(
    table: pd.DataFrame,
    x: str,
    hue: str | None = None,
    ax: Axes | None = None,
    *,
    flagged: Sequence[bool] | pd.Series | None = None,
    band: bool = False,
) -> Axes:
    """Each row's ``mean`` against its ``x`` with its interval (``ci_low`` to ``ci_high``)
    as an error bar, one line per ``hue`` value in order of appearance, its points in order
    of ``x``; ``band=True`` shades the intervals as a band along each line instead, as for
    a swept ``x``.

    For a summary whose x is a measured column rather than a swept one (an accuracy against
    the sparsity each arm reached): :func:`~sparsity_lab.stats.summarize` joined with that
    column.  A missing interval end draws no bar.  Rows where ``flagged`` is true are
    circled in red, the mark of a flagged mean in every plot.  Returns the Axes.
    """
    ax = _axes(ax)
    groups = [(None, table)] if hue is None else table.groupby(hue, sort=False)
    for key, part in groups:
        part = part.sort_values(x, kind="stable")  # rows out of order would zig-zag
        if band:
            (line,) = ax.plot(part[x], part["mean"], marker="o", label=key)
            color = line.get_color()
            ax.fill_between(part[x], part["ci_low"], part["ci_high"], color=color, alpha=0.2)
            continue
        below = (part["mean"] - part["ci_low"]).fillna(0).to_numpy()
        above = (part["ci_high"] - part["mean"]).fillna(0).to_numpy()
        ax.errorbar(
            part[x], part["mean"], yerr=np.vstack([below, above]), marker="o", capsize=3, label=key
        )
    if flagged is not None and np.asarray(flagged, dtype=bool).any():
        bad = table[np.asarray(flagged, dtype=bool)]
        mark_flagged(ax, bad[x], bad["mean"])
    return ax


def stage_grid(
    df: pd.DataFrame,
    stages: Mapping[str, str],
    *,
    row: str,
    hue: str,
    x: str = "sparsity",
    xlabel: str | None = None,
    ylabel: str | None = None,
    reference: str | None = None,
    reference_label: str = "dense",
    fit: Mapping[str, Sequence[str]] | None = None,
    title: str = "",
) -> Figure:
    """Each stage's metric against ``x``, a row of panels per value of ``row`` (a model) and
    a panel per stage, one line per ``hue`` (a criterion), with one legend beside them.

    For comparing criteria at several stages of the same runs (right after pruning, after
    fine-tuning) on several models.  ``stages`` maps a column of ``df`` to the stage it
    measures, named in the panel titles.  Lines are
    :func:`~sparsity_lab.experiments.plot_mean_ci`'s (confidence bands, flagged points
    circled in red).  ``reference`` names a column whose mean over a panel's rows is drawn
    as a dashed black line (``reference_label``, e.g. the dense accuracy).  ``fit`` maps a
    stage column to the ``hue`` values its y axis leaves out: the axis fits the unflagged
    points of the others, so that a baseline at chance level does not squash their
    differences, and a point off the axis is marked at its edge
    (:func:`~sparsity_lab.experiments.fit_y`, in the bounds of the metric: [0, 1] for an
    accuracy, none for a loss); the figure's title says so.  Each ``hue`` value keeps one
    colour (C0, C1, ... in order of first appearance in ``df``) in every panel, even where
    another is missing, so the one legend holds for all.  Returns the Figure.
    """
    fit = {} if fit is None else fit
    keys = list(dict.fromkeys(df[row]))
    colours = _hue_colours(df[hue])
    fig, axes = plt.subplots(
        len(keys),
        len(stages),
        figsize=(5.5 * len(stages), 3.4 * len(keys)),
        squeeze=False,
        layout="constrained",
    )
    for panels, key in zip(axes, keys, strict=True):
        part = df[df[row] == key]
        # plot_mean_ci draws the hue values in order of appearance, from the colour cycle
        drawn = [colours[h] for h in pd.unique(part[hue])]
        for ax, (column, stage) in zip(panels, stages.items(), strict=True):
            ax.set_prop_cycle(color=drawn)
            plot_mean_ci(part, x=x, y=column, hue=hue, ax=ax)
            if reference is not None:
                mean = part[reference].mean()
                ax.axhline(mean, color="k", linestyle="--", label=reference_label)
            ax.get_legend().remove()  # one legend for the figure, beside it
            if column in fit:
                means = flagged_summary(part, [hue, x], column)
                keep = ~means[hue].isin(fit[column])
                if "flagged" in means:
                    keep &= ~means["flagged"].astype(bool)
                fit_y(ax, means, keep, x=x, name=hue, **_fit_options(column, means))
            ax.set(title=f"{key}: {stage}", xlabel=xlabel or x, ylabel=ylabel or column)
    figure_legend(fig, axes, strip=f"{hue}=")
    notes = [
        f"{stages[column]}: the y axis fits the unflagged points of all but "
        f"{' and '.join(str(v) for v in left_out)}; a triangle marks a point off the axis"
        for column, left_out in fit.items()
    ]
    if title or notes:
        fig.suptitle("\n".join(t for t in [title, *notes] if t))
    return fig


def prediction_scatter(
    predicted: Sequence[float] | np.ndarray,
    real: Sequence[float] | np.ndarray,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    xlabel: str = "predicted",
    ylabel: str = "real",
) -> Axes:
    """Real values against their predictions, one dot each, with the dashed line y = x
    where a perfect prediction would lie (e.g. the loss change a criterion predicts for
    removing a weight against the change measured by removing it).  Returns the Axes."""
    ax = _axes(ax)
    predicted, real = np.asarray(predicted, dtype=float), np.asarray(real, dtype=float)
    ax.scatter(predicted, real, s=10, alpha=0.7)
    low, high = min(predicted.min(), real.min()), max(predicted.max(), real.max())
    ax.plot([low, high], [low, high], color="gray", linestyle="--", linewidth=1, label="y = x")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend()
    return ax


def kept_scatter(
    before: Sequence[float] | np.ndarray,
    after: Sequence[float] | np.ndarray,
    kept: Sequence[bool] | np.ndarray,
    ax: Axes | None = None,
    *,
    title: str | None = None,
    xlabel: str = "weight at initialisation",
    ylabel: str = "weight after training",
) -> Axes:
    """Each weight's value ``after`` against its value ``before``, the ``kept`` ones in red
    over the pruned ones in grey: which weights a criterion keeps, seen by where they
    started and where they ended.  Returns the Axes."""
    ax = _axes(ax)
    before, after = np.asarray(before), np.asarray(after)
    kept = np.asarray(kept, dtype=bool)
    ax.scatter(before[~kept], after[~kept], s=2, color="0.75", label="pruned")
    ax.scatter(before[kept], after[kept], s=4, color="C3", label="kept")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.legend(markerscale=3)
    return ax


def plain_log_axis(ax: Axes, axis: str = "y") -> Axes:
    """Put ``axis`` ("x" or "y") on a log scale labelled with plain numbers (4, 6, 10, 20).

    A perplexity or a speed-up read on a log axis is easier to read as "6" than as
    "6 x 10^0".  Major ticks sit at 1, 2 and 5 times each power of ten and minor ones,
    labelled smaller, at 1.5, 3, 4, 6 and 8 times it: a narrow range may hold no power of
    ten at all, and matplotlib's own minor ticks leave the span from 10 to 20 unlabelled.
    Returns ``ax``.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    getattr(ax, f"set_{axis}scale")("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=100))
    target.set_minor_locator(LogLocator(subs=(1.5, 3.0, 4.0, 6.0, 8.0), numticks=100))
    target.set_major_formatter(plain)
    target.set_minor_formatter(plain)
    ax.tick_params(axis=axis, which="minor", labelsize=8)
    return ax


def mean_lines(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    ax: Axes | None = None,
    *,
    at: str | None = None,
    fmt: str = "o-",
    colors: Mapping[object, str] | None = None,
    label: str = "{}",
    point_label: str | None = None,
    **options,
) -> Axes:
    """The mean of ``y`` against the mean of ``x`` over the rows that share a ``hue`` value
    and an ``at`` value (default: ``x`` itself), one line per ``hue`` value in order of
    appearance, with no interval.

    For arms added to a figure of confidence bands without cluttering it (a dashed line
    per method), or for a trade-off of two measured means: with ``at="bits"`` each point is
    one setting, labelled beside it by ``point_label.format(value)`` (``"{}b"``).  Line
    ``i`` is coloured ``colors[hue value]`` or, without ``colors``, ``C{i}``; ``label``
    formats the legend entry from the hue value; ``options`` go to ``ax.plot``.  Returns
    the Axes.
    """
    ax = _axes(ax)
    at = x if at is None else at
    for i, (key, part) in enumerate(df.groupby(hue, sort=False)):
        means = part.groupby(at)[[y] if at == x else [x, y]].mean()
        xs = means.index if at == x else means[x]
        color = f"C{i}" if colors is None else colors[key]
        ax.plot(xs, means[y], fmt, color=color, label=label.format(key), **options)
        if point_label is not None:
            for value, px, py in zip(means.index, xs, means[y], strict=True):
                ax.annotate(
                    point_label.format(value),
                    (px, py),
                    fontsize=8,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    return ax


def value_bars(
    values: Mapping[str, float] | pd.Series,
    ax: Axes | None = None,
    *,
    reference: float | None = None,
    reference_label: str | None = None,
    margin: float | None = None,
    limits: tuple[float, float] = (0.0, 1.0),
    color: str = "C1",
    highlight: str | None = None,
) -> Axes:
    """One bar per named value (e.g. each layer's sparsity), the names along x, with a
    dashed ``reference`` line (e.g. the uniform target the values depart from).

    ``margin`` cuts the y axis to the values' range plus ``margin`` on each side, kept
    within ``limits``, so that small differences between bars show; a title should then
    say that the bars are cut.  ``highlight="min"`` (or ``"max"``) draws the smallest
    (largest) bars in red, e.g. the smallest storage format.  Returns the Axes.
    """
    values = pd.Series(values, dtype=float)
    if highlight not in (None, "min", "max"):
        raise ValueError(f"highlight must be None, 'min' or 'max', got {highlight!r}")
    ax = _axes(ax)
    colors = [color] * len(values)
    if highlight is not None:
        best = values.min() if highlight == "min" else values.max()
        colors = ["C3" if v == best else color for v in values]
    ax.bar(range(len(values)), values.to_numpy(), color=colors)
    if reference is not None:
        ax.axhline(reference, color="k", linestyle="--", linewidth=0.8, label=reference_label)
    names = [str(n) for n in values.index]
    ax.set_xticks(range(len(values)), names, rotation=60, ha="right", fontsize=8)
    if margin is not None:
        ax.set_ylim(max(limits[0], values.min() - margin), min(limits[1], values.max() + margin))
    if reference_label is not None:
        ax.legend(fontsize=8)
    return ax


def mean_ci_zoom(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    *,
    zoom: Sequence[float] = (),
    titles: Sequence[str] = ("", ""),
    baseline: tuple[float, str] | None = None,
    ylabel: str | None = None,
) -> Figure:
    """:func:`~sparsity_lab.experiments.plot_mean_ci` of ``df`` and, beside it, the same
    restricted to the ``x`` values in ``zoom``.

    Runs that collapsed stretch the y axis and hide the small differences between the
    others; the second panel shows only the ``zoom`` values (e.g. where no run raised a
    flag), in the colours of the first, whose legend serves both.  An empty ``zoom`` draws
    the first panel alone.  ``titles`` are the panels' titles; ``baseline`` (value, label)
    is a dashed line on each panel, e.g. the dense accuracy; ``ylabel`` defaults to
    ``"test accuracy (mean, 95% CI)"`` for ``y="test_accuracy"``.  Each ``hue`` value keeps
    one colour (C0, C1, ... in order of first appearance in ``df``) in both panels, even
    when the zoom leaves another out.  Returns the Figure.
    """
    views = [df] if not len(zoom) else [df, df[df[x].isin(list(zoom))]]
    colours = None if hue is None else _hue_colours(df[hue])
    size = (12.5, 4.5) if len(views) > 1 else (7.0, 4.5)
    fig, axes = plt.subplots(1, len(views), figsize=size, squeeze=False, layout="constrained")
    for ax, part, title in zip(axes[0], views, titles, strict=False):
        if colours is not None and len(part):
            # plot_mean_ci draws the hue values in order of appearance, from the colour cycle
            ax.set_prop_cycle(color=[colours[h] for h in pd.unique(part[hue])])
        plot_mean_ci(part, x=x, y=y, hue=hue, ax=ax)
        if baseline is not None:
            ax.axhline(baseline[0], color="k", linestyle="--", linewidth=0.8, label=baseline[1])
        ax.set_ylabel(f"{y.replace('_', ' ')} (mean, 95% CI)" if ylabel is None else ylabel)
        ax.set_title(title)
    axes[0, 0].legend(fontsize=8)
    for ax in axes[0, 1:]:
        if ax.get_legend() is not None:
            ax.get_legend().remove()  # the same colours as the first panel's legend
    return fig


def mean_markers(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str,
    ax: Axes | None = None,
    *,
    spread: float = 0.01,
    marker: str = "*",
    suffix: str = "",
    colors: Mapping[object, str] | None = None,
) -> Axes:
    """The mean of ``y`` for each ``hue`` value of ``df`` as one big marker at its ``x``.

    For a setting measured at a single x beside the curves of the others (2:4 sparsity is
    always 50%).  The markers of the ``hue`` values are nudged sideways by ``spread`` each,
    centred on ``x``, so that none hides another.  The marker of a value is coloured
    ``colors[value]`` or, without ``colors``, C0, C1, ... in order of first appearance, as
    :func:`~sparsity_lab.experiments.plot_mean_ci` colours its lines from the same order.
    Each is labelled ``f"{value}{suffix}"``.  Returns the Axes.
    """
    ax = _axes(ax)
    order = list(dict.fromkeys(df[hue]))
    means = df.groupby([hue, x], sort=False)[y].mean()
    for (value, at), mean in means.items():
        i = order.index(value)
        nudged = at + spread * (i - (len(order) - 1) / 2)
        color = f"C{i}" if colors is None else colors[value]
        ax.plot(nudged, mean, marker, markersize=12, color=color, label=f"{value}{suffix}")
    return ax


def curves(
    x: Sequence[float] | np.ndarray,
    ys: Mapping[str, Sequence[float]],
    ax: Axes | None = None,
    *,
    span: tuple[float, float] | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    legend: bool = True,
    **options,
) -> Axes:
    """One line per entry of ``ys`` (label -> its values at every ``x``), with the interval
    ``span`` of x shaded behind them (e.g. the steps where a schedule ramps).

    For a few functions of the same variable, such as sparsity schedules of the training
    step; ``options`` go to every ``ax.plot`` (``color="C0"``), ``legend`` names the lines.
    Returns the Axes.
    """
    ax = _axes(ax)
    for label, values in ys.items():
        ax.plot(x, values, label=label, **options)
    if span is not None:
        ax.axvspan(*span, color="0.9", zorder=0)
    if xlabel is not None:
        ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if legend:
        ax.legend(fontsize=7)
    return ax


def function_grid(
    x: Sequence[float] | np.ndarray,
    ys: Mapping[str, Sequence[float]],
    ncols: int = 3,
    *,
    span: tuple[float, float] | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """One small panel per function of ``x`` in ``ys`` (panel title -> its values at every
    ``x``), ``ncols`` to a row, on shared axes, each drawn by :func:`curves` with ``span``
    shaded.

    For comparing the shapes of several functions of the same variable (every sparsity
    schedule of the training step) without their lines hiding one another; for measured
    accuracy against sparsity, see :func:`sparsity_curve_grid`.  The x label goes under the
    bottom panel of each column, the y label beside the first column; spare panels are
    hidden.  Returns the Figure.
    """
    if not ys:
        raise ValueError("ys is empty; pass a dict of panel title -> values")
    _check_ncols(ncols)
    nrows = math.ceil(len(ys) / ncols)
    figsize = (3.0 * ncols, 2.2 * nrows) if figsize is None else figsize
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, sharex=True, sharey=True, squeeze=False)
    for ax, (name, values) in zip(axes.flat, ys.items(), strict=False):
        curves(x, {name: values}, ax, span=span, legend=False, color="C0")
        ax.set_title(name)
    for ax in axes.flat[len(ys) :]:
        ax.set_visible(False)
    for ax in axes.flat[max(0, len(ys) - ncols) : len(ys)]:  # the bottom of each column
        ax.set_xlabel(xlabel or "")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel or "")
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def step_logs(
    logs: Mapping[str, Sequence[tuple[float, float]]],
    end: float,
    ax: Axes | None = None,
    *,
    start: float = 0.0,
    dashed: Sequence[str] = (),
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """Each log of ``(step, value)`` pairs (a pruner's sparsity at each of its updates) as a
    step line: ``start`` from step 0, each value from its step on, the last held to ``end``.

    One colour per log (C0, C1, ... in order).  The logs named in ``dashed`` are drawn dashed
    and on top, so that a line lying under the others (one-shot under IHT and DSD, which
    jump to the same sparsity at the same step) stays visible.  Returns the Axes.
    """
    ax = _axes(ax)
    for i, (name, log) in enumerate(logs.items()):
        if not len(log):
            raise ValueError(f"the log of {name!r} is empty: it has no step to draw")
        steps, values = zip(*log, strict=True)
        on_top = name in dashed
        ax.step(
            [0, *steps, end],
            [start, *values, values[-1]],
            where="post",
            label=name,
            color=f"C{i}",
            linestyle="--" if on_top else "-",
            zorder=3 if on_top else 2,
        )
    ax.set(xlabel=xlabel or "", ylabel=ylabel or "")
    ax.legend(ncol=3, fontsize=8)
    return ax


def interval_barh(
    table: pd.DataFrame,
    ax: Axes | None = None,
    *,
    limits: tuple[float, float] = (0.0, 1.0),
    pad: float = 0.05,
    color: str = "C0",
) -> Axes:
    """Each row's ``mean`` as a horizontal bar, named by the index, with its interval
    (``ci_low`` to ``ci_high``, e.g. of :func:`~sparsity_lab.stats.summarize`) as an error
    bar; the highest mean on top.

    For ranking a few arms by a fraction such as accuracy: the x axis runs from ``pad``
    below the lowest interval end (not below ``limits[0]``) to ``limits[1]``, so that the
    differences show.  A missing interval end draws no bar.  Returns the Axes.
    """
    order = table.sort_values("mean")
    below = (order["mean"] - order["ci_low"]).to_numpy()
    above = (order["ci_high"] - order["mean"]).to_numpy()
    ax = _axes(ax)
    ax.barh([str(i) for i in order.index], order["mean"], xerr=[below, above], color=color)
    ax.set_xlim(max(limits[0], order["ci_low"].min() - pad), limits[1])
    return ax


def target_trace(
    log: pd.DataFrame,
    target: str,
    value: str,
    control: str,
    *,
    x: str = "step",
    labels: Mapping[str, str] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """A quantity steered toward a target by a control, over training: the ``target``
    (dashed) and the ``value`` reached on the left axis, the ``control`` (e.g. a penalty's
    strength) in red on a log scale on the right.

    ``log`` has one row per reading and the four columns; ``labels`` renames columns in
    the legend (the left axis is named after ``value``, the right after ``control``).
    Returns the left axis.
    """
    labels = {} if labels is None else labels
    ax = _axes(ax)
    ax.plot(log[x], log[target], "k--", label=labels.get(target, target))
    ax.plot(log[x], log[value], label=labels.get(value, value))
    ax.set(xlabel=x, ylabel=value)
    right = ax.twinx()
    right.semilogy(log[x], log[control], color="tab:red", alpha=0.6, label=control)
    right.set_ylabel(labels.get(control, control), color="tab:red")
    ax.legend(loc="lower right", fontsize=8)
    return ax


def sparsity_curve_grid(
    df: pd.DataFrame,
    row: str,
    col: str,
    *,
    x: str = "sparsity",
    y: str = "accuracy",
    hue: str = "method",
    baseline: Mapping[object, float] | None = None,
    logit_x: Sequence[object] = (),
    cmap: str = "tab20",
) -> Figure:
    """:func:`sparsity_curve` panels, one per value of ``row`` (a model) and of ``col`` (a
    pattern), in order of appearance, with one legend beside them.

    Each ``hue`` value keeps its colour (from ``cmap``, in sorted order) in every panel, so
    the one legend holds for all.  ``baseline`` maps a ``row`` value to its dashed
    reference line (the dense accuracy); the columns named in ``logit_x`` get the
    -log10(1 - x) axis.  Each y axis fits the unflagged means
    (:func:`~sparsity_lab.experiments.fit_y`) within the bounds of ``y`` ([0, 1] for an
    accuracy, none for a loss): a run at chance level would squash the rest, and a mean
    off the axis is marked at its edge with its value.  Returns the Figure.
    """
    rows, cols = list(dict.fromkeys(df[row])), list(dict.fromkeys(df[col]))
    colours = _hue_colours(sorted(df[hue].unique()), cmap)
    fig, axes = plt.subplots(
        len(rows),
        len(cols),
        figsize=(7.5 * len(cols), 4.2 * len(rows)),
        squeeze=False,
        layout="constrained",
    )
    for panels, key in zip(axes, rows, strict=True):
        for ax, column in zip(panels, cols, strict=True):
            part = df[(df[row] == key) & (df[col] == column)]
            ax.set_prop_cycle(color=[colours[h] for h in sorted(part[hue].unique())])
            level = None if baseline is None else baseline[key]
            sparsity_curve(part, x, y, hue, ax, baseline=level, logit_x=column in logit_x)
            means = flagged_summary(part, [hue, x], y)
            fit_y(ax, means, x=x, name=hue, **_fit_options(y, means))
            ax.get_legend().remove()  # one legend for the figure, beside it
            ax.set_title(f"{key}, {column}")
    figure_legend(fig, axes, strip=f"{hue} = ")
    return fig


def column_bars(
    table: pd.DataFrame,
    xlabels: Mapping[str, str] | None = None,
    *,
    reference: Mapping[str, float] | None = None,
) -> Figure:
    """A panel of horizontal bars per column of ``table``, side by side, a bar per row
    (named by the index): several measures of the same items, each on its own scale.

    ``xlabels`` names each column's axis (default: the column); ``reference`` draws a
    dashed grey line at a value in a column's panel (1 for a ratio to a baseline).
    Returns the Figure.
    """
    xlabels, reference = xlabels or {}, reference or {}
    fig, axes = plt.subplots(
        1, len(table.columns), figsize=(6 * len(table.columns), 3.8), layout="constrained"
    )
    for ax, column in zip(np.ravel(axes), table.columns, strict=True):
        table[column].plot.barh(ax=ax)
        if column in reference:
            ax.axvline(reference[column], color="gray", linestyle="--")
        ax.set_xlabel(xlabels.get(column, column))
    return fig


def log_bars(
    table: pd.DataFrame,
    ax: Axes | None = None,
    *,
    colors: Sequence[str] | None = None,
    what: str = "value",
    strip: str = "",
    figsize: tuple[float, float] | None = None,
) -> Axes:
    """Bars of ``table`` on a log y axis: a group per row (named by the index) and a bar per
    column, with a zero marked where a log axis cannot draw its bar.

    For values over orders of magnitude that may be exactly 0 (a layer's density after
    pruning it to 100%): each 0 gets an x at the foot of its missing bar, in the bar's
    colour, and a note under the axes names them, ``"x: density 0, no bar on a log scale
    (column row, ...)"`` (``what`` = ``"density"``, also the y label; ``strip`` is removed
    from the row names, in the note and under the groups).  ``colors`` are the columns'
    bars'; ``figsize`` makes a new figure of that size when ``ax`` is None.  Returns the
    Axes.
    """
    options = {} if colors is None else {"color": list(colors)}
    ax = table.plot.bar(ax=ax, logy=True, rot=0, figsize=figsize, **options)
    names = [str(row).replace(strip, "") if strip else str(row) for row in table.index]
    ax.set_xticks(ax.get_xticks(), names)
    ax.set_xlabel("")
    ax.set_ylabel(f"{what} (log scale)")
    zeros = []
    drawn = ax.containers[-len(table.columns) :]  # the bars just drawn, after any already there
    for bars, column in zip(drawn, table.columns, strict=True):
        for bar, row in zip(bars, table.index, strict=True):
            if table.loc[row, column] == 0:
                zeros.append(f"{column} {str(row).replace(strip, '') if strip else row}")
                ax.plot(
                    bar.get_x() + bar.get_width() / 2,
                    0.0,
                    marker="x",
                    color=bar.get_facecolor(),
                    transform=ax.get_xaxis_transform(),
                    clip_on=False,
                )
    if zeros:
        ax.annotate(
            f"x: {what} 0, no bar on a log scale ({', '.join(zeros)})",
            xy=(0, -0.22),
            xycoords="axes fraction",
            va="top",
            fontsize=7,
        )
    return ax


def mean_ci_fitted(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ax: Axes | None = None,
    *,
    baseline: tuple[float, str] | None = None,
    logit_x: bool = False,
    bounds: tuple[float, float] | None = None,
    fmt: str | None = None,
) -> Axes:
    """:func:`~sparsity_lab.experiments.plot_mean_ci` of ``y`` (e.g. an accuracy) with the
    y axis fitted to the points of which no run raised a sanity flag.

    A run at chance level would stretch the axis and squash the differences between the
    others; a mean off the fitted axis is marked at its edge with its value
    (:func:`~sparsity_lab.experiments.fit_y`).  ``baseline`` (value, label) is a dashed grey
    line, e.g. the dense accuracy; ``logit_x`` spaces the x axis as -log10(1 - x), as
    :func:`sparsity_curve` does, so that 90%, 99% and 99.9% sparsity are equally far apart
    and sparsity 0 stays in view (it needs x < 1).  The legend is small.  ``bounds`` are
    the values ``y`` can take, which clip the bands and the axis (default: those of ``y``,
    :func:`~sparsity_lab.stats.bounds_for`: [0, 1] for an accuracy, none for a loss;
    ``(-1, 1)`` for a change of accuracy); ``fmt`` formats the value of a mean off the
    axis (``"{:+.2f}"``; default a percentage when ``y`` has bounds, else three significant
    digits).  Returns the Axes.
    """
    if logit_x and (df[x] >= 1.0).any():
        raise ValueError(f"logit_x needs {x} < 1 (a fully pruned net is infinitely far right)")
    ax = _axes(ax)
    if logit_x:
        logit_sparsity_axis(ax)  # before plotting, so autoscaling happens on the new scale
    clip = {} if bounds is None else {"bounds": bounds}
    plot_mean_ci(df, x=x, y=y, hue=hue, ax=ax, **clip)
    if baseline is not None:
        ax.axhline(baseline[0], color="gray", linestyle="--", linewidth=1, label=baseline[1])
    means = flagged_summary(df, [x] if hue is None else [hue, x], y, **clip)
    keep = ~means["flagged"].astype(bool) if "flagged" in means else None
    options = _fit_options(y, means, bounds, fmt)
    fit_y(ax, means, keep, x=x, name=x if hue is None else hue, **options)
    ax.legend(fontsize=8)
    return ax


def matrix_heatmap(
    matrix: np.ndarray | torch.Tensor,
    ax: Axes | None = None,
    *,
    xlabel: str = "",
    ylabel: str = "",
    title: str | None = None,
    xticklabels: Sequence[str] | None = None,
    yticklabels: Sequence[str] | None = None,
    step: int = 1,
    vmin: float | None = 0.0,
    vmax: float | None = 1.0,
    centre: float | None = None,
    cmap: str = "viridis",
    colorbar: str | None = None,
    blank_zeros: bool = False,
    annotate: str | None = None,
    dark: float | None = None,
    fontsize: float | None = None,
    rotation: float = 0.0,
    aspect: str | None = None,
) -> Axes:
    """A matrix as a picture whose rows and columns are items to read off the axes (digits
    by experts, queries by keys, layers by heads, sparsities by labels), each cell a value
    between ``vmin`` and ``vmax`` (None: the matrix's own extreme).

    Rows and columns are named by ``yticklabels`` and ``xticklabels`` (in ``fontsize``; the
    column names turned by ``rotation`` degrees, for long ones) or, without them, numbered
    at every ``step``-th index.  ``colorbar`` labels a colour bar (None: no bar).

    Options for what a matrix means:

    - ``centre``: a scale symmetric about it (it replaces ``vmin`` and ``vmax``), for signed
      changes on a diverging ``cmap`` (``centre=0``, ``cmap="RdBu"``): a loss and a gain
      of the same size are equally deep.
    - ``annotate``: a format (``"{:.2f}"``) with which each cell's value is written in it,
      so the picture and the numbers are read together (a correlation matrix).  A value
      with ``|value - centre|`` (centre 0 by default) above ``dark`` sits on a deep colour
      and is written in white, the others in black; ``dark=None`` whitens the text on
      every cell whose colour is dark.
    - ``blank_zeros``: exact zeros left white, so that a zero stands apart from a small
      value (attention weights that sparsemax cut off).

    Returns the Axes.
    """
    array = torch.as_tensor(matrix).detach().cpu().double().numpy()
    if array.ndim != 2:
        raise ValueError(f"need a 2-D matrix, got shape {array.shape}")
    rows = array.shape[0] if yticklabels is None else len(yticklabels)
    cols = array.shape[1] if xticklabels is None else len(xticklabels)
    if (rows, cols) != array.shape:
        raise ValueError(
            f"the labels name {rows} rows and {cols} columns, but the matrix is {array.shape}"
        )
    if centre is not None:
        distances = np.abs(array[np.isfinite(array)] - centre)
        limit = float(distances.max()) if distances.size else 0.0
        limit = limit or 1.0  # a matrix all at the centre: any scale, but not an empty one
        vmin, vmax = centre - limit, centre + limit
    ax = _axes(ax)
    colours = plt.get_cmap(cmap).with_extremes(bad="white")
    shown = np.ma.masked_equal(array, 0.0) if blank_zeros else array
    image = ax.imshow(shown, cmap=colours, vmin=vmin, vmax=vmax, aspect=aspect)
    ax.grid(False)  # grid lines would cut the cells
    turn = {"rotation": rotation, "ha": "right"} if rotation else {}
    for labels, n, set_ticks, options in (
        (xticklabels, array.shape[1], ax.set_xticks, turn),
        (yticklabels, array.shape[0], ax.set_yticks, {}),
    ):
        if labels is None:
            set_ticks(range(0, n, step))
        else:
            set_ticks(range(n), list(labels), fontsize=fontsize, **options)
    if annotate is not None:
        middle = 0.0 if centre is None else centre
        luminance = image.to_rgba(shown)[..., :3] @ np.array([0.299, 0.587, 0.114])
        for (i, j), value in np.ndenumerate(array):
            deep = luminance[i, j] < 0.5 if dark is None else abs(value - middle) > dark
            colour = "white" if deep else "black"
            ax.text(
                j, i, annotate.format(value), ha="center", va="center", fontsize=7, color=colour
            )
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title is not None:
        ax.set_title(title)
    if colorbar is not None:
        ax.figure.colorbar(image, ax=ax, label=colorbar)
    return ax


def matrix_panels(
    matrices: Mapping[str, np.ndarray | torch.Tensor],
    *,
    title: str | None = None,
    figsize: tuple[float, float] | None = None,
    **options,
) -> Figure:
    """A row of :func:`matrix_heatmap` panels, one per entry of ``matrices`` (panel title ->
    matrix), drawn with the same ``options`` (labels, colours, ticks), so they compare.

    ``title`` goes above the row; ``figsize`` defaults to 3.2 x 3.6 inches per panel.  For
    pictures without labelled axes, wrapped over rows on one shared colour bar, see
    :func:`image_grid`.  Returns the Figure.
    """
    if not matrices:
        raise ValueError("matrices is empty; pass a dict of panel title -> 2-D matrix")
    figsize = (3.2 * len(matrices), 3.6) if figsize is None else figsize
    fig, axes = plt.subplots(1, len(matrices), figsize=figsize, squeeze=False)
    for ax, (name, matrix) in zip(axes[0], matrices.items(), strict=True):
        matrix_heatmap(matrix, ax, **options)
        ax.set_title(name, fontsize=9)
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

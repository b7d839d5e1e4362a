"""Plots for masks, layer densities and accuracy-versus-sparsity curves.

Every function takes plain tensors, dicts or DataFrames (never a model), so the same plot
works for a mask from any method.  Single-panel functions take an optional ``ax`` and return
the :class:`~matplotlib.axes.Axes` they drew on; multi-panel ones return the
:class:`~matplotlib.figure.Figure`.  Only matplotlib is used, and no function sets a backend.

Colour convention: kept weights are dark, pruned weights are white.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from .experiments import flagged_groups, mark_flagged, summarize
from .stats import bounds_for

# Sparsities worth a tick on the -log10(1 - s) axis: each step is roughly one equal distance.
_LOGIT_TICKS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999)


def _axes(ax: Axes | None) -> Axes:
    if ax is None:
        _, ax = plt.subplots()
    return ax


def figure_legend(fig: Figure, axes, *, strip: str = "", **options) -> None:
    """One legend for a figure of panels, beside them, with the entries of *every* panel.

    Panels of a grid often share their lines, but not always (a criterion missing from one
    model, a sanity-flag circle drawn in one panel only); taking the first panel's legend
    would leave those out.  Entries are kept in order of first appearance, one per label;
    ``strip`` is removed from each label (``"criterion="``).
    """
    found: dict[str, object] = {}
    for ax in np.ravel(axes):
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            found.setdefault(label.replace(strip, "") if strip else label, handle)
    options = {"loc": "outside right center", "fontsize": 8, **options}
    fig.legend(list(found.values()), list(found), **options)


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
    really hold.  A mask that already fits is returned unchanged (as floats).
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
    rows and columns.  The title defaults to the shape and the sparsity.
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
    """One :func:`mask_heatmap` per entry of ``masks`` (name -> mask), in a grid."""
    if not masks:
        raise ValueError("masks is empty; pass a dict of name -> mask, e.g. masks(model)")
    if ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols}")
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
    overall density.
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


def _logit_sparsity_axis(ax: Axes) -> None:
    """Put the x axis on -log10(1 - sparsity), so 90%, 99%, 99.9% are equally spaced."""

    def forward(s: np.ndarray) -> np.ndarray:
        # clip keeps s = 1 finite (it would be infinitely far to the right)
        return -np.log10(np.clip(1.0 - np.asarray(s, dtype=float), 1e-12, None))

    def inverse(u: np.ndarray) -> np.ndarray:
        return 1.0 - 10.0 ** (-np.asarray(u, dtype=float))

    ax.set_xscale("function", functions=(forward, inverse))
    ax.xaxis.set_major_locator(FixedLocator(_LOGIT_TICKS))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda s, _: f"{100 * s:.10g}%"))


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
    as in :func:`~sparsity_lab.experiments.plot_mean_ci`.
    """
    table = errorbars(df, x, y, hue=hue, confidence=confidence)
    if logit_x and (table[x] >= 1.0).any():
        raise ValueError(f"logit_x needs {x} < 1 (a fully pruned net is infinitely far right)")
    ax = _axes(ax)
    if logit_x:
        _logit_sparsity_axis(ax)  # before plotting, so autoscaling happens on the new scale
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

import matplotlib

matplotlib.use("Agg")

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.container import ErrorbarContainer

from sparsity_lab import viz


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _bar_heights(ax):
    return [p.get_height() for p in ax.containers[0]]


# ------------------------------------------------------------------------------ heatmaps
def test_heatmap_shows_small_mask_as_is():
    mask = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 1]], dtype=torch.bool)
    ax = viz.mask_heatmap(mask)
    image = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(image, mask.float().numpy())
    # 4 of 12 entries are zero
    assert ax.get_title() == "(3, 4), sparsity 33.3%"


def test_heatmap_kept_is_darker_than_pruned():
    ax = viz.mask_heatmap(torch.tensor([[1.0, 0.0]]))
    im = ax.images[0]
    kept, pruned = im.to_rgba(np.array([1.0, 0.0]))
    assert sum(kept[:3]) < sum(pruned[:3])
    assert np.allclose(pruned[:3], 1.0)  # pruned is white


def test_heatmap_flattens_conv_masks_to_out_by_rest():
    mask = (torch.arange(2 * 3 * 2 * 2) % 3 == 0).reshape(2, 3, 2, 2)
    ax = viz.mask_heatmap(mask, title="conv")
    image = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(image, mask.reshape(2, 12).float().numpy())
    assert ax.get_title() == "conv"


def test_block_density_on_hand_made_mask():
    # 4 x 6 mask, max_size 2 -> blocks of 2 x 3
    mask = torch.tensor(
        [
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0, 1],
            [1, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1],
        ]
    )
    expected = np.array([[6 / 6, 1 / 6], [1 / 6, 3 / 6]])
    np.testing.assert_allclose(viz.block_density(mask, max_size=2), expected)


def test_block_density_uneven_edges_average_real_entries_only():
    # 3 x 5 with max_size 2 -> blocks of 2 x 3; the last row and last 2 columns form smaller
    # edge blocks
    mask = np.array(
        [
            [1, 0, 0, 1, 1],
            [1, 1, 0, 0, 1],
            [0, 1, 1, 1, 0],
        ]
    )
    expected = np.array(
        [
            [mask[:2, :3].mean(), mask[:2, 3:].mean()],
            [mask[2:, :3].mean(), mask[2:, 3:].mean()],
        ]
    )
    np.testing.assert_allclose(viz.block_density(mask, max_size=2), expected)


def test_large_heatmap_is_downsampled_with_density_colorbar():
    torch.manual_seed(0)
    mask = torch.rand(300, 784) > 0.8
    ax = viz.mask_heatmap(mask, max_size=300)
    image = np.asarray(ax.images[0].get_array())
    assert image.shape == (300, math.ceil(784 / 3))
    np.testing.assert_allclose(image[0, 0], mask[0, :3].float().mean().item())
    # the extent keeps ticks in original columns
    assert ax.images[0].get_extent() == [-0.5, 783.5, 299.5, -0.5]
    colorbar_ax = ax.figure.axes[1]
    assert "density" in colorbar_ax.get_ylabel()


def test_block_density_rejects_bad_size():
    with pytest.raises(ValueError, match="max_size"):
        viz.block_density(torch.ones(3, 3), max_size=0)


def test_gallery_one_panel_per_mask_and_hides_spare_axes():
    masks = {
        "fc1.weight": torch.ones(4, 5),
        "fc2.weight": torch.zeros(3, 4),
        "conv.weight": torch.ones(2, 3, 3, 3),
        "fc3.bias": torch.ones(6),
    }
    fig = viz.mask_gallery(masks, ncols=3)
    images = [ax for ax in fig.axes if ax.images and ax.get_visible()]
    assert len(images) == 4
    assert [ax.get_title().splitlines()[0] for ax in images] == list(masks)
    hidden = [ax for ax in fig.axes if not ax.get_visible()]
    assert len(hidden) == 2  # a 2 x 3 grid for 4 masks


def test_gallery_rejects_empty():
    with pytest.raises(ValueError, match="empty"):
        viz.mask_gallery({})


# ------------------------------------------------------------------------------ densities
def test_density_bars_from_dict():
    sparsity = {"fc1.weight": 0.9, "fc2.weight": 0.5, "fc3.weight": 0.0}
    ax = viz.density_bars(sparsity)
    np.testing.assert_allclose(_bar_heights(ax), [0.1, 0.5, 1.0])
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["10.0%", "50.0%", "100.0%"]
    assert not ax.lines  # no total given, no line


def test_density_bars_from_report_skips_total_row():
    report = pd.DataFrame(
        {"name": ["fc1.weight", "total", "fc2.weight"], "sparsity": [0.75, 0.7, 0.25]}
    )
    ax = viz.density_bars(report)
    np.testing.assert_allclose(_bar_heights(ax), [0.25, 0.75])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1.weight", "fc2.weight"]
    (line,) = ax.lines
    assert line.get_linestyle() == "--"
    np.testing.assert_allclose(line.get_ydata(), [0.3, 0.3])


def test_density_bars_errors_explain_the_fix():
    with pytest.raises(ValueError, match="sparsity"):
        viz.density_bars(pd.DataFrame({"name": ["a"], "density": [0.5]}))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        viz.density_bars({"a": 1.5})


# ------------------------------------------------------------------------------ error bars
# Student-t quantiles in closed form for 1, 2 and 4 degrees of freedom, independent of scipy.
def _t_quantile(p, df):
    if df == 1:  # Cauchy
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    if df == 4:
        a = 4 * p * (1 - p)
        q = math.cos(math.acos(math.sqrt(a)) / 3) / math.sqrt(a)
        return math.copysign(2 * math.sqrt(q - 1), p - 0.5)
    raise NotImplementedError(df)


def _runs():
    return pd.DataFrame(
        {
            "method": ["a"] * 5 + ["b"] * 3,
            "sparsity": [0.5, 0.5, 0.5, 0.9, 0.9, 0.5, 0.5, 0.9],
            "accuracy": [0.90, 0.92, 0.97, 0.80, 0.70, 0.88, 0.86, 0.60],
        }
    )


def test_errorbars_match_hand_computation():
    table = viz.errorbars(_runs(), "sparsity", "accuracy", hue="method", confidence=0.95)
    assert list(table.columns) == ["method", "sparsity", "mean", "half_width", "n"]
    rows = {(r.method, r.sparsity): r for r in table.itertuples()}
    assert set(rows) == {("a", 0.5), ("a", 0.9), ("b", 0.5), ("b", 0.9)}

    # a @ 0.5: values 0.90, 0.92, 0.97
    values = [0.90, 0.92, 0.97]
    mean = sum(values) / 3
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    r = rows[("a", 0.5)]
    assert r.n == 3
    assert r.mean == pytest.approx(mean)
    assert r.half_width == pytest.approx(_t_quantile(0.975, 2) * s / math.sqrt(3))

    # a @ 0.9: two values, s = |x1 - x2| / sqrt(2)
    r = rows[("a", 0.9)]
    expected = _t_quantile(0.975, 1) * (0.1 / math.sqrt(2)) / math.sqrt(2)
    assert r.half_width == pytest.approx(expected)

    # b @ 0.9: a single run has no spread
    r = rows[("b", 0.9)]
    assert r.n == 1 and r.mean == pytest.approx(0.60) and math.isnan(r.half_width)


def test_errorbars_without_hue_and_other_confidence():
    table = viz.errorbars(_runs(), "sparsity", "accuracy", confidence=0.5)
    assert list(table.columns) == ["sparsity", "mean", "half_width", "n"]
    at_half = table[table.sparsity == 0.5].iloc[0]
    values = np.array([0.90, 0.92, 0.97, 0.88, 0.86])
    expected = _t_quantile(0.75, 4) * values.std(ddof=1) / math.sqrt(5)
    assert at_half["n"] == 5
    assert at_half["half_width"] == pytest.approx(expected, rel=1e-9)


def test_errorbars_errors():
    with pytest.raises(ValueError, match="confidence"):
        viz.errorbars(_runs(), "sparsity", "accuracy", confidence=95)
    with pytest.raises(ValueError, match="seed"):
        viz.errorbars(_runs(), "sparsity", "accuracy", hue="seed")


# ------------------------------------------------------------------------------ curves
def test_sparsity_curve_one_errorbar_container_per_hue():
    ax = viz.sparsity_curve(_runs(), hue="method", baseline=0.95)
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(containers) == 2
    line, _, _ = containers[0]
    np.testing.assert_allclose(line.get_xdata(), [0.5, 0.9])
    np.testing.assert_allclose(line.get_ydata(), [np.mean([0.90, 0.92, 0.97]), 0.75])
    baseline = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(baseline) == 1
    np.testing.assert_allclose(baseline[0].get_ydata(), [0.95, 0.95])


def test_sparsity_curve_bars_are_the_intervals_clipped_to_0_1():
    runs = _runs()
    ax = viz.sparsity_curve(runs[runs.method == "a"])
    (container,) = ax.containers
    _, _, (bars,) = container
    table = viz.errorbars(runs[runs.method == "a"], "sparsity", "accuracy")
    mean, half = table["mean"].to_numpy(), table["half_width"].to_numpy()
    segments = bars.get_segments()
    np.testing.assert_allclose([seg[0][1] for seg in segments], np.maximum(mean - half, 0))
    np.testing.assert_allclose([seg[1][1] for seg in segments], np.minimum(mean + half, 1))
    # at 0.9 two seeds give a t-interval past 1; the drawn bar stops at 1
    assert mean[1] + half[1] > 1 and segments[1][1][1] == 1


def test_sparsity_curve_logit_axis_spreads_high_sparsity():
    runs = pd.DataFrame({"sparsity": [0.0, 0.9, 0.99, 0.999], "accuracy": [0.9, 0.8, 0.6, 0.3]})
    ax = viz.sparsity_curve(runs, logit_x=True)
    assert ax.get_xscale() == "function"
    to_display = ax.xaxis.get_transform().transform
    # -log10(1 - s): 0.9 -> 1, 0.99 -> 2, 0.999 -> 3, i.e. equal steps
    np.testing.assert_allclose(to_display(np.array([0.9, 0.99, 0.999])), [1.0, 2.0, 3.0])
    ax.figure.canvas.draw()
    labels = {t.get_text() for t in ax.get_xticklabels()}
    assert {"90%", "99%", "99.9%"} <= labels


def test_sparsity_curve_logit_rejects_full_sparsity():
    with pytest.raises(ValueError, match="< 1"):
        viz.sparsity_curve(pd.DataFrame({"sparsity": [1.0], "accuracy": [0.1]}), logit_x=True)


def test_figure_legend_gathers_every_panels_entries_once():
    fig, axes = plt.subplots(1, 2, layout="constrained")
    axes[0].plot([0, 1], label="criterion=magnitude")
    axes[1].plot([0, 1], label="criterion=magnitude")
    axes[1].scatter([0], [0], label="sanity flag raised")  # only on the second panel
    viz.figure_legend(fig, axes, strip="criterion=")
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["magnitude", "sanity flag raised"]
    plt.close(fig)


def test_sparsity_curve_circles_the_flagged_points():
    df = pd.DataFrame(
        {
            "sparsity": [0.5, 0.5, 0.9, 0.9] * 2,
            "method": ["a"] * 4 + ["b"] * 4,
            "accuracy": [0.9, 0.92, 0.8, 0.82, 0.9, 0.91, 0.1, 0.12],
            "flags": ["", "", "", "", "", "", "at chance level (0.1)", ""],
        }
    )
    fig, ax = plt.subplots()
    viz.sparsity_curve(df, y="accuracy", hue="method", ax=ax)
    circles = [c for c in ax.collections if c.get_label() == "sanity flag raised"]
    assert len(circles) == 1
    assert circles[0].get_offsets().tolist() == [[0.9, pytest.approx(0.11)]]
    plt.close(fig)

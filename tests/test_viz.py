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
    legend = viz.figure_legend(fig, axes, strip="criterion=")
    assert fig.legends == [legend]
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


# ------------------------------------------------------------------------ chapter plots
def test_image_grid_one_colour_scale_one_colorbar_and_hidden_spares():
    images = {"a": torch.zeros(4, 4), "b": torch.full((4, 4), 2.0), "c": np.eye(4)}
    fig = viz.image_grid(images, ncols=2, vmin=0, colorbar="share", title="t")
    drawn = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in drawn] == ["a", "b", "c"]
    assert all(ax.images[0].get_clim() == (0, 2.0) for ax in drawn)  # vmax: the largest value
    bars = [ax for ax in fig.axes if ax.get_ylabel() == "share"]
    assert len(bars) == 1 and len(fig.axes) == 5  # 4 panels (one spare) and one colour bar
    assert fig.get_suptitle() == "t"
    fig = viz.image_grid({"x": np.ones((2, 2))}, ncols=1, vmin=0, vmax=1, cmap="gray")
    assert len(fig.axes) == 1 and fig.axes[0].images[0].get_cmap().name == "gray"
    with pytest.raises(ValueError, match="images is empty"):
        viz.image_grid({}, ncols=2)


def test_grouped_bars_one_bar_per_cell_side_by_side_with_error_bars():
    from matplotlib.container import BarContainer

    table = pd.DataFrame({"erk": [0.9, 0.8], "uniform": [0.7, 0.6]}, index=["set", "rigl"])
    spread = pd.DataFrame({"erk": [0.05, np.nan], "uniform": [0.1, 0.1]}, index=table.index)
    low, high = table - 0.1, table + spread
    ax = viz.grouped_bars(table, low=low, high=high, width=0.4, legend_title="budget")
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [[b.get_height() for b in group] for group in bars] == [[0.9, 0.8], [0.7, 0.6]]
    assert [b.get_x() + b.get_width() / 2 for b in bars[0]] == pytest.approx([-0.2, 0.8])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["set", "rigl"]
    assert ax.get_legend().get_title().get_text() == "budget"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["erk", "uniform"]
    erk_bars = bars[0].errorbar.lines[2][0].get_segments()
    assert erk_bars[1][0][1] == pytest.approx(0.7) and erk_bars[1][1][1] == pytest.approx(0.8)
    plain = viz.grouped_bars(table[["erk"]])
    assert plain.containers[0].errorbar is None
    assert plain.containers[0][0].get_width() == pytest.approx(0.8)


def test_phase_curve_shades_the_epochs_of_one_phase():
    ax = viz.phase_curve([0, 1, 2, 3], [0.5, 0.6, 0.7, 0.8], ["dense", "sparse", "sparse", "dense"],
                         shaded="sparse", label="val")  # fmt: skip
    spans = [p for p in ax.patches]
    assert len(spans) == 2
    assert [round(p.get_x(), 2) for p in spans] == [0.5, 1.5]
    assert list(ax.lines[0].get_ydata()) == [0.5, 0.6, 0.7, 0.8]
    assert ax.lines[0].get_label() == "val"


def test_interval_lines_one_errorbar_per_hue_and_circles_flagged_rows():
    table = pd.DataFrame(
        {
            "arm": ["relu", "k 10%", "k 5%"],
            "kind": ["relu", "kwta", "kwta"],
            "x": [0.5, 0.9, 0.95],
            "mean": [0.97, 0.95, 0.11],
            "ci_low": [0.96, np.nan, 0.1],
            "ci_high": [0.98, np.nan, 0.12],
        }
    )
    ax = viz.interval_lines(table, "x", "kind", flagged=[False, False, True])
    lines = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in lines] == ["relu", "kwta"]
    assert list(lines[1].lines[0].get_xdata()) == [0.9, 0.95]
    kwta_bars = lines[1].lines[2][0].get_segments()
    assert kwta_bars[0][0][1] == kwta_bars[0][1][1] == pytest.approx(0.95)  # NaN: no bar
    assert len(ax.collections[-1].get_offsets()) == 1  # the flagged row's red circle
    plain = viz.interval_lines(table, "x")
    assert len([c for c in plain.containers if isinstance(c, ErrorbarContainer)]) == 1


def test_interval_lines_band_shades_each_hue_instead_of_error_bars():
    from matplotlib.collections import PolyCollection

    table = pd.DataFrame(
        {
            "kind": ["a", "a", "b", "b"],
            "x": [0.5, 0.9, 0.5, 0.9],
            "mean": [1.0, 2.0, -1.0, 0.0],
            "ci_low": [0.5, 1.5, -2.0, -1.0],
            "ci_high": [1.5, 2.5, 0.0, 1.0],
        }
    )
    ax = viz.interval_lines(table, "x", "kind", band=True)
    assert not [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [line.get_label() for line in ax.lines] == ["a", "b"]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    assert bands[1].get_paths()[0].vertices[:, 1].min() == pytest.approx(-2.0)


def _stage_runs():
    rows = []
    for model in ["m1", "m2"]:
        for criterion, level in [("good", 0.9), ("base", 0.1)]:
            for sparsity in [0.5, 0.9]:
                for seed in range(3):
                    accuracy = level - 0.1 * sparsity + 0.01 * seed
                    rows.append(
                        {
                            "model_name": model,
                            "criterion": criterion,
                            "sparsity": sparsity,
                            "seed": seed,
                            "pruned_accuracy": accuracy - 0.05,
                            "val_accuracy": accuracy,
                            "dense_val_accuracy": 0.95,
                            "flags": "",
                        }
                    )
    return pd.DataFrame(rows)


def test_stage_grid_panels_reference_and_fitted_axis():
    stages = {"pruned_accuracy": "no fine-tuning", "val_accuracy": "fine-tuned"}
    fig = viz.stage_grid(
        _stage_runs(),
        stages,
        row="model_name",
        hue="criterion",
        reference="dense_val_accuracy",
        fit={"val_accuracy": ["base"]},
        ylabel="validation accuracy",
        title="Criteria",
    )
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == [
        "m1: no fine-tuning",
        "m1: fine-tuned",
        "m2: no fine-tuning",
        "m2: fine-tuned",
    ]
    assert all(ax.get_legend() is None for ax in axes)  # one legend, for the figure
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["good", "base", "dense"]
    dense = [line for line in axes[0].lines if line.get_label() == "dense"]
    assert dense[0].get_ydata()[0] == pytest.approx(0.95)
    assert axes[0].get_ylim()[0] < 0.1  # not fitted: the baseline is in view
    assert axes[1].get_ylim()[0] > 0.5  # fitted to "good": the baseline is off the axis
    assert any("base at 50%" in t.get_text() for t in axes[1].texts)  # marked at the edge
    assert axes[1].get_ylabel() == "validation accuracy" and axes[1].get_xlabel() == "sparsity"
    suptitle = fig.get_suptitle()
    assert suptitle.startswith("Criteria\nfine-tuned: the y axis fits")
    assert "all but base" in suptitle


def test_prediction_scatter_points_and_identity_line():
    ax = viz.prediction_scatter([0.1, 0.2, 0.4], [0.0, 0.3, 0.5], title="t", xlabel="p")
    assert len(ax.collections[0].get_offsets()) == 3
    line = ax.lines[0]
    assert line.get_label() == "y = x"
    assert list(line.get_xdata()) == list(line.get_ydata()) == [0.0, 0.5]
    assert ax.get_xlabel() == "p" and ax.get_ylabel() == "real" and ax.get_title() == "t"


def test_kept_scatter_splits_kept_from_pruned():
    before, after = np.arange(5.0), np.arange(5.0) * 2
    ax = viz.kept_scatter(before, after, [True, False, False, True, False])
    pruned, kept = ax.collections
    assert len(pruned.get_offsets()) == 3 and len(kept.get_offsets()) == 2
    assert kept.get_offsets()[1].tolist() == [3.0, 6.0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["pruned", "kept"]


def test_log_bars_marks_each_zero_under_its_missing_bar_and_names_it():
    table = pd.DataFrame(
        {"snip": [0.5, 0.0], "synflow": [0.1, 0.01]}, index=["density fc1", "density fc2"]
    )
    ax = viz.log_bars(table, colors=["C0", "C1"], what="density", strip="density ")
    assert ax.get_yscale() == "log"
    assert [len(bars) for bars in ax.containers] == [2, 2]  # a bar per row, per column
    marks = [line for line in ax.lines if line.get_marker() == "x"]
    assert len(marks) == 1  # one zero: snip's fc2
    # the x sits at the middle of the missing bar, in its colour
    bar = ax.containers[0][1]
    assert marks[0].get_xdata()[0] == pytest.approx(bar.get_x() + bar.get_width() / 2)
    assert matplotlib.colors.same_color(marks[0].get_color(), "C0")
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["x: density 0, no bar on a log scale (snip fc2)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1", "fc2"]
    assert ax.get_ylabel() == "density (log scale)"


def test_log_bars_without_zeros_draws_no_mark_and_no_note():
    ax = viz.log_bars(pd.DataFrame({"a": [0.5, 0.2]}, index=["x", "y"]))
    assert not [line for line in ax.lines if line.get_marker() == "x"]
    assert len(ax.texts) == 0


def test_curves_one_line_per_entry_with_the_span_shaded():
    ax = viz.curves([0, 1, 2], {"a": [0, 1, 2], "b": [2, 1, 0]}, span=(0.5, 1.5), xlabel="step")
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    assert len(ax.patches) == 1  # the shaded span
    assert ax.get_xlabel() == "step"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    assert viz.curves([0, 1], {"a": [0, 1]}, legend=False).get_legend() is None


def test_function_grid_one_titled_panel_per_function_and_hides_the_rest():
    ys = {name: [0.0, 0.5, 0.9] for name in ("one", "two", "three", "four")}
    fig = viz.function_grid(
        [0, 1, 2], ys, ncols=3, span=(1, 2), xlabel="step", ylabel="s", title="T"
    )
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == list(ys)
    assert len(fig.axes) == 6 and len(visible) == 4
    assert all(len(ax.get_lines()) == 1 and len(ax.patches) == 1 for ax in visible)
    # the bottom panel of each column is labelled: "four" under "one", then "two", "three"
    assert [ax.get_xlabel() for ax in visible] == ["", "step", "step", "step"]
    assert [ax.get_ylabel() for ax in visible] == ["s", "", "", "s"]
    assert fig.get_suptitle() == "T"
    with pytest.raises(ValueError, match="ys is empty"):
        viz.function_grid([0], {})
    with pytest.raises(ValueError, match="ncols must be a positive integer, got 0"):
        viz.function_grid([0, 1], {"a": [0, 1]}, ncols=0)


def test_step_logs_hold_the_last_value_to_the_end_and_dash_the_named_logs():
    logs = {"a": [(2, 0.5), (4, 0.9)], "b": [(3, 0.9)]}
    ax = viz.step_logs(logs, 10, dashed=["b"], xlabel="step")
    a, b = ax.get_lines()
    assert list(a.get_xdata()) == [0, 2, 4, 10] and list(a.get_ydata()) == [0.0, 0.5, 0.9, 0.9]
    assert a.get_linestyle() == "-" and b.get_linestyle() == "--"
    assert b.get_zorder() > a.get_zorder()
    assert [a.get_label(), b.get_label()] == ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        viz.step_logs({"c": []}, 10)


def test_interval_barh_sorts_by_mean_and_starts_below_the_lowest_interval():
    table = pd.DataFrame(
        {"mean": [0.9, 0.5, 0.7], "ci_low": [0.85, 0.3, 0.6], "ci_high": [0.95, 0.7, 0.8]},
        index=["x", "y", "z"],
    )
    ax = viz.interval_barh(table)
    widths = [p.get_width() for p in ax.patches]
    assert widths == [0.5, 0.7, 0.9]  # lowest first: the highest mean is on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["y", "z", "x"]
    assert ax.get_xlim() == pytest.approx((0.25, 1.0))


def test_mean_ci_fitted_fits_the_axis_to_the_unflagged_points():
    rows = [
        {"arm": arm, "sparsity": s, "seed": seed, "test_accuracy": acc, "flags": flag}
        for arm, acc, flag in [("good", 0.9, ""), ("bad", 0.1, "at chance level (0.1)")]
        for s in (0.5, 0.9)
        for seed, noise in [(0, 0.0), (1, 0.01)]
        for acc in [acc + noise]
    ]
    ax = viz.mean_ci_fitted(
        pd.DataFrame(rows), "sparsity", "test_accuracy", "arm", baseline=(0.95, "dense")
    )
    low, high = ax.get_ylim()
    assert low > 0.5 and high <= 1.0  # the flagged arm at 0.1 does not stretch the axis
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "dense" in labels and "sanity flag raised" in labels
    assert any(text.get_text().startswith("bad at 50%") for text in ax.texts)  # marked


def test_mean_ci_fitted_takes_the_bounds_and_format_of_a_change():
    rows = [
        {"arm": arm, "sparsity": s, "seed": seed, "change": change + noise, "flags": flag}
        for arm, change, flag in [("good", -0.05, ""), ("bad", -0.8, "at chance level (0.1)")]
        for s in (0.5, 0.9)
        for seed, noise in [(0, 0.0), (1, 0.01)]
    ]
    ax = viz.mean_ci_fitted(
        pd.DataFrame(rows), "sparsity", "change", "arm", bounds=(-1.0, 1.0), fmt="{:+.2f}"
    )
    low, high = ax.get_ylim()
    assert -0.2 < low < -0.05 and high < 0.1  # fitted to the unflagged arm, below 0
    assert "bad at 50%: -0.80 (flagged)" in [text.get_text() for text in ax.texts]


# ------------------------------------------------------------ plain log axis, mean lines
def test_logit_sparsity_axis_spaces_by_the_zeros_left_and_names_the_ticks():
    _, ax = plt.subplots()
    ax.plot([0.9, 0.99, 0.999], [1.0, 2.0, 3.0], "o")
    assert viz.logit_sparsity_axis(ax, ticks=[0.999, 0.9, 0.99]) is ax
    assert list(ax.xaxis.get_majorticklocs()) == [0.9, 0.99, 0.999]
    # equal steps: each sparsity keeps a tenth of the weights the one before it kept
    at = ax.transData.transform([(0.9, 1.0), (0.99, 1.0), (0.999, 1.0)])[:, 0]
    assert at[1] - at[0] == pytest.approx(at[2] - at[1])
    assert ax.xaxis.get_major_formatter()(0.999, 0) == "99.9%"


def test_plain_log_axis_labels_plain_numbers():
    _, ax = plt.subplots()
    ax.plot([1, 2, 3], [4.0, 6.0, 20.0])
    assert viz.plain_log_axis(ax) is ax
    assert ax.get_yscale() == "log" and ax.get_xscale() == "linear"
    assert ax.yaxis.get_major_formatter()(10.0, 0) == "10"
    assert ax.yaxis.get_minor_formatter()(6.0, 0) == "6"
    ax.set_ylim(4.0, 18.0)  # a range with one power of ten: every tick is named
    ticks = [*ax.yaxis.get_majorticklocs(), *ax.yaxis.get_minorticklocs()]
    inside = sorted(round(t, 6) for t in ticks if 4.0 <= t <= 18.0)
    assert inside == [4.0, 5.0, 6.0, 8.0, 10.0, 15.0]
    viz.plain_log_axis(ax, axis="x")
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="axis"):
        viz.plain_log_axis(ax, axis="z")


def test_mean_lines_one_line_of_means_per_hue_in_order():
    df = pd.DataFrame(
        {
            "arm": ["b", "b", "b", "b", "a", "a"],
            "x": [1, 1, 2, 2, 1, 2],
            "y": [1.0, 3.0, 4.0, 6.0, 7.0, 8.0],
        }
    )
    ax = viz.mean_lines(df, "x", "y", "arm", fmt="s--", label="{}, OWL")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["b, OWL", "a, OWL"]
    assert list(lines[0].get_ydata()) == [2.0, 5.0]
    assert [line.get_color() for line in lines] == ["C0", "C1"]
    assert lines[0].get_linestyle() == "--" and lines[0].get_marker() == "s"
    assert not ax.texts  # no point labels unless asked


def test_mean_lines_at_a_setting_averages_both_axes_and_labels_points():
    df = pd.DataFrame(
        {"arm": ["a"] * 4, "bits": [4, 4, 8, 8], "x": [1.0, 3.0, 5.0, 7.0], "y": [2.0] * 4}
    )
    ax = viz.mean_lines(df, "x", "y", "arm", at="bits", colors={"a": "red"}, point_label="{}b")
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [2.0, 6.0] and line.get_color() == "red"
    assert [t.get_text() for t in ax.texts] == ["4b", "8b"]


def test_value_bars_reference_zoom_and_highlight():
    values = {"fc1": 0.62, "fc2": 0.7, "fc3": 0.78}
    ax = viz.value_bars(values, reference=0.7, reference_label="uniform 70%", margin=0.05)
    assert [round(h, 2) for h in _bar_heights(ax)] == [0.62, 0.7, 0.78]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["fc1", "fc2", "fc3"]
    assert ax.get_ylim() == pytest.approx((0.57, 0.83))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["uniform 70%"]
    _, ax = plt.subplots()
    viz.value_bars({"a": 2.0, "b": 0.5, "c": 0.5}, ax, reference=1, color="C0", highlight="min")
    colors = [matplotlib.colors.to_hex(p.get_facecolor()) for p in ax.containers[0]]
    red, blue = matplotlib.colors.to_hex("C3"), matplotlib.colors.to_hex("C0")
    assert colors == [blue, red, red]
    assert ax.get_legend() is None  # no label, no legend
    with pytest.raises(ValueError, match="highlight"):
        viz.value_bars({"a": 1.0}, highlight="smallest")


def _curve_runs():
    rows = [
        {"method": m, "sparsity": s, "seed": seed, "test_accuracy": acc + 0.01 * seed}
        for m, base in [("a", 0.9), ("b", 0.8)]
        for s, acc in [(0.5, base), (0.9, base - 0.3)]
        for seed in range(3)
    ]
    return pd.DataFrame(rows)


def test_mean_ci_zoom_second_panel_holds_only_the_zoomed_x_and_no_legend():
    runs = _curve_runs()
    fig = viz.mean_ci_zoom(
        runs,
        "sparsity",
        "test_accuracy",
        "method",
        zoom=[0.5],
        titles=("all", "zoom"),
        baseline=(0.95, "dense"),
    )
    full, zoom = fig.axes
    assert [full.get_title(), zoom.get_title()] == ["all", "zoom"]
    assert full.get_ylabel() == "test accuracy (mean, 95% CI)"
    labels = [t.get_text() for t in full.get_legend().get_texts()]
    assert labels == ["method=a", "method=b", "dense"]
    assert zoom.get_legend() is None
    method_lines = [line for line in zoom.get_lines() if line.get_label().startswith("method")]
    assert [list(line.get_xdata()) for line in method_lines] == [[0.5], [0.5]]
    single = viz.mean_ci_zoom(runs, "sparsity", "test_accuracy", "method", ylabel="acc")
    assert len(single.axes) == 1 and single.axes[0].get_ylabel() == "acc"


def test_mean_markers_one_marker_per_hue_nudged_around_x_in_cycle_colours():
    runs = _curve_runs()[lambda d: d.sparsity == 0.5]
    ax = viz.mean_markers(runs, "sparsity", "test_accuracy", "method", suffix=", 2:4")
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["a, 2:4", "b, 2:4"]
    assert [line.get_color() for line in lines] == ["C0", "C1"]
    assert [line.get_marker() for line in lines] == ["*", "*"]
    xs = [float(line.get_xdata()[0]) for line in lines]
    assert xs == pytest.approx([0.495, 0.505])
    assert float(lines[0].get_ydata()[0]) == pytest.approx(0.91)


# ---------------------------------------------------------------------- traces and grids
def test_target_trace_draws_target_and_value_left_and_control_on_a_log_right_axis():
    log = pd.DataFrame(
        {
            "step": [0, 10, 20],
            "goal": [0.0, 0.5, 0.9],
            "s": [0.0, 0.3, 0.8],
            "k": [1e-3, 1e-2, 1e-1],
        }
    )
    ax = viz.target_trace(log, "goal", "s", "k", labels={"goal": "ramp", "k": "strength"})
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ramp", "s"]
    assert ax.get_lines()[0].get_linestyle() == "--"
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "s"
    (right,) = [other for other in ax.figure.axes if other is not ax]
    assert right.get_yscale() == "log" and right.get_ylabel() == "strength"
    assert list(right.get_lines()[0].get_ydata()) == [1e-3, 1e-2, 1e-1]


def test_sparsity_curve_grid_panel_per_row_and_column_one_colour_per_hue_one_legend():
    rows = [
        {"model": m, "pattern": p, "method": h, "sparsity": s, "seed": seed, "acc": 0.9 - s / 2}
        for m in ["mlp", "cnn"]
        for p in ["unstructured", "channel"]
        for h in (["gmp", "l1"] if p == "unstructured" else ["gmp", "lasso"])
        for s in [0.5, 0.9]
        for seed in range(2)
    ]
    fig = viz.sparsity_curve_grid(
        pd.DataFrame(rows), "model", "pattern", y="acc", baseline={"mlp": 0.95, "cnn": 0.9},
        logit_x=["unstructured"],
    )  # fmt: skip
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["mlp, unstructured", "mlp, channel", "cnn, unstructured", "cnn, channel"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    entries = [t.get_text() for t in legend.get_texts()]
    assert {"gmp", "l1", "lasso"} <= set(entries)
    gmp = [next(c for c in ax.containers if c.get_label() == "method = gmp") for ax in fig.axes]
    assert len({c.lines[0].get_color() for c in gmp}) == 1  # gmp keeps its colour
    assert fig.axes[0].get_xscale() == "function" and fig.axes[1].get_xscale() == "linear"
    baselines = [line.get_ydata()[0] for line in fig.axes[2].get_lines() if line.get_ls() == "--"]
    assert baselines == [0.9]


def test_column_bars_one_panel_per_column_with_its_label_and_reference():
    table = pd.DataFrame({"time": [0.8, 1.5, 2.0], "extra": [0.0, 0.0, 1.0]}, index=list("abc"))
    fig = viz.column_bars(table, {"time": "time / dense"}, reference={"time": 1})
    time, extra = fig.axes
    assert [p.get_width() for p in time.patches] == [0.8, 1.5, 2.0]
    assert [t.get_text() for t in time.get_yticklabels()] == ["a", "b", "c"]
    assert time.get_xlabel() == "time / dense" and extra.get_xlabel() == "extra"
    assert [list(line.get_xdata()) for line in time.get_lines()] == [[1, 1]]
    assert not extra.get_lines()


def test_matrix_heatmap_names_rows_and_columns_and_blanks_exact_zeros():
    matrix = torch.tensor([[0.0, 0.5, 1.0], [0.2, 0.0, 0.3]])
    ax = viz.matrix_heatmap(
        matrix,
        xticklabels=["a", "b", "c"],
        yticklabels=["p", "q"],
        blank_zeros=True,
        colorbar="share",
        xlabel="key",
        ylabel="query",
        title="t",
    )
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["p", "q"]
    shown = ax.images[0].get_array()
    assert shown.mask.tolist() == [[True, False, False], [False, True, False]]
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert len(ax.figure.axes) == 2  # the heatmap and its colour bar
    assert ax.figure.axes[1].get_ylabel() == "share"
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("key", "query", "t")


def test_matrix_heatmap_numbers_every_step_and_can_take_its_own_range():
    ax = viz.matrix_heatmap(np.arange(80.0).reshape(8, 10), step=4, vmin=None, vmax=None)
    assert list(ax.get_xticks()) == [0, 4, 8]
    assert list(ax.get_yticks()) == [0, 4]
    assert ax.images[0].get_clim() == (0.0, 79.0)
    assert len(ax.figure.axes) == 1  # no colour bar unless labelled


def test_matrix_panels_one_titled_panel_per_matrix_with_the_same_options():
    fig = viz.matrix_panels(
        {"one": torch.eye(3), "two": torch.ones(3, 3)}, xlabel="expert", title="all"
    )
    assert [ax.get_title() for ax in fig.axes] == ["one", "two"]
    assert [ax.get_xlabel() for ax in fig.axes] == ["expert", "expert"]
    assert fig.get_suptitle() == "all"
    with pytest.raises(ValueError, match="empty"):
        viz.matrix_panels({})


# ------------------------------------------------ fitted axes of a metric without bounds
def _loss_runs():
    """mlp runs of two methods, mean losses 2.5 and 2.9 (gmp) and 9.5 and 9.9 (l1, whose
    every run raised a flag)."""
    return pd.DataFrame(
        [
            {"model": "mlp", "pattern": "unstructured", "criterion": m, "method": m,
             "sparsity": s, "seed": seed, "loss": base + s + 0.01 * seed - 0.005, "flags": flag}
            for m, base, flag in [("gmp", 2.0, ""), ("l1", 9.0, "loss diverged")]
            for s in [0.5, 0.9]
            for seed in range(2)
        ]
    )  # fmt: skip


def _loss_limits():
    half = _t_quantile(0.975, 1) * 0.005  # two seeds 0.01 apart: s / sqrt(n) = 0.005
    low, high = 2.5 - half, 2.9 + half
    pad = 0.1 * (high - low)
    return low - pad, high + pad


def test_sparsity_curve_grid_fits_a_loss_axis_upright_and_writes_losses_as_numbers():
    fig = viz.sparsity_curve_grid(_loss_runs(), "model", "pattern", y="loss")
    (ax,) = fig.axes
    # fitted to gmp's means, 2.5 and 2.9, and their intervals, padded by a tenth of the span;
    # the bounds of an accuracy, [0, 1], would turn the axis upside down
    assert ax.get_ylim() == pytest.approx(_loss_limits())
    notes = sorted(t.get_text() for t in ax.texts)
    assert notes == ["l1 at 50%: 9.5 (flagged)", "l1 at 90%: 9.9 (flagged)"]


def test_stage_grid_fits_a_loss_axis_upright():
    fig = viz.stage_grid(
        _loss_runs(), {"loss": "after pruning"}, row="model", hue="criterion", fit={"loss": ["l1"]}
    )
    (ax,) = fig.axes
    assert ax.get_ylim() == pytest.approx(_loss_limits())
    assert "l1 at 50%: 9.5 (flagged)" in [t.get_text() for t in ax.texts]


# ------------------------------------------------- one colour per hue across the panels
def _line_colours(ax, prefix):
    return {line.get_label(): line.get_color() for line in ax.get_lines()
            if line.get_label().startswith(prefix)}  # fmt: skip


def test_stage_grid_keeps_each_colour_when_a_criterion_is_missing_from_a_model():
    runs = _stage_runs()
    runs = runs[~((runs.model_name == "m2") & (runs.criterion == "good"))]
    fig = viz.stage_grid(runs, {"val_accuracy": "fine-tuned"}, row="model_name", hue="criterion")
    m1, m2 = (_line_colours(ax, "criterion=") for ax in fig.axes)
    assert set(m1) == {"criterion=good", "criterion=base"} and set(m2) == {"criterion=base"}
    assert m2["criterion=base"] == m1["criterion=base"] != m1["criterion=good"]
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    handles = dict(zip(texts, legend.legend_handles, strict=True))
    assert matplotlib.colors.same_color(handles["base"].get_color(), m2["criterion=base"])


def test_mean_ci_zoom_keeps_each_colour_when_the_zoom_leaves_a_method_out():
    runs = _curve_runs()
    runs = runs[~((runs.method == "a") & (runs.sparsity == 0.5))]  # a only at 90%
    fig = viz.mean_ci_zoom(runs, "sparsity", "test_accuracy", "method", zoom=[0.5])
    full, zoom = (_line_colours(ax, "method=") for ax in fig.axes)
    assert set(zoom) == {"method=b"}
    assert zoom["method=b"] == full["method=b"] != full["method=a"]


# ----------------------------------------------------------------- smaller plotting fixes
def test_mean_ci_fitted_logit_axis_keeps_sparsity_0_in_view():
    rows = [
        {"sparsity": s, "seed": seed, "test_accuracy": 0.9 - s / 2 + 0.01 * seed}
        for s in (0.0, 0.9, 0.99)
        for seed in range(2)
    ]
    ax = viz.mean_ci_fitted(pd.DataFrame(rows), "sparsity", "test_accuracy", logit_x=True)
    assert ax.get_xscale() == "function"  # -log10(1 - s), as sparsity_curve's
    low, high = ax.get_xlim()
    assert low <= 0.0 and high >= 0.99  # a logit scale would put 0 infinitely far left
    to_display = ax.xaxis.get_transform().transform
    np.testing.assert_allclose(to_display(np.array([0.0, 0.9, 0.99])), [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="< 1"):
        viz.mean_ci_fitted(pd.DataFrame(rows).assign(sparsity=1.0), "sparsity",
                           "test_accuracy", logit_x=True)  # fmt: skip


def test_interval_lines_draw_each_hue_in_order_of_x():
    table = pd.DataFrame(
        {
            "kind": ["a", "b", "a", "a"],
            "x": [0.9, 0.5, 0.5, 0.7],
            "mean": [3.0, 0.0, 1.0, 2.0],
            "ci_low": [2.5, -0.5, 0.5, 1.5],
            "ci_high": [3.5, 0.5, 1.5, 2.5],
        }
    )
    for band in (False, True):
        _, ax = plt.subplots()
        viz.interval_lines(table, "x", "kind", ax, band=band)
        line = ax.get_lines()[0]
        assert list(line.get_xdata()) == [0.5, 0.7, 0.9]
        assert list(line.get_ydata()) == [1.0, 2.0, 3.0]


def test_image_grid_scale_leaves_out_nan_pixels_and_ncols_must_be_positive():
    images = {"a": np.array([[np.nan, 1.0], [2.0, 3.0]]), "b": np.full((2, 2), 0.5)}
    fig = viz.image_grid(images, ncols=2)
    assert [ax.images[0].get_clim() for ax in fig.axes] == [(0.5, 3.0), (0.5, 3.0)]
    with pytest.raises(ValueError, match="ncols must be a positive integer, got 0"):
        viz.image_grid(images, ncols=0)
    with pytest.raises(ValueError, match="ncols must be a positive integer, got 0"):
        viz.mask_gallery({"m": torch.ones(2, 2)}, ncols=0)


def test_log_bars_on_an_axes_that_already_has_bars_marks_its_own_zeros():
    _, ax = plt.subplots()
    ax.bar([0, 1], [5.0, 6.0], color="C3")  # bars drawn before
    table = pd.DataFrame({"snip": [0.5, 0.0]}, index=["x", "y"])
    assert viz.log_bars(table, ax, colors=["C1"]) is ax
    (mark,) = [line for line in ax.lines if line.get_marker() == "x"]
    bar = ax.containers[-1][1]  # snip's bar of y, the zero
    assert mark.get_xdata()[0] == pytest.approx(bar.get_x() + bar.get_width() / 2)
    assert matplotlib.colors.same_color(mark.get_color(), "C1")
    assert [t.get_text() for t in ax.texts] == ["x: value 0, no bar on a log scale (snip y)"]


def test_mean_markers_take_their_colours_from_a_mapping():
    runs = _curve_runs()[lambda d: d.sparsity == 0.5]
    colors = {"a": "red", "b": "black"}
    ax = viz.mean_markers(runs, "sparsity", "test_accuracy", "method", colors=colors)
    assert [line.get_color() for line in ax.get_lines()] == ["red", "black"]


# ------------------------------------------------------------- one heatmap for matrices
def test_matrix_heatmap_centre_makes_a_scale_symmetric_about_it():
    values = np.array([[0.1, -0.3, 0.0], [0.2, 0.05, -0.1]])
    ax = viz.matrix_heatmap(
        values, xticklabels=["a", "b", "c"], yticklabels=["80%", "90%"], centre=0.0,
        cmap="RdBu", colorbar="change", rotation=60,
    )  # fmt: skip
    (image,) = ax.get_images()
    assert image.get_clim() == pytest.approx((-0.3, 0.3))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert [t.get_rotation() for t in ax.get_xticklabels()] == [60.0] * 3
    assert [t.get_text() for t in ax.get_yticklabels()] == ["80%", "90%"]
    assert len(ax.figure.axes) == 2 and ax.figure.axes[1].get_ylabel() == "change"
    shifted = viz.matrix_heatmap(values + 1.0, centre=1.0)
    assert shifted.images[0].get_clim() == pytest.approx((0.7, 1.3))
    still = viz.matrix_heatmap(np.zeros((2, 2)), centre=0.0)  # no change anywhere
    assert still.images[0].get_clim() == (-1.0, 1.0)
    with pytest.raises(ValueError, match="2 rows and 2 columns"):
        viz.matrix_heatmap(values, xticklabels=["a", "b"], yticklabels=["80%", "90%"])


def test_matrix_heatmap_annotates_every_cell_and_whitens_deep_ones():
    matrix = np.array([[1.0, 0.25, -0.8], [0.25, 1.0, 0.1], [-0.8, 0.1, 1.0]])
    ax = viz.matrix_heatmap(
        matrix, xticklabels=list("abc"), yticklabels=list("abc"), vmin=-1, vmax=1,
        cmap="RdBu_r", annotate="{:.2f}", dark=0.6, colorbar="rank correlation",
    )  # fmt: skip
    texts = {t.get_text(): t.get_color() for t in ax.texts}
    assert len(ax.texts) == 9
    assert texts["1.00"] == "white" and texts["-0.80"] == "white" and texts["0.25"] == "black"
    assert ax.figure.axes[1].get_ylabel() == "rank correlation"
    # without a threshold, by the colour of the cell: on Greys, 0 is white and 1 black
    plain = viz.matrix_heatmap(np.array([[0.0, 1.0]]), cmap="Greys", annotate="{:.0f}")
    assert [(t.get_text(), t.get_color()) for t in plain.texts] == [("0", "black"), ("1", "white")]

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection, PathCollection
from matplotlib.text import Annotation

from sparsity_lab import illustrations


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _segments(ax):
    """Every straight line drawn on ``ax`` as ((x0, y0), (x1, y1)), whichever artists hold
    them (one Line2D each, or a LineCollection)."""
    lines = [line.get_xydata() for line in ax.get_lines()]
    lines += [s for c in ax.collections if isinstance(c, LineCollection) for s in c.get_segments()]
    return [tuple(tuple(float(v) for v in point) for point in line) for line in lines]


def test_quadratic_bowl_draws_contours_minimum_points_and_moves():
    h = torch.tensor([[4.0, 1.6], [1.6, 1.0]], dtype=torch.float64)
    points = {"magnitude: w1 := 0": ([0.0, 1.0], "s"), "OBD: w2 := 0": ([0.8, 0.0], "^")}
    ax = illustrations.quadratic_bowl(
        h, [0.8, 1.0], points=points, moves={"OBS": (1.2, 0.0)}, legend=True
    )
    assert len(ax.collections) == 1  # one contour set
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["trained w*", "magnitude: w1 := 0", "OBD: w2 := 0", "OBS"]
    by_label = {line.get_label(): line for line in ax.get_lines()}
    assert by_label["trained w*"].get_marker() == "*"
    assert by_label["OBD: w2 := 0"].get_fillstyle() == "none"
    assert list(by_label["OBS"].get_xydata()[0]) == [1.2, 0.0]
    arrows = [c for c in ax.get_children() if isinstance(c, Annotation)]
    assert len(arrows) == 1 and tuple(arrows[0].xy) == (1.2, 0.0)
    assert ax.get_aspect() == 1.0 and ax.get_xlabel() == "w1"
    bare = illustrations.quadratic_bowl(np.eye(2), np.zeros(2), title="H = I")
    assert bare.get_legend() is None and bare.get_title() == "H = I"
    with pytest.raises(ValueError, match="2x2 Hessian"):
        illustrations.quadratic_bowl(np.eye(3), np.zeros(3))


def _plane():
    grid = np.arange(-2, 5) / 2  # -1.0 to 2.0 in steps of 0.5, 0.0 on the grid
    return np.meshgrid(grid, grid)


def test_penalty_paths_one_panel_per_penalty_with_its_path_and_axes_drawn_for_l0():
    w1, w2 = _plane()
    loss = (w1 - 1) ** 2 + w2**2
    penalties = {"L1": np.abs(w1) + np.abs(w2), "L0": (w1 != 0) + (w2 != 0.0)}
    paths = {"L1": np.array([[1.0, 0.0], [0.5, 0.0]]), "L0": np.array([[1.0, 0.0], [0.0, 0.0]])}
    fig = illustrations.penalty_paths(
        w1, w2, loss, penalties, paths, [0.0, 1.0], [1.0, 0.0], on_axes=["L0"]
    )
    l1, l0 = fig.axes
    assert [l1.get_title(), l0.get_title()] == ["L1", "L0"]
    assert l1.get_ylabel() == "$w_2$" and l0.get_ylabel() == ""
    assert l1.collections[-1].get_offsets().tolist() == paths["L1"].tolist()
    thick = [line for line in l0.get_lines() if line.get_linewidth() == 3]
    assert len(thick) == 2  # the axes, where L0 changes value
    assert not [line for line in l1.get_lines() if line.get_linewidth() == 3]
    stars = [line for line in l1.get_lines() if line.get_marker() == "*"]
    assert [list(s.get_xydata()[0]) for s in stars] == [[1.0, 0.0]]


def test_objective_map_marks_and_names_the_grid_minimum():
    w1, w2 = np.meshgrid(np.arange(-20, 41) / 20, np.arange(-20, 41) / 20)  # 0.05 apart
    objective = (w1 - 1.5) ** 2 + (w2 + 0.5) ** 2
    ax = illustrations.objective_map(w1, w2, objective, minimum=[1.0, 0.0])
    assert ax.get_title() == "minimum at (1.50, -0.50)"
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert [list(d.get_xydata()[0]) for d in dots] == [[1.5, -0.5]]
    assert [line.get_marker() for line in ax.get_lines()].count("*") == 1


def test_contour_arrows_one_labelled_arrow_per_end():
    grid = np.linspace(-1, 1, 20)
    xx, yy = np.meshgrid(grid, grid)
    ax = illustrations.contour_arrows(
        grid,
        grid,
        xx**2 + yy**2,
        (0.5, 0.5),
        [(0, 0.5), (0.5, 0)],
        ["remove w1", "remove w2"],
        colors=["C3", "C0"],
    )
    labels = [t for t in ax.texts if t.get_text()]
    arrows = [t for t in ax.texts if not t.get_text()]
    assert [t.get_text() for t in labels] == ["remove w1", "remove w2"]
    assert len(arrows) == 2 and arrows[0].xy == (0.0, 0.5)
    assert labels[0].get_color() == "C3"
    assert list(ax.lines[0].get_xdata()) == [0.5]  # the start point


def test_connection_diagram_draws_every_kept_weight_and_every_unit():
    first = torch.tensor([[1, 0], [1, 1], [0, 0]])  # 3 units reading 2 inputs, 3 kept
    last = torch.tensor([[0, 1, 1]])  # 1 output reading the 3 units, 2 kept
    ax = illustrations.connection_diagram([first, last], title="net")
    # columns at x = 0, 1, 2; the units of a column spread from 0 to 1 (one unit: at 0)
    assert sorted(_segments(ax)) == [
        ((0.0, 0.0), (1.0, 0.0)),  # input 0 -> unit 0
        ((0.0, 0.0), (1.0, 0.5)),  # input 0 -> unit 1
        ((0.0, 1.0), (1.0, 0.5)),  # input 1 -> unit 1
        ((1.0, 0.5), (2.0, 0.0)),  # unit 1 -> the output
        ((1.0, 1.0), (2.0, 0.0)),  # unit 2 -> the output
    ]
    units = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in units] == [2, 3, 1]
    assert ax.get_title() == "net" and not ax.axison


def test_unit_lines_one_line_arrow_and_index_per_unit_dashed_when_removed():
    weight = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    bias = torch.tensor([-1.0, 2.0, 0.0])
    ax = illustrations.unit_lines(weight, bias, [True, False, True], points=torch.zeros(5, 2))
    assert len(ax.lines) == 3
    assert [line.get_linestyle() for line in ax.lines] == ["-", "--", "-"]
    arrows = [t for t in ax.texts if isinstance(t, matplotlib.text.Annotation)]
    assert [t.get_text() for t in ax.texts if t not in arrows] == ["0", "1", "2"]
    assert len(ax.collections) == 1  # the cloud of points
    # unit 0 is x = 1: its line is vertical through (1, 0), its arrow points to +x
    xs, _ = ax.lines[0].get_data()
    assert np.allclose(xs, 1.0)
    assert len(arrows) == 3 and arrows[0].xy[0] > arrows[0].xyann[0]
    assert ax.get_xlim() == (-4.0, 4.0)


def test_unit_lines_rejects_weights_that_do_not_read_two_inputs():
    with pytest.raises(ValueError, match="weights"):
        illustrations.unit_lines(torch.zeros(3, 3), torch.zeros(3), [True] * 3)


def test_unit_lines_leave_out_a_unit_whose_weights_are_all_zero():
    weight = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # unit 0 reads nothing: a constant
    with np.errstate(all="raise"):  # no 0 / 0 on the way
        ax = illustrations.unit_lines(weight, torch.tensor([1.0, -1.0]), [True, True])
    assert len(ax.get_lines()) == 1 and np.allclose(ax.get_lines()[0].get_xdata(), 1.0)
    assert [t.get_text() for t in ax.texts if not isinstance(t, Annotation)] == ["1"]


def test_objective_map_shades_a_flat_objective_and_one_with_a_plateau():
    w1, w2 = _plane()
    ax = illustrations.objective_map(w1, w2, np.ones_like(w1), minimum=[1.0, 0.0])
    assert list(ax.collections[0].levels) == [1.0, 2.0]  # one shade
    assert ax.get_title() == "minimum at (-1.00, -1.00)"  # the first cell of the grid
    # a quarter of the cells share the lowest value, so the low percentiles coincide
    objective = np.maximum((w1 - 1.0) ** 2 + w2**2, 0.3)
    ax = illustrations.objective_map(w1, w2, objective)
    levels = list(ax.collections[0].levels)
    assert levels[0] == pytest.approx(0.3) and levels == sorted(set(levels))


def test_quadratic_bowl_draws_the_axes_through_0_as_the_weight_planes_do():
    ax = illustrations.quadratic_bowl(np.eye(2), [0.5, 1.0])
    through_0 = [line for line in ax.get_lines() if line.get_linewidth() == 0.5]
    drawn = sorted((list(line.get_xdata()), list(line.get_ydata())) for line in through_0)
    assert drawn == [([0, 0], [0, 1]), ([0, 1], [0, 0])]  # x = 0 and y = 0, edge to edge
    (star,) = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert star.get_xydata()[0].tolist() == [0.5, 1.0] and star.get_markersize() == 12

"""Linear mode connectivity: interpolation and the error barrier, against hand examples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab.phenomena import connectivity


def scalar(w: float) -> nn.Module:
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(w)
    return layer


def test_the_barrier_of_a_hill_between_two_equal_ends_is_its_height():
    """w runs from 0 to 2 along the line; an error of 1 - (w - 1)^2 is 0 at both ends and
    1 in the middle (alpha 0.5): the barrier is 1.  The valley (w - 1)^2 has none."""
    hill = lambda m: 1 - (float(m.weight) - 1) ** 2  # noqa: E731
    barrier, path = connectivity.error_barrier(scalar(0.0), scalar(2.0), hill)
    assert barrier == pytest.approx(1.0)
    assert path["alpha"].tolist() == pytest.approx([i / 10 for i in range(11)])
    assert path["error"].iloc[5] == pytest.approx(1.0)
    valley = lambda m: (float(m.weight) - 1) ** 2  # noqa: E731
    assert connectivity.error_barrier(scalar(0.0), scalar(2.0), valley)[0] == pytest.approx(0.0)
    # unequal ends: the barrier is measured from their mean (0.5 here), and is never negative
    line = lambda m: float(m.weight) / 2  # noqa: E731
    assert connectivity.error_barrier(scalar(0.0), scalar(2.0), line)[0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both ends"):
        connectivity.error_barrier(scalar(0.0), scalar(1.0), hill, alphas=[0.0, 0.5])


def test_interpolation_mixes_weights_and_keeps_shared_masks_and_counters():
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    b = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    keep = torch.rand(3, 4) > 0.5
    for m in (a, b):
        sl.masks.attach(m, "0.weight", keep)
    b[1].num_batches_tracked.fill_(7)
    mid = connectivity.interpolate(a, b, 0.25)
    expected = 0.75 * a[0].weight + 0.25 * b[0].weight
    torch.testing.assert_close(mid[0].weight, expected)
    assert torch.all(mid[0].weight[~keep] == 0)  # both ends are zero there, so is the line
    assert torch.equal(sl.masks.get_mask(mid, "0.weight"), sl.masks.get_mask(a, "0.weight"))
    assert int(mid[1].num_batches_tracked) == 0  # integer buffers come from a
    assert torch.equal(connectivity.interpolate(a, b, 1.0)[0].weight, b[0].weight)
    other = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    sl.masks.attach(other, "0.weight", ~keep)
    with pytest.raises(ValueError, match="different masks"):
        connectivity.interpolate(a, other, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        connectivity.interpolate(a, b, 1.5)

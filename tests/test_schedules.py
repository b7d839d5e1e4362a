"""Schedules: endpoints, hand-computed midpoints and update frequency."""

import math

import pytest

from sparsity_lab import registry, schedules

RAMPS = ["linear", "cubic", "cosine", "exponential"]


@pytest.mark.parametrize("name", RAMPS)
def test_endpoints(name):
    fn = registry.get(name, "schedule")
    kw = dict(final_sparsity=0.9, begin_step=100, end_step=1100, initial_sparsity=0.1)
    assert fn(0, **kw) == pytest.approx(0.1)
    assert fn(99, **kw) == pytest.approx(0.1)
    assert fn(100, **kw) == pytest.approx(0.1)
    assert fn(1100, **kw) == pytest.approx(0.9)
    assert fn(10**6, **kw) == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("linear", 0.45),
        ("cubic", 0.9 * (1 - 0.5**3)),  # Zhu & Gupta: s_f + (s_i - s_f)(1 - 1/2)^3
        ("cosine", 0.45),
        ("exponential", 1 - math.sqrt(0.1)),  # density 1 -> 0.1 geometrically
    ],
)
def test_midpoints_by_hand(name, expected):
    fn = registry.get(name, "schedule")
    assert fn(500, final_sparsity=0.9, begin_step=0, end_step=1000) == pytest.approx(expected)


def test_cosine_quarter_point():
    got = schedules.cosine(250, final_sparsity=0.8, begin_step=0, end_step=1000)
    assert got == pytest.approx(0.8 * (1 - math.cos(math.pi / 4)) / 2)


def test_one_shot_jumps_at_begin_step():
    assert schedules.one_shot(9, 0.9, begin_step=10) == 0.0
    assert schedules.one_shot(10, 0.9, begin_step=10) == 0.9


def test_frequency_holds_the_value_between_updates():
    kw = dict(final_sparsity=0.8, begin_step=0, end_step=100, frequency=10)
    assert schedules.linear(19, **kw) == schedules.linear(10, **kw) == pytest.approx(0.08)
    assert schedules.linear(20, **kw) == pytest.approx(0.16)


@pytest.mark.parametrize("name", RAMPS)
def test_ramps_are_monotone(name):
    fn = registry.get(name, "schedule")
    values = [fn(t, final_sparsity=0.95, begin_step=0, end_step=50) for t in range(60)]
    assert all(a <= b + 1e-12 for a, b in zip(values, values[1:], strict=False))


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="sparsity must be in"):
        schedules.cubic(0, 1.5, 0, 10)
    with pytest.raises(ValueError, match="end_step"):
        schedules.linear(0, 0.5, begin_step=10, end_step=5)
    with pytest.raises(ValueError, match="frequency"):
        schedules.linear(0, 0.5, 0, 10, frequency=0)

"""The schedules of issue 7: iterative, iht, dsd and adaptive, against values by hand."""

import math

import pytest

from sparsity_lab import registry, schedules

ALL = [
    "one_shot",
    "iterative",
    "cubic",
    "linear",
    "exponential",
    "cosine",
    "iht",
    "dsd",
    "adaptive",
]


def test_every_schedule_of_the_survey_is_registered():
    assert set(ALL) <= set(registry.available("schedule"))


@pytest.mark.parametrize("name", [n for n in ALL if n != "dsd"])
def test_endpoints(name):
    """Before begin_step the initial sparsity, from end_step on the final one."""
    fn = registry.get(name, "schedule")
    kw = dict(final_sparsity=0.9, begin_step=100, end_step=400, initial_sparsity=0.2, frequency=100)
    assert fn(0, **kw) == pytest.approx(0.2)
    assert fn(99, **kw) == pytest.approx(0.2)
    assert fn(400, **kw) == pytest.approx(0.9)
    assert fn(10**6, **kw) == pytest.approx(0.9)


def test_dsd_ends_dense():
    kw = dict(final_sparsity=0.8, begin_step=10, end_step=20)
    assert [schedules.dsd(t, **kw) for t in (0, 9, 10, 19, 20, 500)] == [0, 0, 0.8, 0.8, 0, 0]


def test_iterative_rounds_by_hand():
    # three rounds at steps 0, 100, 200; each keeps the same share: 0.1^(1/3) of density
    kw = dict(final_sparsity=0.9, begin_step=0, end_step=300, frequency=100)
    r1, r2 = 1 - 0.1 ** (1 / 3), 1 - 0.1 ** (2 / 3)
    assert schedules.iterative(0, **kw) == pytest.approx(r1)  # prunes at begin_step itself
    assert schedules.iterative(99, **kw) == pytest.approx(r1)
    assert schedules.iterative(100, **kw) == pytest.approx(r2)
    assert schedules.iterative(199, **kw) == pytest.approx(r2)
    assert schedules.iterative(200, **kw) == pytest.approx(0.9)
    assert schedules.rounds_of(0, 300, 100) == 3
    # each round removes the same fraction of what is left: (1 - r1) each time
    d = [1.0, 1 - r1, 1 - r2, 0.1]
    assert d[1] / d[0] == pytest.approx(d[2] / d[1]) == pytest.approx(d[3] / d[2])


def test_iterative_from_an_initial_sparsity():
    got = schedules.iterative(0, 0.9, 0, 2, initial_sparsity=0.5)
    assert got == pytest.approx(1 - 0.5 * math.sqrt(0.1 / 0.5))


def test_iterative_with_no_ramp_is_one_shot():
    for t in (0, 4, 5, 9):
        assert schedules.iterative(t, 0.7, 5, 5) == schedules.one_shot(t, 0.7, 5)


def test_iht_phase_boundaries():
    kw = dict(final_sparsity=0.9, begin_step=10, end_step=50, frequency=10)
    expected = {0: 0, 9: 0, 10: 0.9, 19: 0.9, 20: 0, 29: 0, 30: 0.9, 39: 0.9, 40: 0, 49: 0}
    expected.update({50: 0.9, 51: 0.9})
    for step, value in expected.items():
        assert schedules.iht(step, **kw) == value, step


def test_iht_dense_phases_use_the_initial_sparsity():
    assert schedules.iht(25, 0.9, 10, 50, initial_sparsity=0.3, frequency=10) == 0.3


def test_adaptive_rate_follows_the_generalisation_loss():
    kw = dict(final_sparsity=0.9, begin_step=0, end_step=100, frequency=10, current_sparsity=0.5)
    # GL = 0: the full rate of 0.5 removes half of the remaining density 0.5
    assert schedules.adaptive(10, generalization_loss=0.0, **kw) == pytest.approx(0.75)
    # half the tolerance: half the rate
    assert schedules.adaptive(10, generalization_loss=2.5, **kw) == pytest.approx(1 - 0.5 * 0.75)
    # at or beyond the tolerance: no pruning
    assert schedules.adaptive(10, generalization_loss=5.0, **kw) == 0.5
    assert schedules.adaptive(10, generalization_loss=50.0, **kw) == 0.5
    # between update steps the value holds; never beyond the target; end forces it
    assert schedules.adaptive(15, **kw) == 0.5
    assert schedules.adaptive(10, **{**kw, "current_sparsity": 0.85}) == 0.9
    assert schedules.adaptive(100, generalization_loss=50.0, **kw) == 0.9


def test_prechelt_generalisation_loss():
    assert schedules.prechelt_gl([2.0, 1.0, 1.1]) == pytest.approx(10.0)
    assert schedules.prechelt_gl([2.0, 1.0]) == 0.0  # still improving
    assert schedules.prechelt_gl([]) == 0.0
    assert schedules.prechelt_gl([math.nan, math.nan]) == 0.0  # no validation data


@pytest.mark.parametrize("name", ["iterative", "iht", "dsd", "adaptive"])
def test_bad_arguments_fail_clearly(name):
    fn = registry.get(name, "schedule")
    with pytest.raises(ValueError, match="sparsity must be in"):
        fn(0, 1.2, 0, 10)
    with pytest.raises(ValueError, match="end_step"):
        fn(0, 0.5, 10, 5)
    with pytest.raises(ValueError, match="frequency"):
        fn(0, 0.5, 0, 10, frequency=0)


def test_adaptive_bad_options():
    with pytest.raises(ValueError, match="max_rate"):
        schedules.adaptive(0, 0.5, 0, 10, max_rate=0)
    with pytest.raises(ValueError, match="tolerance"):
        schedules.adaptive(0, 0.5, 0, 10, tolerance=-1)

"""Schedules: sparsity over training time (survey section 2.4).

Every schedule is a pure function of the step with the same keywords::

    schedule(step, final_sparsity=0.9, begin_step=0, end_step=1000,
             initial_sparsity=0.0, frequency=1) -> sparsity

Before ``begin_step`` the sparsity is ``initial_sparsity``; from ``end_step`` on it is
``final_sparsity``.  In between the ramp is evaluated at the last update step, a multiple
of ``frequency`` after ``begin_step``, so the sparsity is piecewise constant between
pruning events as in gradual magnitude pruning.
"""

from __future__ import annotations

import math

from .patterns import check_sparsity
from .registry import register


def _check(begin_step: int, end_step: int, frequency: int, *sparsities: float) -> None:
    for s in sparsities:
        check_sparsity(s)
    if end_step < begin_step:
        raise ValueError(f"end_step ({end_step}) must not come before begin_step ({begin_step})")
    if frequency < 1:
        raise ValueError(f"frequency must be a positive number of steps, got {frequency}")


def progress(step: int, begin_step: int, end_step: int, frequency: int = 1) -> float:
    """Fraction of the ramp done at ``step``, in [0, 1], quantised to update steps."""
    _check(begin_step, end_step, frequency)
    if step < begin_step:
        return 0.0
    if step >= end_step or end_step == begin_step:
        return 1.0
    last_update = begin_step + ((step - begin_step) // frequency) * frequency
    return (last_update - begin_step) / (end_step - begin_step)


def _ramp(step, final_sparsity, begin_step, end_step, initial_sparsity, frequency, shape):
    _check(begin_step, end_step, frequency, final_sparsity, initial_sparsity)
    if step < begin_step:
        return float(initial_sparsity)
    p = progress(step, begin_step, end_step, frequency)
    return float(initial_sparsity + (final_sparsity - initial_sparsity) * shape(p))


@register("schedule", "one_shot")
def one_shot(
    step: int,
    final_sparsity: float,
    begin_step: int = 0,
    end_step: int | None = None,
    initial_sparsity: float = 0.0,
    frequency: int = 1,
) -> float:
    """One-shot: all of the sparsity at ``begin_step`` (then fine-tune).  ``end_step`` is unused."""
    check_sparsity(final_sparsity)
    check_sparsity(initial_sparsity)
    return float(final_sparsity if step >= begin_step else initial_sparsity)


@register("schedule", "linear")
def linear(step, final_sparsity, begin_step=0, end_step=1, initial_sparsity=0.0, frequency=1):
    """Linear ramp: s_i + (s_f - s_i) * p, with p the progress in [0, 1]."""
    return _ramp(
        step, final_sparsity, begin_step, end_step, initial_sparsity, frequency, lambda p: p
    )


@register("schedule", "cubic")
def cubic(step, final_sparsity, begin_step=0, end_step=1, initial_sparsity=0.0, frequency=1):
    """Cubic (Zhu & Gupta 2017): s_t = s_f + (s_i - s_f) * (1 - p)^3.

    Prunes fast while many redundant weights remain and slowly near the end.
    """
    return _ramp(
        step,
        final_sparsity,
        begin_step,
        end_step,
        initial_sparsity,
        frequency,
        lambda p: 1 - (1 - p) ** 3,
    )


@register("schedule", "cosine")
def cosine(step, final_sparsity, begin_step=0, end_step=1, initial_sparsity=0.0, frequency=1):
    """Cosine ramp: s_i + (s_f - s_i) * (1 - cos(pi * p)) / 2."""
    return _ramp(
        step,
        final_sparsity,
        begin_step,
        end_step,
        initial_sparsity,
        frequency,
        lambda p: (1 - math.cos(math.pi * p)) / 2,
    )


@register("schedule", "exponential")
def exponential(step, final_sparsity, begin_step=0, end_step=1, initial_sparsity=0.0, frequency=1):
    """Exponential ramp: the *density* decays geometrically, d(p) = d_i * (d_f / d_i)^p.

    Each equal slice of time removes the same fraction of the remaining weights, like
    iterative pruning at a constant rate per round.
    """
    _check(begin_step, end_step, frequency, final_sparsity, initial_sparsity)
    if step < begin_step:
        return float(initial_sparsity)
    d_i, d_f = 1 - initial_sparsity, 1 - final_sparsity
    p = progress(step, begin_step, end_step, frequency)
    return float(1 - d_i * (d_f / d_i) ** p)

"""Schedules: sparsity over training time (survey section 2.4).

Every schedule is a pure function of the step with the same keywords::

    schedule(step, final_sparsity=0.9, begin_step=0, end_step=1000,
             initial_sparsity=0.0, frequency=1) -> sparsity

Before ``begin_step`` the sparsity is ``initial_sparsity``; from ``end_step`` on it is
``final_sparsity``.  In between the ramp is evaluated at the last update step, a multiple
of ``frequency`` after ``begin_step``, so the sparsity is piecewise constant between
pruning events as in gradual magnitude pruning.

Three schedules bend these rules on purpose: ``iht`` goes down in its dense phases (its
``frequency`` is the phase length), ``dsd`` ends dense, and ``adaptive`` also reads the
sparsity reached so far and the generalisation loss (``current_sparsity``,
``generalization_loss``).  :class:`sparsity_lab.scheduled.ScheduledPruning` runs any of them
with any criterion and pattern.
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


def geometric(initial_sparsity: float, final_sparsity: float, fraction: float) -> float:
    """The sparsity a fraction of the way along a geometric decay of the *density*:
    ``1 - d_i (d_f / d_i)^fraction``, so equal fractions remove equal shares of what is left
    (``exponential``, ``iterative`` and the steps of iterative criteria)."""
    d_i, d_f = 1 - initial_sparsity, 1 - final_sparsity
    return 1 - d_i * (d_f / d_i) ** fraction


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


@register("schedule", "one_shot", section="2.4.1")
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


@register("schedule", "linear", section="2.4.2")
def linear(step, final_sparsity, begin_step=0, end_step=1, initial_sparsity=0.0, frequency=1):
    """Linear ramp: s_i + (s_f - s_i) * p, with p the progress in [0, 1]."""
    return _ramp(
        step, final_sparsity, begin_step, end_step, initial_sparsity, frequency, lambda p: p
    )


@register("schedule", "cubic", section="2.4.2")
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


@register("schedule", "cosine", section="2.4.2")
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


@register("schedule", "exponential", section="2.4.2")
def exponential(step, final_sparsity, begin_step=0, end_step=1, initial_sparsity=0.0, frequency=1):
    """Exponential ramp: the *density* decays geometrically, d(p) = d_i * (d_f / d_i)^p.

    Each equal slice of time removes the same fraction of the remaining weights, like
    iterative pruning at a constant rate per round.
    """
    _check(begin_step, end_step, frequency, final_sparsity, initial_sparsity)
    if step < begin_step:
        return float(initial_sparsity)
    p = progress(step, begin_step, end_step, frequency)
    return float(geometric(initial_sparsity, final_sparsity, p))


@register("schedule", "iterative", section="2.4.2")
def iterative(
    step: int,
    final_sparsity: float,
    begin_step: int = 0,
    end_step: int = 1,
    initial_sparsity: float = 0.0,
    frequency: int = 1,
) -> float:
    """Iterative pruning (Han et al. 2015): prune-retrain rounds, each removing the same share.

    Rounds happen at ``begin_step + k * frequency`` for ``k = 0 .. K-1`` with
    ``K = max(1, ceil((end_step - begin_step) / frequency))``; after round ``k + 1`` the
    density is ``d_i * (d_f / d_i)^((k + 1) / K)``, so every round removes the same fraction
    of the weights still alive, as in lottery-ticket rounds.  Unlike ``exponential`` the
    first round prunes at ``begin_step`` itself and the retraining follows it; with
    ``end_step == begin_step`` it is ``one_shot``.
    """
    _check(begin_step, end_step, frequency, final_sparsity, initial_sparsity)
    if step < begin_step:
        return float(initial_sparsity)
    rounds = rounds_of(begin_step, end_step, frequency)
    done = min(rounds, (step - begin_step) // frequency + 1)
    return float(geometric(initial_sparsity, final_sparsity, done / rounds))


def rounds_of(begin_step: int, end_step: int, frequency: int) -> int:
    """Number of pruning rounds of :func:`iterative` between ``begin_step`` and ``end_step``."""
    _check(begin_step, end_step, frequency)
    return max(1, math.ceil((end_step - begin_step) / frequency))


@register("schedule", "iht", section="2.4.2")
def iht(
    step: int,
    final_sparsity: float,
    begin_step: int = 0,
    end_step: int = 1,
    initial_sparsity: float = 0.0,
    frequency: int = 1,
) -> float:
    """Iterative hard thresholding (Jin et al. 2016): sparse and dense phases take turns.

    Dense (``initial_sparsity``) before ``begin_step``; then phases of ``frequency`` steps,
    sparse first: ``final_sparsity`` when ``(step - begin_step) // frequency`` is even and
    ``initial_sparsity`` when it is odd; sparse again from ``end_step`` on.  Each sparse
    phase thresholds the weights afresh, and each dense phase lets the pruned weights
    return, starting from zero.
    """
    _check(begin_step, end_step, frequency, final_sparsity, initial_sparsity)
    if step < begin_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(final_sparsity)
    sparse_phase = ((step - begin_step) // frequency) % 2 == 0
    return float(final_sparsity if sparse_phase else initial_sparsity)


@register("schedule", "dsd", section="2.4.2")
def dsd(
    step: int,
    final_sparsity: float,
    begin_step: int = 0,
    end_step: int = 1,
    initial_sparsity: float = 0.0,
    frequency: int = 1,
) -> float:
    """Dense-sparse-dense (Han et al. 2017): dense, then sparse on [begin, end), then dense.

    The one schedule that ends dense: the sparse phase regularises, and the final dense
    phase re-grows the pruned weights from zero.  ``frequency`` is unused.
    """
    _check(begin_step, end_step, frequency, final_sparsity, initial_sparsity)
    sparse_phase = begin_step <= step < end_step
    return float(final_sparsity if sparse_phase else initial_sparsity)


#: Prechelt's generalisation loss, in percent, at which :func:`adaptive` stops pruning.
ADAPTIVE_TOLERANCE = 5.0


def prechelt_gl(val_losses: list[float]) -> float:
    """Prechelt's generalisation loss GL = 100 * (E_val / E_opt - 1), in percent.

    ``E_val`` is the latest validation loss and ``E_opt`` the lowest so far; GL is 0 while
    the validation loss keeps improving and grows as pruning (or overfitting) hurts it.
    """
    finite = [v for v in val_losses if v == v]  # drop NaN (no validation data)
    if not finite:
        return 0.0
    best = min(finite)
    return 100.0 * (finite[-1] / best - 1.0) if best > 0 else 0.0


@register("schedule", "adaptive", section="2.4.2")
def adaptive(
    step: int,
    final_sparsity: float,
    begin_step: int = 0,
    end_step: int = 1,
    initial_sparsity: float = 0.0,
    frequency: int = 1,
    *,
    current_sparsity: float | None = None,
    generalization_loss: float = 0.0,
    max_rate: float = 0.5,
    tolerance: float = ADAPTIVE_TOLERANCE,
) -> float:
    """Adaptive (after Prechelt 1997): the pruning rate follows the generalisation loss.

    At each update step (``begin_step + k * frequency``) it removes the fraction
    ``r = max_rate * max(0, 1 - GL / tolerance)`` of the weights still alive, where GL is
    the generalisation loss (:func:`prechelt_gl`): prune hard while the validation
    loss holds, pause while it suffers.  The result never exceeds ``final_sparsity``, and
    ``end_step`` forces it so a run always ends at its target.  ``current_sparsity`` is the
    sparsity reached so far (default ``initial_sparsity``); between updates it is returned
    unchanged.  The linear rate is this library's simple reading of Prechelt's lprune.
    """
    _check(begin_step, end_step, frequency, final_sparsity, initial_sparsity)
    if not 0 < max_rate <= 1:
        raise ValueError(f"max_rate must be in (0, 1], got {max_rate}")
    if tolerance <= 0:
        raise ValueError(f"tolerance must be a positive generalisation loss in %, got {tolerance}")
    current = initial_sparsity if current_sparsity is None else current_sparsity
    check_sparsity(current)
    if step < begin_step:
        return float(initial_sparsity)
    if step >= end_step:
        return float(final_sparsity)
    if (step - begin_step) % frequency:
        return float(current)
    rate = max_rate * max(0.0, 1.0 - generalization_loss / tolerance)
    return float(min(final_sparsity, 1 - (1 - current) * (1 - rate)))

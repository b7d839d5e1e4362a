"""Statistics that fit the questions the notebooks ask: intervals over seeds and paired
differences.

Two methods run with the same seed share their data split, their dense model and their
batch order, so most of the seed-to-seed spread cancels in their difference.  Comparing
their two unpaired intervals throws that away: the question "is A better than B?" is
answered by the interval of the per-seed differences ``A - B`` (a paired t-interval), and
"no clear difference" is the honest answer when that interval covers 0.

Accuracies and sparsities live in [0, 1]; a t-interval of three seeds can run past either
end, so :func:`summarize` clips intervals of such metrics to their range.

Example::

    table = summarize(df, by=["method", "sparsity"], metric="test_accuracy")
    paired(df, "method", "snip", "random", metric="test_accuracy", by=["sparsity"])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as _scipy_stats

from . import flags as flags_mod

#: Metric names whose values are fractions: their intervals are clipped to [0, 1].
FRACTION_SUFFIXES = ("accuracy", "sparsity", "density")

#: The verdicts of :func:`paired`.
BETTER, WORSE, NO_DIFFERENCE, ONE_SEED = "better", "worse", "no clear difference", "one seed"
#: Every pair differs by the same nonzero amount: the spread, and so the interval, is
#: unknown (common with two seeds on a small test set, where accuracies move in steps).
NO_SPREAD = "no spread"
#: Spreads below this are rounding: differences computed in floating point that should be
#: equal (0.9 - 0.8 and 0.8 - 0.7) differ by about 1e-16.
SPREAD_TOLERANCE = 1e-9


#: Metric names for which lower is better: a negative difference is an improvement.
LOWER_IS_BETTER = ("loss", "perplexity", "error", "ece", "seconds", "flops", "bytes")
#: Metric names that are neither better nor worse when higher (diagnostics): a difference
#: whose interval excludes 0 is called "higher" or "lower".
DESCRIPTIVE = ("uncertainty", "disagreement", "interdependence")
HIGHER, LOWER = "higher", "lower"
#: The column holding the sanity flags of a metric's stage, where it is not ``"flags"``
#: (the flags of the final model): accuracy right after pruning has its own.
STAGE_FLAGS = {"pruned_accuracy": "pruned_flags"}


def bounds_for(metric: str) -> tuple[float, float] | None:
    """``(0, 1)`` for a metric whose name ends in accuracy, sparsity or density, else None."""
    return (0.0, 1.0) if metric.endswith(FRACTION_SUFFIXES) else None


def higher_is_better(metric: str) -> bool:
    """False for losses, perplexities, errors, times and costs (by name), else True."""
    return not any(word in metric for word in LOWER_IS_BETTER)


def t_half_width(std: float, n: int, confidence: float = 0.95) -> float:
    """Half-width ``t_{(1+c)/2, n-1} * std / sqrt(n)`` of a Student-t interval (NaN if n < 2)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n < 2:
        return math.nan
    return float(_scipy_stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n))


def mean_interval(
    values: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
) -> dict[str, float]:
    """``{"mean", "std", "n", "ci_low", "ci_high"}`` of ``values`` (NaNs dropped).

    ``bounds`` clips the interval (not the mean) to a range, e.g. ``(0, 1)`` for accuracy.
    One value gives a NaN interval: one run says nothing about the spread.
    """
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    n = len(array)
    mean = float(array.mean()) if n else math.nan
    std = float(array.std(ddof=1)) if n > 1 else math.nan
    half = t_half_width(std, n, confidence)
    low, high = mean - half, mean + half
    if bounds is not None and n > 1:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"mean": mean, "std": std, "n": n, "ci_low": low, "ci_high": high}


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] | str,
    metric: str,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None | str = "auto",
) -> pd.DataFrame:
    """Mean, standard deviation, count and Student-t confidence interval of ``metric``.

    One row per group of ``by`` (in order of first appearance), columns
    ``by + [mean, std, n, ci_low, ci_high]`` with ``mean ± t_{(1+c)/2, n-1} · std / √n``.
    A group with one value gets a NaN interval.  ``bounds="auto"`` clips the interval to
    [0, 1] for fractions (:func:`bounds_for`); pass a pair, or None for no clipping.
    """
    by = [by] if isinstance(by, str) else list(by)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    missing = [c for c in [*by, metric] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the DataFrame; it has {list(df.columns)}")
    if bounds == "auto":
        bounds = bounds_for(metric)
    # dropna=False keeps groups whose key is None/NaN (e.g. lr_schedule=None).
    groups = df.groupby(by, sort=False, dropna=False)[metric] if by else [((), df[metric])]
    rows = []
    for key, values in groups:
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {**dict(zip(by, key, strict=True)), **mean_interval(values, confidence, bounds)}
        )
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "n", "ci_low", "ci_high"])


def paired(
    df: pd.DataFrame,
    column: str,
    treatment: object,
    baseline: object,
    *,
    metric: str,
    by: Sequence[str] | str = (),
    pair_on: Sequence[str] | str = "seed",
    confidence: float = 0.95,
    higher_better: bool | None = None,
    flags: str | None = "auto",
) -> pd.DataFrame:
    """Paired differences ``treatment - baseline`` of ``metric``, matched on ``pair_on``.

    ``df`` holds rows of both arms: ``df[column] == treatment`` and ``== baseline``.  Rows
    are matched on ``by`` and ``pair_on`` (the seed: same split, same dense model, same
    batch order).  Returns one row per group of ``by``: ``mean_diff``, ``std``, ``n`` (the
    number of pairs), ``ci_low``, ``ci_high`` (a paired Student-t interval) and
    ``verdict``: ``"better"`` or ``"worse"`` when the interval excludes 0 (``"higher"`` or
    ``"lower"`` for diagnostics such as uncertainty, see :data:`DESCRIPTIVE`), ``"no
    difference"`` when it covers 0, ``"one seed"`` when there is a single pair and ``"no
    spread"`` when every pair differs by the same nonzero amount (see :func:`verdict_of`).
    "Better" follows ``higher_better``, by default :func:`higher_is_better` of the metric's
    name (a lower perplexity is better).  A difference of two fractions lies in [-1, 1], so
    for those metrics the interval is clipped there.

    ``flagged`` names the arms whose runs raised sanity flags (at chance level, a layer
    emptied...), with how many and which, or is ``""``: a difference to a collapsed run is
    not a difference between methods, and :func:`describe` says so beside the numbers.  The
    flags are read from ``flags`` (``"auto"``: the metric's stage column of
    :data:`STAGE_FLAGS`, else ``"flags"``; ``None`` or an absent column: none).
    """
    by = [by] if isinstance(by, str) else list(by)
    pair_on = [pair_on] if isinstance(pair_on, str) else list(pair_on)
    missing = [c for c in [column, metric, *by, *pair_on] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the DataFrame; it has {list(df.columns)}")
    keys = [*by, *pair_on]
    flag_column = STAGE_FLAGS.get(metric, "flags") if flags == "auto" else flags
    if flag_column not in df.columns:
        flag_column = None
    arms = []
    for value, name in ((treatment, "treatment"), (baseline, "baseline")):
        arm = df[df[column] == value]
        if arm.empty:
            present = list(dict.fromkeys(df[column]))
            raise ValueError(f"no rows with {column} == {value!r}; the column holds {present}")
        if arm.duplicated(keys).any():
            raise ValueError(
                f"several rows with {column} == {value!r} share {keys}; add the column that "
                "tells them apart to `by`"
            )
        kept = [*keys, metric, *([flag_column] if flag_column else [])]
        arms.append(arm[kept].rename(columns={metric: name, flag_column: f"{name}_flags"}))
    merged = arms[0].merge(arms[1], on=keys, how="inner")
    if merged.empty:
        raise ValueError(f"no {pair_on} value is shared by {treatment!r} and {baseline!r}")
    merged["diff"] = merged["treatment"] - merged["baseline"]
    higher_better = higher_is_better(metric) if higher_better is None else higher_better
    bounds = (-1.0, 1.0) if bounds_for(metric) else None
    groups = merged.groupby(by, sort=False, dropna=False) if by else [((), merged)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        diffs = group["diff"]
        summary = mean_interval(diffs, confidence, bounds)
        verdict = verdict_of(summary["ci_low"], summary["ci_high"], summary["n"], summary["std"])
        if any(word in metric for word in DESCRIPTIVE):
            verdict = {BETTER: HIGHER, WORSE: LOWER}.get(verdict, verdict)
        elif not higher_better:
            verdict = {BETTER: WORSE, WORSE: BETTER}.get(verdict, verdict)
        rows.append(
            {
                **dict(zip(by, key, strict=True)),
                "mean_diff": summary["mean"],
                "std": summary["std"],
                "n": summary["n"],
                "ci_low": summary["ci_low"],
                "ci_high": summary["ci_high"],
                "verdict": verdict,
                "flagged": _flagged(group, {"treatment": treatment, "baseline": baseline})
                if flag_column
                else "",
            }
        )
    return pd.DataFrame(
        rows, columns=[*by, "mean_diff", "std", "n", "ci_low", "ci_high", "verdict", "flagged"]
    )


def _flagged(group: pd.DataFrame, arms: Mapping[str, object]) -> str:
    """Which arms of these pairs raised flags: ``"`random` flagged in 3 of 3 runs: at
    chance level"``, the arms joined by ``"; "``, or ``""``."""
    parts = []
    for name, value in arms.items():
        texts = [t for t in group[f"{name}_flags"].fillna("").astype(str) if t]
        if texts:
            found = flags_mod.kinds(texts, len(group)).replace(flags_mod.SEPARATOR, ", ")
            parts.append(f"`{value}` flagged in {len(texts)} of {len(group)} runs: {found}")
    return "; ".join(parts)


def paired_table(
    df: pd.DataFrame,
    column: str,
    pairs: Sequence[tuple[object, object]],
    metrics: Mapping[str, str],
    *,
    by: Sequence[str] | str = (),
    pair_on: Sequence[str] | str = "seed",
) -> pd.DataFrame:
    """:func:`paired` for several (treatment, baseline) pairs and metrics, in one table.

    ``metrics`` maps a metric column to the name of its stage (``{"test_accuracy":
    "fine-tuned (test)"}``); each row gains ``comparison`` (``"a - b"``) and ``stage``.
    """
    return pd.concat(
        [
            paired(df, column, a, b, metric=metric, by=by, pair_on=pair_on).assign(
                comparison=f"{a} - {b}", stage=stage
            )
            for a, b in pairs
            for metric, stage in metrics.items()
        ],
        ignore_index=True,
    )


def against_baseline(
    df: pd.DataFrame,
    column: str,
    baseline: object,
    *,
    metric: str = "test_accuracy",
    by: Sequence[str] | str = (),
) -> pd.DataFrame:
    """:func:`paired` differences of every other arm of ``column`` minus ``baseline``, one
    table: ``column``, ``by`` and :func:`paired`'s columns, ``flagged`` included, so that
    :func:`describe` still names a flagged arm (arms in their order of appearance)."""
    by = [by] if isinstance(by, str) else list(by)
    arms = [a for a in dict.fromkeys(df[column]) if a != baseline]
    if not arms:
        raise ValueError(f"{column} holds only the baseline {baseline!r}: nothing to compare")
    return pd.concat(
        [paired(df, column, a, baseline, metric=metric, by=by).assign(**{column: a}) for a in arms],
        ignore_index=True,
    )[[column, *by, "mean_diff", "std", "ci_low", "ci_high", "n", "verdict", "flagged"]]


def verdict_of(ci_low: float, ci_high: float, n: int, std: float | None = None) -> str:
    """``"better"``/``"worse"`` when the interval excludes 0, else ``"no clear difference"``.

    A single pair gives ``"one seed"``; pairs that all differ by the same nonzero amount
    give ``"no spread"``: a zero-width interval is not evidence of a difference.
    """
    if n < 2:
        return ONE_SEED
    if std is not None and std <= SPREAD_TOLERANCE:
        return NO_DIFFERENCE if abs(ci_low) <= SPREAD_TOLERANCE else NO_SPREAD
    if ci_low > 0:
        return BETTER
    if ci_high < 0:
        return WORSE
    return NO_DIFFERENCE


def describe(
    row: pd.Series | dict,
    *,
    scale: float = 100.0,
    unit: str = " points",
    words: tuple[str, str] | None = None,
) -> str:
    """A row of :func:`paired` (a Series, a dict or an ``itertuples`` row) in words:
    ``"+1.7 points [+0.7, +2.7], 3 seeds: better"``,
    followed by the flagged arms when there are any (``"... better (`random` flagged in 3
    of 3 runs: at chance level)"``).

    ``words`` replaces the verdict of an interval that excludes 0 by what its sign means
    for a quantity that is neither better nor worse (``("narrows", "widens")`` for the
    change of a gap); an interval that covers 0 stays "no clear difference".
    """
    if hasattr(row, "_asdict"):  # a row of DataFrame.itertuples()
        row = row._asdict()
    if words is not None and row["verdict"] in (BETTER, WORSE, HIGHER, LOWER):
        row = {**dict(row), "verdict": words[0] if row["mean_diff"] < 0 else words[1]}
    n = int(row["n"])
    mean = row["mean_diff"] * scale
    if n < 2:
        text = f"{mean:+.1f}{unit} (one seed, no interval)"
    elif row["verdict"] == NO_SPREAD:
        text = f"{mean:+.1f}{unit} on each of {n} seeds (no spread, no interval)"
    else:
        low, high = row["ci_low"] * scale, row["ci_high"] * scale
        # a bound that rounds to 0.0 would show an interval touching 0 beside "better"
        digits = 2 if any(b != 0 and round(b, 1) == 0 for b in (low, high)) else 1
        text = (
            f"{mean:+.{digits}f}{unit} [{low:+.{digits}f}, {high:+.{digits}f}], {n} seeds: "
            f"{row['verdict']}"
        )
    flagged = row.get("flagged", "")
    return f"{text} ({flagged})" if isinstance(flagged, str) and flagged else text


def same_on_every_seed(row: pd.Series | Mapping[str, Any]) -> bool:
    """True when every paired difference of a row of :func:`paired` is exactly 0 (more
    than one pair, no spread, a mean of 0): its interval of zero width around 0 says only
    that the two arms gave the same result on each seed."""
    return bool(
        row["n"] > 1
        and row["std"] <= SPREAD_TOLERANCE
        and abs(row["mean_diff"]) <= SPREAD_TOLERANCE
    )


def difference_row(diffs: Sequence[float] | np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Paired differences in hand (one per seed, each arm minus its own baseline) as a row
    of :func:`paired`: ``mean_diff``, ``std``, ``n``, ``ci_low``, ``ci_high`` and
    ``verdict``, so that :func:`describe` can say it.

    For differences that are not two columns of one table (a label's accuracy change,
    pruned minus dense, seed by seed).  The interval is Student-t, unclipped; the verdict
    is :func:`verdict_of` (better when the interval is above 0).
    """
    row = mean_interval(diffs, confidence)
    verdict = verdict_of(row["ci_low"], row["ci_high"], row["n"], row["std"])
    return {**row, "mean_diff": row["mean"], "verdict": verdict}


def stays_above(curve: pd.Series, threshold: float = 1.0) -> Any:
    """The lowest index of ``curve`` (a Series indexed by a level, e.g. the sparsity) from
    which it stays above ``threshold`` at that and every higher level, or None when its
    highest level is not above it: where a speed-up (its mean minus one standard deviation,
    say) breaks even for good, not at a lucky point in between."""
    above = [s for s in curve.index if (curve[curve.index >= s] > threshold).all()]
    return min(above) if above else None

"""Sentences from results: the words the notebooks compute their prose with.

A notebook's text about its own measurements is computed, so that it cannot drift from the
numbers: each helper here turns a result (a row of :func:`sparsity_lab.stats.paired`,
per-seed differences, a list of levels, verdicts of :mod:`sparsity_lab.claims`) into words
for a sentence.  The notebooks display the sentences with :func:`sparsity_lab.nb.md`.

Counts come with their noun in the right number (:func:`plural`), lists are joined with
"and" (:func:`and_join`), and a difference is said with its interval and verdict
(:func:`sparsity_lab.stats.describe`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .stats import (
    BETTER,
    NO_DIFFERENCE,
    NO_SPREAD,
    WORSE,
    describe,
    higher_is_better,
    paired,
    same_on_every_seed,
)

if TYPE_CHECKING:
    import pandas as pd

    from .claims import Verdict

__all__ = [
    "and_join",
    "at_levels",
    "below_span",
    "below_text",
    "compare_onsets",
    "expectation",
    "in_how_many",
    "lower_text",
    "margin_text",
    "mean_pm",
    "move_shares",
    "paired_text",
    "per_seed_text",
    "percents",
    "plural",
    "plural_noun",
    "ranking_text",
    "simple_fraction",
    "span",
    "spread_text",
    "step_changes",
    "steps_text",
    "verdict_summary",
    "word_legend",
]


# ------------------------------------------------------------------- counts, lists, levels
def and_join(items: Iterable[Any]) -> str:
    """Items in words for a computed sentence: ``"a"``, ``"a and b"``, ``"a, b and c"``."""
    texts = [str(item) for item in items]
    if not texts:
        raise ValueError("and_join needs at least one item")
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " and " + texts[-1]


# Nouns whose "ch" sounds like "k": an "s" makes their plural ("epochs", not "epoches").
_HARD_CH = ("epoch", "stomach", "monarch", "patriarch", "tech")


def plural_noun(noun: str) -> str:
    """The plural of a noun: ``"sparsities"``, ``"batches"``, ``"seeds"``, ``"days"``,
    ``"epochs"``."""
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return noun[:-1] + "ies"
    if noun.endswith(("s", "x", "ch", "sh")) and not noun.endswith(_HARD_CH):
        return noun + "es"
    return noun + "s"


def plural(n: int, word: str) -> str:
    """A count with its noun, ``"1 epoch"``, ``"3 epochs"``, ``"2 batches"`` (the noun in
    the plural, :func:`plural_noun`, unless ``n == 1``)."""
    return f"{n} {word if n == 1 else plural_noun(word)}"


def percents(values: Iterable[float], *, empty: str | None = None) -> str:
    """Fractions as whole percentages in words for a sentence, ``"50%, 70% and 90%"``.

    ``empty`` is said when there are no values (None: no values raise a ValueError).
    """
    texts = [f"{v:.0%}" for v in values]
    if not texts and empty is not None:
        return empty
    return and_join(texts)


def at_levels(values: Sequence[Any], noun: str = "sparsity", fmt: str = "{:.0%}") -> str:
    """Levels with their noun, in the plural for more than one: ``"at sparsity 99%"``,
    ``"at sparsities 95% and 99%"``, ``"at batches 1 and 64"`` (``noun="batch", fmt="{}"``)."""
    name = noun if len(values) == 1 else plural_noun(noun)
    return f"at {name} {and_join(fmt.format(v) for v in values)}"


def in_how_many(k: int, n: int, noun: str = "seed") -> str:
    """In how many of ``n`` things (seeds) something held: ``"in all seeds"`` (``"in the
    one seed"`` when ``n == 1``), ``"in 2 of the 3 seeds"`` or ``"in no seed"``."""
    if not 0 <= k <= n:
        raise ValueError(f"k must lie between 0 and n = {n}, got {k}")
    if k == n:
        return f"in all {plural_noun(noun)}" if n > 1 else f"in the one {noun}"
    return f"in {k} of the {n} {plural_noun(noun)}" if k else f"in no {noun}"


def mean_pm(values: Iterable[float], fmt: str = ".2f", unit: str = "") -> str:
    """``"1.02 ± 0.03x"``: the mean ± the sample standard deviation of ``values`` (0 for a
    single value, which has no spread), each in format ``fmt``, then ``unit``."""
    import pandas as pd  # loaded by every notebook anyway; not by ``import sparsity_lab``

    series = pd.Series(values, dtype=float)
    std = series.std() if len(series) > 1 else 0.0
    return f"{series.mean():{fmt}} ± {std:{fmt}}{unit}"


def span(low: float, high: float, fmt: str = ".2g", unit: str = "") -> str:
    """A range of values for a sentence, ``"low to high"`` in format ``fmt`` (two significant
    digits by default), or one number when both ends read the same in it.  ``unit`` follows
    each number (``"0.95x to 1.10x"``)."""
    a, b = format(low, fmt) + unit, format(high, fmt) + unit
    return a if a == b else f"{a} to {b}"


def below_text(gap: float, fmt: str = ".1f", unit: str = "points") -> str:
    """A shortfall from a reference in words, for a sentence that names the reference next:
    ``"15.4 points below"`` for a gap (reference minus value) of 15.4, ``"0.3 points
    above"`` for -0.3, a value that beat its reference.  ``fmt`` formats the gap's size."""
    return f"{gap:{fmt}} {unit} below" if gap >= 0 else f"{-gap:{fmt}} {unit} above"


def below_span(gaps: Iterable[float], fmt: str = ".1f", unit: str = "points") -> str:
    """Several shortfalls from a reference (:func:`below_text`; e.g. pruned models' accuracy
    below their dense parents at each sparsity) as one range: ``"15.4 to 52.3 points
    below"`` when no value beat the reference, else ``"between 0.3 points above and 2.0
    points below"``; a single gap is its :func:`below_text`."""
    gaps = [float(gap) for gap in gaps]
    if not gaps:
        raise ValueError("below_span needs at least one gap")
    if len(gaps) == 1:
        return below_text(gaps[0], fmt, unit)
    low, high = min(gaps), max(gaps)
    if low >= 0:
        return f"{low:{fmt}} to {high:{fmt}} {unit} below"
    return f"between {below_text(low, fmt, unit)} and {below_text(high, fmt, unit)}"


def simple_fraction(value: float, max_denominator: int = 10) -> str:
    """A ratio for a sentence: a simple fraction when it is one (``"1/3"`` for 0.001 / 0.003,
    denominators up to ``max_denominator``), else two significant digits (``"0.37"``)."""
    fraction = Fraction(value).limit_denominator(max_denominator)
    return str(fraction) if math.isclose(fraction, value) else f"{value:.2g}"


def compare_onsets(a: float | None, b: float | None) -> str:
    """Where onset ``a`` (a level such as a break-even sparsity, from
    :func:`sparsity_lab.stats.stays_above`; None: never) lies against onset ``b``:
    ``"earlier"`` (``a`` lower, or ``b`` never), ``"same"``, ``"later"`` (``a`` higher, or
    ``a`` never while ``b`` is reached) or ``"neither"`` (both never)."""
    if a is None and b is None:
        return "neither"
    if a is not None and (b is None or a < b):
        return "earlier"
    return "same" if a == b else "later"


def word_legend(text: str, meanings: Mapping[str, str], *, after: str = "") -> str:
    """What the words of ``meanings`` that ``text`` uses mean, as one sentence to show below
    a computed paragraph: ``'"Narrows" means the gap closes; "no clear difference" means
    the seeds do not tell.'`` (first letter capitalised, in the order of ``meanings``).

    A word counts as used where ``after + word`` occurs in ``text``; ``after="seeds: "``
    finds the verdicts of :func:`sparsity_lab.stats.describe` (``"..., 3 seeds: narrows"``)
    and not the same word elsewhere in the prose.  Returns ``""`` when no word is used, so
    a notebook shows the legend only when there is something to explain.
    """
    used = [word for word in meanings if f"{after}{word}" in text]
    if not used:
        return ""
    legend = "; ".join(f'"{word}" means {meanings[word]}' for word in used) + "."
    return legend[:1] + legend[1].upper() + legend[2:]


# ------------------------------------------------------------------ paired differences
def paired_text(
    row: pd.Series | Mapping[str, Any], treatment: str, baseline: str, metric: str = "test accuracy"
) -> str:
    """A row of :func:`sparsity_lab.stats.paired` in words for a sentence: ``"a minus b
    +1.0 points [+0.2, +1.8], 3 seeds: better"`` (:func:`~sparsity_lab.stats.describe`), or
    ``"a and b have the same test accuracy on each of 3 seeds"`` when
    :func:`~sparsity_lab.stats.same_on_every_seed` (an interval of zero width around 0 says
    nothing more)."""
    if same_on_every_seed(row):
        return f"{treatment} and {baseline} have the same {metric} on each of {int(row['n'])} seeds"
    return f"{treatment} minus {baseline} {describe(row)}"


def lower_text(row: pd.Series | Mapping[str, Any], digits: int = 2, flags: bool = True) -> str:
    """A row of :func:`sparsity_lab.stats.paired` of a quantity where lower is better
    (perplexity, an output error) in words, in its own units with ``digits`` decimals:
    ``"-0.41 [-0.62, -0.20]: lower"`` ("lower" or "higher" when the interval excludes 0),
    ``"+0.05 (one seed, no interval)"``.  ``flags``: followed by the flagged arms, if any
    (leave them out where the same runs' flags are said already).

    Unlike :func:`~sparsity_lab.stats.describe`, it says no seed count and keeps the
    quantity's own units and decimals."""
    words = {BETTER: "lower", WORSE: "higher"}.get(row["verdict"], row["verdict"])
    mean = f"{row['mean_diff']:+.{digits}f}"
    if row["n"] < 2:
        text = f"{mean} (one seed, no interval)"
    elif row["verdict"] == NO_SPREAD:
        text = f"{mean} on each of {int(row['n'])} seeds (no spread)"
    else:
        text = f"{mean} [{row['ci_low']:+.{digits}f}, {row['ci_high']:+.{digits}f}]: {words}"
    flagged = row.get("flagged", "") if flags else ""
    return f"{text} ({flagged})" if isinstance(flagged, str) and flagged else text


def per_seed_text(diffs: pd.Series, what: str, scale: float = 100.0, unit: str = "points") -> str:
    """Per-seed paired differences (a Series indexed by seed) in words, to say why their
    interval does not exclude 0: ``"Per seed, a minus b: seed 0 +2.0, seed 1 +0.5 points:
    every seed gains, from +0.5 to +2.0 points, too wide a spread for 2 seeds to place the
    interval above 0."``, ``": no seed gains."`` or ``": 2 of 3 seeds gain and seed 1
    does not, so the interval covers 0."``.  ``what`` names the difference."""
    against = [s for s, d in diffs.items() if d <= 0]
    text = (
        f"Per seed, {what}: "
        + ", ".join(f"seed {s} {scale * d:+.1f}" for s, d in diffs.items())
        + f" {unit}"
    )
    if not against:
        return text + (
            f": every seed gains, from {scale * diffs.min():+.1f} to {scale * diffs.max():+.1f} "
            f"{unit}, too wide a spread for {plural(len(diffs), 'seed')} to place the interval "
            "above 0."
        )
    if len(against) == len(diffs):
        return text + ": no seed gains."
    seeds = ("seed " if len(against) == 1 else "seeds ") + ", ".join(str(s) for s in against)
    return text + (
        f": {len(diffs) - len(against)} of {len(diffs)} seeds gain and {seeds} "
        f"{'does' if len(against) == 1 else 'do'} not, so the interval covers 0."
    )


def spread_text(
    diffs: pd.Series,
    baseline: str,
    *,
    what: str = "accuracy",
    scale: float = 100.0,
    unit: str = "points",
) -> str:
    """Why paired per-seed differences (a Series indexed by seed: an arm minus
    ``baseline``) give no interval that settles a claim, in words for a verdict's reason.

    The differences and how many are positive, zero and negative, then what they show:
    ``"The per-seed differences, in points: seed 0 +23.5, seed 1 +19.5 (2 positive): with
    2 seeds, a spread this large (standard deviation 2.8 points) gives an interval that
    reaches below 0."``; ``": all equal, so there is no spread to build an interval
    from."`` (also for a single seed); ``" (2 negative): channel kept at least as much
    accuracy in every seed."`` (for a ``what`` where lower is better,
    :func:`~sparsity_lab.stats.higher_is_better`: ``"channel did no better in any seed
    (its loss was at least as high in each)."``) or ``" (...): the seeds disagree."``.
    Unlike :func:`per_seed_text`, it gives the spread's size, which sets the interval's
    width.
    """
    if len(diffs) == 0:
        raise ValueError("spread_text needs at least one per-seed difference")
    above, below = int((diffs > 0).sum()), int((diffs < 0).sum())
    counts = [(above, "positive"), (len(diffs) - above - below, "zero"), (below, "negative")]
    signs = ", ".join(f"{k} {word}" for k, word in counts if k)
    text = f"The per-seed differences, in {unit}: " + ", ".join(
        f"seed {seed} {scale * d:+.1f}" for seed, d in diffs.items()
    )
    if len(diffs) == 1:
        return text + f" ({signs}): one seed, so there is no spread to build an interval from."
    if diffs.std() <= 1e-9:
        return text + ": all equal, so there is no spread to build an interval from."
    if below == 0:
        return text + (
            f" ({signs}): with {len(diffs)} seeds, a spread this large (standard deviation "
            f"{scale * diffs.std():.1f} {unit}) gives an interval that reaches below 0."
        )
    if above == 0:
        if higher_is_better(what):
            return text + f" ({signs}): {baseline} kept at least as much {what} in every seed."
        return text + (
            f" ({signs}): {baseline} did no better in any seed (its {what} was at least as "
            "high in each)."
        )
    return text + f" ({signs}): the seeds disagree."


def margin_text(
    diffs: Sequence[float],
    row: pd.Series | Mapping[str, Any],
    margin: float,
    *,
    scale: float = 100.0,
    unit: str = "point",
) -> str:
    """Per-seed paired differences (treatment minus baseline, e.g. pruned minus dense) against
    the loss ``margin`` a claim allows, in words for the reason given with its verdict:
    ``"The per-seed differences are -1.2, -1.0 points: the mean (-1.1) is beyond the 1-point
    allowance, 1 seed loses more (-1.2), and the interval's lower end is -2.4."``

    ``row`` is their row of :func:`sparsity_lab.stats.paired` (``mean_diff``, ``ci_low``).
    A seed loses more than the margin only past float noise (1e-9); ``scale`` turns the
    fractions into ``unit``, said in the plural after the numbers.
    """
    values = [f"{scale * d:+.1f}" for d in diffs]
    beyond = [v for v, d in zip(values, diffs, strict=True) if d < -margin - 1e-9]
    verb = "loses" if len(beyond) == 1 else "lose"
    more = f"{plural(len(beyond), 'seed')} {verb} more ({', '.join(beyond)})" if beyond else ""
    side = "within" if row["mean_diff"] >= -margin else "beyond"
    return (
        f"The per-seed differences are {', '.join(values)} {plural_noun(unit)}: the mean "
        f"({scale * row['mean_diff']:+.1f}) is {side} the {scale * margin:.0f}-{unit} allowance, "
        f"{more or 'no seed loses more'}, and the interval's lower end is "
        f"{scale * row['ci_low']:+.1f}."
    )


def move_shares(
    a_move: float,
    b_move: float,
    a: str,
    b: str,
    *,
    what: str = "the lead",
    context: str = "",
    scale: float = 100.0,
    unit: str = "points",
    tolerance: float = 5e-4,
) -> tuple[str, float | None]:
    """Which arm made the change of a difference ``a - b`` between two settings (``what``,
    e.g. magnitude's lead over random from a short to a long fine-tune), in words.

    ``a_move`` and ``b_move`` are each arm's own change; the difference changed by
    ``a_move - b_move``.  Returns the sentence (without its capital and full stop) and
    ``b``'s share of the change, ``-b_move / (a_move - b_move)`` (None when the change is
    under ``tolerance``): ``"magnitude moved -0.3 points and random +0.9{context}: random's
    move accounts for 75% of the change in the lead, magnitude's for 25%"``, or all of it
    to one arm (the other's own move going the other way, or nowhere), or ``", so the lead
    stays where it was"``.  A lead that grows because the other arm fell is not the
    method getting better.
    """
    text = f"{a} moved {scale * a_move:+.1f} {unit} and {b} {scale * b_move:+.1f}{context}"
    change = a_move - b_move
    if abs(change) < tolerance:
        return text + f", so {what} stays where it was", None
    share = -b_move / change
    if 0 < share < 1:
        return text + (
            f": {b}'s move accounts for {share:.0%} of the change in {what}, {a}'s for "
            f"{1 - share:.0%}"
        ), share
    # one arm made all of the change; the other stood still or went the other way
    mover, its_move, other = (b, -b_move, a) if share >= 1 else (a, a_move, b)
    other_way = share > 1 or share < 0
    return text + (
        f": {mover}'s move accounts for all of the change in {what} (its "
        f"{scale * its_move:+.1f} of {what}'s {scale * change:+.1f} {unit}"
        + (f"; {other}'s own move went the other way)" if other_way else ")")
    ), share


def ranking_text(
    df: pd.DataFrame,
    column: str,
    order: Sequence[Any],
    *,
    metric: str = "test_accuracy",
    noun: str = "arms",
) -> str:
    """How far paired per-seed differences settle a ranking by the mean, in words for a
    sentence.

    ``order`` lists arms of ``df`` (values of ``column``, a row per arm and seed), highest
    mean first.  Each neighbouring pair is judged with :func:`sparsity_lab.stats.paired`;
    when none differs clearly, pairs further apart still may.  Returns ``"1 of the 2
    neighbouring pairs differ clearly: a - b +3.0 points [...], 3 seeds: better."`` (``"the
    pair differs clearly: ..."`` for two arms), ``"no two neighbours in this list differ
    clearly (of 2 pairs), although the pair further apart does: a - c is ....  The order is
    only partly settled."`` or ``"no two {noun} in this list differ clearly (of 3 pairs),
    so the list is no ranking."`` (``"(of 1 pair)"`` for two arms): a ranking of means is
    only as firm as the intervals behind it.
    """
    order = list(order)

    def judged(a: Any, b: Any) -> tuple[Any, Any, pd.Series]:
        return a, b, paired(df, column, a, b, metric=metric).iloc[0]

    neighbours = [judged(a, b) for a, b in itertools.pairwise(order)]
    others = [judged(a, b) for i, a in enumerate(order) for b in order[i + 2 :]]
    clear = [(a, b, r) for a, b, r in neighbours if r["verdict"] in (BETTER, WORSE)]
    far = [(a, b, r) for a, b, r in others if r["verdict"] in (BETTER, WORSE)]
    if clear:
        found = "; ".join(f"{a} - {b} {describe(r)}" for a, b, r in clear)
        if len(neighbours) == 1:
            return f"the pair differs clearly: {found}."
        return f"{len(clear)} of the {len(neighbours)} neighbouring pairs differ clearly: {found}."
    if far:
        apart = f"{len(far)} of the {len(others)} pairs" if len(others) > 1 else "the pair"
        found = "; ".join(f"{a} - {b} is {describe(r)}" for a, b, r in far)
        return (
            f"no two neighbours in this list differ clearly (of {len(neighbours)} pairs), "
            f"although {apart} further apart {'do' if len(far) > 1 else 'does'}: {found}.  "
            "The order is only partly settled."
        )
    return (
        f"no two {noun} in this list differ clearly "
        f"(of {plural(len(neighbours) + len(others), 'pair')}), so the list is no ranking."
    )


# ------------------------------------------------------------ expectations over levels
def expectation(
    rows: pd.DataFrame, at: Sequence[Any], relation: str = "greater", fmt: str = "{:.0%}"
) -> str:
    """An expectation checked at several levels (sparsities), in words for a sentence:
    ``"**met** (met at 90%, 95%)"``, ``"**inconclusive** (met at 90%; inconclusive at 98%)"``.

    ``rows`` is a :func:`sparsity_lab.stats.paired` table indexed by the level; the row of
    each level of ``at`` is checked with :func:`sparsity_lab.claims.check` (``relation``).
    The whole is **missed** when a level misses, **met** when every level meets, and
    **inconclusive** otherwise.  The flagged arms of a level follow the levels (``"; at 90%
    `x` flagged in 1 of 3 runs: ..."``): an expectation met by a collapsed run is not met
    by the method.  ``fmt`` formats a level.
    """
    from .claims import CHECK_WORDS, INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, check

    met, missed, unsure = (CHECK_WORDS[k] for k in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE))
    if not at:
        raise ValueError("expectation needs at least one level to check")
    found = {level: check(rows.loc[level], relation) for level in at}
    overall = (
        missed if missed in found.values() else met if set(found.values()) == {met} else unsure
    )
    detail = "; ".join(
        f"{word} at {', '.join(fmt.format(level) for level, v in found.items() if v == word)}"
        for word in (met, unsure, missed)
        if word in found.values()
    )
    caveat = "".join(
        f"; at {fmt.format(level)} {rows.loc[level, 'flagged']}"
        for level in at
        if rows.loc[level, "flagged"]
    )
    return f"**{overall}** ({detail}{caveat})"


def step_changes(
    df: pd.DataFrame,
    column: str,
    treatment: Any,
    baseline: Any,
    *,
    by: str,
    levels: Sequence[Any],
    metric: str = "test_accuracy",
    fmt: str = "{:.0%}",
) -> dict[str, list[str]]:
    """How the paired difference ``treatment - baseline`` of ``metric`` changes from one
    level of ``by`` to the next (a gap that should grow with the sparsity, say).

    The difference is taken per seed; its change between consecutive ``levels`` is judged
    by :func:`sparsity_lab.stats.paired` over the seeds.  Returns the steps sorted by that
    verdict, ``{"better": [...], "worse": [...], "no clear difference": [...], "other":
    [...]}`` ("better": the difference rises), each step in words, ``"50% to 90% (+3.1
    points [+0.4, +5.8], 3 seeds: rises)"`` (``fmt`` formats a level).
    """
    both = df[df[column].isin([treatment, baseline])]
    wide = both.pivot_table(index=[by, "seed"], columns=column, values=metric)
    gap = (wide[treatment] - wide[baseline]).rename("gap").reset_index()
    found: dict[str, list[str]] = {BETTER: [], WORSE: [], NO_DIFFERENCE: [], "other": []}
    for a, b in itertools.pairwise(levels):
        row = paired(gap, by, b, a, metric="gap", flags=None).iloc[0]
        change = describe(row, words=("falls", "rises"))
        text = f"{fmt.format(a)} to {fmt.format(b)} ({change})"
        found[row["verdict"] if row["verdict"] in found else "other"].append(text)
    return found


def steps_text(found: Mapping[str, list[str]], level: str = "sparsity") -> str:
    """The steps of :func:`step_changes` in one sentence: where the difference rises and
    falls clearly, and at how many steps it shows no clear change."""
    rises, falls, other = found[BETTER], found[WORSE], found["other"]
    return (
        f"From one {level} to the next, paired per seed, the difference rises clearly "
        + (f"from {', '.join(rises)}" if rises else "at no step")
        + ", falls clearly "
        + (f"from {', '.join(falls)}" if falls else "at no step")
        + f", and shows no clear change at {plural(len(found[NO_DIFFERENCE]), 'step')}"
        + (f"; no interval from {', '.join(other)}" if other else "")
        + "."
    )


# ------------------------------------------------------------------------------ verdicts
def verdict_summary(verdicts: Sequence[Verdict], notes: Sequence[str] | None = None) -> str:
    """The verdicts of :func:`sparsity_lab.claims.judge` as a notebook's summary, in Markdown.

    One line per verdict, ``"- a against b (setting): **status**, numbers{note}."``, then
    how many verdicts each status has (``"Of 3 verdicts: 2 reproduced, 1 inconclusive."``).
    ``notes`` (one per verdict, ``""`` for none) say what a line adds to the numbers, e.g.
    what else the measurements show.  Shorter than :func:`sparsity_lab.claims.report`,
    which gives each claim's statement and published numbers.
    """
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("verdict_summary needs at least one verdict")
    notes = [""] * len(verdicts) if notes is None else list(notes)
    if len(notes) != len(verdicts):
        raise ValueError(f"{len(notes)} notes for {len(verdicts)} verdicts; give one each")
    lines = [
        f"- {v.claim.treatment} against {v.claim.baseline} ({v.setting}): **{v.status}**, "
        f"{v.numbers()}{note}."
        for v, note in zip(verdicts, notes, strict=True)
    ]
    import pandas as pd  # loaded by every notebook anyway; not by ``import sparsity_lab``

    counts = pd.Series([v.status for v in verdicts]).value_counts()
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    return "\n".join(lines) + f"\n\nOf {plural(len(verdicts), 'verdict')}: {tally}."


def claims_list(verdicts: Sequence[Verdict]) -> str:
    """A notebook summary's bullet on its claim verdicts, in Markdown.

    ``"Of 3 tests of published claims, 2 reproduced, 1 inconclusive (...):"``, then one
    indented line per verdict with the claim's statement, its paper's first author, the
    setting, the status and the paired numbers (and the sanity flags of a flagged arm).
    Where :func:`verdict_summary` names the arms, this names the claims: for summaries that
    gather verdicts from several sections.
    """
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("claims_list needs at least one verdict")
    import pandas as pd  # loaded by every notebook anyway; not by ``import sparsity_lab``

    counts = pd.Series([v.status for v in verdicts]).value_counts()
    lines = [
        f"  - {v.claim.statement} ({v.claim.paper.split(',')[0]}; {v.setting}): "
        f"**{v.status}**, {v.claim.treatment} minus {v.claim.baseline} {v.numbers()}"
        + (f" (sanity flags: {v.flagged})" if v.flagged else "")
        for v in verdicts
    ]
    return (
        f"Of {plural(len(verdicts), 'test')} of published claims, "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + " (the sections above give each with its paper, its numbers and, when it is not "
        "reproduced, the measured setting):\n" + "\n".join(lines)
    )

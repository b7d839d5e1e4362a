"""Sentences from results: each helper's words checked on hand-made results."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from sparsity_lab import claims, stats, words


# ------------------------------------------------------------- counts, lists and levels
def test_and_join_and_plural_write_words():
    assert words.and_join(["50%"]) == "50%"
    assert words.and_join(["a", "b"]) == "a and b"
    assert words.and_join(f"{v:.0%}" for v in (0.5, 0.7, 0.9)) == "50%, 70% and 90%"
    with pytest.raises(ValueError, match="at least one item"):
        words.and_join([])
    assert words.plural(1, "epoch") == "1 epoch"
    assert [words.plural(n, "seed") for n in (0, 2)] == ["0 seeds", "2 seeds"]


def test_plural_puts_the_noun_in_its_plural_form():
    assert words.plural(2, "batch") == "2 batches"
    assert words.plural(3, "sparsity") == "3 sparsities"
    assert words.plural(2, "day") == "2 days"
    assert words.plural(1, "batch") == "1 batch"
    assert words.plural(4, "epoch") == "4 epochs"  # "ch" said as "k": no "es"
    assert words.plural_noun("pass") == "passes"


def test_percents_and_levels_in_words():
    assert words.percents([0.5, 0.7, 0.9]) == "50%, 70% and 90%"
    assert words.percents([0.5, 0.7]) == words.and_join(["50%", "70%"])
    assert words.percents([], empty="none") == "none"
    with pytest.raises(ValueError):
        words.percents([])
    assert words.at_levels([0.99]) == "at sparsity 99%"
    assert words.at_levels([0.95, 0.99]) == "at sparsities 95% and 99%"
    assert words.at_levels([1, 64], "batch", "{}") == "at batches 1 and 64"
    assert words.at_levels([3], "batch", "{}") == "at batch 3"
    assert words.at_levels([1, 2], "day", "{}") == "at days 1 and 2"


def test_in_how_many_all_some_none():
    assert words.in_how_many(3, 3) == "in all seeds"
    assert words.in_how_many(1, 1) == "in the one seed"
    assert words.in_how_many(2, 3) == "in 2 of the 3 seeds"
    assert words.in_how_many(0, 3) == "in no seed"
    assert words.in_how_many(1, 2, "batch") == "in 1 of the 2 batches"
    with pytest.raises(ValueError):
        words.in_how_many(4, 3)


def test_mean_pm_sample_std_and_single_value():
    assert words.mean_pm([1.0, 2.0, 3.0], unit="x") == "2.00 ± 1.00x"
    assert words.mean_pm([1.5]) == "1.50 ± 0.00"
    assert words.mean_pm([0.1, 0.3], ".1%") == "20.0% ± 14.1%"


def test_span_one_number_or_a_range():
    assert words.span(0.1234, 0.1236) == "0.12"
    assert words.span(1e8, 2.4e8) == "1e+08 to 2.4e+08"
    assert words.span(0.5, 0.75, ".0%") == "50% to 75%"
    assert words.span(np.float64(3.0), 3.0) == "3"


def test_span_with_a_unit_after_each_number():
    assert words.span(0.954, 1.104, ".2f", "x") == "0.95x to 1.10x"
    assert words.span(1.001, 1.004, ".2f", "x") == "1.00x"


def test_simple_fraction_reads_a_ratio_as_a_fraction_when_it_is_one():
    assert words.simple_fraction(1e-3 / 3e-3) == "1/3"
    assert words.simple_fraction(0.5) == "1/2"
    assert words.simple_fraction(2.0) == "2"
    assert words.simple_fraction(0.37) == "0.37"
    assert words.simple_fraction(0.37, max_denominator=100) == "37/100"


def test_compare_onsets_with_never():
    assert words.compare_onsets(0.8, 0.9) == "earlier"
    assert words.compare_onsets(0.8, None) == "earlier"
    assert words.compare_onsets(0.9, 0.9) == "same"
    assert words.compare_onsets(0.95, 0.9) == "later"
    assert words.compare_onsets(None, 0.9) == "later"
    assert words.compare_onsets(None, None) == "neither"


def test_word_legend_explains_only_the_words_used_after_the_marker():
    meanings = {"narrows": "the gap closes", "widens": "the gap opens", "no clear difference": "?"}
    text = "gap +1.0 points [+0.2, +1.8], 3 seeds: narrows; the word widens alone does not count"
    assert words.word_legend(text, meanings, after="seeds: ") == '"Narrows" means the gap closes.'
    both = "a, 2 seeds: widens. b, 2 seeds: narrows."
    assert words.word_legend(both, meanings, after="seeds: ") == (
        '"Narrows" means the gap closes; "widens" means the gap opens.'
    )
    assert words.word_legend("nothing to explain", meanings, after="seeds: ") == ""
    assert words.word_legend("it widens", meanings) == '"Widens" means the gap opens.'


# ------------------------------------------------------------------ paired differences
def test_paired_text_says_identical_pairs_in_words_and_describes_the_others():
    runs = pd.DataFrame(
        {
            "arm": ["a", "b", "c"] * 3,
            "seed": [0, 0, 0, 1, 1, 1, 2, 2, 2],
            "acc": [0.5, 0.5, 0.6, 0.7, 0.7, 0.72, 0.6, 0.6, 0.65],
        }
    )
    same = stats.paired(runs, "arm", "a", "b", metric="acc").iloc[0]
    assert words.paired_text(same, "A", "B") == (
        "A and B have the same test accuracy on each of 3 seeds"
    )
    assert words.paired_text(same, "A", "B", metric="loss").endswith("same loss on each of 3 seeds")
    other = stats.paired(runs, "arm", "c", "a", metric="acc").iloc[0]
    assert words.paired_text(other, "C", "A") == f"C minus A {stats.describe(other)}"
    assert words.paired_text(other, "C", "A").startswith("C minus A +5.7 points [")


def test_lower_text_says_lower_or_higher_in_the_quantity_units():
    row = {"mean_diff": -0.4123, "ci_low": -0.6, "ci_high": -0.2, "n": 3, "verdict": "better"}
    assert words.lower_text(row) == "-0.41 [-0.60, -0.20]: lower"
    assert words.lower_text({**row, "verdict": "worse"}, digits=1) == "-0.4 [-0.6, -0.2]: higher"
    flagged = {**row, "verdict": "no clear difference", "flagged": "`x` flagged"}
    assert words.lower_text(flagged) == "-0.41 [-0.60, -0.20]: no clear difference (`x` flagged)"
    assert words.lower_text(flagged, flags=False) == "-0.41 [-0.60, -0.20]: no clear difference"
    assert words.lower_text({**row, "n": 1}) == "-0.41 (one seed, no interval)"
    assert words.lower_text({**row, "verdict": "no spread"}) == (
        "-0.41 on each of 3 seeds (no spread)"
    )


def test_per_seed_text_every_some_or_no_seed_gains():
    every = words.per_seed_text(pd.Series([0.02, 0.1], index=[0, 1]), "b minus a")
    assert every == (
        "Per seed, b minus a: seed 0 +2.0, seed 1 +10.0 points: every seed gains, from +2.0 "
        "to +10.0 points, too wide a spread for 2 seeds to place the interval above 0."
    )
    some = words.per_seed_text(pd.Series([0.02, -0.01, 0.0], index=[0, 1, 2]), "b minus a")
    assert some.endswith(": 1 of 3 seeds gain and seeds 1, 2 do not, so the interval covers 0.")
    one = words.per_seed_text(pd.Series([0.02, -0.01], index=[3, 4]), "d")
    assert one.endswith(": 1 of 2 seeds gain and seed 4 does not, so the interval covers 0.")
    none = words.per_seed_text(pd.Series([-0.02, 0.0], index=[0, 1]), "d", scale=1, unit="units")
    assert none == "Per seed, d: seed 0 -0.0, seed 1 +0.0 units: no seed gains."


def test_spread_text_says_why_per_seed_differences_settle_nothing():
    wide = pd.Series([0.235, 0.195], index=[0, 1])
    assert words.spread_text(wide, "channel") == (
        "The per-seed differences, in points: seed 0 +23.5, seed 1 +19.5 (2 positive): with 2 "
        "seeds, a spread this large (standard deviation 2.8 points) gives an interval that "
        "reaches below 0."
    )
    assert words.spread_text(pd.Series([0.0, 0.0]), "channel").endswith(
        "seed 0 +0.0, seed 1 +0.0: all equal, so there is no spread to build an interval from."
    )
    assert words.spread_text(pd.Series([0.0, -0.02]), "b").endswith(
        "seed 0 +0.0, seed 1 -2.0 (1 zero, 1 negative): b kept at least as much accuracy in "
        "every seed."
    )
    assert words.spread_text(pd.Series([0.01, -0.02, 0.0]), "b").endswith(
        " (1 positive, 1 zero, 1 negative): the seeds disagree."
    )


def test_spread_text_follows_the_direction_of_the_metric():
    # lower loss is better: an arm with less loss on every seed is no loss for the baseline
    text = words.spread_text(pd.Series([0.0, -0.02]), "b", what="loss")
    assert text.endswith(
        "seed 0 +0.0, seed 1 -2.0 (1 zero, 1 negative): b did no better in any seed (its loss "
        "was at least as high in each)."
    )
    assert "kept" not in words.spread_text(pd.Series([-0.1, -0.2]), "b", what="perplexity")


def test_spread_text_of_one_seed_says_there_is_no_spread():
    text = words.spread_text(pd.Series([0.02], index=[4]), "b")
    assert text == (
        "The per-seed differences, in points: seed 4 +2.0 (1 positive): one seed, so there is "
        "no spread to build an interval from."
    )
    with pytest.raises(ValueError, match="at least one"):
        words.spread_text(pd.Series([], dtype=float), "b")


def test_margin_text_says_the_seeds_and_the_mean_against_the_allowance():
    row = {"mean_diff": -0.011, "ci_low": -0.024}
    assert words.margin_text([-0.012, -0.010], row, 0.01) == (
        "The per-seed differences are -1.2, -1.0 points: the mean (-1.1) is beyond the 1-point "
        "allowance, 1 seed loses more (-1.2), and the interval's lower end is -2.4."
    )
    two = words.margin_text([-0.03, -0.02], {"mean_diff": -0.025, "ci_low": -0.09}, 0.01)
    assert ", 2 seeds lose more (-3.0, -2.0), " in two
    row = {"mean_diff": -0.005, "ci_low": -0.02}
    text = words.margin_text([0.0, -0.01], row, 0.01)
    assert "the mean (-0.5) is within the 1-point allowance, no seed loses more, and" in text


def test_move_shares_splits_the_change_of_a_difference_between_the_arms():
    text, share = words.move_shares(-0.003, 0.009, "magnitude", "random", context=" (means)")
    assert share == pytest.approx(0.75)
    assert text == (
        "magnitude moved -0.3 points and random +0.9 (means): random's move accounts for 75% "
        "of the change in the lead, magnitude's for 25%"
    )
    text, share = words.move_shares(0.01, -0.02, "a", "b")
    assert share == pytest.approx(2 / 3)
    text, share = words.move_shares(-0.01, -0.03, "a", "b", what="the gap")
    assert share == pytest.approx(1.5)
    assert text.endswith(
        ": b's move accounts for all of the change in the gap (its +3.0 of the gap's +2.0 "
        "points; a's own move went the other way)"
    )
    text, share = words.move_shares(0.02, 0.0, "a", "b")
    assert share == 0
    assert text.endswith("(its +2.0 of the lead's +2.0 points)")
    assert ": a's move accounts for all of the change in the lead" in text
    text, share = words.move_shares(0.01, 0.0102, "a", "b")
    assert share is None
    assert text == "a moved +1.0 points and b +1.0, so the lead stays where it was"


def _arms(rows: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"arm": a, "seed": s, "acc": v} for a, vs in rows.items() for s, v in enumerate(vs)]
    )


def test_ranking_text_says_how_far_the_paired_differences_settle_an_order():
    far_apart = {"a": [0.9, 0.91, 0.89], "b": [0.5, 0.5, 0.5], "c": [0.1, 0.12, 0.1]}
    clear = words.ranking_text(_arms(far_apart), "arm", "abc", metric="acc")
    assert clear.startswith("2 of the 2 neighbouring pairs differ clearly: a - b +40.0 points")
    assert "; b - c +39.3 points" in clear and clear.endswith("better.")
    # neighbours tied in the noise, the ends apart: partly settled
    tied = {"a": [0.90, 0.91, 0.89], "b": [0.90, 0.71, 0.89], "c": [0.80, 0.80, 0.80]}
    assert words.ranking_text(_arms(tied), "arm", ["a", "b", "c"], metric="acc") == (
        "no two neighbours in this list differ clearly (of 2 pairs), although the pair "
        "further apart does: a - c is +10.0 points [+7.5, +12.5], 3 seeds: better.  The "
        "order is only partly settled."
    )
    none = {"a": [0.5, 0.6, 0.7], "b": [0.5, 0.6, 0.7], "c": [0.5, 0.61, 0.7]}
    assert words.ranking_text(_arms(none), "arm", "abc", metric="acc").endswith(
        "(of 3 pairs), so the list is no ranking."
    )


def test_ranking_text_of_two_arms_speaks_of_one_pair():
    same = _arms({"a": [0.5, 0.6, 0.7], "b": [0.5, 0.6, 0.7]})
    assert words.ranking_text(same, "arm", ["a", "b"], metric="acc", noun="methods") == (
        "no two methods in this list differ clearly (of 1 pair), so the list is no ranking."
    )
    apart = _arms({"a": [0.9, 0.91, 0.89], "b": [0.5, 0.5, 0.5]})
    assert words.ranking_text(apart, "arm", ["a", "b"], metric="acc").startswith(
        "the pair differs clearly: a - b +40.0 points"
    )


# ------------------------------------------------------------ expectations over levels
def _sweep_rows() -> pd.DataFrame:
    """Two methods, three seeds, three sparsities: b - a is about +2, +4, +6 points at 50%,
    80%, 90%, with a small spread over the seeds (a hand example for the expectation and
    step helpers)."""
    rows = []
    for seed, noise in enumerate([0.0, 0.002, -0.002]):
        for i, (sparsity, gap) in enumerate([(0.5, 0.02), (0.8, 0.04), (0.9, 0.06)]):
            b = 0.8 + gap + noise * (i + 1)
            rows.append({"method": "a", "seed": seed, "sparsity": sparsity, "acc": 0.8})
            rows.append({"method": "b", "seed": seed, "sparsity": sparsity, "acc": b})
    return pd.DataFrame(rows)


def test_expectation_met_inconclusive_missed_and_flagged_levels():
    runs = _sweep_rows()
    gaps = stats.paired(runs, "method", "b", "a", metric="acc", by="sparsity")
    gaps = gaps.set_index("sparsity")
    assert words.expectation(gaps, [0.8, 0.9]) == "**met** (met at 80%, 90%)"
    reverse = stats.paired(runs, "method", "a", "b", metric="acc", by="sparsity")
    assert words.expectation(reverse.set_index("sparsity"), [0.9]) == ("**missed** (missed at 90%)")
    gaps.loc[0.8, ["ci_low", "ci_high"]] = [-0.01, 0.05]  # an interval that covers 0
    gaps.loc[0.9, "flagged"] = "`b` flagged in 1 of 3 runs: at chance level"
    assert words.expectation(gaps, [0.8, 0.9]) == (
        "**inconclusive** (met at 90%; inconclusive at 80%; at 90% `b` flagged in 1 of 3 "
        "runs: at chance level)"
    )
    with pytest.raises(ValueError, match="at least one level"):
        words.expectation(gaps, [])


def test_step_changes_sorts_the_steps_by_how_the_gap_changes():
    runs = _sweep_rows()
    found = words.step_changes(
        runs, "method", "b", "a", by="sparsity", levels=[0.5, 0.8, 0.9], metric="acc"
    )
    assert found["worse"] == [] and found["other"] == []
    assert [text.split(" (")[0] for text in found["better"]] == ["50% to 80%", "80% to 90%"]
    assert found["better"][0].endswith("3 seeds: rises)")
    text = words.steps_text(found)
    assert text.startswith("From one sparsity to the next, paired per seed, the difference ")
    assert "rises clearly from 50% to 80% (+2.0 points" in text
    assert text.endswith("falls clearly at no step, and shows no clear change at 0 steps.")
    flat = words.step_changes(
        runs[runs.sparsity != 0.9],
        "method",
        "a",
        "a",
        by="sparsity",
        levels=[0.5, 0.8],
        metric="acc",
    )
    assert flat["no clear difference"] == [
        "50% to 80% (+0.0 points [+0.0, +0.0], 3 seeds: no clear difference)"
    ]
    said = words.steps_text(flat, "epoch")
    assert "rises clearly at no step, falls clearly at no step" in said
    assert said.endswith(", and shows no clear change at 1 step.")


# ------------------------------------------------------------------------------ verdicts
def test_verdict_summary_one_line_per_verdict_with_notes_and_the_count():
    up = claims.verdict("woodfisher_beats_magnitude", [0.02, 0.03, 0.025], setting="A")
    unsure = claims.verdict("woodfisher_beats_magnitude", [0.02, -0.01, 0.0], setting="B")
    text = words.verdict_summary([up, unsure], ["; note", ""])
    lines = text.split("\n")
    assert lines[0] == (
        f"- woodfisher against global_magnitude (A): **reproduced**, {up.numbers()}; note."
    )
    assert lines[1].startswith("- woodfisher against global_magnitude (B): **inconclusive**, ")
    assert lines[-1] == "Of 2 verdicts: 1 reproduced, 1 inconclusive."
    assert words.verdict_summary([up]).endswith(f"{up.numbers()}.\n\nOf 1 verdict: 1 reproduced.")
    with pytest.raises(ValueError, match="one each"):
        words.verdict_summary([up, unsure], ["only one"])
    with pytest.raises(ValueError, match="at least one verdict"):
        words.verdict_summary([])


def test_claims_list_names_each_claim_with_its_paper_status_and_flags():
    up = claims.verdict("woodfisher_beats_magnitude", [0.02, 0.03, 0.025], setting="A")
    unsure = claims.verdict("woodfisher_beats_magnitude", [0.02, -0.01, 0.0], setting="B")
    flagged = dataclasses.replace(unsure, flagged="at chance level")
    claim = up.claim
    lines = words.claims_list([up, unsure, flagged]).split("\n")
    assert lines[0] == (
        "Of 3 tests of published claims, 2 inconclusive, 1 reproduced (the sections above "
        "give each with its paper, its numbers and, when it is not reproduced, the measured "
        "setting):"
    )
    author = claim.paper.split(",")[0]
    assert lines[1] == (
        f"  - {claim.statement} ({author}; A): **reproduced**, woodfisher minus "
        f"global_magnitude {up.numbers()}"
    )
    assert lines[2].startswith(f"  - {claim.statement} ({author}; B): **inconclusive**, ")
    assert lines[3].endswith(" (sanity flags: at chance level)")
    assert "sanity flags" not in lines[2]
    assert words.claims_list([up]).startswith("Of 1 test of published claims, 1 reproduced (")
    with pytest.raises(ValueError, match="at least one verdict"):
        words.claims_list([])


def test_below_text_and_span_say_a_shortfall_and_its_direction():
    assert words.below_text(15.43) == "15.4 points below"
    assert words.below_text(-0.3) == "0.3 points above"
    assert words.below_text(0.0) == "0.0 points below"
    assert words.below_text(2, ".0f", "seeds") == "2 seeds below"
    assert words.below_span([52.3, 15.4]) == "15.4 to 52.3 points below"
    assert words.below_span([-0.3]) == "0.3 points above"
    assert words.below_span([-0.3, 2.0]) == "between 0.3 points above and 2.0 points below"
    assert words.below_span(pd.Series([-3.0, -1.0])) == (
        "between 3.0 points above and 1.0 points above"
    )
    with pytest.raises(ValueError, match="at least one gap"):
        words.below_span([])

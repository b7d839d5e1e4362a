"""Paired statistics and clipped intervals, checked against hand computations."""

import math

import pandas as pd
import pytest

from sparsity_lab import stats

T_975_2 = 4.302652729911275  # Student-t quantile for 95% and 2 degrees of freedom


def _runs(baseline: list[float], treatment: list[float]) -> pd.DataFrame:
    rows = [{"method": "base", "seed": s, "acc": a} for s, a in enumerate(baseline)]
    rows += [{"method": "new", "seed": s, "acc": a} for s, a in enumerate(treatment)]
    return pd.DataFrame(rows)


def test_mean_interval_matches_the_hand_formula():
    out = stats.mean_interval([0.02, 0.03, 0.01])
    half = T_975_2 * 0.01 / math.sqrt(3)
    assert out["mean"] == pytest.approx(0.02)
    assert out["std"] == pytest.approx(0.01)
    assert out["n"] == 3
    assert out["ci_low"] == pytest.approx(0.02 - half)
    assert out["ci_high"] == pytest.approx(0.02 + half)


def test_one_value_has_no_interval():
    out = stats.mean_interval([0.5])
    assert out["mean"] == 0.5
    assert math.isnan(out["ci_low"]) and math.isnan(out["ci_high"])


def test_paired_difference_by_hand():
    # per-seed differences 0.10, 0.11, 0.12: mean 0.11, std 0.01
    df = _runs([0.80, 0.70, 0.60], [0.90, 0.81, 0.72])
    (row,) = stats.paired(df, "method", "new", "base", metric="acc").to_dict("records")
    half = T_975_2 * 0.01 / math.sqrt(3)
    assert row["mean_diff"] == pytest.approx(0.11)
    assert row["ci_low"] == pytest.approx(0.11 - half)
    assert row["ci_high"] == pytest.approx(0.11 + half)
    assert row["n"] == 3
    assert row["verdict"] == "better"


def test_pairing_finds_what_overlapping_unpaired_intervals_hide():
    baseline = [0.80, 0.90, 0.70]
    df = _runs(baseline, [b + d for b, d in zip(baseline, [0.020, 0.021, 0.019], strict=True)])
    unpaired = stats.summarize(df, "method", "acc").set_index("method")
    assert unpaired.loc["new", "ci_low"] < unpaired.loc["base", "mean"]  # the bands overlap
    (row,) = stats.paired(df, "method", "new", "base", metric="acc").to_dict("records")
    assert row["verdict"] == "better"
    assert row["ci_low"] > 0.015


def test_an_interval_that_covers_zero_says_no_difference():
    df = _runs([0.80, 0.80, 0.80], [0.82, 0.79, 0.81])
    (row,) = stats.paired(df, "method", "new", "base", metric="acc").to_dict("records")
    assert row["ci_low"] < 0 < row["ci_high"]
    assert row["verdict"] == "no clear difference"
    assert stats.paired(df, "method", "base", "new", metric="acc")["verdict"][0] == (
        "no clear difference"
    )


def test_worse_and_one_seed():
    df = _runs([0.9, 0.9, 0.9], [0.5, 0.52, 0.49])
    assert stats.paired(df, "method", "new", "base", metric="acc")["verdict"][0] == "worse"
    one = _runs([0.9], [0.5])
    row = stats.paired(one, "method", "new", "base", metric="acc").iloc[0]
    assert row["verdict"] == "one seed"
    assert "one seed" in stats.describe(row)


def test_paired_only_uses_seeds_both_arms_have_and_groups_by():
    rows = [
        {"m": m, "s": sp, "seed": seed, "acc": 0.5 + (0.1 if m == "a" else 0) + seed / 100}
        for m in ("a", "b")
        for sp in (0.5, 0.9)
        for seed in range(3)
    ]
    rows.append({"m": "a", "s": 0.5, "seed": 7, "acc": 0.0})  # no partner: left out
    out = stats.paired(pd.DataFrame(rows), "m", "a", "b", metric="acc", by="s")
    assert list(out["s"]) == [0.5, 0.9]
    assert list(out["n"]) == [3, 3]
    assert out["mean_diff"].tolist() == pytest.approx([0.1, 0.1])


def test_paired_errors_say_what_is_wrong():
    df = _runs([0.8, 0.7], [0.9, 0.8])
    with pytest.raises(ValueError, match="no rows with method == 'typo'"):
        stats.paired(df, "method", "typo", "base", metric="acc")
    with pytest.raises(KeyError, match="not in the DataFrame"):
        stats.paired(df, "method", "new", "base", metric="accuracy")
    doubled = pd.concat([df, df])
    with pytest.raises(ValueError, match="add the column"):
        stats.paired(doubled, "method", "new", "base", metric="acc")


def test_accuracy_intervals_are_clipped_to_0_1():
    df = pd.DataFrame({"g": ["x"] * 3, "test_accuracy": [0.99, 1.0, 0.96]})
    clipped = stats.summarize(df, "g", "test_accuracy").iloc[0]
    raw = stats.summarize(df, "g", "test_accuracy", bounds=None).iloc[0]
    assert raw["ci_high"] > 1
    assert clipped["ci_high"] == 1.0
    assert clipped["ci_low"] == pytest.approx(raw["ci_low"])
    low = pd.DataFrame({"g": ["x"] * 3, "test_accuracy": [0.0, 0.02, 0.0]})
    assert stats.summarize(low, "g", "test_accuracy")["ci_low"][0] == 0.0
    # a metric that is not a fraction is left alone
    loss = pd.DataFrame({"g": ["x"] * 3, "loss": [0.0, 0.02, 0.0]})
    assert stats.summarize(loss, "g", "loss")["ci_low"][0] < 0


def test_equal_differences_give_no_interval_not_a_verdict():
    df = _runs([0.80, 0.70], [0.81, 0.71])  # +1 point on both seeds, exactly
    row = stats.paired(df, "method", "new", "base", metric="acc").iloc[0]
    assert row["std"] == pytest.approx(0, abs=1e-12) or row["verdict"] == "no spread"
    same = _runs([0.5, 0.5], [0.5, 0.5])
    assert stats.paired(same, "method", "new", "base", metric="acc")["verdict"][0] == (
        "no clear difference"
    )
    exact = _runs([0.5, 0.25], [0.75, 0.5])  # +0.25 twice, exact in binary
    row = stats.paired(exact, "method", "new", "base", metric="acc").iloc[0]
    assert row["verdict"] == "no spread"
    rounded = _runs([0.8, 0.7], [0.9, 0.8])  # +0.1 twice, up to floating-point rounding
    row = stats.paired(rounded, "method", "new", "base", metric="acc").iloc[0]
    assert 0 < row["std"] < 1e-12
    assert row["verdict"] == "no spread"
    assert "no spread" in stats.describe(row)


def test_lower_perplexity_is_better_and_the_direction_can_be_given():
    rows = [{"m": "base", "seed": s, "perplexity": p} for s, p in enumerate([6.0, 6.2, 5.9])]
    rows += [{"m": "new", "seed": s, "perplexity": p} for s, p in enumerate([5.0, 5.1, 4.95])]
    df = pd.DataFrame(rows)
    row = stats.paired(df, "m", "new", "base", metric="perplexity").iloc[0]
    assert row["mean_diff"] < 0 and row["verdict"] == "better"
    forced = stats.paired(df, "m", "new", "base", metric="perplexity", higher_better=True)
    assert forced["verdict"][0] == "worse"
    assert stats.higher_is_better("test_accuracy") and not stats.higher_is_better("val_loss")


def test_differences_of_accuracies_are_clipped_to_minus_one_one():
    df = _runs([0.1, 0.9], [0.95, 0.92]).rename(columns={"acc": "test_accuracy"})
    row = stats.paired(df, "method", "new", "base", metric="test_accuracy").iloc[0]
    raw = stats.mean_interval([0.85, 0.02])
    assert raw["ci_high"] > 1 and raw["ci_low"] < -1
    assert (row["ci_low"], row["ci_high"]) == (-1.0, 1.0)
    assert row["verdict"] == "no clear difference"


def test_paired_table_stacks_every_pair_and_stage():
    rows = [
        {"m": m, "seed": s, "val": v + s / 100, "test": v + s / 50}
        for m, v in (("a", 0.9), ("b", 0.8), ("c", 0.5))
        for s in range(3)
    ]
    df = pd.DataFrame(rows)
    table = stats.paired_table(df, "m", [("a", "b"), ("b", "c")], {"val": "v", "test": "t"})
    assert list(table["comparison"]) == ["a - b", "a - b", "b - c", "b - c"]
    assert list(table["stage"]) == ["v", "t", "v", "t"]
    one = stats.paired(df, "m", "b", "c", metric="test").iloc[0]
    assert table.iloc[3]["mean_diff"] == pytest.approx(one["mean_diff"])


def test_flagged_arms_are_named_beside_the_numbers_of_their_stage():
    """Each stage's comparison reads that stage's flags: the random arm collapsed right
    after pruning (pruned_flags) but not after fine-tuning (flags)."""
    rows = [
        {
            "m": m,
            "seed": s,
            "pruned_accuracy": acc,
            "test_accuracy": acc + 0.05,
            "pruned_flags": "at chance level (0.10 <= 0.14)" if m == "random" else "",
            "flags": "class never predicted (3)" if (m, s) == ("magnitude", 2) else "",
        }
        for m, offsets in (("magnitude", (0.9, 0.92, 0.93)), ("random", (0.1, 0.11, 0.14)))
        for s, acc in enumerate(offsets)
    ]
    df = pd.DataFrame(rows)
    table = stats.paired_table(
        df, "m", [("magnitude", "random")], {"pruned_accuracy": "p", "test_accuracy": "t"}
    )
    pruned, tuned = table.iloc[0], table.iloc[1]
    assert pruned["flagged"] == "`random` flagged in 3 of 3 runs: at chance level"
    assert tuned["flagged"] == "`magnitude` flagged in 1 of 3 runs: class never predicted"
    assert stats.describe(pruned).endswith(
        ": better (`random` flagged in 3 of 3 runs: at chance level)"
    )
    unflagged = stats.paired(df, "m", "magnitude", "random", metric="test_accuracy", flags=None)
    assert unflagged.iloc[0]["flagged"] == ""
    assert stats.describe(unflagged.iloc[0]).endswith(": better")


def test_describe_words_the_sign_of_a_quantity_that_is_neither_better_nor_worse():
    row = {"mean_diff": -0.27, "ci_low": -0.39, "ci_high": -0.16, "n": 3, "verdict": "worse"}
    text = stats.describe(row, words=("narrows", "widens"))
    assert text == "-27.0 points [-39.0, -16.0], 3 seeds: narrows"
    covering = {**row, "ci_high": 0.05, "verdict": "no clear difference"}
    assert stats.describe(covering, words=("narrows", "widens")).endswith("no clear difference")


def test_describe_shows_a_bound_near_zero_with_one_more_digit():
    row = {"mean_diff": 0.0033, "ci_low": 0.0004, "ci_high": 0.0062, "n": 3, "verdict": "better"}
    assert stats.describe(row) == "+0.33 points [+0.04, +0.62], 3 seeds: better"
    wide = {**row, "ci_low": 0.0012}
    assert stats.describe(wide) == "+0.3 points [+0.1, +0.6], 3 seeds: better"


def test_describe_takes_an_itertuples_row_too():
    table = pd.DataFrame([{"mean_diff": 0.02, "ci_low": 0.01, "ci_high": 0.03, "n": 3,
                           "verdict": "better", "flagged": ""}])  # fmt: skip
    (row,) = table.itertuples()
    assert stats.describe(row) == stats.describe(table.iloc[0])


def test_against_baseline_pairs_every_other_arm_with_the_baseline():
    df = pd.DataFrame(
        {
            "arm": ["base", "a", "b"] * 3,
            "seed": [0, 0, 0, 1, 1, 1, 2, 2, 2],
            "test_accuracy": [0.80, 0.82, 0.70, 0.90, 0.93, 0.81, 0.70, 0.71, 0.62],
        }
    )
    table = stats.against_baseline(df, "arm", "base")
    assert list(table["arm"]) == ["a", "b"]  # in order of appearance, the baseline left out
    # by hand: the per-seed differences' mean
    assert table["mean_diff"].tolist() == pytest.approx([0.02, -0.09])
    assert table.loc[1, "verdict"] == "worse"  # b is 8-10 points below on every seed
    flagged = df.assign(flags=["", "", "at chance level (0.100, chance 0.100)"] * 3)
    assert "flagged in 3 of 3" in stats.describe(
        stats.against_baseline(flagged, "arm", "base").iloc[1]
    )
    with pytest.raises(ValueError, match="only the baseline"):
        stats.against_baseline(df[df["arm"] == "base"], "arm", "base")


def test_same_on_every_seed_only_for_several_identical_pairs():
    same = stats.paired(
        _runs([0.5, 0.7, 0.6], [0.5, 0.7, 0.6]), "method", "new", "base", metric="acc"
    )
    assert stats.same_on_every_seed(same.iloc[0]) is True
    apart = stats.paired(
        _runs([0.5, 0.7, 0.6], [0.6, 0.72, 0.65]), "method", "new", "base", metric="acc"
    )
    assert stats.same_on_every_seed(apart.iloc[0]) is False
    one = stats.paired(_runs([0.5], [0.5]), "method", "new", "base", metric="acc")
    # one pair: no claim of "the same on each seed"
    assert stats.same_on_every_seed(one.iloc[0]) is False


def test_difference_row_is_a_paired_row_that_describe_reads():
    row = stats.difference_row([0.02, 0.03, 0.025])
    assert row["mean_diff"] == pytest.approx(0.025) and row["n"] == 3
    assert row["std"] == pytest.approx(0.005)
    half = T_975_2 * 0.005 / math.sqrt(3)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.025 - half, 0.025 + half))
    assert row["verdict"] == stats.BETTER
    assert stats.describe(row) == "+2.5 points [+1.3, +3.7], 3 seeds: better"
    assert stats.difference_row([0.01, -0.02])["verdict"] == stats.NO_DIFFERENCE
    assert stats.difference_row([0.05])["verdict"] == stats.ONE_SEED


def test_stays_above_needs_every_higher_level():
    curve = pd.Series([0.8, 1.2, 0.9, 1.1, 1.3], index=[0.5, 0.7, 0.8, 0.9, 0.99])
    assert stats.stays_above(curve) == 0.9  # 0.7 is above 1, but 0.8 falls back below
    assert stats.stays_above(curve, threshold=0.85) == 0.7
    assert stats.stays_above(curve, threshold=2.0) is None

"""Claim verdicts: every relation on intervals that agree, contradict and straddle."""

import pandas as pd
import pytest

from sparsity_lab import claims, stats


def test_every_claim_is_complete_and_cited():
    assert len(claims.CLAIMS) >= 10
    for key, claim in claims.CLAIMS.items():
        assert claim.key == key
        for text in (claim.paper, claim.setting, claim.statement, claim.published):
            assert text.strip(), key
        assert any(ch.isdigit() for ch in claim.paper), f"{key}: the citation needs a year"


@pytest.mark.parametrize(
    ("diffs", "status"),
    [
        ([0.05, 0.06, 0.055], claims.REPRODUCED),
        ([-0.05, -0.06, -0.055], claims.NOT_REPRODUCED),
        ([0.02, -0.01, 0.005], claims.INCONCLUSIVE),
        ([0.05], claims.INCONCLUSIVE),  # one seed decides nothing
    ],
)
def test_greater(diffs, status):
    assert claims.verdict("snip_beats_random_init", diffs).status == status


def test_within_margin():
    key = "init_masks_carry_layer_ratios_only"  # margin 0.01
    assert claims.verdict(key, [0.001, -0.002, 0.0]).status == claims.REPRODUCED
    assert claims.verdict(key, [-0.05, -0.06, -0.07]).status == claims.NOT_REPRODUCED
    assert claims.verdict(key, [-0.01, -0.03, 0.0]).status == claims.INCONCLUSIVE


def test_at_least_allows_the_margin_below():
    key = "acdc_matches_gmp"  # margin 0.005
    assert claims.verdict(key, [-0.001, 0.0, -0.002]).status == claims.REPRODUCED
    assert claims.verdict(key, [-0.02, -0.025, -0.03]).status == claims.NOT_REPRODUCED


def test_verdict_takes_a_row_of_paired():
    df = pd.DataFrame(
        [{"m": "snip", "seed": s, "acc": 0.9 + s / 100} for s in range(3)]
        + [{"m": "random", "seed": s, "acc": 0.5 + s / 50} for s in range(3)]
    )
    row = stats.paired(df, "m", "snip", "random", metric="acc").iloc[0]
    v = claims.verdict("snip_beats_random_init", row, setting="toy")
    assert v.status == claims.REPRODUCED
    assert v.n == 3
    assert v.mean == pytest.approx(row["mean_diff"])


def test_sentence_carries_the_numbers_the_paper_and_the_reason():
    v = claims.verdict(
        "rigl_beats_set",
        [-0.02, -0.03, -0.025],
        setting="CNN on MNIST-1D, 95%",
        reason="Both train for 20 epochs, a fifth of RigL's shortest schedule.",
    )
    text = claims.report([v])
    assert text.startswith("- **Not reproduced**")
    assert "-2.5 points" in text
    assert "Evci et al. 2020" in text
    assert "CNN on MNIST-1D, 95%" in text
    assert "a fifth of RigL's" in text
    table = claims.table([v])
    assert table.loc[0, "verdict"] == "not reproduced"
    assert table.loc[0, "difference (points)"] == pytest.approx(-2.5)


def test_errors():
    with pytest.raises(KeyError, match="rigl_beats_set"):
        claims.get("rigl_beat_set")
    with pytest.raises(ValueError, match="no differences"):
        claims.verdict("rigl_beats_set", [])
    with pytest.raises(ValueError, match="relation"):
        claims.Claim("k", "p 2020", "s", "c", "n", "a", "b", relation="bigger")


def test_a_zero_width_interval_is_inconclusive():
    assert claims.verdict("rigl_beats_set", [0.25, 0.25]).status == claims.INCONCLUSIVE
    rounded = [0.9 - 0.8, 0.8 - 0.7]  # equal up to rounding
    v = claims.verdict("rigl_beats_set", rounded)
    assert v.status == claims.INCONCLUSIVE
    assert v.numbers() == "+10.0 points on each of 2 seeds (no spread, no interval)"


def test_decide_is_the_rule_for_checks_outside_the_table():
    assert claims.decide("greater", 0.01, 0.03, 3) == claims.REPRODUCED
    assert claims.decide("greater", -0.03, -0.01, 3) == claims.NOT_REPRODUCED
    assert claims.decide("within", -0.004, 0.004, 3, margin=0.005) == claims.REPRODUCED
    assert claims.decide("greater", 0.02, 0.02, 3) == claims.INCONCLUSIVE  # no spread
    assert claims.decide("greater", 0.01, 0.03, 1) == claims.INCONCLUSIVE
    with pytest.raises(ValueError, match="relation"):
        claims.decide("more", 0.0, 1.0, 3)


def test_check_words_a_paired_row_as_met_missed_or_inconclusive():
    row = {"ci_low": 0.01, "ci_high": 0.03, "n": 3}
    assert claims.check(row, "greater") == "met"
    assert claims.check({**row, "ci_low": -0.03, "ci_high": -0.01}, "greater") == "missed"
    assert claims.check({**row, "n": 1}, "greater") == "inconclusive"


def test_judge_explains_only_what_is_not_reproduced():
    key = "snip_beats_random_init"
    met = claims.judge(key, [0.05, 0.06, 0.07], setting="toy", reason="why", measured="what")
    assert met.status == claims.REPRODUCED and met.reason == "what"
    missed = claims.judge(key, [-0.05, -0.06, -0.07], setting="toy", reason="why")
    assert missed.status == claims.NOT_REPRODUCED
    assert missed.reason == f"why The paper: {claims.get(key).setting}."
    single = claims.judge(key, [0.05], setting="toy", reason="why")
    assert single.reason == "A single seed was run, so there is no interval."


def test_judge_names_flagged_arms_whatever_the_status():
    row = {"mean_diff": 0.06, "ci_low": 0.05, "ci_high": 0.07, "n": 3}
    flagged = {**row, "flagged": "`random` flagged in 3 of 3 runs: at chance level"}
    found = claims.judge("snip_beats_random_init", flagged, setting="toy", measured="what")
    assert found.status == claims.REPRODUCED
    assert found.reason == "what Sanity flags: `random` flagged in 3 of 3 runs: at chance level."
    clean = claims.judge("snip_beats_random_init", {**row, "flagged": ""}, measured="what")
    assert clean.reason == "what"
    table = claims.table([found, clean])
    assert list(table["flagged"]) == ["`random` flagged in 3 of 3 runs: at chance level", ""]

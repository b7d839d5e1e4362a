"""Sanity flags, each raised on a constructed case and silent on a healthy one."""

import pandas as pd
import torch
from torch import nn

from sparsity_lab import flags, masks


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 3))


def test_chance_accuracy_is_the_majority_class_rate():
    assert flags.chance_accuracy(torch.tensor([0, 0, 0, 1])) == 0.75
    assert flags.chance_accuracy([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) == 0.1


def test_at_chance_level():
    assert flags.check(accuracy=0.11, chance=0.1)[0].startswith("at chance level")
    assert flags.check(accuracy=0.52, chance=0.5)  # binary: 0.525 is the line
    assert flags.check(accuracy=0.30, chance=0.1) == []


def test_target_sparsity_not_reached():
    (flag,) = flags.check(target_sparsity=0.9, reached_sparsity=0.6)
    assert "not reached" in flag and "0.600" in flag and "0.900" in flag
    assert flags.check(target_sparsity=0.9, reached_sparsity=0.8999) == []


def test_a_layer_pruned_to_100_percent():
    model = _mlp()
    masks.attach(model, "2.weight", torch.zeros(4, 8))
    assert flags.dead_layers(model) == ["2.weight"]
    found = flags.check(model=model, example_input=torch.randn(5, 6))
    assert any("layer pruned to 100% (2.weight)" in f for f in found)
    assert any(f.startswith("disconnected") for f in found)


def test_disconnected_without_any_empty_layer():
    """fc1 keeps inputs only for units 0-3, fc2 reads only units 4-7: no path survives,
    though neither layer is empty."""
    model = _mlp()
    first = torch.zeros(8, 6)
    first[:4] = 1
    second = torch.zeros(4, 8)
    second[:, 4:] = 1
    masks.attach(model, "0.weight", first)
    masks.attach(model, "2.weight", second)
    assert flags.dead_layers(model) == []
    assert flags.disconnected(model, torch.randn(5, 6))
    second[:, :4] = 1  # paths through units 0-3 (on a fresh model: masking zeroed weights)
    model = _mlp()
    masks.attach(model, "0.weight", first)
    masks.attach(model, "2.weight", second)
    assert not flags.disconnected(model, torch.randn(5, 6))


def test_a_healthy_model_raises_nothing():
    model = _mlp()
    masks.attach(model, "0.weight", (torch.rand(8, 6) > 0.5).float())
    assert flags.check(model=model, example_input=torch.randn(5, 6)) == []


def test_a_class_never_predicted():
    assert flags.never_predicted(torch.tensor([0, 1, 1, 3]), 4) == [2]
    (flag,) = flags.check(predictions=torch.tensor([0, 0, 0]), n_classes=3)
    assert flag == "class never predicted (2: 1, 2)"


def test_dense_baseline_below_its_recipe():
    (flag,) = flags.check(dense_accuracy=0.85, expected_dense_accuracy=0.90)
    assert flag.startswith("dense baseline below its recipe")
    assert flags.check(dense_accuracy=0.895, expected_dense_accuracy=0.90) == []


def test_table_lists_flagged_groups_only():
    df = pd.DataFrame(
        {
            "method": ["a", "a", "b", "b"],
            "seed": [0, 1, 0, 1],
            "flags": [flags.join(["at chance level (0.1, chance 0.1)"]), "", "", ""],
        }
    )
    out = flags.table(df, "method")
    assert out.to_dict("records") == [
        {"method": "a", "flagged_runs": "1 of 2", "flags": "at chance level"}
    ]
    assert flags.table(df[df.method == "b"], "method").empty


def test_note_names_the_flagged_share_of_a_group_and_nothing_for_a_clean_one():
    runs = pd.DataFrame(
        {
            "arm": ["a", "a", "a", "b", "b"],
            "flags": ["at chance level (acc 0.10)", "", "", "", ""],
        }
    )
    assert flags.note(runs, "arm", "b") == ""
    text = flags.note(runs, "arm", "a")
    assert "1 of 3 runs flagged" in text and "at chance level" in text and "mixes" in text
    runs.loc[runs.arm == "a", "flags"] = "at chance level (acc 0.10)"
    assert "all 3 runs flagged" in flags.note(runs, "arm", "a")


def test_a_kind_not_every_flagged_run_raised_says_how_many_did():
    df = pd.DataFrame(
        {
            "method": ["l0"] * 3,
            "flags": [
                "class never predicted (2: 3, 4); at chance level (0.10, chance 0.10)",
                "class never predicted (1: 7); at chance level (0.11, chance 0.10)",
                "class never predicted (1: 2)",
            ],
        }
    )
    (row,) = flags.table(df, "method").to_dict("records")
    assert row["flagged_runs"] == "3 of 3"
    assert row["flags"] == "class never predicted; at chance level (2 of 3)"


def test_named_lists_the_names_of_one_kind_of_flag():
    text = flags.join(
        [
            "at chance level (0.100, chance 0.102)",
            "layer pruned to 100% (fc2.weight, fc3.weight)",
        ]
    )
    assert flags.named(text, "layer pruned to 100%") == {"fc2.weight", "fc3.weight"}
    assert flags.named(text, "class never predicted") == set()
    assert flags.named("", "layer pruned to 100%") == set()
    assert flags.named(None, "layer pruned to 100%") == set()


def test_named_and_broken_flags_read_a_missing_text_as_no_flag():
    """A flags column read back from a table holds NaN where no flag fired."""
    nan = float("nan")
    assert flags.named(nan, "layer pruned to 100%") == set()
    texts = pd.Series(["at chance level (0.1, chance 0.1)", None]).reindex([0, 1, 2])
    assert flags.broken_flags(texts) == ["at chance level in 1 of 3 runs"]
    assert flags.broken_flags([nan, None]) == []


def test_broken_flags_keeps_layers_and_kinds_that_break_a_network_with_their_counts():
    texts = [
        "layer pruned to 100% (fc2.weight); at chance level (acc 0.10); class never predicted",
        "at chance level (acc 0.11)",
        "",
    ]
    assert flags.broken_flags(texts) == [
        "layer pruned to 100% (fc2.weight) in 1 of 3 runs",
        "at chance level in 2 of 3 runs",
    ]
    assert flags.broken_flags(["disconnected (no path); class never predicted"]) == ["disconnected"]
    assert flags.broken_flags(["class never predicted", ""]) == []


def test_flagged_points_says_what_each_flagged_mean_describes():
    table = pd.DataFrame(
        {
            "method": ["wanda", "obc", "snip"],
            "sparsity": [0.8, 0.5, 0.9],
            "flagged_runs": ["3 of 3", "1 of 3", "1 of 1"],
            "flags": ["at chance level", "layer emptied", "at chance level"],
        }
    )
    sentences = flags.flagged_points(table, "{method} point at {sparsity:.0%}").split("  ")
    assert sentences == [
        "The wanda point at 80% has all 3 runs flagged (at chance level): it describes "
        "failed runs.",
        "The obc point at 50% has 1 of 3 runs flagged (layer emptied): its mean mixes runs "
        "that failed with runs that did not.",
        "The snip point at 90% has its one run flagged (at chance level): it describes a "
        "failed run.",
    ]
    clean = pd.DataFrame({"method": ["a", "b"], "flags": ["", ""]})
    assert flags.flagged_points(flags.table(clean, "method"), "{method}") == ""


def test_flags_raised_names_the_flagged_arms_in_one_sentence():
    flagged = pd.DataFrame(
        {
            "recipe": ["iht", "dsd"],
            "flagged_runs": ["2 of 2", "1 of 2"],
            "flags": ["at chance level", "class never predicted"],
        }
    )
    assert flags.flags_raised(flagged, "recipe", ["iht", "cubic"]) == (
        " Flags raised: iht (at chance level, 2 of 2 runs)."
    )
    both = flags.flags_raised(flagged, "recipe", ["dsd", "iht"])
    assert both == (
        " Flags raised: iht (at chance level, 2 of 2 runs); dsd (class never predicted, "
        "1 of 2 runs)."
    )
    assert flags.flags_raised(flagged, "recipe", ["cubic"]) == ""

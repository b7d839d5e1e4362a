"""The ``sparsity-lab`` command: ``list``, ``prune`` end to end, and its argument errors."""

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import sparsity_lab as sl
from sparsity_lab import masks, models, recipes, registry
from sparsity_lab.cli import main

ROOT = Path(__file__).resolve().parents[1]
# LeNet-300-100 on 8x8 digits: weights counted by hand, and how many 80% sparsity keeps.
LENET300_DIGITS_WEIGHTS = 64 * 300 + 300 * 100 + 100 * 10  # 50200
KEPT_AT_80 = LENET300_DIGITS_WEIGHTS - round(0.8 * LENET300_DIGITS_WEIGHTS)  # 10040

# A report row: name, shape ("(300, 64)" or "None" for the total), then the numbers.
ROW = re.compile(
    r"^\s*(?P<name>\S+)\s+(?P<shape>\([^)]*\)|None)\s+(?P<parameters>\d+)\s+"
    r"(?P<nonzeros>\d+)\s+(?P<sparsity>[0-9.eE+-]+)\s"
)


def _prune_args(cache_dir: Path, *extra: str) -> list[str]:
    return [
        "prune",
        "--model",
        "lenet300",
        "--data",
        "digits",
        "--method",
        "magnitude",
        "--epochs",
        "2",
        "--finetune-epochs",
        "1",
        "--cache-dir",
        str(cache_dir),
        "--no-progress",
        *extra,
    ]


def _rows(out: str) -> dict[str, dict[str, float]]:
    """The report table printed by ``prune``, by row name."""
    rows = {}
    for line in out.splitlines():
        if match := ROW.match(line):
            rows[match["name"]] = {
                k: float(match[k]) for k in ("parameters", "nonzeros", "sparsity")
            }
    return rows


def _number_after(label: str, text: str) -> float:
    match = re.search(rf"{label} (\d+\.\d+)", text)
    assert match, f"no {label!r} in {text!r}"
    return float(match[1])


def _listed(out: str) -> dict[str, list[str]]:
    """``list`` output parsed back: heading ``kind (n)``, then one indented line per name."""
    groups: dict[str, list[str]] = {}
    counts: dict[str, int] = {}
    kind = None
    for line in out.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            kind, count = re.fullmatch(r"(\w+) \((\d+)\)", line).groups()
            groups[kind], counts[kind] = [], int(count)
        else:
            groups[kind].append(line.split()[0])
    assert counts == {k: len(v) for k, v in groups.items()}
    return groups


def _exits_with_usage_error(capsys, argv: list[str]) -> str:
    """Run ``main(argv)``, expect argparse's exit code 2, return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


# --- list ---------------------------------------------------------------------------------


def test_list_prints_every_name_under_its_kind(capsys):
    assert main(["list"]) == 0
    groups = _listed(capsys.readouterr().out)
    expected = {k: registry.available(k) for k in registry.KINDS if registry.available(k)}
    assert groups == expected
    assert "magnitude" in groups["criterion"]


def test_list_one_kind(capsys):
    assert main(["list", "--kind", "budget"]) == 0
    listed = _listed(capsys.readouterr().out)
    assert listed == {"budget": registry.available("budget")}
    assert {"er", "erk", "global", "uniform"} <= set(listed["budget"])


def test_list_unknown_kind(capsys):
    err = _exits_with_usage_error(capsys, ["list", "--kind", "budgets"])
    assert "'budget'" in err  # argparse lists the choices


def test_module_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, "-m", "sparsity_lab.cli", "list", "--kind", "criterion"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "magnitude" in done.stdout


def test_console_script_is_declared():
    (script,) = metadata.entry_points(group="console_scripts", name="sparsity-lab")
    assert script.load() is main


# --- prune --------------------------------------------------------------------------------


def test_prune_end_to_end_then_from_cache(capsys, tmp_path):
    assert main(_prune_args(tmp_path, "--sparsity", "0.8")) == 0
    first = capsys.readouterr().out
    assert "trained for 2 epochs" in first
    assert _number_after("sparsity", first) == pytest.approx(0.8, abs=5e-5)
    rows = _rows(first)
    assert list(rows) == ["fc1.weight", "fc2.weight", "fc3.weight", "total"]
    total = rows["total"]
    assert total["parameters"] == LENET300_DIGITS_WEIGHTS
    assert total["nonzeros"] == KEPT_AT_80
    assert total["sparsity"] == pytest.approx(0.8, abs=1e-6)
    assert sum(rows[n]["nonzeros"] for n in rows if n != "total") == KEPT_AT_80
    assert len(list(tmp_path.glob("*.pt"))) == 1

    assert main(_prune_args(tmp_path, "--sparsity", "0.8")) == 0
    second = capsys.readouterr().out
    assert "loaded from cache" in second
    dense_first = _number_after("test accuracy", first)
    assert _number_after("test accuracy", second) == dense_first
    # everything after the dense model is seeded too, so the whole report repeats
    assert second == first.replace("trained for 2 epochs", "loaded from cache")


def test_no_cache_trains_and_writes_nothing(capsys, tmp_path):
    assert main(_prune_args(tmp_path, "--sparsity", "0.5", "--no-cache")) == 0
    assert "trained for 2 epochs" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_save_writes_a_loadable_masked_state_dict(capsys, tmp_path):
    path = tmp_path / "pruned.pt"
    assert main(_prune_args(tmp_path / "cache", "--sparsity", "0.8", "--save", str(path))) == 0
    out = capsys.readouterr().out
    assert str(path) in out

    state = torch.load(path, weights_only=True)
    fresh = models.build("lenet300", input_shape=(64,), n_classes=10)
    masks.load_state_dict(fresh, state)
    assert sl.sparsity(fresh) == pytest.approx(0.8, abs=1e-12)
    assert sum(int(m.sum()) for m in masks.masks(fresh).values()) == KEPT_AT_80

    # the loaded model is the one that was reported: same test accuracy
    x, y = recipes.task("lenet300", "digits", seed=0).bundle.test.tensors
    with torch.no_grad():
        accuracy = int((fresh.eval()(x).argmax(1) == y).sum()) / len(y)
    reported = float(re.search(r"test accuracy (\d\.\d+) \(dense", out)[1])
    assert accuracy == pytest.approx(reported, abs=5e-5)


@pytest.mark.parametrize("extra", [[], ["--sparsity", "0.5"]])
def test_nm_pattern_implies_the_sparsity(capsys, tmp_path, extra):
    assert main(_prune_args(tmp_path, "--pattern", "2:4", *extra)) == 0
    rows = _rows(capsys.readouterr().out)
    # 2:4 keeps exactly half of every layer (all input sizes 64, 300, 100 divide by 4)
    assert list(rows) == ["fc1.weight", "fc2.weight", "fc3.weight", "total"]
    for name, row in rows.items():
        assert row["nonzeros"] * 2 == row["parameters"], name
    assert rows["total"]["sparsity"] == 0.5


# --- argument errors ----------------------------------------------------------------------


def test_misspelt_method_suggests_the_right_one(capsys, tmp_path):
    args = _prune_args(tmp_path, "--sparsity", "0.8")
    args[args.index("magnitude")] = "magnitud"
    err = _exits_with_usage_error(capsys, args)
    assert "'magnitud'" in err
    assert "Did you mean 'magnitude'" in err
    assert list(tmp_path.iterdir()) == []  # failed before any training


def test_misspelt_budget_suggests_the_right_one(capsys, tmp_path):
    err = _exits_with_usage_error(
        capsys, _prune_args(tmp_path, "--sparsity", "0.8", "--budget", "globl")
    )
    assert "'global'" in err


@pytest.mark.parametrize("value", ["1.5", "1", "-0.1"])
def test_sparsity_out_of_range(capsys, tmp_path, value):
    err = _exits_with_usage_error(capsys, _prune_args(tmp_path, "--sparsity", value))
    assert "sparsity must be in [0, 1)" in err


def test_sparsity_not_a_number(capsys, tmp_path):
    err = _exits_with_usage_error(capsys, _prune_args(tmp_path, "--sparsity", "high"))
    assert "sparsity must be a number, got 'high'" in err


def test_unknown_model_lists_the_choices(capsys, tmp_path):
    args = _prune_args(tmp_path, "--sparsity", "0.8")
    args[args.index("lenet300")] = "lenet"
    err = _exits_with_usage_error(capsys, args)
    assert "'lenet'" in err
    assert "lenet300" in err


@pytest.mark.parametrize("extra", [["--sparsity", "0.5"], []])
def test_unknown_pattern(capsys, tmp_path, extra):
    err = _exits_with_usage_error(capsys, _prune_args(tmp_path, "--pattern", "diagonal", *extra))
    assert "unknown pattern 'diagonal'" in err
    assert "2:4" in err  # says how to write a valid one


def test_missing_sparsity_for_an_unstructured_pattern(capsys, tmp_path):
    err = _exits_with_usage_error(capsys, _prune_args(tmp_path))
    assert "--sparsity is required" in err


def test_nm_pattern_with_a_contradicting_sparsity(capsys, tmp_path):
    err = _exits_with_usage_error(
        capsys, _prune_args(tmp_path, "--pattern", "2:4", "--sparsity", "0.8")
    )
    assert "fixes the sparsity at 0.5" in err
    assert list(tmp_path.iterdir()) == []  # failed before any training


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--epochs", "0", "--epochs must be >= 1"),
        ("--epochs", "-1", "--epochs must be >= 1"),
        ("--finetune-epochs", "-1", "--finetune-epochs must be >= 0"),
    ],
)
def test_bad_epochs(capsys, tmp_path, option, value, message):
    args = _prune_args(tmp_path, "--sparsity", "0.5")
    args[args.index(option) + 1] = value
    assert message in _exits_with_usage_error(capsys, args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("model", "data"), [("lenet5", "mnist1d"), ("tiny_transformer", "digits")])
def test_model_data_mismatch(capsys, tmp_path, model, data):
    args = _prune_args(tmp_path, "--sparsity", "0.5")
    args[args.index("lenet300")] = model
    args[args.index("digits")] = data
    err = _exits_with_usage_error(capsys, args)
    assert f"model {model!r}" in err
    assert repr(data) in err
    assert list(tmp_path.iterdir()) == []


# --- train --------------------------------------------------------------------------------


def _train_args(*extra: str) -> list[str]:
    return [
        "train",
        "--model",
        "lenet300",
        "--data",
        "digits",
        "--epochs",
        "2",
        "--no-progress",
        *extra,
    ]


def test_list_training_methods(capsys):
    assert main(["list", "--kind", "training"]) == 0
    listed = _listed(capsys.readouterr().out)["training"]
    assert {"gmp", "imp", "rigl", "set", "acdc", "cram"} <= set(listed)


def test_train_rigl_with_erk_reaches_the_exact_sparsity(capsys):
    assert main(_train_args("--method", "rigl", "--sparsity", "0.9", "--budget", "erk")) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["total"]["nonzeros"] == LENET300_DIGITS_WEIGHTS - round(
        0.9 * LENET300_DIGITS_WEIGHTS
    )
    # ERK gives the small last layer a higher density than the big first ones
    assert rows["fc3.weight"]["sparsity"] < rows["fc1.weight"]["sparsity"]
    assert "budget erk" in out
    ratio = float(re.search(r"\((\d+\.\d+) x dense training\)", out)[1])
    # 20 steps, none of them a RigL update (every 100): every step costs 10% of a dense one
    assert ratio == pytest.approx(0.1, abs=1e-3)


def test_train_passes_method_options(capsys):
    args = _train_args("--method", "gmp", "--pattern", "2:4", "--option", "frequency=3")
    assert main(args) == 0
    rows = _rows(capsys.readouterr().out)
    assert all(r["nonzeros"] * 2 == r["parameters"] for r in rows.values())


def test_train_acdc_reports_both_members_of_the_pair(capsys):
    assert main(_train_args("--method", "acdc", "--sparsity", "0.8", "--epochs", "4")) == 0
    out = capsys.readouterr().out
    assert "dense model of the pair: test accuracy" in out
    assert _rows(out)["total"]["sparsity"] == pytest.approx(0.8, abs=1e-4)


def test_train_misspelt_method(capsys):
    err = _exits_with_usage_error(capsys, _train_args("--method", "rigll", "--sparsity", "0.9"))
    assert "Did you mean 'rigl'" in err


def test_train_unknown_option_lists_the_accepted_ones(capsys):
    err = _exits_with_usage_error(
        capsys, _train_args("--method", "rigl", "--sparsity", "0.9", "--option", "speed=2")
    )
    assert "unknown option(s) speed for 'rigl'" in err
    assert "drop_fraction" in err


def test_train_malformed_option(capsys):
    err = _exits_with_usage_error(
        capsys, _train_args("--method", "rigl", "--sparsity", "0.9", "--option", "0.3")
    )
    assert "an option is key=value" in err


def test_train_needs_a_sparsity(capsys):
    err = _exits_with_usage_error(capsys, _train_args("--method", "rigl"))
    assert "--sparsity is required" in err


def test_train_runs_the_issue_example_with_the_default_model_and_data(capsys):
    # the exact command line of the issue, plus one epoch to keep the test fast
    argv = ["train", "--method", "rigl", "--sparsity", "0.9", "--budget", "erk", "--epochs", "1"]
    assert main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("trained lenet300 on mnist with rigl")
    weights = 784 * 300 + 300 * 100 + 100 * 10  # LeNet-300-100 on 28x28 images
    assert _rows(out)["total"]["nonzeros"] == weights - round(0.9 * weights)


def test_train_imp_ends_at_the_target_with_a_global_budget(capsys):
    args = _train_args("--method", "imp", "--sparsity", "0.8", "--option", "rounds=2")
    assert main([*args, "--option", "baselines=()"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["total"]["nonzeros"] == KEPT_AT_80
    # one global threshold: the layers end at different sparsities
    assert len({round(r["sparsity"], 3) for n, r in rows.items() if n != "total"}) > 1


def test_train_edge_popup_keeps_the_random_weights_and_prunes_each_layer(capsys, tmp_path):
    path = tmp_path / "popup.pt"
    args = _train_args("--method", "edge_popup", "--sparsity", "0.5", "--save", str(path))
    assert main([*args, "--option", "init=keep"]) == 0  # keep the model's own random weights
    rows = _rows(capsys.readouterr().out)
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):  # uniform: each layer at 50%
        assert rows[name]["nonzeros"] == rows[name]["parameters"] // 2
    # every weight, kept or not, is still its initial value (same seed, same build)
    t = recipes.task("lenet300", "digits", seed=0)
    init = t.build().state_dict()
    saved = torch.load(path, weights_only=True)
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        mask = saved[name.replace("weight", "parametrizations.weight.0.mask")]
        original = saved[name.replace("weight", "parametrizations.weight.original")]
        assert mask.sum() == mask.numel() // 2
        assert torch.equal(original, init[name])


def test_train_cram_prunes_once_after_training(capsys):
    assert main(_train_args("--method", "cram", "--sparsity", "0.8")) == 0
    out = capsys.readouterr().out
    # CrAM trains a dense model; the one-shot pruning comes after
    assert re.search(r"with cram .* sparsity 0\.0000", out)
    assert _number_after("one-shot pruned to sparsity", out) == pytest.approx(0.8, abs=1e-4)
    assert _rows(out)["total"]["nonzeros"] == KEPT_AT_80


@pytest.mark.parametrize("command", ["prune", "train"])
def test_save_into_a_missing_folder_fails_before_any_training(capsys, tmp_path, command):
    target = tmp_path / "missing" / "model.pt"
    extra = ["--model", "lenet300", "--data", "digits"] if command == "prune" else []
    with pytest.raises(SystemExit):
        main(
            [
                command,
                "--method",
                "magnitude" if command == "prune" else "gmp",
                "--sparsity",
                "0.5",
                "--save",
                str(target),
                *extra,
            ]
        )
    err = capsys.readouterr().err
    assert "nothing was trained" in err
    assert not target.parent.exists()


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--dense", "nope.weight"], "not pruning targets"),
        (["--pattern", "kernel"], "does not fit"),
        (["--seed", "-1"], "seed must be 0 or more"),
    ],
)
def test_prune_refuses_bad_layers_patterns_and_seeds_before_training(extra, match, capsys):
    args = ["prune", "--model", "lenet300", "--data", "digits", "--method", "magnitude"]
    args += ["--sparsity", "0.5", "--no-cache", *extra]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    out = capsys.readouterr()
    assert match in out.err
    assert "trained for" not in out.out  # refused before the dense training


def test_prune_json_then_evaluate_and_export_the_saved_model(capsys, tmp_path):
    import json

    saved = tmp_path / "pruned.pt"
    args = _prune_args(tmp_path / "cache", "--sparsity", "0.8", "--save", str(saved))
    assert main([*args, "--json", str(tmp_path / "run.json")]) == 0
    record = json.loads((tmp_path / "run.json").read_text())
    capsys.readouterr()
    assert record["measured_sparsity"] == pytest.approx(1 - KEPT_AT_80 / LENET300_DIGITS_WEIGHTS)
    assert record["report"][-1]["nonzeros"] == KEPT_AT_80

    common = ["--model", "lenet300", "--data", "digits", "--checkpoint", str(saved)]
    assert main(["evaluate", *common, "--json", "-"]) == 0
    out = capsys.readouterr().out
    evaluated = json.loads(out[out.index("{") :])
    # the saved model is the one the prune run measured
    assert evaluated["accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-12)
    assert evaluated["sparsity"] == pytest.approx(record["measured_sparsity"])

    plain = tmp_path / "pruned.safetensors"
    assert main(["export", *common, "--out", str(plain)]) == 0
    assert main(["evaluate", *common[:4], "--checkpoint", str(plain), "--json", "-"]) == 0
    out = capsys.readouterr().out
    again = json.loads(out[out.index("{\n") :])
    assert again["accuracy"] == evaluated["accuracy"]


def test_evaluate_and_export_refuse_what_does_not_fit(capsys, tmp_path):
    other = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), other)
    base = ["--model", "lenet300", "--data", "digits", "--checkpoint"]
    with pytest.raises(SystemExit):
        main(["evaluate", *base, str(tmp_path / "missing.pt")])
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", *base, str(other)])
    assert "does not fit a lenet300 for digits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", *base, str(other), "--out", str(tmp_path / "model.bin")])
    assert "the suffix says the format" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", *base, str(other), "--out", str(tmp_path / "m.onnx"), "--with-masks"])
    assert "--with-masks applies to safetensors" in capsys.readouterr().err


# --- recipes in YAML ------------------------------------------------------------------------


def test_prune_takes_its_options_from_a_yaml_recipe_and_flags_override_it(capsys, tmp_path):
    import json

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "model: lenet300\ndata: digits\nmethod: magnitude\nsparsity: 0.8\nepochs: 2\n"
        "finetune-epochs: 1\nbudget: uniform\ndense: [fc3.weight]\nprogress: false\n"
        f"cache_dir: {tmp_path / 'cache'}\n"
    )
    out = tmp_path / "run.json"
    assert main(["prune", "--recipe", str(recipe), "--sparsity", "0.7", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert (record["method"], record["budget"]) == ("magnitude", "uniform")  # from the recipe
    layers = {row["name"]: row for row in record["report"]}
    assert layers["fc3.weight"]["sparsity"] == 0  # dense: [fc3.weight]
    assert layers["total"]["sparsity"] == pytest.approx(0.7, abs=1e-3)  # the flag wins


def test_train_recipe_carries_the_method_options(capsys, tmp_path):
    recipe = tmp_path / "rigl.yaml"
    recipe.write_text(
        "method: rigl\nsparsity: 0.9\nbudget: erk\nmodel: lenet300\ndata: digits\nepochs: 1\n"
        "progress: false\noptions:\n  drop_fraction: 0.2\n  timing: reference\n"
    )
    assert main(["train", "--recipe", str(recipe)]) == 0
    assert "with rigl" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: rigl\nsparsity: 0.9\noptions:\n  speed: 2\n")
    err = _exits_with_usage_error(capsys, ["train", "--recipe", str(bad)])
    assert "unknown option(s) speed for 'rigl'" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("method: magnitude\nsparsity: 1.5\n", "sparsity must be in [0, 1)"),
        ("method: magnitude\nspars1ty: 0.9\n", "unknown option 'spars1ty'; it accepts"),
        ("model: lenet301\n", "model must be one of"),
        ("no_cache: yes please\n", "no_cache must be true or false"),
        ("- a list\n", "must be a mapping of option: value"),
        ("method: [unclosed\n", "is not valid YAML"),
        ("!!python/object/apply:os.system ['true']\n", "is not valid YAML"),  # safe_load
    ],
)
def test_a_bad_recipe_is_refused_with_the_reason(capsys, tmp_path, text, message):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    err = _exits_with_usage_error(capsys, ["prune", "--recipe", str(recipe)])
    assert message in err


def test_a_missing_recipe_file_is_named(capsys, tmp_path):
    err = _exits_with_usage_error(capsys, ["prune", "--recipe", str(tmp_path / "none.yaml")])
    assert "none.yaml" in err and "No such file" in err

"""The benchmark harness, its efficiency metrics and the leaderboard's summaries."""

import json
import math
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import bench, efficiency, leaderboard, masks, recipes, registry

EXAMPLE = Path(__file__).resolve().parent.parent / "benchmarks" / "leaderboard"


@pytest.fixture
def clean_registry(monkeypatch, tmp_path):
    """Methods a test registers (and the files that did it) are gone after it; the dense
    models it trains go to its own cache."""
    registry.available()  # load the built-in methods first, so only the test's are removed
    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    for name in [n for n in sys.modules if n.startswith("sparsity_lab_bench_")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setenv("SPARSITY_LAB_CACHE", str(tmp_path / "dense"))
    monkeypatch.setattr(recipes, "_DENSE_MODELS", {})
    yield
    for name in [n for n in sys.modules if n.startswith("sparsity_lab_bench_")]:
        del sys.modules[name]


def tiny_config(**changes):
    config = {
        "name": "tiny",
        "model": "lenet300",
        "data": "digits",
        "sparsities": [0.8],
        "seeds": [0],
        "finetune_epochs": 1,
        "methods": ["snip"],
    }
    return {**config, **changes}


# ------------------------------------------------------------------------ efficiency metrics


def test_efficiency_metrics_match_hand_computations():
    # 74.31% with 2.49 M weights left: 74.31 / 2.49 points per million
    assert efficiency.accuracy_per_parameter(0.7431, 2.49e6) == pytest.approx(29.8434, abs=1e-4)
    # 2 points lost for 9 M removed weights: -2 / 9 points per million removed
    change = efficiency.accuracy_change_per_removed_parameter(0.75, 0.77, 1e6, 10e6)
    assert change == pytest.approx(-2 / 9)
    assert math.isnan(efficiency.accuracy_change_per_removed_parameter(0.77, 0.77, 10, 10))
    assert efficiency.flops_saved(25.0, 100.0) == 0.75
    assert efficiency.compression(10, 100) == 10.0
    # dense 0.95, one point of tolerance: 0.945 at 4x and 0.941 at 10x qualify, 0.93 does not
    iso = efficiency.iso_accuracy_compression([0.945, 0.941, 0.93], [25, 10, 5], 0.95, 100)
    assert iso == 10.0
    assert efficiency.iso_accuracy_compression([0.5], [10], 0.95, 100) == 1.0


def test_efficiency_metrics_refuse_impossible_counts():
    with pytest.raises(ValueError, match="nonzeros must be positive"):
        efficiency.accuracy_per_parameter(0.9, 0)
    with pytest.raises(ValueError, match="exceed the parameters"):
        efficiency.accuracy_change_per_removed_parameter(0.9, 0.9, 11, 10)
    with pytest.raises(ValueError, match="2 accuracies but 1 nonzero counts"):
        efficiency.iso_accuracy_compression([0.9, 0.8], [1], 0.9, 10)


# ------------------------------------------------------------------------------- the config


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config keys \['epochs'\]"):
        bench.load_config(tiny_config(epochs=3))
    with pytest.raises(ValueError, match=r"the config needs \['sparsities'\]"):
        bench.load_config({k: v for k, v in tiny_config().items() if k != "sparsities"})
    with pytest.raises(ValueError, match="unknown method 'snipp'.*imports"):
        bench.load_config(tiny_config(methods=["snipp"]))
    with pytest.raises(ValueError, match=r"labels \['magnitude \(global\)'\] appear twice"):
        bench.load_config(
            tiny_config(methods=[{"method": "magnitude", "label": "magnitude (global)"}])
        )
    with pytest.raises(FileNotFoundError, match="imports: no file"):
        bench.load_config(tiny_config(imports=["missing.py"]))
    with pytest.raises(ValueError, match="seeds is empty"):
        bench.load_config(tiny_config(seeds=[]))
    # YAML is read safely: a python object tag is refused, never run
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    import yaml

    with pytest.raises(yaml.constructor.ConstructorError):
        bench.load_config(unsafe)


def test_method_kinds_are_inferred_and_their_keys_checked():
    config = bench.load_config(
        tiny_config(
            methods=[
                "snip",
                "rigl",
                "static",
                "l1",
                {"method": "snip", "kind": "at_init", "label": "snip at init"},
                {"method": "gmp", "kind": "regularize", "label": "gmp as reference"},
            ]
        )
    )
    kinds = {entry["label"]: entry["kind"] for entry in config["methods"]}
    assert kinds == {
        "snip": "prune",
        "rigl": "train",
        "static": "train",
        "l1": "regularize",
        "snip at init": "at_init",
        "gmp as reference": "regularize",
    }
    errors = {
        "unknown kind 'grow'": {"method": "snip", "kind": "grow"},
        "not a registered training": {"method": "snip", "kind": "train"},
        "epochs_factor is for kinds that train": {"method": "snip", "epochs_factor": 2},
        "epochs_factor must be > 0": {"method": "rigl", "epochs_factor": 0},
        "shuffle is for kind 'at_init'": {"method": "rigl", "shuffle": True},
        "prune_with: magnitude prunes a train run": {"method": "snip", "prune_with": "magnitude"},
        r"unknown keys \['epochs'\]": {"method": "rigl", "epochs": 3},
        "a run's seed is one of the config's seeds": {"method": "rigl", "options": {"seed": 1}},
        "ends with a dense model: add prune_with": {"method": "cram"},
    }
    for message, entry in errors.items():
        with pytest.raises(ValueError, match=message):
            bench.load_config(tiny_config(methods=[entry]))


@pytest.mark.parametrize(
    "path",
    sorted((EXAMPLE.parent / "configs").glob("*.yaml")) + sorted(EXAMPLE.glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_committed_config_loads_and_names_its_table(path, clean_registry):
    config = bench.load_config(path)
    assert config["name"] == path.stem  # the table it writes is named after the file
    assert bench.cells(config)


def test_cells_hold_every_baseline_and_one_arm_for_a_pattern_that_fixes_sparsity():
    config = bench.load_config(
        tiny_config(
            sparsities=[0.5, 0.9],
            methods=[
                "snip",
                {"method": "magnitude", "label": "2:4", "options": {"pattern": "2:4"}},
            ],
        )
    )
    arms = [(a["label"], a["sparsity"]) for a in bench.cells(config)]
    assert arms == [
        ("dense", 0.0),
        ("magnitude (global)", 0.5),
        ("magnitude (global)", 0.9),
        ("magnitude (uniform)", 0.5),
        ("magnitude (uniform)", 0.9),
        ("random (magnitude's layer counts)", 0.5),
        ("random (magnitude's layer counts)", 0.9),
        ("snip", 0.5),
        ("snip", 0.9),
        ("2:4", 0.5),
    ]


# ------------------------------------------------------------------------------- the runs


def test_a_benchmark_measures_each_arm_as_counted_by_hand(clean_registry, tmp_path):
    table = bench.run(tiny_config(), cache_dir=tmp_path / "runs")
    assert list(table.columns) == list(bench.COLUMNS)
    assert table["method"].tolist() == [
        "dense",
        "magnitude (global)",
        "magnitude (uniform)",
        "random (magnitude's layer counts)",
        "snip",
    ]
    rows = table.set_index("method")
    weights = 64 * 300 + 300 * 100 + 100 * 10  # LeNet-300-100 on 8x8 digits
    kept = weights - round(0.8 * weights)
    assert rows.loc["dense", "nonzeros"] == weights == rows.loc["snip", "parameters"]
    assert rows.loc["dense", "flops"] == 2 * weights  # a multiply and an add per weight
    assert rows.loc["dense", "dense_storage_bits"] == 32 * weights
    assert rows.loc["dense", "training_flops"] == 0  # the dense model is not fine-tuned
    for method in ["magnitude (global)", "random (magnitude's layer counts)", "snip"]:
        assert rows.loc[method, "nonzeros"] == kept
        assert rows.loc[method, "sparsity"] == pytest.approx(1 - kept / weights)
        assert rows.loc[method, "flops"] == 2 * kept
    t, _, info = recipes.dense("lenet300", "digits", 0)
    assert (table["dense_test_accuracy"] == info["test_accuracy"]).all()
    assert rows.loc["dense", "test_accuracy"] == info["test_accuracy"]
    # the random baseline keeps magnitude's count in every layer
    found = masks.masks(sl.prune(recipes.dense("lenet300", "digits", 0)[1], "magnitude", 0.8))
    random = recipes.random_like(found, seed=0)
    assert all(int(random[n].sum()) == int(found[n].sum()) for n in found)
    # one epoch of fine-tuning: three sparse forward passes per training example
    assert rows.loc["snip", "training_flops"] == 3 * 2 * kept * len(t.bundle.train)
    # CSR storage: 32-bit values and column indices, one 32-bit row pointer per row + 1
    rows_of = 300 + 100 + 10
    assert rows.loc["snip", "storage_bits"] == 32 * (2 * kept + rows_of + 3)
    assert math.isnan(rows.loc["snip", "perplexity"])  # not a next-token task
    assert (table["latency_seconds"] > 0).all()


def test_runs_that_train_count_their_epochs_and_flops_by_hand(clean_registry, monkeypatch):
    methods = [
        {"method": "static", "options": {"budget": "erk"}, "epochs_factor": 0.5},
        {"method": "snip", "kind": "at_init", "label": "snip at init", "epochs_factor": 0.25},
        {"method": "snip", "kind": "at_init", "label": "shuffled", "epochs_factor": 0.25,
         "shuffle": True},
        "movement",
        {"method": "cram", "prune_with": "magnitude", "epochs_factor": 0.25},
        {"method": "prox_l1", "epochs_factor": 0.25},
        {"method": "imp", "options": {"rounds": 1, "baselines": ["reinit"],
         "baseline_rounds": "last"}, "epochs_factor": 0.25},
    ]  # fmt: skip
    reestimated = []
    monkeypatch.setattr(bench, "reestimate_batchnorm", lambda m, data: reestimated.append(data))
    table = bench.run(tiny_config(methods=methods, bn_reestimate=True), cache_dir=None)
    rows = table.set_index("method")
    t, _, _ = recipes.dense("lenet300", "digits", 0)
    n, epochs = len(t.bundle.train), recipes.recipe_for("lenet300", "digits").epochs
    weights = 64 * 300 + 300 * 100 + 100 * 10
    # the recipe's dense training: three dense forward passes per example and epoch
    assert (table["dense_training_flops"] == 3 * 2 * weights * n * epochs).all()
    # a fixed mask trains at its own cost for half the recipe's epochs
    static = rows.loc["static"]
    assert static["kind"] == "train" and static["epochs"] == round(epochs / 2)
    assert static["finetune_epochs"] == 0
    assert static["training_flops"] == 3 * static["flops"] * n * static["epochs"]
    # pruned at initialisation: trained with the mask fixed; the shuffled twin keeps every
    # layer's count, so its nonzeros and FLOPs are the mask's
    at_init, shuffled = rows.loc["snip at init"], rows.loc["shuffled"]
    assert at_init["epochs"] == round(epochs / 4) and at_init["kind"] == "at_init"
    assert at_init["training_flops"] == 3 * at_init["flops"] * n * at_init["epochs"]
    assert shuffled["nonzeros"] == at_init["nonzeros"] and shuffled["flops"] == at_init["flops"]
    # movement follows one epoch of dense training with its tracker, then fine-tunes
    movement = rows.loc["movement"]
    assert movement["training_flops"] == 3 * 2 * weights * n + 3 * movement["flops"] * n
    assert "tracked_accuracy" in json.loads(movement["extras"])
    # CrAM ends dense and is pruned once by magnitude: at the target, its dense accuracy kept
    cram = rows.loc["cram"]
    assert cram["sparsity"] == pytest.approx(0.8, abs=1e-3) and cram["finetune_epochs"] == 1
    assert 0 <= json.loads(cram["extras"])["trained_accuracy"] <= 1
    # a regularizer's rule reaches some sparsity (in the extras), and the projection only
    # adds zeros up to the target
    reg = rows.loc["prox_l1"]
    assert reg["kind"] == "regularize" and reg["sparsity"] >= 0.8 - 1e-3
    assert 0 <= json.loads(reg["extras"])["reached"] <= 1
    # IMP: a dense round and a pruned one, each a quarter of the recipe; the twin it trains
    # as a control is not counted
    imp, quarter = rows.loc["imp"], round(epochs / 4)
    assert imp["epochs"] == 2 * quarter
    assert imp["training_flops"] == 3 * (2 * weights + imp["flops"]) * n * quarter
    assert "reinit_val_accuracy" in json.loads(imp["extras"])
    # BatchNorm is re-estimated once after each one-shot pruning of a trained model, on the
    # calibration batches: the prune baselines and movement, and CrAM's final pruning
    one_shot = (table["kind"] == "prune") & (table["method"] != "dense")
    assert len(reestimated) == int(one_shot.sum()) + 1
    assert all(len(batches) == 8 for batches in reestimated)


def test_runs_that_train_use_the_recipes_batch_size_and_optimizer(monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def record(model, train, val, **options):
        seen.append((train.batch_size, options["optimizer"], options["lr"], options["epochs"]))
        raise Stop

    monkeypatch.setattr(bench, "fit", record)
    monkeypatch.setattr(
        sl.methods.base.TrainingMethod,
        "fit",
        lambda self, m, train, val, **o: record(m, train, val, **o),
    )
    recipe = recipes.Recipe(epochs=8, optimizer="adam", lr=0.003, batch_size=32)
    setting = bench.setting_of(bench.load_config(tiny_config()))
    task = recipes.task("lenet300", "digits", seed=0)
    for entry in ({"method": "rigl"}, {"method": "snip", "kind": "at_init"}):
        arm = {**bench._method_entry({**entry, "epochs_factor": 0.5}), "sparsity": 0.8}
        run = bench._Run(setting, arm, 0, task, recipe, 0.8)
        with pytest.raises(Stop):
            bench._STAGES[arm["kind"]](run, None)
    assert seen == [(32, "adam", 0.003, 4)] * 2


def test_regularize_runs_train_with_the_recipe_and_fine_tune_like_the_others(monkeypatch):
    from sparsity_lab.regularizers import compare

    seen = {}

    def record(task, method, sparsity, **options):
        seen.update(options)
        raise StopIteration

    monkeypatch.setattr(compare, "run", record)
    recipe = recipes.Recipe(epochs=8, optimizer="adam", lr=0.003, batch_size=32, momentum=0.5,
                            weight_decay=1e-4)  # fmt: skip
    setting = bench.setting_of(bench.load_config(tiny_config(finetune_lr=0.02)))
    entry = {"method": "l1", "options": {"targets": ["fc1.weight"]}, "epochs_factor": 0.5}
    arm = {**bench._method_entry(entry), "sparsity": 0.8}
    run = bench._Run(setting, arm, 0, recipes.task("lenet300", "digits"), recipe, 0.8)
    with pytest.raises(StopIteration):
        bench._STAGES["regularize"](run, None)
    assert (seen["optimizer"], seen["lr"], seen["epochs"], seen["batch_size"]) == (
        "adam",
        0.003,
        4,
        32,
    )
    assert seen["fit_options"] == {"momentum": 0.5, "weight_decay": 1e-4}
    assert (seen["finetune_optimizer"], seen["finetune_lr"]) == ("sgd", 0.02)
    assert seen["targets"] == ["fc1.weight"]


def test_an_entry_trains_with_its_papers_optimizer_in_place_of_the_recipes(monkeypatch):
    from sparsity_lab.regularizers import compare

    seen = {}

    def record(task, method, sparsity, **options):
        seen.update(options)
        raise StopIteration

    monkeypatch.setattr(compare, "run", record)
    recipe = recipes.Recipe(epochs=8, optimizer="sgd", lr=0.1, batch_size=32, momentum=0.9)
    setting = bench.setting_of(bench.load_config(tiny_config(finetune_lr=0.02)))
    entry = {"method": "variational_dropout", "training": {"optimizer": "adam", "lr": 1e-3}}
    arm = {**bench._method_entry(entry), "sparsity": 0.8}
    run = bench._Run(setting, arm, 0, recipes.task("lenet300", "digits"), recipe, 0.8)
    with pytest.raises(StopIteration):
        bench._STAGES["regularize"](run, None)
    # the paper's optimizer for the penalty's training, the recipe's epochs and batch, and
    # the protocol's fine-tuning, the same as every other method's
    assert (seen["optimizer"], seen["lr"], seen["epochs"], seen["batch_size"]) == (
        "adam",
        1e-3,
        8,
        32,
    )
    assert (seen["finetune_optimizer"], seen["finetune_lr"]) == ("sgd", 0.02)
    with pytest.raises(ValueError, match="cannot set \\['epochs'\\]"):
        bench._method_entry({"method": "l1", "training": {"epochs": 3}})
    with pytest.raises(ValueError, match="prune run fine-tunes"):
        bench._method_entry({"method": "snip", "training": {"lr": 0.1}})
    for bad, message in [
        ({"lr": -1}, "positive number"),
        ({"lr": True}, "positive number"),
        ({"weight_decay": "5e-4"}, "non-negative number"),
        ({"momentum": -0.1}, "non-negative number"),
        ({"optimizer": "rmsprop"}, "must be one of"),
        ({"lr_schedule": "cosine"}, "without a schedule"),
    ]:
        with pytest.raises(ValueError, match=message):
            bench._method_entry({"method": "l1", "training": bad})
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        bench._method_entry({"method": "rigl", "training": {"lr_schedule": "linear"}})
    trained = bench._method_entry({"method": "rigl", "training": {"lr_schedule": None}})
    assert trained["training"] == {"lr_schedule": None}  # a train run may drop its schedule
    with pytest.raises(ValueError, match="maps recipe settings"):
        bench._method_entry({"method": "l1", "training": "adam"})
    assert "training" not in bench._method_entry("l1")  # other runs' cache keys unchanged


def test_select_keeps_the_candidate_best_on_validation_and_counts_every_candidate(
    monkeypatch,
):
    """A stand-in compare.run whose validation accuracy peaks at strength 1e-3 and whose
    test accuracy would pick another: the choice follows validation, the table reports the
    chosen run, and the FLOPs and epochs count the three trainings."""
    from sparsity_lab.regularizers import compare

    val = {1e-4: 0.80, 1e-3: 0.90, 1e-2: 0.90}
    test = {1e-4: 0.99, 1e-3: 0.85, 1e-2: 0.95}
    calls = []

    def stand_in(task, method, sparsity, *, model, strength, **options):
        calls.append(strength)
        return {"val_accuracy": val[strength], "test_accuracy": test[strength],
                "finetune_flops": 10.0, "reached": sparsity, "strength": strength,
                "extra_parameters": 0, "seconds_per_epoch": 0.1}  # fmt: skip

    monkeypatch.setattr(compare, "run", stand_in)
    setting = bench.setting_of(bench.load_config(tiny_config()))
    entry = {"method": "l1", "select": {"strength": [1e-4, 1e-3, 1e-2]}}
    arm = {**bench._method_entry(entry), "sparsity": 0.8}
    t = recipes.task("lenet300", "digits")
    run = bench._Run(setting, arm, 0, t, recipes.Recipe(epochs=2), 0.8)
    _, result = bench._STAGES["regularize"](run, None)
    assert calls == [1e-4, 1e-3, 1e-2]
    assert result["test_accuracy"] == 0.85  # the first of the tied best on validation
    assert result["extras"]["selected"] == {"strength": 1e-3}
    assert [c["val_accuracy"] for c in result["extras"]["candidates"]] == [0.8, 0.9, 0.9]
    one = recipes.training_flops(t.build(), len(t.bundle.train), 2)
    assert result["training_flops"] == pytest.approx(3 * (one + 10.0))
    assert result["epochs"] == 6
    with pytest.raises(ValueError, match="kind 'regularize'"):
        bench._method_entry({"method": "snip", "select": {"strength": [1.0]}})
    with pytest.raises(ValueError, match="both fixed"):
        bench._method_entry(
            {"method": "l1", "options": {"strength": 1.0}, "select": {"strength": [2.0]}}
        )
    with pytest.raises(ValueError, match="non-empty list"):
        bench._method_entry({"method": "l1", "select": {"strength": 1.0}})
    assert "select" not in bench._method_entry("l1")  # other runs' cache keys unchanged


def test_timings_among_the_extras_are_left_out_of_comparisons():
    row = {"method": "l1", "target_sparsity": 0.9, "seed": 0, "flags": "", "pruned_flags": ""}
    a = pd.DataFrame([{**row, "extras": '{"reached": 0.5, "seconds_per_epoch": 0.1}'}])
    b = a.assign(extras='{"reached": 0.5, "seconds_per_epoch": 0.3}')
    assert bench.table_digest(a) == bench.table_digest(b)
    assert not [p for p in bench.compare(a, b) if p.startswith("extras")]
    c = a.assign(extras='{"reached": 0.6, "seconds_per_epoch": 0.1}')
    assert bench.table_digest(a) != bench.table_digest(c)
    assert [p for p in bench.compare(a, c) if p.startswith("extras")]


def test_a_rerun_reads_every_finished_run_from_the_cache(clean_registry, tmp_path, monkeypatch):
    first = bench.run(tiny_config(), cache_dir=tmp_path / "runs")

    def not_again(*args, **kwargs):
        raise AssertionError("a cached run was run again")

    monkeypatch.setattr(bench, "run_cell", not_again)
    again = bench.run(tiny_config(), cache_dir=tmp_path / "runs")
    pd.testing.assert_frame_equal(first, again)


def test_an_added_method_matches_its_hand_computation(clean_registry):
    bench.import_methods([str(EXAMPLE / "relative_magnitude.py")])
    layer = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 60.0]]))
    # row means 2 and 30: scores 0.5 1 1.5 and 1/3 2/3 2; the three lowest go at 50%
    scores = registry.get("relative_magnitude")().scores(layer, ["weight"], None)["weight"]
    expected = torch.tensor([[0.5, 1.0, 1.5], [1 / 3, 2 / 3, 2.0]])
    assert torch.allclose(scores, expected)
    sl.prune(layer, "relative_magnitude", 0.5)
    assert masks.masks(layer)["weight"].tolist() == [[0, 1, 1], [0, 0, 1]]
    # global magnitude would have emptied the first row instead
    plain = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        plain.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 60.0]]))
    assert masks.masks(sl.prune(plain, "magnitude", 0.5))["weight"][0].sum() == 0


# ----------------------------------------------------------------- manifest, files, compare


def test_write_saves_a_table_that_reads_back_the_same_and_a_manifest(clean_registry, tmp_path):
    table = bench.run(tiny_config(), cache_dir=None)
    csv_path, manifest_path = bench.write(table, tiny_config(), tmp_path / "out")
    assert bench.compare(bench.read(csv_path), table) == []
    record = json.loads(manifest_path.read_text())
    t, _, info = recipes.dense("lenet300", "digits", 0)
    assert record["data_splits"]["0"] == {
        split: recipes._fingerprint(getattr(t.bundle, split)) for split in ("train", "val", "test")
    }
    assert record["dense"]["0"]["test_accuracy"] == info["test_accuracy"]
    assert record["seeds"] == [0] and record["rows"] == len(table)
    assert record["dependencies"]["torch"] == torch.__version__
    assert record["table_sha256"] == bench.table_digest(bench.read(csv_path))
    assert "commit" in record["library"] and record["machine"]["threads_per_run"] == 1
    assert not list((tmp_path / "out").glob(".*.tmp"))  # nothing half-written left behind
    # what a notebook prints of it: the digest holds as written and fails once edited
    table, manifest = leaderboard.load("tiny", tmp_path / "out")
    lines, dense = leaderboard.provenance(table, manifest)
    assert "table digest matches: True" in lines and "lenet300 on digits" in lines
    assert dense.loc["0", "test accuracy"] == info["test_accuracy"]
    table.loc[0, "test_accuracy"] += 0.01
    assert "table digest matches: False" in leaderboard.provenance(table, manifest)[0]


@pytest.mark.parametrize(
    "manifest_path", sorted(EXAMPLE.glob("*.manifest.json")), ids=lambda p: p.name
)
def test_every_committed_table_is_the_one_its_manifest_describes(manifest_path):
    # a table edited or partly rerun outside the harness keeps its old manifest: the
    # notebooks would then print "table digest matches: False" beside results they read
    name = manifest_path.name.removesuffix(".manifest.json")
    table, manifest = leaderboard.load(name, EXAMPLE)
    assert manifest["benchmark"] == name and manifest["rows"] == len(table)
    assert bench.table_digest(table) == manifest["table_sha256"], (
        f"{name}.csv differs from what its manifest describes; regenerate both with "
        f"`sparsity-lab bench CONFIG --out benchmarks/leaderboard` on its config"
    )


def test_compare_names_what_differs(clean_registry):
    table = bench.run(tiny_config(), cache_dir=None)
    changed = table.copy()
    changed.loc[4, "test_accuracy"] += 0.01
    changed.loc[0, "wall_seconds"] += 5.0  # timings are the machine's: never compared
    changed.loc[1, "latency_seconds"] *= 3
    problems = bench.compare(changed, table)
    assert len(problems) == 1 and problems[0].startswith("test_accuracy: 1 runs differ")
    problems = bench.compare(table.iloc[:-1], table)
    assert problems == ["1 runs of the reference are missing, e.g. snip at sparsity 0.8, seed 0"]


def test_the_cli_runs_a_config_and_checks_it_against_a_table(clean_registry, tmp_path, capsys):
    import yaml

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config()))
    args = ["bench", str(path), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")]
    assert sl.cli.main(args) == 0
    written = tmp_path / "out" / "tiny.csv"
    assert written.is_file() and (tmp_path / "out" / "tiny.manifest.json").is_file()
    assert sl.cli.main([*args, "--compare", str(written)]) == 0
    assert "identical to" in capsys.readouterr().out
    tampered = bench.read(written)
    tampered.loc[1, "nonzeros"] += 1
    tampered.to_csv(tmp_path / "tampered.csv", index=False)
    assert sl.cli.main([*args, "--compare", str(tmp_path / "tampered.csv")]) == 1
    assert "nonzeros: 1 runs differ" in capsys.readouterr().out
    # the documented check compares with the table the run writes over: it must compare
    # with the table as it was, not with the one just written
    tampered.to_csv(written, index=False)
    assert sl.cli.main([*args, "--compare", str(written)]) == 1
    assert "nonzeros: 1 runs differ" in capsys.readouterr().out
    assert bench.compare(bench.read(written), tampered) != []  # the new table replaced it


# ---------------------------------------------------------------------------- a Dask cluster

KILLER = '''
"""A criterion that kills its worker process the first time it runs: a lost worker."""
import os
from pathlib import Path

from sparsity_lab.criteria.data_free import Magnitude
from sparsity_lab.registry import register

MARK = Path({mark!r})


@register("criterion", "dies_once")
class DiesOnce(Magnitude):
    """Magnitude, but the first call anywhere ends its process."""

    name = "dies_once"

    def scores(self, model, names, context):
        if not MARK.exists():
            MARK.write_text("died")
            os._exit(1)
        return super().scores(model, names, context)
'''


def test_a_local_dask_cluster_gives_the_serial_table_even_when_a_worker_dies(
    clean_registry, tmp_path
):
    pytest.importorskip("distributed")
    mark = tmp_path / "died"
    plugin = tmp_path / "dies_once.py"
    plugin.write_text(textwrap.dedent(KILLER.format(mark=str(mark))))
    config = tiny_config(seeds=[0, 1], imports=[str(plugin)], methods=["snip", "dies_once"])
    mark.write_text("the serial run must not die")
    serial = bench.run(config, cache_dir=None)
    mark.unlink()
    cache = tmp_path / "runs"
    clustered = bench.run(config, executor_spec="local:2", cache_dir=cache)
    assert mark.exists()  # a worker did die on its first dies_once run
    assert bench.compare(clustered, serial) == []
    # every run is in the cache, so a rerun on another executor runs none
    assert len(list(cache.glob("*.json"))) == len(serial)
    again = bench.run(config, executor_spec=None, cache_dir=cache)
    assert bench.compare(again, serial) == []


def test_executor_specs_are_checked():
    with pytest.raises(ValueError, match="unknown executor 'threads'"):
        with bench.executor("threads"):
            pass
    with bench.executor("serial") as pool:
        assert pool is None


# ---------------------------------------------------------------------------- leaderboard


def _table(rows):
    base = {
        "parameters": 100,
        "flops": 0.0,
        "storage_bits": 0,
        "training_flops": 0.0,
        "dense_training_flops": 0.0,
        "kind": "prune",
        "latency_seconds": 1e-4,
        "sparsity": 0.0,
        "flags": "",
        "dense_test_accuracy": 0.9,
    }
    return pd.DataFrame([{**base, **row} for row in rows])


def test_summary_pairs_each_method_with_the_baseline_on_the_same_seeds():
    table = _table(
        [
            {
                "method": "magnitude (global)",
                "target_sparsity": 0.9,
                "seed": s,
                "test_accuracy": a,
                "nonzeros": 10,
            }
            for s, a in [(0, 0.80), (1, 0.70), (2, 0.90)]
        ]
        + [
            {
                "method": "new",
                "target_sparsity": 0.9,
                "seed": s,
                "test_accuracy": a,
                "nonzeros": 10,
                "flags": "at chance level" if s == 2 else "",
            }
            for s, a in [(0, 0.85), (1, 0.76), (2, 0.93)]
        ]
    )
    out = leaderboard.summary(table).set_index("method")
    diffs = np.array([0.05, 0.06, 0.03])
    half = 4.302652729911275 * diffs.std(ddof=1) / math.sqrt(3)  # t_{0.975, 2}
    assert out.loc["new", "vs_baseline"] == pytest.approx(diffs.mean())
    assert out.loc["new", "vs_low"] == pytest.approx(diffs.mean() - half)
    assert out.loc["new", "vs_verdict"] == "better"
    assert out.loc["new", "flagged"] and not out.loc["magnitude (global)", "flagged"]
    assert math.isnan(out.loc["magnitude (global)", "vs_baseline"])
    assert out.loc["new", "accuracy_per_million"] == pytest.approx(
        100 * (0.85 + 0.76 + 0.93) / 3 / 1e-5
    )
    removed = (100 - 10) / 1e6
    assert out.loc["new", "change_per_million_removed"] == pytest.approx(
        100 * ((0.85 + 0.76 + 0.93) / 3 - 0.9) / removed
    )


def test_total_training_flops_add_the_dense_training_to_runs_that_prune_it():
    table = _table(
        [
            {"method": "dense", "kind": "prune", "training_flops": 0.0},
            {"method": "snip", "kind": "prune", "training_flops": 5.0},
            {"method": "rigl", "kind": "train", "training_flops": 40.0},
            {"method": "snip init", "kind": "at_init", "training_flops": 30.0},
        ]
    ).assign(dense_training_flops=100.0)
    assert leaderboard.total_training_flops(table).tolist() == [100.0, 105.0, 40.0, 30.0]


def test_an_extras_arm_and_the_dense_runs_pair_with_other_arms_on_the_seed():
    table = _table(
        [
            {"method": "dense", "target_sparsity": 0.0, "seed": 0, "test_accuracy": 0.95},
            {"method": "acdc", "target_sparsity": 0.9, "seed": 0, "test_accuracy": 0.91,
             "flags": "at chance level", "extras": '{"dense_member_accuracy": 0.94}'},
        ]
    )  # fmt: skip
    member = leaderboard.extras_arm(table, "acdc", "dense_member_accuracy", "acdc dense")
    assert member[["method", "test_accuracy", "flags"]].values.tolist() == [
        ["acdc dense", 0.94, ""]  # a model beside the run: the run's flags are not its own
    ]
    kept = leaderboard.extras_arm(table, "acdc", "dense_member_accuracy", "x", final=True)
    assert kept["flags"].tolist() == ["at chance level"]
    dense = leaderboard.dense_at(table, [0.8, 0.9])
    assert dense[["method", "target_sparsity"]].values.tolist() == [["dense", 0.8], ["dense", 0.9]]
    both = pd.concat([member, dense])
    row = sl.stats.paired(both[both["target_sparsity"] == 0.9], "method", "acdc dense", "dense",
                          metric="test_accuracy").iloc[0]  # fmt: skip
    assert row["mean_diff"] == pytest.approx(-0.01)


def test_load_together_keeps_each_shared_run_once_and_refuses_tables_that_disagree(tmp_path):
    def save(name, rows, data="mnist"):
        _table(rows).assign(pruned_flags="").to_csv(tmp_path / f"{name}.csv", index=False)
        manifest = {"config": {"model": "lenet300", "data": data}}
        (tmp_path / f"{name}.manifest.json").write_text(json.dumps(manifest))

    def run(method, seed, accuracy, sparsity=0.9):
        return {"method": method, "target_sparsity": sparsity, "seed": seed,
                "test_accuracy": accuracy}  # fmt: skip

    save("three", [run("dense", 0, 0.95, 0.0), run("gmp", 0, 0.9), run("set", 0, 0.8)])
    save("ten", [run("dense", 0, 0.95, 0.0), {**run("gmp", 0, 0.9), "flags": "second copy"},
                 run("gmp", 1, 0.88)])  # fmt: skip
    runs, manifests = leaderboard.load_together(["three", "ten"], tmp_path)
    assert set(runs["flags"]) == {""}  # the first table's copy of a shared run is kept
    assert sorted(zip(runs["method"], runs["seed"], strict=True)) == [
        ("dense", 0), ("gmp", 0), ("gmp", 1), ("set", 0)
    ]  # fmt: skip
    assert len(manifests) == 2
    save("other", [run("gmp", 0, 0.91)])
    with pytest.raises(ValueError, match=r"disagree on 1 shared run\(s\).*'gmp', 0.9, 0"):
        leaderboard.load_together(["three", "other"], tmp_path)
    save("digits", [run("gmp", 0, 0.9)], data="digits")
    with pytest.raises(ValueError, match="different settings"):
        leaderboard.load_together(["three", "digits"], tmp_path)
    with pytest.raises(ValueError, match="at least one table"):
        leaderboard.load_together([], tmp_path)


def test_pareto_front_keeps_the_points_nothing_beats():
    points = pd.DataFrame(
        {"nonzeros": [10, 20, 20, 30, 40], "test_accuracy": [0.5, 0.7, 0.6, 0.65, 0.9]}
    )
    front = leaderboard.pareto_front(points, "nonzeros")
    assert front.index.tolist() == [0, 1, 4]  # (20, 0.6) and (30, 0.65) are beaten by (20, 0.7)


def test_cards_give_each_method_its_iso_accuracy_compression():
    rows = [
        {"method": "m", "target_sparsity": s, "seed": seed, "test_accuracy": a, "nonzeros": k}
        for s, a, k in [(0.5, 0.895, 50), (0.8, 0.885, 20), (0.9, 0.80, 10)]
        for seed in (0, 1)
    ]
    card = leaderboard.cards(_table(rows), tolerance=0.01).iloc[0]
    assert card["iso_accuracy_compression"] == 2.0  # 0.885 is 1.5 points below 0.9
    assert card["best_accuracy"] == pytest.approx(0.895) and card["at_sparsity"] == 0.5
    assert card["sparsities"] == "0.5, 0.8, 0.9"


def test_plot_fronts_draws_one_panel_per_cost_with_the_front():
    import matplotlib.pyplot as plt

    rows = [
        {"method": m, "target_sparsity": s, "seed": seed, "test_accuracy": a, "nonzeros": k}
        for m, s, a, k in [("a", 0.5, 0.9, 50), ("a", 0.9, 0.8, 10), ("b", 0.5, 0.85, 50)]
        for seed in (0, 1)
    ]
    rows[2]["flags"] = "at chance level"  # one run of ("a", 0.9) is flagged
    fig = leaderboard.plot_fronts(_table(rows), costs=["nonzeros", "storage_bits"])
    try:
        assert len(fig.axes) == 2
        front = [line for line in fig.axes[0].lines if line.get_label() == "Pareto front"]
        # (10, 0.8) is flagged, so left out; (50, 0.9) beats (50, 0.85)
        assert front[0].get_xdata().tolist() == [50]
        assert front[0].get_ydata().tolist() == pytest.approx([0.9])
        hollow = [line for line in fig.axes[0].lines if line.get_markerfacecolor() == "white"]
        assert [line.get_xdata().tolist() for line in hollow] == [[10]]  # the flagged point
        # every method has its own colour and marker in the legend
        handles, labels = fig.axes[0].get_legend_handles_labels()
        styles = {
            (str(h.get_color()), h.get_marker())
            for h, lab in zip(handles, labels, strict=True)
            if lab in ("a", "b")
        }
        assert len(styles) == 2
    finally:
        plt.close(fig)

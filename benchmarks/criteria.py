"""Pruning criteria: one-shot accuracy with and without fine-tuning, and pruning at init.

Setting: LeNet-300-100 on the MNIST subset (4,000 training examples).  Every run comes
from the benchmark harness (:mod:`sparsity_lab.bench`) on two configs, which say the whole
protocol:

* ``benchmarks/configs/criteria-lenet300-mnist.yaml``: every criterion of the data-free,
  data-driven, first-order and at-initialisation families prunes the recipe's dense model
  of each seed (``recipes.dense``) once at 50, 75, 90 and 95% sparsity, over three seeds,
  then fine-tunes it for one epoch of SGD at lr 0.01 with its masks fixed (the harness's
  ``prune`` kind).  Data-driven criteria see the first 4 training batches.
* ``benchmarks/configs/criteria-at-init-lenet300-mnist.yaml``: ``random``, ``magnitude``,
  ``snip``, ``grasp``, ``synflow`` and ``force`` prune the *initial* network, which is
  rescaled to its sparse fan-in (``recipes.sparse_start``, for every method alike) and
  trains from scratch with the recipe, its mask fixed, and again with the mask's random
  twin of the same layer counts (the harness's ``at_init`` kind with ``shuffle: true``:
  the shuffling of Frankle et al. 2021).

The harness adds its baselines to both: the dense model, ``magnitude (global)``,
``magnitude (uniform)`` and ``random (magnitude's layer counts)``, the fair random
baseline of global magnitude (a random mask with the per-layer counts of that seed's global
magnitude mask).  ``random`` prunes at random under the global budget.

* Weight criteria use the global budget (``magnitude`` also uniform, ``lamp_budget`` and
  ``sensitivity_budget``).
* Unit criteria remove the same share of the hidden units of ``fc1`` and ``fc2``
  (``pattern: channel``, ``budget: uniform``); ``thinet`` and ``lasso_channel`` choose
  the same units as inputs of the layers that read them (``pattern: input``).  Sparsity
  here is the share of hidden units removed.
* ``karnin``, ``movement`` and ``soft_movement`` accumulate their scores during training:
  the harness trains the dense model one more epoch (lr 0.01) with the criterion's tracker,
  then prunes that model; its own test accuracy is the run's ``tracked_accuracy`` (in
  ``extras``).  ``soft_movement`` learns its scores with no penalty (``lam=0``) and keeps
  the top-k: with a constant learning rate its scores are the movement scores times the
  rate, so it ranks the weights exactly as ``movement`` does.

What each accuracy is (the harness's definitions):

* ``pruned_accuracy``: accuracy on the **validation** split right after pruning, before
  fine-tuning.  Before this script ran on the harness it was the *test* accuracy; the
  checks and figure of that stage now compare validation accuracies.
* ``test_accuracy``: test accuracy after fine-tuning (the old ``finetuned_accuracy``), or
  after training from scratch for the runs at initialisation.
* ``training_flops``: the fine-tuning's FLOPs, plus the tracking epoch's for the criteria
  with a score tracker (the old script recorded the fine-tuning's alone); ``prune_seconds``
  times the whole stage (tracking, pruning and fine-tuning), not the pruning alone.

Every run carries the sanity flags of ``recipes.evaluate_run`` (``flags``: the final model
on test; ``pruned_flags``: the pruned model on validation).  The script checks the
issue's expectations with paired differences over seeds (``sl.stats.paired``) and reports
each as met, missed or inconclusive (one seed, or an interval that decides nothing), with
the verdict against the cited claim of ``sl.claims.CLAIMS`` where there is one; nothing
here is tuned to agree.

    python benchmarks/criteria.py [--seeds 0 1 2] [--quick] [--out DIR] [--cache DIR]

``--quick`` is a smoke pass: the digits data instead of MNIST, two seeds, 75 and 95%
sparsity, a few criteria of each family, and 2 of the recipe's 20 epochs of training
from initialisation.

Writes, under ``--out`` (default ``benchmarks/results``), ``criteria[_quick].json``
(every run, summary tables, the checks) and ``criteria[_quick].png``, and each config's
table and manifest (``bench.write``: ``<name>.csv`` and ``<name>.manifest.json``).
Finished runs are cached under ``<out>/criteria_cache`` so an interrupted run resumes;
``--cache .cache/bench`` shares them with ``sparsity-lab bench`` run from the repository
root.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # a script: write files, open no window

import matplotlib.pyplot as plt
import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab import bench, recipes

RESULTS = Path(__file__).parent / "results"
CONFIGS = Path(__file__).parent / "configs"
AFTER_TRAINING_CONFIG = CONFIGS / "criteria-lenet300-mnist.yaml"
AT_INIT_CONFIG = CONFIGS / "criteria-at-init-lenet300-mnist.yaml"

# the labels the harness gives its mandatory baselines
GLOBAL, UNIFORM = "magnitude (global)", "magnitude (uniform)"
RANDOM_LIKE = "random (magnitude's layer counts)"

#: label -> family of every method pruned after training, the harness's baselines included
FAMILY = {
    GLOBAL: "data-free",
    UNIFORM: "data-free",
    RANDOM_LIKE: "data-free",
    "magnitude (lamp_budget)": "data-free",
    "magnitude (sensitivity_budget)": "data-free",
    "random": "data-free",
    "lamp": "data-free",
    "snip": "first-order",
    "taylor_weight": "first-order",
    "karnin": "first-order",
    "movement": "first-order",
    "soft_movement": "first-order",
    "grasp": "at-init",
    "synflow": "at-init",
    "force": "at-init",
    "random (units)": "data-free",
    "group_norm": "data-free",
    "fpgm": "data-free",
    "neuron_merge": "data-free",
    "apoz": "data-driven",
    "mean_activation": "data-driven",
    "activation_variance": "data-driven",
    "correlation_merge": "data-driven",
    "sensitivity": "data-driven",
    "nisp": "data-driven",
    "thinet": "data-driven",
    "lasso_channel": "data-driven",
    "skeletonization": "first-order",
    "taylor": "first-order",
}
#: patterns that remove whole hidden units (the rest prune single weights)
UNIT_PATTERNS = ("channel", "input")

# --quick: a smoke pass of both configs that still reaches every check
QUICK_DATA = "digits"
QUICK_SPARSITIES = [0.75, 0.95]
QUICK_EPOCHS_FACTOR = 0.1  # 2 of the digits recipe's 20 epochs from initialisation
QUICK_LABELS = {
    # after training: each family, a score tracker, both unit patterns, and the arms the
    # checks compare
    "magnitude (lamp_budget)",
    "random",
    "lamp",
    "snip",
    "movement",
    "synflow",
    "random (units)",
    "group_norm",
    "apoz",
    "thinet",
    "taylor",
    # at initialisation: the arms the checks compare, each with its random twin
    "random (at init)",
    "random (at init, shuffled)",
    "snip (at init)",
    "snip (at init, shuffled)",
    "grasp (at init)",
    "grasp (at init, shuffled)",
    "synflow (at init)",
    "synflow (at init, shuffled)",
}


# --- the runs -----------------------------------------------------------------------------


def config_of(path: Path, *, quick: bool, seeds: list[int] | None) -> dict[str, Any]:
    """A benchmark config as the YAML file says, or its smoke-pass version (``quick``)."""
    config = bench.load_config(path)
    if seeds is not None:
        config["seeds"] = seeds
    if quick:
        config["name"] = f"{config['name'].replace(config['data'], QUICK_DATA)}-quick"
        config["data"] = QUICK_DATA
        config["seeds"] = config["seeds"][:2]
        config["sparsities"] = QUICK_SPARSITIES
        config["methods"] = [
            {**entry, "epochs_factor": QUICK_EPOCHS_FACTOR if entry["kind"] == "at_init" else 1}
            for entry in config["methods"]
            if entry["label"] in QUICK_LABELS
        ]
    return config


def with_shuffled(table: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """``table`` with ``shuffled``: whether a run pruned at initialisation trained the
    random twin of its mask.  The harness's table names an arm by its label only, so the
    config's entries say which arms are twins (the baselines never are)."""
    twins = {entry["label"] for entry in config["methods"] if entry["shuffle"]}
    return table.assign(shuffled=table.method.isin(twins))


# --- the expectations ---------------------------------------------------------------------


def paired_checks(
    df,
    name,
    column,
    treatment,
    baseline,
    *,
    metric,
    by,
    claim=None,
    relation="greater",
    margin=0.0,
    setting="",
    where=None,
) -> list[dict]:
    """``treatment - baseline`` paired over seeds, one check per group of ``by``.

    Empty when an arm was not run (``--quick`` runs a subset).
    """
    if not {treatment, baseline} <= set(df[column]):
        return []
    diffs = sl.stats.paired(df, column, treatment, baseline, metric=metric, by=by)
    out = []
    for _, row in diffs.iterrows():
        group = {k: row[k] for k in by}
        entry = {
            "expectation": name,
            **(where or {}),
            **group,
            "treatment": treatment,
            "baseline": baseline,
            "metric": metric,
            "status": sl.claims.check(row, relation, margin),
            "paired": {k: row[k] for k in ("mean_diff", "ci_low", "ci_high", "n", "verdict")},
            "numbers": sl.stats.describe(row),
        }
        if claim is not None:
            at = ", ".join(f"{k} {v}" for k, v in {**(where or {}), **group}.items())
            v = sl.claims.verdict(claim, row, setting=f"{setting}, {at}".strip(", "))
            entry["claim"] = {
                "key": claim,
                "status": v.status,
                "numbers": v.numbers(),
                "mean": v.mean,
                "ci_low": v.ci_low,
                "ci_high": v.ci_high,
                "n": v.n,
            }
        out.append(entry)
    return out


#: the two stages of a run pruned after training: the metric and how the report names it
STAGES = {
    "pruned_accuracy": "pruned (validation)",
    "test_accuracy": "fine-tuned (test)",
}


def checks(one_shot: pd.DataFrame, at_init: pd.DataFrame, where: str) -> list[dict]:
    """Every expectation, paired over seeds.

    ``one_shot``: the runs pruned after training; ``at_init``: the at-initialisation
    config's table (its runs pruned at initialisation with ``shuffled``, and the harness's
    baselines pruned after training).
    """
    out = []
    high = one_shot[one_shot.target_sparsity >= 0.9]
    by = ["target_sparsity"]
    for metric, stage in STAGES.items():
        after = {"metric": metric, "by": by, "where": {"stage": stage}}
        # the claims are about accuracy after fine-tuning
        claimed = metric == "test_accuracy"
        out += paired_checks(
            high, "global magnitude > layer-wise magnitude", "method", GLOBAL, UNIFORM, **after
        )
        out += paired_checks(
            high,
            "layer-wise magnitude > random (global budget)",
            "method",
            UNIFORM,
            "random",
            **after,
        )
        out += paired_checks(
            high,
            "global magnitude > random with its layer counts",
            "method",
            GLOBAL,
            RANDOM_LIKE,
            **after,
            claim="magnitude_beats_random_after_training" if claimed else None,
            setting=where,
        )
        out += paired_checks(
            high,
            "LAMP > global magnitude",
            "method",
            "lamp",
            GLOBAL,
            **after,
            claim="lamp_beats_global_magnitude" if claimed else None,
            setting=where,
        )
    pai = at_init[at_init.kind == "at_init"]
    found = pai[~pai.shuffled]
    at_init_setting = where + ", pruned at initialisation"
    for m in ("snip", "grasp", "synflow"):
        out += paired_checks(
            found,
            f"at initialisation: {m} > random",
            "criterion",
            m,
            "random",
            metric="test_accuracy",
            by=by,
            claim="snip_beats_random_init" if m == "snip" else None,
            setting=at_init_setting,
        )
    out += paired_checks(
        found[found.target_sparsity >= 0.9],
        "at initialisation: synflow > snip",
        "criterion",
        "synflow",
        "snip",
        metric="test_accuracy",
        by=by,
        claim="synflow_beats_snip_extreme",
        setting=at_init_setting,
    )
    # the at-init masks against magnitude pruning after training and fine-tuning (the
    # harness's baseline, in the same table), paired by seed
    after_training = at_init[at_init.method == GLOBAL].assign(criterion="magnitude after training")
    both = pd.concat([found, after_training], ignore_index=True)
    for m in ("snip", "grasp", "synflow"):
        out += paired_checks(
            both,
            "magnitude after training > pruning at initialisation",
            "criterion",
            "magnitude after training",
            m,
            metric="test_accuracy",
            by=by,
            where={"criterion": m},
        )
    for m in pai.criterion.unique():
        arms = pai[pai.criterion == m].assign(
            arm=lambda d: d.shuffled.map({True: "shuffled", False: "original"})
        )
        out += paired_checks(
            arms,
            "shuffling masks within layers at initialisation changes little (within 2 points)",
            "arm",
            "shuffled",
            "original",
            metric="test_accuracy",
            by=by,
            relation="within",
            margin=0.02,
            where={"criterion": m},
            claim="init_masks_carry_layer_ratios_only" if m in ("snip", "synflow") else None,
            setting=where + f", {m}",
        )
    return out


# --- report -------------------------------------------------------------------------------


def figure(
    one_shot: pd.DataFrame, dense: pd.DataFrame, at_init: pd.DataFrame, path: Path, title: str
) -> None:
    units = one_shot.pattern.isin(UNIT_PATTERNS)
    free = one_shot.family == "data-free"
    panels = [
        ("weights, data-free", ~units & free),
        (
            "weights, first-order and at-init criteria (magnitude, random for reference)",
            ~units & ~free | one_shot.method.isin([GLOBAL, "random"]),
        ),
        ("units, data-free", units & free),
        (
            "units, data-driven and first-order (random, group_norm for reference)",
            units & ~free | one_shot.method.isin(["random (units)", "group_norm"]),
        ),
    ]
    fig, axes = plt.subplots(2, 5, figsize=(26, 9), layout="constrained")
    # each stage against the dense model on its own split, its points circled by the
    # flags of that stage
    stages = [
        ("pruned_accuracy", "pruned_flags", "val_accuracy", "no fine-tuning", "validation"),
        ("test_accuracy", "flags", "test_accuracy", "1 epoch fine-tuning", "test"),
    ]
    for row, (metric, flags, dense_metric, stage, split) in zip(axes, stages, strict=True):
        for ax, (name, select) in zip(row[:4], panels, strict=True):
            part = one_shot[select].assign(flags=one_shot[select][flags])
            sl.viz.sparsity_curve(part, x="target_sparsity", y=metric, hue="method", ax=ax)
            ax.axhline(dense[dense_metric].mean(), color="k", linestyle=":", linewidth=1)
            ax.set_title(f"{name}: {stage}", fontsize=9)
            ax.set_ylabel(f"{split} accuracy")
            ax.legend(fontsize=6)
    pai = at_init[at_init.kind == "at_init"]
    for ax, shuffled in zip(axes[:, 4], (False, True), strict=True):
        part = pai[pai.shuffled == shuffled]
        sl.viz.sparsity_curve(part, x="target_sparsity", y="test_accuracy", hue="criterion", ax=ax)
        ax.set_title(
            f"pruned at init, trained from scratch{', masks shuffled' if shuffled else ''}",
            fontsize=9,
        )
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=6)
    fig.suptitle(f"{title}: mean and 95% interval over seeds")
    fig.savefig(path, dpi=100)


def print_checks(found: list[dict]) -> None:
    """Each expectation's paired difference, and the claim's verdict where there is one."""
    print("\nexpectations (paired differences over seeds, treatment - baseline):")
    for c in found:
        where = ", ".join(
            f"{k}={c[k]}" for k in ("criterion", "target_sparsity", "stage") if k in c
        )
        print(f"  [{c['status']}] {c['expectation']} ({where}): {c['numbers']}")
        if "claim" in c:
            print(
                f"      claim {c['claim']['key']}: {c['claim']['status']} ({c['claim']['numbers']})"
            )
    counts = pd.Series([c["status"] for c in found]).value_counts().to_dict()
    print(f"  {counts}")


def print_flags(df: pd.DataFrame, by: list[str], what: str, column: str = "flags") -> pd.DataFrame:
    flagged = sl.flags.table(df, by, column)
    if flagged.empty:
        print(f"No sanity flag fired ({what}).")
    else:
        print(f"\nflagged runs ({what}):")
        print(flagged.to_string(index=False))
    return flagged


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the configs'")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits, two seeds, two sparsities, a few criteria, 2 epochs from initialisation",
    )
    parser.add_argument("--out", default=str(RESULTS), help="folder of every output")
    parser.add_argument("--cache", default=None, help="finished runs (default: OUT/criteria_cache)")
    args = parser.parse_args()
    out = Path(args.out)
    cache = Path(args.cache) if args.cache else out / "criteria_cache"
    # a quick check must never overwrite the stored full run
    report_path = out / f"criteria{'_quick' if args.quick else ''}.json"

    started = time.perf_counter()
    after_config, at_init_config = (
        config_of(path, quick=args.quick, seeds=args.seeds)
        for path in (AFTER_TRAINING_CONFIG, AT_INIT_CONFIG)
    )
    tables = {}
    for config in (after_config, at_init_config):
        print(f"{config['name']}: {len(bench.cells(config))} arms ...", flush=True)
        tables[config["name"]] = bench.run(config, cache_dir=cache, progress=False)
        bench.write(tables[config["name"]], config, out)
    table = tables[after_config["name"]]
    dense = table[table.method == "dense"]
    one_shot = table[table.method != "dense"].assign(
        family=lambda d: d.method.map(FAMILY),
        pattern=lambda d: d.options.map(lambda o: json.loads(o).get("pattern", "unstructured")),
    )
    at_init = with_shuffled(tables[at_init_config["name"]], at_init_config)
    pai = at_init[at_init.kind == "at_init"]

    model, data = after_config["model"], after_config["data"]
    recipe = recipes.recipe_for(model, data)
    where = f"LeNet-300-100, {data}" + (" subset" if data == "mnist" else "")
    for _, run in dense.iterrows():
        print(
            f"dense seed {run['seed']}: test {run['test_accuracy']:.4f}, "
            f"validation {run['val_accuracy']:.4f} {run['flags']}".rstrip()
        )
    found = checks(one_shot, at_init, where)
    summaries = {
        metric: sl.experiments.summarize(one_shot, ["method", "target_sparsity"], metric)
        for metric in STAGES
    }
    pai_summary = sl.experiments.summarize(
        pai, ["criterion", "shuffled", "target_sparsity"], "test_accuracy"
    )
    pd.set_option("display.width", 200)
    print(
        "\npruned_accuracy is the validation accuracy right after pruning (the harness's "
        "definition; before the port it was test accuracy); test_accuracy is after fine-tuning"
    )
    for metric, stage in STAGES.items():
        print(f"\nmean accuracy, {stage} ({metric}):")
        means = summaries[metric].pivot(index="method", columns="target_sparsity", values="mean")
        print(means.round(3))
    print("\nmean test accuracy, pruned at initialisation and trained from scratch:")
    print(
        pai_summary.pivot(
            index=["criterion", "shuffled"], columns="target_sparsity", values="mean"
        ).round(3)
    )
    by = ["method", "target_sparsity"]
    flagged = {
        "after_training_pruned": print_flags(
            one_shot, by, "after training, right after pruning (validation)", "pruned_flags"
        ),
        "after_training": print_flags(one_shot, by, "after training, fine-tuned (test)"),
        "at_initialisation": print_flags(
            pai, ["criterion", "shuffled", "target_sparsity"], "at initialisation"
        ),
    }
    print_checks(found)
    at_init_epochs = sorted(int(e) for e in pai.epochs.unique())
    report = {
        "benchmark": "criteria",
        "setting": f"{model} on {data} (the harness's split of the setting: see the manifests)",
        "configs": {
            "after_training": {"file": str(AFTER_TRAINING_CONFIG.name), **after_config},
            "at_initialisation": {"file": str(AT_INIT_CONFIG.name), **at_init_config},
        },
        "tables": {name: f"{name}.csv" for name in tables},
        "quick": args.quick,
        "seeds": after_config["seeds"],
        "sparsities": after_config["sparsities"],
        "criteria": [e["label"] for c in (after_config, at_init_config) for e in c["methods"]],
        "dense": {
            "recipe": dict(recipe.training(), batch_size=recipe.batch_size),
            "expected_test_accuracy": recipe.expected_test_accuracy,
            "per_seed": {
                int(run.seed): {k: run[k] for k in ("test_accuracy", "val_accuracy", "flags")}
                for _, run in dense.iterrows()
            },
        },
        "finetune": {
            "epochs": after_config["finetune_epochs"],
            "lr": after_config["finetune_lr"],
            "optimizer": "sgd",
            "flops_per_run": "training_flops of each run (with the tracking epoch, if any)",
        },
        "pruned_accuracy": "validation accuracy right after pruning (test before the port)",
        "at_init_training": {
            **recipe.training(),
            "epochs": at_init_epochs,
            "epochs_note": "the recipe's"
            if at_init_epochs == [recipe.epochs]
            else f"{at_init_epochs}, not the recipe's {recipe.epochs}"
            + (" (--quick)" if args.quick else ""),
        },
        "calibration_batches": after_config["calibration_batches"],
        "threads": after_config["threads"],
        "torch": torch.__version__,
        "python": platform.python_version(),
        # runs found in the cache load at once, so this is the time of the missing runs only
        "seconds_this_invocation": time.perf_counter() - started,
        "after_training": one_shot.to_dict(orient="records"),
        "at_initialisation": pai.to_dict(orient="records"),
        "summary": {k: v.to_dict(orient="records") for k, v in summaries.items()},
        "summary_at_initialisation": pai_summary.to_dict(orient="records"),
        "flagged": {k: v.to_dict(orient="records") for k, v in flagged.items()},
        "checks": found,
    }
    out.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=1, default=_plain))
    figure(one_shot, dense, at_init, report_path.with_suffix(".png"), where)
    if at_init_epochs != [recipe.epochs]:
        print(
            f"training from initialisation: {at_init_epochs} epochs, not the recipe's "
            f"{recipe.epochs}"
        )
    print(f"wrote {report_path}, {report_path.with_suffix('.png')} and in {out}:")
    print("  " + ", ".join(f"{name}.csv, {name}.manifest.json" for name in tables))
    print(f"{report['seconds_this_invocation']:.0f} s (runs not in the cache)")


if __name__ == "__main__":
    main()

"""Training-time methods: accuracy and training FLOPs at 80, 90 and 95% sparsity.

Every run comes from the benchmark harness (:func:`sparsity_lab.bench.run`), one config per
setting under ``benchmarks/configs/``:

* ``training-lenet300-mnist.yaml`` and ``training-cnn1d-mnist1d.yaml`` (LeNet-300-100 on
  the MNIST subset, the 1-D CNN on MNIST-1D; seeds 0-2; 80/90/95%): GMP, static sparse,
  SET and RigL with the ERK and the uniform budget, AC/DC, IMP (3 rounds rewound to init,
  against the same masks re-initialised) and, to see whether RigL approaches GMP as
  training lengthens (the RigL paper), RigL, SET and GMP trained twice as long
  (``epochs_factor: 2``, labelled ``rigl_erk 2x``, ``set_erk 2x``, ``gmp 2x``) and, on
  LeNet-300-100, RigL and GMP five times as long (``rigl_erk 5x``, ``gmp 5x``);
* ``training-cram-resnet_small-digits.yaml`` (the small ResNet, BatchNorm after every
  convolution, on 8x8 digits; 70/80/90/95%): CrAM and CrAM+ against SGD under one-shot
  pruning, with no fine-tuning and the BatchNorm statistics re-estimated on the whole
  training split (``finetune_epochs: 0``, ``bn_reestimate: true``,
  ``calibration_batches: 10``).  CrAM compresses, and every model is pruned, with the ERK
  budget; the ablation arms compress by one global threshold (``cram (global)``), pass the
  gradient at the compressed point straight through to every weight instead of masking
  it (``cram (straight-through)``), or both (``cram (global, straight-through)``); their
  dense models are compared.

The protocol is the harness's (see :mod:`sparsity_lab.bench`).  The dense model of a seed
is the setting's ``recipes.dense``.  Every training method (kind ``train``) trains a fresh
model with the recipe's optimizer, learning rate, schedule and epochs (IMP: ``rounds + 1``
trainings of half as many, ``epochs_factor: 0.5``, then its re-initialised twin's), the
sparse-from-scratch ones from weights rescaled to each unit's kept fan-in.  The harness
adds its mandatory baselines to every table: the dense model, global magnitude (which
*is* one-shot here: the dense model pruned once by a global magnitude threshold, then
fine-tuned 2 epochs at lr 0.01; in the CrAM setting not fine-tuned, BatchNorm
re-estimated), uniform magnitude, and a random mask with global magnitude's layer
counts.  CrAM (``prune_with: magnitude``) is pruned once by magnitude after training
(ERK, as its ``sgd one-shot (erk)`` baseline: the dense model pruned the same way) and
measured like that baseline; its dense model's accuracy is the harness's ``extras``
``trained_accuracy``.  Every run is measured on the test split and carries the sanity
flags of ``recipes.evaluate_run``.

Where a definition changed from the script's own training loop, which this replaces:

* ``pruned_accuracy`` is the harness's: validation accuracy right after pruning (for the
  training methods, of the final model, which is not fine-tuned); the IMP ticket against
  its re-initialised twin is judged, as before, on validation (``extras``
  ``ticket_val_accuracy`` and ``reinit_val_accuracy``);
* training FLOPs (:class:`sparsity_lab.methods.base.TrainingFlops`) are reported as a
  multiple of the recipe's dense training; the harness's ``training_flops`` of a run that
  prunes the dense model counts only what it trained after it (fine-tuning), so the
  summary adds the dense training to those rows (one-shot costs the dense run plus its
  fine-tuning, as before; the dense model costs 1x);
* CrAM trains once per target sparsity (the harness runs one cell per target), not once
  per seed: its training does not depend on the target (it draws from its own list of
  sparsities), so each cell trains the same model, at four times the old cost;
* CrAM runs on the small ResNet only: the old script also ran it on the two settings
  above, which have no BatchNorm, so the re-estimation did nothing there;
* the dense rows carry the flags of ``recipes.evaluate_run`` like every other row; the
  flag of a dense model below its recipe's expected accuracy is in each manifest's
  ``dense`` section instead;
* the old ``--reduced`` grid and the init diagnostics (each layer's density and gradient
  norm at the first step of the sparse-from-scratch methods) are gone.

The script checks the expectations with paired differences over seeds
(``sl.stats.paired``) and reports each as met, missed or inconclusive, with the verdict on
the cited claim of ``sl.claims.CLAIMS`` where there is one: nothing here is tuned to agree.

    python benchmarks/training_methods.py [--quick] [--configs NAME ...] [--seeds 0 1 2]
        [--out DIR] [--cache DIR] [--executor local:2]

``--quick`` is a smoke pass whose numbers are no result: LeNet-300-100 on digits instead
of MNIST and the CrAM setting, two seeds, 80 and 90% sparsity, the training methods at
3/4 of their epochs (the 1-D CNN has no small stand-in and is left out).  Writes
``<out>/training_methods.json`` (every run, the summary table and the checks),
``training_methods.csv`` and two figures (``training_methods_quick*`` with ``--quick``),
and each config's table and manifest (``bench.write``: ``<name>.csv``,
``<name>.manifest.json``); finished runs are cached in ``--cache`` (by default the one
``sparsity-lab bench`` uses from the repository's root, so the two reuse each other's runs).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: write files, open no window

import matplotlib.pyplot as plt
import pandas as pd
import torch
import yaml

import sparsity_lab as sl
from sparsity_lab import bench, leaderboard, recipes

HERE = Path(__file__).parent
RESULTS = HERE / "results"
CONFIGS = HERE / "configs"
TRAINING_CONFIGS = ["training-lenet300-mnist", "training-cnn1d-mnist1d"]
CRAM_CONFIG = "training-cram-resnet_small-digits"

# The labels of the harness's baselines that the checks compare with
DENSE = "dense"
ONE_SHOT = "magnitude (global)"  # one-shot
# The CrAM setting's arms: CrAM compresses and is pruned with ERK (see its config), and
# so is its SGD one-shot baseline
SGD_ONE_SHOT = "sgd one-shot (erk)"
CRAM, CRAM_PLUS, CRAM_GLOBAL = "cram", "cram_plus", "cram (global)"
CRAM_STRAIGHT, CRAM_GLOBAL_STRAIGHT = "cram (straight-through)", "cram (global, straight-through)"
EXTENDED = (" 2x", " 5x")  # suffixes of the labels of the arms trained longer

# --quick: the configs that have a small stand-in, and how they shrink
QUICK_CONFIGS = ["training-lenet300-mnist", CRAM_CONFIG]
QUICK_DATA = {"mnist": "digits"}
QUICK_SEEDS = [0, 1]
QUICK_SPARSITIES = [0.8, 0.9]
# the fewest epochs at which RigL, which updates its masks every 100 steps until 75% of
# training, still updates them on digits (10 steps an epoch): 15 of the recipe's 20
QUICK_EPOCHS_FACTOR = 0.75


def load(name: str, quick: bool, seeds: list[int] | None) -> dict:
    """The config ``name`` (``--quick``: its smoke version; ``seeds`` replace its seeds)."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    if seeds:
        config["seeds"] = seeds
    if not quick:
        return config
    config = bench.load_config(config)  # the method entries with their kinds
    data = QUICK_DATA.get(config["data"], config["data"])
    # its table is named for its data, and must not overwrite the full one
    config["name"] = config["name"].replace(config["data"], data) + "-quick"
    config["data"] = data
    config["seeds"] = seeds or QUICK_SEEDS
    config["sparsities"] = QUICK_SPARSITIES
    for entry in config["methods"]:
        if entry["kind"] != "prune":  # a prune run's budget is the config's fine-tuning
            entry["epochs_factor"] *= QUICK_EPOCHS_FACTOR
    return config


def run_benchmarks(configs: list[dict], out: Path, cache: Path, executor: str | None):
    """Run each config with the harness and write its table and manifest; all runs in one
    table, with the training FLOPs as a multiple of dense training."""
    tables = []
    for config in configs:
        print(f"{config['name']}: {len(bench.cells(bench.load_config(config)))} arms", flush=True)
        table = bench.run(config, executor_spec=executor, cache_dir=cache)
        bench.write(table, config, out)
        tables.append(table)
    runs = pd.concat(tables, ignore_index=True)
    # a prune run's training_flops counts only what it trained after the shared dense
    # model: add the dense training, so one-shot costs what it did before the harness
    pruned = (runs["kind"] == "prune").astype(float)
    total = runs["training_flops"] + pruned * runs["dense_training_flops"]
    return runs.assign(
        total_training_flops=total, flops_x_dense=total / runs["dense_training_flops"]
    )


# --- the expectations ---------------------------------------------------------------------


def compare(
    runs,
    name,
    treatment,
    baseline,
    *,
    metric="test_accuracy",
    relation="greater",
    margin=0.0,
    claim=None,
    sparsities=None,
    words=None,
) -> list[dict]:
    """``treatment - baseline`` of ``metric`` in one setting's ``runs``, paired over seeds,
    per target sparsity; "not run" when an arm is missing (a smoke pass)."""
    model, data = runs["model"].iloc[0], runs["data"].iloc[0]
    part = runs[runs["method"].isin([treatment, baseline])]
    if sparsities is not None:
        part = part[part["target_sparsity"].isin(sparsities)]
    if not {treatment, baseline} <= set(part["method"]):
        return [{"expectation": name, "model": model, "status": "not run", "numbers": ""}]
    out = []
    diffs = sl.stats.paired(
        part, "method", treatment, baseline, metric=metric, by="target_sparsity"
    )
    for _, row in diffs.iterrows():
        sparsity = row["target_sparsity"]
        entry = {
            "expectation": name,
            "model": model,
            "sparsity": sparsity,
            "status": sl.claims.check(row, relation, margin),
            "paired": {k: row[k] for k in ("mean_diff", "ci_low", "ci_high", "n")},
            "numbers": sl.stats.describe(row, words=words),
        }
        if claim is not None:
            v = sl.claims.verdict(claim, row, setting=f"{model} on {data} at {sparsity:.0%}")
            entry["claim"] = {"key": claim, "status": v.status, "numbers": v.numbers()}
        out.append(entry)
    return out


def lead(runs: pd.DataFrame, leader: str, follower: str, label: str) -> pd.DataFrame:
    """Per seed and target: ``leader``'s test accuracy minus ``follower``'s, as arm ``label``."""
    key = ["target_sparsity", "seed"]
    arms = [
        runs.loc[runs["method"] == m, [*key, "test_accuracy", "flags"]] for m in (leader, follower)
    ]
    both = arms[0].merge(arms[1], on=key, suffixes=("", "_follower"))
    return both.assign(
        model=runs["model"].iloc[0],
        data=runs["data"].iloc[0],
        method=label,
        test_accuracy=both["test_accuracy"] - both["test_accuracy_follower"],
        # a lead over a collapsed run is no lead: keep the flags of both
        flags=both["flags"].str.cat(both["flags_follower"], sep="; ").str.strip("; "),
    )


def training_checks(runs: pd.DataFrame) -> list[dict]:
    """The expectations on a setting of the training methods."""
    sparsities = sorted(runs.loc[runs["method"] != DENSE, "target_sparsity"].unique())
    out = compare(
        runs,
        # an expectation, not a claim: the gradual-pruning paper compares with dense and
        # small dense models, not with pruning once (see sl.claims' gradual_beats_one_shot)
        "GMP > one-shot at >= 90%",
        "gmp",
        ONE_SHOT,
        sparsities=[s for s in sparsities if s >= 0.9],
    )
    for budget in ("erk", "uniform"):
        static, set_, rigl = (f"{m}_{budget}" for m in ("static", "set", "rigl"))
        out += compare(runs, f"SET > static ({budget})", set_, static, claim="set_beats_static")
        out += compare(runs, f"RigL > SET ({budget})", rigl, set_, claim="rigl_beats_set")
        out += compare(runs, f"GMP >= RigL ({budget})", "gmp", rigl, relation="at_least")
    for m in ("static", "set", "rigl"):
        out += compare(
            runs, f"ERK >= uniform ({m})", f"{m}_erk", f"{m}_uniform", relation="at_least"
        )
    out += compare(
        runs,
        "AC/DC sparse within 1 point of GMP",
        "acdc",
        "gmp",
        relation="at_least",
        margin=0.01,
        claim="acdc_matches_gmp",
    )
    if "acdc" in set(runs["method"]):
        arms = pd.concat(
            [
                leaderboard.extras_arm(runs, "acdc", "dense_member_accuracy", "acdc_dense"),
                leaderboard.dense_at(runs, sparsities),
            ]
        )
        out += compare(
            arms,
            "AC/DC dense within 1 point of the dense baseline",
            "acdc_dense",
            DENSE,
            relation="at_least",
            margin=0.01,
            claim="acdc_dense_near_dense",
        )
    if "imp" in set(runs["method"]):
        # both from the last round's training, judged on validation as the paper does
        arms = pd.concat(
            [
                leaderboard.extras_arm(
                    runs, "imp", "ticket_val_accuracy", "ticket", metric="val_accuracy", final=True
                ),
                leaderboard.extras_arm(
                    runs, "imp", "reinit_val_accuracy", "reinit", metric="val_accuracy"
                ),
            ]
        )
        out += compare(
            arms,
            "IMP ticket beats re-initialisation (validation)",
            "ticket",
            "reinit",
            metric="val_accuracy",
            claim="tickets_beat_reinit",
        )
    return out + extended_training_checks(runs)


def extended_training_checks(runs: pd.DataFrame) -> list[dict]:
    """Does training longer help the dynamic methods, and does RigL approach GMP as it
    does in the RigL paper's 2x and 5x runs?"""
    out = []
    methods = set(runs["method"])
    for suffix in EXTENDED:
        length = suffix.strip()
        for m in ("set_erk", "rigl_erk"):
            if m + suffix in methods:
                out += compare(runs, f"{m} gains from {length} training", m + suffix, m)
        if {"gmp" + suffix, "rigl_erk" + suffix} <= methods:
            out += compare(
                runs,
                f"GMP >= RigL at {length} training",
                "gmp" + suffix,
                "rigl_erk" + suffix,
                relation="at_least",
            )
        if {"gmp", "rigl_erk", "gmp" + suffix, "rigl_erk" + suffix} <= methods:
            gaps = pd.concat(
                [
                    lead(runs, "gmp", "rigl_erk", "1x"),
                    lead(runs, "gmp" + suffix, "rigl_erk" + suffix, length),
                ]
            )
            # GMP's lead at 1x minus its lead when longer: positive when RigL closes on GMP
            out += compare(
                gaps,
                f"RigL closes on GMP with {length} training (GMP's lead, 1x - {length})",
                "1x",
                length,
                words=("widens", "narrows"),
            )
    return out


def cram_checks(runs: pd.DataFrame) -> list[dict]:
    """The expectations on the CrAM setting, at the sparsities CrAM trained for."""
    cram_sparsities = [0.7, 0.8]
    out = []
    for method in (CRAM, CRAM_PLUS):
        out += compare(
            runs,
            f"{method} beats SGD under one-shot pruning",
            method,
            SGD_ONE_SHOT,
            claim="cram_one_shot_beats_sgd",
            sparsities=cram_sparsities,
        )
        # the paper's use: prune the CrAM model once, re-estimate BatchNorm, no fine-tuning
        own_dense = leaderboard.extras_arm(runs, method, "trained_accuracy", f"{method} dense")
        out += compare(
            pd.concat([runs[runs["method"] == method], own_dense]),
            f"{method} one-shot within 1 point of its own dense model",
            method,
            f"{method} dense",
            relation="at_least",
            margin=0.01,
            sparsities=cram_sparsities,
        )
        out += compare(
            pd.concat([own_dense, leaderboard.dense_at(runs, cram_sparsities)]),
            f"{method}'s dense model within 0.5 points of SGD's",
            f"{method} dense",
            DENSE,
            relation="at_least",
            margin=0.005,
            # the paper's claim is CrAM+'s
            claim="cram_dense_matches_sgd" if method == CRAM_PLUS else None,
            sparsities=cram_sparsities,
        )
    # the ablations: one global threshold at the compressed point, and the gradient there
    # passed straight through the compression (which emptied layers of the global budget
    # do not stop)
    arms = pd.concat(
        leaderboard.extras_arm(runs, arm, "trained_accuracy", f"{arm} dense")
        for arm in (CRAM, CRAM_GLOBAL, CRAM_STRAIGHT, CRAM_GLOBAL_STRAIGHT)
    )
    ablations = [
        (CRAM, CRAM_GLOBAL, "ERK budget above the global one"),
        (CRAM_STRAIGHT, CRAM_GLOBAL_STRAIGHT, "straight-through, ERK above global"),
        (CRAM_GLOBAL, CRAM_GLOBAL_STRAIGHT, "global, masked gradient above straight-through"),
    ]
    for better, worse, what in ablations:
        out += compare(
            arms, f"CrAM's dense model: {what}", f"{better} dense", f"{worse} dense",
            sparsities=cram_sparsities,
        )  # fmt: skip
    return out


def is_cram_setting(runs: pd.DataFrame) -> bool:
    """Whether one setting's runs are the CrAM config's (the others train every method)."""
    return CRAM in set(runs["method"])


def checks(runs: pd.DataFrame) -> list[dict]:
    out = []
    for _, part in runs.groupby("model", sort=False):
        out += cram_checks(part) if is_cram_setting(part) else training_checks(part)
    return out


# --- report -------------------------------------------------------------------------------

KEY = ["model", "method", "target_sparsity"]


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Test accuracy over seeds (mean and interval), mean training FLOPs (x dense), and the
    epochs a run trained (0 for the dense model and its pruned copies) and fine-tuned."""
    table = sl.experiments.summarize(runs, KEY, "test_accuracy")
    budget = ["flops_x_dense", "epochs", "finetune_epochs"]
    cost = runs.groupby(KEY, as_index=False, sort=False)[budget].mean()
    return table.merge(cost, on=KEY)


def figures(runs: pd.DataFrame, table: pd.DataFrame, stem: Path) -> list[str]:
    """Accuracy against sparsity, and against training FLOPs at 90%, per training setting."""
    settings = [m for m, part in runs.groupby("model", sort=False) if not is_cram_setting(part)]
    if not settings:  # the CrAM setting alone: its checks say all there is
        return []
    shown = [
        ONE_SHOT,
        "gmp",
        "static_erk",
        "set_erk",
        "rigl_erk",
        "acdc",
        "imp",
        *("rigl_erk" + suffix for suffix in EXTENDED),
    ]
    paths = []
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    for ax, model in zip(axes[0], settings, strict=True):
        mine = runs[runs["model"] == model]
        sl.viz.sparsity_curve(
            mine[mine["method"].isin(shown)],
            x="target_sparsity",
            y="test_accuracy",
            hue="method",
            ax=ax,
            logit_x=True,
            baseline=mine.loc[mine["method"] == DENSE, "test_accuracy"].mean(),
        )
        ax.set_title(f"{model} on {mine['data'].iloc[0]}")
    fig.tight_layout()
    paths.append(f"{stem}_accuracy.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    for ax, model in zip(axes[0], settings, strict=True):
        part = table[(table["model"] == model) & (table["target_sparsity"].isin([0.0, 0.9]))]
        for i, row in enumerate(part.itertuples()):
            ax.errorbar(
                row.flops_x_dense,
                row.mean,
                # the interval stops at 0 and 1, so its two sides may differ
                yerr=[[row.mean - row.ci_low], [row.ci_high - row.mean]],
                fmt="os^Dv<>"[i % 7],
                color=plt.cm.tab20(i % 20),  # up to twenty methods: one colour each
                label=row.method,
            )
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (x dense training)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{model}, 90% sparsity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(f"{stem}_flops.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", help="default: each config's")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[*TRAINING_CONFIGS, CRAM_CONFIG],
        choices=[*TRAINING_CONFIGS, CRAM_CONFIG],
        help="the configs under benchmarks/configs to run (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke pass: digits, two seeds, 80 and 90%%, 3/4 of the training epochs",
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--cache",
        default=str(HERE.parent / ".cache" / "bench"),
        help="finished runs, reused on a rerun (default: sparsity-lab bench's)",
    )
    parser.add_argument(
        "--executor", help="where the runs go (sparsity_lab.bench.executor): e.g. local:2"
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = [n for n in args.configs if n in QUICK_CONFIGS] if args.quick else args.configs
    configs = [load(name, args.quick, args.seeds) for name in names]
    started = time.perf_counter()
    runs = run_benchmarks(configs, out, Path(args.cache), args.executor)
    table = summary_table(runs)
    found = checks(runs)
    flagged = sl.flags.table(runs, KEY)
    stem = out / ("training_methods_quick" if args.quick else "training_methods")
    paths = figures(runs, table, stem)
    report = {
        "benchmark": "training_methods",
        "configs": [f"benchmarks/configs/{name}.yaml" for name in names],
        "tables": [f"{config['name']}.csv" for config in configs],
        "settings": [f"{c['model']} on {c['data']}" for c in configs],
        "recipes": {
            f"{c['model']}/{c['data']}": recipes.recipe_for(c["model"], c["data"]).training()
            for c in configs
        },
        "quick": args.quick,
        "seeds": sorted(runs["seed"].unique().tolist()),
        "training_flops": "training_flops / dense_training_flops, with the dense training "
        "added to the runs that prune the dense model (kind prune)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        # this invocation (cached runs load instantly) and the runs themselves
        "wall_seconds": time.perf_counter() - started,
        "run_seconds_total": float(runs["wall_seconds"].sum()),
        "summary": table.to_dict(orient="records"),
        "checks": found,
        "flagged": flagged.to_dict(orient="records"),
        "runs": runs.to_dict(orient="records"),
        "figures": paths,
    }
    Path(f"{stem}.json").write_text(json.dumps(report, indent=2, default=float))
    table.to_csv(f"{stem}.csv", index=False)
    with pd.option_context("display.width", 140, "display.max_rows", 200):
        print(table.round(4).to_string(index=False))
    print()
    print("No sanity flag fired." if flagged.empty else flagged.to_string(index=False))
    print()
    print("What to expect (paired differences over seeds, treatment - baseline, test accuracy")
    print("unless the line says otherwise):")
    for c in found:
        where = f"{c['model']} at {c.get('sparsity')}"
        print(f"  [{c['status']:>12}] {c['expectation']} - {where}: {c['numbers']}")
        if "claim" in c:
            print(
                f"      claim {c['claim']['key']}: {c['claim']['status']} ({c['claim']['numbers']})"
            )
    counts = pd.Series([c["status"] for c in found]).value_counts().to_dict()
    print(f"  {counts}")
    print(f"wrote {stem}.json, {stem}.csv, the figures and the tables {report['tables']}")


if __name__ == "__main__":
    main()

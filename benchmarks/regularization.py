"""Regularizers against the target sparsity: sparsity reached, accuracy and training time.

Every run comes from the benchmark harness (:func:`sparsity_lab.bench.run`) on two configs:
``configs/regularization-lenet300-mnist.yaml`` (the regularizers that mask single weights,
at 50/80/90/95% over every layer) and ``configs/regularization-channel-lenet300-mnist.yaml``
(the structured ones with ``pattern: channel``, the last layer left dense, at 30/50/70% of
the channels); ``--quick`` runs ``configs/regularization-quick-lenet300-digits.yaml``
instead (L1 and L0 at 90% on digits, two seeds, 0.15 of the recipe's epochs, one epoch of
fine-tuning), a smoke pass whose numbers are no result.  Each run of a regularizer is the
harness's kind ``regularize``, which is :func:`sparsity_lab.regularizers.compare.run`: a
fresh model trains with the penalty for the recipe's epochs (``recipes.recipe_for``: its
optimizer, learning rate, momentum, weight decay and batch size; no learning-rate
schedule), is projected to the target, and fine-tunes ``finetune_epochs`` (two) with the
masks fixed by SGD at the config's ``finetune_lr`` (0.01), as every run of the harness
does.  GMP runs
the same protocol (``{method: gmp, kind: regularize}``) as the reference.  The
regularizers' papers differ in their optimizers (Adam for L0 and variational dropout, SGD
for STR, group lasso and slimming); one protocol for all is what makes them comparable
here, so every method gets the recipe's.  The harness adds its mandatory baselines to both
tables: the recipe's dense model, and global magnitude, uniform magnitude and a random
mask with global magnitude's layer counts, each pruning the dense model once and
fine-tuning it at the config's ``finetune_lr`` (0.01); they mask single weights, so in
the channel table they are no structured reference.  Each table is written beside its
manifest (``bench.write``: versions, commit, seeds, data-split hashes).  From the runs it
reads

* ``reached`` (the harness's ``extras``): the sparsity the method's own threshold rule gave
  before the projection (how well the strength, tuned or fixed, hit the target);
* ``sparsity`` (the old ``measured_sparsity``: over the pruned tensors, the last layer
  left out of a channel run), ``test_accuracy`` after fine-tuning and ``pruned_accuracy``
  (validation, right after the projection, as before; for the baselines, right after
  pruning);
* ``projection`` and ``projection_needed``: whether the final projection had to change the
  rule's mask by more than one point to hit the target, and which way;
* ``seconds_per_epoch`` (the harness's ``extras``: the median training epoch after the
  first) and ``time_vs_gmp``, its ratio to the GMP run of the same seed, pattern and target.
  The old script's ratio to a dense training timed just before each method is gone: the
  harness trains no dense model in the regularizers' protocol (the dense baseline is the
  recipe's cached model), so the reference is now GMP, itself a masked dense training.  The
  harness runs the cells in order (method, target, then seed) and a rerun reuses cached
  runs, so the two timings of a ratio may come from different machine loads: read a ratio
  far from one as a measurement, not a small one.

Every run carries the sanity flags of ``recipes.evaluate_run``; each regularizer is
compared with GMP at the same pattern and target by paired differences over seeds (met: the
interval stays above one point below GMP, :func:`sparsity_lab.claims.check`), and GMP minus
L0 gives the verdict on ``magnitude_matches_l0`` of ``sl.claims.CLAIMS`` at each
unstructured target.  Writes ``<out>/regularization.json`` and ``regularization.png``
(``regularization_quick.*`` with ``--quick``), and each config's ``<name>.csv`` and
``<name>.manifest.json``; finished runs are cached in ``--cache`` (by default the one
``sparsity-lab bench`` uses from the repository's root, so the two reuse each other's runs).

    python benchmarks/regularization.py [--quick] [--out benchmarks/results] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: write the figure, show nothing
import matplotlib.pyplot as plt
import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab import bench, recipes, registry

HERE = Path(__file__).parent
CONFIGS = HERE / "configs"
FULL = [
    CONFIGS / "regularization-lenet300-mnist.yaml",
    CONFIGS / "regularization-channel-lenet300-mnist.yaml",
]
QUICK = [CONFIGS / "regularization-quick-lenet300-digits.yaml"]

REFERENCE = "gmp"  # the label of the training-time pruning run every regularizer faces
CLAIM = "magnitude_matches_l0"
TOLERANCE = 0.01  # the rule's sparsity within 1 point of the target: no projection needed
MARGIN = 0.01  # a method "matches" GMP when the paired interval stays above -1 point
EXTRAS = ("reached", "strength", "extra_parameters", "seconds_per_epoch")


def run_benchmarks(configs: list[Path], out: Path, cache: Path) -> pd.DataFrame:
    """Run each config with the harness and write its table and manifest; all runs in one
    table, with the pattern and the regularizers' measurements as columns."""
    tables = []
    for config in configs:
        table = bench.run(config, cache_dir=cache)
        bench.write(table, config, out)
        tables.append(table)
    # the dense model and the baselines at a sparsity both configs share are the same
    # cached runs in both tables: keep them once, so no run is counted twice
    runs = pd.concat(tables, ignore_index=True).drop_duplicates(
        ["method", "options", "target_sparsity", "seed"], ignore_index=True
    )
    return with_measurements(runs)


def with_measurements(runs: pd.DataFrame) -> pd.DataFrame:
    """The harness's table with the columns this benchmark reads: ``pattern`` (from the
    options), the ``extras`` of the regularize runs, the projection and the time vs GMP."""
    pattern = runs["options"].map(lambda text: json.loads(text).get("pattern", "unstructured"))
    extras = runs["extras"].map(json.loads)
    runs = runs.assign(
        pattern=pattern,
        **{key: extras.map(lambda e, key=key: e.get(key, math.nan)) for key in EXTRAS},
    )
    runs["regularizer"] = (runs["kind"] == "regularize") & runs["criterion"].isin(
        registry.available("regularizer")
    )
    runs["projection"] = [
        projection(reached, target) if regularizer else "n/a"
        for reached, target, regularizer in zip(
            runs["reached"], runs["target_sparsity"], runs["regularizer"], strict=True
        )
    ]
    runs["projection_needed"] = runs["regularizer"] & (
        (runs["reached"] - runs["target_sparsity"]).abs() > TOLERANCE
    )
    key = ["pattern", "target_sparsity", "seed"]
    protocol = regularize_runs(runs)
    reference = protocol[protocol["method"] == REFERENCE][[*key, "seconds_per_epoch"]]
    runs = runs.merge(
        reference.rename(columns={"seconds_per_epoch": "gmp_seconds_per_epoch"}),
        on=key,
        how="left",
    )
    runs["time_vs_gmp"] = runs["seconds_per_epoch"] / runs["gmp_seconds_per_epoch"]
    return runs


def regularize_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the regularizers' protocol, GMP's included (not the baselines)."""
    return runs[runs["kind"] == "regularize"]


def projection(reached: float, target: float) -> str:
    """What the final projection had to do to the mask of the method's own rule."""
    if abs(reached - target) <= TOLERANCE:
        return "not needed"
    if reached < target:
        return f"pruned {100 * (target - reached):.1f} points more"
    return f"restored {100 * (reached - target):.1f} points"


def paired_to_gmp(runs: pd.DataFrame) -> list[dict]:
    """Each regularizer minus GMP at the same pattern and target, paired over seeds."""
    out = []
    protocol = regularize_runs(runs)
    regularized = runs[runs["regularizer"]]
    for (method, pattern), _ in regularized.groupby(["method", "pattern"], sort=False):
        part = protocol[
            (protocol["pattern"] == pattern) & protocol["method"].isin([method, REFERENCE])
        ]
        if REFERENCE not in set(part["method"]):
            continue
        diffs = sl.stats.paired(part, "method", method, REFERENCE, metric="test_accuracy",
                                by="target_sparsity")  # fmt: skip
        for _, row in diffs.iterrows():
            out.append(
                {
                    "expectation": f"{method} at most {100 * MARGIN:.0f} point below GMP",
                    "method": method,
                    "pattern": pattern,
                    "target": row["target_sparsity"],
                    "status": sl.claims.check(row, "at_least", MARGIN),
                    "paired": {k: row[k] for k in ("mean_diff", "ci_low", "ci_high", "n")},
                    "numbers": sl.stats.describe(row),
                }
            )
    return out


def claim_verdicts(runs: pd.DataFrame) -> list[dict]:
    """The claim's treatment minus its baseline (GMP minus L0) at each unstructured target."""
    claim = sl.claims.get(CLAIM)
    protocol = regularize_runs(runs)
    part = protocol[
        (protocol["pattern"] == "unstructured")
        & protocol["method"].isin([claim.treatment, claim.baseline])
    ]
    if set(part["method"]) != {claim.treatment, claim.baseline}:
        return []
    setting = f"{runs['model'].iloc[0]} / {runs['data'].iloc[0]}"
    diffs = sl.stats.paired(part, "method", claim.treatment, claim.baseline,
                            metric="test_accuracy", by="target_sparsity")  # fmt: skip
    out = []
    for _, row in diffs.iterrows():
        found = sl.claims.verdict(CLAIM, row, setting=f"{setting}, {row['target_sparsity']:.0%}")
        out.append(
            {
                "key": CLAIM,
                "comparison": f"{claim.treatment} - {claim.baseline}",
                "target": row["target_sparsity"],
                "status": found.status,
                "numbers": found.numbers(),
                "flagged": found.flagged,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smoke config: two seeds, l1 and l0_hard_concrete at 90%% on digits",
    )
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument(
        "--cache",
        default=str(HERE.parent / ".cache" / "bench"),
        help="finished runs, reused on a rerun (default: sparsity-lab bench's)",
    )
    args = parser.parse_args()
    configs = QUICK if args.quick else FULL
    out = Path(args.out)
    runs = run_benchmarks(configs, out, Path(args.cache))

    flagged = sl.flags.table(runs, ["method", "pattern", "target_sparsity"])
    checks = paired_to_gmp(runs)
    verdicts = claim_verdicts(runs)
    # a regularizer registered after the configs were written would silently go unmeasured
    measured = set(runs["criterion"])
    missing = [] if args.quick else sorted(set(registry.available("regularizer")) - measured)
    stem = "regularization_quick" if args.quick else "regularization"
    model, data = runs["model"].iloc[0], runs["data"].iloc[0]
    recipe = recipes.recipe_for(model, data)
    dense = runs[runs["method"] == "dense"]
    report = {
        "benchmark": "regularization",
        "configs": [str(path.relative_to(HERE.parent)) for path in configs],
        "tables": [f"{bench.load_config(path)['name']}.csv" for path in configs],
        "model": model,
        "data": data,
        "quick": args.quick,
        "recipe": recipe.training(),
        "protocol": "sparsity_lab.regularizers.compare.run through the harness's kind "
        "regularize: the recipe's epochs (times epochs_factor), optimizer, lr, momentum, "
        "weight decay and batch size, no schedule; fine-tuning by SGD at the config's "
        "finetune_lr, as the harness's baselines (which prune the recipe's dense model) do",
        "seeds": sorted(runs["seed"].unique().tolist()),
        "timing": "median epoch time after the first epoch (compare.run), over the GMP run "
        "of the same seed, pattern and target (timed at another moment of the sweep)",
        "projection_tolerance": TOLERANCE,
        "margin": MARGIN,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "dense": {
            int(row.seed): {
                "test_accuracy": row.test_accuracy,
                "val_accuracy": row.val_accuracy,
                "flags": row.flags,
            }
            for row in dense.itertuples()
        },
        "regularizers_in_no_config": missing,
        "results": runs.to_dict(orient="records"),
        "flagged": flagged.to_dict(orient="records"),
        "checks": checks,
        "claims": verdicts,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=_plain))
    plot(runs, out / f"{stem}.png")

    accuracy_table(runs)
    summary(runs)
    if flagged.empty:
        print("No sanity flag fired.")
    else:
        print("\nflagged runs:\n" + flagged.to_string(index=False))
    print("\nEach method against GMP at the same target (paired over seeds):")
    for c in checks:
        print(f"  [{c['status']}] {c['expectation']} ({c['pattern']}, {c['target']}): "
              f"{c['numbers']}")  # fmt: skip
    for v in verdicts:
        print(f"  claim {v['key']} at {v['target']}: {v['status']} ({v['numbers']}, "
              f"{v['comparison']})")  # fmt: skip
    if missing:
        print(f"registered regularizers in no config (not measured): {', '.join(missing)}")
    print(f"wrote {out / f'{stem}.json'}, {out / f'{stem}.png'} and the tables {report['tables']}")


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def accuracy_table(runs: pd.DataFrame) -> None:
    """Mean test accuracy over seeds of every method, baselines included, by target."""
    means = sl.stats.summarize(runs, ["pattern", "method", "target_sparsity"], "test_accuracy")
    # rows in the order of the tables, targets in increasing order
    table = means.pivot_table(
        index=["pattern", "method"], columns="target_sparsity", values="mean", sort=False
    ).sort_index(axis=1)
    print("\nTest accuracy after fine-tuning (mean over seeds) by target sparsity:")
    print(table.to_string(float_format="{:.4f}".format, na_rep=""))


def summary(runs: pd.DataFrame) -> None:
    """Per method: how often its own rule reached the target, and what projection did."""
    print("\nOwn threshold rule against the target (mean over seeds), and the projection:")
    regularized = runs[runs["regularizer"]]
    for (method, pattern), part in regularized.groupby(["method", "pattern"], sort=False):
        reached = part.groupby("target_sparsity", sort=False)["reached"].mean()
        cells = ", ".join(f"{target:.2f}->{value:.3f}" for target, value in reached.items())
        print(
            f"  {method:>26} {pattern:>12}: target->own rule {cells}; projection needed in "
            f"{int(part['projection_needed'].sum())} of {len(part)} runs; "
            f"{part['time_vs_gmp'].mean():.2f}x GMP per epoch"
        )


def plot(runs: pd.DataFrame, path: Path) -> None:
    """Three panels against the target: sparsity reached, accuracy, time per epoch."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    dense_accuracy = runs.loc[runs["method"] == "dense", "test_accuracy"].mean()
    trained = regularize_runs(runs)
    names = list(dict.fromkeys(trained["method"]))
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(names)}  # one per method
    for row_axes, pattern in zip(axes, ["unstructured", "channel"], strict=True):
        cells = trained[trained["pattern"] == pattern]
        means = cells.groupby(["method", "target_sparsity"], sort=False)[
            ["reached", "test_accuracy", "time_vs_gmp"]
        ].mean()  # the mean over seeds at each target
        for method in dict.fromkeys(cells["method"]):
            mine = means.loc[method].sort_index()
            style = {
                "marker": "o",
                "label": method,
                "color": colors[method],
                "linestyle": "--" if method == REFERENCE else "-",
            }
            row_axes[0].plot(mine.index, mine["reached"], **style)
            row_axes[1].plot(mine.index, mine["test_accuracy"], **style)
            row_axes[2].plot(mine.index, mine["time_vs_gmp"], **style)
        lims = [0, 1]
        row_axes[0].plot(lims, lims, color="gray", linewidth=0.8)
        row_axes[0].set_ylabel(f"{pattern}: sparsity the rule reached")
        row_axes[1].axhline(dense_accuracy, color="gray", linestyle=":", label="dense")
        row_axes[1].set_ylabel("test accuracy after fine-tuning")
        row_axes[2].axhline(1.0, color="gray", linestyle=":")
        row_axes[2].set_ylabel("time per epoch / GMP's (same seed and target)")
        for ax in row_axes:
            ax.set_xlabel("target sparsity")
            ax.grid(alpha=0.3)
        row_axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"Regularizers on {runs['model'].iloc[0]} / {runs['data'].iloc[0]}: "
        f"{int(trained['epochs'].max())} epochs + {int(trained['finetune_epochs'].max())} "
        f"fine-tuning, seeds {sorted(runs['seed'].unique().tolist())}"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

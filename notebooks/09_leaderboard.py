# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The leaderboard, and adding your own method
#
# **What you will learn:** how to compare pruning methods fairly: one setting, one dense
# baseline per seed, one fine-tuning budget, the field's baselines in every table, paired
# intervals, and costs counted in nonzeros, FLOPs and storage bits; and how to add a
# method of your own and see it next to the others with one command.
#
# The tables come from the benchmark harness, `sparsity_lab.bench`, which the command
# `sparsity-lab bench CONFIG` drives.  They are committed under `benchmarks/leaderboard/`
# with a manifest each (library and dependency versions, git commit, seeds, a hash of
# every data split, the dense baselines, the machine).  This notebook only reads them, so
# it runs in seconds; the command that regenerates a table is in its config file.  The
# survey proposes a metric of pruned parameter efficiency as a baseline for comparing
# sparse networks, and ShrinkBench (Blalock et al. 2020) found that published pruning
# results could rarely be compared, because papers used different settings, budgets and
# baselines; a shared harness is the remedy both point to.

# %%
import csv

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display
from torch import nn

import sparsity_lab as sl
from sparsity_lab import bench, leaderboard

# %% tags=["parameters"]
SMOKE = False
TABLE = "lenet300-mnist"
SPARSITY = 0.9  # the sparsity the text discusses

# %%
if SMOKE:  # a quick pass through every cell, for CI: a tiny committed table
    TABLE = "smoke"
info = sl.nb.setup(seed=0, smoke=SMOKE, threads=1)

# %% [markdown]
# ## Where the numbers come from
#
# Every run of a table starts from the dense model of its seed, trained with the setting's
# recipe (`sparsity_lab.recipes`), prunes a copy once, fine-tunes it with the mask fixed
# for the same number of epochs, and is measured on the test split.  Whatever a config
# lists, the harness adds the dense model, global and uniform magnitude pruning, and a
# random mask with the per-layer counts of global magnitude's mask: a method that cannot
# beat these has not shown anything.  The manifest says what produced the table:

# %%
table, manifest = leaderboard.load(TABLE)
config = manifest["config"]
lines, dense = leaderboard.provenance(table, manifest)
print(lines)
dense

# %% [markdown]
# The digest check above recomputes the hash of the table as read and compares it with the
# one the harness wrote: a table edited by hand would fail it.  `sparsity-lab bench CONFIG
# --compare TABLE.csv` reruns every run and reports any number that differs.
#
# ## Sanity flags
#
# The harness records the sanity flags of every run (`sparsity_lab.flags`): accuracy at
# chance level, a target sparsity not reached, a layer pruned to 100%, a class never
# predicted.  A flagged point is drawn hollow below, and the summary marks it.

# %%
sl.nb.show_flags(
    sl.flags.table(table, ["method", "target_sparsity"]), what="after fine-tuning (test)"
)

# %% [markdown]
# ## The table
#
# One row per method and target sparsity: the mean test accuracy over seeds with its 95%
# t-interval (clipped to [0, 1]), the mean costs, and the paired difference from global
# magnitude pruning on the same seeds (`vs_*`; "better" or "worse" only when the paired
# interval excludes 0).  A nonzero difference that is the same on every seed gets "no
# spread" (an identical result on every seed is "no clear difference"): a
# zero-width interval says the seeds agree, not that the difference would hold on others,
# and the text below counts it with the unclear ones.

# %%
summary = leaderboard.summary(table)
shown = summary[
    [
        "method",
        "target_sparsity",
        "n",
        "sparsity",
        "test_accuracy",
        "ci_low",
        "ci_high",
        "nonzeros",
        "storage_bits",
        "vs_baseline",
        "vs_low",
        "vs_high",
        "vs_verdict",
        "flagged",
    ]
].sort_values(["target_sparsity", "test_accuracy"], ascending=[True, False])
shown.round(4)

# %% [markdown]
# ## Pareto fronts
#
# Accuracy against four costs: nonzero weights, forward FLOPs per example, storage in
# bits with the indices (compressed sparse rows with 32-bit indices for unstructured
# masks, the N:M format for N:M), and the latency of one example through the model as
# deployed (`sl.accel.export`: structured zeros shrunk away, each layer run with the
# fastest kernel it measured), timed on the machine the manifest names.  The line joins
# the points no other point beats on both axes.  Storage shows what parameter counts
# hide: an unstructured mask pays an index per kept weight.  The second row repeats the
# first with the y axis fitted to the fronts and the dense line, so that the differences
# along the fronts can be read; its titles count the means it leaves out.

# %%
# Two rows: the full range, where a collapsed method sits far below, and the same fronts with
# the y axis fitted to the points on them (and the dense line), where the methods compared
# below differ; the titles of that row count the means it leaves out.
costs = list(leaderboard.COSTS)
fig, axes = plt.subplots(
    2, len(costs), figsize=(4.5 * len(costs), 7.5), squeeze=False, layout="constrained"
)
leaderboard.plot_fronts(table, costs, axes=axes[0])
leaderboard.plot_fronts(table, costs, axes=axes[1])
fig.legends[-1].remove()  # each call adds the same legend: keep one
points = leaderboard.summary(table)
clean_points = points[~points["flagged"]]
on_fronts = pd.concat([leaderboard.pareto_front(clean_points, cost) for cost in costs])
dense_line = table.groupby("seed")["dense_test_accuracy"].first().mean()
low = min(on_fronts["ci_low"].fillna(on_fronts["test_accuracy"]).min(), dense_line)
high = max(on_fronts["ci_high"].fillna(on_fronts["test_accuracy"]).max(), dense_line)
pad = 0.1 * max(high - low, 0.01)
bottom, top = max(0.0, low - pad), min(1.0, high + pad)
off_axis = int(((points["test_accuracy"] < bottom) | (points["test_accuracy"] > top)).sum())
for ax in axes[0]:
    ax.set_title("full range", fontsize=10)
for ax in axes[1]:
    ax.set_ylim(bottom, top)
    ax.set_title(f"zoom: {off_axis} of {len(points)} means off the axis", fontsize=10)
plt.show()
machine = manifest["machine"]
load = (machine.get("load_average") or [None])[0]
if load is not None and load > machine["cpus"]:
    print(
        f"Timed on a busy machine (load {load:.1f} on {machine['cpus']} cores when the table "
        "was written): a latency difference smaller than the spread between methods of one "
        "sparsity is timing noise."
    )
magnitude = summary[summary["method"] == "magnitude (global)"].set_index("target_sparsity")
dense_row = summary[summary["method"] == "dense"].iloc[0]
for s in magnitude.index:
    row = magnitude.loc[s]
    same = summary[summary["target_sparsity"] == s]["latency_seconds"] * 1e6
    print(
        f"global magnitude at {s:.0%}: {row['nonzeros'] / dense_row['nonzeros']:.0%} of the "
        f"weights, {row['storage_bits'] / dense_row['storage_bits']:.0%} of the dense bits, "
        f"latency {row['latency_seconds'] * 1e6:.0f} us against "
        f"{dense_row['latency_seconds'] * 1e6:.0f} us dense (all methods at {s:.0%}: "
        f"{same.min():.0f} to {same.max():.0f} us)"
    )

# %% [markdown]
# ## One card per method
#
# `iso_accuracy_compression` is the largest compression (dense weights over kept weights)
# whose mean accuracy stays within one point of the dense model's; 1 means no sparsity
# did.  `best_accuracy_per_million` is the best accuracy, in points, per million remaining
# weights, at whichever sparsity maximises it (not necessarily `at_sparsity`).
# `beats_baseline` and `loses_to_baseline` list the sparsities with a "better" or "worse"
# verdict against global magnitude (a "no spread" difference is not counted).

# %%
cards = leaderboard.cards(table)
cards.round(3)

# %% [markdown]
# What the table says at the sparsity this notebook discusses, computed from the rows
# above:

# %%
at = summary[(summary["target_sparsity"] == SPARSITY) & (summary["method"] != "dense")]
if at.empty:
    text = f"No method ran at {SPARSITY:.0%} sparsity in this table."
else:
    clean = at[~at["flagged"]]
    # ties are exact here: means of three seeds on 500 test examples come in 1/1500 steps
    top = clean[clean["test_accuracy"] >= clean["test_accuracy"].max() - 1e-12]
    better = at[at["vs_verdict"] == "better"]["method"].tolist()
    worse = at[at["vs_verdict"] == "worse"]["method"].tolist()
    unclear = at[at["vs_verdict"].isin(["no clear difference", "one seed", "no spread"])]
    flagged = at[at["flagged"]]["method"].tolist()
    dense_mean = table.groupby("seed")["dense_test_accuracy"].first().mean()
    parts = [f"At {SPARSITY:.0%} sparsity ({len(at)} methods, dense {dense_mean:.1%}):"]
    if len(top) == 1:
        best = top.iloc[0]
        parts.append(
            f"the most accurate unflagged method is {best['method']} at "
            f"{best['test_accuracy']:.1%} ({best['ci_low']:.1%} to {best['ci_high']:.1%})."
        )
    elif len(top) > 1:
        parts.append(
            f"the most accurate unflagged methods are {' and '.join(top['method'])}, tied at "
            f"{top['test_accuracy'].iloc[0]:.1%}."
        )
    parts.append(
        f"Against global magnitude on the same seeds, {len(better)} "
        f"{'is' if len(better) == 1 else 'are'} better ({', '.join(better) or 'none'}), "
        f"{len(worse)} worse ({', '.join(worse) or 'none'}) and {len(unclear)} without a "
        f"clear difference."
    )
    if flagged:
        parts.append(f"Runs of {', '.join(flagged)} raised sanity flags (see the flag table).")
    text = " ".join(parts)
display(Markdown(text))

# %% [markdown]
# ## Efficiency metrics
#
# The survey defines "a metric of pruned parameter efficiency that could serve as a
# baseline for comparison of different sparse networks".  Its formula could not be checked
# against the paper's text for this library, so `sparsity_lab.efficiency` implements the
# three readings in use, each under its own name, and none claims to be the survey's:
#
# - `accuracy_per_parameter` (column `accuracy_per_million`): accuracy points per million
#   remaining weights;
# - `accuracy_change_per_removed_parameter` (column `change_per_million_removed`): points
#   gained (negative: lost) against the dense model per million removed weights;
# - `iso_accuracy_compression`: the largest compression within a tolerance of dense (the
#   cards above).
#
# Here they are for each method at its best sparsity by the first metric, with the flag
# column of the table:

# %%
metric_rows = summary[summary["method"] != "dense"]
best_rows = metric_rows.loc[metric_rows.groupby("method")["accuracy_per_million"].idxmax()]
best_rows[
    [
        "method",
        "target_sparsity",
        "test_accuracy",
        "nonzeros",
        "accuracy_per_million",
        "change_per_million_removed",
        "flagged",
    ]
].sort_values("accuracy_per_million", ascending=False).round(3)

# %% [markdown]
# Where each method's best accuracy per weight lies, counted from the rows above:

# %%
sparsest = metric_rows.groupby("method")["target_sparsity"].max()
at_sparsest = (best_rows.set_index("method")["target_sparsity"] == sparsest).sum()
print(
    f"{at_sparsest} of {len(best_rows)} methods score best per weight at the highest "
    "sparsity they ran at"
)

# %% [markdown]
# A metric per weight rewards removing weights as long as the accuracy lost is small next
# to the weights saved, so it cannot replace the fronts above: it says nothing of the
# points a user would not accept.
#
# ## Add your own method
#
# A criterion is a class with a `scores` method: a score per weight, higher meaning
# keep.  Registering it under a name makes every part of the library accept it:
# `sl.prune(model, "relative_magnitude", 0.9)`, any pattern and budget, and the harness.
# This one, in `benchmarks/leaderboard/relative_magnitude.py`, scores a weight by its
# magnitude relative to the mean magnitude of its output unit:

# %%
source = leaderboard.tables_dir() / "relative_magnitude.py"
print(source.read_text())

# %% [markdown]
# Check it against a hand computation before trusting it on a benchmark.  Two output
# units with weights (1, 2, 3) and (10, 20, 60) have mean magnitudes 2 and 30, so the
# scores are (0.5, 1, 1.5) and (1/3, 2/3, 2), and pruning half of the six weights removes
# the three smallest scores: the first weight of each unit and the second of the second.
# Global magnitude would instead empty the first unit.

# %% tags=["nbval-check-output"]
bench.import_methods([str(source)])
EXAMPLE_WEIGHTS = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 60.0]])
layer = nn.Linear(3, 2, bias=False)
with torch.no_grad():
    layer.weight.copy_(EXAMPLE_WEIGHTS)
scores = sl.registry.get("relative_magnitude")().scores(layer, ["weight"], None)["weight"]
print("scores:", scores.round(decimals=4).tolist())
sl.prune(layer, "relative_magnitude", 0.5)
print("kept:", sl.masks.masks(layer)["weight"].int().tolist())
assert sl.masks.masks(layer)["weight"].int().tolist() == [[0, 1, 1], [0, 0, 1]]

# %% [markdown]
# The same check runs in the test suite (`tests/test_bench.py`).  To put the method on
# the leaderboard, name the file under `imports:` and the method under `methods:` in a
# config, and run one command:
#
# ```
# sparsity-lab bench benchmarks/leaderboard/lenet300-mnist.yaml
# ```
#
# The harness adds the baselines, runs every seed, caches each finished run (an
# interrupted sweep resumes where it stopped), and writes the table and its manifest.
# `--executor local:4` runs the same cells on a Dask cluster of four local workers, and
# `--executor tcp://host:8786` on a cluster whose scheduler listens there.  Each run fixes
# its own seed and thread count, and the test suite checks that a two-worker cluster, even
# one that loses a worker mid-run, gives the serial table.  Its card:

# %%
mine = cards[cards["method"] == "relative_magnitude"]
display(mine.round(3) if len(mine) else Markdown("This table has no relative_magnitude run."))

# %% [markdown]
# ## Summary
#
# - The harness gives every method the same dense models, fine-tuning budget and
#   baselines, and records what produced each table; the leaderboard reads the committed
#   tables and checks their digests.
# - Comparisons are paired by seed against global magnitude, and flagged runs are marked
#   in the tables and drawn hollow in the fronts.
# - Parameter counts overstate savings: storage bits with indices show it (an unstructured
#   mask needs its indices), while the FLOPs of these masked layers follow the nonzeros
#   exactly; the latencies of the exported models are printed with their spread.
# - The survey's own efficiency formula is not reproduced here; three named readings are.
# - A new criterion takes about twenty lines, a hand check and one command to appear here.

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** Compute `leaderboard.cards(table, tolerance=0.005)` and `tolerance=0.02`.  Which
# methods change their iso-accuracy compression?  Answer with a set of method names.  Then
# ask yourself why a half-point tolerance decides less than it seems with three seeds
# (look at `ci_low` and `ci_high` of `leaderboard.summary(table)`).


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    tight, loose = (leaderboard.cards(table, tolerance=t) for t in (0.005, 0.02))
    both = tight.merge(loose, on="method", suffixes=("_tight", "_loose"))
    moved = both["iso_accuracy_compression_tight"] != both["iso_accuracy_compression_loose"]
    hint = "Compare the `iso_accuracy_compression` column of the two tables, method by method."
    sl.nb.check(1, answer, set(both.loc[moved, "method"]), hint=hint, solution=solution)


# %%
answer_1 = None  # a set of method names, as the cards name them
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  By hand from the committed CSV, without the leaderboard's cards: each method's
# mean over seeds at each sparsity, its compression (parameters / mean nonzeros) and the
# largest compression within each tolerance of the dense mean (1 when none is).  Then the
# widths of the means' intervals: where most are wider than a point, which side of a
# half-point tolerance a mean falls on is partly chance.
with open(leaderboard.tables_dir() / f"{TABLE}.csv", newline="") as f:
    csv_rows = list(csv.DictReader(f))
dense_of_seed = {}
for r in csv_rows:
    dense_of_seed.setdefault(r["seed"], float(r["dense_test_accuracy"]))
dense_mean = sum(dense_of_seed.values()) / len(dense_of_seed)
n_parameters = max(float(r["parameters"]) for r in csv_rows)
cells = {}  # (method, target sparsity): the seeds' accuracies and nonzeros
for r in csv_rows:
    cell = cells.setdefault((r["method"], r["target_sparsity"]), ([], []))
    cell[0].append(float(r["test_accuracy"]))
    cell[1].append(float(r["nonzeros"]))


def iso_compression(method, tolerance):
    """The largest compression of ``method`` whose mean is within ``tolerance`` of dense."""
    within = [
        n_parameters / (sum(nz) / len(nz))
        for (name, _), (acc, nz) in cells.items()
        # 1e-12: a mean exactly at the tolerance is within it, whatever the float rounding
        if name == method and sum(acc) / len(acc) >= dense_mean - tolerance - 1e-12
    ]
    return max(within, default=1.0)


methods = dict.fromkeys(name for name, _ in cells)
solution_1 = {m for m in methods if iso_compression(m, 0.005) != iso_compression(m, 0.02)}
print("changed:", sorted(solution_1) or "none")
points = leaderboard.summary(table)
width = (points["ci_high"] - points["ci_low"]).dropna()
print(f"95% intervals of the means: median width {100 * width.median():.1f} points, "
      f"{(width > 0.01).mean():.0%} wider than one point")  # fmt: skip
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Change `relative_magnitude` to divide by the row's largest magnitude instead of
# its mean.  Work out by hand which weights the two-unit example keeps at 50%, then check
# it with `sl.prune`.  Answer with the keep-mask as a list of rows, e.g. `[[1, 1, 0], [0,
# 1, 0]]`.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    rows = EXAMPLE_WEIGHTS.abs()  # the example's weights (`layer` is pruned by now)
    scores = rows / rows.amax(dim=1, keepdim=True)
    keep = sl.patterns.prune_lowest(scores.flatten(), scores.numel() // 2).reshape(rows.shape)
    hint = "Scores are |w| / max |w| of the row; the three lowest of six go (ties: lower index)."
    sl.nb.check(2, answer, keep.int().tolist(), hint=hint, solution=solution)


# %%
answer_2 = None  # e.g. [[1, 1, 0], [0, 1, 0]]
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  By hand: (1, 2, 3) / 3 = (1/3, 2/3, 1) and (10, 20, 60) / 60 = (1/6, 1/3, 1).
# The three lowest are 1/6, then the two thirds' tie, 1/3 and 1/3: the first weight of
# each unit and the second of the second go, as with the mean.  `sl.prune` takes a
# criterion object as well as a registered name, which is enough for a quick check.


class RelativeToMax(sl.criteria.Criterion):
    name = "relative_to_max"

    def scores(self, model, names, context):
        out = {}
        for n in names:
            w = sl.masks.weight(model, n).detach().abs()
            rows = w.reshape(w.shape[0], -1)
            out[n] = (rows / rows.amax(dim=1, keepdim=True).clamp_min(1e-12)).reshape(w.shape)
        return out


example = nn.Linear(3, 2, bias=False)
with torch.no_grad():
    example.weight.copy_(EXAMPLE_WEIGHTS)  # a fresh copy: `layer` itself is pruned
sl.prune(example, RelativeToMax(), 0.5)
solution_2 = sl.masks.masks(example)["weight"].int().tolist()
print("kept:", solution_2)
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Put `fisher_diag` and `lamp` on the smoke table's setting at 90% (the setting of
# `benchmarks/leaderboard/smoke.yaml`: LeNet-300-100 on `digits`, seeds 0 and 1, one
# fine-tuning epoch): the config `mine_config` below, whose arms `bench.cells` lists (the
# baselines included) and whose runs `bench.run_cell(bench.setting_of(config), arm, seed)`
# makes one at a time.
# What is LAMP's mean paired difference from global magnitude at 90%, in points?  One
# decimal.  Does either method beat global magnitude on the paired interval?  Then, in a
# terminal, copy `smoke.yaml` to `smoke-mine.yaml` in the same folder (its `imports:` are
# found there), set `name: smoke-mine`, add the two methods, run `sparsity-lab bench
# benchmarks/leaderboard/smoke-mine.yaml`, and rerun it on a Dask cluster with a fresh
# cache, so that every run is redone: `--executor local:2 --cache .cache/bench-dask --out
# /tmp/rerun --compare benchmarks/leaderboard/smoke-mine.csv`.  Does any number change?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
import math

from sparsity_lab import recipes

mine_config = {  # the smoke table's setting, at 90% only, with the two methods
    "name": "smoke-mine",
    "model": "lenet300",
    "data": "digits",
    "sparsities": [0.9],
    "seeds": [0, 1],
    "finetune_epochs": 1,
    "methods": ["fisher_diag", "lamp"],
}
mine_runs = {}  # each run is made once, for the check and the solution


def run_mine(label):
    """The harness's runs of the arm ``label`` of `mine_config`, one row per seed."""
    if label not in mine_runs:
        config = bench.load_config(mine_config)
        (arm,) = [a for a in bench.cells(config) if a["label"] == label]
        mine_runs[label] = [
            {**bench.run_cell(bench.setting_of(config), arm, seed), "seed": seed}
            for seed in config["seeds"]
        ]
    return pd.DataFrame(mine_runs[label])


def check_3(answer, solution=False):
    runs = pd.concat([run_mine("lamp"), run_mine("magnitude (global)")], ignore_index=True)
    paired = sl.stats.paired(runs, "method", "lamp", "magnitude (global)", metric="test_accuracy")
    hint = "Run both arms on both seeds; average the per-seed differences of test accuracy."
    points = 100 * paired.iloc[0]["mean_diff"]
    sl.nb.check(3, answer, points, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_3 = None  # points, e.g. -1.5
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  The protocol by hand, without the harness: each seed's dense model, pruned
# once to 90% (data-driven criteria see the first 8 training batches of the seed's order,
# the harness's `calibration_batches`), fine-tuned one epoch at the default learning rate
# with the mask fixed, then scored on the test split.  With two seeds the paired 95%
# interval uses the t quantile of one degree of freedom, tan(0.475 pi) = 12.7: a difference
# must be about nine times its spread across the seeds to count, so two seeds decide
# almost nothing.


def accuracy_by_hand(method, seed, **options):
    t, model, _ = recipes.dense("lenet300", "digits", seed)
    calibration = [batch for _, batch in zip(range(8), t.loaders()[0], strict=False)]
    sl.prune(model, method, 0.9, data=calibration, seed=seed, **options)
    recipes.finetune(model, t, 1, lr=0.01)
    x, y = t.bundle.test.tensors
    with torch.no_grad(), sl.modes.evaluating(model):
        return (model(x).argmax(dim=1) == y).double().mean().item()


seeds_3 = mine_config["seeds"]
magnitude_3 = [accuracy_by_hand("magnitude", seed, budget="global") for seed in seeds_3]
for method in ("fisher_diag", "lamp"):
    diffs = [accuracy_by_hand(method, s) - m for s, m in zip(seeds_3, magnitude_3, strict=True)]
    mean, spread = sum(diffs) / 2, abs(diffs[0] - diffs[1]) / 2  # std / sqrt(2), two seeds
    half = math.tan(0.475 * math.pi) * spread
    print(f"{method} minus global magnitude: {100 * mean:+.1f} points, 95% interval "
          f"[{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]")  # fmt: skip
    if method == "lamp":
        solution_3 = round(100 * mean, 1)
check_3(solution_3, solution=True)

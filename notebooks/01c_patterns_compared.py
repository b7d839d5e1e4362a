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
# # What to prune III: accuracy at equal sparsity, pattern by pattern
#
# **What you will learn:** what each pattern of [01](01_what_to_prune.ipynb) (single
# weights, N:M groups, blocks, kernels, channels, inputs) costs in accuracy at the same
# sparsity after the same fine-tuning, why equal sparsity must be checked, and whether
# fine-grained sparsity keeps more accuracy than channel pruning, as Mao et al. (2017)
# found (with vector- and kernel-level patterns close to fine-grained).
#
# This follows sections 2.3 and 3.1 of the survey, on LeNet-300-100 and LeNet-5:
# [01](01_what_to_prune.ipynb) introduces the patterns and what each buys in storage,
# [01b](01b_removing_structure.ipynb) removes channels, heads and layers for good.

# %%
import copy
import dataclasses
import inspect
import itertools
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import patterns, recipes

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.75, 0.9]
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
FINETUNE_EPOCHS = 2

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    SPARSITIES = [0.75]
    EPOCHS = 2
    FINETUNE_EPOCHS = 1
    N_TRAIN = 500
    N_EVAL = 200
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)  # 1: less contention
DATA = {k: v for k, v in {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}.items() if v}

# %%
task300, lenet300, info300 = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
task5, lenet5, info5 = recipes.dense("lenet5", "mnist", SEED, epochs=EPOCHS, **DATA)
sl.nb.md(
    f"Dense test accuracy (seed {SEED}): LeNet-300-100 **{info300['test_accuracy']:.2%}**, "
    f"LeNet-5 **{info5['test_accuracy']:.2%}**; {len(task300.bundle.train):,} training images."
)

# %% [markdown]
# ## Accuracy at equal sparsity
#
# The protocol, the same for every pattern: from the dense model (trained as in
# [01](01_what_to_prune.ipynb)), prune by magnitude with the *uniform* budget (every layer
# equally sparse), then fine-tune for the same number of epochs with the masks fixed.  The
# classifier (`fc3`) and the layers a pattern does not fit stay dense but count in the
# sparsity: the other layers take their share of the zeros.  N:M cannot, since N and M set its
# sparsity (2:4 is 50%, 1:4 is 75%; with M = 4 it cannot reach 90%): it falls short wherever a
# layer stays dense, the classifier included.  A run more than a small tolerance short of its
# target is flagged; the table after the figure gives the sparsity each pattern reached.  Each
# seed has its own data split and dense model: the curves show the change of accuracy from it
# (mean over the seeds, 95% confidence interval, circled in red where a run raised a sanity
# flag), and two patterns are compared by their paired per-seed differences.  The y axis fits
# the unflagged points; a mean beyond it is a triangle at the edge, with its value.

# %%
CLASSIFIER = "fc3.weight"  # both LeNets end with fc3
CONVS = ["conv1.weight", "conv2.weight"]
SHORT = "target sparsity not reached"  # the flag of a run below its target
level = min(SPARSITIES, key=lambda s: abs(s - 0.75))
LENET_PATTERNS = ["unstructured", "nm", "block:4x4", "channel", "input"]


def spec(pattern, sparsity):
    """The pattern to use at ``sparsity``: N:M with M = 4 keeps N = (1 - s) * 4 weights."""
    if pattern != "nm":
        return pattern
    n = (1 - sparsity) * 4
    return f"{round(n)}:4" if abs(n - round(n)) < 1e-9 and round(n) >= 1 else None


def prune_options(model, pattern, sparsity):
    """Keyword arguments of ``prune`` for one pattern at one sparsity."""
    pat = patterns.get(pattern)
    dense = list(dict.fromkeys([CLASSIFIER, *patterns.misfits(model, pat)]))
    fixed = pat.fixed_sparsity is not None
    return {"sparsity": None if fixed else sparsity, "pattern": pat, "dense": dense}


def one_run(model, pattern, sparsity, seed):
    chosen = spec(pattern, sparsity)
    if chosen is None:
        return {"test_accuracy": float("nan"), "measured_sparsity": float("nan"), "flags": ""}
    t, pruned, dense_info = recipes.dense(model, "mnist", seed, epochs=EPOCHS, **DATA)
    options = prune_options(pruned, chosen, sparsity)
    options.update(budget="uniform", data=t.loaders()[0], seed=t.seed)
    sl.prune(pruned, "magnitude", options.pop("sparsity"), **options)
    # the flags check the nominal sparsity, N:M's too (its own is set by N and M)
    result = recipes.finetune_and_measure(
        pruned, t, sparsity, finetune_epochs=FINETUNE_EPOCHS, progress=False
    )
    return {**result, "dense_test_accuracy": dense_info["test_accuracy"]}


grid = {"model": ["lenet300", "lenet5"], "pattern": LENET_PATTERNS, "sparsity": SPARSITIES}
results = sl.experiments.sweep(one_run, grid, seeds=SEEDS, progress=False)
results = results.dropna(subset=["test_accuracy"])
results["change"] = results["test_accuracy"] - results["dense_test_accuracy"]

fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
TITLES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}
for ax, (model_name, title) in zip(axes, TITLES.items(), strict=True):
    # bounds: a change of accuracy lies in [-1, 1], which a t-interval of 3 seeds can pass
    part = results[results["model"] == model_name]
    sl.viz.mean_ci_fitted(part, "sparsity", "change", "pattern", ax, bounds=(-1, 1), fmt="{:+.2f}")
    ax.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
    ax.set_ylabel("test accuracy - dense (mean, 95% CI)")
    ax.set_title(f"{title}: magnitude, uniform, {FINETUNE_EPOCHS} epoch(s) of fine-tuning")
plt.show()
sl.nb.show_flags(
    sl.flags.table(results, ["model", "pattern", "sparsity"]), what="after fine-tuning (test)"
)

# %%
reached = results.pivot_table(
    index=["model", "sparsity"], columns="pattern", values="measured_sparsity"
).reindex(columns=LENET_PATTERNS)
sl.nb.md("Sparsity reached, mean over the seeds (every weight layer counted):")
display(reached.round(3))
short = results[results["flags"].str.contains(SHORT, regex=False)]
short_groups = short.groupby(["model", "pattern", "sparsity"])["measured_sparsity"].mean()
# the tolerance of the flag: sl.flags.check's default, which the runs use
tolerance = inspect.signature(sl.flags.check).parameters["sparsity_tolerance"].default
nm300 = reached.loc["lenet300", "nm"].dropna()
# below the target at the precision shown
nm300_below = nm300[nm300.round(3) < nm300.index.to_numpy()]
nm_words = "N:M reaches the target on lenet300.  " if len(nm300) else ""
if len(nm300_below):
    below = " and ".join(f"{r:.1%} at {s:.0%}" for s, r in nm300_below.items())
    nm_words = (
        "N:M stays below the target wherever a layer stays dense (the classifier too: "
        f"lenet300 reaches {below}).  "
    )
shortfall = "; ".join(f"{p} on {m}, {r:.1%} at {s:.0%}" for (m, p, s), r in short_groups.items())
sl.nb.md(
    nm_words
    + f"A run more than {tolerance:g} short of its target (the table's units) is flagged.  "
    + (
        "No run is that far short."
        if short.empty
        else f"Short of the target: {shortfall}.  These {len(short)} runs are flagged, and "
        "the comparisons below leave them out."
    )
)

at_level = results[results["sparsity"] == level]
flops = at_level.groupby(["model", "pattern"], sort=False)["finetune_flops"].mean()
pieces = [
    f"{m} from {cost.min():.3g} ({cost.idxmin()[1]}) to {cost.max():.3g} ({cost.idxmax()[1]})"
    for m, cost in flops.groupby(level="model", sort=False)
]
dear5 = flops.loc["lenet5"].idxmax()
dense5 = set(CONVS) & set(patterns.misfits(lenet5, spec(dear5, level) or dear5))
why = (
    f"On LeNet-5, {dear5} does not fit the convolutions, which stay dense: it keeps "
    f"{1 - reached.loc[('lenet5', level), dear5]:.1%} of the weights instead of {1 - level:.0%}"
    if dense5
    else "The patterns keep different weights"
)
sl.nb.md(
    f"Every run fine-tunes {FINETUNE_EPOCHS} epoch(s) on {len(task300.bundle.train):,} "
    "images with the masks fixed.  Counted as three forward passes per example over the "
    f"kept weights, that costs at {level:.0%} (mean over the seeds) "
    + "; ".join(pieces)
    + f" FLOPs.  {why}, and a convolution weight is used at every position of the image, a "
    "fully connected one once per example."
)

# %%
summary = sl.stats.summarize(results, ["model", "pattern", "sparsity"], "test_accuracy")
table = summary.pivot_table(index=["model", "sparsity"], columns="pattern", values="mean")
ORDER = ["unstructured", "nm", "block:4x4", "channel"]
parts = []
for _, part in results.groupby(["model", "sparsity"]):
    # N:M takes part where N = (1 - s) * 4 is whole and the model reached the target with it
    nm_runs = part[part["pattern"] == "nm"]
    nm_in = len(nm_runs) > 0 and not nm_runs["flags"].str.contains(SHORT, regex=False).any()
    chain = [p for p in ORDER if p != "nm" or nm_in]
    parts += [
        sl.stats.paired(
            part, "pattern", a, b, metric="test_accuracy", by=["model", "sparsity"]
        ).assign(pair=f"{a} - {b}")
        for a, b in itertools.pairwise(chain)
    ]
steps = pd.concat(parts, ignore_index=True)
counted = steps[steps["flagged"] == ""]
verdict_counts = counted["verdict"].value_counts()


def count_words():
    """What the steps without a flagged run found, and how many steps were left out."""
    left_out = len(steps) - len(counted)
    if counted.empty:
        return f"all {len(steps)} steps have a flagged run, so none is counted"
    found = ", ".join(f"{verdict_counts.get(v, 0)} {v}" for v in verdict_counts.index)
    verb = "has a flagged run and is" if left_out == 1 else "have a flagged run and are"
    tail = f"; {left_out} of the {len(steps)} steps {verb} left out" if left_out else ""
    return f"of the {len(counted)} steps without a flagged run, the finer pattern is {found}{tail}"


row = table.loc[("lenet300", level)].dropna().sort_values(ascending=False)
at300 = results[(results["model"] == "lenet300") & (results["sparsity"] == level)]
order_words = sl.words.ranking_text(at300, "pattern", row.index, noun="patterns")
sl.nb.md(
    f"LeNet-300-100's mean test accuracies at {level:.0%} sparsity, highest first: "
    + ", ".join(f"{p} {a:.1%}" for p, a in row.items())
    + f".  Paired per seed, {order_words}  The expected order is unstructured >= N:M >= "
    "block >= channel: a finer granularity leaves magnitude pruning more freedom to keep the "
    "important weights.  Each step of that order, paired per seed, at every (model, sparsity) "
    f"point, N:M left out where it misses the target: {count_words()} (table below: finer "
    "minus coarser, in points)."
)
shown = steps.assign(
    difference=[sl.stats.describe(r) for _, r in steps.iterrows()],
    counted=np.where(steps["flagged"] == "", "yes", "no: flagged run"),
)
display(shown.set_index(["model", "sparsity", "pair"])[["difference", "counted"]])

# %% [markdown]
# Kernels only exist in convolutions, so the kernel pattern cannot make a whole LeNet-5
# sparse: the convolutions hold only a small part of its weights.  Comparing granularities on
# the convolutions alone, as Mao et al. (2017) did, with the fully connected layers dense:

# %%
lenet5_sizes = {n: sl.masks.weight(lenet5, n).numel() for n in sl.pruning.default_targets(lenet5)}
conv_share = sum(lenet5_sizes[n] for n in CONVS) / sum(lenet5_sizes.values())
sl.nb.md(
    f"LeNet-5's convolutions hold {sum(lenet5_sizes[n] for n in CONVS):,} of its "
    f"{sum(lenet5_sizes.values()):,} prunable weights ({conv_share:.1%})."
)


def conv_run(pattern, sparsity, seed):
    t, pruned, _ = recipes.dense("lenet5", "mnist", seed, epochs=EPOCHS, **DATA)
    options = {"pattern": pattern, "targets": CONVS, "budget": "uniform", "progress": False}
    return recipes.prune_and_finetune(
        pruned, t, "magnitude", sparsity, finetune_epochs=FINETUNE_EPOCHS, **options
    )


conv_grid = {"pattern": ["unstructured", "kernel", "channel"], "sparsity": SPARSITIES}
conv_results = sl.experiments.sweep(conv_run, conv_grid, seeds=SEEDS, progress=False)
# the axis fits the unflagged points; a point pulled down by a collapsed run is marked at its edge
ax = sl.viz.mean_ci_fitted(conv_results, "sparsity", "test_accuracy", "pattern")
ax.set_ylabel("test accuracy (mean, 95% CI)")
ax.set_title("LeNet-5, convolutions only: single weights, kernels, filters")
plt.show()
sl.nb.show_flags(
    sl.flags.table(conv_results, ["pattern", "sparsity"]), what="after fine-tuning (test)"
)

# %%
COLLAPSE = 0.5  # a run below this test accuracy has collapsed
collapsed = conv_results[conv_results["test_accuracy"] < COLLAPSE]
levels = ", ".join(f"{s:.0%}" for s in sorted(set(collapsed["sparsity"])))
worst = conv_results.groupby("pattern")["test_accuracy"].min()
top = max(SPARSITIES)


def conv1_filters_left(pattern, sparsity):
    """How many of conv1's filters keep a weight when a copy's convolutions are pruned."""
    m = copy.deepcopy(lenet5)
    sl.prune(m, "magnitude", sparsity, pattern=pattern, targets=CONVS, budget="uniform")
    return int(sl.masks.get_mask(m, "conv1.weight").flatten(1).any(1).sum())


def flag_kinds(text):
    """The kinds of a run's flags, without their numbers: "at chance level, disconnected"."""
    return sl.flags.kinds([text], 1).replace(sl.flags.SEPARATOR, ", ")


coarse_runs = conv_results[conv_results["pattern"].isin(["kernel", "channel"])].copy()
keys = list(zip(coarse_runs["pattern"], coarse_runs["sparsity"], strict=True))
filters_left = {key: conv1_filters_left(*key) for key in dict.fromkeys(keys)}
coarse_runs["conv1 left"] = [filters_left[key] for key in keys]
fewest = coarse_runs["conv1 left"].min()
thin = coarse_runs[coarse_runs["conv1 left"] == fewest]
thin_down = thin[thin["test_accuracy"] < COLLAPSE]
thin_up = thin[thin["test_accuracy"] >= COLLAPSE]
conv_pairs = {
    coarse: sl.stats.paired(
        conv_results, "pattern", "unstructured", coarse, metric="test_accuracy", by="sparsity"
    ).set_index("sparsity")
    for coarse in ["kernel", "channel"]
}
runs_words = (
    f"{len(collapsed)} of the {len(conv_results)} runs (at {levels} sparsity)"
    if levels
    else f"None of the {len(conv_results)} runs"
)
down = "; ".join(
    f"{r.pattern} at {r.sparsity:.0%}, seed {r.seed}: {r.test_accuracy:.1%}"
    + (f", flagged {flag_kinds(r.flags)}" if r.flags else "")
    for r in thin_down.itertuples()
)
fell = f"{len(thin_down) or 'none'} fell below {COLLAPSE:.0%}" + (f" ({down})" if down else "")
rest = (
    f"{' and the others' if len(thin_down) else ': they'} kept "
    f"{thin_up['test_accuracy'].min():.1%} to {thin_up['test_accuracy'].max():.1%}"
    if len(thin_up)
    else ""
)
pair_words = "; ".join(
    f"{coarse} at {s:.0%}: {sl.stats.describe(r)}"
    for coarse, pairs in conv_pairs.items()
    for s, r in pairs.iterrows()
)
sl.nb.md(
    f"{runs_words} fell below {COLLAPSE:.0%} test accuracy; the worst run per pattern: "
    + ", ".join(f"{p} {a:.1%}" for p, a in worst.items())
    + ".  `conv1` has only six filters (six kernels: one input channel), and the uniform "
    f"budget leaves {fewest} of them to the kernel and channel patterns at "
    + " and ".join(f"{s:.0%}" for s in sorted(set(thin["sparsity"])))
    + f".  Of those {len(thin)} runs, {fell}{rest}.  Each run was fine-tuned "
    f"{FINETUNE_EPOCHS} epoch(s) ({conv_results['finetune_flops'].min():.3g} to "
    f"{conv_results['finetune_flops'].max():.3g} FLOPs).  Unstructured minus the coarser "
    f"patterns, paired per seed: {pair_words}."
)

# %% [markdown]
# ## Against the literature
#
# Mao et al. (2017) found, at equal sparsity, that the coarsest pattern they tried, whole
# filters (channels), loses more accuracy than fine-grained sparsity, while vector- and
# kernel-level patterns come close to it: `sl.claims` judges unstructured against channel
# pruning from the paired test accuracies above, at every sparsity measured, on the whole
# LeNets (uniform budget, classifier dense) and on LeNet-5's convolutions alone (the layers
# of the paper's CNNs).  The text words the verdicts at the highest sparsity; the table
# lists all.


# %%
def arm_runs(data, sparsity, model_name=None):
    """The unstructured and channel runs at ``sparsity`` (of ``model_name``), by seed."""
    part = data[data["sparsity"] == sparsity]
    if model_name is not None:
        part = part[part["model"] == model_name]
    return {p: part[part["pattern"] == p].set_index("seed") for p in ("unstructured", "channel")}


def why_not(arms, sparsity):
    """Why the interval does not settle the claim, from the runs of ``arms``: the per-seed
    differences, the flagged runs of each seed and the sparsity each arm reached."""
    diffs = (arms["unstructured"]["test_accuracy"] - arms["channel"]["test_accuracy"]).dropna()
    text = sl.words.spread_text(diffs, "channel")
    for p, a in arms.items():
        kinds = {seed: flag_kinds(f) for seed, f in a["flags"].items() if f}
        if kinds and not (len(kinds) == len(a) and len(set(kinds.values())) == 1):
            # flags that differ between seeds say which seed failed; the same flags in
            # every seed are in the sanity flags above
            seeds = ", ".join(f"seed {seed} ({k})" for seed, k in kinds.items())
            text += f"  `{p}` is flagged in {seeds}."
        if a["flags"].str.contains(SHORT, regex=False).any():
            text += (
                f"  `{p}` reached only {a['measured_sparsity'].mean():.1%} sparsity against "
                f"the {sparsity:.0%} target, so the two arms are not at equal sparsity."
            )
    return text


def judged(data, row, sparsity, model_name=None):
    """The verdict on the paired ``row`` at ``sparsity`` (of ``model_name``, else of the
    convolutions alone), its status saying when it rests on flagged runs, as the steps above
    leave a flagged run out: "reproduced, on flagged runs (at chance level)"."""
    arms = arm_runs(data, sparsity, model_name)
    means = {p: f"{a['test_accuracy'].mean():.1%}" for p, a in arms.items()}
    where = f"{model_name}, whole model" if model_name else "lenet5, convolutions only"
    verdict = sl.claims.judge(
        "unstructured_beats_channel",
        row,
        setting=f"{where} at {sparsity:.0%}, uniform, fine-tuned, test",
        measured=f"At {sparsity:.0%} unstructured keeps {means['unstructured']} and channel "
        f"{means['channel']} test accuracy (mean over the seeds).",
        reason=why_not(arms, sparsity),
    )
    if not verdict.flagged:
        return verdict
    found = [k for a in arms.values() for f in a["flags"] for k in flag_kinds(f).split(", ") if k]
    kinds = ", ".join(dict.fromkeys(found))
    return dataclasses.replace(verdict, status=f"{verdict.status}, on flagged runs ({kinds})")


whole = sl.stats.paired(
    results, "pattern", "unstructured", "channel", metric="test_accuracy", by=["model", "sparsity"]
)
verdicts = [judged(results, r, r.sparsity, r.model) for _, r in whole.iterrows()]
verdicts += [judged(conv_results, r, s) for s, r in conv_pairs["channel"].iterrows()]
display(sl.claims.table(verdicts).drop(columns=["claim", "paper"]))
sl.nb.md(sl.claims.report([v for v in verdicts if f"at {top:.0%}" in v.setting]))

# %% [markdown]
# ## Summary
#
# - Patterns are compared after the same pruning and fine-tuning, each seed against its own
#   dense model, by paired per-seed differences.  Equal sparsity must be checked: a layer a
#   pattern does not fit stays dense, and N and M set N:M's sparsity, which can fall short.
# - Kernels exist only in convolutions, so the granularities are also compared on LeNet-5's
#   convolutions alone, as Mao et al. (2017) did.
#
# What the runs above measured:

# %%
finest = steps[steps["pair"].str.startswith("unstructured")]
nexts = "; ".join(
    f"{r.model} at {r.sparsity:.0%} {r.pair.split(' - ')[1]} {sl.stats.describe(r)}"
    for _, r in finest.iterrows()
)
at_top = [
    f"- Unstructured against channel ({v.setting}): **{v.status}**, {v.numbers()}"
    f"{'; ' + v.flagged if v.flagged else ''}."
    for v in verdicts
    if f"at {top:.0%}" in v.setting
]
sl.nb.md(
    "- Each step of the order unstructured >= N:M >= block >= channel, paired per seed over "
    f"{len(SEEDS)} seed(s), N:M left out where it misses the target: {count_words()}.  "
    f"Unstructured against the next pattern: {nexts}.\n" + "\n".join(at_top)
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Replace the uniform budget with `"global"` for the channel pattern: prune a copy
# of the dense LeNet-300-100 (`lenet300`) with `sl.prune(model, "magnitude", 0.75,
# pattern="channel", budget="global", dense=[CLASSIFIER])`.  How many of the 100 units of
# `fc2`, the last hidden layer, keep a weight?  Which layer loses the largest share of its
# units, and why is that dangerous for the last hidden layer?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    m = copy.deepcopy(lenet300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an emptied layer warns
        sl.prune(m, "magnitude", 0.75, pattern="channel", budget="global", dense=[CLASSIFIER])
    units = int(sl.masks.get_mask(m, "fc2.weight").any(dim=1).sum())
    hint = "Count the rows of fc2's mask (`sl.masks.get_mask`) that keep at least one weight."
    sl.nb.check(1, answer, units, hint=hint, solution=solution)


# %%
answer_1 = None  # a number of units, e.g. 40
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  The global budget ranks every unit of fc1 and fc2 by the L1 norm of its row
# and removes the lowest until 75% of all the weights (fc3 counted, kept dense) are gone.
# A row of fc2 sums 300 magnitudes, a row of fc1 784, so fc2's rows have the smaller
# norms and go first, even though its weights are larger on average (printed below): fc2
# loses the largest share of its units.  The last hidden layer is the only path to the
# classifier, so every unit it loses is information fc3 can no longer see; if it loses
# all of them, nothing crosses and the network is at chance.  `min_density=0.05` keeps
# part of every layer; a norm per weight (the mean) would compare rows of different
# lengths fairly.
# By hand, from the raw weights: the stable order of all row norms, and the prefix whose
# weights come nearest to the target.
rows_1 = {n: lenet300.get_parameter(n).detach().double() for n in ("fc1.weight", "fc2.weight")}
norms_1 = torch.cat([w.abs().sum(dim=1) for w in rows_1.values()]).numpy()
sizes_1 = np.concatenate([np.full(w.shape[0], w.shape[1]) for w in rows_1.values()])
all_weights = sum(p.numel() for n, p in lenet300.named_parameters() if n.endswith("weight"))
order_1 = np.argsort(norms_1, kind="stable")
cumulative_1 = np.concatenate([[0], np.cumsum(sizes_1[order_1])])
gone_1 = order_1[: int(np.argmin(np.abs(cumulative_1 - round(0.75 * all_weights))))]
n_fc1 = rows_1["fc1.weight"].shape[0]
solution_1 = rows_1["fc2.weight"].shape[0] - int((gone_1 >= n_fc1).sum())
print(
    f"median row norm: fc1 {np.median(norms_1[:n_fc1]):.2f}, fc2 {np.median(norms_1[n_fc1:]):.2f}; "
    f"mean magnitude: fc1 {rows_1['fc1.weight'].abs().mean():.4f}, "
    f"fc2 {rows_1['fc2.weight'].abs().mean():.4f}; "
    f"units kept: fc1 {n_fc1 - int((gone_1 < n_fc1).sum())} of {n_fc1}, "
    f"fc2 {solution_1} of {rows_1['fc2.weight'].shape[0]}"
)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** At 50% the comparison above pits 2:4 against unstructured at equal sparsity on
# LeNet-300-100 (on LeNet-5, 2:4 does not fit the convolutions and stays below the
# target).  Take the fine-tuning away: prune copies of the dense `lenet300` as the protocol
# does (`prune_options(model, pattern, 0.5)`, uniform budget), once with `"2:4"` and once
# with `"unstructured"`, and score them on the test set without fine-tuning.  What is the
# test accuracy of 2:4 minus that of unstructured, in points?  One decimal.  How does the
# difference change with the fine-tuning budget?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def no_finetuning(pattern):
    """Test accuracy of a copy of ``lenet300`` pruned to 50% with ``pattern``, as the
    protocol prunes, without fine-tuning."""
    m = copy.deepcopy(lenet300)
    options = prune_options(m, pattern, 0.5)
    sl.prune(m, "magnitude", options.pop("sparsity"), budget="uniform", **options)
    return recipes.evaluate_run(m, task300)["accuracy"]


def check_2(answer, solution=False):
    difference = 100 * (no_finetuning("2:4") - no_finetuning("unstructured"))
    hint = "Prune as `one_run` does, skip `finetune_and_measure`, and compare `evaluate_run`."
    sl.nb.check(2, answer, difference, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_2 = None  # points, e.g. -1.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  By hand, on the raw weights: 2:4 keeps the two largest magnitudes of every
# four consecutive inputs of fc1 and fc2; unstructured prunes the smallest magnitudes of
# each layer, fc1 and fc2 equally, so that with fc3 dense they still hold 50% of all the
# weights.  2:4 leaves fc3 whole and each group exactly half, so it cannot put its zeros
# where the small weights are, and without fine-tuning nothing makes up for the weights
# it loses.  Fine-tuning lets the kept weights take over their work, so the gap tends to
# narrow with more epochs: compare with the fine-tuned difference printed below (where
# the sweep ran at 50%).  One seed's difference says little: compare it with the paired
# intervals above.
weights_2 = {n: lenet300.get_parameter(n).detach() for n in ("fc1.weight", "fc2.weight")}
all_weights = sum(p.numel() for n, p in lenet300.named_parameters() if n.endswith("weight"))
pruned_share = 0.5 * all_weights / sum(w.numel() for w in weights_2.values())
assert sum(round(pruned_share * w.numel()) for w in weights_2.values()) == all_weights // 2


def keep_24(w):
    """Keep the two largest magnitudes of every four consecutive inputs."""
    groups = w.abs().reshape(w.shape[0], -1, 4)
    top = groups.topk(2, dim=2).indices
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(2, top, True).reshape(w.shape)


def keep_unstructured(w):
    """Keep all but the ``pruned_share`` smallest magnitudes."""
    keep = torch.ones(w.numel(), dtype=torch.bool)
    keep[torch.argsort(w.abs().flatten(), stable=True)[: round(pruned_share * w.numel())]] = False
    return keep.reshape(w.shape)


def accuracy_2(keep):
    m = copy.deepcopy(lenet300).eval()
    with torch.no_grad():
        for n, w in weights_2.items():
            m.get_parameter(n).copy_(w * keep(w))
        x_test, y_test = task300.bundle.test.tensors
        return float((m(x_test).argmax(dim=1) == y_test).float().mean())


solution_2 = round(100 * (accuracy_2(keep_24) - accuracy_2(keep_unstructured)), 1)
at_50 = results[(results["model"] == "lenet300") & (results["sparsity"] == 0.5)]
tuned = at_50.pivot_table(index="seed", columns="pattern", values="test_accuracy")
both = {"nm", "unstructured"} <= set(tuned.columns)
tuned_gap = 100 * (tuned["nm"] - tuned["unstructured"]).mean() if both else None
print(
    f"without fine-tuning, 2:4 minus unstructured: {solution_2:+.1f} points (seed {SEED}); "
    + (
        f"after {FINETUNE_EPOCHS} epoch(s): {tuned_gap:+.1f} points (mean over the seeds)"
        if both
        else "the sweep above did not run at 50% in this mode"
    )
)
check_2(solution_2, solution=True)

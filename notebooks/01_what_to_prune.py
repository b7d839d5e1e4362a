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
# # What to prune I: the granularity of sparsity
#
# **What you will learn:** which groups of weights can be removed together (single weights,
# N:M groups, blocks, kernels, channels, inputs), what each choice costs in accuracy at the
# same sparsity, and what it buys in parameters, FLOPs and bytes.
#
# This follows sections 2.3 and 3.1 of the survey: the structure of *model* sparsity, from
# fine-grained to coarse, on LeNet-300-100 and LeNet-5.  The second part,
# [01b](01b_removing_structure.ipynb), removes whole channels, attention heads, layers and
# embedding rows from a small ResNet and a tiny transformer, times the smaller models, and
# ends with a glance at *ephemeral* sparsity, the zeros in the activations that change with
# every input.

# %%
import copy
import dataclasses
import inspect
import itertools
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import patterns, recipes, shrink

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


# %% [markdown]
# ## One trained model, every pattern
#
# A *pattern* says which weights are pruned together.  LeNet-300-100 on MNIST (flat
# images) and the small CNN, LeNet-5, on the same images, each trained with its recipe
# (`recipes.dense`), are pruned in copies with magnitude pruning: a group goes when the L1
# norm of its weights is among the smallest.


# %%
task300, lenet300, info300 = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
task5, lenet5, info5 = recipes.dense("lenet5", "mnist", SEED, epochs=EPOCHS, **DATA)
display(
    Markdown(
        f"Dense test accuracy (seed {SEED}): LeNet-300-100 **{info300['test_accuracy']:.2%}** "
        f"({info300['recipe'].epochs} epoch(s)), LeNet-5 **{info5['test_accuracy']:.2%}** "
        f"({info5['recipe'].epochs} epoch(s))"
        + ("" if EPOCHS is None else ", fewer than their recipes'")
        + f"; {len(task300.bundle.train):,} training images."
        + "".join(f"  Flag: {f}." for f in (info300["flags"], info5["flags"]) if f)
    )
)

# %% [markdown]
# The same 75% of `fc2`'s weights (100 units x 300 inputs), chosen with each pattern, and a
# corner of each mask (dark = kept).  Unstructured pruning scatters zeros; 1:4 keeps one
# weight in every four consecutive inputs; 4x4 blocks leave scattered 4x4 tiles; channels
# remove whole rows (output units) and inputs whole columns.  Kernels exist only in
# convolutions: the last panel is LeNet-5's `conv2` seen as a matrix (16 filters x its
# first 3 of 6 inputs x 5 x 5), where a pruned kernel is a white stretch of 25.

# %%
LENET_PATTERNS = ["unstructured", "nm", "block:4x4", "channel", "input"]


def spec(pattern, sparsity):
    """The pattern to use at ``sparsity``: N:M with M = 4 keeps N = (1 - s) * 4 weights."""
    if pattern != "nm":
        return pattern
    n = (1 - sparsity) * 4
    return f"{round(n)}:4" if abs(n - round(n)) < 1e-9 and round(n) >= 1 else None


def mask_of(model, name, pattern, sparsity):
    """Prune a copy of ``model``'s tensor ``name`` alone and return its mask."""
    pat = patterns.get(pattern)
    m = copy.deepcopy(model)
    target = None if pat.fixed_sparsity is not None else sparsity
    sl.prune(m, "magnitude", target, pattern=pat, targets=[name])
    return sl.masks.get_mask(m, name)


gallery = {
    spec(p, 0.75): mask_of(lenet300, "fc2.weight", spec(p, 0.75), 0.75)[:24, :48]
    for p in LENET_PATTERNS
}
gallery["kernel (LeNet-5 conv2)"] = mask_of(lenet5, "conv2.weight", "kernel", 0.75)[:, :3]
fig = sl.viz.mask_gallery(gallery, ncols=3)
plt.show()

# %% [markdown]
# ## A pattern must fit the layer
#
# Not every pattern fits every layer, and a pattern that does not fit says so rather than
# skipping the layer.  N:M groups run along the inputs, so the input size must be a
# multiple of M; blocks must tile the weight; kernels need a convolution.
# `sl.patterns.misfits` lists the layers a pattern does not fit and why.  This table depends
# only on the shapes, so the notebook checks it.

# %% tags=["nbval-check-output"]
fits = {}
for model_name, model in [("lenet300", lenet300), ("lenet5", lenet5)]:
    for p in ["unstructured", "2:4", "block:4x4", "kernel", "channel", "input"]:
        bad = patterns.misfits(model, p)
        for layer in sl.pruning.default_targets(model):
            fits.setdefault(p, {})[f"{model_name}.{layer}"] = "-" if layer in bad else "fits"
print(pd.DataFrame(fits).to_string())

# %%
reason = patterns.misfits(lenet5, "2:4")["conv2.weight"]
display(Markdown(f"For instance, for LeNet-5's `conv2`: *{reason}*"))

# %% [markdown]
# ## Accuracy at equal sparsity
#
# The protocol, the same for every pattern: start from the trained dense model, prune by
# magnitude with the *uniform* budget (every layer equally sparse), then fine-tune for
# the same number of epochs with the masks fixed.  The classifier (`fc3`) and the layers
# a pattern does not fit stay dense but count in the sparsity: the other layers take
# their share of the zeros, so that the model as a whole reaches the target.  N:M cannot
# do that, since its sparsity is set by N and M: 2:4 is 50%, 1:4 is 75%, and with M = 4,
# N:M cannot reach 90%.  So N:M stays below the target wherever a layer stays dense, the
# classifier included.  Every run checks the sparsity it reached against the target, and
# a run more than a small tolerance short of it is flagged; the table after the figure
# gives the sparsity each pattern reached, and the text below it the tolerance.
# Each seed has its own data split and dense model, so the curves show the change of
# accuracy from each seed's own dense model, as the mean over the seeds with a 95%
# confidence interval (circled in red where a run raised a sanity flag); two patterns
# are compared by their paired per-seed differences.  The y axis fits the unflagged
# points, so that a collapsed run does not squash the others; a mean beyond it is marked
# by a triangle at the edge, with its value.

# %%
CLASSIFIER = "fc3.weight"  # both LeNets end with fc3
CONVS = ["conv1.weight", "conv2.weight"]
SHORT = "target sparsity not reached"  # the flag of a run below its target
level = min(SPARSITIES, key=lambda s: abs(s - 0.75))


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
    sl.prune(
        pruned,
        "magnitude",
        options.pop("sparsity"),
        budget="uniform",
        data=t.loaders()[0],
        seed=t.seed,
        **options,
    )
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
for ax, (model_name, title) in zip(
    axes, [("lenet300", "LeNet-300-100"), ("lenet5", "LeNet-5")], strict=True
):
    part = results[results["model"] == model_name]
    # a change of accuracy lies in [-1, 1]; a t-interval of three seeds can run past it
    sl.experiments.plot_mean_ci(
        part, x="sparsity", y="change", hue="pattern", ax=ax, bounds=(-1.0, 1.0)
    )
    ax.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
    # the axis fits the unflagged points; a collapsed one is marked at its edge
    changes = sl.experiments.flagged_summary(
        part, ["pattern", "sparsity"], "change", bounds=(-1.0, 1.0)
    )
    sl.experiments.fit_y(
        ax,
        changes,
        ~changes["flagged"],
        x="sparsity",
        name="pattern",
        bounds=(-1.0, 1.0),
        fmt="{:+.2f}".format,
    )
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
display(Markdown("Sparsity reached, mean over the seeds (every weight layer counted):"))
display(reached.round(3))
short = results[results["flags"].str.contains(SHORT, regex=False)]
short_groups = short.groupby(["model", "pattern", "sparsity"])["measured_sparsity"].mean()
# the tolerance of the flag: sl.flags.check's default, which the runs use
tolerance = inspect.signature(sl.flags.check).parameters["sparsity_tolerance"].default
nm300 = reached.loc["lenet300", "nm"].dropna()
# below the target at the precision shown
nm300_below = nm300[nm300.round(3) < nm300.index.to_numpy()]
if len(nm300_below):
    nm_words = (
        "N:M stays below the target wherever a layer stays dense (the classifier too: "
        "lenet300 reaches "
        + " and ".join(f"{r:.1%} at {s:.0%}" for s, r in nm300_below.items())
        + ").  "
    )
elif len(nm300):
    nm_words = "N:M reaches the target on lenet300.  "
else:
    nm_words = ""
display(
    Markdown(
        nm_words
        + f"A run more than {tolerance:g} short of its target (the table's units) is flagged.  "
        + (
            "No run is that far short."
            if short.empty
            else "Short of the target: "
            + "; ".join(f"{p} on {m}, {r:.1%} at {s:.0%}" for (m, p, s), r in short_groups.items())
            + f".  These {len(short)} runs are flagged, and the comparisons below leave them "
            "out."
        )
    )
)

at_level = results[results["sparsity"] == level]
flops = at_level.groupby(["model", "pattern"], sort=False)["finetune_flops"].mean()
pieces = []
for model_name, per_pattern in flops.groupby(level="model", sort=False):
    per_pattern = per_pattern.droplevel("model")
    cheap, dear = per_pattern.idxmin(), per_pattern.idxmax()
    pieces.append(
        f"{model_name} from {per_pattern[cheap]:.3g} ({cheap}) to {per_pattern[dear]:.3g} ({dear})"
    )
dear5 = flops.loc["lenet5"].idxmax()
dense5 = set(CONVS) & set(patterns.misfits(lenet5, spec(dear5, level) or dear5))
display(
    Markdown(
        f"Every run fine-tunes {FINETUNE_EPOCHS} epoch(s) on {len(task300.bundle.train):,} "
        "images with the masks fixed.  Counted as three forward passes per example over the "
        f"kept weights, that costs at {level:.0%} (mean over the seeds) "
        + "; ".join(pieces)
        + " FLOPs.  "
        + (
            f"On LeNet-5, {dear5} does not fit the convolutions, which stay dense: it keeps "
            f"{1 - reached.loc[('lenet5', level), dear5]:.1%} of the weights instead of "
            f"{1 - level:.0%}, and a convolution weight is used at every position of the "
            "image, a fully connected one once per example."
            if dense5
            else "The patterns keep different weights, and a convolution weight is used at "
            "every position of the image, a fully connected one once per example."
        )
    )
)

# %%
summary = sl.stats.summarize(results, ["model", "pattern", "sparsity"], "test_accuracy")
table = summary.pivot_table(index=["model", "sparsity"], columns="pattern", values="mean")
ORDER = ["unstructured", "nm", "block:4x4", "channel"]
CLEAR = ("better", "worse")


def step_pairs(finer, coarser, data):
    """Paired ``finer - coarser`` test accuracies per (model, sparsity)."""
    return sl.stats.paired(
        data, "pattern", finer, coarser, metric="test_accuracy", by=["model", "sparsity"]
    ).assign(pair=f"{finer} - {coarser}")


parts = []
for _, part in results.groupby(["model", "sparsity"]):
    # N:M takes part where N = (1 - s) * 4 is whole and the model reached the target with it
    nm_runs = part[part["pattern"] == "nm"]
    nm_in = len(nm_runs) > 0 and not nm_runs["flags"].str.contains(SHORT, regex=False).any()
    chain = [p for p in ORDER if p != "nm" or nm_in]
    parts += [step_pairs(a, b, part) for a, b in itertools.pairwise(chain)]
steps = pd.concat(parts, ignore_index=True)
counted = steps[steps["flagged"] == ""]
verdict_counts = counted["verdict"].value_counts()


def count_words():
    """What the steps without a flagged run found, and how many steps were left out."""
    left_out = len(steps) - len(counted)
    if counted.empty:
        return f"all {len(steps)} steps have a flagged run, so none is counted"
    return (
        f"of the {len(counted)} steps without a flagged run, the finer pattern is "
        + ", ".join(f"{verdict_counts.get(v, 0)} {v}" for v in verdict_counts.index)
        + (
            f"; {left_out} of the {len(steps)} steps "
            + ("has a flagged run and is" if left_out == 1 else "have a flagged run and are")
            + " left out"
            if left_out
            else ""
        )
    )


row = table.loc[("lenet300", level)].dropna().sort_values(ascending=False)
at300 = results[(results["model"] == "lenet300") & (results["sparsity"] == level)]
neighbours = [
    (a, b, sl.stats.paired(at300, "pattern", a, b, metric="test_accuracy").iloc[0])
    for a, b in itertools.pairwise(row.index)
]
clear = [(a, b, r) for a, b, r in neighbours if r.verdict in CLEAR]
# where no neighbours differ, the pairs further apart may still do
others = [
    (a, b, sl.stats.paired(at300, "pattern", a, b, metric="test_accuracy").iloc[0])
    for i, a in enumerate(row.index)
    for b in row.index[i + 2 :]
]
far = [(a, b, r) for a, b, r in others if r.verdict in CLEAR]
if clear:
    order_words = (
        f"{len(clear)} of the {len(neighbours)} neighbouring pairs differ clearly: "
        + "; ".join(f"{a} - {b} {sl.stats.describe(r)}" for a, b, r in clear)
        + "."
    )
elif far:
    order_words = (
        f"no two neighbours in this list differ clearly (of {len(neighbours)} pairs), "
        + (
            "although the pair further apart does: "
            if len(others) == 1
            else f"although {len(far)} of the {len(others)} pairs further apart "
            + ("do: " if len(far) > 1 else "does: ")
        )
        + "; ".join(f"{a} - {b} is {sl.stats.describe(r)}" for a, b, r in far)
        + ".  The order is only partly settled."
    )
else:
    order_words = (
        f"no two patterns in this list differ clearly (of {len(neighbours) + len(others)} "
        "pairs), so the list is no ranking."
    )
display(
    Markdown(
        f"LeNet-300-100's mean test accuracies at {level:.0%} sparsity, highest first: "
        + ", ".join(f"{p} {a:.1%}" for p, a in row.items())
        + ".  Paired per seed, "
        + order_words
        + "  The expected order is unstructured >= N:M >= block >= channel: a finer "
        "granularity leaves magnitude pruning more freedom to keep the important weights.  "
        "Each step of that order, paired per seed, at every (model, sparsity) point, N:M "
        "left out where it misses the target: "
        + count_words()
        + " (table below: finer minus coarser, in points)."
    )
)
with pd.option_context("display.max_rows", None, "display.max_colwidth", None):
    display(
        steps.assign(
            difference=[sl.stats.describe(r) for _, r in steps.iterrows()],
            counted=np.where(steps["flagged"] == "", "yes", "no: flagged run"),
        )[["model", "sparsity", "pair", "difference", "counted"]].set_index(
            ["model", "sparsity", "pair"]
        )
    )

# %% [markdown]
# Kernels only exist in convolutions, so the kernel pattern cannot make a whole LeNet-5
# sparse: the convolutions hold only a small part of its weights.  Comparing granularities
# on the convolutions alone, as Mao et al. (2017) did, with the fully connected layers
# left dense:

# %%
lenet5_sizes = {n: sl.masks.weight(lenet5, n).numel() for n in sl.pruning.default_targets(lenet5)}
conv_share = sum(lenet5_sizes[n] for n in CONVS) / sum(lenet5_sizes.values())
display(
    Markdown(
        f"LeNet-5's convolutions hold {sum(lenet5_sizes[n] for n in CONVS):,} of its "
        f"{sum(lenet5_sizes.values()):,} prunable weights ({conv_share:.1%})."
    )
)


def conv_run(pattern, sparsity, seed):
    t, pruned, _ = recipes.dense("lenet5", "mnist", seed, epochs=EPOCHS, **DATA)
    return recipes.prune_and_finetune(
        pruned,
        t,
        "magnitude",
        sparsity,
        pattern=pattern,
        targets=CONVS,
        budget="uniform",
        finetune_epochs=FINETUNE_EPOCHS,
        progress=False,
    )


conv_results = sl.experiments.sweep(
    conv_run,
    {"pattern": ["unstructured", "kernel", "channel"], "sparsity": SPARSITIES},
    seeds=SEEDS,
    progress=False,
)
ax = sl.experiments.plot_mean_ci(conv_results, x="sparsity", y="test_accuracy", hue="pattern")
# the axis fits the unflagged points; a point pulled down by a collapsed run is marked at its edge
conv_means = sl.experiments.flagged_summary(conv_results, ["pattern", "sparsity"], "test_accuracy")
sl.experiments.fit_y(ax, conv_means, ~conv_means["flagged"], x="sparsity", name="pattern")
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
filters_left = {
    key: conv1_filters_left(*key)
    for key in dict.fromkeys(zip(coarse_runs["pattern"], coarse_runs["sparsity"], strict=True))
}
coarse_runs["conv1 left"] = [
    filters_left[key] for key in zip(coarse_runs["pattern"], coarse_runs["sparsity"], strict=True)
]
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
display(
    Markdown(
        (
            f"{len(collapsed)} of the {len(conv_results)} runs (at {levels} sparsity)"
            if levels
            else f"None of the {len(conv_results)} runs"
        )
        + f" fell below {COLLAPSE:.0%} test accuracy; the worst run per pattern: "
        + ", ".join(f"{p} {a:.1%}" for p, a in worst.items())
        + ".  `conv1` has only six filters (six kernels: one input channel), and the uniform "
        f"budget leaves {fewest} of them to the kernel and channel patterns at "
        + " and ".join(f"{s:.0%}" for s in sorted(set(thin["sparsity"])))
        + f".  Of those {len(thin)} runs, "
        + (
            f"{len(thin_down)} fell below {COLLAPSE:.0%} ("
            + "; ".join(
                f"{r.pattern} at {r.sparsity:.0%}, seed {r.seed}: {r.test_accuracy:.1%}"
                + (f", flagged {flag_kinds(r.flags)}" if r.flags else "")
                for r in thin_down.itertuples()
            )
            + ")"
            if len(thin_down)
            else "none fell below " + f"{COLLAPSE:.0%}"
        )
        + (
            f"{' and the others' if len(thin_down) else ': they'} kept "
            f"{thin_up['test_accuracy'].min():.1%} to {thin_up['test_accuracy'].max():.1%}"
            if len(thin_up)
            else ""
        )
        + f".  Each run was fine-tuned {FINETUNE_EPOCHS} epoch(s) "
        f"({conv_results['finetune_flops'].min():.3g} to "
        f"{conv_results['finetune_flops'].max():.3g} FLOPs).  Unstructured minus the coarser "
        f"patterns, paired per seed: "
        + "; ".join(
            f"{coarse} at {s:.0%}: {sl.stats.describe(r)}"
            for coarse, pairs in conv_pairs.items()
            for s, r in pairs.iterrows()
        )
        + "."
    )
)

# %% [markdown]
# ## What each pattern buys: parameters, FLOPs and bytes
#
# A zero saves something only if the storage and the computation skip it, and each
# pattern has its own *natural storage* (`sl.accounting.storage_bytes`): unstructured
# sparsity needs an index per nonzero (CSR: values, column indices and row pointers), N:M
# needs only a few bits per kept value (2 bits for 2:4 on NVIDIA's sparse tensor cores),
# blocks need one index per block (BSR), and channels and inputs need nothing at all: the
# layer just becomes smaller (`shrink`).  LeNet-300-100 at 75%, 4-byte values and indices.
# Parameters count every stored entry of the weight tensors, zeros included.  FLOPs count
# the nonzeros of a masked model, which a sparse kernel can skip, and every parameter of a
# shrunk one, which is dense:

# %%
FLOPS = "FLOPs (masked: nonzeros; shrunk: parameters)"


def cost_row(model_name, pattern, row, flops, dense_bytes):
    """One row of the table from the totals of ``sl.report``, FLOPs from column ``flops``."""
    return {
        "model": model_name,
        "pattern": pattern,
        "parameters": int(row.parameters),
        "nonzeros": int(row.nonzeros),
        FLOPS: int(row[flops]),
        "bytes": int(row.bytes),
        "bytes / dense": row.bytes / dense_bytes,
    }


costs = []
shrunk = {}  # the shrunk models, by pattern
for p in LENET_PATTERNS:
    chosen = spec(p, 0.75)
    m = copy.deepcopy(lenet300)
    options = prune_options(m, chosen, 0.75)
    sl.prune(m, "magnitude", options.pop("sparsity"), budget="uniform", **options)
    total = sl.report(m, pattern=chosen).set_index("name").loc["total"]
    costs.append(cost_row("LeNet-300-100", chosen, total, "sparse_flops", total.dense_bytes))
    if p in ("channel", "input"):
        shrunk[chosen] = shrink.shrink(m)
        after = sl.report(shrunk[chosen]).set_index("name").loc["total"]
        label = f"{chosen}, after shrink"
        costs.append(cost_row("LeNet-300-100", label, after, "dense_flops", total.dense_bytes))
# Kernels exist only in convolutions: LeNet-5's two convolutions at 75%, beside the
# single-weight and channel patterns on the same tensors.
for chosen in ["unstructured", "kernel", "channel"]:
    m = copy.deepcopy(lenet5)
    sl.prune(m, "magnitude", 0.75, pattern=chosen, targets=CONVS, budget="uniform")
    total = sl.report(m, names=CONVS, pattern=chosen).set_index("name").loc["total"]
    costs.append(cost_row("LeNet-5 convolutions", chosen, total, "sparse_flops", total.dense_bytes))
costs = pd.DataFrame(costs).set_index(["model", "pattern"])
costs.round(3)

# %% [markdown]
# Three lessons, with the figures of the table.  Unstructured sparsity pays for its
# freedom with an index per weight; structured patterns store mostly values.  And removal
# is coupled: output units that go take the matching inputs of the next layer with them
# (`fc2` loses rows *and* columns), while inputs of the first layer are pixels of the
# image, which shrink cannot remove (the model's input is fixed): their zeros stay.
# Pruning the inputs of `fc2` leaves units of `fc1` that nobody reads, and those can go.

# %%
ratio = costs["bytes / dense"]
lenet = costs.loc["LeNet-300-100"]
structured = ["1:4", "block:4x4"]
# the zeros the shrunk input-pruned model stores: fc1 keeps every pixel column
input_layers = sl.report(shrunk["input"]).set_index("name").drop("total")
input_zeros = int((input_layers["parameters"] - input_layers["nonzeros"]).sum())
fc1_inputs = sl.masks.weight(shrunk["input"], "fc1.weight")
empty_columns = int((fc1_inputs == 0).all(0).sum())
column_zeros = empty_columns * fc1_inputs.shape[0]
share_before = lenet.loc["input", "bytes / dense"]
share_after = lenet.loc["input, after shrink", "bytes / dense"]
display(
    Markdown(
        "- At 75% sparsity, unstructured storage (CSR) takes "
        f"{lenet.loc['unstructured', 'bytes / dense']:.0%} of the dense bytes, against the "
        f"{1 - 0.75:.0%} that the kept values alone would take; "
        + ", ".join(f"{p} takes {lenet.loc[p, 'bytes / dense']:.0%}" for p in structured)
        + ".\n"
        f"- Channels: {lenet.loc['channel', 'nonzeros']:,} nonzeros masked, "
        f"{lenet.loc['channel, after shrink', 'parameters']:,} parameters after shrink "
        + (
            "(fewer: the coupled inputs of the next layer went too)"
            if lenet.loc["channel, after shrink", "parameters"] < lenet.loc["channel", "nonzeros"]
            else "(no fewer)"
        )
        + ".\n"
        f"- Inputs: {lenet.loc['input', 'nonzeros']:,} nonzeros masked, "
        f"{lenet.loc['input, after shrink', 'nonzeros']:,} after shrink "
        + (
            "(fewer: units of the previous layer that nobody reads went)"
            if lenet.loc["input, after shrink", "nonzeros"] < lenet.loc["input", "nonzeros"]
            else "(no fewer)"
        )
        + f"; the shrunk model takes {share_after:.0%} of the dense bytes"
        + (
            ", the same share as before shrinking: it stores "
            f"{lenet.loc['input, after shrink', 'parameters']:,} parameters, {input_zeros:,} "
            "of them zeros, "
            + ("all" if column_zeros == input_zeros else f"{column_zeros:,}")
            + f" in the {empty_columns} pruned pixel columns of `fc1`, which the masked "
            "storage skipped"
            if f"{share_after:.0%}" == f"{share_before:.0%}"
            else f", against {share_before:.0%} before shrinking"
        )
        + ".\n"
        f"- On LeNet-5's convolutions, kernels take "
        f"{ratio.loc[('LeNet-5 convolutions', 'kernel')]:.0%} of the dense bytes and single "
        f"weights {ratio.loc[('LeNet-5 convolutions', 'unstructured')]:.0%}."
    )
)

# %% [markdown]
# ## Explore: pattern and sparsity
#
# Pick a pattern and a sparsity for LeNet-300-100's `fc2` (no fine-tuning): the picture
# shows a corner of the mask, the title the validation accuracy.  In the book this cell
# draws every pattern at every sparsity offered, one row per sparsity.


# %%
val300 = task300.loaders()[1]


def draw(ax, pattern, sparsity):
    chosen = spec(pattern, sparsity)
    if chosen is None:
        ax.text(0.5, 0.5, f"N:M with M = 4\ncannot reach {sparsity:.0%}", ha="center")
        ax.axis("off")
        return
    m = copy.deepcopy(lenet300)
    pat = patterns.get(chosen)
    sl.prune(
        m,
        "magnitude",
        None if pat.fixed_sparsity else sparsity,
        pattern=pat,
        targets=["fc2.weight"],
    )
    acc = sl.train.evaluate(m, val300)["accuracy"]
    ax.imshow(sl.masks.get_mask(m, "fc2.weight")[:24, :48], cmap="Greys", vmin=0, vmax=1)
    ax.set_title(f"accuracy {acc:.1%}", fontsize=9)
    ax.axis("off")


sl.nb.explore(
    draw, pattern=["unstructured", "nm", "input", "channel", "block:4x4"], sparsity=[0.75, 0.5, 0.9]
)

# %% [markdown]
# ## Against the literature
#
# Mao et al. (2017) found, at equal sparsity, that fine-grained sparsity keeps more
# accuracy than coarse: `sl.claims` judges unstructured against channel pruning from the
# paired test accuracies above, at every sparsity measured, on the whole LeNets (uniform
# budget, classifier dense) and on LeNet-5's convolutions alone (the layers of the
# paper's CNNs).  The text words the verdicts at the highest sparsity; the table lists all.


# %%
def arm_runs(data, sparsity, model_name=None):
    """The unstructured and channel runs at ``sparsity`` (of ``model_name``), by seed."""
    part = data[data["sparsity"] == sparsity]
    if model_name is not None:
        part = part[part["model"] == model_name]
    return {p: part[part["pattern"] == p].set_index("seed") for p in ("unstructured", "channel")}


def measured(data, sparsity, model_name=None):
    """The mean accuracies behind a verdict."""
    arms = arm_runs(data, sparsity, model_name)
    return (
        f"At {sparsity:.0%} unstructured keeps {arms['unstructured']['test_accuracy'].mean():.1%} "
        f"and channel {arms['channel']['test_accuracy'].mean():.1%} test accuracy (mean over "
        "the seeds)."
    )


def why_not(data, sparsity, model_name=None):
    """Why the interval does not settle the claim, from the runs: the per-seed differences,
    the flagged runs of each seed and the sparsity each arm reached."""
    arms = arm_runs(data, sparsity, model_name)
    diffs = (arms["unstructured"]["test_accuracy"] - arms["channel"]["test_accuracy"]).dropna()
    above, below = int((diffs > 0).sum()), int((diffs < 0).sum())
    signs = ", ".join(
        f"{k} {word}"
        for k, word in [
            (above, "positive"),
            (len(diffs) - above - below, "zero"),
            (below, "negative"),
        ]
        if k
    )
    text = "The per-seed differences, in points: " + ", ".join(
        f"seed {seed} {100 * d:+.1f}" for seed, d in diffs.items()
    )
    if diffs.std() <= 1e-9:
        text += ": all equal, so there is no spread to build an interval from."
    elif below == 0:
        text += (
            f" ({signs}): with {len(diffs)} seeds, a spread this large (standard deviation "
            f"{100 * diffs.std():.1f} points) gives an interval that reaches below 0."
        )
    elif above == 0:
        text += f" ({signs}): channel kept at least as much accuracy in every seed."
    else:
        text += f" ({signs}): the seeds disagree."
    for p, a in arms.items():
        kinds = {seed: flag_kinds(f) for seed, f in a["flags"].items() if f}
        if kinds and not (len(kinds) == len(a) and len(set(kinds.values())) == 1):
            # flags that differ between seeds say which seed failed; the same flags in
            # every seed are in the sanity flags above
            text += (
                f"  `{p}` is flagged in "
                + ", ".join(f"seed {seed} ({k})" for seed, k in kinds.items())
                + "."
            )
        if a["flags"].str.contains(SHORT, regex=False).any():
            text += (
                f"  `{p}` reached only {a['measured_sparsity'].mean():.1%} sparsity against "
                f"the {sparsity:.0%} target, so the two arms are not at equal sparsity."
            )
    return text


def on_flagged(verdict, data, sparsity, model_name=None):
    """``verdict`` with its status saying so when it rests on flagged runs, as the steps
    above leave a flagged run out: "reproduced, on flagged runs (at chance level)"."""
    if not verdict.flagged:
        return verdict
    arms = arm_runs(data, sparsity, model_name)
    kinds = ", ".join(
        dict.fromkeys(
            kind
            for a in arms.values()
            for text in a["flags"]
            for kind in flag_kinds(text).split(", ")
            if kind
        )
    )
    return dataclasses.replace(verdict, status=f"{verdict.status}, on flagged runs ({kinds})")


whole = sl.stats.paired(
    results, "pattern", "unstructured", "channel", metric="test_accuracy", by=["model", "sparsity"]
)
verdicts = [
    on_flagged(
        sl.claims.judge(
            "unstructured_beats_channel",
            r,
            setting=f"{r.model}, whole model at {r.sparsity:.0%}, uniform, fine-tuned, test",
            measured=measured(results, r.sparsity, r.model),
            reason=why_not(results, r.sparsity, r.model),
        ),
        results,
        r.sparsity,
        r.model,
    )
    for _, r in whole.iterrows()
] + [
    on_flagged(
        sl.claims.judge(
            "unstructured_beats_channel",
            r,
            setting=f"lenet5, convolutions only at {s:.0%}, uniform, fine-tuned, test",
            measured=measured(conv_results, s),
            reason=why_not(conv_results, s),
        ),
        conv_results,
        s,
    )
    for s, r in conv_pairs["channel"].iterrows()
]
with pd.option_context("display.max_rows", None, "display.max_colwidth", None):
    display(sl.claims.table(verdicts).drop(columns=["claim", "paper"]))
display(Markdown(sl.claims.report([v for v in verdicts if f"at {top:.0%}" in v.setting])))

# %% [markdown]
# ## Summary
#
# - A pattern decides which weights go together: single weights, N:M groups, blocks,
#   kernels, channels, inputs (and, in [01b](01b_removing_structure.ipynb), heads, layers,
#   embedding rows).  A structured pattern fits some layers only, and says so when it does
#   not.
# - What a pattern buys depends on its storage and kernels: unstructured pays an index per
#   weight, N:M a few bits, blocks an index per block, and channels and inputs nothing at
#   all once `shrink` removes them, giving a smaller dense model, except the model's own
#   inputs, whose zeros stay.
#
# What the runs above measured:

# %%
finest = steps[steps["pair"].str.startswith("unstructured")]
lines = [
    f"- Each step of the order unstructured >= N:M >= block >= channel, paired per seed "
    f"over {len(SEEDS)} seed(s), N:M left out where it misses the target: "
    + count_words()
    + ".  Unstructured against the next pattern: "
    + "; ".join(
        f"{r.model} at {r.sparsity:.0%} {r.pair.split(' - ')[1]} {sl.stats.describe(r)}"
        for _, r in finest.iterrows()
    )
    + "."
]
lines += [
    f"- Unstructured against channel ({v.setting}): **{v.status}**, {v.numbers()}"
    + (f"; {v.flagged}" if v.flagged else "")
    + "."
    for v in verdicts
    if f"at {top:.0%}" in v.setting
]
lines.append(
    f"- Unstructured storage at 75%: {lenet.loc['unstructured', 'bytes / dense']:.0%} of the "
    f"dense bytes; 1:4: {lenet.loc['1:4', 'bytes / dense']:.0%}."
)
display(Markdown("\n".join(lines)))

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

# %% [markdown]
# **3.** With `sl.accounting.storage_bytes`, find the sparsity below which unstructured
# CSR storage of LeNet-300-100's `fc2` weight (100 x 300) takes *more* bytes than the
# dense tensor (4-byte values and indices).  Three decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_3(answer, solution=False):
    shape = tuple(sl.masks.weight(lenet300, "fc2.weight").shape)
    numel = math.prod(shape)

    def csr_costs_more(nonzeros):
        w = torch.zeros(numel)
        w[:nonzeros] = 1.0
        w = w.reshape(shape)
        return sl.accounting.storage_bytes(w, "unstructured") > sl.accounting.storage_bytes(w)

    low, high = 0, numel - 1  # the fewest nonzeros at which CSR costs more, by bisection
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if csr_costs_more(mid) else (mid + 1, high)
    hint = "Count the bytes of a tensor with k nonzeros for several k, CSR against dense."
    sl.nb.check(3, answer, 1 - (low - 0.5) / numel, hint=hint, tolerance=0.0005, solution=solution)


# %%
answer_3 = None  # a sparsity, e.g. 0.123
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  CSR stores, for nnz nonzeros of an r x c matrix, nnz values, nnz column
# indices and r + 1 row pointers: 4 (2 nnz + r + 1) bytes, against 4 r c dense.  It takes
# more when nnz > (r c - r - 1) / 2, that is below the sparsity 1/2 + (r + 1) / (2 r c):
# each kept value costs twice its bytes, so CSR only pays off past 50% sparsity, a little
# further for the row pointers.
r, c = 100, 300
solution_3 = round(0.5 + (r + 1) / (2 * r * c), 3)
print(f"CSR takes more bytes than dense below {solution_3:.3f} sparsity")
check_3(solution_3, solution=True)

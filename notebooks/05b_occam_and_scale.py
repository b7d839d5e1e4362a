# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: sparsity_lab
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   sparsity_lab:
#     runs_alone: true
# ---

# %% [markdown]
# # Occam's hill, and large-sparse against small-dense
#
# **What you will learn:** when pruning makes a network *better* than its dense self (the
# hill), where the accuracy plateau ends and the cliff begins, and whether a large sparse
# network beats a small dense one of the same cost, counted in nonzeros and in FLOPs.
#
# This follows section 2.1 of the survey (Occam's hill, the regions A, B and C of the
# accuracy-sparsity curve) and Zhu & Gupta (2018).  The analyses live in
# `sparsity_lab.phenomena.occam` and `sparsity_lab.phenomena.scale`.

# %%

import copy

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.phenomena import occam, scale

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
DATA = "mnist"
N_TRAIN = 1000
NOISES = [0.0, 0.4]
SPARSITIES = [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
EPOCHS = None  # None: the recipe's epochs for every dense model
FINETUNE_EPOCHS = 5
SCALE_SPARSITIES = [0.8, 0.95]  # 80%: nearest the paper's 75%
SCALE_EPOCHS = None  # None: the recipe's epochs for the three CNNs
MNIST1D_OPTIONS = {}  # the default data: the recipe's expected accuracy is checked

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    DATA = "digits"
    SPARSITIES = [0.5, 0.9, 0.98]
    EPOCHS = 8
    FINETUNE_EPOCHS = 2
    SCALE_SPARSITIES = [0.9]
    SCALE_EPOCHS = 10
    MNIST1D_OPTIONS = {"num_samples": 1000}
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
verdicts = []  # the verdicts against the literature, for the summary


# %% [markdown]
# ## Occam's hill
#
# The hill needs a dense model that overfits.  LeNet-300-100 learns from a small training set of the
# MNIST subset (`N_TRAIN` images; the number is printed in the verdicts below; the whole training
# split of the 8x8 digits in the smoke run), once with clean labels and once with a share of its
# training labels replaced by a wrong class (`occam.with_label_noise`; validation and test labels
# stay clean).  The dense model is the recipe's (`recipes.train_dense` on the noisy task); copies
# are pruned by global magnitude to each sparsity and fine-tuned on the same (noisy) labels with the
# mask fixed (`recipes.finetune`).
#
# `occam.occam_regions` labels a curve against a tolerance around the dense accuracy; a
# hand-made curve, 90% dense accuracy and a tolerance of 1 point:

# %% tags=["nbval-check-output"]
print(occam.occam_regions([0.5, 0.7, 0.8, 0.9, 0.95], [0.92, 0.95, 0.905, 0.85, 0.5], 0.90, 0.01))

# %% [markdown]
# Here each pruned model is compared with the dense model *of its own seed* (same split, same noisy
# labels, same initialisation): the regions come from the paired differences pruned minus dense,
# **A** where the interval lies above 0, **B** where it covers 0, **C** where it lies below (`?`
# with a single seed).  Pairing removes the spread the two arms share; a tolerance taken from the
# spread of unpaired seeds keeps it.  The table gives the half-width of both intervals
# (`paired_half`, `unpaired_half`), and the line under it compares them.  With a few seeds a hill of
# a fraction of a point can hide inside either: a B region means "no clear difference", not "no
# hill".

# %%
rows = []
for noise in NOISES:
    for seed in SEEDS:
        options = {"n_train": N_TRAIN} if DATA == "mnist" else {}
        t = recipes.task("lenet300", DATA, seed=seed, **options)
        curve = occam.occam_curve(
            t, SPARSITIES, noise=noise, epochs=EPOCHS, finetune_epochs=FINETUNE_EPOCHS
        )
        rows.append(curve.assign(noise=noise, seed=seed))
curves = pd.concat(rows, ignore_index=True)
n_train = len(t.bundle.train)
dense_rows = curves[curves["sparsity"] == 0]
pruned_rows = curves[curves["sparsity"] > 0]
both = pd.concat(
    [
        pruned_rows.assign(arm="pruned"),
        dense_rows.drop(columns="sparsity")
        .merge(pruned_rows[["noise", "seed", "sparsity"]], on=["noise", "seed"])
        .assign(arm="dense"),
    ],
    ignore_index=True,
)
gain = {
    split: sl.stats.paired(
        both, "arm", "pruned", "dense", metric=f"{split}_accuracy", by=["noise", "sparsity"]
    )
    for split in ("val", "test")
}
gain["test"]["region"] = occam.paired_regions(gain["test"]["verdict"])
# the unpaired interval of the same difference: the seed spreads of the two arms combined (a
# t-interval of the difference of two independent means, n - 1 degrees of freedom)
arm_summary = {
    arm: sl.stats.summarize(
        both[both["arm"] == arm], ["noise", "sparsity"], "test_accuracy", bounds=None
    ).set_index(["noise", "sparsity"])
    for arm in ("pruned", "dense")
}
unpaired_half = np.hypot(
    *(summary["ci_high"] - summary["mean"] for summary in arm_summary.values())
).rename("unpaired_half")
# the paired half-width without the clipping to [-1, 1], like the unpaired one
gain["test"]["paired_half"] = [
    sl.stats.t_half_width(std, n)
    for std, n in zip(gain["test"]["std"], gain["test"]["n"], strict=True)
]
gain["test"] = gain["test"].join(unpaired_half, on=["noise", "sparsity"])

fig, axes = plt.subplots(1, len(NOISES), figsize=(5 * len(NOISES), 3.5), sharey=True)
marks = {"A": "C2", "B": "C0", "C": "C3", "?": "0.5"}
for ax, noise in zip(np.atleast_1d(axes), NOISES, strict=True):
    part = gain["test"][gain["test"]["noise"] == noise]
    mean = 100 * part["mean_diff"]
    half = 100 * (part["ci_high"] - part["mean_diff"]).fillna(0)
    ax.errorbar(part["sparsity"], mean, yerr=half, color="0.4", capsize=3)
    for s, m, lab in zip(part["sparsity"], mean, part["region"], strict=True):
        ax.scatter(s, m, color=marks[lab], zorder=3, s=40)
        ax.annotate(lab, (s, m), textcoords="offset points", xytext=(0, 6), ha="center")
    ax.axhline(0, color="k", ls="--")
    sl.viz.logit_sparsity_axis(ax, ticks=part["sparsity"].unique())
    ax.set_xlabel("sparsity")
    ax.set_title(f"label noise {noise:.0%}")
np.atleast_1d(axes)[0].set_ylabel("pruned minus dense (points)")
fig.suptitle("Paired test-accuracy change; A above 0, B covers 0, C below")
fig.tight_layout()
plt.show()
display(gain["test"].round(4))
halves = 100 * gain["test"][["paired_half", "unpaired_half"]].dropna()
if len(halves):
    wider = int((halves["unpaired_half"] > halves["paired_half"]).sum())
    display(
        Markdown(
            f"Half-width of the interval of pruned minus dense on test, over the {len(halves)} "
            f"settings: paired {halves['paired_half'].min():.1f} to "
            f"{halves['paired_half'].max():.1f} points (median "
            f"{halves['paired_half'].median():.1f}), unpaired "
            f"{halves['unpaired_half'].min():.1f} to {halves['unpaired_half'].max():.1f} "
            f"points (median {halves['unpaired_half'].median():.1f}); the unpaired interval is "
            f"the wider in {wider} of {len(halves)}."
        )
    )
flagged = sl.flags.table(curves, ["noise", "sparsity"])
sl.nb.show_flags(flagged)

# %%
lines, occam_verdicts, picked = [], [], {}
for noise in NOISES:
    val = gain["val"][gain["val"]["noise"] == noise]
    test = gain["test"][gain["test"]["noise"] == noise].set_index("sparsity")
    # the claim is about moderate pruning: the best sparsity up to 90%, chosen on validation
    moderate = val[val["sparsity"] <= 0.9]
    best = float(moderate.loc[moderate["mean_diff"].idxmax(), "sparsity"])
    picked[noise] = (best, test.loc[best])
    extreme = test[(test.index > 0.9) & (test["region"] == "A")]
    dense = dense_rows[dense_rows["noise"] == noise]
    at_best = pruned_rows[(pruned_rows["noise"] == noise) & (pruned_rows["sparsity"] == best)]
    below = test.index[test["region"] == "C"]
    region_c = f"region C from {below.min():.0%}" if len(below) else "no region C"
    hills = [f"{s:.0%}" for s in test.index[test["region"] == "A"]]
    region_a = f"region A at {', '.join(hills)}" if hills else "no region A"
    lines.append(
        f"- label noise {noise:.0%}: dense {dense['test_accuracy'].mean():.2%} test accuracy, "
        f"fitting {dense['train_accuracy'].mean():.0%} of its training labels; {region_a}; "
        f"{region_c}.  Best moderate sparsity (up to 90%) on validation {best:.0%}: pruned "
        f"minus dense {sl.stats.describe(test.loc[best])} on test."
        + (
            f"  Beyond 90% pruning gains at {', '.join(f'{s:.0%}' for s in extreme.index)}: "
            f"{'; '.join(sl.stats.describe(r) for _, r in extreme.iterrows())}, a regime "
            "the claim does not cover (heavy pruning of a net fitting noisy labels)."
            if len(extreme)
            else ""
        )
    )
    occam_verdicts.append(
        sl.claims.judge(
            "occam_hill",
            test.loc[best],
            setting=(
                f"LeNet-300-100, {n_train} training images, {noise:.0%} label noise, "
                f"{best:.0%} sparse (the best moderate sparsity on validation)"
            ),
            reason=(
                f"The dense model fits {dense['train_accuracy'].mean():.0%} of its "
                f"training labels and reaches {dense['test_accuracy'].mean():.1%} on test; "
                f"pruning keeps {1 - best:.0%} of its weights and fine-tunes "
                f"{int(at_best['finetune_epochs'].iloc[0])} epochs "
                f"({at_best['finetune_flops'].mean():.2g} FLOPs) on the same labels."
            ),
        )
    )
verdicts.extend(occam_verdicts)
display(Markdown("\n".join(lines)))

# %% [markdown]
# **Against the literature.**  The survey draws the hill as a general shape; it is a
# regularisation effect, so it should be largest where the dense model fits noise.  The
# verdicts, one per label-noise level, at the sparsity chosen on validation:

# %%
display(Markdown(sl.claims.report(occam_verdicts)))
at_pick = "; ".join(
    f"{noise:.0%} label noise ({best:.0%} sparse): {sl.stats.describe(row)}"
    for noise, (best, row) in picked.items()
)
text = f"Pruned minus dense at the sparsity picked on validation, by label noise: {at_pick}"
if len(picked) > 1:
    top = max(picked, key=lambda noise: picked[noise][1]["mean_diff"])
    most = max(picked)
    text += f"; the mean change is highest with {top:.0%} label noise" + (
        ", the most noise here" if top == most else f", not with the most ({most:.0%})"
    )
clear = gain["test"][gain["test"]["region"] == "A"]
if len(clear):
    places = [
        f"{s:.0%} sparse with {n:.0%} label noise"
        for n, s in zip(clear["noise"], clear["sparsity"], strict=True)
    ]
    text += f".  A clear gain (region A) appears at {', '.join(places)}."
else:
    text += ".  No sparsity gives a clear gain (region A) at any noise level."
display(Markdown(text))

# %% [markdown]
# ## Large-sparse against small-dense
#
# The 1-D CNN (three convolutions of 32 channels) trains on MNIST-1D with gradual magnitude pruning
# to each sparsity (uniform budget, as Zhu & Gupta).  Two dense CNNs of fewer channels train from
# scratch: one with about as many nonzero weights as the sparse one, one with about as many FLOPs
# (the nearest whole-channel widths).  All three train with the setting's recipe (optimizer,
# learning rate, batch size, epochs) and the batch order of the seed, next to the recipe's full
# dense CNN.  In an MLP the two matches coincide, since every weight of a Linear layer is used once
# per example:

# %% tags=["nbval-check-output"]
mlp = recipes.task("lenet300", "digits", seed=0).build()
print("lenet300: flops / nonzeros =", scale.cost(mlp, "flops") / scale.cost(mlp, "nonzeros"))


# %%
def equal_cost_rows(seed, s):
    """The large sparse CNN at ``s`` and the small dense ones of equal cost, from ``seed``."""
    t = recipes.dense("cnn1d", "mnist1d", seed, epochs=SCALE_EPOCHS, **MNIST1D_OPTIONS)[0]
    rows = scale.large_sparse_vs_small_dense(t, s, epochs=SCALE_EPOCHS)
    return [{"sparsity": s, "seed": seed, **row} for row in rows]


dense_rows = []
for seed in SEEDS:
    t, big, dense_info = recipes.dense(
        "cnn1d", "mnist1d", seed, epochs=SCALE_EPOCHS, **MNIST1D_OPTIONS
    )
    dense_rows.append(
        {
            "seed": seed,
            "test_accuracy": dense_info["test_accuracy"],
            "flags": dense_info["flags"],
        }
    )
# independent trainings: a sweep's worker processes run them side by side (one per core
# in JupyterLab), each computing what it would compute here
calls = [(seed, s) for seed in SEEDS for s in SCALE_SPARSITIES]
rows = [row for found in sl.experiments.forked_map(equal_cost_rows, calls) for row in found]
scale_runs = pd.DataFrame(rows)
scale_dense = pd.DataFrame(dense_rows)
recipe = dense_info["recipe"]

fig, ax = plt.subplots(figsize=(6, 3.5))
sl.experiments.plot_mean_ci(scale_runs, "sparsity", "test_accuracy", hue="model", ax=ax)
ax.axhline(scale_dense["test_accuracy"].mean(), color="k", ls="--", label="large dense")
ax.set_ylabel("test accuracy")
ax.set_title("1-D CNN on MNIST-1D at equal cost")
ax.legend(fontsize=8)
plt.show()
display(sl.stats.summarize(scale_runs, ["sparsity", "model"], "test_accuracy").round(4))
flagged = sl.flags.table(
    pd.concat([scale_runs, scale_dense.assign(model="large dense", sparsity=0.0)]),
    ["sparsity", "model"],
)
sl.nb.show_flags(flagged)
sizes = scale_runs.groupby(["sparsity", "model"])[["width", "nonzeros", "flops"]].mean()
sizes.round(3)

# %%
pairs = {
    match: sl.stats.paired(
        scale_runs,
        "model",
        "large sparse",
        f"small dense (equal {match})",
        metric="test_accuracy",
        by="sparsity",
    ).set_index("sparsity")
    for match in ("nonzeros", "flops")
}
n_weights = int(scale.cost(big, "nonzeros"))
full_channels = big.features[0].out_channels  # of each convolution of the large CNN
lines, scale_verdicts = [], []
for s in SCALE_SPARSITIES:
    small = sizes.loc[(s, "small dense (equal nonzeros)")]
    large = sizes.loc[(s, "large sparse")]
    lines.append(
        f"- {s:.0%}: large sparse minus small dense at equal nonzeros "
        f"{sl.stats.describe(pairs['nonzeros'].loc[s])}; at equal FLOPs "
        f"{sl.stats.describe(pairs['flops'].loc[s])}."
    )
    scale_verdicts.append(
        sl.claims.judge(
            "large_sparse_beats_small_dense",
            pairs["nonzeros"].loc[s],
            setting=f"1-D CNN on MNIST-1D, {s:.0%} sparse against dense at equal nonzeros",
            reason=(
                f"The large CNN has {n_weights:,} weights and reaches "
                f"{scale_dense['test_accuracy'].mean():.1%} dense; at {s:.0%} it keeps "
                f"{large['nonzeros']:.0f} nonzeros, and the nearest dense CNN, "
                f"{small['width']:.0%} of its width ({round(small['width'] * full_channels)} "
                f"channels), has {small['nonzeros']:.0f}.  All train "
                f"{recipe.epochs} epochs on "
                f"{len(t.bundle.train):,} examples; Zhu & Gupta compared ImageNet-scale "
                "models with millions of weights."
            ),
        )
    )
verdicts.extend(scale_verdicts)
display(Markdown("Paired differences of test accuracy:\n\n" + "\n".join(lines)))

# %% [markdown]
# **Against the literature** (Zhu & Gupta 2018), at equal nonzeros.  The equal-FLOPs
# comparison is a different one by construction: in this CNN the first convolutions run
# at many positions, so matching FLOPs gives the dense network another width, and other
# weights, than matching nonzeros (the table of sizes).

# %%
display(Markdown(sl.claims.report(scale_verdicts)))

# %% [markdown]
# ## Summary
#
# - `occam.occam_curve` draws the accuracy-sparsity curve from the recipe's dense model;
#   paired differences pruned minus dense (same seed) label its regions A, B and C.
# - `occam.noisy_task` corrupts the training labels only: with a small training set, the
#   setting in which a regularising effect of pruning should show first.
# - `scale.matching_model` finds the dense width of equal nonzeros or equal FLOPs; the two
#   differ for convolutions and coincide for MLPs.
#
# The verdicts of this run:

# %%
display(sl.claims.table(verdicts))
display(Markdown(sl.claims.report(verdicts)))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Raise the label noise to 60%: run `occam.occam_curve` with `noise=0.6` for seed
# `SEED` only, on section 1's data, `SPARSITIES`, `EPOCHS` and `FINETUNE_EPOCHS`.  How high
# is the hill: the best test accuracy of the pruned models minus the dense model's, in
# points?  One decimal, negative when every pruned model is worse.  Where is its top?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
task_1 = recipes.task(
    "lenet300", DATA, seed=SEED, **({"n_train": N_TRAIN} if DATA == "mnist" else {})
)


def check_1(answer, solution=False):
    curve = occam.occam_curve(
        task_1, SPARSITIES, noise=0.6, epochs=EPOCHS, finetune_epochs=FINETUNE_EPOCHS
    )
    accuracy = curve.set_index("sparsity")["test_accuracy"]
    hint = "Take the largest test accuracy of the pruned rows minus the dense row's (sparsity 0)."
    gain = 100 * (accuracy.drop(0.0).max() - accuracy[0.0])
    sl.nb.check(1, answer, gain, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_1 = None  # points, e.g. 1.5
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  The steps of `occam_curve` by hand: the recipe's dense model on the noisy
# labels, a pruned copy per sparsity fine-tuned at a fifth of its learning rate, each scored
# on the clean test labels.  With more noise the dense model fits more wrong labels; whether
# pruning then helps, and where, is what the test accuracies say.
noisy = occam.noisy_task(task_1, 0.6)
dense_1, dense_info_1 = recipes.train_dense(noisy, epochs=EPOCHS, progress=False)
x_test, y_test = noisy.bundle.test.tensors


def test_accuracy(model):
    with torch.no_grad():
        return float((model(x_test).argmax(dim=1) == y_test).float().mean())


pruned_1 = {}
for s in SPARSITIES:
    model = sl.prune(copy.deepcopy(dense_1), "magnitude", s)
    lr, optimizer = dense_info_1["recipe"].lr / 5, dense_info_1["recipe"].optimizer
    recipes.finetune(model, noisy, FINETUNE_EPOCHS, lr=lr, optimizer=optimizer)
    pruned_1[s] = test_accuracy(model)
top = max(pruned_1, key=pruned_1.get)
solution_1 = round(100 * (pruned_1[top] - test_accuracy(dense_1)), 1)
print(f"dense {test_accuracy(dense_1):.1%}; top at {top:.0%} sparse: {solution_1:+.1f} points")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Replace one-shot pruning with GMP.  On the hill's task of seed `SEED` (`task_1`)
# with the most label noise of `NOISES` (`occam.noisy_task`), train a fresh LeNet-300-100
# with GMP to the highest sparsity of `SPARSITIES`: `GMP(s, budget="global", end=0.75,
# frequency=...)` of `sparsity_lab.methods.gradual`, global magnitude as in the one-shot
# curve, pruning every half epoch (half the batches of the recipe's training loader) until
# three quarters of training, for `EPOCHS` epochs with the recipe (`fit_recipe` of
# `sparsity_lab.phenomena.structure`).  What is its test accuracy minus the dense model's of
# the same seed and noise (the row of sparsity 0 in `curves`), in points?  One decimal.
# Does the gain (or the loss) of one-shot pruning at that sparsity remain?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
import functools

from sparsity_lab.methods.base import TrainingFlops
from sparsity_lab.methods.gradual import GMP
from sparsity_lab.phenomena.structure import fit_recipe

noisy_2 = occam.noisy_task(task_1, max(NOISES))


@functools.cache
def gmp_accuracy():
    """Test accuracy of seed SEED's LeNet-300-100 trained by GMP on the noisiest labels."""
    batches = len(noisy_2.loaders(recipes.recipe_for("lenet300", DATA).batch_size)[0])
    gmp = GMP(max(SPARSITIES), budget="global", end=0.75, frequency=max(1, batches // 2))
    model = noisy_2.build()
    fit_recipe(model, noisy_2, epochs=EPOCHS, callbacks=[gmp])
    return recipes.evaluate_run(model, noisy_2, target_sparsity=max(SPARSITIES))["accuracy"]


def check_2(answer, solution=False):
    rows = curves[(curves["noise"] == max(NOISES)) & (curves["seed"] == SEED)]
    dense = rows.set_index("sparsity").loc[0.0, "test_accuracy"]
    hint = "Train with the GMP callback, then subtract the dense row's test accuracy in `curves`."
    gain = 100 * (gmp_accuracy() - dense)
    sl.nb.check(2, answer, gain, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_2 = None  # points, e.g. -2.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  GMP prunes while the network learns: the weights that stay adapt to each cut,
# where one-shot pruning removes them all at once from a model that has already fitted the
# noisy labels, then fine-tunes `FINETUNE_EPOCHS` epochs.  The budgets differ too: GMP
# trains `EPOCHS` epochs in all, the one-shot curve `EPOCHS` dense plus the fine-tuning.
# Whether a gain under label noise remains is what the two numbers below say, on one seed.
# By another route: the registered GMP method's own `fit` with the recipe's settings, the
# sparsity counted from the masks, the test accuracies of GMP and of the dense model (the
# recipe's, as `occam_curve` trains it) computed from the test tensors.
recipe_2 = recipes.recipe_for("lenet300", DATA)
settings = {**recipe_2.training(), **({} if EPOCHS is None else {"epochs": EPOCHS})}
train_2, val_2, _ = noisy_2.loaders(recipe_2.batch_size)
method_2 = sl.registry.get("gmp", "training")(
    max(SPARSITIES), budget="global", end=0.75, frequency=max(1, len(train_2) // 2)
)
gmp_2 = noisy_2.build()
method_2.fit(gmp_2, train_2, val_2, seed=noisy_2.seed, progress=False, **settings)
dense_2, _ = recipes.train_dense(noisy_2, epochs=EPOCHS, progress=False)
x_test_2, y_test_2 = noisy_2.bundle.test.tensors


def accuracy_2(model):
    with torch.no_grad():
        return float((model(x_test_2).argmax(dim=1) == y_test_2).float().mean())


found_2 = sl.masks.masks(gmp_2).values()
reached = 1 - sum(int(m.sum()) for m in found_2) / sum(m.numel() for m in found_2)
one_shot_2 = curves[(curves["noise"] == max(NOISES)) & (curves["seed"] == SEED)]
one_shot_2 = one_shot_2.set_index("sparsity")["test_accuracy"]
solution_2 = round(100 * (accuracy_2(gmp_2) - accuracy_2(dense_2)), 1)
print(
    f"{max(NOISES):.0%} label noise, {reached:.1%} sparse: GMP {solution_2:+.1f} points, "
    f"one-shot and fine-tuning "
    f"{100 * (one_shot_2[max(SPARSITIES)] - one_shot_2[0.0]):+.1f} points against dense"
)
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Compare at equal *training* FLOPs: the sparse model also pays for its dense start.
# Train seed `SEED`'s large CNN on MNIST-1D (`recipes.task("cnn1d", "mnist1d", seed=SEED,
# **MNIST1D_OPTIONS)`) with GMP to 90% the way the section prunes (`GMP(0.9, budget="uniform",
# end=0.75, frequency=...)`, pruning every half epoch until three quarters of training,
# `fit_recipe` for `SCALE_EPOCHS` epochs), counting its training FLOPs with a
# `sparsity_lab.methods.base.TrainingFlops(gmp)` callback.  How many times the training FLOPs
# of the small dense CNN of equal FLOPs (`scale.matching_model`, trained as many epochs on
# as many examples, `recipes.training_flops`) is that?  One decimal.  What could the small
# dense CNN do with the same training budget?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
task_3 = recipes.task("cnn1d", "mnist1d", seed=SEED, **MNIST1D_OPTIONS)


@functools.cache
def training_flops_3():
    """Training FLOPs of GMP on the large CNN to 90%, and of the small dense CNN of equal
    FLOPs trained as many epochs; and that small CNN."""
    batches = len(task_3.loaders(recipes.recipe_for("cnn1d", "mnist1d").batch_size)[0])
    gmp = GMP(0.9, budget="uniform", end=0.75, frequency=max(1, batches // 2))
    counter = TrainingFlops(gmp)
    large = task_3.build()
    fit_recipe(large, task_3, epochs=SCALE_EPOCHS, callbacks=[gmp, counter])
    _, small = scale.matching_model(task_3, scale.cost(large, "flops"), "flops")
    small_flops = recipes.training_flops(small, len(task_3.bundle.train), counter.epochs)
    return counter.total, small_flops, small


def check_3(answer, solution=False):
    large, small, _ = training_flops_3()
    hint = "Read `total` of the TrainingFlops callback; `recipes.training_flops` gives the other."
    sl.nb.check(3, answer, large / small, hint=hint, tolerance=0.06, solution=solution)


# %%
answer_3 = None  # a ratio, e.g. 1.5
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  GMP starts dense and reaches 90% only at three quarters of training.  The
# cubic ramp averages three quarters of the final sparsity, so the large CNN runs on average
# at about 1 - 0.9 (0.75 * 0.75 + 0.25) = 27% of its dense FLOPs (a little more, since the
# mask changes only every half epoch), while the small dense CNN costs about 10% from its
# first step.  With the same training budget, the small dense CNN could train that many
# times longer, or be wider; whether it then catches up is the comparison this exercise
# starts.  By hand, with no training: the schedule's sparsity at every step, the FLOPs of
# each convolution from its output length, the widths of the small CNN that
# `scale.matching_model` chose for the check.
scale_recipe = recipes.recipe_for("cnn1d", "mnist1d")
epochs_3 = SCALE_EPOCHS or scale_recipe.epochs
n_3 = len(task_3.bundle.train)
batches_3 = [min(scale_recipe.batch_size, n_3 - i) for i in range(0, n_3, scale_recipe.batch_size)]
steps_3 = epochs_3 * len(batches_3)
every, end = max(1, len(batches_3) // 2), round(0.75 * steps_3)


def sparsity_at(step):
    """GMP's cubic schedule, held between updates: the sparsity a step trains at."""
    done = 1.0 if step >= end else (step // every) * every / end
    return 0.9 * (1 - (1 - done) ** 3)


def forward_flops(channels):
    """Forward FLOPs per example of the dense CNN with ``channels`` per convolution: two
    per weight and output position (kernels 5, 3, 3, stride 2, half-kernel padding)."""
    length, c_in, flops = task_3.bundle.input_shape[-1], 1, 0
    for i, c in enumerate(channels):
        kernel = 5 if i == 0 else 3
        length = (length + 2 * (kernel // 2) - kernel) // 2 + 1
        flops += 2 * c * c_in * kernel * length
        c_in = c
    return flops + 2 * c_in * length * task_3.bundle.n_classes  # the head


dense_examples = sum(  # examples weighted by the density they train at
    (1 - sparsity_at(step)) * batches_3[step % len(batches_3)] for step in range(steps_3)
)
channels_3 = [
    m.out_channels for m in training_flops_3()[2].modules() if isinstance(m, torch.nn.Conv1d)
]
large_3 = 3 * forward_flops((32,) * 3) * dense_examples
small_3 = 3 * forward_flops(channels_3) * n_3 * epochs_3
solution_3 = round(large_3 / small_3, 1)
print(
    f"GMP {large_3:.3g} training FLOPs ({dense_examples / (n_3 * epochs_3):.1%} of dense), "
    f"small dense of {'/'.join(map(str, channels_3))} channels {small_3:.3g}: {solution_3}x"
)
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** Repeat large-sparse against small-dense with LeNet-300-100 on section 1's data.  At
# 90% sparsity (uniform budget), how many units has the first hidden layer of the small
# dense LeNet-300-100 with about as many nonzero weights (`scale.matching_model`, widths
# scaled as `scale.WIDTH_OPTIONS` says)?  And at equal FLOPs?  (Training the three, as
# `scale.large_sparse_vs_small_dense` does, takes minutes.)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_4(answer, solution=False):
    large = sl.prune(task_1.build(), "magnitude", 0.9, budget="uniform")
    _, small = scale.matching_model(task_1, scale.cost(large, "nonzeros"), "nonzeros")
    hint = "Prune `task_1.build()` uniformly to 90% and match its nonzeros with `matching_model`."
    sl.nb.check(4, answer, small.fc1.out_features, hint=hint, solution=solution)


# %%
answer_4 = None  # a number of units, e.g. 120
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  A dense LeNet-300-100 with hidden widths h1, h2 has n_in h1 + h1 h2 + 10 h2
# weights, and each is used once per example, so equal FLOPs gives the same width.  By hand:
# every width pair the scaling builds, and the one nearest to 10% of each layer's weights.
n_in, n_out = task_1.bundle.input_shape[0], task_1.bundle.n_classes


def weights(h1, h2):
    return n_in * h1 + h1 * h2 + h2 * n_out


target = sum(round(0.1 * n) for n in (n_in * 300, 300 * 100, 100 * n_out))
pairs = sorted({(max(1, round(300 * f)), max(1, round(100 * f))) for f in np.linspace(0, 1, 30001)})
h1, h2 = min(pairs, key=lambda pair: abs(weights(*pair) - target))
solution_4 = h1
print(f"{target:,} nonzeros at 90%; dense widths ({h1}, {h2}) have {weights(h1, h2):,} weights")
check_4(solution_4, solution=True)

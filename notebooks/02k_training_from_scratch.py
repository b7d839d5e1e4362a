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
# # How to prune V b: pruned at initialisation, trained from scratch
#
# **What you will learn:** how well the networks that SNIP, GraSP, SynFlow, FORCE and
# magnitude prune *before* training learn from scratch with their masks fixed, against
# magnitude pruning after training; the sanity check that asks what such methods really
# find, shuffling each layer's mask; and what this says about two published claims.
#
# This continues [02f](02f_pruning_at_initialisation.ipynb), which defines these criteria,
# shows which connections each keeps in a network that has not learnt anything yet, and
# which of them empty a whole layer (layer collapse).  It follows section 2.4.3 of the
# survey (pruning before training).  [03b](03b_initialisation_against_training.ipynb)
# compares pruning at initialisation against pruning after training, and
# [05c](05c_collapse_and_layer_ratios.ipynb) studies layer collapse and layer ratios.

# %%
import dataclasses
import functools
import re

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import masks, recipes

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.75, 0.95]
PAI_MODELS = ["lenet300", "lenet5"]
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
FINETUNE_EPOCHS = 2
CALIBRATION_BATCHES = 8
PAI_EPOCHS = 5
SYNFLOW_ITERATIONS = 100
FORCE_ITERATIONS = 10

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    SPARSITIES = [0.75]
    EPOCHS = 2
    FINETUNE_EPOCHS = 1
    N_TRAIN = 600
    N_EVAL = 200
    CALIBRATION_BATCHES = 2
    PAI_EPOCHS = 1
    PAI_MODELS = ["lenet300"]  # LeNet-5 runs the same code; CI checks every cell once
    SYNFLOW_ITERATIONS = 10
    FORCE_ITERATIONS = 3
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's
# the criteria of 02f and their options (the shuffled masks are the random baselines)
PAI = {method: {} for method in ["magnitude", "snip", "grasp"]}
PAI.update(synflow={"iterations": SYNFLOW_ITERATIONS}, force={"iterations": FORCE_ITERATIONS})


def first_batches(loader, n):
    return [batch for _, batch in zip(range(n), loader, strict=False)]


def dense_model(model_name, seed):
    """Task, trained dense model and its facts for a (model, seed): `recipes.dense`, trained
    once and cached on disk."""
    return recipes.dense(model_name, "mnist", seed, epochs=EPOCHS, **DATA)


# %% [markdown]
# ## Training the pruned networks from scratch
#
# Each method of [02f](02f_pruning_at_initialisation.ipynb) prunes the *initial* network;
# the sparse network then trains from scratch with its mask fixed.  The check of Frankle
# et al. (2021): shuffle each layer's mask at random (`recipes.random_like`: same number of
# weights per layer, other positions) and train again.  If accuracy does not drop, the
# method found a good sparsity per layer rather than good individual weights.  The
# shuffled mask is also each method's random baseline.  For reference, the dashed line is
# magnitude pruning of the *trained* network after fine-tuning, the magnitude arm of the
# comparison in [02l](02l_first_order_compared.ipynb), re-run here from the dense models of
# `recipes.dense` (trained once, cached on disk).
#
# Every sparse start goes through `recipes.sparse_start`, which rescales each unit's kept
# initial weights to its sparse fan-in (the protocol chapter shows why: the LeNets have no
# normalisation, and without it the signal of a sparse network fades).  The sparse
# networks train with the recipe's hyper-parameters, for fewer epochs than the dense ones.

# %%
# the dense models: their size and training budget for the text below, and the reference
dense_runs = pd.DataFrame(
    [
        {
            "model_name": m,
            "seed": s,
            "epochs": info["recipe"].epochs,
            "n_train": len(t.bundle.train),
            "parameters": sum(p.numel() for p in net.parameters()),
            "test_accuracy": info["test_accuracy"],
            "flags": info["flags"],
        }
        for m in PAI_MODELS
        for s in SEEDS
        for t, net, info in [dense_model(m, s)]
    ]
)
sl.nb.show_dense(dense_runs, "mnist", what="on the dense baselines")  # accuracy, expected, flags
DENSE = dense_runs.groupby("model_name").first()  # epochs, images and size of each model


def magnitude_after_training(model_name, sparsity, seed):
    """The reference: prune the trained dense model by magnitude once, then fine-tune it."""
    t, net, _ = dense_model(model_name, seed)
    data = first_batches(t.loaders()[0], CALIBRATION_BATCHES)
    return recipes.prune_and_finetune(
        net, t, "magnitude", sparsity, finetune_epochs=FINETUNE_EPOCHS, data=data
    )


reference = sl.experiments.sweep(
    magnitude_after_training, {"model_name": PAI_MODELS, "sparsity": SPARSITIES}, seeds=SEEDS
)

# %%
PAI_CRITERIA = list(PAI)


@functools.cache  # in each process of the sweep: the original and shuffled runs share a pruning
def found_masks(model_name, criterion, sparsity, seed):
    """The masks ``criterion`` finds at ``sparsity`` on this seed's initial network."""
    t = dense_model(model_name, seed)[0]
    data = first_batches(t.loaders()[0], CALIBRATION_BATCHES)
    # t.build(): the initial weights of this seed's dense model
    pruned = sl.prune(t.build(), criterion, sparsity, data=data, seed=seed, **PAI[criterion])
    return masks.masks(pruned)


def before_training(model_name, criterion, sparsity, arm, seed):
    """Prune the initial network, shuffle each layer's mask for arm "shuffled", train it."""
    t = dense_model(model_name, seed)[0]
    found = found_masks(model_name, criterion, sparsity, seed)
    if arm == "shuffled":
        found = recipes.random_like(found, seed)
    net = recipes.sparse_start(t.build(), found)
    recipe = recipes.recipe_for(model_name, "mnist")
    train, val, _ = t.loaders(recipe.batch_size)
    sl.train.fit(net, train, seed=seed, **{**recipe.training(), "epochs": PAI_EPOCHS})
    final = recipes.evaluate_run(net, t, target_sparsity=sparsity)
    return {
        "val_accuracy": recipes.evaluate_run(net, t, split="val")["accuracy"],
        "test_accuracy": final["accuracy"],
        "train_flops": recipes.training_flops(net, len(t.bundle.train), PAI_EPOCHS),
        "flags": final["flags"],
    }


GRID = {"model_name": PAI_MODELS, "criterion": PAI_CRITERIA, "sparsity": SPARSITIES}
pai = sl.experiments.sweep(before_training, {**GRID, "arm": ["original", "shuffled"]}, seeds=SEEDS)
budgets = []
for m in PAI_MODELS:
    flops = pai[pai.model_name == m]["train_flops"]
    dense_flops = recipes.training_flops(dense_model(m, SEED)[1], DENSE.loc[m, "n_train"], 1)
    budgets.append(
        f"on {m}, each sparse network trains {PAI_EPOCHS} epoch(s), "
        f"{sl.words.span(flops.min(), flops.max())} FLOPs, while the dashed reference cost a dense "
        f"training of {DENSE.loc[m, 'epochs']} epoch(s) "
        f"({dense_flops * DENSE.loc[m, 'epochs']:.2g} FLOPs) plus {FINETUNE_EPOCHS} "
        "fine-tuning epoch(s)"
    )
sl.nb.md("Budgets: " + "; ".join(budgets) + ".")

# %%
fig, axes = plt.subplots(1, len(PAI_MODELS), figsize=(11, 4), squeeze=False, layout="constrained")
for ax, model_name in zip(axes[0], PAI_MODELS, strict=True):
    part = pai[(pai.model_name == model_name) & (pai.arm == "original")]
    sl.experiments.plot_mean_ci(part, x="sparsity", y="val_accuracy", hue="criterion", ax=ax)
    after = reference[reference.model_name == model_name].groupby("sparsity")["val_accuracy"]
    ax.plot(after.mean().index, after.mean().values, "k--", label="magnitude after training")
    ax.get_legend().remove()
    ax.set_title(f"{model_name}: pruned at initialisation, trained {PAI_EPOCHS} epoch(s)")
    ax.set_ylabel("validation accuracy")
sl.viz.figure_legend(fig, axes, strip="criterion=")
plt.show()
sl.nb.show_flags(sl.flags.table(pai, ["model_name", "criterion", "sparsity", "arm"]))
EMPTIED = "layer pruned to 100%"  # the flag sl.flags.check raises for a layer left empty


def emptied(flags):
    """The layers that the flags of one run report pruned to 100%."""
    found = re.findall(rf"{re.escape(EMPTIED)} \(([^)]*)\)", flags)
    return sorted({name for names in found for name in names.split(", ")})


def emptied_layers():
    """The runs of the sweep that left a layer empty, by model, method and sparsity."""
    runs = pai.assign(layers=pai["flags"].fillna("").map(emptied))
    hit = runs[runs.layers.map(bool)]
    if hit.empty:
        return "No run of the sweep before training leaves a layer empty."
    parts = []
    for (m, c, sparsity), group in hit.groupby(["model_name", "criterion", "sparsity"]):
        layers = ", ".join(f"`{n}`" for n in sorted({n for names in group.layers for n in names}))
        setting = runs[(runs.model_name == m) & (runs.criterion == c) & (runs.sparsity == sparsity)]
        total = setting.groupby("arm").size()
        counts = group.groupby("arm").size().items()
        counts = ", ".join(f"{arm} arm {n} of {total[arm]} runs" for arm, n in counts)
        parts.append(f"`{c}` on {m} at {sparsity:.0%} empties {layers} ({counts})")
    return "Runs of the sweep before training that leave a layer empty: " + "; ".join(parts) + "."


sl.nb.md(emptied_layers())

# %% [markdown]
# The effect of shuffling, per seed: the accuracy of the shuffled mask minus that of the
# mask as found (test), with its paired interval over the seeds.

# %%
BY = ["model_name", "criterion", "sparsity"]
shuffle = sl.stats.paired(pai, "arm", "shuffled", "original", metric="test_accuracy", by=BY)
display(shuffle.round(4))
fig, axes = plt.subplots(1, len(PAI_MODELS), figsize=(11, 3.6), squeeze=False, layout="constrained")
for ax, model_name in zip(axes[0], PAI_MODELS, strict=True):
    points = shuffle[shuffle.model_name == model_name].assign(flagged=lambda d: d.flagged != "")
    points[["mean", "ci_low", "ci_high"]] = 100 * points[["mean_diff", "ci_low", "ci_high"]].values
    sl.viz.interval_lines(points, "sparsity", "criterion", ax, band=True, flagged=points["flagged"])
    ax.axhline(0, color="k", linewidth=0.8)
    # the axis fits the settings without a flagged run: an interval stretched to +-100 points
    # by a run at chance level would squash the others; a mean off the axis is marked at its edge
    bounds, fmt = (-100.0, 100.0), "{:+.1f} points".format
    sl.experiments.fit_y(
        ax, points, ~points["flagged"], x="sparsity", name="criterion", bounds=bounds, fmt=fmt
    )
    ax.set(xlabel="sparsity", ylabel="shuffled - original (points)")
    ax.set_title(f"{model_name}: accuracy change when masks are shuffled")
sl.viz.figure_legend(fig, axes)
plt.show()
top = max(SPARSITIES)  # the highest sparsity measured
at_top = shuffle[shuffle.sparsity == top]


def shuffle_clearly(verdict):
    """The settings where shuffling clearly raises (``sl.stats.BETTER``) or lowers
    (``WORSE``) accuracy in runs without flags.  The check of Frankle et al. expects a drop
    or nothing: a gain says the method's own choice within layers hurt, a drop that it
    carries information a random choice of as many weights lacks."""
    raises = verdict == sl.stats.BETTER
    effect = "raise" if raises else "lower"
    rows = shuffle[(shuffle.verdict == verdict) & (shuffle.flagged == "")]
    if rows.empty:
        return f"At no sparsity does shuffling clearly {effect} accuracy in a run without flags."
    settings = "; ".join(
        f"`{r.criterion}` on {r.model_name} at {r.sparsity:.0%} ({sl.stats.describe(r)})"
        for _, r in rows.iterrows()
    )
    meaning = (
        "of weights within each layer is worse than a random choice of as many"
        if raises
        else "within layers beats a random one"
    )
    return (
        f"Shuffling clearly {effect}s accuracy, with no flagged run, for {settings}: there the "
        f"method's choice {meaning}."
    )


def found_behind():
    """Methods whose masks as found raise flags that their shuffles do not, or do clearly
    worse than their shuffles (test), with the mean validation accuracy of both arms there."""
    runs = pai.assign(flagged=pai["flags"].fillna("") != "")
    arms = runs.groupby([*BY, "arm"]).agg(
        flagged=("flagged", "any"), val_accuracy=("val_accuracy", "mean")
    )
    arms = arms.unstack("arm")  # a column per (measure, arm), a row per setting
    parts = []
    for (m, c), part in shuffle.groupby(["model_name", "criterion"], sort=False):
        arm = arms.loc[(m, c)]  # a row per sparsity
        only_found = arm["flagged", "original"] & ~arm["flagged", "shuffled"]
        flagged = [s for s in part.sparsity if only_found[s]]
        behind = part[part.verdict == sl.stats.BETTER].sparsity.tolist()
        if not flagged and not behind:
            continue
        where = sorted(set(flagged) | set(behind))
        found, shuffled = (arm.loc[where, ("val_accuracy", a)] for a in ("original", "shuffled"))
        what = (
            [f"only the masks as found flagged at {sl.words.percents(flagged)}"] if flagged else []
        )
        if behind:
            what.append(
                f"clearly lower test accuracy than the shuffles at {sl.words.percents(behind)}"
            )
        parts.append(
            f"`{c}` on {m} ({'; '.join(what)}; mean validation accuracy "
            f"{sl.words.span(min(found), max(found))} as found, "
            f"{sl.words.span(min(shuffled), max(shuffled))} shuffled, "
            f"at {sl.words.percents(where)})"
        )
    if not parts:
        return (
            "No masks as found raise flags that their shuffles do not, or fall clearly below "
            "their shuffles."
        )
    return (
        "Masks as found that raise flags their shuffles do not, or fall clearly below them: "
        f"{'; '.join(parts)}."
    )


at_top_text = "; ".join(
    f"`{r.criterion}` on {r.model_name} {sl.stats.describe(r)}" for _, r in at_top.iterrows()
)
sl.nb.md(
    f"At {top:.0%} sparsity, shuffled minus original: {at_top_text}.  "
    f"{shuffle_clearly(sl.stats.BETTER)}  {shuffle_clearly(sl.stats.WORSE)}"
)
sl.nb.md(found_behind())

# %% [markdown]
# ## Against the literature
#
# The claims this chapter can test, each judged from paired test accuracies (`sl.claims`):
# shuffling within layers against the masks as found (Frankle et al. 2021), for every
# method at the highest sparsity measured; and SNIP against its random baseline (Lee et al.
# 2019).  Magnitude after training against its random baseline (Blalock et al. 2020) is
# judged in [02l](02l_first_order_compared.ipynb).


# %%
def sparse_facts(m):
    return (
        f"Each sparse {m} ({DENSE.loc[m, 'parameters']:,} parameters dense) trained "
        f"{PAI_EPOCHS} epoch(s) on {DENSE.loc[m, 'n_train']} MNIST images from a rescaled "
        f"initialisation."
    )


snip_vs_random = sl.stats.paired(pai, "arm", "original", "shuffled", metric="test_accuracy", by=BY)
shuffle_verdicts = [
    sl.claims.judge(
        "init_masks_carry_layer_ratios_only",
        r,
        setting=f"{r.criterion}, {r.model_name} at {top:.0%}, trained {PAI_EPOCHS} epoch(s), test",
        reason=sparse_facts(r.model_name),
    )
    for _, r in at_top.iterrows()
]
NETWORKS = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}  # the papers' names


def as_published(key, m):
    """Claim ``key``, with its published figure only where it is about network ``m``: for
    another network the card says whose figure it is instead of quoting it."""
    claim = sl.claims.get(key)
    about = [name for name in NETWORKS.values() if name in claim.published]
    if not about or NETWORKS.get(m) in about:
        return claim
    return dataclasses.replace(
        claim,
        published=f"its published figure is for {', '.join(about)}, not {NETWORKS.get(m, m)}",
    )


snip_verdicts = [
    sl.claims.judge(
        as_published("snip_beats_random_init", r.model_name),
        r,
        setting=f"{r.model_name} at {top:.0%}, SNIP's mask against random_like of it, trained "
        f"{PAI_EPOCHS} epoch(s), test",
        reason=sparse_facts(r.model_name)
        + " The random mask here keeps SNIP's count in every layer (the shuffled arm above), "
        "a different baseline from the paper's uniform random pruning: this is the SNIP row "
        "of the shuffling comparison, with the sign reversed.",
    )
    for _, r in snip_vs_random[
        (snip_vs_random.criterion == "snip") & (snip_vs_random.sparsity == top)
    ].iterrows()
]
verdicts = shuffle_verdicts + snip_verdicts
display(sl.claims.table(verdicts))
reported = snip_verdicts + [
    v for v in shuffle_verdicts if v.setting.startswith(("snip,", "synflow,"))
]
sl.nb.md(sl.claims.report(reported))
sl.nb.md(
    "The table lists the shuffling verdict of every method; the text above words those "
    "of SNIP and SynFlow, the methods of the claim's published numbers."
)

# %% [markdown]
# ## Summary
#
# - Every sparse start here is rescaled to its fan-in and trains from scratch with its mask
#   fixed; every random baseline keeps the layer counts of the mask it is compared with
#   (the shuffled arm).
#
# What this chapter measured:

# %%
clean = [v for v in shuffle_verdicts if not v.flagged]
counts = pd.Series([v.status for v in clean], dtype=object).value_counts()
judged = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none judged"
n_flagged = len(shuffle_verdicts) - len(clean)
lines = [
    f"- {emptied_layers()}",
    f"- Shuffling masks found at initialisation ({len(shuffle_verdicts)} method-network "
    f"pairs at {top:.0%}, {PAI_EPOCHS} training epoch(s), {len(SEEDS)} seed(s)): "
    f"{judged} against init_masks_carry_layer_ratios_only among the pairs whose runs raised "
    f"no sanity flag"
    + (
        f"; {n_flagged} pair(s) with a flagged arm are not counted (see the table)."
        if n_flagged
        else "."
    ),
    *[
        f"- Against the literature: {v.claim.key} is **{v.status}** ({v.setting})"
        + (f"; sanity flags: {v.flagged}" if v.flagged else "")
        + "."
        for v in snip_verdicts
    ],
]
sl.nb.md("\n".join(lines))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** Shuffling keeps each layer's count of weights and moves them.  Take the mask SNIP
# found on LeNet-300-100 at the highest sparsity for the first seed,
# `found_masks("lenet300", "snip", top, SEEDS[0])`, and its shuffle as the sweep built it,
# `recipes.random_like(found, SEEDS[0])`.  What share of the weights SNIP keeps in
# `fc1.weight` does the shuffle keep too?  Two decimals.  What share would chance alone
# give, and what does that say about how far apart the two arms' networks are?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    found = found_masks("lenet300", "snip", top, SEEDS[0])
    snip = found["fc1.weight"].bool()
    shuffled = recipes.random_like(found, SEEDS[0])["fc1.weight"].bool()
    share = float((snip & shuffled).sum() / snip.sum())
    hint = "Count the weights of `fc1.weight` that both masks keep, over the number SNIP keeps."
    # two decimals: within half a hundredth
    sl.nb.check(1, answer, share, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_1 = None  # a share, e.g. 0.42
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  The shuffle keeps as many weights of the layer as SNIP, k of its N, at
# positions drawn at random: each weight SNIP keeps is among them with probability k / N,
# the density of the layer.  So the expected share is that density; the printed lines say
# how close the measured one comes.  Where the two arms share no more weights than two
# random masks would and train to the same accuracy, SNIP's choice of weights within the
# layer added nothing that its per-layer counts did not.
found_1 = found_masks("lenet300", "snip", top, SEEDS[0])
fc1 = found_1["fc1.weight"] != 0
moved = recipes.random_like(found_1, SEEDS[0])["fc1.weight"] != 0
chance = float(fc1.sum() / fc1.numel())  # the density of the layer
solution_1 = round(int((fc1 & moved).sum()) / int(fc1.sum()), 2)
print(f"fc1 keeps {int(fc1.sum()):,} of {fc1.numel():,} weights; the shuffle keeps "
      f"{int((fc1 & moved).sum()):,} of them: {solution_1:.2f}, chance {chance:.3f}")  # fmt: skip
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** The price of skipping the dense training: on LeNet-300-100 at the highest sparsity
# (`top`), by how many points of mean validation accuracy does the dashed reference
# (`reference`: magnitude pruning after training, then fine-tuning) beat the best method
# pruned at initialisation (`pai`, masks as found)?  One decimal; negative if the method at
# initialisation is ahead.  Compare it with the training budgets printed above.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    at = pai[(pai.model_name == "lenet300") & (pai.sparsity == top) & (pai.arm == "original")]
    after = reference[(reference.model_name == "lenet300") & (reference.sparsity == top)]
    gap = 100 * (after.val_accuracy.mean() - at.groupby("criterion").val_accuracy.mean().max())
    hint = "Average `val_accuracy` over the seeds for each method, then subtract the best one."
    sl.nb.check(2, answer, gap, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_2 = None  # points, e.g. 3.4
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The reference starts from a trained network, each method at initialisation
# from an untrained one with a few epochs to learn; the gap is what the dense training
# bought, at a cost the budgets above put in FLOPs.  Both sweeps in one table, a row per
# method and a column per seed:
both = pd.concat([pai[pai.arm == "original"], reference.assign(criterion="after training")])
table = both[(both.model_name == "lenet300") & (both.sparsity == top)].pivot_table(
    index="criterion", columns="seed", values="val_accuracy"
)
display(table.round(3))
means = table.mean(axis="columns")
best = means.drop("after training").idxmax()
solution_2 = round(100 * (means["after training"] - means[best]), 1)
print(f"after training {means['after training']:.1%} against {best} {means[best]:.1%}: "
      f"{solution_2:+.1f} points; budgets {budgets[PAI_MODELS.index('lenet300')]}")  # fmt: skip
check_2(solution_2, solution=True)

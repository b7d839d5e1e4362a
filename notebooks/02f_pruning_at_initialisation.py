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
# # How to prune V: pruning at initialisation (SNIP, GraSP, SynFlow, FORCE)
#
# **What you will learn:** how pruning *before* training works, which connections each
# criterion keeps in a network that has not learnt anything yet, and the sanity check that
# asks what such methods really find: shuffling each layer's mask.
#
# This follows section 2.4.3 of the survey (pruning before training).  It continues
# [02b](02b_first_order.ipynb), which derives the first-order criteria (SNIP's
# $\lvert g\,w\rvert$ among them) and compares them on trained networks.  Two other lessons
# take this further, and this notebook does not repeat them:
# [03b](03b_initialisation_against_training.ipynb) compares pruning at initialisation
# against pruning after training, and [05c](05c_collapse_and_layer_ratios.ipynb) studies
# layer collapse and layer ratios.

# %%
import copy
import dataclasses
import re

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import masks, recipes

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.75, 0.9, 0.95]
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


def first_batches(loader, n):
    return [batch for _, batch in zip(range(n), loader, strict=False)]


def dense_model(model_name, seed):
    """Task, trained dense model and its facts for a (model, seed): `recipes.dense`, trained
    once and cached on disk."""
    return recipes.dense(model_name, "mnist", seed, epochs=EPOCHS, **DATA)


# LeNet-300-100 of seed SEED: its data, its initial weights (task.build()) and a few
# calibration batches for the criteria that read data
task = recipes.task("lenet300", "mnist", seed=SEED, **DATA)
calibration = first_batches(task.loaders()[0], CALIBRATION_BATCHES)

# %% [markdown]
# ## Pruning at initialisation
#
# Pruning before training saves the cost of training a dense network first.  The
# criteria must then judge weights that have not learnt anything yet:
#
# - `snip` (Lee et al. 2019): $\lvert g\,w\rvert$ on one batch at initialisation.
# - `grasp` (Wang et al. 2020): remove the weights with the largest $-w\,(Hg)$, those whose
#   removal least reduces the gradient flow $g^\top g$.
# - `synflow` (Tanaka et al. 2020): with $\lvert\theta\rvert$ everywhere and an input of
#   ones, the score is $\lvert w\,\partial R/\partial w\rvert$ for the synaptic flow
#   $R = \mathbf 1^\top \prod_l \lvert W_l\rvert \mathbf 1$; iterative and data-free.
# - `force` (de Jorge et al. 2021): SNIP repeated on the network pruned so far, where
#   removed weights may come back.
#
# ### A toy picture: which connections survive
#
# A small network at initialisation, 4-16-16-4-2, pruned to a high sparsity before training;
# every kept connection is drawn.  A standard initialisation makes the weights of wide
# layers small, so a global magnitude threshold judges layers by their width; SynFlow
# scores each weight by the paths from input to output that run through it.  Above each
# network: how many input-output paths are left.

# %%
widths = [4, 16, 16, 4, 2]
TOY_SPARSITY = 0.95
torch.manual_seed(0)
layers = []
for a, b in zip(widths[:-1], widths[1:], strict=True):
    layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
toy_init = torch.nn.Sequential(*layers[:-1])
toy_data = (torch.randn(64, widths[0]), torch.randint(0, widths[-1], (64,)))
TOY = {"magnitude": {}, "snip": {}, "synflow": {"input_shape": (widths[0],), "iterations": 20}}
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained")
toy_paths = {}
for ax, (method, options) in zip(axes, TOY.items(), strict=True):
    pruned = sl.prune(copy.deepcopy(toy_init), method, TOY_SPARSITY, data=toy_data, **options)
    found = list(masks.masks(pruned).values())
    paths = torch.ones(widths[0])
    for mask in found:
        paths = mask.float() @ paths  # paths from the inputs to each unit of the next layer
    toy_paths[method] = int(paths.sum())
    title = f"{method}: {toy_paths[method]} input-output paths"
    sl.illustrations.connection_diagram(found, ax=ax, title=title)
plt.show()
collapsed = ", ".join(f"`{m}`" for m, n in toy_paths.items() if n == 0)
outcome = (
    f"{collapsed} cut every path from input to output (layer collapse: the network computes "
    "a constant)"
    if collapsed
    else "no method cuts every path from input to output"
)
kept_paths = ", ".join(f"`{m}` keeps {n}" for m, n in toy_paths.items())
sl.nb.md(f"Pruned at {TOY_SPARSITY:.0%} before training, {outcome}; {kept_paths} paths.")

# %% [markdown]
# ### Layer collapse
#
# At initialisation a global magnitude threshold keeps the layers whose initial weights
# are largest, the small ones, and may empty the big first layer.  The density each method
# leaves in each layer of LeNet-300-100 at a very high sparsity:

# %%
COLLAPSE_SPARSITY = 0.99
init = task.build()  # the same initial weights as the dense model of this seed
PAI = {method: {} for method in ["random", "magnitude", "snip", "grasp"]}  # method: options
PAI.update(synflow={"iterations": SYNFLOW_ITERATIONS}, force={"iterations": FORCE_ITERATIONS})
layer_density = {}
for method, options in PAI.items():
    pruned = sl.prune(copy.deepcopy(init), method, COLLAPSE_SPARSITY, data=calibration, **options)
    layer_density[method] = {n: float(m.mean()) for n, m in masks.masks(pruned).items()}
layer_density = pd.DataFrame(layer_density)
ax = layer_density.T.plot.bar(rot=0, figsize=(8, 3.5), logy=True)
ax.set_ylabel("density of the layer (log)")
ax.set_title(f"LeNet-300-100 pruned at initialisation to {COLLAPSE_SPARSITY:.0%} sparsity")
plt.show()
empty = [m for m in layer_density if (layer_density[m] == 0).any()]
EMPTY = ", ".join(f"`{m}`" for m in empty) or "none"
sl.nb.md(f"Methods that empty a layer at {COLLAPSE_SPARSITY:.0%}: {EMPTY}.")

# %% [markdown]
# ### Training the pruned networks from scratch
#
# Each method prunes the *initial* network; the sparse network then trains from scratch
# with its mask fixed.  The check of Frankle et al. (2021): shuffle each layer's mask at
# random (`recipes.random_like`: same number of weights per layer, other positions) and
# train again.  If accuracy does not drop, the method found a good sparsity per layer
# rather than good individual weights.  The shuffled mask is also each method's random
# baseline.  For reference, the dashed line is magnitude pruning of the *trained* network
# after fine-tuning, the magnitude arm of the comparison in [02b](02b_first_order.ipynb),
# re-run here from the dense models of `recipes.dense` (trained once, cached on disk).
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
PAI_CRITERIA = [m for m in PAI if m != "random"]  # the shuffled masks are the random baselines
found_masks = {}  # pruning once serves both the original and the shuffled run


def before_training(model_name, criterion, sparsity, arm, seed):
    """Prune the initial network, shuffle each layer's mask for arm "shuffled", train it."""
    t = dense_model(model_name, seed)[0]
    key = (model_name, criterion, sparsity, seed)
    if key not in found_masks:
        data = first_batches(t.loaders()[0], CALIBRATION_BATCHES)
        # t.build(): the initial weights of this seed's dense model
        pruned = sl.prune(t.build(), criterion, sparsity, data=data, seed=seed, **PAI[criterion])
        found_masks[key] = masks.masks(pruned)
    found = found_masks[key]
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
    sl.viz.interval_lines(points, "sparsity", "criterion", ax, band=True)
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
# judged in [02b](02b_first_order.ipynb).


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
# - Pruning at initialisation must judge weights before they learn.  SynFlow scores paths
#   without data, to avoid layer collapse; GraSP and SNIP use one batch; FORCE iterates
#   SNIP.  Every sparse start here is rescaled to its fan-in, and every random baseline
#   keeps the layer counts of the mask it is compared with.
#
# What this chapter measured:

# %%
clean = [v for v in shuffle_verdicts if not v.flagged]
counts = pd.Series([v.status for v in clean], dtype=object).value_counts()
judged = ", ".join(f"{n} {status}" for status, n in counts.items()) or "none judged"
n_flagged = len(shuffle_verdicts) - len(clean)
lines = [
    f"- At {COLLAPSE_SPARSITY:.0%} sparsity before training, the methods that empty a layer "
    f"of LeNet-300-100 are: {EMPTY}.",
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
# **1.** Prune the initial LeNet-300-100 (`init`) to 99.9% sparsity with `magnitude`,
# `snip` and `synflow`, as the layer-collapse cell does at 99% (`data=calibration` and the
# options of `PAI`).  Which of the three leave a layer empty?  Answer with the set of their
# names, e.g. `{"random"}`.  What test accuracy can training reach from such a mask?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
import warnings


def check_1(answer, solution=False):
    emptying = set()
    for method in ("magnitude", "snip", "synflow"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an emptied layer warns; the masks say it
            pruned = sl.prune(copy.deepcopy(init), method, 0.999, data=calibration, **PAI[method])
        if any(not m.any() for m in masks.masks(pruned).values()):
            emptying.add(method)
    hint = "Prune a copy of `init` with each method and look for a mask without a single 1."
    sl.nb.check(
        1,
        answer,
        lambda a: isinstance(a, set | list | tuple) and set(a) == emptying,
        hint=hint,
        solution=solution,
    )


# %%
answer_1 = None  # a set of method names, e.g. {"random"}
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  99.9% leaves 266 of 266,200 weights.  At initialisation the weights of a
# wide layer are small (their scale is 1 / sqrt(fan-in)), so one magnitude threshold keeps
# the small last layer, whose weights are the largest, and empties the wide ones; SNIP
# multiplies by the gradient and still favours the small layers.  SynFlow re-scores after
# each of its pruning steps and keeps the flow through every layer.  A network with an
# empty layer computes the same output for every image, so training can at best learn to
# predict the most common class.  By hand, the kept weights of magnitude and SNIP, and for
# SynFlow the input-output paths of its mask:
names = list(layer_density.index)
start = {n: init.get_parameter(n).detach() for n in names}
sizes = [start[n].numel() for n in names]
n_keep = sum(sizes) - round(0.999 * sum(sizes))


def kept_per_layer(scores):
    """How many weights of each layer the n_keep largest scores over all layers hold."""
    flat = torch.cat([scores[n].flatten() for n in names])
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[flat.topk(n_keep).indices] = True
    return {n: int(part.sum()) for n, part in zip(names, keep.split(sizes), strict=True)}


net = copy.deepcopy(init)
x_0, y_0 = calibration[0]  # SNIP reads one batch
grads = torch.autograd.grad(F.cross_entropy(net(x_0), y_0), [net.get_parameter(n) for n in names])
kept_by = {
    "magnitude": kept_per_layer({n: start[n].abs() for n in names}),
    "snip": kept_per_layer({n: (g * start[n]).abs() for n, g in zip(names, grads, strict=True)}),
}
synflow_masks = masks.masks(sl.prune(copy.deepcopy(init), "synflow", 0.999, **PAI["synflow"]))
synflow_paths = torch.ones(init.input_shape[0], dtype=torch.float64)
for n in names:
    synflow_paths = synflow_masks[n].double() @ synflow_paths  # paths from the input to each unit
solution_1 = {m for m, kept in kept_by.items() if 0 in kept.values()}
if synflow_paths.sum() == 0:  # no path at all: some layer cut every one
    solution_1.add("synflow")
test_labels = task.bundle.test.tensors[1]
most_common = float(test_labels.bincount().max() / len(test_labels))
print(
    f"kept per layer: {kept_by}; SynFlow's mask leaves {int(synflow_paths.sum())} input-output "
    f"paths; a constant network scores at most {most_common:.1%}"
)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** FORCE is SNIP repeated on the network pruned so far.  Prune `init` to
# `COLLAPSE_SPARSITY` with `snip` and with `force` (`iterations=FORCE_ITERATIONS`), both
# with `data=calibration`.  What share of the weights SNIP keeps does FORCE keep too?  Two
# decimals.  What is that share with `iterations=1`, and at which sparsity does the
# difference start to matter?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def pai_masks(method, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an emptied layer warns; not the question here
        pruned = sl.prune(
            copy.deepcopy(init), method, COLLAPSE_SPARSITY, data=calibration, **options
        )
    return masks.masks(pruned)


def check_2(answer, solution=False):
    snip, force = pai_masks("snip"), pai_masks("force", iterations=FORCE_ITERATIONS)
    both = sum(int((snip[n].bool() & force[n].bool()).sum()) for n in snip)
    share = both / sum(int(snip[n].sum()) for n in snip)
    hint = "Count the weights kept by both masks, over the number SNIP keeps."
    sl.nb.check(2, answer, share, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a share, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  With one iteration FORCE scores |g w| on the dense network with the first
# batch and prunes once: that is SNIP, the same mask.  With more iterations each step
# takes the gradient on the network as pruned so far, whose signal flows through fewer
# paths, and a weight that matters once the others are gone can come back.  At moderate
# sparsity the pruned network is close to the dense one and the masks agree; the higher
# the sparsity, the more they part.  By hand, FORCE's loop (SNIP is its first step):
total = sum(sizes)


def force_by_hand(sparsity, iterations):
    """FORCE from the raw weights: at step k the sparsity 1 - (1 - s)^(k / n), the gradient
    on the network masked so far (batch k, cycling), the largest |g w| of all weights."""
    keep = [torch.ones_like(start[n], dtype=torch.bool) for n in names]
    for k in range(1, iterations + 1):
        step = sparsity if k == iterations else 1 - (1 - sparsity) ** (k / iterations)
        x_b, y_b = calibration[(k - 1) % len(calibration)]
        net = copy.deepcopy(init)
        with torch.no_grad():
            for n, kept in zip(names, keep, strict=True):
                net.get_parameter(n).mul_(kept)
        weights = [net.get_parameter(n) for n in names]
        grads = torch.autograd.grad(F.cross_entropy(net(x_b), y_b), weights)
        scores = torch.cat(
            [(g * start[n]).abs().flatten() for n, g in zip(names, grads, strict=True)]
        )
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[scores.topk(total - round(step * total)).indices] = True
        keep = [part.view_as(start[n]) for n, part in zip(names, chosen.split(sizes), strict=True)]
    return torch.cat([kept.flatten() for kept in keep])


def overlap(sparsity, iterations):
    snip, force = force_by_hand(sparsity, 1), force_by_hand(sparsity, iterations)
    return float((snip & force).sum() / snip.sum())


solution_2 = round(overlap(COLLAPSE_SPARSITY, FORCE_ITERATIONS), 2)
print(
    f"one iteration: {overlap(COLLAPSE_SPARSITY, 1):.2f} of SNIP's weights; "
    f"{FORCE_ITERATIONS} iterations: "
    + ", ".join(
        f"{s:.0%}: {overlap(s, FORCE_ITERATIONS):.2f}" for s in (0.5, 0.9, COLLAPSE_SPARSITY)
    )
)
check_2(solution_2, solution=True)

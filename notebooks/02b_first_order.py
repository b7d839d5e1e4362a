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

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import masks, recipes
from sparsity_lab.criteria import at_init
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
EPOCHS = 10
FINETUNE_EPOCHS = 2
N_TRAIN = 4000
N_PROBES = 300
CALIBRATION_BATCHES = 8
PAI_EPOCHS = 5
SYNFLOW_ITERATIONS = 100
FORCE_ITERATIONS = 10

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0]
    SPARSITIES = [0.75]
    EPOCHS = 2
    FINETUNE_EPOCHS = 1
    N_TRAIN = 600
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

# %% [markdown]
# ## The dense models, with scores tracked during training
#
# Two criteria below accumulate their scores while the network trains, so the dense models
# are trained here with two trackers among the training loop's callbacks: `KarninScores`
# and `MovementScores`.  The recipe is otherwise the one of `recipes.train_dense` (SGD with
# momentum, learning rate 0.05 annealed by a cosine).

# %%
dense_models = {}


def first_batches(loader, n):
    return [batch for _, batch in zip(range(n), loader, strict=False)]


def dense_for(model_name, seed):
    """Task, trained model, trackers and validation accuracy for a (model, seed) pair."""
    key = (model_name, seed)
    if key not in dense_models:
        t = recipes.task(model_name, "mnist", seed=seed, n_train=N_TRAIN)
        train, val, _ = t.loaders()
        model = t.build()
        trackers = {"karnin": KarninScores(), "movement": MovementScores()}
        sl.train.fit(
            model,
            train,
            val,
            epochs=EPOCHS,
            lr=0.05,
            lr_schedule="cosine",
            seed=seed,
            callbacks=list(trackers.values()),
        )
        accuracy = sl.train.evaluate(model, val)["accuracy"]
        dense_models[key] = (t, model, trackers, accuracy)
    return dense_models[key]


task, model, trackers, dense_accuracy = dense_for("lenet300", SEED)
train_loader, val_loader, _ = task.loaders()
calibration = first_batches(train_loader, CALIBRATION_BATCHES)
display(Markdown(f"LeNet-300-100: validation accuracy **{dense_accuracy:.2%}**."))

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
#   the weights that move away from zero.
# - `soft_movement` (Sanh et al. 2020): scores learnt with the weights, kept above a
#   threshold.
#
# ### A toy picture: two weights
#
# A linear model $\hat y = w_1 x_1 + w_2 x_2$ with a squared loss, whose first input
# varies much less than the second.  Removing a weight moves the point to an axis (the
# arrows); magnitude looks only at the length of that move, the first-order score also at
# the slope of the loss along it.  Left: the weights part-way through training; right: at
# the minimum, where the gradient, and with it every first-order score, vanishes.

# %%
gen = torch.Generator().manual_seed(0)
inputs = torch.randn(256, 2, generator=gen) * torch.tensor([0.3, 1.0])
targets = inputs @ torch.tensor([2.0, 0.8]) + 0.1 * torch.randn(256, generator=gen)


def toy_loss(w):
    return ((inputs @ w - targets) ** 2).mean()


w_star = torch.linalg.lstsq(inputs, targets[:, None]).solution.flatten()
grid = torch.linspace(-0.5, 3.0, 120)
w1_grid, w2_grid = torch.meshgrid(grid, grid, indexing="xy")
every_w = torch.stack([w1_grid.flatten(), w2_grid.flatten()])  # one column per grid point
surface = ((inputs @ every_w - targets[:, None]) ** 2).mean(0).reshape(w1_grid.shape)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, layout="constrained")
toy_rows = []
for ax, (label, w) in zip(
    axes, [("part-way", torch.tensor([1.2, 1.4])), ("at the minimum", w_star)], strict=True
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
        toy_rows.append({"point": label, "weight": f"w{k + 1}", "real": real, "-g w": predicted})
    ax.set(xlabel="w1", ylabel="w2", title=label, aspect="equal")
plt.show()
toy = pd.DataFrame(toy_rows).set_index(["point", "weight"])
part_way = toy.loc["part-way"]
at_min = toy.loc["at the minimum"]
agree = part_way["real"].idxmax() == part_way["-g w"].idxmax()
display(
    Markdown(
        f"Part-way, removing `w1` changes the loss by {part_way.loc['w1', 'real']:+.2f} and "
        f"`w2` by {part_way.loc['w2', 'real']:+.2f}; the first-order score ranks them "
        f"{'the same way' if agree else 'the other way'}. "
        f"At the minimum the first-order scores are {at_min['-g w'].abs().max():.1e} at most, "
        f"while the real increases are {at_min.loc['w1', 'real']:.2f} and "
        f"{at_min.loc['w2', 'real']:.2f}: there only the curvature (the next notebook) tells "
        f"the weights apart."
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
correlations = [np.corrcoef(np.array(rows).T)[0, 1] for rows in (weight_rows, unit_rows)]
display(
    Markdown(
        f"The first-order prediction correlates with the real change at "
        f"{correlations[0]:.2f} for single weights and {correlations[1]:.2f} for whole units: "
        f"the small removals (single weights) are predicted "
        f"{'better' if correlations[0] > correlations[1] else 'no better'} than the large ones "
        f"(whole units), where the curvature of the loss has more room to act."
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
kept = {}
for method, options in [("magnitude", {}), ("movement", {"tracker": trackers["movement"]})]:
    pruned = sl.prune(copy.deepcopy(model), method, 0.9, targets=["fc2.weight"], **options)
    kept[method] = masks.get_mask(pruned, "fc2.weight").flatten().bool().numpy()
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True, layout="constrained")
for ax, method in zip(axes, kept, strict=True):
    ax.scatter(w_init[~kept[method]], w_final[~kept[method]], s=2, color="0.75", label="pruned")
    ax.scatter(w_init[kept[method]], w_final[kept[method]], s=4, color="C3", label="kept")
    ax.set_xlabel("weight at initialisation")
    ax.set_ylabel("weight after training")
    ax.set_title(f"{method}: 10% of fc2 kept")
    ax.legend(markerscale=3)
plt.show()
overlap = (kept["magnitude"] & kept["movement"]).sum() / kept["magnitude"].sum()
display(
    Markdown(f"The two criteria keep {overlap:.0%} of the same weights of `fc2` at 90% sparsity.")
)

# %% [markdown]
# ## Comparison on LeNet-300-100 and LeNet-5
#
# As in the previous notebook: each criterion prunes a copy of the trained network once,
# and we measure validation accuracy right after pruning and after fine-tuning.  Single
# weights are pruned with a global budget; units (`skeletonization`, `taylor`) with the
# same share of the hidden units of every layer, `random` and `group_norm` as references.

# %%
UNITS = {
    "lenet300": ["fc1.weight", "fc2.weight"],
    "lenet5": ["conv1.weight", "fc1.weight", "fc2.weight"],
}
WEIGHT_CRITERIA = ["magnitude", "random", "snip", "taylor_weight", "karnin", "movement"]
UNIT_CRITERIA = ["random units", "group_norm", "skeletonization", "taylor"]


def one_shot(model_name, criterion, sparsity, seed):
    """Prune a copy of the dense model once, then fine-tune it; accuracies at both stages."""
    t, dense, tracked, accuracy = dense_for(model_name, seed)
    method, options = criterion, {}
    if criterion in tracked:
        options["tracker"] = tracked[criterion]
    if criterion in UNIT_CRITERIA:
        method = "random" if criterion == "random units" else criterion
        options.update(pattern="channel", budget="uniform", targets=UNITS[model_name])
    result = recipes.prune_and_finetune(
        copy.deepcopy(dense),
        t,
        method,
        sparsity,
        finetune_epochs=FINETUNE_EPOCHS,
        data=first_batches(t.loaders()[0], CALIBRATION_BATCHES),
        **options,
    )
    return {**result, "dense_val_accuracy": accuracy}


grid = {"model_name": MODELS, "criterion": WEIGHT_CRITERIA + UNIT_CRITERIA, "sparsity": SPARSITIES}
results = sl.experiments.sweep(one_shot, grid, seeds=SEEDS)


def compare(table, criteria, columns, title, xlabel):
    """Mean accuracy against sparsity with confidence bars, one row of panels per model."""
    fig, axes = plt.subplots(
        len(MODELS),
        len(columns),
        figsize=(11, 3.4 * len(MODELS)),
        squeeze=False,
        layout="constrained",
    )
    for row, model_name in zip(axes, MODELS, strict=True):
        part = table[(table.model_name == model_name) & table.criterion.isin(criteria)]
        baseline = part["dense_val_accuracy"].mean() if "dense_val_accuracy" in part else None
        for ax, (column, stage) in zip(row, columns.items(), strict=True):
            sl.viz.sparsity_curve(
                part, x="sparsity", y=column, hue="criterion", ax=ax, baseline=baseline
            )
            ax.get_legend().remove()  # one legend for the figure, beside it
            ax.set_title(f"{model_name}: {stage}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("validation accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    labels = [label.replace("criterion = ", "").replace("baseline", "dense") for label in labels]
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle(title)
    plt.show()


STAGES = {
    "pruned_accuracy": "one-shot, no fine-tuning",
    "val_accuracy": f"after {FINETUNE_EPOCHS} epoch(s) of fine-tuning",
}
compare(results, WEIGHT_CRITERIA, STAGES, "First-order criteria on weights", "sparsity")

# %%
compare(results, UNIT_CRITERIA, STAGES, "First-order criteria on units", "share of units removed")

# %%
summary = sl.experiments.summarize(
    results, ["model_name", "criterion", "sparsity"], "pruned_accuracy"
)
table = summary.pivot_table(index=["model_name", "criterion"], columns="sparsity", values="mean")
top = max(SPARSITIES)
best = summary[(summary.sparsity == top) & summary.criterion.isin(WEIGHT_CRITERIA)]
best = best.loc[best.groupby("model_name")["mean"].idxmax()].set_index("model_name")
display(
    Markdown(
        " ".join(
            f"On {m} at {top:.0%} sparsity without fine-tuning, the best criterion on weights "
            f"is `{best.loc[m, 'criterion']}` ({best.loc[m, 'mean']:.1%})."
            for m in MODELS
        )
    )
)
table.round(3)

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
# A small network at initialisation, 4-16-16-4-2, pruned to 95% sparsity before training;
# every kept connection is drawn.  A standard initialisation makes the weights of wide
# layers small, so a global magnitude threshold judges layers by their width; SynFlow
# scores each weight by the paths from input to output that run through it.  Under each
# network: how many input-output paths are left.

# %%
widths = [4, 16, 16, 4, 2]
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
    pruned = sl.prune(copy.deepcopy(toy_init), method, 0.95, data=toy_data, **options)
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
        "Pruned at 95% before training, "
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
# leaves in each layer of LeNet-300-100 at 99% sparsity:

# %%
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
    pruned = sl.prune(copy.deepcopy(init), method, 0.99, data=calibration, **options)
    layer_density[method] = {n: float(m.mean()) for n, m in masks.masks(pruned).items()}
layer_density = pd.DataFrame(layer_density)
ax = layer_density.T.plot.bar(rot=0, figsize=(8, 3.5), logy=True)
ax.set_ylabel("density of the layer (log)")
ax.set_title("LeNet-300-100 pruned at initialisation to 99% sparsity")
plt.show()
empty = [m for m in layer_density if (layer_density[m] == 0).any()]
display(
    Markdown(f"Methods that empty a layer at 99%: {', '.join(f'`{m}`' for m in empty) or 'none'}.")
)

# %% [markdown]
# ### Training the pruned networks from scratch
#
# Each method prunes the *initial* network; the sparse network then trains from scratch
# with its mask fixed.  The check of Frankle et al. (2021): shuffle each layer's mask at
# random (same number of weights per layer, other positions) and train again.  If accuracy
# does not drop, the method found a good sparsity per layer rather than good individual
# weights.  For reference, the dashed line is magnitude pruning of the *trained* network
# (from the comparison above, after fine-tuning).
#
# One precaution first.  A unit that keeps $k$ of its $n$ inputs starts with a
# pre-activation $n / k$ times smaller in variance than in the dense network; the LeNets
# have no batch normalisation to undo this, so through a few sparse layers the signal
# fades and a scattered mask trains badly whatever its choice of weights.  We therefore
# rescale each unit's initial weights by $\sqrt{n / k}$ (`at_init.rescale_fan_in`, after
# Evci et al. 2022), for every method alike.  What happens without it, for SNIP's mask at
# 90% sparsity:


# %%
def train_sparse(t, net, seed):
    train, val, _ = t.loaders()
    sl.train.fit(net, train, epochs=PAI_EPOCHS, lr=0.05, lr_schedule="cosine", seed=seed)
    return sl.train.evaluate(net, val)["accuracy"]


found_masks = {}  # pruning once serves both the original and the shuffled run


def before_training(model_name, criterion, sparsity, shuffled, seed, rescale=True):
    """Prune the initial network, optionally shuffle each layer's mask, then train it."""
    t = dense_for(model_name, seed)[0]
    start = t.build()
    key = (model_name, criterion, sparsity, seed)
    if key not in found_masks:
        calibration_batches = first_batches(t.loaders()[0], CALIBRATION_BATCHES)
        pruned = sl.prune(
            copy.deepcopy(start),
            criterion,
            sparsity,
            data=calibration_batches,
            seed=seed,
            **PAI[criterion],
        )
        found_masks[key] = masks.masks(pruned)
    found = found_masks[key]
    if shuffled:
        found = at_init.shuffle_masks(found, seed=seed)
    net = copy.deepcopy(start)
    for name, mask in found.items():
        masks.attach(net, name, mask)
    if rescale:
        at_init.rescale_fan_in(net)
    return {"val_accuracy": train_sparse(t, net, seed)}


demo = PAI_MODELS[-1]
demo_table = pd.DataFrame(
    [
        {
            "initial weights": "rescaled" if rescale else "as drawn",
            "mask": "shuffled" if shuffled else "as found",
            "accuracy": before_training(demo, "snip", 0.9, shuffled, SEED, rescale)["val_accuracy"],
        }
        for rescale in (False, True)
        for shuffled in (False, True)
    ]
)
print(f"{demo}, SNIP at 90% sparsity, validation accuracy after training:")
demo_table.pivot(index="initial weights", columns="mask", values="accuracy").round(3)

# %% [markdown]
# Now every method, every sparsity and every seed, with rescaled initial weights:

# %%
pai = sl.experiments.sweep(
    before_training,
    {
        "model_name": PAI_MODELS,
        "criterion": list(PAI),
        "sparsity": SPARSITIES,
        "shuffled": [False, True],
    },
    seeds=SEEDS,
)
pai["criterion"] = pai["criterion"] + np.where(pai["shuffled"], " (shuffled)", "")

# %%
fig, axes = plt.subplots(1, len(PAI_MODELS), figsize=(11, 4), squeeze=False, layout="constrained")
reference = results[results.criterion == "magnitude"]
for ax, model_name in zip(axes[0], PAI_MODELS, strict=True):
    part = pai[(pai.model_name == model_name) & ~pai.shuffled]
    sl.viz.sparsity_curve(part, x="sparsity", y="val_accuracy", hue="criterion", ax=ax)
    after = reference[reference.model_name == model_name].groupby("sparsity")["val_accuracy"]
    ax.plot(after.mean().index, after.mean().values, "k--", label="magnitude after training")
    ax.get_legend().remove()
    ax.set_title(f"{model_name}: pruned at initialisation, trained {PAI_EPOCHS} epoch(s)")
    ax.set_ylabel("validation accuracy")
handles, labels = axes[0, 0].get_legend_handles_labels()
fig.legend(
    handles,
    [label.replace("criterion = ", "") for label in labels],
    loc="outside right center",
    fontsize=8,
)
plt.show()

# %%
shuffle_effect = pai.copy()
shuffle_effect["base"] = shuffle_effect["criterion"].str.replace(" (shuffled)", "", regex=False)
effect = shuffle_effect.pivot_table(
    index=["model_name", "base", "sparsity", "seed"], columns="shuffled", values="val_accuracy"
)
effect = (effect[True] - effect[False]).rename("shuffled - original").reset_index()
effect = effect.rename(columns={"base": "criterion"})
fig, axes = plt.subplots(1, len(PAI_MODELS), figsize=(11, 3.6), squeeze=False, layout="constrained")
for ax, model_name in zip(axes[0], PAI_MODELS, strict=True):
    part = effect[effect.model_name == model_name]
    sl.viz.sparsity_curve(part, x="sparsity", y="shuffled - original", hue="criterion", ax=ax)
    ax.axhline(0, color="k", linewidth=0.8)
    ax.get_legend().remove()
    ax.set_title(f"{model_name}: accuracy change when masks are shuffled")
handles, labels = axes[0, 0].get_legend_handles_labels()
fig.legend(
    handles,
    [label.replace("criterion = ", "") for label in labels],
    loc="outside right center",
    fontsize=8,
)
plt.show()
mean_effect = effect.groupby("criterion")["shuffled - original"].mean()
display(
    Markdown(
        "Averaged over models, sparsities and seeds, shuffling the masks changes the accuracy "
        "by " + ", ".join(f"{100 * v:+.1f} points for `{k}`" for k, v in mean_effect.items()) + "."
    )
)

# %% [markdown]
# ## What the measurements say
#
# The claims of this notebook, each read from the cells above:

# %%
as_drawn = demo_table[demo_table["initial weights"] == "as drawn"].set_index("mask")["accuracy"]
rescaled = demo_table[demo_table["initial weights"] == "rescaled"].set_index("mask")["accuracy"]
worst_shuffle = mean_effect.abs().max()
display(
    Markdown(
        "\n".join(
            [
                f"- The first-order estimate correlates with the real loss change at "
                f"{correlations[0]:.2f} for single weights of `fc2` and {correlations[1]:.2f} "
                f"for whole units of `fc1`.",
                f"- Magnitude and movement keep {overlap:.0%} of the same weights of `fc2` "
                f"at 90% sparsity.",
                f"- At 99% sparsity before training, the methods that empty a layer of "
                f"LeNet-300-100 are: {', '.join(f'`{m}`' for m in empty) or 'none'}; SynFlow "
                f"{'empties one' if 'synflow' in empty else 'empties none'}.",
                f"- Shuffling the masks found at initialisation changes the accuracy by at "
                f"most {100 * worst_shuffle:.1f} points on average for any method "
                f"(`{mean_effect.abs().idxmax()}`).",
                f"- Without rescaling, SNIP's mask at 90% trains to {as_drawn['as found']:.1%} "
                f"and its shuffled version to {as_drawn['shuffled']:.1%}; with rescaled "
                f"initial weights, {rescaled['as found']:.1%} and {rescaled['shuffled']:.1%}.",
            ]
        )
    )
)

# %% [markdown]
# ## Summary
#
# - First-order criteria score a weight by $g\,w$ (SNIP, Taylor) and a unit by the
#   derivative of the loss with respect to a gate on it (skeletonization, Taylor on feature
#   maps).  The toy picture shows why the estimate says nothing at a minimum, where the
#   gradient vanishes; the scatter plots measure how well it predicts real removals.
# - Karnin's sensitivity and movement pruning accumulate their scores while the network
#   trains, through the training loop's callbacks (`KarninScores`, `MovementScores`).
#   Movement keeps weights that moved away from zero, whatever their final size.
# - Pruning at initialisation must judge weights before they learn.  SynFlow scores paths
#   without data, to avoid layer collapse; GraSP and SNIP use one batch; FORCE iterates
#   SNIP.  The measurements above say which methods emptied a layer here.
# - Frankle et al. (2021) found that shuffling the masks found at initialisation within
#   each layer changes little, so that these methods mostly choose how sparse each layer
#   should be; the shuffling plot repeats their check on our two networks, with the initial
#   weights rescaled to each unit's sparse fan-in (the LeNets have no batch normalisation).
#
# ## Exercises
#
# 1. Train with `SoftMovementScores(lam=...)` among the callbacks and prune with
#    `soft_movement` and a threshold.  How does the sparsity depend on `lam`?
# 2. Prune LeNet-300-100 at 99.9% at initialisation with `magnitude`, `snip` and `synflow`.
#    Which layers are left empty, and what accuracy can training reach?
# 3. Compute `taylor` with `normalize=False` and prune units with the `global` budget.  Which
#    layer loses the most units, and why does the layer-wise normalisation matter?
# 4. Give `force` one iteration and compare its masks with `snip`'s.  Then raise the number
#    of iterations: at which sparsity does the difference start to matter?

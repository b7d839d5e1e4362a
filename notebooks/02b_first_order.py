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
# # How to prune I c: first-order criteria
#
# **What you will learn:** how the gradient of the loss tells which weights and units
# matter, how well that first-order estimate predicts what removing them really does, and
# how scores can be accumulated while training.
#
# This follows section 3.4 (first-order selection) of the survey.  Data-free and
# data-driven criteria are in [02a](02a_data_free_and_data_driven.ipynb), compared in
# [02h](02h_criteria_compared.ipynb); the criteria of this chapter are compared on
# LeNet-300-100 and LeNet-5, and against the literature, in
# [02l](02l_first_order_compared.ipynb).  Pruning *before* training, which scores the
# weights of a network that has not learnt anything yet (SNIP, GraSP, SynFlow, FORCE), is
# in [02f](02f_pruning_at_initialisation.ipynb), and the sanity check that asks what such
# methods really find in [02k](02k_training_from_scratch.ipynb).

# %%
import copy
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats
import torch
import torch.nn.functional as F

import sparsity_lab as sl
from sparsity_lab import masks, recipes
from sparsity_lab.criteria.base import Context
from sparsity_lab.criteria.first_order import KarninScores, MovementScores, weight_gradients
from sparsity_lab.patterns import Channel

# %% tags=["parameters"]
SMOKE = False
SEED = 0
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
N_PROBES = 300
CALIBRATION_BATCHES = 8

# %%
if SMOKE:  # a quick pass through every cell, for CI
    EPOCHS = 2
    N_TRAIN = 600
    N_EVAL = 200
    N_PROBES = 60
    CALIBRATION_BATCHES = 2
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's
CHECKED = EPOCHS is None and not DATA  # a documented accuracy holds for the full recipe only

# %% [markdown]
# ## The dense model, with scores tracked during training
#
# Two criteria below accumulate their scores while the network trains, so the dense
# LeNet-300-100 cannot come from the checkpoint cache of `recipes.dense`:
# `recipes.dense_with_trackers` trains it with two trackers among the training loop's
# callbacks, `KarninScores` and `MovementScores`, and with every hyper-parameter of the
# setting's recipe (`recipes.recipe_for`).  The trackers only read the weights and
# gradients; the cell checks that the model is the one `recipes.dense` returns.

# %%
TRACKERS = {"karnin": KarninScores(), "movement": MovementScores()}
task, model, trackers, dense_info = recipes.dense_with_trackers(
    "lenet300", "mnist", SEED, TRACKERS, epochs=EPOCHS, **DATA
)
_, cached, _ = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
weights = zip(model.state_dict().values(), cached.state_dict().values(), strict=True)
gap = max(float((a - b).abs().max()) for a, b in weights)
calibration = list(itertools.islice(task.loaders()[0], CALIBRATION_BATCHES))
documented = recipes.recipe_for("lenet300", "mnist").expected_test_accuracy
recipe_note = (
    f" (its recipe is documented at {documented:.0%})"
    if CHECKED
    else " (a shortened recipe: its documented accuracy is not expected)"
)
flagged = f", flagged: {dense_info['flags']}" if dense_info["flags"] else ""
sl.nb.md(
    f"LeNet-300-100 (seed {SEED}), {dense_info['recipe'].epochs} epoch(s) on "
    f"{len(task.bundle.train)} images: test accuracy **{dense_info['test_accuracy']:.2%}**"
    f"{recipe_note}{flagged}. Its weights differ from those of `recipes.dense` by at most "
    f"{gap:.1e}: {'the same model' if gap == 0 else 'not the same model'}."
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
#   the weights that move away from zero.  It was designed for fine-tuning pretrained
#   language models (BERT), where transfer moves weights away from zero or towards it and
#   the pretrained magnitudes say little about the new task; here the scores accumulate
#   while the LeNets train from scratch on MNIST, and the trained network is pruned once.
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


def point(w):
    return "(" + ", ".join(f"{v:.2g}" for v in w.tolist()) + ")"


AWAY = torch.tensor([1.2, 1.4])  # a point away from the minimum, set by hand
w_star = torch.linalg.lstsq(inputs, targets[:, None]).solution.flatten()
grid = torch.linspace(-0.5, 3.0, 120)
w1_grid, w2_grid = torch.meshgrid(grid, grid, indexing="xy")
every_w = torch.stack([w1_grid.flatten(), w2_grid.flatten()])  # one column per grid point
surface = ((inputs @ every_w - targets[:, None]) ** 2).mean(0).reshape(w1_grid.shape)
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, layout="constrained")
toy_rows = []
POINTS = {"away from the minimum": AWAY, "at the minimum": w_star}
for ax, (label, w) in zip(axes, POINTS.items(), strict=True):
    linear = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w[None])
    g = weight_gradients(linear, ["weight"], (inputs, targets[:, None]), F.mse_loss)["weight"]
    ends = [torch.where(torch.arange(2) == k, 0.0, w) for k in range(2)]  # remove w1, w2
    texts = []
    for k, end in enumerate(ends):
        real = float(toy_loss(end) - toy_loss(w))
        predicted, size = float(-g[0, k] * w[k]), float(w[k].abs())
        toy_rows.append(
            {"point": label, "weight": f"w{k + 1}", "real": real, "-g w": predicted, "|w|": size}
        )
        texts.append(f"remove w{k + 1}\nreal dL {real:.2f}\n-g w {predicted:.2f}\n|w| {size:.2f}")
    sl.illustrations.contour_arrows(grid, grid, surface, w, ends, texts, ax=ax, colors=["C3", "C0"])
    ax.set(xlabel="w1", ylabel="w2", title=f"{label}, w = {point(w)}", aspect="equal")
plt.show()
toy = pd.DataFrame(toy_rows).set_index(["point", "weight"])
toy["|g w| (snip)"] = toy["-g w"].abs()
away, at_min = toy.loc["away from the minimum"], toy.loc["at the minimum"]


def order(table, score):
    """Whether ``score`` ranks first the weight whose removal costs more, as the loss does."""
    return "the same way" if table["real"].idxmax() == table[score].idxmax() else "the other way"


sl.nb.md(
    f"At a point away from the minimum (w = {point(AWAY)}), removing `w1` changes the "
    f"loss by {away.loc['w1', 'real']:+.2f} and `w2` by {away.loc['w2', 'real']:+.2f}.  "
    f"The signed estimate $-g\\,w$ predicts {away.loc['w1', '-g w']:+.2f} and "
    f"{away.loc['w2', '-g w']:+.2f} and ranks them {order(away, '-g w')}; SNIP's "
    f"$\\lvert g\\,w\\rvert$ ranks them {order(away, '|g w| (snip)')}, and magnitude "
    f"{order(away, '|w|')}. At the minimum the first-order scores are "
    f"{at_min['-g w'].abs().max():.1e} at most, while the real increases are "
    f"{at_min.loc['w1', 'real']:.2f} and {at_min.loc['w2', 'real']:.2f}: no first-order "
    f"score separates the weights there; magnitude ranks them {order(at_min, '|w|')}, and "
    "the curvature ([02c](02c_second_order.ipynb)) measures the real change."
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

labels = {"xlabel": "first-order prediction of the loss change", "ylabel": "real loss change"}
titles = [
    f"{N_PROBES} weights of fc2: predicted -g w",
    f"{N_PROBES} units of fc1: relevance -dL/d(gate)",
]
fig, axes = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
for ax, rows, title in zip(axes, (weight_rows, unit_rows), titles, strict=True):
    sl.viz.prediction_scatter(*np.array(rows).T, ax=ax, title=title, **labels)
# one unit's real change is ten times the others': on linear axes the rest would sit in a
# corner, so the units' axes are logarithmic away from zero (linear within 1e-6 of it)
axes[1].set_xscale("symlog", linthresh=1e-6)
axes[1].set_yscale("symlog", linthresh=1e-6)
axes[1].set_title(f"{titles[1]} (symlog axes)")
plt.show()
pearson = [np.corrcoef(np.array(rows).T)[0, 1] for rows in (weight_rows, unit_rows)]
spearman = [scipy.stats.spearmanr(*np.array(rows).T).statistic for rows in (weight_rows, unit_rows)]
unit_predicted, unit_real = np.array(unit_rows).T
largest = int(np.argmax(np.abs(unit_real - unit_predicted)))
without = np.delete(np.arange(len(unit_rows)), largest)
pearson_without = np.corrcoef(unit_predicted[without], unit_real[without])[0, 1]
under = float(np.mean(unit_real > unit_predicted))
sl.nb.md(
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
    title = f"{method}: {1 - MOVEMENT_SPARSITY:.0%} of fc2 kept"
    sl.viz.kept_scatter(w_init, w_final, kept[method], ax=ax, title=title)
plt.show()
overlap = (kept["magnitude"] & kept["movement"]).sum() / kept["magnitude"].sum()
sl.nb.md(
    f"The two criteria keep {overlap:.0%} of the same weights of `fc2` at "
    f"{MOVEMENT_SPARSITY:.0%} sparsity."
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
# - How the criteria compare after pruning and fine-tuning, on LeNet-300-100 and LeNet-5,
#   is measured in [02l](02l_first_order_compared.ipynb).
#
# What this chapter measured:

# %%
sl.nb.md(
    f"- The first-order estimate correlates with the real loss change at "
    f"{pearson[0]:.2f} for single weights of `fc2` and {pearson[1]:.2f} for whole "
    f"units of `fc1` (rank correlations {spearman[0]:.2f} and {spearman[1]:.2f}).\n"
    f"- Magnitude and movement keep {overlap:.0%} of the same weights of `fc2` at "
    f"{MOVEMENT_SPARSITY:.0%} sparsity."
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** Soft movement learns a score per weight while the network trains.  Train
# LeNet-300-100 again as the dense model above (`recipes.dense_with_trackers`, seed `SEED`,
# `epochs=EPOCHS`, `**DATA`), with `SoftMovementScores(lam=1e-6)` as the only tracker, then
# prune it with `sl.prune(net, "soft_movement", None, tracker=..., threshold=0.0)`: a weight
# stays where its score ends above 0.  What sparsity does that give?  Two decimals.  How does the
# sparsity depend on `lam`?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
from sparsity_lab.criteria.first_order import SoftMovementScores

soft_runs = {}  # lam -> sparsity: one training serves every check


def train_as_dense(callbacks):
    """LeNet-300-100 of seed SEED, trained as the dense model above, with ``callbacks``."""
    trackers = dict(enumerate(callbacks))
    return recipes.dense_with_trackers("lenet300", "mnist", SEED, trackers, epochs=EPOCHS, **DATA)[
        1
    ]


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
# **2.** The toy's loss is a quadratic function of the weights, so the first-order estimate
# leaves out exactly one term: removing $w_k$ changes the loss by
# $-g_k w_k + \frac12 H_{kk} w_k^2$, with $H$ the Hessian of the loss.  At the point away
# from the minimum (`AWAY`), what is the second-order term $\frac12 H_{11} w_1^2$ of
# removing `w1`?  Two decimals.  Which weight has the larger second-order term, and why
# does that turn the ranking of $-g\,w$ around?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    row = toy.loc[("away from the minimum", "w1")]  # the real change less the estimate
    hint = "The loss is the mean of (x . w - t)^2: its Hessian is 2 X^T X / N, X being `inputs`."
    sl.nb.check(2, answer, row["real"] - row["-g w"], hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a loss change, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The Hessian by automatic differentiation, then the second-order term of each
# removal beside what the first-order estimate missed in the table (real minus -g w): the
# two agree.  H_kk is twice the mean square of input k, much larger for the second input,
# which varies more; so removing w2 costs far more than its slope predicts, and more than
# removing w1.  The curvature criteria of [02c](02c_second_order.ipynb) start from this term.
hessian = torch.autograd.functional.hessian(toy_loss, AWAY)
second_order = 0.5 * hessian.diagonal() * AWAY**2
missed = torch.tensor((away["real"] - away["-g w"]).values)
terms = {"H_kk": hessian.diagonal(), "1/2 H_kk w_k^2": second_order, "real minus -g w": missed}
print("; ".join(f"{name}: {point(value)}" for name, value in terms.items()))
solution_2 = round(float(second_order[0]), 2)
check_2(solution_2, solution=True)

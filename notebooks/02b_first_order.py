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
# # How to prune I (continued): first-order criteria
#
# **What you will learn:** how the gradient of the loss tells which weights and units
# matter, how well that first-order estimate predicts what removing them really does, and
# how scores can be accumulated while training.
#
# This follows section 3.4 (first-order selection) of the survey.  Data-free and
# data-driven criteria are in [02a](02a_data_free_and_data_driven.ipynb), compared in
# [02h](02h_criteria_compared.ipynb).  Pruning *before* training, which scores the weights
# of a network that has not learnt anything yet (SNIP, GraSP, SynFlow, FORCE), and the
# sanity check that asks what such methods really find, are in
# [02f](02f_pruning_at_initialisation.ipynb).

# %%
import copy

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats
import torch
import torch.nn.functional as F
from IPython.display import display

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
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
FINETUNE_EPOCHS = 2
N_PROBES = 300
CALIBRATION_BATCHES = 8

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
    MODELS = ["lenet300"]  # LeNet-5 runs the same code; CI checks every cell once
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's
CHECKED = EPOCHS is None and not DATA  # a documented accuracy holds for the full recipe only

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
        accuracy = sl.train.evaluate(net, test)["accuracy"]
        expected = recipe.expected_test_accuracy if CHECKED else None
        flags = sl.flags.check(dense_accuracy=accuracy, expected_dense_accuracy=expected)
        scores = {
            "epochs": training["epochs"],
            "n_train": len(t.bundle.train),
            "parameters": sum(p.numel() for p in net.parameters()),
            "val_accuracy": sl.train.evaluate(net, val)["accuracy"],
            "test_accuracy": accuracy,
            "flags": sl.flags.join(flags),
        }
        dense_models[key] = (t, net, trackers, scores)
    t, net, trackers, scores = dense_models[key]
    return t, copy.deepcopy(net), trackers, scores


dense_runs = pd.DataFrame(
    [{"model_name": m, "seed": s, **tracked_dense(m, s)[3]} for m in MODELS for s in SEEDS]
)
sl.nb.show_dense(dense_runs, "mnist")  # test accuracy beside the recipe's, and flags
DENSE = dense_runs.groupby("model_name").first()  # epochs, images and size of each model


def dense_caveat(m, pruned=False):
    """The dense baselines of ``m`` that missed their recipe (flagged), in words ("" if
    none); ``pruned`` adds that every pruned model of those seeds starts from them."""
    seeds = dense_runs[(dense_runs.model_name == m) & (dense_runs["flags"] != "")].seed.tolist()
    one = len(seeds) == 1
    if one:
        text = f"The dense {m} of seed {seeds[0]} is below its recipe (flagged)"
    else:
        listed = ", ".join(str(s) for s in seeds)
        text = f"The dense {m} models of seeds {listed} are below their recipe (flagged)"
    if pruned:
        them = "that seed starts from it" if one else "those seeds starts from them"
        text += f", and every pruned {m} of {them}"
    return text if seeds else ""


task, model, trackers, dense_scores = tracked_dense("lenet300", SEED)
_, cached, _ = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
weights = zip(model.state_dict().values(), cached.state_dict().values(), strict=True)
gap = max(float((a - b).abs().max()) for a, b in weights)
train_loader, val_loader, _ = task.loaders()
calibration = first_batches(train_loader, CALIBRATION_BATCHES)
documented = recipes.recipe_for("lenet300", "mnist").expected_test_accuracy
recipe_note = (
    f" (its recipe is documented at {documented:.0%})"
    if CHECKED
    else " (a shortened recipe: its documented accuracy is not expected)"
)
sl.nb.md(
    f"LeNet-300-100 (seed {SEED}), {dense_scores['epochs']} epoch(s) on "
    f"{dense_scores['n_train']} images: test accuracy **{dense_scores['test_accuracy']:.2%}**"
    f"{recipe_note}. Its weights differ from those of `recipes.dense` by at most {gap:.1e}: "
    f"{'the same model' if gap == 0 else 'not the same model'}."
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
FC = ["fc1.weight", "fc2.weight"]
UNITS = {"lenet300": FC, "lenet5": ["conv1.weight", *FC]}  # the layers whose units are pruned
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
    data = first_batches(t.loaders()[0], CALIBRATION_BATCHES)
    result = recipes.prune_and_finetune(
        net, t, method, sparsity, finetune_epochs=FINETUNE_EPOCHS, data=data, **options
    )
    return {**result, **dense_scores}


grid = {"model_name": MODELS, "criterion": WEIGHT_CRITERIA + UNIT_CRITERIA, "sparsity": SPARSITIES}
results = sl.experiments.sweep(one_shot, grid, seeds=SEEDS)
flops = results.groupby("model_name")["finetune_flops"].agg(["min", "max"])
sl.nb.md(
    f"Fine-tuning budget of every run: {FINETUNE_EPOCHS} epoch(s) with the masks fixed, "
    + "; ".join(f"{sl.words.span(r['min'], r['max'])} FLOPs on {m}" for m, r in flops.iterrows())
    + " (counted on the nonzero weights: the sparser the network, the cheaper)."
)
STAGES = {
    "pruned_accuracy": "one-shot, no fine-tuning",
    "val_accuracy": f"after {FINETUNE_EPOCHS} epoch(s) of fine-tuning",
}
# one row of panels per model, the dense accuracy dashed; the fine-tuned panels' y axis
# fits the points of all but the random baseline, whose differences the text compares
PANELS = {"row": "model_name", "hue": "criterion", "reference": "dense_val_accuracy"}
PANELS.update(ylabel="validation accuracy", stages=STAGES)
FIT = {"val_accuracy": [RANDOM_WEIGHTS]}
weight_runs = results[results.criterion.isin(WEIGHT_CRITERIA)]
sl.viz.stage_grid(
    weight_runs, title="First-order criteria on weights", xlabel="sparsity", fit=FIT, **PANELS
)
plt.show()

# %%
unit_runs = results[results.criterion.isin(UNIT_CRITERIA)]
sl.viz.stage_grid(
    unit_runs, title="First-order criteria on units", xlabel="share of units removed", **PANELS
)
plt.show()

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
FINE_TUNED = REPORTED["test_accuracy"]
paired = sl.stats.paired_table(results, "criterion", PAIRS, REPORTED, by=["model_name", "sparsity"])
columns = ["comparison", "stage", "model_name", "sparsity", "mean_diff", "ci_low", "ci_high"]
with pd.option_context("display.max_rows", None):
    display(paired[[*columns, "verdict"]].round(4))
RUNS = ["model_name", "criterion", "sparsity"]
sl.nb.show_flags(sl.flags.table(results, RUNS, "pruned_flags"), what="right after pruning (val)")
sl.nb.show_flags(sl.flags.table(results, RUNS), what="after fine-tuning (test)")
top = max(SPARSITIES)
PAIRED = paired.set_index(["comparison", "stage", "model_name", "sparsity"]).sort_index()


def described(a, b, stage, m):
    """The paired difference ``a`` minus ``b`` at ``stage`` on ``m`` at ``top``, in words."""
    return sl.stats.describe(PAIRED.loc[(f"{a} - {b}", stage, m, top)])


lines = []
for m in MODELS:
    for a, b in PAIRS:
        stages = "; ".join(f"{stage}, {described(a, b, stage, m)}" for stage in REPORTED.values())
        lines.append(f"- {m} at {top:.0%} sparsity, `{a}` minus `{b}`: {stages}.")
    if dense_caveat(m):
        lines.append(f"- {dense_caveat(m, pruned=True)}.")
sl.nb.md("\n".join(lines))

# %% [markdown]
# ## Against the literature
#
# The claim this chapter can test, judged from paired test accuracies (`sl.claims`):
# magnitude after training against its random baseline (Blalock et al. 2020).  The claims
# about pruning at initialisation (shuffled masks, SNIP against its random baseline) are
# judged in [02f](02f_pruning_at_initialisation.ipynb).


# %%
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


han = min(SPARSITIES, key=lambda s: abs(s - 0.92))
magnitude_verdicts = [
    sl.claims.judge(
        "magnitude_beats_random_after_training",
        PAIRED.loc[(f"magnitude - {RANDOM_WEIGHTS}", FINE_TUNED, m, han)],
        setting=f"{m} at {han:.0%}, fine-tuned {FINETUNE_EPOCHS} epoch(s), test",
        reason=f"The dense {m} has {DENSE.loc[m, 'parameters']:,} parameters, trained "
        f"{DENSE.loc[m, 'epochs']} epoch(s) on {DENSE.loc[m, 'n_train']} MNIST images.",
        measured=dense_note(m, han),
    )
    for m in MODELS
]
display(sl.claims.table(magnitude_verdicts))
sl.nb.md(sl.claims.report(magnitude_verdicts))

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
#
# What this chapter measured:

# %%
lines = [
    f"- The first-order estimate correlates with the real loss change at "
    f"{pearson[0]:.2f} for single weights of `fc2` and {pearson[1]:.2f} for whole "
    f"units of `fc1` (rank correlations {spearman[0]:.2f} and {spearman[1]:.2f}).",
    f"- Magnitude and movement keep {overlap:.0%} of the same weights of `fc2` at "
    f"{MOVEMENT_SPARSITY:.0%} sparsity.",
]
for m in MODELS:
    against = [(a, b) for a, b in PAIRS if b == "magnitude"]
    text = "; ".join(f"`{a}` minus `{b}` {described(a, b, FINE_TUNED, m)}" for a, b in against)
    caveat = f" {dense_caveat(m)}." if dense_caveat(m) else ""
    lines.append(
        f"- {m} at {top:.0%} sparsity, after {FINETUNE_EPOCHS} fine-tuning epoch(s) (test): "
        f"{text}.{caveat}"
    )
for m, v in zip(MODELS, magnitude_verdicts, strict=True):
    note = f". {dense_note(m, han)}" if dense_note(m, han) else "."
    lines.append(f"- Against the literature: {v.claim.key} is **{v.status}** ({v.setting}){note}")
sl.nb.md("\n".join(lines))

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
# **2.** Score the units of `fc1` and `fc2` of the trained LeNet-300-100 with `taylor` and
# `normalize=False`, and remove three quarters of their weights as whole units with the
# global budget: `sl.prune(copy.deepcopy(model), "taylor", 0.75, pattern="channel",
# budget="global", targets=UNITS["lenet300"], data=calibration, normalize=False)`.  What
# share of the 100 units of `fc2` does it remove?  Two decimals (one unit either way is
# accepted).  Compare with the default `normalize=True`: why does the layer-wise
# normalisation matter?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
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
    sl.nb.check(2, answer, share, hint=hint, tolerance=0.01, solution=solution)


# %%
answer_2 = None  # a share of units, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Taylor's score of a unit is the mean over examples of |a dl/da|, the loss
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
solution_2 = round(fc2_share(theta), 2)
print(
    f"mean score: fc1 {theta['fc1'].mean():.2e}, fc2 {theta['fc2'].mean():.2e}; share of "
    f"fc2 removed: {solution_2:.2f} without normalisation, {fc2_share(normalised):.2f} with it"
)
check_2(solution_2, solution=True)

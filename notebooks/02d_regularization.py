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
# # How to prune III: regularisation and variational sparsification
#
# **What you will learn:** how a term in the loss (L1, Hoyer, group lasso, L0 gates), a
# learned threshold (STR, LTP) or a noise model (variational dropout and its structured
# cousins) makes a network sparse *while it trains*, how each turns its trained state into
# a mask, and what budget per layer it learns.
#
# This follows sections 3.6 (regularisation) and 3.7 (variational methods) of the survey.
# Every method here is a registered *regularizer*:
# `sl.registry.get("l1")(sparsity=0.9).fit(model, ...)` trains and leaves an ordinary
# masked model behind.  Chapter [02j](02j_regularizers_compared.ipynb) continues it: it
# compares the regularizers with gradual magnitude pruning in accuracy at equal sparsity
# and in training cost, and judges the claims that magnitude pruning matches L0 and
# variational dropout.  Chapter [02g](02g_search_based.ipynb) follows section 3.8:
# searches (AMC, a genetic algorithm) that try masks on a trained network instead of
# training the sparsity in.

# %%
import functools
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import recipes, registry, run_cache
from sparsity_lab.regularizers import compare

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
MODELS = ["lenet300", "lenet5"]
EPOCHS = 8
# 02j's fine-tuning: the budgets below are read before it, but with it the calls are 02j's
# own, so the run cache computes each run once for both notebooks
FINETUNE_EPOCHS = 2
N_TRAIN = None  # None: the default MNIST split (4000 training images)

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    MODELS = ["lenet300"]
    EPOCHS = 2
    FINETUNE_EPOCHS = 0
    N_TRAIN = 500
# one thread, as in 02j: notebooks run side by side in CI and `make book`, small models lose
# more to thread contention than they gain from a second core, and the run cache's key
# holds the thread count (torch's sums depend on it)
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
DATA_OPTIONS = {} if N_TRAIN is None else {"n_train": N_TRAIN}

# %% [markdown]
# ## The geometry: why some penalties give exact zeros
#
# Take two weights and a quadratic loss whose minimum sits at $w^* = (1, 0.35)$, and add a
# penalty $\lambda R(w)$.  As $\lambda$ grows, the minimiser of $L(w) + \lambda R(w)$ moves.
# The four panels draw the penalties' level sets (grey; for L0, the axes, where it is 1),
# the loss ellipses (blue) and that path (dots, darker for larger $\lambda$), found by brute
# force on a grid that contains the axes:
#
# * **L1**, $|w_1| + |w_2|$: its level sets have corners on the axes, so the path runs
#   into an axis and stays there: $w_2$ becomes *exactly* zero at a finite $\lambda$;
# * **L0**, the number of nonzero weights: it does not shrink anything, the path *jumps*,
#   first to the best point on an axis, then to the origin;
# * **Hoyer**, $(|w_1| + |w_2|)^2 / (w_1^2 + w_2^2)$: scale-invariant, it bends the path
#   toward the axis without pulling the kept weight to zero;
# * **group** (both weights in one group), $\|w\|_2$: round level sets, no corner on an
#   axis, so $w_2$ never becomes zero alone; the whole group shrinks and reaches the
#   origin together.

# %%
grid = np.arange(-40, 281) / 200  # step 0.005, and 0.0 exactly, so the axes are on the grid
W1, W2 = np.meshgrid(grid, grid)
w_star, H = np.array([1.0, 0.35]), np.array([[1.0, 0.6], [0.6, 1.0]])
D1, D2 = W1 - w_star[0], W2 - w_star[1]
loss = 0.5 * (H[0, 0] * D1**2 + 2 * H[0, 1] * D1 * D2 + H[1, 1] * D2**2)
with np.errstate(invalid="ignore", divide="ignore"):
    hoyer = (np.abs(W1) + np.abs(W2)) ** 2 / (W1**2 + W2**2)  # NaN at the origin
penalties = {
    "L1": np.abs(W1) + np.abs(W2),
    "L0": (W1 != 0).astype(float) + (W2 != 0).astype(float),
    "Hoyer": hoyer,
    "group": np.sqrt(W1**2 + W2**2),
}
lambdas = np.linspace(0, 1.6, 65)


def path(R):
    """The grid point that minimises ``loss + lam * R``, for each strength ``lam``."""
    minima = [np.nanargmin(loss + lam * R) for lam in lambdas]
    return np.column_stack([W1.flat[minima], W2.flat[minima]])


paths = {name: path(R) for name, R in penalties.items()}
# L0 is piecewise constant (2 off the axes, 1 on them, 0 at the origin): its axes are drawn
sl.illustrations.penalty_paths(W1, W2, loss, penalties, paths, lambdas, w_star, on_axes=["L0"])
plt.show()

# %% [markdown]
# Where each path first has a zero coordinate (the grid is exact, so this is checked):

# %% tags=["nbval-check-output"]
for name, p in paths.items():
    zero = np.flatnonzero((p == 0).any(axis=1))
    where = "never" if zero.size == 0 else f"lambda = {lambdas[zero[0]]:.3f}, w = {p[zero[0]]}"
    print(f"{name:6s} first zero: {where}")

# %% [markdown]
# The strength is the lesson here: in a live kernel, move it and watch where the minimum of
# the whole objective, loss plus strength times penalty, sits for each penalty (the
# book shows four strengths).  The shading is the objective; the star the unpenalised
# minimum $w^*$, the dot the penalised one.


# %%
def draw_objective(ax, strength, penalty):
    """The objective ``loss + strength * penalty`` on the grid, and its minimum."""
    sl.illustrations.objective_map(W1, W2, loss + strength * penalties[penalty], w_star, ax=ax)


sl.nb.explore(draw_objective, strength=[0.2, 0.6, 1.0, 1.4], penalty=list(penalties))

# %% [markdown]
# ## A regularizer at work: L1 with a target
#
# The data are MNIST digits, LeNet-300-100 on flat images and the small CNN (LeNet-5) on
# 28x28 images, trained from scratch with Adam.  A regularizer is a training callback:
# here L1 adds `strength * sum |w|` to the loss, and, because we ask for 90% sparsity, it
# *tunes* its strength on the way: every few steps it compares the sparsity its threshold
# rule ($|w| \le 10^{-3}$) would give with a cubic ramp to the target, and multiplies the
# strength up or down.  At the end it *projects*: exactly 90% of the weights go, those its
# rule prunes first.


# %%
@functools.cache
def get_task(model_name, seed):
    """The model on MNIST, split by ``seed`` (loaded once per model and seed)."""
    return recipes.task(model_name, "mnist", seed=seed, **DATA_OPTIONS)


task = get_task("lenet300", SEED)
train_loader, val_loader, test_loader = task.loaders()
model = task.build()
tune_every = max(1, EPOCHS * len(train_loader) // 25)  # about 25 readings over training
reg = registry.get("l1")(sparsity=0.9, tune_every=tune_every)
history = reg.fit(model, train_loader, val_loader, epochs=EPOCHS, optimizer="adam", lr=1e-3,
                  seed=SEED, progress=False)  # fmt: skip
labels = {"goal": "goal (cubic ramp)", "sparsity": "sparsity under the threshold rule"}
ax = sl.viz.target_trace(pd.DataFrame(reg.log), "goal", "sparsity", "strength", labels=labels)
ax.set_title("L1 tuning its strength toward 90% sparsity")
plt.show()
sl.nb.md(
    f"The rule reached **{reg.reached:.1%}** on its own (strength {reg.initial_strength:g} "
    f"tuned to {reg.strength:.3g}); the projection set it to exactly "
    f"{sl.sparsity(model):.1%}.  Validation accuracy at the end: "
    f"{sl.train.evaluate(model, val_loader)['accuracy']:.2%} ({EPOCHS} epochs on "
    f"{len(task.bundle.train):,} training images; {len(task.bundle.val):,} validation and "
    f"{len(task.bundle.test):,} test images)."
)

# %% [markdown]
# ## Learned budgets: which layers the methods prune
#
# A global magnitude threshold gives every layer its own sparsity.  Methods with a learned
# threshold or gate decide it from the loss: STR learns one threshold per layer, L0 one
# gate per weight, variational dropout one noise level per weight.  Below, each trains to
# 90% sparsity; the bars are the per-layer sparsity its own rule reached before the
# projection.  The projection multiplies every layer's *density* by one factor, so it keeps
# the ratios of the layers' densities, not the heights of these bars: a rule that stopped
# far below the target ends close to uniform after it, and a rule that pruned nothing has
# no budget to keep (the projection is then uniform).

# %%
budget_rows, learned = [], ["str", "l0_hard_concrete", "variational_dropout"]
runs_before = run_cache.counts()  # make book and make lab share the LeNet-300-100 runs with 02j
for model_name, method, seed in itertools.product(MODELS, learned, SEEDS):
    r = compare.run(get_task(model_name, seed), method, 0.9, epochs=EPOCHS,
                    finetune_epochs=FINETUNE_EPOCHS)  # fmt: skip
    run = {"model": model_name, "method": method, "seed": seed}
    budget_rows += [
        {**run, "layer": layer, "sparsity": s, "reached": r["reached"]}
        for layer, s in r["layer_sparsity"].items()
    ]
budget_table = pd.DataFrame(budget_rows)
fig, axes = plt.subplots(1, len(MODELS), figsize=(6.5 * len(MODELS), 3.6), squeeze=False)
for ax, (model_name, part) in zip(axes[0], budget_table.groupby("model", sort=False), strict=True):
    table = part.groupby(["layer", "method"], sort=False)["sparsity"].mean().unstack()
    table.plot.bar(ax=ax, rot=0, ylim=(0, 1), ylabel="sparsity under the method's rule")
    ax.set_title(f"{model_name}: per-layer budgets the methods learned")
plt.show()
per_layer = budget_table.groupby(["model", "method", "layer"], sort=False)["sparsity"].mean()
rule_reached = budget_table.groupby(["model", "method"], sort=False)["reached"].mean()
lines = []
for (model_name, method), part in per_layer.groupby(["model", "method"], sort=False):
    part = part.droplevel([0, 1])
    lines.append(
        f"- {model_name}, {method}: reached {rule_reached[model_name, method]:.1%}; most pruned "
        f"{part.idxmax()} ({part.max():.1%}), least pruned {part.idxmin()} ({part.min():.1%})"
    )
cache_note = run_cache.summary(runs_before)
sl.nb.md(
    "Per-layer sparsity under each method's own rule, mean over seeds:\n\n"
    + "\n".join(lines)
    + (f"\n\n{cache_note}" if cache_note else "")
)
#: A rule that stopped further than this below the target left most of the pruning to the
#: projection: its per-layer budget is not the method's own.
NOT_A_TEST = 0.10
# How far from uniform: the spread (most minus least pruned layer) of each learned budget,
# counted only where the rule reached the target to within NOT_A_TEST.
spread = per_layer.groupby(["model", "method"], sort=False).agg(lambda x: x.max() - x.min())
own = spread[0.9 - rule_reached <= NOT_A_TEST]
NON_UNIFORM = 0.05  # a spread of more than 5 points counts as non-uniform
non_uniform = own[own > NON_UNIFORM]
short_rules = rule_reached[0.9 - rule_reached > NOT_A_TEST]
spreads = ", ".join(f"{m} {meth} {100 * v:.1f} points" for (m, meth), v in own.items())
shorts = ", ".join(f"{m} {meth} (reached {v:.1%})" for (m, meth), v in short_rules.items())
sl.nb.md(
    f"{len(non_uniform)} of the {len(own)} learned budgets whose rule reached the 90% "
    f"target to within {100 * NOT_A_TEST:.0f} points are non-uniform (their layers' "
    f"sparsities spread over more than {100 * NON_UNIFORM:.0f} points); spreads: "
    f"{spreads or 'none'}.  "
    + (f"Not counted, because the rule stopped short and the projection did most of the "
       f"pruning: {shorts}." if shorts else "")
)  # fmt: skip

# %% [markdown]
# ## Summary
#
# - A sparsifying penalty shapes *where* the minimum lies: L1's corners give exact zeros at
#   a finite strength, L0 jumps, Hoyer pushes toward the axes without shrinking, a group
#   penalty removes a whole group at once.
# - Every regulariser here ends the same way: a documented threshold rule turns its state
#   into a mask; with a target, a tunable strength is steered toward it during training
#   and a projection makes the count exact, keeping the ratios of the per-layer densities
#   the method learned (uniform where its rule pruned nothing).
# - How these methods compare with gradual magnitude pruning, in accuracy and in training
#   cost, is the subject of [02j](02j_regularizers_compared.ipynb).
#
# What this notebook's runs measured:

# %%
spread_range = f" (largest spread {100 * own.max():.1f} points, smallest {100 * own.min():.1f})"
spread_range = spread_range if len(own) else ""
sl.nb.md(
    f"- L1 with a 90% target ({EPOCHS} epochs): its own rule reached {reg.reached:.1%}, "
    f"the projection set {sl.sparsity(model):.1%}.\n- Learned budgets: {len(non_uniform)} of "
    f"the {len(own)} (model, method) pairs of STR, L0 and variational dropout whose rule "
    f"reached the 90% target to within {100 * NOT_A_TEST:.0f} points spread their layer "
    f"sparsities over more than {100 * NON_UNIFORM:.0f} points{spread_range}; "
    f"{len(short_rules)} stopped short and are not counted."
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** In the geometry section, at which strength $\lambda$ does the L1 path reach the
# origin, both coordinates zero?  Three decimals: the exact strength, not the nearest
# point of the plotted grid.  Which coordinate reached zero first, and why that one?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def origin_strength(shrink, iterations=3000):
    """The smallest strength whose penalised minimum is the origin, found numerically:
    proximal gradient descent on the quadratic loss for each strength (``shrink(w, t)`` is
    the penalty's proximal step), and bisection on the strength."""
    step = 1 / np.linalg.eigvalsh(H).max()

    def minimum(strength):
        w = w_star.copy()
        for _ in range(iterations):
            w = shrink(w - step * H @ (w - w_star), step * strength)
        return w

    low, high = 0.0, 4.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (low, middle) if np.abs(minimum(middle)).max() < 1e-9 else (middle, high)
    return high


def check_1(answer, solution=False):
    def soft_threshold(w, t):
        return np.sign(w) * np.maximum(np.abs(w) - t, 0)

    hint = "The origin is the minimum once the loss's gradient there fits in L1's corners."
    sl.nb.check(1, answer, origin_strength(soft_threshold), hint=hint, tolerance=0.002,
                solution=solution)  # fmt: skip


# %%
answer_1 = None  # a strength, e.g. 0.42
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  While both coordinates are positive, the L1 term adds the constant gradient
# lambda * (1, 1), so the minimum moves in a straight line, w(lambda) = w* - lambda H^-1 (1, 1);
# the coordinate with the smaller ratio w*_i / (H^-1 1)_i reaches zero first (w2, which
# starts at 0.35 against w1's 1.0).  The origin is the minimum once the loss's gradient
# there, -H w*, lies in the subdifferential of lambda ||w||_1 at 0, the square
# [-lambda, lambda]^2: lambda >= ||H w*||_inf.
direction = np.linalg.solve(H, np.ones(2))
first = int(np.argmin(w_star / direction))
print(f"w{first + 1} reaches zero first, at lambda = {min(w_star / direction):.3f}")
solution_1 = round(float(np.abs(H @ w_star).max()), 3)
print(f"the origin at lambda = {solution_1}")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** At which strength does the *group* penalty's path reach the origin?  Three
# decimals, the exact strength as in exercise 1.  Why does the group need a larger
# strength than L1 to get there, and what does it do on the way instead of zeroing one
# coordinate?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    def group_shrink(w, t):
        norm = np.linalg.norm(w)
        return w * max(0.0, 1 - t / norm) if norm > 0 else w

    hint = "The origin is the minimum once the loss's gradient there fits in a disc."
    sl.nb.check(2, answer, origin_strength(group_shrink), hint=hint, tolerance=0.002,
                solution=solution)  # fmt: skip


# %%
answer_2 = None  # a strength, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The group penalty's subdifferential at 0 is the disc of radius lambda, so the
# origin is the minimum once ||H w*||_2 <= lambda.  The disc is inside the square of L1's
# subdifferential, so the group needs the larger strength; on the way it shrinks the pair
# as a whole (its norm) instead of zeroing one coordinate, and it reaches the origin with
# both coordinates at once.
pull = H @ w_star
solution_2 = round(float(np.linalg.norm(pull)), 3)
print(f"group reaches the origin at {solution_2}; L1 at {np.abs(pull).max():.3f}")
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** In "A regularizer at work", what is the 90% target minus the sparsity L1's own
# threshold rule reached, in points?  One decimal; negative if the rule overshot.  Did the
# projection prune the rest, or restore weights?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_3(answer, solution=False):
    hint = "The rule's own sparsity is `reg.reached`; the target is 0.9 (keep the sign)."
    sl.nb.check(3, answer, 100 * (0.9 - reg.reached), hint=hint, tolerance=0.05,
                solution=solution)  # fmt: skip


# %%
answer_3 = None  # points, e.g. 12.3
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  `reg.layer_sparsity` holds the rule's sparsity per layer; weighted by the
# layers' sizes (from a fresh copy of the architecture) it gives the whole model's.
sizes = {name: p.numel() for name, p in task.build().named_parameters()}
pruned = sum(reg.layer_sparsity[name] * sizes[name] for name in reg.layer_sparsity)
rule = pruned / sum(sizes[name] for name in reg.layer_sparsity)
solution_3 = round(100 * (0.9 - rule), 1)
print(f"the rule reached {rule:.1%}: 90% minus that is {solution_3:+.1f} points")
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** In "Learned budgets", which layer of LeNet-300-100 does STR prune the most under
# its own rule, on average over the seeds?  Answer with the layer's name (for example
# `"fc2.weight"`).  Why would a learned threshold hit that layer hardest?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_4(answer, solution=False):
    str_layers = per_layer.loc[("lenet300", "str")]
    hint = "Select `per_layer.loc[('lenet300', 'str')]` and take the layer with the largest."
    sl.nb.check(4, answer, lambda a: str_layers.get(a) == str_layers.max(), hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_4 = None  # a layer name, e.g. "fc2.weight"
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  From the raw rows, without pandas: average each layer's sparsity over the
# seeds.  A learned threshold climbs furthest where the weights matter least to the loss;
# in LeNet-300-100 that is usually fc1, whose inputs include image-border pixels that
# carry no signal.
totals = {}
for row in budget_rows:
    if row["model"] == "lenet300" and row["method"] == "str":
        total, n = totals.get(row["layer"], (0.0, 0))
        totals[row["layer"]] = (total + row["sparsity"], n + 1)
means = {layer: total / n for layer, (total, n) in totals.items()}
solution_4 = max(means, key=means.get)
print({layer: round(m, 3) for layer, m in means.items()}, "->", solution_4)
check_4(solution_4, solution=True)

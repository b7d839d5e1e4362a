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
# a mask, what budget per layer it learns, and what it costs next to gradual magnitude
# pruning.
#
# This follows sections 3.6 (regularisation) and 3.7 (variational methods) of the survey.
# Every method here is a registered *regularizer*:
# `sl.registry.get("l1")(sparsity=0.9).fit(model, ...)` trains and leaves an ordinary
# masked model behind.  Chapter [02g](02g_search_based.ipynb) follows section 3.8:
# searches (AMC, a genetic algorithm) that try masks on a trained network instead of
# training the sparsity in.

# %%
import dataclasses
import functools
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import recipes, registry
from sparsity_lab.regularizers import compare

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
MODELS = ["lenet300", "lenet5"]
SPARSITIES = [0.8, 0.9, 0.95]
STRUCTURED_SPARSITIES = [0.5, 0.75]
EPOCHS = 8
FINETUNE_EPOCHS = 2
N_TRAIN = None  # None: the default MNIST split (4000 training images)

# %%
UNSTRUCTURED = [
    "l1", "prox_l1", "hoyer", "str", "ltp", "continuous_sparsification", "l0_hard_concrete",
    "variational_dropout", "admm", "targeted_dropout",
]  # fmt: skip
STRUCTURED = ["group_lasso", "slimming", "polarization", "structured_bayesian",
              "bayesian_compression"]  # fmt: skip
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    MODELS = ["lenet300"]
    SPARSITIES = [0.9]
    STRUCTURED_SPARSITIES = [0.5]
    EPOCHS = 2
    FINETUNE_EPOCHS = 1
    N_TRAIN = 500
    UNSTRUCTURED = ["l1", "str", "l0_hard_concrete"]
    STRUCTURED = ["group_lasso"]
# one thread in smoke mode: CI may run notebooks side by side, and small models lose more
# to thread contention than they gain from a second core
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)
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
for model_name, method, seed in itertools.product(MODELS, learned, SEEDS):
    r = compare.run(get_task(model_name, seed), method, 0.9, epochs=EPOCHS, finetune_epochs=0)
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
sl.nb.md("Per-layer sparsity under each method's own rule, mean over seeds:\n\n" + "\n".join(lines))
#: A rule that stopped further than this below the target left most of the pruning to the
#: projection: its per-layer budget is not the method's own, and neither is a comparison.
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
# ## Comparison: accuracy against sparsity
#
# Every method trains from scratch for the same number of epochs, reaches the target
# (projection, or GMP's cubic schedule), then fine-tunes with its masks fixed, all with
# Adam; 95% intervals over the seeds.  Unstructured methods prune single weights of every
# layer; the structured ones prune whole output units of every layer but the last, next to
# GMP with the channel pattern on the same layers.  Chapter
# [09c](09c_regularizer_leaderboard.ipynb) runs the regularizers under the leaderboard's
# SGD recipe instead, with their starting strengths chosen on validation.


# %%
def one_run(model_name, pattern, method, seed, sparsity=0.0):
    """One run of the shared protocol: accuracies, budgets and sanity flags (the dense
    runs train unpruned: unstructured at sparsity 0)."""
    pattern = "unstructured" if pattern == "dense" else pattern
    r = compare.run(get_task(model_name, seed), method, sparsity, pattern=pattern, epochs=EPOCHS,
                    finetune_epochs=FINETUNE_EPOCHS)  # fmt: skip
    return {k: v for k, v in r.items() if k != "layer_sparsity"}


grids = {  # the methods and sparsities of each pattern
    "unstructured": {"method": ["gmp", *UNSTRUCTURED], "sparsity": SPARSITIES},
    "channel": {"method": ["gmp", *STRUCTURED], "sparsity": STRUCTURED_SPARSITIES},
    "dense": {"method": ["dense"]},
}
frames = []
for model_name, (pattern, grid_) in itertools.product(MODELS, grids.items()):
    fn = functools.partial(one_run, model_name, pattern)
    frame = sl.experiments.sweep(fn, grid_, seeds=SEEDS)
    frames.append(frame.assign(model=model_name, pattern=pattern))
results = pd.concat(frames, ignore_index=True)

# %%
dense_accuracy = results[results.pattern == "dense"].groupby("model")["test_accuracy"].mean()
sparse = results[results.pattern != "dense"]
sl.viz.sparsity_curve_grid(sparse, "model", "pattern", y="test_accuracy", baseline=dense_accuracy,
                           logit_x=["unstructured"])  # fmt: skip
plt.show()

# %%
runs = results[results.pattern != "dense"]
by = ["model", "pattern", "sparsity", "method"]
summary = sl.stats.summarize(runs, by, "test_accuracy")
flagged = sl.flags.table(results, ["model", "pattern", "sparsity", "method"])
sl.nb.show_flags(flagged)
gmp = summary[summary.method == "gmp"].set_index(["model", "pattern", "sparsity"])["mean"]
# every method minus GMP, paired on the seeds, in each (model, pattern, sparsity) setting
diffs = sl.stats.against_baseline(runs, "method", "gmp", by=by[:3])
diffs = diffs.sort_values(by[:3], kind="stable", ignore_index=True)
vs_gmp, reached = diffs.set_index(by), runs.groupby(by)["reached"].mean()
TIE = 1e-12  # means closer than this are the same number (float rounding)
lines = []
for key, part in summary.groupby(["model", "pattern", "sparsity"]):
    top = part[part["mean"] >= part["mean"].max() - TIE]  # every method tied for the best
    notes = []
    for method in top.method[top.method != "gmp"]:
        who, whose = (f"{method} ", f"{method}'s") if len(top) > 1 else ("", "its")
        notes.append(f"{who}minus GMP, paired: {sl.stats.describe(vs_gmp.loc[(*key, method)])}")
        if key[2] - reached[(*key, method)] > NOT_A_TEST:
            notes.append(f"{whose} own rule reached {reached[(*key, method)]:.1%}, so the mask "
                         "is mostly the projection's")  # fmt: skip
    names = ", ".join(f"**{m}**" for m in top.method) + (" (tied)" if len(top) > 1 else "")
    lines.append(
        f"- {key[0]}, {key[1]}, {key[2]:.0%}: best mean {names} {top['mean'].iloc[0]:.2%} "
        f"(GMP {gmp[key]:.2%}" + "".join(f"; {n}" for n in notes) + ")"
    )
flags_by = runs.groupby(by, sort=False)["flags"]
broken = {key: fs for key, texts in flags_by if (fs := sl.flags.broken_flags(texts))}
flag_lines = []
for r in flagged.itertuples():
    key = (r.model, r.pattern, r.sparsity, r.method)
    emptied = [f for f in broken.get(key, []) if "pruned to 100%" in f]  # the layers named
    flag_lines.append(
        f"- {r.model}, {r.pattern}, {r.sparsity:.0%}, **{r.method}**: {r.flagged_runs} runs "
        f"flagged: {r.flags}" + (f" ({', '.join(emptied)})" if emptied else "")
    )
finetune_cost = ", ".join(
    f"{m}: {v:.2e} FLOPs" for m, v in runs.groupby("model")["finetune_flops"].mean().items()
)
flag_text = (
    "Sanity flags (a flagged mean is not a plain result: a layer pruned to 100% or chance "
    "level says the network is broken, not how good the method is):\n\n" + "\n".join(flag_lines)
    if flag_lines
    else "No run raised a sanity flag."
)
sl.nb.md(
    f"Each run trains {EPOCHS} epochs and fine-tunes {FINETUNE_EPOCHS} ({finetune_cost} of "
    f"fine-tuning, mean over the runs), {len(SEEDS)} seed(s).  Best mean accuracy in each "
    "setting:\n\n" + "\n".join(lines) + "\n\n" + flag_text
)
pivot = summary.pivot_table(index=["model", "pattern", "method"], columns="sparsity", values="mean")
display(pivot.round(4))

# %% [markdown]
# The regularisers spend most of their training with all weights present and let the loss
# decide; GMP follows a fixed schedule.  Below: every method against GMP, paired on the
# seeds, and how far each method's own rule had gone toward the target when its training
# ended (the projection removed or restored the rest).

# %%
# how many of each verdict compare a flagged arm (a broken network's "worse" is no finding)
on_flagged = diffs[diffs["flagged"] != ""]["verdict"].value_counts()
tally_text = ", ".join(
    f"{n} {v}" + (f" (of which {on_flagged[v]} on flagged arms)" if v in on_flagged else "")
    for v, n in diffs["verdict"].value_counts().items()
)
clear = diffs[diffs["verdict"].isin([sl.stats.BETTER, sl.stats.WORSE])]
sl.nb.md("Method minus GMP (test accuracy) in the settings where the interval excludes 0:")
display(clear[[*by, "mean_diff", "ci_low", "ci_high", "verdict", "flagged"]].round(4))
rule = runs[runs.method != "gmp"].groupby(["method"])["reached"].mean()
rule_gap = (runs[runs.method != "gmp"].assign(gap=lambda d: d.sparsity - d.reached)
            .groupby("method")["gap"].mean())  # fmt: skip
gap_words = rule_gap.map(
    lambda g: f"{100 * g:.1f} points short" if g > 0 else f"{-100 * g:.1f} points over"
)
text = (
    f"Each method minus GMP, paired over {len(SEEDS)} seed(s), in {len(diffs)} (model, "
    f"pattern, sparsity, method) settings: {tally_text} ({int((diffs['flagged'] != '').sum())} "
    f"of the {len(diffs)} with a flagged arm).  Mean sparsity each method's own rule reached "
    "before the projection, and how far below (or above) the target that is: "
    + ", ".join(f"{m} {rule[m]:.1%} ({gap_words[m]})" for m in rule.index)
    + "."
)
claim_of = {
    "l0_hard_concrete": "magnitude_matches_l0",
    "variational_dropout": "magnitude_matches_variational_dropout",
}
l0_verdicts = []  # the cited comparisons of Gale et al.: GMP against L0 and against VD
unstructured = runs[runs.pattern == "unstructured"]
at = 0.9 if 0.9 in SPARSITIES else max(SPARSITIES)  # the claim's published sparsity
for method in [m for m in claim_of if m in UNSTRUCTURED]:
    method_diffs = sl.stats.paired(unstructured, "method", "gmp", method,
                                   metric="test_accuracy", by=["model", "sparsity"])  # fmt: skip
    sl.nb.md(f"GMP minus `{method}`, paired over the seeds (unstructured):")
    display(method_diffs.round(4))
    for model_name in MODELS:
        row = method_diffs[(method_diffs.model == model_name) & (method_diffs.sparsity == at)]
        row, claim = row.iloc[0], claim_of[method]
        reached_at = reached[model_name, "unstructured", at, method]
        setting = (f"{model_name} on MNIST, {at:.0%}, each {EPOCHS} epochs with Adam + "
                   f"{FINETUNE_EPOCHS} of fine-tuning")  # fmt: skip
        measured = (f"`{method}`'s own rule had pruned {reached_at:.1%} of the weights "
                    f"when its training ended (target {at:.0%}); the projection chose "
                    "the rest.")  # fmt: skip
        # why the interval decides nothing: its width against the claim's margin
        reason = (f"The interval is ±{100 * (row['ci_high'] - row['ci_low']) / 2:.1f} "
                  f"points over {int(row['n'])} seeds, against the claim's margin of "
                  f"{100 * sl.claims.get(claim).margin:g} point(s).")  # fmt: skip
        v = sl.claims.judge(claim, row, setting=setting, measured=measured, reason=reason)
        if at - reached_at > NOT_A_TEST and v.status != sl.claims.INCONCLUSIVE:
            reason = (f"{v.reason} Counted inconclusive: the rule stopped "
                      f"{100 * (at - reached_at):.1f} points short of the target, so the "
                      "mask compared with GMP's is mostly the projection's, not "
                      f"`{method}`'s.")  # fmt: skip
            v = dataclasses.replace(v, status=sl.claims.INCONCLUSIVE, reason=reason)
        l0_verdicts.append(v)
if l0_verdicts:
    text += "\n\n" + sl.claims.report(l0_verdicts)
sl.nb.md(text)

# %% [markdown]
# ## Training cost
#
# A regulariser trains the dense network (sparsity appears only at the end), so in FLOPs
# it pays at least dense training, plus its own work: a proximal step, a gate per weight, a
# second forward pass for the noise's variance, a k-th value search for targeted dropout.
# Below: time per epoch relative to dense training (same runs as above) and the parameters
# each method adds while training, per prunable weight of the model (its Linear and Conv
# weights).

# %%
cost = runs.copy()
dense_time = results[results.pattern == "dense"].groupby("model")["seconds_per_epoch"].mean()
cost["time_vs_dense"] = cost["seconds_per_epoch"] / cost["model"].map(dense_time)
built = {m: get_task(m, SEED).build() for m in MODELS}  # to count their prunable weights
weights = {m: sum(x.get_parameter(n).numel() for n in sl.pruning.default_targets(x))
           for m, x in built.items()}  # fmt: skip
cost["extra_per_weight"] = cost["extra_parameters"] / cost["model"].map(weights)
table = cost.groupby("method")[["time_vs_dense", "extra_per_weight"]].mean()
table = table.sort_values("time_vs_dense")
xlabels = {
    "time_vs_dense": "time per epoch / dense (measured on this machine)",
    "extra_per_weight": "parameters added while training, per prunable weight",
}
sl.viz.column_bars(table, xlabels, reference={"time_vs_dense": 1})
plt.show()
slowest = table["time_vs_dense"].idxmax()
# one parameter or more per weight: what is trained at least doubles
heavy = table.index[table["extra_per_weight"] >= 1].tolist()
# How far the dense runs' own times spread (each seed against its model's mean): a method
# inside that band cannot be told from dense by these unpaired timings.
dense_runs = results[results.pattern == "dense"]
dense_ratio = dense_runs["seconds_per_epoch"] / dense_runs["model"].map(dense_time)
band = (float(dense_ratio.min()), float(dense_ratio.max()))
above = table.index[table["time_vs_dense"] > band[1]].tolist()
below = table.index[table["time_vs_dense"] < band[0]].tolist()
artifact = (
    "; no regulariser does less work than dense training, so these are likely an artifact of "
    "timing the dense runs apart from the methods (one after the other on a shared machine); "
    "`benchmarks/regularization.py` times a dense run next to each method."
)
sl.nb.md(
    f"The dense runs themselves take {band[0]:.2f}x to {band[1]:.2f}x their mean time per "
    f"epoch, so only ratios outside that band say anything.  Above it (slower than dense): "
    f"{', '.join(above) or 'none'}, the most expensive **{slowest}** at "
    f"{table['time_vs_dense'].max():.1f}x.  Below it: {', '.join(below) or 'none'}"
    f"{artifact if below else '.'}  Methods that add at least one parameter per prunable "
    f"weight while training, so that what is trained at least doubles: "
    f"{', '.join(heavy) or 'none'}."
)
table.round(3)

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
#
# What this notebook's runs measured:

# %%
# the same denominator as the comparison: the (model, pattern, sparsity, method) settings
# other than GMP; GMP's own settings are counted apart
sparse_flagged = flagged[flagged.pattern != "dense"]
method_flagged = sparse_flagged[sparse_flagged.method != "gmp"]
gmp_flagged = sparse_flagged[sparse_flagged.method == "gmp"]
gmp_settings = runs[runs.method == "gmp"].groupby(by).ngroups
gmp_text = f"and {len(gmp_flagged)} of the {gmp_settings} GMP settings"
gmp_text = "no GMP setting was flagged" if gmp_flagged.empty else gmp_text
broken_text = "; ".join(
    f"**{method}** on {model_name} at {sparsity:.0%} ({', '.join(fs)})"
    for (model_name, _, sparsity, method), fs in broken.items()
)
flag_summary = (
    f"{len(method_flagged)} of the {len(diffs)} method settings raised a sanity flag "
    f"({gmp_text})" + (f", these ones a broken network: {broken_text}" if broken else "")
)
# the methods whose rule, on average, left most of the pruning to the projection
short_methods = ", ".join(
    f"{m} (reached {rule[m]:.1%}, {100 * rule_gap[m]:.1f} points short)"
    for m in rule_gap[rule_gap > NOT_A_TEST].index
)
spread_range = f" (largest spread {100 * own.max():.1f} points, smallest {100 * own.min():.1f})"
spread_range = spread_range if len(own) else ""
faster = f" ({len(below)} were faster, likely a timing artifact)" if below else ""
sl.nb.md(
    f"- Learned budgets: {len(non_uniform)} of the {len(own)} (model, method) pairs of "
    f"STR, L0 and variational dropout whose rule reached the 90% target to within "
    f"{100 * NOT_A_TEST:.0f} points spread their layer sparsities over more than "
    f"{100 * NON_UNIFORM:.0f} points{spread_range}; {len(short_rules)} stopped short and are "
    f"not counted.\n- Comparison ({EPOCHS} + {FINETUNE_EPOCHS} epochs, {len(SEEDS)} seed(s)): "
    f"each method minus GMP, paired: {tally_text}; {flag_summary}.\n"
    f"- Rules that ended, on average over the settings, more than {100 * NOT_A_TEST:.0f} "
    "points short of the target, so that their masks are mostly the projection's: "
    f"{short_methods or 'none'}.\n"
    + "".join(f"- {v.sentence()}\n" for v in l0_verdicts)
    + f"- Training cost: {len(above)} of {len(table)} methods were slower per epoch than the "
    f"dense runs' own spread allows{faster}; the methods that add at least one parameter per "
    f"prunable weight: {', '.join(heavy) or 'none'}."
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
# subdifferential, so the group needs the larger strength; on the way it shrinks both
# coordinates together, and reaches the origin with both at once.
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

# %% [markdown]
# **5.** In the comparison, which method other than GMP has the highest mean of "method
# minus GMP" (most positive, or least negative), paired on the seeds, on LeNet-300-100,
# unstructured, at 90%?  Answer with its name as in
# the tables.  Is that difference clear of zero?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_5(answer, solution=False):
    part = runs[(runs.model == "lenet300") & (runs.pattern == "unstructured")
                & (runs.sparsity == 0.9)]  # fmt: skip
    mean = {
        m: sl.stats.paired(part, "method", m, "gmp", metric="test_accuracy").iloc[0]["mean_diff"]
        for m in part["method"].unique() if m != "gmp"
    }  # fmt: skip
    best = max(mean.values())
    hint = "Pair each method with GMP on the seeds (`sl.stats.paired`) and take the largest."
    sl.nb.check(5, answer, lambda a: abs(mean.get(a, -np.inf) - best) < 1e-12, hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_5 = None  # a method name, e.g. "l1"
check_5(answer_5)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 5.  By hand: one column per method, one row per seed, the difference to GMP's
# column seed by seed, then its mean over the seeds.
part = runs[(runs.model == "lenet300") & (runs.pattern == "unstructured")
            & (runs.sparsity == 0.9)]  # fmt: skip
wide = part.pivot_table(index="seed", columns="method", values="test_accuracy")
gaps = wide.drop(columns="gmp").sub(wide["gmp"], axis=0).mean()
solution_5 = gaps.idxmax()
print((100 * gaps).round(2).sort_values(ascending=False).to_dict())
check_5(solution_5, solution=True)

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
# # When to prune: schedules, pruning at initialisation, and lottery tickets
#
# **What you will learn:** how the moment and the pace of pruning change what a sparse
# network can do, from one cut after training to gradual ramps, alternating sparse and
# dense phases, pruning before any training, and lottery tickets found by iterative
# magnitude pruning with rewinding.
#
# This follows section 2.4 of the survey ("when to sparsify") and its discussion of the
# lottery ticket hypothesis.  The *what* (single weights) and the *how* (magnitude, unless
# said otherwise) stay fixed, so that only the *when* changes.

# %%
import copy

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes, registry
from sparsity_lab.pruner import ScheduledPruning

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
DATA = "mnist"
EPOCHS = 10
FINETUNE_EPOCHS = 3
TARGET = 0.95
INIT_SPARSITIES = [0.8, 0.9, 0.95, 0.98]
IMP_ROUNDS = 5
IMP_EPOCHS = 8

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:1]
    DATA = "digits"
    EPOCHS = 4
    FINETUNE_EPOCHS = 1
    INIT_SPARSITIES = [0.8, 0.95]
    IMP_ROUNDS = 2
    IMP_EPOCHS = 2
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## A generic schedule in seven steps
#
# Every way of making a network sparse during training can be written as the same loop;
# the schedules differ only in when each step happens and how often:
#
# 1. **Initialise** the weights (and, for sparse-from-scratch training, a mask).
# 2. **Train** for a while: a dense warm-up, or nothing at all for pruning at
#    initialisation.
# 3. **Score** the elements with a criterion (here the magnitude |w|).
# 4. **Remove** the lowest-scoring elements to reach the schedule's current sparsity (and,
#    in dynamic sparse training, **regrow** as many).
# 5. **Train** again: fine-tune or retrain with the mask.
# 6. **Repeat** steps 3-5 until the target sparsity is reached.
# 7. **Reset or finish**: rewind the weights or the learning rate (lottery tickets), or end
#    with a final fine-tune.
#
# A *schedule* is the sparsity as a function of the training step.  One-shot pruning jumps
# once; iterative pruning takes equal-ratio steps with retraining in between; the cubic
# ramp of gradual magnitude pruning (Zhu & Gupta 2017) prunes fast while many redundant
# weights remain and slowly near the end; IHT (Jin et al. 2016) alternates sparse and dense
# phases; DSD (Han et al. 2017) is dense, then sparse, then dense again; the adaptive
# schedule (after Prechelt 1997) slows down when the validation loss suffers.  In
# `sparsity_lab` each is a pure function of the step:

# %%
names = ["one_shot", "iterative", "linear", "cubic", "exponential", "cosine", "iht", "dsd"]
steps = np.arange(0, 1001)
kw = dict(final_sparsity=0.9, begin_step=200, end_step=800, frequency=100)
curves = {n: [registry.get(n, "schedule")(int(t), **kw) for t in steps] for n in names}

# The adaptive schedule needs feedback: here a made-up validation loss that rises twice.
val_loss = 1 + 0.02 * np.sin(np.linspace(0, 4 * np.pi, 10))
current, adaptive_curve = 0.0, []
for t in steps:
    gl = sl.schedules.prechelt_gl(list(val_loss[: int(t) // 100 + 1]))
    current = sl.schedules.adaptive(
        int(t), 0.9, 200, 800, frequency=100, current_sparsity=current, generalization_loss=gl
    )
    adaptive_curve.append(current)
curves["adaptive"] = adaptive_curve

fig, axes = plt.subplots(3, 3, figsize=(9, 6.5), sharex=True, sharey=True)
for ax, (name, values) in zip(axes.flat, curves.items(), strict=True):
    ax.plot(steps, values, color="C0")
    ax.axvspan(200, 800, color="0.9", zorder=0)
    ax.set_title(name)
for ax in axes[-1]:
    ax.set_xlabel("step")
for ax in axes[:, 0]:
    ax.set_ylabel("sparsity")
fig.suptitle("Every schedule from 0 to 90% sparsity between steps 200 and 800 (shaded)")
fig.tight_layout()
plt.show()

# %% [markdown]
# The values at a few steps, which do not depend on any training:

# %%
# NBVAL_CHECK_OUTPUT
table = pd.DataFrame({n: [curves[n][t] for t in (199, 200, 350, 500, 799, 800)] for n in names})
table.index = [199, 200, 350, 500, 799, 800]
print(table.round(4).to_string())

# %% [markdown]
# ## One shot, iterative, gradual, IHT and DSD, on the same budget
#
# LeNet-300-100 learns to read MNIST digits for a fixed number of epochs, and each
# schedule brings it to the same target sparsity within that run (DSD excepted: it ends
# dense by design).  The pruner is the same `ScheduledPruning` callback with the magnitude
# criterion and a global budget; only the schedule changes.  The classic recipe, "train,
# prune once, fine-tune", gets its own extra fine-tuning epochs on top.

# %%
task0 = recipes.task("lenet300", DATA, seed=SEED)
steps_per_epoch = len(task0.loaders()[0])
total = EPOCHS * steps_per_epoch


def schedule_setup(name):
    """begin, end and frequency (in steps) for each schedule, as fractions of the run."""
    at = lambda fraction: max(1, round(fraction * total))  # noqa: E731
    return {
        "one_shot": dict(begin_step=at(0.5), end_step=at(0.5)),
        "iterative": dict(begin_step=at(0.2), end_step=at(0.8), frequency=at(0.2)),
        "cubic": dict(begin_step=at(0.1), end_step=at(0.7), frequency=max(1, at(0.025))),
        "iht": dict(begin_step=at(0.2), end_step=at(0.8), frequency=at(0.1)),
        "dsd": dict(begin_step=at(0.3), end_step=at(0.7)),
    }[name]


def during_training(schedule, seed):
    t = recipes.task("lenet300", DATA, seed=seed)
    train, val, test = t.loaders()
    model = t.build()
    pruner = ScheduledPruning("magnitude", TARGET, schedule=schedule, **schedule_setup(schedule))
    sl.train.fit(
        model,
        train,
        val,
        epochs=EPOCHS,
        lr=0.05,
        lr_schedule="cosine",
        seed=seed,
        callbacks=[pruner],
    )
    return {
        "test_accuracy": sl.train.evaluate(model, test)["accuracy"],
        "sparsity": sl.sparsity(model),
        "log": pruner.log,
    }


dense_models = {}


def trained_dense(seed):
    """The dense model of a seed, trained once and copied for each use."""
    if seed not in dense_models:
        t = recipes.task("lenet300", DATA, seed=seed)
        dense_models[seed] = (t, *recipes.train_dense(t, epochs=EPOCHS, cache_dir=False))
    t, model, dense = dense_models[seed]
    return t, copy.deepcopy(model), dense


def after_training(seed):
    t, model, dense = trained_dense(seed)
    result = recipes.prune_and_finetune(
        model, t, "magnitude", TARGET, finetune_epochs=FINETUNE_EPOCHS
    )
    return {
        "test_accuracy": result["test_accuracy"],
        "sparsity": result["measured_sparsity"],
        "dense_test_accuracy": dense["test_accuracy"],
    }


schedules_run = ["one_shot", "iterative", "cubic", "iht", "dsd"]
rows, logs = [], {}
for seed in SEEDS:
    for schedule in schedules_run:
        out = during_training(schedule, seed)
        logs.setdefault(schedule, out.pop("log"))
        rows.append({"recipe": schedule, "seed": seed, **out})
    out = after_training(seed)
    rows.append({"recipe": "train, prune, fine-tune", "seed": seed, **out})
results = pd.DataFrame(rows)
dense_accuracy = results["dense_test_accuracy"].dropna().mean()

# %% [markdown]
# What each schedule did to the model, step by step (the pruner's log):

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for i, (schedule, log) in enumerate(logs.items()):
    t, s = zip(*log, strict=True)
    ax.step([0, *t, total], [0, *s, s[-1]], where="post", label=schedule, color=f"C{i}")
ax.set_xlabel("training step")
ax.set_ylabel("sparsity")
ax.set_title(f"Sparsity during {EPOCHS} epochs of training")
ax.legend(ncol=3, fontsize=8)
plt.show()

# %%
summary = sl.experiments.summarize(results, ["recipe"], "test_accuracy")
fig, ax = plt.subplots(figsize=(7, 3.5))
order = summary.sort_values("mean")
ax.barh(order["recipe"], order["mean"], xerr=order["ci_high"] - order["mean"], color="C0")
ax.axvline(dense_accuracy, color="k", ls="--", label="dense")
ax.set_xlim(max(0, order["mean"].min() - 0.1), 1)
ax.set_xlabel("test accuracy (mean, 95% interval over seeds)")
ax.set_title(f"LeNet-300-100 at {TARGET:.0%} sparsity (DSD ends dense)")
ax.legend()
plt.show()
summary.round(4)

# %%
best = summary.set_index("recipe")["mean"]
sparse_only = best.drop("dsd")
display(
    Markdown(
        f"Over {len(SEEDS)} seed(s), the best schedule that ends sparse is "
        f"**{sparse_only.idxmax()}** ({sparse_only.max():.2%}) and the weakest is "
        f"{sparse_only.idxmin()} ({sparse_only.min():.2%}); the dense model reaches "
        f"{dense_accuracy:.2%}, and DSD's final dense model {best['dsd']:.2%}."
    )
)

# %% [markdown]
# Gradual schedules give the network time to adapt to each cut, which matters most at
# high sparsity; a single cut in the middle of training leaves the rest of the run to
# recover.  IHT's dense phases let pruned weights come back (from zero) and compete
# again, so the final mask is chosen late.
#
# ## Pruning at initialisation against pruning after training
#
# Can the mask be chosen before any training?  Here masks are chosen at initialisation,
# then the sparse network trains for the full run; "after training" trains dense, prunes
# by magnitude once and fine-tunes.  Random pruning with the same global budget is the
# baseline; SNIP (Lee et al. 2019, one batch of gradients) joins if it is registered.

# %%
at_init = ["random", "magnitude"] + (["snip"] if "snip" in registry.available() else [])


def init_or_after(when, sparsity, seed):
    t = recipes.task("lenet300", DATA, seed=seed)
    train, val, test = t.loaders()
    if when == "after training":
        t, model, _ = trained_dense(seed)
        result = recipes.prune_and_finetune(
            model, t, "magnitude", sparsity, finetune_epochs=FINETUNE_EPOCHS
        )
        return {"test_accuracy": result["test_accuracy"]}
    model = t.build()
    batch = next(iter(train))
    sl.prune(model, when, sparsity, data=tuple(batch), seed=seed)
    sl.train.fit(model, train, val, epochs=EPOCHS, lr=0.05, lr_schedule="cosine", seed=seed)
    return {"test_accuracy": sl.train.evaluate(model, test)["accuracy"]}


init_results = sl.experiments.sweep(
    init_or_after,
    {"when": [*at_init, "after training"], "sparsity": INIT_SPARSITIES},
    seeds=SEEDS,
)
fig, ax = plt.subplots(figsize=(6.5, 4))
sl.viz.sparsity_curve(
    init_results,
    x="sparsity",
    y="test_accuracy",
    hue="when",
    ax=ax,
    baseline=dense_accuracy,
    logit_x=True,
)
ax.set_title("Masks chosen at initialisation vs after training")
plt.show()

# %%
pivot = sl.experiments.summarize(init_results, ["when", "sparsity"], "test_accuracy").pivot(
    index="sparsity", columns="when", values="mean"
)
top = max(INIT_SPARSITIES)
best_init = pivot.loc[top, at_init].idxmax()
display(
    Markdown(
        f"At {top:.0%} sparsity, pruning after training reaches "
        f"{pivot.loc[top, 'after training']:.2%}; the best mask chosen at initialisation "
        f"({best_init}) reaches {pivot.loc[top, best_init]:.2%}, and random "
        f"{pivot.loc[top, 'random']:.2%}."
    )
)
pivot.round(4)

# %% [markdown]
# Magnitude at initialisation is a poor guide: with a global threshold it removes the
# wide first layer first, because its initial weights are the smallest (their scale
# shrinks with the fan-in), and at high sparsity a whole layer can vanish ("layer
# collapse", Tanaka et al. 2020).  Criteria designed for initialisation, such as SNIP,
# look at how the loss would change instead.
#
# ## Lottery tickets: rewinding against re-initialisation, over IMP rounds
#
# Iterative magnitude pruning (Frankle & Carbin 2019) trains, prunes the smallest weights
# so that every round removes the same share, rewinds the survivors to their values at
# initialisation, and trains again.  The resulting *ticket* is compared with two
# baselines at every round: the same mask with freshly drawn weights (re-initialisation),
# and a random mask with the same per-layer sparsities.  A ticket that beats both says
# that the mask and its initial weights belong together.

# %%
imp_tables = []
for seed in SEEDS:
    t = recipes.task("lenet300", DATA, seed=seed)
    train, val, _ = t.loaders()
    imp = registry.get("imp", "training")(
        TARGET, rounds=IMP_ROUNDS, rewind="init", baselines=("reinit", "random_mask"), seed=seed
    )
    imp.fit(t.build(), train, val, epochs=IMP_EPOCHS, lr=0.05, lr_schedule="cosine", seed=seed)
    imp_tables.append(imp.rounds_table.assign(seed=seed))
rounds = pd.concat(imp_tables, ignore_index=True)
long = rounds.melt(
    id_vars=["round", "sparsity", "seed"],
    value_vars=["val_accuracy", "reinit_val_accuracy", "random_mask_val_accuracy"],
    var_name="network",
    value_name="accuracy",
).dropna()
long["network"] = long["network"].map(
    {
        "val_accuracy": "ticket (rewound to init)",
        "reinit_val_accuracy": "same mask, re-initialised",
        "random_mask_val_accuracy": "random mask, same layer ratios",
    }
)
fig, ax = plt.subplots(figsize=(6.5, 4))
sl.viz.sparsity_curve(long, x="sparsity", y="accuracy", hue="network", ax=ax, logit_x=True)
ax.set_title("Lottery tickets over IMP rounds (validation accuracy)")
plt.show()

# %%
last = long[long["round"] == IMP_ROUNDS].groupby("network")["accuracy"].mean()
display(
    Markdown(
        f"After {IMP_ROUNDS} rounds ({rounds['sparsity'].max():.1%} sparsity), the ticket "
        f"reaches {last['ticket (rewound to init)']:.2%} validation accuracy, the same mask "
        f"re-initialised {last['same mask, re-initialised']:.2%}, and a random mask "
        f"{last['random mask, same layer ratios']:.2%} (mean of {len(SEEDS)} seed(s))."
    )
)

# %% [markdown]
# ## Summary
#
# - One loop of seven steps covers every schedule; the schedules differ in when the
#   scoring, removing and retraining happen.  `sparsity_lab.schedules` holds each as a pure
#   function, and `ScheduledPruning` runs any of them with any criterion and pattern.
# - On the same training budget, gradual and iterative pruning usually beat a single cut
#   at high sparsity; IHT lets pruned weights return before the mask is fixed; DSD uses
#   a sparse phase to regularise a network that ends dense.
# - Masks chosen at initialisation train to lower accuracy than masks chosen after
#   training at high sparsity, and can be close to random ones.
# - IMP's tickets, rewound to their initial values, separate from re-initialised and
#   random-mask networks as sparsity grows: the surviving weights' starting values matter
#   together with the mask.
#
# ## Exercises
#
# 1. Change `TARGET` to 0.8. Which differences between the schedules remain?
# 2. Give the cubic schedule a later `begin_step`. Is a longer dense warm-up better?
# 3. Run IMP with `rewind="step"` and `rewind_step` of one epoch, and with `rewind="lr"`.
#    Which is closest to the ticket rewound to initialisation?
# 4. Replace the magnitude criterion of `ScheduledPruning` with `"random"`. Does the
#    schedule still matter?

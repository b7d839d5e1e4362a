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
# # When to prune I: schedules, from one cut to gradual ramps
#
# **What you will learn:** how the moment and the pace of pruning change what a sparse
# network can do, from one cut during or after training to gradual ramps and alternating
# sparse and dense phases, on the same training budget.
#
# This follows section 2.4 of the survey ("when to sparsify").  The *what* (single
# weights) and the *how* (magnitude) stay fixed, so that only the *when* changes.
# [03b](03b_initialisation_against_training.ipynb) continues it at the two ends: masks
# chosen before any training against pruning after training, and where lottery tickets
# (iterative magnitude pruning with rewinding) fit.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import recipes, registry
from sparsity_lab.scheduled import ScheduledPruning

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
DATA = "mnist"
EPOCHS = None  # None: the recipe's number of epochs, for every run of the notebook
FINETUNE_EPOCHS = 3
TARGET = 0.95

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    DATA = "digits"
    EPOCHS = 4
    FINETUNE_EPOCHS = 1
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## A generic schedule in seven steps
#
# Every way of making a network sparse during training can be written as the same loop;
# the schedules differ only in when each step happens and how often.  The survey's generic
# schedule (section 2.4.4) has seven steps too: create the structure, initialise, train,
# prune and regrow, fix the structure and train, and iterate.  The list below is this
# book's variant of it, which splits pruning into scoring and removing and adds, as its
# step 7, the reset to an earlier point that lottery tickets need:
#
# 1. **Initialise** the weights (and, for sparse-from-scratch training, a mask).
# 2. **Train** for a while: a dense warm-up, or nothing at all for pruning at
#    initialisation.
# 3. **Score** the elements with a criterion (here the magnitude |w|).
# 4. **Remove** the lowest-scoring elements to reach the schedule's current sparsity (and,
#    in dynamic sparse training, **regrow** as many).
# 5. **Train** again: fine-tune or retrain with the mask.
# 6. **Repeat** steps 3-5 until the target sparsity is reached.
# 7. **Reset or finish**: rewind the weights or the learning rate (lottery tickets,
#    [03b](03b_initialisation_against_training.ipynb)), or end with a final fine-tune.
#
# A *schedule* is the sparsity as a function of the training step.  One-shot pruning jumps
# once; iterative pruning takes equal-ratio steps with retraining in between; the cubic
# ramp of gradual magnitude pruning (Zhu & Gupta 2018) prunes fast while many redundant
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

ramp = (kw["begin_step"], kw["end_step"])
title = f"Every schedule with a {kw['final_sparsity']:.0%} target between steps {ramp[0]} and "
title += f"{ramp[1]} (shaded); DSD ends dense, IHT alternates."
sl.viz.function_grid(steps, curves, span=ramp, xlabel="step", ylabel="sparsity", title=title)
plt.show()

# %% [markdown]
# The values at a few steps, which do not depend on any training:

# %% tags=["nbval-check-output"]
table = pd.DataFrame({n: [curves[n][t] for t in (199, 200, 350, 500, 799, 800)] for n in names})
table.index = [199, 200, 350, 500, 799, 800]
print(table.round(4).to_string())

# %% [markdown]
# How often the mask is updated and when the ramp starts are the schedule's two knobs.  In
# a live kernel move them; the book shows four update intervals at the default start.  A
# long interval turns every ramp into a staircase of a few large jumps, each as abrupt as
# a small one-shot pruning.


# %%
def draw_ramps(ax, frequency, begin_step):
    """The four smooth ramps to 90% by step 800, updated every ``frequency`` steps."""
    ramps = {}
    for name in ["linear", "cubic", "exponential", "cosine"]:
        schedule = registry.get(name, "schedule")
        ramps[name] = [schedule(int(t), 0.9, begin_step, 800, frequency=frequency) for t in steps]
    sl.viz.curves(steps, ramps, ax, span=(begin_step, 800), xlabel="step", ylabel="sparsity")


sl.nb.explore(draw_ramps, frequency=[10, 50, 100, 200], begin_step=(0, 600, 50))

# %% [markdown]
# ## One shot, iterative, gradual and IHT, on the same budget
#
# LeNet-300-100 learns to read digits with its setting's recipe (`recipes.recipe_for`: the
# optimizer, learning rate, schedule and number of epochs), and each schedule brings it to
# the same target sparsity within that one run; DSD ends dense by design.  The pruner is
# the same `ScheduledPruning` callback with the magnitude criterion and a global budget;
# only the schedule changes, and every run has the same epochs and steps.  What differs is
# how long each run is sparse, so a callback counts the training FLOPs as they happen
# (three forward passes of two FLOPs per nonzero weight, per example, as
# `recipes.training_flops` counts them).  Two references sit beside the schedules: the
# dense model of the same recipe (`recipes.dense`: same epochs, same seed, same batch
# order) and the classic "train dense, prune once, fine-tune", which spends extra
# fine-tuning epochs on top.

# %%
RECIPE = recipes.recipe_for("lenet300", DATA)
TRAINING = {**RECIPE.training(), "epochs": EPOCHS or RECIPE.epochs}
task0 = recipes.task("lenet300", DATA, seed=SEED)
sizes = {split: len(getattr(task0.bundle, split)) for split in ("train", "val", "test")}
steps_per_epoch = len(task0.loaders()[0])
total = TRAINING["epochs"] * steps_per_epoch
n_weights = int(sl.report(task0.build()).set_index("name").loc["total", "parameters"])


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


class CountFlops(sl.train.Callback):
    """Training FLOPs as they happen: 3 forward passes of 2 FLOPs per nonzero weight."""

    def __init__(self):
        self.flops = 0.0

    def on_step_begin(self, trainer):
        found = sl.masks.masks(trainer.model)
        zeros = sum(int(m.numel() - m.sum()) for m in found.values())
        self.flops += 3 * 2 * (n_weights - zeros) * len(trainer.batch[0])


def during_training(schedule, seed):
    t = recipes.task("lenet300", DATA, seed=seed)
    train, val, _ = t.loaders(RECIPE.batch_size)
    model = t.build()
    pruner = ScheduledPruning("magnitude", TARGET, schedule=schedule, **schedule_setup(schedule))
    counter = CountFlops()
    sl.train.fit(model, train, val, seed=seed, callbacks=[pruner, counter], **TRAINING)
    run = recipes.evaluate_run(model, t, target_sparsity=None if schedule == "dsd" else TARGET)
    return {
        "test_accuracy": run["accuracy"],
        "measured_sparsity": run["sparsity"],
        "epochs": TRAINING["epochs"],
        "training_flops": counter.flops,
        "flags": run["flags"],
        "log": pruner.log,
    }


def dense_reference(seed):
    t, model, dense = recipes.dense("lenet300", DATA, seed, epochs=EPOCHS)
    run = recipes.evaluate_run(model, t)
    return {
        "test_accuracy": run["accuracy"],
        "measured_sparsity": run["sparsity"],
        "epochs": TRAINING["epochs"],
        "training_flops": recipes.training_flops(model, sizes["train"], TRAINING["epochs"]),
        "flags": sl.flags.join(f for f in (dense["flags"], run["flags"]) if f),
    }


def after_training(seed, sparsity=TARGET):
    """Train dense with the recipe, prune by magnitude once, fine-tune: one result row."""
    return recipes.pruned_after_training(
        "lenet300", DATA, seed, sparsity, epochs=EPOCHS, finetune_epochs=FINETUNE_EPOCHS
    )


schedules_run = ["one_shot", "iterative", "cubic", "iht", "dsd"]
PRUNE_AFTER = "train, prune, fine-tune"
rows, logs = [], {}
for seed in SEEDS:
    for schedule in schedules_run:
        out = during_training(schedule, seed)
        logs.setdefault(schedule, out.pop("log"))
        rows.append({"recipe": schedule, "seed": seed, **out})
    rows.append({"recipe": "dense", "seed": seed, **dense_reference(seed)})
    rows.append({"recipe": PRUNE_AFTER, "seed": seed, **after_training(seed)})
results = pd.DataFrame(rows)

# %% [markdown]
# What each schedule did to the model, step by step (the pruner's log), one panel each:
# on one axis IHT's and DSD's jumps lie on top of each other and of one-shot's.

# %%
fig, axes = plt.subplots(
    1, len(logs), figsize=(2.3 * len(logs), 2.6), sharey=True, squeeze=False, layout="constrained"
)
for i, (ax, (name, log)) in enumerate(zip(axes[0], logs.items(), strict=True)):
    sl.viz.step_logs({name: log}, total, ax, xlabel="training step", ylabel="sparsity" * (i == 0))
    ax.get_legend().remove()  # the panel's title names its one line
    ax.set_title(name, fontsize="medium")
fig.suptitle(f"Sparsity during {TRAINING['epochs']} epochs of training")
plt.show()

# %%
budget = results.groupby("recipe", sort=False)[["epochs", "training_flops"]].mean()
budget["FLOPs / dense"] = budget["training_flops"] / budget.loc["dense", "training_flops"]
summary = sl.stats.summarize(results, ["recipe"], "test_accuracy").set_index("recipe")
table = summary.join(budget)
ax = sl.viz.interval_barh(table)
ax.set_xlabel("test accuracy (mean, 95% interval over seeds, clipped to [0, 1])")
ax.set_title(f"LeNet-300-100 at {TARGET:.0%} sparsity (DSD and dense end dense)")
plt.show()
display(table.round(4))
flagged = sl.flags.table(results, ["recipe"])
sl.nb.show_flags(flagged)

# %% [markdown]
# Each schedule against the one cut at mid-training, paired by seed (same data split,
# same initialisation, same batch order).  The classic recipe is compared with it too,
# though it trains longer; DSD, which ends dense, is compared with the dense model of the
# same recipe.

# %%
comparisons = [(name, "one_shot") for name in ("iterative", "cubic", "iht", PRUNE_AFTER)]
comparisons.append(("dsd", "dense"))
paired = sl.stats.paired_table(results, "recipe", comparisons, {"test_accuracy": ""})
paired = paired.drop(columns="stage").set_index("comparison")
paired["in words"] = paired.apply(sl.stats.describe, axis=1)
display(paired.round(4))


def said(a, b):
    return sl.stats.describe(paired.loc[f"{a} - {b}"])


def flops_of(name):
    return f"{budget.loc[name, 'training_flops']:.2g} FLOPs"


epochs = TRAINING["epochs"]
sl.nb.md(
    f"On the same {epochs} epochs ({total} steps of {sizes['train']} training images), "
    f"against one cut at mid-training ({flops_of('one_shot')}): iterative pruning "
    f"({flops_of('iterative')}) {said('iterative', 'one_shot')}; the cubic ramp "
    f"({flops_of('cubic')}) {said('cubic', 'one_shot')}; IHT ({flops_of('iht')}) "
    f"{said('iht', 'one_shot')}.  Training dense for {epochs} epochs, pruning once and "
    f"fine-tuning {FINETUNE_EPOCHS} more ({flops_of(PRUNE_AFTER)} in all): "
    f"{said(PRUNE_AFTER, 'one_shot')}.  DSD's final dense model against the dense "
    f"model of the same recipe: {said('dsd', 'dense')}.  (Differences in test-accuracy "
    f"points; one test image is {100 / sizes['test']:.1f} points.)"
)

# %% [markdown]
# By construction, a gradual schedule removes weights a few at a time with training in
# between, one-shot removes them all at once, and IHT's dense phases let pruned weights
# come back (from zero) and compete again, so its final mask is chosen late.  Whether any
# of this pays off at this size is what the paired differences above say, and what the
# verdicts below judge.

# %%
width = lambda r: 100 * (r["ci_high"] - r["ci_low"])  # noqa: E731
flops_share = budget["FLOPs / dense"]
schedule_setting = f"LeNet-300-100 on {DATA}, {TARGET:.0%} sparse, {epochs} epochs each"


def versus_one_shot(claim, name, what):
    """The verdict on ``claim`` from ``name`` minus one-shot, with the measured reason."""
    r = paired.loc[f"{name} - one_shot"]
    setting = f"{schedule_setting}; {what}"
    if r["n"] >= 2 and r["ci_low"] > 0:
        return sl.claims.verdict(claim, r, setting=setting)
    reason = (
        f"Both arms train LeNet-300-100 ({n_weights:,} weights) for {epochs} epochs on "
        f"{sizes['train']} images; {name} uses {flops_share[name]:.1%} of the dense training FLOPs "
        f"and one-shot {flops_share['one_shot']:.1%}"
        + (
            f"; with {int(r['n'])} seeds and {sizes['test']} test images the paired interval "
            f"is {width(r):.1f} points wide."
            if r["n"] >= 2
            else "; a single seed gives no interval."
        )
        + sl.flags.flags_raised(flagged, "recipe", [name, "one_shot"])
    )
    return sl.claims.verdict(claim, r, setting=setting, reason=reason)


gradual = "cubic ramp against one cut at mid-training"
rounds = f"{len(logs['iterative'])} equal-ratio steps against one cut"
verdicts = [
    versus_one_shot("gradual_beats_one_shot", "cubic", gradual),
    versus_one_shot("iterative_beats_one_shot", "iterative", rounds),
]

# %% [markdown]
# ## Against the literature
#
# Gradual and iterative pruning against one cut, judged from the paired differences above.
# Masks chosen at initialisation, against pruning after training, are judged in
# [03b](03b_initialisation_against_training.ipynb).

# %%
sl.nb.md(sl.claims.report(verdicts))
sl.claims.table(verdicts)

# %% [markdown]
# ## Summary
#
# - One loop of seven steps covers every schedule; the schedules differ in when the
#   scoring, removing and retraining happen.  `sparsity_lab.schedules` holds each as a pure
#   function, and `ScheduledPruning` runs any of them with any criterion and pattern.
# - Schedules are compared on the same epochs with their training FLOPs stated, against
#   one cut at mid-training, paired by seed.
#
# What the runs above measured:

# %%
words = {"better": "ahead of", "worse": "behind"}
words["no clear difference"] = "not clearly different from"


def against_one_shot(name):
    verdict = paired.loc[f"{name} - one_shot", "verdict"]
    return f"{name} {words.get(verdict, 'measured on one seed against')} one-shot"


def verdict_line(v):
    return f"{v.claim.statement} ({v.claim.paper}): **{v.status}** here, {v.numbers()}"


lines = [
    f"Against one cut at mid-training, on the same {epochs} epochs at {TARGET:.0%}: "
    + "; ".join(against_one_shot(name) for name in ("iterative", "cubic", "iht")),
    f"DSD's final dense model against the dense model: {said('dsd', 'dense')}",
    *(verdict_line(v) for v in verdicts),
]
sl.nb.md("\n".join(f"- {line}." for line in lines))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about, on seed `SEED` only, or read the runs above.
#
# **1.** Train the cubic ramp and one-shot of the second section to 80% instead of `TARGET`
# (seed `SEED`, the same steps and setup, as `during_training` does).  What is the test
# accuracy of the cubic ramp minus that of one-shot, in points?  One decimal.  Compare with
# the same seed's gap at `TARGET` in `results`: do differences between the schedules
# appear, and what would it take to tell?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
schedule_runs = {}  # (schedule, target, criterion, setup) -> (task, trained model, FLOPs)


def scheduled(schedule, target=TARGET, criterion="magnitude", **setup):
    """``during_training``'s run on seed SEED with another target, criterion or setup,
    trained once: ``(task, model, training FLOPs counted)``."""
    key = (schedule, target, criterion, tuple(sorted(setup.items())))
    if key not in schedule_runs:
        t = recipes.task("lenet300", DATA, seed=SEED)
        train, val, _ = t.loaders(RECIPE.batch_size)
        model = t.build()
        options = schedule_setup(schedule) | setup
        pruner = ScheduledPruning(criterion, target, schedule=schedule, **options)
        counter = CountFlops()
        sl.train.fit(model, train, val, seed=SEED, callbacks=[pruner, counter], **TRAINING)
        schedule_runs[key] = (t, model, counter.flops)
    return schedule_runs[key]


def cubic_minus_one_shot(**run):
    """Test accuracy of the cubic ramp minus one-shot, in points."""
    accuracy = {}
    for schedule in ("cubic", "one_shot"):
        t, model, _ = scheduled(schedule, **run)
        accuracy[schedule] = recipes.evaluate_run(model, t)["accuracy"]
    return 100 * (accuracy["cubic"] - accuracy["one_shot"])


def check_1(answer, solution=False):
    hint = "Train both as `during_training` does, with `ScheduledPruning('magnitude', 0.8, ...)`."
    gap = cubic_minus_one_shot(target=0.8)
    sl.nb.check(1, answer, gap, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_1 = None  # points, e.g. -1.5
check_1(answer_1)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  At 80% the network keeps four times as many weights as at 95%, so a
# schedule has less to make up for than at `TARGET`.  One seed gives one difference and no
# interval: telling the schedules apart takes the paired runs of several seeds, as the
# table above has at `TARGET`, and a difference of a few test images may be no more than
# another seed would change.  Scored by hand on the test images:
def hand_accuracy(model, x, y):
    import torch

    with torch.no_grad():
        return float((model.eval()(x).argmax(dim=1) == y).float().mean())


x_test, y_test = task0.bundle.test.tensors  # seed SEED's split, as every run here
accuracy_1 = {s: hand_accuracy(scheduled(s, 0.8)[1], x_test, y_test) for s in ("cubic", "one_shot")}
solution_1 = round(100 * (accuracy_1["cubic"] - accuracy_1["one_shot"]), 1)
by_seed = results[results["seed"] == SEED].set_index("recipe")["test_accuracy"]
print(
    f"at 80%: cubic {accuracy_1['cubic']:.2%}, one-shot {accuracy_1['one_shot']:.2%}, "
    f"{solution_1:+.1f} points; at {TARGET:.0%}: "
    f"{100 * (by_seed['cubic'] - by_seed['one_shot']):+.1f} points (seed {SEED}); one test "
    f"image is {100 / len(y_test):.2f} points"
)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Start the cubic ramp later: at 40% of the run instead of 10%
# (`begin_step=max(1, round(0.4 * total))`, the same end at 70% and the same frequency),
# seed `SEED`, to `TARGET`.  What share of the dense model's training FLOPs does it spend,
# as the column `FLOPs / dense` of the table above counts them?  Two decimals.  Is its test
# accuracy better than that of the same seed's cubic run in `results`, on the same epochs?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
LATE = max(1, round(0.4 * total))


def check_2(answer, solution=False):
    share = scheduled("cubic", begin_step=LATE)[2] / budget.loc["dense", "training_flops"]
    hint = "Count the run's FLOPs with `CountFlops`; divide by the dense row of `budget`."
    sl.nb.check(2, answer, share, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a share, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  A step costs in proportion to the weights that are still there, so the
# longer dense start is paid for in FLOPs; the ramp is squeezed into fewer steps, so it
# removes more at each pruning step, with less training in between.  Whether the longer
# warm-up pays is what the two accuracies say, for one seed.  By hand, without training:
# the cubic sparsity of each step, ``s_f (1 - (1 - p)^3)`` with ``p`` the progress at the
# last update, applied to the weights of LeNet-300-100, three passes of two FLOPs per kept
# weight and example, over the batches of every epoch, against the same with every weight
# kept.
setup_2 = schedule_setup("cubic") | {"begin_step": LATE}
begin, end, every = setup_2["begin_step"], setup_2["end_step"], setup_2["frequency"]


def cubic_by_hand(step):
    if step < begin:
        return 0.0
    if step >= end:
        return TARGET
    p = (step - begin) // every * every / (end - begin)
    return TARGET * (1 - (1 - p) ** 3)


n_w = sum(p.numel() for n, p in task0.build().named_parameters() if n.endswith("weight"))
n_train, batch = sizes["train"], RECIPE.batch_size
batches = [batch] * (n_train // batch) + ([n_train % batch] if n_train % batch else [])
kept = [round((1 - cubic_by_hand(k)) * n_w) for k in range(TRAINING["epochs"] * len(batches))]
flops_2 = sum(6 * w * b for w, b in zip(kept, batches * TRAINING["epochs"], strict=True))
solution_2 = round(flops_2 / (6 * n_w * n_train * TRAINING["epochs"]), 2)
late_accuracy = hand_accuracy(scheduled("cubic", begin_step=LATE)[1], x_test, y_test)
print(
    f"begin at step {LATE} of {total}: {solution_2:.2f} of the dense FLOPs (from step "
    f"{schedule_setup('cubic')['begin_step']}: {budget.loc['cubic', 'FLOPs / dense']:.2f}); "
    f"test accuracy {late_accuracy:.2%} against {by_seed['cubic']:.2%} (seed {SEED})"
)
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** The iterative schedule of the second section prunes in rounds (its steps are in
# `schedule_setup("iterative")`), and every round removes the same share of the weights
# still alive, so that the last round reaches `TARGET`.  What share, in percent?  One
# decimal.  How many rounds does it take, and what share of the weights still alive does
# the first event of the cubic ramp remove?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_3(answer, solution=False):
    # the sparsities the pruner reached in the run above, round after round: the share of
    # the weights still alive that the last round removed
    alive = [1.0] + [1 - s for _, s in logs["iterative"]]
    share = 100 * (1 - alive[-1] / alive[-2])
    hint = "Count the rounds between `begin_step` and `end_step`; each keeps the same fraction."
    sl.nb.check(3, answer, share, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_3 = None  # percent, e.g. 50.0
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  Rounds come every `frequency` steps from `begin_step` until `end_step`, so
# there are ``K = ceil((end_step - begin_step) / frequency)`` of them.  A round that keeps
# the fraction ``k`` of the weights still alive leaves ``k^K`` of them after the last one,
# and that must be ``1 - TARGET``: ``k = (1 - TARGET)^(1/K)``, and each round removes
# ``1 - k``.  The same share of a smaller network is fewer weights, so the first round
# removes the most and each later one less, as the cubic ramp does in smaller steps.
setup_3 = schedule_setup("iterative")
rounds_3 = int(np.ceil((setup_3["end_step"] - setup_3["begin_step"]) / setup_3["frequency"]))
solution_3 = round(100 * (1 - (1 - TARGET) ** (1 / rounds_3)), 1)
first_cubic = logs["cubic"][0][1]
print(
    f"{rounds_3} rounds to {TARGET:.0%}: each keeps {(1 - TARGET) ** (1 / rounds_3):.3f} of the "
    f"weights still alive, so removes {solution_3:.1f}%; the first round removes "
    f"{(1 - (1 - TARGET) ** (1 / rounds_3)) / TARGET:.0%} of all that is pruned.  The cubic "
    f"ramp's first event removes {first_cubic:.1%} of the weights, one of "
    f"{len(logs['cubic'])} events"
)
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** Replace the magnitude criterion of `ScheduledPruning` with `"random"` and train
# the cubic ramp and one-shot to `TARGET` as in the second section (seed `SEED`).  What is
# the test accuracy of the cubic ramp minus that of one-shot, in points?  One decimal.
# Compare with magnitude's gap for the same seed in `results`: does the schedule still
# matter?  Do the two random runs end with different masks?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_4(answer, solution=False):
    hint = "Train both as `during_training` does, with `ScheduledPruning('random', TARGET, ...)`."
    gap = cubic_minus_one_shot(criterion="random")
    sl.nb.check(4, answer, gap, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_4 = None  # points, e.g. 2.5
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  The random criterion draws its scores from the seed of `sl.prune` (0 here),
# the same scores at every pruning event, so a ramp removes the weights one-shot removes,
# only earlier or later: the masks can only differ where the scores tie.  What is left to
# the schedule is how long each weight trains before it goes.  Removing weights whatever
# their size can also leave the network at chance level (one class in ten), whatever the
# schedule; the sanity flags say when.  By hand: the accuracies, and the share of
# one-shot's kept weights that the cubic ramp keeps too.
models_4 = {s: scheduled(s, criterion="random")[1] for s in ("cubic", "one_shot")}
accuracy_4 = {s: hand_accuracy(m, x_test, y_test) for s, m in models_4.items()}
kept_4 = {s: sl.masks.masks(m) for s, m in models_4.items()}
both = sum(int((kept_4["cubic"][n] * kept_4["one_shot"][n]).sum()) for n in kept_4["cubic"])
overlap = both / sum(int(m.sum()) for m in kept_4["one_shot"].values())
solution_4 = round(100 * (accuracy_4["cubic"] - accuracy_4["one_shot"]), 1)
print(
    f"random: cubic {accuracy_4['cubic']:.2%}, one-shot {accuracy_4['one_shot']:.2%}, "
    f"{solution_4:+.1f} points (magnitude: {100 * (by_seed['cubic'] - by_seed['one_shot']):+.1f}"
    f"); the cubic ramp keeps {overlap:.1%} of one-shot's kept weights"
)
for schedule in models_4:
    t_4, model_4, _ = scheduled(schedule, criterion="random")
    print(f"{schedule}: {recipes.evaluate_run(model_4, t_4)['flags'] or 'no sanity flag'}")
check_4(solution_4, solution=True)

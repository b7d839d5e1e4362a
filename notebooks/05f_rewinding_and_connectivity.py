# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: sparsity_lab
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   sparsity_lab:
#     runs_alone: true
# ---

# %% [markdown]
# # Rewinding, linear mode connectivity, and ER against ERK
#
# **What you will learn:** four questions the lottery-ticket chapters (03b, 05a) leave
# open.  After pruning a trained network, how should the survivors be retrained:
# fine-tuning at a small learning rate, rewinding the weights to an early point, or
# rewinding only the learning-rate schedule?  When are two trainings from the same start
# in one basin of the loss, so that a mask found by one fits the other (linear mode
# connectivity)?  And how much density should each layer of a CNN get when the mask is
# random: Erdős–Rényi (ER) or its kernel-aware extension (ERK)?  And does a sparse phase in
# the middle of dense training help the dense network (dense-sparse-dense, DSD)?
#
# Survey sections 8.3 (lottery tickets, rewinding), 3.9 (layer budgets) and 2.4.2 (DSD).
# The papers: Renda et al. 2020 (rewinding against fine-tuning), Frankle et al. 2020
# (linear mode connectivity), Mocanu et al. 2018 (ER), Evci et al. 2020 (ERK) and Han et
# al. 2017 (DSD).  Every network here trains with its setting's recipe
# (`recipes.recipe_for`), from the recipe's dense model, with three seeds; differences are
# paired on the seed.

# %%
import copy
import dataclasses
import math

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.phenomena import connectivity, tickets
from sparsity_lab.phenomena.structure import fit_recipe
from sparsity_lab.train import evaluate, fit

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.9, 0.98]
EPOCHS = None  # None: each recipe's own
LMC_SPARSITY = 0.9
ALPHAS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
ERK_SPARSITY = 0.95
DSD_SPARSITY = 0.3

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    SPARSITIES = SPARSITIES[:1]
    EPOCHS = 2
    ALPHAS = [0.0, 0.5, 1.0]
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
recipe = recipes.recipe_for("lenet300", "mnist")
training = {**recipe.training(), **({"epochs": EPOCHS} if EPOCHS else {})}
epochs = training["epochs"]
replay = dataclasses.replace(recipe, epochs=epochs)  # the dense run, to read θk from

# %% [markdown]
# ## 1. Retraining after pruning: fine-tuning or rewinding
#
# Each seed's dense LeNet-300-100 (the recipe's model on the MNIST subset) is pruned once
# by global magnitude to each of SPARSITIES, and the survivors retrain for the recipe's
# epochs in one of three ways (Renda et al. 2020):
#
# - **fine-tuning**: from the trained weights, at the schedule's last learning rate (the
#   rate the cosine schedule starts its final epoch with), constant;
# - **weight rewinding**: the kept weights go back to their values after one epoch of the
#   dense training (θk, replayed from the same start and batch order) and retrain with the
#   whole schedule;
# - **learning-rate rewinding**: from the trained weights, with the whole schedule again.
#
# The paper replays the schedule from epoch k for the remaining epochs; here every arm
# retrains the same number of epochs, so that their costs are equal.

# %%
final_lr = training["lr"] * (1 + math.cos(math.pi * (epochs - 1) / epochs)) / 2


def retrained(t, arm, dense_model, mask):
    """The pruned network retrained as ``arm`` says."""
    model = copy.deepcopy(dense_model)  # the trained weights
    if arm == "weight_rewinding":  # θk: the dense training's first epoch, replayed
        model.load_state_dict(tickets.weights_at_step(t, len(t.loaders(recipe.batch_size)[0]),
                                                      replay))  # fmt: skip
    for name, keep in mask.items():
        sl.masks.attach(model, name, keep)  # attaching zeroes the pruned weights
    if arm == "fine_tuning":
        train, val, _ = t.loaders(recipe.batch_size)
        constant = {**training, "lr": final_lr, "lr_schedule": None}
        fit(model, train, val, seed=t.seed, progress=False, **constant)
    else:
        fit_recipe(model, t, epochs=epochs, recipe=recipe)
    return model


def retraining_row(seed, s, arm):
    """Seed ``seed``'s dense network pruned to ``s``, retrained as ``arm`` says, measured."""
    t, dense_model, _ = recipes.dense("lenet300", "mnist", seed, epochs=EPOCHS)
    found = sl.masks.masks(sl.prune(copy.deepcopy(dense_model), "magnitude", s))
    mask = {n: m.bool() for n, m in found.items()}
    run = recipes.evaluate_run(retrained(t, arm, dense_model, mask), t, target_sparsity=s)
    return {"seed": seed, "sparsity": s, "arm": arm, "test_accuracy": run["accuracy"],
            "flags": run["flags"]}  # fmt: skip


ARMS = ["fine_tuning", "weight_rewinding", "lr_rewinding"]
# independent trainings: a sweep's worker processes run them side by side (one per core in
# JupyterLab), each computing what it would compute here; so do the sections below
calls = [(seed, s, arm) for seed in SEEDS for s in SPARSITIES for arm in ARMS]
retraining = pd.DataFrame(sl.experiments.forked_map(retraining_row, calls))
dense_acc = pd.Series(
    [recipes.dense("lenet300", "mnist", seed, epochs=EPOCHS)[2]["test_accuracy"] for seed in SEEDS]
)
sl.nb.show_flags(sl.flags.table(retraining, ["sparsity", "arm"]))
summary = sl.stats.summarize(retraining, ["sparsity", "arm"], "test_accuracy")
means = summary.set_index(["sparsity", "arm"])["mean"]
display(summary.round(4))
print(f"dense: {dense_acc.mean():.2%} over {len(dense_acc)} seeds "
      f"(the recipe documents {recipe.expected_test_accuracy:.0%} for its full run)")  # fmt: skip

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for arm in ARMS:
    part = summary[summary["arm"] == arm]
    ax.errorbar(part["sparsity"].astype(str), part["mean"],
                yerr=[part["mean"] - part["ci_low"], part["ci_high"] - part["mean"]],
                marker="o", capsize=3, label=arm.replace("_", " "))  # fmt: skip
ax.axhline(dense_acc.mean(), color="k", lw=0.8, ls="--", label="dense")
ax.set_xlabel("sparsity")
ax.set_ylabel("test accuracy (mean, 95% CI)")
ax.set_title("LeNet-300-100: three ways to retrain after pruning")
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Paired on the seed, at each sparsity, against the two claims of the paper:

# %%
verdicts = []
for key, baseline in [("lr_rewinding_beats_fine_tuning", "fine_tuning"),
                      ("lr_rewinding_matches_weight_rewinding", "weight_rewinding")]:  # fmt: skip
    diffs = sl.stats.paired(retraining, "arm", "lr_rewinding", baseline,
                            metric="test_accuracy", by="sparsity")  # fmt: skip
    for row in diffs.itertuples():
        ours = means[row.sparsity, "lr_rewinding"]
        measured = (f"{baseline.replace('_', ' ')} {means[row.sparsity, baseline]:.1%}, "
                    f"learning-rate rewinding {ours:.1%}.")  # fmt: skip
        verdicts.append(sl.claims.judge(
            key, row._asdict(), setting=f"LeNet-300-100, {row.sparsity:.0%}, one-shot",
            measured=measured))  # fmt: skip
display(Markdown(sl.claims.report(verdicts)))

# %% [markdown]
# ## 2. Linear mode connectivity
#
# From one start, two copies train with the recipe but different batch orders (two data
# seeds); then the test error is measured along the straight line between them
# (`connectivity.error_barrier`, ALPHAS points).  The *error barrier* is the highest error
# on the line minus the mean of the two ends'.  Three starts per seed: the dense network's
# initialisation θ0, dense and with the LMC_SPARSITY magnitude mask of the trained dense
# network (IMP's first round, the ticket with rewinding to θ0), and its weights after one
# epoch θk with that mask (the ticket with rewinding to θk).  The dense network from θk is
# left out: the verdicts below judge the starts from θ0, and the θk ticket is what rewinding
# is about.


# %%
def trained_child(start, mask, t, data_seed):
    model = t.build()
    model.load_state_dict(start)
    for name, keep in mask.items():
        sl.masks.attach(model, name, keep)
    train, val, _ = t.loaders(recipe.batch_size)
    fit(model, train, val, seed=data_seed, progress=False, **training)
    return model


def barrier_run(seed, point, sparse):
    """The error barrier between two children of seed ``seed``'s start ``point`` (θ0 or θk),
    dense or with the LMC_SPARSITY mask: its row and the error along the line."""
    t, dense_model, _ = recipes.dense("lenet300", "mnist", seed, epochs=EPOCHS)
    test_loader = t.loaders()[2]
    steps = len(t.loaders(recipe.batch_size)[0])
    mask = {}
    if sparse:
        found = sl.masks.masks(sl.prune(copy.deepcopy(dense_model), "magnitude", LMC_SPARSITY))
        mask = {n: m.bool() for n, m in found.items()}
    start = tickets.weights_at_step(t, {"θ0": 0, "θk": steps}[point], replay)
    a, b = (trained_child(start, mask, t, 1000 * i + seed) for i in (1, 2))
    barrier, path = connectivity.error_barrier(
        a, b, lambda m: 1 - evaluate(m, test_loader)["accuracy"], ALPHAS
    )
    label = f"{f'{LMC_SPARSITY:.0%} sparse' if sparse else 'dense'}, from {point}"
    ends = 1 - (path["error"].iloc[0] + path["error"].iloc[-1]) / 2
    row = {"seed": seed, "start": label, "barrier": barrier,
           "lowest accuracy on the line": 1 - path["error"].max(),
           "mean accuracy of its ends": ends}  # fmt: skip
    return row, path.assign(seed=seed, start=label)


# the dense network from θk is left out: see above
starts = [("θ0", False), ("θ0", True), ("θk", True)]
lines = sl.experiments.forked_map(barrier_run, [(seed, *s) for seed in SEEDS for s in starts])
barriers = pd.DataFrame([row for row, _ in lines])
paths = pd.concat([path for _, path in lines], ignore_index=True)
display(sl.stats.summarize(barriers, "start", "barrier", bounds=None).round(4))

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for label, part in paths.groupby("start", sort=False):
    mean = part.groupby("alpha")["error"].mean()
    ax.plot(mean.index, 100 * mean.values, marker="o", ms=3, label=label)
ax.set_xlabel("α (0: one child, 1: the other)")
ax.set_ylabel("test error, % (mean over seeds)")
ax.set_title("Error along the line between two trainings from one start")
ax.legend(fontsize=8)
fig.tight_layout()

# %%
verdicts, lmc_status = [], {}  # lmc_status: each start from θ0 and its verdict
for label in barriers["start"].unique():
    if "θ0" not in label:
        continue
    part = barriers[barriers["start"] == label]
    diffs = part["lowest accuracy on the line"] - part["mean accuracy of its ends"]
    verdicts.append(sl.claims.judge(
        "lenet_stable_at_init", diffs.tolist(), setting=f"LeNet-300-100 on the MNIST "
        f"subset, {label}", measured=f"barrier {100 * part['barrier'].mean():.2f} points "
        f"(largest over seeds {100 * part['barrier'].max():.2f})."))  # fmt: skip
    lmc_status[label] = verdicts[-1].status
display(Markdown(sl.claims.report(verdicts)))
from_k = barriers[barriers["start"].str.contains("θk")].groupby("start")["barrier"].mean()
display(Markdown("From θk the barriers are " + ", ".join(
    f"{100 * v:.2f} points ({k})" for k, v in from_k.items()) + "."))  # fmt: skip

# %% [markdown]
# ## 3. ER against ERK on a CNN
#
# A random mask still needs a density per layer.  ER (Mocanu et al. 2018) gives a layer a
# density proportional to `(n_in + n_out) / (n_in · n_out)`, counting a convolution's
# channels only; ERK (Evci et al. 2020) counts the kernel's height and width as dimensions
# too, `(n_in + n_out + k_h + k_w) / (n_in · n_out · k_h · k_w)`.  On an MLP the two are
# the same rule.  On LeNet-5 at ERK_SPARSITY they differ (densities, and each layer's
# number of weights):

# %%
t5 = recipes.task("lenet5", "mnist", seed=SEED)
shapes = {n: tuple(sl.masks.weight(t5.build(), n).shape)
          for n in sl.pruning.default_targets(t5.build())}  # fmt: skip
densities = pd.DataFrame(
    {
        b: {n: 1 - v for n, v in sl.budgets.allocate(b, shapes, ERK_SPARSITY).items()}
        for b in ["uniform", "er", "erk"]
    }  # fmt: skip
)
densities["weights"] = [math.prod(shapes[n]) for n in densities.index]
display(densities.round(3))

# %% [markdown]
# Each seed's LeNet-5 starts from its initialisation with a random mask of each budget
# (the fan-in rescaled, `recipes.sparse_start`) and trains with the recipe, the mask fixed:
# static sparse training, where only the layer densities differ between the two arms.

# %%
recipe5 = recipes.recipe_for("lenet5", "mnist")


def budget_run(seed, budget):
    """Seed ``seed``'s LeNet-5 trained from a random mask with ``budget``'s densities."""
    t = recipes.task("lenet5", "mnist", seed=seed)
    scratch = sl.prune(t.build(), "random", ERK_SPARSITY, budget=budget, seed=seed)
    found = {n: m.bool() for n, m in sl.masks.masks(scratch).items()}
    model = recipes.sparse_start(t.build(), found)
    fit_recipe(model, t, epochs=EPOCHS, recipe=recipe5)
    run = recipes.evaluate_run(model, t, target_sparsity=ERK_SPARSITY)
    return {"seed": seed, "budget": budget, "test_accuracy": run["accuracy"],
            "flags": run["flags"]}  # fmt: skip


calls = [(seed, budget) for seed in SEEDS for budget in ["er", "erk"]]
budget_runs = pd.DataFrame(sl.experiments.forked_map(budget_run, calls))
sl.nb.show_flags(sl.flags.table(budget_runs, ["budget"]))
display(sl.stats.summarize(budget_runs, "budget", "test_accuracy").round(4))
erk_vs_er = sl.stats.paired(budget_runs, "budget", "erk", "er", metric="test_accuracy")
convs = [n for n in densities.index if n.startswith("conv")]
kept = {b: (densities[b] * densities["weights"]).round().astype(int) for b in ["er", "erk"]}
display(Markdown(
    f"ERK minus ER at {ERK_SPARSITY:.0%}, paired: {sl.stats.describe(erk_vs_er.iloc[0])}.  "
    f"The two masks keep the same number of weights but spread them differently: ER keeps "
    f"{sum(kept['er'][n] for n in convs)} of the convolutions' weights and ERK "
    f"{sum(kept['erk'][n] for n in convs)}, the rest going to the fully connected layers.  "
    "Which layers' density the accuracy depends on is not measured here.  The ERK paper "
    "compares ERK with the uniform budget, not with ER, so this is a measurement without a "
    "published claim to judge."))  # fmt: skip

# %% [markdown]
# ## 4. Dense-sparse-dense at its paper's protocol
#
# DSD (Han et al. 2017) trains a dense network (D), prunes DSD_SPARSITY of each layer's
# smallest weights and retrains with the same learning rate (S), then removes the mask,
# lets the pruned weights grow back from zero and retrains the whole network at a tenth of
# the learning rate (re-D).  The paper compares the result with the dense baseline; the
# fair control trains the dense model for the same two extra phases without the mask
# ("continued").  Each phase here is the recipe's run: its epochs and cosine schedule.
# (Chapter 03's `dsd` schedule is another experiment: the three phases within a single
# run of the dense budget.)


# %%
def predictions(model, t):
    """The class the model predicts for each test example."""
    with torch.no_grad(), sl.modes.evaluating(model):
        return torch.cat([model(x).argmax(1) for x, _ in t.loaders()[2]])


def phase(model, t, lr_scale):
    train, val, _ = t.loaders(recipe.batch_size)
    scaled = {**training, "lr": training["lr"] * lr_scale}
    fit(model, train, val, seed=t.seed, progress=False, **scaled)


def retrained_twice(seed, arm):
    """Seed ``seed``'s dense network after DSD's S and re-D phases, or after the same two
    phases without the mask (``arm`` "continued")."""
    t, dense_model, _ = recipes.dense("lenet300", "mnist", seed, epochs=EPOCHS)
    if arm == "continued":
        model = copy.deepcopy(dense_model)
        phase(model, t, 1.0)
    else:
        model = sl.prune(copy.deepcopy(dense_model), "magnitude", DSD_SPARSITY, budget="uniform")
        phase(model, t, 1.0)  # S: retrain under the mask
        sl.masks.remove(model)  # re-D: the pruned weights restart from zero
    phase(model, t, 0.1)
    return model


calls = [(seed, arm) for seed in SEEDS for arm in ["dsd", "continued"]]
retrained_models = iter(sl.experiments.forked_map(retrained_twice, calls))
rows, agree = [], []
for seed in SEEDS:
    t, dense_model, _ = recipes.dense("lenet300", "mnist", seed, epochs=EPOCHS)
    dsd, continued = next(retrained_models), next(retrained_models)
    agree.append(float((predictions(dsd, t) == predictions(continued, t)).float().mean()))
    for arm, model in [("dense", dense_model), ("continued", continued), ("dsd", dsd)]:
        run = recipes.evaluate_run(model, t)
        rows.append({"seed": seed, "arm": arm, "test_accuracy": run["accuracy"],
                     "flags": run["flags"]})  # fmt: skip
dsd_runs = pd.DataFrame(rows)
sl.nb.show_flags(sl.flags.table(dsd_runs, ["arm"]))
display(sl.stats.summarize(dsd_runs, "arm", "test_accuracy").round(4))
dsd_diff = sl.stats.paired(dsd_runs, "arm", "dsd", "continued", metric="test_accuracy")
dsd_means = dsd_runs.groupby("arm")["test_accuracy"].mean()
measured = (
    f"dense {dsd_means['dense']:.1%}, continued {dsd_means['continued']:.1%}, DSD "
    f"{dsd_means['dsd']:.1%}; DSD and continued training predict the same class for "
    f"{min(agree):.1%} to {max(agree):.1%} of the test examples, per seed."
)
display(Markdown(sl.claims.report([sl.claims.judge(
    "dsd_beats_continued_training", dsd_diff.iloc[0],
    setting=f"LeNet-300-100 on the MNIST subset, {DSD_SPARSITY:.0%} per layer in S",
    measured=measured)])))  # fmt: skip

# %% [markdown]
# ## Summary

# %%
order = retraining.groupby("arm")["test_accuracy"].mean().sort_values(ascending=False)
stable = barriers.groupby("start", sort=False)["barrier"].mean()
display(Markdown("\n".join([
    "- **Retraining after pruning** (LeNet-300-100, one-shot, the recipe's epochs for every "
    "arm): averaged over the sparsities, " + " > ".join(
        f"{a.replace('_', ' ')} {v:.1%}" for a, v in order.items()) + f" (dense "
    f"{dense_acc.mean():.1%}); the verdicts above say where the paired intervals decide.",
    "- **Linear mode connectivity**: mean error barriers " + ", ".join(
        f"{100 * v:.2f} points ({k}"
        + (f"; the claim of stability from θ0: {lmc_status[k]}" if k in lmc_status else "")
        + ")" for k, v in stable.items()) + "; the claim (Frankle et al. 2020) counts a "
    "start as stable when the whole paired interval of the barrier lies within 2 points.",
    f"- **ER against ERK** on LeNet-5 at {ERK_SPARSITY:.0%}: ER leaves the first "
    f"convolution {densities.loc['conv1.weight', 'er']:.0%} dense and ERK "
    f"{densities.loc['conv1.weight', 'erk']:.0%}; trained with random masks, ERK minus "
    f"ER is {sl.stats.describe(erk_vs_er.iloc[0])}.",
    "- **Dense-sparse-dense**: DSD minus the same training without its mask is "
    + (f"{100 * dsd_diff.iloc[0]['mean_diff']:+.1f} points on every seed (no spread)"
       if dsd_diff.iloc[0]["std"] == 0 else sl.stats.describe(dsd_diff.iloc[0]))
    + f"; the two predict the same class for {min(agree):.1%} to {max(agree):.1%} of the "
    "test examples.",
])))  # fmt: skip

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** What density does ERK give LeNet-5's first convolution at 98% sparsity?  Two
# decimals.  Why does it get so much more than the 2% of the uniform budget?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    density = 1 - sl.budgets.allocate("erk", shapes, 0.98)["conv1.weight"]
    hint = "Call `sl.budgets.allocate('erk', shapes, 0.98)` and take one minus conv1's share."
    sl.nb.check(1, answer, density, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_1 = None  # a density, e.g. 0.25
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  ERK's density is proportional to the sum of a layer's dimensions over their
# product, one factor for all layers: conv1 has one input channel and 150 weights, so its
# ratio is far above the large layers', and it keeps a large share; the zeros come from
# fc1.  By hand: the factor makes the kept weights 2% of all (no layer reaches density 1
# at 98%, so none is capped), and conv1's density is the factor times its ratio.
ratio = {n: sum(shape) / math.prod(shape) for n, shape in shapes.items()}
total = sum(math.prod(shape) for shape in shapes.values())
factor = 0.02 * total / sum(ratio[n] * math.prod(shape) for n, shape in shapes.items())
assert max(factor * r for r in ratio.values()) < 1  # no layer capped at dense
solution_1 = round(factor * ratio["conv1.weight"], 2)
print(f"ERK keeps {solution_1:.2f} of conv1 at 98%")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Which start of section 2 has the largest mean error barrier over the seeds?
# Answer with its label, as in the table (for example `"dense, from θ0"`).


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    mean = barriers.groupby("start")["barrier"].mean()
    hint = "Average `barriers` by start and take the largest; labels are in `barriers.start`."
    sl.nb.check(2, answer, lambda a: mean.get(a) == mean.max(), hint=hint, solution=solution)


# %%
answer_2 = None  # a label of `barriers["start"]`
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The barrier is measured per seed and start; its mean over the seeds ranks
# the starts (a tie at the top: any of them is right).  It is recomputed here from the raw
# errors along the lines (`paths`): the highest error minus the mean of the two ends'.
line = paths.set_index(["start", "seed", "alpha"])["error"].unstack("alpha")
by_hand = line.max(axis=1) - (line[0.0] + line[1.0]) / 2
solution_2 = by_hand.groupby(level="start").mean().idxmax()
print(f"largest mean barrier: {solution_2}")
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Repeat section 3 with the uniform budget on its first seed, `SEEDS[0]`: a random
# mask at `ERK_SPARSITY` with `budget="uniform"`, started with `recipes.sparse_start` and
# trained with `fit_recipe(model, t, epochs=EPOCHS, recipe=recipe5)`, as section 3 trains
# ER and ERK.  What is its test accuracy minus that of the ERK mask on the same seed (in
# `budget_runs`), in points?  One decimal.  Where does the uniform budget put the density
# that ERK gives the first convolution?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
uniform_run = {}  # the network is trained once, for the check and the solution


def uniform_lenet5():
    """The task of seed SEEDS[0] and its LeNet-5 trained from a uniform random mask at
    ERK_SPARSITY, as section 3 trains ER and ERK."""
    if not uniform_run:
        t = recipes.task("lenet5", "mnist", seed=SEEDS[0])
        scratch = sl.prune(t.build(), "random", ERK_SPARSITY, budget="uniform", seed=SEEDS[0])
        found = {n: m.bool() for n, m in sl.masks.masks(scratch).items()}
        model = recipes.sparse_start(t.build(), found)
        fit_recipe(model, t, epochs=EPOCHS, recipe=recipe5)
        uniform_run.update(task=t, model=model)
    return uniform_run["task"], uniform_run["model"]


def check_3(answer, solution=False):
    t, model = uniform_lenet5()
    uniform = recipes.evaluate_run(model, t, target_sparsity=ERK_SPARSITY)["accuracy"]
    erk = budget_runs.set_index(["seed", "budget"]).loc[(SEEDS[0], "erk"), "test_accuracy"]
    hint = "Build the mask as section 3 does, with budget='uniform'; subtract ERK's SEEDS[0] row."
    sl.nb.check(3, answer, 100 * (uniform - erk), hint=hint, tolerance=0.05, solution=solution)


# %%
answer_3 = None  # points, e.g. -1.5
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  The uniform budget keeps the same share of every layer, so the first
# convolution, whose 150 weights read the image, keeps only a handful of them, where ERK
# gives it a far larger share (the densities are printed below); the weights uniform saves
# on the small layers go to the largest one, fc1.  The accuracy is counted here by hand
# from the test predictions (one seed: the difference needs more seeds to mean much).
task_3, model_3 = uniform_lenet5()
hits = predictions(model_3, task_3) == task_3.bundle.test.tensors[1]
uniform_accuracy = hits.sum().item() / len(hits)
erk_row = budget_runs[(budget_runs["seed"] == SEEDS[0]) & (budget_runs["budget"] == "erk")]
solution_3 = round(100 * (uniform_accuracy - erk_row["test_accuracy"].item()), 1)
kept_conv1 = int(sl.masks.masks(model_3)["conv1.weight"].sum())
conv1 = densities.loc["conv1.weight"]
print(f"conv1 keeps {kept_conv1} of {int(conv1['weights'])} weights with the uniform budget, "
      f"about {conv1['erk'] * conv1['weights']:.0f} with ERK; uniform {uniform_accuracy:.2%}, "
      f"uniform minus ERK {solution_3:+.1f} points")  # fmt: skip
check_3(solution_3, solution=True)

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
# # Early structure adaptation and lottery tickets
#
# **What you will learn:** how early in dense training the mask of the final sparse
# network is already decided, whether pruning at that early point is as good as pruning
# at the end (early-bird tickets), and whether a lottery ticket's own initial weights
# matter compared with re-initialised weights and random masks.
#
# This follows sections 2.4.2 ("early structure adaptation") and 8.3 (lottery tickets)
# of the survey.  The analyses live in `sparsity_lab.phenomena.structure` and
# `sparsity_lab.phenomena.tickets`; the training methods (IMP, early-bird) in
# `sparsity_lab.methods.lottery`.

# %%
import copy
import math

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import recipes, run_cache
from sparsity_lab.ephemeral import heads as heads_mod
from sparsity_lab.phenomena import structure, tickets

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
DATA = "mnist"
EPOCHS = None  # None: each recipe's own epochs (dense training and every IMP round)
FINETUNE_EPOCHS = 3
TARGET = 0.9
EPSILON = 0.02
WINDOW = 3
APOZ_SPARSITY = 0.5
HEAD_SPARSITY = 0.5
HEAD_EPOCHS = None  # None: the tiny transformer's recipe on "chars"
CHAR_OPTIONS = {}  # the default next-character data
IMP_ROUNDS = 2  # to TARGET 90%, each round prunes 68% of what is left; a third round: +1/3 time
CNN_OPTIONS = {}  # LeNet-5 on the default MNIST split: the recipe's expected accuracy is checked

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    DATA = "digits"
    EPOCHS = 6
    FINETUNE_EPOCHS = 1
    WINDOW = 2
    HEAD_EPOCHS = 2
    CHAR_OPTIONS = {"n_train": 6000, "n_val": 300, "n_test": 300}
    CNN_OPTIONS = {"n_train": 500}
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
verdicts = []  # the verdicts against the literature, for the summary


# %% [markdown]
# ## How far is each epoch's mask from the final one?
#
# Two masks are compared by their **IoU** (the kept entries both share, over the entries
# either keeps) and their **Hamming distance** (the share of entries on which they
# differ).  A hand example, checked by the notebook run:

# %% tags=["nbval-check-output"]
import torch

a = torch.tensor([1, 1, 0, 0, 1, 0])
b = torch.tensor([1, 0, 1, 0, 1, 0])
print(f"IoU {structure.iou(a, b):.3f}, Hamming {structure.hamming(a, b):.3f}")

# %% [markdown]
# LeNet-300-100 trains densely with its recipe while a `MaskTracker` callback records,
# after every epoch, the masks two criteria *would* choose: the global magnitude top-k at
# the target sparsity, and the APoZ channel mask (Hu et al. 2016) of the two hidden layers.
# The tracked run replays the recipe's dense training (`recipes.dense`: same
# initialisation, batch order and recipe) and is never pruned.  Then two arms with the
# same epoch budget: the *late* arm prunes the recipe's trained dense model by global
# magnitude and fine-tunes it with the mask fixed (`recipes.finetune`); the *early* arm
# runs the early-bird method (You et al. 2020) from the same initialisation, drawing its
# ticket when consecutive magnitude masks differ (Hamming distance) by less than `EPSILON`
# for `WINDOW` epochs in a row, and trains it for the rest of the budget.  The text below
# the plots gives both values.
#
# The stopping rule is the paper's, the masks are not.  You et al. 2020 draw channel masks
# by network slimming (Liu et al. 2017): the BatchNorm scale factors, trained with an L1
# penalty at a large learning rate.  LeNet-300-100 has no BatchNorm, so here the ticket is
# the global unstructured magnitude mask, under the recipe's training with no sparsity
# penalty; the APoZ channel masks are only tracked, never drawn.

# %%
schedule = {"epochs": EPOCHS, "finetune_epochs": FINETUNE_EPOCHS, "epsilon": EPSILON}


def early_late_run(seed):
    """Both arms of one seed, with the masks' curves (`structure.early_against_late`)."""
    t = recipes.task("lenet300", DATA, seed=seed)
    probe = tuple(next(iter(t.loaders()[1])))  # a fixed validation batch for APoZ
    apoz = {"pattern": "channel", "budget": "uniform", "targets": ["fc1.weight", "fc2.weight"]}
    selectors = {
        "magnitude (weights)": structure.criterion_selector("magnitude", TARGET),
        "APoZ (channels)": structure.criterion_selector("apoz", APOZ_SPARSITY, data=probe, **apoz),
    }
    return structure.early_against_late(t, TARGET, window=WINDOW, selectors=selectors, **schedule)


# the seeds are independent trainings: the sweep's worker processes run them side by side
outs = sl.experiments.forked_map(early_late_run, [(seed,) for seed in SEEDS])
curves = pd.concat([o.pop("table").assign(seed=s) for s, o in zip(SEEDS, outs, strict=True)])
curves = curves.reset_index(drop=True)
runs = pd.DataFrame({"seed": seed, **out} for seed, out in zip(SEEDS, outs, strict=True))
n_epochs = int(curves["epoch"].max())

fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
sl.experiments.plot_mean_ci(curves, "epoch", "iou_to_final", hue="criterion", ax=axes[0])
axes[0].set_title("IoU with the final mask")
later = curves[curves["epoch"] > 0]
sl.experiments.plot_mean_ci(later, "epoch", "hamming_to_previous", hue="criterion", ax=axes[1])
axes[1].axhline(EPSILON, color="k", ls=":", label="early-bird epsilon")
axes[1].legend()  # plot_mean_ci made the legend before the epsilon line existed
axes[0].set_ylabel("IoU with the final mask")
axes[1].set(yscale="log", title="Hamming distance to the previous epoch",
            ylabel="share of mask entries that differ")  # fmt: skip
fig.tight_layout()
plt.show()

ARMS = {"dense": "dense", "late": "late", "early-bird": "early"}  # arm -> key in `runs`
arms = pd.DataFrame(
    {"arm": arm, "seed": r["seed"], "test_accuracy": r[f"{k}_accuracy"], "flags": r[f"{k}_flags"]}
    for _, r in runs.iterrows()
    for arm, k in ARMS.items()
)
display(sl.stats.summarize(arms, "arm", "test_accuracy").round(4))
flagged = sl.flags.table(arms, "arm")
sl.nb.show_flags(flagged)

# %%
at = curves.groupby(["criterion", "epoch"])["iou_to_final"].mean()
first = {c: at[c].loc[1] for c in at.index.levels[0]}
half = {c: at[c].loc[n_epochs // 2] for c in at.index.levels[0]}
early_late = sl.stats.paired(arms, "arm", "early-bird", "late", metric="test_accuracy").iloc[0]
sl.nb.md(
    f"After one epoch the magnitude mask shares IoU "
    f"{first['magnitude (weights)']:.2f} with the final one and the APoZ channel mask "
    f"{first['APoZ (channels)']:.2f}; after {n_epochs // 2} of {n_epochs} epochs these are "
    f"{half['magnitude (weights)']:.2f} and {half['APoZ (channels)']:.2f}.  The tracked "
    f"replay {'ends' if runs['replay_iou'].min() == 1 else 'does not end'} on the "
    f"recipe's dense mask (IoU {runs['replay_iou'].min():.3f}).  "
    f"The early-bird rule (Hamming distance below {EPSILON} for {WINDOW} epochs in a row) "
    f"fired at epoch(s) {runs['early_epoch'].tolist()} of {n_epochs} "
    f"(the recorded curve gives {runs['stable_epoch'].tolist()}); the early and late "
    f"masks share IoU {runs['early_late_iou'].mean():.2f}.  The late arm fine-tuned "
    f"{runs['finetune_epochs'].iloc[0]} epoch(s) "
    f"({runs['finetune_flops'].mean():.2g} FLOPs).  Early-bird minus late: "
    f"{sl.stats.describe(early_late)}."
)

# %% [markdown]
# **Against the literature**, computed from the paired difference above.  The signal
# differs from the paper's: You et al. 2020 compare channel masks from BatchNorm scales
# trained under an L1 sparsity penalty at a large learning rate, with epsilon 0.1; here
# they are unstructured magnitude masks of LeNet-300-100 trained without a penalty, with
# epsilon `EPSILON`.

# %%
PAPER_EPSILON = 0.1  # You et al. (2020) on channel masks
margin = sl.claims.get("early_bird_matches_late").margin
measured = (
    f"The ticket was drawn at epoch(s) {runs['early_epoch'].tolist()} of {n_epochs}, "
    f"with epsilon {EPSILON} on unstructured masks (the paper: channel masks, epsilon "
    f"{PAPER_EPSILON}); the late arm had {FINETUNE_EPOCHS} fine-tuning epoch(s)."
)
low = early_late["ci_low"]
if abs(low + margin) < 0.0005:  # the lower bound lies within 0.05 points of the margin
    side = "inside" if low >= -margin else "outside"
    measured = (
        f"The lower bound, {low * 100:+.2f} points, is just {side} the "
        f"{margin * 100:.1f}-point margin.  " + measured
    )
early_verdict = sl.claims.judge(
    "early_bird_matches_late",
    early_late,
    setting=f"LeNet-300-100 on {DATA}, {TARGET:.0%} sparse, unstructured magnitude masks",
    measured=measured,
)
verdicts.append(early_verdict)
sl.nb.md(sl.claims.report([early_verdict]))

# %% [markdown]
# ### Attention heads
#
# The same tracker works for any structure; here the head-importance scores of Michel et
# al. (2019), computed on a validation batch, on the tiny transformer trained by its
# recipe for next-character prediction (`"chars"`).  The model is `recipes.dense`'s own,
# which keeps the weights it had after every epoch of its training (`info["epoch_states"]`),
# so the tracker replays them (`MaskTracker.replay`) instead of training it again.
# Is the set of heads worth keeping decided early too?  Each seed's trained model is
# pruned, without fine-tuning, to the heads the mask after epoch 1 keeps and to those the
# final mask keeps; held-out accuracy and perplexity compare the two.

# %%
head_runs, head_curves = [], []
for seed in SEEDS:
    ht, model, head_info = recipes.dense(
        "tiny_transformer", "chars", seed, epochs=HEAD_EPOCHS, **CHAR_OPTIONS
    )
    head_tracker = structure.MaskTracker(
        {"heads": structure.head_selector(tuple(next(iter(ht.loaders()[1]))), HEAD_SPARSITY)}
    ).replay(model, head_info["epoch_states"])
    head_curves.append(head_tracker.table().assign(seed=seed))
    records = head_tracker.records["heads"]
    arms = {"all heads": None, "epoch-1 mask": records[1], "final mask": records[-1]}
    for arm, keep in arms.items():
        pruned = copy.deepcopy(model)
        if keep is not None:
            heads_mod.prune_heads(pruned, keep=keep)
        run = recipes.evaluate_run(pruned, ht)
        if keep is None and HEAD_EPOCHS is None and not CHAR_OPTIONS:  # the recipe's own run
            expected = recipes.recipe_for("tiny_transformer", "chars").expected_test_accuracy
            below = sl.flags.check(dense_accuracy=run["accuracy"], expected_dense_accuracy=expected)
            run["flags"] = sl.flags.join([f for f in (run["flags"], *below) if f])
        measured = {"test_accuracy": run["accuracy"], "perplexity": run["perplexity"]}
        head_runs.append({"arm": arm, "seed": seed, **measured, "flags": run["flags"]})
head_curves = pd.concat(head_curves, ignore_index=True)
head_runs = pd.DataFrame(head_runs)
n_heads = sum(k.numel() for k in records[-1].values())
head_epochs = int(head_curves["epoch"].max())
display(head_curves.groupby("epoch")[["iou_to_final", "hamming_to_final"]].mean().round(3))
accuracy_columns = {c: f"accuracy_{c}" for c in ("mean", "std", "ci_low", "ci_high")}
display(
    sl.stats.summarize(head_runs, "arm", "test_accuracy")
    .rename(columns=accuracy_columns)
    .join(head_runs.groupby("arm")["perplexity"].mean().rename("perplexity_mean"), on="arm")
    .round(4)
)
flagged = sl.flags.table(head_runs, "arm")
sl.nb.show_flags(flagged)

# %%
iou_by_epoch = head_curves.groupby("epoch")["iou_to_final"].mean()


def heads_minus(arm, baseline, metric="test_accuracy"):
    return sl.stats.paired(head_runs, "arm", arm, baseline, metric=metric).iloc[0]


head_diff = heads_minus("epoch-1 mask", "final mask")
ppl_diff = heads_minus("epoch-1 mask", "final mask", metric="perplexity")
cost = heads_minus("final mask", "all heads")
before_end = head_curves[head_curves["epoch"] == head_epochs - 1]
settled = int((before_end["iou_to_final"] == 1).sum())
# the IoU two random sets of k of the n heads share in expectation (hypergeometric overlap j)
n_kept = sum(int(k.sum()) for k in records[-1].values())
random_iou = sum(
    math.comb(n_kept, j)
    * math.comb(n_heads - n_kept, n_kept - j)
    / math.comb(n_heads, n_kept)
    * (j / (2 * n_kept - j) if 2 * n_kept - j else 1.0)
    for j in range(n_kept + 1)
)
sl.nb.md(
    f"Of the heads kept at the end ({HEAD_SPARSITY:.0%} of {n_heads} dropped), the mask "
    f"at initialisation shares IoU {iou_by_epoch.loc[0]:.2f} on average over "
    f"{len(SEEDS)} seed(s) and the mask after one epoch {iou_by_epoch.loc[1]:.2f} "
    f"({head_epochs} epoch(s) of the recipe on {len(ht.bundle.train):,} windows).  Two "
    f"random sets of {n_kept} of the {n_heads} heads share IoU {random_iou:.2f} in "
    f"expectation.  With only {n_heads} heads in all, the IoU takes a few coarse values, "
    f"and one head more or less changes it by a large step.  One epoch before the end "
    f"the IoU is {iou_by_epoch.loc[head_epochs - 1]:.2f} on average, and the set of heads "
    f"had settled (IoU 1) in {settled} of {len(before_end)} seed(s)"
    f"{', so it is settled before training ends' if settled == len(before_end) else ''}"
    f"{', so here it is not decided early' if settled < len(before_end) else ''}.  "
    f"Pruning the trained model to the epoch-1 heads instead of the final ones changes "
    f"held-out accuracy by {sl.stats.describe(head_diff)}; perplexity changes by "
    f"{sl.stats.describe(ppl_diff, scale=1.0, unit='')}.  The final mask minus all "
    f"heads: {sl.stats.describe(cost)}."
)

# %% [markdown]
# ## Lottery tickets: rewinding, re-initialisation and random masks
#
# Iterative magnitude pruning (IMP) over `IMP_ROUNDS` rounds, each pruning the same fraction
# of what is left (the paper prunes 20% per round over many rounds; two rounds to 90%, 68%
# each, keep this notebook within the book's time budget and are closer to one-shot
# pruning), on two settings: LeNet-300-100 and the convolutional LeNet-5, both on the
# MNIST subset.  Round 0 is the recipe's dense model; every round trains with the setting's
# recipe.  After each round the surviving weights are rewound either to their values at
# initialisation (θ0) or after one epoch (θk).  The baselines take the θ0 ticket's last
# mask with fresh random weights (re-initialised), and a random mask with the same number
# of weights in every layer on θ0 (`recipes.random_like`); they train in the last round
# only, where the verdicts compare the networks (`baselines="last"`), so the figure shows
# them as single points.  The θ0 ticket and both baselines
# start through `recipes.sparse_start` (kept weights rescaled to their sparse fan-in), so
# that none of them fails only because its signal fades at initialisation.  Rewinding only
# the learning rate, and whether two trainings from θ0 or θk end in one basin (linear mode
# connectivity), are measured in [05f](05f_rewinding_and_connectivity.ipynb).

# %%
TICKET_SETTINGS = [("lenet300", DATA, {}), ("lenet5", "mnist", CNN_OPTIONS)]


def imp_table(seed, model_name, data, options):
    """The IMP rounds and baselines of one setting on one seed, as a table."""
    t = recipes.task(model_name, data, seed=seed, **options)
    table = tickets.ticket_rounds(
        t, TARGET, rounds=IMP_ROUNDS, epochs=EPOCHS, dense_epochs=EPOCHS, baselines="last"
    )
    return table.assign(seed=seed, task=f"{model_name} / {data}")


runs_before = run_cache.counts()  # make book and make lab keep the tables (run_cache)
calls = [(seed, *setting) for seed in SEEDS for setting in TICKET_SETTINGS]
# independent trainings: a sweep's worker processes run them side by side (one per core
# in JupyterLab), each computing what it would compute here; LeNet-5's rounds take about
# twice LeNet-300-100's, so they start first and the workers end together
tables = sl.experiments.forked_map(imp_table, calls, first=lambda _, model, *__: model == "lenet5")
ticket_table = pd.concat(tables, ignore_index=True)
settings = {}
for model_name, data, options in TICKET_SETTINGS:
    t = recipes.task(model_name, data, seed=SEEDS[-1], **options)
    settings[f"{model_name} / {data}"] = {
        # the prunable weights (every Linear/Conv weight; biases are never pruned)
        "weights": int(sl.report(t.build()).set_index("name").loc["total", "parameters"]),
        "train": len(t.bundle.train),
        "epochs": EPOCHS or recipes.recipe_for(model_name, data).epochs,
        "expected": recipes.recipe_for(model_name, data).expected_test_accuracy
        if EPOCHS is None and not options
        else None,
    }

# each panel has its own y axis: a shared one would stretch one setting's axis to the other's
# lowest curve and squash the differences between its networks
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
for ax, (task_name, group) in zip(axes, ticket_table.groupby("task", sort=False), strict=True):
    dense = group[group["network"] == "dense"]["test_accuracy"].mean()
    sl.experiments.plot_mean_ci(
        group[group["round"] > 0], "sparsity", "test_accuracy", hue="network", ax=ax
    )
    ax.axhline(dense, color="k", ls="--", label="dense")
    ax.set(title=f"{task_name} (own y scale)", ylabel="test accuracy")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

last = ticket_table[ticket_table["round"].isin([0, IMP_ROUNDS])]
display(
    sl.stats.summarize(last, ["task", "round", "sparsity", "network"], "test_accuracy").round(4)
)
flagged = sl.flags.table(ticket_table, ["task", "network", "round"])
sl.nb.show_flags(flagged)

# %%
final = ticket_table[ticket_table["round"] == IMP_ROUNDS]


def theta0_minus(rows, other):
    """Ticket θ0 minus ``other`` in ``rows``: the paired test-accuracy difference."""
    return sl.stats.paired(
        rows, "network", tickets.NETWORKS[0], other, metric="test_accuracy"
    ).iloc[0]


ticket_verdicts, lines = [], []
for task_name, group in final.groupby("task", sort=False):
    diff = {other: theta0_minus(group, other) for other in tickets.NETWORKS[1:]}
    dense = ticket_table[(ticket_table["task"] == task_name) & (ticket_table["round"] == 0)]
    compared = group[group["network"].isin([tickets.NETWORKS[0], tickets.NETWORKS[2]])]
    at_chance = int(compared["flags"].str.contains("chance").sum())
    info_ = settings[task_name]
    expected = (
        f"the recipe expects {info_['expected']:.0%}"
        if info_["expected"]
        else "a shortened run or a data subset, so the recipe's expectation is not checked"
    )
    reason = (
        f"Dense model: {info_['weights']:,} prunable weights (biases are not pruned), "
        f"{info_['epochs']} epochs per round on {info_['train']:,} training examples, "
        f"{dense['test_accuracy'].mean():.1%} test accuracy ({expected}); "
        f"{1 - group['sparsity'].iloc[0]:.1%} of the prunable weights are kept (the paper's "
        f"smallest tickets keep 3.6%)."
    )
    if at_chance:
        reason += (
            f"  {at_chance} of {len(compared)} compared runs are at chance level, so the "
            "difference says which network trains at all."
        )
    v = sl.claims.judge(
        "tickets_beat_reinit",
        diff[tickets.NETWORKS[2]],
        setting=f"{task_name}, {group['sparsity'].iloc[0]:.1%} sparse after {IMP_ROUNDS} rounds",
        reason=reason,
    )
    ticket_verdicts.append(v)
    lines.append(
        f"- **{task_name}**: ticket θ0 minus random mask "
        f"{sl.stats.describe(diff[tickets.NETWORKS[3]])}; minus ticket θk "
        f"{sl.stats.describe(diff[tickets.NETWORKS[1]])}."
    )
verdicts.extend(ticket_verdicts)
cache_note = run_cache.summary(runs_before)
sl.nb.md(
    f"Paired differences at the last round ({IMP_ROUNDS} IMP rounds, "
    f"{final['sparsity'].iloc[0]:.1%} sparse; test accuracy):\n\n"
    + "\n".join(lines)
    + (f"\n\n{cache_note}" if cache_note else "")
)

# %% [markdown]
# **Against the literature** (Frankle & Carbin 2019; Frankle et al. 2020 found that
# deeper networks need rewinding to θk), computed from the paired differences:

# %%
sl.nb.md(sl.claims.report(ticket_verdicts))
to_dense = {k: theta0_minus(last[last["task"] == k], "dense") for k in final["task"].unique()}
sl.nb.md(
    "The claim also says the ticket stays near dense accuracy; the verdicts test only "
    "the ticket against re-initialisation.  Ticket θ0 minus the dense model here: "
    + "; ".join(f"{k}: {sl.stats.describe(r)}" for k, r in to_dense.items())
    + "."
)
rewinding = {k: theta0_minus(g, tickets.NETWORKS[1]) for k, g in final.groupby("task", sort=False)}
sl.nb.md(
    "Rewinding to θ0 instead of θk here: "
    + "; ".join(f"{k}: {sl.stats.describe(r)}" for k, r in rewinding.items())
    + ".  "
    + (
        "In neither setting was θ0 measurably worse than θk."
        if all(r["verdict"] != "worse" for r in rewinding.values())
        else "θ0 was worse in at least one setting, as the deeper networks of Frankle "
        "et al. (2020) were."
    )
)

# %% [markdown]
# ## Summary
#
# - `MaskTracker` records the mask any criterion would pick at every epoch without
#   touching training; IoU and Hamming distance to the final mask measure how early the
#   structure is decided.
# - The early-bird rule turns the curve into a decision; `early_against_late` compares the
#   early ticket with pruning the recipe's dense model at the end, under the same epoch
#   budget.
# - `ticket_rounds` runs IMP from the recipe's dense model with both rewinding points and
#   both baselines; the θ0 ticket and both baselines start the same way (`sparse_start`)
#   and the θk ticket from its rewound weights, so the lottery-ticket claim is tested, not
#   assumed.
#
# The verdicts of this run:

# %%
display(sl.claims.table(verdicts))
sl.nb.md(sl.claims.report(verdicts))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks of exercises 2 to 4
# measure: they run the experiment your answer is about.
#
# **1.** Set `EPSILON` to 0.1, the paper's value, and apply the early-bird rule (Hamming
# distance to the previous epoch below epsilon for `WINDOW` epochs in a row, the first
# distance being between epochs 1 and 2) to seed `SEED`'s recorded magnitude curve in
# `curves`.  At which epoch does it fire?  Why does 0.1 let it fire so early on these
# masks?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    curve = curves[(curves["seed"] == SEED) & (curves["criterion"] == "magnitude (weights)")]
    curve = curve[curve["epoch"] > 1]
    epoch = structure.stabilisation_epoch(
        list(curve["hamming_to_previous"]), epsilon=0.1, window=WINDOW, epochs=list(curve["epoch"])
    )
    hint = "Pass `hamming_to_previous` from epoch 2 on to `structure.stabilisation_epoch`."
    sl.nb.check(1, answer, epoch, hint=hint, solution=solution)


# %%
answer_1 = None  # an epoch, e.g. 7
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  The rule by hand: walk the epochs from 2 on and stop at the first whose
# last `WINDOW` distances are all below 0.1.  Each magnitude mask keeps exactly
# 1 - TARGET of the weights, so two of them differ on at most 2 (1 - TARGET) of the
# entries: 0.2 at 90% sparsity, and 0.1 is half the largest distance there can be.  The
# paper's 0.1 was set for channel masks; on these masks every distance may already be
# below it, and then the rule fires at the first epoch its window allows, whatever the
# masks do after.
magnitude_curve = curves[(curves["seed"] == SEED) & (curves["criterion"] == "magnitude (weights)")]
distance = dict(zip(magnitude_curve["epoch"], magnitude_curve["hamming_to_previous"], strict=True))
solution_1 = next(
    e for e in range(1 + WINDOW, n_epochs + 1) if all(distance[e - i] < 0.1 for i in range(WINDOW))
)
print(f"fires at epoch {solution_1} (the earliest possible: {1 + WINDOW}); the distances "
      f"never exceed {max(d for e, d in distance.items() if e > 1):.3f}, "
      f"at most {2 * (1 - TARGET):.1f} possible")  # fmt: skip
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Track the `snip` criterion (global budget, `TARGET`, on one validation batch) next
# to magnitude while LeNet-300-100 trains densely with its recipe on seed `SEED`
# (`structure.MaskTracker` with `structure.criterion_selector("snip", TARGET, data=batch)`,
# trained by `structure.fit_recipe` for `EPOCHS` epochs).  What IoU does the SNIP mask
# after epoch 1 share with its final mask?  Two decimals.  Does the gradient-based mask
# settle earlier or later than the magnitude mask?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
import dataclasses
import functools
import warnings

import torch.nn.functional as F

from sparsity_lab.callbacks import Callback


class Snapshots(Callback):
    """The model's weights after every epoch."""

    def on_train_begin(self, trainer):
        self.states = []

    def on_epoch_end(self, trainer):
        self.states.append(copy.deepcopy(trainer.model.state_dict()))


@functools.cache
def snip_tracked():
    """The dense recipe's training on seed SEED with SNIP and magnitude tracked: the
    validation batch, the tracker and the weights after each epoch."""
    t = recipes.task("lenet300", DATA, seed=SEED)
    batch = tuple(next(iter(t.loaders()[1])))
    tracker = structure.MaskTracker(
        {
            "snip": structure.criterion_selector("snip", TARGET, data=batch),
            "magnitude": structure.criterion_selector("magnitude", TARGET),
        }
    )
    snapshots = Snapshots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a global SNIP mask can empty a layer; see solution 2
        structure.fit_recipe(t.build(), t, epochs=EPOCHS, callbacks=[tracker, snapshots])
    return batch, tracker, snapshots


def check_2(answer, solution=False):
    table = snip_tracked()[1].table().set_index(["criterion", "epoch"])
    hint = "Read `iou_to_final` of the tracker's `table()` for the SNIP criterion at epoch 1."
    expected = table.loc[("snip", 1), "iou_to_final"]
    sl.nb.check(2, answer, expected, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # an IoU, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  SNIP by hand from the saved weights: the gradient of the loss on the batch,
# the score |gradient * weight|, and the top 1 - TARGET of all scores kept.  The IoU is
# what both masks keep over what either keeps.  The gradient changes with every step far
# more than the weights do, so a mask built on it can keep moving after the order of the
# weights has settled; the two IoUs say whether it does here.  One global threshold on
# |gradient * weight| can even empty a whole layer at some epochs, which is why the
# tracking silences the warning.
batch, tracker, snapshots = snip_tracked()
lenet_task = recipes.task("lenet300", DATA, seed=SEED)


def snip_by_hand(state):
    model = lenet_task.build()
    model.load_state_dict(state)
    weights = [model.fc1.weight, model.fc2.weight, model.fc3.weight]
    grads = torch.autograd.grad(F.cross_entropy(model(batch[0]), batch[1]), weights)
    scores = torch.cat([(g * w).abs().flatten() for g, w in zip(grads, weights, strict=True)])
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[scores.argsort(descending=True)[: scores.numel() - round(TARGET * scores.numel())]] = True
    return keep


after_1, final_mask = snip_by_hand(snapshots.states[0]), snip_by_hand(snapshots.states[-1])
solution_2 = round(int((after_1 & final_mask).sum()) / int((after_1 | final_mask).sum()), 2)
table = tracker.table().set_index(["criterion", "epoch"])
print(f"after epoch 1: SNIP IoU {solution_2:.2f}, magnitude "
      f"{table.loc[('magnitude', 1), 'iou_to_final']:.2f} with their final masks")  # fmt: skip
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Rewind earlier: run `tickets.ticket_rounds` for LeNet-300-100 on `DATA` and seed
# `SEED` as above (`TARGET`, `IMP_ROUNDS` rounds, `EPOCHS`), but with `rewind_step` half an
# epoch, `len(train_loader) // 2` optimizer steps with the recipe's batch size.  At the
# last round, by how many points does the θk ticket beat the re-initialised network
# (negative if it loses)?  One decimal.  Is that more or less than with the rewind of one
# epoch above, on the same seed?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache
def half_epoch_rewind():
    """`ticket_rounds` on LeNet-300-100, seed SEED, rewinding to half an epoch: the θk line
    only, since the θ0 line and its baselines do not depend on the rewind step (they are the
    rows of `final` above)."""
    t = recipes.task("lenet300", DATA, seed=SEED)
    half = len(t.loaders(recipes.recipe_for("lenet300", DATA).batch_size)[0]) // 2
    return tickets.ticket_rounds(t, TARGET, rounds=IMP_ROUNDS, epochs=EPOCHS, dense_epochs=EPOCHS,
                                 rewind_step=half, networks=tickets.NETWORKS[1:2])  # fmt: skip


def check_3(answer, solution=False):
    table = half_epoch_rewind()
    last = table[table["round"] == IMP_ROUNDS].set_index("network")
    ours = final[(final["task"] == f"lenet300 / {DATA}") & (final["seed"] == SEED)]
    reinit = ours.set_index("network").loc[tickets.NETWORKS[2], "test_accuracy"]
    hint = ("Subtract the re-initialised network's `test_accuracy` (the same at any rewind "
            "step) from the θk ticket's at the last round, in points.")  # fmt: skip
    advantage = 100 * (last.loc[tickets.NETWORKS[1], "test_accuracy"] - reinit)
    sl.nb.check(3, answer, advantage, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_3 = None  # points, e.g. 1.5
check_3(answer_3)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  IMP by hand.  Each round prunes the previous round's trained network to
# 1 - (1 - TARGET)^(r / IMP_ROUNDS) by global magnitude (the smallest |w| of all layers
# pooled); the θk line restarts from the weights after half an epoch of the recipe's run.
# The re-initialised network takes the θ0 line's last mask on fresh weights, so the rewind
# step does not change it: it is the one of the table above (solution 4 builds one by
# hand).  A ticket that wins at one epoch but not at half an epoch says that the first
# steps of training are what the ticket needs.
lenet_task = recipes.task("lenet300", DATA, seed=SEED)
_, dense_model, dense_info = recipes.dense("lenet300", DATA, SEED, epochs=EPOCHS)
recipe = dense_info["recipe"]


class StopAt(Callback):
    """Saves the weights after ``step`` optimizer steps and stops training."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer):
        if trainer.step == self.step:
            self.state = copy.deepcopy(trainer.model.state_dict())
            trainer.stop = True


def magnitude_masks(model, sparsity):
    """Global magnitude by hand: the round(sparsity * n) smallest |w| of all layers pruned."""
    names = ["fc1.weight", "fc2.weight", "fc3.weight"]
    w = {n: sl.masks.weight(model, n).detach().abs() for n in names}
    flat = torch.cat([w[n].flatten() for n in names])
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[flat.argsort(stable=True)[: round(sparsity * flat.numel())]] = False
    parts = keep.split([w[n].numel() for n in names])
    return {n: part.reshape(w[n].shape) for n, part in zip(names, parts, strict=True)}


def imp_by_hand(sparsity, rounds, rewind_state=None):
    """IMP from the dense model, restarting each round from θ0 (rescaled) or, given
    ``rewind_state``, from those weights: the last round's mask and trained network."""
    model = dense_model
    for r in range(1, rounds + 1):
        mask = magnitude_masks(model, 1 - (1 - sparsity) ** (r / rounds))
        if rewind_state is None:
            model = recipes.sparse_start(lenet_task.build(), mask)
        else:
            model = lenet_task.build()
            model.load_state_dict(rewind_state)
            for name, keep in mask.items():
                sl.masks.attach(model, name, keep)
        structure.fit_recipe(model, lenet_task, epochs=EPOCHS, recipe=recipe)
    return mask, model


def trained_from(mask, seed):
    """``mask`` on the fresh weights of ``seed``, rescaled, trained with the recipe."""
    model = recipes.sparse_start(dataclasses.replace(lenet_task, seed=seed).build(), mask)
    structure.fit_recipe(model, lenet_task, epochs=EPOCHS, recipe=recipe)
    return model


def hand_accuracy(model):
    x_test, y_test = lenet_task.bundle.test.tensors
    with torch.no_grad():
        return float((model(x_test).argmax(dim=1) == y_test).float().mean())


stop = StopAt(len(lenet_task.loaders(recipe.batch_size)[0]) // 2)
structure.fit_recipe(lenet_task.build(), lenet_task, callbacks=[stop], recipe=recipe)
_, thetak_ticket = imp_by_hand(TARGET, IMP_ROUNDS, rewind_state=stop.state)
one_epoch = final[(final["task"] == f"lenet300 / {DATA}") & (final["seed"] == SEED)]
one_epoch = one_epoch.set_index("network")["test_accuracy"]
solution_3 = round(100 * (hand_accuracy(thetak_ticket) - one_epoch[tickets.NETWORKS[2]]), 1)
one_epoch_advantage = 100 * (one_epoch[tickets.NETWORKS[1]] - one_epoch[tickets.NETWORKS[2]])
print(f"θk minus re-initialised at {TARGET:.0%}: {solution_3:+.1f} points rewinding to "
      f"half an epoch, {one_epoch_advantage:+.1f} to one")  # fmt: skip
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** Repeat the ticket experiment at 98% sparsity on LeNet-300-100 (`DATA`, seed
# `SEED`), with more rounds so that each round prunes about as much as here: `rounds_98 =
# round(IMP_ROUNDS * math.log(0.02) / math.log(1 - TARGET))` rounds of
# `tickets.ticket_rounds(t, 0.98, rounds=rounds_98, epochs=EPOCHS, dense_epochs=EPOCHS)`,
# with `t = recipes.task("lenet300", DATA, seed=SEED)` (`networks=tickets.NETWORKS[2:]`
# leaves out the θk ticket, which the question does not need).  At the last round, what is the
# random mask's test accuracy minus the re-initialised network's, in points?  One decimal.
# Does either baseline fall behind the other here, and which would you expect to, and why?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
rounds_98 = round(IMP_ROUNDS * math.log(0.02) / math.log(1 - TARGET))


@functools.cache
def tickets_98():
    """`ticket_rounds` on LeNet-300-100, seed SEED, at 98% in `rounds_98` rounds."""
    t = recipes.task("lenet300", DATA, seed=SEED)
    return tickets.ticket_rounds(t, 0.98, rounds=rounds_98, epochs=EPOCHS, dense_epochs=EPOCHS,
                                 networks=tickets.NETWORKS[2:], baselines="last")  # fmt: skip


def check_4(answer, solution=False):
    table = tickets_98()
    last = table[table["round"] == rounds_98].set_index("network")["test_accuracy"]
    hint = "Subtract the re-initialised row from the random-mask row of the last round, in points."
    difference = 100 * (last[tickets.NETWORKS[3]] - last[tickets.NETWORKS[2]])
    sl.nb.check(4, answer, difference, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_4 = None  # points, e.g. -3.5
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  With solution 3's IMP by hand: the θ0 line's last mask, that mask on fresh
# weights, and a random mask with its layer counts (`recipes.random_like`, seed
# SEED + 1000 r as `ticket_rounds` draws it) on θ0.  The two baselines keep as many weights
# in every layer and start the same way, rescaled to their sparse fan-in; only the
# re-initialised one keeps the connections IMP chose.  Their difference is what that
# choice alone is worth at 98%: the random mask is the one expected to fall first, and the
# sign says whether it does on this seed (zero: neither is ahead, to a tenth of a point).
mask_98, _ = imp_by_hand(0.98, rounds_98)
shuffled = recipes.random_like(mask_98, seed=SEED + 1000 * rounds_98)
assert all(int(shuffled[n].sum()) == int(mask_98[n].sum()) for n in mask_98)
random_mask = recipes.sparse_start(lenet_task.build(), shuffled)
structure.fit_recipe(random_mask, lenet_task, epochs=EPOCHS, recipe=recipe)
reinit_98 = trained_from(mask_98, SEED + 1000 * rounds_98 + 1)
random_accuracy, reinit_accuracy = hand_accuracy(random_mask), hand_accuracy(reinit_98)
solution_4 = round(100 * (random_accuracy - reinit_accuracy), 1)
print(f"{rounds_98} rounds to 98%: random mask {random_accuracy:.1%}, re-initialised "
      f"{reinit_accuracy:.1%}; the difference {solution_4:+.1f} points")  # fmt: skip
check_4(solution_4, solution=True)

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
# # How to prune I b: data-free and data-driven criteria compared
#
# **What you will learn:** how the data-free and data-driven criteria compare on
# LeNet-300-100 and LeNet-5, right after pruning and after a short fine-tuning; how to make
# such a comparison fair; and what it says about two published claims, magnitude against
# random and LAMP against global magnitude.
#
# This continues [02a](02a_data_free_and_data_driven.ipynb), which defines each criterion
# and shows it on a toy problem and on one trained LeNet-300-100.  It follows sections 3.2
# (data-free selection) and 3.3 (data-driven selection) of the survey.

# %%
import copy
import dataclasses
import itertools

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import masks, one_shot_runs, recipes, run_cache

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
# the ends the text reads (the lowest, the highest, the nearest to 92%); add 0.75 for a
# denser curve, at a third more time
SPARSITIES = [0.5, 0.9, 0.95]
MODELS = ["lenet300", "lenet5"]
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
FINETUNE_EPOCHS = 2
CALIBRATION_BATCHES = 8

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    SPARSITIES = [0.75]
    EPOCHS = 2
    FINETUNE_EPOCHS = 1
    N_TRAIN = 600
    N_EVAL = 200
    CALIBRATION_BATCHES = 2
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's


def first_batches(loader, n):
    return [batch for _, batch in zip(range(n), loader, strict=False)]


# %% [markdown]
# ## Comparison on LeNet-300-100 and LeNet-5
#
# Every criterion prunes a copy of each trained network once; we measure validation
# accuracy right after pruning and after fine-tuning with the masks fixed, then test
# accuracy once at the end, over the seeds.  The dense networks come from `recipes.dense`
# (trained once per seed with the recipe, cached on disk); each seed has its own data
# split, initialisation and batch order.
#
# Unstructured criteria remove single weights (x axis: the fraction of weights removed).
# Their random baseline is `recipes.random_like` of global magnitude's mask: the same number
# of weights in every layer at random positions, so it differs from magnitude only in
# *which* weights it keeps.  Structured criteria remove the same share of the units of
# every hidden layer (`budget="uniform"`, so `random` keeps as many per layer as the
# others); `channel` criteria prune the rows of the layers that own the units, `input`
# criteria the columns of the layers that read them: the same units.  (For LeNet-5 the
# units are `conv1`'s filters and the neurons of `fc1` and `fc2`; `conv2`'s filters reach
# `fc1` as many inputs each and are left alone.)

# %%
dense_rows = []
for model_name, seed in itertools.product(MODELS, SEEDS):
    t, net, d = recipes.dense(model_name, "mnist", seed, epochs=EPOCHS, **DATA)
    row = {"model_name": model_name, "seed": seed, "epochs": d["recipe"].epochs}
    row |= {"n_train": len(t.bundle.train), "parameters": sum(p.numel() for p in net.parameters())}
    dense_rows.append(row | {"test_accuracy": d["test_accuracy"], "flags": d["flags"]})
dense_runs = pd.DataFrame(dense_rows)
sl.nb.show_dense(dense_runs, "mnist")
DENSE = dense_runs.groupby("model_name").first()  # epochs, images and size of each model

# %%
UNITS = {"lenet300": {"channel": ["fc1.weight", "fc2.weight"]}, "lenet5": {}}
UNITS["lenet300"]["input"] = ["fc2.weight", "fc3.weight"]  # the layers that read the units
UNITS["lenet5"]["channel"] = ["conv1.weight", "fc1.weight", "fc2.weight"]
UNITS["lenet5"]["input"] = ["conv2.weight", "fc2.weight", "fc3.weight"]
RANDOM_WEIGHTS = "random (magnitude's layer counts)"
UNSTRUCTURED = {"magnitude (global)": ("magnitude", "global")}
UNSTRUCTURED |= {"magnitude (uniform)": ("magnitude", "uniform"), "lamp": ("lamp", "global")}
UNSTRUCTURED[RANDOM_WEIGHTS] = None  # recipes.random_like of global magnitude's mask
DATA_FREE_UNITS = ["random", "group_norm", "fpgm", "neuron_merge"]
DATA_DRIVEN_UNITS = ["apoz", "mean_activation", "activation_variance", "correlation_merge"]
DATA_DRIVEN_UNITS += ["sensitivity", "nisp", "thinet", "lasso_channel"]
INPUT_CRITERIA = {"thinet", "lasso_channel"}


def one_shot(model_name, criterion, sparsity, seed):
    """Prune a copy of the dense model once, then fine-tune it; accuracies at both stages."""
    t, _, scores = recipes.dense(model_name, "mnist", seed, epochs=EPOCHS, **DATA)
    dense_scores = {"dense_val_accuracy": scores["val_accuracy"]}
    if criterion == RANDOM_WEIGHTS:
        method, options = "magnitude", {"budget": "global", "shuffled": True}
    elif criterion in UNSTRUCTURED:
        method, budget = UNSTRUCTURED[criterion]
        options = {"budget": budget}
    else:
        pattern = "input" if criterion in INPUT_CRITERIA else "channel"
        method = criterion
        options = {"pattern": pattern, "budget": "uniform", "targets": UNITS[model_name][pattern]}
    # a library call on names: the run cache keeps it, and 02l reads the runs it shares
    result = one_shot_runs.prune_dense_and_finetune(
        t, method, sparsity, dense_epochs=EPOCHS, calibration_batches=CALIBRATION_BATCHES,
        finetune_epochs=FINETUNE_EPOCHS, **options
    )  # fmt: skip
    return {**result, **dense_scores}


CRITERIA = list(UNSTRUCTURED) + DATA_FREE_UNITS + DATA_DRIVEN_UNITS
grid = {"model_name": MODELS, "criterion": CRITERIA, "sparsity": SPARSITIES}
runs_before = run_cache.counts()  # make book and make lab share runs with 02l (run_cache)
results = sl.experiments.sweep(one_shot, grid, seeds=SEEDS)
flops = results.groupby("model_name")["finetune_flops"].agg(["min", "max"])
cache_note = run_cache.summary(runs_before)
sl.nb.md(
    f"Fine-tuning budget of every run: {FINETUNE_EPOCHS} epoch(s) with the masks fixed, "
    + "; ".join(f"{sl.words.span(r['min'], r['max'])} FLOPs on {m}" for m, r in flops.iterrows())
    + " (counted on the nonzero weights: the sparser the network, the cheaper)."
    + (f"  {cache_note}" if cache_note else "")
)
results.head()


# %%
STAGES = {"pruned_accuracy": "one-shot, no fine-tuning"}
STAGES["val_accuracy"] = f"after {FINETUNE_EPOCHS} epoch(s) of fine-tuning"


def compare(criteria, title, xlabel, baselines=()):
    """Validation accuracy against sparsity, before and after fine-tuning, for each model;
    with ``baselines``, the fine-tuned panels' y axis fits the unflagged points of the other
    criteria, whose differences the text compares (a point off it is marked at its edge)."""
    part = results[results.criterion.isin(criteria)]
    options = {"reference": "dense_val_accuracy", "xlabel": xlabel, "title": title}
    options["fit"] = {"val_accuracy": baselines} if baselines else None
    options["ylabel"] = "validation accuracy"
    sl.viz.stage_grid(part, STAGES, row="model_name", hue="criterion", **options)
    plt.show()


WEIGHTS_X = "sparsity (weights removed)"
compare(UNSTRUCTURED, "Unstructured data-free criteria", WEIGHTS_X, [RANDOM_WEIGHTS])

# %% [markdown]
# Three comparisons on single weights, each a paired difference (same seed: same data,
# same dense model, same fine-tuning batches), treatment minus baseline, right after
# pruning (validation) and after fine-tuning (test):

# %%
PAIRS = [("magnitude (global)", RANDOM_WEIGHTS), ("magnitude (global)", "magnitude (uniform)")]
PAIRS.append(("lamp", "magnitude (global)"))
REPORTED = {"pruned_accuracy": "no fine-tuning (val)", "test_accuracy": "fine-tuned (test)"}
paired = sl.stats.paired_table(results, "criterion", PAIRS, REPORTED, by=["model_name", "sparsity"])
columns = ["comparison", "stage", "model_name", "sparsity", "mean_diff", "ci_low", "ci_high"]
display(paired[[*columns, "verdict", "flagged"]].round(4))
RUNS = ["model_name", "criterion", "sparsity"]


def show_stage_flags(runs):
    """The sanity flags of ``runs`` right after pruning, then after fine-tuning."""
    sl.nb.show_flags(sl.flags.table(runs, RUNS, "pruned_flags"), what="right after pruning (val)")
    sl.nb.show_flags(sl.flags.table(runs, RUNS), what="after fine-tuning (test)")


show_stage_flags(results[results.criterion.isin(UNSTRUCTURED)])
top = max(SPARSITIES)


def paired_row(*key):
    """The row of ``paired`` for (comparison, stage, model_name, sparsity)."""
    at = pd.MultiIndex.from_frame(paired[["comparison", "stage", "model_name", "sparsity"]])
    return paired[at.isin([key])].iloc[0]


def said(a, b, stage, m):
    """`a` minus `b` at stage ``stage`` on ``m`` at the top sparsity, in words."""
    return sl.stats.describe(paired_row(f"{a} - {b}", stage, m, top))


sl.nb.md(
    "\n".join(
        f"- {m} at {top:.0%} sparsity, `{a}` minus `{b}`: "
        + "; ".join(f"{stage}, {said(a, b, stage, m)}" for stage in REPORTED.values())
        + "."
        for m in MODELS
        for a, b in PAIRS
    )
)

# %% [markdown]
# Removing a whole unit removes every one of its weights at once, and the next layer loses
# an input; the x axis of the next figures is the share of hidden *units* removed.

# %%
UNITS_X = "share of hidden units removed"
compare(DATA_FREE_UNITS, "Data-free criteria on units", UNITS_X)

# %%
title = "Data-driven criteria on units (random and group_norm for reference)"
compare(["random", "group_norm", *DATA_DRIVEN_UNITS], title, UNITS_X)

# %%
summary = sl.stats.summarize(results, ["model_name", "criterion", "sparsity"], "pruned_accuracy")
unit_list, low = DATA_FREE_UNITS + DATA_DRIVEN_UNITS, min(SPARSITIES)
half = summary[(summary.sparsity == low) & summary.criterion.isin(unit_list)]
sentences, leaders = [], []  # leaders: the summary's lines
for m in MODELS:
    ranked = half[half.model_name == m].sort_values("mean", ascending=False)
    (a, b), (first, second) = ranked.criterion.iloc[:2], ranked["mean"].iloc[:2]
    at_half = results[(results.model_name == m) & (results.sparsity == low)]
    row = sl.stats.paired(at_half, "criterion", a, b, metric="pruned_accuracy").iloc[0]
    gap = sl.stats.describe(row)
    sentences.append(
        f"On {m} with {low:.0%} of the units removed and no fine-tuning, the highest mean "
        f"validation accuracy among the unit criteria is `{a}`'s ({first:.1%}); against the "
        f"runner-up `{b}` ({second:.1%}) it is {gap}."
    )
    leaders.append(
        f"- Unit criteria on {m}, {low:.0%} of the units removed, no fine-tuning (val): `{a}` "
        f"has the highest mean; `{a}` minus the runner-up `{b}` is {gap}."
    )
sl.nb.md(" ".join(sentences))
table = summary.pivot_table(index=["model_name", "criterion"], columns="sparsity", values="mean")
weights_first = table.index.get_level_values("criterion").isin(UNSTRUCTURED)
sl.nb.md("Mean validation accuracy right after pruning, share of *weights* removed:")
display(table[weights_first].round(3))
sl.nb.md("The same for the unit criteria, share of hidden *units* removed:")
display(table[~weights_first].round(3))
show_stage_flags(results)

# %% [markdown]
# Two questions for the whole comparison: how far does fine-tuning close the gap between
# the unit criteria, and does the reconstruction of ThiNet and LASSO (which refit the next
# layer) pay off more before fine-tuning than after?  Both are measured per seed (the
# intervals are over the seeds), averaged over the sparsities where none of the compared
# runs raised a sanity flag, against `group_norm`, the data-free choice of the same units.

# %%
STAGE_COLUMNS = list(STAGES)


def flagged_runs(m, criteria):
    """The runs of ``criteria`` on ``m`` that raised a flag at either stage."""
    part = results[(results.model_name == m) & results.criterion.isin(criteria)]
    return part[(part["pruned_flags"] != "") | (part["flags"] != "")]


def clean_sparsities(m, criteria):
    """The sparsities at which no run of ``criteria`` on ``m`` raised a flag at either stage:
    a gap to a collapsed run measures the collapse, not the criteria."""
    return [x for x in sorted(SPARSITIES) if x not in set(flagged_runs(m, criteria).sparsity)]


def seed_row(values):
    """Mean and Student-t interval over seeds, as a row `sl.stats.describe` can word."""
    s = sl.stats.mean_interval(values)
    verdict = sl.stats.verdict_of(s["ci_low"], s["ci_high"], s["n"])
    return {**s, "mean_diff": s["mean"], "verdict": verdict}


def listed(sparsities):
    return ", ".join(f"{x:.0%}" for x in sparsities)


sentences = []
notes = {m: [] for m in MODELS}  # what the summary says of each model
for m in MODELS:
    kept = clean_sparsities(m, unit_list)
    if not kept:
        bad = flagged_runs(m, unit_list).groupby("criterion")
        where = "; ".join(f"`{c}` at {listed(sorted(set(g.sparsity)))}" for c, g in bad)
        sentences.append(
            f"**{m}**: at every sparsity some unit criterion raised a sanity flag ({where}), "
            "so the gap between the best and the worst is not measured."
        )
        notes[m].append("the best-worst gap is not measured (flagged runs at every sparsity)")
    else:
        units = results[(results.model_name == m) & results.criterion.isin(unit_list)]
        by_seed = units[units.sparsity.isin(kept)].groupby(["seed", "sparsity"])[STAGE_COLUMNS]
        gap = by_seed.agg(lambda c: c.max() - c.min()).groupby("seed").mean()
        change = seed_row(gap["val_accuracy"] - gap["pruned_accuracy"])
        change = sl.stats.describe(change, words=("narrows", "widens"))
        notes[m].append(f"the best-worst gap's change with fine-tuning is {change}")
        sentences.append(
            f"**{m}**, averaged over the sparsities where no unit criterion raised a flag "
            f"({listed(kept)}): the best and the worst unit criterion are "
            f"{100 * gap['pruned_accuracy'].mean():.1f} points apart right after pruning and "
            f"{100 * gap['val_accuracy'].mean():.1f} after {FINETUNE_EPOCHS} epoch(s) of "
            f"fine-tuning; the gap's change is {change}."
        )
    for refit in ("thinet", "lasso_channel"):
        kept = clean_sparsities(m, [refit, "group_norm"])
        if not kept:
            sentences.append(
                f"`{refit}` minus `group_norm` on {m}: flagged runs at every sparsity, not "
                "measured."
            )
            notes[m].append(f"`{refit}` minus `group_norm` is not measured")
            continue
        part = results[(results.model_name == m) & results.sparsity.isin(kept)]
        per_seed = part.groupby(["criterion", "seed"])[STAGE_COLUMNS].mean()
        diffs = {
            c: sl.stats.paired(per_seed.reset_index(), "criterion", refit, "group_norm", metric=c)
            for c in STAGE_COLUMNS
        }
        gain = per_seed.loc[refit] - per_seed.loc["group_norm"]  # per seed, at each stage
        shift = seed_row(gain["pruned_accuracy"] - gain["val_accuracy"])
        shift = sl.stats.describe(shift, words=("smaller before", "larger before"))
        after = sl.stats.describe(diffs["val_accuracy"].iloc[0])
        notes[m].append(
            f"`{refit}` minus `group_norm` ({listed(kept)}) after fine-tuning (val) {after}, "
            f"its gain before minus after {shift}"
        )
        sentences.append(
            f"`{refit}` minus `group_norm` on {m} ({listed(kept)}): "
            f"{sl.stats.describe(diffs['pruned_accuracy'].iloc[0])} right after pruning (val), "
            f"{after} after fine-tuning (val); the gain before minus the gain after is {shift}."
        )
sl.nb.md("\n\n".join(sentences))
MEANINGS = {
    "narrows": "fine-tuning brings the unit criteria closer",
    "widens": "fine-tuning moves the unit criteria apart",
    "larger before": "the reconstruction pays off more before fine-tuning than after",
    "smaller before": "the reconstruction pays off more after fine-tuning than before",
    "no clear difference": "the seeds do not tell",
}
if legend := sl.words.word_legend(" ".join(sentences), MEANINGS, after="seeds: "):
    sl.nb.md(legend)

# %% [markdown]
# ## Against the literature
#
# The claims this chapter can test, each judged from the paired test accuracies after
# fine-tuning above (`sl.claims`): magnitude against its random baseline on LeNet-300-100,
# at the measured sparsity nearest the 92% of Han et al. (2015), and LAMP against global
# magnitude at the highest sparsity measured, on each network.


# %%
def dense_facts(model_name):
    d = DENSE.loc[model_name]
    return (
        f"The dense {model_name} has {d['parameters']:,} parameters, trained "
        f"{d['epochs']} epoch(s) on {d['n_train']} MNIST images, and each pruned network was "
        f"fine-tuned {FINETUNE_EPOCHS} epoch(s)."
    )


def lamp_reason(m):
    """What LAMP changes on ``m`` at ``top``: the layer densities of its plan against
    global magnitude's, on the dense model of the first seed."""
    net = recipes.dense(m, "mnist", SEEDS[0], epochs=EPOCHS, **DATA)[1]
    plan = {}
    for method in ("lamp", "magnitude"):
        pruned = sl.prune(copy.deepcopy(net), method, top, budget="global")
        plan[method] = {n: float(k.float().mean()) for n, k in masks.masks(pruned).items()}
    gaps = {n: plan["lamp"][n] - plan["magnitude"][n] for n in plan["lamp"]}
    widest = max(gaps, key=lambda n: abs(gaps[n]))
    emptied = ", ".join(f"`{n}`" for n, d in plan["magnitude"].items() if d == 0)
    found = f"global magnitude empties {emptied}, which LAMP keeps"
    if not emptied:
        found = "global magnitude empties no layer here, so the failure LAMP is built to prevent "
        found += "does not arise"
    row = paired_row("lamp - magnitude (global)", FINE_TUNED, m, top)
    leaning = ""
    if row["n"] > 1 and row["ci_low"] < 0 < row["ci_high"]:
        leaning = (
            f" The interval [{100 * row['ci_low']:+.1f}, {100 * row['ci_high']:+.1f}] covers "
            f"0 ({int(row['n'])} seeds); the sign is not determined."
        )
    return (
        f"On {m} at {top:.0%} (first seed's dense model), {found}; LAMP's plan differs from "
        f"global magnitude's by at most {100 * abs(gaps[widest]):.1f} points of density "
        f"(`{widest}`: {plan['lamp'][widest]:.1%} against {plan['magnitude'][widest]:.1%})."
        f"{leaning} {dense_facts(m)}"
    )


FINE_TUNED = REPORTED["test_accuracy"]
han = min(SPARSITIES, key=lambda s: abs(s - 0.92))
MAGNITUDE = ("magnitude_beats_random_after_training", "magnitude (global)", RANDOM_WEIGHTS)
JUDGED = [(*MAGNITUDE, "lenet300", han)] if "lenet300" in MODELS else []  # (claim, arms, where)
JUDGED += [("lamp_beats_global_magnitude", "lamp", "magnitude (global)", m, top) for m in MODELS]
verdicts = [
    sl.claims.judge(
        dataclasses.replace(sl.claims.get(key), treatment=f"`{a}`", baseline=f"`{b}`"),
        paired_row(f"{a} - {b}", FINE_TUNED, m, x),
        setting=f"{m} at {x:.0%}, fine-tuned {FINETUNE_EPOCHS} epoch(s), test",
        reason=lamp_reason(m) if a == "lamp" else dense_facts(m),
    )
    for key, a, b, m, x in JUDGED
]
display(sl.claims.table(verdicts))
sl.nb.md(sl.claims.report(verdicts))


# %% [markdown]
# ## Summary
#
# - A fair comparison changes one thing at a time.  The random baseline of single weights
#   keeps global magnitude's number of weights in every layer, so it differs from magnitude
#   only in *which* weights it keeps; the unit criteria remove the same share of the units
#   of every hidden layer; each difference is paired by seed (same data, same dense model,
#   same fine-tuning batches).
#
# What the runs above measured:

# %%
lines = [
    f"- Budgets: every pruned network was fine-tuned {FINETUNE_EPOCHS} epoch(s) with its "
    f"masks fixed, over {len(SEEDS)} seed(s); differences are paired by seed.",
]
for m in MODELS:
    pairs = "; ".join(f"`{a}` minus `{b}` {said(a, b, FINE_TUNED, m)}" for a, b in PAIRS)
    lines.append(f"- {m} at {top:.0%} sparsity, after fine-tuning (test): {pairs}.")
lines += leaders
lines += [f"- Fine-tuning and reconstruction on {m}: {'; '.join(t)}." for m, t in notes.items()]
lines += [
    f"- Against the literature: {v.claim.key} is **{v.status}** ({v.setting})." for v in verdicts
]
sl.nb.md("\n".join(lines))


# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** The random baseline of single weights (`recipes.random_like` of global magnitude's
# mask) keeps in every layer as many weights as global magnitude does.  Prune a copy of the
# dense LeNet-300-100 of the first seed (`recipes.dense("lenet300", "mnist", SEEDS[0],
# epochs=EPOCHS, **DATA)[1]`) with `magnitude` and `budget="global"` at the highest sparsity
# measured (`top`).  How many weights of `fc3` does it keep?  A whole number.  How many of
# them does the random baseline keep at the same positions, and how many would chance give?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def dense_lenet300():
    """The dense LeNet-300-100 of the first seed, as the comparison starts from it."""
    return recipes.dense("lenet300", "mnist", SEEDS[0], epochs=EPOCHS, **DATA)[1]


def check_1(answer, solution=False):
    pruned = sl.prune(dense_lenet300(), "magnitude", top, budget="global")
    kept = int(masks.get_mask(pruned, "fc3.weight").sum())
    hint = "Prune with `budget='global'` at `top` and count the ones of fc3's mask."
    sl.nb.check(1, answer, kept, hint=hint, solution=solution)


# %%
answer_1 = None  # a number of weights, e.g. 120
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  A global budget ranks the magnitudes of every layer together and keeps the
# largest share `1 - top` of them: a layer of large weights keeps more of its weights than
# a layer of small ones (the printout shows what each layer keeps).  The random baseline
# copies these counts, layer by layer, and draws the positions at random: of the k weights
# a layer of n keeps, chance puts about k * k / n on magnitude's positions.  By hand, from the raw
# weights: every magnitude, the threshold of the largest `1 - top`, the weights of fc3
# above it.
net_1 = dense_lenet300()
layers_1 = {n: p.detach().abs().flatten() for n, p in net_1.named_parameters() if p.dim() > 1}
every_1 = torch.cat(list(layers_1.values()))
n_kept_1 = len(every_1) - round(top * len(every_1))
threshold_1 = every_1.topk(n_kept_1).values.min()
solution_1 = int((layers_1["fc3.weight"] >= threshold_1).sum())
found_1 = {
    n: (w >= threshold_1).float().view_as(net_1.get_parameter(n)) for n, w in layers_1.items()
}
random_1 = recipes.random_like(found_1, SEEDS[0])
for name, mask in found_1.items():
    k, n = int(mask.sum()), mask.numel()
    print(
        f"{name}: magnitude keeps {k} of {n}, random {int(random_1[name].sum())}; on the same "
        f"positions {int((mask * random_1[name]).sum())} (chance: about {k * k / n:.1f})"
    )
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Fine-tuning repairs some criteria more than others.  In `results`, on
# LeNet-300-100 with the smallest share of units removed (`min(SPARSITIES)`), which unit
# criterion (of `unit_list`) gains the most validation accuracy from fine-tuning, on
# average over the seeds (`val_accuracy` minus `pruned_accuracy`)?  Answer with its name.
# Is it the one that was worst right after pruning?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    part = results[(results.model_name == "lenet300") & (results.sparsity == min(SPARSITIES))]
    part = part[part.criterion.isin(unit_list)]
    gain = (part.val_accuracy - part.pruned_accuracy).groupby(part.criterion).mean()
    best = set(gain[gain >= gain.max() - 1e-9].index)  # any of a tie is right
    hint = "Average `val_accuracy - pruned_accuracy` over the seeds for each unit criterion."
    sl.nb.check(2, answer, lambda a: a in best, hint=hint, solution=solution)


# %%
answer_2 = None  # a criterion, e.g. "group_norm"
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The mean of the gains is the mean after fine-tuning minus the mean before:
# the `summary` table (right after pruning) beside the same table of `val_accuracy`.  A
# criterion that removed the units the network needed most loses the most at once, and
# fine-tuning, with the masks fixed, trains the units that stay to take over.  When the
# worst criterion right after pruning gains the most, the gap between the criteria narrows
# (the comparison above measures by how much).
keys_2 = ["model_name", "criterion", "sparsity"]
tuned_2 = sl.stats.summarize(results, keys_2, "val_accuracy")
both_2 = summary.merge(tuned_2, on=keys_2, suffixes=(" pruned", " fine-tuned"))
both_2 = both_2[(both_2.model_name == "lenet300") & (both_2.sparsity == min(SPARSITIES))]
both_2 = both_2[both_2.criterion.isin(unit_list)].set_index("criterion")
both_2["gain"] = both_2["mean fine-tuned"] - both_2["mean pruned"]
display(both_2[["mean pruned", "mean fine-tuned", "gain"]].sort_values("gain").round(3))
solution_2 = both_2["gain"].idxmax()
check_2(solution_2, solution=True)

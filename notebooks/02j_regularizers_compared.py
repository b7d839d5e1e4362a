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
# # How to prune III b: regularizers compared with gradual magnitude pruning
#
# **What you will learn:** how the regularizers (penalties such as L1, Hoyer and group
# lasso, learned thresholds such as STR and LTP, L0 gates, variational dropout and its
# structured cousins) compare with gradual magnitude pruning (GMP) in accuracy at equal
# sparsity, trained under one protocol and paired on the seeds; how far each method's own
# threshold rule gets toward the target before the projection does the rest; what the runs
# say about the claims that magnitude pruning matches L0 and variational dropout; and what
# each method costs in training time and in parameters added while it trains.
#
# This continues [02d](02d_regularization.ipynb), which shows why some penalties give exact
# zeros, how a regularizer tunes its strength toward a target and projects to it at the
# end, and which per-layer budgets the learned thresholds choose.  It follows sections 3.6
# (regularisation) and 3.7 (variational methods) of the survey.  Every method here is a
# registered *regularizer* or training method, and one protocol,
# `sparsity_lab.regularizers.compare.run`, trains, prunes, fine-tunes and measures each.

# %%
import dataclasses
import functools
import itertools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import recipes, run_cache
from sparsity_lab.regularizers import compare

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
# LeNet-5 (02d's second model) costs 1.5 to 3 times LeNet-300-100's time per run and would
# more than double this notebook's, past the book's 4 minutes; add "lenet5" to run it too
MODELS = ["lenet300"]
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
    SPARSITIES = [0.9]
    STRUCTURED_SPARSITIES = [0.5]
    EPOCHS = 2
    FINETUNE_EPOCHS = 1
    N_TRAIN = 500
    UNSTRUCTURED = ["l1", "str", "l0_hard_concrete"]
    STRUCTURED = ["group_lasso"]
# one thread, as `make book` gives each notebook: torch's sums depend on the thread count, so
# JupyterLab then computes the book's numbers and reads the book's runs back from the run
# cache (sparsity_lab.run_cache); small models gain little from a second core anyway
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
DATA_OPTIONS = {} if N_TRAIN is None else {"n_train": N_TRAIN}


@functools.cache
def get_task(model_name, seed):
    """The model on MNIST, split by ``seed`` (loaded once per model and seed)."""
    return recipes.task(model_name, "mnist", seed=seed, **DATA_OPTIONS)


# %% [markdown]
# ## Comparison: accuracy against sparsity
#
# Every method trains `MODELS`, here LeNet-300-100 on flat MNIST images as in
# [02d](02d_regularization.ipynb) (02d's LeNet-5 is left out to keep this notebook within the
# book's time budget; add `"lenet5"` to `MODELS` to run it too), from scratch for the same
# number of epochs, reaches the target (projection, or GMP's cubic schedule), then
# fine-tunes with its masks fixed, all with Adam; 95% intervals over the seeds.  Unstructured
# methods prune single weights of every layer; the structured ones prune whole output units
# of every layer but the last, next to GMP with the channel pattern on the same layers.  Chapter
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
runs_before = run_cache.counts()  # make book and make lab keep the runs (run_cache)
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
#: A rule that stopped further than this below the target left most of the pruning to the
#: projection: the mask compared with GMP's is not the method's own.
NOT_A_TEST = 0.10
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
cache_note = run_cache.summary(runs_before)
sl.nb.md(
    f"Each run trains {EPOCHS} epochs and fine-tunes {FINETUNE_EPOCHS} ({finetune_cost} of "
    f"fine-tuning, mean over the runs), {len(SEEDS)} seed(s).  "
    + (f"{cache_note}  " if cache_note else "")
    + "Best mean accuracy in each setting:\n\n"
    + "\n".join(lines)
    + "\n\n"
    + flag_text
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
# a gap that rounds to 0.0 points is on the target, neither short nor over
gap_words = rule_gap.map(
    lambda g: (
        f"{100 * g:.1f} points short"
        if round(100 * g, 1) > 0
        else f"{-100 * g:.1f} points over"
        if round(100 * g, 1) < 0
        else "on the target"
    )
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
# The times measure this library's implementations as well as the methods: GMP adds no
# arithmetic beyond its mask (a multiplication per weight in each pass, and a selection at
# each pruning step), so its ratio is what masking costs here.
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
# - Under one protocol (the same epochs, the target reached by a projection or by GMP's
#   schedule, the same fine-tuning with the masks fixed), each method is paired with GMP
#   on the seeds, setting by setting.
# - A method whose own threshold rule stopped far short of the target is compared through
#   a mask that is mostly the projection's, not the method's: its claim verdicts count as
#   inconclusive.
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
faster = (
    f" ({sl.words.plural(len(below), 'method')} faster, likely a timing artifact)" if below else ""
)
sl.nb.md(
    f"- Comparison ({EPOCHS} + {FINETUNE_EPOCHS} epochs, {len(SEEDS)} seed(s)): "
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
# **1.** In the comparison, which method other than GMP has the highest mean of "method
# minus GMP" (most positive, or least negative), paired on the seeds, on LeNet-300-100,
# unstructured, at 90%?  Answer with its name as in
# the tables.  Is that difference clear of zero?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    part = runs[(runs.model == "lenet300") & (runs.pattern == "unstructured")
                & (runs.sparsity == 0.9)]  # fmt: skip
    mean = {
        m: sl.stats.paired(part, "method", m, "gmp", metric="test_accuracy").iloc[0]["mean_diff"]
        for m in part["method"].unique() if m != "gmp"
    }  # fmt: skip
    best = max(mean.values())
    hint = "Pair each method with GMP on the seeds (`sl.stats.paired`) and take the largest."
    sl.nb.check(1, answer, lambda a: abs(mean.get(a, -np.inf) - best) < 1e-12, hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_1 = None  # a method name, e.g. "l1"
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  By hand: one column per method, one row per seed, the difference to GMP's
# column seed by seed, then its mean over the seeds.
part = runs[(runs.model == "lenet300") & (runs.pattern == "unstructured")
            & (runs.sparsity == 0.9)]  # fmt: skip
wide = part.pivot_table(index="seed", columns="method", values="test_accuracy")
gaps = wide.drop(columns="gmp").sub(wide["gmp"], axis=0).mean()
solution_1 = gaps.idxmax()
print((100 * gaps).round(2).sort_values(ascending=False).to_dict())
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** In "Training cost", how many parameters does `l0_hard_concrete` add while it
# trains LeNet-300-100, per prunable weight of the model?  Two decimals.  What are those
# parameters, and why does STR add almost none?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    l0 = cost[(cost.model == "lenet300") & (cost.method == "l0_hard_concrete")]
    hint = ("Divide the runs' `extra_parameters` by the number of weights in the model's "
            "Linear and Conv layers (the `extra_per_weight` column of `cost`).")  # fmt: skip
    sl.nb.check(2, answer, float(l0["extra_per_weight"].mean()), hint=hint, tolerance=0.005,
                solution=solution)  # fmt: skip


# %%
answer_2 = None  # parameters per weight, e.g. 0.25
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  L0 gives every weight a gate, and the gate's log-alpha is a trained parameter:
# one per weight, so what is trained doubles.  STR learns one threshold per layer.  Counted
# from the raw runs and a fresh model's weight matrices (every parameter with two or more
# dimensions):
fresh = get_task("lenet300", SEED).build()
n_weights = sum(p.numel() for p in fresh.parameters() if p.dim() > 1)
lenet300 = results[results.model == "lenet300"]
added = lenet300.groupby("method")["extra_parameters"].mean()
print({m: int(added[m]) for m in ["l0_hard_concrete", "str"] if m in added}, "of", n_weights)
solution_2 = round(float(added["l0_hard_concrete"]) / n_weights, 2)
check_2(solution_2, solution=True)

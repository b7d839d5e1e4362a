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
# # Regularizers on the leaderboard: strengths chosen on validation
#
# **What you will learn:** how the sparsifying regularizers of chapter
# [02d](02d_regularization.ipynb) compare with gradual magnitude pruning (GMP) when they
# train under the recipe of the leaderboard rather than their own (the Adam protocol of
# [02j](02j_regularizers_compared.ipynb)); why a default strength
# is not a setting, and how the harness chooses one on validation; whether each method
# reaches its target by its own mechanism or leaves it to the final projection; what
# happens to variational dropout, Hoyer-square, L0 and learned threshold pruning trained
# with Adam instead of SGD; and
# how Bayesian compression, trained with Adam as its paper trains it, removes hidden units.
#
# Every run here comes from a committed table of the benchmark harness
# (`benchmarks/leaderboard/`, made by `sparsity-lab bench` from the configs in
# `benchmarks/configs/`): the same LeNet-300-100 on the MNIST subset, seeds, splits,
# epochs and fine-tuning as chapter [09](09_leaderboard.ipynb).  A regularizer's run
# (kind `regularize`) trains a fresh model with its penalty for the recipe's epochs, with
# the recipe's optimizer and learning rate but no schedule (a schedule would fight the
# regularizers' tuners), projects to the target and fine-tunes like every other run; GMP
# runs the same protocol as the reference.  With `select`, each run trains once per listed
# starting strength and keeps the one with the best *validation* accuracy; the test split
# plays no part in the choice, and the training FLOPs count every candidate.  This
# notebook only reads the tables, so it runs in seconds.

# %%
import collections
import csv
import json

import pandas as pd
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import leaderboard

# %% tags=["parameters"]
SMOKE = False
UNSTRUCTURED = "regularization-selected-lenet300-mnist"
MORE = "regularization-selected-more-lenet300-mnist"
CHANNEL = "regularization-selected-channel-lenet300-mnist"
OPTIMIZER = "regularization-paper-optimizer-lenet300-mnist"
BAYESIAN = "regularization-bayesian-channel-lenet300-mnist"
ADAM_MORE = "regularization-adam-more-lenet300-mnist"
CHANNEL_MORE = "regularization-selected-channel-more-lenet300-mnist"

# %%
# The tables are small and committed, so smoke mode reads the same ones.
info = sl.nb.setup(seed=0, smoke=SMOKE, threads=1)
NAMES = (UNSTRUCTURED, MORE, CHANNEL, CHANNEL_MORE, OPTIMIZER, BAYESIAN, ADAM_MORE)
tables = {name: leaderboard.load(name) for name in NAMES}
#: A rule whose kept or pruned count is off the target's by more than this factor either
#: way left the difference to the projection, which pruned or restored it.
FACTOR = 2

# %% [markdown]
# ## Where the numbers come from

# %%
for table, manifest in tables.values():
    print(leaderboard.provenance(table, manifest)[0], "\n")
_, dense = leaderboard.provenance(*tables[UNSTRUCTURED])
# each table trained its dense models with the recipe when it ran; how far apart they are
gap = max(
    abs(
        leaderboard.provenance(table, manifest)[1]["test accuracy"].astype(float)
        - dense["test accuracy"].astype(float)
    ).max()
    for table, manifest in tables.values()
)
recipe = tables[UNSTRUCTURED][1]["dense"]["recipe"]
print(
    f"dense recipe: {recipe['epochs']} epochs of {recipe['optimizer']} at lr {recipe['lr']}, "
    f"{recipe['lr_schedule']} schedule, batch {recipe['batch_size']} (the regularize runs: "
    f"the same without the schedule); the tables' dense models of a seed differ by at most "
    f"{100 * gap:.1f} points of test accuracy"
)
dense

# %% [markdown]
# ## Sanity flags
#
# A flagged run is not a plain result: chance level or a layer pruned to 100% says the
# network broke, not how good the method is.

# %%
for name, (table, _) in tables.items():
    sl.nb.show_flags(sl.flags.table(table, ["method", "target_sparsity"]), what=f"in {name}")


# %% [markdown]
# ## What each method chose, and how far its own rule went
#
# For each regularizer run the harness records the starting strength it selected on
# validation, the strength its tuner ended at, and `reached`: the sparsity its own
# threshold rule gave before the projection set the count exactly.  A rule reached the
# target by its own mechanism when both the weights it kept and those it pruned are within
# a factor `FACTOR` of the target's counts.  Both are needed: at a 90% target a rule that
# pruned everything is only 10 points of sparsity away but keeps none of the weights the
# target keeps, and at 50% a rule that pruned 3% keeps about the right order of weights
# but prunes a sixteenth of what the target prunes.  Outside the factor the projection
# restored what the rule overshot, or pruned what it left, and the run measures the
# projection as much as the method.  Targeted dropout is the exception: it prunes the share
# it targeted, which is the target itself, so its rule meets the target by construction.


# %%
def extras_of(table):
    """One row per regularizer run: its choice, its tuner's end and its rule's sparsity."""
    rows = []
    for r in table[table["kind"] == "regularize"].itertuples():
        extras = json.loads(r.extras)
        rows.append(
            {
                "method": r.method,
                "target_sparsity": r.target_sparsity,
                "seed": r.seed,
                "selected": (extras.get("selected") or {}).get("strength", float("nan")),
                "final strength": extras.get("strength"),
                "reached": extras["reached"],
            }
        )
    return pd.DataFrame(rows)


mechanisms = pd.concat(
    [extras_of(table).assign(table=name) for name, (table, _) in tables.items()],
    ignore_index=True,
)
kept_ratio = (1 - mechanisms["reached"]) / (1 - mechanisms["target_sparsity"])
pruned_ratio = mechanisms["reached"] / mechanisms["target_sparsity"]
mechanisms["own rule"] = kept_ratio.between(1 / FACTOR, FACTOR) & pruned_ratio.between(
    1 / FACTOR, FACTOR
)
by_method = mechanisms.groupby(["table", "method", "target_sparsity"], sort=False).agg(
    runs=("seed", "size"),
    own_rule=("own rule", "sum"),
    reached=("reached", "mean"),
    selected=("selected", lambda s: sorted({v for v in s if pd.notna(v)})),
)
by_method

# %%
own_lines = []
for (name, method, target), r in by_method.iterrows():
    if method == "gmp":
        continue  # GMP's schedule reaches its target by construction
    how = (
        "in every run"
        if r["own_rule"] == r["runs"]
        else f"in {r['own_rule']} of {r['runs']} runs (it reached {r['reached']:.1%} on average)"
    )
    own_lines.append(
        f"- {method} at {target:.0%} ({name}): its own rule kept and pruned within a "
        f"factor {FACTOR} of the target's counts {how}."
    )
display(Markdown("\n".join(own_lines)))

# %% [markdown]
# ## Accuracy against GMP, paired on the seeds
#
# Each regularizer against GMP under the same protocol, at every target, with the paired
# 95% interval over the seeds (`vs GMP`); `vs dense` is the same against the dense model
# of the seed.  (The harness's baselines in each table, which prune the trained dense
# model once and fine-tune it, follow another protocol and are left out here; chapter
# [09](09_leaderboard.ipynb) compares them.)  Channel runs remove whole hidden units
# (output units of every layer but the last); their target is the share of units removed.


# %%
def compared(table):
    """Each method's mean accuracy, with paired differences from GMP and from dense."""
    summary = leaderboard.summary(table, baseline="gmp")
    runs = pd.concat(
        [table, leaderboard.dense_at(table, sorted(table["target_sparsity"].unique()))],
        ignore_index=True,
    )
    rows = []
    regularizers = set(table.loc[table["kind"] == "regularize", "method"]) - {"gmp"}
    for r in summary[summary["method"].isin(regularizers)].itertuples():
        part = runs[runs["target_sparsity"] == r.target_sparsity]
        vs_dense = sl.stats.paired(part, "method", r.method, "dense", metric="test_accuracy")
        rows.append(
            {
                "method": r.method,
                "target": r.target_sparsity,
                "accuracy": r.test_accuracy,
                "vs GMP": sl.stats.describe(
                    sl.stats.paired(part, "method", r.method, "gmp", metric="test_accuracy").iloc[0]
                ),
                "vs dense": sl.stats.describe(vs_dense.iloc[0]),
                "flagged": r.flagged,
            }
        )
    return pd.DataFrame(rows)


with pd.option_context("display.max_colwidth", None):
    for name, (table, _) in tables.items():
        display(Markdown(f"**{name}**"))
        display(compared(table).round(4))

# %% [markdown]
# ## Adam instead of SGD
#
# Under the recipe's SGD, sparse variational dropout and Hoyer-square are the weakest runs
# of the `UNSTRUCTURED` table (the table below counts their flagged runs).  Both
# penalties have gradients in the weights that grow as the weights shrink: the KL term
# through $\log\alpha = \log\sigma^2 - \log\theta^2$, and the scale-invariant Hoyer ratio
# as $1/\lVert w\rVert$.  A plain SGD step on such a gradient can overshoot, where Adam
# scales each step to about its learning rate; sparse variational dropout's paper trains
# with Adam.  The `OPTIMIZER` table trains both with Adam at $10^{-3}$, with the same
# epochs, batch, projection, fine-tuning and seeds.  Two things besides the optimizer
# differ: variational dropout runs its default strength there, where under SGD it chose
# among three on validation, and Hoyer-square chooses among strengths about thirty times
# larger.  A result that Adam trains them is consistent with the explanation above; it does
# not isolate it.
#
# L0 (hard concrete gates) and learned threshold pruning (LTP) train, but under SGD their
# rules do not do the pruning (the `MORE` table): the `own_rule_runs` column below counts
# the runs whose rule kept and pruned within a factor `FACTOR` of the target's counts.  L0's
# paper trains with Adam, and both methods' default strengths were set for Adam at
# $10^{-3}$; the `ADAM_MORE` table trains both with it, choosing the strength on validation
# in both tables.

# %%
unstructured, _ = tables[UNSTRUCTURED]
adam, _ = tables[OPTIMIZER]
PAIRS = {  # method: (its SGD table, its Adam table)
    "variational_dropout": (UNSTRUCTURED, OPTIMIZER),
    "hoyer": (UNSTRUCTURED, OPTIMIZER),
    "l0_hard_concrete": (MORE, ADAM_MORE),
    "ltp": (MORE, ADAM_MORE),
}
ablation = []
for method, (sgd_name, adam_name) in PAIRS.items():
    for label, name, arm in [
        ("SGD (recipe)", sgd_name, method),
        ("Adam", adam_name, f"{method} (adam)"),
    ]:
        table = tables[name][0]
        own = mechanisms[(mechanisms["table"] == name) & (mechanisms["method"] == arm)]
        for target, part in table[table["method"] == arm].groupby("target_sparsity"):
            ablation.append(
                {
                    "method": method,
                    "optimizer": label,
                    "target": target,
                    "accuracy": part["test_accuracy"].mean(),
                    "flagged_runs": int((part["flags"].fillna("") != "").sum()),
                    "own_rule_runs": int(
                        own.loc[own["target_sparsity"] == target, "own rule"].sum()
                    ),
                    "rule_reached": own.loc[own["target_sparsity"] == target, "reached"].mean(),
                    "runs": len(part),
                }
            )
ablation = pd.DataFrame(ablation)
display(ablation.round(4))
sgd = ablation[ablation["optimizer"] == "SGD (recipe)"]
display(
    Markdown(
        "Under SGD: "
        + "; ".join(
            f"{r.method} at {r.target:.0%} has {r.flagged_runs} of {r.runs} runs flagged "
            f"({r.accuracy:.1%} mean)"
            for r in sgd.itertuples()
            if r.method in ("variational_dropout", "hoyer")
        )
        + ".  Own rule, SGD then Adam: "
        + "; ".join(
            f"{method} at {target:.0%} in {g['own_rule_runs'].iloc[0]} then "
            f"{g['own_rule_runs'].iloc[1]} of {g['runs'].iloc[0]} runs (the rule reached "
            f"{g['rule_reached'].iloc[0]:.1%} then {g['rule_reached'].iloc[1]:.1%} on average)"
            for (method, target), g in ablation.groupby(["method", "target"], sort=False)
        )
        + ".  GMP runs again in each table; the comparisons pair within one table."
    )
)

# %% [markdown]
# Bayesian compression (its group-horseshoe version) removes hidden units; the `BAYESIAN`
# table trains it with Adam, as its paper does, with the strength chosen on validation and the
# projection spread uniformly over the layers (the config,
# `benchmarks/configs/regularization-bayesian-channel-lenet300-mnist.yaml`, says why).

# %%
bayesian, _ = tables[BAYESIAN]
bc_label = "bayesian_compression (adam)"
bc_lines = []
for target in sorted(bayesian.loc[bayesian["method"] == bc_label, "target_sparsity"].unique()):
    part = bayesian[bayesian["target_sparsity"] == target]
    diff = sl.stats.paired(part, "method", bc_label, "gmp", metric="test_accuracy").iloc[0]
    runs = mechanisms[(mechanisms["table"] == BAYESIAN) & (mechanisms["method"] == bc_label)
                      & (mechanisms["target_sparsity"] == target)]  # fmt: skip
    per_run = ", ".join(
        f"seed {r.seed}: strength {r.selected:g}, rule {r.reached:.0%}"
        for r in runs.sort_values("seed").itertuples()
    )
    bc_lines.append(
        f"- {target:.0%} of the units removed: "
        f"{part.loc[part['method'] == bc_label, 'test_accuracy'].mean():.1%} mean test "
        f"accuracy, minus GMP {sl.stats.describe(diff)}; the strength selected and the "
        f"sparsity its own rule reached before the projection, per run: {per_run}."
    )
display(Markdown("\n".join(bc_lines)))

# %% [markdown]
# ## Against the literature
#
# Gale et al. (2019) find magnitude pruning as good as variational dropout and as L0 at
# equal budgets.  Both claims are judged here on GMP against the method trained with Adam
# (variational dropout's and L0's papers' optimizer), paired on the seeds at each target.

# %%
CLAIMS = {  # claim: (table, the method's label there, its name in the claim)
    "magnitude_matches_variational_dropout": (
        OPTIMIZER, "variational_dropout (adam)", "variational_dropout"),
    "magnitude_matches_l0": (ADAM_MORE, "l0_hard_concrete (adam)", "l0_hard_concrete"),
}  # fmt: skip
verdicts = []
for claim, (name, label, method) in CLAIMS.items():
    claim_runs = tables[name][0].replace({"method": {label: method}})
    for target in sorted(claim_runs.loc[claim_runs["method"] == "gmp", "target_sparsity"].unique()):
        part = claim_runs[claim_runs["target_sparsity"] == target]
        row = sl.stats.paired(part, "method", "gmp", method, metric="test_accuracy")
        own = by_method.loc[(name, label, target)]
        verdicts.append(
            sl.claims.judge(
                claim,
                row.iloc[0],
                setting=f"LeNet-300-100 on the MNIST subset at {target:.0%}",
                reason=(
                    f"The per-seed differences spread by {100 * row['std'].iloc[0]:.1f} points "
                    f"(standard deviation over {int(row['n'].iloc[0])} seeds)."
                ),
                measured=(
                    f"{method} trained with Adam at 1e-3; its own rule kept and pruned within "
                    f"a factor {FACTOR} of the target's counts in {own['own_rule']} of "
                    f"{own['runs']} runs."
                ),
            )
        )
display(Markdown(sl.claims.report(verdicts)))
sl.claims.table(verdicts)

# %% [markdown]
# ## Summary

# %%
collapsed = ablation[ablation["flagged_runs"] == ablation["runs"]]
rescued = ablation[(ablation["optimizer"] == "Adam") & (ablation["flagged_runs"] == 0)]
settings = by_method.reset_index()
settings = settings[settings["method"] != "gmp"]
short = settings[settings["own_rule"] < settings["runs"]]
statuses = pd.Series([v.status for v in verdicts]).value_counts()


def listed(items):
    return ", ".join(items) or "none"


display(
    Markdown(
        f"- In {len(short)} of the {len(settings)} (table, method, target) settings of a "
        f"regularizer, the method's own rule kept or pruned more than a factor {FACTOR} off "
        "the target's counts in at least one run, so the projection did part of the work: "
        + listed(
            f"{r.method} at {r.target_sparsity:.0%} ({r.own_rule} of {r.runs} runs by its own rule)"
            for r in short.itertuples()
        )  # fmt: skip
        + ".\n"
        "- Every run flagged (collapsed) in the optimizer comparison: "
        + listed(f"{r.method} with {r.optimizer} at {r.target:.0%}" for r in collapsed.itertuples())
        + ".\n"
        "- No run flagged with Adam: "
        + listed(
            f"{r.method} at {r.target:.0%} ({r.accuracy:.1%} mean test accuracy)"
            for r in rescued.itertuples()
        )  # fmt: skip
        + ".\n"
        "- GMP against variational dropout and against L0, both trained with Adam (Gale et al. "
        "2019): " + listed(f"{n} {status}" for status, n in statuses.items()) + " over the targets."
    )
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** In the unstructured table, which starting strength did `l1` select on validation
# in the most runs at 95%?  Why could a strength that suits a lower target be too strong
# for a higher one?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    picks = mechanisms[
        (mechanisms["table"] == UNSTRUCTURED)
        & (mechanisms["method"] == "l1")
        & (mechanisms["target_sparsity"] == 0.95)
    ]["selected"].value_counts()
    hint = "Filter `mechanisms` to l1 at 95% in the unstructured table; count `selected`."
    sl.nb.check(1, answer, lambda a: picks.get(a, 0) == picks.max(), hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_1 = None  # a strength, e.g. 1e-4
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  From the committed CSV itself, with the standard library: each run's extras
# hold the candidates it tried and the one it kept.  At a higher target the tuner must
# raise the strength further during training, and a start that is already high can
# overshoot to a collapse; the selection on validation keeps the start that did not.
path = leaderboard.tables_dir() / f"{UNSTRUCTURED}.csv"
with open(path, newline="") as f:
    kept = collections.Counter(
        json.loads(row["extras"])["selected"]["strength"]
        for row in csv.DictReader(f)
        if row["method"] == "l1" and float(row["target_sparsity"]) == 0.95
    )
solution_1 = kept.most_common(1)[0][0]
print(dict(kept), "->", solution_1)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** In the channel table, what is network slimming's mean paired difference from GMP
# at 70% of the units removed, in points?  One decimal.  Is it a clear loss?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    channel, _ = tables[CHANNEL]
    part = channel[channel["target_sparsity"] == 0.7]
    diff = sl.stats.paired(part, "method", "slimming", "gmp", metric="test_accuracy")
    hint = "Pair slimming with gmp at 0.7 in the channel table (`sl.stats.paired`)."
    sl.nb.check(2, answer, 100 * diff["mean_diff"].iloc[0], hint=hint, tolerance=0.05,
                solution=solution)  # fmt: skip


# %%
answer_2 = None  # points, e.g. -1.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  By hand: one column per method, one row per seed, the difference seed by
# seed and its mean.  Whether it is a clear loss is the paired interval's question: the
# table above gives it (`vs GMP`).
channel, _ = tables[CHANNEL]
wide = channel[channel["target_sparsity"] == 0.7].pivot_table(
    index="seed", columns="method", values="test_accuracy"
)
solution_2 = round(100 * float((wide["slimming"] - wide["gmp"]).mean()), 1)
print(f"slimming minus GMP at 70%: {solution_2:+.1f} points, per seed "
      f"{(100 * (wide['slimming'] - wide['gmp'])).round(1).tolist()}")  # fmt: skip
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** With Adam, how far beyond or short of the 90% target did variational dropout's own
# rule (log alpha >= 3) end, on average over the seeds, in points (reached minus target)?
# One decimal.  Did the projection have to prune, or to restore weights?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_3(answer, solution=False):
    runs = mechanisms[
        (mechanisms["table"] == OPTIMIZER)
        & (mechanisms["method"] == "variational_dropout (adam)")
        & (mechanisms["target_sparsity"] == 0.9)
    ]
    hint = "Average `reached` of those runs in `mechanisms`, minus 0.9, times 100."
    sl.nb.check(3, answer, 100 * (runs["reached"].mean() - 0.9), hint=hint, tolerance=0.05,
                solution=solution)  # fmt: skip


# %%
answer_3 = None  # points, e.g. -2.5
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  From the table's extras column directly.  A positive value means the rule
# pruned more than the target and the projection restored the weights with the lowest log
# alpha; a negative one that the projection pruned the rest.
rows = adam[(adam["method"] == "variational_dropout (adam)") & (adam["target_sparsity"] == 0.9)]
reached = [json.loads(text)["reached"] for text in rows["extras"]]
solution_3 = round(100 * (sum(reached) / len(reached) - 0.9), 1)
print(f"reached {[round(r, 4) for r in reached]}: {solution_3:+.1f} points")
check_3(solution_3, solution=True)

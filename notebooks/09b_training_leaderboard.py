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
# # Training methods on the leaderboard
#
# **What you will learn:** how sparse training methods compare when every one of them
# trains under the same recipe, at 80, 90 and 95% sparsity; what each costs to train,
# counted in FLOPs from scratch; and which claims of their papers hold on this setting,
# with the evidence where one does not.
#
# Chapter 09 compared criteria that prune one trained model.  Training methods make their own
# model: GMP prunes gradually while it trains, static sparse training keeps a random mask,
# SET and RigL move theirs, AC/DC alternates dense and sparse phases, IMP retrains from the
# initial weights round after round, and CrAM trains a dense model meant to be pruned once
# (chapters [04](04_sparse_training.ipynb), [04b](04b_dynamic_sparse_training.ipynb) and
# [04c](04c_acdc_and_cram.ipynb) teach them).  The benchmark harness runs them as runs of
# kind `train`: a fresh model of the seed, the recipe's optimizer, learning rate, schedule
# and epochs (times an `epochs_factor` where a method trains longer or shorter), measured on
# the test split with the sanity flags.  Every table also holds the harness's baselines,
# which prune the recipe's dense model once: global magnitude pruning then *is* one-shot
# pruning.  This notebook only reads the committed tables (`benchmarks/leaderboard/`), so it
# runs in seconds.  `sparsity-lab bench benchmarks/configs/training-lenet300-mnist.yaml --out
# benchmarks/leaderboard` regenerates one (about 15 minutes on one core), and
# `benchmarks/training_methods.py` runs the same configs and prints every check.

# %%
import csv
import itertools
import warnings

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import leaderboard, registry
from sparsity_lab.methods import acdc

# %% tags=["parameters"]
SMOKE = False
TABLE = "training-lenet300-mnist"
ACDC_TABLE = "training-acdc-seeds-lenet300-mnist"  # AC/DC and GMP on ten seeds
CRAM_TABLE = "training-cram-resnet_small-digits"
CNN_TABLES = [  # small and committed: read in smoke mode too
    "training-dst-cnn1d-mnist1d",
    "training-dst-5x-cnn1d-mnist1d",
    "training-acdc-imp-cnn1d-mnist1d",
]
PHASES_TABLE = "training-acdc-phases-cnn1d-mnist1d"  # AC/DC's dense phases, ablated at 95%
SPARSITIES = [0.8, 0.9, 0.95]  # every sparsity of the table: each claim is judged at all
CRAM_SPARSITIES = [0.7, 0.8]  # where CrAM's paper makes its one-shot claims

# %%
if SMOKE:  # a quick pass through every cell, for CI: tiny committed tables
    TABLE, ACDC_TABLE, CRAM_TABLE = "smoke-training", "smoke-training", "smoke-cram"
    SPARSITIES, CRAM_SPARSITIES = [0.9], [0.8]
info = sl.nb.setup(seed=0, smoke=SMOKE, threads=1)

# %% [markdown]
# ## Where the numbers come from

# %%
table, manifest = leaderboard.load(TABLE)
lines, dense = leaderboard.provenance(table, manifest)
print(lines)
recipe = manifest["dense"]["recipe"]
print("recipe:", {k: recipe[k] for k in ("epochs", "optimizer", "lr", "lr_schedule", "batch_size")})
dense

# %% [markdown]
# ## Sanity flags

# %%
sl.nb.show_flags(sl.flags.table(table, ["method", "target_sparsity"]), what="after training (test)")

# %% [markdown]
# ## Accuracy against what the model costs
#
# Two costs matter for a sparse model: what it keeps (nonzeros) and what it took to make.
# The training FLOPs below count a model from scratch: a run that prunes the recipe's
# dense model pays for that model's training too (`leaderboard.total_training_flops`).
# The RigL paper's accounting is used throughout: a step costs three forward passes of
# the weights the method keeps, more for the steps that need a dense gradient.  A method
# on the left of the right-hand panel at the same height made its model for less.

# %%
summary = leaderboard.summary(table)
summary["x dense training"] = (
    summary["total_training_flops"] / table["dense_training_flops"].iloc[0]
)
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
leaderboard.plot_fronts(table, ["nonzeros", "total_training_flops"], axes=axes)
plt.show()
shown = summary[["method", "target_sparsity", "n", "test_accuracy", "ci_low", "ci_high",
                 "x dense training", "vs_baseline", "vs_verdict", "flagged"]]  # fmt: skip
shown.sort_values(["target_sparsity", "test_accuracy"], ascending=[True, False]).round(3)

# %% [markdown]
# `vs_*` is the paired difference from `magnitude (global)`, the one-shot baseline: the
# recipe's dense model pruned once and fine-tuned for the config's budget.


# %%
def row_of(name):
    """A method's summary rows, by target sparsity."""
    return summary[summary["method"] == name].set_index("target_sparsity")


cheapest = summary[summary["method"] != "dense"].loc[lambda d: d["x dense training"].idxmin()]
costliest = summary.loc[summary["x dense training"].idxmax()]
display(
    Markdown(
        f"Making a model costs from {cheapest['x dense training']:.2f}x dense training "
        f"(`{cheapest['method']}` at {cheapest['target_sparsity']:.0%}) to "
        f"{costliest['x dense training']:.2f}x (`{costliest['method']}` at "
        f"{costliest['target_sparsity']:.0%}).  One-shot pruning costs "
        f"{row_of('magnitude (global)')['x dense training'].mean():.2f}x: the dense model "
        "plus its fine-tuning."
    )
)

# %% [markdown]
# ## The papers' claims
#
# Each claim is judged on paired differences over seeds at every sparsity of the table
# (`sl.claims`; each verdict gives the paper's own setting): reproduced when the interval
# lies on the paper's side of its margin, not reproduced when it lies on the other side,
# inconclusive otherwise.  The
# dense member of AC/DC and the re-initialised twin of the IMP ticket are measured by the
# harness beside the run (its `extras`), so they are compared as arms of their own.
# AC/DC's two claims are judged on more seeds: `ACDC_TABLE` runs AC/DC, GMP and the dense
# model with the same recipe on the table's seeds and more, and is judged on its own runs
# (the line below gives the verdicts on each table's seeds, and how far apart the two
# tables' runs of the same seeds are).


# %%
def judged(key, runs, treatment, baseline, sparsities, measured="", config=None):
    """The claim's verdict at each sparsity, with the spread of the seeds as its reason."""
    config = config or manifest["config"]
    out = []
    for s in sparsities:
        part = runs[runs["target_sparsity"] == s]
        row = sl.stats.paired(part, "method", treatment, baseline, metric="test_accuracy")
        # a paired interval is as wide as the per-seed differences are spread
        reason = (
            f"The per-seed differences spread by {100 * row['std'].iloc[0]:.1f} points "
            f"(standard deviation over {int(row['n'].iloc[0])} seeds)."
        )
        setting = f"{config['model']} on {config['data']} at {s:.0%}"
        out.append(sl.claims.judge(key, row.iloc[0], setting=setting, reason=reason,
                                   measured=measured))  # fmt: skip
    return out


# models measured beside a run: (its method, the key in its extras, the arm's label)
MEMBERS = [("acdc", "dense_member_accuracy", "acdc dense"),
           ("imp", "ticket_val_accuracy", "ticket"),
           ("imp", "reinit_val_accuracy", "reinit")]  # fmt: skip
MEMBER = "The dense member is the model at the end of AC/DC's last dense phase."
TICKETS = "Tickets are compared on validation accuracy, as IMP chose them."


def with_members(runs, sparsities):
    """The runs, the MEMBERS as arms of their own, and the dense runs at each sparsity."""
    arms = [leaderboard.extras_arm(runs, m, key, label) for m, key, label in MEMBERS
            if m in set(runs["method"])]  # fmt: skip
    return pd.concat([runs, *arms, leaderboard.dense_at(runs, sparsities)], ignore_index=True)


runs = with_members(table, SPARSITIES)
acdc_table = leaderboard.load(ACDC_TABLE)[0]
acdc_runs = with_members(acdc_table, SPARSITIES)
for r in (runs, acdc_runs):  # TABLE's seeds, then ACDC_TABLE's: the last are judged below
    acdc_verdicts = judged("acdc_matches_gmp", r, "acdc", "gmp", SPARSITIES) + judged(
        "acdc_dense_near_dense", r, "acdc dense", "dense", SPARSITIES, measured=MEMBER
    )
    n_seeds = r.loc[r["method"] == "acdc", "seed"].nunique()
    print(f"AC/DC on {n_seeds} seeds: " + ", ".join(v.status for v in acdc_verdicts))
both = table.merge(acdc_table, on=["method", "target_sparsity", "seed"])
gap = 100 * (both["test_accuracy_x"] - both["test_accuracy_y"]).abs().max()
print(f"The runs of the seeds both tables hold differ by up to {gap:.1f} points.")
verdicts = (
    judged("set_beats_static", runs, "set_erk", "static_erk", SPARSITIES)
    + judged("rigl_beats_set", runs, "rigl_erk", "set_erk", SPARSITIES)
    + acdc_verdicts
    + judged("tickets_beat_reinit", runs, "ticket", "reinit", SPARSITIES, measured=TICKETS)
)
display(Markdown(sl.claims.report(verdicts)))
sl.claims.table(verdicts)

# %% [markdown]
# ## Training longer
#
# A sparse-from-scratch method pays only for the weights it keeps, so for the cost of one
# GMP run it can train longer.  The RigL paper trains up to five times as long and finds
# RigL's accuracy rising with the length, up to and past gradual pruning's.  Here RigL and
# GMP also train for longer than the recipe (each length the table holds), and SET for
# twice as long.

# %%
methods = set(table["method"])
lengths = [x for x in ("2x", "5x") if f"rigl_erk {x}" in methods]


def paired_at(s, treatment, baseline):
    part = table[table["target_sparsity"] == s]
    return sl.stats.paired(part, "method", treatment, baseline, metric="test_accuracy").iloc[0]


longer = pd.DataFrame(
    [
        {"method": m, "length": x, "sparsity": s,
         "minus 1x": sl.stats.describe(paired_at(s, f"{m} {x}", m))}
        for x in lengths
        for m in ("set_erk", "rigl_erk", "gmp")
        if f"{m} {x}" in methods
        for s in SPARSITIES
    ]
)  # fmt: skip
lead = {
    (x, s): paired_at(s, "gmp" + suffix, "rigl_erk" + suffix)
    for x, suffix in [("1x", ""), *((x, f" {x}") for x in lengths)]
    for s in SPARSITIES
}
longer

# %%
gains = {(x, s): paired_at(s, f"rigl_erk {x}", "rigl_erk") for x in lengths for s in SPARSITIES}
clear = [key for key, row in gains.items() if row["verdict"] == "better"]
none_clear = all(
    row["verdict"] not in ("better", "worse") for row in [*gains.values(), *lead.values()]
)
display(
    Markdown(
        "GMP's lead over RigL at the same training length: "
        + "; ".join(
            f"at {s:.0%}, "
            + ", ".join(f"{sl.stats.describe(lead[x, s])} at {x}" for x in ["1x", *lengths])
            for s in SPARSITIES
        )
        + ".  "
        + (
            "RigL gains clearly from training longer at "
            + ", ".join(f"{s:.0%} ({x})" for x, s in clear)
            + "."
            if clear
            else "RigL gains clearly from training longer at no sparsity and length here, so "
            "the paper's trend is not seen on this setting"
            + (
                " (none of RigL's gains from training longer, nor of GMP's leads over it, is"
                " clear)."
                if none_clear
                else "."
            )
        )
    )
)

# %% [markdown]
# ## The same claims on a convolutional model
#
# The RigL paper's ordering (static below SET below RigL, with RigL closing on gradual
# pruning as training lengthens), AC/DC's two claims and the ticket claim are also judged on
# the MNIST-1D CNN (`cnn1d`), trained by its own recipe: static, SET and RigL with ERK masks
# at the recipe's epochs and longer, AC/DC against GMP, and IMP's tickets against their
# re-initialised twins (`CNN_TABLES`, read together; each config gives its sparsities,
# seeds and lengths, and says why it is this subset of the full CNN config).


# %%
cnn_table, cnn_manifests = leaderboard.load_together(CNN_TABLES)
for name, one in zip(CNN_TABLES, cnn_manifests, strict=True):
    print(leaderboard.provenance(leaderboard.load(name)[0], one)[0])
sl.nb.show_flags(sl.flags.table(cnn_table, ["method", "target_sparsity"]), what="on the CNN")
ran_at = cnn_table.groupby("method")["target_sparsity"].unique()  # where each method ran
cnn_sparsities, acdc_sparsities = sorted(ran_at["rigl_erk"]), sorted(ran_at["acdc"])
cnn_runs = with_members(cnn_table, acdc_sparsities)
CNN_LENGTHS = {x: (suffix, words) for x, suffix, words in  # the lengths the tables hold
               [("1x", "", ""), ("2x", " 2x", "twice"), ("5x", " 5x", "five times")]
               if f"rigl_erk{suffix}" in set(cnn_table["method"])}  # fmt: skip
CNN_ARMS = ["dense", "static_erk", *(f"{m}{x}" for x, _ in CNN_LENGTHS.values() for m in
            ("set_erk", "rigl_erk", "gmp")), "acdc", "acdc dense", "ticket", "reinit"]  # fmt: skip
cnn_means = (cnn_runs[cnn_runs["method"].isin(CNN_ARMS)]
             .pivot_table(index="method", columns="target_sparsity", values="test_accuracy")
             .reindex(CNN_ARMS))  # fmt: skip
display(cnn_means.round(4))
cnn_config = cnn_manifests[0]["config"]
cnn_verdicts = (
    judged("set_beats_static", cnn_runs, "set_erk", "static_erk", cnn_sparsities, config=cnn_config)
    + [v for x, times in CNN_LENGTHS.values()
       for v in judged("rigl_beats_set", cnn_runs, "rigl_erk" + x, "set_erk" + x, cnn_sparsities,
                       measured=times and f"Both arms trained {times} the recipe's epochs.",
                       config=cnn_config)]
    + judged("acdc_matches_gmp", cnn_runs, "acdc", "gmp", acdc_sparsities, config=cnn_config)
    + judged("acdc_dense_near_dense", cnn_runs, "acdc dense", "dense", acdc_sparsities,
             measured=MEMBER, config=cnn_config)
    + judged("tickets_beat_reinit", cnn_runs, "ticket", "reinit", acdc_sparsities,
             measured=TICKETS, config=cnn_config)
)  # fmt: skip
cnn_lead = {
    (length, s): sl.stats.paired(cnn_runs[cnn_runs["target_sparsity"] == s], "method",
                                 "gmp" + x, "rigl_erk" + x, metric="test_accuracy").iloc[0]
    for length, (x, _) in CNN_LENGTHS.items()
    for s in cnn_sparsities
}  # fmt: skip
display(Markdown(sl.claims.report(cnn_verdicts)))
display(
    Markdown(
        "GMP's lead over RigL on the CNN at the same training length: "
        + "; ".join(
            f"at {s:.0%}, "
            + ", ".join(f"{sl.stats.describe(cnn_lead[x, s])} at {x}" for x in CNN_LENGTHS)
            for s in cnn_sparsities
        )
        + "."
    )
)

# %% [markdown]
# ### Why AC/DC's dense member falls short on the CNN at the highest sparsity
#
# The dense member is the model at the end of AC/DC's last dense phase, and every dense
# phase starts from the sparse member: the pruned weights restart at zero and have one phase
# to regrow.  By default a phase is 5% of training.  `PHASES_TABLE` measures whether the
# length of that phase is the reason, on the CNN table's seeds: the default, longer phases
# in the same epochs (so fewer of them), and the default proportions over twice the epochs
# (as many phases, each twice as long).  Each arm's dense member is paired with the dense
# baseline and with the default arm's dense member; its sparse member with GMP.


# %%
phases_table, phases_manifest = leaderboard.load(PHASES_TABLE)
print(leaderboard.provenance(phases_table, phases_manifest)[0])
(phases_sparsity,) = phases_manifest["config"]["sparsities"]
phase_arms = [e for e in phases_manifest["config"]["methods"] if e["method"] == "acdc"]
phases_runs = pd.concat(
    [phases_table, leaderboard.dense_at(phases_table, [phases_sparsity])]
    + [leaderboard.extras_arm(phases_table, e["label"], "dense_member_accuracy",
                              e["label"] + " dense") for e in phase_arms],
    ignore_index=True,
)  # fmt: skip
phases_runs = phases_runs[phases_runs["target_sparsity"] == phases_sparsity]
cnn_epochs = phases_manifest["dense"]["recipe"]["epochs"]


def phase_row(entry):
    """One AC/DC arm of PHASES_TABLE: its phases and its paired differences."""
    label, epochs = entry["label"], round(cnn_epochs * entry.get("epochs_factor", 1))
    method = registry.get("acdc", "training")(phases_sparsity, **entry["options"])
    lengths = method.epochs_of(epochs)  # (warm-up, phase, final), defaults filled in
    plan = acdc.phase_plan(epochs, *lengths)

    def minus(treatment, baseline):
        return sl.stats.paired(phases_runs, "method", treatment, baseline, metric="test_accuracy",
                               flags=None).iloc[0]  # fmt: skip

    return {
        "arm": label, "epochs": epochs, "phase epochs": lengths[1],
        "dense phases after warm-up": list(itertools.pairwise(plan)).count(("sparse", "dense")),
        "member - dense": minus(label + " dense", "dense"),
        "member - default": minus(label + " dense", "acdc dense"),
        "sparse - gmp": minus(label, "gmp"),
    }  # fmt: skip


phases = pd.DataFrame([phase_row(e) for e in phase_arms]).set_index("arm")
DIFFERENCES = ["member - dense", "member - default", "sparse - gmp"]
display(phases.assign(**{c: phases[c].map(sl.stats.describe) for c in DIFFERENCES}))
# the default arm is the CNN table's own AC/DC run: the harness is deterministic per seed
same = cnn_runs[(cnn_runs["method"] == "acdc") & (cnn_runs["target_sparsity"] == phases_sparsity)]
rerun = phases_table[phases_table["method"] == "acdc"].merge(same, on="seed")
rerun_gap = 100 * (rerun["test_accuracy_x"] - rerun["test_accuracy_y"]).abs().max()
print(f"The default arm differs from the CNN table's AC/DC runs by up to {rerun_gap:.1f} points.")

# %%
MARGIN = sl.claims.get("acdc_dense_near_dense").margin
longer = phases.drop(index="acdc")
# arms whose whole interval lies within the claim's margin, and arms measurably above the default
within = [a for a, r in longer.iterrows() if r["member - dense"]["ci_low"] >= -MARGIN]
raised = [a for a, r in longer.iterrows() if r["member - default"]["verdict"] == "better"]
if within:
    conclusion = (
        f"With {', '.join(within)} the whole interval lies within the claim's margin: the "
        f"default phase is too short for the weights that restart at zero to regrow."
    )
elif raised:
    conclusion = (
        f"Longer phases raise the dense member ({', '.join(raised)}) but not to within the "
        f"claim's margin: the phase length explains part of the gap, not all of it."
    )
else:
    widest = max(r["member - default"]["ci_high"] for _, r in longer.iterrows())
    conclusion = (
        "No arm raises the dense member measurably above the default's on these seeds, "
        f"but the intervals reach {100 * widest:+.1f} points: these seeds cannot tell "
        "whether longer dense phases explain the gap."
    )
# the same gap across the CNN table's sparsities, beside how far the sparse member is from dense
trend = {
    s: (sl.stats.paired(cnn_runs[cnn_runs["target_sparsity"] == s], "method", "acdc dense",
                        "dense", metric="test_accuracy", flags=None).iloc[0],
        sl.stats.paired(cnn_runs[cnn_runs["target_sparsity"] == s], "method", "acdc", "dense",
                        metric="test_accuracy", flags=None).iloc[0]["mean_diff"])
    for s in acdc_sparsities
}  # fmt: skip
member_means = [member["mean_diff"] for member, _ in trend.values()]
member_clear = [s for s, (member, _) in trend.items() if member["verdict"] in ("better", "worse")]
clear_at = ", ".join(f"{s:.0%}" for s in member_clear)
follows = all(a > b for a, b in itertools.pairwise(member_means))  # falls at every step
sparse_falls = all(a > b for a, b in itertools.pairwise(s for _, s in trend.values()))
paper_setting = sl.claims.get("acdc_dense_near_dense").setting
dense_verdicts = [v for v in cnn_verdicts if v.claim.key == "acdc_dense_near_dense"]
PAPER_SPARSITIES = (0.8, 0.9)  # the claim's setting above: 80-90% sparse
at_paper = [(s, v) for s, v in zip(acdc_sparsities, dense_verdicts, strict=True)
            if s in PAPER_SPARSITIES]  # fmt: skip
display(
    Markdown(
        f"At {phases_sparsity:.0%}, the dense member minus the dense baseline: "
        + "; ".join(
            f"{arm} ({r['phase epochs']}-epoch phases over {r['epochs']} epochs) "
            f"{sl.stats.describe(r['member - dense'])}"
            for arm, r in phases.iterrows()
        )
        + f".  The claim allows {100 * MARGIN:.0f} point.  Against the default's dense member: "
        + "; ".join(f"{a} {sl.stats.describe(r['member - default'])}" for a, r in longer.iterrows())
        + f".  {conclusion}  Across the CNN table's sparsities, the dense member minus dense "
        f"and (after the slash) the sparse member minus dense: "
        + "; ".join(
            f"{s:.0%} {sl.stats.describe(member)} / {100 * sparse:+.1f} points"
            for s, (member, sparse) in trend.items()
        )
        + (
            ".  The dense member's mean gap grows with the sparsity of the compressed phases "
            "it alternates with"
            + (", as the sparse member's does" if sparse_falls else "")
            + (
                ""
                if len(member_clear) == len(trend)
                else f" (a clear difference from dense only at {clear_at})"
                if member_clear
                else " (no difference from dense is clear)"
            )
            if follows
            else ".  The dense member's gap does not grow steadily with the sparsity"
        )
        + f".  The paper's setting is {paper_setting}; at those sparsities the verdicts "
        f"above are {', '.join(f'{v.status} ({s:.0%})' for s, v in at_paper)}.  "
        "The sparse member minus GMP, per arm: "
        + "; ".join(f"{a} {sl.stats.describe(r['sparse - gmp'])}" for a, r in phases.iterrows())
        + "."
    )
)


# %% [markdown]
# ## CrAM: a dense model that survives one-shot pruning
#
# CrAM trains a dense model whose compressed neighbours also have a low loss: each step
# takes the gradient at a point that has been pushed up the loss and then pruned, at a
# sparsity drawn from 50, 70, 80 and 90%.  The model is then pruned once, BatchNorm statistics are
# re-estimated on the training data, and nothing is fine-tuned.  Its table uses the small
# ResNet (BatchNorm after every convolution) on 8x8 digits; SGD one-shot is the recipe's
# dense model pruned the same way.  Every compression uses the ERK budget, and the gradient
# at the compressed point reaches only the weights it kept (CrAM's default, as in the
# authors' code).  The ablations: `cram (global)` compresses by one global threshold
# instead, and the two `straight-through` arms pass that gradient to every weight.

# %%
cram_table, cram_manifest = leaderboard.load(CRAM_TABLE)
cram_lines, _ = leaderboard.provenance(cram_table, cram_manifest)
print(cram_lines)
sl.nb.show_flags(
    sl.flags.table(cram_table, ["method", "target_sparsity"]), what="after pruning (test)"
)
# the ablation arms: the budget of the compression, and the gradient at the compressed
# point passed straight through to every weight instead of masked to the kept ones
ABLATION = {"cram": "ERK", "cram (global)": "global",
            "cram (straight-through)": "ERK, straight-through",
            "cram (global, straight-through)": "global, straight-through"}  # fmt: skip
cram_dense = {
    m: leaderboard.extras_arm(cram_table, m, "trained_accuracy", f"{m} dense")
    for m in ("cram_plus", *ABLATION)
    if m in set(cram_table["method"])
}
cram_runs = pd.concat(
    [cram_table, *cram_dense.values(), leaderboard.dense_at(cram_table, CRAM_SPARSITIES)],
    ignore_index=True,
)
fig, ax = plt.subplots(figsize=(8.5, 3.8), layout="constrained")
cram_summary = leaderboard.summary(cram_table, baseline="sgd one-shot (erk)")
sparse = cram_summary[cram_summary["method"] != "dense"]
sl.viz.interval_lines(sparse.rename(columns={"test_accuracy": "mean"}), "target_sparsity",
                      "method", ax, flagged=sparse["flagged"])  # fmt: skip
ax.axhline(
    cram_table[cram_table["method"] == "dense"]["test_accuracy"].mean(),
    color="k",
    ls="--",
    lw=1,
    label="dense (SGD)",
)
ax.set_xlabel("sparsity after one-shot pruning (no fine-tuning)")
ax.set_ylabel("test accuracy (mean, 95% CI)")
ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
plt.show()
cram_summary[leaderboard.SUMMARY_COLUMNS].round(3)

# %%
cram_config = cram_manifest["config"]
cram_runs = cram_runs.assign(
    method=cram_runs["method"].replace({"cram": "cram_one_shot"})
)  # the claim's arms
cram_verdicts = (
    judged("cram_one_shot_beats_sgd", cram_runs, "cram_one_shot", "sgd one-shot (erk)",
           CRAM_SPARSITIES, config=cram_config)
    + judged("cram_one_shot_keeps_dense", cram_runs, "cram_one_shot", "cram dense",
             CRAM_SPARSITIES, config=cram_config)
    # the dense model is the same in every cell of a seed: judged once
    + judged("cram_dense_matches_sgd", cram_runs, "cram_plus dense", "dense",
             CRAM_SPARSITIES[:1], config=cram_config,
             measured="The claim is CrAM+'s, which adds the dense gradient.")
)  # fmt: skip
display(Markdown(sl.claims.report(cram_verdicts)))
# CrAM trains toward its list of sparsities whatever the target, so its dense model is the
# same in every cell of a seed: the comparison is made once
first = cram_runs[cram_runs["target_sparsity"] == CRAM_SPARSITIES[0]]
arms = [m for m in ABLATION if f"{m} dense" in set(first["method"])]
per_seed = first.pivot_table(index="seed", columns="method", values="test_accuracy")[
    [f"{m} dense" for m in arms]
].rename(columns={f"{m} dense": ABLATION[m] for m in arms})


def erk_minus_global(erk, global_):
    """CrAM's dense model with ERK minus with the global threshold, paired over seeds."""
    found = sl.stats.paired(
        first, "method", f"{erk} dense", f"{global_} dense", metric="test_accuracy"
    )
    return sl.stats.describe(found.iloc[0])


sgd_dense = cram_table.loc[cram_table["method"] == "dense", "test_accuracy"].mean()
FAILED = sgd_dense - 0.05  # more than 5 points below SGD's dense models: a failed training
failed = (per_seed < FAILED).sum()


# %% [markdown]
# What the budget changes at the start: the compressed point of the first steps is the
# *initial* network pruned at the drawn sparsity.  Here is the small ResNet at
# initialisation, pruned to 90% by one global threshold and by ERK, layer by layer, and
# whether a signal still crosses it (`sl.flags.disconnected`).

# %%
with warnings.catch_warnings():  # the global budget warns that it empties a layer: shown below
    warnings.simplefilter("ignore", UserWarning)
    layers, crossed = {}, {}
    for budget in ("global", "erk"):
        cram_task = sl.recipes.task(cram_config["model"], cram_config["data"], seed=0)
        net = sl.prune(cram_task.build(), "magnitude", 0.9, budget=budget)
        layers[budget] = sl.report(net).set_index("name")["sparsity"].iloc[:-1]
        example = cram_task.bundle.test.tensors[0][:8]
        crossed[budget] = not sl.flags.disconnected(net, example)
at_init = pd.DataFrame(layers)
emptied = {b: int((at_init[b] >= 1.0).sum()) for b in at_init}
straight = "cram (global, straight-through)" in arms
display(
    Markdown(
        f"At initialisation, one global threshold at 90% empties {emptied['global']} of "
        f"{len(at_init)} layers and ERK empties {emptied['erk']}.  With the emptied layer, a "
        "signal "
        + ("still crosses" if crossed["global"] else "no longer crosses")
        + " the globally pruned network"
        + (" (the block's residual shortcut carries it)" if crossed["global"] else "")
        + ".  CrAM's dense model with ERK minus with the global threshold: "
        + erk_minus_global("cram", "cram (global)")
        + (
            "; with the gradient passed straight through: "
            + erk_minus_global("cram (straight-through)", "cram (global, straight-through)")
            if straight
            else ""
        )
        + f".  More than 5 points below SGD's dense models ({sgd_dense:.1%}), i.e. failed: "
        + ", ".join(f"{n} of {len(per_seed)} seeds with {arm}" for arm, n in failed.items())
        + "."
        + (
            f"  Masking the gradient to the weights the compression kept took the global "
            f"budget's failures from {failed['global, straight-through']} to "
            f"{failed['global']} of {len(per_seed)} seeds."
            if straight and failed["global, straight-through"] != failed["global"]
            else ""
        )
    )
)
display(per_seed.round(3))
at_init.round(3)

# %% [markdown]
# ## Summary
#
# - Every training method here trained under the same recipe and was measured with the
#   same flags; its cost is counted from scratch, so a method that prunes a trained model
#   pays for that model too.
# - The claims above are judged by paired intervals over the seeds of their table (each
#   verdict gives how many); where a claim is not reproduced, the text gives the spread of
#   the per-seed differences it was judged on.
# - The ordering of static, SET and RigL, AC/DC's claims and the ticket claim are judged on
#   LeNet-300-100 and on the MNIST-1D CNN; the verdicts above say where each holds.
# - The AC/DC ablation above measures whether the length of the dense phases explains why the
#   dense member falls short of the dense baseline on the CNN at the highest sparsity, and
#   sets that gap beside the sparsity of the compressed phases.
# - The CrAM ablation above measures what its dense model owes to the budget it compresses
#   with (one global threshold against ERK) and to the form of its gradient (masked to the
#   weights kept, or passed straight through), on the small ResNet.
#
# ## Exercises
#
# **1.** Which training method reaches the highest mean test accuracy at the highest
# sparsity of the table?  Read it from `summary` and give its label.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    top = summary[summary["target_sparsity"] == summary["target_sparsity"].max()]
    top = top[top["method"] != "dense"]
    best = top.loc[top["test_accuracy"].idxmax(), "method"]
    hint = "Keep the rows of `summary` at the largest `target_sparsity`, then sort by accuracy."
    sl.nb.check(1, answer, best, hint=hint, solution=solution)


# %%
answer_1 = None  # a method's label, as the table names it
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  By hand from the committed CSV, without `summary`: each method's runs at the
# largest sparsity and their mean test accuracy (a tie goes to the method listed first).
# Then the summary's rows, best first, with the paired difference from one-shot pruning:
# the best mean is not always clearly better than the next.
with open(leaderboard.tables_dir() / f"{TABLE}.csv", newline="") as f:
    csv_rows = list(csv.DictReader(f))
largest = max(float(r["target_sparsity"]) for r in csv_rows)
runs_at = {}  # method: its runs at the largest sparsity
for r in csv_rows:
    if float(r["target_sparsity"]) == largest and r["method"] != "dense":
        runs_at.setdefault(r["method"], []).append(r)
mean_accuracy = {m: sum(float(r["test_accuracy"]) for r in rs) / len(rs)
                 for m, rs in runs_at.items()}  # fmt: skip
solution_1 = max(mean_accuracy, key=mean_accuracy.get)
highest = summary[summary["target_sparsity"] == summary["target_sparsity"].max()]
ranked = highest[highest["method"] != "dense"].sort_values("test_accuracy", ascending=False)
print(ranked[["method", "test_accuracy", "ci_low", "ci_high", "vs_verdict"]].round(3).head(4))
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** How many times dense training does it cost to make RigL's model at 2x training,
# against one-shot pruning, at the same sparsity?  Answer with the ratio of the two
# `x dense training` values at the highest sparsity (RigL 2x over one-shot), to two
# decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    top = summary[summary["target_sparsity"] == summary["target_sparsity"].max()]
    cost = top.set_index("method")["x dense training"]
    ratio = cost["rigl_erk 2x"] / cost["magnitude (global)"]
    hint = "Divide RigL 2x's `x dense training` by that of `magnitude (global)`."
    sl.nb.check(2, answer, ratio, tolerance=0.01, hint=hint, solution=solution)


# %%
answer_2 = None  # a number
check_2(answer_2)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Both costs counted from scratch, by hand from the CSV's runs at the largest
# sparsity (solution 1's `runs_at`): one-shot pays for the dense model's training and its
# fine-tuning, RigL for twice the recipe's steps at its own density, nothing else.
def from_scratch(method):
    """Mean training FLOPs of ``method``'s runs, in units of the dense model's training."""
    runs = runs_at[method]
    dense_cost = {"prune": 1.0, "train": 0.0}  # a pruning run starts from the dense model
    return sum(float(r["training_flops"]) / float(r["dense_training_flops"])
               + dense_cost[r["kind"]] for r in runs) / len(runs)  # fmt: skip


cost = {m: from_scratch(m) for m in ("rigl_erk 2x", "magnitude (global)")}
solution_2 = round(cost["rigl_erk 2x"] / cost["magnitude (global)"], 2)
one_shot = cost["magnitude (global)"]
print(f"RigL 2x: {cost['rigl_erk 2x']:.3f}x dense, one-shot: {one_shot:.3f}x (its "
      f"fine-tuning: {one_shot - 1:.3f}x): ratio {solution_2:.2f}")  # fmt: skip
check_2(solution_2, solution=True)

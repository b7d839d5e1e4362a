# %% [markdown]
# # Who pays for pruning?
#
# **What you will learn:** how unevenly pruning spreads its errors: which labels lose most,
# which examples change their prediction (pruning-identified exemplars), how sure and how
# well calibrated the pruned models are, and whether per-label thresholds repair the damage.
#
# This follows section 8 of the survey and the seed paper "Bias in pruned vision models"
# (Iofinova et al. 2023), with PIEs from Hooker et al. (2019).  The measurements live in
# `sparsity_lab.phenomena.bias`.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import display

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.phenomena import bias

# %% tags=["parameters"]
SMOKE = False
SEED = 0
POPULATION = [0, 1, 2, 3, 4]
SPARSITIES = [0.8, 0.9, 0.95, 0.98]
EPOCHS = None  # None: the recipe's
FINETUNE_EPOCHS = 5
FINETUNE_LR = 1e-3

# %%
if SMOKE:  # a quick pass through every cell, for CI
    POPULATION = POPULATION[:2]
    SPARSITIES = [0.8, 0.98]
    EPOCHS = 4
    FINETUNE_EPOCHS = 1
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## A multi-label task
#
# The paper studies face attributes (CelebA).  Here every MNIST-1D signal gets binary
# attributes of its digit (even, large, prime, has a loop, ...), so labels have different
# base rates and depend on each other, as attributes do:

# %% tags=["nbval-check-output"]
labels = list(bias.ATTRIBUTES)
for name, digits in bias.ATTRIBUTES.items():
    print(f"{name:13s} digits {digits}  base rate {len(digits) / 10:.0%}")

# %% [markdown]
# The measurements on hand-made cases: PIEs of a population of three models, the expected
# calibration error (ECE) of a known histogram (four predictions at confidence 0.55 with two
# right, six at 0.95 all right: each bin is off by 0.05), and a label whose scores all sit
# below 0.5 (positives 0.3, negatives 0.2): threshold 0.5 calls every example negative, and
# calibration repairs it with a threshold that separates the two groups.

# %% tags=["nbval-check-output"]
dense_votes = np.array([[0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 1, 3]])
pruned_votes = np.array([[0, 2, 2, 3], [0, 2, 2, 3], [1, 1, 2, 3]])
print("PIEs:", bias.pies(dense_votes, pruned_votes).tolist())
conf = np.array([0.55] * 4 + [0.95] * 6)
print("ECE:", round(bias.calibration_error(conf, np.array([1, 1, 0, 0] + [1] * 6)), 4))
shifted, truth = np.array([[0.3], [0.3], [0.2], [0.2]]), np.array([[1], [1], [0], [0]])
th = bias.calibrate_thresholds(shifted, truth)
print("threshold:", th.tolist(), "accuracy at 0.5:", bias.label_accuracy(shifted[None], truth)[0])
print("accuracy calibrated:", bias.label_accuracy(shifted[None], truth, th)[0])

# %% [markdown]
# ## Populations of dense and pruned models
#
# The dense models are the recipe's 1-D CNN digit classifiers (`recipes.dense`), one per
# seed; a model's probability of an attribute is the softmax probability it gives the digits
# that have it (the paper trains one sigmoid output per attribute instead).  Each dense model
# is pruned by global magnitude to every sparsity and fine-tuned with its mask fixed
# (`recipes.finetune`): every sparsity has a population of pruned models, each the child of
# one dense model.  The attribute measurements score every model on the validation and test
# examples of the first seed's split, which no model trained on (each seed generates its own
# MNIST-1D draw); the digit accuracies come from each seed's own test split.

# %%
dense = [recipes.dense("cnn1d", "mnist1d", seed, epochs=EPOCHS) for seed in POPULATION]
recipe = dense[0][2]["recipe"]
dense_runs = pd.DataFrame(
    [(t.seed, i["test_accuracy"], i["expected_test_accuracy"], i["recipe"].epochs, i["flags"])
     for t, _, i in dense],
    columns=["seed", "test_accuracy", "expected", "epochs", "flags"],
)  # fmt: skip
display(dense_runs)
pop = bias.population(dense, SPARSITIES, finetune_epochs=FINETUNE_EPOCHS, lr=FINETUNE_LR,
                      optimizer="adam", eval_bundle=dense[0][0].bundle)  # fmt: skip
runs = pop["runs"]
reached = runs.groupby("sparsity", sort=False)["reached_sparsity"].mean().values
accuracy = sl.stats.summarize(runs, "sparsity", "digit_accuracy").round(3)
display(accuracy.assign(reached_sparsity=reached))
sl.nb.show_flags(sl.flags.table(runs, "sparsity"))
budget = runs[runs["sparsity"] > 0].iloc[0]
# digit test accuracy, each model on its own seed's test split; the dense models are row 0.0
digit_means = runs.groupby("sparsity")["digit_accuracy"].mean()
dense_digit, digit_means = digit_means.loc[0.0], digit_means.drop(0.0)
digit_gaps = (dense_digit - digit_means) * 100  # points below the dense parents (same seeds)
below, gap_span = sl.words.below_text, sl.words.below_span(digit_gaps)
full = recipes.recipe_for("cnn1d", "mnist1d")
pruned_text = ", ".join(
    f"{a:.1%} at {s:.0%} ({below(digit_gaps[s])} their dense parents)"
    for s, a in digit_means.items()
)
sl.nb.md(
    f"The {len(dense)} dense models reach {dense_runs['test_accuracy'].mean():.1%} digit "
    f"test accuracy (each seed's own test split) on average, trained {recipe.epochs} "
    f"epochs with {recipe.optimizer} at lr {recipe.lr} (the full recipe: {full.epochs} "
    f"epochs, documented to reach {full.expected_test_accuracy:.0%}).  Each pruned model "
    f"is fine-tuned {budget['finetune_epochs']} epoch(s) with Adam at lr {FINETUNE_LR} "
    f"({budget['finetune_flops']:.2e} FLOPs at {budget['sparsity']:.0%}); every sparsity "
    f"gets the same {FINETUNE_EPOCHS}-epoch budget.  After it the pruned models reach "
    f"{pruned_text} in digit test accuracy (each seed's own test split): what follows describes "
    f"models this budget left {gap_span} their dense parents, and a longer fine-tuning "
    "may move errors differently."
)

# %%
table = bias.bias_table(pop, labels)
# the dense row compares the dense models with themselves: no label loses, no worst label
is_dense = table["population"] == "dense"
table.loc[is_dense, ["worst_label_delta", "calibrated_worst_delta"]] = np.nan
table.loc[is_dense, "worst_label"] = ""
# calibrated_worst_delta: the population's worst label (the calibration section: each model's)
table.drop(columns="calibrated_worst_delta").round(3)

# %% [markdown]
# Per model (so with an interval over the population): the accuracy, the share of
# outputs in [0.1, 0.9] and the ECE.  A circled point has a run that raised a sanity flag.

# %%
targets = pop["targets"]
dense_per_label = bias.label_accuracy(pop["dense"]["test"], targets)  # (models, labels)
run_flags = runs.set_index(["sparsity", "seed"])["flags"]
rows, seed_deltas = [], {}
for key in ["dense", *SPARSITIES]:
    probs = pop[key]["test"]
    s = 0.0 if key == "dense" else key
    per_label = bias.label_accuracy(probs, targets)
    seed_deltas[s] = per_label - dense_per_label  # each model against its own dense parent
    for i, (p, seed) in enumerate(zip(probs, pop["seeds"], strict=True)):
        rows.append({
            "sparsity": s, "seed": seed, "pruned": "dense" if key == "dense" else "pruned",
            "accuracy": per_label[i].mean(), "uncertainty": bias.uncertainty_share(p),
            "ece": bias.binary_calibration_error(p, targets), "flags": run_flags[(s, seed)],
        })  # fmt: skip
per_model = pd.DataFrame(rows)

fig, axes = plt.subplots(1, 4, figsize=(15, 3.3))
for ax, metric in zip(axes[:3], ["accuracy", "uncertainty", "ece"], strict=True):
    sl.experiments.plot_mean_ci(per_model, "sparsity", metric, ax=ax)
    ax.set_title(metric)
sl.viz.matrix_heatmap(
    np.stack([seed_deltas[s].mean(0) for s in SPARSITIES]),  # mean change per label
    axes[3],
    title="accuracy change per label",
    xticklabels=labels,
    yticklabels=[f"{s:.0%}" for s in SPARSITIES],
    centre=0.0,
    cmap="RdBu",
    colorbar="accuracy change",
    fontsize=7,
    rotation=60,
)
fig.tight_layout()
plt.show()

# %% [markdown]
# Paired by seed (each pruned model against its own dense parent), at the highest sparsity
# at which no run raised a sanity flag (a run at chance level or never predicting some class
# is a failed model); then each label's loss beside its base rate.  The interdependence gap
# is the mean over label pairs of |correlation of predicted labels - correlation of true
# labels| (0 when a model keeps the labels' dependence structure), averaged over the models:

# %%
# runs that raised a sanity flag, and all runs, at each sparsity
counts = runs["flags"].astype(bool).groupby(runs["sparsity"]).agg(["sum", "size"])
clean = [s for s in SPARSITIES if not counts.loc[s, "sum"]]
top = max(clean) if clean else SPARSITIES[0]
top_why = "the highest sparsity at which no run raised a sanity flag"
top_why = top_why if clean else "the lowest sparsity; every sparsity raised a sanity flag"
pair_rows = per_model[per_model["sparsity"].isin([0.0, top])]
flagged_at = [s for s in SPARSITIES if s not in clean]
shares = "; ".join(f"{counts.loc[s, 'sum']} of {counts.loc[s, 'size']} runs at {s:.0%}"
                   for s in flagged_at)  # fmt: skip
flagged_note = (
    f"Sparsities {', '.join(f'{s:.0%}' for s in flagged_at)} raised sanity flags (see above): "
    f"their rows include failed models ({shares}), so no conclusion is drawn from them."
    if flagged_at
    else "No sparsity raised a sanity flag."
)
effects = {
    metric: sl.stats.paired(pair_rows, "pruned", "pruned", "dense", metric=metric).iloc[0]
    for metric in ["accuracy", "uncertainty", "ece"]
}
display(pd.DataFrame(effects).T[["mean_diff", "ci_low", "ci_high", "n", "verdict"]])
dense_row, top_table = table.iloc[0], table[table["population"] == top].iloc[0]

# each label's change at `top`, pruned minus its own dense parent, beside its base rate
base_rate = pd.Series({name: len(digits) / 10 for name, digits in bias.ATTRIBUTES.items()})
label_loss = pd.DataFrame(
    {"label": labels, "base_rate": base_rate[labels].to_numpy(), "test_positives": targets.mean(0)}
).join(pd.DataFrame([sl.stats.difference_row(seed_deltas[top][:, j]) for j in range(len(labels))]))
label_loss = label_loss.sort_values("mean_diff", ignore_index=True)
shown = ["label", "base_rate", "test_positives", "mean_diff", "ci_low", "ci_high", "n"]
display(label_loss[shown].rename(columns={"mean_diff": "accuracy_change"}).round(3))
worst_row = label_loss.iloc[0]
worst_label, worst_j = worst_row["label"], labels.index(worst_row["label"])
# a label is as bad as the worst when its paired difference from the worst covers 0
to_worst = seed_deltas[top] - seed_deltas[top][:, [worst_j]]  # (models, labels)
beats = [sl.stats.difference_row(d)["verdict"] == sl.stats.BETTER for d in to_worst.T]
ties = [name for j, name in enumerate(labels) if j != worst_j and not beats[j]]
tie_losses, one = label_loss.set_index("label")["mean_diff"], len(ties) == 1
tie_text = (
    ", ".join(f"**{name}** ({tie_losses[name] * 100:+.1f})" for name in ties)
    + f" {'loses' if one else 'lose'} as much within the seed spread ("
    + f"{'its' if one else 'for none of them does the'} paired difference from "
    + f"**{worst_label}** {'does not exclude 0' if one else 'exclude 0'}), so the data do "
    + "not single out one worst label"
    if ties
    else f"every other label loses measurably less (each one's paired difference from "
    f"**{worst_label}** excludes 0)"
)
# does the loss follow the base rate?  Rank correlation over the labels
loss = pd.Series(-label_loss["mean_diff"].to_numpy(), index=label_loss["label"])
rho = base_rate.corr(loss, method="spearman")
# NaN (every label loses the same): does not follow
follows = "follows" if rho >= 0.7 else "partly follows" if rho >= 0.4 else "does not follow"
highest = list(base_rate[base_rate == base_rate.max()].index)
lowest = list(base_rate[base_rate == base_rate.min()].index)
losers, least = list(label_loss["label"].iloc[: len(highest)]), label_loss["label"].iloc[-1]
if set(losers) != set(highest):
    most = (f"the labels that lose most ({', '.join(losers)}) are not those with the highest "
            f"base rate ({', '.join(highest)})")  # fmt: skip
elif len(highest) > 1:
    most = (f"the {len(highest)} labels with a {base_rate.max():.0%} base rate "
            f"({', '.join(highest)}) lose most")  # fmt: skip
else:
    most = f"{highest[0]}, with the highest base rate ({base_rate.max():.0%}), loses most"
if least in lowest:
    least_text = f"{least}, with {base_rate[least]:.0%}, least"
else:
    least_text = (f"the label that loses least ({least}) is not the one with the lowest base "
                  f"rate ({', '.join(lowest)})")  # fmt: skip
base_rate_text = (
    f"the loss {follows} the labels' base rates (Spearman correlation {rho:.2f} between a "
    f"label's base rate and its loss, over the {len(labels)} labels; {most}; {least_text})"
)
losses = ", ".join(
    f"{r.label} ({r.base_rate:.0%}) {r.mean_diff * 100:+.1f}" for r in label_loss.itertuples()
)
pie_shares = ", ".join(
    f"{p:.1%} at {s:.0%}" for s, p in zip(SPARSITIES, table["pie_share"].iloc[1:], strict=True)
)
sl.nb.md(
    f"At {top:.0%} ({top_why}), pruned minus dense (same seed): mean label accuracy "
    f"{sl.stats.describe(effects['accuracy'])}; share of outputs in [0.1, 0.9] "
    f"{sl.stats.describe(effects['uncertainty'])}; ECE "
    f"{sl.stats.describe(effects['ece'], unit=' points of ECE')}.  The label that loses "
    f"most on average is **{worst_label}**, {sl.stats.describe(worst_row)}; "
    f"{tie_text}.  Across labels, {base_rate_text}; from most to least loss: {losses}.  "
    f"The share of test examples that are PIEs on some label is {pie_shares}, and the "
    f"interdependence gap goes from {dense_row['interdependence']:.3f} (dense) to "
    f"{top_table['interdependence']:.3f} at {top:.0%}.  {flagged_note}"
)

# %% [markdown]
# ## The countermeasure: per-label thresholds
#
# Each pruned model gets, per label, the threshold that maximises its validation accuracy
# instead of 0.5 (`bias.calibrate_thresholds`: a grid of 0.05 to 0.95, ties to the one
# nearest 0.5).  `bias.calibration_runs` scores every pruned model both ways on the test
# split (a pair per seed); its worst-label change is measured from its dense parent at 0.5.

# %%
# the calibration runs are the pruned models of `runs`: their flags mark the table and plot
cal = bias.calibration_runs(pop).merge(
    runs[["sparsity", "seed", "flags"]], on=["sparsity", "seed"], how="left", validate="m:1"
)
assert cal["flags"].notna().all(), "a calibration run without its run's flags"
cal_effect = sl.stats.paired(cal, "thresholds", "calibrated", "uncalibrated",
                             metric="worst_label_delta", by="sparsity")  # fmt: skip
cal_mean = cal[cal["thresholds"] == "calibrated"].groupby("sparsity")[["changed", "moved"]].mean()
display(cal_effect.join(cal_mean, on="sparsity").round(4))

fig, ax = plt.subplots(figsize=(6, 3.3))
for name, part in cal.groupby("thresholds", sort=False):
    sl.experiments.plot_mean_ci(part, "sparsity", "worst_label_delta", ax=ax, label=name)
ax.axhline(0, color="k", ls="--")
ax.set(xlabel="sparsity", ylabel="worst label: change vs dense")
handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))  # one per label
ax.legend(handles.values(), handles.keys())
plt.show()

top_cal = cal[(cal["sparsity"] == top) & (cal["thresholds"] == "calibrated")]
kept = int(np.isclose(top_cal["hurt_threshold"], 0.5).sum())
top_row = cal_effect.set_index("sparsity").loc[top]
top_change = f"{top_row['mean_diff'] * 100:+.1f} points, no interval"
if top_row["n"] >= 2 and np.isfinite(top_row["ci_low"]):
    top_change = (f"{top_row['mean_diff'] * 100:+.1f} points [{top_row['ci_low'] * 100:+.1f}, "
                  f"{top_row['ci_high'] * 100:+.1f}]")  # fmt: skip
link, shows = {
    sl.stats.BETTER: ("and", "that calibration helped the worst label"),
    sl.stats.WORSE: ("yet", "that calibration left the worst label worse off"),
    sl.stats.NO_DIFFERENCE: ("yet", "no clear effect on the worst label"),
}.get(top_row["verdict"], ("but", f"nothing either way ({top_row['verdict']})"))
n_cal = len(top_cal)
where = f"stays at 0.5 in {kept} of {n_cal} models; in the other {n_cal - kept} it moved"
where = where if kept else f"moved in all {n_cal} models"
if kept == n_cal:
    why = (f"stays at 0.5 in {kept} of {n_cal} models: on validation data no other "
           "threshold is better for that label, so its lost accuracy is not a shifted score "
           "that a threshold could move back.")  # fmt: skip
else:
    why = (f"{where}, {link} the paired change of the worst label's loss, calibrated minus "
           f"uncalibrated ({top_change}), shows {shows}.")  # fmt: skip
cal_reason = (
    f"At {top:.0%} calibration moves {top_cal['moved'].mean():.0%} of the thresholds and flips "
    f"{top_cal['changed'].mean():.1%} of the test decisions; the threshold of the label each "
    f"model loses most on {why}"
)
v_cal = sl.claims.verdict(
    "threshold_calibration_helps_hurt_classes",
    top_row,
    setting=f"1-D CNN on MNIST-1D attributes, {top:.0%} sparse, worst label",
    reason=cal_reason if top_row["verdict"] != "better" else "",
)
by_level = "; ".join(f"{r.sparsity:.0%}: {sl.stats.describe(r)}" for r in cal_effect.itertuples())
sl.nb.md(
    f"Calibrated minus uncalibrated worst-label change (same models): {by_level}.  "
    + cal_reason
    + (f"  {flagged_note}" if flagged_at else "")
)

# %% [markdown]
# ## Do the dense models tell which examples will suffer?
#
# Two scores computed on the dense population only: how close its outputs are to 0.5
# (uncertainty) and how much the dense models disagree.  The area under the ROC curve
# says how well each separates the PIEs from the other examples (0.5: chance).

# %%
auc = table.iloc[1:][["population", "pie_share", "auc_dense_uncertainty", "auc_dense_disagreement"]]
gap_auc = float((auc["auc_dense_uncertainty"] - auc["auc_dense_disagreement"]).abs().max())
# the two scores of `bias.bias_table`, per test example: do they rank the examples alike?
dense_test = pop["dense"]["test"]
unsure_score = -np.abs(dense_test - 0.5).mean(axis=(0, 2))
disagreement_score = dense_test.std(axis=0).mean(axis=1)
score_rho = pd.Series(unsure_score).corr(pd.Series(disagreement_score), method="spearman")
display(auc.round(3))
aurocs = {
    score: ", ".join(f"{s:.0%}: {v:.2f}" for s, v in zip(SPARSITIES, auc[score], strict=True))
    for score in ["auc_dense_uncertainty", "auc_dense_disagreement"]
}
few = ", so the AUROC has few unaffected examples to separate them from."
same = gap_auc < 0.02
sl.nb.md(
    f"AUROC of dense uncertainty for the PIEs: {aurocs['auc_dense_uncertainty']}; of dense "
    f"disagreement: {aurocs['auc_dense_disagreement']}.  At {SPARSITIES[-1]:.0%}, "
    f"{table['pie_share'].iloc[-1]:.0%} of the test examples are PIEs"
    f"{few if table['pie_share'].iloc[-1] > 0.5 else '.'}"
    + (f"  The two scores separate the PIEs equally well (AUROCs within {gap_auc:.3f} of "
       "each other at every sparsity)" if same
       else f"  The two scores' AUROCs differ by up to {gap_auc:.3f}")
    + f", and their Spearman correlation over the test examples is {score_rho:.2f}"
    + (": here they carry one signal, not two." if same and score_rho >= 0.9 else ".")
    + (f"  {flagged_note}" if flagged_at else "")
)  # fmt: skip

# %% [markdown]
# **Against the literature.**  Iofinova et al. (2023) find that pruned models are less
# certain of their outputs and propose per-attribute threshold calibration as a
# countermeasure (Hooker et al. 2019 first showed that the loss concentrates on some
# classes and examples).  The verdicts, computed from the paired differences above:

# %%
unc = effects["uncertainty"]
# how accurate the models are whose uncertainty is compared
unc_models = (
    f"At {top:.0%} the pruned models reach {digit_means[top]:.1%} digit test accuracy against "
    f"{dense_digit:.1%} for their dense parents, so this is the uncertainty of models left "
    f"{below(digit_gaps[top])} their parents by pruning and a {FINETUNE_EPOCHS}-epoch "
    "fine-tuning."
)
# "the more so at high sparsity": the mean share at each sparsity, flagged ones marked
unc_by = per_model.groupby("sparsity")["uncertainty"].mean()
if len(clean) < 2:
    unc_trend = ("fewer than two sparsities are free of flags, so how the share grows with "
                 "sparsity is not measured on working models")  # fmt: skip
elif (np.diff(unc_by.loc[[0.0, *clean]].to_numpy()) > 0).all():
    unc_trend = f"it rises with sparsity up to {max(clean):.0%} among the sparsities without flags"
else:
    unc_trend = "it does not rise steadily with sparsity among the sparsities without flags"
unc_trend += (
    f", and the values at {', '.join(f'{s:.0%}' for s in flagged_at)} include runs that "
    'raised sanity flags, so "the more so at high sparsity" is not tested there.'
    if flagged_at
    else "."
)
shares_by = ", ".join(
    f"{v:.1%} " + ("dense" if s == 0 else f"at {s:.0%}" + (" (flagged)" if s in flagged_at else ""))
    for s, v in unc_by.items()
)
unc_growth = f"The share of outputs in [0.1, 0.9] is {shares_by}; {unc_trend}"
already = (f"The dense digit classifiers already put {dense_row['uncertainty']:.1%} of their "
           "attribute outputs in [0.1, 0.9].")  # fmt: skip
v_unc = sl.claims.verdict(
    "pruned_models_more_uncertain",
    unc,
    setting=f"1-D CNN on MNIST-1D attributes, {top:.0%} sparse, share of outputs in [0.1, 0.9]",
    reason=" ".join([*([] if unc["verdict"] == "higher" else [already]), unc_models, unc_growth]),
)
display(sl.claims.table([v_unc, v_cal]))
sl.nb.md(sl.claims.report([v_unc, v_cal]))

# %% [markdown]
# ## Summary

# %%
helps = {"reproduced": "recovers part of", "not reproduced": "does not recover"}
mean_change = effects["accuracy"]["mean_diff"]
worst_text = (
    f"{worst_row['mean_diff'] / mean_change:.1f}x as much ({sl.stats.describe(worst_row)})"
    if mean_change < 0
    else f"by {sl.stats.describe(worst_row)}"
)
if ties:
    worst_text += (f", though {', '.join(f'**{t}**' for t in ties)} "
                   f"{'loses' if one else 'lose'} as much within the seed spread")  # fmt: skip
trend = unc_trend.removeprefix("it ")
trend = f"the share of outputs in [0.1, 0.9] {trend}" if unc_trend.startswith("it ") else trend
sl.nb.md(
    f"- The loss is uneven: at {top:.0%} the mean label accuracy changes by "
    f"{mean_change * 100:+.1f} points and **{worst_label}**, the label that loses most on "
    f"average, {worst_text}; {base_rate_text}; {top_table['pie_share']:.0%} of the test "
    "examples are PIEs on some label.\n"
    f"- Uncertainty, calibration error and output interdependence are cheap "
    f"population-level diagnostics (`bias.bias_table`); here the pruned models are "
    f"{'more' if unc['verdict'] == 'higher' else 'not measurably more'} uncertain than their "
    f"dense parents ({v_unc.status}), models {below(digit_gaps[top])} their parents' digit "
    f"accuracy at {top:.0%}; {trend}\n"
    f"- Per-label threshold calibration on validation data "
    f"{helps.get(v_cal.status, 'has no measurable effect on')} the worst label's loss here "
    f"({v_cal.status}: {v_cal.numbers()})."
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Build an imbalanced task from seed `SEED`'s MNIST-1D split: keep every training
# example of digits 5-9 and only the first tenth (rounded down) of the training examples of
# each digit 0-4, in the split's order.  Train its dense model with the recipe (`EPOCHS`
# epochs, `recipes.train_dense`), prune a copy to `top` by global magnitude and fine-tune it
# as the population was (`FINETUNE_EPOCHS` epochs with Adam at `FINETUNE_LR`).  On the
# task's test split, which label loses the most accuracy from the dense model to the pruned
# one?  Answer with its name, e.g. `"even"` (any label within a point of the largest drop
# counts: one seed cannot order them more finely).  Are its positives the digits the
# training set made rare?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
import copy
import dataclasses
import functools

import torch
from torch import nn
from torch.utils.data import TensorDataset

imbalanced = {}  # trained once, for the check and the solution


def imbalanced_models():
    """Seed SEED's task with a tenth of the training examples of digits 0-4, its dense
    model and a copy pruned to `top` and fine-tuned: ``(task, dense, pruned)``."""
    if not imbalanced:
        t = recipes.task("cnn1d", "mnist1d", seed=SEED)
        x, y = t.bundle.train.tensors
        keep = y >= 5
        for digit in range(5):
            where = (y == digit).nonzero().flatten()
            keep[where[: len(where) // 10]] = True
        bundle = dataclasses.replace(t.bundle, train=TensorDataset(x[keep], y[keep]))
        t = dataclasses.replace(t, bundle=bundle, options={"train": "a tenth of digits 0-4"})
        model, _ = recipes.train_dense(t, epochs=EPOCHS, progress=False)
        pruned = sl.prune(copy.deepcopy(model), "magnitude", top)
        recipes.finetune(pruned, t, FINETUNE_EPOCHS, lr=FINETUNE_LR, optimizer="adam",
                         progress=False)  # fmt: skip
        imbalanced.update(task=t, dense=model, pruned=pruned)
    return imbalanced["task"], imbalanced["dense"], imbalanced["pruned"]


def check_1(answer, solution=False):
    t, model, pruned = imbalanced_models()
    truth = bias.attribute_labels(t.bundle.test.tensors[1]).numpy()
    accuracy = [
        bias.label_accuracy(bias.predict_attribute_probs(m, t.bundle.test)[None], truth)[0]
        for m in (model, pruned)
    ]
    change = dict(zip(labels, accuracy[1] - accuracy[0], strict=True))
    lowest = min(change.values())
    hint = "Score both models on each label at threshold 0.5; take the largest drop."
    # within a point of the largest drop counts: one seed cannot order them more finely
    sl.nb.check(1, answer, lambda a: a in change and change[a] <= lowest + 0.01, hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_1 = None  # a label, e.g. "even"
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  Pruning's losses concentrate on some classes (Hooker et al. 2019); whether
# they fall on the classes a model saw least is what the table below says, beside each
# change the share of the label's digits that the training set made rare.  Each label's
# accuracy by hand: a label's probability is the softmax mass of its digits, and it is
# predicted where that mass is at least one half (one seed: a label that loses only a point
# or two may be noise).
task_1, dense_1, pruned_1 = imbalanced_models()
x_test, digits_test = task_1.bundle.test.tensors


def attribute_accuracy(model):
    with torch.no_grad(), sl.modes.evaluating(model):
        probs = torch.softmax(model(x_test), dim=1)
    return {
        name: ((probs[:, list(ds)].sum(dim=1) >= 0.5) == torch.isin(digits_test, torch.tensor(ds)))
        .double()
        .mean()
        .item()
        for name, ds in bias.ATTRIBUTES.items()
    }


before, after = attribute_accuracy(dense_1), attribute_accuracy(pruned_1)
changes_1 = pd.DataFrame(
    {
        "change (points)": {n: 100 * (after[n] - before[n]) for n in labels},
        "rare share of its digits": {
            n: np.mean([d < 5 for d in ds]) for n, ds in bias.ATTRIBUTES.items()
        },
    }
).sort_values("change (points)")
display(changes_1.round(2))
solution_1 = changes_1.index[0]
print(f"loses most: {solution_1}")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Replace one-shot pruning with GMP: train each dense model of the population
# `FINETUNE_EPOCHS` epochs with Adam at `FINETUNE_LR` while GMP
# (`sl.registry.get("gmp", "training")(top, frequency=10, seed=seed)`) prunes it to `top`,
# and find its PIEs against the dense population as `bias.bias_table` does.  What share of
# the test examples are PIEs on some label?  Two decimals.  Are they fewer than after
# one-shot pruning?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache  # the check and the solution read the same trained population
def gmp_probs(sparsity):
    """Test attribute probabilities ``(models, examples, labels)`` of the population pruned
    to ``sparsity`` by GMP during its fine-tuning."""
    probs = []
    for seed in POPULATION:
        t, model, _ = recipes.dense("cnn1d", "mnist1d", seed, epochs=EPOCHS)
        gmp = sl.registry.get("gmp", "training")(sparsity, frequency=10, seed=seed)
        train, val, _ = t.loaders()
        gmp.fit(model, train, val, epochs=FINETUNE_EPOCHS, lr=FINETUNE_LR, optimizer="adam",
                seed=seed, progress=False)  # fmt: skip
        probs.append(bias.predict_attribute_probs(model, dense[0][0].bundle.test))
    return np.stack(probs)


def check_2(answer, solution=False):
    pie = bias.pies(pop["dense"]["test"] >= 0.5, gmp_probs(top) >= 0.5).any(axis=1)
    hint = "Threshold both populations' probabilities at 0.5; a PIE on any label counts."
    sl.nb.check(2, answer, pie.mean(), hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a fraction, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The PIEs by hand: on each label, a population's modal prediction is 1 where
# more than half of its models predict 1 (a tie goes to 0, the smaller label, as in
# `bias.modal_prediction`); an example is a PIE where the two populations' votes differ
# on some label.  GMP removes the weights a few at a time while the model trains; one-shot
# pruning removes them all before the fine-tuning, which gets the same epochs.  Which leaves
# fewer PIEs is what the counts of both pruned populations, at `top`, say:


def majority(probs):
    """Each label's vote of a population ``(models, examples, labels)``: 1 or 0."""
    ones = (probs >= 0.5).sum(axis=0)
    return 2 * ones > probs.shape[0]


gmp_pies = (majority(pop["dense"]["test"]) != majority(gmp_probs(top))).any(axis=1)
solution_2 = round(float(gmp_pies.mean()), 2)
one_shot_pies = table.set_index("population").loc[top, "pie_share"]
print(f"PIEs at {top:.0%}: GMP {solution_2:.2f}, one-shot then fine-tuned {one_shot_pies:.2f}")
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Use the loss of the dense population on each example as a third predictor of PIEs:
# the binary cross-entropy of the dense models' attribute probabilities against the targets,
# averaged over the models and the labels.  What is its AUROC (`bias.predictive_auc`) for
# the PIEs at `top`?  Two decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_3(answer, solution=False):
    p = np.clip(pop["dense"]["test"], 1e-7, 1 - 1e-7)
    loss = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).mean(axis=(0, 2))
    pie = bias.pies(pop["dense"]["test"] >= 0.5, pop[top]["test"] >= 0.5).any(axis=1)
    hint = "Average the per-label cross-entropy over models and labels; PIEs on any label."
    auc = bias.predictive_auc(loss, pie)
    sl.nb.check(3, answer, auc, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_3 = None  # an AUROC, e.g. 0.63
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  The loss of an example is the negative log of the probability the dense
# models give its true attributes: high where they are wrong or unsure, so it mixes the
# uncertainty score with the errors themselves.
dense_probs = pop["dense"]["test"]
right = np.where(targets == 1, dense_probs, 1 - dense_probs)  # (models, examples, labels)
dense_loss = -np.log(np.maximum(right, 1e-7)).mean(axis=(0, 2))
dense_votes, top_votes = (dense_probs >= 0.5).astype(int), (pop[top]["test"] >= 0.5).astype(int)
top_pies = bias.pies(dense_votes, top_votes).any(axis=1)
solution_3 = round(bias.predictive_auc(dense_loss, top_pies), 2)
others = table.set_index("population").loc[top]
print(
    f"AUROC at {top:.0%}: loss {solution_3:.2f}, uncertainty "
    f"{others['auc_dense_uncertainty']:.2f}, disagreement {others['auc_dense_disagreement']:.2f}"
)
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** Train one sigmoid output per attribute, as the paper does, instead of reading the
# attributes off a digit classifier: seed `SEED`'s 1-D CNN with one output per label, on
# `bias.multilabel_bundle` of its task's data, trained with the dense models' recipe
# (`recipe.training()`, batches of `recipe.batch_size`) and `loss_fn=nn.BCEWithLogitsLoss()`.
# Prune a copy to `top` by global magnitude and fine-tune it as the population was, with the
# same loss.  Score both on the task's own splits, as `bias.calibration_runs` scores a
# pruned model: its thresholds calibrated on validation, and its worst-label change (the
# lowest, over the labels, of its test accuracy minus its dense parent's at 0.5) with its
# thresholds at 0.5 and with the calibrated ones.  What is the worst-label change
# calibrated minus uncalibrated, in points?  One decimal.  Does calibration help the worst
# label of this model?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
sigmoid = {}  # trained once, for the check and the solution


def sigmoid_models():
    """Seed SEED's multi-label task, its dense sigmoid-output CNN and a copy pruned to `top`
    and fine-tuned with the same loss: ``(task, dense, pruned)``."""
    if not sigmoid:
        t = recipes.task("cnn1d", "mnist1d", seed=SEED)
        t = dataclasses.replace(t, bundle=bias.multilabel_bundle(t.bundle))
        model = t.build()  # one output per label: the bundle's n_classes
        train, val, _ = t.loaders(recipe.batch_size)
        loss = nn.BCEWithLogitsLoss()
        sl.train.fit(model, train, val, seed=SEED, progress=False, loss_fn=loss,
                     **recipe.training())  # fmt: skip
        pruned = sl.prune(copy.deepcopy(model), "magnitude", top)
        recipes.finetune(pruned, t, FINETUNE_EPOCHS, lr=FINETUNE_LR, optimizer="adam",
                         progress=False, loss_fn=loss)  # fmt: skip
        sigmoid.update(task=t, dense=model, pruned=pruned)
    return sigmoid["task"], sigmoid["dense"], sigmoid["pruned"]


def sigmoid_probs(model, split):
    """``(examples, labels)`` sigmoid outputs of ``model`` on a split of its task."""
    with torch.no_grad(), sl.modes.evaluating(model):
        return torch.sigmoid(model(split.tensors[0])).numpy()


def check_4(answer, solution=False):
    t, model, pruned = sigmoid_models()
    one = {
        "seeds": [SEED],
        "targets": t.bundle.test.tensors[1].numpy(),
        "val_targets": t.bundle.val.tensors[1].numpy(),
        **{
            key: {s: sigmoid_probs(m, getattr(t.bundle, s))[None] for s in ("test", "val")}
            for key, m in (("dense", model), (top, pruned))
        },
    }
    worst = bias.calibration_runs(one).set_index("thresholds")["worst_label_delta"]
    hint = "Build a one-model population for `bias.calibration_runs`; subtract its two rows."
    change = 100 * (worst["calibrated"] - worst["uncalibrated"])
    sl.nb.check(4, answer, change, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_4 = None  # points, e.g. 1.5
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  With one sigmoid output per label, pruning can shift one label's scores on
# their own, and a threshold can shift them back; the softmax mass of a digit classifier
# moves a label together with the others that share its digits.  Whether calibration then
# helps the worst label is what this one model says (one seed: a verdict needs more).  By
# hand: for each label, the threshold of the grid k / 20 with the best validation accuracy
# (of equal ones, the nearest to 0.5), then each label's test accuracy against the dense
# model's at 0.5, and the lowest of those changes.
task_4, dense_4, pruned_4 = sigmoid_models()
grid = [k / 20 for k in range(1, 20)]
val_probs, val_truth = sigmoid_probs(pruned_4, task_4.bundle.val), task_4.bundle.val.tensors[1]
thresholds_4 = []
for j in range(len(labels)):
    best, best_accuracy = 0.5, -1.0
    for th in sorted(grid, key=lambda g: (abs(g - 0.5), g)):  # nearest 0.5 first
        accuracy = ((val_probs[:, j] >= th) == (val_truth[:, j].numpy() == 1)).mean()
        if accuracy > best_accuracy:
            best, best_accuracy = th, accuracy
    thresholds_4.append(best)
test_truth = task_4.bundle.test.tensors[1].numpy() == 1
dense_hits = (sigmoid_probs(dense_4, task_4.bundle.test) >= 0.5) == test_truth
pruned_test = sigmoid_probs(pruned_4, task_4.bundle.test)
worst_4 = {
    name: (((pruned_test >= th) == test_truth).mean(0) - dense_hits.mean(0)).min()
    for name, th in (("uncalibrated", 0.5), ("calibrated", np.array(thresholds_4)))
}
solution_4 = round(100 * (worst_4["calibrated"] - worst_4["uncalibrated"]), 1)
moved_4 = [n for n, th in zip(labels, thresholds_4, strict=True) if th != 0.5]
print(f"worst-label change: {100 * worst_4['uncalibrated']:+.1f} points at 0.5, "
      f"{100 * worst_4['calibrated']:+.1f} calibrated ({solution_4:+.1f}); thresholds moved "
      f"for {', '.join(moved_4) or 'no label'}")  # fmt: skip
check_4(solution_4, solution=True)

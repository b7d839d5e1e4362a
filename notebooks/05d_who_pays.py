# %% [markdown]
# # Who pays for pruning?
#
# **What you will learn:** how pruning spreads its errors unevenly over labels and
# examples: which labels lose most, which examples change their
# prediction (pruning-identified exemplars), how sure and how well calibrated the pruned
# models are, and whether per-label threshold calibration repairs the damage.
#
# This follows section 8 of the survey and the seed paper "Bias in pruned vision models"
# (Iofinova et al. 2023), with PIEs from Hooker et al. (2019).  The measurements live in
# `sparsity_lab.phenomena.bias`.

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

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
# And the measurements on hand-made cases: PIEs of a population of three models, the
# expected calibration error (ECE) of a known histogram (four predictions at confidence
# 0.55 with two right, six at 0.95 all right: each bin is off by 0.05), and a label whose
# scores were shifted down by 0.3 (positives at 0.3, negatives at 0.2), which threshold
# calibration repairs and threshold 0.5 cannot.

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
# seed; a model's probability of an attribute is the softmax probability it gives the
# digits that have it.  (The paper trains one sigmoid output per attribute instead.)
# Each dense model is pruned by global magnitude to every sparsity and fine-tuned with
# its mask fixed (`recipes.finetune`), so every sparsity has a population of pruned
# models, each the child of one dense model.  Every model is scored on the same
# validation and test examples, those of the first seed's split, which no model trained
# on (each seed generates its own MNIST-1D draw).

# %%
dense = [recipes.dense("cnn1d", "mnist1d", seed, epochs=EPOCHS) for seed in POPULATION]
recipe = dense[0][2]["recipe"]
dense_runs = pd.DataFrame(
    [
        {
            "seed": t.seed,
            "test_accuracy": i["test_accuracy"],
            "expected": i["expected_test_accuracy"],
            "epochs": i["recipe"].epochs,
            "flags": i["flags"],
        }
        for t, _, i in dense
    ]
)
display(dense_runs)
pop = bias.population(
    dense,
    SPARSITIES,
    finetune_epochs=FINETUNE_EPOCHS,
    lr=FINETUNE_LR,
    optimizer="adam",
    eval_bundle=dense[0][0].bundle,
)
runs = pop["runs"]
display(
    sl.stats.summarize(runs, "sparsity", "digit_accuracy")
    .round(3)
    .assign(reached_sparsity=runs.groupby("sparsity", sort=False)["reached_sparsity"].mean().values)
)
flagged = sl.flags.table(runs, "sparsity")
sl.nb.show_flags(flagged)

# %%
budget = runs[runs["sparsity"] > 0].iloc[0]
digit_means = runs[runs["sparsity"] > 0].groupby("sparsity")["digit_accuracy"].mean()
full = recipes.recipe_for("cnn1d", "mnist1d")
display(
    Markdown(
        f"The {len(dense)} dense models reach {dense_runs['test_accuracy'].mean():.1%} digit "
        f"test accuracy on average, trained {recipe.epochs} epochs with {recipe.optimizer} "
        f"at lr {recipe.lr} (the full recipe: {full.epochs} epochs, documented to reach "
        f"{full.expected_test_accuracy:.0%}).  Each pruned model is fine-tuned "
        f"{budget['finetune_epochs']} epoch(s) with Adam at lr {FINETUNE_LR} "
        f"({budget['finetune_flops']:.2e} FLOPs at {budget['sparsity']:.0%}); every sparsity "
        f"gets the same {FINETUNE_EPOCHS}-epoch budget.  After it the pruned models reach "
        + ", ".join(f"{a:.1%} at {s:.0%}" for s, a in digit_means.items())
        + " digit accuracy: what follows describes models this budget left "
        + ("far below" if digit_means.min() < dense_runs["test_accuracy"].mean() - 0.1 else "near")
        + " their dense parents, and a longer fine-tuning may move errors differently."
    )
)

# %%
table = bias.bias_table(pop, labels)
table.round(3)

# %% [markdown]
# Per model (so with an interval over the population): the accuracy, the share of
# outputs in [0.1, 0.9] and the ECE.  A circled point has a run that raised a sanity flag.

# %%
targets = pop["targets"]
dense_label_acc = bias.label_accuracy(pop["dense"]["test"], targets).mean(0)
run_flags = runs.set_index(["sparsity", "seed"])["flags"]
rows, deltas = [], {}
for key in ["dense", *SPARSITIES]:
    probs = pop[key]["test"]
    s = 0.0 if key == "dense" else key
    per_label = bias.label_accuracy(probs, targets)
    deltas[s] = per_label.mean(0) - dense_label_acc
    for i, (p, seed) in enumerate(zip(probs, pop["seeds"], strict=True)):
        rows.append(
            {
                "sparsity": s,
                "seed": seed,
                "pruned": "dense" if key == "dense" else "pruned",
                "accuracy": per_label[i].mean(),
                "uncertainty": bias.uncertainty_share(p),
                "ece": bias.binary_calibration_error(p, targets),
                "flags": run_flags[(s, seed)],
            }
        )
per_model = pd.DataFrame(rows)

fig, axes = plt.subplots(1, 4, figsize=(15, 3.3))
for ax, metric in zip(axes[:3], ["accuracy", "uncertainty", "ece"], strict=True):
    sl.experiments.plot_mean_ci(per_model, "sparsity", metric, ax=ax)
    ax.set_title(metric)
heat = np.stack([deltas[s] for s in SPARSITIES])
im = axes[3].imshow(heat, cmap="RdBu", vmin=-np.abs(heat).max(), vmax=np.abs(heat).max())
axes[3].set_xticks(range(len(labels)), labels, rotation=60, fontsize=7)
axes[3].set_yticks(range(len(SPARSITIES)), [f"{s:.0%}" for s in SPARSITIES])
axes[3].set_title("accuracy change per label")
fig.colorbar(im, ax=axes[3])
fig.tight_layout()
plt.show()

# %% [markdown]
# Paired by seed (each pruned model against its own dense parent), at the highest
# sparsity at which no run raised a sanity flag (a network at chance level has no errors
# left to move):

# %%
clean = [s for s in SPARSITIES if not runs[runs["sparsity"] == s]["flags"].astype(bool).any()]
top = max(clean) if clean else SPARSITIES[0]
top_why = (
    "the highest sparsity at which no run raised a sanity flag"
    if clean
    else "the lowest sparsity; every sparsity raised a sanity flag"
)
pair_rows = per_model[per_model["sparsity"].isin([0.0, top])]
flagged_at = [s for s in SPARSITIES if s not in clean]
flagged_note = (
    "Sparsities "
    + ", ".join(f"{s:.0%}" for s in flagged_at)
    + " raised sanity flags (see above): their rows describe failed models, so no "
    "conclusion is drawn from them."
    if flagged_at
    else "No sparsity raised a sanity flag."
)
effects = {
    metric: sl.stats.paired(pair_rows, "pruned", "pruned", "dense", metric=metric).iloc[0]
    for metric in ["accuracy", "uncertainty", "ece"]
}
display(pd.DataFrame(effects).T[["mean_diff", "ci_low", "ci_high", "n", "verdict"]])
dense_row = table.iloc[0]
worst = table[table["population"] == top].iloc[0]
display(
    Markdown(
        f"At {top:.0%} ({top_why}), pruned minus dense (same seed): mean label accuracy "
        f"{sl.stats.describe(effects['accuracy'])}; share of outputs in [0.1, 0.9] "
        f"{sl.stats.describe(effects['uncertainty'])}; ECE "
        f"{sl.stats.describe(effects['ece'], unit=' points of ECE')}.  The label that loses "
        f"most is **{worst['worst_label']}** ({worst['worst_label_delta'] * 100:+.1f} points on "
        f"average).  The share of test examples that are PIEs on some label is "
        + ", ".join(
            f"{p:.1%} at {s:.0%}"
            for s, p in zip(SPARSITIES, table["pie_share"].iloc[1:], strict=True)
        )
        + f", and the interdependence gap goes from {dense_row['interdependence']:.3f} "
        f"(dense) to {worst['interdependence']:.3f} at {top:.0%}.  " + flagged_note
    )
)

# %% [markdown]
# ## The countermeasure: per-label thresholds
#
# Each pruned model gets, per label, the decision threshold that maximises its
# validation accuracy (`bias.calibrate_thresholds`, a grid of 0.05 to 0.95; of equally good
# thresholds the one nearest 0.5), instead of 0.5.  `bias.calibration_runs` scores every
# pruned model both ways on the test split, so that each seed is a pair; the worst-label
# change is measured against the model's own dense parent at threshold 0.5.

# %%
cal = bias.calibration_runs(pop)
cal_effect = sl.stats.paired(
    cal, "thresholds", "calibrated", "uncalibrated", metric="worst_label_delta", by="sparsity"
)
cal_mean = cal[cal["thresholds"] == "calibrated"].groupby("sparsity")[["changed", "moved"]].mean()
display(cal_effect.join(cal_mean, on="sparsity").round(4))

fig, ax = plt.subplots(figsize=(6, 3.3))
for name, part in cal.groupby("thresholds", sort=False):
    sl.experiments.plot_mean_ci(part, "sparsity", "worst_label_delta", ax=ax, label=name)
ax.axhline(0, color="k", ls="--")
ax.set_xlabel("sparsity")
ax.set_ylabel("worst label: change vs dense")
ax.legend()
plt.show()

# %%
top_cal = cal[(cal["sparsity"] == top) & (cal["thresholds"] == "calibrated")]
kept = int(np.isclose(top_cal["hurt_threshold"], 0.5).sum())
top_row = cal_effect.set_index("sparsity").loc[top]
cal_reason = (
    f"At {top:.0%} calibration moves {top_cal['moved'].mean():.0%} of the thresholds and flips "
    f"{top_cal['changed'].mean():.1%} of the test decisions; the threshold of the label each "
    f"model loses most on stays at 0.5 in {kept} of {len(top_cal)} models"
    + (
        ": on validation data no other threshold is better for that label, so its lost "
        "accuracy is not a shifted score that a threshold could move back."
        if kept == len(top_cal)
        else ": the other thresholds moved, and the paired change says whether that helped "
        "the worst label."
    )
)
v_cal = sl.claims.verdict(
    "threshold_calibration_helps_hurt_classes",
    top_row,
    setting=f"1-D CNN on MNIST-1D attributes, {top:.0%} sparse, worst label",
    reason=cal_reason if top_row["verdict"] != "better" else "",
)
display(
    Markdown(
        "Calibrated minus uncalibrated worst-label change (same models): "
        + "; ".join(
            f"{r['sparsity']:.0%}: {sl.stats.describe(r)}" for _, r in cal_effect.iterrows()
        )
        + ".  "
        + cal_reason
    )
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
display(auc.round(3))
display(
    Markdown(
        "AUROC of dense uncertainty for the PIEs: "
        + ", ".join(
            f"{s:.0%}: {v:.2f}"
            for s, v in zip(SPARSITIES, auc["auc_dense_uncertainty"], strict=True)
        )
        + "; of dense disagreement: "
        + ", ".join(
            f"{s:.0%}: {v:.2f}"
            for s, v in zip(SPARSITIES, auc["auc_dense_disagreement"], strict=True)
        )
        + f".  At {SPARSITIES[-1]:.0%}, {table['pie_share'].iloc[-1]:.0%} of the test "
        "examples are PIEs"
        + (
            ", so the AUROC has few unaffected examples to separate them from."
            if table["pie_share"].iloc[-1] > 0.5
            else "."
        )
        + (
            f"  The two scores' AUROCs differ by at most {gap_auc:.3f}: here they carry one "
            "signal, not two."
            if gap_auc < 0.02
            else ""
        )
        + (f"  {flagged_note}" if flagged_at else "")
    )
)

# %% [markdown]
# **Against the literature.**  Iofinova et al. (2023) find that pruned models are less
# certain of their outputs and propose per-attribute threshold calibration as a
# countermeasure (Hooker et al. 2019 first showed that the loss concentrates on some
# classes and examples).  The verdicts, computed from the paired differences above:

# %%
unc = effects["uncertainty"]
v_unc = sl.claims.verdict(
    "pruned_models_more_uncertain",
    unc,
    setting=f"1-D CNN on MNIST-1D attributes, {top:.0%} sparse, share of outputs in [0.1, 0.9]",
    reason=(
        ""
        if unc["verdict"] == "higher"
        else f"The dense digit classifiers already put {dense_row['uncertainty']:.1%} of "
        "their attribute outputs in [0.1, 0.9]."
    ),
)
verdicts = [v_unc, v_cal]
display(sl.claims.table(verdicts))
display(Markdown(sl.claims.report(verdicts)))

# %% [markdown]
# ## Summary

# %%
helps = {"reproduced": "recovers part of", "not reproduced": "does not recover"}
display(
    Markdown(
        "\n".join(
            [
                f"- The loss is uneven: at {top:.0%} the mean label accuracy changes by "
                f"{effects['accuracy']['mean_diff'] * 100:+.1f} points and "
                f"**{worst['worst_label']}**, the label that loses most, by "
                f"{worst['worst_label_delta'] * 100:+.1f} points "
                f"({worst['worst_label_delta'] / effects['accuracy']['mean_diff']:.1f}x the "
                f"mean); {worst['pie_share']:.0%} of the test examples are PIEs on some label.",
                f"- Uncertainty, calibration error and output interdependence are cheap "
                f"population-level diagnostics (`bias.bias_table`); here the pruned models "
                f"are {'more' if unc['verdict'] == 'higher' else 'not measurably more'} "
                f"uncertain than their dense parents ({v_unc.status}).",
                f"- Per-label threshold calibration on validation data "
                f"{helps.get(v_cal.status, 'has no measurable effect on')} the worst label's "
                f"loss here ({v_cal.status}: {v_cal.numbers()}).",
            ]
        )
    )
)

# %% [markdown]
# ## Exercises
#
# 1. Build an imbalanced task: keep only 10% of the training examples of digits 0-4 of
#    MNIST-1D.  Which labels lose most when pruned?
# 2. Replace one-shot pruning with GMP in `bias.population`.  Are the PIEs fewer?
# 3. Use the loss of the dense population on each example as a third predictor of PIEs.
# 4. Train one sigmoid output per attribute (as the paper does) instead of reading the
#    attributes off a digit classifier.  Does calibration help more?

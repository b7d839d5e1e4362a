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
# # Sparse training III: AC/DC and CrAM
#
# **What you will learn:** how AC/DC trains a sparse and a dense model together in one
# run, how dense its dense member really is, and how CrAM trains a dense model that
# survives one-shot pruning with no fine-tuning.
#
# This follows section 4 of the survey ("sparse training") and two papers of the same
# research line: AC/DC (Peste et al. 2021) and CrAM (Peste et al. 2023).  Where
# [04](04_sparse_training.ipynb) keeps a network sparse from its first step (SET, RigL)
# and [04b](04b_dynamic_sparse_training.ipynb) puts every other dynamic sparse training
# method on one protocol, the models here start dense and learn to live near a sparse one.

# %%
import copy
import dataclasses
import functools

import matplotlib.pyplot as plt
import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab import recipes, registry
from sparsity_lab.methods.cram import one_shot

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
DATA = "mnist"
SPARSITY = 0.9
ACDC_EPOCHS = None  # None: the dense recipe's epochs, for AC/DC, GMP and the dense model
CRAM_DATA = "digits"
CRAM_EPOCHS = None  # None: the dense recipe's epochs, for CrAM, CrAM+ and SGD
ONE_SHOT_SPARSITIES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    DATA = "digits"
    ACDC_EPOCHS = 4
    CRAM_EPOCHS = 1
    ONE_SHOT_SPARSITIES = [0.5, 0.9]
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
RECIPE = recipes.recipe_for("lenet300", DATA)
epochs_text = functools.partial(sl.words.plural, word="epoch")  # "1 epoch", "8 epochs"
difference = sl.words.paired_text  # "a minus b +1.0 points [...]", or the same on every seed


def fit(method, seed, epochs, callbacks=()):
    """Train a fresh LeNet-300-100 with ``method`` and the optimizer settings of the dense
    recipe: (model, task, FLOP counter, history)."""
    return recipes.train_sparse(method, "lenet300", DATA, seed, epochs=epochs, callbacks=callbacks)


def evaluate(model, t, target=None):
    """Test accuracy and sanity flags (a layer pruned away, a target missed, ...)."""
    r = recipes.evaluate_run(model, t, target_sparsity=target)
    return {"accuracy": r["accuracy"], "flags": r["flags"]}


# %% [markdown]
# ## AC/DC: a sparse and a dense model from one run
#
# AC/DC (Peste et al. 2021) warms up dense, then alternates *compressed* phases (prune to
# the target by magnitude, train with the mask) with *decompressed* phases (the pruned
# weights come back at zero and everything trains), and ends with a compressed
# fine-tune.  The end of the last dense phase and the end of the run form a pair: a dense
# model that has learned to live near a sparse one, and that sparse model.  AC/DC, GMP and
# the dense model (`recipes.dense`, the setting's recipe) train for the same number of
# epochs with the same optimizer; their training FLOPs are counted.

# %%
t0 = recipes.task("lenet300", DATA, seed=SEED)
lenet = t0.build()  # seed SEED's model, for the counts below
n_weights = sum(p.numel() for n, p in lenet.named_parameters() if n.endswith("weight"))
acdc_rows, acdc_members = [], []
#: A weight of AC/DC's dense member smaller than this is "near zero": far below the
#: weights the sparse member keeps (their median is reported beside it).
NEAR_ZERO = 1e-3
FITTED = 0.99  # a training accuracy from which the training set counts as fitted
ANNEALED = 0.1  # a learning rate below this share of its peak counts as annealed
for seed in SEEDS:
    acdc = registry.get("acdc", "training")(SPARSITY, seed=seed)
    _, dense_model, dense_info = recipes.dense("lenet300", DATA, seed, epochs=ACDC_EPOCHS)
    acdc_epochs = dense_info["recipe"].epochs
    m, t, acdc_flops, history = fit(acdc, seed, acdc_epochs)
    sparse, dense = acdc.pair(m)
    sparse_masks = sl.masks.masks(sparse)
    kept = torch.cat([sl.masks.weight(sparse, n).detach().flatten() for n in sparse_masks])
    regrown = torch.cat([dense.get_parameter(n).detach().flatten()[~mask.bool().flatten()]
                         for n, mask in sparse_masks.items()])  # fmt: skip
    end_dense = max(i for i, p in enumerate(history["phase"]) if p == "dense")
    last_dense = end_dense
    while last_dense > 0 and history["phase"][last_dense - 1] == "dense":
        last_dense -= 1  # back to the first epoch of the last decompressed phase
    # The largest rate of the last decompressed phase: the history's lr is the rate of an
    # epoch's last step, so the epoch before the phase gives the rate the phase starts at.
    before = max(last_dense - 1, 0)
    lr_last_dense = max(history["lr"][before : end_dense + 1])
    acdc_members.append(
        {
            "seed": seed,
            "regrown_near_zero": float((regrown.abs() < NEAR_ZERO).float().mean()),
            "regrown_median": float(regrown.abs().median()),
            "kept_median": float(kept[kept != 0].abs().median()),
            "train_accuracy_before_last_dense": history["train_accuracy"][before],
            "train_loss_before_last_dense": history["train_loss"][before],
            "lr_last_dense": lr_last_dense,
            "lr_share_last_dense": lr_last_dense / RECIPE.lr,  # the schedule's peak
        }
    )
    gmp = registry.get("gmp", "training")(SPARSITY, frequency=10, seed=seed)
    gmp_model, _, gmp_flops, _ = fit(gmp, seed, acdc_epochs)
    dense_cost = recipes.training_flops(dense_model, len(t.bundle.train), acdc_epochs)
    for label, model, target, flops in [
        ("AC/DC sparse", sparse, SPARSITY, acdc_flops.total),
        ("AC/DC dense", dense, None, acdc_flops.total),
        ("GMP (sparse)", gmp_model, SPARSITY, gmp_flops.total),
        ("dense baseline", dense_model, None, dense_cost),
    ]:
        r = evaluate(model, t, target)
        if label == "dense baseline" and dense_info["flags"]:
            r["flags"] = sl.flags.join(f for f in (r["flags"], dense_info["flags"]) if f)
        acdc_rows.append({"model": label, "seed": seed, **r, "train_flops": flops})
acdc_results = pd.DataFrame(acdc_rows)

# %%
# The last seed's run, epoch by epoch, with its phases.
_, ax = plt.subplots(figsize=(7, 3.5))
sl.viz.phase_curve(history["epoch"], history["val_accuracy"], history["phase"], "sparse", ax)
ax.set(xlabel="epoch (shaded: compressed phases)", ylabel="validation accuracy")
ax.set_title(f"AC/DC at {SPARSITY:.0%} sparsity")
plt.show()

summary_acdc = sl.stats.summarize(acdc_results, ["model"], "accuracy").set_index("model")
acdc_cost = acdc_results.groupby("model")["train_flops"].mean()
summary_acdc["x dense training FLOPs"] = acdc_cost / acdc_cost["dense baseline"]
acdc_pair, acdc_dense_pair, acdc_member_pair = (
    sl.stats.paired(acdc_results, "model", a, b, metric="accuracy").iloc[0]
    for a, b in [("AC/DC sparse", "GMP (sparse)"), ("AC/DC dense", "dense baseline"),
                 ("AC/DC dense", "AC/DC sparse")]
)  # fmt: skip
members = pd.DataFrame(acdc_members).mean(numeric_only=True)
# what the runs measured about the last decompressed phase (means over the seeds)
regrowth_causes = []
if members["train_accuracy_before_last_dense"] >= FITTED:
    regrowth_causes.append("training set was already fitted")
if members["lr_share_last_dense"] <= ANNEALED:
    regrowth_causes.append(f"learning rate had annealed to {members['lr_last_dense']:.1e}")
if members["regrown_near_zero"] > 0.5:
    causes = f"The {' and the '.join(regrowth_causes)}, so the" if regrowth_causes else "The"
    regrowth = (
        f"{causes} weights that came back at zero stayed small: here the dense member is close "
        "to the sparse one, not the dense model the paper describes."
    )
else:
    regrowth = "The weights that came back grew, so the dense member is dense."
acdc_setting = (
    f"LeNet-300-100 on {DATA}, {SPARSITY:.0%} sparse, {epochs_text(acdc_epochs)} each; AC/DC used "
    f"{acdc_cost['AC/DC sparse'] / acdc_cost['GMP (sparse)']:.2f}x GMP's training FLOPs"
)
acdc_verdict = sl.claims.judge(
    "acdc_matches_gmp", acdc_pair, setting=acdc_setting,
    reason=f"Measured on LeNet-300-100 ({n_weights:,} weights) with "
    f"{len(t0.bundle.train):,} training images, {epochs_text(acdc_epochs)}, so phases of "
    f"{epochs_text(acdc.epochs_of(acdc_epochs)[1])}.",
)  # fmt: skip
sl.nb.show_flags(sl.flags.table(acdc_results, "model"))
member = "AC/DC's dense member"
sl.nb.md(
    f"Mean test accuracy ({len(SEEDS)} seed(s), {epochs_text(acdc_epochs)} each): AC/DC's "
    f"sparse model {summary_acdc.loc['AC/DC sparse', 'mean']:.2%}, GMP "
    f"{summary_acdc.loc['GMP (sparse)', 'mean']:.2%}; AC/DC's dense model "
    f"{summary_acdc.loc['AC/DC dense', 'mean']:.2%}, the dense model trained with its "
    f"recipe {summary_acdc.loc['dense baseline', 'mean']:.2%}.  Paired: "
    f"{difference(acdc_dense_pair, member, 'the dense model')}; "
    f"{difference(acdc_member_pair, member, 'its sparse member')}.\n\n"
    f"How dense is the dense member?  Of the weights the sparse member prunes, "
    f"{members['regrown_near_zero']:.0%} are below {NEAR_ZERO:g} in the dense member "
    f"(median magnitude {members['regrown_median']:.1e}, against "
    f"{members['kept_median']:.2f} for the weights the sparse member keeps; means over "
    f"the seeds).  Before the last decompressed phase the training accuracy was "
    f"{members['train_accuracy_before_last_dense']:.1%} (loss "
    f"{members['train_loss_before_last_dense']:.1e}); during that phase the learning "
    f"rate ({RECIPE.lr_schedule or 'constant'} schedule) was at most "
    f"{members['lr_last_dense']:.1e}, {members['lr_share_last_dense']:.0%} of its peak.  "
    f"{regrowth}\n\n" + sl.claims.report([acdc_verdict])
)
summary_acdc.round(4)

# %% [markdown]
# ## CrAM: a dense model that can be pruned in one shot
#
# CrAM (Peste et al. 2023) changes the optimizer: each step takes the gradient at a
# perturbed and *compressed* copy of the weights, `C_s(theta + rho * grad)`, with the
# sparsity `s` drawn at random from a list at every step.  That gradient reaches only the
# weights the compression kept (the derivative of `C_s`, as in the authors' code).  CrAM+
# adds the ordinary dense gradient to that step.  The model stays dense, but it learns to sit
# where pruning does little harm.  Afterwards it is pruned once by magnitude, with no
# fine-tuning, and the BatchNorm statistics are re-estimated on the training batches, since
# pruning shifts the activations they summarise.  The model here is the small ResNet, which
# has BatchNorm; the SGD baseline is its dense recipe (`recipes.dense`), and CrAM and CrAM+
# train from the same initialisation with the same optimizer settings and epochs.

# %%
CRAM_RECIPE = recipes.recipe_for("resnet_small", CRAM_DATA)
CRAM_SPARSITIES = [0.5, 0.7, 0.9]


def robustness(trainer, seed):
    if trainer == "sgd":
        t, m, dense_info = recipes.dense("resnet_small", CRAM_DATA, seed, epochs=CRAM_EPOCHS)
        epochs = dense_info["recipe"].epochs
        flops = recipes.training_flops(m, len(t.bundle.train), epochs)
        base_flags = dense_info["flags"]
    else:
        method = registry.get(trainer, "training")(
            0.7, sparsities=CRAM_SPARSITIES, budget="uniform", seed=seed
        )
        m, t, counter, _ = recipes.train_sparse(
            method, "resnet_small", CRAM_DATA, seed, epochs=CRAM_EPOCHS
        )
        epochs, flops, base_flags = CRAM_EPOCHS or CRAM_RECIPE.epochs, counter.total, ""
    train = t.loaders(CRAM_RECIPE.batch_size)[0]
    dense_result = evaluate(m, t)
    dense_result["flags"] = sl.flags.join(f for f in (dense_result["flags"], base_flags) if f)
    rows = [{"sparsity": 0.0, **dense_result}]
    for s in ONE_SHOT_SPARSITIES:
        pruned = one_shot(copy.deepcopy(m), s, data=train, budget="uniform")
        rows.append({"sparsity": s, **evaluate(pruned, t, s)})
    return pd.DataFrame(rows).assign(trainer=trainer, seed=seed, epochs=epochs, train_flops=flops)


cram_results = pd.concat(
    [robustness(trainer, seed) for seed in SEEDS for trainer in ("sgd", "cram", "cram_plus")],
    ignore_index=True,
)
fig, ax = plt.subplots(figsize=(6.5, 4))
sl.viz.sparsity_curve(cram_results, x="sparsity", y="accuracy", hue="trainer", ax=ax)
ax.set_title("One-shot magnitude pruning + BatchNorm re-estimation, no fine-tuning")
plt.show()
sl.nb.show_flags(sl.flags.table(cram_results, ["trainer", "sparsity"]))
cram_names = {"sgd": "SGD", "cram": "CrAM", "cram_plus": "CrAM+"}
levels = [0.0, *ONE_SHOT_SPARSITIES]
is_flagged = cram_results["flags"].fillna("").astype(str) != ""
by_point = is_flagged.groupby([cram_results["trainer"], cram_results["sparsity"]])
n_flagged, n_runs = by_point.sum(), by_point.size()
every_run_flagged = [s for s in levels if all(n_flagged[t, s] == n_runs[t, s] for t in cram_names)]
other_flags = {
    t: [f"{s:.0%} ({n_flagged[t, s]} of {n_runs[t, s]} runs)" for s in levels
        if s not in every_run_flagged and n_flagged[t, s] > 0]
    for t in cram_names
}  # fmt: skip
if n_flagged.any():
    beyond = (
        f", beyond the sparsities CrAM and CrAM+ train for ({sl.words.percents(CRAM_SPARSITIES)})"
        if every_run_flagged and min(every_run_flagged) > max(CRAM_SPARSITIES)
        else ""
    )
    everywhere = (
        f"At {sl.words.percents(every_run_flagged)} sparsity{beyond}, every run "
        "of every trainer is flagged (the table gives the checks that fired); "
        if every_run_flagged
        else "No sparsity has every run of every trainer flagged; "
    )
    elsewhere = "; ".join(f"{cram_names[t]} at {', '.join(v)}" for t, v in other_flags.items() if v)
    sl.nb.md(
        everywhere
        + (f"other flagged runs: {elsewhere}." if elsewhere else "no other run is flagged.")
    )

# %%
curve = sl.stats.summarize(cram_results, ["trainer", "sparsity"], "accuracy").pivot(
    index="sparsity", columns="trainer", values="mean"
)
probe = [s for s in ONE_SHOT_SPARSITIES if s <= 0.8][-1]
cram_flops = cram_results.groupby("trainer")["train_flops"].mean()
cram_epochs = int(cram_results["epochs"].iloc[0])
cram_task = recipes.task("resnet_small", CRAM_DATA, seed=SEED)
cram_weights = sum(
    p.numel() for n, p in cram_task.build().named_parameters() if n.endswith("weight")
)
cram_reason = (
    f"Measured on a small ResNet ({cram_weights:,} weights) trained {epochs_text(cram_epochs)} "
    f"on {len(cram_task.bundle.train):,} {CRAM_DATA} images."
)


def cram_pair(trainer, sparsity):
    part = cram_results[cram_results.sparsity == sparsity]
    return sl.stats.paired(part, "trainer", trainer, "sgd", metric="accuracy").iloc[0]


# The dense-accuracy claim is tested on the arm its published number is for (CrAM+ in
# the paper's ImageNet table); the other CrAM variant's dense accuracy is context.
dense_claim = sl.claims.get("cram_dense_matches_sgd")
dense_arm = dense_claim.treatment
context_arm = "cram" if dense_arm == "cram_plus" else "cram_plus"
cram_verdicts = []
for trainer in ("cram", "cram_plus"):
    ratio = cram_flops[trainer] / cram_flops["sgd"]
    for key, sparsity in [("cram_dense_matches_sgd", 0.0), ("cram_one_shot_beats_sgd", probe)]:
        if key == "cram_dense_matches_sgd" and trainer != dense_arm:
            continue
        row = cram_pair(trainer, sparsity)
        where = "dense" if sparsity == 0 else f"pruned in one shot to {sparsity:.0%}"
        setting = (
            f"{cram_names[trainer]} against SGD, {where}; {epochs_text(cram_epochs)} each, "
            f"{cram_names[trainer]} at {ratio:.2f}x SGD's training FLOPs"
        )
        claim = dataclasses.replace(sl.claims.get(key), treatment=trainer)
        # worse, but not clearly by more than the margin the claim allows
        within_margin = claim.relation == "at_least" and row["verdict"] == sl.stats.WORSE
        measured = (
            f"{cram_names[trainer]} is worse than SGD, though not clearly by more than the "
            f"claim's margin ({100 * claim.margin:.1f} points)."
            if within_margin and sl.claims.verdict(claim, row).status == sl.claims.INCONCLUSIVE
            else ""
        )
        found = sl.claims.judge(claim, row, setting=setting, reason=cram_reason, measured=measured)
        cram_verdicts.append(found)
dense_context = (
    f"The dense-accuracy claim's published number ({dense_claim.published}) is for "
    f"{cram_names[dense_arm]}, so {cram_names[dense_arm]} is tested against it below; "
    f"{cram_names[context_arm]}'s dense result is context only: paired, "
    + difference(cram_pair(context_arm, 0.0), f"{cram_names[context_arm]}'s dense model", "SGD's")
    + "."
)
drop = curve.loc[0.0] - curve


def points(fraction):
    """A signed change in points, with no "-0.0"."""
    return f"{round(100 * fraction, 1) + 0.0:+.1f}"


sl.nb.md(
    f"Dense test accuracy ({len(SEEDS)} seed(s)): SGD {curve.loc[0.0, 'sgd']:.2%}, CrAM "
    f"{curve.loc[0.0, 'cram']:.2%}, CrAM+ {curve.loc[0.0, 'cram_plus']:.2%}.  Pruned in "
    f"one shot to {probe:.0%}, the accuracy changes by {points(-drop.loc[probe, 'sgd'])} "
    f"points for SGD, {points(-drop.loc[probe, 'cram'])} for CrAM and "
    f"{points(-drop.loc[probe, 'cram_plus'])} for CrAM+.  {dense_context}\n\n"
    + sl.claims.report(cram_verdicts)
)
curve.round(4)

# %% [markdown]
# ## Summary
#
# AC/DC and CrAM start dense and learn to live near a sparse model: AC/DC alternates
# sparse and dense phases and ends with a pair of models, CrAM takes each step's gradient
# at a compressed copy of the weights.  What the runs above measured, against the papers'
# claims (every figure from the cells of this notebook):


# %%
all_verdicts = [acdc_verdict, *cram_verdicts]
sl.nb.md(
    "- Paired: "
    + difference(acdc_dense_pair, member, "the recipe's dense model")
    + f"; {difference(acdc_member_pair, member, 'its sparse member')}; of the weights AC/DC's "
    f"sparse member prunes, {members['regrown_near_zero']:.0%} are below {NEAR_ZERO:g} in "
    f"the dense member.\n- " + sl.words.claims_list(all_verdicts)
)
sl.claims.table(all_verdicts)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Give AC/DC phases twice as long as its default (`phase_epochs=2 *
# acdc.epochs_of(acdc_epochs)[1]`) and train it on seed `SEED` as above.  Of the weights
# its sparse member prunes, what share is below `NEAR_ZERO` in its dense member?  Two
# decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache  # the answer's check, the solution and its check ask for the same run
def near_zero(phase_epochs):
    """AC/DC on seed SEED: (the share of the weights its sparse member prunes that are
    below NEAR_ZERO in its dense member, the sparse member, the dense member)."""
    method = registry.get("acdc", "training")(SPARSITY, phase_epochs=phase_epochs, seed=SEED)
    sparse, dense = method.pair(fit(method, SEED, acdc_epochs)[0])
    pruned = [dense.get_parameter(n).detach()[~k.bool()] for n, k in sl.masks.masks(sparse).items()]
    return float((torch.cat(pruned).abs() < NEAR_ZERO).float().mean()), sparse, dense


def check_1(answer, solution=False):
    share = near_zero(2 * acdc.epochs_of(acdc_epochs)[1])[0]
    hint = "Take `acdc.pair(model)` and look at the dense member where the sparse mask is 0."
    sl.nb.check(1, answer, share, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_1 = None  # a fraction
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  The dense member is the model at the end of the last decompressed phase; a
# longer phase gives the weights that came back at zero more steps to grow, unless the
# learning rate has annealed by then.  Compare with the default phases' share, same seed:
# equal shares say that the longer phase did not let them grow past NEAR_ZERO.  The share is
# counted here layer by layer from the dense member's stored weights and the sparse mask.
longer = 2 * acdc.epochs_of(acdc_epochs)[1]
_, sparse_1, dense_1 = near_zero(longer)  # the cached run: no second training
stored = dense_1.state_dict()
n_pruned = n_near = 0
for name, keep in sl.masks.masks(sparse_1).items():
    off = keep == 0  # pruned in the sparse member
    n_pruned += int(off.sum())
    n_near += int((off & (stored[name].abs() < NEAR_ZERO)).sum())
solution_1 = round(n_near / n_pruned, 2)
default = next(r["regrown_near_zero"] for r in acdc_members if r["seed"] == SEED)
print(f"phases of {longer} epochs: {solution_1:.2f} near zero; default phases: {default:.2f}")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Train CrAM with a single sparsity: as in the CrAM section, on seed `SEED` (the same
# optimizer settings, epochs and uniform budget), but with `sparsities=[0.9]`.  Prune it in
# one shot to 90% as the section does (`one_shot(model, 0.9, data=train,
# budget="uniform")` on a copy, with `train` a fresh training loader of the task,
# `t.loaders(CRAM_RECIPE.batch_size)[0]`).  By how many points is its test accuracy above
# that of the section's CrAM (trained on `CRAM_SPARSITIES`) pruned to 90%, on seed `SEED`
# (in `cram_results`)?  One decimal, negative when below.  Which sparsities does it protect?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache
def cram_single():
    """CrAM trained as in the CrAM section on seed SEED, drawing 90% at every step:
    ``(model, task)``."""
    method = registry.get("cram", "training")(0.9, sparsities=[0.9], budget="uniform", seed=SEED)
    m, t, _, _ = recipes.train_sparse(method, "resnet_small", CRAM_DATA, SEED, epochs=CRAM_EPOCHS)
    return m, t


def section_cram(sparsity):
    """Test accuracy of the section's CrAM on seed SEED, pruned in one shot to ``sparsity``."""
    rows = cram_results[(cram_results["trainer"] == "cram") & (cram_results["seed"] == SEED)]
    return rows.set_index("sparsity").loc[sparsity, "accuracy"]


def check_2(answer, solution=False):
    m, t = cram_single()
    train = t.loaders(CRAM_RECIPE.batch_size)[0]
    pruned = one_shot(copy.deepcopy(m), 0.9, data=train, budget="uniform")
    gain = 100 * (evaluate(pruned, t, 0.9)["accuracy"] - section_cram(0.9))
    hint = "Prune a copy with `one_shot` and a fresh training loader; subtract the section's row."
    sl.nb.check(2, answer, gain, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_2 = None  # points, e.g. 3.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Each CrAM step takes its gradient at the weights compressed to the sparsity
# drawn; with the single sparsity 90% every step is taken at that cut, where the section's
# list spreads the steps over 50%, 70% and 90%.  The gradient reaches only the weights kept
# at 90%, so a weight never among them keeps what weight decay leaves of its initial value,
# and a cut at a lower sparsity keeps some of those.  Whether training at the one cut helps
# at that cut, and what it costs at the others, is what the lines printed below measure
# (one seed: a difference of a few points may be noise).  The pruning
# is the section's: `one_shot` zeroes the smallest weights of every layer (the uniform
# budget) and averages the BatchNorm statistics again over the training batches.  The
# accuracy is counted here by hand, from the pruned copy's logits on the test tensors.
model_2, task_2 = cram_single()
train_2 = task_2.loaders(CRAM_RECIPE.batch_size)[0]
test_x, test_y = task_2.bundle.test.tensors


def pruned_accuracy(model, sparsity):
    """Test accuracy of a copy of ``model`` pruned in one shot to ``sparsity``."""
    pruned = one_shot(copy.deepcopy(model), sparsity, data=train_2, budget="uniform")
    with torch.no_grad(), sl.modes.evaluating(pruned):
        return (pruned(test_x).argmax(1) == test_y).float().mean().item()


for s in ONE_SHOT_SPARSITIES:
    print(
        f"pruned to {s:.0%}: CrAM on 90% only {pruned_accuracy(model_2, s):.2%}, "
        f"the section's CrAM {section_cram(s):.2%}"
    )
solution_2 = round(100 * (pruned_accuracy(model_2, 0.9) - section_cram(0.9)), 1)
print(f"at 90%: {solution_2:+.1f} points")
check_2(solution_2, solution=True)

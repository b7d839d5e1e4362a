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
# # How to prune I d: first-order criteria compared
#
# **What you will learn:** how the first-order criteria (SNIP, Taylor on weights and on
# units, skeletonization, Karnin's sensitivity, movement) compare with their data-free
# counterparts (magnitude for weights, `group_norm` for units) on LeNet-300-100 and
# LeNet-5, right after pruning and after a short fine-tuning, and what the runs say about
# magnitude against its random baseline.
#
# This continues [02b](02b_first_order.ipynb), which defines each criterion, measures how
# well the first-order estimate predicts the real loss change and shows how scores are
# accumulated while training.  It follows section 3.4 (first-order selection) of the
# survey; the data-free and data-driven criteria are compared the same way in
# [02h](02h_criteria_compared.ipynb).

# %%
import copy
import itertools

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F
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
    MODELS = ["lenet300"]  # LeNet-5 runs the same code; CI checks every cell once
# One thread: these small models gain little from two, and on a busy machine two threads
# wait for each other at every small operation.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
SPLITS = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
DATA = {name: size for name, size in SPLITS.items() if size is not None}  # {}: the recipe's

# %% [markdown]
# ## The dense models, with scores tracked during training
#
# `karnin` and `movement` read scores accumulated while the network trained: the trackers
# `KarninScores` and `MovementScores` watched the training of each of these dense models
# among the training loop's callbacks, and `recipes.dense` returns them with the model
# (`info["trackers"]`, kept beside its checkpoint for the settings of
# `recipes.TRACKED_SCORES`).  [02b](02b_first_order.ipynb) trains one of them again with
# trackers of its own and checks that the model is the same.

# %%
dense_models, dense_rows = {}, []
for m, s in itertools.product(MODELS, SEEDS):
    t, net, d = recipes.dense(m, "mnist", s, epochs=EPOCHS, **DATA)
    assert set(d["trackers"]) == {"karnin", "movement"}  # what the two criteria below read
    dense_models[m, s] = (t, net, d["trackers"], d)
    row = {"model_name": m, "seed": s, "epochs": d["recipe"].epochs, "n_train": len(t.bundle.train)}
    row |= {"parameters": sum(p.numel() for p in net.parameters())}
    dense_rows.append(row | {"test_accuracy": d["test_accuracy"], "flags": d["flags"]})
dense_runs = pd.DataFrame(dense_rows)
sl.nb.show_dense(dense_runs, "mnist")  # test accuracy beside the recipe's, and flags
DENSE = dense_runs.groupby("model_name").first()  # epochs, images and size of each model
# the LeNet-300-100 of seed SEED (from the checkpoint cache) and its calibration batches,
# which the exercises use
task, model, _ = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
calibration = list(itertools.islice(task.loaders()[0], CALIBRATION_BATCHES))


def dense_caveat(m, pruned=False):
    """The dense baselines of ``m`` that missed their recipe (flagged), in words ("" if
    none); ``pruned`` adds that every pruned model of those seeds starts from them."""
    seeds = dense_runs[(dense_runs.model_name == m) & (dense_runs["flags"] != "")].seed.tolist()
    one = len(seeds) == 1
    if one:
        text = f"The dense {m} of seed {seeds[0]} is below its recipe (flagged)"
    else:
        listed = ", ".join(str(s) for s in seeds)
        text = f"The dense {m} models of seeds {listed} are below their recipe (flagged)"
    if pruned:
        them = "that seed starts from it" if one else "those seeds starts from them"
        text += f", and every pruned {m} of {them}"
    return text if seeds else ""


# %% [markdown]
# ## Comparison on LeNet-300-100 and LeNet-5
#
# As in [02h](02h_criteria_compared.ipynb): each criterion prunes a copy of the trained
# network once, and we measure validation accuracy right after pruning and after
# fine-tuning, then test accuracy once at the end.  Single weights are pruned with a global
# budget; their random baseline is `recipes.random_like` of magnitude's mask (the same
# number of weights in every layer).  Units (`skeletonization`, `taylor`) are pruned with the
# same share of the units of each layer in `UNITS` (both hidden layers of LeNet-300-100;
# `conv1`, `fc1` and `fc2` of LeNet-5, whose `conv2` stays whole), with `random units` (the
# same number per layer) and `group_norm` as references.

# %%
FC = ["fc1.weight", "fc2.weight"]
UNITS = {"lenet300": FC, "lenet5": ["conv1.weight", *FC]}  # the layers whose units are pruned
RANDOM_WEIGHTS = "random (magnitude's layer counts)"
WEIGHT_CRITERIA = ["magnitude", RANDOM_WEIGHTS, "snip", "taylor_weight", "karnin", "movement"]
UNIT_CRITERIA = ["random units", "group_norm", "skeletonization", "taylor"]


def one_shot(model_name, criterion, sparsity, seed):
    """Prune a copy of the dense model once, then fine-tune it; accuracies at both stages."""
    t, net, tracked, d = dense_models[model_name, seed]
    net = copy.deepcopy(net)  # the dense model stays whole for the next run
    dense_scores = {"dense_val_accuracy": d["val_accuracy"]}
    method, options = criterion, {}
    if criterion in (RANDOM_WEIGHTS, "magnitude"):
        options.update(budget="global", shuffled=criterion == RANDOM_WEIGHTS)
        method = "magnitude"
    if criterion in UNIT_CRITERIA:
        method = "random" if criterion == "random units" else criterion
        options.update(pattern="channel", budget="uniform", targets=UNITS[model_name])
    tuning = {"finetune_epochs": FINETUNE_EPOCHS}
    if criterion in tracked:  # a tracker recorded during dense training: pruned here
        data = list(itertools.islice(t.loaders()[0], CALIBRATION_BATCHES))
        options.update(tracker=tracked[criterion], data=data)
        return {**recipes.prune_and_finetune(net, t, method, sparsity, **tuning, **options),
                **dense_scores}  # fmt: skip
    # the same call as 02h's for the criteria both compare: the run cache trains it once
    result = one_shot_runs.prune_dense_and_finetune(
        t, method, sparsity, dense_epochs=EPOCHS, calibration_batches=CALIBRATION_BATCHES,
        **tuning, **options
    )  # fmt: skip
    return {**result, **dense_scores}


grid = {"model_name": MODELS, "criterion": WEIGHT_CRITERIA + UNIT_CRITERIA, "sparsity": SPARSITIES}
runs_before = run_cache.counts()  # make book and make lab share runs with 02h (run_cache)
results = sl.experiments.sweep(one_shot, grid, seeds=SEEDS)
flops = results.groupby("model_name")["finetune_flops"].agg(["min", "max"])
cache_note = run_cache.summary(runs_before)
sl.nb.md(
    f"Fine-tuning budget of every run: {FINETUNE_EPOCHS} epoch(s) with the masks fixed, "
    + "; ".join(f"{sl.words.span(r['min'], r['max'])} FLOPs on {m}" for m, r in flops.iterrows())
    + " (counted on the nonzero weights: the sparser the network, the cheaper)."
    + (f"  {cache_note}" if cache_note else "")
)
STAGES = {
    "pruned_accuracy": "one-shot, no fine-tuning",
    "val_accuracy": f"after {FINETUNE_EPOCHS} epoch(s) of fine-tuning",
}
# one row of panels per model, the dense accuracy dashed; the fine-tuned panels' y axis
# fits the points of all but the random baseline, whose differences the text compares
PANELS = {"row": "model_name", "hue": "criterion", "reference": "dense_val_accuracy"}
PANELS.update(ylabel="validation accuracy", stages=STAGES)
FIT = {"val_accuracy": [RANDOM_WEIGHTS]}
weight_runs = results[results.criterion.isin(WEIGHT_CRITERIA)]
sl.viz.stage_grid(
    weight_runs, title="First-order criteria on weights", xlabel="sparsity", fit=FIT, **PANELS
)
plt.show()

# %%
unit_runs = results[results.criterion.isin(UNIT_CRITERIA)]
sl.viz.stage_grid(
    unit_runs, title="First-order criteria on units", xlabel="share of units removed", **PANELS
)
plt.show()

# %% [markdown]
# Each first-order criterion against its data-free counterpart (magnitude for weights,
# `group_norm` for units), and magnitude against its random baseline: paired differences
# by seed, treatment minus baseline, right after pruning (validation) and after fine-tuning
# (test).

# %%
PAIRS = [
    *[(c, "magnitude") for c in ["snip", "taylor_weight", "karnin", "movement"]],
    ("magnitude", RANDOM_WEIGHTS),
    ("skeletonization", "group_norm"),
    ("taylor", "group_norm"),
]
REPORTED = {"pruned_accuracy": "no fine-tuning (val)", "test_accuracy": "fine-tuned (test)"}
FINE_TUNED = REPORTED["test_accuracy"]
paired = sl.stats.paired_table(results, "criterion", PAIRS, REPORTED, by=["model_name", "sparsity"])
columns = ["comparison", "stage", "model_name", "sparsity", "mean_diff", "ci_low", "ci_high"]
with pd.option_context("display.max_rows", None):
    display(paired[[*columns, "verdict"]].round(4))
RUNS = ["model_name", "criterion", "sparsity"]
sl.nb.show_flags(sl.flags.table(results, RUNS, "pruned_flags"), what="right after pruning (val)")
sl.nb.show_flags(sl.flags.table(results, RUNS), what="after fine-tuning (test)")
top = max(SPARSITIES)
PAIRED = paired.set_index(["comparison", "stage", "model_name", "sparsity"]).sort_index()


def described(a, b, stage, m):
    """The paired difference ``a`` minus ``b`` at ``stage`` on ``m`` at ``top``, in words."""
    return sl.stats.describe(PAIRED.loc[(f"{a} - {b}", stage, m, top)])


lines = []
for m in MODELS:
    for a, b in PAIRS:
        stages = "; ".join(f"{stage}, {described(a, b, stage, m)}" for stage in REPORTED.values())
        lines.append(f"- {m} at {top:.0%} sparsity, `{a}` minus `{b}`: {stages}.")
    if dense_caveat(m):
        lines.append(f"- {dense_caveat(m, pruned=True)}.")
sl.nb.md("\n".join(lines))

# %% [markdown]
# ## Against the literature
#
# The claim this chapter can test, judged from paired test accuracies (`sl.claims`):
# magnitude after training against its random baseline (Blalock et al. 2020).  The claims
# about pruning at initialisation (shuffled masks, SNIP against its random baseline) are
# judged in [02k](02k_training_from_scratch.ipynb).


# %%
def dense_note(m, sparsity):
    """The dense baselines of ``m`` that missed their recipe, and whether the paired
    difference keeps its sign on every seed."""
    caveat = dense_caveat(m)
    if not caveat:
        return ""
    part = results[(results.model_name == m) & (results.sparsity == sparsity)]
    arms = part.pivot(index="seed", columns="criterion", values="test_accuracy")
    diffs = arms["magnitude"] - arms[RANDOM_WEIGHTS]
    same_sign = (diffs > 0).all() or (diffs < 0).all()
    return (
        f"{caveat}; the per-seed differences ({', '.join(f'{100 * d:+.1f}' for d in diffs)} "
        "points) " + ("keep one sign on every seed." if same_sign else "change sign across seeds.")
    )


han = min(SPARSITIES, key=lambda s: abs(s - 0.92))
magnitude_verdicts = [
    sl.claims.judge(
        "magnitude_beats_random_after_training",
        PAIRED.loc[(f"magnitude - {RANDOM_WEIGHTS}", FINE_TUNED, m, han)],
        setting=f"{m} at {han:.0%}, fine-tuned {FINETUNE_EPOCHS} epoch(s), test",
        reason=f"The dense {m} has {DENSE.loc[m, 'parameters']:,} parameters, trained "
        f"{DENSE.loc[m, 'epochs']} epoch(s) on {DENSE.loc[m, 'n_train']} MNIST images.",
        measured=dense_note(m, han),
    )
    for m in MODELS
]
display(sl.claims.table(magnitude_verdicts))
sl.nb.md(sl.claims.report(magnitude_verdicts))

# %% [markdown]
# ## Summary
#
# - Every criterion prunes the same trained network of each seed, so each difference is
#   paired by seed: the weight criteria against magnitude, the unit criteria against
#   `group_norm`, and magnitude against a random baseline that keeps its number of weights
#   in every layer.  Karnin's sensitivity and movement read scores that the training loop's
#   callbacks accumulated while the dense network trained.
#
# What this chapter measured:

# %%
lines = []
for m in MODELS:
    against = [(a, b) for a, b in PAIRS if b == "magnitude"]
    text = "; ".join(f"`{a}` minus `{b}` {described(a, b, FINE_TUNED, m)}" for a, b in against)
    caveat = f" {dense_caveat(m)}." if dense_caveat(m) else ""
    lines.append(
        f"- {m} at {top:.0%} sparsity, after {FINETUNE_EPOCHS} fine-tuning epoch(s) (test): "
        f"{text}.{caveat}"
    )
for m, v in zip(MODELS, magnitude_verdicts, strict=True):
    note = f". {dense_note(m, han)}" if dense_note(m, han) else "."
    lines.append(f"- Against the literature: {v.claim.key} is **{v.status}** ({v.setting}){note}")
sl.nb.md("\n".join(lines))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** Score the units of `fc1` and `fc2` of the trained LeNet-300-100 with `taylor` and
# `normalize=False`, and remove three quarters of their weights as whole units with the
# global budget: `sl.prune(copy.deepcopy(model), "taylor", 0.75, pattern="channel",
# budget="global", targets=UNITS["lenet300"], data=calibration, normalize=False)`.  What
# share of the 100 units of `fc2` does it remove?  Two decimals (one unit either way is
# accepted).  Compare with the default `normalize=True`: why does the layer-wise
# normalisation matter?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    pruned = sl.prune(
        copy.deepcopy(model),
        "taylor",
        0.75,
        pattern="channel",
        budget="global",
        targets=UNITS["lenet300"],
        data=calibration,
        normalize=False,
    )
    share = float((masks.get_mask(pruned, "fc2.weight").sum(1) == 0).double().mean())
    hint = "Prune as written and count the rows of fc2's mask that are all zero, out of 100."
    sl.nb.check(1, answer, share, hint=hint, tolerance=0.01, solution=solution)


# %%
answer_1 = None  # a share of units, e.g. 0.42
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  Taylor's score of a unit is the mean over examples of |a dl/da|, the loss
# change its removal predicts, and its scale differs from layer to layer.  Without
# normalisation one global threshold spends the budget on the layer whose scores are
# smaller (the means printed below), whatever its units are worth within their layer;
# dividing each layer's scores by their L2 norm puts the layers on one scale.  By hand:
# the per-example gradients of the summed loss with respect to each unit's output, then
# the global choice of whole units (784 weights per unit of fc1, 300 per unit of fc2)
# nearest three quarters of the weights.
unit_layers = ["fc1", "fc2"]
net = copy.deepcopy(model)
outputs, totals, seen = {}, dict.fromkeys(unit_layers, 0.0), 0
hooks = [
    getattr(net, n).register_forward_hook(lambda m, i, out, n=n: outputs.__setitem__(n, out))
    for n in unit_layers
]
for x_b, y_b in calibration:
    loss = F.cross_entropy(net(x_b), y_b, reduction="sum")  # one example's loss per row
    unit_grads = torch.autograd.grad(loss, [outputs[n] for n in unit_layers])
    for n, g in zip(unit_layers, unit_grads, strict=True):
        totals[n] = totals[n] + (outputs[n] * g).detach().double().abs().sum(0)
    seen += len(y_b)
for hook in hooks:
    hook.remove()
theta = {n: totals[n] / seen for n in unit_layers}
group = {"fc1": net.fc1.in_features, "fc2": net.fc2.in_features}  # weights per unit


def fc2_share(scores):
    """Share of fc2's units removed by the global choice of whole units."""
    order = torch.argsort(torch.cat([scores[n] for n in unit_layers]), stable=True)
    weight_of = torch.cat([torch.full((len(scores[n]),), group[n]) for n in unit_layers])
    cumulative = torch.cat([torch.zeros(1), weight_of[order].double().cumsum(0)])
    target = round(0.75 * sum(group[n] * len(scores[n]) for n in unit_layers))
    removed = order[: int((cumulative - target).abs().argmin())]
    return float((removed >= len(scores["fc1"])).sum() / len(scores["fc2"]))


normalised = {n: theta[n] / theta[n].norm() for n in unit_layers}
solution_1 = round(fc2_share(theta), 2)
print(
    f"mean score: fc1 {theta['fc1'].mean():.2e}, fc2 {theta['fc2'].mean():.2e}; share of "
    f"fc2 removed: {solution_1:.2f} without normalisation, {fc2_share(normalised):.2f} with it"
)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Magnitude keeps the largest |w|; `snip` keeps the largest |g w|, with `g` the
# gradient of the loss on one batch.  Prune two copies of the LeNet-300-100 `model` to
# `top` sparsity with the global budget, `sl.prune(copy.deepcopy(model), "magnitude", top)`
# and `sl.prune(copy.deepcopy(model), "snip", top, data=calibration)` (`snip` reads the
# first batch of `calibration`, its default `batches=1`).  What share of the weights that
# magnitude keeps does `snip` also keep?  Two decimals.  A random choice of as many weights
# would share about `1 - top` of them: why is the overlap above that, and why is it not 1?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    kept = {
        c: masks.masks(sl.prune(copy.deepcopy(model), c, top, data=calibration))
        for c in ["magnitude", "snip"]
    }
    both = sum(float((kept["snip"][n] * m).sum()) for n, m in kept["magnitude"].items())
    share = both / sum(float(m.sum()) for m in kept["magnitude"].values())
    hint = "Multiply the two models' masks (sl.masks), sum, and divide by magnitude's kept count."
    sl.nb.check(2, answer, share, hint=hint, tolerance=0.01, solution=solution)


# %%
answer_2 = None  # a share of weights, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  By hand: the gradient of the mean loss on the first calibration batch with
# autograd, the scores |w| and |g w| of every weight, and each criterion's global top-k,
# k the weights kept at `top` sparsity.  SNIP's score is |w| times |g|, so a large weight
# keeps a head start, and the overlap is above the chance level `1 - top`; but the
# gradient reorders the weights, and a weight whose gradient on the batch is zero (for
# instance one into or out of a unit that no example of the batch activates) scores zero
# however large it is (counted below).
net = copy.deepcopy(model).eval()
weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
x_b, y_b = calibration[0]
grads = torch.autograd.grad(F.cross_entropy(net(x_b), y_b), weights)
size = torch.cat([w.detach().abs().flatten() for w in weights])
snip = torch.cat([(g * w).detach().abs().flatten() for g, w in zip(grads, weights, strict=True)])
k = round((1 - top) * size.numel())
by_size, by_snip = size.topk(k).indices, snip.topk(k).indices
overlap = float(torch.isin(by_size, by_snip).double().mean())
print(
    f"share of magnitude's {k:,} weights that snip keeps: {overlap:.3f} (chance: {1 - top:.2f}); "
    f"{int((snip[by_size] == 0).sum()):,} of them have a zero gradient on the batch"
)
solution_2 = round(overlap, 2)
check_2(solution_2, solution=True)

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
# # How this book measures: dense baselines, one protocol, flags and claims
#
# **What you will learn:** which dense model every later chapter starts from and how well
# it must do, how two methods are compared fairly (same seed, same data, same budget,
# paired differences), which sanity flags the library raises on a number that should not
# be read as a result, and how each chapter's "against the literature" paragraph is
# computed from its own cells.
#
# A sparse result is only as good as the dense network it was cut from.  A network that
# never learned its task prunes "well" at any sparsity, because there is nothing to lose;
# a random mask that collapses because its weights were not rescaled makes any method look
# good beside it.  The survey (section 8.4) asks for exactly this care: strong baselines,
# several seeds and budgets stated in FLOPs.

# %%
import copy
import warnings

import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
EPOCHS = None  # None: each recipe's own number of epochs

# %%
DATA_OPTIONS = {}  # per data set: what the smoke run shrinks
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0]
    EPOCHS = 1
    DATA_OPTIONS = {"chars": {"n_train": 2000}, "char_lm": {"n_train": 2000}}
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## The dense recipes
#
# Each bundled (model, data) setting has one dense training recipe, kept in
# `sparsity_lab.recipes.RECIPES`.  Each was chosen on the validation split only, and states
# the test accuracy it is expected to reach, a round figure at or below the mean over seeds
# 0-2 that its `source` gives, and where it comes from.  Every notebook and benchmark gets
# its dense model from `recipes.dense(...)`, which trains with the recipe once per process
# and caches the checkpoint on disk.  `make models`, the first step of `make book`, trains
# every recipe for seeds 0-2 that way, side by side, so that no notebook waits for a
# model the others use too; after it, the cell below loads them instead of training.

# %%
table = pd.DataFrame(recipes.recipes_table())
columns = ["model", "data", "optimizer", "lr", "batch_size", "epochs", "weight_decay"]
shown = table[[*columns, "lr_schedule", "expected_test_accuracy", "source"]].copy()
shown["lr_schedule"] = shown["lr_schedule"].fillna("constant")  # None: a constant rate
display(shown)

# %% [markdown]
# Now train each one, for each seed, and set the measured accuracy beside the expectation.
# `recipes.dense` raises the flag *dense baseline below its recipe* when one seed's model is
# more than two points below the expectation.  The table below gives the mean over seeds
# and the seed-to-seed spread (`std`); the sentence after the table checks the mean to
# within one point.

# %%
rows = []
for (model_name, data_name), recipe in recipes.RECIPES.items():
    for seed in SEEDS:
        options = DATA_OPTIONS.get(data_name, {})
        t, model, dense_info = recipes.dense(model_name, data_name, seed, epochs=EPOCHS, **options)
        rows.append(
            {
                "model": model_name,
                "data": data_name,
                "seed": seed,
                "epochs": dense_info["recipe"].epochs,
                "test_accuracy": dense_info["test_accuracy"],
                "expected": recipe.expected_test_accuracy,
                "flags": dense_info["flags"],
            }
        )
measured = pd.DataFrame(rows)
summary = sl.stats.summarize(measured, ["model", "data"], "test_accuracy")
summary["expected"] = [
    recipes.recipe_for(m, d).expected_test_accuracy
    for m, d in zip(summary["model"], summary["data"], strict=True)
]
display(summary.round(4))
flagged = sl.flags.table(measured, ["model", "data"])
sl.nb.show_flags(flagged, what="on the dense baselines")

# %%
met = [
    f"{m} on {d}: {row['mean']:.1%} (expected {row['expected']:.0%})"
    for (m, d), row in summary.set_index(["model", "data"]).iterrows()
]
# How far the mean over seeds may fall short of its expectation (one point, as
# benchmarks/dense_recipes.py checks); a single seed may fall recipes.SEED_TOLERANCE short.
MEAN_TOLERANCE = 0.01
if EPOCHS is None:
    below = int((summary["mean"] < summary["expected"] - MEAN_TOLERANCE).sum())
    verdict = "all meet" if below == 0 else f"{below} miss"
    largest_std = summary["std"].max()
    if largest_std < recipes.SEED_TOLERANCE:
        side = "below"
    elif largest_std > recipes.SEED_TOLERANCE:
        side = "above"
    else:
        side = "equal to"
    display(
        Markdown(
            f"With their full recipes, over {len(SEEDS)} seed(s), the dense baselines reach "
            + "; ".join(met)
            + f": {verdict} their expectation to within {100 * MEAN_TOLERANCE:.0f} "
            + ("point.  " if round(100 * MEAN_TOLERANCE) == 1 else "points.  ")
            + f"The largest seed-to-seed standard deviation is {100 * largest_std:.1f} points, "
            f"{side} the {100 * recipes.SEED_TOLERANCE:.0f} points a single seed may fall short "
            f"before it is flagged."
        )
    )
else:
    display(
        Markdown(
            f"This run shortened every recipe to {EPOCHS} epoch(s), so the expectations are "
            "not checked (a smoke run): " + "; ".join(met) + "."
        )
    )

# %% [markdown]
# ## One protocol
#
# The chapters share the functions of `sparsity_lab.recipes`, so that a number in one
# chapter can be compared with a number in another:
#
# - **dense model**: `recipes.dense(model, data, seed)`, the recipe above, one per setting;
# - **sparse start from initialisation**: `recipes.sparse_start(model, masks)`, each unit's
#   kept weights rescaled to its sparse fan-in;
# - **random baseline**: `recipes.random_like(masks, seed)`, the same number of weights per
#   layer as the mask it is compared with;
# - **fine-tuning**: `recipes.finetune(model, task, epochs)`, the budget stated in epochs
#   and FLOPs;
# - **evaluation**: `recipes.evaluate_run(model, task, target_sparsity=...)`, accuracy,
#   reached sparsity and sanity flags.
#
# Why the rescaling matters: default initialisations set each weight's variance from the
# dense fan-in, so a unit that keeps a tenth of its inputs starts with a tenth of the
# variance (about a third of the amplitude), and a few such layers leave the output to the
# biases.  The cell below draws one random 98% mask for a fresh LeNet-300-100 and applies
# it to two copies of the network, once without and once with `sparse_start`.  It measures
# how much their logits at initialisation depend on the input (their spread over 256
# validation images, each logit's mean over the images removed: what the biases alone
# produce does not count).

# %%
t, _, _ = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS)
x = t.bundle.val.tensors[0][:256]
fresh = t.build()
random_mask = sl.prune(copy.deepcopy(fresh), "random", 0.98, budget="uniform")
found = sl.masks.masks(random_mask)
plain = copy.deepcopy(fresh)
for name, mask in found.items():
    sl.masks.attach(plain, name, mask.clone())
rescaled = recipes.sparse_start(copy.deepcopy(fresh), found)


def input_driven_spread(net):
    with torch.no_grad():
        logits = net(x)
    return (logits - logits.mean(dim=0)).std().item()


spread = {
    "dense": input_driven_spread(fresh),
    "98% random, no rescaling": input_driven_spread(plain),
    "98% random, sparse_start": input_driven_spread(rescaled),
}
display(pd.Series(spread, name="input-driven spread of the logits").to_frame().round(5))
display(
    Markdown(
        f"Without rescaling the input moves the logits by "
        f"{spread['98% random, no rescaling']:.5f}, "
        f"{spread['dense'] / spread['98% random, no rescaling']:.0f} times less than in the "
        f"dense network ({spread['dense']:.4f}): the output is almost a constant.  With "
        f"`sparse_start` the spread is {spread['98% random, sparse_start']:.4f}, "
        f"{spread['98% random, sparse_start'] / spread['dense']:.0%} of the dense network's."
    )
)

# %% [markdown]
# The cell below looks closer at this mask: how many inputs each output unit keeps, the
# spread of each logit, and the same measurement with other random masks of 98%.


# %%
def per_logit_spread(net):
    with torch.no_grad():
        logits = net(x)
    return (logits - logits.mean(dim=0)).std(dim=0)


kept_inputs = found["fc3.weight"].sum(dim=1).int()
no_input = int((kept_inputs == 0).sum())
dense_logits = per_logit_spread(fresh)
sparse_logits = per_logit_spread(rescaled)
other_ratios = []
for mask_seed in range(1, 21):
    other = sl.prune(copy.deepcopy(fresh), "random", 0.98, budget="uniform", seed=mask_seed)
    other_net = recipes.sparse_start(copy.deepcopy(fresh), sl.masks.masks(other))
    other_ratios.append(input_driven_spread(other_net) / spread["dense"])
other_ratios = pd.Series(other_ratios)
display(
    Markdown(
        f"Each of the {len(kept_inputs)} output units keeps {int(kept_inputs.min())} to "
        f"{int(kept_inputs.max())} of its {found['fc3.weight'].shape[1]} inputs"
        + (f" ({no_input} keep none)" if no_input else "")
        + f", and the spread of single logits runs from {sparse_logits.min():.3f} to "
        f"{sparse_logits.max():.3f} "
        f"(dense: {dense_logits.min():.3f} to {dense_logits.max():.3f}).  "
        f"With {len(other_ratios)} other random masks, `sparse_start` gives "
        f"{other_ratios.min():.0%} to {other_ratios.max():.0%} of the dense spread "
        f"(median {other_ratios.median():.0%}): with so few kept weights, one mask's figure "
        f"moves a lot from draw to draw."
    )
)

# %% [markdown]
# ## Paired statistics
#
# Two methods run with the same seed share their data split, their dense model and their
# batch order.  Most of the seed-to-seed spread is shared, so it cancels in the difference
# of the two.  `sl.stats.paired` takes the per-seed differences and gives their Student-t
# interval; when that interval covers 0 the honest answer is "no clear difference".  Here is a
# constructed example in which the two unpaired intervals overlap widely although one
# method is better on every seed by about two points:

# %%
toy = pd.DataFrame(
    [{"method": "A", "seed": s, "accuracy": a} for s, a in enumerate([0.80, 0.90, 0.70])]
    + [{"method": "B", "seed": s, "accuracy": a} for s, a in enumerate([0.82, 0.921, 0.719])]
)
toy_summary = sl.stats.summarize(toy, "method", "accuracy")
display(toy_summary.round(4))
a_row = toy_summary.set_index("method").loc["A"]
a_high = a_row["mean"] + sl.stats.t_half_width(a_row["std"], int(a_row["n"]))
display(Markdown(f"Unclipped, A's interval would end at {a_high:.1%}."))
pair = sl.stats.paired(toy, "method", "B", "A", metric="accuracy")
display(pair.round(4))
display(Markdown(f"B minus A: {sl.stats.describe(pair.iloc[0])}."))

# %% [markdown]
# Accuracy intervals are clipped to [0, 1], as in the first table above: with three seeds a
# t-interval can otherwise run past 100%.
#
# ## Sanity flags
#
# `sl.flags.check` (called by `recipes.evaluate_run` and stored in each run's `flags`
# column) raises a flag when a number should not be read as a result: accuracy at chance
# level, a target sparsity that was not reached, a layer pruned to 100%, a network whose
# output no longer depends on its input, a dense baseline below its recipe, and a class
# the model never predicts.  `sl.experiments.plot_mean_ci` circles flagged points in red.
# Here they fire on a model whose middle layer was pruned away:

# %%
t, model, _ = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS)
sl.masks.attach(model, "fc2.weight", torch.zeros_like(model.fc2.weight))
run = recipes.evaluate_run(model, t, target_sparsity=0.9)
display(pd.Series(run["flags"].split(sl.flags.SEPARATOR), name="flags raised").to_frame())

# %% [markdown]
# ## Claims from the literature
#
# The published claims the chapters test are kept in one table, `sl.claims.CLAIMS`.  A
# chapter measures paired differences (treatment minus baseline), and `sl.claims.verdict`
# answers *reproduced* when the whole interval agrees with the claim, *not reproduced*
# when the whole interval contradicts it, and *inconclusive* when it covers both, when a
# single seed was run, or when every seed gave the same difference (no spread to judge
# with).  The chapters' "against the literature" paragraphs are these
# verdicts, with the measured reason when a claim is not reproduced.

# %%
claims_table = pd.DataFrame(
    [
        {
            "claim": c.key,
            "paper": c.paper,
            "statement": c.statement,
            "published": c.published,
            "relation": c.relation + (f" (margin {c.margin * 100:.1f} points)" if c.margin else ""),
        }
        for c in sl.claims.CLAIMS.values()
    ]
)
with pd.option_context("display.max_colwidth", None):
    display(claims_table)

# %% [markdown]
# ## Summary
#
# - Every chapter starts from the dense recipe of its setting, and says when a dense model
#   misses its expected accuracy.
# - Sparse starts are rescaled to their fan-in; random baselines keep the layer counts of
#   the mask they are compared with; fine-tuning budgets are stated in epochs and FLOPs.
# - Comparisons are paired by seed; "no clear difference" is a result.
# - Flags mark the numbers that should not be read as results, and verdicts against the
#   cited claims are computed, not written.
#
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Ask `recipes.recipe_for` for a setting that has no tuned recipe, such as
# `recipes.recipe_for("lenet5", "digits")`.  What does it return, and what accuracy does it
# expect?  Then train that setting with it, `recipes.dense("lenet5", "digits", SEED,
# epochs=EPOCHS)`: what test accuracy does the model reach?  Two decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    _, _, lenet5_info = recipes.dense("lenet5", "digits", SEED, epochs=EPOCHS)
    hint = "Train with `recipes.dense('lenet5', 'digits', SEED, epochs=EPOCHS)`; read its info."
    accuracy = lenet5_info["test_accuracy"]
    sl.nb.check(1, answer, accuracy, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_1 = None  # an accuracy, e.g. 0.42
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  Without a tuned recipe `recipe_for` returns `recipes.DEFAULT_RECIPE`, generic
# SGD settings whose `expected_test_accuracy` is None: no flag can say the model is too weak,
# so only a measurement tells.  Here the model's test predictions are scored by hand.
default = recipes.recipe_for("lenet5", "digits")
digits_task, lenet5, _ = recipes.dense("lenet5", "digits", SEED, epochs=EPOCHS)
x_test, y_test = digits_task.bundle.test.tensors
with torch.no_grad():
    solution_1 = round(float((lenet5.eval()(x_test).argmax(dim=1) == y_test).float().mean()), 2)
print(f"{default.source}; expects {default.expected_test_accuracy}, reaches {solution_1:.2f}")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** In the paired example, change B's seed-1 accuracy to 0.88.  What is now the lower
# end of the paired 95% interval of B minus A, in points?  One decimal.  Does the verdict
# change, and why do the unpaired intervals still overlap widely?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    changed = toy.copy()
    changed.loc[(changed["method"] == "B") & (changed["seed"] == 1), "accuracy"] = 0.88
    low = sl.stats.paired(changed, "method", "B", "A", metric="accuracy").iloc[0]["ci_low"]
    hint = "Change B's seed-1 row in a copy of `toy` and read `ci_low` of `sl.stats.paired`."
    sl.nb.check(2, answer, 100 * low, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_2 = None  # points, e.g. -1.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The differences become +2.0, -2.0 and +1.9 points: the mean stays positive,
# but one seed now goes the other way, so the interval covers 0 and the verdict becomes "no
# clear difference".  The unpaired intervals still carry the 10-point spread between seeds,
# which only the pairing removes.  By hand, with the t quantile of 2 degrees of freedom:
diffs = [0.82 - 0.80, 0.88 - 0.90, 0.719 - 0.70]
mean = sum(diffs) / len(diffs)
std = (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
t_975 = 0.95 / (2 * 0.975 * 0.025) ** 0.5  # closed form for 2 degrees of freedom: 4.303
solution_2 = round(100 * (mean - t_975 * std / len(diffs) ** 0.5), 1)
print(f"B minus A: {100 * mean:+.1f} points, interval from {solution_2:+.1f}")
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Prune a copy of the dense LeNet-300-100 of the flags section with
# `sl.prune(model, "magnitude", 0.999, budget="global")` and call
# `recipes.evaluate_run(model, t, target_sparsity=0.999)`.  Which flags fire?  Answer with
# the set of their kinds, the text before the parenthesis, among "at chance level",
# "target sparsity not reached", "layer pruned to 100%", "disconnected" and "class never
# predicted".


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def pruned_999():
    """The task and its dense LeNet-300-100, pruned to 99.9% by global magnitude."""
    lenet_task, model, _ = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an emptied layer warns; the flags say it
        sl.prune(model, "magnitude", 0.999, budget="global")
    return lenet_task, model


def check_3(answer, solution=False):
    lenet_task, model = pruned_999()
    flags = recipes.evaluate_run(model, lenet_task, target_sparsity=0.999)["flags"]
    fired = {flag.split(" (")[0] for flag in flags.split(sl.flags.SEPARATOR) if flag}
    hint = "Read the `flags` of `evaluate_run`; each kind is the text before its parenthesis."
    sl.nb.check(3, answer, lambda a: isinstance(a, set | list | tuple) and set(a) == fired,
                hint=hint, solution=solution)  # fmt: skip


# %%
answer_3 = None  # a set of kinds, e.g. {"at chance level"}
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  Global magnitude keeps a few hundred of LeNet-300-100's 266,200 weights, and
# where they go (printed below) decides which tests fire: the trained weights are largest
# in the small last layers, so an early layer keeps few.  Whether a layer is emptied
# depends on the dense model.  Each test, by hand:
lenet_task, model = pruned_999()
x_test, y_test = lenet_task.bundle.test.tensors
layer_masks = sl.masks.masks(model).values()
with torch.no_grad():
    logits = model(x_test)
print("kept per layer:", {n: int(m.sum()) for n, m in sl.masks.masks(model).items()})
print("classes predicted on the test set:", logits.argmax(1).unique().tolist())
labels = lenet_task.bundle.train.tensors[1]
chance = labels.bincount().max().item() / len(labels)
density = sum(int(m.sum()) for m in layer_masks) / sum(m.numel() for m in layer_masks)
tests = {
    "at chance level": (logits.argmax(1) == y_test).float().mean() < chance + 0.05 * (1 - chance),
    "target sparsity not reached": 1 - density < 0.999 - 0.005,
    "layer pruned to 100%": any(not m.any() for m in layer_masks),
    "disconnected": bool((logits[:8] == logits[0]).all()),  # the same output for every image
    "class never predicted": len(logits.argmax(1).unique()) < lenet_task.bundle.n_classes,
}
solution_3 = {kind for kind, fires in tests.items() if fires}
print(sorted(solution_3))
check_3(solution_3, solution=True)

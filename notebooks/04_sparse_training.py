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
# # Sparse training I: growing connections
#
# **What you will learn:** how a network can stay sparse for its whole training by
# pruning and regrowing connections (SET, RigL), where the regrown connections go, how the
# layer budget shares the weights out, and what staying sparse buys in training FLOPs
# compared with gradual pruning.
#
# This follows section 4 of the survey ("sparse training").  The second part,
# [04b](04b_dynamic_sparse_training.ipynb), puts every other dynamic sparse training method
# on one protocol; the third, [04c](04c_acdc_and_cram.ipynb), trains models that start
# dense and learn to live near a sparse one: AC/DC (Peste et al. 2021) and CrAM (Peste et
# al. 2023).

# %%
import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import sparsity_lab as sl
from sparsity_lab import recipes, registry
from sparsity_lab.methods.dynamic import StaticSparse

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
DATA = "mnist"
SPARSITY = 0.9
EPOCHS = 8
MAX_FLOP_FACTOR = 6  # enough epochs for the sparse methods to spend GMP's FLOPs

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    DATA = "digits"
    EPOCHS = 2
    MAX_FLOP_FACTOR = 2
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
RECIPE = recipes.recipe_for("lenet300", DATA)
epochs_text = functools.partial(sl.words.plural, word="epoch")  # "1 epoch", "8 epochs"
difference = sl.words.paired_text  # "a minus b +1.0 points [...]", or the same on every seed


def fit(method, seed, epochs, callbacks=()):
    """Train a fresh LeNet-300-100 with ``method`` and the optimizer settings of the dense
    recipe: (model, task, FLOP counter, history)."""
    return recipes.train_sparse(method, "lenet300", DATA, seed, epochs=epochs, callbacks=callbacks)


# %% [markdown]
# ## Masks that move: SET and RigL
#
# Both methods start from a random mask whose layer densities follow the ERK budget (Evci
# et al. 2020) and keep the number of weights fixed.  Every half epoch, until three
# quarters of the training (RigL's end of updates; used for SET too), they drop the
# smallest weights (RigL a fraction that decays to zero); SET (Mocanu et al. 2018) regrows as many
# connections uniformly at random, RigL (Evci et al. 2020) regrows those whose *dense*
# gradient is largest.  The first layer of LeNet-300-100 reads image pixels, so its mask
# can be drawn as an image: for each pixel, the share of hidden units still connected to
# it.


# %%
class MaskMovie(sl.train.Callback):
    """Snapshots of the first layer's mask at a few steps."""

    def __init__(self, at):
        self.at, self.frames = set(at), {}

    def on_train_begin(self, trainer):
        self.frames[0] = sl.masks.get_mask(trainer.model, "fc1.weight").clone()

    def on_step_end(self, trainer):
        if trainer.step in self.at:
            self.frames[trainer.step] = sl.masks.get_mask(trainer.model, "fc1.weight").clone()


t0 = recipes.task("lenet300", DATA, seed=SEED)
train0 = t0.loaders(RECIPE.batch_size)[0]
FREQUENCY = max(1, len(train0) // 2)  # mask updates every half epoch, in every run below
total_steps = EPOCHS * len(train0)
side = int(np.sqrt(np.prod(t0.bundle.input_shape)))
moments = [total_steps // 4, total_steps // 2, total_steps]
movies, changed = {}, {}
for name in ("set", "rigl"):
    method = registry.get(name, "training")(
        SPARSITY, budget="erk", update_frequency=FREQUENCY, seed=SEED
    )
    movie = MaskMovie(moments)
    fit(method, SEED, EPOCHS, callbacks=[movie])
    movies[name] = movie.frames
    first = movie.frames[0].bool()
    changed[name] = {
        s: float((f.bool() & ~first).sum() / first.sum()) for s, f in movie.frames.items()
    }

pixel_shares = {  # for each pixel, the share of hidden units reading it
    f"{name}, step {step}": frame.mean(0).reshape(side, side)
    for name, movie in movies.items()
    for step, frame in sorted(movie.items())
}
label = "share of hidden units reading the pixel"
title = "First-layer mask: share of hidden units reading each pixel (one colour scale)"
sl.viz.image_grid(pixel_shares, 4, vmin=0, colorbar=label, title=title, figsize=(9, 4.8))
plt.show()

# %% [markdown]
# How much moved, and where to?  Some pixels are blank in every training image (the
# border of the digit frames).  The data are standardised with one global mean and
# standard deviation, so such a pixel is the same nonzero constant in every image: a
# connection reading it only duplicates the unit's bias.

# %%
pixels = t0.bundle.train.tensors[0].flatten(1)
blank = pixels.std(0) < 1e-6


def blank_share(frame):
    """Share of the first layer's connections that read an always-blank pixel."""
    return float(frame[:, blank].sum() / frame.sum())


start = blank_share(movies["rigl"][0])
end = {name: blank_share(movies[name][total_steps]) for name in movies}
fewer = "fewer" if end["rigl"] < end["set"] else "no fewer"
sl.nb.md(
    f"By the end of training ({total_steps} steps, masks updated every {FREQUENCY}), "
    f"{changed['set'][total_steps]:.0%} of SET's first-layer connections and "
    f"{changed['rigl'][total_steps]:.0%} of RigL's are not in the initial random mask.  "
    f"{blank.float().mean():.0%} of the pixels are always blank; they hold {start:.1%} "
    f"of the initial random connections, {end['set']:.1%} of SET's final ones and "
    f"{end['rigl']:.1%} of RigL's: RigL, which grows where the gradient is large, keeps "
    f"{fewer} connections on always-blank pixels than SET, which grows at random "
    "(one seed)."
)

# %% [markdown]
# The layer budget is a parameter of every sparse-from-scratch method.  ERK gives a layer a
# density proportional to the sum of its dimensions over their product, so the small last
# layer stays dense long after the uniform budget has thinned it (on fully connected
# layers ER and ERK coincide; ERK's kernel dimensions matter for convolutions, see
# [05f](05f_rewinding_and_connectivity.ipynb)).  Move the sparsity in a live kernel (the
# book shows four).


# %%
def draw_budgets(ax, sparsity):
    """Each layer's density under the uniform, ER and ERK budgets at ``sparsity``."""
    shapes = {n: tuple(p.shape) for n, p in t0.build().named_parameters() if n.endswith("weight")}
    budgets = {b: sl.budgets.allocate(b, shapes, sparsity) for b in ["uniform", "er", "erk"]}
    sl.viz.grouped_bars(1 - pd.DataFrame(budgets).loc[list(shapes)], ax, width=0.27, fontsize=7)
    # one scale for every panel: from 1% kept to dense
    ax.set(yscale="log", ylim=(1e-2, 1.5), ylabel="density (kept share)")


sl.nb.explore(draw_budgets, sparsity=[0.5, 0.8, 0.9, 0.98])

# %% [markdown]
# ## Static, SET, RigL and GMP at about equal training FLOPs
#
# Gradual magnitude pruning (GMP) starts dense, so its early epochs cost as much as dense
# training; sparse-from-scratch methods pay only for the kept weights.  To compare at about
# equal cost, GMP trains for `EPOCHS` epochs, its training FLOPs are counted, and each
# sparse method gets as many epochs as that budget buys for a fixed mask (at most
# `MAX_FLOP_FACTOR` times more), as in the RigL paper's "2x" and "5x" runs.  Every training
# step is counted afterwards, so RigL pays extra for its dense gradients at mask updates;
# the table gives each method's share of GMP's training FLOPs.  Each sparse method runs
# with the ERK and the uniform layer budgets; the static baseline keeps its random mask.
# Differences between methods are paired: the same seed gives the same split,
# initialisation and batch order.


# %%
def per_epoch_flops(budget, seed):
    """Training FLOPs of one epoch of a fixed mask at SPARSITY with ``budget``."""
    m = recipes.task("lenet300", DATA, seed=seed).build()
    sl.prune(m, "random", SPARSITY, budget=budget)
    return recipes.training_flops(m, len(train0.dataset), 1)


def equal_flops(method, budget, seed):
    if method == "gmp":
        gmp = registry.get("gmp", "training")(SPARSITY, budget=budget, frequency=10)
        m, t, flops, _ = fit(gmp, seed, EPOCHS)
        epochs, updates = EPOCHS, 0
    else:
        # the budget GMP used with the same layer allocation and seed, spent as by a fixed
        # mask: RigL's dense-gradient steps are not in it (its measured cost is counted)
        reference = gmp_flops[(budget, seed)]
        affordable = max(1, int(reference // per_epoch_flops(budget, seed)))
        epochs = min(MAX_FLOP_FACTOR * EPOCHS, affordable)
        if method == "static":
            trainer = StaticSparse(SPARSITY, budget=budget, seed=seed)
        else:
            trainer = registry.get(method, "training")(
                SPARSITY, budget=budget, update_frequency=FREQUENCY, seed=seed
            )
        m, t, flops, _ = fit(trainer, seed, epochs)
        updates = len(trainer.log)
    cost = {"train_flops": flops.total, "epochs": epochs, "mask_updates": updates}
    r = recipes.evaluate_run(m, t, target_sparsity=SPARSITY)
    return {"accuracy": r["accuracy"], "flags": r["flags"], **cost}


budgets_compared = ["erk", "uniform"]
gmp_flops, rows = {}, []
for seed in SEEDS:
    for budget in budgets_compared:
        for method in ("gmp", "static", "set", "rigl"):  # GMP first: it sets the budget
            out = equal_flops(method, budget, seed)
            if method == "gmp":
                gmp_flops[(budget, seed)] = out["train_flops"]
            rows.append({"method": method, "budget": budget, "seed": seed, **out})
flops_results = pd.DataFrame(rows)
dense_flops = recipes.training_flops(t0.build(), len(train0.dataset), EPOCHS)

# %%
summary = sl.stats.summarize(flops_results, ["method", "budget"], "accuracy")
wide = summary.pivot(index="method", columns="budget").loc[["static", "set", "rigl", "gmp"]]
_, ax = plt.subplots(figsize=(7, 3.8))
sl.viz.grouped_bars(wide["mean"][budgets_compared], ax, low=wide["ci_low"],
                    high=wide["ci_high"], width=0.38, legend_title="budget")  # fmt: skip
ax.set(ylim=(max(0, summary["mean"].min() - 0.1), 1), ylabel="test accuracy")
ax.set_title(f"{SPARSITY:.0%} sparse LeNet-300-100, about GMP's training FLOPs")
plt.show()
cost = flops_results.groupby(["method", "budget"])[["epochs", "train_flops"]].mean()
gmp_cost = cost.xs("gmp", level="method")["train_flops"]
cost["x GMP's FLOPs"] = cost["train_flops"].div(gmp_cost, level="budget")
cost[f"x dense FLOPs ({epochs_text(EPOCHS)})"] = cost["train_flops"] / dense_flops
sl.nb.show_flags(sl.flags.table(flops_results, ["method", "budget"]))
accuracy_columns = {"mean": "accuracy", "ci_low": "acc_ci_low", "ci_high": "acc_ci_high"}
cost.join(
    summary.set_index(["method", "budget"])[list(accuracy_columns)].rename(columns=accuracy_columns)
).round(3)

# %%
# Paired differences (same seed) for the orderings the papers claim, with the ERK budget.
n_weights = sum(p.numel() for n, p in t0.build().named_parameters() if n.endswith("weight"))
flop_share = cost["train_flops"].xs("erk", level="budget") / cost.loc[("gmp", "erk"), "train_flops"]
sparse_epochs = int(cost.loc[("set", "erk"), "epochs"])
updates = flops_results.groupby("method")["mask_updates"].mean()
updates_text = (
    f"{updates['set']:.0f} mask updates per SET/RigL run"
    if updates["set"] == updates["rigl"]
    else f"{updates['set']:.0f} (SET) and {updates['rigl']:.0f} (RigL) mask updates per run"
)
dst_reason = (
    f"Measured on LeNet-300-100 ({n_weights:,} weights) on {len(t0.bundle.train):,} {DATA} "
    f"training images, {epochs_text(sparse_epochs)} and {updates_text}."
)
dst_verdicts, dst_diffs = {}, {}
for key, treatment, baseline in [("set_beats_static", "set", "static"),
                                 ("rigl_beats_set", "rigl", "set")]:  # fmt: skip
    dst_diffs[key] = sl.stats.paired(flops_results, "method", treatment, baseline,
                                     metric="accuracy", by="budget")  # fmt: skip
    setting = (
        f"{SPARSITY:.0%} sparse, ERK, {epochs_text(sparse_epochs)} each: {treatment} used "
        f"{flop_share[treatment]:.2f}x and {baseline} {flop_share[baseline]:.2f}x GMP's FLOPs"
    )
    erk_row = dst_diffs[key].set_index("budget").loc["erk"]
    dst_verdicts[key] = sl.claims.judge(key, erk_row, setting=setting, reason=dst_reason)
uniform = {key: diffs.set_index("budget").loc["uniform"] for key, diffs in dst_diffs.items()}
means = summary.set_index(["method", "budget"])["mean"]
sl.nb.md(
    f"Mean test accuracy with ERK: static {means['static', 'erk']:.2%}, SET "
    f"{means['set', 'erk']:.2%}, RigL {means['rigl', 'erk']:.2%}, GMP "
    f"{means['gmp', 'erk']:.2%} ({len(SEEDS)} seed(s)).  The sparse methods trained "
    f"{epochs_text(sparse_epochs)} against GMP's {EPOCHS}, at {flop_share['set']:.2f}x "
    f"(static, SET) and {flop_share['rigl']:.2f}x (RigL, whose updates need a dense gradient) "
    f"GMP's training FLOPs.  Paired, uniform budget: "
    f"{difference(uniform['set_beats_static'], 'SET', 'static')}; "
    f"{difference(uniform['rigl_beats_set'], 'RigL', 'SET')}.\n\n"
    + sl.claims.report(dst_verdicts.values())
)

# %% [markdown]
# ## Summary
#
# Dynamic sparse training keeps the number of weights fixed from the first step while the
# masks move: RigL grows where the dense gradient is large, SET grows at random
# ([04c](04c_acdc_and_cram.ipynb) trains models that start dense instead: AC/DC and
# CrAM).  What the runs above measured, against the papers' claims (every figure from the
# cells of this notebook):


# %%
erk = {m: means[m, "erk"] for m in ("static", "set", "rigl", "gmp")}
order = sorted(erk, key=erk.get, reverse=True)
neighbours = list(zip(order, order[1:], strict=False))
erk_runs = flops_results[flops_results.budget == "erk"]
ordered_pairs = [
    sl.stats.paired(erk_runs, "method", a, b, metric="accuracy").iloc[0] for a, b in neighbours
]
n_clear = sum(r["verdict"] in (sl.stats.BETTER, sl.stats.WORSE) for r in ordered_pairs)
budget_pairs = {
    m: sl.stats.paired(
        flops_results[flops_results.method == m], "budget", "erk", "uniform", metric="accuracy"
    ).iloc[0]  # fmt: skip
    for m in ("static", "set", "rigl")
}
all_verdicts = list(dst_verdicts.values())
sl.nb.md(
    f"- The sparse-from-scratch methods trained {epochs_text(sparse_epochs)} against "
    f"GMP's {EPOCHS}, at {flop_share['set']:.2f}x (static, SET) and "
    f"{flop_share['rigl']:.2f}x (RigL) GMP's training FLOPs; with ERK the mean test "
    f"accuracies (GMP included) are "
    + ", ".join(f"{m} {erk[m]:.2%}" for m in order)
    + f", and {n_clear} of the {len(ordered_pairs)} neighbouring pairs in that order "
    f"differ clearly (paired intervals: "
    + "; ".join(difference(r, a, b) for (a, b), r in zip(neighbours, ordered_pairs, strict=True))
    + ").\n- ERK minus the uniform budget, paired: "
    + "; ".join(
        f"{m}: the same test accuracy with both budgets on each of {int(r['n'])} seeds"
        if sl.stats.same_on_every_seed(r)
        else f"{m} {sl.stats.describe(r)}"
        for m, r in budget_pairs.items()
    )
    + ".\n- "
    + sl.words.claims_list(all_verdicts)
)
sl.claims.table(all_verdicts)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Train RigL as in the first section (ERK, seed `SEED`, `EPOCHS` epochs, masks
# updated every `FREQUENCY` steps) with `drop_fraction=0.5`, then with 0.  With 0.5, what
# share of its final first-layer connections are not in its initial mask?  Two decimals.
# Does the test accuracy move between the two, and which way?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache  # a check runs twice (your answer, then the solution's) on one training
def moved(name, **options):
    """Train ``name`` as in the first section: (share of fc1's final connections not in
    its initial mask, the final fc1 mask, test accuracy, the initial fc1 mask)."""
    method = registry.get(name, "training")(
        SPARSITY, budget="erk", update_frequency=FREQUENCY, seed=SEED, **options
    )
    movie = MaskMovie([total_steps])
    m, t, _, _ = fit(method, SEED, EPOCHS, callbacks=[movie])
    first, last = movie.frames[0].bool(), movie.frames[total_steps].bool()
    accuracy = recipes.evaluate_run(m, t)["accuracy"]
    return float((last & ~first).sum() / first.sum()), last, accuracy, first


def check_1(answer, solution=False):
    share = moved("rigl", drop_fraction=0.5)[0]
    hint = "Compare fc1's final mask with its mask at step 0, as `changed` does in section 1."
    sl.nb.check(1, answer, share, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_1 = None  # a fraction, e.g. 0.42
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  At every update RigL drops `drop_fraction` of each layer's kept weights (the
# fraction decays to 0 at three quarters of training) and regrows as many where the dense
# gradient is largest; with 0 nothing is dropped, so the mask stays the random one it
# started from.  The accuracies are of one seed: a difference, or none, needs more seeds to
# mean anything.  The share is counted here from the two raw masks, not with the check's
# formula: the final connections less those also there at step 0, over the initial count.
by_fraction = {f: moved("rigl", drop_fraction=f) for f in (0.0, 0.5)}
moved_share = {}
for f, (_, last, accuracy, first) in by_fraction.items():
    moved_share[f] = (last.sum().item() - (last & first).sum().item()) / first.sum().item()
    print(f"drop_fraction={f}: {moved_share[f]:.1%} of fc1 moved, test accuracy {accuracy:.2%}")
solution_1 = round(moved_share[0.5], 2)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Train SNFS (`registry.get("snfs", "training")`), which grows where the momentum is
# largest, as SET and RigL are trained in the first section.  What share of its final
# first-layer connections read an always-blank pixel (`blank_share`)?  Three decimals.
# Does it land between SET and RigL?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    share = blank_share(moved("snfs")[1])
    hint = 'Pass `budget="erk"` and `update_frequency=FREQUENCY`; `blank_share` the fc1 mask.'
    sl.nb.check(2, answer, share, hint=hint, tolerance=0.0005, solution=solution)


# %%
answer_2 = None  # a fraction, e.g. 0.123
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Momentum is a running mean of the dense gradient, so SNFS, like RigL, grows
# where the loss is sensitive, and a weight on a blank pixel only duplicates its unit's
# bias.  It also drops more per update (0.5 of the kept weights, RigL 0.3).
snfs = registry.get("snfs", "training")(
    SPARSITY, budget="erk", update_frequency=FREQUENCY, seed=SEED
)
snfs_model = fit(snfs, SEED, EPOCHS)[0]
solution_2 = round(blank_share(sl.masks.get_mask(snfs_model, "fc1.weight")), 3)
print(f"on blank pixels: SNFS {solution_2:.3f}, SET {end['set']:.3f}, RigL {end['rigl']:.3f}")
check_2(solution_2, solution=True)

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
# # Sparse training: growing connections, AC/DC and CrAM
#
# **What you will learn:** how a network can stay sparse for its whole training by
# pruning and regrowing connections (SET, RigL), how much that costs in training FLOPs
# compared with gradual pruning, how AC/DC trains a sparse and a dense model together,
# and how CrAM trains a dense model that survives one-shot pruning.
#
# This follows section 4 of the survey ("sparse training") and two papers of the same
# research line: AC/DC (Peste et al. 2021) and CrAM (Peste et al. 2023).

# %%
import copy
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes, registry
from sparsity_lab.methods.base import TrainingFlops
from sparsity_lab.methods.cram import one_shot
from sparsity_lab.methods.dynamic import StaticSparse

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
DATA = "mnist"
SPARSITY = 0.9
EPOCHS = 8
MAX_FLOP_FACTOR = 6  # enough epochs for the sparse methods to spend GMP's FLOPs
ACDC_EPOCHS = None  # None: the dense recipe's epochs, for AC/DC, GMP and the dense model
CRAM_DATA = "digits"
CRAM_EPOCHS = None  # None: the dense recipe's epochs, for CrAM, CrAM+ and SGD
ONE_SHOT_SPARSITIES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:2]
    DATA = "digits"
    EPOCHS = 2
    MAX_FLOP_FACTOR = 2
    ACDC_EPOCHS = 4
    CRAM_EPOCHS = 1
    ONE_SHOT_SPARSITIES = [0.5, 0.9]
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
# Every LeNet-300-100 run trains with the optimizer settings of the dense recipe.
RECIPE = recipes.recipe_for("lenet300", DATA)
TRAINING = {k: v for k, v in RECIPE.training().items() if k != "epochs"}


def build(seed, data=DATA, model="lenet300"):
    """A fresh model, its task and its loaders for one seed."""
    t = recipes.task(model, data, seed=seed)
    return t, t.build(), *t.loaders(RECIPE.batch_size)


def fit(method, seed, epochs, callbacks=()):
    """Train a fresh LeNet-300-100 with ``method``: (model, task, FLOP counter, history)."""
    t, m, train, val, test = build(seed)
    flops = TrainingFlops(method)
    history = method.fit(
        m, train, val, epochs=epochs, seed=seed, callbacks=[flops, *callbacks], **TRAINING
    )
    return m, t, flops, history


def evaluate(model, t, target=None):
    """Test accuracy and sanity flags (a layer pruned away, a target missed, ...)."""
    r = recipes.evaluate_run(model, t, target_sparsity=target)
    return {"accuracy": r["accuracy"], "flags": r["flags"]}


def epochs_text(n):
    return f"{n} epoch{'s' if n != 1 else ''}"


def same_on_every_seed(row):
    """True when every paired difference of a row of ``sl.stats.paired`` is exactly 0."""
    tolerance = sl.stats.SPREAD_TOLERANCE
    return row["n"] > 1 and row["std"] <= tolerance and abs(row["mean_diff"]) <= tolerance


def difference(row, treatment, baseline):
    """``"a minus b +1.0 points [...]"``, or that the two have the same accuracy on every seed
    (an interval of zero width around 0 says nothing more)."""
    if same_on_every_seed(row):
        return (
            f"{treatment} and {baseline} have the same test accuracy on each of "
            f"{int(row['n'])} seeds"
        )
    return f"{treatment} minus {baseline} {sl.stats.describe(row)}"


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


t0, _, train0, _, _ = build(SEED)
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

fig, axes = plt.subplots(2, 4, figsize=(9, 4.8), layout="constrained")
top = max(float(frame.mean(0).max()) for movie in movies.values() for frame in movie.values())
for row, name in enumerate(movies):
    for col, (step, frame) in enumerate(sorted(movies[name].items())):
        ax = axes[row, col]
        image = ax.imshow(frame.mean(0).reshape(side, side), vmin=0, vmax=top)
        ax.set_title(f"{name}, step {step}", fontsize=9)
        ax.axis("off")
fig.colorbar(image, ax=axes, label="share of hidden units reading the pixel", shrink=0.8)
fig.suptitle("First-layer mask: share of hidden units reading each pixel (one colour scale)")
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
display(
    Markdown(
        f"By the end of training ({total_steps} steps, masks updated every {FREQUENCY}), "
        f"{changed['set'][total_steps]:.0%} of SET's first-layer connections and "
        f"{changed['rigl'][total_steps]:.0%} of RigL's are not in the initial random mask.  "
        f"{blank.float().mean():.0%} of the pixels are always blank; they hold {start:.1%} "
        f"of the initial random connections, {end['set']:.1%} of SET's final ones and "
        f"{end['rigl']:.1%} of RigL's: RigL, which grows where the gradient is large, keeps "
        f"{fewer} connections on always-blank pixels than SET, which grows at random "
        "(one seed)."
    )
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
    x = np.arange(len(shapes))
    for i, budget in enumerate(["uniform", "er", "erk"]):
        layer_sparsity = sl.budgets.allocate(budget, shapes, sparsity)
        densities = [1 - layer_sparsity[n] for n in shapes]
        ax.bar(x + (i - 1) * 0.27, densities, width=0.27, label=budget)
    ax.set_xticks(x, list(shapes), fontsize=7)
    ax.set_yscale("log")
    ax.set_ylim(1e-2, 1.5)  # one scale for every panel: from 1% kept to dense
    ax.set_ylabel("density (kept share)")
    ax.legend(fontsize=7)


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
    t, m, train, _, _ = build(seed)
    sl.prune(m, "random", SPARSITY, budget=budget)
    return recipes.training_flops(m, len(train.dataset), 1)


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
    return {
        **evaluate(m, t, SPARSITY),
        "train_flops": flops.total,
        "epochs": epochs,
        "mask_updates": updates,
    }


budgets_compared = ["erk", "uniform"]
gmp_flops, rows = {}, []
for seed in SEEDS:
    for budget in budgets_compared:
        out = equal_flops("gmp", budget, seed)
        gmp_flops[(budget, seed)] = out["train_flops"]
        rows.append({"method": "gmp", "budget": budget, "seed": seed, **out})
        for method in ("static", "set", "rigl"):
            out = equal_flops(method, budget, seed)
            rows.append({"method": method, "budget": budget, "seed": seed, **out})
flops_results = pd.DataFrame(rows)
dense_flops = recipes.training_flops(build(SEED)[1], len(train0.dataset), EPOCHS)

# %%
summary = sl.stats.summarize(flops_results, ["method", "budget"], "accuracy")
fig, ax = plt.subplots(figsize=(7, 3.8))
methods = ["static", "set", "rigl", "gmp"]
width = 0.38
for i, budget in enumerate(budgets_compared):
    part = summary[summary["budget"] == budget].set_index("method").loc[methods]
    x = np.arange(len(methods)) + (i - 0.5) * width
    errors = (part["mean"] - part["ci_low"], part["ci_high"] - part["mean"])
    ax.bar(x, part["mean"], width, yerr=np.nan_to_num(errors), label=budget, capsize=3)
ax.set_xticks(np.arange(len(methods)), methods)
ax.set_ylim(max(0, summary["mean"].min() - 0.1), 1)
ax.set_ylabel("test accuracy")
ax.set_title(f"{SPARSITY:.0%} sparse LeNet-300-100, about GMP's training FLOPs")
ax.legend(title="budget")
plt.show()
cost = flops_results.groupby(["method", "budget"])[["epochs", "train_flops"]].mean()
gmp_cost = cost.xs("gmp", level="method")["train_flops"]
cost["x GMP's FLOPs"] = (
    cost["train_flops"] / gmp_cost.reindex(cost.index.get_level_values("budget")).to_numpy()
)
cost[f"x dense FLOPs ({epochs_text(EPOCHS)})"] = cost["train_flops"] / dense_flops
sl.nb.show_flags(sl.flags.table(flops_results, ["method", "budget"]))
accuracy_columns = {"mean": "accuracy", "ci_low": "acc_ci_low", "ci_high": "acc_ci_high"}
cost.join(
    summary.set_index(["method", "budget"])[list(accuracy_columns)].rename(columns=accuracy_columns)
).round(3)

# %%
# Paired differences (same seed) for the orderings the papers claim, with the ERK budget.
n_weights = sum(p.numel() for n, p in build(SEED)[1].named_parameters() if n.endswith("weight"))
flop_share = cost["train_flops"].xs("erk", level="budget") / cost.loc[("gmp", "erk"), "train_flops"]
sparse_epochs = int(cost.loc[("set", "erk"), "epochs"])
updates = flops_results.groupby("method")["mask_updates"].mean()
updates_text = (
    f"{updates['set']:.0f} mask updates per SET/RigL run"
    if updates["set"] == updates["rigl"]
    else f"{updates['set']:.0f} (SET) and {updates['rigl']:.0f} (RigL) mask updates per run"
)
here = (
    f"LeNet-300-100 ({n_weights:,} weights) on {len(t0.bundle.train):,} {DATA} training "
    f"images, {epochs_text(sparse_epochs)} and {updates_text}"
)


def dst_verdict(key, treatment, baseline):
    diffs = sl.stats.paired(flops_results, "method", treatment, baseline, metric="accuracy",
                            by="budget")  # fmt: skip
    row = diffs.set_index("budget").loc["erk"]
    setting = (
        f"{SPARSITY:.0%} sparse, ERK, {epochs_text(sparse_epochs)} each: {treatment} used "
        f"{flop_share[treatment]:.2f}x and {baseline} {flop_share[baseline]:.2f}x GMP's FLOPs"
    )
    v = sl.claims.judge(key, row, setting=setting, reason=f"Measured on {here}.")
    return v, diffs


dst_verdicts, dst_diffs = {}, {}
for key, treatment, baseline in [
    ("set_beats_static", "set", "static"),
    ("rigl_beats_set", "rigl", "set"),
]:
    dst_verdicts[key], dst_diffs[key] = dst_verdict(key, treatment, baseline)
means = summary.set_index(["method", "budget"])["mean"]
display(
    Markdown(
        f"Mean test accuracy with ERK: static {means['static', 'erk']:.2%}, SET "
        f"{means['set', 'erk']:.2%}, RigL {means['rigl', 'erk']:.2%}, GMP "
        f"{means['gmp', 'erk']:.2%} ({len(SEEDS)} seed(s)).  The sparse methods trained "
        f"{epochs_text(sparse_epochs)} against GMP's {EPOCHS}, at {flop_share['set']:.2f}x "
        f"(static, SET) and {flop_share['rigl']:.2f}x (RigL, whose updates need a dense gradient) "
        f"GMP's training FLOPs.  Paired, uniform budget: "
        + difference(
            dst_diffs["set_beats_static"].set_index("budget").loc["uniform"], "SET", "static"
        )
        + "; "
        + difference(dst_diffs["rigl_beats_set"].set_index("budget").loc["uniform"], "RigL", "SET")
        + "."
        "\n\n" + sl.claims.report(dst_verdicts.values())
    )
)

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
    kept = torch.cat(
        [sl.masks.weight(sparse, n).detach().flatten() for n in sl.masks.masks(sparse)]
    )
    regrown = torch.cat(
        [
            dense.get_parameter(n).detach().flatten()[~mask.bool().flatten()]
            for n, mask in sl.masks.masks(sparse).items()
        ]
    )
    end_dense = max(i for i, p in enumerate(history["phase"]) if p == "dense")
    last_dense = end_dense
    while last_dense > 0 and history["phase"][last_dense - 1] == "dense":
        last_dense -= 1  # back to the first epoch of the last decompressed phase
    # The largest rate of the last decompressed phase: the history's lr is the rate of an
    # epoch's last step, so the epoch before the phase gives the rate the phase starts at.
    lr_last_dense = max(history["lr"][max(last_dense - 1, 0) : end_dense + 1])
    acdc_members.append(
        {
            "seed": seed,
            "regrown_near_zero": float((regrown.abs() < NEAR_ZERO).float().mean()),
            "regrown_median": float(regrown.abs().median()),
            "kept_median": float(kept[kept != 0].abs().median()),
            "train_accuracy_before_last_dense": history["train_accuracy"][max(last_dense - 1, 0)],
            "train_loss_before_last_dense": history["train_loss"][max(last_dense - 1, 0)],
            "lr_last_dense": lr_last_dense,
            "lr_share_last_dense": lr_last_dense / TRAINING["lr"],  # the schedule's peak
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
fig, ax = plt.subplots(figsize=(7, 3.5))
for epoch, phase in enumerate(history["phase"]):
    if phase == "sparse":
        ax.axvspan(epoch - 0.5, epoch + 0.5, color="C1", alpha=0.15, lw=0)
ax.plot(history["epoch"], history["val_accuracy"], "o-", label="validation accuracy")
ax.set_xlabel("epoch (shaded: compressed phases)")
ax.set_ylabel("validation accuracy")
ax.set_title(f"AC/DC at {SPARSITY:.0%} sparsity")
plt.show()

summary_acdc = sl.stats.summarize(acdc_results, ["model"], "accuracy").set_index("model")
acdc_cost = acdc_results.groupby("model")["train_flops"].mean()
summary_acdc["x dense training FLOPs"] = acdc_cost / acdc_cost["dense baseline"]
acdc_pair = sl.stats.paired(acdc_results, "model", "AC/DC sparse", "GMP (sparse)",
                            metric="accuracy").iloc[0]  # fmt: skip
acdc_dense_pair = sl.stats.paired(acdc_results, "model", "AC/DC dense", "dense baseline",
                                  metric="accuracy").iloc[0]  # fmt: skip
acdc_member_pair = sl.stats.paired(acdc_results, "model", "AC/DC dense", "AC/DC sparse",
                                   metric="accuracy").iloc[0]  # fmt: skip
members = pd.DataFrame(acdc_members).mean(numeric_only=True)
# what the runs measured about the last decompressed phase (means over the seeds)
regrowth_causes = []
if members["train_accuracy_before_last_dense"] >= FITTED:
    regrowth_causes.append("training set was already fitted")
if members["lr_share_last_dense"] <= ANNEALED:
    regrowth_causes.append(f"learning rate had annealed to {members['lr_last_dense']:.1e}")
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
display(
    Markdown(
        f"Mean test accuracy ({len(SEEDS)} seed(s), {epochs_text(acdc_epochs)} each): AC/DC's "
        f"sparse model {summary_acdc.loc['AC/DC sparse', 'mean']:.2%}, GMP "
        f"{summary_acdc.loc['GMP (sparse)', 'mean']:.2%}; AC/DC's dense model "
        f"{summary_acdc.loc['AC/DC dense', 'mean']:.2%}, the dense model trained with its "
        f"recipe {summary_acdc.loc['dense baseline', 'mean']:.2%}.  Paired: "
        + difference(acdc_dense_pair, "AC/DC's dense member", "the dense model")
        + "; "
        + difference(acdc_member_pair, "AC/DC's dense member", "its sparse member")
        + ".\n\n"
        f"How dense is the dense member?  Of the weights the sparse member prunes, "
        f"{members['regrown_near_zero']:.0%} are below {NEAR_ZERO:g} in the dense member "
        f"(median magnitude {members['regrown_median']:.1e}, against "
        f"{members['kept_median']:.2f} for the weights the sparse member keeps; means over "
        f"the seeds).  Before the last decompressed phase the training accuracy was "
        f"{members['train_accuracy_before_last_dense']:.1%} (loss "
        f"{members['train_loss_before_last_dense']:.1e}); during that phase the learning "
        f"rate ({RECIPE.lr_schedule or 'constant'} schedule) was at most "
        f"{members['lr_last_dense']:.1e}, "
        f"{members['lr_share_last_dense']:.0%} of its peak.  "
        + (
            (
                "The "
                + " and the ".join(regrowth_causes)
                + ", so the weights that came back at zero stayed small"
                if regrowth_causes
                else "The weights that came back at zero stayed small"
            )
            + ": here the dense member is close to the sparse one, not the dense model the "
            "paper describes."
            if members["regrown_near_zero"] > 0.5
            else "The weights that came back grew, so the dense member is dense."
        )
        + "\n\n"
        + sl.claims.report([acdc_verdict])
    )
)
summary_acdc.round(4)

# %% [markdown]
# ## CrAM: a dense model that can be pruned in one shot
#
# CrAM (Peste et al. 2023) changes the optimizer: each step takes the gradient at a
# perturbed and *compressed* copy of the weights, `C_s(theta + rho * grad)`, with the
# sparsity `s` drawn at random from a list at every step.  CrAM+ adds the ordinary dense
# gradient to that step.  The model stays dense, but it learns to sit where pruning does
# little harm.  Afterwards it is pruned once by magnitude, with no fine-tuning, and the
# BatchNorm statistics are re-estimated on the training batches, since pruning shifts the
# activations they summarise.  The model here is the small ResNet, which has BatchNorm; the
# SGD baseline is its dense recipe (`recipes.dense`), and CrAM and CrAM+ train from the same
# initialisation with the same optimizer settings and epochs.

# %%
CRAM_RECIPE = recipes.recipe_for("resnet_small", CRAM_DATA)
CRAM_TRAINING = {k: v for k, v in CRAM_RECIPE.training().items() if k != "epochs"}
CRAM_SPARSITIES = [0.5, 0.7, 0.9]


def robustness(trainer, seed):
    if trainer == "sgd":
        t, m, dense_info = recipes.dense("resnet_small", CRAM_DATA, seed, epochs=CRAM_EPOCHS)
        epochs = dense_info["recipe"].epochs
        flops, base_flags = (
            recipes.training_flops(m, len(t.bundle.train), epochs),
            dense_info["flags"],
        )
    else:
        t = recipes.task("resnet_small", CRAM_DATA, seed=seed)
        m, (train, val, _) = t.build(), t.loaders(CRAM_RECIPE.batch_size)
        epochs = CRAM_EPOCHS or CRAM_RECIPE.epochs
        method = registry.get(trainer, "training")(
            0.7, sparsities=CRAM_SPARSITIES, budget="uniform", seed=seed
        )
        counter = TrainingFlops(method)
        method.fit(m, train, val, epochs=epochs, seed=seed, callbacks=[counter], **CRAM_TRAINING)
        flops, base_flags = counter.total, ""
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


def percents(values):
    """``"50%, 70% and 90%"``."""
    texts = [f"{v:.0%}" for v in values]
    return ", ".join(texts[:-1]) + " and " + texts[-1] if len(texts) > 1 else texts[0]


flagged_runs = (
    cram_results.assign(flagged=cram_results["flags"].fillna("").astype(str) != "")
    .groupby(["trainer", "sparsity"])["flagged"]
    .agg(["sum", "size"])
)
every_run_flagged = [
    s
    for s in [0.0, *ONE_SHOT_SPARSITIES]
    if all(flagged_runs.loc[(t, s), "sum"] == flagged_runs.loc[(t, s), "size"] for t in cram_names)
]
other_flags = {
    t: [
        f"{s:.0%} ({flagged_runs.loc[(t, s), 'sum']} of {flagged_runs.loc[(t, s), 'size']} runs)"
        for s in [0.0, *ONE_SHOT_SPARSITIES]
        if s not in every_run_flagged and flagged_runs.loc[(t, s), "sum"] > 0
    ]
    for t in cram_names
}
if flagged_runs["sum"].any():
    beyond = (
        f", beyond the sparsities CrAM and CrAM+ train for ({percents(CRAM_SPARSITIES)})"
        if every_run_flagged and min(every_run_flagged) > max(CRAM_SPARSITIES)
        else ""
    )
    elsewhere = "; ".join(f"{cram_names[t]} at {', '.join(v)}" for t, v in other_flags.items() if v)
    display(
        Markdown(
            (
                f"At {percents(every_run_flagged)} sparsity{beyond}, every run of every "
                "trainer is flagged (the table gives the checks that fired); "
                if every_run_flagged
                else "No sparsity has every run of every trainer flagged; "
            )
            + (f"other flagged runs: {elsewhere}." if elsewhere else "no other run is flagged.")
        )
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
cram_here = (
    f"a small ResNet ({cram_weights:,} weights) trained {epochs_text(cram_epochs)} on "
    f"{len(cram_task.bundle.train):,} {CRAM_DATA} images"
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
        status = sl.claims.decide(
            claim.relation, row["ci_low"], row["ci_high"], int(row["n"]), claim.margin
        )
        measured = (
            f"{cram_names[trainer]} is worse than SGD, though not clearly by more than the "
            f"claim's margin ({100 * claim.margin:.1f} points)."
            if row["verdict"] == sl.stats.WORSE
            and claim.relation == "at_least"
            and status == sl.claims.INCONCLUSIVE
            else ""
        )
        cram_verdicts.append(
            sl.claims.judge(
                claim, row, setting=setting, reason=f"Measured on {cram_here}.", measured=measured
            )
        )
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


display(
    Markdown(
        f"Dense test accuracy ({len(SEEDS)} seed(s)): SGD {curve.loc[0.0, 'sgd']:.2%}, CrAM "
        f"{curve.loc[0.0, 'cram']:.2%}, CrAM+ {curve.loc[0.0, 'cram_plus']:.2%}.  Pruned in "
        f"one shot to {probe:.0%}, the accuracy changes by {points(-drop.loc[probe, 'sgd'])} "
        f"points for SGD, {points(-drop.loc[probe, 'cram'])} for CrAM and "
        f"{points(-drop.loc[probe, 'cram_plus'])} for CrAM+.  {dense_context}\n\n"
        + sl.claims.report(cram_verdicts)
    )
)
curve.round(4)

# %% [markdown]
# ## Summary
#
# Dynamic sparse training keeps the number of weights fixed from the first step while the
# masks move: RigL grows where the dense gradient is large, SET grows at random.  AC/DC
# and CrAM start dense and learn to live near a sparse model.  What the runs above
# measured, against the papers' claims (every figure from the cells of this notebook):


# %%
erk = {m: means[m, "erk"] for m in ("static", "set", "rigl", "gmp")}
order = sorted(erk, key=erk.get, reverse=True)
ordered_pairs = [
    sl.stats.paired(
        flops_results[flops_results.budget == "erk"], "method", a, b, metric="accuracy"
    ).iloc[0]  # fmt: skip
    for a, b in zip(order, order[1:], strict=False)
]
n_clear = sum(r["verdict"] in (sl.stats.BETTER, sl.stats.WORSE) for r in ordered_pairs)
budget_pairs = {
    m: sl.stats.paired(
        flops_results[flops_results.method == m], "budget", "erk", "uniform", metric="accuracy"
    ).iloc[0]  # fmt: skip
    for m in ("static", "set", "rigl")
}
all_verdicts = [*dst_verdicts.values(), acdc_verdict, *cram_verdicts]
counts = pd.Series([v.status for v in all_verdicts]).value_counts()
display(
    Markdown(
        f"- The sparse-from-scratch methods trained {epochs_text(sparse_epochs)} against "
        f"GMP's {EPOCHS}, at {flop_share['set']:.2f}x (static, SET) and "
        f"{flop_share['rigl']:.2f}x (RigL) GMP's training FLOPs; with ERK the mean test "
        f"accuracies (GMP included) are "
        + ", ".join(f"{m} {erk[m]:.2%}" for m in order)
        + f", and {n_clear} of the {len(ordered_pairs)} neighbouring pairs in that order "
        f"differ clearly (paired intervals: "
        + "; ".join(
            difference(r, a, b)
            for (a, b), r in zip(zip(order, order[1:], strict=False), ordered_pairs, strict=True)
        )
        + ").\n"
        "- ERK minus the uniform budget, paired: "
        + "; ".join(
            f"{m}: the same test accuracy with both budgets on each of {int(r['n'])} seeds"
            if same_on_every_seed(r)
            else f"{m} {sl.stats.describe(r)}"
            for m, r in budget_pairs.items()
        )
        + ".\n"
        "- Paired: "
        + difference(acdc_dense_pair, "AC/DC's dense member", "the recipe's dense model")
        + "; "
        + difference(acdc_member_pair, "AC/DC's dense member", "its sparse member")
        + "; of the weights AC/DC's sparse member prunes, "
        f"{members['regrown_near_zero']:.0%} are below {NEAR_ZERO:g} in the dense member.\n"
        f"- Of {len(all_verdicts)} tests of published claims, "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + " (the sections above give each with its paper, its numbers and, when it is not "
        "reproduced, the measured setting):\n"
        + "\n".join(
            f"  - {v.claim.statement} ({v.claim.paper.split(',')[0]}; {v.setting}): "
            f"**{v.status}**, {v.claim.treatment} minus {v.claim.baseline} {v.numbers()}"
            + (f" (sanity flags: {v.flagged})" if v.flagged else "")
            for v in all_verdicts
        )
    )
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
# How does the test accuracy move between the two?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def moved(name, **options):
    """Train ``name`` as in the first section: (share of fc1's final connections not in
    its initial mask, the final fc1 mask, test accuracy)."""
    method = registry.get(name, "training")(
        SPARSITY, budget="erk", update_frequency=FREQUENCY, seed=SEED, **options
    )
    movie = MaskMovie([total_steps])
    m, t, _, _ = fit(method, SEED, EPOCHS, callbacks=[movie])
    first, last = movie.frames[0].bool(), movie.frames[total_steps].bool()
    return float((last & ~first).sum() / first.sum()), last, evaluate(m, t)["accuracy"]


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
# started from.  The accuracies are of one seed: their difference needs more seeds to mean
# anything.
by_fraction = {f: moved("rigl", drop_fraction=f) for f in (0.0, 0.5)}
for f, (share, _, accuracy) in by_fraction.items():
    print(f"drop_fraction={f}: {share:.1%} of fc1's mask moved, test accuracy {accuracy:.2%}")
solution_1 = round(by_fraction[0.5][0], 2)
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

# %% [markdown]
# **3.** Give AC/DC phases twice as long as its default (`phase_epochs=2 *
# acdc.epochs_of(acdc_epochs)[1]`) and train it on seed `SEED` as above.  Of the weights
# its sparse member prunes, what share is below `NEAR_ZERO` in its dense member?  Two
# decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def near_zero(phase_epochs):
    """AC/DC on seed SEED: the share of the weights its sparse member prunes that are
    below NEAR_ZERO in its dense member."""
    method = registry.get("acdc", "training")(SPARSITY, phase_epochs=phase_epochs, seed=SEED)
    sparse, dense = method.pair(fit(method, SEED, acdc_epochs)[0])
    pruned = [dense.get_parameter(n).detach()[~k.bool()] for n, k in sl.masks.masks(sparse).items()]
    return float((torch.cat(pruned).abs() < NEAR_ZERO).float().mean())


def check_3(answer, solution=False):
    share = near_zero(2 * acdc.epochs_of(acdc_epochs)[1])
    hint = "Take `acdc.pair(model)` and look at the dense member where the sparse mask is 0."
    sl.nb.check(3, answer, share, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_3 = None  # a fraction
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  The dense member is the model at the end of the last decompressed phase; a
# longer phase gives the weights that came back at zero more steps to grow, unless the
# learning rate has annealed by then (compare with the default phases' share, same seed).
longer = 2 * acdc.epochs_of(acdc_epochs)[1]
solution_3 = round(near_zero(longer), 2)
default = next(r["regrown_near_zero"] for r in acdc_members if r["seed"] == SEED)
print(f"phases of {longer} epochs: {solution_3:.2f} near zero; default phases: {default:.2f}")
check_3(solution_3, solution=True)

# %% [markdown]
# **4.** Train CrAM with a single sparsity: as in the CrAM section, on seed `SEED` (the same
# optimizer settings, epochs and uniform budget), but with `sparsities=[0.9]`.  Prune it in
# one shot to 90% as the section does (`one_shot(model, 0.9, data=train,
# budget="uniform")` on a copy, with `train` a fresh training loader of the task,
# `t.loaders(CRAM_RECIPE.batch_size)[0]`).  By how many points is its test accuracy above
# that of the section's CrAM (trained on `CRAM_SPARSITIES`) pruned to 90%, on seed `SEED`
# (in `cram_results`)?  One decimal, negative when below.  Which sparsities does it protect?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
import functools


@functools.cache
def cram_single():
    """CrAM trained as in the CrAM section on seed SEED, drawing 90% at every step:
    ``(model, task)``."""
    t = recipes.task("resnet_small", CRAM_DATA, seed=SEED)
    m, (train, val, _) = t.build(), t.loaders(CRAM_RECIPE.batch_size)
    method = registry.get("cram", "training")(0.9, sparsities=[0.9], budget="uniform", seed=SEED)
    epochs = CRAM_EPOCHS or CRAM_RECIPE.epochs
    method.fit(m, train, val, epochs=epochs, seed=SEED, **CRAM_TRAINING)
    return m, t


def section_cram(sparsity):
    """Test accuracy of the section's CrAM on seed SEED, pruned in one shot to ``sparsity``."""
    rows = cram_results[(cram_results["trainer"] == "cram") & (cram_results["seed"] == SEED)]
    return rows.set_index("sparsity").loc[sparsity, "accuracy"]


def check_4(answer, solution=False):
    m, t = cram_single()
    train = t.loaders(CRAM_RECIPE.batch_size)[0]
    pruned = one_shot(copy.deepcopy(m), 0.9, data=train, budget="uniform")
    gain = 100 * (evaluate(pruned, t, 0.9)["accuracy"] - section_cram(0.9))
    hint = "Prune a copy with `one_shot` and a fresh training loader; subtract the section's row."
    sl.nb.check(4, answer, gain, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_4 = None  # points, e.g. 3.5
check_4(answer_4)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 4.  Each CrAM step takes its gradient at the weights compressed to the sparsity
# drawn; with the single sparsity 90% every step prepares the model for that cut, where the
# section's list spreads the steps over 50%, 70% and 90%.  A model that survives 90% keeps
# its largest weights at lower sparsities too, so the protection can reach below 90%, but
# only the curves say how far (one seed: a difference of a few points may be noise).  By
# hand: the smallest weights of every convolution and linear layer zeroed (the same share in
# each, the uniform budget), the BatchNorm statistics averaged again over one pass of the
# training batches, the test accuracy from the logits.
model_4, task_4 = cram_single()
x_test_4, y_test_4 = task_4.bundle.test.tensors


def pruned_accuracy(model, sparsity):
    """Test accuracy of a copy of ``model`` pruned by hand to ``sparsity`` in every layer."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
                size = module.weight.abs()
                k = round(sparsity * size.numel())
                if k > 0:
                    module.weight.mul_(size > size.flatten().kthvalue(k).values)
        model.eval()
        for norm in model.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                norm.reset_running_stats()
                norm.momentum = None  # a plain average over the batches
                norm.train()
        for x, _ in task_4.loaders(CRAM_RECIPE.batch_size)[0]:
            model(x)
        model.eval()
        return float((model(x_test_4).argmax(dim=1) == y_test_4).float().mean())


for s in ONE_SHOT_SPARSITIES:
    print(
        f"pruned to {s:.0%}: CrAM on 90% only {pruned_accuracy(model_4, s):.2%}, "
        f"the section's CrAM {section_cram(s):.2%}"
    )
solution_4 = round(100 * (pruned_accuracy(model_4, 0.9) - section_cram(0.9)), 1)
print(f"at 90%: {solution_4:+.1f} points")
check_4(solution_4, solution=True)

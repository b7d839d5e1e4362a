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

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
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
MAX_FLOP_FACTOR = 3
ACDC_EPOCHS = 15
CRAM_DATA = "digits"
CRAM_EPOCHS = 15
ONE_SHOT_SPARSITIES = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:1]
    DATA = "digits"
    EPOCHS = 3
    MAX_FLOP_FACTOR = 2
    ACDC_EPOCHS = 5
    CRAM_EPOCHS = 1
    ONE_SHOT_SPARSITIES = [0.5, 0.9]
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)


def build(seed, data=DATA, model="lenet300"):
    """A fresh model, its task and its loaders for one seed."""
    t = recipes.task(model, data, seed=seed)
    return t, t.build(), *t.loaders()


def fit(method, seed, epochs, callbacks=()):
    """Train a fresh LeNet-300-100 with ``method``: (model, task, FLOP counter, history)."""
    t, m, train, val, test = build(seed)
    flops = TrainingFlops(method)
    history = method.fit(
        m,
        train,
        val,
        epochs=epochs,
        lr=0.05,
        lr_schedule="cosine",
        seed=seed,
        callbacks=[flops, *callbacks],
    )
    return m, t, flops, history


def test_accuracy(model, t):
    return sl.train.evaluate(model, t.loaders()[2])["accuracy"]


# %% [markdown]
# ## Masks that move: SET and RigL
#
# Both methods start from a random mask whose layer densities follow the ERK budget (Evci
# et al. 2020) and keep the number of weights fixed.  Every few steps they drop the
# smallest weights; SET (Mocanu et al. 2018) regrows as many connections uniformly at
# random, RigL (Evci et al. 2020) regrows those whose *dense* gradient is largest.  The
# first layer of LeNet-300-100 reads image pixels, so its mask can be drawn as an image:
# for each pixel, the share of hidden units still connected to it.


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
total_steps = EPOCHS * len(train0)
side = int(np.sqrt(np.prod(t0.bundle.input_shape)))
moments = [total_steps // 4, total_steps // 2, total_steps]
movies, changed = {}, {}
for name in ("set", "rigl"):
    frequency = max(1, len(train0) // 2)
    method = registry.get(name, "training")(
        SPARSITY, budget="erk", update_frequency=frequency, seed=SEED
    )
    movie = MaskMovie(moments)
    fit(method, SEED, EPOCHS, callbacks=[movie])
    movies[name] = movie.frames
    first = movie.frames[0].bool()
    changed[name] = {
        s: float((f.bool() & ~first).sum() / first.sum()) for s, f in movie.frames.items()
    }

fig, axes = plt.subplots(2, 4, figsize=(9, 4.8))
for row, name in enumerate(movies):
    for col, (step, frame) in enumerate(sorted(movies[name].items())):
        ax = axes[row, col]
        ax.imshow(frame.mean(0).reshape(side, side), vmin=0, vmax=frame.mean(0).max())
        ax.set_title(f"{name}, step {step}", fontsize=9)
        ax.axis("off")
fig.suptitle("First-layer mask: share of hidden units reading each pixel")
fig.tight_layout()
plt.show()

# %% [markdown]
# How much moved, and where to?  Some pixels are blank in every training image (the
# border of the digit frames): a connection reading them can never help.

# %%
pixels = t0.bundle.train.tensors[0].flatten(1)
blank = pixels.std(0) < 1e-6


def blank_share(frame):
    """Share of the first layer's connections that read an always-blank pixel."""
    return float(frame[:, blank].sum() / frame.sum())


start = blank_share(movies["rigl"][0])
end = {name: blank_share(movies[name][total_steps]) for name in movies}
fewer = "fewer" if end["rigl"] < end["set"] else "more"
display(
    Markdown(
        f"By the end of training, {changed['set'][total_steps]:.0%} of SET's first-layer "
        f"connections and {changed['rigl'][total_steps]:.0%} of RigL's are not in the "
        f"initial random mask.  {blank.float().mean():.0%} of the pixels are always blank; "
        f"they hold {start:.1%} of the initial random connections, {end['set']:.1%} of "
        f"SET's final ones and {end['rigl']:.1%} of RigL's: RigL, which grows where the "
        f"gradient is large, keeps {fewer} connections on useless pixels than SET, which "
        f"grows at random."
    )
)

# %% [markdown]
# ## Static, SET, RigL and GMP at equal training FLOPs
#
# Gradual magnitude pruning (GMP) starts dense, so its early epochs cost as much as dense
# training; sparse-from-scratch methods pay only for the kept weights.  To compare at equal
# cost, GMP trains for `EPOCHS` epochs, its training FLOPs are counted, and each sparse
# method gets as many epochs as that budget buys (at most `MAX_FLOP_FACTOR` times more),
# as in the RigL paper's "2x" and "5x" runs.  Each sparse method runs with the ERK and the
# uniform layer budgets; the static baseline keeps its random mask.


# %%
def per_epoch_flops(budget, seed):
    """Training FLOPs of one epoch of a fixed mask at SPARSITY with ``budget``."""
    t, m, train, _, _ = build(seed)
    sl.prune(m, "random", SPARSITY, budget=budget)
    forward = sl.report(m)["sparse_flops"].iloc[-1]
    return 3 * forward * len(train.dataset)


def equal_flops(method, budget, seed):
    if method == "gmp":
        gmp = registry.get("gmp", "training")(SPARSITY, budget=budget, frequency=10)
        m, t, flops, _ = fit(gmp, seed, EPOCHS)
        epochs = EPOCHS
    else:
        # the budget GMP used with the same layer allocation and seed
        reference = gmp_flops[(budget, seed)]
        affordable = max(1, int(reference // per_epoch_flops(budget, seed)))
        epochs = min(MAX_FLOP_FACTOR * EPOCHS, affordable)
        cls = StaticSparse if method == "static" else registry.get(method, "training")
        m, t, flops, _ = fit(cls(SPARSITY, budget=budget, seed=seed), seed, epochs)
    return {"test_accuracy": test_accuracy(m, t), "train_flops": flops.total, "epochs": epochs}


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
dense_flops = 3 * sl.report(build(SEED)[1])["dense_flops"].iloc[-1] * len(train0.dataset) * EPOCHS

# %%
summary = sl.experiments.summarize(flops_results, ["method", "budget"], "test_accuracy")
fig, ax = plt.subplots(figsize=(7, 3.8))
methods = ["static", "set", "rigl", "gmp"]
width = 0.38
for i, budget in enumerate(budgets_compared):
    part = summary[summary["budget"] == budget].set_index("method").loc[methods]
    x = np.arange(len(methods)) + (i - 0.5) * width
    ax.bar(x, part["mean"], width, yerr=part["ci_high"] - part["mean"], label=budget, capsize=3)
ax.set_xticks(np.arange(len(methods)), methods)
ax.set_ylim(max(0, summary["mean"].min() - 0.1), 1)
ax.set_ylabel("test accuracy")
ax.set_title(f"{SPARSITY:.0%} sparse LeNet-300-100 at GMP's training FLOPs")
ax.legend(title="budget")
plt.show()
table = flops_results.groupby(["method", "budget"])[["epochs", "train_flops"]].mean()
table["x dense training"] = table["train_flops"] / dense_flops
table.join(summary.set_index(["method", "budget"])[["mean", "ci_low", "ci_high"]]).round(3)

# %%
means = summary.set_index(["method", "budget"])["mean"]
display(
    Markdown(
        f"With ERK, static reaches {means['static', 'erk']:.2%}, SET {means['set', 'erk']:.2%}, "
        f"RigL {means['rigl', 'erk']:.2%} and GMP {means['gmp', 'erk']:.2%}; with the "
        f"uniform budget RigL reaches {means['rigl', 'uniform']:.2%} "
        f"(mean of {len(SEEDS)} seed(s), each at the training FLOPs of GMP)."
    )
)

# %% [markdown]
# ## AC/DC: a sparse and a dense model from one run
#
# AC/DC (Peste et al. 2021) warms up dense, then alternates *compressed* phases (prune to
# the target by magnitude, train with the mask) with *decompressed* phases (the pruned
# weights come back at zero and everything trains), and ends with a compressed
# fine-tune.  The end of the last dense phase and the end of the run form a pair: a dense
# model that has learned to live near a sparse one, and that sparse model.

# %%
acdc_rows = []
for seed in SEEDS:
    acdc = registry.get("acdc", "training")(SPARSITY, seed=seed)
    m, t, _, history = fit(acdc, seed, ACDC_EPOCHS)
    sparse, dense = acdc.pair(m)
    dense_model, _ = recipes.train_dense(t, epochs=ACDC_EPOCHS, cache_dir=False)
    gmp = registry.get("gmp", "training")(SPARSITY, frequency=10, seed=seed)
    gmp_model, _, _, _ = fit(gmp, seed, ACDC_EPOCHS)
    acdc_rows += [
        {"model": "AC/DC sparse", "seed": seed, "accuracy": test_accuracy(sparse, t)},
        {"model": "AC/DC dense", "seed": seed, "accuracy": test_accuracy(dense, t)},
        {"model": "GMP (sparse)", "seed": seed, "accuracy": test_accuracy(gmp_model, t)},
        {"model": "dense baseline", "seed": seed, "accuracy": test_accuracy(dense_model, t)},
    ]
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

summary_acdc = sl.experiments.summarize(acdc_results, ["model"], "accuracy").set_index("model")
display(
    Markdown(
        f"AC/DC's sparse model reaches {summary_acdc.loc['AC/DC sparse', 'mean']:.2%} test "
        f"accuracy against {summary_acdc.loc['GMP (sparse)', 'mean']:.2%} for GMP; its dense "
        f"model {summary_acdc.loc['AC/DC dense', 'mean']:.2%} against "
        f"{summary_acdc.loc['dense baseline', 'mean']:.2%} for dense training "
        f"(mean of {len(SEEDS)} seed(s), {ACDC_EPOCHS} epochs each)."
    )
)
summary_acdc.round(4)

# %% [markdown]
# ## CrAM: a dense model that can be pruned in one shot
#
# CrAM (Peste et al. 2023) changes the optimizer: each step takes the gradient at a
# perturbed and *compressed* copy of the weights, `C_s(theta + rho * grad)`, with the
# sparsity `s` drawn at random from a list at every step.  The model stays dense, but it
# learns to sit where pruning does little harm.  Afterwards it is pruned once by
# magnitude, with no fine-tuning, and the BatchNorm statistics are re-estimated on a few
# training batches, since pruning shifts the activations they summarise.  The model here
# is the small ResNet, which has BatchNorm; the baseline trains the same way with SGD.


# %%
def robustness(trainer, seed):
    t, m, train, val, test = build(seed, CRAM_DATA, "resnet_small")
    options = dict(epochs=CRAM_EPOCHS, lr=0.05, lr_schedule="cosine", seed=seed)
    if trainer == "cram":
        method = registry.get("cram", "training")(
            0.7, sparsities=[0.5, 0.7, 0.9], budget="uniform", seed=seed
        )
        method.fit(m, train, val, **options)
    else:
        sl.train.fit(m, train, val, **options)
    rows = [{"sparsity": 0.0, "accuracy": sl.train.evaluate(m, test)["accuracy"]}]
    for s in ONE_SHOT_SPARSITIES:
        pruned = one_shot(copy.deepcopy(m), s, data=train, budget="uniform")
        rows.append({"sparsity": s, "accuracy": sl.train.evaluate(pruned, test)["accuracy"]})
    return pd.DataFrame(rows).assign(trainer=trainer, seed=seed)


cram_results = pd.concat(
    [robustness(trainer, seed) for seed in SEEDS for trainer in ("sgd", "cram")],
    ignore_index=True,
)
fig, ax = plt.subplots(figsize=(6.5, 4))
sl.viz.sparsity_curve(cram_results, x="sparsity", y="accuracy", hue="trainer", ax=ax)
ax.set_title("One-shot magnitude pruning + BatchNorm re-estimation, no fine-tuning")
plt.show()

# %%
curve = sl.experiments.summarize(cram_results, ["trainer", "sparsity"], "accuracy").pivot(
    index="sparsity", columns="trainer", values="mean"
)
drop = curve.loc[0.0] - curve
probe = [s for s in ONE_SHOT_SPARSITIES if s <= 0.8][-1]
display(
    Markdown(
        f"Pruned in one shot to {probe:.0%}, the CrAM model's test accuracy changes by "
        f"{-100 * drop.loc[probe, 'cram']:+.1f} points and the SGD model's by "
        f"{-100 * drop.loc[probe, 'sgd']:+.1f} (dense accuracies {curve.loc[0.0, 'cram']:.2%} "
        f"and {curve.loc[0.0, 'sgd']:.2%})."
    )
)
curve.round(4)

# %% [markdown]
# ## Summary
#
# Dynamic sparse training keeps the number of weights fixed from the first step while the
# masks move: RigL grows where the dense gradient is large, SET grows at random.  What the
# runs above measured (every figure from the cells of this notebook):


# %%
def gap(a, b):
    """``a - b`` in points, phrased with its sign."""
    return f"{abs(100 * (a - b)):.1f} points {'above' if a >= b else 'below'}"


acdc = summary_acdc["mean"]
erk = {m: means[m, "erk"] for m in ("static", "set", "rigl", "gmp")}
ranking = " > ".join(sorted(erk, key=erk.get, reverse=True))
erk_wins = [m for m in ("static", "set", "rigl") if means[m, "erk"] >= means[m, "uniform"]]
epochs_used = flops_results.groupby("method")["epochs"].mean()
sparse_ok = acdc["AC/DC sparse"] >= acdc["GMP (sparse)"] - 0.01
dense_ok = acdc["AC/DC dense"] >= acdc["dense baseline"] - 0.005
cram_drop, sgd_drop = drop.loc[probe, "cram"], drop.loc[probe, "sgd"]
cram_less = cram_drop < sgd_drop
display(
    Markdown(
        f"- At equal training FLOPs RigL trained "
        f"{epochs_used['rigl'] / epochs_used['gmp']:.1f}x as many epochs as GMP; with ERK "
        f"the ranking by test accuracy is {ranking}.\n"
        f"- ERK was at least as good as the uniform budget for {len(erk_wins)} of the 3 "
        f"sparse-from-scratch methods ({', '.join(erk_wins) or 'none'}).\n"
        f"- AC/DC's sparse model is {gap(acdc['AC/DC sparse'], acdc['GMP (sparse)'])} GMP "
        f"({'within' if sparse_ok else 'not within'} the expected 1 point), and its dense "
        f"model {gap(acdc['AC/DC dense'], acdc['dense baseline'])} the separately trained "
        f"dense model ({'within' if dense_ok else 'not within'} the expected 0.5 points).\n"
        f"- Pruned in one shot to {probe:.0%} with BatchNorm re-estimation, CrAM's test "
        f"accuracy changed by {-100 * cram_drop:+.1f} points and SGD's by "
        f"{-100 * sgd_drop:+.1f}: CrAM {'lost less' if cram_less else 'did not lose less'} "
        f"than SGD, {'within' if cram_drop <= 0.01 else 'beyond'} the loss of at most 1 "
        f"point the paper reports."
    )
)

# %% [markdown]
# ## Exercises
#
# 1. Set RigL's `drop_fraction` to 0 (a static mask) and to 0.5. How does accuracy move?
# 2. Train SNFS (`registry.get("snfs", "training")`) in the equal-FLOPs comparison. Where
#    does growth by momentum land between SET and RigL?
# 3. Give AC/DC longer phases (`phase_epochs`). What happens to the dense member?
# 4. Train CrAM with a single sparsity (`sparsities=[0.9]`) and draw the robustness curve
#    again. Which sparsities does it protect?

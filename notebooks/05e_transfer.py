# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: sparsity_lab
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
#   sparsity_lab:
#     runs_alone: true
# ---

# %% [markdown]
# # Transfer of sparse models
#
# **What you will learn:** whether the features of a sparse network trained on one task
# serve another task as well as dense features, how the answer depends on the pruning
# method, and how it differs between linear probing (frozen features, new head) and full
# fine-tuning (everything trains, the mask stays).
#
# This follows section 8 of the survey and the seed paper "How well do sparse ImageNet
# models transfer?" (Iofinova et al. 2022).  The code lives in
# `sparsity_lab.phenomena.transfer`.

# %%
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.phenomena import transfer

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITY = 0.9
UPSTREAM_EPOCHS = {"lenet300": None, "cnn1d": None}  # None: the recipe's
DOWNSTREAM_EPOCHS = 10
VARIANT_SAMPLES = 2000
# the sparse methods each model trains upstream (of transfer.UPSTREAM): all five on
# LeNet-300-100; on the 1-D CNN, whose recipe trains 200 epochs, GMP, AC/DC and RigL
UPSTREAM = {"lenet300": ["gmp", "acdc", "rigl", "imp", "l1"], "cnn1d": ["gmp", "acdc", "rigl"]}

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:1]
    UPSTREAM_EPOCHS = {"lenet300": 2, "cnn1d": 3}
    DOWNSTREAM_EPOCHS = 1
    VARIANT_SAMPLES = 800
    UPSTREAM = {
        "lenet300": ["gmp", "acdc", "rigl", "imp", "l1"],
        "cnn1d": ["gmp", "acdc", "rigl", "imp", "l1"],
    }
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## Two upstream/downstream pairs
#
# - **MNIST subset → digits**: LeNet-300-100 learns the 28x28 MNIST subset; downstream it
#   reads scikit-learn's 8x8 digits, upsampled to 28x28 (`transfer.resized`).
# - **MNIST-1D → MNIST-1D variant**: the 1-D CNN learns MNIST-1D; downstream the signals
#   are regenerated from time-reversed templates with twice the noise
#   (`transfer.mnist1d_variant`).
#
# The sizes of the downstream sets (train / validation / test):

# %%
digits = recipes.task("lenet300", "digits", seed=SEED).bundle
downstream = {
    "lenet300": transfer.resized(digits, 28),
    "cnn1d": transfer.mnist1d_variant(seed=SEED, num_samples=VARIANT_SAMPLES),
}
upstream_data = {"lenet300": "mnist", "cnn1d": "mnist1d"}
for name, b in downstream.items():
    print(name, b.name, b.input_shape, len(b.train), len(b.val), len(b.test))

# %% [markdown]
# Upstream, each model trains densely (the recipe's dense model, `recipes.dense`) or with
# sparse methods towards SPARSITY, those of `UPSTREAM` for each model (printed below) out of
# five: gradual magnitude pruning (GMP), AC/DC, RigL (ERK budget), IMP (a dense training and
# two pruning rounds, rewinding to one epoch) and an L1 regulariser whose strength is tuned
# towards the target.  Every method trains
# with the setting's recipe (optimizer, learning rate, batch size) for the same epoch
# budget (IMP's three trainings take a third each, rounded down).  Downstream, each gets a
# fresh head and trains for DOWNSTREAM_EPOCHS with the same recipe, either the head alone
# (linear) or every weight with its mask fixed (full).
# The sparsity reported is the one each upstream model reached (`recipes.evaluate_run`).

# %%
print("sparse methods upstream:", "; ".join(f"{p}: {', '.join(m)}" for p, m in UPSTREAM.items()))


def transfer_rows(seed, model_name, method):
    """One upstream model of ``method`` (trained for seed ``seed``) and its rows, one per
    transfer mode, and the model where ``seed`` is SEED (the exercises use it)."""
    data_name = upstream_data[model_name]
    recipe = recipes.recipe_for(model_name, data_name)
    t, dense_model, dense_info = recipes.dense(
        model_name, data_name, seed, epochs=UPSTREAM_EPOCHS[model_name]
    )
    if method == "dense":
        up = dense_model
    else:
        up = transfer.pretrain(t, method, SPARSITY, epochs=UPSTREAM_EPOCHS[model_name])
    target = None if method == "dense" else SPARSITY
    run = recipes.evaluate_run(up, t, target_sparsity=target)
    up_flags = [run["flags"], dense_info["flags"] if method == "dense" else ""]
    base = {
        "pair": model_name,
        "method": method,
        "seed": seed,
        "reached_sparsity": run["sparsity"],
        "upstream_val": recipes.evaluate_run(up, t, split="val")["accuracy"],
        "upstream_test": run["accuracy"],
    }
    rows = []
    for mode in transfer.MODES:
        down = transfer.transfer_run(
            up, downstream[model_name], mode, epochs=DOWNSTREAM_EPOCHS, recipe=recipe, seed=seed
        )
        found = [f for f in [*up_flags, down["flags"]] if f]
        rows.append({**base, "mode": mode, "downstream": down["accuracy"],
                     "flags": sl.flags.join(found)})  # fmt: skip
    return rows, up if seed == SEED else None


# independent trainings: a sweep's worker processes run them side by side (one per core in
# JupyterLab), each computing what it would compute here; the 1-D CNN's sparse trainings
# (200 epochs) start first, so that no worker ends the cell on one of them alone
calls = [
    (seed, model_name, method)
    for seed in SEEDS
    for model_name in upstream_data
    for method in ["dense", *UPSTREAM[model_name]]
]


def slow(seed, model_name, method):
    return model_name == "cnn1d" and method != "dense"


results = sl.experiments.forked_map(transfer_rows, calls, first=slow)
rows = [row for found, _ in results for row in found]
# seed SEED's upstream models by (pair, method), for the exercises
upstream_models = {
    call[1:]: up for call, (_, up) in zip(calls, results, strict=True) if up is not None
}
runs = pd.DataFrame(rows)
upstream = runs[runs["mode"] == transfer.MODES[0]]
display(
    upstream.groupby(["pair", "method"], sort=False)[
        ["reached_sparsity", "upstream_val", "upstream_test"]
    ]
    .mean()
    .round(3)
)
flagged = sl.flags.table(runs, ["pair", "method", "mode"])
sl.nb.show_flags(flagged)


# %%
def epochs_of(pair: str) -> int:
    """Upstream epochs of ``pair`` in this run: the recipe's unless overridden."""
    chosen = UPSTREAM_EPOCHS[pair]
    return recipes.recipe_for(pair, upstream_data[pair]).epochs if chosen is None else chosen


dense_acc = (
    upstream[upstream["method"] == "dense"].groupby("pair", sort=False)["upstream_test"].mean()
)
reached = upstream.groupby(["pair", "method"], sort=False)["reached_sparsity"].mean()
short = reached[(reached < SPARSITY - 0.005) & (reached.index.get_level_values(1) != "dense")]
# An upstream model at chance level did not train: it is named and left out of the figure and
# the comparisons (`trained`), since a difference to dense would only say that it failed.
at_chance = upstream[upstream["flags"].str.contains("chance")]
failed = sorted(set(zip(at_chance["pair"], at_chance["method"], strict=True)))
trained = runs[[(p, m) not in failed for p, m in zip(runs["pair"], runs["method"], strict=True)]]
n_seeds = upstream.groupby(["pair", "method"])["seed"].nunique()
display(
    Markdown(
        "Dense upstream test accuracy (the recipe's model): "
        + "; ".join(
            f"{pair} {acc:.1%} after {epochs_of(pair)} epochs (the full recipe documents "
            f"{recipes.recipe_for(pair, upstream_data[pair]).expected_test_accuracy:.0%})"
            for pair, acc in dense_acc.items()
        )
        + ".  "
        + (
            "Methods that stopped short of the "
            f"{SPARSITY:.0%} target (mean reached sparsity): "
            + ", ".join(f"{p}/{m} {v:.1%}" for (p, m), v in short.items())
            + "; those that trained are compared below at the sparsity they reached."
            if len(short)
            else f"Every sparse method reached the {SPARSITY:.0%} target."
        )
        + (
            "  Failed upstream (at chance level), and left out of the comparisons below: "
            + ", ".join(
                f"{p}/{m} ({int((at_chance['pair'] == p).mul(at_chance['method'] == m).sum())}"
                f" of {n_seeds[(p, m)]} seeds)"
                for p, m in failed
            )
            + "."
            if failed
            else ""
        )
    )
)

# %%
# The same runs as the comparisons below: failed upstream models are left out (and named
# in the panel's title).
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5), sharey=False)
for ax, (pair, group) in zip(axes, trained.groupby("pair", sort=False), strict=True):
    order = [m for m in ["dense", *UPSTREAM[pair]] if (pair, m) not in failed]
    left_out = [m for p, m in failed if p == pair]
    table = sl.stats.summarize(group, ["method", "mode"], "downstream")
    for i, mode in enumerate(transfer.MODES):
        part = table[table["mode"] == mode].set_index("method").loc[order]
        x = [j + (i - 0.5) * 0.38 for j in range(len(order))]
        ax.bar(
            x,
            part["mean"],
            0.38,
            yerr=(part["ci_high"] - part["mean"]).fillna(0),
            capsize=3,
            label={"linear": "linear probe", "full": "full fine-tune"}.get(mode, mode),
        )
    ax.set_xticks(range(len(order)), [f"{m}\n{reached[(pair, m)]:.0%}" for m in order], fontsize=8)
    # the y axis fits the bars and their intervals (from 0 it would squash the differences
    # to dense compared below); the title says where it starts
    shown = table[table["method"].isin(order)]
    half = (shown["ci_high"] - shown["mean"]).fillna(0)
    low, high = (shown["mean"] - half).min(), (shown["mean"] + half).max()
    pad = 0.1 * max(high - low, 0.01)
    ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
    ax.set_title(
        f"{pair}: {downstream[pair].name}"
        + (f" ({', '.join(left_out)} failed upstream, left out)" if left_out else "")
        + f"\n(bars cut: the y axis starts at {ax.get_ylim()[0]:.0%})"
    )
    ax.set_ylabel("downstream test accuracy")
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# Each sparse method against the dense model, downstream, paired by seed (same data
# split, same downstream head initialisation), with the sparsity each one reached:

# %%
diffs = pd.concat(
    [
        sl.stats.paired(
            trained, "method", method, "dense", metric="downstream", by=["pair", "mode"]
        ).assign(method=method)
        for method in transfer.UPSTREAM
        if (trained["method"] == method).any()
    ],
    ignore_index=True,
)
diffs["reached"] = [reached[(p, m)] for p, m in zip(diffs["pair"], diffs["method"], strict=True)]
display(
    diffs[
        ["pair", "mode", "method", "reached", "mean_diff", "ci_low", "ci_high", "n", "verdict"]
    ].round(4)
)


VERDICT_ORDER = [sl.stats.WORSE, sl.stats.NO_DIFFERENCE, sl.stats.BETTER]
VERDICT_WORDS = {
    sl.stats.ONE_SEED: "single-seed results",
    sl.stats.NO_SPREAD: "no-spread results",
}


def verdict_counts(part: pd.DataFrame) -> str:
    """How many methods got each paired verdict, e.g. "2 worse, 3 no clear difference"."""
    counts = part["verdict"].value_counts()
    ordered = [v for v in VERDICT_ORDER if v in counts] + [
        v for v in counts.index if v not in VERDICT_ORDER
    ]
    return ", ".join(f"{counts[v]} {VERDICT_WORDS.get(v, v)}" for v in ordered)


lines = []
for (pair, mode), part in diffs.groupby(["pair", "mode"], sort=False):
    best_row = part.loc[part["mean_diff"].idxmax()]
    worst_row = part.loc[part["mean_diff"].idxmin()]
    lines.append(
        f"- {pair}, {mode}: {verdict_counts(part)} (sparse minus dense); highest mean "
        f"{best_row['method']} ({sl.stats.describe(best_row)}), lowest "
        f"{worst_row['method']} ({sl.stats.describe(worst_row)})."
    )
display(Markdown("Downstream, sparse minus dense, per pair and mode:\n\n" + "\n".join(lines)))

# %% [markdown]
# **Against the literature.**  Iofinova et al. (2022) find that sparse ImageNet models can
# transfer about as well as dense ones with full fine-tuning, losing a few points at high
# sparsity, and that the pruning method matters.  For each pair, the sparse method tested
# is the one with the best upstream *validation* accuracy among those that trained and
# reached the target sparsity (chosen before looking at any downstream number); the
# verdict uses its full fine-tuning, paired with the dense model by seed.  The paper gives
# no tolerance for "a few points lost": the margin the verdict allows is this project's,
# and each verdict says so beside the paired test of the same difference in the table
# above:

# %%
claim = sl.claims.get("sparse_models_transfer")
# What the paired test of the table above says of the difference a verdict judges.
paired_says = {
    sl.stats.WORSE: "calls the same difference worse (its interval lies below 0): sparse "
    "does lose accuracy here, and the verdict only says whether the loss stays within "
    "the margin",
    sl.stats.NO_DIFFERENCE: "finds no clear difference (its interval covers 0)",
    sl.stats.BETTER: "calls the same difference better (its interval lies above 0)",
    sl.stats.ONE_SEED: "has a single seed for the same difference, so no interval",
    sl.stats.NO_SPREAD: "finds the same difference on every seed, so no interval",
}
verdicts = []
for pair in downstream:
    up = upstream[(upstream["pair"] == pair) & (upstream["method"] != "dense")]
    val_means = up.groupby("method")["upstream_val"].mean()
    ok = [
        m
        for m in val_means.index
        if reached[(pair, m)] >= SPARSITY - 0.005 and (pair, m) not in failed
    ]
    best = val_means[ok].idxmax() if ok else val_means.idxmax()
    row = diffs[(diffs["pair"] == pair) & (diffs["mode"] == "full") & (diffs["method"] == best)]
    row = row.iloc[0]
    t = recipes.task(pair, upstream_data[pair], seed=SEED)
    n_params = sum(p.numel() for p in t.build().parameters())
    reason = (
        f"The upstream model has {n_params:,} weights trained on {len(t.bundle.train):,} "
        f"examples ({epochs_of(pair)} epochs); the downstream set has "
        f"{len(downstream[pair].train):,} training examples "
        f"and {DOWNSTREAM_EPOCHS} epoch(s) of fine-tuning; the paper transfers ResNet-50 "
        f"(25.6M weights) trained on ImageNet.  Tested here at {SPARSITY:.0%}, above the "
        f"paper's 80%."
    )
    measured = (
        f"The {claim.margin * 100:.1f}-point margin is this project's tolerance for the "
        'paper\'s "a few points lost", not a number from the paper; the paired test of '
        "the table above "
        + paired_says.get(row["verdict"], f"calls the same difference {row['verdict']}")
        + "."
    )
    setting = f"{pair} → {downstream[pair].name}, {best} at {reached[(pair, best)]:.0%}"
    v = sl.claims.judge(claim, row, setting=setting, reason=reason, measured=measured)
    verdicts.append(v)
display(sl.claims.table(verdicts))
display(Markdown(sl.claims.report(verdicts)))

# %% [markdown]
# ## Summary

# %%
MODE_WORDS = {"linear": "linear probing", "full": "full fine-tuning"}


def modes_sentence(pair: str, part: pd.DataFrame) -> str:
    """Per mode, the paired verdicts of ``pair``'s methods against dense and their mean
    difference, then which mode has more methods worse than dense."""
    by_mode = {mode: part[part["mode"] == mode] for mode in transfer.MODES}
    said = "; ".join(
        f"{MODE_WORDS.get(mode, mode)} {verdict_counts(m)} "
        f"(mean over methods {m['mean_diff'].mean() * 100:+.1f} points)"
        for mode, m in by_mode.items()
    )
    worse = {mode: int((m["verdict"] == sl.stats.WORSE).sum()) for mode, m in by_mode.items()}
    ranked = sorted(worse.items(), key=lambda kv: -kv[1])
    (mode_a, n_a), (mode_b, n_b) = ranked[0], ranked[-1]
    if (part["n"] < 2).all():
        compared = "with a single seed there is no interval, so no verdict tells the modes apart"
    elif n_a == 0:
        compared = "no method is worse than dense in either mode"
    elif n_a == n_b:
        compared = f"as many methods are worse than dense in each mode ({n_a})"
    else:
        compared = (
            f"more methods are worse than dense with {MODE_WORDS.get(mode_a, mode_a)} "
            f"({n_a}) than with {MODE_WORDS.get(mode_b, mode_b)} ({n_b})"
        )
    return f"  - {pair} ({part['method'].nunique()} methods): {said}; {compared}."


n_cells = diffs[["pair", "method"]].drop_duplicates().shape[0]
display(
    Markdown(
        "\n".join(
            [
                "- `transfer.pretrain` trains an upstream model with any of GMP, AC/DC, RigL, "
                "IMP or an L1 regulariser under the setting's recipe; `transfer.transfer_run` "
                "swaps the head and runs a linear probe or a full sparse fine-tune.",
                "- Linear probing against full fine-tuning: per source model, the paired "
                f"verdicts of sparse minus dense downstream, over the {n_cells} (pair, "
                "method) cells whose upstream model trained"
                + (
                    f" (failed upstream, left out: {', '.join(f'{p}/{m}' for p, m in failed)})"
                    if failed
                    else ""
                )
                + ".  The counts come from the table above; the two modes are not tested "
                "against each other.  Linear probing measures the sparse *features*, full "
                "fine-tuning the sparse *network* with its mask kept:",
                *(modes_sentence(pair, part) for pair, part in diffs.groupby("pair", sort=False)),
                "- Against the literature: "
                + "; ".join(f"{v.setting}: {v.status}" for v in verdicts)
                + ".",
            ]
        )
    )
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about, on seed `SEED`'s upstream models of the runs above
# (`upstream_models[pair, method]`).
#
# **1.** Go to a higher sparsity without training upstream again: prune a copy of each of
# seed `SEED`'s sparse upstream LeNet-300-100s further, to 98%
# (`sl.prune(model, "magnitude", 0.98, budget="global")`, which keeps the weights pruned
# before), and probe it linearly on digits as above (`transfer.transfer_run` with
# `DOWNSTREAM_EPOCHS`, the setting's recipe and seed `SEED`).  Which method loses the most
# downstream test accuracy against the linear probe of its own model at `SPARSITY` (the
# row of `runs`)?  Answer with its name, as in `transfer.UPSTREAM`; methods that failed
# upstream are left out.  Why can one method's features stand the extra pruning better
# than another's?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
import copy
import functools

import torch
from torch import nn

from sparsity_lab.methods.base import independent_copy

LENET_RECIPE = recipes.recipe_for("lenet300", upstream_data["lenet300"])
# the methods whose seed-SEED LeNet-300-100 trained upstream
PROBED = [m for m in UPSTREAM["lenet300"] if ("lenet300", m) not in failed]


def seed_runs(pair, mode):
    """Downstream test accuracy of seed SEED's runs of ``pair`` in ``mode``, by method."""
    part = runs[(runs["pair"] == pair) & (runs["mode"] == mode) & (runs["seed"] == SEED)]
    return part.set_index("method")["downstream"]


@functools.cache
def probe_at_98(method):
    """Linear probe on digits of seed SEED's upstream ``method`` pruned further to 98%."""
    model = independent_copy(upstream_models["lenet300", method])
    sl.prune(model, "magnitude", 0.98, budget="global")
    down = downstream["lenet300"]
    return transfer.transfer_run(
        model, down, "linear", epochs=DOWNSTREAM_EPOCHS, recipe=LENET_RECIPE, seed=SEED
    )["accuracy"]


def check_1(answer, solution=False):
    at_target = seed_runs("lenet300", "linear")
    loss = {m: at_target[m] - probe_at_98(m) for m in PROBED}
    hint = "For each method, subtract the 98% model's probe accuracy from its row of `runs`."
    sl.nb.check(1, answer, lambda a: loss.get(a) == max(loss.values()), hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_1 = None  # a method, e.g. "gmp"
check_1(answer_1)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  Global magnitude pruning keeps the largest weights of the whole network.  A
# method whose features rest on a few large weights keeps most of them; one whose features
# are spread over many mid-sized weights loses part of what they carry, and the linear
# probe cannot rebuild it, since only the new head trains.  One seed and one downstream
# run: the ranking is a hint, not a result.  By hand: one threshold over the masked weights
# of every Linear layer keeps the largest 2%, and both probes are run again.
def probe(model):
    down = downstream["lenet300"]
    return transfer.transfer_run(
        model, down, "linear", epochs=DOWNSTREAM_EPOCHS, recipe=LENET_RECIPE, seed=SEED
    )["accuracy"]


loss_1 = {}
for method in PROBED:
    model = independent_copy(upstream_models["lenet300", method])
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    weights = {n: m.weight.detach() for n, m in layers.items()}  # masked: zeros included
    everything = torch.cat([w.abs().flatten() for w in weights.values()])
    kept = len(everything) - round(0.98 * len(everything))
    threshold = everything.topk(kept).values[-1]
    for n, w in weights.items():
        sl.masks.attach(model, f"{n}.weight", w.abs() >= threshold)
    before, after = probe(upstream_models["lenet300", method]), probe(model)
    loss_1[method] = before - after
    print(f"{method}: probe {before:.1%} at {SPARSITY:.0%}, {after:.1%} at 98%")
solution_1 = max(loss_1, key=loss_1.get)
print(f"largest loss: {solution_1} ({100 * loss_1[solution_1]:+.1f} points)")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Let the mask regrow during full fine-tuning: remove the masks of a copy of seed
# `SEED`'s GMP upstream LeNet-300-100 (`sl.masks.remove(independent_copy(model))`; the
# pruned weights start at zero and are free to grow; `independent_copy`, imported in the
# collapsed cell of exercise 1, is needed because removing a mask from a `copy.deepcopy`
# would remove it from the original too), then fine-tune it fully on digits as above.
# What is its downstream test accuracy minus that of the masked full fine-tune (the row of
# `runs`), in points?  One decimal.  Does that close the gap to the dense upstream model?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def full_finetune(model, bundle, pair):
    """Downstream test accuracy of ``model`` fine-tuned fully on ``bundle`` (seed SEED)."""
    recipe = recipes.recipe_for(pair, upstream_data[pair])
    return transfer.transfer_run(
        model, bundle, "full", epochs=DOWNSTREAM_EPOCHS, recipe=recipe, seed=SEED
    )["accuracy"]


@functools.cache
def regrown_gmp():
    model = sl.masks.remove(independent_copy(upstream_models["lenet300", "gmp"]))
    return full_finetune(model, downstream["lenet300"], "lenet300")


def check_2(answer, solution=False):
    gain = 100 * (regrown_gmp() - seed_runs("lenet300", "full")["gmp"])
    hint = "Fine-tune the unmasked copy with `transfer.transfer_run(..., 'full', ...)`."
    sl.nb.check(2, answer, gain, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_2 = None  # points, e.g. 1.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Without its mask the network is dense again: the pruned weights start at 0
# and the downstream gradient grows those it needs.  By hand: the GMP model's masked weights
# are copied into a plain copy of the dense upstream network (same architecture), which
# then trains with nothing masked; the masked fine-tune is run again beside it.
gmp = upstream_models["lenet300", "gmp"]
plain = copy.deepcopy(upstream_models["lenet300", "dense"])
with torch.no_grad():
    for name, p in plain.named_parameters():
        module, _, attr = name.rpartition(".")
        p.copy_(getattr(gmp.get_submodule(module), attr))  # the computed, masked tensor
regrown = full_finetune(plain, downstream["lenet300"], "lenet300")
masked = full_finetune(gmp, downstream["lenet300"], "lenet300")
dense_full = seed_runs("lenet300", "full")["dense"]
solution_2 = round(100 * (regrown - masked), 1)
print(f"fully fine-tuned: masked {masked:.1%}, regrown {regrown:.1%}, dense {dense_full:.1%}")
print(f"regrown minus masked: {solution_2:+.1f} points")
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** Make the downstream task harder:
# `transfer.mnist1d_variant(seed=SEED, num_samples=VARIANT_SAMPLES, noise_factor=4)`, twice
# the noise of the variant above.  Fine-tune seed `SEED`'s dense and GMP upstream 1-D CNNs
# fully on it, as above.  How many points does each lose against its full fine-tune on the
# variant above (the rows of `runs`)?  Answer GMP's loss minus the dense model's, in points,
# one decimal (positive: the sparse model loses more).  Does sparsity help or hurt
# robustness to the noise here?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache
def noisier():
    return transfer.mnist1d_variant(seed=SEED, num_samples=VARIANT_SAMPLES, noise_factor=4)


def check_3(answer, solution=False):
    before = seed_runs("cnn1d", "full")
    loss = {
        m: before[m] - full_finetune(upstream_models["cnn1d", m], noisier(), "cnn1d")
        for m in ("dense", "gmp")
    }
    hint = "Subtract each model's accuracy on the noisier variant from its row of `runs`."
    sl.nb.check(3, answer, 100 * (loss["gmp"] - loss["dense"]), hint=hint, tolerance=0.05,
                solution=solution)  # fmt: skip


# %%
answer_3 = None  # points, e.g. -2.5
check_3(answer_3)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  The steps of `transfer_run` by hand: a copy of the upstream model with a
# fresh head (seeded as `replace_head` seeds it), every weight trained with the upstream
# recipe (the masks of a sparse model stay), then the test images scored directly.  A
# single seed gives no interval: whether the difference means anything needs the other
# seeds.
def by_hand(model, bundle):
    model = independent_copy(model)
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        model.head = nn.Linear(model.head.in_features, bundle.n_classes)
    recipe = recipes.recipe_for("cnn1d", upstream_data["cnn1d"])
    t = recipes.Task("downstream", bundle.name, bundle, SEED, batch_size=recipe.batch_size)
    options = {**recipe.training(), "epochs": DOWNSTREAM_EPOCHS}
    sl.train.fit(model, *t.loaders()[:2], seed=SEED, progress=False, **options)
    x_test, y_test = bundle.test.tensors
    with torch.no_grad():
        return float((model.eval()(x_test).argmax(dim=1) == y_test).float().mean())


loss_3 = {}
for method in ("dense", "gmp"):
    up = upstream_models["cnn1d", method]
    usual, harder = by_hand(up, downstream["cnn1d"]), by_hand(up, noisier())
    loss_3[method] = usual - harder
    print(f"{method}: {usual:.1%} with noise factor 2, {harder:.1%} with 4")
solution_3 = round(100 * (loss_3["gmp"] - loss_3["dense"]), 1)
print(f"GMP's loss minus the dense model's: {solution_3:+.1f} points")
check_3(solution_3, solution=True)

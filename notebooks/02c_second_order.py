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
# # How to prune II: second-order information
#
# **What you will learn:** why removing a weight costs what the *curvature* of the loss
# says, why magnitude pruning is the special case where the curvature is the identity, how
# Optimal Brain Surgeon moves the surviving weights to compensate, and how WoodFisher, K-FAC
# and M-FAC make that affordable.
#
# This follows section 3.5 of the survey (second-order selection: OBD, OBS, the Fisher and
# its approximations).  The Hessian and Fisher pieces live in `sparsity_lab.curvature`.
# The layer-wise line of work that came after it (L-OBS, OBC, SparseGPT, Wanda), which
# prunes a network one layer at a time by keeping each layer's outputs, is the subject of
# [02e](02e_layerwise_reconstruction.ipynb).

# %%
import itertools
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.criteria.second_order import obd_saliency, obs_saliency, obs_update

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]
DATA = "mnist"
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
CALIBRATION_BATCHES = 4
N_GRADS = 128
BLOCK_SIZE = 64
STEPS = 4

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    SPARSITIES = [0.5, 0.9]
    DATA = "digits"  # 8x8 images: the same network and methods, a fraction of the work
    EPOCHS = 3
    N_GRADS = 32
    BLOCK_SIZE = 32
    STEPS = 2
# One thread: these small models gain little from two, and a busy machine makes two slower.
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)


# %% [markdown]
# ## The quadratic picture
#
# Near a trained point ``w*`` the gradient is about zero, so the loss is about a quadratic
# bowl: ``L(w*) + 1/2 dw^T H dw``.  Removing weight ``q`` forces ``dw_q = -w_q``.
#
# * If nothing else moves, the cost is ``1/2 H_qq w_q^2``: **Optimal Brain Damage** (LeCun
#   1990) ranks weights by it.  With ``H = I`` the ranking is by ``w_q^2``: **magnitude
#   pruning is OBD with an identity Hessian**.
# * If the other weights may move, the cheapest move is the minimum of the bowl on the line
#   ``w_q = 0``: **Optimal Brain Surgeon** (Hassibi & Stork 1993) costs
#   ``w_q^2 / (2 [H^-1]_qq)`` with the update ``dw = -(w_q / [H^-1]_qq) H^-1 e_q``.
#
# In two dimensions every piece can be drawn.  The functions are the library's own
# (`obd_saliency`, `obs_saliency`, `obs_update`).

# %%
W_STAR = torch.tensor([0.8, 1.0], dtype=torch.float64)


def bowl(correlation, stretch=4.0):
    """A 2-D Hessian: curvature ``stretch`` along w1, 1 along w2, and a correlation."""
    c = correlation * stretch**0.5
    return torch.tensor([[stretch, c], [c, 1.0]], dtype=torch.float64)


def candidates(h):
    """Loss increase and end point of each way of removing one of the two weights."""
    hinv = torch.linalg.inv(h)
    rows = []
    for q in range(2):
        pruned = torch.arange(2) == q
        no_move = torch.where(pruned, 0.0, W_STAR)
        moved = W_STAR + obs_update(W_STAR, hinv, pruned)
        rows.append(
            {
                "weight": f"w{q + 1}",
                "|w|": float(W_STAR[q].abs()),
                "OBD saliency": float(obd_saliency(W_STAR, h.diagonal())[q]),
                "OBS saliency": float(obs_saliency(W_STAR, hinv.diagonal())[q]),
                "loss, others fixed": float(0.5 * (no_move - W_STAR) @ h @ (no_move - W_STAR)),
                "loss, OBS update": float(0.5 * (moved - W_STAR) @ h @ (moved - W_STAR)),
                "OBS end point": tuple(round(float(v), 3) for v in moved),
            }
        )
    return pd.DataFrame(rows).set_index("weight")


def draw_bowl(ax, correlation, stretch=4.0, legend=False):
    h = bowl(correlation, stretch)
    table = candidates(h)
    grid = np.linspace(-0.6, 2.2, 200)
    a, b = np.meshgrid(grid, grid)
    d = np.stack([a - W_STAR[0].item(), b - W_STAR[1].item()])
    loss = 0.5 * np.einsum("i...,ij,j...->...", d, h.numpy(), d)
    ax.contour(a, b, loss, levels=[0.05, 0.2, 0.5, 1, 2, 3], colors="0.6", linewidths=0.8)
    ax.axhline(0, color="k", linewidth=0.6)
    ax.axvline(0, color="k", linewidth=0.6)
    ax.plot(*W_STAR, "k*", markersize=12, label="trained w*")
    mag = table["|w|"].idxmin()  # magnitude: the smaller weight
    obd = table["OBD saliency"].idxmin()
    obs = table["OBS saliency"].idxmin()
    for name, style, label in [(mag, "s", "magnitude"), (obd, "^", "OBD")]:
        point = W_STAR.clone()
        point[int(name[1]) - 1] = 0
        ax.plot(*point, style, markersize=10, fillstyle="none", label=f"{label}: {name} := 0")
    end = table.loc[obs, "OBS end point"]
    ax.annotate("", xy=end, xytext=W_STAR.tolist(), arrowprops={"arrowstyle": "->", "color": "C3"})
    other = 1 if obs == "w1" else 0  # the weight OBS keeps, and may move
    moved = abs(end[other] - W_STAR[other].item()) > 1e-9
    what = "the other moves" if moved else "nothing else moves"
    ax.plot(*end, "o", color="C3", label=f"OBS: {obs} := 0, {what}")
    ax.set(xlabel="w1", ylabel="w2", aspect="equal")
    if legend:
        ax.legend(fontsize=8, loc="upper right")  # away from the points on the w1 axis


fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
identity = bowl(0.0, stretch=1.0)
draw_bowl(axes[0], 0.0, stretch=1.0, legend=True)
axes[0].set_title("H = I: all agree, OBS moves nothing")
draw_bowl(axes[1], 0.8, legend=True)
axes[1].set_title("curvature 4 along w1, correlation 0.8")
plt.tight_layout()
plt.show()

# %% [markdown]
# The numbers behind the right panel (a deterministic check: they depend on nothing but the
# two matrices):

# %% tags=["nbval-check-output"]
table = candidates(bowl(0.8))
with pd.option_context("display.precision", 3):
    print(table.to_string())
with_identity = candidates(identity)
assert (with_identity["loss, others fixed"] == with_identity["loss, OBS update"]).all()

# %%
COLUMNS = ("|w|", "OBD saliency", "OBS saliency")
choice = {k: table[k].idxmin() for k in COLUMNS}
mag, obd = choice["|w|"], choice["OBD saliency"]
curvature = dict(zip(table.index, bowl(0.8).diagonal().tolist(), strict=True))
steep = max(curvature, key=curvature.get)
identity_choice = {with_identity[k].idxmin() for k in COLUMNS}
identity_saved = (with_identity["loss, others fixed"] - with_identity["loss, OBS update"]).abs()
display(
    Markdown(
        f"Magnitude removes **{mag}**, the smaller weight, which costs "
        f"{table.loc[mag, 'loss, others fixed']:.2f}.  "
        + (
            f"OBD sees that {mag} sits in the steep direction (curvature "
            f"{curvature[mag]:g} against {min(curvature.values()):g}) and removes **{obd}** "
            f"instead, for {table.loc[obd, 'loss, others fixed']:.2f}.  "
            if obd != mag and mag == steep
            else f"OBD removes **{obd}**, for {table.loc[obd, 'loss, others fixed']:.2f}.  "
        )
        + f"OBS removes **{choice['OBS saliency']}** and moves the other weight along the "
        f"valley: the cost falls to {table.loc[choice['OBS saliency'], 'loss, OBS update']:.2f}."
        + "  With ``H = I`` (left) the three "
        + (
            f"agree on **{identity_choice.pop()}**"
            if len(identity_choice) == 1
            else f"remove {', '.join(sorted(identity_choice))}"
        )
        + (
            " and OBS has nothing to gain: its update saves nothing."
            if identity_saved.max() <= sl.stats.SPREAD_TOLERANCE
            else f"; OBS's update saves up to {identity_saved.max():.2f}."
        )
    )
)

# %% [markdown]
# In the panels below (a slider in a live kernel) the correlation grows from 0 to 0.95,
# with the curvature along w1 kept at 4; the table after them gives each panel's losses.


# %%
CORRELATIONS = [0.0, 0.5, 0.8, 0.95]


def draw_bowl_panel(ax, correlation):
    """One panel; the static figure carries its legend on the first panel only."""
    draw_bowl(ax, correlation, legend=not sl.nb.is_static() or correlation == CORRELATIONS[0])


sl.nb.explore(draw_bowl_panel, correlation=CORRELATIONS)

# %%
rows = []
for c in CORRELATIONS:
    panel = candidates(bowl(c))
    obs = panel["OBS saliency"].idxmin()
    ratio = panel["OBS saliency"] / panel["OBD saliency"]  # one factor for both weights in 2-D
    rows.append(
        {
            "correlation": c,
            "OBD removes": panel["OBD saliency"].idxmin(),
            "OBS removes": obs,
            "OBS / OBD saliency": ratio.iloc[0],
            "one ratio": bool(np.isclose(ratio.iloc[0], ratio.iloc[1])),
            "loss, others fixed": panel.loc[obs, "loss, others fixed"],
            "loss, OBS update": panel.loc[obs, "loss, OBS update"],
        }
    )
panels = pd.DataFrame(rows).set_index("correlation")
panels["saved by the update"] = panels["loss, others fixed"] - panels["loss, OBS update"]
with pd.option_context("display.precision", 3):
    print(panels.drop(columns="one ratio").to_string())
saved = panels["saved by the update"]
same = panels["OBD removes"] == panels["OBS removes"]
if same.all():
    agreement = (
        f"OBD and OBS remove the same weight in every panel "
        f"({', '.join(panels['OBS removes'].unique())})"
        + (
            ".  In two dimensions they always do: ``[H^-1]_qq = H_pp / det H`` (``p`` the "
            "other weight), so OBS's saliency is OBD's times ``det H / (H_11 H_22)``, one "
            "factor for both weights ("
            + ", ".join(f"{r:.3f} at {c:g}" for c, r in panels["OBS / OBD saliency"].items())
            + ").  Only the cost differs"
            if panels["one ratio"].all()
            else ""
        )
        + ".  "
    )
else:
    agreement = (
        "OBD and OBS remove different weights at correlation "
        + ", ".join(f"{c:g}" for c in panels.index[~same])
        + ".  "
    )
display(
    Markdown(
        agreement
        + "The update saves "
        + ", ".join(f"{v:.3f} at {c:g}" for c, v in saved.items())
        + ": "
        + (
            "the stronger the correlation, the more the surviving weight makes up."
            if bool((saved.diff().dropna() > sl.stats.SPREAD_TOLERANCE).all())
            else "the saving does not grow at every step of the correlation."
        )
    )
)

# %% [markdown]
# ## One-shot pruning of LeNet-300-100, without fine-tuning
#
# Real networks have hundreds of thousands of weights, so ``H`` (``P x P``) is out of
# reach.  Each method approximates it differently:
#
# | method | curvature | cost |
# |---|---|---|
# | `obd` | diagonal of the Gauss-Newton part of the Hessian | one gradient per example and class |
# | `fisher_diag` | diagonal of the empirical Fisher ``1/N sum g g^T`` | ``N`` gradients |
# | `woodfisher` | Fisher blocks of ``B`` weights, inverted by Woodbury | ``N P B`` |
# | `kfac` | per layer ``G (x) A``, inverted factor by factor | ``in^3 + out^3`` |
# | `mfac` | the full Fisher, never formed: ``F^-1 x`` from ``N`` stored vectors | ``N^2 P`` |
#
# WoodFisher, K-FAC and M-FAC also *update* the surviving weights with OBS's
# compensation, WoodFisher and M-FAC in `STEPS` rounds with fresh gradients (a quadratic
# model is only trusted near the point it was taken at), K-FAC in one.  Every method sees
# the same calibration batches from the training set.
# Each seed has its own data split and dense model, the setting's recipe
# (`recipes.dense`); every method prunes that same model, so methods are compared by
# their paired per-seed differences.

# %%
METHODS = {
    "magnitude (global)": ("magnitude", {"budget": "global"}),
    "magnitude (uniform)": ("magnitude", {"budget": "uniform"}),
    "obd": ("obd", {"n_samples": N_GRADS}),
    "fisher_diag": ("fisher_diag", {"n_samples": N_GRADS}),
    "woodfisher": ("woodfisher", {"n_samples": N_GRADS, "block_size": BLOCK_SIZE, "steps": STEPS}),
    "kfac": ("kfac", {}),
    "mfac": ("mfac", {"n_samples": N_GRADS, "steps": STEPS}),
}
GLOBAL = "magnitude (global)"
# K-FAC's choice of weights without its update (mask only), run at the highest sparsity
NO_UPDATE = {"kfac (no update)": ("kfac", {"update": False})}
calibrations = {}


def calibration_for(t):
    """The first ``CALIBRATION_BATCHES`` training batches of ``t``'s seed, drawn once."""
    key = (t.model_name, t.data_name, t.seed)
    if key not in calibrations:
        calibrations[key] = list(itertools.islice(t.loaders()[0], CALIBRATION_BATCHES))
    return calibrations[key]


def one_shot(method, sparsity, seed):
    t, model, dense_info = recipes.dense("lenet300", DATA, seed, epochs=EPOCHS)
    name, options = {**METHODS, **NO_UPDATE}[method]
    sl.prune(model, name, sparsity, data=calibration_for(t), seed=seed, **options)
    scores = recipes.evaluate_run(model, t, target_sparsity=sparsity)
    return {
        "test_accuracy": scores["accuracy"],
        "flags": scores["flags"],
        "dense_test_accuracy": dense_info["test_accuracy"],
        "dense_flags": dense_info["flags"],
        # where the zeros went: the sparsity of each layer
        **{
            f"{n.removesuffix('.weight')} sparsity": sl.pruning.sparsity(model, [n])
            for n in sl.pruning.default_targets(model)
        },
    }


results = sl.experiments.sweep(
    one_shot, {"method": list(METHODS), "sparsity": SPARSITIES}, seeds=SEEDS
)
t300, lenet300, info300 = recipes.dense("lenet300", DATA, SEED, epochs=EPOCHS)
LENET = {
    "weights": sum(
        sl.masks.weight(lenet300, n).numel() for n in sl.pruning.default_targets(lenet300)
    ),
    "epochs": info300["recipe"].epochs,
    "n_train": len(t300.bundle.train),
}
display(
    Markdown(
        f"Dense LeNet-300-100 on {DATA}: {LENET['weights']:,} weights trained "
        f"{LENET['epochs']} epoch(s) on {LENET['n_train']:,} images; test accuracy "
        + ", ".join(
            f"seed {s} {a:.1%}"
            for s, a in results.groupby("seed")["dense_test_accuracy"].first().items()
        )
        + "."
        + "".join(f"  Flag: {f}." for f in results["dense_flags"].unique() if f)
    )
)

# %%
# collapsed runs stretch the axis of the full panel; the second panel zooms on the sparsities
# where no run raised a flag, so that the small differences compared below can be seen
flagged_at = set(results.loc[results["flags"] != "", "sparsity"])
# (no zoom when no run raised a flag: the full panel is the zoom)
unflagged = [s for s in SPARSITIES if s not in flagged_at] if flagged_at else []
fig, axes = plt.subplots(
    1,
    2 if unflagged else 1,
    figsize=(12.5 if unflagged else 7, 4.5),
    squeeze=False,
    layout="constrained",
)
views = [(results, f"LeNet-300-100 on {DATA}: one-shot, no fine-tuning")]
if unflagged:
    views.append(
        (
            results[results["sparsity"].isin(unflagged)],
            f"zoom: {', '.join(f'{s:.0%}' for s in unflagged)}, where no run raised a flag",
        )
    )
for ax, (part, title) in zip(axes[0], views, strict=True):
    sl.experiments.plot_mean_ci(part, x="sparsity", y="test_accuracy", hue="method", ax=ax)
    ax.axhline(
        results["dense_test_accuracy"].mean(),
        color="k",
        linestyle="--",
        linewidth=0.8,
        label="dense (mean over seeds)",
    )
    ax.set_ylabel("test accuracy (mean, 95% CI)")
    ax.set_title(title)
axes[0, 0].legend(fontsize=8)
if unflagged:
    axes[0, 1].get_legend().remove()  # the same colours as the full panel's legend
plt.show()
sl.nb.show_flags(sl.flags.table(results, ["method", "sparsity"]))

# %%
summary = sl.stats.summarize(results, ["method", "sparsity"], "test_accuracy")
pivot = summary.pivot(index="sparsity", columns="method", values="mean")[list(METHODS)]
gaps = {
    m: sl.stats.paired(
        results, "method", m, GLOBAL, metric="test_accuracy", by="sparsity"
    ).set_index("sparsity")
    for m in METHODS
    if m != GLOBAL
}
top = max(SPARSITIES)
display(
    Markdown(
        f"Test accuracy right after pruning, mean over {len(SEEDS)} seed(s) (table below).  "
        f"WoodFisher minus global magnitude, paired per seed: "
        + "; ".join(f"{s:.0%}: {sl.stats.describe(r)}" for s, r in gaps["woodfisher"].iterrows())
        + "."
    )
)
pivot.round(4)

# %% [markdown]
# What to look for.  The expectations (from the papers): at moderate sparsity every
# reasonable criterion keeps the accuracy, and the differences open up at 90% and beyond;
# the methods that move the surviving weights (WoodFisher, K-FAC, M-FAC) stay above global
# magnitude there, with a gap that grows with the sparsity; the methods that only rank
# (OBD, `fisher_diag`) have nothing to make up for what they remove, so they fall below
# WoodFisher there; and a uniform budget falls behind the global one there too, because it
# makes the small last layer lose as large a share as the large first one.  The cell below
# tests each expectation on the runs above with paired differences (95% interval over the
# seeds; "no clear difference" when it covers 0): **met** when the interval agrees at every
# sparsity from 90% on, **missed** when it contradicts at one of them, **inconclusive**
# otherwise.  The two cells after it show where the zeros went and what the ranking-only
# curvature is estimated from.

# %%
HIGH = [s for s in SPARSITIES if s >= 0.9] or [top]


def expectation(rows):
    """``(overall, detail)`` of "the treatment is above the baseline" at every HIGH sparsity,
    with the flagged arms of each sparsity where there are any."""
    found = {s: sl.claims.check(rows.loc[s], "greater") for s in HIGH}
    flagged = {s: rows.loc[s, "flagged"] for s in HIGH if rows.loc[s, "flagged"]}
    overall = (
        "missed"
        if "missed" in found.values()
        else "met"
        if all(v == "met" for v in found.values())
        else "inconclusive"
    )
    detail = "; ".join(
        f"{word} at {', '.join(f'{s:.0%}' for s, v in found.items() if v == word)}"
        for word in ("met", "inconclusive", "missed")
        if word in found.values()
    )
    caveat = "".join(f"; at {s:.0%} {text}" for s, text in flagged.items())
    return f"**{overall}** ({detail}{caveat})"


def step_changes(method, baseline=GLOBAL):
    """The steps from one sparsity to the next, by the verdict on the change of ``method -
    baseline`` there (paired per seed): ``{"better": [...], "worse": [...], ...}``."""
    both = results[results["method"].isin([method, baseline])]
    wide = both.pivot_table(index=["sparsity", "seed"], columns="method", values="test_accuracy")
    gap = (wide[method] - wide[baseline]).rename("gap").reset_index()
    found = {"better": [], "worse": [], sl.stats.NO_DIFFERENCE: [], "other": []}
    for a, b in itertools.pairwise(SPARSITIES):
        row = sl.stats.paired(gap, "sparsity", b, a, metric="gap", flags=None).iloc[0]
        text = f"{a:.0%} to {b:.0%} ({sl.stats.describe(row, words=('falls', 'rises'))})"
        found[row["verdict"] if row["verdict"] in found else "other"].append(text)
    return found


def steps(method, baseline=GLOBAL):
    """How ``method - baseline`` changes from one sparsity to the next, in words."""
    found = step_changes(method, baseline)
    return (
        "From one sparsity to the next, paired per seed, the difference rises clearly "
        + (f"from {', '.join(found['better'])}" if found["better"] else "at no step")
        + ", falls clearly "
        + (f"from {', '.join(found['worse'])}" if found["worse"] else "at no step")
        + f", and shows no clear change at {len(found[sl.stats.NO_DIFFERENCE])} step(s)"
        + (f"; no interval from {', '.join(found['other'])}" if found["other"] else "")
        + "."
    )


low = min(SPARSITIES)
# the spread over the methods none of whose runs raised a flag at that sparsity: a gap to a
# collapsed run measures the collapse
clean = {
    s: [m for m in pivot.columns
        if not (results[(results.sparsity == s) & (results.method == m)]["flags"] != "").any()]
    for s in (low, top)
}  # fmt: skip
range_low = pivot.loc[low, clean[low]].max() - pivot.loc[low, clean[low]].min()
range_top = pivot.loc[top, clean[top]].max() - pivot.loc[top, clean[top]].min()
left_out = [m for m in pivot.columns if m not in clean[top]]
lines = [
    f"- Spread between the best and the worst mean among the methods with no flagged run: "
    f"{100 * range_low:.1f} points at {low:.0%} ({pivot.loc[low, clean[low]].idxmax()} to "
    f"{pivot.loc[low, clean[low]].idxmin()}), {100 * range_top:.1f} points at {top:.0%} "
    f"({pivot.loc[top, clean[top]].idxmax()} to {pivot.loc[top, clean[top]].idxmin()}"
    + (f"; left out as flagged: {', '.join(left_out)}" if left_out else "")
    + "): the differences "
    + ("do" if range_top > range_low else "do not")
    + " open up with the sparsity."
]
for method in ["woodfisher", "kfac", "mfac"]:
    gap = gaps[method]
    lines.append(
        f"- {method} minus global magnitude: "
        + "; ".join(f"{s:.0%}: {sl.stats.describe(r)}" for s, r in gap.iterrows())
        + f".  Above global magnitude from {HIGH[0]:.0%}: {expectation(gap)}.  "
        + steps(method)
    )
ranking_only = ["obd", "fisher_diag"]
below_woodfisher = {
    m: sl.stats.paired(
        results, "method", "woodfisher", m, metric="test_accuracy", by="sparsity"
    ).set_index("sparsity")
    for m in ranking_only
}
lines.append(
    f"- Ranking only, minus global magnitude at {top:.0%}: "
    + "; ".join(f"{m} {sl.stats.describe(gaps[m].loc[top])}" for m in ranking_only)
    + f".  Below WoodFisher from {HIGH[0]:.0%}: "
    + "; ".join(f"{m} {expectation(below_woodfisher[m])}" for m in ranking_only)
    + "."
)
uniform_gap = gaps["magnitude (uniform)"]
global_over_uniform = sl.stats.paired(
    results, "method", GLOBAL, "magnitude (uniform)", metric="test_accuracy", by="sparsity"
).set_index("sparsity")
lines.append(
    "- The uniform budget minus the global one: "
    + "; ".join(f"{s:.0%}: {sl.stats.describe(r)}" for s, r in uniform_gap.iterrows())
    + f".  Behind the global budget from {HIGH[0]:.0%}: {expectation(global_over_uniform)}"
    + f"; {top:.0%} is the highest sparsity tested."
)
display(Markdown("\n".join(lines)))

# %% [markdown]
# Where each method puts its zeros at the highest sparsity: the sparsity of each layer, mean
# over the seeds.  K-FAC runs once more there with its choice of weights but no update
# (`update=False`, mask only), to tell the choice and the update apart.

# %%
no_update = sl.experiments.sweep(
    one_shot, {"method": list(NO_UPDATE), "sparsity": [top]}, seeds=SEEDS
)
at_top = pd.concat([results[results["sparsity"] == top], no_update], ignore_index=True)
layer_columns = [c for c in results.columns if c.endswith(" sparsity")]
sizes = {
    f"{n.removesuffix('.weight')} sparsity": sl.masks.weight(lenet300, n).numel()
    for n in sl.pruning.default_targets(lenet300)
}
per_layer = at_top.groupby("method", sort=False)[layer_columns].mean()
shown = per_layer.rename(columns=lambda c: f"{c.removesuffix(' sparsity')} ({sizes[c]:,} weights)")
print(f"Sparsity of each layer at {top:.0%}, mean over {len(SEEDS)} seed(s):")
with pd.option_context("display.float_format", "{:.2%}".format):
    print(shown.to_string())


def layer(c):
    return c.removesuffix(" sparsity")


def kept(method, c):
    """Weights the method keeps in layer ``c`` (mean over the seeds)."""
    return (1 - per_layer.loc[method, c]) * sizes[c]


def where(method):
    return ", ".join(f"{layer(c)} at {per_layer.loc[method, c]:.2%}" for c in layer_columns)


fewer = {c: kept(GLOBAL, c) / max(kept("kfac", c), 1e-12) for c in layer_columns}
thinned = max(fewer, key=fewer.get)
kfac_top = gaps["kfac"].loc[top]
plain_kfac = sl.stats.paired(
    at_top, "method", "kfac (no update)", GLOBAL, metric="test_accuracy"
).iloc[0]
update_gain = sl.stats.paired(
    at_top, "method", "kfac", "kfac (no update)", metric="test_accuracy"
).iloc[0]
if kfac_top["verdict"] != "worse":
    blame = f"K-FAC is not clearly worse than global magnitude at {top:.0%}: no deficit to explain."
elif plain_kfac["verdict"] == "worse":
    blame = (
        "Masking K-FAC's choice without the update already loses against global magnitude, "
        "so the choice of weights, not the update, is behind K-FAC's deficit."
    )
elif plain_kfac["verdict"] in ("better", "no clear difference"):
    blame = (
        "Without the update K-FAC is not clearly worse than global magnitude, so its update "
        "is what loses the accuracy."
    )
else:
    blame = "With these seeds the choice and the update cannot be told apart."
smallest, largest = min(sizes, key=sizes.get), max(sizes, key=sizes.get)
uniform = "magnitude (uniform)"
lines = [
    f"- At {top:.0%}, K-FAC leaves {where('kfac')}; global magnitude {where(GLOBAL)}.  "
    + (
        f"Against global magnitude, K-FAC thins {layer(thinned)} most: it keeps "
        f"{kept('kfac', thinned):,.0f} of its {sizes[thinned]:,} weights against "
        f"{kept(GLOBAL, thinned):,.0f}, {fewer[thinned]:.1f} times fewer."
        if fewer[thinned] > 1.05
        else "Its layer sparsities are within 5% of global magnitude's in kept weights."
    ),
    f"- K-FAC minus global magnitude at {top:.0%}: {sl.stats.describe(kfac_top)}.  Without "
    f"the update: {sl.stats.describe(plain_kfac)}.  The update itself (K-FAC minus K-FAC "
    f"without it): {sl.stats.describe(update_gain)}.  {blame}",
    f"- The uniform budget prunes {layer(smallest)}, the smallest layer "
    f"({sizes[smallest]:,} weights), to {per_layer.loc[uniform, smallest]:.2%} and keeps "
    f"{kept(uniform, smallest):,.0f} of its weights; the global budget leaves it at "
    f"{per_layer.loc[GLOBAL, smallest]:.2%} ({kept(GLOBAL, smallest):,.0f} weights)"
    + (
        f" and prunes {layer(largest)}, the largest, to {per_layer.loc[GLOBAL, largest]:.2%} "
        f"instead of {per_layer.loc[uniform, largest]:.2%}"
        if per_layer.loc[GLOBAL, largest] > per_layer.loc[uniform, largest]
        else ""
    )
    + f".  Uniform minus global at {top:.0%}: {sl.stats.describe(uniform_gap.loc[top])}.",
]
display(Markdown("\n".join(lines)))

# %% [markdown]
# OBD and `fisher_diag` take their curvature from the first `N_GRADS` calibration images
# of each seed.  How well the dense model (seed `SEED`) fits its calibration images, and
# how large the per-example gradients and the Gauss-Newton diagonal are there and on test
# images it has never seen (the counts are in the table):

# %%
names300 = sl.pruning.default_targets(lenet300)
device = next(lenet300.parameters()).device


def fit(batches):
    """Accuracy and p(true class) on ``batches``; gradients on the first ``N_GRADS``."""
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    lenet300.eval()
    with torch.no_grad():
        probs = torch.softmax(lenet300(x.to(device)), dim=1).cpu()
    first = [(x[:N_GRADS], y[:N_GRADS])]
    grads = sl.curvature.per_sample_gradients(lenet300, names300, first, n_samples=N_GRADS)
    gn = sl.curvature.gauss_newton_diagonal(lenet300, names300, first, n_samples=N_GRADS)
    return {
        "images": len(y),
        "accuracy": float((probs.argmax(1) == y).float().mean()),
        "mean p(true class)": float(probs[torch.arange(len(y)), y].mean()),
        f"median gradient norm (first {min(N_GRADS, len(y))})": float(grads.norm(dim=1).median()),
        f"mean Gauss-Newton diagonal (first {min(N_GRADS, len(y))})": float(
            torch.cat([v.flatten() for v in gn.values()]).mean()
        ),
    }


calibration300 = calibration_for(t300)
n_calibration = sum(len(x) for x, _ in calibration300)
test_images = t300.bundle.test.tensors
fits = pd.DataFrame(
    {
        "calibration (train)": fit(calibration300),
        "test": fit([(test_images[0][:n_calibration], test_images[1][:n_calibration])]),
    }
).T
with pd.option_context("display.float_format", "{:.4g}".format):
    print(fits.to_string())
cal, test = fits.loc["calibration (train)"], fits.loc["test"]
grad_col = [c for c in fits.columns if c.startswith("median gradient")][0]
gn_col = [c for c in fits.columns if c.startswith("mean Gauss-Newton")][0]


def times(a, b):
    """``a`` against ``b`` in words: "12 times smaller", "2.0 times larger"."""
    return f"{b / a:.1f} times smaller" if a < b else f"{a / b:.1f} times larger"


display(
    Markdown(
        f"The dense model (seed {SEED}) classifies {cal['accuracy']:.1%} of its "
        f"{int(cal['images'])} calibration images correctly, with a mean probability of "
        f"{cal['mean p(true class)']:.4f} on the true class ({test['accuracy']:.1%} and "
        f"{test['mean p(true class)']:.4f} on {int(test['images'])} test images).  On the "
        f"first {N_GRADS} calibration images, which OBD and `fisher_diag` use, the median "
        f"per-example gradient norm is {times(cal[grad_col], test[grad_col])} than on as "
        f"many test images ({cal[grad_col]:.3g} against {test[grad_col]:.3g}), and the mean "
        f"Gauss-Newton diagonal {times(cal[gn_col], test[gn_col])} ({cal[gn_col]:.3g} "
        f"against {test[gn_col]:.3g})."
    )
)

# %% [markdown]
# ## Against the literature
#
# One claim, judged from paired test accuracies: WoodFisher against global magnitude at
# every sparsity of 80% and above (Singh & Alistarh 2020 report their largest gaps there).
# Every verdict, when the claim is not reproduced, carries the measured reason.


# %%
def seeds_word(seeds):
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


def lenet_reason(sparsity):
    """The per-seed WoodFisher - global magnitude differences behind an interval."""
    part = results[results["sparsity"] == sparsity].pivot(
        index="seed", columns="method", values="test_accuracy"
    )
    diffs = part["woodfisher"] - part[GLOBAL]
    against = [s for s, d in diffs.items() if d <= 0]
    text = (
        "Per seed, WoodFisher minus global magnitude: "
        + ", ".join(f"seed {s} {100 * d:+.1f}" for s, d in diffs.items())
        + " points"
    )
    if not against:
        text += (
            f": every seed gains, from {100 * diffs.min():+.1f} to {100 * diffs.max():+.1f} "
            f"points, too wide a spread for {len(diffs)} seeds to place the interval above 0."
        )
    elif len(against) == len(diffs):
        text += ": no seed gains."
    else:
        text += (
            f": {len(diffs) - len(against)} of {len(diffs)} seeds gain and "
            f"{seeds_word(against)} {'does' if len(against) == 1 else 'do'} not, so the "
            "interval covers 0."
        )
    return (
        text
        + f"  WoodFisher ran with {N_GRADS} gradients, blocks of {BLOCK_SIZE} and "
        + (f"{STEPS} steps.")
    )


rises = [text.split(" (")[0] for text in step_changes("woodfisher")["better"]]
verdicts, notes = [], []  # notes: what each summary line adds to the verdict's numbers
for s in SPARSITIES:
    if s < 0.8:
        continue
    verdicts.append(
        sl.claims.judge(
            "woodfisher_beats_magnitude",
            gaps["woodfisher"].loc[s],
            setting=f"LeNet-300-100 on {DATA} at {s:.0%}, one-shot, no fine-tuning, test",
            reason=lenet_reason(s),
            measured=f"This tests the sign at {s:.0%} only.  Whether the gap grows with the "
            f"sparsity, as the claim adds: {steps('woodfisher')}",
        )
    )
    notes.append(
        f"; sign at {s:.0%} only, "
        + (
            f"and the gap rises clearly from {', '.join(rises)}"
            if rises
            else "growth with sparsity not shown"
        )
    )
with pd.option_context("display.max_rows", None, "display.max_colwidth", None):
    display(sl.claims.table(verdicts))
display(Markdown(sl.claims.report(verdicts)))

# %% [markdown]
# ## Summary
#
# - Removing a weight costs what the curvature says: ``1/2 H_qq w_q^2`` if nothing else
#   moves (OBD), ``w_q^2 / (2 [H^-1]_qq)`` if the others compensate (OBS).  Magnitude
#   pruning is OBD with ``H = I``.
# - The Hessian is replaced by the empirical Fisher, kept as per-example gradients; its
#   diagonal (`fisher_diag`), Woodbury-inverted blocks (`woodfisher`), Kronecker factors
#   (`kfac`) or matrix-free inverse products (`mfac`) make OBS affordable.
# - When even the gradients of the whole model are too expensive, the layer-wise methods
#   of [02e](02e_layerwise_reconstruction.ipynb) (OBC, SparseGPT, Wanda) prune one layer at
#   a time and keep its outputs.
#
# What the runs above found, from the verdicts:

# %%
counts = pd.Series([v.status for v in verdicts]).value_counts()
display(
    Markdown(
        "\n".join(
            f"- {v.claim.treatment} against {v.claim.baseline} ({v.setting}): **{v.status}**, "
            f"{v.numbers()}{note}."
            for v, note in zip(verdicts, notes, strict=True)
        )
        + f"\n\nOf {len(verdicts)} verdicts: "
        + ", ".join(f"{n} {status}" for status, n in counts.items())
        + "."
    )
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks of exercises 1 and 2
# measure: they run the experiment your answer is about.
#
# **1.** WoodFisher above prunes in `STEPS` rounds and moves the surviving weights with
# OBS's update.  Prune seed `SEED`'s dense model (`recipes.dense("lenet300", DATA, SEED,
# epochs=EPOCHS)`) to the highest sparsity of the sweep, `top` (98% in the full run), with
# the WoodFisher options of `METHODS` and the batches of `calibration_for`, once with
# `steps=1` and once with `update=False`.  Which of the two has the lower test accuracy?
# Answer `"steps=1"` or `"update=False"`.  Which ingredient, the rounds or the update,
# matters more there, and why?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
variants = {}  # the options changed -> (task, pruned model, seconds to prune)


def woodfisher_variant(**change):
    """Seed SEED's task and dense LeNet-300-100, pruned (once) by WoodFisher to the sweep's
    highest sparsity with the options of `METHODS` changed by ``change``."""
    key = tuple(sorted(change.items()))
    if key not in variants:
        t, model, _ = recipes.dense("lenet300", DATA, SEED, epochs=EPOCHS)
        name, options = METHODS["woodfisher"]
        start = time.perf_counter()
        sl.prune(
            model, name, max(SPARSITIES), data=calibration_for(t), seed=SEED, **options | change
        )
        variants[key] = (t, model, time.perf_counter() - start)
    return variants[key][:2]


VARIANTS = {"steps=1": {"steps": 1}, "update=False": {"update": False}}


def check_1(answer, solution=False):
    accuracy = {}
    for label, change in VARIANTS.items():
        t, model = woodfisher_variant(**change)
        accuracy[label] = recipes.evaluate_run(model, t)["accuracy"]
    lowest = min(accuracy.values())
    hint = "Change `steps` or `update` in the options of `METHODS['woodfisher']`; score each."
    sl.nb.check(1, answer, lambda a: isinstance(a, str) and accuracy.get(a) == lowest,
                hint=hint, solution=solution)  # fmt: skip


# %%
answer_1 = None  # "steps=1" or "update=False"
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  Without the update WoodFisher only chooses the weights, as OBD and
# `fisher_diag` do: nothing makes up for what it removes.  With one step it chooses and
# moves from the curvature at the dense point only, a quadratic model used far from where
# it was taken.  Which loss is larger is what the two runs say: here each is scored by hand
# on the test images, beside the full method's run of the sweep (same seed).
x_test, y_test = t300.bundle.test.tensors


def hand_accuracy(model, x, y):
    with torch.no_grad():
        return float((model.eval()(x).argmax(dim=1) == y).float().mean())


accuracy_1 = {
    label: hand_accuracy(woodfisher_variant(**change)[1], x_test, y_test)
    for label, change in VARIANTS.items()
}
full_1 = results[
    (results["method"] == "woodfisher") & (results["sparsity"] == top) & (results["seed"] == SEED)
]["test_accuracy"].iloc[0]
print(
    f"at {top:.0%}, seed {SEED}: WoodFisher {full_1:.2%}, "
    + ", ".join(f"with {label} {a:.2%}" for label, a in accuracy_1.items())
)
solution_1 = min(accuracy_1, key=accuracy_1.get)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** WoodFisher estimates the Fisher from `N_GRADS` per-example gradients.  Prune seed
# `SEED`'s model to `top` as in exercise 1, with the other options of `METHODS`, but with
# four times as many gradients, `n_samples=4 * N_GRADS` (512 in the full run; the
# calibration batches hold `n_calibration` images).  What is its test accuracy minus that
# of the sweep's WoodFisher run (the same seed and sparsity, in `results`), in points?  One
# decimal.  How does the time to prune change, and why?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    t, model = woodfisher_variant(n_samples=4 * N_GRADS)
    at_top = results[(results["sparsity"] == max(SPARSITIES)) & (results["seed"] == SEED)]
    sweep = at_top.set_index("method").loc["woodfisher", "test_accuracy"]
    gain = 100 * (recipes.evaluate_run(model, t)["accuracy"] - sweep)
    hint = "Prune with `n_samples` changed in the options of `METHODS['woodfisher']`; score it."
    sl.nb.check(2, answer, gain, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_2 = None  # points, e.g. 1.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Every gradient adds a rank-one term to each block of the Fisher: computing
# the per-example gradients and the Woodbury recursion over them both cost in proportion
# to their number, so the time grows about linearly with it.  A block's empirical Fisher
# has a rank of at most the number of gradients: with few of them the damping fills the
# directions they miss, and the ranking comes closer to magnitude's.  More gradients
# estimate the curvature better; whether that buys accuracy is what the two runs say.  By
# hand: the sweep's run again, timed, and both models scored on the test images.
_, model_2, _ = recipes.dense("lenet300", DATA, SEED, epochs=EPOCHS)
name_2, options_2 = METHODS["woodfisher"]
start_2 = time.perf_counter()
sl.prune(model_2, name_2, top, data=calibration300, seed=SEED, **options_2)
seconds_2 = {N_GRADS: time.perf_counter() - start_2}
seconds_2[4 * N_GRADS] = variants[(("n_samples", 4 * N_GRADS),)][2]
accuracy_2 = {
    N_GRADS: hand_accuracy(model_2, x_test, y_test),
    4 * N_GRADS: hand_accuracy(woodfisher_variant(n_samples=4 * N_GRADS)[1], x_test, y_test),
}
solution_2 = round(100 * (accuracy_2[4 * N_GRADS] - accuracy_2[N_GRADS]), 1)
print(
    ", ".join(f"{n} gradients: {accuracy_2[n]:.2%} in {seconds_2[n]:.2f} s" for n in accuracy_2)
    + f"; {solution_2:+.1f} points"
)
check_2(solution_2, solution=True)

# %% [markdown]
# **3.** In the 2-D picture OBS always removes the same weight as OBD, and only the cost
# differs (the table of the panels above shows one ratio of their saliencies for both
# weights: why?).  In three dimensions they can disagree.  With the weights
# `W_3D = (1, 1, 1)`, give a symmetric positive definite 3x3 Hessian for which OBD and OBS
# remove different weights (each with a single cheapest weight: no ties).


# %% tags=["hide-input"] jupyter={"source_hidden": true}
W_3D = torch.ones(3, dtype=torch.float64)


def removes(h):
    """(OBD's choice, OBS's choice) for ``W_3D`` under the Hessian ``h``; None when ``h``
    is not a symmetric positive definite 3x3 matrix or a choice is a tie."""
    try:
        h = torch.as_tensor(h, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None
    if h.shape != (3, 3) or not torch.allclose(h, h.T) or torch.linalg.eigvalsh(h).min() <= 0:
        return None
    choices = []
    for saliency in (obd_saliency(W_3D, h.diagonal()), obs_saliency(W_3D, h.inverse().diagonal())):
        low, second = saliency.sort().values[:2]
        if second - low < 1e-9 * second:
            return None
        choices.append(int(saliency.argmin()))
    return tuple(choices)


def check_3(answer, solution=False):
    def right(a):
        found = removes(a)
        return found is not None and found[0] != found[1]

    hint = (
        "OBD removes the weight with the smallest ``H_qq``, OBS the one with the largest "
        "``[H^-1]_qq``; a correlation between two weights changes the second, not the first."
    )
    sl.nb.check(3, answer, right, hint=hint, solution=solution)


# %%
answer_3 = None  # a 3x3 Hessian, e.g. [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
check_3(answer_3)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 3.  In 2-D, ``[H^-1]_qq = H_pp / det H`` (``p`` the other weight), so OBS's
# saliency ``w_q^2 det H / (2 H_pp)`` is OBD's ``H_qq w_q^2 / 2`` times ``det H / (H_11 H_22)``,
# the same factor for both weights: the same ranking, a lower cost.  In 3-D a third weight
# breaks that symmetry.  Make w1 the flattest direction on its own, and couple w2 and w3
# strongly: OBD removes w1, but w2 can be removed cheaply once w3 moves to make up for it.
# By hand, OBS's cost of removing ``q`` is the minimum of the bowl with ``w_q = 0``: the
# Schur complement ``w_q^2 (H_qq - H_qr H_rr^-1 H_rq) / 2`` over the other weights ``r``.
solution_3 = [[2.0, 0.0, 0.0], [0.0, 3.0, 2.5], [0.0, 2.5, 4.0]]
h_3 = torch.tensor(solution_3, dtype=torch.float64)
obd_3, obs_3 = [], []
for q in range(3):
    r = [i for i in range(3) if i != q]
    schur = h_3[q, q] - h_3[q, r] @ torch.linalg.solve(h_3[r][:, r], h_3[r, q])
    obd_3.append(float(h_3[q, q] * W_3D[q] ** 2 / 2))
    obs_3.append(float(schur * W_3D[q] ** 2 / 2))
print(f"OBD costs {[round(c, 3) for c in obd_3]}: removes w{np.argmin(obd_3) + 1}")
print(f"OBS costs {[round(c, 3) for c in obs_3]}: removes w{np.argmin(obs_3) + 1}")
assert np.argmin(obd_3) != np.argmin(obs_3)
check_3(solution_3, solution=True)

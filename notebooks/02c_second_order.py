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
# says, why magnitude pruning is the special case where the curvature is the identity, and
# how Optimal Brain Surgeon moves the surviving weights to compensate, all on a problem of
# two weights where every piece can be drawn.
#
# This follows section 3.5 of the survey (second-order selection: OBD, OBS, the Fisher and
# its approximations).  Its second part, [02i](02i_second_order_compared.ipynb), makes
# OBS affordable on LeNet-300-100 with the Fisher's approximations (WoodFisher, K-FAC,
# M-FAC) and compares them with magnitude pruning.  The layer-wise line of work that came
# after it (L-OBS, OBC, SparseGPT, Wanda), which prunes a network one layer at a time by
# keeping each layer's outputs, is the subject of [02e](02e_layerwise_reconstruction.ipynb).

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab.criteria.second_order import obd_saliency, obs_saliency, obs_update

# %% tags=["parameters"]
SMOKE = False
SEED = 0

# %%
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)  # 1: less contention


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

    def loss(w):
        return float(0.5 * (w - W_STAR) @ h @ (w - W_STAR))

    rows = {}
    for q in range(2):
        pruned = torch.arange(2) == q
        moved = W_STAR + obs_update(W_STAR, hinv, pruned)
        rows[f"w{q + 1}"] = {
            "|w|": float(W_STAR[q].abs()),
            "OBD saliency": float(obd_saliency(W_STAR, h.diagonal())[q]),
            "OBS saliency": float(obs_saliency(W_STAR, hinv.diagonal())[q]),
            "loss, others fixed": loss(torch.where(pruned, 0.0, W_STAR)),
            "loss, OBS update": loss(moved),
            "OBS end point": tuple(round(float(v), 3) for v in moved),
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("weight")


def draw_bowl(ax, correlation, stretch=4.0, legend=False, title=None):
    """The bowl of ``bowl(correlation, stretch)`` and where each method takes the weights."""
    table = candidates(h := bowl(correlation, stretch))
    removed = {}  # magnitude and OBD: the other weight stays where it is
    for label, column, marker in [("magnitude", "|w|", "s"), ("OBD", "OBD saliency", "^")]:
        name = table[column].idxmin()
        point = torch.where(torch.arange(2) == int(name[1]) - 1, 0.0, W_STAR)
        removed[f"{label}: {name} := 0"] = (point, marker)
    obs = table["OBS saliency"].idxmin()
    end = table.loc[obs, "OBS end point"]
    other = 1 if obs == "w1" else 0  # the weight OBS keeps, and may move
    moved = abs(end[other] - W_STAR[other].item()) > 1e-9
    what = "the other moves" if moved else "nothing else moves"
    moves = {f"OBS: {obs} := 0, {what}": end}
    sl.illustrations.quadratic_bowl(
        h, W_STAR, ax, points=removed, moves=moves, title=title, legend=legend
    )


fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), layout="tight")
identity = bowl(0.0, stretch=1.0)
draw_bowl(axes[0], 0.0, stretch=1.0, legend=True, title="H = I: all agree, OBS moves nothing")
draw_bowl(axes[1], 0.8, legend=True, title="curvature 4 along w1, correlation 0.8")
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
mag, obd, obs = (table[k].idxmin() for k in COLUMNS)
fixed = table["loss, others fixed"]
curvature = dict(zip(table.index, bowl(0.8).diagonal().tolist(), strict=True))
agree = {with_identity[k].idxmin() for k in COLUMNS}
identity_saved = (with_identity["loss, others fixed"] - with_identity["loss, OBS update"]).abs()
text = [f"Magnitude removes **{mag}**, the smaller weight, which costs {fixed[mag]:.2f}."]
if obd != mag and mag == max(curvature, key=curvature.get):
    text.append(
        f"OBD sees that {mag} sits in the steep direction (curvature {curvature[mag]:g} against "
        f"{min(curvature.values()):g}) and removes **{obd}** instead, for {fixed[obd]:.2f}."
    )
else:
    text.append(f"OBD removes **{obd}**, for {fixed[obd]:.2f}.")
text.append(
    f"OBS removes **{obs}** and moves the other weight along the valley: the cost falls to "
    f"{table.loc[obs, 'loss, OBS update']:.2f}."
)
agreed = f"agree on **{agree.pop()}**" if len(agree) == 1 else f"remove {', '.join(sorted(agree))}"
tail = (
    " and OBS has nothing to gain: its update saves nothing."
    if identity_saved.max() <= sl.stats.SPREAD_TOLERANCE
    else f"; OBS's update saves up to {identity_saved.max():.2f}."
)
text.append(f"With ``H = I`` (left) the three {agreed}{tail}")
sl.nb.md("  ".join(text))

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
rows = {}
for c in CORRELATIONS:
    panel = candidates(bowl(c))
    obs = panel["OBS saliency"].idxmin()
    ratio = panel["OBS saliency"] / panel["OBD saliency"]  # one factor for both weights in 2-D
    rows[c] = {
        "OBD removes": panel["OBD saliency"].idxmin(),
        "OBS removes": obs,
        "OBS / OBD saliency": ratio.iloc[0],
        "one ratio": bool(np.isclose(ratio.iloc[0], ratio.iloc[1])),
        "loss, others fixed": panel.loc[obs, "loss, others fixed"],
        "loss, OBS update": panel.loc[obs, "loss, OBS update"],
    }
panels = pd.DataFrame.from_dict(rows, orient="index").rename_axis("correlation")
saved = panels["saved by the update"] = panels["loss, others fixed"] - panels["loss, OBS update"]
with pd.option_context("display.precision", 3):
    print(panels.drop(columns="one ratio").to_string())
same = panels["OBD removes"] == panels["OBS removes"]
if same.all():
    removed = ", ".join(panels["OBS removes"].unique())
    ratios = ", ".join(f"{r:.3f} at {c:g}" for c, r in panels["OBS / OBD saliency"].items())
    text = f"OBD and OBS remove the same weight in every panel ({removed})"
    if panels["one ratio"].all():
        text += (
            ".  In two dimensions they always do: ``[H^-1]_qq = H_pp / det H`` (``p`` the other "
            "weight), so OBS's saliency is OBD's times ``det H / (H_11 H_22)``, one factor for "
            f"both weights ({ratios}).  Only the cost differs"
        )
    text += "."
else:
    differ = ", ".join(f"{c:g}" for c in panels.index[~same])
    text = f"OBD and OBS remove different weights at correlation {differ}."
trend = "the stronger the correlation, the more the surviving weight makes up."
if not (saved.diff().dropna() > sl.stats.SPREAD_TOLERANCE).all():
    trend = "the saving does not grow at every step of the correlation."
savings = ", ".join(f"{v:.3f} at {c:g}" for c, v in saved.items())
sl.nb.md(f"{text}  The update saves {savings}: {trend}")

# %% [markdown]
# ## Summary
#
# - Removing a weight costs what the curvature says: ``1/2 H_qq w_q^2`` if nothing else
#   moves (OBD), ``w_q^2 / (2 [H^-1]_qq)`` if the others compensate (OBS).  Magnitude
#   pruning is OBD with ``H = I``.
# - Real networks need the curvature approximated: [02i](02i_second_order_compared.ipynb)
#   does it with the empirical Fisher (its diagonal, WoodFisher, K-FAC, M-FAC) on
#   LeNet-300-100, and [02e](02e_layerwise_reconstruction.ipynb) one layer at a time (OBC,
#   SparseGPT, Wanda).
#
# What the cells above computed:

# %%
sl.nb.md(
    f"- In the bowl with correlation 0.8, magnitude, OBD and OBS remove {mag}, {obd} and "
    f"{table['OBS saliency'].idxmin()}, at a cost of {fixed[mag]:.2f}, {fixed[obd]:.2f} and "
    f"{table['OBS saliency'].min():.2f}.\n- OBS's update saves {saved.iloc[0]:.3f} of the loss "
    f"at correlation {CORRELATIONS[0]:g} and {saved.iloc[-1]:.3f} at {CORRELATIONS[-1]:g}."
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).
#
# **1.** In the 2-D picture OBS always removes the same weight as OBD, and only the cost
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


def check_1(answer, solution=False):
    def right(a):
        found = removes(a)
        return found is not None and found[0] != found[1]

    hint = (
        "OBD removes the weight with the smallest ``H_qq``, OBS the one with the largest "
        "``[H^-1]_qq``; a correlation between two weights changes the second, not the first."
    )
    sl.nb.check(1, answer, right, hint=hint, solution=solution)


# %%
answer_1 = None  # a 3x3 Hessian, e.g. [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  In 2-D, ``[H^-1]_qq = H_pp / det H`` (``p`` the other weight), so OBS's
# saliency ``w_q^2 det H / (2 H_pp)`` is OBD's ``H_qq w_q^2 / 2`` times ``det H / (H_11 H_22)``,
# the same factor for both weights: the same ranking, a lower cost.  In 3-D a third weight
# breaks that symmetry.  Make w1 the flattest direction on its own, and couple w2 and w3
# strongly: OBD removes w1, but w2 can be removed cheaply once w3 moves to make up for it.
# By hand, OBS's cost of removing ``q`` is the minimum of the bowl with ``w_q = 0``: the
# Schur complement ``w_q^2 (H_qq - H_qr H_rr^-1 H_rq) / 2`` over the other weights ``r``.
solution_1 = [[2.0, 0.0, 0.0], [0.0, 3.0, 2.5], [0.0, 2.5, 4.0]]
h_1 = torch.tensor(solution_1, dtype=torch.float64)
obd_1, obs_1 = [], []
for q in range(3):
    r = [i for i in range(3) if i != q]
    schur = h_1[q, q] - h_1[q, r] @ torch.linalg.solve(h_1[r][:, r], h_1[r, q])
    obd_1.append(float(h_1[q, q] * W_3D[q] ** 2 / 2))
    obs_1.append(float(schur * W_3D[q] ** 2 / 2))
print(f"OBD costs {[round(c, 3) for c in obd_1]}: removes w{np.argmin(obd_1) + 1}")
print(f"OBS costs {[round(c, 3) for c in obs_1]}: removes w{np.argmin(obs_1) + 1}")
assert np.argmin(obd_1) != np.argmin(obs_1)
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** In the 2-D bowls of `bowl(correlation)` (curvature 4 along w1, 1 along w2), the
# share of the loss with the others fixed that OBS's update saves, for the weight OBS
# removes, depends on the correlation only.  At which correlation does the update save
# exactly half of it?  Three decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def saved_share(correlation):
    """Share of the loss with the others fixed that OBS's update saves, for OBS's weight."""
    panel = candidates(bowl(correlation))
    row = panel.loc[panel["OBS saliency"].idxmin()]
    return 1 - row["loss, OBS update"] / row["loss, others fixed"]


def check_2(answer, solution=False):
    low, high = 0.0, 0.999  # the share grows with the correlation: bisect for one half
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if saved_share(middle) < 0.5 else (low, middle)
    hint = "Compute `saved_share` for a few correlations with `candidates(bowl(c))`; bisect."
    sl.nb.check(2, answer, low, hint=hint, tolerance=5e-4, solution=solution)


# %%
answer_2 = None  # a correlation, e.g. 0.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  By solution 1, OBS's loss is the loss with the others fixed times
# ``det H / (H_11 H_22)``.  For `bowl(c)`, ``H_12 = c sqrt(H_11 H_22)``, so that factor is
# ``1 - c^2``: the update saves the share ``c^2``, half at ``c = 1 / sqrt(2)``.  The panels'
# table agrees: its saving over its loss with the others fixed is ``c^2`` at every panel.
shares = panels["saved by the update"] / panels["loss, others fixed"]
print(pd.DataFrame({"saved share": shares, "c^2": panels.index.to_series() ** 2}).round(4))
assert np.allclose(shares, panels.index.to_series() ** 2)
solution_2 = round(0.5**0.5, 3)
check_2(solution_2, solution=True)

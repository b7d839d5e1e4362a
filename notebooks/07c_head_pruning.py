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
# # Ephemeral sparsity III: pruning attention heads
#
# **What you will learn:** how many attention heads of a trained transformer can go at test
# time when a gradient score chooses them, against a random order; how `shrink` removes
# masked heads for good; and how learned L0 gates choose heads during fine-tuning.
#
# [07b](07b_experts_attention_heads.ipynb) swaps sparse attention into trained tiny
# transformers; here we remove whole heads of the same dense models (`recipes.dense` on
# `"chars"`: trained by their recipe to predict the next character of Python's help texts
# after a window of 32), as in survey section 6.2.  [07](07_ephemeral_sparsity.ipynb)
# covers the zeros of the activations and errors, and [01b](01b_removing_structure.ipynb)
# removes heads together with channels and layers, fine-tuned.

# %%
import copy
import dataclasses
import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from torch import nn

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.ephemeral import heads

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
CHAR_EPOCHS = None  # None: the tiny transformer's recipe on "chars"
CHAR_OPTIONS = {}  # the default next-character data
HEAD_SPARSITIES = [0.0, 0.25, 0.5, 0.625, 0.75, 0.875]
CLAIM_HEAD_SPARSITY = 0.25  # the head share tested against Michel et al.'s claim
L0_EPOCHS = 2

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    CHAR_EPOCHS = 2
    CHAR_OPTIONS = {"n_train": 6000, "n_val": 300, "n_test": 300}
    HEAD_SPARSITIES = [0.0, 0.25, 0.5]
    L0_EPOCHS = 1
# the models are tiny: one thread avoids the overhead of splitting small products
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
CHAR_RECIPE = recipes.recipe_for("tiny_transformer", "chars")
verdicts = []  # the verdicts against the literature, for the summary
# the recipe's dense tiny transformer of each seed (read from the disk cache once trained)
dense_chars = {
    seed: recipes.dense("tiny_transformer", "chars", seed, epochs=CHAR_EPOCHS, **CHAR_OPTIONS)
    for seed in SEEDS
}
text, transformer, _ = dense_chars[SEED]
tokens = text.bundle.test.tensors[0]


def measured(run):
    """The held-out measures of a run of `recipes.evaluate_run`, as table columns."""
    return dict(test_accuracy=run["accuracy"], perplexity=run["perplexity"], flags=run["flags"])


def with_perplexity(df, column, baseline, by=()):
    """Paired accuracy differences, and the mean paired perplexity difference next to them."""
    acc = sl.stats.against_baseline(df, column, baseline, by=by)
    ppl = sl.stats.against_baseline(df, column, baseline, metric="perplexity", by=by)
    return acc.assign(perplexity_diff=ppl["mean_diff"].to_numpy())


# %% [markdown]
# ## Head pruning
#
# Michel et al. (2019) report that many attention heads can be removed from a trained
# transformer at test time; we test that on a tiny one.  Their score of a head (not a weight
# norm; `heads.head_importance`, on the validation split) is `|dL / d xi_h|`, the derivative
# of the loss with respect to a gate `xi_h = 1` on its output, summed over batches and
# normalised per layer; the lowest-scoring heads across all layers go first.  We compare with
# a random order, without fine-tuning, on each seed's transformer: held-out accuracy and
# perplexity.


# %%
def prune_heads_curve(seed):
    t, model, _ = dense_chars[seed]
    scores = heads.head_importance(model, t.loaders()[1])
    gen = torch.Generator().manual_seed(seed)
    random_scores = {p: torch.rand(s.shape, generator=gen) for p, s in scores.items()}
    rows = []
    for order, s in (("importance", scores), ("random", random_scores)):
        for sparsity in HEAD_SPARSITIES:
            pruned = copy.deepcopy(model)
            heads.prune_heads(pruned, s, sparsity)
            run = recipes.evaluate_run(pruned, t)
            rows.append({"order": order, "head_sparsity": sparsity, "seed": seed, **measured(run)})
    return rows, scores


head_curves = {seed: prune_heads_curve(seed) for seed in SEEDS}
head_runs = pd.DataFrame([row for rows, _ in head_curves.values() for row in rows])
importance = head_curves[SEED][1]  # seed SEED's head scores
n_heads = sum(s.numel() for s in importance.values())

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
sl.viz.matrix_heatmap(torch.stack(list(importance.values())), axes[0], xlabel="head",
                      ylabel="layer", title="head importance (normalised per layer)",
                      vmin=None, vmax=None, colorbar="importance")  # fmt: skip
sl.experiments.plot_mean_ci(head_runs, "head_sparsity", "test_accuracy", hue="order", ax=axes[1])
axes[1].set(
    xlabel=f"fraction of the {n_heads} heads removed", title="Head pruning without fine-tuning"
)
plt.tight_layout()
plt.show()
head_means = head_runs.groupby(["order", "head_sparsity"])[["test_accuracy", "perplexity"]]
display(head_means.mean().round(4))
head_flags = sl.flags.table(head_runs, ["order", "head_sparsity"])
sl.nb.show_flags(head_flags)
removed = head_runs[head_runs["head_sparsity"] > 0]
order_diffs = with_perplexity(removed, "order", "random", by=["head_sparsity"])
order_diffs.round(4)

# %% [markdown]
# Masked heads are removed for good by `sl.shrink.shrink`, which rebuilds a smaller dense
# transformer that computes the same function:

# %%
half = copy.deepcopy(transformer)
kept = heads.prune_heads(half, importance, 0.5)
small = heads.shrink_heads(half, tokens[:8])
with torch.no_grad():
    gap = (small(tokens) - half(tokens)).abs().max().item()
before = sum(p.numel() for p in transformer.parameters())
after = sum(p.numel() for p in small.parameters())
by_importance = head_runs[head_runs["order"] == "importance"]
claim_diff, claim_ppl = (
    sl.stats.paired(by_importance, "head_sparsity", CLAIM_HEAD_SPARSITY, 0.0, metric=m).iloc[0]
    for m in ("test_accuracy", "perplexity")
)
half_order = order_diffs.set_index("head_sparsity").loc[0.5]
# the kinds of flag raised on the curves, in words about pruned heads
flag_words = {
    "at chance level": "at chance level",
    "layer pruned to 100%": "with a layer's heads all removed",
    "class never predicted": "that never predict some class",
    "disconnected": "whose output does not depend on the input",
}
head_flag_kinds = sl.flags.kinds(head_flags["flags"], len(head_runs)).split(sl.flags.SEPARATOR)
head_flag_kinds = [k.split(" (")[0] for k in head_flag_kinds]  # without "(2 of 6)"
flagged_runs_are = " or ".join(flag_words.get(k, f"flagged '{k}'") for k in head_flag_kinds)
fired = "; ".join(
    f"{r.order} order at {r.head_sparsity:.0%} of heads ({r.flagged_runs} runs: {r.flags})"
    for r in head_flags.itertuples()
)
sl.nb.md(
    f"Removing {CLAIM_HEAD_SPARSITY:.0%} of the {n_heads} heads by importance changes "
    f"held-out accuracy by {sl.stats.describe(claim_diff)} and perplexity by "
    f"{sl.stats.describe(claim_ppl, scale=1.0, unit='')}, against the model with all heads.  "
    f"At half the heads, importance order minus random order is "
    f"{sl.stats.describe(half_order)}.  The shrunk model (half the heads) has {after:,} "
    f"parameters instead of {before:,}, and its outputs differ from the masked model by at "
    f"most {gap:.1e}.  "
    + (
        f"Sanity flags fired for {fired}: those points of the curves include runs "
        f"{flagged_runs_are}."
        if fired
        else "No sanity flag fired on the head-pruning curves."
    )
)

# %% [markdown]
# **Against the literature**, computed from the paired difference above:

# %%
setting = (
    f"tiny transformer ({n_heads} heads, {before:,} parameters) on next-character prediction, "
    f"{CLAIM_HEAD_SPARSITY:.0%} of heads removed by importance"
)
head_verdict = sl.claims.verdict("heads_prunable_at_test_time", claim_diff, setting=setting)
compared = by_importance[by_importance["head_sparsity"].isin([0.0, CLAIM_HEAD_SPARSITY])]
at_chance = int(compared["flags"].str.contains("chance").sum())
chance = f"  {at_chance} of the {len(compared)} compared runs are at chance level."
# what was measured: each seed's accuracy change from removing the heads (the interval's
# width)
per_seed = compared.pivot_table(index="seed", columns="head_sparsity", values="test_accuracy")
changes = 100 * (per_seed[CLAIM_HEAD_SPARSITY] - per_seed[0.0])
reason = (
    f"Here {CLAIM_HEAD_SPARSITY:.0%} is {round(CLAIM_HEAD_SPARSITY * n_heads)} of {n_heads} "
    f"heads of a {before:,}-parameter model trained {CHAR_EPOCHS or CHAR_RECIPE.epochs} "
    f"epoch(s) on {len(text.bundle.train):,} windows, {len(SEEDS)} seed(s), whose accuracy "
    f"changes from removing them run from {changes.min():+.1f} to {changes.max():+.1f} "
    "points.  The paper's models have 144 heads (BERT-base) or more; that each of their "
    "heads carries a smaller share of the work is a possible reason, not one measured "
    "here." + (chance if at_chance else "")
)
if head_verdict.status != sl.claims.REPRODUCED:
    head_verdict = dataclasses.replace(head_verdict, reason=reason)
verdicts.append(head_verdict)
sl.nb.md(sl.claims.report([head_verdict]))

# %% [markdown]
# ### Learned head gates (Voita et al. 2019)
#
# Instead of scoring heads once, Voita et al. learn a stochastic Hard Concrete gate per head
# together with the model, with an L0 penalty on the expected number of open gates; heads
# whose gate closes are pruned.  We fine-tune one seed's trained transformer for a few
# epochs with loss + `lambda` x L0 (Adam); the budget, and whether any gate closes within
# it, are reported below.

# %%
gated = copy.deepcopy(transformer)
gates = heads.HeadL0Gates(gated)
l0_weight = 0.1
# the gates get a larger step than the weights: they must travel from open to closed
groups = [{"params": gated.parameters(), "lr": 1e-3}, {"params": gates.parameters(), "lr": 0.05}]
optimizer = torch.optim.Adam(groups)


def l0_loss(output, target):
    return nn.functional.cross_entropy(output, target) + l0_weight * gates.penalty()


train_loader = text.loaders()[0]
sl.train.fit(gated, train_loader, epochs=L0_EPOCHS, optimizer=optimizer, loss_fn=l0_loss, seed=SEED)
gates.eval()
open_heads = gates.keep()
gated_run = recipes.evaluate_run(gated, text)
gates.remove()
heads.prune_heads(gated, keep=open_heads)
pruned_run = recipes.evaluate_run(gated, text)
dense_run_chars = recipes.evaluate_run(transformer, text)
n_open = sum(int(k.sum()) for k in open_heads.values())
open_p = gates.open_probability()
probabilities = {p: [round(v, 2) for v in q.tolist()] for p, q in open_p.items()}
lowest_open = min(float(q.min()) for q in open_p.values())
with torch.no_grad():  # the value each gate multiplies its head by at test time
    lowest_gate = min(float(gates.gate(p).min()) for p in gates.paths)
gap = pruned_run["accuracy"] - gated_run["accuracy"]
if gap == 0:
    gap_words = "; its held-out accuracy is identical to the gated score" + (
        f" (every gate's open probability is {'' if lowest_open >= 0.995 else 'at least '}"
        f"{lowest_open:.2f} and its test-time value 1, so the gates scale nothing)"
        if lowest_gate == 1.0
        else ""
    )
else:
    gap_words = (
        f" (the gates' test-time values, {lowest_gate:.2f} at the lowest, scale the heads, "
        f"hence the gap of {100 * gap:+.2f} points to the gated score)"
    )
gate_flags = [r["flags"] for r in (gated_run, pruned_run) if r["flags"]]
none_closed = (
    "  No gate closed at this L0 weight and budget, so no head was removed: the pruned model "
    f"is the fine-tuned one with its gates taken out{gap_words}.  A larger weight or longer "
    "fine-tuning may close gates (exercise 2)."
)
sl.nb.md(
    f"After {L0_EPOCHS} fine-tuning epoch(s) on {len(text.bundle.train):,} windows with L0 "
    f"weight {l0_weight}, {n_open} of {n_heads} gates are open; with the closed heads masked "
    f"the model scores {pruned_run['accuracy']:.2%} held-out accuracy, perplexity "
    f"{pruned_run['perplexity']:.2f} (gated: {gated_run['accuracy']:.2%}; the dense model "
    f"before fine-tuning: {dense_run_chars['accuracy']:.2%}, perplexity "
    f"{dense_run_chars['perplexity']:.2f}; one seed, so no interval).  Probability that each "
    f"gate is open, by layer: {probabilities}.  "
    + (f"Flags: {'; '.join(gate_flags)}." if gate_flags else "No sanity flag fired.")
    + (none_closed if n_open == n_heads else "")
)


# %% [markdown]
# ## Summary
#
# - Whole attention heads can be scored by the gradient of the loss with respect to a gate
#   on their output (Michel et al.) or learn their own Hard Concrete gates under an L0
#   penalty (Voita et al.); [07b](07b_experts_attention_heads.ipynb) sparsifies the
#   attention weights inside the heads instead.
# - `shrink` turns masked heads into a smaller model with the same outputs.
#
# What this run measured (held-out accuracy; the first item paired against the model with
# all heads of the same seed, and importance order against random order; the second one
# seed):

# %%
sl.nb.md(
    f"- Removing {CLAIM_HEAD_SPARSITY:.0%} of the heads by gradient importance: "
    f"{sl.stats.describe(claim_diff)}; at half the heads, importance order minus random order "
    f"{sl.stats.describe(half_order)}.\n- Learned L0 gates ({L0_EPOCHS} epoch(s), weight "
    f"{l0_weight}): {n_open} of {n_heads} gates open; with the closed heads pruned, "
    f"{pruned_run['accuracy']:.2%} held-out accuracy ({dense_run_chars['accuracy']:.2%} before "
    "fine-tuning)."
)

# %% [markdown]
# The verdicts against the literature:

# %%
display(sl.claims.table(verdicts))
sl.nb.md(sl.claims.report(verdicts))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about, on seed `SEED` and with this run's settings.
#
# **1.** Remove 75% of the heads of seed `SEED`'s transformer by importance
# (`heads.prune_heads(model, importance, 0.75)` on a copy of `transformer`), then fine-tune
# it for one epoch with the recipe's settings (`CHAR_RECIPE.training()` with one epoch,
# seed `SEED`; the masks keep the removed heads out).  How many points of held-out accuracy
# does the epoch bring back (after minus before)?  One decimal.  How close does it come to
# the model with every head?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache
def quarter_of_heads():
    """Seed SEED's transformer with 75% of its heads removed, before and after an epoch."""
    before = copy.deepcopy(transformer)
    heads.prune_heads(before, importance, 0.75)
    after = copy.deepcopy(before)
    options = {**CHAR_RECIPE.training(), "epochs": 1}
    sl.train.fit(after, text.loaders(CHAR_RECIPE.batch_size)[0], seed=SEED, progress=False,
                 **options)  # fmt: skip
    return before, after


def check_1(answer, solution=False):
    before, after = (recipes.evaluate_run(m, text)["accuracy"] for m in quarter_of_heads())
    hint = "Evaluate the pruned copy before and after its epoch (`recipes.evaluate_run`)."
    sl.nb.check(1, answer, 100 * (after - before), hint=hint, tolerance=0.05, solution=solution)


# %%
answer_1 = None  # points, e.g. 4.2
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  The remaining heads and the layers around them learn to do without the
# others; one epoch recovers part of the loss, and how much depends on how much the
# removed heads carried.  By hand: the heads with the lowest importance across layers are
# the removed ones (their columns of the output projection are zero in both models), and
# the held-out windows are scored directly.
tokens_1, labels_1 = text.bundle.test.tensors


def held_out(model):
    with torch.no_grad():
        return float((model.eval()(tokens_1).argmax(dim=-1) == labels_1).float().mean())


paths = list(importance)
flat = torch.cat([importance[p] for p in paths])
removed = set(flat.argsort()[: round(0.75 * len(flat))].tolist())
before_1, after_1 = quarter_of_heads()
for model in (before_1, after_1):
    for i, p in enumerate(paths):
        layer = model.get_submodule(p)
        size = layer.out.in_features // layer.n_heads
        columns = layer.out.weight.detach().reshape(-1, layer.n_heads, size)
        alive = columns.ne(0).any(dim=2).any(dim=0)  # heads whose output is still read
        assert [not a for a in alive.tolist()] == [i * layer.n_heads + h in removed
                                                   for h in range(layer.n_heads)]  # fmt: skip
solution_1 = round(100 * (held_out(after_1) - held_out(before_1)), 1)
print(f"{len(removed)} of {len(flat)} heads removed: {held_out(before_1):.2%} before the epoch, "
      f"{held_out(after_1):.2%} after; every head: {held_out(transformer):.2%}")  # fmt: skip
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Train the head gates of the last section again with L0 weight 1 instead of
# `l0_weight` (a copy of `transformer`, the same optimizer and learning rates, `L0_EPOCHS`
# epochs, seed `SEED`).  How many of the `n_heads` gates are closed at the end (`keep()`
# False)?  What does the model score with those heads pruned?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache
def gates_with(weight):
    """A copy of seed SEED's transformer fine-tuned with L0 head gates of ``weight``."""
    model = copy.deepcopy(transformer)
    gate = heads.HeadL0Gates(model)
    optimizer = torch.optim.Adam(
        [{"params": model.parameters(), "lr": 1e-3}, {"params": gate.parameters(), "lr": 0.05}]
    )

    def loss_fn(output, target):
        return nn.functional.cross_entropy(output, target) + weight * gate.penalty()

    sl.train.fit(model, text.loaders()[0], epochs=L0_EPOCHS, optimizer=optimizer,
                 loss_fn=loss_fn, seed=SEED, progress=False)  # fmt: skip
    gate.eval().remove()  # the model without its gates; the gates keep their log_alphas
    return model, gate


def check_2(answer, solution=False):
    _, gate = gates_with(1.0)
    closed = sum(int((~k).sum()) for k in gate.keep().values())
    hint = "Count the False entries of `gates.keep()` after the fine-tuning."
    sl.nb.check(2, answer, closed, hint=hint, solution=solution)


# %%
answer_2 = None  # a number of heads, e.g. 3
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  At test time a gate is clamp(sigmoid(log_alpha) (zeta - gamma) + gamma, 0,
# 1), which is 0 exactly when sigmoid(log_alpha) <= -gamma / (zeta - gamma) = 1/12, that
# is when log_alpha <= -log(11).  A larger L0 weight pushes the log_alphas down faster;
# whether they cross that line depends on how long they train.  By hand, from the raw
# log_alphas:
model_2, gate_2 = gates_with(1.0)
log_alpha = torch.cat([a.detach() for a in gate_2.log_alpha])
solution_2 = int((log_alpha <= -np.log(11)).sum())
print(f"log_alpha: {[round(v, 2) for v in log_alpha.tolist()]}; closed: {solution_2} of {n_heads}")
pruned_2 = copy.deepcopy(model_2)
heads.prune_heads(pruned_2, keep=gate_2.keep())
pruned_2 = recipes.evaluate_run(pruned_2, text)
print(f"with the closed heads pruned: {pruned_2['accuracy']:.2%} held-out accuracy, "
      f"perplexity {pruned_2['perplexity']:.2f}")  # fmt: skip
check_2(solution_2, solution=True)

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
# # Ephemeral sparsity II: experts and sparse attention
#
# **What you will learn:** how a mixture of experts routes each example to a few experts,
# and what sparse attention patterns look like and what they cost a trained transformer.
#
# Ephemeral sparsity is in what flows through the network and changes with every input.
# [07](07_ephemeral_sparsity.ipynb) measures it in LeNet-300-100: the zeros of its
# activations, forced or free, those the dropout family draws at each step, and sparse
# back-propagated errors.  Here it is in the routing decisions of a mixture of experts and
# in the attention weights of a tiny transformer (survey sections 5 and 6.2), whose heads
# [07c](07c_head_pruning.ipynb) then prunes.  Gradient sparsity for distributed training:
# [08](08_gradient_compression.ipynb).

# %%
import copy
import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from torch import nn

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.ephemeral import attention as attn
from sparsity_lab.ephemeral import moe

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
EPOCHS = None  # None: the LeNet-300-100 recipe's epochs, for every MNIST model here
MNIST_OPTIONS = {}  # the default data: the recipe's expected accuracy is checked
CHAR_EPOCHS = None  # None: the tiny transformer's recipe on "chars"
CHAR_OPTIONS = {}  # the default next-character data

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    EPOCHS = 2
    CHAR_EPOCHS = 2
    CHAR_OPTIONS = {"n_train": 6000, "n_val": 300, "n_test": 300}
# the models are tiny: one thread avoids the overhead of splitting small products
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
MNIST_RECIPE = recipes.recipe_for("lenet300", "mnist")
# every MNIST model of this chapter trains with LeNet-300-100's recipe (SGD, momentum,
# cosine schedule), only the epochs shortened in smoke runs
MNIST_FIT = {**MNIST_RECIPE.training(), "epochs": EPOCHS or MNIST_RECIPE.epochs}
CHAR_RECIPE = recipes.recipe_for("tiny_transformer", "chars")


@functools.cache
def mnist(seed):
    return recipes.task("lenet300", "mnist", seed=seed, **MNIST_OPTIONS)


def chars_dense(seed):
    """The recipe's dense tiny transformer on next-character prediction, for ``seed``."""
    return recipes.dense("tiny_transformer", "chars", seed, epochs=CHAR_EPOCHS, **CHAR_OPTIONS)


# %% [markdown]
# ## Mixture of experts: where the examples go
#
# A mixture-of-experts layer has several expert MLPs and a router that sends each example to
# a few of them; the others do no work for it.  Our tiny MoE classifier (stem, a residual
# MoE layer with 4 experts, head) gets two routers: **noisy top-2** (Shazeer et al. 2017,
# with its importance and load balancing losses) and **Switch** top-1 routing (Fedus et al.
# 2021) with capacity factor 1.25: an expert takes at most `1.25 x batch / 4` examples and
# the overflow skips the layer.  The baseline has **all 4 experts** weighting every example
# (top-4 of 4, no noise): same parameters, no sparsity.  All three train with LeNet-300-100's
# recipe (same hyper-parameters and epochs; MoE models have none of their own), same seeds.


# %%
ROUTERS = {
    "all 4 experts": ("moe_topk", {"k": 4, "noisy": False}),
    "noisy top-2": ("moe_topk", {"k": 2}),
    "switch (top-1, cf 1.25)": ("switch", {"capacity_factor": 1.25}),
}


def train_moe(router, seed):
    t = mnist(seed)
    kind, options = ROUTERS[router]
    torch.manual_seed(seed)
    shape, classes = t.bundle.input_shape, t.bundle.n_classes
    model = moe.MoEClassifier(shape, classes, n_experts=4, router=kind, **options)
    loss_fn = moe.with_aux_loss(nn.CrossEntropyLoss(), model)
    sl.train.fit(model, t.loaders()[0], loss_fn=loss_fn, seed=seed, **MNIST_FIT)
    return model, t


def moe_run(router, seed):
    model, t = train_moe(router, seed)
    run = recipes.evaluate_run(model, t)
    if seed == SEED:
        routed[router] = (model, t)
    return {"test_accuracy": run["accuracy"], "flags": run["flags"]}


routed = {}
moe_runs = sl.experiments.sweep(moe_run, {"router": list(ROUTERS)}, SEEDS)
display(sl.stats.summarize(moe_runs, "router", "test_accuracy").round(4))
sl.nb.show_flags(sl.flags.table(moe_runs, "router"))
moe_diffs = sl.stats.against_baseline(moe_runs, "router", "all 4 experts")
display(moe_diffs.round(4))


def routing_shares(model, t):
    """Each digit's (row) share of routing choices per expert (column) on the test set,
    and how many of its choices the capacity dropped (the test set is one batch)."""
    xt, yt = t.bundle.test.tensors
    with torch.no_grad():
        model.eval()(xt)  # fills model.moe.last_routing
    routing = model.moe.last_routing
    grid = np.zeros((10, 4))
    kept = routing.kept
    np.add.at(grid, (yt[:, None].expand_as(kept)[kept].numpy(), routing.experts[kept].numpy()), 1)
    return grid / grid.sum(1, keepdims=True), f"dropped {routing.dropped} of {len(yt)} in one batch"


shares = {n: routing_shares(*routed[n]) for n in ["noisy top-2", "switch (top-1, cf 1.25)"]}
title = f"Share of each digit's routing choices per expert (test set, seed {SEED})"
sl.viz.matrix_panels({f"{n}\n{dropped}": g for n, (g, dropped) in shares.items()}, title=title,
                     xlabel="expert", ylabel="digit", colorbar="share of the digit's choices",
                     aspect="auto", figsize=(9, 3.6))  # fmt: skip
plt.show()

# %%
switch_model, switch_task = routed["switch (top-1, cf 1.25)"]
xt = switch_task.bundle.test.tensors[0]
drops = []
with torch.no_grad():
    h = torch.relu(switch_model.stem(xt.flatten(1)))
    for cf in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0):
        switch_model.moe.router.capacity_factor = cf
        r = switch_model.moe.router(h)
        drops.append({"capacity_factor": cf, "capacity": r.capacity, "dropped": r.dropped / len(h)})
switch_model.moe.router.capacity_factor = 1.25
drop_table = pd.DataFrame(drops)
moe_words = {r: sl.stats.describe(row) for r, row in moe_diffs.set_index("router").iterrows()}
sl.nb.md(
    f"Each example uses 2 of 4 experts with top-2 routing and 1 of 4 with Switch, so the "
    f"expert layer does half or a quarter of the work of all 4 experts.  Minus the "
    f"all-experts network of the same seed, top-2 is {moe_words['noisy top-2']} and Switch "
    f"{moe_words['switch (top-1, cf 1.25)']} (test accuracy, {MNIST_FIT['epochs']} epoch(s) "
    f"each).  The capacity factor bounds how uneven the routing may be: on the {len(h)} test "
    f"images (one batch) the Switch router drops {drop_table.dropped.iloc[0]:.0%} of them at "
    f"capacity factor 0.5 and {drop_table.dropped.iloc[-1]:.0%} at 2.0."
)
drop_table

# %% [markdown]
# ## Sparse attention patterns
#
# In self-attention every query compares itself with every key.  Fixed sparse patterns let
# each query see only a few keys: a **local** window, the **strided** pattern of the Sparse
# Transformer (Child et al. 2019: a local band plus every `stride`-th key) and **BigBird**
# (Zaheer et al. 2020: window + random keys + global tokens).  Dark cells are allowed.

# %%
L = 16
patterns = {
    "local (window 2)": attn.local_attention(L, 2),
    "strided (stride 4)": attn.strided_attention(L, 4),
    "strided, causal": attn.strided_attention(L, 4, causal=True),
    "bigbird (1 + 2 random + 1 global)": attn.bigbird(L, window=1, n_random=2, n_global=1),
}
panels = {f"{name}\n{mask.float().mean():.0%} of pairs": mask for name, mask in patterns.items()}
sl.viz.matrix_panels(panels, cmap="Greys", step=4, xlabel="key", ylabel="query", figsize=(11, 3))
plt.show()

# %% [markdown]
# The width of each pattern (the window, the stride, BigBird's window) sets how many pairs
# it keeps.  Move it in a live kernel (the book shows three widths of each pattern).

# %%
PATTERNS = {
    "local": lambda width: attn.local_attention(L, width),
    "strided": lambda width: attn.strided_attention(L, width),
    "bigbird": lambda width: attn.bigbird(L, window=width, n_random=2, n_global=1),
}


def draw_pattern(ax, width, pattern):
    mask = PATTERNS[pattern](width)
    title = f"{mask.float().mean():.0%} of pairs"
    sl.viz.matrix_heatmap(mask.float(), ax=ax, cmap="Greys", step=4, title=title)


sl.nb.explore(draw_pattern, width=[2, 4, 8], pattern=list(PATTERNS))

# %% [markdown]
# These counts depend only on the length and the seed, so the notebook checks them:

# %% tags=["nbval-check-output"]
for name, mask in patterns.items():
    print(f"{name}: {int(mask.sum())} of {L * L} query-key pairs")
print("sparsemax([1, 0.5, -1]) =", attn.sparsemax(torch.tensor([1.0, 0.5, -1.0])).tolist())

# %% [markdown]
# The other family chooses keys from the data: **top-k attention** (Zhao et al. 2019) keeps
# the `k` largest scores of each query; **sparsemax** (Martins & Astudillo 2016) and
# **1.5-entmax** (Peters et al. 2019) replace softmax by normalisers that return exact
# zeros.  We plug each into the *trained* tiny transformer of each seed (`recipes.dense`:
# softmax attention, trained by its recipe to predict the next character of Python's help
# texts after a window of 32, `"chars"`), without retraining, and measure held-out accuracy,
# perplexity and the fraction of attention weights that are exactly zero.  A sentiment task
# that the dense model solves perfectly could not show these differences; this one leaves room.


# %%
def measured(run):
    """The held-out measures of a run of `recipes.evaluate_run`, as table columns."""
    return dict(test_accuracy=run["accuracy"], perplexity=run["perplexity"], flags=run["flags"])


def attention_variants(length):
    return {
        "softmax (dense)": attn.attention_fn(),
        "local, window 2": attn.attention_fn(mask=attn.local_attention(length, 2)),
        "strided, stride 4": attn.attention_fn(mask=attn.strided_attention(length, 4)),
        "bigbird": attn.attention_fn(mask=attn.bigbird(length, 1, 2, 1)),
        "top-4": attn.attention_fn(topk=4),
        "sparsemax": attn.attention_fn(normaliser="sparsemax"),
        "1.5-entmax": attn.attention_fn(normaliser="entmax"),
    }


rows, maps, dense_chars = [], {}, {}
for seed in SEEDS:
    text, trained, char_info = chars_dense(seed)
    dense_chars[seed] = (text, trained, char_info)
    tokens = text.bundle.test.tensors[0]
    for name, fn in attention_variants(text.bundle.input_shape[0]).items():
        model = attn.use_attention(copy.deepcopy(trained), fn)
        weights = attn.attention_maps(model, tokens)  # no padding: every pair is real
        zeros = np.mean([float((w == 0).float().mean()) for w in weights.values()])
        run = recipes.evaluate_run(model, text)
        rows.append({"attention": name, "seed": seed, **measured(run), "zero_weights": zeros})
        if seed == SEED:
            maps[name] = weights["blocks.0.attn"]
attention_runs = pd.DataFrame(rows)
text, transformer, char_info = dense_chars[SEED]
tokens = text.bundle.test.tensors[0]
attention_means = attention_runs.groupby("attention")[["perplexity", "zero_weights"]].mean()
attention_table = sl.stats.summarize(attention_runs, "attention", "test_accuracy")
display(attention_table.join(attention_means, on="attention").round(4))
sl.nb.show_flags(sl.flags.table(attention_runs, "attention"))


def with_perplexity(df, column, baseline, by=()):
    """Paired accuracy differences, and the mean paired perplexity difference next to them."""
    acc = sl.stats.against_baseline(df, column, baseline, by=by)
    ppl = sl.stats.against_baseline(df, column, baseline, metric="perplexity", by=by)
    return acc.assign(perplexity_diff=ppl["mean_diff"].to_numpy())


attention_diffs = with_perplexity(attention_runs, "attention", "softmax (dense)")
attention_diffs.round(4)

# %%
example = 0
chars = [{" ": "␣", "\n": "⏎"}.get(c, c) for c in text.bundle.decode(tokens[example])]
shown = ["softmax (dense)", "local, window 2", "top-4", "sparsemax", "1.5-entmax"]
title = "Attention weights of layer 0, head 0, for one test window (white: exactly 0)"
panels = {name: maps[name][example, 0] for name in shown}
sl.viz.matrix_panels(panels, title=title, xticklabels=chars, yticklabels=chars, fontsize=5,
                     blank_zeros=True)  # fmt: skip
plt.show()

# %%
at = attention_runs.groupby("attention")[["test_accuracy", "perplexity", "zero_weights"]].mean()
ad = attention_diffs.set_index("attention")
# what the recipe's expected accuracy assumes, where this run differs from it
shortened = CHAR_EPOCHS and CHAR_EPOCHS != CHAR_RECIPE.epochs
recipe_terms = f" with its {CHAR_RECIPE.epochs} epoch(s)" if shortened else ""
recipe_terms += " on the full data" if CHAR_OPTIONS else ""
SWAPPED = ["sparsemax", "1.5-entmax", "top-4", "local, window 2", "strided, stride 4", "bigbird"]
swapped = [
    f"{name} zeros {at.loc[name, 'zero_weights']:.0%} of the attention weights, accuracy "
    f"{sl.stats.describe(ad.loc[name])} against softmax "
    f"(perplexity {at.loc[name, 'perplexity']:.2f})"
    for name in SWAPPED
]
sl.nb.md(
    f"The dense models reach {at.loc['softmax (dense)', 'test_accuracy']:.2%} held-out "
    f"accuracy and perplexity {at.loc['softmax (dense)', 'perplexity']:.2f} "
    f"({CHAR_EPOCHS or CHAR_RECIPE.epochs} epoch(s) of the recipe on {len(text.bundle.train):,} "
    f"windows; the recipe expects {CHAR_RECIPE.expected_test_accuracy:.0%}{recipe_terms}).  "
    f"Swapped in without retraining: {'; '.join(swapped)}.  The model never saw these "
    "attention functions in training; exercise 1 fine-tunes with one in place."
)

# %% [markdown]
# ## Summary
#
# - Ephemeral sparsity lives in what flows through the network and changes with every input:
#   here routing to a few experts (top-k and Switch MoE) and sparse attention weights (fixed
#   patterns, top-k, sparsemax, entmax); [07](07_ephemeral_sparsity.ipynb) covers ReLU
#   zeros, forced activation sparsity, sparse back-propagated errors and the dropout family.
# - [07c](07c_head_pruning.ipynb) goes on to remove whole attention heads of the same
#   transformers, by a gradient score and by learned gates.
#
# What this run measured, each arm against its dense counterpart of the same seed
# (test accuracy, paired):

# %%
labels = ["sparsemax", "1.5-entmax", "top-4", "local window", "strided", "BigBird"]
sl.nb.md(
    f"- Against all 4 experts, noisy top-2 routing: {moe_words['noisy top-2']}; Switch: "
    f"{moe_words['switch (top-1, cf 1.25)']}.  The capacity factor trades dropped examples "
    f"({drop_table.dropped.iloc[0]:.0%} at 0.5, {drop_table.dropped.iloc[-1]:.0%} at 2.0) "
    "against expert load.\n- Sparse attention swapped into a trained next-character model, "
    "held-out accuracy against softmax: "
    + ", ".join(f"{a} {sl.stats.describe(ad.loc[n])}" for a, n in zip(labels, SWAPPED, strict=True))
    + "."
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about, on seed `SEED` and with this run's settings.
#
# **1.** Fine-tune the trained softmax model of seed `SEED` with sparsemax attention in
# place, for one epoch: `copy.deepcopy(transformer)`,
# `attn.use_attention(model, attn.attention_fn(normaliser="sparsemax"))`, then
# `sl.train.fit` on `text.loaders()` with the recipe's settings (`CHAR_RECIPE.training()`
# with 1 epoch, seed `SEED`).  What is its held-out accuracy minus that of the softmax
# model, in points?  One decimal.  Compare it with sparsemax swapped in without training:
# does training with it close the gap?  (Training a fresh model with sparsemax from the
# start, as its softmax model was trained, is the other way to ask; it costs four times as
# much, since an epoch with sparsemax takes about 30 s on one core.)


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache
def fine_tuned_with(normaliser):
    """Seed SEED's trained softmax model fine-tuned one epoch with ``normaliser`` attention."""
    model = attn.use_attention(copy.deepcopy(transformer), attn.attention_fn(normaliser=normaliser))
    options = {**CHAR_RECIPE.training(), "epochs": 1}
    train, val, _ = text.loaders(CHAR_RECIPE.batch_size)
    sl.train.fit(model, train, val, seed=SEED, progress=False, **options)
    return model


def seed_row(df, column, arm, metric="test_accuracy"):
    """``metric`` of seed SEED's run of ``arm`` in ``df``."""
    return df[(df[column] == arm) & (df["seed"] == SEED)][metric].iloc[0]


def check_1(answer, solution=False):
    trained = recipes.evaluate_run(fine_tuned_with("sparsemax"), text)["accuracy"]
    gap = 100 * (trained - seed_row(attention_runs, "attention", "softmax (dense)"))
    hint = "Subtract the softmax model's accuracy (`attention_runs`, seed SEED) from yours."
    sl.nb.check(1, answer, gap, hint=hint, tolerance=0.05, solution=solution)


# %%
answer_1 = None  # points, e.g. -1.5
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  Swapped in after training, sparsemax gives the model attention weights it
# never learnt to use; trained with it, the queries and keys can adapt their scores to the
# projection onto the simplex, so the gap can narrow: the measurement says whether one
# epoch does here.  With one seed the difference has no interval.
# By hand: both models' predictions on the held-out windows, scored directly.
tokens_1, labels_1 = text.bundle.test.tensors


def held_out(model):
    with torch.no_grad():
        return float((model.eval()(tokens_1).argmax(dim=-1) == labels_1).float().mean())


sparse_model = fine_tuned_with("sparsemax")
maps_1 = attn.attention_maps(sparse_model, tokens_1)
zeros_1 = np.mean([float((w == 0).float().mean()) for w in maps_1.values()])
swapped_gap = seed_row(attention_runs, "attention", "sparsemax") - held_out(transformer)
solution_1 = round(100 * (held_out(sparse_model) - held_out(transformer)), 1)
print(f"softmax {held_out(transformer):.2%}; sparsemax fine-tuned {held_out(sparse_model):.2%} "
      f"({zeros_1:.0%} of its attention weights are 0)")  # fmt: skip
print(f"minus softmax: swapped in {100 * swapped_gap:+.1f} points, fine-tuned {solution_1:+.1f}")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Train the Switch model of the mixture-of-experts section (seed `SEED`, `MNIST_FIT`)
# with capacity factor 0.5 instead of 1.25.  Over its whole training, what share of the
# training examples skipped the expert layer, their choice dropped because the expert was
# full?  Two decimals.  What happens to the test accuracy?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache
def switch_half():
    """Switch with capacity factor 0.5, trained as `train_moe` trains, its task, and for
    each training batch the choices its routing dropped and the router's scores."""
    t = mnist(SEED)
    torch.manual_seed(SEED)
    model = moe.MoEClassifier(
        t.bundle.input_shape, t.bundle.n_classes, n_experts=4, router="switch", capacity_factor=0.5
    )
    seen = []

    def record(router, inputs, routing):
        if router.training:
            with torch.no_grad():
                seen.append((routing.dropped, inputs[0] @ router.w_gate.weight.T))

    handle = model.moe.router.register_forward_hook(record)
    loss_fn = moe.with_aux_loss(nn.CrossEntropyLoss(), model)
    sl.train.fit(model, t.loaders()[0], loss_fn=loss_fn, seed=SEED, **MNIST_FIT)
    handle.remove()
    return model, t, seen


def check_2(answer, solution=False):
    _, _, seen = switch_half()
    share = sum(dropped for dropped, _ in seen) / sum(len(scores) for _, scores in seen)
    hint = "Add up `routing.dropped` over the training batches (a forward hook on the router)."
    sl.nb.check(2, answer, share, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a fraction, e.g. 0.42
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Each expert takes at most ceil(0.5 x batch / 4) examples, an eighth of the
# batch, so half of every batch skips the layer even when the routing is perfectly even,
# and more when it is not; the skipped examples only get the residual path.  By hand,
# from the router's scores: each example's expert is the largest score, and every expert
# keeps its first examples up to the capacity.
dropped, examples = 0, 0
for _, scores in switch_half()[2]:
    chosen = scores.softmax(dim=1).argmax(dim=1)
    capacity = int(np.ceil(0.5 * len(scores) / 4))
    dropped += int((torch.bincount(chosen, minlength=4) - capacity).clamp(min=0).sum())
    examples += len(scores)
solution_2 = round(dropped / examples, 2)
model_2, task_2, _ = switch_half()
accuracy_2 = recipes.evaluate_run(model_2, task_2)["accuracy"]
usual = seed_row(moe_runs, "router", "switch (top-1, cf 1.25)")
print(f"{dropped:,} of {examples:,} training examples skipped the experts ({solution_2:.2f})")
print(f"test accuracy: capacity factor 0.5 {accuracy_2:.2%}, 1.25 {usual:.2%}")
check_2(solution_2, solution=True)

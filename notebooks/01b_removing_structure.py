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
# # What to prune II: removing channels, heads and layers
#
# **What you will learn:** how coupled structure (residual-stream channels, attention heads,
# whole blocks, embedding rows) is removed for good, so that a smaller dense model computes
# exactly what the masked one does; what that buys in parameters, FLOPs, bytes and real
# speed; and how the fixed zeros of the weights differ from the zeros of the activations.
#
# It continues [01](01_what_to_prune.ipynb) (granularities from single weights to channels
# on LeNet-300-100 and LeNet-5, in storage) and [01c](01c_patterns_compared.ipynb) (in
# accuracy at equal sparsity), following sections 2.3 and 3.1 of the survey: *model*
# sparsity at its coarsest, then a glance at *ephemeral* sparsity, the activation zeros that
# change with every input.

# %%
import copy
import statistics
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab import recipes, shrink
from sparsity_lab.ephemeral.activations import relu_stats

# %% tags=["parameters"]
SMOKE = False
SEED = 0
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images
FINETUNE_EPOCHS = 2
RESNET_DATA = "mnist"
RESNET_EPOCHS = None  # None: the recipe's epochs
TRANSFORMER_EPOCHS = None  # None: the chars recipe's epochs
TRANSFORMER_SEEDS = [0, 1, 2]
TRANSFORMER_FINETUNE_EPOCHS = 1
CHAR_TRAIN = None  # None: the recipe's 40,000 training windows
CHAR_EVAL = None
TIMING_ROUNDS = 15
TIMING_BATCH = 256

# %%
if SMOKE:  # a quick pass through every cell, for CI
    EPOCHS = 2
    FINETUNE_EPOCHS = 1
    N_TRAIN = 500
    N_EVAL = 200
    RESNET_DATA = "digits"  # 8x8 images: the same network, a fraction of the work
    RESNET_EPOCHS = 1
    TRANSFORMER_EPOCHS = 1
    TRANSFORMER_SEEDS = [0]
    CHAR_TRAIN = 3000
    CHAR_EVAL = 300
    TIMING_ROUNDS = 3
    TIMING_BATCH = 64
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)  # 1: less contention
DATA = {k: v for k, v in {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}.items() if v}
CHAR_DATA = {"n_train": CHAR_TRAIN, "n_val": CHAR_EVAL, "n_test": CHAR_EVAL}
CHAR_DATA = {k: v for k, v in CHAR_DATA.items() if v}
RESNET = {"epochs": RESNET_EPOCHS, **(DATA if RESNET_DATA == "mnist" else {})}
CHARS = {"epochs": TRANSFORMER_EPOCHS, **CHAR_DATA}  # the tiny transformer's setting

# %% [markdown]
# ## Physical removal: a small ResNet pruned by channels
#
# Channels in a residual network are coupled: a block adds its output to its input, so a
# channel of the residual stream can only go if the stem and every block writing it let it
# go.  `shrink.prune_coupled(model, "channel", s)` chooses each group's channels together (by
# the norm of all the rows that write them) and removes each channel whole, as Li et al.
# (2017) do: the rows that write it and the columns that read it.  `shrink.shrink` then
# builds the smaller dense model (rows, columns and BatchNorm entries go), which computes
# exactly what the masked one does.  (Had only the rows been masked, a removed channel's
# BatchNorm shift would still send a constant, which shrink folds into the next layer,
# through zero padding as a fixed map at the borders: see Exercise 1.)

# %%
rtask, resnet, rinfo = recipes.dense("resnet_small", RESNET_DATA, SEED, **RESNET)
masked = copy.deepcopy(resnet)
shrink.prune_coupled(masked, "channel", 0.5)
test_loader = rtask.loaders()[2]
untuned = recipes.evaluate_run(masked, rtask)
resnet_budget = recipes.finetune(masked, rtask, FINETUNE_EPOCHS, lr=0.01, progress=False)
small = shrink.shrink(masked)
shrink.plan(masked)

# %% [markdown]
# The shapes of the shrunk convolutions do not depend on the training, so they are checked:

# %% tags=["nbval-check-output"]
for name, module in small.named_modules():
    if isinstance(module, torch.nn.Conv2d):
        print(f"{name:22} {type(module).__name__:13} {tuple(module.weight.shape)}")

# %%
x_test, _ = next(iter(test_loader))
with torch.no_grad():
    diff = float((masked.eval()(x_test) - small.eval()(x_test)).abs().max())
assert diff <= 1e-5, diff
tuned = recipes.evaluate_run(masked, rtask)
shrunk_accuracy = recipes.evaluate_run(small, rtask)["accuracy"]
accuracies = {"dense": rinfo["test_accuracy"], "masked, before fine-tuning": untuned["accuracy"]}
accuracies |= {"masked": tuned["accuracy"], "shrunk": shrunk_accuracy}
resnet_flags = {"dense model": rinfo["flags"], "masked model before fine-tuning": untuned["flags"]}
resnet_flags["masked model after fine-tuning"] = tuned["flags"]
flag_text = " ".join(f"Flags of the {name}: {f}." for name, f in resnet_flags.items() if f)
sl.nb.md(
    f"The small ResNet ({rinfo['recipe'].epochs} epoch(s) of its recipe on "
    f"{len(rtask.bundle.train):,} {RESNET_DATA} images), with half of its channels pruned, "
    f"then fine-tuned {resnet_budget['finetune_epochs']} epoch(s) "
    f"({resnet_budget['finetune_flops']:.2g} FLOPs).  Largest difference between the masked "
    f"and the shrunk outputs on a test batch: {diff:.1e}.  Test accuracy: "
    + ", ".join(f"{k} {v:.2%}" for k, v in accuracies.items())
    + f".  {flag_text or 'No sanity flag fired.'}"
)

# %% [markdown]
# Now the speed: the masked model still computes every zero, the shrunk one does not.  Each
# round times a forward pass of a test batch for the three models in turn (so machine noise
# hits them alike); the median is shown.  The ideal speedup is the ratio of the weight
# FLOPs.  Hooked copies of the masked and shrunk models, timed in the same rounds, split each
# pass into the time inside the layers with weights and the rest.

# %%
SPEED_TARGET = 0.7  # the benchmark's target: at least 70% of the ideal speedup
x_batch = torch.cat([x for x, _ in test_loader])[:TIMING_BATCH]
runs = {"dense": resnet, "masked": masked, "shrunk": small}
# the hooked copies time the convolutions and linear layers (the layers with weights)
medians = sl.accel.time_forward(runs, x_batch, TIMING_ROUNDS, split=["masked", "shrunk"])
timed = pd.Series({k: medians[k]["total"] for k in runs})
split = {k: medians[f"{k}, hooked"] for k in ("masked", "shrunk")}
flops = {k: sl.report(runs[k]).set_index("name").loc["total", "dense_flops"] for k in split}
ideal = flops["masked"] / flops["shrunk"]
speedup = timed["masked"] / timed["shrunk"]
gain = {part: split["masked"][part] / split["shrunk"][part] for part in ("inside", "rest")}
rest_share = {k: v["rest"] / v["total"] for k, v in split.items()}
ax = (1e3 * timed).plot.bar(figsize=(5, 3), color=["C7", "C0", "C2"], rot=0, xlabel="")
ax.set(ylabel=f"ms per batch of {len(x_batch)}", title="small ResNet, 50% of channels pruned")
plt.show()
params = {k: sum(p.numel() for p in runs[k].parameters()) for k in ("masked", "shrunk")}
met = speedup >= SPEED_TARGET * ideal
rest_text = f"the rest of the pass, which sped up {gain['rest']:.1f}x"
if gain["inside"] >= SPEED_TARGET * ideal:  # said only when the target is missed
    why = f"  The layers with weights alone meet the target, so the miss comes from {rest_text}."
else:
    why = (
        f"  The layers with weights alone miss the target too ({gain['inside'] / ideal:.0%} "
        "of the ideal): the shrunk layers run below the speed their FLOPs promise"
        + (f", and {rest_text}, adds to the miss." if gain["rest"] < gain["inside"] else ".")
    )
sl.nb.md(
    f"The shrunk model has {params['shrunk']:,} parameters instead of {params['masked']:,} "
    f"and {flops['shrunk'] / flops['masked']:.0%} of the weight FLOPs: an ideal speedup of "
    f"{ideal:.1f}x.  Measured: {speedup:.1f}x over the masked model ({speedup / ideal:.0%} "
    f"of ideal; the target of the benchmark is {SPEED_TARGET:.0%}, "
    f"{'met' if met else 'missed'} here).  In the hooked copies, the convolutions and the "
    f"linear layer ran {gain['inside']:.1f}x faster, the rest of the pass (BatchNorm, ReLU, "
    f"additions, pooling) {gain['rest']:.1f}x; that rest takes {rest_share['masked']:.0%} "
    f"of the masked model's time and {rest_share['shrunk']:.0%} of the shrunk one's."
    + ("" if met else why)
)

# %% [markdown]
# ## Heads, layers and embedding rows: the tiny transformer
#
# A head spans four tensors: head *h* owns a slice of the rows of the q, k and v projections
# and the same columns of the output projection.  `prune_coupled(model, "head", s)` ranks all
# heads, across layers, by the L2 norm of those weights and removes the lowest: a data-free
# stand-in for the importance of Michel et al. 2019 (notebook 07c,
# `heads.head_importance`), the first-order loss change when a head is masked: the
# absolute loss gradient with respect to a gate on its output, averaged over batches.  A
# head with zero v rows outputs its v bias whatever it attends to, so shrink removes it
# and folds that constant into the output projection's bias.
#
# The model is the tiny transformer (2 blocks of 4 heads, width 64) trained with its recipe
# to predict the next character of Python's help texts (`"chars"`), scored by held-out
# accuracy and perplexity: a task it does not solve, so removing structure has room to show
# a cost.

# %%
ttask, transformer, tinfo = recipes.dense("tiny_transformer", "chars", SEED, **CHARS)
dense_chars = recipes.evaluate_run(transformer, ttask)
head_rows = []
for fraction in [0.0, 0.25, 0.5, 0.75]:
    m = copy.deepcopy(transformer)
    if fraction:
        shrink.prune_coupled(m, "head", fraction)
    small_t = shrink.shrink(m)
    masked_run, shrunk_run = recipes.evaluate_run(m, ttask), recipes.evaluate_run(small_t, ttask)
    left = [getattr(b, "attn", None) and b.attn.n_heads or 0 for b in small_t.blocks]
    n_params = sum(p.numel() for p in small_t.parameters())
    row = {"heads pruned": fraction, "heads left": left, "parameters after shrink": n_params}
    row |= {"test accuracy": masked_run["accuracy"], "perplexity": masked_run["perplexity"]}
    row |= {f"shrunk {k}": shrunk_run[k] for k in ("accuracy", "perplexity")}
    head_rows.append(row | {"flags": masked_run["flags"]})
heads_table = pd.DataFrame(head_rows).set_index("heads pruned")
heads_table

# %%
acc, ppl = heads_table["test accuracy"], heads_table["perplexity"]
same = "the same perplexity as the masked ones at every row (to 4 digits)."
if not np.allclose(ppl, heads_table["shrunk perplexity"], rtol=1e-4):
    same = "a different perplexity from the masked ones in some rows (see the table)."
sl.nb.md(
    f"Dense (seed {SEED}, {tinfo['recipe'].epochs} epoch(s) on {len(ttask.bundle.train):,} "
    f"windows): test accuracy {dense_chars['accuracy']:.1%}, perplexity "
    f"{dense_chars['perplexity']:.2f}; the most frequent character alone scores "
    f"{sl.flags.chance_accuracy(ttask.bundle.train.tensors[1]):.1%}.  Without any "
    f"fine-tuning, removing a quarter of the heads gives {acc.iloc[1]:.1%} (perplexity "
    f"{ppl.iloc[1]:.2f}), half of them {acc.iloc[2]:.1%} ({ppl.iloc[2]:.2f}) and three "
    f"quarters {acc.iloc[3]:.1%} ({ppl.iloc[3]:.2f}).  The shrunk models give {same}"
    + (f"  Flag: {tinfo['flags']}." if tinfo["flags"] else "")
)

# %% [markdown]
# Is a head, or a whole block, a worse unit to remove than single weights?  At equal
# sparsity on the same tensors: half of the heads against unstructured magnitude pruning of
# the attention projections, one block of two against unstructured pruning of all block
# weights; each measured right after pruning and after fine-tuning with fixed masks (the
# recipe's optimizer at a lower learning rate, given below), paired per seed.

# %%
ATTENTION = [n for n in sl.pruning.default_targets(transformer) if ".attn." in n]
BLOCKS = [n for n in sl.pruning.default_targets(transformer) if n.startswith("blocks.")]
T_RECIPE = tinfo["recipe"]
FINETUNE_LR = 1e-3  # the fine-tuning's learning rate, below the recipe's
FINETUNE = {"lr": FINETUNE_LR, "optimizer": T_RECIPE.optimizer, "progress": False}


def transformer_run(unit, arm, seed):
    t, m, _ = recipes.dense("tiny_transformer", "chars", seed, **CHARS)
    names = ATTENTION if unit == "head" else BLOCKS
    structured = copy.deepcopy(m)
    shrink.prune_coupled(structured, unit, 0.5)
    target = sl.pruning.sparsity(structured, names)
    if arm == "unstructured":
        structured = sl.prune(m, "magnitude", target, targets=names, budget="global")
    pruned = recipes.evaluate_run(structured, t, target_sparsity=target, names=names)
    cost = recipes.finetune(structured, t, TRANSFORMER_FINETUNE_EPOCHS, **FINETUNE)
    final = recipes.evaluate_run(structured, t, target_sparsity=target, names=names)
    row = {"sparsity": target, **cost} | {k: final[k] for k in ("accuracy", "perplexity", "flags")}
    return row | {f"pruned_{k}": pruned[k] for k in ("accuracy", "perplexity", "flags")}


grid = {"unit": ["head", "layer"], "arm": ["structured", "unstructured"]}
units = sl.experiments.sweep(transformer_run, grid, seeds=TRANSFORMER_SEEDS, progress=False)
for column, what in [("pruned_flags", "right after pruning"), ("flags", "after fine-tuning")]:
    sl.nb.show_flags(sl.flags.table(units, ["unit", "arm"], column), what=f"{what} (test)")
weights = {"head": "attention", "layer": "block"}
sparsity = units.groupby("unit", sort=False)["sparsity"].mean()
unit_table = pd.DataFrame(index=sparsity.index)
unit_table["sparsity"] = [f"{s:.1%} of the {weights[u]} weights" for u, s in sparsity.items()]
arms = {"column": "arm", "treatment": "unstructured", "baseline": "structured", "by": "unit"}
for stage, when in [("pruned_", "no fine-tuning"), ("", "fine-tuned")]:  # each with its flags
    for metric in ("accuracy", "perplexity"):
        pairs = sl.stats.paired(units, **arms, metric=stage + metric, flags=stage + "flags")
        scale = {} if metric == "accuracy" else {"scale": 1.0, "unit": ""}  # perplexity as is
        described = {r.unit: sl.stats.describe(r, **scale) for r in pairs.itertuples()}
        unit_table[f"{metric}, {when}"] = pd.Series(described)

# What the flags say: the removed block itself, chance level (at which stage), or more.
EMPTIED, CHANCE = "layer pruned to 100%", "at chance level"
ONE_BLOCK = [{n for n in BLOCKS if n.startswith(f"blocks.{b}.")} for b in range(2)]
layer_runs = units[(units["unit"] == "layer") & (units["arm"] == "structured")]
emptied = [sl.flags.named(t, EMPTIED) for t in [*layer_runs["flags"], *layer_runs["pruned_flags"]]]
layer_whole = all(names in ONE_BLOCK for names in emptied)
found_kinds = [sl.flags.kinds([t], 1) for t in [*units["flags"], *units["pruned_flags"]]]
other_kinds = {k for t in found_kinds for k in t.split(sl.flags.SEPARATOR)}
other_kinds -= {"", EMPTIED, CHANCE}
chance_stages = []
for r in units.itertuples():
    stages = {"right after pruning": r.pruned_flags, "fine-tuned": r.flags}
    if when := [stage for stage, text in stages.items() if CHANCE in text]:
        chance_stages.append(f"{r.unit} {r.arm}, seed {r.seed}, {' and '.join(when)}")
layer_flag_note = "the flag is the removed block itself" if layer_whole else ""
lr_share = sl.words.simple_fraction(FINETUNE_LR / T_RECIPE.lr)  # "1/3", else two digits
sl.nb.md(
    "Unstructured minus structured, paired per seed (accuracy in points; perplexity in its "
    f"own units, lower is better).  Fine-tuning: {TRANSFORMER_FINETUNE_EPOCHS} epoch(s) of "
    f"`{T_RECIPE.optimizer}` (the recipe's optimizer) at a learning rate of {FINETUNE_LR:g}, "
    f"{lr_share} of the recipe's {T_RECIPE.lr:g}; {units['finetune_flops'].min():.3g} to "
    f"{units['finetune_flops'].max():.3g} FLOPs per run.  "
    + (
        f"In the {len(layer_runs)} structured layer run(s) the flag `{EMPTIED}` names "
        "exactly the weight tensors of the removed block, before and after fine-tuning: "
        "it is the unit this pattern removes, not a failure.  "
        if layer_whole
        else f"In some structured layer runs `{EMPTIED}` names more or less than the "
        "tensors of one block (tables above).  "
    )
    + (
        f"{len(chance_stages)} of the {len(units)} runs were flagged at chance level "
        f"({'; '.join(chance_stages)})"
        if chance_stages
        else "No run was flagged at chance level, before or after fine-tuning"
    )
    + (f"; other flags: {', '.join(sorted(other_kinds))}." if other_kinds else ".")
)
unit_table

# %% [markdown]
# The masks of the three granularities on the transformer: a head is a band of rows of q
# (and of columns of the output projection), a layer is a whole block (every weight of its
# attention and MLP: `prune_coupled(model, "layer", s)`; shrink then keeps only the residual
# path plus a constant), and an embedding row is one token of the vocabulary
# (`pattern="embedding"` on `tok_emb.weight`).

# %%
heads_model, layer_model, emb_model = (copy.deepcopy(transformer) for _ in range(3))
shrink.prune_coupled(heads_model, "head", 0.5)
shrink.prune_coupled(layer_model, "layer", 0.5)
sl.prune(emb_model, "magnitude", 0.5, pattern="embedding", targets=["tok_emb.weight"])
fc1 = {b: sl.masks.get_mask(layer_model, f"blocks.{b}.fc1.weight") for b in range(2)}
(removed,) = [b for b, mask in fc1.items() if not mask.any()]
panels = {
    f"heads: blocks.0.attn.{p}": sl.masks.get_mask(heads_model, f"blocks.0.attn.{p}.weight")
    for p in ("q", "out")
}
panels["embedding: tok_emb"] = sl.masks.get_mask(emb_model, "tok_emb.weight")
panels |= {f"layer: blocks.{b}.fc1": mask for b, mask in fc1.items()}
sl.viz.mask_gallery(panels, ncols=3)
plt.show()
no_block = recipes.evaluate_run(layer_model, ttask)
no_rows = recipes.evaluate_run(emb_model, ttask)
flags_of = {"without the block": no_block["flags"], "without the vectors": no_rows["flags"]}
flags_of["of the dense model"] = dense_chars["flags"]
sl.nb.md(
    f"Without fine-tuning (seed {SEED}), removing block {removed} (of 2) leaves a test "
    f"accuracy of {no_block['accuracy']:.1%} (perplexity {no_block['perplexity']:.2f}); "
    f"removing half of the vocabulary's vectors, {no_rows['accuracy']:.1%} "
    f"({no_rows['perplexity']:.2f}); dense: {dense_chars['accuracy']:.1%} "
    f"({dense_chars['perplexity']:.2f})."
    + "".join(f"  Flags {name}: {f}." for name, f in flags_of.items() if f)
)

# %% [markdown]
# What these three patterns buy, in the same accounting as the LeNet table of
# [01](01_what_to_prune.ipynb) (`sl.report`, 4-byte values and indices): heads and layers
# are stored shrunk (the dense tensors left after removal), embedding rows as one block per
# kept token vector.

# %%
FLOPS = "FLOPs (masked: nonzeros; shrunk: parameters)"
n_heads = transformer.blocks[0].attn.n_heads


def coupled_spec(name, kind):
    """The pattern of a tensor pruned by ``prune_coupled(kind)``, for its storage."""
    reads_heads = ":in" if name.endswith("attn.out.weight") else ""  # columns, not rows
    return "layer" if kind == "layer" else f"head:{n_heads}{reads_heads}"


def cost_row(pattern, r, flops, dense_bytes):
    """One row of the table from a row ``r`` of ``sl.report``; ``flops``: its FLOPs column."""
    counts = {"parameters": int(r["parameters"]), "nonzeros": int(r["nonzeros"])}
    counts |= {FLOPS: int(r[flops]), "bytes": int(r["bytes"])}
    return {"pattern": pattern, **counts, "bytes / dense": r["bytes"] / dense_bytes}


t_costs = []
for kind, m in [("head", heads_model), ("layer", layer_model)]:
    pattern = {n: coupled_spec(n, kind) for n in sl.masks.masks(m)}
    total = sl.report(m, pattern=pattern).set_index("name").loc["total"]
    after = sl.report(shrink.shrink(m)).set_index("name").loc["total"]
    t_costs.append(cost_row(kind, total, "sparse_flops", total["dense_bytes"]))
    t_costs.append(cost_row(f"{kind}, after shrink", after, "dense_flops", total["dense_bytes"]))
emb = sl.report(emb_model, pattern={"tok_emb.weight": "embedding"}).set_index("name")
emb = emb.loc["tok_emb.weight"]  # a lookup: no multiply-adds, so no FLOPs
t_costs.append(cost_row("embedding (tok_emb only)", emb, "sparse_flops", emb["dense_bytes"]))
pd.DataFrame(t_costs).set_index("pattern").round(3)

# %% [markdown]
# ## Model sparsity and ephemeral sparsity
#
# Everything above is *model* sparsity: zeros in the weights, the same for every input.  A
# ReLU network also makes *ephemeral* zeros: each negative pre-activation becomes an exact
# 0, a different set per input.  `relu_stats` measures them, beside the weight sparsity of
# the layer feeding each ReLU, for the dense LeNet-300-100 of [01](01_what_to_prune.ipynb)
# (same recipe and seed) and a copy pruned to 90% (unstructured) and fine-tuned.

# %%
task300, lenet300, info300 = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
pruned300 = copy.deepcopy(lenet300)
recipes.prune_and_finetune(
    pruned300, task300, "magnitude", 0.9, finetune_epochs=FINETUNE_EPOCHS, progress=False
)
val300 = task300.loaders()[1]
rows = []
for label, m in [("dense", lenet300), ("90% pruned", pruned300)]:
    weights = sl.report(m).set_index("name")["sparsity"]
    acts = relu_stats(m, val300).set_index("site")
    for layer in ("fc1", "fc2"):
        site = acts.loc[f"relu({layer})"]
        rows.append((label, layer, weights[f"{layer}.weight"], *site[["sparsity", "dead_units"]]))
columns = ["model", "layer", "weight sparsity", "activation sparsity", "dead units"]
ephemeral = pd.DataFrame(rows, columns=columns).set_index(["model", "layer"])
ephemeral.round(3)

# %%
act = ephemeral["activation sparsity"]
sl.nb.md(
    f"Even the dense network's hidden activations are {act.loc[('dense', 'fc1')]:.0%} zeros "
    "after `fc1`: ephemeral sparsity comes for free with ReLU, but it moves with every "
    "input, so exploiting it needs hardware or kernels that skip zeros on the fly (survey "
    f"section 5).  After pruning 90% of the weights it is {act.loc[('90% pruned', 'fc1')]:.0%}."
)

# %% [markdown]
# ## Summary
#
# - Channels, heads and layers, like the channels and inputs of
#   [01](01_what_to_prune.ipynb), cost nothing to store once `shrink` removes them: what
#   is left is a smaller dense model, which runs with ordinary dense kernels.
#   Embedding rows are stored as one block per kept token vector.
# - Coupled structure matters: residual groups lose channels together, heads span four
#   projections, and a removed head's constant output is folded into the next bias, so
#   the shrunk model computes what the masked one does.
# - ReLU activations are sparse without pruning, but that sparsity is ephemeral.
#
# What the runs above measured:

# %%
lines = [
    f"- The small ResNet with 50% of its channels shrunk ran {speedup:.1f}x faster than its "
    f"masked version ({speedup / ideal:.0%} of the {ideal:.1f}x ideal)."
]
lines += [
    f"- Transformer, unstructured minus {unit} pruning at equal sparsity, fine-tuned: "
    f"accuracy {r['accuracy, fine-tuned']}, perplexity {r['perplexity, fine-tuned']}"
    + (f"; {layer_flag_note}." if unit == "layer" and layer_flag_note else ".")
    for unit, r in unit_table.iterrows()
]
sl.nb.md("\n".join(lines))

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** Prune a copy of the dense small ResNet (`resnet`) per tensor with
# `sl.prune(model, "magnitude", 0.5, pattern="channel", budget="uniform")` instead of
# `prune_coupled` (it warns that the layers sharing a residual stream chose different
# channels).  With `shrink.plan`, how many channels of the residual streams (its groups
# `stem`, `stages.1.0` and `stages.2.0`) can shrink remove, in all?  Why so few?  Which
# layers of the shrunk model became `OffsetConv2d`, and what does their `offset` map look
# like?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def per_tensor_resnet():
    """A copy of ``resnet`` pruned per tensor by channel, 50% uniform."""
    m = copy.deepcopy(resnet)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the split residual streams warn
        sl.prune(m, "magnitude", 0.5, pattern="channel", budget="uniform")
    return m


def check_1(answer, solution=False):
    m = per_tensor_resnet()
    streams = {s.name for s in shrink.structure(m).spaces if len(s.writers) > 1}
    removed = shrink.plan(m).query("kind == 'channels'").set_index("group")["removed"]
    hint = "Add up the `removed` column of `shrink.plan` over the three residual streams."
    sl.nb.check(1, answer, int(removed[list(streams)].sum()), hint=hint, solution=solution)


# %%
answer_1 = None  # a number of channels, e.g. 12
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  A channel of a residual stream is the sum of what every layer writing it
# puts there (the stem, or a block's shortcut, and each block's conv2): it goes only when
# all of them pruned it.  Pruned per tensor, each layer picks its own half of the rows, so
# only the channels they happen to share can go, where `prune_coupled` removes half of
# every stream.  A channel whose rows are zero is not silent: its BatchNorm shift still
# adds a constant, which the next 3x3 convolution turns into a fixed map that zero
# padding makes different along the borders.  Shrink folds that map into the layers that
# read the removed channels: those become `OffsetConv2d`, with one map per output channel
# of the size of its output, constant inside and different along the edges where the
# padding cuts the kernel (all zero where that channel reads nothing from the removed ones
# or their shift is zero; channel 0 of each is printed).  By hand: the
# writers of each stream from the architecture, and the rows that all of them zeroed.
resnet_1 = per_tensor_resnet()
writers_1 = {"stem": ["stem.0"]}
stream_1 = "stem"
for stage_index, stage in enumerate(resnet_1.stages):
    for block_index, block in enumerate(stage):
        path = f"stages.{stage_index}.{block_index}"
        if not isinstance(block.shortcut, torch.nn.Identity):  # a projection starts a stream
            stream_1 = path
            writers_1[stream_1] = [f"{path}.shortcut.0"]
        writers_1[stream_1].append(f"{path}.conv2")


def zero_rows(name):
    """The output channels of layer ``name`` whose weights are all zero."""
    rows = resnet_1.get_submodule(name).weight.detach().flatten(1)
    return set(torch.nonzero((rows == 0).all(dim=1)).flatten().tolist())


gone_1 = {s: set.intersection(*(zero_rows(w) for w in ws)) for s, ws in writers_1.items()}
solution_1 = sum(len(g) for g in gone_1.values())
coupled_1 = shrink.plan(masked).query("kind == 'channels'").set_index("group")["removed"]
print(
    "removable: "
    + ", ".join(f"{s} {len(g)} (prune_coupled: {coupled_1[s]})" for s, g in gone_1.items())
    + f"; {solution_1} in all"
)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the offset maps warn
    small_1 = shrink.shrink(resnet_1)
for name, module in small_1.named_modules():
    if hasattr(module, "offset"):
        first = module.offset[0]  # the map of the first output channel
        border = torch.cat([first[0], first[-1], first[:, 0], first[:, -1]])
        inside = first[1:-1, 1:-1]
        print(
            f"{name} ({type(module).__name__}): offset {tuple(module.offset.shape)}; channel 0 "
            + (f"{inside.min():+.4f} to {inside.max():+.4f} inside, " if inside.numel() else "")
            + f"{border.min():+.4f} to {border.max():+.4f} along the border"
        )
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Measure `relu_stats` of the dense small ResNet (`resnet`) on its validation data
# (`rtask.loaders()[1]`).  Which ReLUs are the sparsest: those inside the blocks (after
# `bn1`) or those after the residual additions?  Answer with the mean sparsity of the
# three ReLUs inside the blocks minus the mean of the three after the additions, in
# points (one decimal; negative when those after the additions are sparser).


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    stats = relu_stats(resnet, rtask.loaders()[1]).set_index("site")["sparsity"]
    inside = stats[stats.index.str.endswith(".bn1)")].mean()
    after = stats[stats.index.str.contains(":relu#")].mean()
    hint = "Sites `relu(....bn1)` are inside the blocks, `...:relu#0` after the additions."
    sl.nb.check(2, answer, 100 * (inside - after), hint=hint, tolerance=0.05, solution=solution)


# %%
answer_2 = None  # points, e.g. 4.2
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  A ReLU outputs 0 where its input is at most 0.  Inside a block its input
# is a BatchNorm output, centred near its learned shift, so about half of it is negative.
# After an addition the input is the branch plus the shortcut, and an identity shortcut
# carries the previous ReLU's output, never negative, which pushes the sum up: fewer
# zeros.  A projection shortcut (a 1x1 convolution and BatchNorm) is signed, so in the
# blocks that start a stage the rule need not hold.  By hand, with hooks that count the
# non-positive inputs of each ReLU: the output of `bn1`, and the block's output (the ReLU
# of the sum).
counts_2 = {}


def counter(label, zero):
    def hook(module, args, out):
        zeros, total = counts_2.get(label, (0, 0))
        counts_2[label] = (zeros + int(zero(out).sum()), total + out.numel())

    return hook


resnet_2 = copy.deepcopy(resnet).eval()
for stage in resnet_2.stages:
    for block in stage:
        block.bn1.register_forward_hook(counter(("inside", id(block)), lambda out: out <= 0))
        block.register_forward_hook(counter(("after", id(block)), lambda out: out == 0))
with torch.no_grad():
    for x, _ in rtask.loaders()[1]:
        resnet_2(x)
share_2 = {k: zeros / total for k, (zeros, total) in counts_2.items()}
mean_2 = {
    kind: statistics.mean(v for (k, _), v in share_2.items() if k == kind)
    for kind in ("inside", "after")
}
solution_2 = round(100 * (mean_2["inside"] - mean_2["after"]), 1)
print(
    f"mean sparsity inside the blocks {mean_2['inside']:.1%}, after the additions "
    f"{mean_2['after']:.1%}: {solution_2:+.1f} points"
)
check_2(solution_2, solution=True)

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
# # What to prune I: the granularity of sparsity
#
# **What you will learn:** which groups of weights can be removed together (single weights,
# N:M groups, blocks, kernels, channels, inputs), which layers each pattern fits, and what
# each buys in parameters, FLOPs and bytes.
#
# This follows sections 2.3 and 3.1 of the survey: the structure of *model* sparsity, from
# fine-grained to coarse, on LeNet-300-100 and LeNet-5.  Two notebooks continue it:
# [01b](01b_removing_structure.ipynb) removes whole channels, attention heads, layers and
# embedding rows from a small ResNet and a tiny transformer, times the smaller models, and
# ends with a glance at *ephemeral* sparsity, the zeros in the activations that change with
# every input; [01c](01c_patterns_compared.ipynb) compares the patterns in accuracy at
# equal sparsity, after fine-tuning, and against the literature.

# %%
import copy
import math

import matplotlib.pyplot as plt
import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab import patterns, recipes, shrink

# %% tags=["parameters"]
SMOKE = False
SEED = 0
EPOCHS = None  # None: the recipe's epochs (recipes.RECIPES)
N_TRAIN = None  # None: the recipe's data (4000 training images)
N_EVAL = None  # None: the recipe's 500 validation and 500 test images

# %%
if SMOKE:  # a quick pass through every cell, for CI
    EPOCHS = 2
    N_TRAIN = 500
    N_EVAL = 200
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)  # 1: less contention
DATA = {k: v for k, v in {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}.items() if v}

# %% [markdown]
# ## One trained model, every pattern
#
# A *pattern* says which weights are pruned together.  LeNet-300-100 on MNIST (flat
# images) and the small CNN, LeNet-5, on the same images, each trained with its recipe
# (`recipes.dense`), are pruned in copies with magnitude pruning: a group goes when the L1
# norm of its weights is among the smallest.


# %%
task300, lenet300, info300 = recipes.dense("lenet300", "mnist", SEED, epochs=EPOCHS, **DATA)
task5, lenet5, info5 = recipes.dense("lenet5", "mnist", SEED, epochs=EPOCHS, **DATA)
sl.nb.md(
    f"Dense test accuracy (seed {SEED}): LeNet-300-100 **{info300['test_accuracy']:.2%}** "
    f"({info300['recipe'].epochs} epoch(s)), LeNet-5 **{info5['test_accuracy']:.2%}** "
    f"({info5['recipe'].epochs} epoch(s))"
    + ("" if EPOCHS is None else ", fewer than their recipes'")
    + f"; {len(task300.bundle.train):,} training images."
    + "".join(f"  Flag: {f}." for f in (info300["flags"], info5["flags"]) if f)
)

# %% [markdown]
# The same 75% of `fc2`'s weights (100 units x 300 inputs), chosen with each pattern, and a
# corner of each mask (dark = kept).  Unstructured pruning scatters zeros; 1:4 keeps one
# weight in every four consecutive inputs; 4x4 blocks leave scattered 4x4 tiles; channels
# remove whole rows (output units) and inputs whole columns.  Kernels exist only in
# convolutions: the last panel is LeNet-5's `conv2` seen as a matrix (16 filters x its
# first 3 of 6 inputs x 5 x 5), where a pruned kernel is a white stretch of 25.

# %%
LENET_PATTERNS = ["unstructured", "nm", "block:4x4", "channel", "input"]


def spec(pattern, sparsity):
    """The pattern to use at ``sparsity``: N:M with M = 4 keeps N = (1 - s) * 4 weights."""
    if pattern != "nm":
        return pattern
    n = (1 - sparsity) * 4
    return f"{round(n)}:4" if abs(n - round(n)) < 1e-9 and round(n) >= 1 else None


def pruned_copy(model, name, pattern, sparsity):
    """A copy of ``model`` with its tensor ``name`` alone pruned, and that tensor's mask."""
    pat = patterns.get(pattern)
    m = copy.deepcopy(model)
    target = None if pat.fixed_sparsity is not None else sparsity
    sl.prune(m, "magnitude", target, pattern=pat, targets=[name])
    return m, sl.masks.get_mask(m, name)


gallery = {
    spec(p, 0.75): pruned_copy(lenet300, "fc2.weight", spec(p, 0.75), 0.75)[1][:24, :48]
    for p in LENET_PATTERNS
}
gallery["kernel (LeNet-5 conv2)"] = pruned_copy(lenet5, "conv2.weight", "kernel", 0.75)[1][:, :3]
fig = sl.viz.mask_gallery(gallery, ncols=3)
plt.show()

# %% [markdown]
# ## A pattern must fit the layer
#
# Not every pattern fits every layer, and a pattern that does not fit says so rather than
# skipping the layer.  N:M groups run along the inputs, so the input size must be a
# multiple of M; blocks must tile the weight; kernels need a convolution.
# `sl.patterns.misfits` lists the layers a pattern does not fit and why.  This table depends
# only on the shapes, so the notebook checks it.

# %% tags=["nbval-check-output"]
fits = {}
for model_name, model in [("lenet300", lenet300), ("lenet5", lenet5)]:
    for p in ["unstructured", "2:4", "block:4x4", "kernel", "channel", "input"]:
        bad = patterns.misfits(model, p)
        for layer in sl.pruning.default_targets(model):
            fits.setdefault(p, {})[f"{model_name}.{layer}"] = "-" if layer in bad else "fits"
print(pd.DataFrame(fits).to_string())

# %%
reason = patterns.misfits(lenet5, "2:4")["conv2.weight"]
sl.nb.md(f"For instance, for LeNet-5's `conv2`: *{reason}*")

# %% [markdown]
# ## What each pattern buys: parameters, FLOPs and bytes
#
# A zero saves something only if the storage and the computation skip it, and each
# pattern has its own *natural storage* (`sl.accounting.storage_bytes`): unstructured
# sparsity needs an index per nonzero (CSR: values, column indices and row pointers), N:M
# needs only a few bits per kept value (2 bits for 2:4 on NVIDIA's sparse tensor cores),
# blocks need one index per block (BSR), and channels and inputs need nothing at all: the
# layer just becomes smaller (`shrink`).  LeNet-300-100 at 75%, 4-byte values and indices,
# pruned as [01c](01c_patterns_compared.ipynb) prunes before it fine-tunes: by magnitude,
# every layer equally sparse (the *uniform* budget), the classifier (`fc3`) and the layers
# a pattern does not fit left dense but counted in the sparsity.  Parameters count every
# stored entry of the weight tensors, zeros included.  FLOPs count the nonzeros of a masked
# model, which a sparse kernel can skip, and every parameter of a shrunk one, which is dense:

# %%
CLASSIFIER = "fc3.weight"  # both LeNets end with fc3
CONVS = ["conv1.weight", "conv2.weight"]


def prune_options(model, pattern, sparsity):
    """Keyword arguments of ``prune`` for one pattern at one sparsity."""
    pat = patterns.get(pattern)
    dense = list(dict.fromkeys([CLASSIFIER, *patterns.misfits(model, pat)]))
    fixed = pat.fixed_sparsity is not None
    return {"sparsity": None if fixed else sparsity, "pattern": pat, "dense": dense}


FLOPS = "FLOPs (masked: nonzeros; shrunk: parameters)"


def cost_row(model_name, pattern, row, flops, dense_bytes):
    """One row of the table from the totals of ``sl.report``, FLOPs from column ``flops``."""
    counts = [int(row[c]) for c in ("parameters", "nonzeros", flops, "bytes")]
    columns = ["model", "pattern", "parameters", "nonzeros", FLOPS, "bytes", "bytes / dense"]
    return dict(zip(columns, [model_name, pattern, *counts, row.bytes / dense_bytes], strict=True))


costs = []
shrunk = {}  # the shrunk models, by pattern
for p in LENET_PATTERNS:
    chosen = spec(p, 0.75)
    m = copy.deepcopy(lenet300)
    options = prune_options(m, chosen, 0.75)
    sl.prune(m, "magnitude", options.pop("sparsity"), budget="uniform", **options)
    total = sl.report(m, pattern=chosen).set_index("name").loc["total"]
    costs.append(cost_row("LeNet-300-100", chosen, total, "sparse_flops", total.dense_bytes))
    if p in ("channel", "input"):
        shrunk[chosen] = shrink.shrink(m)
        after = sl.report(shrunk[chosen]).set_index("name").loc["total"]
        label = f"{chosen}, after shrink"
        costs.append(cost_row("LeNet-300-100", label, after, "dense_flops", total.dense_bytes))
# Kernels exist only in convolutions: LeNet-5's two convolutions at 75%, beside the
# single-weight and channel patterns on the same tensors.
for chosen in ["unstructured", "kernel", "channel"]:
    m = copy.deepcopy(lenet5)
    sl.prune(m, "magnitude", 0.75, pattern=chosen, targets=CONVS, budget="uniform")
    total = sl.report(m, names=CONVS, pattern=chosen).set_index("name").loc["total"]
    costs.append(cost_row("LeNet-5 convolutions", chosen, total, "sparse_flops", total.dense_bytes))
costs = pd.DataFrame(costs).set_index(["model", "pattern"])
costs.round(3)

# %% [markdown]
# Three lessons, with the figures of the table.  Unstructured sparsity pays for its
# freedom with an index per weight; structured patterns store mostly values.  And removal
# is coupled: output units that go take the matching inputs of the next layer with them
# (`fc2` loses rows *and* columns), while inputs of the first layer are pixels of the
# image, which shrink cannot remove (the model's input is fixed): their zeros stay.
# Pruning the inputs of `fc2` leaves units of `fc1` that nobody reads, and those can go.

# %%
ratio = costs["bytes / dense"]
lenet = costs.loc["LeNet-300-100"]
structured = ["1:4", "block:4x4"]
# the zeros the shrunk input-pruned model stores: fc1 keeps every pixel column
input_layers = sl.report(shrunk["input"]).set_index("name").drop("total")
input_zeros = int((input_layers["parameters"] - input_layers["nonzeros"]).sum())
fc1_inputs = sl.masks.weight(shrunk["input"], "fc1.weight")
empty_columns = int((fc1_inputs == 0).all(0).sum())
column_zeros = empty_columns * fc1_inputs.shape[0]
nonzeros, parameters, share = lenet["nonzeros"], lenet["parameters"], lenet["bytes / dense"]
channel_note = "fewer: the coupled inputs of the next layer went too"
if parameters["channel, after shrink"] >= nonzeros["channel"]:
    channel_note = "no fewer"
input_note = "fewer: units of the previous layer that nobody reads went"
if nonzeros["input, after shrink"] >= nonzeros["input"]:
    input_note = "no fewer"
if f"{share['input, after shrink']:.0%}" == f"{share['input']:.0%}":
    where = "all" if column_zeros == input_zeros else f"{column_zeros:,}"
    shares = (
        ", the same share as before shrinking: it stores "
        f"{parameters['input, after shrink']:,} parameters, {input_zeros:,} of them zeros, "
        f"{where} in the {empty_columns} pruned pixel columns of `fc1`, which the masked "
        "storage skipped"
    )
else:
    shares = f", against {share['input']:.0%} before shrinking"
sl.nb.md(
    f"- At 75% sparsity, unstructured storage (CSR) takes {share['unstructured']:.0%} of the "
    f"dense bytes, against the {1 - 0.75:.0%} that the kept values alone would take; "
    + ", ".join(f"{p} takes {share[p]:.0%}" for p in structured)
    + f".\n- Channels: {nonzeros['channel']:,} nonzeros masked, "
    f"{parameters['channel, after shrink']:,} parameters after shrink ({channel_note}).\n"
    f"- Inputs: {nonzeros['input']:,} nonzeros masked, {nonzeros['input, after shrink']:,} "
    f"after shrink ({input_note}); the shrunk model takes {share['input, after shrink']:.0%} "
    f"of the dense bytes{shares}.\n- On LeNet-5's convolutions, kernels take "
    f"{ratio.loc[('LeNet-5 convolutions', 'kernel')]:.0%} of the dense bytes and single "
    f"weights {ratio.loc[('LeNet-5 convolutions', 'unstructured')]:.0%}."
)

# %% [markdown]
# ## Explore: pattern and sparsity
#
# Pick a pattern and a sparsity for LeNet-300-100's `fc2` (no fine-tuning): the picture
# shows a corner of the mask, the title the validation accuracy.  In the book this cell
# draws every pattern at every sparsity offered, one row per sparsity.


# %%
val300 = task300.loaders()[1]


def draw(ax, pattern, sparsity):
    chosen = spec(pattern, sparsity)
    if chosen is None:
        ax.text(0.5, 0.5, f"N:M with M = 4\ncannot reach {sparsity:.0%}", ha="center")
        ax.axis("off")
        return
    m, mask = pruned_copy(lenet300, "fc2.weight", chosen, sparsity)
    acc = sl.train.evaluate(m, val300)["accuracy"]
    ax.imshow(mask[:24, :48], cmap="Greys", vmin=0, vmax=1)
    ax.set_title(f"accuracy {acc:.1%}", fontsize=9)
    ax.axis("off")


sl.nb.explore(
    draw, pattern=["unstructured", "nm", "input", "channel", "block:4x4"], sparsity=[0.75, 0.5, 0.9]
)

# %% [markdown]
# ## Summary
#
# - A pattern decides which weights go together: single weights, N:M groups, blocks,
#   kernels, channels, inputs (and, in [01b](01b_removing_structure.ipynb), heads, layers,
#   embedding rows).  A structured pattern fits some layers only, and says so when it does
#   not.
# - What a pattern buys depends on its storage and kernels: unstructured pays an index per
#   weight, N:M a few bits, blocks an index per block, and channels and inputs nothing at
#   all once `shrink` removes them, giving a smaller dense model, except the model's own
#   inputs, whose zeros stay.  What each pattern costs in accuracy at equal sparsity is
#   measured in [01c](01c_patterns_compared.ipynb).
#
# What the cells above measured:

# %%
sl.nb.md(
    f"- Unstructured storage at 75%: {share['unstructured']:.0%} of the dense bytes; 1:4: "
    f"{share['1:4']:.0%}."
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.
#
# **1.** With `sl.accounting.storage_bytes`, find the sparsity below which unstructured
# CSR storage of LeNet-300-100's `fc2` weight (100 x 300) takes *more* bytes than the
# dense tensor (4-byte values and indices).  Three decimals.


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    shape = tuple(sl.masks.weight(lenet300, "fc2.weight").shape)
    numel = math.prod(shape)

    def csr_costs_more(nonzeros):
        w = torch.zeros(numel)
        w[:nonzeros] = 1.0
        w = w.reshape(shape)
        return sl.accounting.storage_bytes(w, "unstructured") > sl.accounting.storage_bytes(w)

    low, high = 0, numel - 1  # the fewest nonzeros at which CSR costs more, by bisection
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if csr_costs_more(mid) else (mid + 1, high)
    hint = "Count the bytes of a tensor with k nonzeros for several k, CSR against dense."
    sl.nb.check(1, answer, 1 - (low - 0.5) / numel, hint=hint, tolerance=0.0005, solution=solution)


# %%
answer_1 = None  # a sparsity, e.g. 0.123
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  CSR stores, for nnz nonzeros of an r x c matrix, nnz values, nnz column
# indices and r + 1 row pointers: 4 (2 nnz + r + 1) bytes, against 4 r c dense.  It takes
# more when nnz > (r c - r - 1) / 2, that is below the sparsity 1/2 + (r + 1) / (2 r c):
# each kept value costs twice its bytes, so CSR only pays off past 50% sparsity, a little
# further for the row pointers.
r, c = 100, 300
solution_1 = round(0.5 + (r + 1) / (2 * r * c), 3)
print(f"CSR takes more bytes than dense below {solution_1:.3f} sparsity")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Prune a copy of the dense `lenet300` with the channel pattern at 50% as the cost
# table does (`prune_options(m, "channel", 0.5)`, uniform budget) and shrink it
# (`shrink.shrink`).  How many weights does the shrunk model store?  Why is that fewer than
# the nonzeros of the masked model?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    m = copy.deepcopy(lenet300)
    options = prune_options(m, "channel", 0.5)
    sl.prune(m, "magnitude", options.pop("sparsity"), budget="uniform", **options)
    stored = int(sl.report(shrink.shrink(m)).set_index("name").loc["total", "parameters"])
    hint = "Shrink the pruned copy and read the total `parameters` of `sl.report` on it."
    sl.nb.check(2, answer, stored, hint=hint, solution=solution)


# %%
answer_2 = None  # a number of weights, e.g. 100000
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  By hand, from the masks: shrink keeps the units (rows) of fc1 and fc2 with a
# weight left, and a unit that goes takes its column of the next layer with it.  With k1
# units left in fc1 and k2 in fc2, the shrunk model stores k1 x 784 + k2 x k1 + 10 x k2
# weights.  The masked model keeps the columns of fc2 and fc3 that read the removed units,
# and counts their nonzeros; a removed unit sends only a constant (its bias through the
# ReLU), which shrink folds into the next bias, so those columns go too: coupling.
m_2 = copy.deepcopy(lenet300)
options_2 = prune_options(m_2, "channel", 0.5)
sl.prune(m_2, "magnitude", options_2.pop("sparsity"), budget="uniform", **options_2)
k1, k2 = (int(sl.masks.get_mask(m_2, n).any(dim=1).sum()) for n in ("fc1.weight", "fc2.weight"))
solution_2 = k1 * 784 + k2 * k1 + 10 * k2
nonzeros_2 = int(sl.report(m_2).set_index("name").loc["total", "nonzeros"])
print(f"units left: fc1 {k1} of 300, fc2 {k2} of 100; {solution_2:,} weights after shrink")
print(f"against {nonzeros_2:,} nonzeros masked")
check_2(solution_2, solution=True)

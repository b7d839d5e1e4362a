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
# # What to prune: the granularity of sparsity
#
# **What you will learn:** which groups of weights can be removed together (single weights,
# N:M groups, blocks, kernels, channels, inputs, attention heads, whole layers, embedding
# rows), what each choice costs in accuracy at the same sparsity, and what it buys in
# parameters, FLOPs, bytes and real speed once the zeros are removed for good.
#
# This follows sections 2.3 and 3.1 of the survey: the structure of *model* sparsity, from
# fine-grained to coarse, and at the end a glance at *ephemeral* sparsity, the zeros in the
# activations that change with every input.

# %%
import copy
import statistics
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import patterns, recipes, shrink
from sparsity_lab.ephemeral.activations import relu_stats

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SPARSITIES = [0.5, 0.75, 0.9]
EPOCHS = 10
FINETUNE_EPOCHS = 2
N_TRAIN = 4000
N_EVAL = 500
RESNET_DATA = "mnist"
RESNET_EPOCHS = 6
TRANSFORMER_EPOCHS = 8
TEXT_SAMPLES = 4000
TIMING_ROUNDS = 15
TIMING_BATCH = 256

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0]
    SPARSITIES = [0.75]
    EPOCHS = 1
    FINETUNE_EPOCHS = 1
    N_TRAIN = 500
    N_EVAL = 200
    RESNET_DATA = "digits"  # 8x8 images: the same network, a fraction of the work
    RESNET_EPOCHS = 1
    TRANSFORMER_EPOCHS = 1
    TEXT_SAMPLES = 600
    TIMING_ROUNDS = 3
    TIMING_BATCH = 64
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1 if SMOKE else None)  # 1: less contention

# %% [markdown]
# ## One trained model, every pattern
#
# A *pattern* says which weights are pruned together.  We train LeNet-300-100 on MNIST
# (flat images) and the small CNN, LeNet-5, on the same images, then prune copies of them
# with magnitude pruning: a group goes when the L1 norm of its weights is among the
# smallest.

# %%
dense_models = {}


def dense_for(model_name, seed):
    """The task and the trained dense model of ``model_name`` for ``seed`` (trained once)."""
    if (model_name, seed) not in dense_models:
        t = recipes.task(
            model_name, "mnist", seed=seed, n_train=N_TRAIN, n_val=N_EVAL, n_test=N_EVAL
        )
        model, dense_info = recipes.train_dense(t, epochs=EPOCHS, cache_dir=False, progress=False)
        dense_models[model_name, seed] = (t, model, dense_info)
    return dense_models[model_name, seed]


task300, lenet300, info300 = dense_for("lenet300", SEED)
task5, lenet5, info5 = dense_for("lenet5", SEED)
display(
    Markdown(
        f"Dense test accuracy: LeNet-300-100 **{info300['test_accuracy']:.2%}**, "
        f"LeNet-5 **{info5['test_accuracy']:.2%}** ({EPOCHS} epoch(s), {N_TRAIN} images)."
    )
)

# %% [markdown]
# The same 75% of `fc2`'s weights (100 units x 300 inputs), chosen with each pattern, and a
# corner of each mask (dark = kept).  Unstructured pruning scatters zeros; 1:4 keeps one
# weight in every four consecutive inputs; 4x4 blocks leave a checkerboard of tiles;
# channels remove whole rows (output units) and inputs whole columns.  Kernels exist only
# in convolutions: the last panel is LeNet-5's `conv2` seen as a matrix (16 filters x
# 6 inputs x 5 x 5), where a pruned kernel is a white stretch of 25.

# %%
LENET_PATTERNS = ["unstructured", "nm", "block:4x4", "channel", "input"]


def spec(pattern, sparsity):
    """The pattern to use at ``sparsity``: N:M with M = 4 keeps N = (1 - s) * 4 weights."""
    if pattern != "nm":
        return pattern
    n = (1 - sparsity) * 4
    return f"{round(n)}:4" if abs(n - round(n)) < 1e-9 and round(n) >= 1 else None


def mask_of(model, name, pattern, sparsity):
    """Prune a copy of ``model``'s tensor ``name`` alone and return its mask."""
    pat = patterns.get(pattern)
    m = copy.deepcopy(model)
    target = None if pat.fixed_sparsity is not None else sparsity
    sl.prune(m, "magnitude", target, pattern=pat, targets=[name])
    return sl.masks.get_mask(m, name)


gallery = {
    spec(p, 0.75): mask_of(lenet300, "fc2.weight", spec(p, 0.75), 0.75)[:24, :48]
    for p in LENET_PATTERNS
}
gallery["kernel (LeNet-5 conv2)"] = mask_of(lenet5, "conv2.weight", "kernel", 0.75)[:, :3]
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

# %%
# NBVAL_CHECK_OUTPUT
fits = {}
for model_name, model in [("lenet300", lenet300), ("lenet5", lenet5)]:
    for p in ["unstructured", "2:4", "block:4x4", "kernel", "channel", "input"]:
        bad = patterns.misfits(model, p)
        for layer in sl.pruning.default_targets(model):
            fits.setdefault(p, {})[f"{model_name}.{layer}"] = "-" if layer in bad else "fits"
print(pd.DataFrame(fits).to_string())

# %%
reason = patterns.misfits(lenet5, "2:4")["conv2.weight"]
display(Markdown(f"For instance, for LeNet-5's `conv2`: *{reason}*"))

# %% [markdown]
# ## Accuracy at equal sparsity
#
# The protocol, the same for every pattern: start from the trained dense model, prune by
# magnitude with the *uniform* budget (every layer equally sparse), then fine-tune for
# the same number of epochs with the masks fixed.  The classifier (`fc3`) and the layers
# a pattern does not fit stay dense but count in the sparsity, so every pattern removes
# the same number of weights.  The exception is N:M, whose sparsity is set by N and M: 2:4
# is 50%, 1:4 is 75%, and no M that divides every layer's input size reaches 90%.  Each
# seed has its own data split and dense model, so the curves show the change of accuracy
# from each seed's own dense model (a paired comparison: the seed-to-seed spread of the
# dense models cancels), as the mean over the seeds with a 95% confidence interval.

# %%
CLASSIFIER = "fc3.weight"  # both LeNets end with fc3


def prune_options(model, pattern, sparsity):
    """Keyword arguments of ``prune`` for one pattern at one sparsity."""
    pat = patterns.get(pattern)
    dense = list(dict.fromkeys([CLASSIFIER, *patterns.misfits(model, pat)]))
    fixed = pat.fixed_sparsity is not None
    return {"sparsity": None if fixed else sparsity, "pattern": pat, "dense": dense}


def one_run(model, pattern, sparsity, seed):
    chosen = spec(pattern, sparsity)
    if chosen is None:
        return {"test_accuracy": float("nan"), "measured_sparsity": float("nan")}
    t, dense_model, dense_info = dense_for(model, seed)
    pruned = copy.deepcopy(dense_model)
    options = prune_options(pruned, chosen, sparsity)
    result = recipes.prune_and_finetune(
        pruned,
        t,
        "magnitude",
        options.pop("sparsity"),
        finetune_epochs=FINETUNE_EPOCHS,
        budget="uniform",
        progress=False,
        **options,
    )
    return {**result, "dense_test_accuracy": dense_info["test_accuracy"]}


grid = {"model": ["lenet300", "lenet5"], "pattern": LENET_PATTERNS, "sparsity": SPARSITIES}
results = sl.experiments.sweep(one_run, grid, seeds=SEEDS, progress=False)
results = results.dropna(subset=["test_accuracy"])
results["change"] = results["test_accuracy"] - results["dense_test_accuracy"]

fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
for ax, (model_name, title) in zip(
    axes, [("lenet300", "LeNet-300-100"), ("lenet5", "LeNet-5")], strict=True
):
    part = results[results["model"] == model_name]
    sl.viz.sparsity_curve(part, x="sparsity", y="change", hue="pattern", ax=ax, baseline=0.0)
    ax.set_ylabel("test accuracy - dense (mean, 95% CI)")
    ax.set_title(f"{title}: magnitude, uniform, {FINETUNE_EPOCHS} epoch(s) of fine-tuning")
plt.show()

# %%
summary = sl.experiments.summarize(results, ["model", "pattern", "sparsity"], "test_accuracy")
table = summary.pivot_table(index=["model", "sparsity"], columns="pattern", values="mean")
ORDER = ["unstructured", "nm", "block:4x4", "channel"]
checks = []
for _, means in table.iterrows():
    chain = [p for p in ORDER if p in means.dropna().index]
    checks.append(all(means[a] >= means[b] for a, b in zip(chain, chain[1:], strict=False)))
level = min(SPARSITIES, key=lambda s: abs(s - 0.75))
row = table.loc[("lenet300", level)].dropna().sort_values(ascending=False)
ranking = " > ".join(f"{p} ({a:.1%})" for p, a in row.items())
display(
    Markdown(
        f"At {level:.0%} sparsity LeNet-300-100 ranks the patterns {ranking}.  The order "
        f"unstructured >= N:M >= block >= channel, expected because a finer granularity "
        f"leaves magnitude pruning more freedom to keep the important weights, holds at "
        f"{sum(checks)} of the {len(checks)} (model, sparsity) points of the table below."
    )
)
table.round(4)

# %% [markdown]
# Kernels only exist in convolutions, so the kernel pattern cannot make a whole LeNet-5
# sparse: the convolutions hold only a small part of its weights.  Comparing granularities
# on the convolutions alone, as Mao et al. (2017) did, with the fully connected layers
# left dense:

# %%
CONVS = ["conv1.weight", "conv2.weight"]
lenet5_sizes = {n: sl.masks.weight(lenet5, n).numel() for n in sl.pruning.default_targets(lenet5)}
conv_share = sum(lenet5_sizes[n] for n in CONVS) / sum(lenet5_sizes.values())
display(
    Markdown(
        f"LeNet-5's convolutions hold {sum(lenet5_sizes[n] for n in CONVS):,} of its "
        f"{sum(lenet5_sizes.values()):,} prunable weights ({conv_share:.1%})."
    )
)


def conv_run(pattern, sparsity, seed):
    t, dense_model, _ = dense_for("lenet5", seed)
    pruned = copy.deepcopy(dense_model)
    return recipes.prune_and_finetune(
        pruned,
        t,
        "magnitude",
        sparsity,
        pattern=pattern,
        targets=CONVS,
        budget="uniform",
        finetune_epochs=FINETUNE_EPOCHS,
        progress=False,
    )


conv_results = sl.experiments.sweep(
    conv_run,
    {"pattern": ["unstructured", "kernel", "channel"], "sparsity": SPARSITIES},
    seeds=SEEDS,
    progress=False,
)
ax = sl.viz.sparsity_curve(conv_results, x="sparsity", y="test_accuracy", hue="pattern")
ax.set_ylim(0, 1.02)  # a run that collapses to chance makes the interval wider than [0, 1]
ax.set_title("LeNet-5, convolutions only: single weights, kernels, filters")
plt.show()

# %%
collapsed = conv_results[conv_results["test_accuracy"] < 0.5]
levels = ", ".join(f"{s:.0%}" for s in sorted(set(collapsed["sparsity"])))
worst = conv_results.groupby("pattern")["test_accuracy"].min()
top = max(SPARSITIES)
left = 6 - patterns.count(top, 6)  # conv1: six 5x5 filters on one input channel
display(
    Markdown(
        (
            f"{len(collapsed)} of the {len(conv_results)} runs (at {levels} sparsity)"
            if levels
            else f"None of the {len(conv_results)} runs"
        )
        + " fell below 50% test accuracy; the worst run per pattern: "
        + ", ".join(f"{p} {a:.1%}" for p, a in worst.items())
        + f".  `conv1` has only six filters (six kernels: one input channel): at {top:.0%} "
        f"the uniform budget leaves {left} of them, and whether the network survives depends "
        f"on which."
    )
)

# %% [markdown]
# ## What each pattern buys: parameters, FLOPs and bytes
#
# A zero saves something only if the storage and the computation skip it, and each
# pattern has its own *natural storage* (`sl.accounting.storage_bytes`): unstructured
# sparsity needs an index per nonzero (CSR: values, column indices and row pointers), N:M
# needs only a few bits per kept value (2 bits for 2:4 on NVIDIA's sparse tensor cores),
# blocks need one index per block (BSR), and channels and inputs need nothing at all: the
# layer just becomes smaller (`shrink`).  LeNet-300-100 at 75%, 4-byte values and indices:

# %%
costs = []
for p in LENET_PATTERNS:
    chosen = spec(p, 0.75)
    m = copy.deepcopy(lenet300)
    options = prune_options(m, chosen, 0.75)
    sl.prune(m, "magnitude", options.pop("sparsity"), budget="uniform", **options)
    total = sl.report(m, pattern=chosen).set_index("name").loc["total"]
    costs.append(
        {
            "model": "LeNet-300-100",
            "pattern": chosen,
            "nonzeros": int(total.nonzeros),
            "FLOPs": int(total.sparse_flops),
            "bytes": int(total.bytes),
            "bytes / dense": total.bytes / total.dense_bytes,
        }
    )
    if p in ("channel", "input"):
        small = shrink.shrink(m)
        after = sl.report(small).set_index("name").loc["total"]
        costs.append(
            {
                "model": "LeNet-300-100",
                "pattern": f"{chosen}, after shrink",
                "nonzeros": int(after.nonzeros),
                "FLOPs": int(after.dense_flops),
                "bytes": int(after.bytes),
                "bytes / dense": after.bytes / total.dense_bytes,
            }
        )
# Kernels exist only in convolutions: LeNet-5's two convolutions at 75%, beside the
# single-weight and channel patterns on the same tensors.
for chosen in ["unstructured", "kernel", "channel"]:
    m = copy.deepcopy(lenet5)
    sl.prune(m, "magnitude", 0.75, pattern=chosen, targets=CONVS, budget="uniform")
    total = sl.report(m, names=CONVS, pattern=chosen).set_index("name").loc["total"]
    costs.append(
        {
            "model": "LeNet-5 convolutions",
            "pattern": chosen,
            "nonzeros": int(total.nonzeros),
            "FLOPs": int(total.sparse_flops),
            "bytes": int(total.bytes),
            "bytes / dense": total.bytes / total.dense_bytes,
        }
    )
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
display(
    Markdown(
        "- At 75% sparsity, unstructured storage (CSR) takes "
        f"{lenet.loc['unstructured', 'bytes / dense']:.0%} of the dense bytes, against the "
        f"{1 - 0.75:.0%} that the kept values alone would take; "
        + ", ".join(f"{p} takes {lenet.loc[p, 'bytes / dense']:.0%}" for p in structured)
        + ".\n"
        f"- Channels: {lenet.loc['channel', 'nonzeros']:,} nonzeros masked, "
        f"{lenet.loc['channel, after shrink', 'nonzeros']:,} parameters after shrink "
        + (
            "(fewer: the coupled inputs of the next layer went too)"
            if lenet.loc["channel, after shrink", "nonzeros"] < lenet.loc["channel", "nonzeros"]
            else "(no fewer)"
        )
        + ".\n"
        f"- Inputs: {lenet.loc['input', 'nonzeros']:,} nonzeros masked, "
        f"{lenet.loc['input, after shrink', 'nonzeros']:,} after shrink "
        + (
            "(fewer: units of the previous layer that nobody reads went)"
            if lenet.loc["input, after shrink", "nonzeros"] < lenet.loc["input", "nonzeros"]
            else "(no fewer)"
        )
        + f"; the shrunk model takes {lenet.loc['input, after shrink', 'bytes / dense']:.0%} "
        f"of the dense bytes.\n"
        f"- On LeNet-5's convolutions, kernels take "
        f"{ratio.loc[('LeNet-5 convolutions', 'kernel')]:.0%} of the dense bytes and single "
        f"weights {ratio.loc[('LeNet-5 convolutions', 'unstructured')]:.0%}."
    )
)

# %% [markdown]
# ## Physical removal: a small ResNet pruned by channels
#
# Channels in a residual network are coupled: a block adds its output to its input, so a
# channel of the residual stream can only go if the stem and every block that writes it
# let it go.  `shrink.prune_coupled(model, "channel", s)` chooses the channels of each
# such group together (by the norm of all the rows that write them) and removes each
# channel whole, as Li et al. (2017) do: the rows that write it and the columns of the
# next layers that read it.  `shrink.shrink` then builds the smaller dense model: rows,
# columns and BatchNorm entries go, and it computes exactly what the masked model does.
# (Had only the rows been masked, a removed channel would not be silent: its BatchNorm
# shift would still send a constant, which shrink folds into the next layer, through zero
# padding as a fixed map at the borders.  Exercise 3 shows it.)

# %%
data_options = {"n_train": N_TRAIN, "n_val": N_EVAL, "n_test": N_EVAL}
rtask = recipes.task(
    "resnet_small", RESNET_DATA, seed=SEED, **(data_options if RESNET_DATA == "mnist" else {})
)
resnet, rinfo = recipes.train_dense(rtask, epochs=RESNET_EPOCHS, cache_dir=False, progress=False)
masked = copy.deepcopy(resnet)
shrink.prune_coupled(masked, "channel", 0.5)
train_loader, val_loader, test_loader = rtask.loaders()
pruned_accuracy = sl.train.evaluate(masked, test_loader)["accuracy"]
sl.train.fit(
    masked, train_loader, val_loader, epochs=FINETUNE_EPOCHS, lr=0.01, seed=SEED, progress=False
)
small = shrink.shrink(masked)
shrink.plan(masked)

# %% [markdown]
# The shapes of the shrunk convolutions do not depend on the training, so they are checked:

# %%
# NBVAL_CHECK_OUTPUT
for name, module in small.named_modules():
    if isinstance(module, torch.nn.Conv2d):
        print(f"{name:22} {type(module).__name__:13} {tuple(module.weight.shape)}")

# %%
x_test, _ = next(iter(test_loader))
masked.eval()
small.eval()
with torch.no_grad():
    diff = float((masked(x_test) - small(x_test)).abs().max())
assert diff <= 1e-5, diff
accuracies = {
    "dense": rinfo["test_accuracy"],
    "masked, before fine-tuning": pruned_accuracy,
    "masked": sl.train.evaluate(masked, test_loader)["accuracy"],
    "shrunk": sl.train.evaluate(small, test_loader)["accuracy"],
}
display(
    Markdown(
        f"Largest difference between the masked and the shrunk outputs on a test batch: "
        f"{diff:.1e}.  Test accuracy: "
        + ", ".join(f"{k} {v:.2%}" for k, v in accuracies.items())
        + "."
    )
)

# %% [markdown]
# Now the speed.  The masked model still computes every zero; the shrunk one does not.
# Each round times one forward pass of a test batch for the three models in turn (so
# machine noise hits them alike); the median over the rounds is shown.  The ideal
# speedup is the ratio of the weight FLOPs.


# %%
def median_times(models_, x, rounds):
    samples = {k: [] for k in models_}
    with torch.no_grad():
        for m in models_.values():
            m.eval()(x)  # warm-up
        for _ in range(rounds):
            for k, m in models_.items():
                start = time.perf_counter()
                m(x)
                samples[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


x_batch = torch.cat([x for x, _ in test_loader])[:TIMING_BATCH]
timed = median_times({"dense": resnet, "masked": masked, "shrunk": small}, x_batch, TIMING_ROUNDS)
flops_before = sl.report(masked).set_index("name").loc["total", "dense_flops"]
flops_after = sl.report(small).set_index("name").loc["total", "dense_flops"]
ideal = flops_before / flops_after
speedup = timed["masked"] / timed["shrunk"]

fig, ax = plt.subplots(figsize=(5, 3))
ax.bar(list(timed), [1e3 * v for v in timed.values()], color=["C7", "C0", "C2"])
ax.set_ylabel(f"ms per batch of {len(x_batch)}")
ax.set_title("small ResNet, 50% of channels pruned")
plt.show()
params = {
    k: sum(p.numel() for p in m.parameters()) for k, m in [("masked", masked), ("shrunk", small)]
}
display(
    Markdown(
        f"The shrunk model has {params['shrunk']:,} parameters instead of "
        f"{params['masked']:,} and {flops_after / flops_before:.0%} of the weight FLOPs: an "
        f"ideal speedup of {ideal:.1f}x.  Measured: {speedup:.1f}x over the masked model "
        f"({speedup / ideal:.0%} of ideal; the target of the benchmark is 70%, "
        + ("met" if speedup >= 0.7 * ideal else "missed")
        + " here).  Work that is not multiply-adds (BatchNorm, ReLU, additions) does not "
        "shrink with the FLOPs, and convolutions with few channels run below full speed; "
        "`benchmarks/granularity.py` profiles how much each accounts for."
    )
)

# %% [markdown]
# ## Heads, layers and embedding rows: the tiny transformer
#
# Attention heads are groups that span four tensors: head *h* owns a slice of the rows of
# the q, k and v projections and the same columns of the output projection.
# `prune_coupled(model, "head", s)` ranks all heads of the model by the norm of those
# weights (as Michel et al. 2019 rank them by importance) and removes the lowest.  A head
# whose v rows are zero outputs a constant (its v bias), whatever it attends to, so shrink
# can remove it and fold the constant into the output projection's bias.

# %%
ttask = recipes.task("tiny_transformer", "text", seed=SEED, n_samples=TEXT_SAMPLES)
transformer, tinfo = recipes.train_dense(
    ttask, epochs=TRANSFORMER_EPOCHS, optimizer="adam", lr=3e-3, cache_dir=False, progress=False
)
t_test = ttask.loaders()[2]
head_rows = []
for fraction in [0.0, 0.25, 0.5, 0.75]:
    m = copy.deepcopy(transformer)
    if fraction:
        shrink.prune_coupled(m, "head", fraction)
    small_t = shrink.shrink(m)
    head_rows.append(
        {
            "heads pruned": fraction,
            "heads left": [
                getattr(b, "attn", None) and b.attn.n_heads or 0 for b in small_t.blocks
            ],
            "parameters after shrink": sum(p.numel() for p in small_t.parameters()),
            "test accuracy": sl.train.evaluate(m, t_test)["accuracy"],
            "shrunk accuracy": sl.train.evaluate(small_t, t_test)["accuracy"],
        }
    )
heads_table = pd.DataFrame(head_rows).set_index("heads pruned")
heads_table

# %%
display(
    Markdown(
        f"Without any fine-tuning, removing a quarter of the heads moves the test accuracy "
        f"from {heads_table['test accuracy'].iloc[0]:.1%} to "
        f"{heads_table['test accuracy'].iloc[1]:.1%}, and half of them to "
        f"{heads_table['test accuracy'].iloc[2]:.1%} (Michel et al. 2019 found that many "
        f"heads can go at little cost).  The shrunk models give "
        + (
            "the same accuracy as the masked ones at every row."
            if (heads_table["test accuracy"] == heads_table["shrunk accuracy"]).all()
            else "a different accuracy from the masked ones in some rows (see the table)."
        )
    )
)

# %% [markdown]
# The masks of the three remaining granularities on the transformer: a head is a band of
# rows of q (and of columns of the output projection), a layer is a whole block (every
# weight of its attention and MLP: `prune_coupled(model, "layer", s)`; shrink then keeps
# only the residual path plus a constant), and an embedding row is one token of the
# vocabulary (`pattern="embedding"` on `tok_emb.weight`).

# %%
heads_model = copy.deepcopy(transformer)
shrink.prune_coupled(heads_model, "head", 0.5)
layer_model = copy.deepcopy(transformer)
shrink.prune_coupled(layer_model, "layer", 0.5)
emb_model = copy.deepcopy(transformer)
sl.prune(emb_model, "magnitude", 0.5, pattern="embedding", targets=["tok_emb.weight"])
(removed,) = [
    b for b in range(2) if not sl.masks.get_mask(layer_model, f"blocks.{b}.fc1.weight").any()
]
fig = sl.viz.mask_gallery(
    {
        "heads: blocks.0.attn.q": sl.masks.get_mask(heads_model, "blocks.0.attn.q.weight"),
        "heads: blocks.0.attn.out": sl.masks.get_mask(heads_model, "blocks.0.attn.out.weight"),
        "embedding: tok_emb": sl.masks.get_mask(emb_model, "tok_emb.weight"),
        **{
            f"layer: blocks.{b}.fc1": sl.masks.get_mask(layer_model, f"blocks.{b}.fc1.weight")
            for b in range(2)
        },
    },
    ncols=3,
)
plt.show()
display(
    Markdown(
        f"Removing block {removed} (of 2) leaves a test accuracy of "
        f"{sl.train.evaluate(layer_model, t_test)['accuracy']:.1%}; removing half of the "
        f"vocabulary's vectors, {sl.train.evaluate(emb_model, t_test)['accuracy']:.1%} "
        f"(dense: {tinfo['test_accuracy']:.1%})."
    )
)

# %% [markdown]
# What these three patterns buy, in the same accounting as above: heads and layers are
# stored shrunk (the dense tensors left after removal), embedding rows as one block per
# kept token vector.

# %%
n_heads = transformer.blocks[0].attn.n_heads


def coupled_spec(name, kind):
    """The pattern of a tensor pruned by ``prune_coupled(kind)``, for its storage."""
    if kind == "layer":
        return "layer"
    return f"head:{n_heads}:in" if name.endswith("attn.out.weight") else f"head:{n_heads}"


t_costs = []
for kind, m in [("head", heads_model), ("layer", layer_model)]:
    pattern = {n: coupled_spec(n, kind) for n in sl.masks.masks(m)}
    total = sl.report(m, pattern=pattern).set_index("name").loc["total"]
    after = sl.report(shrink.shrink(m)).set_index("name").loc["total"]
    for label, row, flops in [
        (kind, total, "sparse_flops"),
        (f"{kind}, after shrink", after, "dense_flops"),
    ]:
        t_costs.append(
            {
                "pattern": label,
                "nonzeros": int(row.nonzeros),
                "FLOPs": int(row[flops]),
                "bytes": int(row.bytes),
                "bytes / dense": row.bytes / total.dense_bytes,
            }
        )
emb = sl.report(emb_model, pattern={"tok_emb.weight": "embedding"}).set_index("name")
t_costs.append(
    {
        "pattern": "embedding (tok_emb only)",
        "nonzeros": int(emb.loc["tok_emb.weight", "nonzeros"]),
        "FLOPs": int(emb.loc["tok_emb.weight", "sparse_flops"]),  # a lookup: no multiply-adds
        "bytes": int(emb.loc["tok_emb.weight", "bytes"]),
        "bytes / dense": emb.loc["tok_emb.weight", "bytes"]
        / emb.loc["tok_emb.weight", "dense_bytes"],
    }
)
pd.DataFrame(t_costs).set_index("pattern").round(3)

# %% [markdown]
# ## Model sparsity and ephemeral sparsity
#
# Everything above is *model* sparsity: zeros in the weights, the same for every input.
# A ReLU network also makes *ephemeral* zeros: every negative pre-activation becomes an
# exact 0, a different set for each input.  `relu_stats` measures them; here beside the
# weight sparsity of the layer that feeds each ReLU, for the dense LeNet-300-100 and for a
# copy pruned to 90% (unstructured) and fine-tuned.

# %%
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
        rows.append(
            {
                "model": label,
                "layer": layer,
                "weight sparsity": weights[f"{layer}.weight"],
                "activation sparsity": acts.loc[f"relu({layer})", "sparsity"],
                "dead units": acts.loc[f"relu({layer})", "dead_units"],
            }
        )
ephemeral = pd.DataFrame(rows).set_index(["model", "layer"])
ephemeral.round(3)

# %%
act = ephemeral["activation sparsity"]
display(
    Markdown(
        f"Even the dense network's hidden activations are {act.loc[('dense', 'fc1')]:.0%} "
        f"zeros after `fc1`: ephemeral sparsity comes for free with ReLU, but it moves with "
        f"every input, so exploiting it needs hardware or kernels that skip zeros on the "
        f"fly (survey section 5).  After pruning 90% of the weights it is "
        f"{act.loc[('90% pruned', 'fc1')]:.0%}."
    )
)

# %% [markdown]
# ## Explore: pattern and sparsity
#
# Pick a pattern and a sparsity for LeNet-300-100's `fc2` (no fine-tuning): the picture
# shows a corner of the mask, the title the validation accuracy.  In the book this cell
# shows one panel per pattern at 75%.


# %%
def draw(ax, pattern, sparsity):
    chosen = spec(pattern, sparsity)
    if chosen is None:
        ax.text(0.5, 0.5, f"N:M with M = 4\ncannot reach {sparsity:.0%}", ha="center")
        ax.axis("off")
        return
    m = copy.deepcopy(lenet300)
    pat = patterns.get(chosen)
    sl.prune(
        m,
        "magnitude",
        None if pat.fixed_sparsity else sparsity,
        pattern=pat,
        targets=["fc2.weight"],
    )
    acc = sl.train.evaluate(m, val300)["accuracy"]
    ax.imshow(sl.masks.get_mask(m, "fc2.weight")[:24, :48], cmap="Greys", vmin=0, vmax=1)
    ax.set_title(f"accuracy {acc:.1%}", fontsize=9)
    ax.axis("off")


sl.nb.explore(
    draw, pattern=["unstructured", "nm", "input", "channel", "block:4x4"], sparsity=[0.75, 0.5, 0.9]
)

# %% [markdown]
# ## Summary
#
# - A pattern decides which weights go together: single weights, N:M groups, blocks,
#   kernels, channels, inputs, heads, layers, embedding rows.  Each fits some layers only,
#   and says so when it does not.
# - What a pattern buys depends on its storage and kernels: unstructured pays an index per
#   weight, N:M a few bits, blocks an index per block, and channels, inputs, heads and
#   layers nothing at all once `shrink` removes them, giving a smaller dense model.
# - Coupled structure matters: residual groups lose channels together, heads span four
#   projections, and a removed channel's constant output must be folded, not forgotten.
# - ReLU activations are sparse without pruning, but that sparsity is ephemeral.
#
# What the runs above measured:

# %%
lines = []
for model_name in ["lenet300", "lenet5"]:
    for level in sorted(SPARSITIES):
        cell = summary[(summary["model"] == model_name) & (summary["sparsity"] == level)]
        cell = cell.set_index("pattern")
        span = cell["mean"].max() - cell["mean"].min()
        noise = cell["std"].max()
        lines.append(
            f"- {model_name} at {level:.0%}: the patterns span {100 * span:.1f} points of test "
            f"accuracy (best {cell['mean'].idxmax()}, worst {cell['mean'].idxmin()})"
            + (
                ""
                if pd.isna(noise)
                else f"; the largest seed std is {100 * noise:.1f} points, so the spread is "
                + ("within" if span <= 2 * noise else "beyond")
                + " the seed-to-seed noise"
            )
            + "."
        )
lines.append(
    f"- The small ResNet with 50% of its channels shrunk ran {speedup:.1f}x faster than its "
    f"masked version ({speedup / ideal:.0%} of the {ideal:.1f}x ideal)."
)
lines.append(
    f"- Unstructured storage at 75%: {lenet.loc['unstructured', 'bytes / dense']:.0%} of the "
    f"dense bytes; 1:4: {lenet.loc['1:4', 'bytes / dense']:.0%}."
)
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## Exercises
#
# 1. Replace the uniform budget with `"global"` for the channel pattern.  Which layer
#    loses the most units, and why is that dangerous for the last hidden layer?
# 2. Repeat the accuracy comparison with 2:4 against unstructured at exactly 50%.  How
#    large is the gap after fine-tuning?
# 3. Prune the small ResNet per tensor with `sl.prune(model, "magnitude", 0.5,
#    pattern="channel")` instead of `prune_coupled`.  Use `shrink.plan` to count the
#    residual channels that can be removed.  Why so few?  Which layers of the shrunk model
#    became `OffsetConv2d`, and what does their `offset` map look like?
# 4. With `sl.accounting.storage_bytes`, find the sparsity below which unstructured CSR
#    storage takes *more* bytes than the dense tensor (4-byte values and indices).
# 5. Measure `relu_stats` of the small ResNet.  Which ReLUs are the sparsest: those inside
#    the blocks, or those after the residual additions?

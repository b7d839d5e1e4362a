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
# # Ephemeral sparsity I: activations, dropout and sparse back-propagation
#
# **What you will learn:** how many zeros a ReLU network makes on its own and how k-WTA and
# FATReLU force more; what the members of the dropout family zero at each training step;
# and how meProp keeps only a few back-propagated errors.
#
# *Model* sparsity removes weights once and for all.  *Ephemeral* sparsity is in what flows
# through the network (activations, errors, routing decisions, attention weights) and changes
# with every input (survey sections 2.3 and 5).  This part covers the activations, the dropout
# family and the back-propagated errors of LeNet-300-100; the second part,
# [07b](07b_experts_attention_heads.ipynb), routes examples to a few experts and sparsifies
# the attention of a tiny transformer, [07c](07c_head_pruning.ipynb) prunes its heads, and
# [08](08_gradient_compression.ipynb) covers gradient sparsity for distributed training.

# %%
import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import display
from torch import nn

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.ephemeral import activation_functions as act
from sparsity_lab.ephemeral import backprop
from sparsity_lab.ephemeral import dropout as drop
from sparsity_lab.ephemeral.activations import relu_stats

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
EPOCHS = None  # None: the LeNet-300-100 recipe's epochs, for every MNIST model here
MNIST_OPTIONS = {}  # the default data: the recipe's expected accuracy is checked
KWTA_DENSITIES = [0.02, 0.1]
FAT_THRESHOLDS = [0.5, 0.75]
FAT_L1 = 1e-4
MEPROP_DENSITIES = [0.05, 0.1]  # the text reads the lowest; 1.0 is dense exactly
DROP_STEPS = 20
BRANCH_STEPS = 200  # one gate per block and step: more draws for a stable share

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0, 1]
    EPOCHS = 2
    KWTA_DENSITIES = [0.1]
    FAT_THRESHOLDS = [0.5]
    MEPROP_DENSITIES = [0.1, 1.0]
# the models are tiny: one thread avoids the overhead of splitting small products
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)
MNIST_RECIPE = recipes.recipe_for("lenet300", "mnist")
# every MNIST model trains with LeNet-300-100's recipe (SGD, momentum, cosine schedule)
MNIST_FIT = {**MNIST_RECIPE.training(), "epochs": EPOCHS or MNIST_RECIPE.epochs}


@functools.cache
def mnist(seed):
    return recipes.task("lenet300", "mnist", seed=seed, **MNIST_OPTIONS)


def mnist_dense(seed):
    """The recipe's dense LeNet-300-100 of ``seed``: every MNIST comparison's baseline."""
    return recipes.dense("lenet300", "mnist", seed, epochs=EPOCHS, **MNIST_OPTIONS)


# %% [markdown]
# ## Activation sparsity through training
#
# A ReLU outputs exactly zero for every negative input.  `relu_stats` runs a model on some
# data and counts, for every ReLU, the fraction of outputs that are zero and the fraction of
# units that are never active (dead).  We measure LeNet-300-100 on a fixed batch of
# validation images before training and after every epoch of its recipe's training.

# %%
task = mnist(SEED)
train_loader, val_loader, test_loader = task.loaders()
probe = next(iter(val_loader))[0]


class ReluWatch(sl.train.Callback):
    """Records relu_stats on the probe batch before training and after each epoch."""

    def on_train_begin(self, trainer):
        self.frames = [relu_stats(trainer.model, probe).assign(epoch=0)]

    def on_epoch_end(self, trainer):
        self.frames.append(relu_stats(trainer.model, probe).assign(epoch=trainer.epoch + 1))


watch = ReluWatch()
relu_model = task.build()
sl.train.fit(relu_model, train_loader, val_loader, callbacks=[watch], seed=SEED, **MNIST_FIT)
relu_curve = pd.concat(watch.frames).pivot(index="epoch", columns="site", values="sparsity")
relu_accuracy = sl.train.evaluate(relu_model, test_loader)["accuracy"]
N_EPOCHS = MNIST_FIT["epochs"]

_, ax = plt.subplots(figsize=(5.5, 3.2))
relu_curve.plot(ax=ax, marker="o")
ax.set(ylabel="fraction of ReLU outputs = 0", title="Activation sparsity of LeNet-300-100 on MNIST")
plt.show()
dead = relu_stats(relu_model, probe).set_index("site")["dead_units"]
start, end, dead = (  # each site's share, in words
    ", ".join(f"{s}: {v:.0%}" for s, v in shares.items())
    for shares in (relu_curve.loc[0], relu_curve.loc[N_EPOCHS], dead)
)
sl.nb.md(
    f"At initialisation about half of the ReLU outputs are zero ({start}), as expected for "
    f"symmetric pre-activations.  After {N_EPOCHS} epoch(s) the fractions are {end}; test "
    f"accuracy {relu_accuracy:.2%}.  These zeros are free: nothing forces them.  Only {dead} "
    f"of the units are zero on every one of the {len(probe)} probe images; the other zeros "
    "move from image to image."
)

# %% [markdown]
# ## Forcing activation sparsity: k-WTA and FATReLU
#
# **k winners take all** (Makhzani & Frey 2015) keeps the `k` largest units of each layer
# for each example and zeros the rest, fixing the activation sparsity in advance.
# **FATReLU** (Kurtz et al. 2020) raises the ReLU's threshold from 0 to `T`: an activation
# survives only if it reaches `T`; an L1 penalty on the activations pushes more below it.
# `act.swap_relu(model, activation)` replaces every ReLU the model applies, without editing
# the model.  Each setting trains from scratch like the dense model of its seed
# (`recipes.dense`: same initialisation, batch order and hyper-parameters); the activation
# sparsity is measured on the test set over both hidden layers.


# %%
def with_activation(kind, level, seed):
    if kind == "relu":  # the recipe's dense model, counted through a ReLU that records
        t, model, _ = mnist_dense(seed)
        activation = act.FATReLU(0.0)
        act.swap_relu(model, activation)
    else:
        t = mnist(seed)
        model = t.build()
        activation = act.KWTA(density=level) if kind == "kwta" else act.FATReLU(level, l1=FAT_L1)
        handle = act.swap_relu(model, activation)
        loss_fn = act.with_activation_penalty(nn.CrossEntropyLoss(), handle)
        sl.train.fit(model, t.loaders()[0], loss_fn=loss_fn, seed=seed, **MNIST_FIT)
    activation.reset()
    accuracy = sl.train.evaluate(model, t.loaders()[2])["accuracy"]
    sparsity = activation.sparsity  # read before evaluate_run runs the model again
    run = recipes.evaluate_run(model, t)
    assert run["accuracy"] == accuracy
    name = {"relu": "relu", "kwta": f"kwta {level:.0%}", "fatrelu": f"fatrelu T={level}"}[kind]
    row = {"arm": name, "test_accuracy": accuracy, "activation_sparsity": sparsity}
    return {**row, "flags": run["flags"]}


levels = {"relu": [0.0], "kwta": KWTA_DENSITIES, "fatrelu": FAT_THRESHOLDS}
grids = [{"kind": [kind], "level": values} for kind, values in levels.items()]
sweeps = [sl.experiments.sweep(with_activation, grid, SEEDS) for grid in grids]
runs = pd.concat(sweeps, ignore_index=True)
reached = runs.groupby("arm", sort=False)["activation_sparsity"].mean()
activation_table = sl.stats.summarize(runs, "arm", "test_accuracy").join(reached, on="arm")
display(activation_table.round(4))
activation_flags = sl.flags.table(runs, "arm")
sl.nb.show_flags(activation_flags)

# the table's intervals, clipped to [0, 1], a flagged arm's point circled in red; the axis fits
# the unflagged arms (an interval stretched to [0, 1] by a run at chance level would squash the
# others), and a mean off the axis is marked at its edge with its value
plotted = activation_table.join(runs.groupby("arm", sort=False)["kind"].first(), on="arm")
plotted["flagged"] = plotted["arm"].isin(activation_flags["arm"])
_, ax = plt.subplots(figsize=(5.5, 3.5))
sl.viz.interval_lines(plotted, "activation_sparsity", "kind", ax, flagged=plotted["flagged"])
sl.experiments.fit_y(ax, plotted, ~plotted["flagged"], x="activation_sparsity", name="arm")
ax.set(xlabel="activation sparsity on the test set", ylabel="test accuracy (mean, 95% CI)")
ax.set_title("Forced activation sparsity against accuracy")
ax.legend()
plt.show()

# %% [markdown]
# Each forced arm minus the dense ReLU model of the same seed (test accuracy, paired):

# %%
activation_diffs = sl.stats.against_baseline(runs, "arm", "relu")
display(activation_diffs.round(4))
ad_ = activation_diffs.set_index("arm")
relu_mean = runs.groupby("arm")["test_accuracy"].mean()["relu"]
sparsest, fat = f"kwta {min(KWTA_DENSITIES):.0%}", f"fatrelu T={max(FAT_THRESHOLDS)}"
sl.nb.md(
    f"With plain ReLUs {reached['relu']:.0%} of the hidden activations are zero (test "
    f"accuracy {relu_mean:.2%}, {N_EPOCHS} epoch(s) of the recipe).  k-WTA keeping "
    f"{min(KWTA_DENSITIES):.0%} of the units reaches {reached[sparsest]:.1%} activation "
    f"sparsity; its accuracy minus the ReLU model's is {sl.stats.describe(ad_.loc[sparsest])}.  "
    "The next layer then reads only a few inputs per example, which a sparse kernel could "
    f"exploit.  FATReLU at T = {max(FAT_THRESHOLDS)} reaches {reached[fat]:.1%} activation "
    "sparsity; its accuracy minus the ReLU model's is "
    f"{sl.stats.describe(ad_.loc[fat])}{sl.flags.note(runs, 'arm', fat)}."
)

# %% [markdown]
# ## The dropout family: random zeros, new at every step
#
# Dropout and its relatives are ephemeral sparsity as well.  Each training step zeros a
# random part of the network, and inference uses all of it:
#
# | name | paper | zeroed for one step |
# |---|---|---|
# | `dropout` | Srivastava et al. 2014 | single activations |
# | `dropconnect` | Wan et al. 2013 | single weights |
# | `dropblock` | Ghiasi et al. 2018 | contiguous regions of a feature map |
# | `stochastic_depth` | Huang et al. 2016 | whole residual branches, deeper ones more often |
# | `layerdrop` | Fan et al. 2020 | whole layers, which can then be pruned for inference |
#
# The pictures show what dropout and DropBlock zero in one 28 x 28 feature map at the same
# nominal `p` (the share each actually zeroed is in the titles): scattered single pixels
# against contiguous squares, which remove information a convolution could otherwise
# recover from the neighbours.

# %%
torch.manual_seed(SEED)
fmap = torch.ones(1, 1, 28, 28)
pictures = {
    "dropout, p = 0.15": drop.Dropout(0.15).train()(fmap),
    "dropblock, p = 0.15, 5 x 5 blocks": drop.DropBlock(0.15, block_size=5).train()(fmap),
}
kept = {f"{t}\n{(o == 0).float().mean():.0%} zero": o[0, 0] != 0 for t, o in pictures.items()}
sl.viz.image_grid(kept, ncols=2, vmin=0, vmax=1, cmap="gray", figsize=(6, 3))
plt.show()
with torch.random.fork_rng(devices=[]):  # more draws, leaving the random state as it was
    torch.manual_seed(SEED + 1)
    block_drop = drop.DropBlock(0.15, block_size=5).train()
    block_shares = [float((block_drop(fmap) == 0).float().mean()) for _ in range(DROP_STEPS)]
sl.nb.md(
    f"Each picture is a single draw.  The share DropBlock zeroes varies from draw to "
    f"draw: {DROP_STEPS} more draws of the same map zeroed {min(block_shares):.0%} to "
    f"{max(block_shares):.0%} (mean {np.mean(block_shares):.0%})."
)

# %% [markdown]
# How much each member zeros over training-mode forward passes of one batch, next to the rate
# its rule implies: LeNet-300-100's hidden activations and Linear weights, LeNet-5's
# convolution feature maps, and the small ResNet's residual blocks.

# %%
x_flat = next(iter(train_loader))[0]
x_img = x_flat.reshape(len(x_flat), 1, 28, 28)
lenet = task.build().train()
share = drop.zeroed_share(lenet, ["fc1", "fc2"], lambda: drop.Dropout(0.5), x_flat, DROP_STEPS)
rows = [("dropout p=0.5", "hidden activations", share, 0.5)]

handle = drop.dropconnect(lenet, p=0.5)
connects = [lenet.get_submodule(n).parametrizations.weight[0] for n in ("fc1", "fc2", "fc3")]
dropped = []
for _ in range(DROP_STEPS):
    lenet(x_flat)
    layer_masks = [c.last_mask for c in connects]  # this pass's masks
    dropped.append(sum(int((~m).sum()) for m in layer_masks) / sum(m.numel() for m in layer_masks))
rows.append(("dropconnect p=0.5", "weights", float(np.mean(dropped)), 0.5))
handle.remove()

conv_net = sl.models.build("lenet5", input_shape=(1, 28, 28), n_classes=10).train()
# DropBlock's gamma makes the dropped fraction about p, not exactly (blocks overlap)
share = drop.zeroed_share(
    conv_net, ["conv1", "conv2"], lambda: drop.DropBlock(0.1, 3), x_img, DROP_STEPS
)
rows.append(("dropblock p=0.1", "conv feature maps", share, 0.1))

resnet = sl.models.build("resnet_small", input_shape=(1, 28, 28), n_classes=10).train()
branch_gates = {  # built one at a time: two gate sets on one model would both draw
    "stochastic_depth p_last=0.5": lambda: drop.StochasticDepth(resnet, p_last=0.5),
    "layerdrop p=0.2": lambda: drop.LayerDrop(resnet, p=0.2),
}
for name, install in branch_gates.items():
    gates = install()
    with torch.no_grad():
        for _ in range(BRANCH_STEPS):
            resnet(x_img[:8])
    share = sum(gates.drops.values()) / (BRANCH_STEPS * len(gates.blocks))
    if isinstance(gates, drop.StochasticDepth):
        expected = float(np.mean([1 - gates.survival(d) for d in range(1, len(gates.blocks) + 1)]))
    else:
        expected = gates.p
    rows.append((name, f"residual blocks ({len(gates.blocks)})", share, expected))
    gates.remove()
dropout_family = pd.DataFrame(rows, columns=["method", "what", "zeroed", "expected"])
dropout_family.round(3)

# %% [markdown]
# LayerDrop's second use is pruning whole layers for inference: `LayerDrop.prune` picks every
# other block (Fan et al.'s rule for rate 0.5) and `drop_layers` builds a copy without them.
# The copy computes exactly what the gated model computes with those gates at zero.

# %%
resnet.eval()
gates = drop.LayerDrop(resnet, p=0.5)
chosen = gates.prune()
with torch.no_grad():
    gated = resnet(x_img[:16])
    gates.remove()
    smaller = drop.drop_layers(resnet, chosen).eval()
    difference = float((smaller(x_img[:16]) - gated).abs().max())
n_full, n_small = (sum(p.numel() for p in m.parameters()) for m in (resnet, smaller))
sl.nb.md(
    f"Dropping blocks {', '.join(chosen)} leaves {n_small:,} of {n_full:,} parameters "
    f"({n_small / n_full:.0%}); the largest output difference to the gated model is "
    f"{difference:.1e}.  This network is untrained, so the check is about the computation "
    "only; Fan et al. (2020) train with LayerDrop so that the remaining blocks have learnt "
    "to work without the dropped ones, this chapter trains no LayerDrop model."
)
assert difference < 1e-5

# %% [markdown]
# ## Sparse back-propagation with meProp
#
# meProp (Sun et al. 2017) keeps, for each example, only the `k` largest entries of the error
# `dL/dy` that reaches a Linear layer; the weight gradient and the error passed further down
# are computed from those `k` entries only, so the backward products shrink in proportion.
# `backprop.sparsify_backprop` swaps the two hidden Linear layers for meProp layers keeping
# a fraction `density` of each layer's outputs; the 10-way output layer stays dense.  With
# `density = 1` the gradients are exactly the dense ones.


# %%
def backward_run(method, density, seed):
    """A LeNet-300-100 trained with sparse back-propagation and the recipe, measured."""
    t = mnist(seed)
    keys = ["density"] if method == "meprop" else ["weight_density", "act_density"]
    options = dict.fromkeys(keys, density)
    model = backprop.sparsify_backprop(t.build(), method, layers=["fc1", "fc2"], **options)
    sl.train.fit(model, t.loaders()[0], seed=seed, **MNIST_FIT)
    run = recipes.evaluate_run(model, t)
    row = {"arm": f"{method} {density:.0%}", "test_accuracy": run["accuracy"]}
    if method == "meprop":
        layers = [m for m in model.modules() if isinstance(m, backprop.MePropLinear)]
        # multiply-adds of the two backward products of the hidden layers: k * in, not out * in
        row["backward_cost"] = sum(m.k * m.in_features for m in layers) / sum(
            m.out_features * m.in_features for m in layers
        )
    return {**row, "flags": run["flags"]}


def dense_run(seed):
    t, model, _ = mnist_dense(seed)
    run = recipes.evaluate_run(model, t)
    return {"arm": "dense", "test_accuracy": run["accuracy"], "flags": run["flags"]}


dense_runs = pd.DataFrame([{**dense_run(seed), "seed": seed} for seed in SEEDS])
densities = {"density": MEPROP_DENSITIES}
meprop_runs = sl.experiments.sweep(backward_run, {"method": ["meprop"], **densities}, SEEDS)

# the errors really are sparse: record one batch at fc1
check = backprop.sparsify_backprop(task.build(), "meprop", density=0.05, layers=["fc1", "fc2"])
check.fc1.record = {}
x, y = next(iter(train_loader))
nn.functional.cross_entropy(check(x), y).backward()
kept_per_example = (check.fc1.record["grad_output"] != 0).sum(1)
assert (kept_per_example <= check.fc1.k).all()
# with every error kept, how many are zero anyway (units the ReLU switched off)?
full = backprop.sparsify_backprop(task.build(), "meprop", density=1.0, layers=["fc1"])
full.fc1.record = {}
nn.functional.cross_entropy(full(x), y).backward()
zero_errors = (full.fc1.record["grad_output"] == 0).float().mean().item()
plain = task.build()  # the same initialisation, with torch's own backward
nn.functional.cross_entropy(plain(x), y).backward()
assert torch.allclose(full.fc1.weight.grad, plain.fc1.weight.grad, atol=1e-7)  # density 1: dense

dense_accuracy = dense_runs["test_accuracy"].mean()
_, ax = plt.subplots(figsize=(5.5, 3.2))
sl.viz.sparsity_curve(meprop_runs, "density", "test_accuracy", ax=ax, baseline=dense_accuracy)
ax.set_xscale("log")
ax.set(xlabel="fraction of back-propagated errors kept per layer", title="meProp on LeNet-300-100")
plt.show()
mp = meprop_runs.groupby("density")[["test_accuracy", "backward_cost"]].mean()
low = min(MEPROP_DENSITIES)
meprop_diffs = sl.stats.against_baseline(pd.concat([dense_runs, meprop_runs]), "arm", "dense")
meprop_low = meprop_diffs.set_index("arm").loc[f"meprop {low:.0%}"]
sl.nb.md(
    f"At fc1, meProp with density 5% kept {int(kept_per_example.max())} of "
    f"{check.fc1.out_features} errors per example.  Keeping {low:.0%} of the errors costs "
    f"{mp.loc[low, 'backward_cost']:.1%} of the hidden layers' backward multiply-adds and "
    f"reaches {mp.loc[low, 'test_accuracy']:.2%} test accuracy; minus the recipe's dense model "
    f"of the same seed and the same {N_EPOCHS} epoch(s): {sl.stats.describe(meprop_low)}.  "
    f"Even dense back-propagation at initialisation sends {zero_errors:.0%} zero errors into "
    f"fc1 on one batch (the units its ReLU switched off), so at initialisation a density "
    f"above {1 - zero_errors:.0%} drops almost nothing there."
)

# %% [markdown]
# SWAT (Raihan & Aamodt 2020) sparsifies the other operands of the backward pass: the
# forward and backward products use only the largest `weight_density` of each layer's
# weights, and only the largest `act_density` of its inputs are stored for the weight
# gradient (the memory saving); the weight gradient itself stays dense, so pruned weights
# can come back.  We train it with the same recipe at meProp's lowest density, the one the
# comparison below reads (a SWAT run costs about twice a meProp run: add meProp's other
# densities to its sweep for the whole curve).

# %%
swat_runs = sl.experiments.sweep(backward_run, {"method": ["swat"], "density": [low]}, SEEDS)
both = pd.concat([meprop_runs, swat_runs])
_, ax = plt.subplots(figsize=(5.5, 3.2))
sl.viz.sparsity_curve(both, "density", "test_accuracy", "method", ax, baseline=dense_accuracy)
ax.set(xscale="log", title="Sparse back-propagation on LeNet-300-100")
ax.set_xlabel("density (errors kept for meProp; weights and stored inputs for SWAT)")
plt.show()
backward = pd.concat([dense_runs, both], ignore_index=True)
backward_diffs = sl.stats.against_baseline(backward, "arm", "dense")
display(backward_diffs.round(4))
sl.nb.show_flags(sl.flags.table(backward, "arm"))
bd_ = backward_diffs.set_index("arm")
swat_at, meprop_at = f"swat {low:.0%}", f"meprop {low:.0%}"
swat_vs_meprop = sl.stats.paired(backward, "arm", swat_at, meprop_at, metric="test_accuracy")
sl.nb.md(
    f"At density {low:.0%}, SWAT minus dense is {sl.stats.describe(bd_.loc[swat_at])}, and "
    f"SWAT minus meProp {sl.stats.describe(swat_vs_meprop.iloc[0])}.  The two densities do not "
    "buy the same thing: meProp's cuts only the backward products; SWAT's cuts the forward "
    "product, the error sent back through the sparse weights, and the stored activations."
)

# %% [markdown]
# ## Summary
#
# - Ephemeral sparsity lives in what flows through the network and changes with every input:
#   ReLU zeros, forced activation sparsity (k-WTA, FATReLU), sparse back-propagated errors
#   (meProp, SWAT), and the dropout family, which zeros activations, weights, regions,
#   branches or layers at random for one step.
# - `drop_layers` turns LayerDrop's chosen blocks into a smaller model with the same outputs.
# - [07b](07b_experts_attention_heads.ipynb) goes on to routing decisions and attention
#   weights, and [07c](07c_head_pruning.ipynb) to attention heads.
#
# What this run measured, each arm against the dense model of its seed (test accuracy, paired):

# %%
sl.nb.md(
    f"- Plain ReLUs leave {reached['relu']:.0%} of the hidden activations at zero for free.  "
    f"k-WTA keeping {min(KWTA_DENSITIES):.0%} of the units reaches {reached[sparsest]:.0%} "
    f"activation sparsity (accuracy {sl.stats.describe(ad_.loc[sparsest])}"
    f"{sl.flags.note(runs, 'arm', sparsest)}); FATReLU at T = {max(FAT_THRESHOLDS)} reaches "
    f"{reached[fat]:.0%} (accuracy {sl.stats.describe(ad_.loc[fat])}"
    f"{sl.flags.note(runs, 'arm', fat)}).\n"
    f"- meProp keeping {low:.0%} of the errors does {mp.loc[low, 'backward_cost']:.0%} of the "
    f"hidden layers' backward multiply-adds: {sl.stats.describe(bd_.loc[meprop_at])}; SWAT at "
    f"the same density: {sl.stats.describe(bd_.loc[swat_at])}."
)

# %% [markdown]
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about, on seed `SEED` and with this run's settings.
#
# **1.** Give SWAT different densities for the weights and for the stored inputs: train
# LeNet-300-100 as `backward_run` does (seed `SEED`, `MNIST_FIT`, layers fc1 and fc2) once
# with `weight_density=0.05, act_density=1.0` and once with `weight_density=1.0,
# act_density=0.05`.  Which of the two costs more test accuracy: `"weights"`, `"inputs"`, or
# `"neither"` (within a point of each other)?  Why?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
@functools.cache
def swat_model(weight_density, act_density):
    """LeNet-300-100 of seed SEED trained with SWAT at these densities, and its task."""
    t = mnist(SEED)
    model = backprop.sparsify_backprop(
        t.build(),
        "swat",
        layers=["fc1", "fc2"],
        weight_density=weight_density,
        act_density=act_density,
    )
    sl.train.fit(model, t.loaders()[0], seed=SEED, **MNIST_FIT)
    return model, t


def seed_row(df, column, arm, metric="test_accuracy"):
    """``metric`` of seed SEED's run of ``arm`` in ``df``."""
    return df[(df[column] == arm) & (df["seed"] == SEED)][metric].iloc[0]


SWAT_ARMS = {"weights": (0.05, 1.0), "inputs": (1.0, 0.05)}


def check_1(answer, solution=False):
    accuracy = {
        arm: recipes.evaluate_run(*swat_model(*densities))["accuracy"]
        for arm, densities in SWAT_ARMS.items()
    }
    hint = "Train both and compare their test accuracies (`recipes.evaluate_run`)."
    # one point (5 of the 500 test images) or less apart: "neither"
    sl.nb.check(1, answer, sl.nb.lowest(accuracy, within=0.01), hint=hint, solution=solution)


# %%
answer_1 = None  # "weights", "inputs" or "neither"
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  The two arms change different things.  Sparse weights make the forward pass
# and the error sent back use a twentieth of each layer's weights, but every weight still
# gets its gradient from the dense inputs, so the kept set can re-form around the useful
# weights at each step (as in dynamic sparse training with dense gradients).  Sparse stored
# inputs leave the forward pass dense but build every weight gradient from a twentieth of
# the layer's inputs.  Which costs more is measured: by hand, each model's test predictions
# scored directly, beside the dense model of the same seed.
x_test_1, y_test_1 = mnist(SEED).bundle.test.tensors
accuracy_1 = {}
for arm, densities in SWAT_ARMS.items():
    model, _ = swat_model(*densities)
    with torch.no_grad():
        predictions = model.eval()(x_test_1).argmax(dim=1)
    accuracy_1[arm] = float((predictions == y_test_1).float().mean())
dense_1 = seed_row(dense_runs, "arm", "dense")
print(f"dense {dense_1:.2%}; " + ", ".join(f"sparse {a} {v:.2%}" for a, v in accuracy_1.items()))
solution_1 = sl.nb.lowest(accuracy_1, within=0.01)
check_1(solution_1, solution=True)
# %% [markdown]
# **2.** Put `act.FATReLU(0.5)` into seed `SEED`'s trained dense LeNet-300-100 (a copy from
# `mnist_dense(SEED)`) with `act.swap_relu`, without retraining.  By how much does the
# fraction of zero hidden activations on the test set rise over that of its plain ReLUs
# (the `relu` arm of `runs`, seed `SEED`)?  Two decimals.  How much test accuracy does it
# cost?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    t, model, _ = mnist_dense(SEED)
    activation = act.FATReLU(0.5)
    act.swap_relu(model, activation)
    sl.train.evaluate(model, t.loaders()[2])
    rise = activation.sparsity - seed_row(runs, "arm", "relu", "activation_sparsity")
    hint = "Evaluate on the test loader, then read the activation's `sparsity`."
    sl.nb.check(2, answer, rise, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a fraction, e.g. 0.12
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  A trained ReLU layer has many small positive activations; the threshold
# zeros every one below 0.5, and the next layer sees inputs it was not trained on: whether
# that costs accuracy is for the test set to say.  By hand: both hidden layers computed
# from the raw weights, once with a ReLU (zero where the input is at most 0) and once with
# the threshold (zero below 0.5).
t_2, model_2, _ = mnist_dense(SEED)
x_2, y_2 = t_2.bundle.test.tensors
zeros_2, accuracy_2 = {}, {}
rules = {"relu": lambda h: h * (h > 0), "fatrelu": lambda h: h * (h >= 0.5)}
with torch.no_grad():
    for name, rule in rules.items():
        a1 = rule(model_2.fc1(x_2.flatten(1)))
        a2 = rule(model_2.fc2(a1))
        zeros_2[name] = float(((a1 == 0).sum() + (a2 == 0).sum()) / (a1.numel() + a2.numel()))
        accuracy_2[name] = float((model_2.fc3(a2).argmax(dim=1) == y_2).float().mean())
solution_2 = round(zeros_2["fatrelu"] - zeros_2["relu"], 2)
print(f"zeros: ReLU {zeros_2['relu']:.1%}, FATReLU 0.5 {zeros_2['fatrelu']:.1%}; test accuracy "
      f"{accuracy_2['relu']:.2%} -> {accuracy_2['fatrelu']:.2%}")  # fmt: skip
check_2(solution_2, solution=True)

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
# # Ephemeral sparsity: activations, back-propagation, experts, attention and heads
#
# **What you will learn:** how many zeros a ReLU network makes on its own and how k-WTA and
# FATReLU force more; how meProp keeps only a few back-propagated errors; how a mixture of
# experts routes each example to a few experts; what sparse attention patterns look like
# and what they cost a trained transformer; and how many attention heads can go.
#
# *Model* sparsity removes weights once and for all.  *Ephemeral* sparsity is in what flows
# through the network, the activations, errors, routing decisions and attention weights,
# and it changes with every input (survey sections 2.3, 5 and 6).  Gradient sparsity for
# distributed training has its own chapter, the next one.

# %%
import copy
import functools

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from torch import nn

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.ephemeral import activation_functions as act
from sparsity_lab.ephemeral import attention as attn
from sparsity_lab.ephemeral import backprop, heads, moe
from sparsity_lab.ephemeral import dropout as drop
from sparsity_lab.ephemeral.activations import relu_stats

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
EPOCHS = 6
N_TRAIN = 4000
KWTA_DENSITIES = [0.02, 0.05, 0.1, 0.25]
FAT_THRESHOLDS = [0.25, 0.5, 0.75]
FAT_L1 = 1e-4
MEPROP_DENSITIES = [0.05, 0.1, 0.3, 0.5, 1.0]
MOE_EPOCHS = 6
TEXT_EPOCHS = 12
TEXT_SAMPLES = 4000
HEAD_SPARSITIES = [0.0, 0.25, 0.5, 0.625, 0.75, 0.875]
L0_EPOCHS = 4
DROP_STEPS = 20
BRANCH_STEPS = 200  # one gate per block and step: more draws for a stable share

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = [0]
    EPOCHS = 1
    N_TRAIN = 500
    KWTA_DENSITIES = [0.1]
    FAT_THRESHOLDS = [0.5]
    MEPROP_DENSITIES = [0.1, 1.0]
    MOE_EPOCHS = 1
    TEXT_EPOCHS = 2
    TEXT_SAMPLES = 800
    HEAD_SPARSITIES = [0.0, 0.5]
    L0_EPOCHS = 1
# the models are tiny: one thread avoids the overhead of splitting small products
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)


@functools.cache
def mnist(seed):
    return recipes.task("lenet300", "mnist", seed=seed, n_train=N_TRAIN)


# %% [markdown]
# ## Activation sparsity through training
#
# A ReLU outputs exactly zero for every negative input.  `relu_stats` runs a model on some
# data and counts, for every ReLU, the fraction of outputs that are zero and the fraction of
# units that are never active (dead).  We measure LeNet-300-100 on a fixed batch of
# validation images before training and after every epoch.

# %%
task = mnist(SEED)
train_loader, val_loader, test_loader = task.loaders()
probe = next(iter(val_loader))[0]


class ReluWatch(sl.train.Callback):
    """Records relu_stats on the probe batch before training and after each epoch."""

    def __init__(self):
        self.rows = []

    def record(self, model, epoch):
        for row in relu_stats(model, probe).itertuples():
            self.rows.append({"epoch": epoch, "site": row.site, "sparsity": row.sparsity})

    def on_train_begin(self, trainer):
        self.record(trainer.model, 0)

    def on_epoch_end(self, trainer):
        self.record(trainer.model, trainer.epoch + 1)


watch = ReluWatch()
relu_model = task.build()
history = sl.train.fit(
    relu_model, train_loader, val_loader, epochs=EPOCHS, lr=0.05, callbacks=[watch], seed=SEED
)
relu_curve = pd.DataFrame(watch.rows)
relu_accuracy = sl.train.evaluate(relu_model, test_loader)["accuracy"]

fig, ax = plt.subplots(figsize=(5.5, 3.2))
for site, part in relu_curve.groupby("site"):
    ax.plot(part["epoch"], part["sparsity"], marker="o", label=site)
ax.set_xlabel("epoch")
ax.set_ylabel("fraction of ReLU outputs = 0")
ax.set_title("Activation sparsity of LeNet-300-100 on MNIST")
ax.legend()
plt.show()

# %%
start = relu_curve[relu_curve.epoch == 0].set_index("site")["sparsity"]
end = relu_curve[relu_curve.epoch == EPOCHS].set_index("site")["sparsity"]
display(
    Markdown(
        f"At initialisation about half of the ReLU outputs are zero "
        f"({', '.join(f'{s}: {v:.0%}' for s, v in start.items())}), as expected for "
        f"symmetric pre-activations.  After {EPOCHS} epoch(s) the fractions are "
        f"{', '.join(f'{s}: {v:.0%}' for s, v in end.items())}; test accuracy "
        f"{relu_accuracy:.2%}.  These zeros are free: nothing forces them, and which units are "
        f"zero changes with every image."
    )
)

# %% [markdown]
# ## Forcing activation sparsity: k-WTA and FATReLU
#
# **k winners take all** (Makhzani & Frey 2015) keeps the `k` largest units of each layer
# for each example and zeros the rest, so the activation sparsity is fixed in advance.
# **FATReLU** (Kurtz et al. 2020) raises the ReLU's threshold from 0 to `T`: an activation
# survives only if it reaches `T`; an L1 penalty on the activations pushes more of them
# below it.  `act.swap_relu(model, activation)` replaces every ReLU the model applies, without
# editing the model.  Each setting is trained from scratch; the activation sparsity is
# measured on the test set over both hidden layers.


# %%
def train_with_activation(kind, level, seed):
    t = mnist(seed)
    model = t.build()
    if kind == "kwta":
        activation = act.KWTA(density=level)
    elif kind == "fatrelu":
        activation = act.FATReLU(level, l1=FAT_L1)
    else:
        activation = act.FATReLU(0.0)  # a plain ReLU, counted the same way
    handle = act.swap_relu(model, activation)
    loss_fn = act.with_activation_penalty(nn.CrossEntropyLoss(), handle)
    tr, _, te = t.loaders()
    sl.train.fit(model, tr, epochs=EPOCHS, lr=0.05, loss_fn=loss_fn, seed=seed)
    activation.reset()
    accuracy = sl.train.evaluate(model, te)["accuracy"]
    return {"test_accuracy": accuracy, "activation_sparsity": activation.sparsity}


runs = pd.concat(
    [
        sl.experiments.sweep(train_with_activation, {"kind": ["relu"], "level": [0.0]}, SEEDS),
        sl.experiments.sweep(
            train_with_activation, {"kind": ["kwta"], "level": KWTA_DENSITIES}, SEEDS
        ),
        sl.experiments.sweep(
            train_with_activation, {"kind": ["fatrelu"], "level": FAT_THRESHOLDS}, SEEDS
        ),
    ],
    ignore_index=True,
)
table = runs.groupby(["kind", "level"], sort=False)[["activation_sparsity", "test_accuracy"]]
summary = table.agg(["mean", "std"]).round(4)
summary

# %%
fig, ax = plt.subplots(figsize=(5.5, 3.5))
acc = sl.viz.errorbars(runs, "level", "test_accuracy", hue="kind")
spa = sl.viz.errorbars(runs, "level", "activation_sparsity", hue="kind")
for kind, part in acc.groupby("kind", sort=False):
    xs = spa[spa.kind == kind]["mean"].to_numpy()
    ax.errorbar(
        xs, part["mean"], yerr=part["half_width"].fillna(0), marker="o", capsize=3, label=kind
    )
ax.set_xlabel("activation sparsity on the test set")
ax.set_ylabel("test accuracy (mean, 95% CI)")
ax.set_title("Forced activation sparsity against accuracy")
ax.legend()
plt.show()

# %%
means = runs.groupby(["kind", "level"])[["activation_sparsity", "test_accuracy"]].mean()
relu_row = means.loc[("relu", 0.0)]
k_best = means.loc["kwta"]
sparsest = k_best.index.min()
display(
    Markdown(
        f"With plain ReLUs about {relu_row.activation_sparsity:.0%} of the hidden activations "
        f"are zero (test accuracy {relu_row.test_accuracy:.2%}).  k-WTA keeping "
        f"{sparsest:.0%} of the units reaches {k_best.loc[sparsest, 'activation_sparsity']:.1%} "
        f"activation sparsity at {k_best.loc[sparsest, 'test_accuracy']:.2%} accuracy, "
        f"averaged over {len(SEEDS)} seed(s): the next layer then reads only a few inputs per "
        f"example, which a sparse kernel could exploit."
    )
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
# rate: scattered single pixels against contiguous squares, which remove information a
# convolution could otherwise recover from the neighbours.

# %%
torch.manual_seed(SEED)
fmap = torch.ones(1, 1, 28, 28)
pictures = {
    "dropout, p = 0.15": drop.Dropout(0.15).train()(fmap),
    "dropblock, p = 0.15, 5 x 5 blocks": drop.DropBlock(0.15, block_size=5).train()(fmap),
}
fig, axes = plt.subplots(1, 2, figsize=(6, 3))
for ax, (title, out) in zip(axes, pictures.items(), strict=True):
    ax.imshow((out[0, 0] != 0).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_title(f"{title}\n{float((out == 0).float().mean()):.0%} zero", fontsize=9)
    ax.set_axis_off()
plt.show()

# %% [markdown]
# How much each member zeros, counted over training-mode forward passes of one batch, next
# to the rate its rule implies: activations of LeNet-300-100's hidden layers, weights of
# its Linear layers, feature maps of LeNet-5's convolutions, and the residual blocks of the
# small ResNet.

# %%
x_flat = next(iter(train_loader))[0]
x_img = x_flat.reshape(len(x_flat), 1, 28, 28)
rows = []

lenet = task.build().train()
hooks = drop.add_to_outputs(lenet, ["fc1", "fc2"], lambda: drop.Dropout(0.5))
for _ in range(DROP_STEPS):
    lenet(x_flat)
zeros = sum(m.zeros for m in hooks.modules.values())
total = sum(m.activations for m in hooks.modules.values())
rows.append(
    {
        "method": "dropout p=0.5",
        "what": "hidden activations",
        "zeroed": zeros / total,
        "expected": 0.5,
    }
)
hooks.remove()

handle = drop.dropconnect(lenet, p=0.5)
dropped = []
for _ in range(DROP_STEPS):
    lenet(x_flat)
    layer_masks = [
        lenet.get_submodule(n).parametrizations.weight[0].last_mask for n in ("fc1", "fc2", "fc3")
    ]
    dropped.append(sum(int((~m).sum()) for m in layer_masks) / sum(m.numel() for m in layer_masks))
rows.append(
    {
        "method": "dropconnect p=0.5",
        "what": "weights",
        "zeroed": float(np.mean(dropped)),
        "expected": 0.5,
    }
)
handle.remove()

conv_net = sl.models.build("lenet5", input_shape=(1, 28, 28), n_classes=10).train()
hooks = drop.add_to_outputs(conv_net, ["conv1", "conv2"], lambda: drop.DropBlock(0.1, 3))
for _ in range(DROP_STEPS):
    conv_net(x_img)
zeros = sum(m.zeros for m in hooks.modules.values())
total = sum(m.activations for m in hooks.modules.values())
# DropBlock's gamma makes the dropped fraction about p, not exactly (blocks overlap)
rows.append(
    {
        "method": "dropblock p=0.1",
        "what": "conv feature maps",
        "zeroed": zeros / total,
        "expected": 0.1,
    }
)
hooks.remove()

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
    what = f"residual blocks ({len(gates.blocks)})"
    rows.append({"method": name, "what": what, "zeroed": share, "expected": expected})
    gates.remove()
dropout_family = pd.DataFrame(rows)
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
with torch.no_grad():
    difference = float((smaller(x_img[:16]) - gated).abs().max())
n_full = sum(p.numel() for p in resnet.parameters())
n_small = sum(p.numel() for p in smaller.parameters())
display(
    Markdown(
        f"Dropping blocks {', '.join(chosen)} leaves {n_small:,} of {n_full:,} parameters "
        f"({n_small / n_full:.0%}); the largest output difference to the gated model is "
        f"{difference:.1e}.  Without training under LayerDrop the remaining blocks were "
        f"never asked to work alone, which is why the method drops layers during training."
    )
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
def train_meprop(density, seed):
    t = mnist(seed)
    model = backprop.sparsify_backprop(t.build(), "meprop", density=density, layers=["fc1", "fc2"])
    tr, _, te = t.loaders()
    sl.train.fit(model, tr, epochs=EPOCHS, lr=0.05, seed=seed)
    layers = [m for m in model.modules() if isinstance(m, backprop.MePropLinear)]
    # multiply-adds of the two backward products of the hidden layers: k * in, not out * in
    cost = sum(m.k * m.in_features for m in layers) / sum(
        m.out_features * m.in_features for m in layers
    )
    return {"test_accuracy": sl.train.evaluate(model, te)["accuracy"], "backward_cost": cost}


meprop_runs = sl.experiments.sweep(train_meprop, {"density": MEPROP_DENSITIES}, SEEDS)

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

fig, ax = plt.subplots(figsize=(5.5, 3.2))
sl.viz.sparsity_curve(meprop_runs, x="density", y="test_accuracy", ax=ax)
ax.set_xscale("log")
ax.set_xlabel("fraction of back-propagated errors kept per layer")
ax.set_title("meProp on LeNet-300-100")
plt.show()

# %%
mp = meprop_runs.groupby("density")[["test_accuracy", "backward_cost"]].mean()
low = min(MEPROP_DENSITIES)
display(
    Markdown(
        f"At fc1, meProp with density 5% kept {int(kept_per_example.max())} of "
        f"{check.fc1.out_features} errors per example.  Keeping {low:.0%} of the errors costs "
        f"{mp.loc[low, 'backward_cost']:.1%} of the hidden layers' backward multiply-adds and "
        f"reaches {mp.loc[low, 'test_accuracy']:.2%} test accuracy, against "
        f"{mp.loc[1.0, 'test_accuracy']:.2%} with all errors.  Even dense back-propagation "
        f"sends {zero_errors:.0%} zero errors into fc1 (the units its ReLU switched off), so "
        f"on average a density above {1 - zero_errors:.0%} drops almost nothing there."
    )
)

# %% [markdown]
# SWAT (Raihan & Aamodt 2020) sparsifies the other operands of the backward pass: the
# forward and backward products use only the largest `weight_density` of each layer's
# weights, and only the largest `act_density` of its inputs are stored for the weight
# gradient (the memory saving); the weight gradient itself stays dense, so pruned weights
# can come back.  We train it at the same densities as meProp.


# %%
def train_swat(density, seed):
    t = mnist(seed)
    model = backprop.sparsify_backprop(
        t.build(), "swat", weight_density=density, act_density=density, layers=["fc1", "fc2"]
    )
    tr, _, te = t.loaders()
    sl.train.fit(model, tr, epochs=EPOCHS, lr=0.05, seed=seed)
    return {"test_accuracy": sl.train.evaluate(model, te)["accuracy"]}


swat_runs = sl.experiments.sweep(train_swat, {"density": MEPROP_DENSITIES}, SEEDS)
both = pd.concat([meprop_runs.assign(method="meprop"), swat_runs.assign(method="swat")])
fig, ax = plt.subplots(figsize=(5.5, 3.2))
sl.viz.sparsity_curve(both, x="density", y="test_accuracy", hue="method", ax=ax)
ax.set_xscale("log")
ax.set_xlabel("density (errors kept for meProp; weights and stored inputs for SWAT)")
ax.set_title("Sparse back-propagation on LeNet-300-100")
plt.show()
sw = swat_runs.groupby("density")["test_accuracy"].mean()
display(
    Markdown(
        f"At density {low:.0%}, SWAT reaches {sw.loc[low]:.2%} and meProp "
        f"{mp.loc[low, 'test_accuracy']:.2%} (mean of {len(SEEDS)} seed(s)).  The two "
        f"densities do not buy the same thing: meProp's cuts the backward products, SWAT's "
        f"cuts the forward product and the stored activations."
    )
)


# %% [markdown]
# ## Mixture of experts: where the examples go
#
# A mixture-of-experts layer has several expert MLPs and a router that sends each example to
# a few of them; the other experts do no work for it.  We train a tiny MoE classifier
# (stem, a residual MoE layer with 4 experts, head) with two routers: **noisy top-2**
# (Shazeer et al. 2017, with its importance and load balancing losses) and **Switch**
# top-1 routing (Fedus et al. 2021) with capacity factor 1.25: an expert takes at most
# `1.25 x batch / 4` examples and the overflow skips the layer.


# %%
def train_moe(router, seed, **options):
    t = mnist(seed)
    torch.manual_seed(seed)
    model = moe.MoEClassifier(
        t.bundle.input_shape, t.bundle.n_classes, n_experts=4, router=router, **options
    )
    tr, _, te = t.loaders()
    loss_fn = moe.with_aux_loss(nn.CrossEntropyLoss(), model)
    sl.train.fit(model, tr, epochs=MOE_EPOCHS, lr=0.05, loss_fn=loss_fn, seed=seed)
    return model, t


routed = {
    "noisy top-2": train_moe("moe_topk", SEED, k=2),
    "switch (top-1, cf 1.25)": train_moe("switch", SEED, capacity_factor=1.25),
}
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
for ax, (name, (model, t)) in zip(axes, routed.items(), strict=True):
    xt, yt = t.bundle.test.tensors
    model.eval()
    with torch.no_grad():
        accuracy = (model(xt).argmax(1) == yt).float().mean().item()
    routing = model.moe.last_routing
    grid = np.zeros((10, 4))
    for slot in range(routing.experts.shape[1]):
        kept = routing.kept[:, slot]
        np.add.at(grid, (yt[kept].numpy(), routing.experts[kept, slot].numpy()), 1)
    grid /= grid.sum(1, keepdims=True)
    ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xlabel("expert")
    ax.set_ylabel("digit")
    ax.set_xticks(range(4))
    ax.set_yticks(range(10))
    ax.set_title(f"{name}\naccuracy {accuracy:.1%}, dropped {routing.dropped}")
    ax.grid(False)
fig.suptitle("Share of each digit's routing choices per expert (test set)")
plt.tight_layout()
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
display(
    Markdown(
        f"Each example uses 2 of 4 experts with top-2 routing and 1 of 4 with Switch, so the "
        f"expert layer does half or a quarter of the dense work.  The capacity factor bounds "
        f"how uneven the routing may be: on the {len(h)} test images (one batch) the Switch "
        f"router drops {drop_table.dropped.iloc[0]:.0%} of them at capacity factor 0.5 and "
        f"{drop_table.dropped.iloc[-1]:.0%} at 2.0."
    )
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
fig, axes = plt.subplots(1, 4, figsize=(11, 3))
for ax, (name, mask) in zip(axes, patterns.items(), strict=True):
    ax.imshow(mask, cmap="Greys", vmin=0, vmax=1)
    ax.set_xticks(range(0, L, 4))
    ax.set_yticks(range(0, L, 4))
    ax.set_title(f"{name}\n{mask.float().mean():.0%} of pairs", fontsize=9)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.grid(False)
plt.tight_layout()
plt.show()

# %% [markdown]
# These counts depend only on the length and the seed, so the notebook checks them:

# %%
# NBVAL_CHECK_OUTPUT
for name, mask in patterns.items():
    print(f"{name}: {int(mask.sum())} of {L * L} query-key pairs")
print("sparsemax([1, 0.5, -1]) =", attn.sparsemax(torch.tensor([1.0, 0.5, -1.0])).tolist())

# %% [markdown]
# The other family chooses keys from the data: **top-k attention** (Zhao et al. 2019) keeps
# the `k` largest scores of each query; **sparsemax** (Martins & Astudillo 2016) and
# **1.5-entmax** (Peters et al. 2019) replace softmax by normalisers that return exact
# zeros.  We train the tiny transformer with dense softmax attention on the synthetic
# sentiment task, then plug each attention function into the *trained* model, without
# retraining, and measure accuracy and the fraction of attention weights that are zero.

# %%
text = recipes.task("tiny_transformer", "text", seed=SEED, n_samples=TEXT_SAMPLES)
text_train, text_val, text_test = text.loaders()
transformer = text.build()
sl.train.fit(
    transformer, text_train, text_val, epochs=TEXT_EPOCHS, optimizer="adam", lr=3e-3, seed=SEED
)
tokens, labels = text.bundle.test.tensors
length = text.bundle.input_shape[0]
variants = {
    "softmax (dense)": attn.attention_fn(),
    "local, window 2": attn.attention_fn(mask=attn.local_attention(length, 2)),
    "strided, stride 4": attn.attention_fn(mask=attn.strided_attention(length, 4)),
    "bigbird": attn.attention_fn(mask=attn.bigbird(length, 1, 2, 1)),
    "top-4": attn.attention_fn(topk=4),
    "sparsemax": attn.attention_fn(normaliser="sparsemax"),
    "1.5-entmax": attn.attention_fn(normaliser="entmax"),
}
rows, maps = [], {}
real = tokens != 0  # pairs between real (non-pad) tokens
pair = (real[:, None, :, None] & real[:, None, None, :]).float()  # (B, 1, L, L)
for name, fn in variants.items():
    model = attn.use_attention(copy.deepcopy(transformer), fn)
    weights = attn.attention_maps(model, tokens)
    pairs = pair.expand_as(next(iter(weights.values())))  # every head
    zeros = np.mean(
        [float(((w == 0).float() * pairs).sum() / pairs.sum()) for w in weights.values()]
    )
    with torch.no_grad():
        accuracy = (model(tokens).argmax(1) == labels).float().mean().item()
    rows.append({"attention": name, "test_accuracy": accuracy, "zero_weights": zeros})
    maps[name] = weights["blocks.0.attn"]
attention_table = pd.DataFrame(rows)
attention_table.round(4)

# %%
example = 0
n_words = int(real[example].sum())
words = text.bundle.decode(tokens[example]).split()
shown = ["softmax (dense)", "local, window 2", "top-4", "sparsemax", "1.5-entmax"]
fig, axes = plt.subplots(1, len(shown), figsize=(3 * len(shown), 3.4))
for ax, name in zip(axes, shown, strict=True):
    w = maps[name][example, 0, :n_words, :n_words].numpy()
    cmap = plt.get_cmap("viridis").copy()
    cmap.set_bad("white")  # exact zeros in white
    ax.imshow(np.ma.masked_equal(w, 0.0), cmap=cmap, vmin=0, vmax=1)
    ax.set_xticks(range(n_words))
    ax.set_xticklabels(words, rotation=90, fontsize=7)
    ax.set_yticks(range(n_words))
    ax.set_yticklabels(words, fontsize=7)
    ax.set_title(name, fontsize=9)
    ax.grid(False)
fig.suptitle("Attention weights of layer 0, head 0, for one test sentence (white: exactly 0)")
plt.tight_layout()
plt.show()

# %%
at = attention_table.set_index("attention")
display(
    Markdown(
        f"The dense model reaches {at.loc['softmax (dense)', 'test_accuracy']:.2%}.  Swapped in "
        f"without retraining, sparsemax zeros {at.loc['sparsemax', 'zero_weights']:.0%} of the "
        f"attention weights between real tokens ({at.loc['sparsemax', 'test_accuracy']:.2%} "
        f"accuracy), 1.5-entmax {at.loc['1.5-entmax', 'zero_weights']:.0%} "
        f"({at.loc['1.5-entmax', 'test_accuracy']:.2%}), top-4 "
        f"{at.loc['top-4', 'zero_weights']:.0%} ({at.loc['top-4', 'test_accuracy']:.2%}).  "
        f"The model never saw these attention functions in training; exercise 1 trains with "
        f"one from the start."
    )
)

# %% [markdown]
# ## Head pruning
#
# Many attention heads can be removed from a trained transformer.  Michel et al. (2019)
# score each head by `|dL / d xi_h|`, the derivative of the loss with respect to a gate
# `xi_h = 1` on the head's output, summed over validation batches and normalised per layer;
# the lowest-scoring heads across all layers go first.  We compare with removing heads in a
# random order, without fine-tuning, for each seed's trained transformer.


# %%
def trained_transformer(seed):
    if seed == SEED:
        return transformer, text
    t = recipes.task("tiny_transformer", "text", seed=seed, n_samples=TEXT_SAMPLES)
    m = t.build()
    tr, va, _ = t.loaders()
    sl.train.fit(m, tr, va, epochs=TEXT_EPOCHS, optimizer="adam", lr=3e-3, seed=seed)
    return m, t


def prune_heads_curve(seed):
    model, t = trained_transformer(seed)
    _, va, te = t.loaders()
    scores = heads.head_importance(model, va)
    gen = torch.Generator().manual_seed(seed)
    random_scores = {p: torch.rand(s.shape, generator=gen) for p, s in scores.items()}
    rows = []
    for order, s in (("importance", scores), ("random", random_scores)):
        for sparsity in HEAD_SPARSITIES:
            pruned = copy.deepcopy(model)
            heads.prune_heads(pruned, s, sparsity)
            accuracy = sl.train.evaluate(pruned, te)["accuracy"]
            rows.append({"order": order, "head_sparsity": sparsity, "test_accuracy": accuracy})
    return rows, scores


head_rows = []
for seed in SEEDS:
    rows, seed_scores = prune_heads_curve(seed)
    head_rows += [{**r, "seed": seed} for r in rows]
    if seed == SEED:
        importance = seed_scores
head_runs = pd.DataFrame(head_rows)

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
grid = torch.stack(list(importance.values())).numpy()
axes[0].imshow(grid, cmap="viridis")
axes[0].set_xlabel("head")
axes[0].set_ylabel("layer")
axes[0].set_xticks(range(grid.shape[1]))
axes[0].set_yticks(range(grid.shape[0]))
axes[0].set_title("head importance (normalised per layer)")
axes[0].grid(False)
sl.viz.sparsity_curve(head_runs, x="head_sparsity", y="test_accuracy", hue="order", ax=axes[1])
axes[1].set_xlabel("fraction of heads removed")
axes[1].set_title("Head pruning without fine-tuning")
plt.tight_layout()
plt.show()

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
hp = head_runs.groupby(["order", "head_sparsity"])["test_accuracy"].mean()
display(
    Markdown(
        f"Removing half of the heads by importance keeps {hp.loc[('importance', 0.5)]:.2%} "
        f"test accuracy (random order: {hp.loc[('random', 0.5)]:.2%}; all heads: "
        f"{hp.loc[('importance', 0.0)]:.2%}).  The shrunk model has {after:,} parameters "
        f"instead of {before:,}, and its outputs differ from the masked model by at most "
        f"{gap:.1e}."
    )
)

# %% [markdown]
# ### Learned head gates (Voita et al. 2019)
#
# Instead of scoring heads once, Voita et al. learn a stochastic Hard Concrete gate per head
# together with the model, with an L0 penalty on the expected number of open gates.  Heads
# whose gate closes are pruned.  We fine-tune the trained transformer for a few epochs with
# loss + `lambda` x L0.

# %%
gated = copy.deepcopy(transformer)
gates = heads.HeadL0Gates(gated)
l0_weight = 0.1
# the gates get a larger step than the weights: they must travel from open to closed
optimizer = torch.optim.Adam(
    [{"params": gated.parameters(), "lr": 1e-3}, {"params": gates.parameters(), "lr": 0.05}]
)


def l0_loss(output, target):
    return nn.functional.cross_entropy(output, target) + l0_weight * gates.penalty()


sl.train.fit(gated, text_train, epochs=L0_EPOCHS, optimizer=optimizer, loss_fn=l0_loss, seed=SEED)
gates.eval()
open_heads = gates.keep()
gated_accuracy = sl.train.evaluate(gated, text_test)["accuracy"]
gates.remove()
heads.prune_heads(gated, keep=open_heads)
pruned_accuracy = sl.train.evaluate(gated, text_test)["accuracy"]
n_open = sum(int(k.sum()) for k in open_heads.values())
n_heads = sum(k.numel() for k in open_heads.values())
probabilities = {p: [round(v, 2) for v in q.tolist()] for p, q in gates.open_probability().items()}
display(
    Markdown(
        f"After {L0_EPOCHS} epoch(s) with L0 weight {l0_weight}, {n_open} of {n_heads} gates are "
        f"open; with the closed heads masked the model scores {pruned_accuracy:.2%} (gated: "
        f"{gated_accuracy:.2%}).  Probability that each gate is open, by layer: "
        f"{probabilities}.  A larger weight or longer training closes more gates."
    )
)

# %% [markdown]
# ## Summary
#
# - Ephemeral sparsity lives in what flows through the network and changes with every input:
#   ReLU zeros, forced activation sparsity (k-WTA, FATReLU), sparse back-propagated errors
#   (meProp, SWAT), routing to a few experts (top-k and Switch MoE), sparse attention
#   weights (fixed patterns, top-k, sparsemax, entmax), and the dropout family, which zeros
#   activations, weights, regions, branches or layers at random for one step.
# - A trained ReLU network already has many zero activations; k-WTA fixes the count in
#   advance and FATReLU the level, both at a measurable cost in accuracy.
# - meProp keeps a few errors per example and the backward products shrink in proportion;
#   how much accuracy that costs depends on `k` and on the width of the layer.
# - MoE layers use a fraction of their experts per example; the capacity factor trades
#   dropped examples against the balance the experts must keep.
# - Heads scored by the gate derivative can be removed in bulk, and `shrink` turns the
#   masks into a smaller model with the same outputs.
#
# ## Exercises
#
# 1. Train the transformer *with* sparsemax or 1.5-entmax attention from the start
#    (`attn.use_attention(model, attn.attention_fn(normaliser="entmax"))` before `fit`). Does
#    the accuracy gap to softmax close?
# 2. Give SWAT different weight and activation densities
#    (`backprop.sparsify_backprop(model, "swat", weight_density=0.2, act_density=0.5)`).
#    Which of the two costs more accuracy?
# 3. Switch routing with capacity factor 0.5: how many examples skip the expert layer during
#    training, and what happens to accuracy?
# 4. Fine-tune the head-pruned transformer for one epoch after pruning 75% of the heads.
#    How much accuracy comes back?
# 5. Add `act.FATReLU(0.5)` to a trained ReLU model without retraining. How many more zeros,
#    and how much accuracy is lost?

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
# # Hardware acceleration II: exporting a pruned model
#
# **What you will learn:** how `accel.export` turns a masked model into an inference model
# that runs sparse kernels or a smaller dense network, and keeps a sparse kernel only where
# it saves time; how an unpruned control tells a speed-up from timing noise; and how an
# exported model is saved and loaded.
#
# This follows section 7 (acceleration) of the survey and continues
# [06](06_hardware_acceleration.ipynb), which measures what each storage format costs and
# where sparse kernels break even with dense ones on a CPU: a mask alone makes a model no
# faster.  [06b](06b_nm_and_roofline.ipynb) goes on to N:M sparsity, what GPUs do with 2:4,
# and the roofline.  Every time in this notebook is measured live on the machine that runs
# it, so the numbers move from run to run; the control in section 2 says by how much.

# %%
import inspect
import tempfile
from pathlib import Path

import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab import accel, formats, models
from sparsity_lab.nb import md
from sparsity_lab.words import at_levels, mean_pm, percents, plural

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
E2E_SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
BUDGET_S = 0.01

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:1]
    E2E_SPARSITIES = [0.0, 0.95]
    BUDGET_S = 0.002
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## 1. What export does
#
# `accel.export` turns a masked model into an inference model in five steps:
#
# 1. `shrink` removes structured zeros physically: a neuron whose weights are all pruned
#    disappears together with the matching inputs of the next layer.  The layers get
#    smaller and their sparsity changes.
# 2. Each Linear/Conv layer whose weight (after shrinking) is at least `min_sparsity`
#    sparse is timed on its real input, dense and with each sparse kernel.  A kernel is
#    kept only if it takes at most `margin` of the dense time.  Less sparse layers stay
#    dense without being timed.
# 3. If any layer kept a sparse kernel, export times the whole model against the dense
#    shrunk model.  If the mix is slower, *every* layer goes back to dense.  The plan then
#    shows `dense` everywhere but keeps the per-layer timings that had chosen a kernel.
# 4. At batch 1, a model that is a chain of Linear layers and ReLUs (an MLP) is also timed
#    as one compiled call over all its layers (`sl.fused.FusedSparseChain`: each layer's
#    CSR product, bias and ReLU in one small C function).  Per layer, the fixed cost of a
#    call is most of the time of a small matrix-vector product; one call for the whole
#    network removes it.  The chain is kept only if it is faster than step 3's model, which
#    still runs every other batch; the kernel table then reads `csr_chain` for every layer.
# 5. Every model is also timed as one compiled call of the whole network, its layers dense
#    (`sl.fused_net.CompiledNet`: every convolution, Linear layer, ReLU, pooling and
#    addition a plain C loop compiled for its own sizes), and that call is kept where it is
#    faster than whatever steps 3 and 4 chose, for batches up to the one it was timed on;
#    the table then reads `compiled_net`.

# %%
export_defaults = {k: p.default for k, p in inspect.signature(accel.export).parameters.items()}
MARGIN, MIN_SPARSITY = export_defaults["margin"], export_defaults["min_sparsity"]
md(
    f"`export`'s defaults, used here: `min_sparsity={MIN_SPARSITY}` (weights less than "
    f"{MIN_SPARSITY:.0%} sparse are never timed) and `margin={MARGIN}` (a kernel must "
    f"take at most {MARGIN:.0%} of the dense time, i.e. save at least {1 - MARGIN:.0%})."
)


# %% [markdown]
# ## 2. Exporting LeNet-300-100
#
# The result computes what the masked model computes (export checks it).  Below,
# LeNet-300-100 is pruned by magnitude with a uniform budget (every layer to the same
# sparsity *before* shrinking) and exported at batch 1.  The masked and the exported model
# are timed against the same network with its zeros stored as plain dense tensors
# ("dense"); `masked` and `exported` are speeds relative to that.  Export also speeds up a
# network without any sparsity (BatchNorm folding, the faster dense kernels, one compiled
# call), so the dense network is exported too, with dense kernels only ("dense exported",
# `kernels=()`): `export alone` is its speed relative to dense, and `from sparsity` the
# exported model's speed relative to it, what the zeros themselves buy.  The row at
# sparsity 0 is a control: nothing is pruned, so the masked and the dense model run the
# same network, and so do the exported and the dense exported one; both of those ratios
# should be 1.

# %%
TARGET = 0.95  # every exported model should run at least this fraction of the dense speed
FOCUS = 0.95  # the sparsity the text below looks at first
assert 0.0 in E2E_SPARSITIES and FOCUS in E2E_SPARSITIES  # the control and the focus


def lenet(sparsity, seed):
    torch.manual_seed(seed)
    model = models.build("lenet300", input_shape=(784,), n_classes=10)
    if sparsity > 0:
        sl.prune(model, "magnitude", sparsity, budget="uniform")
    return model.eval().requires_grad_(False)


def weight_entries(model):
    """Entries of all Linear weight matrices, dense or sparse (shrink makes them fewer)."""
    linear = (torch.nn.Linear, accel.SparseLinear)
    return sum(m.out_features * m.in_features for m in model.modules() if isinstance(m, linear))


def fell_back(plan):
    """True when a layer had chosen a sparse kernel but the whole-model check undid it."""
    return any(
        c.kernel == "dense" and c.sparse_s is not None and c.sparse_s <= MARGIN * c.dense_s
        for c in plan
    )


e2e, kernel_rows = [], []
for s in E2E_SPARSITIES:
    for seed in SEEDS:
        model = lenet(s, seed)
        x = torch.randn(1, 784)
        dense = sl.masks.remove(lenet(s, seed))  # plain tensors, zeros stored as zeros
        exported = accel.export(model, x, budget_s=BUDGET_S / 4)
        # the same network as export runs it without sparsity: shaped as it is, dense kernels
        reference = accel.export(dense, x, kernels=(), use_shrink=False, budget_s=BUDGET_S / 4)
        plan, ran = exported.export_plan, accel.kernels_run(exported)
        chained, whole = "csr_chain" in ran, "compiled_net" in ran
        with torch.no_grad():  # checked, then timed in interleaved rounds (see the control)
            assert torch.allclose(exported(x), model(x), atol=1e-4)
            runs = {"dense": dense, "masked": model, "exported": exported,
                    "dense exported": reference}  # fmt: skip
            fns = {k: (lambda m=m, x=x: m(x)) for k, m in runs.items()}
            t = accel.time_interleaved(fns, repeats=5, budget_s=BUDGET_S)
        n_sparse = sum(kernel not in ("dense", "compiled_net") for kernel in ran)
        e2e.append({"sparsity": s, "seed": seed, "masked": t["dense"] / t["masked"],
                    "exported": t["dense"] / t["exported"],
                    "export alone": t["dense"] / t["dense exported"],
                    "from sparsity": t["dense exported"] / t["exported"],
                    "sparse layers": n_sparse, "compiled chain": chained, "compiled net": whole,
                    "reference compiled": isinstance(reference, sl.fused_net.CompiledNet),
                    "fell back": fell_back(plan),
                    "after shrink": weight_entries(exported) / weight_entries(dense)})  # fmt: skip
        kernel_rows += [
            {"sparsity": s, "layer": c.name, "kernel": kernel}
            for c, kernel in zip(plan, ran, strict=True)
        ]
        last = (s, seed)
e2e = pd.DataFrame(e2e)
COLUMNS = ["masked", "exported", "export alone", "from sparsity"]
summary = e2e.groupby("sparsity")[COLUMNS].agg(["mean", "std"]).round(2)
print("Speed relative to dense (mean and std over seeds):")
print(summary.to_string())

# %% [markdown]
# Which kernels each layer kept, counted over the seeds, how many models the whole-model
# check set back to dense, and the share of weight entries left after shrinking:

# %%
kernels = (
    pd.DataFrame(kernel_rows)
    .groupby(["sparsity", "layer"])["kernel"]
    .agg(lambda k: ", ".join(f"{name} x{n}" for name, n in k.value_counts().items()))
    .unstack("layer")
)
by_s = e2e.groupby("sparsity")
kernels["fell back"] = by_s["fell back"].sum().astype(int).astype(str) + f"/{len(SEEDS)}"
kernels["weights after shrink"] = by_s["after shrink"].mean().map("{:.1%}".format)
print(kernels.to_string())
speedup = getattr(exported, "chain_speedup", getattr(exported, "compiled_speedup", None))
chain_note = (
    f".  This model runs as one compiled "
    f"{'chain' if isinstance(exported, sl.fused.FusedSparseChain) else 'network'} at batch 1, "
    f"measured {speedup:.2f}x faster than the per-layer plan below, which is how it runs "
    "every other batch:"
    if speedup is not None
    else ":"
)
md(
    f"The plan of the last model exported (sparsity {last[0]:.0%}, seed {last[1]}); its "
    "`sparsity` column is each layer's sparsity *after* shrinking, and `dense_us` / "
    f"`sparse_us` are the per-layer timings (microseconds) export decided on{chain_note}"
)
print(accel.plan(exported).round(3).to_string())


# %%
def spread(column):
    """The control's deviation from 1 plus its standard deviation: this run's timing noise."""
    c = e2e.loc[e2e.sparsity == 0, column]
    return abs(c.mean() - 1) + (c.std() if len(c) > 1 else 0.0)


def versus(ratio, column, ref=1.0):
    """-1, 0 or 1: ``ratio`` below, within the control's spread of, or above ``ref``."""
    if abs(ratio - ref) <= noise[column]:
        return 0
    return 1 if ratio > ref else -1


# an exported model's ratios are judged by the exported control's noise
noise = {"masked": spread("masked"), "exported": spread("from sparsity")}
ctrl = e2e[e2e.sparsity == 0]
ctrl_pm = {c: mean_pm(ctrl[c], unit="x") for c in COLUMNS}  # mean ± std
compiled_ctrl = int(ctrl["reference compiled"].sum())
md(
    f"**Control.**  At sparsity 0 nothing is pruned: the masked column read "
    f"{ctrl_pm['masked']} and the exported model against the dense exported one "
    f"{ctrl_pm['from sparsity']} (mean ± std over {plural(len(ctrl), 'seed')}), where both "
    f"should read 1.  Their deviation from 1 plus their standard deviation, "
    f"{noise['masked']:.2f} (masked) and {noise['exported']:.2f} (exported), is this run's "
    "timing noise and bias, which the interleaved rounds do not remove.  Below, a ratio "
    "counts as different from another (or from 1) only if they differ by more than that.  "
    f"Export alone, without sparsity, ran the unpruned network at {ctrl_pm['export alone']} "
    f"the dense speed ({compiled_ctrl} of the {len(ctrl)} as one compiled network)."
)

word = {
    1: "faster than dense beyond the control's spread",
    0: "within the control's spread of dense",
    -1: "slower than dense beyond the control's spread",
}
against_reference = {
    1: "faster than it beyond the control's spread",
    0: "within the control's spread of it",
    -1: "slower than it beyond the control's spread",
}
focus = e2e[e2e.sparsity == FOCUS]
f_exp, f_mask, f_gain = (focus[c].mean() for c in ("exported", "masked", "from sparsity"))
pruned = e2e[e2e.sparsity > 0]  # the control measures the noise; it is not a test
exported_means = pruned.groupby("sparsity")["exported"].mean()
low_at = exported_means.idxmin()
low = round(exported_means[low_at], 2)  # judged as printed
gap, allowed = round(TARGET - low, 2), round(noise["exported"], 2)
if gap <= 0:
    verdict = "met"
elif gap <= allowed:
    verdict = (
        f"missed by {gap:.2f}, which is within the control's spread ({allowed:.2f}): this "
        "run cannot tell the miss from timing noise"
    )
else:
    verdict = (
        f"missed by {gap:.2f}, more than the control's spread ({allowed:.2f}): a real slowdown "
        "worth a look, since export keeps dense where no kernel is faster and falls back to "
        "dense when the whole model is slower"
    )
worst = pruned.loc[pruned["exported"].idxmin()]  # context, not the test
n_sparse = int(worst["sparse layers"])
worst_layers = (
    f"{plural(n_sparse, 'layer')} on a sparse kernel" if n_sparse else "every layer dense"
)
if worst["compiled chain"]:
    worst_layers = "the layers in one compiled chain"
elif worst["compiled net"]:
    worst_layers = "the dense layers in one compiled network"
target_verdict = (
    f"the target of at least {TARGET:.2f}x the dense speed at every pruned sparsity, judged "
    f"on the exported model's mean over {plural(len(SEEDS), 'seed')} at each sparsity, was "
    f"{verdict} (lowest mean: {low:.2f}x at sparsity {low_at:.0%}; for context, the slowest "
    f"single run read {worst['exported']:.3f}x, at sparsity {worst['sparsity']:.0%}, seed "
    f"{int(worst['seed'])}, with {worst_layers})"
)
md(
    f"At {FOCUS:.0%} sparsity and batch 1 the exported LeNet-300-100 runs at {f_exp:.2f}x "
    f"the dense model's speed (mean of {plural(len(focus), 'seed')}; "
    f"{word[versus(f_exp, 'exported')]}) and at {f_gain:.2f}x the speed of the dense network "
    f"exported with dense kernels only ({against_reference[versus(f_gain, 'exported')]}: what "
    "the zeros buy), "
    f"while the masked model runs at {f_mask:.2f}x ({word[versus(f_mask, 'masked')]}"
    + (": masks alone cost time" if versus(f_mask, "masked") < 0 else "")
    + f").  {target_verdict[0].upper() + target_verdict[1:]}."
)


# %%
def in_seeds(k):
    return sl.words.in_how_many(k, len(SEEDS), "seed")


means = pruned.groupby("sparsity").agg(
    gain=("from sparsity", "mean"), sparse=("sparse layers", "sum"), kept=("after shrink", "mean")
)
with_kernel = pruned[pruned["sparse layers"] > 0]
n_chained = int(pruned["compiled chain"].sum())
n_back = int(pruned["fell back"].sum())
n_back_chained = int((pruned["fell back"] & pruned["compiled chain"]).sum())
# faster than the same network exported without sparsity: what the zeros bought
faster = means[[versus(r, "exported") > 0 for r in means["gain"]]]
from_kernels = list(faster[faster["sparse"] > 0].index)
# no sparse kernel: a speed-up needs a smaller network; an unshrunk one is the dense model
SHRUNK = 0.995  # at most this share of the weight entries left counts as shrunk
# shrinking explains a speed-up only up to what it removed (1 / kept, plus the noise), and
# only where the export and its reference ran the same way (a compiled network or not)
same_path = (pruned["compiled net"] == pruned["reference compiled"]).groupby(pruned["sparsity"])
means["same path"] = same_path.all()
means["shrink bound"] = 1 / means["kept"] + noise["exported"]
no_kernel = faster[faster["sparse"] == 0].index
from_shrink = [
    s for s in no_kernel
    if means.loc[s, "kept"] <= SHRUNK and means.loc[s, "same path"]
    and means.loc[s, "gain"] <= means.loc[s, "shrink bound"]
]  # fmt: skip
other_path = [s for s in no_kernel if not means.loc[s, "same path"]]
unexplained = [s for s in no_kernel if s not in from_shrink and s not in other_path]
kept_text = (
    f"A sparse kernel ran in {len(with_kernel)} of the {len(pruned)} pruned exported "
    f"models ({at_levels(sorted(set(with_kernel['sparsity'])))})"
    if len(with_kernel)
    else f"No sparse kernel ran in any of the {len(pruned)} pruned exported models"
) + (
    f"; {n_chained} of them ran as one compiled chain "
    f"({at_levels(sorted(set(pruned[pruned['compiled chain']]['sparsity'])))})"
    if n_chained
    else "; none ran as one compiled chain"
)
n_whole = int(pruned["compiled net"].sum())
if n_whole:
    kept_text += (
        f"; {n_whole} ran as one compiled network of dense layers "
        f"({at_levels(sorted(set(pruned[pruned['compiled net']]['sparsity'])))})"
    )
back_text = (
    f"in {n_back} of the {len(pruned)}, some layers had chosen a sparse kernel, but the whole "
    "model was timed slower than the dense shrunk model and every layer went back to dense"
    + (
        f" ({n_back_chained} of them then ran as one compiled chain at batch 1, the dense "
        "plan serving every other batch)"
        if n_back_chained
        else ""
    )
    if n_back
    else "the whole-model check undid no layer's choice"
)
seeds_with_kernel = (pruned["sparse layers"] > 0).groupby(pruned["sparsity"]).sum()
source = (
    "The exported model was faster than the dense network exported with dense kernels only, "
    f"beyond the control's spread, {at_levels(list(faster.index))}."
    if not faster.empty
    else "At no pruned sparsity was the exported model faster than the dense network exported "
    "with dense kernels only beyond the control's spread, so this run shows no speed-up from "
    "either shrinking or sparse kernels."
)
if from_shrink:
    source += (
        f"  At {percents(from_shrink)} no seed ran a sparse kernel, so the speed-up there comes "
        "from shrinking alone: a smaller dense network, with "
        + ", ".join(f"{means.loc[s, 'kept']:.1%}" for s in from_shrink)
        + " of the weight entries left."
    )
if other_path:
    source += (
        f"  At {percents(other_path)} no sparse kernel ran, and the export and the dense "
        "export did not both run as one compiled network in every seed: each chose its "
        "path on its own timings, and that choice, not the zeros, makes the difference."
    )
if unexplained:
    source += (
        f"  At {percents(unexplained)} no sparse kernel ran and the two exports ran the same "
        "way, but the speed-up is more than shrinking can give (it left "
        + ", ".join(f"{means.loc[s, 'kept']:.1%}" for s in unexplained)
        + " of the weight entries, a bound of "
        + ", ".join(f"{means.loc[s, 'shrink bound']:.2f}x" for s in unexplained)
        + " with the noise): timing noise that the control did not capture."
    )
for how in sorted({in_seeds(int(seeds_with_kernel[s])) for s in from_kernels}):
    at = [s for s in from_kernels if in_seeds(int(seeds_with_kernel[s])) == how]
    source += (
        f"  At {percents(at)} sparse kernels ran {how} on top of shrinking, so both contribute."
    )
md(
    f"**Which kernels ran.**  {kept_text}; {back_text}.  Shrinking left this share of the "
    "weight entries (mean over seeds): "
    + ", ".join(f"{k:.0%} at {s:.0%} sparsity" for s, k in means["kept"].items())
    + f".\n\n**Where the speed-up comes from.**  {source}"
)

# %% [markdown]
# ## 3. Saving and loading
#
# An exported model saves and loads with `accel.save` / `accel.load`, which read it back with
# `torch.load(weights_only=True)` and an allowlist of module classes:

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "lenet_exported.pt"
    accel.save(exported, path)
    reloaded = accel.load(path)
    with torch.no_grad():
        same = torch.equal(reloaded(x), exported(x))
    print(f"{path.name}: {path.stat().st_size} bytes; reloaded outputs equal: {same}")
assert same

# %% [markdown]
# ## Summary
#
# * A mask only multiplies by zeros: speed needs sparse kernels or a physically smaller
#   model ([06](06_hardware_acceleration.ipynb), section 3).  `accel.export` shrinks the
#   model, times each sufficiently sparse layer, keeps dense unless a kernel saves enough
#   time, falls back to the dense shrunk model when the whole mix is slower, runs the whole
#   network as one compiled call where that is faster, checks its outputs against the
#   masked model (sections 1 and 2), and saves and loads with
#   `accel.save` / `accel.load` (section 3).
#
# Measured in this run:

# %%
ratios = pruned.groupby("sparsity")[COLUMNS].mean()


def span(values, fmt, unit=""):
    return sl.words.span(values.min(), values.max(), fmt, unit)


md(
    f"* Per-sparsity means over {plural(len(SEEDS), 'seed')}, at "
    f"{'sparsity' if len(ratios) == 1 else 'sparsities'} {span(ratios.index, '.0%')}: "
    "the masked LeNet-300-100 ran at "
    f"{span(ratios['masked'], '.2f', 'x')} the dense model's speed, the exported one at "
    f"{span(ratios['exported'], '.2f', 'x')}, which is "
    f"{span(ratios['from sparsity'], '.2f', 'x')} the speed of the dense network exported with "
    "dense kernels only.  The unpruned control, which should read 1, read "
    f"{ctrl_pm['masked']} (masked) and {ctrl_pm['from sparsity']} (exported against dense "
    f"exported); export alone ran the unpruned network at {ctrl_pm['export alone']} the dense "
    "speed.\n"
    f"* Export: {target_verdict}.  {kept_text}."
)

# %% [markdown]
# The full benchmark (`python benchmarks/acceleration.py`) exports LeNet-300-100 and
# LeNet-5 end to end and reports their targets, next to the kernel measurements of
# [06](06_hardware_acceleration.ipynb).
#
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.  Timings move from run to run, so the answers are counts
# (of bits, of neurons); the first solution then times what its count explains.
#
# **1.** Prune LeNet-300-100 in blocks: `sl.prune(lenet(0.0, SEED), "magnitude", 0.9,
# pattern="block:4x4", exclude=["fc3.weight"], budget="uniform")` (4 x 4 blocks do not tile
# fc3's 10 outputs; a uniform budget prunes every layer to the same sparsity, as in section
# 2).  BSR stores one column index per block of 16 values, CSR one per value.  With 32-bit
# values and 32-bit indices (`index_bits=32`), what is the size of fc1's weight in BSR with
# 4 x 4 blocks divided by its size in CSR (`formats.bits`)?  Two decimals.  Then export the
# model: do the BSR kernels win, and at which batch?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def blocked_lenet():
    """LeNet-300-100 pruned to 90% in 4 x 4 blocks, every layer but fc3 (uniform budget)."""
    model = lenet(0.0, SEED)
    sl.prune(model, "magnitude", 0.9, pattern="block:4x4", exclude=["fc3.weight"],
             budget="uniform")  # fmt: skip
    return model


def check_1(answer, solution=False):
    w = sl.masks.weight(blocked_lenet(), "fc1.weight").detach()
    bsr = formats.bits(w, "bsr", block=(4, 4), value_bits=32, index_bits=32)
    ratio = bsr / formats.bits(w, "csr", value_bits=32, index_bits=32)
    hint = "BSR: per block 16 values and one index, plus a pointer per block row; CSR per value."
    sl.nb.check(1, answer, ratio, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_1 = None  # a ratio, e.g. 0.75
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  By hand, from the weight: every kept 4 x 4 block stores 16 values and one
# column index, (16 * 32 + 32) bits, where CSR stores an index with each of its 16 values,
# 16 * 64 bits; the row pointers (one per block row for BSR, per row for CSR) add little.
# So BSR reads about half the bytes of CSR, and its kernel works on small dense blocks.
# Whether that beats the dense product depends on the batch, as exercise 1 of 06b works
# out: the timed export below says where it did in this run.
blocked = blocked_lenet()
w1 = sl.masks.weight(blocked, "fc1.weight").detach()
kept_blocks = int((w1.reshape(300 // 4, 4, 784 // 4, 4) != 0).any(dim=3).any(dim=1).sum())
bsr_bits = kept_blocks * (16 * 32 + 32) + (300 // 4 + 1) * 32
csr_bits = int((w1 != 0).sum()) * (32 + 32) + (300 + 1) * 32
solution_1 = round(bsr_bits / csr_bits, 2)
print(f"{kept_blocks} blocks kept: BSR {bsr_bits} bits, CSR {csr_bits} bits, ratio {solution_1}")
for batch in (1, 256):  # timed: the kernels export keeps move from run to run
    exported_1 = accel.export(blocked, torch.randn(batch, 784), budget_s=BUDGET_S / 4)
    kernels_1 = zip(exported_1.export_plan, accel.kernels_run(exported_1), strict=True)
    plan_1 = [f"{c.name} {kernel}" for c, kernel in kernels_1]
    print(f"batch {batch}: {', '.join(plan_1)}")
check_1(solution_1, solution=True)


# %% [markdown]
# **2.** Step 1 of `export`, `shrink`, removes a hidden neuron when the layer that writes it
# leaves it dead (its row of the weight is all zero) or every layer that reads it ignores it
# (its column is all zero).  Take LeNet-300-100 pruned to 95% with a uniform budget, as in
# section 2 (`lenet(0.95, SEED)`): how many of fc2's 100 neurons are left after
# `sl.shrink.shrink`?  Why are so many more gone than of fc1's 300?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    left = sl.shrink.shrink(lenet(0.95, SEED)).fc2.out_features
    hint = "A neuron of fc2 goes when its row of fc2 or its column of fc3 is all zero."
    sl.nb.check(2, answer, left, hint=hint, solution=solution)


# %%
answer_2 = None  # a number of neurons, e.g. 50
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  By hand, from the masked weights: fc2 writes its neurons (rows), fc3 reads
# them (columns).  fc3 has only 10 x 100 weights, and at 95% about 50 of them survive, so
# most of fc2's neurons have no reader left; fc1's neurons are read by 100 weights each in
# fc2, of which almost always at least one survives.  The weights left give the share of
# weight entries after shrinking, which the kernel table of section 2 averages over seeds.
masked = lenet(0.95, SEED)
w1, w2, w3 = (sl.masks.weight(masked, f"fc{i}.weight") for i in (1, 2, 3))
n1 = int((~((w1 == 0).all(dim=1) | (w2 == 0).all(dim=0))).sum())  # fc1 neurons left
solution_2 = int((~((w2 == 0).all(dim=1) | (w3 == 0).all(dim=0))).sum())
entries = 784 * n1 + n1 * solution_2 + solution_2 * 10
print(f"fc1 keeps {n1} of 300 neurons, fc2 {solution_2} of 100: "
      f"{entries / (784 * 300 + 300 * 100 + 100 * 10):.1%} of the weight entries left")  # fmt: skip
check_2(solution_2, solution=True)

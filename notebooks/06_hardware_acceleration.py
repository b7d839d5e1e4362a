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
# # Hardware acceleration I: storage formats and break-even
#
# **What you will learn:** what a sparse tensor costs to store in each format and where
# each format wins; why a pruned model is not faster until it is exported; and where sparse
# kernels break even with dense ones on a CPU, and how blocks and whole removed rows change
# that.
#
# This follows sections 2.2 (storage formats) and 7 (acceleration) of the survey.  Two
# notebooks continue it: [06c](06c_exporting_pruned_models.ipynb) shows how `accel.export`
# turns a pruned model into one that runs sparse kernels or a smaller dense network, and
# [06b](06b_nm_and_roofline.ipynb) covers N:M sparsity and its metadata, what GPUs do with
# 2:4, and the roofline: how close each kernel gets to the machine's limits.  Every time in
# this notebook is measured live on the machine that runs it, so the numbers move from run
# to run; the shapes of the curves are what to read.

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch
import torch.nn.functional as F

import sparsity_lab as sl
from sparsity_lab import accel, formats
from sparsity_lab.nb import md
from sparsity_lab.patterns import Block, Unstructured
from sparsity_lab.words import at_levels, compare_onsets

# %% tags=["parameters"]
SMOKE = False
SEED = 0
SEEDS = [0, 1, 2]
SIDE = 1000
MATRIX = 1024
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
BATCHES = [1, 64]
BUDGET_S = 0.01

# %%
if SMOKE:  # a quick pass through every cell, for CI
    SEEDS = SEEDS[:1]
    SIDE = 200
    MATRIX = 256
    SPARSITIES = [0.5, 0.9, 0.99]
    BATCHES = [1]
    BUDGET_S = 0.002
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## 1. Formats: values plus index
#
# A sparse tensor is stored as its nonzero values plus *index* data that says where they
# are.  With ``n`` elements, ``m`` nonzeros, ``k`` bits per value and an ``n_r x n_c``
# matrix, the survey's formats cost (``w(R) = ceil(log2 R)`` bits for an index that takes
# ``R`` values, or ``b`` bits with fixed-width indices; the exact forms are in
# `sparsity_lab.formats`):
#
# | format | bits |
# |---|---|
# | dense | ``n k`` |
# | bitmap | ``n + m k`` |
# | coo | ``m (k + w(n))`` minimal; ``m (k + ndim b)`` fixed-width |
# | csr | ``m (k + w(n_c)) + (n_r + 1) w(m + 1)`` |
# | csc | ``m (k + w(n_r)) + (n_c + 1) w(m + 1)`` (the transpose of csr) |
# | bsr (r x c blocks) | ``B (r c k + w(n_c / c)) + (n_r / r + 1) w(B + 1)`` |
# | rle / delta | ``m (k + w(d_max))``, ``d_max`` the largest gap |
# | ell | ``n_r K (k + w(n_c))``, ``K`` the most nonzeros in a row |
# | N:M | ``(n N / M)(k + ceil(log2 M))`` |
#
# Packed minimally, a COO entry is one offset into the ``n`` elements; with fixed-width
# indices it is one ``b``-bit index per dimension, as in torch's COO tensors.
#
# Here is one small matrix in CSR: the values, a column index per value and a pointer to
# where each row starts.

# %%
gen = torch.Generator().manual_seed(SEED)
small = torch.randn(4, 6, generator=gen).round(decimals=1)
small = torch.where(Unstructured().mask(torch.rand(4, 6, generator=gen), 0.6), small, 0.0)
enc = formats.get("csr").encode(small)
print(small)
print("values      ", enc.values.tolist())
print("col_indices ", enc.index["col_indices"].tolist())
print("crow_indices", enc.index["crow_indices"].tolist())
assert torch.equal(formats.get("csr").decode(enc), small)

# %% [markdown]
# Every format decodes back to the same tensor exactly.  Their sizes for this matrix,
# with 8-bit values and minimal index widths, and with torch's 32-bit values and 64-bit
# indices (which then equal the bytes of torch's own sparse tensors):

# %% tags=["nbval-check-output"]
rows = []
for name in formats.FORMATS:
    fmt = formats.get(name, block=(2, 2)) if name == "bsr" else formats.get(name)
    assert torch.equal(fmt.decode(fmt.encode(small)), small)
    k8, k32 = fmt.bits(small, value_bits=8), fmt.bits(small, value_bits=32, index_bits=64)
    rows.append({"format": name, "bits (k=8, minimal)": k8, "bits (k=32, b=64)": k32})
sizes = pd.DataFrame(rows).set_index("format")
torch_csr_bits = formats.torch_bits(small.to_sparse_csr())
assert sizes.loc["csr", "bits (k=32, b=64)"] == torch_csr_bits
print(sizes.to_string())
print("torch.sparse_csr bits:", torch_csr_bits)

# %% [markdown]
# Drag the sparsity: the bars are each format's size for a random 64 x 64 matrix with
# 8-bit values, relative to dense.  (In the book the figure shows four settings.)


# %%
def draw_sizes(ax, sparsity):
    t = torch.randn(64, 64) * Unstructured().mask(torch.rand(64, 64), sparsity)
    dense, block = formats.bits(t, "dense", value_bits=8), {"bsr": {"block": (4, 4)}}
    rel = {n: formats.bits(t, n, value_bits=8, **block.get(n, {})) / dense for n in formats.FORMATS}
    sl.viz.value_bars(rel, ax, reference=1, color="C0", highlight="min")
    ax.set_ylabel("size / dense")


sl.nb.explore(draw_sizes, sparsity=[0.3, 0.6, 0.9, 0.99])

# %% [markdown]
# ## 2. The crossover: which format is smallest where
#
# The survey's picture (its example has ``n = 10^8`` elements and ``k = 8`` bits): a
# bitmap is smallest at moderate sparsity and offset formats (delta/run-length, CSR)
# beyond about 80%.  Measured here on random matrices of `SIDE x SIDE`:

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
tables, every = {}, (*formats.FORMATS, "nm_format")
for ax, (k, b) in zip(axes, [(8, None), (32, 32)], strict=True):
    tables[k] = formats.crossover((SIDE, SIDE), value_bits=k, index_bits=b, formats=every)
    label = "minimal indices" if b is None else f"{b}-bit indices"
    formats.plot_crossover(tables[k], ax, title=f"{k}-bit values, {label}")
plt.show()

# %%
value_bits = 8  # the survey's k
best = formats.smallest(tables[value_bits])
ranges = best.groupby((best["format"] != best["format"].shift()).cumsum()).agg(
    format=("format", "first"), start=("sparsity", "min"), end=("sparsity", "max")
)
md(
    f"With {value_bits}-bit values and minimal indices the smallest format is "
    + "; ".join(f"**{r.format}** from {r.start:.1%} to {r.end:.1%}" for r in ranges.itertuples())
    + f" (on {SIDE}x{SIDE} random matrices).  A bitmap beats dense as soon as the density "
    f"falls below 1 - 1/k = {1 - 1 / value_bits:.1%} (k = {value_bits})."
)

# %% [markdown]
# ## 3. Why a masked model is not faster
#
# A mask multiplies weights by zero; the model still multiplies by every zero.  Speed needs
# a *kernel* that skips them, and a kernel pays for its index: it reads an index per value
# and cannot use the dense product's vector units as well.  We time ``y = x W^T`` for a
# `MATRIX x MATRIX` weight: dense, our CSR layer (`accel.SparseLinear`; the faster of its
# torch and scipy kernels, which is what `export`, in [06c](06c_exporting_pruned_models.ipynb),
# would choose), torch's BSR on a matrix pruned in 16 x 16 blocks, and *shrunk*: the same
# fraction of whole rows removed, which leaves a smaller dense matrix.  One random matrix
# per seed in `SEEDS` at each point (mean and standard deviation over them).


# %%
def timed(fn):
    with torch.no_grad():
        return accel.time_call(fn, repeats=3, budget_s=BUDGET_S)


def speedups(side, batch, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(side, side, generator=g)
    scores = torch.rand(side, side, generator=g)
    x = torch.randn(batch, side, generator=g)
    unstructured = w * Unstructured().mask(scores, sparsity)
    blocked = w * Block(16, 16).mask(scores, sparsity)
    shrunk = w[: max(1, round((1 - sparsity) * side))].contiguous()
    layers = {k: accel.SparseLinear(unstructured, kernel=k) for k in ("torch_csr", "scipy_csr")}
    bsr = accel.SparseLinear(blocked, kernel="torch_bsr", block=(16, 16))
    dense = timed(lambda: F.linear(x, w))
    ours = min(timed(lambda m=m: m(x)) for m in layers.values())
    t_bsr, t_shrunk = timed(lambda: bsr(x)), timed(lambda: F.linear(x, shrunk))
    return {"csr (ours)": dense / ours, "bsr 16x16": dense / t_bsr, "shrunk": dense / t_shrunk}


records = []
for batch in BATCHES:
    for s in SPARSITIES:
        for seed in SEEDS:
            for variant, v in speedups(MATRIX, batch, s, seed).items():
                records.append({"batch": batch, "sparsity": s, "variant": variant, "speedup": v})
speed = pd.DataFrame(records)
# mean and standard deviation over the seeds (no spread with one seed: 0)
speed_stats = speed.groupby(["batch", "variant", "sparsity"])["speedup"].agg(["mean", "std"])
speed_stats = speed_stats.fillna(0)
bars = speed_stats.assign(
    ci_low=lambda d: d["mean"] - d["std"], ci_high=lambda d: d["mean"] + d["std"]
)
fig, axes = plt.subplots(1, len(BATCHES), figsize=(6 * len(BATCHES), 4), squeeze=False)
for ax, (batch, part) in zip(axes[0], bars.reset_index().groupby("batch"), strict=True):
    sl.viz.interval_lines(part, "sparsity", "variant", ax)
    ax.axhline(1, color="k", lw=0.8)
    sl.viz.logit_sparsity_axis(ax, ticks=part["sparsity"].unique())
    ax.set(yscale="log", xlabel="sparsity", ylabel="speed-up over dense")
    ax.set_title(f"{MATRIX}x{MATRIX}, batch {batch}")
    ax.legend()
plt.show()


# %%
def even_text(batch, variant):
    """Where ``variant`` broke even at ``batch``, with mean and spread at that sparsity."""
    if (be := even[(batch, variant)]) is None:
        return "at no measured sparsity"
    at = speed_stats.loc[(batch, variant, be)]
    return f"from {be:.0%} ({at['mean']:.2f} ± {at['std']:.2f}x there)"


low = (speed_stats["mean"] - speed_stats["std"]).unstack("sparsity")  # a row per batch, variant
even = {key: sl.stats.stays_above(row, 1.0) for key, row in low.iterrows()}  # break-even points
lines = [f"batch {b}, {v}: faster than dense {even_text(b, v)}" for b, v in even]
criterion = (
    f"the mean speed-up minus one standard deviation (over {len(SEEDS)} random matrices)"
    if len(SEEDS) > 1
    else "the speed-up of the one random matrix (a single seed, so no spread)"
)
md(
    f"Break-even on this machine, the lowest sparsity from which {criterion} stays above 1 "
    "at that and every sparser point: " + "; ".join(lines) + "."
)


def at_batches(bs):
    """``at every batch``, ``at batch 1`` or ``at batches 1 and 64``."""
    return "at every batch" if len(bs) == len(BATCHES) > 1 else at_levels(bs, "batch", "{}")


RELATION = {  # short forms after the headline, with ``{at}`` the batches each holds at
    "earlier": "earlier {at}",
    "same": "at the same sparsity as CSR {at}",
    "later": "later than CSR, or not at all, {at}",
    "neither": "{at} neither it nor CSR broke even",
}
ALONE = {  # the whole predicate, when a single batch was measured
    "earlier": "broke even earlier than unstructured CSR {at}",
    "same": "broke even at the same sparsity as unstructured CSR {at}",
    "later": "broke even later than unstructured CSR, or not at all, {at}",
    "neither": "did not break even {at}, nor did unstructured CSR",
}


def versus_csr(variant):
    """Whether ``variant`` broke even earlier than CSR at every, some or no batch."""
    rel = {b: compare_onsets(even[(b, variant)], even[(b, "csr (ours)")]) for b in BATCHES}
    if len(BATCHES) == 1:
        return ALONE[rel[BATCHES[0]]].format(at=at_batches(BATCHES))
    n = sum(r == "earlier" for r in rel.values())
    every = "at every batch" if n == len(BATCHES) else "at no batch" if n == 0 else ""
    head = f"broke even earlier than unstructured CSR {every or 'at some batches'}"
    if n == len(BATCHES):
        return head
    held = {k: [b for b in BATCHES if rel[b] == k] for k in RELATION}
    return f"{head}: " + "; ".join(
        RELATION[k].format(at=at_batches(bs)) for k, bs in held.items() if bs
    )


shrunk_everywhere = bool((speed[speed.variant == "shrunk"]["speedup"] > 1).all())
md(
    f"Removing whole rows leaves a smaller *dense* product with no index at all: here it "
    f"was faster than dense in {'every' if shrunk_everywhere else 'not every'} measured "
    f"run.  Shrunk rows {versus_csr('shrunk')}.  16 x 16 blocks, which amortise one index "
    f"over many values, {versus_csr('bsr 16x16')}."
)
lo_batch, hi_batch = BATCHES[0], BATCHES[-1]
at_lo, at_hi = even[(lo_batch, "csr (ours)")], even[(hi_batch, "csr (ours)")]
if lo_batch != hi_batch and (at_lo, at_hi) != (None, None):
    outcome = {
        "same": "at the same sparsity, so the batch did not move the break-even point "
        "on this grid.",
        "earlier": "the expectation held.",
        "later": "the expectation did not hold on this machine, on this grid of sparsities; this "
        "run does not separate a cause from the spread of the timings (the figure's error bars).",
    }[compare_onsets(at_lo, at_hi)]
    md(
        f"The usual expectation about the batch: at batch {lo_batch} the dense product is "
        f"limited by memory (each weight is read once for one multiply-add), so skipping "
        f"zeros saves traffic, while at batch {hi_batch} it is limited by arithmetic and "
        f"harder to beat.  Here CSR broke even {even_text(lo_batch, 'csr (ours)')} at batch "
        f"{lo_batch} and {even_text(hi_batch, 'csr (ours)')} at batch {hi_batch}: {outcome}"
    )

# %% [markdown]
# ## Summary
#
# * Storage: every format is values plus index; which one is smallest depends on the
#   sparsity and on the index width (sections 1 and 2).
# * Speed needs sparse kernels or a physically smaller model: a mask only multiplies by
#   zeros, and a sparse kernel pays for its index (section 3).
#   [06c](06c_exporting_pruned_models.ipynb) exports a pruned model to either.
#
# Measured in this run:

# %%
share = speed.groupby(["variant", "batch", "sparsity"])["speedup"].mean().reset_index()
share["share"] = share["speedup"] * (1 - share["sparsity"])  # speed-up / (1 / density)
top = share.loc[share.groupby("variant")["share"].idxmax()].set_index("variant")


def at_top(variant):
    row = top.loc[variant]
    return f"{row['share']:.0%} (batch {int(row['batch'])}, sparsity {row['sparsity']:.0%})"


md(
    "* Unstructured CSR broke even "
    + ", ".join(f"at batch {b}: {even_text(b, 'csr (ours)')}" for b in BATCHES)
    + f".  Shrunk rows {versus_csr('shrunk')}.\n"
    "* As a share of the FLOP ratio ``1 / density``, CSR's mean speed-up reached at most "
    f"{at_top('csr (ours)')}; shrunk rows reached at most {at_top('shrunk')}"
    + (
        "; above 100%, the smaller dense weight may also fit in faster caches."
        if top.loc["shrunk", "share"] > 1
        else "."
    )
)

# %% [markdown]
# The full benchmark (`python benchmarks/acceleration.py`) covers shapes 256 to 4096,
# batches 1 to 256 and scipy.sparse, and the end-to-end targets of
# [06c](06c_exporting_pruned_models.ipynb).
#
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  Both are about storage: the answers
# follow from the closed forms of section 1, and the checks compute them with `formats.bits`.
#
# **1.** With 16-bit values and 16-bit indices, a 200 x 200 matrix (few enough entries for
# 16-bit row pointers) is smaller in CSR than dense when it has few enough nonzeros.
# Derive from the closed form the largest number of nonzeros for which it is, then check
# it with `formats.bits`.  Answer with that number (its sparsity is the break-even).


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def csr_smaller(nonzeros, side=200):
    """Whether a side x side matrix with ``nonzeros`` nonzeros is smaller in CSR than dense
    (16-bit values and indices)."""
    order = torch.randperm(side * side, generator=torch.Generator().manual_seed(SEED))
    t = torch.zeros(side * side)
    t[order[:nonzeros]] = 1.0
    t = t.reshape(side, side)
    csr = formats.bits(t, "csr", value_bits=16, index_bits=16)
    return csr < formats.bits(t, "dense", value_bits=16)


def check_1(answer, solution=False):
    low, high = 0, 200 * 200  # CSR is smaller with `low` nonzeros, not with `high`
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if csr_smaller(middle) else (low, middle)
    hint = "CSR: m (k + b) + (n_r + 1) b bits against n k; find the largest whole m."
    sl.nb.check(1, answer, low, hint=hint, solution=solution)


# %%
answer_1 = None  # a number of nonzeros, e.g. 12345
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  CSR takes m (k + b) + (n_r + 1) b bits, dense n k; with k = b = 16 that is
# 32 m + 16 * 201 < 16 * 40000, so m < (40000 - 201) / 2 = 19899.5.  The row pointers cost
# little: the break-even is just above 50% sparsity, since every value drags a 16-bit index.
bits16, n_rows, n_entries = 16, 200, 200 * 200
solution_1 = (n_entries * bits16 - (n_rows + 1) * bits16 - 1) // (2 * bits16)  # largest m
print(f"{solution_1} nonzeros, sparsity {1 - solution_1 / n_entries:.2%}; CSR smaller: "
      f"{csr_smaller(solution_1)}, with one more: {csr_smaller(solution_1 + 1)}")  # fmt: skip
check_1(solution_1, solution=True)


# %% [markdown]
# **2.** Zero-padded delta coding (Han 2016) with b-bit runs: which b minimises the size of
# a 95%-sparse `SIDE x SIDE` random matrix with 8-bit values (`formats.bits(t, "rle",
# value_bits=8, index_bits=b)`, b from 1 to 16; the matrix is `random_matrix(0.95)`)?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def random_matrix(sparsity, side=SIDE):
    """A seeded random ``side x side`` matrix with unstructured zeros at ``sparsity``."""
    g = torch.Generator().manual_seed(SEED)
    t = torch.randn(side, side, generator=g)
    return t * Unstructured().mask(torch.rand(side, side, generator=g), sparsity)


def check_2(answer, solution=False):
    t = random_matrix(0.95)
    size = {b: formats.bits(t, "rle", value_bits=8, index_bits=b) for b in range(1, 17)}
    hint = "Compute the size for every b from 1 to 16 and take the smallest (ties: any)."
    sl.nb.check(2, answer, lambda a: size.get(a) == min(size.values()), hint=hint,
                solution=solution)  # fmt: skip


# %%
answer_2 = None  # a whole number of bits
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  Each entry costs 8 + b bits, and a run of r zeros before a nonzero needs
# floor(r / 2^b) filler entries: the closed form, summed by hand over the runs, without
# encoding.  At 95% the gaps between nonzeros average 20 positions: a small b pays for many
# fillers, a large one for index bits that the usual gap does not need.
matrix = random_matrix(0.95)
where = matrix.flatten().nonzero().flatten()
runs = torch.diff(where, prepend=torch.tensor([-1])) - 1  # the zeros before each nonzero
sizes_2 = pd.Series({b: (len(runs) + int((runs // 2**b).sum())) * (8 + b)
                     for b in range(1, 17)})  # fmt: skip
solution_2 = int(sizes_2.idxmin())
relative = sizes_2 / (8 * matrix.numel())  # dense: 8 bits per entry
print("size / dense:", ", ".join(f"b={b} {r:.3f}" for b, r in relative.loc[2:8].items()))
check_2(solution_2, solution=True)

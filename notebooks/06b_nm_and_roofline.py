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
# # Hardware acceleration III: N:M sparsity, GPUs and the roofline
#
# **What you will learn:** how N:M sparsity stores its values and their positions, and what
# that metadata costs; what GPUs with sparse tensor cores do with 2:4; and how close each
# sparse kernel gets to the machine's limits, placed on a roofline measured on this machine.
#
# This continues [06](06_hardware_acceleration.ipynb), which measures what each storage
# format costs and where sparse kernels break even with dense ones on a CPU, and
# [06c](06c_exporting_pruned_models.ipynb), which shows how `accel.export` turns a pruned
# model into a faster one.  It follows section 7
# (acceleration) of the survey, with the N:M format of its section 2.2.  Every time in this
# notebook is measured live on the machine that runs it, so the numbers move from run to
# run; the shapes of the curves are what to read.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

import sparsity_lab as sl
from sparsity_lab import accel, formats, models
from sparsity_lab.patterns import NM, Unstructured

# %% tags=["parameters"]
SMOKE = False
SEED = 0
MATRIX = 1024
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99]
BATCHES = [1, 64]
BUDGET_S = 0.01

# %%
if SMOKE:  # a quick pass through every cell, for CI
    MATRIX = 256
    SPARSITIES = [0.5, 0.9, 0.99]
    BATCHES = [1]
    BUDGET_S = 0.002
info = sl.nb.setup(seed=SEED, smoke=SMOKE, threads=1)

# %% [markdown]
# ## 1. N:M sparsity and its metadata
#
# N:M keeps N weights in every group of M along the input dimension.  Storage is then
# regular: exactly N values per group plus the position of each, ``ceil(log2 M)`` bits.
# For 2:4 that is 2 bits per kept value, four positions to a byte; with 16-bit values the
# metadata adds one eighth to the values, and the whole is 56.25% of dense.

# %% tags=["nbval-check-output"]
gen = torch.Generator().manual_seed(SEED)
row = torch.tensor([[0.0, 1.5, 0.0, -2.0, 3.0, 0.0, 0.0, 4.0]])
packed = accel.pack_nm(row, 2, 4)
print("values   ", packed.values.tolist())
print("metadata ", [f"{b:08b}" for b in packed.metadata.tolist()], "(positions 1, 3, 0, 3)")
assert torch.equal(accel.unpack_nm(packed), row)
w24 = torch.randn(64, 64) * NM(2, 4).mask(torch.rand(64, 64, generator=gen))
print(
    "2:4 bits / fp16 dense bits:",
    formats.bits(w24, "nm_format", value_bits=16) / formats.bits(w24, "dense", value_bits=16),
)

# %% [markdown]
# N and M alone fix both the sparsity, 1 - N/M, and the storage: N values and N positions
# of ``ceil(log2 M)`` bits per group.  Move the pattern in a live kernel (the book shows
# five): 1:4 and 2:8 are equally sparse, but 2:8 may put its two weights anywhere among
# eight, at one more metadata bit per kept value.


# %%
def draw_nm(ax, pattern):
    """A corner of a random weight's N:M mask (dark = kept) with its groups outlined; the
    title gives its sparsity and its storage against fp16 dense."""
    nm = sl.patterns.get(pattern)
    scores = torch.rand(8, 16, generator=torch.Generator().manual_seed(SEED))
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(SEED)) * nm.mask(scores)
    stored = formats.bits(weight, "nm_format", n=nm.n, m=nm.m, value_bits=16)
    share = stored / formats.bits(weight, "dense", value_bits=16)
    sparsity = float((weight == 0).float().mean())
    sl.viz.mask_heatmap(weight != 0, ax=ax, title=f"{sparsity:.1%} sparse\n{share:.1%} of fp16")
    ax.vlines(np.arange(nm.m, 16, nm.m) - 0.5, -0.5, 7.5, color="C1", linewidth=2)


sl.nb.explore(draw_nm, pattern=["1:2", "2:4", "1:4", "2:8", "1:8"])

# %% [markdown]
# ## 2. What GPUs do with 2:4
#
# NVIDIA's sparse tensor cores (Ampere and later, compute capability 8.0+) read the 2:4
# values and their 2-bit metadata and skip the pruned half of the multiply-adds; the
# vendor reports up to twice the math throughput of the dense tensor core (Mishra et al.
# 2021).  `accel.export(model, device="cuda")` routes 2:4 Linear layers through torch's
# semi-structured sparse tensors.  **No GPU run was made for this book**: that path is
# untested on hardware here, so no GPU figure is shown.  Known limits from torch's issue
# tracker: small matrices and batch 1 see no gain (the input is padded), and the speed-up
# is largest for big layers in half precision.

# %%
display(
    Markdown(f"A GPU with 2:4 sparse tensor cores is available here: **{accel.gpu_available()}**.")
)

# %% [markdown]
# ## 3. The roofline view
#
# A kernel is limited either by arithmetic (peak FLOP rate) or by memory (bytes moved /
# bandwidth).  We measure both limits on this machine, then place each product by its
# arithmetic intensity (useful FLOPs per byte moved) and achieved FLOP rate.  Sparse
# kernels are expected below the roof: each value drags an index along, and irregular
# access defeats the vector units.  The memory roof is measured with a copy larger than
# the caches, so a product whose weight stays in cache can sit above it.


# %%
def timed(fn):
    with torch.no_grad():
        return accel.time_call(fn, repeats=3, budget_s=BUDGET_S)


n = 256 if SMOKE else 1024
a, b = torch.randn(n, n), torch.randn(n, n)
peak = 2 * n**3 / timed(lambda: a @ b) / 1e9
big = torch.randn(4 * 2**20 if SMOKE else 16 * 2**20)
dst = torch.empty_like(big)
bandwidth = 2 * big.numel() * 4 / timed(lambda: dst.copy_(big)) / 1e9

# bytes a CSR product reads per stored index: scipy's kernels take int32 indices (accel
# converts them), torch's CSR tensors keep int64 ones
INDEX_BYTES = {"scipy_csr": np.dtype(np.int32).itemsize, "torch_csr": torch.int64.itemsize}
VALUE_BYTES = torch.float32.itemsize
KERNEL_AT = {batch: "scipy_csr" if batch == 1 else "torch_csr" for batch in BATCHES}

points = []
for batch in BATCHES:
    for s in [0.0, *SPARSITIES]:
        g = torch.Generator().manual_seed(SEED)
        w = torch.randn(MATRIX, MATRIX, generator=g)
        w = w * Unstructured().mask(torch.rand(MATRIX, MATRIX, generator=g), s)
        x = torch.randn(batch, MATRIX, generator=g)
        nnz = int(w.count_nonzero())
        io_bytes = VALUE_BYTES * batch * 2 * MATRIX
        if s == 0.0:
            t = timed(lambda x=x, w=w: F.linear(x, w))
            weight_bytes = VALUE_BYTES * MATRIX * MATRIX
            points.append(
                (f"dense b{batch}", 2 * MATRIX * MATRIX * batch, weight_bytes + io_bytes, t)
            )
        else:
            kernel = KERNEL_AT[batch]
            layer = accel.SparseLinear(w, kernel=kernel)
            t = timed(lambda layer=layer, x=x: layer(x))
            idx = INDEX_BYTES[kernel]  # a column index per value, plus the row pointers
            weight_bytes = (VALUE_BYTES + idx) * nnz + idx * (MATRIX + 1)
            points.append((f"csr {s:.0%} b{batch}", 2 * nnz * batch, weight_bytes + io_bytes, t))

# one panel per batch, so that the labels of the two batches do not pile up
fig, axes = plt.subplots(
    1, len(BATCHES), figsize=(5 * len(BATCHES), 4.5), squeeze=False, sharey=True
)
intensity = np.logspace(-2, 3, 100)
for ax, batch in zip(axes[0], BATCHES, strict=True):
    ax.plot(intensity, np.minimum(peak, bandwidth * intensity), "k-", label="roofline")
    mine = [p for p in points if p[0].endswith(f" b{batch}")]
    # a colour per point, named in the legend: at batch 1 the CSR points lie too close
    # together for labels beside them
    shades = plt.cm.viridis(np.linspace(0, 0.9, len(mine) - 1))
    for i, (label, flops, nbytes, t) in enumerate(mine):
        dense_point = label.startswith("d")
        ax.scatter(flops / nbytes, flops / t / 1e9, s=24, label=label.rsplit(" b", 1)[0],
                   color="C3" if dense_point else shades[i - 1], zorder=3)  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_title(f"batch {batch}")
    ax.legend(loc="lower right", fontsize=8, ncol=2)
axes[0][0].set_ylabel("GFLOP/s")
fig.suptitle(f"{MATRIX}x{MATRIX} products")
fig.tight_layout()
plt.show()
csr_points = [(label, f, nbytes, t) for label, f, nbytes, t in points if label.startswith("csr")]
fastest = max(csr_points, key=lambda p: p[1] / p[3])
csr_rate = fastest[1] / fastest[3] / 1e9
of_roof = [f / t / 1e9 / min(peak, bandwidth * f / nbytes) for _, f, nbytes, t in csr_points]
per_nnz = "; ".join(
    f"batch {b}: {kernel}, {VALUE_BYTES + INDEX_BYTES[kernel]} bytes per nonzero "
    f"({VALUE_BYTES}-byte value, {INDEX_BYTES[kernel]}-byte index)"
    for b, kernel in KERNEL_AT.items()
)
display(
    Markdown(
        f"Measured here: peak {peak:.1f} GFLOP/s (dense {n}^3 product, one thread) and "
        f"{bandwidth:.1f} GB/s (a copy).  The CSR bytes count the kernel actually used ("
        f"{per_nnz}), plus the row pointers, the input and the output.  The useful FLOP rate "
        f"of the CSR kernels is {min(f / t for _, f, _, t in csr_points) / 1e9:.2f} to "
        f"{csr_rate:.2f} GFLOP/s (the fastest: {fastest[0]}), "
        f"{min(of_roof):.0%} to {max(of_roof):.0%} of the roof at their intensity"
        + (
            " (above 100%: their weights may stay in cache, which the copy's bandwidth ignores)."
            if max(of_roof) > 1
            else "."
        )
    )
)

# %% [markdown]
# ## Summary
#
# * N:M storage is regular: N values in every group of M, each with its position in
#   ``ceil(log2 M)`` bits, so 2:4 costs 2 bits of metadata per kept value (section 1).
# * NVIDIA's sparse tensor cores skip the pruned half of the multiply-adds of a 2:4 product;
#   `accel.export(model, device="cuda")` routes 2:4 Linear layers through torch's
#   semi-structured sparse tensors, a path untested on hardware here (section 2).
# * On the roofline, sparse kernels are expected below the roof: each value drags an index
#   along, and irregular access defeats the vector units (section 3).
#
# Measured in this run:

# %%
display(
    Markdown(
        f"* The fastest CSR product ({fastest[0]}) reached {csr_rate:.2f} GFLOP/s of useful "
        f"work, {csr_rate / peak:.0%} of the dense peak of {peak:.1f} GFLOP/s; the CSR "
        f"products reached {min(of_roof):.0%} to {max(of_roof):.0%} of the roof at their "
        "intensity."
    )
)

# %% [markdown]
# The full benchmark (`python benchmarks/acceleration.py`) places every product it times
# against its roofline bound, over more shapes and batches.
#
# ## Exercises
#
# Each exercise has a cell for your answer, which checks it when you run it, and a worked
# solution below it, collapsed (click to show it).  The checks measure: they run the
# experiment your answer is about.  Timings move from run to run, so the answers are counts
# of bytes and FLOPs; the solutions then time what the counts explain.
#
# **1.** `export` keeps a sparse kernel only where it beats the dense product at the batch
# it is timed on, and the batch changes what the dense product is limited by.  Count FLOPs
# and bytes as section 3 does for the dense product of LeNet-300-100's first layer, a 300 x
# 784 weight: 2 FLOPs per weight and example, `VALUE_BYTES` per weight, per input and per
# output.  From which batch on is its arithmetic intensity at least this machine's ridge
# point, `peak / bandwidth` as section 3 measured them (FLOP per byte)?  Answer with the
# smallest whole batch, or 0 if no batch reaches it.  Then export the model of section 2 of
# [06c](06c_exporting_pruned_models.ipynb) at `FOCUS` sparsity (`lenet(FOCUS, SEED)`:
# LeNet-300-100 pruned by magnitude with a uniform budget) at batch 1 and at batch 256:
# which kernels does it choose at each, and what must a sparse kernel beat at each batch?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
FOCUS = 0.95  # the sparsity section 2 of 06c looks at first


def lenet(sparsity, seed):
    """LeNet-300-100 pruned by magnitude with a uniform budget, as in section 2 of 06c."""
    torch.manual_seed(seed)
    model = models.build("lenet300", input_shape=(784,), n_classes=10)
    if sparsity > 0:
        sl.prune(model, "magnitude", sparsity, budget="uniform")
    return model.eval().requires_grad_(False)


def dense_intensity(batch, rows=300, cols=784):
    """FLOP per byte of a dense ``rows x cols`` product at ``batch``, counted as in section 3."""
    weight_bytes = formats.bits(torch.ones(rows, cols), "dense", value_bits=8 * VALUE_BYTES) / 8
    return 2 * rows * cols * batch / (weight_bytes + VALUE_BYTES * batch * (rows + cols))


def check_1(answer, solution=False):
    ridge = peak / bandwidth
    low, high = 0, 10**9  # the intensity grows with the batch: bisect for the first batch
    if dense_intensity(high) < ridge:
        first = 0  # bounded by 2 rows cols / (VALUE_BYTES (rows + cols)): never reached
    else:
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if dense_intensity(middle) >= ridge else (middle, high)
        first = high
    hint = "Intensity 2 n B / (4 n + 4 B (300 + 784)) with n = 300 * 784; solve it >= the ridge."
    sl.nb.check(1, answer, first, hint=hint, solution=solution)


# %%
answer_1 = None  # a batch, e.g. 32
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.  With n weights, v bytes a value and s = 300 + 784 inputs and outputs, the
# dense product at batch B does 2 n B FLOPs and moves v (n + B s) bytes: at batch 1 about
# 0.5 FLOP per byte, each weight read for one multiply-add, so it waits for memory and a
# kernel wins by reading fewer bytes (CSR at high sparsity; at batch 1 the fixed cost of
# each call counts too, which the compiled chain removes).  The intensity reaches the ridge
# r where 2 n B >= r v (n + B s), so B >= r v n / (2 n - r v s).  Beyond it the dense
# product runs at the machine's peak FLOP rate, and a sparse kernel must win by skipping
# FLOPs, 1 / density times fewer, against its slower rate per FLOP: that pays at high
# sparsity only.  The timed exports below show what this run chose.
n_1, s_1, ridge_1 = 300 * 784, 300 + 784, peak / bandwidth
if 2 * n_1 > ridge_1 * VALUE_BYTES * s_1:
    solution_1 = max(
        1, int(np.ceil(ridge_1 * VALUE_BYTES * n_1 / (2 * n_1 - ridge_1 * VALUE_BYTES * s_1)))
    )
else:
    solution_1 = 0
print(f"ridge {ridge_1:.1f} FLOP/byte; dense fc1 reaches it from batch {solution_1}")
for batch in (1, 256):  # timed: the kernels export keeps move from run to run
    exported_1 = accel.export(lenet(FOCUS, SEED), torch.randn(batch, 784), budget_s=BUDGET_S / 4)
    kernels_1 = zip(exported_1.export_plan, accel.kernels_run(exported_1), strict=True)
    plan_1 = [f"{c.name} {kernel}" for c, kernel in kernels_1]
    print(f"batch {batch}: {', '.join(plan_1)}")
check_1(solution_1, solution=True)

# %% [markdown]
# **2.** Place the `shrunk` products of section 3 of [06](06_hardware_acceleration.ipynb)
# (the same fraction of whole rows removed, which leaves a smaller dense matrix) on the
# roofline, at 90% sparsity and batch 1: the shrunk weight keeps `round(0.1 * MATRIX)` whole
# rows of the seeded `MATRIX x MATRIX` weight of section 3 above, and its product reads that
# dense weight and the input and writes its shorter output, `VALUE_BYTES` each.  What is its
# arithmetic intensity divided by that of the CSR product at the same sparsity and batch
# (bytes counted as in section 3)?  Two decimals.  Why does it sit closer to the roof?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_2(answer, solution=False):
    g = torch.Generator().manual_seed(SEED)
    w = torch.randn(MATRIX, MATRIX, generator=g)
    w = w * Unstructured().mask(torch.rand(MATRIX, MATRIX, generator=g), 0.9)
    shrunk = w[: round(0.1 * MATRIX)]
    index = 8 * INDEX_BYTES[KERNEL_AT[1]]
    csr_bytes = formats.bits(w, "csr", value_bits=32, index_bits=index) / 8 + 4 * 2 * MATRIX
    csr = 2 * w.count_nonzero() / csr_bytes
    dense_bytes = formats.bits(shrunk, "dense", value_bits=32) / 8 + 4 * sum(shrunk.shape)
    ratio = float(2 * shrunk.numel() / dense_bytes / csr)
    hint = "FLOPs per byte: 2 per kept weight; CSR adds an index per value and row pointers."
    sl.nb.check(2, answer, ratio, hint=hint, tolerance=0.005, solution=solution)


# %%
answer_2 = None  # a ratio, e.g. 1.5
check_2(answer_2)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 2.  The shrunk product reads only values it uses, where CSR reads an index with
# every value (and the row pointers), so its intensity is about twice CSR's; it also runs on
# the dense kernel's vector units, so it is both further right and closer to the roof.
gen2 = torch.Generator().manual_seed(SEED)
w2 = torch.randn(MATRIX, MATRIX, generator=gen2)
w2 = w2 * Unstructured().mask(torch.rand(MATRIX, MATRIX, generator=gen2), 0.9)
nnz, kept_rows, idx = int(w2.count_nonzero()), round(0.1 * MATRIX), INDEX_BYTES[KERNEL_AT[1]]
csr_bytes = (VALUE_BYTES + idx) * nnz + idx * (MATRIX + 1) + VALUE_BYTES * 2 * MATRIX
shrunk_bytes = VALUE_BYTES * (kept_rows * MATRIX + MATRIX + kept_rows)
csr_intensity, shrunk_intensity = 2 * nnz / csr_bytes, 2 * kept_rows * MATRIX / shrunk_bytes
solution_2 = round(shrunk_intensity / csr_intensity, 2)
print(f"FLOP per byte: shrunk {shrunk_intensity:.3f}, csr {csr_intensity:.3f}: {solution_2}x")
check_2(solution_2, solution=True)

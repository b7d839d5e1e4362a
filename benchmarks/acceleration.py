"""When does sparsity pay on a CPU?  Sparse matrix products, break-even, end-to-end inference.

1. **Matrix products** ``y = x W^T`` for square ``W`` (256 to 4096), batches 1 to 256 and
   sparsities 50% to 99.9%, on one set of matrices per shape: dense (``F.linear``), our
   CSR layer with each kernel (``torch_csr``, ``scipy_csr``; "ours" is the faster of the
   two, which is what :func:`sparsity_lab.accel.export` picks), ``torch_bsr`` on a
   block-sparse matrix of the same sparsity (blocks 4 and 16), "shrunk" (the dense matrix
   left after removing the same fraction of rows) and the public ``scipy.sparse`` product
   ``S @ X``.
2. **Break-even**: for each shape, batch and variant, the sparsity above which it beats
   dense (linear interpolation between the measured sparsities).
3. **Roofline**: each measurement against its bound, ``max(flops / peak, bytes / bandwidth)``,
   with the peak FLOP rate (a dense 1024^3 product) and the bandwidth (a 64 MB copy)
   measured on this machine; and the FLOP ratio ``1 / density``, the ideal speed-up.
4. **End to end**: LeNet-300-100 and the small CNN (LeNet-5), unstructured (every layer at
   the same sparsity) and channel-pruned, exported with ``dispatch="measure"``, against the
   dense model at batch 1 and 64; against the same model exported with dense kernels only
   (``kernels=()``: for the CNN, BatchNorm folding and the faster dense convolution and
   pooling kernels, :mod:`sparsity_lab.inference`, and for both the whole network as one
   compiled call where that is faster, :mod:`sparsity_lab.fused_net`, give part of the gain
   at any sparsity);
   for the MLP also against its dense layers called as plain ``F.linear`` functions (the
   fair reference for the fused chain, part of whose gain is fewer calls), and each
   exported model against its bytes-moved bound (the weights it reads, CSR or dense, over
   the copy bandwidth measured at that size).

Targets (reported, never tuned): exported 95%-sparse LeNet-300-100 at batch 1 >= 2x dense;
exported >= 0.95x dense at every sparsity; ours at least as fast as scipy.sparse at >= 90%.
All variants of one case are timed in interleaved rounds (medians), on one thread unless
``--threads`` says otherwise.  The machine may be shared: ratios from one run are what count.

    python benchmarks/acceleration.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import sparsity_lab as sl
from sparsity_lab import accel, fused, models, shrink
from sparsity_lab.patterns import Block

warnings.filterwarnings("ignore", ".*Sparse.*support is in beta")
RESULTS = Path(__file__).resolve().parent / "results"
#: What a layer runs densely (alone, or inside the compiled network): its weight read dense.
DENSE = ("dense", "compiled_net")


# ------------------------------------------------------------------------------- machine


def machine_peaks(quick: bool) -> dict[str, float]:
    """Peak dense FLOP rate and memory bandwidth, measured here."""
    n = 512 if quick else 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = accel.time_call(lambda: a @ b, repeats=3, budget_s=0.05)
    big = torch.randn(16 * 2**20)  # 64 MB: far beyond the caches
    out = torch.empty_like(big)
    copy_t = accel.time_call(lambda: out.copy_(big), repeats=5, budget_s=0.05)
    return {"peak_gflops": 2 * n**3 / t / 1e9, "bandwidth_gbs": 2 * big.numel() * 4 / copy_t / 1e9}


# ------------------------------------------------------------------------- matrix products


def matrices(size: int, sparsity: float, seed: int = 0) -> dict[str, torch.Tensor]:
    """Unstructured, block-sparse and row-pruned versions of one random matrix."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(size, size, generator=gen)
    scores = torch.rand(size, size, generator=gen)
    out = {"unstructured": w * sl.patterns.Unstructured().mask(scores, sparsity)}
    for b in (4, 16):
        out[f"block{b}"] = w * Block(b, b).mask(scores, sparsity)
    kept_rows = max(1, round((1 - sparsity) * size))
    out["shrunk"] = w[:kept_rows].contiguous()
    return out


def bench_matmul(size: int, batch: int, sparsity: float, peaks: dict, budget: float) -> list:
    mats = matrices(size, sparsity)
    w = mats["unstructured"]
    nnz = int(w.count_nonzero())
    x = torch.randn(batch, size, generator=torch.Generator().manual_seed(1))
    xt = x.numpy().T  # scipy's view of the same (K x N) operand
    layers = {k: accel.SparseLinear(w, kernel=k) for k in ("torch_csr", "scipy_csr")}
    for b in (4, 16):
        layers[f"torch_bsr{b}"] = accel.SparseLinear(
            mats[f"block{b}"], kernel="torch_bsr", block=(b, b)
        )
    import scipy.sparse as sp

    s = sp.csr_matrix(w.numpy())
    shrunk = mats["shrunk"]
    fns = {
        "dense": lambda: F.linear(x, w),
        "shrunk": lambda: F.linear(x, shrunk),
        "scipy": lambda: s @ xt,
        **{k: (lambda m=m: m(x)) for k, m in layers.items()},
    }
    # a correctness check before timing: every variant computes the same product
    ref = F.linear(x, w)
    assert torch.allclose(layers["scipy_csr"](x), ref, atol=1e-3)
    assert np.allclose(s @ xt, ref.numpy().T, atol=1e-3)
    with torch.no_grad():
        times = accel.time_interleaved(fns, repeats=5, budget_s=budget)
    times["ours"] = min(times["torch_csr"], times["scipy_csr"])
    rows = []
    for variant, t in times.items():
        stored = {
            "dense": size * size,
            "shrunk": shrunk.numel(),
        }.get(variant, nnz)
        if variant.startswith("torch_bsr"):
            stored = layers[variant].weight.nnz
        sparse_index = 0 if variant in ("dense", "shrunk") else stored * 4 + (size + 1) * 8
        bytes_moved = stored * 4 + sparse_index + 4 * batch * 2 * size
        flops = 2 * stored * batch
        bound = max(
            flops / (peaks["peak_gflops"] * 1e9), bytes_moved / (peaks["bandwidth_gbs"] * 1e9)
        )
        rows.append(
            {
                "size": size,
                "batch": batch,
                "sparsity": sparsity,
                "variant": variant,
                "us": 1e6 * t,
                "speedup_vs_dense": times["dense"] / t,
                "flop_ratio": 1 / max(1e-9, 1 - sparsity),
                "gflops": flops / t / 1e9,
                "roofline_fraction": bound / t,
            }
        )
    return rows


def break_even(rows: list[dict]) -> list[dict]:
    """Sparsity above which each variant beats dense, per (size, batch, variant)."""
    out = []
    keys = sorted({(r["size"], r["batch"], r["variant"]) for r in rows if r["variant"] != "dense"})
    for size, batch, variant in keys:
        pts = sorted(
            (r["sparsity"], r["speedup_vs_dense"])
            for r in rows
            if (r["size"], r["batch"], r["variant"]) == (size, batch, variant)
        )
        found = None
        for (s0, v0), (s1, v1) in zip(pts[:-1], pts[1:], strict=True):
            if v0 < 1 <= v1:
                found = s0 + (1 - v0) * (s1 - s0) / (v1 - v0)
        if pts and pts[0][1] >= 1:
            found = pts[0][0]  # already faster at the lowest sparsity measured
        out.append({"size": size, "batch": batch, "variant": variant, "break_even": found})
    return out


# ---------------------------------------------------------------------------- end to end


def e2e_models(name: str, sparsity: float, structured: bool):
    torch.manual_seed(0)
    shape = (784,) if name == "lenet300" else (1, 28, 28)
    model = models.build(name, input_shape=shape, n_classes=10)
    if sparsity > 0:
        if structured:
            shrink.prune_coupled(model, "channel", sparsity)
        else:
            sl.prune(model, "magnitude", sparsity, budget="uniform")
    return model.eval()


def weight_bytes(model: nn.Module, sparse_layers: set[str] | None = None) -> int:
    """Bytes of the weights a forward pass reads: float32 entries for a dense layer, and
    for the layers in ``sparse_layers`` (``None``: every layer) CSR's values and int32
    column indices per nonzero, plus int32 row pointers."""
    total = 0
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            w = m.weight.detach().reshape(m.weight.shape[0], -1)
            if sparse_layers is None or name in sparse_layers:
                total += 8 * int(w.count_nonzero()) + 4 * (w.shape[0] + 1)
            else:
                total += 4 * w.numel()
    return total


def read_bandwidth(nbytes: int) -> float:
    """Bytes per second of a copy of ``nbytes`` (read and written), at that working set."""
    src = torch.empty(max(1, nbytes // 4))
    dst = torch.empty_like(src)
    t = accel.time_call(lambda: dst.copy_(src), repeats=7, budget_s=0.01)
    return 2 * src.numel() * 4 / t


def functional(model: nn.Module):
    """The dense chain as plain F.linear/ReLU calls (no module calls), or None: the fair
    dense reference for the fused chain, whose own gain is partly fewer calls."""
    chain = fused.chain_of(model)
    if chain is None:
        return None
    layers = [
        (model.get_submodule(n).weight, model.get_submodule(n).bias, r) for n, r in chain.layers
    ]

    def run(x):
        h = x.flatten(1)
        for w, b, relu in layers:
            h = F.linear(h, w, b)
            if relu:
                h = torch.relu(h)
        return h

    return run


def bench_e2e(name, sparsity, structured, batch, budget) -> dict:
    model = e2e_models(name, sparsity, structured)
    x = shrink.example_batch(model, batch=batch, seed=2)
    dense = copy.deepcopy(model)
    sl.masks.remove(dense)  # the plain model torch runs, pruned zeros stored as zeros
    dense.eval().requires_grad_(False)
    exported = accel.export(model, x)
    # the same model exported with dense kernels only (BatchNorm folded, each convolution's
    # and pool's faster dense kernel): what the export gains without sparse kernels
    dense_kernels = accel.export(model, x, kernels=(), use_shrink=False)
    model.requires_grad_(False)
    fns = {"dense": lambda: dense(x), "masked": lambda: model(x), "exported": lambda: exported(x)}
    fns["exported_dense"] = lambda: dense_kernels(x)
    plain = functional(dense)
    if plain is not None:
        fns["dense_functional"] = lambda: plain(x)
    with torch.no_grad():
        err = float((exported(x) - model(x)).abs().max())
        times = accel.time_interleaved(fns, repeats=7, budget_s=budget)
    ran = accel.kernels_run(exported)  # what each layer runs at this batch
    chained = "csr_chain" in ran
    # The physical bound: a forward pass reads at least its weights once, stored as it runs
    # them.  Bandwidth is measured at that size (the weights stay in cache between calls).
    sparse_layers = (
        None
        if chained
        else {c.name for c, k in zip(exported.export_plan, ran, strict=True) if k not in DENSE}
    )
    bound = {}
    for stored, layers in (("dense", set()), ("exported", sparse_layers)):
        nbytes = weight_bytes(dense, layers)
        bound[stored] = {"bytes": nbytes, "seconds": nbytes / read_bandwidth(nbytes)}
    return {
        "model": name,
        "pruning": "channel" if structured else "unstructured",
        "sparsity": sparsity,
        "batch": batch,
        "us": {k: 1e6 * v for k, v in times.items()},
        "speedup_vs_dense": times["dense"] / times["exported"],
        "speedup_vs_exported_dense": times["exported_dense"] / times["exported"],
        "speedup_vs_dense_functional": (
            times["dense_functional"] / times["exported"] if plain is not None else None
        ),
        "masked_vs_dense": times["dense"] / times["masked"],
        "fused_chain": chained,
        "compiled_net": "compiled_net" in ran,
        "kernels": ran,
        "layer_sparsity": [round(c.sparsity, 4) for c in exported.export_plan],
        "bytes_bound": bound,
        "exported_fraction_of_bound": bound["exported"]["seconds"] / times["exported"],
        "dense_fraction_of_bound": bound["dense"]["seconds"] / times["dense"],
        "max_abs_error": err,
    }


# ----------------------------------------------------------------------------------- plots


def plot(mm: list[dict], e2e: list[dict], path: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    sizes = sorted({r["size"] for r in mm})
    batches = sorted({r["batch"] for r in mm})
    fig, axes = plt.subplots(
        len(batches),
        len(sizes),
        figsize=(4 * len(sizes), 3 * len(batches)),
        squeeze=False,
        sharey=True,
    )
    for i, b in enumerate(batches):
        for j, s in enumerate(sizes):
            ax = axes[i][j]
            for v in ("ours", "scipy", "torch_csr", "torch_bsr4", "torch_bsr16", "shrunk"):
                pts = sorted(
                    (r["sparsity"], r["speedup_vs_dense"])
                    for r in mm
                    if (r["size"], r["batch"], r["variant"]) == (s, b, v)
                )
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=v)
            ax.axhline(1, color="k", lw=0.8)
            ax.set_xscale("logit")
            ax.set_yscale("log")
            ax.set_title(f"{s}x{s}, batch {b}", fontsize=9)
            if i == len(batches) - 1:
                ax.set_xlabel("sparsity")
            if j == 0:
                ax.set_ylabel("speed-up vs dense")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    files.append(str(path.with_name(path.stem + "_matmul.png")))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    for v, marker in (("ours", "o"), ("scipy", "s"), ("shrunk", "^"), ("dense", "x")):
        pts = [(r["flop_ratio"], r["roofline_fraction"]) for r in mm if r["variant"] == v]
        if pts:
            ax.scatter(*zip(*pts, strict=True), marker=marker, s=14, label=v, alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOP ratio (1 / density)")
    ax.set_ylabel("fraction of roofline bound reached")
    ax.legend(fontsize=8)
    fig.tight_layout()
    files.append(str(path.with_name(path.stem + "_roofline.png")))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, name in zip(axes, ("lenet300", "lenet5"), strict=True):
        for (pruning, batch), group in _groups(e2e, name).items():
            pts = sorted((r["sparsity"], r["speedup_vs_dense"]) for r in group)
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{pruning}, batch {batch}")
        ax.axhline(1, color="k", lw=0.8)
        ax.axhline(0.95, color="r", lw=0.8, ls=":")
        ax.set_title(f"{name}: exported vs dense")
        ax.set_xlabel("sparsity")
    axes[0].set_ylabel("speed-up vs dense")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    files.append(str(path.with_name(path.stem + "_e2e.png")))
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def _groups(e2e, name):
    groups: dict = {}
    for r in e2e:
        if r["model"] == name:
            groups.setdefault((r["pruning"], r["batch"]), []).append(r)
    return groups


# ------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small grid, about a minute")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: results/acceleration[_quick].json"
    )
    args = parser.parse_args()
    # a quick check must never overwrite the stored full run
    args.out = args.out or RESULTS / f"acceleration{'_quick' if args.quick else ''}.json"
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    if args.quick:
        sizes, batches = [256, 1024], [1, 64]
        sparsities = [0.5, 0.9, 0.99]
        e2e_sparsities, e2e_batches, budget = [0.0, 0.9, 0.95], [1], 0.005
    else:
        sizes, batches = [256, 1024, 4096], [1, 16, 256]
        sparsities = [0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.999]
        e2e_sparsities, e2e_batches, budget = [0.0, 0.5, 0.7, 0.9, 0.95, 0.99], [1, 64], 0.01

    peaks = machine_peaks(args.quick)
    print(f"peak {peaks['peak_gflops']:.1f} GFLOP/s, bandwidth {peaks['bandwidth_gbs']:.1f} GB/s")
    mm = []
    for size in sizes:
        for batch in batches:
            for s in sparsities:
                if size == 4096 and batch == 256 and s < 0.9:
                    continue  # seconds per call; the break-even lies above anyway
                mm += bench_matmul(size, batch, s, peaks, budget)
                best = {
                    r["variant"]: r
                    for r in mm
                    if (r["size"], r["batch"], r["sparsity"]) == (size, batch, s)
                }
                print(
                    f"{size:5d} b{batch:<4d} s={s:<6} dense {best['dense']['us']:9.1f} us  "
                    f"ours x{best['ours']['speedup_vs_dense']:6.2f}  "
                    f"scipy x{best['scipy']['speedup_vs_dense']:6.2f}  "
                    f"bsr16 x{best['torch_bsr16']['speedup_vs_dense']:6.2f}  "
                    f"shrunk x{best['shrunk']['speedup_vs_dense']:6.2f}",
                    flush=True,
                )
    e2e = []
    for name in ("lenet300", "lenet5"):
        for structured in (False, True):
            for s in e2e_sparsities:
                if structured and s in (0.0, 0.99):
                    continue
                for batch in e2e_batches:
                    r = bench_e2e(name, s, structured, batch, budget)
                    e2e.append(r)
                    vs_plain = r["speedup_vs_dense_functional"]
                    print(
                        f"{name:9s} {r['pruning']:12s} s={s:<5} b{batch:<3d} "
                        f"dense {r['us']['dense']:8.1f} us  exported x{r['speedup_vs_dense']:5.2f} "
                        + (f"(x{vs_plain:4.2f} vs dense F.linear calls) " if vs_plain else "")
                        + f"(x{r['speedup_vs_exported_dense']:4.2f} vs dense kernels exported) "
                        + f"masked x{r['masked_vs_dense']:5.2f}  "
                        f"{r['exported_fraction_of_bound']:.2f} of its bytes bound  {r['kernels']}",
                        flush=True,
                    )

    # the targets
    target = [
        r
        for r in e2e
        if (r["model"], r["pruning"], r["sparsity"], r["batch"])
        == ("lenet300", "unstructured", 0.95, 1)
    ]
    ours = {(r["size"], r["batch"], r["sparsity"]): r["us"] for r in mm if r["variant"] == "ours"}
    scipy = {(r["size"], r["batch"], r["sparsity"]): r["us"] for r in mm if r["variant"] == "scipy"}
    vs_scipy = [scipy[k] / ours[k] for k in ours if k[2] >= 0.9]
    summary = {
        "lenet300_95_batch1_speedup": target[0]["speedup_vs_dense"] if target else None,
        "lenet300_95_batch1_vs_dense_functional": (
            target[0]["speedup_vs_dense_functional"] if target else None
        ),
        "lenet300_95_batch1_fraction_of_bound": (
            target[0]["exported_fraction_of_bound"] if target else None
        ),
        "min_exported_vs_dense": min(r["speedup_vs_dense"] for r in e2e),
        "min_exported_vs_dense_case": min(e2e, key=lambda r: r["speedup_vs_dense"]),
        "ours_vs_scipy_at_90plus": {
            "min": min(vs_scipy),
            "median": float(np.median(vs_scipy)),
            "fraction_at_least_1": float(np.mean([v >= 1 for v in vs_scipy])),
            "cases": len(vs_scipy),
        },
    }
    elapsed = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figures = plot(mm, e2e, args.out)
    payload = {
        "machine": {
            "platform": platform.platform(),
            "torch": torch.__version__,
            "threads": args.threads,
            **peaks,
        },
        "quick": args.quick,
        "seconds": elapsed,
        "summary": summary,
        "break_even": break_even(mm),
        "matmul": mm,
        "end_to_end": e2e,
        "figures": figures,
    }
    args.out.write_text(json.dumps(payload, indent=1))
    s = summary
    print(
        f"\nLeNet-300-100 95% batch 1, exported vs dense: x{s['lenet300_95_batch1_speedup']:.2f}"
        f" (target >= 2); vs the dense chain as F.linear calls: "
        f"x{s['lenet300_95_batch1_vs_dense_functional']:.2f}; "
        f"{s['lenet300_95_batch1_fraction_of_bound']:.2f} of its bytes-moved bound"
    )
    print(
        f"min exported vs dense over all cases: x{s['min_exported_vs_dense']:.2f} (target >= 0.95)"
    )
    v = s["ours_vs_scipy_at_90plus"]
    print(
        f"ours vs scipy.sparse at >= 90%: min x{v['min']:.2f}, median x{v['median']:.2f}, "
        f"{100 * v['fraction_at_least_1']:.0f}% of {v['cases']} cases >= 1 (target >= 1)"
    )
    print(f"{elapsed:.0f} s; wrote {args.out} and {len(figures)} figures")


if __name__ == "__main__":
    main()

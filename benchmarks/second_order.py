"""Second-order pruning: one-shot quality, and the cost of WoodFisher and SparseGPT.

Quality: LeNet-300-100 on the MNIST subset, pruned once without fine-tuning by global and
uniform magnitude, OBD, the diagonal Fisher, WoodFisher, K-FAC and M-FAC, at 50-98%
sparsity over ``--seeds`` seeds (the table of notebook 02c).

Cost, each measured alone in this process (peak resident memory reset before each call
through ``/proc/self/clear_refs``; the extra memory is the peak minus the memory in use
before the call):

* WoodFisher's block inverse and OBS update on 266,200 weights (LeNet-300-100's size)
  against the block size and the number of gradients;
* SparseGPT on 1024 x 1024 and 4096 x 4096 layers with 2048 calibration rows.

Targets: SparseGPT on 4096 x 4096 under 60 s on 2 threads, and its peak extra memory
within 3x the layer's Hessian (4096^2 float64 entries).

    python benchmarks/second_order.py [--threads 2] [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import re
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: write the figure to a file, never open a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import sparsity_lab as sl  # noqa: E402
from sparsity_lab import curvature, recipes  # noqa: E402
from sparsity_lab.criteria import layerwise, second_order  # noqa: E402

#: label -> (criterion, options); the one-shot comparison of notebook 02c
METHODS = {
    "magnitude (global)": ("magnitude", {"budget": "global"}),
    "magnitude (uniform)": ("magnitude", {"budget": "uniform"}),
    "obd": ("obd", {"n_samples": 128}),
    "fisher_diag": ("fisher_diag", {"n_samples": 128}),
    "woodfisher": ("woodfisher", {"n_samples": 128, "block_size": 64, "steps": 4}),
    "kfac": ("kfac", {}),
    "mfac": ("mfac", {"n_samples": 128, "steps": 4}),
}
SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95, 0.98]


def memory_kib() -> dict[str, int]:
    """Current and peak resident memory of this process (Linux), in KiB."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def measure(fn) -> dict[str, float]:
    """Wall seconds, CPU seconds (all threads) and peak extra MiB of ``fn()``.

    CPU time is reported beside wall time because a busy machine stretches the wall time
    but not the work done.
    """
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current use
    before = memory_kib()["VmRSS"]
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "extra_mib": (memory_kib()["VmHWM"] - before) / 1024,
    }


def quality(seeds: list[int], sparsities: list[float], epochs: int) -> list[dict]:
    rows = []
    for seed in seeds:
        task = recipes.task("lenet300", "mnist", seed=seed)
        dense, info = recipes.train_dense(task, epochs=epochs, cache_dir=None)
        train, _, test = task.loaders()
        calibration = [batch for _, batch in zip(range(4), train, strict=False)]
        for label, (method, options) in METHODS.items():
            for sparsity in sparsities:
                model = copy.deepcopy(dense)
                start = time.perf_counter()
                sl.prune(model, method, sparsity, data=calibration, seed=seed, **options)
                rows.append(
                    {
                        "method": label,
                        "sparsity": sparsity,
                        "seed": seed,
                        "test_accuracy": sl.train.evaluate(model, test)["accuracy"],
                        "dense_test_accuracy": info["test_accuracy"],
                        "seconds": time.perf_counter() - start,
                    }
                )
                print(f"seed {seed} {label:>20} {sparsity:.2f}: {rows[-1]['test_accuracy']:.4f}")
    return rows


def woodfisher_cost(blocks: list[int], grads: list[int], size: int = 266_200) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for block, n in [(b, 128) for b in blocks] + [(64, n) for n in grads if n != 128]:
        g = torch.randn(n, size, generator=gen, dtype=torch.float64)
        w = torch.randn(size, generator=gen, dtype=torch.float64)
        pruned = torch.rand(size, generator=gen) < 0.9
        result = {}

        def run(g=g, w=w, pruned=pruned, block=block, result=result):
            result["blocks"] = curvature.woodbury_block_inverse(g, block, 1e-3)
            second_order.blockwise_obs_update(w, result["blocks"], pruned)

        cost = measure(run)
        rows.append({"block_size": block, "n_grads": n, **cost})
        print(
            f"woodfisher B={block:4d} N={n:4d}: {cost['seconds']:6.2f} s "
            f"(cpu {cost['cpu_seconds']:6.2f} s), {cost['extra_mib']:7.1f} MiB extra"
        )
        del g, w, pruned, result
    return rows


def sparsegpt_cost(sizes: list[int], rows_calib: int = 2048) -> list[dict]:
    out = []
    gen = torch.Generator().manual_seed(0)
    for d in sizes:
        # correlated inputs, as real activations are: a random mixing of white noise
        x = torch.randn(rows_calib, d, generator=gen) @ (torch.randn(d, d, generator=gen) / d**0.5)
        h = (2 * x.T.double() @ x.double() / rows_calib).float()
        del x
        w = torch.randn(d, d, generator=gen)
        hessian_mib = d * d * 8 / 2**20  # float64, the precision the solver works in
        cost = measure(lambda w=w, h=h: layerwise.sparsegpt(w, h, w.numel() // 2))
        out.append(
            {
                "layer": f"{d}x{d}",
                "calibration_rows": rows_calib,
                **cost,
                "hessian_mib": hessian_mib,
                "extra_over_hessian": cost["extra_mib"] / hessian_mib,
            }
        )
        print(
            f"sparsegpt {d}x{d}: {cost['seconds']:6.2f} s (cpu {cost['cpu_seconds']:6.2f} s), "
            f"{cost['extra_mib']:7.1f} MiB extra "
            f"({out[-1]['extra_over_hessian']:.2f} x the {hessian_mib:.0f} MiB Hessian)"
        )
        del h, w
    return out


def figure(report: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    table = sl.experiments.summarize(
        pd.DataFrame(report["quality"]), ["method", "sparsity"], "test_accuracy"
    )
    for method, group in table.groupby("method", sort=False):
        axes[0].errorbar(
            group["sparsity"], group["mean"], yerr=group["std"], marker="o", label=method
        )
    axes[0].set(xlabel="sparsity", ylabel="test accuracy, no fine-tuning", title="One-shot quality")
    axes[0].legend(fontsize=7)
    wf = report["woodfisher"]
    sweeps = [
        (
            axes[1],
            sorted((r for r in wf if r["n_grads"] == 128), key=lambda r: r["block_size"]),
            "block_size",
            "block size B (N = 128 gradients)",
        ),
        (
            axes[2],
            sorted((r for r in wf if r["block_size"] == 64), key=lambda r: r["n_grads"]),
            "n_grads",
            "gradients N (B = 64)",
        ),
    ]
    for ax, rows, key, label in sweeps:
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["seconds"] for r in rows], "o-", label="seconds")
        ax.set(xscale="log", xlabel=label, ylabel="seconds", title="WoodFisher on 266,200 weights")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        twin = ax.twinx()
        twin.plot(xs, [r["extra_mib"] for r in rows], "s--", color="C1", label="extra MiB")
        twin.set_ylabel("peak extra memory (MiB)")
        ax.legend(loc="upper left", fontsize=7)
        twin.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="one seed, fewer sizes")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "second_order.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    sparsities = [0.5, 0.9, 0.98] if args.quick else SPARSITIES
    blocks = [32, 128] if args.quick else [16, 32, 64, 128, 256]
    grads = [32, 128] if args.quick else [32, 64, 128, 256]
    report = {
        "benchmark": "second_order",
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "sparsegpt": sparsegpt_cost([1024, 4096]),
        "woodfisher": woodfisher_cost(blocks, grads),
        "quality": quality(seeds, sparsities, args.epochs),
        "target": "sparsegpt 4096x4096: < 60 s on 2 threads, extra memory <= 3x its Hessian",
    }
    big = report["sparsegpt"][-1]
    report["meets_target"] = big["seconds"] < 60 and big["extra_over_hessian"] <= 3
    # on a busy machine the wall time stretches; the CPU time shared over the threads does not
    report["meets_target_by_cpu_time"] = (
        big["cpu_seconds"] / args.threads < 60 and big["extra_over_hessian"] <= 3
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    figure(report, out.with_suffix(".png"))
    summary = sl.experiments.summarize(
        pd.DataFrame(report["quality"]), ["method", "sparsity"], "test_accuracy"
    )
    print(summary.pivot(index="sparsity", columns="method", values="mean").round(4).to_string())
    print(
        f"meets target: {report['meets_target']} (by CPU time: "
        f"{report['meets_target_by_cpu_time']}); wrote {out} and {out.with_suffix('.png')}"
    )


if __name__ == "__main__":
    main()

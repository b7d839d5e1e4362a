"""Regularizers against the target sparsity: sparsity reached, accuracy and training time.

For each registered regularizer and each target sparsity it trains LeNet-300-100 (or
``--model``) on MNIST from scratch with :func:`sparsity_lab.regularizers.compare.run`:
``--epochs`` epochs with the method (Adam, lr 1e-3), the projection to the target, then
``--finetune`` epochs with the masks fixed.  It records

* ``reached``: the sparsity the method's own threshold rule gave before the projection
  (how well the strength, tuned or fixed, hit the target);
* ``test_accuracy`` after fine-tuning and ``pruned_accuracy`` (validation, right after
  the projection);
* ``seconds_per_epoch`` of the training with the method, and its ratio to dense training
  measured in the same run.

Unstructured methods run at ``--targets`` over every layer; the structured ones (channel
masks, the last layer left dense) at ``--structured-targets``.  GMP and dense training
are the references.  One seed, one run per cell: the numbers are medians of nothing, so
read small differences as noise.  Writes ``results/regularization.json`` and
``results/regularization.png``.

    python benchmarks/regularization.py [--epochs 8] [--targets 0.5 0.8 0.9 0.95]
        [--methods l1 str ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: write the figure, show nothing
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import sparsity_lab.regularizers  # noqa: E402, F401  (registers the regularizers)
from sparsity_lab import recipes, registry  # noqa: E402
from sparsity_lab.regularizers import compare  # noqa: E402

STRUCTURED = {"group_lasso", "slimming", "polarization", "structured_bayesian",
              "bayesian_compression"}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--methods", nargs="*", default=None, help="default: every regularizer")
    parser.add_argument("--targets", nargs="*", type=float, default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--structured-targets", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--finetune", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods or registry.available("regularizer")
    options = {"n_train": args.n_train} if args.data == "mnist" else {}
    task = recipes.task(args.model, args.data, seed=args.seed, **options)

    def run(method: str, target: float, pattern: str) -> dict:
        start = time.perf_counter()
        r = compare.run(
            task, method, target, pattern=pattern, epochs=args.epochs,
            finetune_epochs=args.finetune,
        )  # fmt: skip
        r.pop("layer_sparsity")
        row = {"method": method, "pattern": pattern, "target": target, **r}
        row["wall_seconds"] = time.perf_counter() - start
        print(
            f"{method:>26} {pattern:>12} target {target:.2f}: reached {r['reached']:.3f}, "
            f"final {r['measured_sparsity']:.3f}, test acc {r['test_accuracy']:.4f}, "
            f"{r['seconds_per_epoch']:.2f} s/epoch",
            flush=True,
        )
        return row

    # warm-up: the first training in a process pays for allocations and kernel setup
    compare.run(task, "dense", 0.0, epochs=1, finetune_epochs=0)
    rows = [run("dense", 0.0, "unstructured")]
    for method in ["gmp", *methods]:
        patterns = ["unstructured"] if method not in STRUCTURED else []
        if method in STRUCTURED or method == "gmp":
            patterns.append("channel")
        for pattern in patterns:
            targets = args.targets if pattern == "unstructured" else args.structured_targets
            rows.extend(run(method, t, pattern) for t in targets)
    dense_epoch = rows[0]["seconds_per_epoch"]
    for row in rows:
        row["time_vs_dense"] = row["seconds_per_epoch"] / dense_epoch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "regularization",
        "model": args.model,
        "data": args.data,
        "epochs": args.epochs,
        "finetune_epochs": args.finetune,
        "optimizer": "adam, lr 1e-3 (fine-tuning lr 3.3e-4)",
        "seed": args.seed,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "dense_test_accuracy": rows[0]["test_accuracy"],
        "results": rows,
    }
    (out / "regularization.json").write_text(json.dumps(report, indent=2))
    plot(rows, out / "regularization.png", args)
    print(f"wrote {out / 'regularization.json'} and {out / 'regularization.png'}")


def plot(rows: list[dict], path: Path, args: argparse.Namespace) -> None:
    """Three panels against the target: sparsity reached, accuracy, time per epoch."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    dense = rows[0]
    names = list(dict.fromkeys(r["method"] for r in rows[1:]))
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(names)}  # one per method
    for row_axes, pattern in zip(axes, ["unstructured", "channel"], strict=True):
        cells = [r for r in rows[1:] if r["pattern"] == pattern]
        for method in dict.fromkeys(r["method"] for r in cells):
            part = sorted((r for r in cells if r["method"] == method), key=lambda r: r["target"])
            x = [r["target"] for r in part]
            style = {
                "marker": "o",
                "label": method,
                "color": colors[method],
                "linestyle": "--" if method == "gmp" else "-",
            }
            row_axes[0].plot(x, [r["reached"] for r in part], **style)
            row_axes[1].plot(x, [r["test_accuracy"] for r in part], **style)
            row_axes[2].plot(x, [r["time_vs_dense"] for r in part], **style)
        lims = [0, 1]
        row_axes[0].plot(lims, lims, color="gray", linewidth=0.8)
        row_axes[0].set_ylabel(f"{pattern}: sparsity the rule reached")
        row_axes[1].axhline(dense["test_accuracy"], color="gray", linestyle=":", label="dense")
        row_axes[1].set_ylabel("test accuracy after fine-tuning")
        row_axes[2].axhline(1.0, color="gray", linestyle=":")
        row_axes[2].set_ylabel("time per epoch / dense")
        for ax in row_axes:
            ax.set_xlabel("target sparsity")
            ax.grid(alpha=0.3)
        row_axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(
        f"Regularizers on {args.model} / {args.data}: {args.epochs} epochs + "
        f"{args.finetune} fine-tuning, seed {args.seed}"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

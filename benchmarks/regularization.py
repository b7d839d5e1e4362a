"""Regularizers against the target sparsity: sparsity reached, accuracy and training time.

For each registered regularizer and each target sparsity it trains LeNet-300-100 (or
``--model``) on MNIST from scratch with :func:`sparsity_lab.regularizers.compare.run`:
``--epochs`` epochs with the method (Adam, lr 1e-3), the projection to the target, then
``--finetune`` epochs with the masks fixed.  It records

* ``reached``: the sparsity the method's own threshold rule gave before the projection
  (how well the strength, tuned or fixed, hit the target);
* ``test_accuracy`` after fine-tuning and ``pruned_accuracy`` (validation, right after
  the projection);
* ``reached``, ``projection`` and ``projection_needed``: whether the final projection had
  to change the rule's mask by more than one point to hit the target, and which way;
* ``seconds_per_epoch`` of the training with the method (the median epoch after a warm-up
  epoch) and its ratio to a dense run timed the same way just before the method, so both
  see the same machine load (a single dense timing at the start made methods look faster
  than dense when the shared machine's load fell later).

Unstructured methods run at ``--targets`` over every layer; the structured ones (channel
masks, the last layer left dense) at ``--structured-targets``.  GMP and dense training
are the references.  ``--seeds`` (default one seed: three take about an hour on two
shared cores) repeats every cell; the figure shows means over seeds.  Writes
``results/regularization.json`` and ``results/regularization.png``.

    python benchmarks/regularization.py [--epochs 8] [--targets 0.5 0.8 0.9 0.95]
        [--methods l1 str ...] [--seeds 0 1 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
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


TOLERANCE = 0.01  # the rule's sparsity within 1 point of the target: no projection needed


def projection(reached: float, target: float) -> str:
    """What the final projection had to do to the mask of the method's own rule."""
    if abs(reached - target) <= TOLERANCE:
        return "not needed"
    if reached < target:
        return f"pruned {100 * (target - reached):.1f} points more"
    return f"restored {100 * (reached - target):.1f} points"


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
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = args.methods or registry.available("regularizer")
    options = {"n_train": args.n_train} if args.data == "mnist" else {}
    tasks = {seed: recipes.task(args.model, args.data, seed=seed, **options) for seed in args.seeds}

    def dense_reference(seed: int) -> float:
        """Dense seconds per epoch measured now (median after a warm-up epoch), so that
        every method is compared with dense training under the same machine load."""
        r = compare.run(tasks[seed], "dense", 0.0, epochs=3, finetune_epochs=0)
        return r["seconds_per_epoch"]

    def run(method: str, target: float, pattern: str, seed: int, dense_epoch: float) -> dict:
        r = compare.run(
            tasks[seed], method, target, pattern=pattern, epochs=args.epochs,
            finetune_epochs=args.finetune,
        )  # fmt: skip
        r.pop("layer_sparsity")
        row = {"method": method, "pattern": pattern, "target": target, "seed": seed, **r}
        row["dense_seconds_per_epoch"] = dense_epoch
        row["time_vs_dense"] = r["seconds_per_epoch"] / dense_epoch
        regularizer = method in set(methods)
        row["projection"] = projection(r["reached"], target) if regularizer else "n/a"
        row["projection_needed"] = regularizer and abs(r["reached"] - target) > TOLERANCE
        print(
            f"{method:>26} {pattern:>12} target {target:.2f} seed {seed}: own rule "
            f"{r['reached']:.3f}, projection {row['projection']}, final "
            f"{r['measured_sparsity']:.3f}, test acc {r['test_accuracy']:.4f}, "
            f"{row['time_vs_dense']:.2f}x dense per epoch",
            flush=True,
        )
        return row

    # warm-up: the first training in a process pays for allocations and kernel setup
    compare.run(tasks[args.seeds[0]], "dense", 0.0, epochs=1, finetune_epochs=0)
    rows = []
    for seed in args.seeds:
        reference = dense_reference(seed)
        rows.append(run("dense", 0.0, "unstructured", seed, reference))
        for method in ["gmp", *methods]:
            reference = dense_reference(seed)  # paired: measured just before this method
            patterns = ["unstructured"] if method not in STRUCTURED else []
            if method in STRUCTURED or method == "gmp":
                patterns.append("channel")
            for pattern in patterns:
                targets = args.targets if pattern == "unstructured" else args.structured_targets
                rows.extend(run(method, t, pattern, seed, reference) for t in targets)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "regularization",
        "model": args.model,
        "data": args.data,
        "epochs": args.epochs,
        "finetune_epochs": args.finetune,
        "optimizer": "adam, lr 1e-3 (fine-tuning lr 3.3e-4)",
        "seeds": args.seeds,
        "timing": "median epoch time after the first epoch, over a dense run measured just "
        "before each method (same machine load)",
        "projection_tolerance": TOLERANCE,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "dense_test_accuracy": sum(r["test_accuracy"] for r in rows if r["method"] == "dense")
        / len(args.seeds),
        "results": rows,
    }
    (out / "regularization.json").write_text(json.dumps(report, indent=2))
    plot(rows, out / "regularization.png", args)
    summary(rows, set(methods))
    print(f"wrote {out / 'regularization.json'} and {out / 'regularization.png'}")


def summary(rows: list[dict], regularizers: set[str]) -> None:
    """Per method: how often its own rule reached the target, and what projection did."""
    print("\nOwn threshold rule against the target (mean over seeds), and the projection:")
    keys = dict.fromkeys((r["method"], r["pattern"]) for r in rows if r["method"] in regularizers)
    for method, pattern in keys:
        part = [r for r in rows if r["method"] == method and r["pattern"] == pattern]
        needed = sum(r["projection_needed"] for r in part)
        cells = ", ".join(
            f"{t:.2f}->{mean(r['reached'] for r in part if r['target'] == t):.3f}"
            for t in dict.fromkeys(r["target"] for r in part)
        )
        time_ratio = mean(r["time_vs_dense"] for r in part)
        print(
            f"  {method:>26} {pattern:>12}: target->own rule {cells}; projection needed in "
            f"{needed} of {len(part)} runs; {time_ratio:.2f}x dense per epoch"
        )


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def plot(rows: list[dict], path: Path, args: argparse.Namespace) -> None:
    """Three panels against the target: sparsity reached, accuracy, time per epoch."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8), layout="constrained")
    dense = {"test_accuracy": mean(r["test_accuracy"] for r in rows if r["method"] == "dense")}
    names = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    colors = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(names)}  # one per method
    for row_axes, pattern in zip(axes, ["unstructured", "channel"], strict=True):
        cells = [r for r in rows if r["pattern"] == pattern and r["method"] != "dense"]
        for method in dict.fromkeys(r["method"] for r in cells):
            mine = [r for r in cells if r["method"] == method]
            x = sorted(dict.fromkeys(r["target"] for r in mine))
            part = [  # the mean over seeds at each target
                {
                    k: mean(r[k] for r in mine if r["target"] == t)
                    for k in ("reached", "test_accuracy", "time_vs_dense")
                }
                for t in x
            ]
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
        f"{args.finetune} fine-tuning, seeds {args.seeds}"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

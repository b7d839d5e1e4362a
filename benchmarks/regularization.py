"""Regularizers against the target sparsity: sparsity reached, accuracy and training time.

For each registered regularizer and each target sparsity it trains LeNet-300-100 (or
``--model``) on MNIST from scratch with :func:`sparsity_lab.regularizers.compare.run`:
the setting's recipe (``recipes.recipe_for``: its epochs, optimizer and learning rate;
``compare.run`` uses no learning-rate schedule), the projection to the target, then
``--finetune`` epochs with the masks fixed (``recipes.finetune``, at a third of the rate;
epochs and FLOPs recorded).  The regularizers' papers differ in their optimizers (Adam for
L0 and variational dropout, SGD for STR, group lasso and slimming); one protocol for all
is what makes them comparable here, so every method gets the recipe's, and
``--optimizer``/``--lr``/``--epochs`` override it for all alike (recorded).  The dense
reference is ``recipes.dense``.  It records

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
are the references.  ``--seeds`` (default three) repeats every cell; the figure shows
means over seeds.  Every run carries the sanity flags of ``recipes.evaluate_run``; each
method is compared with GMP at the same target by paired differences over seeds (met: at
most one point below GMP), with the verdict on ``magnitude_matches_l0`` of
``sl.claims.CLAIMS``.  Writes ``results/regularization.json`` and
``results/regularization.png``.

    python benchmarks/regularization.py [--targets 0.5 0.8 0.9 0.95]
        [--methods l1 str ...] [--seeds 0 1 2] [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: write the figure, show nothing
import matplotlib.pyplot as plt
import pandas as pd
import torch

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import recipes, registry
from sparsity_lab.regularizers import compare

STRUCTURED = {"group_lasso", "slimming", "polarization", "structured_bayesian",
              "bayesian_compression"}  # fmt: skip


TOLERANCE = 0.01  # the rule's sparsity within 1 point of the target: no projection needed
MARGIN = 0.01  # a method "matches" GMP when the paired interval stays above -1 point


def projection(reached: float, target: float) -> str:
    """What the final projection had to do to the mask of the method's own rule."""
    if abs(reached - target) <= TOLERANCE:
        return "not needed"
    if reached < target:
        return f"pruned {100 * (target - reached):.1f} points more"
    return f"restored {100 * (reached - target):.1f} points"


def paired_to_gmp(df: pd.DataFrame, methods: list[str]) -> list[dict]:
    """Each method minus GMP at the same pattern and target, paired over seeds."""
    out = []
    for method in methods:
        for pattern in dict.fromkeys(df[df.method == method].pattern):
            part = df[(df.pattern == pattern) & df.method.isin([method, "gmp"])]
            if "gmp" not in set(part.method):
                continue
            diffs = sl.stats.paired(
                part, "method", method, "gmp", metric="test_accuracy", by="target"
            )
            for _, row in diffs.iterrows():
                low = row["ci_low"]
                status = (
                    "inconclusive"
                    if row["n"] < 2
                    else "met"
                    if low >= -MARGIN
                    else "missed"
                    if row["ci_high"] < -MARGIN
                    else "inconclusive"
                )
                entry = {
                    "expectation": f"{method} at most {100 * MARGIN:.0f} point below GMP",
                    "method": method,
                    "pattern": pattern,
                    "target": row["target"],
                    "status": status,
                    "paired": {k: row[k] for k in ("mean_diff", "ci_low", "ci_high", "n")},
                    "numbers": sl.stats.describe(row),
                }
                if method == "l0_hard_concrete" and pattern == "unstructured":
                    # the claim reads gmp - l0: the same interval, mirrored
                    mirrored = {
                        "mean_diff": -row["mean_diff"],
                        "ci_low": -row["ci_high"],
                        "ci_high": -row["ci_low"],
                        "n": row["n"],
                    }
                    v = sl.claims.verdict("magnitude_matches_l0", mirrored)
                    entry["claim"] = {
                        "key": "magnitude_matches_l0",
                        "status": v.status,
                        "numbers": v.numbers(),
                    }
                out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet300")
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--methods", nargs="*", default=None, help="default: every regularizer")
    parser.add_argument("--targets", nargs="*", type=float, default=[0.5, 0.8, 0.9, 0.95])
    parser.add_argument("--structured-targets", nargs="*", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--optimizer", default=None, help="default: the recipe's")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--finetune", type=int, default=2)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="two seeds, l1 and l0_hard_concrete at 90%%, 3 epochs (not the recipe's)",
    )
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.seeds, args.targets, args.structured_targets = args.seeds[:2], [0.9], []
        args.methods = args.methods or ["l1", "l0_hard_concrete"]
        args.epochs, args.finetune = args.epochs or 3, 1
    methods = args.methods or registry.available("regularizer")
    recipe = recipes.recipe_for(args.model, args.data)
    training = {
        "epochs": args.epochs or recipe.epochs,
        "optimizer": args.optimizer or recipe.optimizer,
        "lr": args.lr or recipe.lr,
    }
    overridden = {k: v for k, v in training.items() if v != getattr(recipe, k)}
    dense = {seed: recipes.dense(args.model, args.data, seed) for seed in args.seeds}
    tasks = {seed: dense[seed][0] for seed in args.seeds}

    def dense_reference(seed: int) -> float:
        """Dense seconds per epoch measured now (median after a warm-up epoch), so that
        every method is compared with dense training under the same machine load."""
        r = compare.run(tasks[seed], "dense", 0.0, epochs=3, finetune_epochs=0)
        return r["seconds_per_epoch"]

    def run(method: str, target: float, pattern: str, seed: int, dense_epoch: float) -> dict:
        r = compare.run(
            tasks[seed], method, target, pattern=pattern, finetune_epochs=args.finetune,
            **training,
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
            f"{row['time_vs_dense']:.2f}x dense per epoch {r['flags']}".rstrip(),
            flush=True,
        )
        return row

    # warm-up: the first training in a process pays for allocations and kernel setup
    compare.run(tasks[args.seeds[0]], "dense", 0.0, epochs=1, finetune_epochs=0)
    rows = []
    for seed in args.seeds:
        _, _, info = dense[seed]
        rows.append(
            {
                "method": "dense",
                "pattern": "unstructured",
                "target": 0.0,
                "seed": seed,
                "test_accuracy": info["test_accuracy"],
                "val_accuracy": info["val_accuracy"],
                "measured_sparsity": 0.0,
                "reached": 0.0,
                "time_vs_dense": 1.0,
                "projection": "n/a",
                "projection_needed": False,
                "flags": info["flags"],
            }
        )
        for method in ["gmp", *methods]:
            reference = dense_reference(seed)  # paired: measured just before this method
            patterns = ["unstructured"] if method not in STRUCTURED else []
            if method in STRUCTURED or method == "gmp":
                patterns.append("channel")
            for pattern in patterns:
                targets = args.targets if pattern == "unstructured" else args.structured_targets
                rows.extend(run(method, t, pattern, seed, reference) for t in targets)

    df = pd.DataFrame(rows)
    flagged = sl.flags.table(df, ["method", "pattern", "target"])
    found = paired_to_gmp(df, methods)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "regularization",
        "model": args.model,
        "data": args.data,
        "quick": args.quick,
        "training": {**training, "lr_schedule": None, "finetune_lr": training["lr"] / 3},
        "recipe": recipe.training(),
        "overrides_of_the_recipe": overridden,
        "finetune_epochs": args.finetune,
        "seeds": args.seeds,
        "timing": "median epoch time after the first epoch, over a dense run measured just "
        "before each method (same machine load)",
        "projection_tolerance": TOLERANCE,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "dense": {
            seed: {k: info[k] for k in ("test_accuracy", "val_accuracy", "flags")}
            for seed, (_, _, info) in dense.items()
        },
        "results": rows,
        "flagged": flagged.to_dict(orient="records"),
        "checks": found,
    }
    (out / "regularization.json").write_text(json.dumps(report, indent=2, default=_plain))
    plot(rows, out / "regularization.png", args, training["epochs"])
    summary(rows, set(methods))
    if flagged.empty:
        print("No sanity flag fired.")
    else:
        print("\nflagged runs:\n" + flagged.to_string(index=False))
    print("\nEach method against GMP at the same target (paired over seeds):")
    for c in found:
        print(f"  [{c['status']}] {c['expectation']} ({c['pattern']}, {c['target']}): "
              f"{c['numbers']}")  # fmt: skip
        if "claim" in c:
            print(f"      claim {c['claim']['key']}: {c['claim']['status']} "
                  f"({c['claim']['numbers']}, gmp - l0)")  # fmt: skip
    if overridden:
        print(f"trained with {overridden}, overriding the recipe's {recipe.training()}")
    print(f"wrote {out / 'regularization.json'} and {out / 'regularization.png'}")


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


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


def plot(rows: list[dict], path: Path, args: argparse.Namespace, epochs: int) -> None:
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
        f"Regularizers on {args.model} / {args.data}: {epochs} epochs + "
        f"{args.finetune} fine-tuning, seeds {args.seeds}"
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""Gradient compression in real 2-worker DDP: accuracy, bytes sent and wall time.

LeNet-300-100 on MNIST (4000 training images), trained by ``--workers`` processes with
``DistributedDataParallel`` over gloo on this machine, for each of: dense all-reduce;
top-k at 99% and 99.9% sparsity with and without error feedback; DGC at 99.9% (momentum
correction, local clipping, momentum-factor masking, sparsity warm-up).  Each run is
repeated for ``--seeds`` seeds.  Bytes are measured per worker (the tensors passed to the
collectives, see ``sparsity_lab.ephemeral.gradients``); wall time is the training time of
one run (evaluation excluded), so it includes the compression work and the messages.

Target: top-k at 99% with error feedback ends within 1 point of dense accuracy while
sending at least 50x fewer gradient bytes; without error feedback it should be visibly
worse.

    python benchmarks/gradient_compression.py [--seeds 3] [--epochs 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import pandas as pd
import run_info
import torch

from sparsity_lab.ephemeral import ddp


def configs(seeds: list[int], warmup_steps: int) -> list[dict]:
    runs = [{"label": "dense", "method": "dense"}]
    for sparsity in (0.99, 0.999):
        for ef in (True, False):
            runs.append(
                {
                    "label": f"topk {sparsity:.1%} {'EF' if ef else 'no EF'}",
                    "method": "topk",
                    "sparsity": sparsity,
                    "error_feedback": ef,
                }
            )
    runs.append(
        {
            "label": "dgc 99.9%",
            "method": "dgc",
            "sparsity": 0.999,
            "momentum": 0.9,
            "clip_norm": 5.0,
            "warmup_steps": warmup_steps,
        }
    )
    return [{**r, "seed": s} for s in seeds for r in runs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="per worker")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "gradient_compression.json")
    )
    args = parser.parse_args()

    steps_per_epoch = 4000 // args.workers // args.batch
    runs = configs(list(range(args.seeds)), warmup_steps=steps_per_epoch)  # one epoch warm-up
    labels = {i: r.pop("label") for i, r in enumerate(runs)}
    start = time.perf_counter()
    frame = ddp.train_compressed(
        [dict(r) for r in runs],
        world_size=args.workers,
        epochs=args.epochs,
        batch_size=args.batch,
        lr=args.lr,
        timeout=args.timeout,
    )
    total = time.perf_counter() - start
    # train_compressed returns the runs in order for each rank; label them back
    frame["label"] = [labels[i % len(runs)] for i in range(len(frame))]
    per_run = frame.groupby(["label", "seed"], sort=False).agg(
        test_accuracy=("test_accuracy", "first"),  # identical on every rank
        bytes_sent=("bytes_sent", "mean"),
        dense_bytes=("dense_bytes", "mean"),
        wall_s=("wall_s", "max"),
    )
    table = per_run.groupby("label", sort=False).agg(
        accuracy=("test_accuracy", "mean"),
        accuracy_std=("test_accuracy", "std"),
        mbytes_sent_per_worker=("bytes_sent", lambda b: b.mean() / 1e6),
        dense_mbytes=("dense_bytes", lambda b: b.mean() / 1e6),
        wall_s=("wall_s", "median"),
    )
    table["byte_ratio"] = table["dense_mbytes"] / table["mbytes_sent_per_worker"]
    table["accuracy_gap_points"] = 100 * (table["accuracy"] - table.loc["dense", "accuracy"])
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(table.round(4).to_string())

    ef = table.loc["topk 99.0% EF"]
    no_ef = table.loc["topk 99.0% no EF"]
    meets = bool(ef["accuracy_gap_points"] >= -1.0 and ef["byte_ratio"] >= 50)
    print(
        f"\ntop-k 99% with error feedback: {ef['accuracy_gap_points']:+.2f} points vs dense, "
        f"{ef['byte_ratio']:.1f}x fewer bytes -> target {'met' if meets else 'NOT met'}"
    )
    print(
        f"top-k 99% without error feedback: {no_ef['accuracy_gap_points']:+.2f} points vs dense "
        f"({no_ef['accuracy_gap_points'] - ef['accuracy_gap_points']:+.2f} vs with feedback)"
    )
    report = {
        "benchmark": "gradient_compression",
        "model": "lenet300",
        "data": "mnist (4000 train / 500 test)",
        "workers": args.workers,
        "epochs": args.epochs,
        "batch_per_worker": args.batch,
        "lr": args.lr,
        "seeds": args.seeds,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "total_seconds": total,
        "table": table.reset_index().to_dict(orient="records"),
        "runs": per_run.reset_index().to_dict(orient="records"),
        "target": "topk 99% with error feedback within 1 point of dense and >= 50x fewer bytes",
        "meets_target": meets,
    }
    run_info.write(report, args.out)


if __name__ == "__main__":
    main()

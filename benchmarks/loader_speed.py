"""What fetching the batches costs in a small model's training: DataLoader vs TensorLoader.

The bundled data sets are in-memory ``TensorDataset`` s.  torch's ``DataLoader`` fetches
each example alone and stacks them; ``sl.data.TensorLoader`` (what ``DataBundle.loaders``
returns) indexes each tensor once per batch, with the same batches and random draws.  For
three recipes (LeNet-300-100 on MNIST, LeNet-5 on MNIST, the 1-D CNN on MNIST-1D) this
times, interleaved in every round, one pass over the training and validation loaders alone
and ``--epochs`` epochs of the recipe's training, each way, and reports medians over
``--rounds`` rounds, their ratios and the load average.  Each round also checks that both
ways trained to the same weights.

Target (issue 19, item 4: the book's time is mostly small models' training): the fetching
no more than 2% of an epoch's training.

    python benchmarks/loader_speed.py [--rounds 5] [--epochs 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from pathlib import Path

import run_info
import torch
from torch.utils.data import DataLoader

from sparsity_lab import data, recipes
from sparsity_lab.phenomena import structure

SETTINGS = [("lenet300", "mnist"), ("lenet5", "mnist"), ("cnn1d", "mnist1d")]
TARGET_SHARE = 0.02


@contextlib.contextmanager
def per_example(enabled: bool):
    """Make the bundles' loaders fetch as torch's DataLoader does, one example at a time."""
    saved = data.TensorLoader.__iter__
    if enabled:
        data.TensorLoader.__iter__ = DataLoader.__iter__
    try:
        yield
    finally:
        data.TensorLoader.__iter__ = saved


def fetch_seconds(t) -> float:
    train, val, _ = t.loaders()
    start = time.perf_counter()
    for loader in (train, val):
        for _ in loader:
            pass
    return time.perf_counter() - start


def train_seconds(t, epochs: int) -> tuple[float, dict[str, torch.Tensor]]:
    model = t.build()
    start = time.perf_counter()
    structure.fit_recipe(model, t, epochs=epochs)
    return time.perf_counter() - start, model.state_dict()


def bench(model_name: str, data_name: str, rounds: int, epochs: int) -> dict:
    t = recipes.task(model_name, data_name, seed=0)
    ways = {"dataloader": True, "tensorloader": False}
    fetch = {way: [] for way in ways}
    train = {way: [] for way in ways}
    for _ in range(rounds + 1):  # the first round warms up and is not counted
        weights = {}
        for way, plain in ways.items():
            with per_example(plain):
                fetch[way].append(fetch_seconds(t))
                seconds, weights[way] = train_seconds(t, epochs)
                train[way].append(seconds)
        same = all(
            torch.equal(weights["dataloader"][k], weights["tensorloader"][k])
            for k in weights["dataloader"]
        )
        if not same:
            raise AssertionError(
                f"{model_name}/{data_name}: the two loaders trained different weights"
            )
    fetch_s = {way: statistics.median(v[1:]) for way, v in fetch.items()}
    train_s = {way: statistics.median(v[1:]) for way, v in train.items()}
    # per epoch: a training epoch also validates, so one pass over both loaders is its fetching
    share = {way: fetch_s[way] * epochs / train_s[way] for way in ways}
    return {
        "model": model_name,
        "data": data_name,
        "fetch_seconds": fetch_s,
        "train_seconds": train_s,
        "epochs": epochs,
        "fetch_share_of_training": share,
        "training_speedup": train_s["dataloader"] / train_s["tensorloader"],
        "same_weights": True,
        "meets_target": share["tensorloader"] <= TARGET_SHARE,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "loader_speed.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = [bench(m, d, args.rounds, args.epochs) for m, d in SETTINGS]
    for r in results:
        share, train_s = r["fetch_share_of_training"], r["train_seconds"]
        verdict = "met" if r["meets_target"] else "MISSED"
        print(
            f"{r['model']:>9}/{r['data']:<8} {r['epochs']} epochs: DataLoader "
            f"{train_s['dataloader']:.2f} s (fetching {share['dataloader']:.1%}), TensorLoader "
            f"{train_s['tensorloader']:.2f} s (fetching {share['tensorloader']:.1%}); "
            f"{r['training_speedup']:.2f}x, same weights -> {verdict}"
        )
    report = {
        "benchmark": "loader_speed",
        "rounds": args.rounds,
        "threads": args.threads,
        **run_info.machine(load_before),
        "results": results,
        "target": f"fetching <= {TARGET_SHARE:.0%} of the training time with TensorLoader",
    }
    print(f"load average before {load_before}, after {report['load_average_after']}")
    run_info.write(report, args.out)


if __name__ == "__main__":
    main()

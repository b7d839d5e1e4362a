"""The cost of pruning a large model once: time and extra memory against torch's pruning.

A 92M-weight stack of Linear layers (five 4096 x 4096 and one 4096 x 2048, float32, 352
MiB of weights; the five square layers alone are the 84M of the target) is pruned to 90%
by magnitude with the global budget (one threshold over every weight), at random and by
LAMP scores with the global budget, and by ``torch.nn.utils.prune.global_unstructured``
(L1), each on a fresh copy, measured alone: wall time and the peak resident memory above
what the process held before the call (``second_order.measure``).  The copies are made
outside the measurement.  The variants run in interleaved rounds (``--repeats``), and each
is reported by its median time, so that a busy moment of the machine falls on every
variant alike, and by its largest extra memory (memory the allocator kept from an earlier
round can hide part of a peak); the load average is recorded.

Targets: each of our budgets at most torch's time (1.0x; the global budget is the one torch
also has) and at most 3x the weights' bytes in extra memory.

Context, without a target: the selection that methods re-selecting their masks at every
step pay (Top-KAST, edge-popup, DPF; ``patterns.prune_lowest``) on one layer, against
torch's own mask of the same count (``L1Unstructured.compute_mask``, a ``topk``), on one
thread, at three layer sizes (LeNet-300-100's first layer among them): medians of
``--selection-rounds`` interleaved rounds.

    python benchmarks/pruning_cost.py [--threads 2] [--sparsity 0.9] [--repeats 3]
                                      [--selection-rounds 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from functools import partial
from pathlib import Path

import run_info
import torch
from second_order import measure
from torch import nn
from torch.nn.utils import prune as torch_prune

import sparsity_lab as sl

SHAPES = [(4096, 4096)] * 5 + [(2048, 4096)]


def stack(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Linear(i, o, bias=False) for o, i in SHAPES]
    return nn.Sequential(*layers).requires_grad_(False)


def ours(criterion: str, budget: str, sparsity: float):
    def run(model):
        sl.prune(model, criterion, sparsity, budget=budget, seed=0)

    return run


def torchs(sparsity: float):
    def run(model):
        params = [(m, "weight") for m in model]
        torch_prune.global_unstructured(
            params, pruning_method=torch_prune.L1Unstructured, amount=sparsity
        )

    return run


#: Layer sizes for the per-step selection: a small layer, LeNet-300-100's first layer
#: (300 x 784) and a 1024 x 1024 one.
SELECTION_SIZES = [2**15, 300 * 784, 2**20]


def selection_costs(sparsity: float, rounds: int) -> list[dict]:
    """Per-call median seconds of our one-layer selection and torch's, interleaved, on
    one thread; the two masks are checked to prune the same number of weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for n in SELECTION_SIZES:
            scores = torch.randn(n, generator=torch.Generator().manual_seed(n)).abs()
            n_prune = round(sparsity * n)
            theirs = torch_prune.L1Unstructured(amount=n_prune)
            default = torch.ones(n)
            calls = {
                "sparsity_lab prune_lowest": partial(sl.patterns.prune_lowest, scores, n_prune),
                "torch L1Unstructured.compute_mask": partial(theirs.compute_mask, scores, default),
            }
            pruned = {name: int((call() == 0).sum()) for name, call in calls.items()}
            assert set(pruned.values()) == {n_prune}, pruned
            times: dict[str, list[float]] = {name: [] for name in calls}
            for _ in range(rounds):
                for name, call in calls.items():
                    start = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - start)
            median = {name: statistics.median(t) for name, t in times.items()}
            ours_s, torch_s = median.values()
            rows.append({"weights": n, "seconds": median, "time_over_torch": ours_s / torch_s})
            print(
                f"selection over {n:>9,} weights: ours {1e3 * ours_s:.3f} ms, torch's "
                f"{1e3 * torch_s:.3f} ms ({ours_s / torch_s:.2f}x)",
                flush=True,
            )
    finally:
        torch.set_num_threads(threads)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--selection-rounds", type=int, default=200, help="interleaved rounds per layer size"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "pruning_cost.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n_weights = sum(o * i for o, i in SHAPES)
    weight_mib = 4 * n_weights / 2**20
    variants = {
        "torch global_unstructured": torchs(args.sparsity),
        "sparsity_lab global": ours("magnitude", "global", args.sparsity),
        "sparsity_lab random": ours("random", "global", args.sparsity),
        "sparsity_lab lamp": ours("lamp", "global", args.sparsity),
    }
    load_before = os.getloadavg()
    selection = selection_costs(args.sparsity, args.selection_rounds)
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for round_ in range(args.repeats):
        for name, fn in variants.items():
            model = stack()
            cost = measure(lambda fn=fn, model=model: fn(model))
            cost["sparsity"] = 1 - sum(int(m.weight.count_nonzero()) for m in model) / n_weights
            runs[name].append(cost)
            del model
            print(
                f"round {round_ + 1}, {name:>26}: {cost['seconds']:6.2f} s "
                f"(cpu {cost['cpu_seconds']:6.2f} s), {cost['extra_mib']:7.0f} MiB extra, "
                f"sparsity {cost['sparsity']:.4f}",
                flush=True,
            )
    rows = []
    for name, costs in runs.items():
        median = {k: statistics.median(c[k] for c in costs) for k in costs[0]}
        rows.append(
            {
                "variant": name,
                "seconds": median["seconds"],
                "cpu_seconds": median["cpu_seconds"],
                # the largest: memory the allocator kept from an earlier round can hide part
                # of a later round's peak, never add to it
                "extra_mib": max(c["extra_mib"] for c in costs),
                "extra_over_weights": max(c["extra_mib"] for c in costs) / weight_mib,
                "sparsity": median["sparsity"],
                "runs": costs,
            }
        )
    reference = rows[0]["seconds"]
    for r in rows[1:]:
        r["time_over_torch"] = r["seconds"] / reference
        r["meets_target"] = r["time_over_torch"] <= 1.0 and r["extra_over_weights"] <= 3.0
        verdict = "met" if r["meets_target"] else "MISSED"
        print(
            f"{r['variant']:>26}: median {r['time_over_torch']:.2f}x torch's time, "
            f"{r['extra_over_weights']:.2f}x the weights in extra memory -> {verdict}"
        )
    report = {
        "benchmark": "pruning_cost",
        "weights": n_weights,
        "weight_mib": weight_mib,
        "sparsity": args.sparsity,
        "threads": args.threads,
        "repeats": args.repeats,
        **run_info.machine(load_before),
        "results": rows,
        "target": "each budget <= 1.0x torch's time and <= 3x the weights in extra memory",
        "per_step_selection": {"threads": 1, "rounds": args.selection_rounds, "sizes": selection},
    }
    run_info.write(report, args.out)


if __name__ == "__main__":
    main()

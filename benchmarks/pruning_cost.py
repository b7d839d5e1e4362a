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

    python benchmarks/pruning_cost.py [--threads 2] [--sparsity 0.9] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
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
    }
    run_info.write(report, args.out)


if __name__ == "__main__":
    main()

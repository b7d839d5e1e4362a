"""Training-step and evaluation cost of masks: dense vs sparsity_lab vs ``torch.nn.utils.prune``.

For LeNet-300-100 (flat MNIST) and the small CNN (LeNet-5 on 28x28 images) it times one
SGD training step (forward, backward, momentum 0.9, weight decay 5e-4) on a fixed batch in
four variants with the same 90%-sparse magnitude masks: dense, sparsity_lab's masks as they
are (``w * mask`` in forward and backward), the same masks inside
``sl.masks.fast_training`` (what ``sl.train.fit`` uses: only the gradient is masked), and
torch's pruning hooks.  It also times a forward pass in evaluation (``sl.train.evaluate``'s
way, under ``parametrize.cached``) at batch 1, 64 and 256.  Variants are interleaved in
every round, so machine noise hits them alike; each round times ``--steps`` calls, and the
median over ``--rounds`` rounds is reported, with ratios to dense from the same run and the
load average before and after.

Targets: the fast masked step <= 1.15 x dense at batch 64 and no slower than torch's hooks;
masked evaluation <= 1.1 x dense at every batch, or, where the parametrization's Python
cost per call is what remains (batch 1), the squashed copy (``sl.masks.squash``) within it.

    python benchmarks/mask_overhead.py [--rounds 15] [--steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import time
from pathlib import Path

import run_info
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

import sparsity_lab as sl
from sparsity_lab import models

SPARSITY = 0.9


def variants(name: str, input_shape: tuple[int, ...]) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    dense = models.build(name, input_shape=input_shape, n_classes=10)
    ours = sl.prune(copy.deepcopy(dense), "magnitude", SPARSITY, budget="uniform")
    theirs = copy.deepcopy(dense)
    for target in sl.pruning.default_targets(theirs):
        module = theirs.get_submodule(target.rpartition(".")[0])
        torch_prune.l1_unstructured(module, "weight", amount=SPARSITY)
    return {
        "dense": dense,
        "sparsity_lab": ours,
        "sparsity_lab_fast": copy.deepcopy(ours),
        "torch_prune": theirs,
    }


def time_steps(model: nn.Module, opt, x, y, steps: int, fast: bool) -> float:
    loop = sl.masks.fast_training(model, opt) if fast else contextlib.nullcontext()
    with loop:
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
        return (time.perf_counter() - start) / steps


def time_eval(model: nn.Module, x, calls: int) -> float:
    with sl.modes.evaluating(model), torch.no_grad(), parametrize.cached():
        start = time.perf_counter()
        for _ in range(calls):
            model(x)
        return (time.perf_counter() - start) / calls


def interleaved(runs: dict, timer, rounds: int) -> dict[str, float]:
    for k in runs:  # warm-up: allocator, kernels, momentum buffers
        timer(k)
    samples = {k: [] for k in runs}
    for _ in range(rounds):
        for k in runs:
            samples[k].append(timer(k))
    return {k: statistics.median(v) for k, v in samples.items()}


def bench(name, input_shape, batches, rounds, steps):
    runs = variants(name, input_shape)
    opts = {
        k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for k, m in runs.items()
    }
    out = []
    for batch in batches:
        x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
        med = interleaved(
            runs,
            lambda k, x=x, y=y: time_steps(runs[k], opts[k], x, y, steps, k.endswith("_fast")),
            rounds,
        )
        out.append(
            {
                "model": name,
                "case": "train_step",
                "batch": batch,
                "median_ms": {k: 1e3 * v for k, v in med.items()},
                "ratio_to_dense": {k: med[k] / med["dense"] for k in med},
                "fast_vs_torch_prune": med["sparsity_lab_fast"] / med["torch_prune"],
            }
        )
    # The squashed copy is the masked model with its masks made permanent: plain weights.
    evaluated = {
        "dense": runs["dense"],
        "sparsity_lab": runs["sparsity_lab"],
        "squashed": sl.masks.squash(copy.deepcopy(runs["sparsity_lab"])),
    }
    for batch in (1, *batches):
        x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(3))
        med = interleaved(evaluated, lambda k, x=x: time_eval(evaluated[k], x, steps), rounds)
        out.append(
            {
                "model": name,
                "case": "evaluation",
                "batch": batch,
                "median_ms": {k: 1e3 * v for k, v in med.items()},
                "ratio_to_dense": {k: med[k] / med["dense"] for k in med},
            }
        )
    # The masks held through every step: the pruned weights are still exactly zero.
    for k in ("sparsity_lab", "sparsity_lab_fast"):
        assert sl.sparsity(runs[k]) >= SPARSITY - 1e-6, k
        for mask_name, mask in sl.masks.masks(runs[k]).items():
            assert not sl.masks.dense_weight(runs[k], mask_name)[mask == 0].any(), mask_name
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "mask_overhead.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cases = [("lenet300", (784,)), ("lenet5", (1, 28, 28))]
    results = [r for n, s in cases for r in bench(n, s, args.batches, args.rounds, args.steps)]
    for r in results:
        ratio = r["ratio_to_dense"]
        if r["case"] == "train_step":
            r["meets_target"] = (ratio["sparsity_lab_fast"] <= 1.15 or r["batch"] != 64) and r[
                "fast_vs_torch_prune"
            ] <= 1.0
        else:
            r["meets_target"] = ratio["sparsity_lab"] <= 1.1 or ratio["squashed"] <= 1.1
        shown = " | ".join(
            f"{k} {r['median_ms'][k]:.3f} ms ({ratio[k]:.3f}x)" for k in r["median_ms"]
        )
        verdict = "met" if r["meets_target"] else "MISSED"
        print(f"{r['model']:>9} {r['case']:>10} batch {r['batch']:>3}: {shown} -> {verdict}")
    report = {
        "benchmark": "mask_overhead",
        "sparsity": SPARSITY,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": args.threads,
        **run_info.machine(load_before),
        "results": results,
        "target": (
            "train step: sparsity_lab_fast <= 1.15 x dense at batch 64 and <= torch_prune; "
            "evaluation: sparsity_lab (or its squashed copy) <= 1.1 x dense"
        ),
    }
    print(f"load average before {load_before}, after {report['load_average_after']}")
    run_info.write(report, args.out)


if __name__ == "__main__":
    main()

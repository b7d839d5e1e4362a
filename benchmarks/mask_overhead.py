"""Training-step cost of masks: dense vs sparsity_lab masks vs ``torch.nn.utils.prune``.

For LeNet-300-100 (flat MNIST) and the small CNN (LeNet-5 on 28x28 images) it times one
SGD training step (forward, backward, momentum update) on a fixed batch, in three variants
with the same 90%-sparse magnitude masks.  The variants are interleaved in every round so
that machine noise hits them alike; each round times ``--steps`` steps, and the median
over ``--rounds`` rounds is reported, with ratios to dense from the same run.

Target: masked <= 1.15 x dense, and no slower than torch.nn.utils.prune.

    python benchmarks/mask_overhead.py [--rounds 15] [--steps 30] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
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
    return {"dense": dense, "sparsity_lab": ours, "torch_prune": theirs}


def time_steps(model: nn.Module, opt, x, y, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return (time.perf_counter() - start) / steps


def bench(name, input_shape, batch, rounds, steps):
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
    runs = variants(name, input_shape)
    opts = {
        k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for k, m in runs.items()
    }
    for k, m in runs.items():  # warm-up: allocator, kernels, momentum buffers
        time_steps(m, opts[k], x, y, steps)
    samples = {k: [] for k in runs}
    for _ in range(rounds):
        for k, m in runs.items():
            samples[k].append(time_steps(m, opts[k], x, y, steps))
    med = {k: statistics.median(v) for k, v in samples.items()}
    # The masks held: every variant still has exactly the pruned zeros.
    assert sl.sparsity(runs["sparsity_lab"]) >= SPARSITY - 1e-6
    return {
        "model": name,
        "batch": batch,
        "median_step_ms": {k: 1e3 * v for k, v in med.items()},
        "ratio_to_dense": {k: med[k] / med["dense"] for k in med},
        "ours_vs_torch_prune": med["sparsity_lab"] / med["torch_prune"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "mask_overhead.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("lenet300", (784,)), ("lenet5", (1, 28, 28))]
    results = [bench(n, s, args.batch, args.rounds, args.steps) for n, s in cases]
    report = {
        "benchmark": "mask_overhead",
        "sparsity": SPARSITY,
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "results": results,
        "target": "sparsity_lab <= 1.15 x dense and <= torch_prune",
    }
    for r in results:
        ms, ratio = r["median_step_ms"], r["ratio_to_dense"]
        print(
            f"{r['model']:>9} batch {r['batch']}: dense {ms['dense']:.3f} ms | "
            f"sparsity_lab {ms['sparsity_lab']:.3f} ms ({ratio['sparsity_lab']:.3f}x) | "
            f"torch.nn.utils.prune {ms['torch_prune']:.3f} ms ({ratio['torch_prune']:.3f}x) | "
            f"ours / torch prune {r['ours_vs_torch_prune']:.3f}"
        )
        r["meets_target"] = ratio["sparsity_lab"] <= 1.15 and r["ours_vs_torch_prune"] <= 1.0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

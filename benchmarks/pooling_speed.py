"""LeNet-5's 2x2 max-pool: torch's kernel against :class:`sparsity_lab.pooling.MaxPool2x2`.

Times, on one thread, medians of ``--rounds`` interleaved rounds
(:func:`sparsity_lab.accel.time_interleaved`):

- the first pool alone (a ReLU'd 6x28x28 map per example), forward without a gradient and
  forward plus backward, at batch 1, 64, 128 and 1000;
- a LeNet-5 SGD training step (forward, backward, momentum) at batch 64 and 128 (the
  recipe's), and an evaluation forward at batch 1000, with either pool.

Before timing, it checks that the two give the same outputs and gradients bit for bit
(the fast pool changes no number, only the time).  Target: the fast pool is never slower
than torch's by more than 5%, or by more than 2 us where torch's takes a few (its size
switch keeps torch's kernel where that is as fast, at the cost of the test itself); the
training step's ratio is what the book's LeNet-5 notebooks gain.

    python benchmarks/pooling_speed.py [--rounds 15] [--threads 1]
                                       [--out results/pooling_speed.json]
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import run_info
import torch
import torch.nn.functional as F
from torch import nn

import sparsity_lab as sl
from sparsity_lab import accel, pooling

TOLERANCE, TOLERANCE_S = 1.05, 2e-6


def pools() -> dict[str, nn.Module]:
    return {"torch": nn.MaxPool2d(2, ceil_mode=True), "fast": pooling.MaxPool2x2(ceil_mode=True)}


def pool_alone(batch: int, rounds: int) -> list[dict]:
    x = torch.relu(torch.randn(batch, 6, 28, 28, generator=torch.Generator().manual_seed(0)))
    xg = x.clone().requires_grad_()
    g = torch.randn(batch, 6, 14, 14)
    outs = {k: torch.autograd.grad(p(xg), xg, g)[0] for k, p in pools().items()}
    assert torch.equal(outs["torch"], outs["fast"]), "the gradients differ"

    def no_grad(p):
        def fn():
            with torch.no_grad():
                p(x)

        return fn

    def with_grad(p):
        return lambda: torch.autograd.grad(p(xg), xg, g)

    rows = []
    for case, make in (("pool forward", no_grad), ("pool forward+backward", with_grad)):
        t = accel.time_interleaved({k: make(p) for k, p in pools().items()}, rounds)
        rows.append({"case": case, "batch": batch, "seconds": t})
    return rows


def lenet5_pair() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    fast = sl.models.build("lenet5", input_shape=(1, 28, 28), n_classes=10)
    theirs = copy.deepcopy(fast)
    theirs.pool = pools()["torch"]
    return {"torch": theirs, "fast": fast}


def lenet5_rows(rounds: int) -> list[dict]:
    rows = []
    for batch in (64, 128):
        x = torch.randn(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 10, (batch,), generator=torch.Generator().manual_seed(2))
        nets = lenet5_pair()
        opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in nets.items()}

        def step(k, nets=nets, opts=opts, x=x, y=y):
            def fn():
                opts[k].zero_grad()
                F.cross_entropy(nets[k](x), y).backward()
                opts[k].step()

            return fn

        for _ in range(3):  # the same steps first: the same weights
            step("torch")(), step("fast")()
        for a, b in zip(nets["torch"].parameters(), nets["fast"].parameters(), strict=True):
            assert torch.equal(a, b), "the trained weights differ"
        t = accel.time_interleaved({k: step(k) for k in nets}, rounds)
        rows.append({"case": "lenet5 train step", "batch": batch, "seconds": t})
    nets = {k: m.eval() for k, m in lenet5_pair().items()}
    x = torch.randn(1000, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(nets["torch"](x), nets["fast"](x)), "the outputs differ"

        def forward(k):
            return lambda: nets[k](x)

        t = accel.time_interleaved({k: forward(k) for k in nets}, rounds)
    rows.append({"case": "lenet5 evaluation", "batch": 1000, "seconds": t})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "pooling_speed.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [r for b in (1, 64, 128, 1000) for r in pool_alone(b, args.rounds)]
    rows += lenet5_rows(args.rounds)
    for r in rows:
        r["fast_over_torch"] = r["seconds"]["fast"] / r["seconds"]["torch"]
        slower = r["seconds"]["fast"] - r["seconds"]["torch"]
        r["meets_target"] = r["fast_over_torch"] <= TOLERANCE or slower <= TOLERANCE_S
        print(
            f"{r['case']:>22} batch {r['batch']:>4}: torch {r['seconds']['torch'] * 1e3:8.3f} ms, "
            f"fast {r['seconds']['fast'] * 1e3:8.3f} ms -> {r['fast_over_torch']:.2f}x the time "
            f"({'met' if r['meets_target'] else 'MISSED'})"
        )
    report = {
        "benchmark": "pooling_speed",
        "rounds": args.rounds,
        "threads": args.threads,
        "min_elements": pooling.MIN_ELEMENTS,
        "min_elements_grad": pooling.MIN_ELEMENTS_GRAD,
        **run_info.machine(load_before),
        "results": rows,
        "target": (
            f"fast pool <= {TOLERANCE} x torch's time, or <= {TOLERANCE_S * 1e6:.0f} us "
            "slower, everywhere; the same numbers"
        ),
    }
    print(f"load average before {load_before}, after {report['load_average_after']}")
    run_info.write(report, args.out)


if __name__ == "__main__":
    main()

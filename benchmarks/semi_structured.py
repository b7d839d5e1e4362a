"""2:4 semi-structured kernels on a GPU against dense, on the linear layers of a language
model's blocks.

Needs a CUDA GPU of compute capability 8.0 or more (torch's ``to_sparse_semi_structured``);
without one it says so, writes a report that records why nothing was measured, and exits 0,
so that it can run anywhere.  The layers are those of the decoder blocks of a
Llama-shaped model built from its widths (``--dim``, ``--hidden``; a 7B model is 4096 and
11008), pruned 2:4 by magnitude in half precision: q, k, v and o projections (dim x dim),
the MLP's gate and up (hidden x dim) and down (dim x hidden).  Each is timed as
``y = x W^T`` for a batch of ``--tokens`` tokens, dense and 2:4, interleaved over
``--rounds`` rounds with CUDA events; the medians and their ratio are reported, and the
outputs of the two are checked to agree.

    python benchmarks/semi_structured.py [--dim 4096] [--hidden 11008] [--tokens 2048]
"""

from __future__ import annotations

import argparse
import platform
import statistics
from pathlib import Path

import run_info
import torch

import sparsity_lab as sl
from sparsity_lab import accel


def layer_shapes(dim: int, hidden: int) -> dict[str, tuple[int, int]]:
    """(out, in) of every linear layer of one Llama-style block."""
    square = (dim, dim)
    return {"q": square, "k": square, "v": square, "o": square,
            "gate": (hidden, dim), "up": (hidden, dim), "down": (dim, hidden)}  # fmt: skip


def time_ms(fn, rounds: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for _ in range(rounds):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(start.elapsed_time(end))
    return statistics.median(samples)


def bench(name: str, shape: tuple[int, int], tokens: int, rounds: int) -> dict:
    from torch.sparse import to_sparse_semi_structured

    gen = torch.Generator(device="cuda").manual_seed(0)
    weight = torch.randn(*shape, device="cuda", dtype=torch.float16, generator=gen)
    layer = torch.nn.Linear(shape[1], shape[0], bias=False).half().cuda()
    with torch.no_grad():
        layer.weight.copy_(weight)
    sl.prune(layer, "magnitude", None, pattern="2:4")
    pruned = sl.masks.weight(layer, "weight").detach().contiguous()
    sparse = to_sparse_semi_structured(pruned)
    x = torch.randn(tokens, shape[1], device="cuda", dtype=torch.float16, generator=gen)
    dense_out, sparse_out = x @ pruned.T, torch.mm(sparse, x.T).T
    error = float((dense_out - sparse_out).abs().max() / dense_out.abs().max())
    for _ in range(10):  # warm-up
        torch.mm(sparse, x.T)
        x @ pruned.T
    dense_ms, sparse_ms = [], []
    for _ in range(rounds):  # interleaved, so that clock changes hit both alike
        dense_ms.append(time_ms(lambda: x @ pruned.T, 1))
        sparse_ms.append(time_ms(lambda: torch.mm(sparse, x.T), 1))
    d, s = statistics.median(dense_ms), statistics.median(sparse_ms)
    return {"layer": name, "shape": list(shape), "tokens": tokens, "dense_ms": d,
            "semi_structured_ms": s, "speedup": d / s, "max_relative_error": error}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=11008)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "semi_structured.json")
    )
    args = parser.parse_args()
    report = {
        "benchmark": "semi_structured",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dim": args.dim,
        "hidden": args.hidden,
        "tokens": args.tokens,
        "rounds": args.rounds,
    }
    if not accel.gpu_available():
        report["skipped"] = "no CUDA GPU of compute capability >= 8.0: nothing measured"
        print(report["skipped"])
    else:
        report["device"] = torch.cuda.get_device_name()
        report["results"] = [
            bench(name, shape, args.tokens, args.rounds)
            for name, shape in layer_shapes(args.dim, args.hidden).items()
        ]
        for r in report["results"]:
            print(
                f"{r['layer']:>4} {r['shape']}: dense {r['dense_ms']:.3f} ms, 2:4 "
                f"{r['semi_structured_ms']:.3f} ms, speed-up {r['speedup']:.2f}x "
                f"(max relative error {r['max_relative_error']:.1e})"
            )
    run_info.write(report, args.out)


if __name__ == "__main__":
    main()

"""Second-order pruning: one-shot quality, and the cost of WoodFisher and SparseGPT.

Quality: the benchmark harness (:mod:`sparsity_lab.bench`) runs the config
``benchmarks/configs/second-order-lenet300-mnist.yaml``: LeNet-300-100 on the MNIST subset,
the recipe's dense model of each seed (``recipes.dense``) pruned once, without fine-tuning
(``finetune_epochs: 0``, so ``test_accuracy`` is the pruned model's), by OBD, the diagonal
Fisher, WoodFisher, K-FAC and M-FAC (the table of notebook 02i) and, as the OBS-style
method that fits this model, layer-wise SparseGPT (exact OBS per layer on the
reconstruction Hessian), beside the harness's mandatory baselines: the dense model, global
and uniform magnitude, and the random mask with global magnitude's per-layer counts
(``recipes.random_like``).  Exact ``obs`` needs the full ``P x P`` Hessian, which for
P = 266,200 weights is 567 GB: it is left out.  The data-driven criteria see the first 4
training batches of the seed's order (``calibration_batches: 4``).  The harness measures
every run on the test split with its sanity flags, and also records the accuracy right
after pruning on the *validation* split (``pruned_accuracy``; without fine-tuning it is the
same model's) and each run's latency on its exported copy.  Runs are cached as they finish
(``--cache``, the one ``sparsity-lab bench`` uses by default), so the command of the
config's header and this script share them.  The table and its manifest (versions, commit,
seeds, data-split hashes, each seed's dense baseline) are written beside the JSON
(``bench.write``).  The JSON records the table's runs and the check "at or above global
magnitude, with a gap that widens with the sparsity" as paired differences over seeds
(``sl.stats.paired``), with the verdict on ``woodfisher_beats_magnitude`` of
``sl.claims.CLAIMS``.  Changed from this script's own loop, which predates the harness:
the runs follow the config's ``threads: 1`` (``--threads`` now sets the cost part's
threads only); the seeds and sparsities are the config's (no longer ``--seeds`` and
``--sparsities``); a run's time is the harness's ``prune_seconds`` (pruning plus
measuring, where it was pruning alone); and the random baseline is labelled as the
harness labels it, ``random (magnitude's layer counts)``.

Cost, each measured alone in this process (peak resident memory reset before each call
through ``/proc/self/clear_refs``; the extra memory is the peak minus the memory in use
before the call):

* WoodFisher's block inverse and OBS update on 266,200 weights (LeNet-300-100's size)
  against the block size and the number of gradients;
* OBC's ExactOBS on a 256 x 256 layer with 1024 calibration rows (``rows * cols^3``), in
  both precisions, as below;
* SparseGPT on 1024 x 1024 and 4096 x 4096 layers with 2048 calibration rows, solved in
  float64 (the reference) and in float32 (``precision="float32"``, the paper code's
  precision), with the float32 reconstruction error relative to float64's.  Two
  times are recorded: building the Hessian ``2 X^T X / n`` from the calibration rows
  (``hessian_seconds``) and the solver on a given Hessian (``solver_seconds``); the target
  is checked on their sum (``seconds``).  The memory is the solver's alone, against the
  Hessian it is given.

Targets: SparseGPT on 4096 x 4096 under 60 s on 2 threads, and its peak extra memory
within 3x the layer's Hessian (4096^2 float64 entries), in both precisions; float32 within
1.5x of the memory of a float32 solve that keeps only ``H``, ``H^-1`` and ``W`` (the
paper's code: 1.5 float64 Hessians), with its error within 0.1% of float64's.

    python benchmarks/second_order.py [--threads 2] [--config CONFIG] [--cache DIR] [--quick]
                                      [--only quality cost] [--out JSON]

To change the seeds or the sparsities, edit the config or pass another with ``--config``.
``--quick`` is a smoke pass: the quality part on the small ``digits`` data with seeds 0 and
1, sparsities 50% and 90%, WoodFisher and uniform SparseGPT beside the baselines (the
table is ``second-order-lenet300-digits-quick``), and shorter cost sweeps.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # a script: write the figure to a file, never open a window
import matplotlib.pyplot as plt
import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab import bench, curvature, recipes
from sparsity_lab.criteria import layerwise, second_order

CONFIG = Path(__file__).parent / "configs" / "second-order-lenet300-mnist.yaml"
RESULTS = Path(__file__).parent / "results"
GLOBAL_MAGNITUDE = "magnitude (global)"
#: methods checked against global magnitude: "at or above it, with a widening gap"
COMPARED = ["woodfisher", "kfac", "mfac", "sparsegpt (uniform)", "sparsegpt (global)"]
#: ``--quick``: the small digits data, two seeds, and two sparsities, so that a gap can
#: still be seen to widen
QUICK = {"data": "digits", "seeds": [0, 1], "sparsities": [0.5, 0.9]}
#: ``--quick``'s methods besides the baselines: the claim's and one layer-wise solver
QUICK_METHODS = ["woodfisher", "sparsegpt (uniform)"]


def memory_kib() -> dict[str, int]:
    """Current and peak resident memory of this process (Linux), in KiB."""
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"{k}:\s+(\d+)", text).group(1)) for k in ("VmRSS", "VmHWM")}


def measure(fn) -> dict[str, float]:
    """Wall seconds, CPU seconds (all threads) and peak extra MiB of ``fn()``.

    CPU time is reported beside wall time because a busy machine stretches the wall time
    but not the work done.
    """
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current use
    before = memory_kib()["VmRSS"]
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return {
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "extra_mib": (memory_kib()["VmHWM"] - before) / 1024,
    }


def load_config(path: str | Path, quick: bool) -> dict[str, Any]:
    """The quality part's benchmark config, checked; ``quick`` makes its smoke pass."""
    config = bench.load_config(path)
    if not quick:
        return config
    methods = [entry for entry in config["methods"] if entry["label"] in QUICK_METHODS]
    # a name of its own that says its data, so a smoke pass never overwrites the stored table
    name = config["name"].replace(config["data"], QUICK["data"]) + "-quick"
    return {**config, **QUICK, "name": name, "methods": methods}


def quality(config: dict[str, Any], cache_dir: str, out_dir: Path) -> tuple[pd.DataFrame, dict]:
    """Run the config with the harness and write its table and manifest to ``out_dir``.

    Returns the table and each seed's dense baseline as the manifest records it (test and
    validation accuracy, the recipe's expectation, the dense model's flags).
    """
    table = bench.run(config, cache_dir=cache_dir)
    csv_path, manifest_path = bench.write(table, config, out_dir)
    print(f"wrote {csv_path} and {manifest_path}")
    dense = json.loads(manifest_path.read_text())["dense"]
    return table, {seed: dense[str(seed)] for seed in config["seeds"]}


def woodfisher_cost(blocks: list[int], grads: list[int], size: int = 266_200) -> list[dict]:
    """Time and memory of the block inverse plus the OBS update, and the two parts apart.

    The inverse adds ``chunk = min(32, B)`` gradients per pass, each pass factorising one
    ``chunk x chunk`` matrix per block; the update factorises one ``B x B`` matrix per block.
    Batched small factorisations on the CPU run one LAPACK call per matrix, so besides the
    ``N P B`` multiply-adds the time has a part proportional to the number of calls,
    ``n_blocks * ceil(N / chunk)``, recorded as ``factorisations``.
    """
    rows = []
    gen = torch.Generator().manual_seed(0)
    for block, n in [(b, 128) for b in blocks] + [(64, n) for n in grads if n != 128]:
        g = torch.randn(n, size, generator=gen, dtype=torch.float64)
        w = torch.randn(size, generator=gen, dtype=torch.float64)
        pruned = torch.rand(size, generator=gen) < 0.9
        result, split = {}, {}

        def run(g=g, w=w, pruned=pruned, block=block, result=result, split=split):
            start = time.perf_counter()
            result["blocks"] = curvature.woodbury_block_inverse(g, block, 1e-3)
            split["inverse_seconds"] = time.perf_counter() - start
            start = time.perf_counter()
            second_order.blockwise_obs_update(w, result["blocks"], pruned)
            split["update_seconds"] = time.perf_counter() - start

        cost = measure(run)
        n_blocks = -(-size // block)
        chunk = min(32, block)  # woodbury_block_inverse's default chunk, capped at B
        rows.append(
            {
                "block_size": block,
                "n_grads": n,
                **cost,
                **split,
                "n_blocks": n_blocks,
                "factorisations": n_blocks * -(-n // chunk),
                "multiply_adds": n * size * block,
            }
        )
        print(
            f"woodfisher B={block:4d} N={n:4d}: {cost['seconds']:6.2f} s "
            f"(cpu {cost['cpu_seconds']:6.2f} s; inverse {split['inverse_seconds']:6.2f} s, "
            f"update {split['update_seconds']:6.2f} s), {cost['extra_mib']:7.1f} MiB extra, "
            f"{rows[-1]['factorisations']:,} small factorisations"
        )
        del g, w, pruned, result
    return rows


def layerwise_cost(solver: str, sizes: list[int], rows_calib: int = 2048) -> list[dict]:
    """Hessian and solver cost of ``solver`` (``layerwise.sparsegpt`` or ``.obc``) per layer
    size, pruning half the weights, in float64 and in float32."""
    out = []
    gen = torch.Generator().manual_seed(0)
    for d in sizes:
        # correlated inputs, as real activations are: a random mixing of white noise
        x = torch.randn(rows_calib, d, generator=gen) @ (torch.randn(d, d, generator=gen) / d**0.5)
        hold = {}

        def build(x=x, hold=hold):  # what the layer-wise criterion does with the inputs
            hold["h"] = (2 * x.T.double() @ x.double() / rows_calib).float()

        hessian = measure(build)
        h = hold.pop("h")
        w = torch.randn(d, d, generator=gen)
        hessian_mib = d * d * 8 / 2**20  # float64, the reference precision of the solver
        errors = {}
        for precision, dtype in (("float64", torch.float64), ("float32", torch.float32)):
            result = {}

            def solve(w=w, h=h, dtype=dtype, result=result):
                solve_layer = getattr(layerwise, solver)
                result["w"], _ = solve_layer(w, h, w.numel() // 2, dtype=dtype)

            cost = measure(solve)
            rows_seen = x[:512]  # the error on calibration rows, relative to the float64 one
            errors[precision] = layerwise.reconstruction_error(w, result.pop("w"), rows_seen)
            out.append(
                {
                    "solver": solver,
                    "layer": f"{d}x{d}",
                    "precision": precision,
                    "calibration_rows": rows_calib,
                    "hessian_seconds": hessian["seconds"],
                    "solver_seconds": cost["seconds"],
                    "seconds": hessian["seconds"] + cost["seconds"],
                    "cpu_seconds": hessian["cpu_seconds"] + cost["cpu_seconds"],
                    "extra_mib": cost["extra_mib"],
                    "hessian_mib": hessian_mib,
                    "extra_over_hessian": cost["extra_mib"] / hessian_mib,
                    "error_over_float64": errors[precision] / errors["float64"],
                }
            )
            row = out[-1]
            print(
                f"{solver} {d}x{d} {precision}: {row['seconds']:6.2f} s = Hessian "
                f"{hessian['seconds']:.2f} s + solver {cost['seconds']:.2f} s "
                f"(cpu {row['cpu_seconds']:6.2f} s), solver {cost['extra_mib']:7.1f} MiB extra "
                f"({row['extra_over_hessian']:.2f} x the {hessian_mib:.0f} MiB float64 Hessian), "
                f"error {row['error_over_float64']:.6f} x float64's"
            )
        del h, w, x
    return out


def gap_check(runs: pd.DataFrame, method: str, setting: str) -> dict:
    """``method`` minus global magnitude, paired over seeds at each sparsity: at or above
    (the paired interval's verdict) everywhere, and a mean gap that does not shrink."""
    diffs = sl.stats.paired(
        runs, "method", method, GLOBAL_MAGNITUDE, metric="test_accuracy", by="target_sparsity"
    )
    verdicts = set(diffs["verdict"])
    at_or_above = sl.stats.WORSE not in verdicts
    widening = bool((diffs["mean_diff"].diff().dropna() >= 0).all())
    status = (
        "missed"
        if not (at_or_above and widening)
        else "met"
        if verdicts <= {sl.stats.BETTER, sl.stats.NO_DIFFERENCE}
        else "inconclusive"  # one seed, or no spread: no interval
    )
    out = {
        "method": method,
        "paired": diffs.to_dict(orient="records"),
        "numbers": {
            str(row["target_sparsity"]): sl.stats.describe(row) for _, row in diffs.iterrows()
        },
        "at_or_above_everywhere": at_or_above,
        "widening": widening,
        "status": status,
    }
    if method == "woodfisher":
        claims = []
        for _, row in diffs.iterrows():
            sparsity = row["target_sparsity"]
            v = sl.claims.verdict(
                "woodfisher_beats_magnitude", row, setting=f"{setting}, one-shot at {sparsity:.0%}"
            )
            claims.append({"sparsity": sparsity, "status": v.status, "numbers": v.numbers()})
        out["claim"] = {"key": "woodfisher_beats_magnitude", "verdicts": claims}
    return out


def figure(runs: pd.DataFrame | None, woodfisher: list[dict], path: Path) -> None:
    """One-shot accuracy per method (when the quality part ran) and WoodFisher's cost
    sweeps (empty when the cost part did not)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    if runs is not None:
        table = sl.experiments.summarize(runs, ["method", "target_sparsity"], "test_accuracy")
        for method, group in table.groupby("method", sort=False):
            axes[0].errorbar(
                group["target_sparsity"], group["mean"], yerr=group["std"], marker="o", label=method
            )
        axes[0].legend(fontsize=7)
    axes[0].set(xlabel="sparsity", ylabel="test accuracy, no fine-tuning", title="One-shot quality")
    sweeps = [
        (
            axes[1],
            sorted((r for r in woodfisher if r["n_grads"] == 128), key=lambda r: r["block_size"]),
            "block_size",
            "block size B (N = 128 gradients)",
        ),
        (
            axes[2],
            sorted((r for r in woodfisher if r["block_size"] == 64), key=lambda r: r["n_grads"]),
            "n_grads",
            "gradients N (B = 64)",
        ),
    ]
    for ax, rows, key, label in sweeps:
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["seconds"] for r in rows], "o-", label="seconds")
        ax.set(xscale="log", xlabel=label, ylabel="seconds", title="WoodFisher on 266,200 weights")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        twin = ax.twinx()
        twin.plot(xs, [r["extra_mib"] for r in rows], "s--", color="C1", label="extra MiB")
        twin.set_ylabel("peak extra memory (MiB)")
        ax.legend(loc="upper left", fontsize=7)
        twin.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def print_quality(report: dict, runs: pd.DataFrame, flagged: pd.DataFrame) -> None:
    """The quality part's summary, flags and checks, as measured."""
    epochs = report["dense_recipe"]["epochs"]
    dense = ", ".join(
        f"seed {seed} {info['test_accuracy']:.3f} {info['flags']}".rstrip()
        for seed, info in report["dense"].items()
    )
    print(f"dense (the recipe's {epochs} epochs): {dense}")
    summary = sl.experiments.summarize(runs, ["method", "target_sparsity"], "test_accuracy")
    summary["cell"] = [
        f"{m:.3f} ± {s:.3f}" for m, s in zip(summary["mean"], summary["std"], strict=True)
    ]
    print(f"test accuracy, mean ± std over seeds {report['seeds']}, no fine-tuning:")
    print(summary.pivot(index="method", columns="target_sparsity", values="cell").to_string())
    print(
        "No sanity flag fired."
        if flagged.empty
        else "flagged runs:\n" + flagged.to_string(index=False)
    )
    print("\nat or above global magnitude, the gap widening (paired over seeds):")
    for check in report["gap_vs_global_magnitude"]:
        gaps = "; ".join(f"{float(k):.0%}: {v}" for k, v in check["numbers"].items())
        print(
            f"  [{check['status']}] {check['method']} - global magnitude: {gaps}; "
            f"widening: {check['widening']}"
        )
        for v in check.get("claim", {}).get("verdicts", []):
            print(
                f"      claim woodfisher_beats_magnitude at {v['sparsity']:.0%}: "
                f"{v['status']} ({v['numbers']})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="the cost part's threads")
    parser.add_argument("--config", default=str(CONFIG), help="the quality part's benchmark")
    parser.add_argument(
        "--cache", default=".cache/bench", help="finished runs of the harness, reused on a rerun"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke pass: digits, 2 seeds, fewer sizes"
    )
    parser.add_argument(
        "--only", nargs="+", choices=["quality", "cost"], default=["quality", "cost"]
    )
    parser.add_argument(
        "--out",
        default=None,
        help="default: results/second_order[_quick].json; the table goes to its folder",
    )
    args = parser.parse_args()
    # a quick check must never overwrite the stored full run
    quick = "_quick" if args.quick else ""
    out = Path(args.out or RESULTS / f"second_order{quick}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    config = load_config(args.config, args.quick)
    blocks = [32, 128] if args.quick else [16, 32, 64, 128, 256]
    grads = [32, 128] if args.quick else [32, 64, 128, 256]
    recipe = recipes.recipe_for(config["model"], config["data"])
    report = {
        "benchmark": "second_order",
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "quick": args.quick,
        "parts": args.only,
        "config": config,
        "seeds": config["seeds"],
        "dense_recipe": recipe.training(),
        "sparsities": config["sparsities"],
        "finetune": {"epochs": config["finetune_epochs"], "note": "one-shot, no fine-tuning"},
        "methods": {e["label"]: [e["method"], e["options"]] for e in config["methods"]},
        "baselines": {label: [m, options] for label, m, options in bench.BASELINES},
        "left_out": {
            "obs": "exact Hessian of 266,200 weights: 266,200^2 float64 entries = 567 GB",
            "lobs, obc": "row-wise greedy OBS on 784-input layers: minutes per sparsity",
        },
        "woodfisher": [],
    }
    if "cost" in args.only:
        report["sparsegpt"] = layerwise_cost("sparsegpt", [1024, 4096])
        report["obc"] = layerwise_cost("obc", [256], rows_calib=1024)
        report["woodfisher"] = woodfisher_cost(blocks, grads)
        report["target"] = (
            "sparsegpt 4096x4096 (Hessian + solver): < 60 s on 2 threads, solver "
            "extra memory <= 3x its Hessian"
        )
        big = [r for r in report["sparsegpt"] if r["layer"] == "4096x4096"]
        single = next(r for r in big if r["precision"] == "float32")
        report["meets_target"] = all(
            r["seconds"] < 60 and r["extra_over_hessian"] <= 3 for r in big
        ) and (single["extra_over_hessian"] <= 1.5 * 1.5 and single["error_over_float64"] < 1.001)
        # on a busy machine the wall time stretches; the CPU time over the threads does not
        report["meets_target_by_cpu_time"] = report["meets_target"] and all(
            r["cpu_seconds"] / args.threads < 60 for r in big
        )
    runs = None
    if "quality" in args.only:
        table, report["dense"] = quality(config, args.cache, out.parent)
        runs = table[table["criterion"] != "dense"]  # the dense model is reported apart
        # through pandas' JSON: a missing number (perplexity, on images) becomes null
        report["quality"] = json.loads(runs.to_json(orient="records"))
        flagged = sl.flags.table(runs, ["method", "target_sparsity"])
        report["flagged"] = flagged.to_dict(orient="records")
        setting = f"{config['model']} on {config['data']}"
        present = set(runs["method"])
        report["gap_vs_global_magnitude"] = [
            gap_check(runs, method, setting) for method in COMPARED if method in present
        ]
    out.write_text(json.dumps(report, indent=2, default=_plain))
    figure(runs, report["woodfisher"], out.with_suffix(".png"))
    if runs is not None:
        print_quality(report, runs, flagged)
    if "cost" in args.only:
        print(
            f"meets target: {report['meets_target']} (by CPU time: "
            f"{report['meets_target_by_cpu_time']})"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


if __name__ == "__main__":
    main()

"""Granularity of sparsity: accuracy of each pattern at equal sparsity, and shrink's speed.

**Accuracy.**  The benchmark harness (:mod:`sparsity_lab.bench`) runs one config per model,
``benchmarks/configs/granularity-lenet300-mnist.yaml`` (LeNet-300-100, flat MNIST) and
``granularity-lenet5-mnist.yaml`` (the small CNN, LeNet-5 on 28x28 MNIST images): for each
of the config's seeds, the recipe's dense model (``recipes.dense``) is pruned by magnitude
with the uniform budget under each pattern (unstructured, N:M, 4x4 blocks, channels,
inputs) at each sparsity (50, 75, 90%), fine-tuned with its mask fixed for the same budget
(``finetune_epochs`` at ``finetune_lr``; epochs and FLOPs recorded) and measured on the
test split with the sanity flags.  The classifier and the layers a pattern does not fit
stay dense but count in the sparsity (each method entry's ``dense:`` option), so that the
other layers take their share of the zeros.  N:M fixes its sparsity by N and M: the
harness runs an N:M entry once, at that sparsity (2:4 at 50%, 1:4 at 75%), and with M = 4
none reaches 90% (reported here as not reachable).  That sparsity holds over the layers
N:M prunes, so with the classifier (and LeNet-5's convolutions) dense the model stays
below it; the measured sparsity is recorded with each run.  Each table also holds the
harness's mandatory baselines (the dense model, global and uniform magnitude with the
classifier pruned too, a random mask with global magnitude's layer counts), summarised
here but not part of the expected order.  Each table and its manifest (versions, commit,
seeds, data-split hashes, each seed's dense baseline) is written beside the JSON
(``bench.write``); runs are cached as they finish (``--cache``, the one ``sparsity-lab
bench`` uses by default), so the commands in the configs' headers and this script share
them.  Changed from this script's own loop, which predates the harness: an N:M run's
flags now check its fixed sparsity (before it had no target to check), so a shortfall of
more than half a point is flagged "target sparsity not reached"; the seeds and the
fine-tuning budget are the configs' (no longer ``--seeds`` and ``--finetune-epochs``); and
every run's latency is timed on its exported copy.

**Speed.**  ``shrink_speed.py``'s measurement at ``--batch`` and at 8 times that batch:
each model pruned to half of its channels by :func:`sparsity_lab.shrink.prune_coupled`,
exported dense-shaped and shrunk with the same inference passes, timed interleaved, and
compared with the ideal (FLOP) speed-up, with the speed-up its weighted kernels alone give
as the measured reason for a miss (see that script; it also times batches 1 and 64).

What to expect: at equal sparsity unstructured >= N:M >= block >= channel in accuracy,
each step checked by paired differences over seeds (``sl.stats.paired``: missed only when
the interval is below 0), with the verdict on ``unstructured_beats_channel`` of
``sl.claims.CLAIMS``; the shrunk model runs at >= 0.7 x the ideal speedup over the masked
dense-shaped model (both exported).  The verdicts are recorded as measured, met or missed.

    python benchmarks/granularity.py [--configs A.yaml B.yaml] [--cache DIR]
                                     [--rounds 15] [--batch 128] [--threads 1] [--quick]
                                     [--out JSON]

``--quick`` is a smoke pass: the accuracy part on the small ``digits`` data (its 8x8
images) with seeds 0 and 1, sparsities 50% and 75% and one fine-tuning epoch (the tables
are ``granularity-<model>-digits-quick``), and 3 timing rounds.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import shrink_speed
import torch

import sparsity_lab as sl
from sparsity_lab import bench, patterns, recipes

CONFIGS = [
    Path(__file__).parent / "configs" / f"granularity-{model}-mnist.yaml"
    for model in ("lenet300", "lenet5")
]
RESULTS = Path(__file__).parent / "results"
EXPECTED_ORDER = ["unstructured", "nm", "block:4x4", "channel"]
#: ``--quick``: the small digits data, two seeds, one fine-tuning epoch, and the sparsities of
#: 2:4 and 1:4 (at 90%, LeNet-5's 8x8 digits leave too few weights outside the layers 4x4
#: blocks keep dense)
QUICK = {"data": "digits", "seeds": [0, 1], "sparsities": [0.5, 0.75], "finetune_epochs": 1}


def load_config(path: str | Path, quick: bool) -> dict[str, Any]:
    """A model's benchmark config, checked; ``quick`` makes its smoke pass."""
    config = bench.load_config(path)
    if not quick:
        return config
    # a name of its own that says its data, so a smoke pass never overwrites the stored table
    name = config["name"].replace(config["data"], QUICK["data"]) + "-quick"
    return {**config, **QUICK, "name": name}


def pattern_family(options: str) -> str:
    """The pattern of a run's options (the table's JSON), with every N:M as ``"nm"``: the
    expected order ranks N:M as one granularity, whichever sparsity fixes its N."""
    spec = json.loads(options).get("pattern", "unstructured")
    return "nm" if isinstance(patterns.get(spec), patterns.NM) else spec


def accuracy_runs(
    config: dict[str, Any], cache_dir: str, out_dir: Path
) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Run a model's config with the harness and write its table and manifest to ``out_dir``.

    Returns the table with each run's ``pattern`` (:func:`pattern_family`; None for the
    harness's baselines) and its ``change`` from its seed's dense model, and each seed's
    dense baseline as the manifest records it.
    """
    table = bench.run(config, cache_dir=cache_dir)
    csv_path, manifest_path = bench.write(table, config, out_dir)
    print(f"wrote {csv_path} and {manifest_path}")
    dense = json.loads(manifest_path.read_text())["dense"]
    patterned = table["method"].isin([entry["label"] for entry in config["methods"]])
    table = table.assign(
        pattern=table["options"].map(pattern_family).where(patterned, None),
        change=table["test_accuracy"] - table["dense_test_accuracy"],
    )
    per_seed = {f"{config['model']} seed {seed}": dense[str(seed)] for seed in config["seeds"]}
    return table, per_seed


def not_reachable(config: dict[str, Any], runs: pd.DataFrame) -> list[dict]:
    """The (pattern, sparsity) cells of a config without a run: the sparsities an N:M
    pattern, whose N and M fix its sparsity, cannot be pruned to."""
    ran = set(zip(runs["pattern"], runs["target_sparsity"], strict=True))
    return [
        {"model": config["model"], "pattern": pattern, "sparsity": sparsity}
        for pattern in dict.fromkeys(runs["pattern"].dropna())
        for sparsity in config["sparsities"]
        if (pattern, sparsity) not in ran
    ]


def order_checks(df: pd.DataFrame) -> list[dict]:
    """Each step of the expected order, paired over seeds, per model and sparsity (the
    runs of the patterns; a step of a sparsity one pattern does not reach is left out)."""
    out = []
    steps = list(zip(EXPECTED_ORDER, EXPECTED_ORDER[1:], strict=False))
    steps.append(("unstructured", "channel"))  # the claim's comparison
    for model in dict.fromkeys(df["model"]):
        part = df[df["model"] == model]
        data = part["data"].iloc[0]
        for better, worse in steps:
            if not {better, worse} <= set(part["pattern"]):
                continue
            diffs = sl.stats.paired(
                part, "pattern", better, worse, metric="test_accuracy", by="target_sparsity"
            )
            for _, row in diffs.iterrows():
                status = (
                    "inconclusive"
                    if row["n"] < 2
                    else "missed"
                    if row["verdict"] == "worse"
                    else "met"
                )
                entry = {
                    "expectation": f"{better} >= {worse}",
                    "model": model,
                    "sparsity": row["target_sparsity"],
                    "status": status,
                    "paired": {k: row[k] for k in ("mean_diff", "ci_low", "ci_high", "n")},
                    "numbers": sl.stats.describe(row),
                }
                if (better, worse) == ("unstructured", "channel"):
                    v = sl.claims.verdict(
                        "unstructured_beats_channel",
                        row,
                        setting=f"{model} on {data} at {row['target_sparsity']:.0%}",
                    )
                    entry["claim"] = {
                        "key": "unstructured_beats_channel",
                        "status": v.status,
                        "numbers": v.numbers(),
                    }
                out.append(entry)
    return out


def figure(runs: pd.DataFrame, speed: list[dict], path: Path) -> None:
    """Each pattern's accuracy change per model, and the shrunk models' speedups."""
    models_ = list(dict.fromkeys(runs["model"]))
    fig, axes = plt.subplots(1, len(models_) + 1, figsize=(5 * (len(models_) + 1), 4))
    for ax, m in zip(axes, models_, strict=False):
        # paired with each seed's own dense model, so the dense models' spread cancels
        part = runs[runs["model"] == m]
        sl.viz.sparsity_curve(
            part, x="target_sparsity", y="change", hue="pattern", ax=ax, baseline=0.0
        )
        ax.set_xlabel("sparsity")
        ax.set_ylabel("test accuracy - dense (mean, 95% CI)")
        ax.set_title(f"{m}: accuracy after equal fine-tuning")
    ax = axes[-1]
    labels = [f"{s['model']}, batch {s['batch']}" for s in speed]
    xs = range(len(speed))
    ax.bar([x - 0.2 for x in xs], [s["ideal_speedup"] for s in speed], 0.4, label="ideal (FLOPs)")
    ax.bar([x + 0.2 for x in xs], [s["speedup"] for s in speed], 0.4, label="measured")
    ax.set_xticks(list(xs), labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("speedup of shrunk over dense-shaped (exported)")
    ax.set_title("50% of channels removed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        default=[str(path) for path in CONFIGS],
        help="the accuracy part's benchmarks, one per model",
    )
    parser.add_argument(
        "--cache", default=".cache/bench", help="finished runs of the harness, reused on a rerun"
    )
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="digits, two seeds, two sparsities, 1 fine-tuning epoch, 3 rounds: a check",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="default: results/granularity[_quick].json; the tables go to its folder",
    )
    args = parser.parse_args()
    # a quick check must never overwrite the stored full run
    out = Path(args.out or RESULTS / f"granularity{'_quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.rounds = 3
    started = time.time()
    configs = [load_config(path, args.quick) for path in args.configs]
    tables, dense, unreachable = [], {}, []
    for config in configs:
        table, per_seed = accuracy_runs(config, args.cache, out.parent)
        tables.append(table)
        dense |= per_seed
        unreachable += not_reachable(config, table[table["pattern"].notna()])
    table = pd.concat(tables, ignore_index=True)
    measured = table[table["criterion"] != "dense"]  # each seed's dense model is reported apart
    runs = measured[measured["pattern"].notna()]  # the patterns, without the baselines
    summary = sl.stats.summarize(measured, ["model", "method", "target_sparsity"], "test_accuracy")
    flagged = sl.flags.table(measured, ["model", "method", "target_sparsity"])
    order = order_checks(runs)
    speed = []
    for batch in (args.batch, args.batch * 8):  # does a larger batch close the gap?
        for label, name, shape, options, applies in shrink_speed.MODELS:
            row = shrink_speed.measure(label, name, shape, options, batch, args.rounds)
            row["target_applies"] = applies
            row["meets_target"] = row["fraction_of_ideal"] >= shrink_speed.TARGET
            speed.append(row)
    for name, info in dense.items():
        print(f"dense {name}: test {info['test_accuracy']:.4f} {info['flags']}".rstrip())
    for s in summary.itertuples():
        print(
            f"{s.model:>9} {s.method:>34} {s.target_sparsity:.0%}: {s.mean:.4f} "
            f"[{s.ci_low:.4f}, {s.ci_high:.4f}] ({s.n} seeds)"
        )
    for cell in unreachable:
        print(
            f"{cell['model']:>9} {cell['pattern']:>34} {cell['sparsity']:.0%}: not reachable "
            "(its N and M fix the sparsity)"
        )
    print("No sanity flag fired." if flagged.empty else flagged.to_string(index=False))
    print("\nexpected order, each step paired over seeds (missed: the interval below 0):")
    for c in order:
        print(f"  [{c['status']}] {c['expectation']} ({c['model']}, {c['sparsity']:.0%}): "
              f"{c['numbers']}")  # fmt: skip
        if "claim" in c:
            print(f"      claim {c['claim']['key']}: {c['claim']['status']} "
                  f"({c['claim']['numbers']})")  # fmt: skip
    for s in speed:
        ms = s["median_ms"]
        print(
            f"{s['model']:>16} batch {s['batch']}: exported dense {ms['exported dense']:.2f} "
            f"ms, exported shrunk {ms['exported shrunk']:.2f} ms; speedup {s['speedup']:.2f}x "
            f"of ideal {s['ideal_speedup']:.2f}x ({s['fraction_of_ideal']:.2f}): target >= "
            f"{shrink_speed.TARGET} {'MET' if s['meets_target'] else 'MISSED'}"
            f"{'' if s['target_applies'] else ' (context)'}; compiled (dense, shrunk) "
            f"{s['compiled']['dense']}, {s['compiled']['shrunk']}; per-layer weighted kernels "
            f"{s['kernel_bound']:.2f}x; max diff of our models "
            f"{max(v for k, v in s['max_abs_diff'].items() if k != 'torch_pruning'):.1e}"
        )
    report = {
        "benchmark": "granularity",
        "configs": configs,
        "seeds": {c["model"]: c["seeds"] for c in configs},
        "dense": {
            "recipes": {
                c["model"]: recipes.recipe_for(c["model"], c["data"]).training() for c in configs
            },
            "per_seed": dense,
        },
        "finetune_epochs": {c["model"]: c["finetune_epochs"] for c in configs},
        "rounds": args.rounds,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "seconds": round(time.time() - started, 1),
        # through pandas' JSON: a missing number (perplexity, on images) becomes null
        "accuracy_runs": json.loads(measured.to_json(orient="records")),
        "not_reachable": unreachable,
        "accuracy": summary.to_dict(orient="records"),
        "flagged": flagged.to_dict(orient="records"),
        "expected_order": order,
        "speed": speed,
        "quick": args.quick,
        "target": "accuracy: unstructured >= nm >= block >= channel; speed >= 0.7 x ideal",
        "speed_target_met": {f"{s['model']} batch {s['batch']}": s["meets_target"] for s in speed},
    }
    out.write_text(json.dumps(report, indent=2, default=str))
    figure(runs, speed, out.with_suffix(".png"))
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()

"""Phenomena of sparse networks: every figure of notebooks 05a-05e from the command line.

Runs the eight experiments of ``sparsity_lab.phenomena`` with several seeds and writes one
JSON with every run and its summary (mean and 95% Student-t interval over seeds) plus one
PNG per phenomenon under ``benchmarks/results/``.  Every dense model is the setting's
recipe (``recipes.dense``, through the phenomena functions), every training follows the
recipe, every run carries its sanity flags, and each comparison is a paired difference over
seeds (``sl.stats.paired``) with the verdict on its claim of ``sl.claims.CLAIMS`` where
there is one.  Nothing is tuned to agree with the literature: each summary is what was
measured.

    python benchmarks/phenomena.py [--quick] [--seeds 0 1 2] [--only structure occam ...]

``--quick`` shortens the epochs (overriding the recipes', recorded under ``sizes``),
shrinks the MNIST-1D draws and the grids, and keeps two seeds: a pass of a few minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: write files, open no window

import matplotlib.pyplot as plt
import pandas as pd
import torch

import sparsity_lab as sl
from sparsity_lab import recipes
from sparsity_lab.phenomena import (
    bias,
    collapse,
    occam,
    scale,
    shuffle,
    structure,
    tickets,
    transfer,
)

RESULTS = Path(__file__).parent / "results"
PHENOMENA = (
    "structure",
    "occam",
    "tickets",
    "collapse",
    "shuffle",
    "scale",
    "bias",
    "transfer",
)


def sizes(quick: bool) -> dict:
    """Epochs and grids of a full and a quick run; ``None`` epochs: the recipe's."""
    if quick:
        return dict(
            epochs=3,  # overrides every recipe's epochs (a check, not a result)
            finetune_epochs=1,
            imp_rounds=2,
            mnist1d=1000,
            sparsities=[0.5, 0.9, 0.98],
            extreme=[0.9, 0.999],
            scale=[0.9],
            population=[0, 1, 2],
            bias_sparsities=[0.8, 0.98],
            downstream_epochs=2,
        )
    return dict(
        epochs=None,
        finetune_epochs=3,
        imp_rounds=3,
        mnist1d=4000,  # the recipe's default draw
        sparsities=[0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
        extreme=[0.9, 0.99, 0.999],
        scale=[0.8, 0.9, 0.95],
        population=[0, 1, 2, 3, 4],
        bias_sparsities=[0.8, 0.9, 0.95, 0.98],
        downstream_epochs=5,
    )


def mnist(seed: int) -> recipes.Task:
    return recipes.task("lenet300", "mnist", seed=seed)


def mnist1d(cfg: dict, seed: int) -> recipes.Task:
    options = {} if cfg["mnist1d"] == 4000 else {"num_samples": cfg["mnist1d"]}
    return recipes.task("cnn1d", "mnist1d", seed=seed, **options)


def ci(df: pd.DataFrame, by: list[str], metric: str) -> list[dict]:
    return sl.experiments.summarize(df, by, metric).to_dict("records")


def compare(
    df, column, treatment, baseline, *, metric="test_accuracy", by=(), claim=None, setting=""
) -> list[dict]:
    """``treatment - baseline`` paired over seeds, per group of ``by``, with the claim's
    verdict when ``claim`` is given."""
    by = list(by)
    out = []
    for _, row in sl.stats.paired(df, column, treatment, baseline, metric=metric, by=by).iterrows():
        entry = {
            "comparison": f"{treatment} - {baseline}",
            **{k: row[k] for k in by},
            **{k: row[k] for k in ("mean_diff", "ci_low", "ci_high", "n", "verdict")},
            "numbers": sl.stats.describe(row),
        }
        if claim is not None:
            at = ", ".join(f"{k} {row[k]}" for k in by)
            v = sl.claims.verdict(claim, row, setting=", ".join(x for x in (setting, at) if x))
            entry["claim"] = {
                "key": claim,
                "setting": v.setting,
                "status": v.status,
                "numbers": v.numbers(),
            }
        out.append(entry)
    return out


def flagged(df: pd.DataFrame, by: list[str]) -> list[dict]:
    return sl.flags.table(df, by).to_dict("records")


def run_structure(cfg, seeds):
    curves, runs = [], []
    for seed in seeds:
        out = structure.early_against_late(
            mnist(seed),
            0.9,
            epochs=cfg["epochs"],
            finetune_epochs=cfg["finetune_epochs"],
            epsilon=0.02,
            window=2 if cfg["epochs"] else 3,
        )
        curves.append(out.pop("table").assign(seed=seed))
        runs.append({"seed": seed, **out})
    curves, runs = pd.concat(curves), pd.DataFrame(runs)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sl.experiments.plot_mean_ci(curves, "epoch", "iou_to_final", ax=ax)
    ax.set_title("Magnitude mask: IoU with the final mask")
    arms = pd.concat(
        [
            runs.assign(arm=arm, test_accuracy=runs[f"{arm}_accuracy"], flags=runs[f"{arm}_flags"])
            for arm in ("early", "late")
        ]
    )
    return fig, {
        "iou_to_final": ci(curves, ["epoch"], "iou_to_final"),
        "arms": ci(arms, ["arm"], "test_accuracy"),
        "flagged": flagged(arms, ["arm"]),
        "paired": compare(
            arms,
            "arm",
            "early",
            "late",
            claim="early_bird_matches_late",
            setting="LeNet-300-100, MNIST subset, 90%",
        ),
        "runs": runs.to_dict("records"),
    }


def run_occam(cfg, seeds):
    rows = []
    for noise in (0.0, 0.4):
        for seed in seeds:
            curve = occam.occam_curve(
                mnist(seed),
                cfg["sparsities"],
                noise=noise,
                epochs=cfg["epochs"],
                finetune_epochs=cfg["finetune_epochs"],
            )
            rows.append(curve.assign(noise=noise, seed=seed))
    df = pd.concat(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sl.experiments.plot_mean_ci(df, "sparsity", "test_accuracy", hue="noise", ax=ax)
    # pruned minus the same seed's dense model, at every sparsity
    dense = df[df["sparsity"] == 0]
    pruned = df[df["sparsity"] > 0].assign(arm="pruned")
    arms = pd.concat(
        [pruned] + [dense.assign(arm="dense", sparsity=s) for s in pruned["sparsity"].unique()]
    )
    paired, hill = {}, {}
    for noise, part in arms.groupby("noise"):
        rows = compare(part, "arm", "pruned", "dense", by=["sparsity"])
        paired[str(noise)] = rows
        # the best sparsity is chosen on validation data; its test difference is reported
        val = pruned[pruned["noise"] == noise].groupby("sparsity")["val_accuracy"].mean()
        best = float(val.idxmax())
        chosen = part[part["sparsity"] == best]
        hill[str(noise)] = {
            "sparsity_chosen_on_validation": best,
            **compare(
                chosen,
                "arm",
                "pruned",
                "dense",
                claim="occam_hill",
                setting=f"LeNet-300-100, MNIST subset, label noise {noise}",
            )[0],
        }
    return fig, {
        "curve": ci(df, ["noise", "sparsity"], "test_accuracy"),
        "regions": {
            k: dict(
                zip(
                    [str(r["sparsity"]) for r in v],
                    occam.paired_regions([r["verdict"] for r in v]),
                    strict=True,
                )
            )
            for k, v in paired.items()
        },
        "paired": paired,
        "best_on_validation": hill,
        "flagged": flagged(df, ["noise", "sparsity"]),
    }


def run_tickets(cfg, seeds):
    tables = []
    for seed in seeds:
        for name, t in (("lenet300", mnist(seed)), ("cnn1d", mnist1d(cfg, seed))):
            tab = tickets.ticket_rounds(
                t, 0.9, rounds=cfg["imp_rounds"], epochs=cfg["epochs"], dense_epochs=cfg["epochs"]
            )
            tables.append(tab.assign(seed=seed, task=name))
    df = pd.concat(tables)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (task, g) in zip(axes, df.groupby("task"), strict=True):
        sl.experiments.plot_mean_ci(
            g[g["round"] > 0], "sparsity", "test_accuracy", hue="network", ax=ax
        )
        ax.set_title(task)
    last = df[df["round"] == df["round"].max()]
    theta0, _, reinit, random_mask = tickets.NETWORKS
    return fig, {
        "rounds": ci(df, ["task", "network", "round"], "test_accuracy"),
        "flagged": flagged(df, ["task", "network", "round"]),
        "paired_last_round": compare(
            last, "network", theta0, reinit, by=["task"], claim="tickets_beat_reinit"
        )
        + compare(last, "network", theta0, random_mask, by=["task"]),
    }


def run_collapse(cfg, seeds):
    rows = []
    for seed in seeds:
        t = mnist(seed)
        batch = tuple(next(iter(t.loaders()[0])))
        for method in collapse.AT_INIT:
            for s in cfg["extreme"]:
                found = collapse.masks_at_init(t.build(), method, s, data=batch, seed=seed)
                model = recipes.sparse_start(t.build(), found)
                verdict = collapse.collapse_summary(model)
                structure.fit_recipe(model, t, epochs=cfg["epochs"])
                run = recipes.evaluate_run(model, t, target_sparsity=s)
                rows.append(
                    {
                        "method": method,
                        "sparsity": s,
                        "seed": seed,
                        **verdict,
                        "test_accuracy": run["accuracy"],
                        "flags": run["flags"],
                    }
                )
    df = pd.DataFrame(rows)
    df["disconnected"] = df["disconnected"].astype(float)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    sl.experiments.plot_mean_ci(df, "sparsity", "dead_share", hue="method", ax=axes[0])
    sl.experiments.plot_mean_ci(df, "sparsity", "test_accuracy", hue="method", ax=axes[1])
    return fig, {
        "disconnected": ci(df, ["method", "sparsity"], "disconnected"),
        "test_accuracy": ci(df, ["method", "sparsity"], "test_accuracy"),
        "flagged": flagged(df, ["method", "sparsity"]),
        "paired": compare(
            df,
            "method",
            "synflow",
            "snip",
            by=["sparsity"],
            claim="synflow_beats_snip_extreme",
            setting="LeNet-300-100, MNIST subset, at initialisation",
        ),
    }


def run_shuffle(cfg, seeds):
    rows = []
    for seed in seeds:
        t = mnist(seed)
        for method, when in (
            ("snip", "init"),
            ("synflow", "init"),
            ("magnitude", "init"),
            ("magnitude", "trained"),
        ):
            out = shuffle.shuffle_experiment(t, method, 0.95, when, epochs=cfg["epochs"])
            for arm, run in out.items():
                rows.append({"mask": f"{method} ({when})", "arm": arm, "seed": seed, **run})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    table = sl.experiments.summarize(df, ["mask", "arm"], "test_accuracy")
    table.pivot(index="mask", columns="arm", values="mean").plot.bar(ax=ax, rot=0)
    ax.set_ylabel("test accuracy")
    paired = []
    for mask, part in df.groupby("mask", sort=False):
        at_init = mask in ("snip (init)", "synflow (init)")
        paired += [
            {"mask": mask, **row}
            for row in compare(
                part,
                "arm",
                "shuffled",
                "original",
                claim="init_masks_carry_layer_ratios_only" if at_init else None,
                setting=f"LeNet-300-100, MNIST subset, {mask}, 95%",
            )
        ]
    return fig, {
        "accuracy": table.to_dict("records"),
        "flagged": flagged(df, ["mask", "arm"]),
        "paired": paired,
    }


def run_scale(cfg, seeds):
    rows = []
    for seed in seeds:
        t = mnist1d(cfg, seed)
        for s in cfg["scale"]:
            for row in scale.large_sparse_vs_small_dense(t, s, epochs=cfg["epochs"]):
                rows.append({"sparsity": s, "seed": seed, **row})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sl.experiments.plot_mean_ci(df, "sparsity", "test_accuracy", hue="model", ax=ax)
    return fig, {
        "accuracy": ci(df, ["model", "sparsity"], "test_accuracy"),
        "flagged": flagged(df, ["model", "sparsity"]),
        "paired": compare(
            df,
            "model",
            "large sparse",
            "small dense (equal nonzeros)",
            by=["sparsity"],
            claim="large_sparse_beats_small_dense",
            setting="1-D CNN on MNIST-1D",
        )
        + compare(df, "model", "large sparse", "small dense (equal flops)", by=["sparsity"]),
        "sizes": df.groupby(["model", "sparsity"])[["width", "nonzeros", "flops"]]
        .mean()
        .reset_index()
        .to_dict("records"),
    }


def run_bias(cfg, seeds):
    # a population of the recipe's dense digit classifiers, one per population seed
    options = {} if cfg["mnist1d"] == 4000 else {"num_samples": cfg["mnist1d"]}
    dense = [
        recipes.dense("cnn1d", "mnist1d", seed, epochs=cfg["epochs"], **options)
        for seed in cfg["population"]
    ]
    pop = bias.population(
        dense,
        cfg["bias_sparsities"],
        finetune_epochs=cfg["finetune_epochs"],
        eval_bundle=dense[0][0].bundle,
    )
    table = bias.bias_table(pop, list(bias.ATTRIBUTES))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for metric in ("pie_share", "uncertainty", "ece"):
        ax.plot(table["population"].astype(str), table[metric], marker="o", label=metric)
    ax.legend()
    table["population"] = table["population"].astype(str)
    runs = pop["runs"]
    return fig, {
        "table": table.to_dict("records"),
        "runs": runs.to_dict("records"),
        "flagged": flagged(runs, ["sparsity"]),
    }


def run_transfer(cfg, seeds):
    rows = []
    digits = recipes.task("lenet300", "digits", seed=0).bundle
    down = {
        "lenet300": transfer.resized(digits, 28),
        "cnn1d": transfer.mnist1d_variant(num_samples=cfg["mnist1d"] // 2),
    }
    for seed in seeds:
        # upstream is always the MNIST subset: the digits are upsampled to its size
        for pair, t in {"lenet300": mnist(seed), "cnn1d": mnist1d(cfg, seed)}.items():
            recipe = recipes.recipe_for(t.model_name, t.data_name)
            for method in ["dense", *transfer.UPSTREAM]:
                up = transfer.pretrain(t, method, 0.9, epochs=cfg["epochs"])
                for mode in transfer.MODES:
                    run = transfer.transfer_run(
                        up,
                        down[pair],
                        mode,
                        epochs=cfg["downstream_epochs"],
                        recipe=recipe,
                        seed=seed,
                    )
                    rows.append(
                        {
                            "pair": pair,
                            "method": method,
                            "mode": mode,
                            "seed": seed,
                            **run,
                            "sparsity": sl.sparsity(up),
                        }
                    )
    df = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, (pair, g) in zip(axes, df.groupby("pair"), strict=True):
        sl.experiments.summarize(g, ["method", "mode"], "accuracy").pivot(
            index="method", columns="mode", values="mean"
        ).plot.bar(ax=ax, rot=0)
        ax.set_title(pair)
    paired = []
    for method in transfer.UPSTREAM:
        part = df[df["method"].isin([method, "dense"])]
        paired += [
            {"method": method, **row}
            for row in compare(
                part,
                "method",
                method,
                "dense",
                metric="accuracy",
                by=["pair", "mode"],
                claim="sparse_models_transfer",
                setting=f"{method} upstream at 90%",
            )
        ]
    return fig, {
        "accuracy": ci(df, ["pair", "method", "mode"], "accuracy"),
        "flagged": flagged(df, ["pair", "method", "mode"]),
        "paired": paired,
    }


def _verdicts(result: dict) -> list[str]:
    """The claim verdicts found anywhere in a phenomenon's result, one line each."""
    lines = []

    def walk(value):
        if isinstance(value, dict):
            if "claim" in value:
                c = value["claim"]
                lines.append(f"{c['key']} ({c['setting']}): {c['status']} ({c['numbers']})")
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(result)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=PHENOMENA, default=list(PHENOMENA))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = sizes(args.quick)
    seeds = args.seeds[:2] if args.quick else args.seeds
    if cfg["epochs"] is not None:
        print(f"every training runs {cfg['epochs']} epochs, overriding the recipes' (--quick)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "phenomena",
        "quick": args.quick,
        "seeds": seeds,
        "sizes": cfg,
        "epochs": "the recipes'" if cfg["epochs"] is None else f"{cfg['epochs']} (--quick)",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "results": {},
    }
    for name in args.only:
        start = time.perf_counter()
        fig, result = globals()[f"run_{name}"](cfg, seeds)
        fig.suptitle(name)
        fig.tight_layout()
        fig.savefig(RESULTS / f"phenomena_{name}.png", dpi=110)
        plt.close(fig)
        result["seconds"] = time.perf_counter() - start
        out["results"][name] = result
        print(f"{name}: {result['seconds']:.1f} s")
        kinds = result.get("flagged") or []
        print("  No sanity flag fired." if not kinds else f"  {len(kinds)} flagged groups")
        for line in _verdicts(result):
            print(f"  claim {line}")
    path = RESULTS / ("phenomena_quick.json" if args.quick else "phenomena.json")
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

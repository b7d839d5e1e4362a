"""Phenomena of sparse networks: every figure of notebooks 05a-05e from the command line.

Runs the eight experiments of ``sparsity_lab.phenomena`` with several seeds and writes one
JSON with every run and its summary (mean and 95% Student-t interval over seeds) plus one
PNG per phenomenon under ``benchmarks/results/``.  Nothing is tuned to agree with the
literature: each summary is what was measured.

    python benchmarks/phenomena.py [--quick] [--seeds 0 1 2] [--only structure occam ...]

``--quick`` shrinks data, epochs and grids to a pass of a few minutes.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: write files, open no window

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import sparsity_lab as sl  # noqa: E402
from sparsity_lab import recipes  # noqa: E402
from sparsity_lab.phenomena import (  # noqa: E402
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
    """Data and training sizes of a full and a quick run."""
    if quick:
        return dict(
            data="digits",
            epochs=4,
            imp_rounds=2,
            imp_epochs=2,
            mnist1d=1000,
            sparsities=[0.5, 0.9, 0.98],
            extreme=[0.9, 0.999],
            scale=[0.9],
            population=[0, 1, 2, 3, 4],
            bias_sparsities=[0.8, 0.98],
            n_train=1000,
            transfer_n_train=1000,
        )
    return dict(
        data="mnist",
        epochs=12,
        imp_rounds=3,
        imp_epochs=5,
        mnist1d=4000,
        sparsities=[0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
        extreme=[0.9, 0.99, 0.999],
        scale=[0.8, 0.9, 0.95],
        population=[0, 1, 2, 3, 4],
        bias_sparsities=[0.8, 0.9, 0.95, 0.98],
        n_train=1000,
        transfer_n_train=4000,
    )


def mnist_task(model: str, cfg: dict, seed: int, **options) -> recipes.Task:
    if cfg["data"] == "mnist":
        options.setdefault("n_train", 4000)
        return recipes.task(model, "mnist", seed=seed, **options)
    return recipes.task(model, cfg["data"], seed=seed)


def ci(df: pd.DataFrame, by: list[str], metric: str) -> list[dict]:
    return sl.experiments.summarize(df, by, metric).to_dict("records")


def run_structure(cfg, seeds):
    curves, runs = [], []
    for seed in seeds:
        t = mnist_task("lenet300", cfg, seed)
        out = structure.early_against_late(
            t,
            0.9,
            epochs=cfg["epochs"],
            finetune_epochs=max(1, cfg["epochs"] // 4),
            epsilon=0.02,
            window=2 if cfg["epochs"] < 8 else 3,
        )
        curves.append(out.pop("table").assign(seed=seed))
        runs.append({"seed": seed, **out})
    curves, runs = pd.concat(curves), pd.DataFrame(runs)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sl.experiments.plot_mean_ci(curves, "epoch", "iou_to_final", ax=ax)
    ax.set_title("Magnitude mask: IoU with the final mask")
    long = runs.melt(id_vars="seed", value_vars=["early_accuracy", "late_accuracy"])
    return fig, {
        "iou_to_final": ci(curves, ["epoch"], "iou_to_final"),
        "arms": ci(long, ["variable"], "value"),
        "runs": runs.to_dict("records"),
    }


def run_occam(cfg, seeds):
    rows = []
    for noise in (0.0, 0.4):
        for seed in seeds:
            opts = {"n_train": cfg["n_train"]} if cfg["data"] == "mnist" else {}
            t = recipes.task("lenet300", cfg["data"], seed=seed, **opts)
            curve = occam.occam_curve(
                t, cfg["sparsities"], noise=noise, epochs=2 * cfg["epochs"], finetune_epochs=3
            )
            rows.append(curve.assign(noise=noise, seed=seed))
    df = pd.concat(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sl.experiments.plot_mean_ci(df, "sparsity", "test_accuracy", hue="noise", ax=ax)
    regions = {}
    for noise, part in df.groupby("noise"):
        table = sl.experiments.summarize(part, ["sparsity"], "test_accuracy")
        d = table.iloc[0]
        tol = max(0.005, 0.0 if pd.isna(d["ci_high"]) else d["ci_high"] - d["mean"])
        regions[str(noise)] = dict(
            zip(
                table["sparsity"][1:].astype(str),
                occam.occam_regions(table["sparsity"][1:], table["mean"][1:], d["mean"], tol),
                strict=True,
            )
        )
    return fig, {"curve": ci(df, ["noise", "sparsity"], "test_accuracy"), "regions": regions}


def run_tickets(cfg, seeds):
    tables = []
    for seed in seeds:
        for model, t, lr in (
            ("lenet300", mnist_task("lenet300", cfg, seed), 0.05),
            ("cnn1d", recipes.task("cnn1d", "mnist1d", seed=seed, num_samples=cfg["mnist1d"]), 0.1),
        ):
            tab = tickets.ticket_rounds(
                t, 0.9, rounds=cfg["imp_rounds"], epochs=cfg["imp_epochs"], lr=lr
            )
            tables.append(tab.assign(seed=seed, task=model))
    df = pd.concat(tables)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (task, g) in zip(axes, df.groupby("task"), strict=True):
        sl.experiments.plot_mean_ci(g[g["round"] > 0], "sparsity", "accuracy", hue="network", ax=ax)
        ax.set_title(task)
    return fig, {"rounds": ci(df, ["task", "network", "round"], "accuracy")}


def run_collapse(cfg, seeds):
    rows = []
    for seed in seeds:
        t = mnist_task("lenet300", cfg, seed)
        train, val, test = t.loaders()
        batch = tuple(next(iter(train)))
        for method in collapse.AT_INIT:
            for s in cfg["extreme"]:
                model = collapse.prune_at_init(t.build(), method, s, data=batch, seed=seed)
                verdict = collapse.collapse_summary(model)
                sl.train.fit(
                    model,
                    train,
                    val,
                    epochs=max(2, cfg["epochs"] // 3),
                    lr=0.05,
                    lr_schedule="cosine",
                    seed=seed,
                    progress=False,
                )
                rows.append(
                    {
                        "method": method,
                        "sparsity": s,
                        "seed": seed,
                        **verdict,
                        "test_accuracy": sl.train.evaluate(model, test)["accuracy"],
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
    }


def run_shuffle(cfg, seeds):
    rows = []
    for seed in seeds:
        t = mnist_task("lenet300", cfg, seed)
        for method, when in (
            ("snip", "init"),
            ("synflow", "init"),
            ("magnitude", "init"),
            ("magnitude", "trained"),
        ):
            out = shuffle.shuffle_experiment(
                t, method, 0.95, when, epochs=max(2, cfg["epochs"] // 3)
            )
            for arm, acc in out.items():
                rows.append({"mask": f"{method} ({when})", "arm": arm, "seed": seed, "acc": acc})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    table = sl.experiments.summarize(df, ["mask", "arm"], "acc")
    table.pivot(index="mask", columns="arm", values="mean").plot.bar(ax=ax, rot=0)
    ax.set_ylabel("test accuracy")
    return fig, {"accuracy": table.to_dict("records")}


def run_scale(cfg, seeds):
    rows = []
    for seed in seeds:
        t = recipes.task("cnn1d", "mnist1d", seed=seed, num_samples=cfg["mnist1d"])
        for s in cfg["scale"]:
            for row in scale.large_sparse_vs_small_dense(t, s, epochs=2 * cfg["epochs"], lr=0.1):
                rows.append({"sparsity": s, "seed": seed, **row})
    df = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sl.experiments.plot_mean_ci(df, "sparsity", "test_accuracy", hue="model", ax=ax)
    return fig, {
        "accuracy": ci(df, ["model", "sparsity"], "test_accuracy"),
        "sizes": df.groupby(["model", "sparsity"])[["width", "nonzeros", "flops"]]
        .mean()
        .reset_index()
        .to_dict("records"),
    }


def run_bias(cfg, seeds):
    t = recipes.task("cnn1d", "mnist1d", seed=seeds[0], num_samples=cfg["mnist1d"])
    t.bundle = bias.multilabel_bundle(t.bundle)
    pop = bias.population(
        t,
        cfg["population"],
        cfg["bias_sparsities"],
        epochs=2 * cfg["epochs"],
        finetune_epochs=2,
        lr=0.1,
    )
    table = bias.bias_table(pop, list(bias.ATTRIBUTES))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for metric in ("pie_share", "uncertainty", "ece"):
        ax.plot(table["population"].astype(str), table[metric], marker="o", label=metric)
    ax.legend()
    table["population"] = table["population"].astype(str)
    return fig, {"table": table.to_dict("records")}


def run_transfer(cfg, seeds):
    rows = []
    digits = recipes.task("lenet300", "digits", seed=0).bundle
    down = {
        "lenet300": transfer.resized(digits, 28),
        "cnn1d": transfer.mnist1d_variant(num_samples=cfg["mnist1d"] // 2),
    }
    for seed in seeds:
        pairs = {
            "lenet300": (
                # upstream is always the MNIST subset: the digits are upsampled to its size
                recipes.task("lenet300", "mnist", seed=seed, n_train=cfg["transfer_n_train"]),
                0.05,
            ),
            "cnn1d": (recipes.task("cnn1d", "mnist1d", seed=seed, num_samples=cfg["mnist1d"]), 0.1),
        }
        for pair, (t, lr) in pairs.items():
            for method in ["dense", *transfer.UPSTREAM]:
                up = transfer.pretrain(t, method, 0.9, epochs=cfg["epochs"], lr=lr)
                for mode in transfer.MODES:
                    acc = transfer.transfer(
                        up, down[pair], mode, epochs=cfg["epochs"], lr=lr, seed=seed
                    )
                    rows.append(
                        {
                            "pair": pair,
                            "method": method,
                            "mode": mode,
                            "seed": seed,
                            "accuracy": acc,
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
    return fig, {"accuracy": ci(df, ["pair", "method", "mode"], "accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=PHENOMENA, default=list(PHENOMENA))
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = sizes(args.quick)
    seeds = args.seeds[:1] if args.quick else args.seeds
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "benchmark": "phenomena",
        "quick": args.quick,
        "seeds": seeds,
        "sizes": cfg,
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
    path = RESULTS / ("phenomena_quick.json" if args.quick else "phenomena.json")
    path.write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

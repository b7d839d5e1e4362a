"""Training-time methods: accuracy and training FLOPs at 80, 90 and 95% sparsity.

Settings: LeNet-300-100 on the MNIST subset and the 1-D CNN on MNIST-1D, three seeds.
Methods: dense training; one-shot (train dense, prune once by magnitude, fine-tune);
GMP; static sparse, SET and RigL with the ERK and the uniform budget; AC/DC (its sparse
and its dense member); IMP tickets against the same masks re-initialised; CrAM against
SGD under one-shot pruning with BatchNorm re-estimation and no fine-tuning (neither model
has BatchNorm, so the re-estimation is a no-op there: the CrAM check also runs on the
small ResNet, BatchNorm after every convolution, on 8x8 digits).  The sparse-from-scratch
runs start from weights rescaled to each unit's kept fan-in (the methods do what
``recipes.sparse_start`` does) and record, per layer, the density and the gradient norm
at the first step.  The dense model is the setting's ``recipes.dense``; every method
trains with the setting's recipe (``recipes.recipe_for(...).training()``: epochs,
optimizer, learning rate and schedule, batch size) for the same number of epochs (IMP:
``rounds + 1`` runs of half as many; one-shot: the dense run plus ``recipes.finetune``'s
two epochs); training FLOPs are counted with
:class:`sparsity_lab.methods.base.TrainingFlops` and reported as a multiple of dense
training.  Every run carries the sanity flags of ``recipes.evaluate_run``.

The script checks the expectations of the issue that asked for it with paired differences
over seeds (``sl.stats.paired``) and reports each as met, missed or inconclusive, with the
verdict on the cited claim of ``sl.claims.CLAIMS`` where there is one: nothing here is
tuned to agree.

    python benchmarks/training_methods.py [--seeds 0 1 2] [--quick] [--reduced]

``--reduced`` runs static, SET and RigL only at the sparsities of ``REDUCED_DST`` (the
full grid takes about an hour on two shared cores); the checks whose cells were not run
say "not run".

Writes ``benchmarks/results/training_methods.json`` (every run, the summary table and the
checks), ``training_methods.csv`` and two figures; finished runs are cached under
``benchmarks/results/training_methods_cache`` so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import copy
import functools
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
from sparsity_lab import recipes, registry
from sparsity_lab.methods.base import TrainingFlops
from sparsity_lab.methods.cram import one_shot
from sparsity_lab.methods.dynamic import StaticSparse

RESULTS = Path(__file__).parent / "results"
SETTINGS = {"lenet300": "mnist", "cnn1d": "mnist1d"}
# Neither model above has BatchNorm, so CrAM's BatchNorm re-estimation does nothing there;
# the small ResNet (BatchNorm after every convolution) on 8x8 digits runs the CrAM check
# only (dense, CrAM, and SGD under one-shot pruning).
BN_SETTINGS = {"resnet_small": "digits"}
DATA = {**SETTINGS, **BN_SETTINGS}
SPARSITIES = [0.8, 0.9, 0.95]
CRAM_SPARSITIES = [0.7, 0.8, 0.9, 0.95]
#: model -> epochs overriding its recipe's (``--quick`` only); empty: every recipe as is
EPOCHS_OVERRIDE: dict[str, int] = {}
FINETUNE_EPOCHS = 2
IMP_ROUNDS = 3
# Budgets: one global magnitude threshold for the methods that prune trained weights; the
# dynamic methods start from random masks, so they use shape-based budgets.
PRUNE_BUDGET = "global"
# v3: the settings' recipes, flags and paired checks (every method's runs anew)
VERSION = "training_methods_v3"
DST_VERSION = "training_methods_v3_dst"
DST = ("static", "set", "rigl")
# The documented reduced grid (``--reduced``) for the sparse-from-scratch methods: three
# seeds, both budgets, at the sparsities where the first run looked broken.
REDUCED_DST = {"cnn1d": [0.8, 0.95], "lenet300": [0.9]}


def version_of(method: str) -> str:
    return DST_VERSION if method.split("_")[0] in DST else VERSION


class InitDiagnostics(sl.train.Callback):
    """Per-layer density and gradient norm (over the kept weights) at the first step."""

    def __init__(self, method):
        self.method = method
        self.density: dict[str, float] = {}
        self.grad_norm: dict[str, float] = {}

    def on_after_backward(self, trainer) -> None:
        if trainer.step != 0:
            return
        for n in self.method.masked_names(trainer.model):
            mask = sl.masks.get_mask(trainer.model, n)
            grad = sl.masks.dense_weight(trainer.model, n).grad
            self.density[n] = float(mask.float().mean())
            self.grad_norm[n] = float((grad * mask).norm())


def training(model: str) -> dict:
    """The ``fit`` keyword arguments of the setting's recipe (epochs overridden by --quick)."""
    options = recipes.recipe_for(model, DATA[model]).training()
    options["epochs"] = EPOCHS_OVERRIDE.get(model, options["epochs"])
    return options


def setting(model: str, seed: int):
    t = recipes.task(model, DATA[model], seed=seed)
    return t, *t.loaders(recipes.recipe_for(model, DATA[model]).batch_size)


def fit(method, model: str, seed: int, epochs: int | None = None, extra=()):
    """Train a fresh model with ``method`` and the recipe (``epochs`` overrides its epochs)."""
    t, train, val, test = setting(model, seed)
    m = t.build()
    flops = TrainingFlops(method)
    options = training(model) | {"seed": seed, "callbacks": [flops, *extra]}
    if epochs is not None:
        options["epochs"] = epochs
    method.fit(m, train, val, **options)
    return m, flops.total, t


def evaluate(m, model: str, seed: int, sparsity: float | None = None) -> dict:
    """Test accuracy and sanity flags (the target checked when ``sparsity`` is given)."""
    result = recipes.evaluate_run(m, setting(model, seed)[0], target_sparsity=sparsity)
    return {"accuracy": result["accuracy"], "flags": result["flags"]}


def dense_epoch_flops(model: str, seed: int) -> float:
    t = setting(model, seed)[0]
    return recipes.training_flops(t.build(), len(t.bundle.train), 1)


@functools.cache
def dense(model: str, seed: int):
    """The recipe's dense model of a seed (``recipes.dense``), its info and training FLOPs."""
    epochs = EPOCHS_OVERRIDE.get(model)
    _, m, info = recipes.dense(model, DATA[model], seed, epochs=epochs)
    return m, info, dense_epoch_flops(model, seed) * training(model)["epochs"]


@functools.cache
def crammed(model: str, seed: int):
    method = registry.get("cram", "training")(
        0.8, sparsities=[0.5, 0.7, 0.8, 0.9], budget=PRUNE_BUDGET, seed=seed
    )
    m, flops, _ = fit(method, model, seed)
    return m, flops


def run(model: str, method: str, sparsity: float, seed: int) -> dict:
    """One cell of the benchmark: test accuracy, flags and training FLOPs (and extras)."""
    torch.manual_seed(seed)
    epochs = training(model)["epochs"]
    start = time.perf_counter()
    out: dict = {}
    if method == "dense":
        m, info, flops = dense(model, seed)
        out = {"accuracy": info["test_accuracy"], "flags": info["flags"], "train_flops": flops}
    elif method == "one_shot":
        m, _, flops = dense(model, seed)
        m = copy.deepcopy(m)
        t = setting(model, seed)[0]
        sl.prune(m, "magnitude", sparsity, budget=PRUNE_BUDGET)
        budget = recipes.finetune(m, t, FINETUNE_EPOCHS, lr=0.01, progress=False)
        out = {**evaluate(m, model, seed, sparsity), **budget}
        out["train_flops"] = flops + budget["finetune_flops"]
    elif method in ("gmp", "acdc"):
        trainer = registry.get(method, "training")(sparsity, budget=PRUNE_BUDGET, seed=seed)
        m, flops, _ = fit(trainer, model, seed)
        out = {**evaluate(m, model, seed, sparsity), "train_flops": flops}
        if method == "acdc":
            out["dense_accuracy"] = evaluate(trainer.dense_model, model, seed)["accuracy"]
    elif method.split("_")[0] in ("static", "set", "rigl"):
        name, budget = method.split("_")
        cls = StaticSparse if name == "static" else registry.get(name, "training")
        trainer = cls(sparsity, budget=budget, seed=seed)
        diagnostics = InitDiagnostics(trainer)
        m, flops, _ = fit(trainer, model, seed, extra=[diagnostics])
        out = {
            **evaluate(m, model, seed, sparsity),
            "train_flops": flops,
            # evidence for a sparse net that cannot train: nearly empty layers, no gradient
            "init_density": diagnostics.density,
            "init_grad_norm": diagnostics.grad_norm,
            "mask_updates": len(trainer.log),
        }
    elif method == "imp":
        imp = registry.get("imp", "training")(
            sparsity,
            rounds=IMP_ROUNDS,
            rewind="init",
            baselines=("reinit",),
            baseline_rounds="last",
            budget=PRUNE_BUDGET,
            seed=seed,
        )
        t, train, val, _ = setting(model, seed)
        m = t.build()
        counter = TrainingFlops(imp)
        options = training(model) | {"epochs": max(1, epochs // 2)}
        history = imp.fit(m, train, val, seed=seed, callbacks=[counter], **options)
        last = imp.rounds_table.iloc[-1]
        out = {
            **evaluate(m, model, seed, sparsity),
            "train_flops": counter.total,
            # the ticket against its re-initialised twin is judged on validation data
            "val_accuracy": float(history["val_accuracy"].iloc[-1]),
            "reinit_val_accuracy": float(last["reinit_val_accuracy"]),
        }
    elif method in ("cram", "sgd_one_shot"):
        if method == "cram":
            base, flops = crammed(model, seed)
        else:
            base, _, flops = dense(model, seed)
        t, train, _, _ = setting(model, seed)
        m = one_shot(copy.deepcopy(base), sparsity, data=train, budget=PRUNE_BUDGET)
        out = {
            **evaluate(m, model, seed, sparsity),
            "dense_accuracy": evaluate(base, model, seed)["accuracy"],
            "train_flops": flops,
            "finetune_epochs": 0,
            "finetune_flops": 0.0,
        }
    else:
        raise ValueError(f"unknown benchmark method {method!r}")
    out["dense_epoch_flops"] = dense_epoch_flops(model, seed)
    out["epochs"] = epochs
    out["seconds"] = time.perf_counter() - start
    return out


GRID = [
    ("dense", [0.0]),
    ("one_shot", SPARSITIES),
    ("gmp", SPARSITIES),
    ("static_erk", SPARSITIES),
    ("static_uniform", SPARSITIES),
    ("set_erk", SPARSITIES),
    ("set_uniform", SPARSITIES),
    ("rigl_erk", SPARSITIES),
    ("rigl_uniform", SPARSITIES),
    ("acdc", SPARSITIES),
    ("imp", SPARSITIES),
    ("cram", CRAM_SPARSITIES),
    ("sgd_one_shot", CRAM_SPARSITIES),
]


CRAM_GRID = [("dense", [0.0]), ("cram", CRAM_SPARSITIES), ("sgd_one_shot", CRAM_SPARSITIES)]


def run_all(
    seeds: list[int], models: list[str], cache: Path, dst_grid: dict[str, list[float]] | None
) -> pd.DataFrame:
    """Every cell of ``GRID`` (``CRAM_GRID`` for the BatchNorm model); ``dst_grid`` (model
    -> sparsities) restricts the sparse-from-scratch methods to a reduced grid."""
    frames = []
    for model in models:
        for method, sparsities in CRAM_GRID if model in BN_SETTINGS else GRID:
            if dst_grid is not None and method.split("_")[0] in DST:
                sparsities = [s for s in sparsities if s in dst_grid.get(model, [])]
            if not sparsities:
                continue
            print(f"{model}: {method} at {sparsities}", flush=True)
            frames.append(
                sl.experiments.sweep(
                    run,
                    {"model": [model], "method": [method], "sparsity": sparsities},
                    seeds=seeds,
                    cache_dir=cache,
                    name=version_of(method),
                    progress=False,
                )
            )
    return pd.concat(frames, ignore_index=True)


# --- the expectations ---------------------------------------------------------------------


def compare(
    df,
    model,
    name,
    treatment,
    baseline,
    *,
    metric="accuracy",
    relation="greater",
    margin=0.0,
    claim=None,
    sparsities=None,
) -> list[dict]:
    """``treatment - baseline`` of ``metric`` paired over seeds, per sparsity; "not run"
    when an arm is missing (a reduced grid)."""
    part = df[(df["model"] == model) & df["method"].isin([treatment, baseline])]
    if sparsities is not None:
        part = part[part["sparsity"].isin(sparsities)]
    if not {treatment, baseline} <= set(part["method"]):
        return [{"expectation": name, "model": model, "status": "not run", "numbers": ""}]
    out = []
    diffs = sl.stats.paired(part, "method", treatment, baseline, metric=metric, by="sparsity")
    for _, row in diffs.iterrows():
        entry = {
            "expectation": name,
            "model": model,
            "sparsity": row["sparsity"],
            "status": sl.claims.check(row, relation, margin),
            "paired": {k: row[k] for k in ("mean_diff", "ci_low", "ci_high", "n")},
            "numbers": sl.stats.describe(row),
        }
        if claim is not None:
            v = sl.claims.verdict(
                claim, row, setting=f"{model} on {DATA[model]} at {row['sparsity']:.0%}"
            )
            entry["claim"] = {"key": claim, "status": v.status, "numbers": v.numbers()}
        out.append(entry)
    return out


def checks(df: pd.DataFrame) -> list[dict]:
    out = []
    for model in df["model"].unique():
        if model not in BN_SETTINGS:
            high = [s for s in SPARSITIES if s >= 0.9]
            out += compare(
                df,
                model,
                "GMP > one-shot at >= 90%",
                "gmp",
                "one_shot",
                claim="gradual_beats_one_shot",
                sparsities=high,
            )
            for budget in ("erk", "uniform"):
                st, se, ri = (f"{m}_{budget}" for m in ("static", "set", "rigl"))
                out += compare(
                    df, model, f"SET > static ({budget})", se, st, claim="set_beats_static"
                )
                out += compare(df, model, f"RigL > SET ({budget})", ri, se, claim="rigl_beats_set")
                out += compare(df, model, f"GMP >= RigL ({budget})", "gmp", ri, relation="at_least")
            for m in ("static", "set", "rigl"):
                out += compare(
                    df,
                    model,
                    f"ERK >= uniform ({m})",
                    f"{m}_erk",
                    f"{m}_uniform",
                    relation="at_least",
                )
            out += compare(
                df,
                model,
                "AC/DC sparse within 1 point of GMP",
                "acdc",
                "gmp",
                relation="at_least",
                margin=0.01,
                claim="acdc_matches_gmp",
            )
            acdc_dense = df[(df["method"] == "acdc")].assign(
                method="acdc_dense", accuracy=lambda d: d["dense_accuracy"]
            )
            dense = df[df["method"] == "dense"]
            dense = pd.concat([dense.assign(sparsity=s) for s in SPARSITIES])
            out += compare(
                pd.concat([acdc_dense, dense]),
                model,
                "AC/DC dense within 0.5 points of the dense baseline",
                "acdc_dense",
                "dense",
                relation="at_least",
                margin=0.005,
            )
            imp = df[df["method"] == "imp"]
            arms = pd.concat(
                [
                    imp.assign(method="ticket", val=imp["val_accuracy"]),
                    imp.assign(method="reinit", val=imp["reinit_val_accuracy"]),
                ]
            )
            out += compare(
                arms,
                model,
                "IMP ticket beats re-initialisation (validation)",
                "ticket",
                "reinit",
                metric="val",
                claim="tickets_beat_reinit",
            )
        cram_sparsities = [0.7, 0.8]
        out += compare(
            df,
            model,
            "CrAM beats SGD under one-shot pruning",
            "cram",
            "sgd_one_shot",
            claim="cram_one_shot_beats_sgd",
            sparsities=cram_sparsities,
        )
        cram = df[df["method"] == "cram"]
        dense = df[df["method"] == "dense"]
        arms = pd.concat(
            [cram.assign(method="cram_dense", accuracy=cram["dense_accuracy"])]
            + [dense.assign(sparsity=s) for s in cram_sparsities]
        )
        out += compare(
            arms,
            model,
            "CrAM's dense model within 0.5 points of SGD's",
            "cram_dense",
            "dense",
            relation="at_least",
            margin=0.005,
            claim="cram_dense_matches_sgd",
            sparsities=cram_sparsities,
        )
    return out


# --- report -------------------------------------------------------------------------------


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(flops_x_dense=df["train_flops"] / (df["dense_epoch_flops"] * df["epochs"]))
    table = sl.experiments.summarize(df, ["model", "method", "sparsity"], "accuracy")
    cost = df.groupby(["model", "method", "sparsity"], as_index=False)["flops_x_dense"].mean()
    return table.merge(cost, on=["model", "method", "sparsity"])


def figures(df: pd.DataFrame, table: pd.DataFrame, out: Path) -> list[str]:
    paths = []
    shown = ["one_shot", "gmp", "static_erk", "set_erk", "rigl_erk", "acdc", "imp"]
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(11, 4))
    for ax, model in zip(axes, SETTINGS, strict=True):
        part = df[(df["model"] == model) & (df["method"].isin(shown))]
        sl.viz.sparsity_curve(
            part,
            x="sparsity",
            y="accuracy",
            hue="method",
            ax=ax,
            logit_x=True,
            baseline=df[(df["model"] == model) & (df["method"] == "dense")]["accuracy"].mean(),
        )
        ax.set_title(f"{model} on {SETTINGS[model]}")
    fig.tight_layout()
    path = out / "training_methods_accuracy.png"
    fig.savefig(path, dpi=120)
    paths.append(str(path))
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(11, 4))
    for ax, model in zip(axes, SETTINGS, strict=True):
        part = table[(table["model"] == model) & (table["sparsity"] == 0.9)]
        for i, row in enumerate(part.itertuples()):
            ax.errorbar(
                row.flops_x_dense,
                row.mean,
                yerr=row.ci_high - row.mean,
                fmt="os^Dv<>"[i % 7],
                color=plt.cm.tab20(i % 20),  # twelve methods: one colour each
                label=row.method,
            )
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (x dense training)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{model}, 90% sparsity")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "training_methods_flops.png"
    fig.savefig(path, dpi=120)
    paths.append(str(path))
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--models",
        nargs="+",
        default=[*SETTINGS, *BN_SETTINGS],
        choices=[*SETTINGS, *BN_SETTINGS],
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="2 epochs (not the recipes'), for a smoke test"
    )
    parser.add_argument(
        "--reduced",
        action="store_true",
        help="sparse-from-scratch methods only at "
        + str(REDUCED_DST)
        + " (the other cells in full)",
    )
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "training_methods_cache"
    if args.quick:
        global VERSION, DST_VERSION
        EPOCHS_OVERRIDE.update(dict.fromkeys(DATA, 2))
        VERSION += "_quick"
        DST_VERSION += "_quick"
    started = time.perf_counter()
    df = run_all(args.seeds, args.models, cache, REDUCED_DST if args.reduced else None)
    table = summary_table(df)
    found = checks(df)
    flagged = sl.flags.table(df, ["model", "method", "sparsity"])
    paths = figures(df, table, out)
    report = {
        "benchmark": "training_methods",
        "settings": SETTINGS,
        "cram_batchnorm_settings": BN_SETTINGS,
        "recipes": {m: training(m) for m in DATA},
        "epochs_override": EPOCHS_OVERRIDE or "none: every setting's recipe",
        "finetune_epochs": FINETUNE_EPOCHS,
        "imp_rounds": IMP_ROUNDS,
        "prune_budget": PRUNE_BUDGET,
        "seeds": args.seeds,
        "quick": args.quick,
        "reduced_sparse_from_scratch_grid": REDUCED_DST if args.reduced else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": args.threads,
        # this invocation (cached runs load instantly) and the runs themselves
        "wall_seconds": time.perf_counter() - started,
        "run_seconds_total": float(df["seconds"].sum()),
        "summary": table.to_dict(orient="records"),
        "checks": found,
        "flagged": flagged.to_dict(orient="records"),
        "runs": df.to_dict(orient="records"),
        "figures": paths,
    }
    (out / "training_methods.json").write_text(json.dumps(report, indent=2, default=float))
    table.to_csv(out / "training_methods.csv", index=False)
    with pd.option_context("display.width", 140, "display.max_rows", 200):
        print(table.round(4).to_string(index=False))
    print()
    print("No sanity flag fired." if flagged.empty else flagged.to_string(index=False))
    print()
    print("What to expect (paired differences over seeds, treatment - baseline, test accuracy):")
    for c in found:
        where = f"{c.get('model')} at {c.get('sparsity')}"
        print(f"  [{c['status']:>12}] {c['expectation']} - {where}: {c['numbers']}")
        if "claim" in c:
            print(
                f"      claim {c['claim']['key']}: {c['claim']['status']} ({c['claim']['numbers']})"
            )
    counts = pd.Series([c["status"] for c in found]).value_counts().to_dict()
    print(f"  {counts}")
    dst = df[df["method"].str.split("_").str[0].isin(DST) & (df["model"] == "cnn1d")]
    if len(dst) and "init_density" in dst:
        print("\nSparse from scratch on cnn1d at the first step (seed mean): layer density and")
        print("gradient norm over the kept weights")
        for (method, s), part in dst.groupby(["method", "sparsity"]):
            dens = pd.DataFrame(list(part["init_density"])).mean()
            grad = pd.DataFrame(list(part["init_grad_norm"])).mean()
            cells = " ".join(
                f"{n.split('.')[0]}{n.split('.')[1][:1]}:{dens[n]:.3f}/{grad[n]:.1e}"
                for n in dens.index
            )
            print(
                f"  {method:>15} {s:.2f}: {cells}; mask updates {part['mask_updates'].mean():.0f}"
            )
    print(f"wrote {out / 'training_methods.json'}")


if __name__ == "__main__":
    main()

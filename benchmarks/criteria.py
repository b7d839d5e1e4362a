"""Pruning criteria: one-shot accuracy with and without fine-tuning, and pruning at init.

Setting: LeNet-300-100 on the MNIST subset (4,000 training examples), the dense model of
each seed from ``recipes.dense`` (the setting's recipe, cached).  Every criterion of the
data-free, data-driven, first-order and at-initialisation families prunes a copy of the
trained model once at 50, 75, 90 and 95% sparsity, over three seeds; test accuracy is
measured right after pruning and after a fixed fine-tuning budget (``recipes.finetune``:
``FINETUNE_EPOCHS`` epochs of SGD at lr 0.01, masks fixed; its FLOPs are recorded).

* ``random (magnitude's counts)`` is the fair random baseline of global magnitude: a
  random mask with the per-layer counts of that seed's global magnitude mask
  (``recipes.random_like``).  ``random`` prunes at random under the global budget.

* Weight criteria use the global budget (``magnitude`` also uniform, ``lamp_budget`` and
  ``sensitivity_budget``).
* Unit criteria remove the same share of the hidden units of ``fc1`` and ``fc2``
  (``pattern="channel"``, ``budget="uniform"``); ``thinet`` and ``lasso_channel`` choose
  the same units as inputs of the layers that read them (``pattern="input"``).  Sparsity
  here is the share of hidden units removed.
* ``karnin``, ``movement`` and ``soft_movement`` accumulate their scores during training:
  their trackers follow one extra epoch of training of the dense model (lr 0.01), which is
  then pruned; the benchmark records that model's own accuracy too.  ``soft_movement``
  learns its scores with no penalty (``lam=0``) and keeps the top-k: with a constant
  learning rate its scores are the movement scores times the rate, so it ranks the weights
  exactly as ``movement`` does.
* At initialisation: ``random``, ``magnitude``, ``snip``, ``grasp``, ``synflow`` and
  ``force`` prune the *initial* network, which then trains from scratch with the recipe
  (its epochs unless ``--pai-epochs`` says otherwise) with its mask fixed, and again with
  the mask's random twin of the same layer counts (``recipes.random_like``: the shuffling
  of Frankle et al. 2021).  Every sparse start is ``recipes.sparse_start`` (weights
  rescaled to each unit's sparse fan-in, for every method alike).

Every run carries the sanity flags of ``recipes.evaluate_run``.  The script checks the
issue's expectations with paired differences over seeds (``sl.stats.paired``) and reports
each as met, missed or inconclusive (one seed, or an interval that decides nothing), with
the verdict against the cited claim of ``sl.claims.CLAIMS`` where there is one; nothing
here is tuned to agree.

    python benchmarks/criteria.py [--seeds 0 1 2] [--quick]

Writes ``benchmarks/results/criteria.json`` (every run, summary tables, the checks) and
``criteria.png``; finished runs are cached under ``benchmarks/results/criteria_cache`` so
an interrupted run resumes.
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
from sparsity_lab import masks, recipes
from sparsity_lab.criteria.first_order import (
    KarninScores,
    MovementScores,
    SoftMovementScores,
)

RESULTS = Path(__file__).parent / "results"
CACHE = RESULTS / "criteria_cache"
VERSION = "criteria_v2"  # v2: recipe dense models, flags, fine-tuning budgets in FLOPs
MODEL, DATA = "lenet300", "mnist"
SPARSITIES = [0.5, 0.75, 0.9, 0.95]
FINETUNE_EPOCHS = 1
FINETUNE_LR = 0.01
CALIBRATION_BATCHES = 4
# SynFlow's 100 rounds cost ~15 s per pruning on 2 busy cores; 20 rounds keep the
# benchmark's budget and already avoid layer collapse at these sparsities.
SYNFLOW_ITERATIONS = 20
#: the random baseline of global magnitude: its mask's per-layer counts, random positions
RANDOM_LIKE = "random (magnitude's counts)"

#: label -> (family, criterion, pattern, budget, options)
WEIGHTS = {
    "magnitude (global)": ("data-free", "magnitude", "unstructured", "global", {}),
    "magnitude (uniform)": ("data-free", "magnitude", "unstructured", "uniform", {}),
    "magnitude (lamp_budget)": ("data-free", "magnitude", "unstructured", "lamp_budget", {}),
    "magnitude (sensitivity_budget)": (
        "data-free",
        "magnitude",
        "unstructured",
        "sensitivity_budget",
        {},
    ),
    RANDOM_LIKE: ("data-free", "random_like", "unstructured", "global", {}),
    "random": ("data-free", "random", "unstructured", "global", {}),
    "lamp": ("data-free", "lamp", "unstructured", "global", {}),
    "snip": ("first-order", "snip", "unstructured", "global", {}),
    "taylor_weight": ("first-order", "taylor_weight", "unstructured", "global", {}),
    "karnin": ("first-order", "karnin", "unstructured", "global", {}),
    "movement": ("first-order", "movement", "unstructured", "global", {}),
    "soft_movement": ("first-order", "soft_movement", "unstructured", "global", {}),
    "grasp": ("at-init", "grasp", "unstructured", "global", {}),
    "synflow": ("at-init", "synflow", "unstructured", "global", {"iterations": SYNFLOW_ITERATIONS}),
    "force": ("at-init", "force", "unstructured", "global", {}),
}
UNITS = {
    "random (units)": ("data-free", "random", "channel"),
    "group_norm": ("data-free", "group_norm", "channel"),
    "fpgm": ("data-free", "fpgm", "channel"),
    "neuron_merge": ("data-free", "neuron_merge", "channel"),
    "apoz": ("data-driven", "apoz", "channel"),
    "mean_activation": ("data-driven", "mean_activation", "channel"),
    "activation_variance": ("data-driven", "activation_variance", "channel"),
    "correlation_merge": ("data-driven", "correlation_merge", "channel"),
    "sensitivity": ("data-driven", "sensitivity", "channel"),
    "nisp": ("data-driven", "nisp", "channel"),
    "thinet": ("data-driven", "thinet", "input"),
    "lasso_channel": ("data-driven", "lasso_channel", "input"),
    "skeletonization": ("first-order", "skeletonization", "channel"),
    "taylor": ("first-order", "taylor", "channel"),
}
# The hidden units of LeNet-300-100: rows of the layers that own them, or columns of the
# layers that read them; both remove the same units.
UNIT_TARGETS = {"channel": ["fc1.weight", "fc2.weight"], "input": ["fc2.weight", "fc3.weight"]}
TRACKED = {"karnin": KarninScores, "movement": MovementScores, "soft_movement": SoftMovementScores}
AT_INIT = {
    "random": {},
    "magnitude": {},
    "snip": {},
    "grasp": {},
    "synflow": {"iterations": SYNFLOW_ITERATIONS},
    "force": {},
}


# --- the models ---------------------------------------------------------------------------


@functools.cache
def setting(seed: int):
    """The task, the recipe's dense model, its info and the calibration batches of a seed."""
    t, dense, info = recipes.dense(MODEL, DATA, seed)
    train = t.loaders()[0]
    calibration = [batch for _, batch in zip(range(CALIBRATION_BATCHES), train, strict=False)]
    return t, dense, info, calibration


@functools.cache
def tracked(seed: int):
    """The dense model after one more epoch with the score trackers among the callbacks."""
    t, dense, _, _ = setting(seed)
    model = copy.deepcopy(dense)
    trackers = {name: cls() for name, cls in TRACKED.items()}
    train, val, _ = t.loaders()
    sl.train.fit(
        model,
        train,
        val,
        epochs=1,
        lr=FINETUNE_LR,
        seed=seed,
        callbacks=list(trackers.values()),
    )
    return model, trackers


# --- one cell of each part ----------------------------------------------------------------


def after_training(criterion: str, sparsity: float, seed: int, finetune_epochs: int) -> dict:
    """Prune the trained model once; test accuracy right after and after fine-tuning."""
    torch.manual_seed(seed)
    t, dense, info, calibration = setting(seed)
    start = time.perf_counter()
    if criterion in WEIGHTS:
        family, method, pattern, budget, options = WEIGHTS[criterion]
        targets = None
    else:
        family, method, pattern = UNITS[criterion]
        budget, options, targets = "uniform", {}, UNIT_TARGETS[pattern]
    source, source_accuracy = dense, info["test_accuracy"]
    if method in TRACKED:
        source, trackers = tracked(seed)
        options = {**options, "tracker": trackers[method]}
        source_accuracy = recipes.evaluate_run(source, t)["accuracy"]
    model = copy.deepcopy(source)
    if method == "random_like":
        found = masks.masks(sl.prune(copy.deepcopy(source), "magnitude", sparsity, seed=seed))
        for name, mask in recipes.random_like(found, seed=seed).items():
            masks.attach(model, name, mask)
    else:
        sl.prune(
            model,
            method,
            sparsity,
            pattern=pattern,
            budget=budget,
            targets=targets,
            data=calibration,
            seed=seed,
            **options,
        )
    prune_seconds = time.perf_counter() - start
    pruned = recipes.evaluate_run(model, t)["accuracy"]
    budget_spent = recipes.finetune(model, t, finetune_epochs, lr=FINETUNE_LR, progress=False)
    final = recipes.evaluate_run(model, t, target_sparsity=sparsity, names=targets)
    return {
        "family": family,
        "pattern": pattern,
        "budget": budget,
        "measured_sparsity": final["sparsity"],
        "pruned_accuracy": pruned,
        "finetuned_accuracy": final["accuracy"],
        **budget_spent,
        "flags": final["flags"],
        "source_accuracy": source_accuracy,
        "dense_accuracy": info["test_accuracy"],
        "prune_seconds": prune_seconds,
    }


_found: dict = {}  # one pruning serves the run with the mask as found and its random twin


def at_initialisation(
    criterion: str, sparsity: float, shuffled: bool, epochs: int | None, seed: int
) -> dict:
    """Prune the initial network (or take the random twin of its mask), train from scratch.

    ``epochs=None`` trains for the recipe's epochs; every other setting is the recipe's.
    """
    t, _, _, calibration = setting(seed)
    init = t.build()  # the initial weights of this seed's dense model
    key = (criterion, sparsity, seed)
    if key not in _found:
        pruned = sl.prune(
            copy.deepcopy(init),
            criterion,
            sparsity,
            data=calibration,
            seed=seed,
            **AT_INIT[criterion],
        )
        _found[key] = masks.masks(pruned)
    found = recipes.random_like(_found[key], seed=seed) if shuffled else _found[key]
    net = recipes.sparse_start(copy.deepcopy(init), found)
    training = recipes.recipe_for(MODEL, DATA).training()
    if epochs is not None:
        training["epochs"] = epochs
    train, val, _ = t.loaders()
    sl.train.fit(net, train, val, seed=seed, progress=False, **training)
    result = recipes.evaluate_run(net, t, target_sparsity=sparsity)
    return {
        "test_accuracy": result["accuracy"],
        "measured_sparsity": result["sparsity"],
        "train_epochs": training["epochs"],
        "flags": result["flags"],
    }


# --- the expectations ---------------------------------------------------------------------


def paired_checks(
    df,
    name,
    column,
    treatment,
    baseline,
    *,
    metric,
    by,
    claim=None,
    relation="greater",
    margin=0.0,
    setting="",
    where=None,
) -> list[dict]:
    """``treatment - baseline`` paired over seeds, one check per group of ``by``.

    Empty when an arm was not run (``--criteria`` chose a subset).
    """
    if not {treatment, baseline} <= set(df[column]):
        return []
    diffs = sl.stats.paired(df, column, treatment, baseline, metric=metric, by=by)
    out = []
    for _, row in diffs.iterrows():
        group = {k: row[k] for k in by}
        entry = {
            "expectation": name,
            **(where or {}),
            **group,
            "treatment": treatment,
            "baseline": baseline,
            "metric": metric,
            "status": sl.claims.check(row, relation, margin),
            "paired": {k: row[k] for k in ("mean_diff", "ci_low", "ci_high", "n", "verdict")},
            "numbers": sl.stats.describe(row),
        }
        if claim is not None:
            at = ", ".join(f"{k} {v}" for k, v in {**(where or {}), **group}.items())
            v = sl.claims.verdict(claim, row, setting=f"{setting}, {at}".strip(", "))
            entry["claim"] = {
                "key": claim,
                "status": v.status,
                "numbers": v.numbers(),
                "mean": v.mean,
                "ci_low": v.ci_low,
                "ci_high": v.ci_high,
                "n": v.n,
            }
        out.append(entry)
    return out


def checks(one_shot: pd.DataFrame, pai: pd.DataFrame, sparsities: list[float]) -> list[dict]:
    where = "LeNet-300-100, MNIST subset"
    out = []
    high = one_shot[one_shot.sparsity >= 0.9]
    for metric in ("pruned_accuracy", "finetuned_accuracy"):
        by = ["sparsity"]
        stage = {"stage": metric}
        out += paired_checks(
            high,
            "global magnitude > layer-wise magnitude",
            "criterion",
            "magnitude (global)",
            "magnitude (uniform)",
            metric=metric,
            by=by,
            where=stage,
        )
        out += paired_checks(
            high,
            "layer-wise magnitude > random (global budget)",
            "criterion",
            "magnitude (uniform)",
            "random",
            metric=metric,
            by=by,
            where=stage,
        )
        out += paired_checks(
            high,
            "global magnitude > random with its layer counts",
            "criterion",
            "magnitude (global)",
            RANDOM_LIKE,
            metric=metric,
            by=by,
            where=stage,
            claim="magnitude_beats_random_after_training"
            if metric == "finetuned_accuracy"
            else None,
            setting=where,
        )
        out += paired_checks(
            high,
            "LAMP > global magnitude",
            "criterion",
            "lamp",
            "magnitude (global)",
            metric=metric,
            by=by,
            where=stage,
            claim="lamp_beats_global_magnitude" if metric == "finetuned_accuracy" else None,
            setting=where,
        )
    found = pai[~pai.shuffled]
    for m in ("snip", "grasp", "synflow"):
        out += paired_checks(
            found,
            f"at initialisation: {m} > random",
            "criterion",
            m,
            "random",
            metric="test_accuracy",
            by=["sparsity"],
            claim="snip_beats_random_init" if m == "snip" else None,
            setting=where + ", pruned at initialisation",
        )
    out += paired_checks(
        found[found.sparsity >= 0.9],
        "at initialisation: synflow > snip",
        "criterion",
        "synflow",
        "snip",
        metric="test_accuracy",
        by=["sparsity"],
        claim="synflow_beats_snip_extreme",
        setting=where + ", pruned at initialisation",
    )
    # the at-init masks against magnitude pruning after training, fine-tuned (paired by seed)
    after = one_shot[one_shot.criterion == "magnitude (global)"].assign(
        criterion="magnitude after training", test_accuracy=lambda d: d["finetuned_accuracy"]
    )
    both = pd.concat([found, after], ignore_index=True)
    for m in ("snip", "grasp", "synflow"):
        out += paired_checks(
            both,
            "magnitude after training > pruning at initialisation",
            "criterion",
            "magnitude after training",
            m,
            metric="test_accuracy",
            by=["sparsity"],
            where={"criterion": m},
        )
    for m in AT_INIT:
        part = pai[pai.criterion == m].assign(
            arm=lambda d: d.shuffled.map({True: "shuffled", False: "original"})
        )
        out += paired_checks(
            part,
            "shuffling masks within layers at initialisation changes little (within 2 points)",
            "arm",
            "shuffled",
            "original",
            metric="test_accuracy",
            by=["sparsity"],
            relation="within",
            margin=0.02,
            where={"criterion": m},
            claim="init_masks_carry_layer_ratios_only" if m in ("snip", "synflow") else None,
            setting=where + f", {m}",
        )
    return out


# --- report -------------------------------------------------------------------------------


def figure(one_shot: pd.DataFrame, pai: pd.DataFrame, path: Path, finetune_epochs: int) -> None:
    weights, units = one_shot.criterion.isin(WEIGHTS), one_shot.criterion.isin(UNITS)
    free = one_shot.family == "data-free"
    panels = [
        ("weights, data-free", weights & free),
        (
            "weights, first-order and at-init criteria (magnitude, random for reference)",
            weights & ~free | one_shot.criterion.isin(["magnitude (global)", "random"]),
        ),
        ("units, data-free", units & free),
        (
            "units, data-driven and first-order (random, group_norm for reference)",
            units & ~free | one_shot.criterion.isin(["random (units)", "group_norm"]),
        ),
    ]
    fig, axes = plt.subplots(2, 5, figsize=(26, 9), layout="constrained")
    stages = [
        ("pruned_accuracy", "no fine-tuning"),
        ("finetuned_accuracy", f"{finetune_epochs} epoch(s) fine-tuning"),
    ]
    for row, (metric, stage) in zip(axes, stages, strict=True):
        for ax, (title, select) in zip(row[:4], panels, strict=True):
            part = one_shot[select]
            sl.viz.sparsity_curve(part, x="sparsity", y=metric, hue="criterion", ax=ax)
            ax.axhline(part["dense_accuracy"].mean(), color="k", linestyle=":", linewidth=1)
            ax.set_title(f"{title}: {stage}", fontsize=9)
            ax.set_ylabel("test accuracy")
            ax.legend(fontsize=6)
    for ax, shuffled in zip(axes[:, 4], (False, True), strict=True):
        part = pai[pai.shuffled == shuffled]
        sl.viz.sparsity_curve(part, x="sparsity", y="test_accuracy", hue="criterion", ax=ax)
        ax.set_title(
            f"pruned at init, trained from scratch{', masks shuffled' if shuffled else ''}",
            fontsize=9,
        )
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=6)
    fig.suptitle("LeNet-300-100 on the MNIST subset: mean and 95% interval over seeds")
    fig.savefig(path, dpi=100)


def print_checks(found: list[dict]) -> None:
    """Each expectation's paired difference, and the claim's verdict where there is one."""
    print("\nexpectations (paired differences over seeds, treatment - baseline):")
    for c in found:
        where = ", ".join(f"{k}={c[k]}" for k in ("criterion", "sparsity", "stage") if k in c)
        print(f"  [{c['status']}] {c['expectation']} ({where}): {c['numbers']}")
        if "claim" in c:
            print(
                f"      claim {c['claim']['key']}: {c['claim']['status']} ({c['claim']['numbers']})"
            )
    counts = pd.Series([c["status"] for c in found]).value_counts().to_dict()
    print(f"  {counts}")


def print_flags(df: pd.DataFrame, by: list[str], what: str) -> pd.DataFrame:
    flagged = sl.flags.table(df, by)
    if flagged.empty:
        print(f"No sanity flag fired ({what}).")
    else:
        print(f"\nflagged runs ({what}):")
        print(flagged.to_string(index=False))
    return flagged


def _plain(value):
    return value.item() if hasattr(value, "item") else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--finetune-epochs", type=int, default=FINETUNE_EPOCHS)
    parser.add_argument("--pai-epochs", type=int, default=None, help="default: the recipe's epochs")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="two seeds, two sparsities, 2 epochs of training from initialisation",
    )
    parser.add_argument(
        "--criteria", nargs="+", default=None, help="a subset of the criteria (a check)"
    )
    parser.add_argument("--out", default=None, help="default: results/criteria[_quick].json")
    args = parser.parse_args()
    # a quick check must never overwrite the stored full run
    args.out = args.out or str(RESULTS / f"criteria{'_quick' if args.quick else ''}.json")
    torch.set_num_threads(args.threads)
    seeds = args.seeds[:2] if args.quick else args.seeds
    sparsities = [0.75, 0.95] if args.quick else SPARSITIES
    recipe = recipes.recipe_for(MODEL, DATA)
    pai_epochs = 2 if args.quick else args.pai_epochs
    chosen = args.criteria or [*WEIGHTS, *UNITS, *AT_INIT]
    started = time.perf_counter()
    dense = {seed: setting(seed)[2] for seed in seeds}
    for seed, info in dense.items():
        print(f"dense seed {seed}: test {info['test_accuracy']:.4f} {info['flags']}".rstrip())
    after = [c for c in [*WEIGHTS, *UNITS] if c in chosen]
    print(f"{len(after)} criteria after training ...", flush=True)
    one_shot = sl.experiments.sweep(
        # the fine-tuning budget is a metric of every run (finetune_epochs, finetune_flops)
        # and part of the cache's name
        functools.partial(after_training, finetune_epochs=args.finetune_epochs),
        {"criterion": after, "sparsity": sparsities},
        seeds=seeds,
        cache_dir=CACHE,
        name=f"{VERSION}-after_training-finetune{args.finetune_epochs}",
        progress=False,
    )
    at_init_chosen = [c for c in AT_INIT if c in chosen]
    print(f"{len(at_init_chosen)} criteria at initialisation ...", flush=True)
    pai = sl.experiments.sweep(
        at_initialisation,
        {
            "criterion": at_init_chosen,
            "sparsity": sparsities,
            "shuffled": [False, True],
            "epochs": [pai_epochs],
        },
        seeds=seeds,
        cache_dir=CACHE,
        name=f"{VERSION}-at_initialisation",
        progress=False,
    )
    found = checks(one_shot, pai, sparsities)
    tables = {
        metric: sl.experiments.summarize(one_shot, ["criterion", "sparsity"], metric)
        for metric in ("pruned_accuracy", "finetuned_accuracy")
    }
    pai_table = sl.experiments.summarize(
        pai, ["criterion", "shuffled", "sparsity"], "test_accuracy"
    )
    pd.set_option("display.width", 200)
    for metric, table in tables.items():
        print(f"\nmean test accuracy, {metric}:")
        print(table.pivot(index="criterion", columns="sparsity", values="mean").round(3))
    print("\nmean test accuracy, pruned at initialisation and trained from scratch:")
    print(
        pai_table.pivot(index=["criterion", "shuffled"], columns="sparsity", values="mean").round(3)
    )
    flagged_after = print_flags(one_shot, ["criterion", "sparsity"], "after training")
    flagged_init = print_flags(pai, ["criterion", "shuffled", "sparsity"], "at initialisation")
    print_checks(found)
    report = {
        "benchmark": "criteria",
        "setting": "lenet300 on the MNIST subset (4000 train, 500 val, 500 test examples)",
        "quick": args.quick,
        "seeds": seeds,
        "sparsities": sparsities,
        "criteria": chosen,
        "dense": {
            "recipe": dict(recipe.training(), batch_size=recipe.batch_size),
            "expected_test_accuracy": recipe.expected_test_accuracy,
            "per_seed": {
                s: {k: i[k] for k in ("test_accuracy", "val_accuracy", "flags")}
                for s, i in dense.items()
            },
        },
        "finetune": {
            "epochs": args.finetune_epochs,
            "lr": FINETUNE_LR,
            "optimizer": "sgd",
            "flops_per_run": "finetune_flops of each run",
        },
        "at_init_training": {
            **recipe.training(),
            "epochs": pai_epochs or recipe.epochs,
            "epochs_note": "the recipe's"
            if pai_epochs is None
            else f"{pai_epochs}, overriding the recipe's {recipe.epochs}"
            + (" (--quick)" if args.quick else ""),
        },
        "calibration_batches": CALIBRATION_BATCHES,
        "synflow_iterations": SYNFLOW_ITERATIONS,
        "threads": args.threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        # runs found in the cache load at once, so this is the time of the missing runs only
        "seconds_this_invocation": time.perf_counter() - started,
        "after_training": one_shot.to_dict(orient="records"),
        "at_initialisation": pai.to_dict(orient="records"),
        "summary": {k: v.to_dict(orient="records") for k, v in tables.items()},
        "summary_at_initialisation": pai_table.to_dict(orient="records"),
        "flagged": {
            "after_training": flagged_after.to_dict(orient="records"),
            "at_initialisation": flagged_init.to_dict(orient="records"),
        },
        "checks": found,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=_plain))
    figure(one_shot, pai, out.with_suffix(".png"), args.finetune_epochs)
    if pai_epochs is not None:
        print(
            f"training from initialisation: {pai_epochs} epochs, not the recipe's {recipe.epochs}"
        )
    print(f"wrote {out} and {out.with_suffix('.png')}")
    print(f"{report['seconds_this_invocation']:.0f} s (runs not in the cache)")


if __name__ == "__main__":
    main()

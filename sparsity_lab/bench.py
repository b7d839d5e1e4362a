"""The benchmark harness: methods compared on one setting under one protocol, with a manifest.

A benchmark is a small YAML file (read with ``yaml.safe_load``)::

    name: lenet300-mnist          # the result table's name
    model: lenet300               # a setting with a dense recipe (sparsity_lab.recipes)
    data: mnist
    sparsities: [0.5, 0.8, 0.9]
    seeds: [0, 1, 2]
    finetune_epochs: 2            # the same fine-tuning budget for every method
    methods:
      - snip                      # a registered criterion, pruning globally
      - {method: wanda, label: wanda}
      - {method: magnitude, label: magnitude 2:4, options: {pattern: "2:4"}}
      - {method: rigl, options: {budget: erk}, epochs_factor: 2}   # a training method
      - {method: snip, kind: at_init, shuffle: true}             # its mask's random twin
      - {method: variational_dropout, training: {optimizer: adam, lr: 1.0e-3}}  # its paper's
    imports: [my_method.py]       # modules or files that register more methods

A method entry's ``kind`` (:data:`KINDS`; by default the kind its name is registered
under) says how its run makes the sparse model:

* ``prune`` (a criterion): the setting's dense model of the seed (:func:`recipes.dense`,
  the recipe's, cached) is pruned once (a criterion with a score tracker, such as
  ``movement``, first follows ``track_epochs`` more epochs of training), then fine-tuned
  with the masks fixed for ``finetune_epochs`` (:func:`recipes.finetune_and_measure`);
* ``at_init`` (a criterion): the seed's *untrained* model is pruned (``shuffle: true``
  takes the mask's random twin, the same per-layer counts), rescaled to its sparse fan-in
  (:func:`recipes.sparse_start`) and trained with the recipe, masks fixed;
* ``train`` (a training method, or ``static``: a fixed random mask): a fresh model trains
  with the method and the recipe's optimizer, schedule and epochs (times
  ``epochs_factor``); a method that ends dense (CrAM) names ``prune_with: magnitude`` and
  is pruned once at the end, then fine-tuned like a ``prune`` run;
* ``regularize`` (a regularizer): a fresh model trains with the penalty for the recipe's
  epochs (its optimizer, learning rate, momentum, weight decay and batch size, with no
  schedule), is projected to the target by the regularizer, and fine-tuned like the
  others (:func:`sparsity_lab.regularizers.compare.run`); a training method such as
  ``gmp`` given this kind runs the same protocol, as the regularizers' reference.

An entry's ``training`` replaces the recipe's optimizer settings (``optimizer``, ``lr``,
``momentum``, ``weight_decay``, and ``lr_schedule`` except for ``regularize`` runs, which
train without a schedule) for a method whose paper trains otherwise,
such as variational dropout with Adam; its epochs stay the recipe's (``epochs_factor``)
and the fine-tuning stays the protocol's.

With ``bn_reestimate: true`` every one-shot pruning of a trained model (kind ``prune``,
and ``prune_with``) is followed by re-estimating the BatchNorm statistics on the
calibration batches (CrAM's protocol), for every method alike; a regularizer's projection
is not.
Every run is measured on the test split; its latency is timed on the exported copy
(:func:`sparsity_lab.accel.export`, batch 1).
The mandatory baselines (:data:`BASELINES`) join every benchmark: the dense model, global
and uniform magnitude, and a random mask with the per-layer counts of global magnitude's
mask (:func:`recipes.random_like`), so a method is never compared with a weaker baseline
than the field's.

:func:`run` returns a tidy table, one row per run (:data:`COLUMNS`), and
:func:`write` saves it as CSV with a manifest beside it (:func:`manifest`: library and
dependency versions, git commit, seeds, a hash of every data split, the dense baselines, the
machine).  Runs go through :func:`sparsity_lab.experiments.sweep`, so each finished run is
cached at once and a sweep resumed elsewhere reuses it; :func:`executor` runs them on a Dask
cluster (``"local:4"`` for a ``LocalCluster``, ``"tcp://host:8786"`` for a scheduler).

On a cluster of machines: start ``dask scheduler`` on one host, and ``dask worker
tcp://host:8786 --nthreads 1`` on each machine, in an environment with this library and
its pinned dependencies installed (``pip install "sparsity-lab[cluster]"``) and the files
named under ``imports:`` at the same relative path; then run ``sparsity-lab bench CONFIG
--executor tcp://host:8786`` from a checkout.  Results come back to the machine that runs
the command, which caches each one as it arrives, so a lost worker loses only the run it
had (Dask gives it to another worker) and a rerun anywhere reuses the cache.  Each worker
trains, or loads from its own checkpoint cache, the dense models its runs need.  Runs fix
their seed and thread count, so machines of one kind give the serial table exactly; a
different CPU may round sums differently, so compare tables made on mixed machines with
``compare(..., rtol=...)`` rather than expecting identical digits.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import hashlib
import importlib
import importlib.metadata
import importlib.util
import itertools
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, accel, masks, patterns, recipes, shrink
from .accounting import report
from .experiments import sweep
from .methods.base import TrainingFlops
from .methods.cram import reestimate_batchnorm
from .paths import write_atomically
from .pipeline import _dependency_closure
from .pruning import prune
from .registry import available
from .registry import entry as registry_entry
from .train import LR_SCHEDULES, OPTIMIZERS, fit

#: The version of a run's definition: change it when a run of the same cell would measure
#: something else, so that cached results of the old definition are not reused.
VERSION = "bench-4"

#: The baselines every benchmark includes, as (label, method, options).
BASELINES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("dense", "dense", {}),
    ("magnitude (global)", "magnitude", {"budget": "global"}),
    ("magnitude (uniform)", "magnitude", {"budget": "uniform"}),
    ("random (magnitude's layer counts)", "random_like_magnitude", {}),
)

#: How a run makes its sparse model: a method entry's ``kind`` -> the registry kind its
#: method is looked up in (see the module's docstring).
KINDS = {
    "prune": "criterion",
    "at_init": "criterion",
    "train": "training",
    "regularize": "regularizer",
}

#: The columns of a result table, in order.
COLUMNS = (
    "model",
    "data",
    "method",
    "kind",
    "criterion",
    "options",
    "target_sparsity",
    "seed",
    "sparsity",
    "test_accuracy",
    "val_accuracy",
    "pruned_accuracy",
    "perplexity",
    "dense_test_accuracy",
    "parameters",
    "nonzeros",
    "flops",
    "dense_flops",
    "training_flops",
    "dense_training_flops",
    "storage_bits",
    "dense_storage_bits",
    "epochs",
    "finetune_epochs",
    "latency_seconds",
    "prune_seconds",
    "wall_seconds",
    "flags",
    "pruned_flags",
    "extras",
)

#: Columns that measure the machine rather than the method: they differ between two runs
#: of the same cell, so :func:`compare` and :func:`table_digest` leave them out.
TIMING_COLUMNS = ("latency_seconds", "prune_seconds", "wall_seconds")
#: Timings among a run's ``extras``, left out the same way.
TIMING_EXTRAS = ("seconds_per_epoch",)

_BASELINE_ENTRY = {"kind": "prune", "epochs_factor": 1.0, "shuffle": False, "prune_with": None}
_DEFAULTS: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "finetune_epochs": 2,
    "finetune_lr": 0.01,
    "calibration_batches": 8,
    "track_epochs": 1,
    "bn_reestimate": False,
    "threads": 1,
    "imports": [],
    "methods": [],
}
_REQUIRED = ("name", "model", "data", "sparsities")


# ------------------------------------------------------------------------------ the config


def load_config(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A benchmark's config from a YAML file (``yaml.safe_load``) or a dict, checked.

    Missing keys take :data:`_DEFAULTS`; ``methods`` entries become ``{"label", "method",
    "options"}``; relative ``imports`` paths are taken from the file's folder.
    """
    base = Path(".")
    if isinstance(source, Mapping):
        raw = dict(source)
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no benchmark config at {path}")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"{path}: a benchmark config is a mapping of keys, got {raw!r}")
        base = path.parent
    unknown = sorted(set(raw) - set(_DEFAULTS) - set(_REQUIRED))
    if unknown:
        raise ValueError(
            f"unknown config keys {unknown}; the keys are {sorted([*_REQUIRED, *_DEFAULTS])}"
        )
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise ValueError(f"the config needs {missing} (see sparsity_lab.bench for an example)")
    config = {**copy.deepcopy(_DEFAULTS), **raw}
    for sparsity in config["sparsities"]:
        patterns.check_sparsity(sparsity)
    if not config["seeds"]:
        raise ValueError("seeds is empty; give at least one seed")
    config["imports"] = [_import_spec(spec, base) for spec in config["imports"]]
    import_methods(config["imports"])
    config["methods"] = [_method_entry(entry) for entry in config["methods"]]
    labels = [entry["label"] for entry in config["methods"]] + [b[0] for b in BASELINES]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise ValueError(f"method labels {repeated} appear twice; give each a unique label")
    return config


def _import_spec(spec: str, base: Path) -> str:
    """A module name as it is, or a ``.py`` path found from ``base`` and written relative
    to the working folder: every worker resolves it from its own (a cluster's workers need
    the file at the same place), and a cached run's key does not hold this machine's path."""
    if not str(spec).endswith(".py"):
        return str(spec)
    path = Path(spec) if Path(spec).is_absolute() else (base / spec)
    if not path.is_file():
        raise FileNotFoundError(f"imports: no file {path}")
    return os.path.relpath(path.resolve())


def import_methods(specs: Sequence[str]) -> None:
    """Import the modules or ``.py`` files that register extra methods (once each).

    Every run calls this too, so a worker of a cluster registers them before it prunes.
    """
    for spec in specs:
        if not spec.endswith(".py"):
            importlib.import_module(spec)
            continue
        spec = str(Path(spec).resolve())
        name = "sparsity_lab_bench_" + hashlib.sha256(spec.encode()).hexdigest()[:12]
        if name in sys.modules:
            continue
        module_spec = importlib.util.spec_from_file_location(name, spec)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise


#: Training methods the harness runs besides the registered ones: a fixed random mask is
#: the baseline every dynamic method must beat, and is deliberately not in the registry.
_UNREGISTERED_TRAINING = {"static": "sparsity_lab.methods.dynamic:StaticSparse"}
_ENTRY_KEYS = (
    "method",
    "label",
    "options",
    "kind",
    "epochs_factor",
    "shuffle",
    "prune_with",
    "select",
    "training",
)
#: What a method entry's ``training`` may change of the recipe (its paper's optimizer).
_TRAINING_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "lr_schedule")


def _kind_of(name: str) -> str | None:
    """The default kind of a method name: the first kind whose registry has it."""
    if name in _UNREGISTERED_TRAINING:
        return "train"
    for kind, registry_kind in KINDS.items():
        if name in available(registry_kind):
            return kind
    return None


def _method_entry(entry: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"snip"`` or a mapping of :data:`_ENTRY_KEYS` as a full entry, its names checked."""
    if isinstance(entry, str):
        entry = {"method": entry}
    if not isinstance(entry, Mapping) or "method" not in entry:
        raise ValueError(f"a method is a name or a mapping with 'method', got {entry!r}")
    name = entry["method"]
    extra = sorted(set(entry) - set(_ENTRY_KEYS))
    if extra:
        raise ValueError(f"method {name!r}: unknown keys {extra}; the keys are {list(_ENTRY_KEYS)}")
    kind = entry.get("kind") or _kind_of(name)
    if kind is None:
        raise ValueError(
            f"unknown method {name!r}; the harness runs registered criteria, training methods "
            "and regularizers (`sparsity-lab list`), or 'static'; register yours in a module "
            "named under imports:"
        )
    if kind not in KINDS:
        raise ValueError(f"method {name!r}: unknown kind {kind!r}; choose one of {list(KINDS)}")
    unregistered = kind == "train" and name in _UNREGISTERED_TRAINING
    # a training method may also run the regularizers' protocol, as their reference
    shared = kind == "regularize" and name in available("training")
    if not (unregistered or shared) and name not in available(KINDS[kind]):
        raise ValueError(
            f"method {name!r} is not a registered {KINDS[kind]}, which kind {kind!r} needs "
            f"(`sparsity-lab list {KINDS[kind]}`)"
        )
    epochs_factor = float(entry.get("epochs_factor", 1))
    if not epochs_factor > 0:
        raise ValueError(f"method {name!r}: epochs_factor must be > 0, got {epochs_factor}")
    if kind == "prune" and epochs_factor != 1:
        raise ValueError(
            f"method {name!r}: a prune run fine-tunes for the config's finetune_epochs; "
            "epochs_factor is for kinds that train (at_init, train, regularize)"
        )
    if "seed" in (entry.get("options") or {}):
        raise ValueError(
            f"method {name!r}: a run's seed is one of the config's seeds; remove seed from its "
            "options"
        )
    ends_dense = (
        kind == "train" and not unregistered and registry_entry(name, "training").obj.ends_dense
    )
    if ends_dense and entry.get("prune_with") is None:
        raise ValueError(
            f"method {name!r} ends with a dense model: add prune_with: magnitude to prune it "
            "once at the end"
        )
    shuffle = bool(entry.get("shuffle", False))
    if shuffle and kind != "at_init":
        raise ValueError(f"method {name!r}: shuffle is for kind 'at_init', not {kind!r}")
    prune_with = entry.get("prune_with")
    if prune_with is not None and (kind != "train" or prune_with != "magnitude"):
        raise ValueError(
            f"method {name!r}: prune_with: magnitude prunes a train run's model once at the "
            f"end (for methods that end dense, such as cram); got {prune_with!r} on kind {kind!r}"
        )
    out = {
        "label": str(entry.get("label", name)),
        "method": name,
        "kind": kind,
        "options": dict(entry.get("options") or {}),
        "epochs_factor": epochs_factor,
        "shuffle": shuffle,
        "prune_with": prune_with,
    }
    if entry.get("select") is not None:  # absent otherwise: the other runs' caches stay valid
        out["select"] = _selection(name, kind, entry["select"], out["options"])
    if entry.get("training") is not None:  # likewise
        out["training"] = _training_override(name, kind, entry["training"])
    return out


def _training_override(name: str, kind: str, training: Any) -> dict[str, Any]:
    """A method entry's ``training``: the recipe's optimizer settings its paper replaces
    (variational dropout trains with Adam, say); the epochs stay the recipe's."""
    if kind == "prune":
        raise ValueError(
            f"method {name!r}: training changes how a method trains; a prune run fine-tunes "
            "with the config's protocol, the same for every method"
        )
    if not isinstance(training, Mapping) or not training:
        raise ValueError(
            f"method {name!r}: training maps recipe settings to values, e.g. "
            "training: {optimizer: adam, lr: 1.0e-3}"
        )
    unknown = sorted(set(training) - set(_TRAINING_KEYS))
    if unknown:
        raise ValueError(
            f"method {name!r}: training cannot set {unknown}; it sets {list(_TRAINING_KEYS)} "
            "(epochs: use epochs_factor)"
        )
    if kind == "regularize" and "lr_schedule" in training:
        raise ValueError(
            f"method {name!r}: a regularize run trains without a schedule (it would fight the "
            "regularizer's tuner); remove lr_schedule from training"
        )

    def number(key: str, positive: bool) -> None:
        value = training.get(key)
        if key not in training:
            return
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or (value <= 0 if positive else value < 0):
            raise ValueError(
                f"method {name!r}: training.{key} must be a "
                f"{'positive' if positive else 'non-negative'} number, got {value!r} (YAML "
                "reads 5e-4 as text: write 5.0e-4)"
            )

    number("lr", positive=True)
    number("momentum", positive=False)
    number("weight_decay", positive=False)
    if "optimizer" in training and training["optimizer"] not in OPTIMIZERS:
        raise ValueError(
            f"method {name!r}: training.optimizer must be one of {list(OPTIMIZERS)}, "
            f"got {training['optimizer']!r}"
        )
    if training.get("lr_schedule") not in (None, *LR_SCHEDULES):
        raise ValueError(
            f"method {name!r}: training.lr_schedule must be one of {list(LR_SCHEDULES)} or "
            f"null, got {training['lr_schedule']!r}"
        )
    return dict(training)


def _selection(
    name: str, kind: str, select: Any, options: Mapping[str, Any]
) -> dict[str, list[Any]]:
    """A method entry's ``select``: options whose value each run chooses on validation."""
    if kind != "regularize":
        raise ValueError(
            f"method {name!r}: select chooses a regularizer's options on validation; it is "
            f"for kind 'regularize', not {kind!r}"
        )
    if not isinstance(select, Mapping) or not select:
        raise ValueError(
            f"method {name!r}: select maps option names to the values to try, e.g. "
            "select: {strength: [1.0e-4, 1.0e-3]}"
        )
    for option, values in select.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"method {name!r}: select.{option} must be a non-empty list")
        if option in options:
            raise ValueError(
                f"method {name!r}: {option!r} is both fixed in options and selected; keep one"
            )
    return {str(k): list(v) for k, v in select.items()}


def cells(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The arms of a benchmark: one per method and target sparsity (dense once).

    An N:M pattern fixes its sparsity, so its method has one arm at that sparsity.
    """
    entries = [
        {**_BASELINE_ENTRY, "label": label, "method": method, "options": options}
        for label, method, options in BASELINES
    ] + list(config["methods"])
    arms = []
    for entry in entries:
        if entry["method"] == "dense":
            arms.append({**entry, "sparsity": 0.0})
            continue
        pattern = patterns.get(entry["options"].get("pattern", "unstructured"))
        if pattern.fixed_sparsity is not None:
            arms.append({**entry, "sparsity": pattern.fixed_sparsity})
            continue
        arms += [{**entry, "sparsity": float(s)} for s in config["sparsities"]]
    return arms


def setting_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """What every run of a benchmark shares: the setting and the protocol's budget."""
    keys = (
        "model",
        "data",
        "finetune_epochs",
        "finetune_lr",
        "calibration_batches",
        "track_epochs",
        "bn_reestimate",
    )
    return {**{k: config[k] for k in keys}, "threads": config["threads"]} | {
        "imports": list(config["imports"])
    }


# --------------------------------------------------------------------------------- one run


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    """Run on ``n`` threads: a sum over more threads can round differently, so the thread
    count is part of a run's definition, not of the machine that runs it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_cell(setting: Mapping[str, Any], arm: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """One run of a benchmark: make the arm's sparse model for the seed and measure it.

    Returns the metrics of :data:`COLUMNS` (the names and options come from ``arm``).
    """
    import_methods(setting["imports"])
    arm = {**_BASELINE_ENTRY, **arm}
    start = time.perf_counter()
    with _threads(setting["threads"]):
        t, dense_model, info = recipes.dense(setting["model"], setting["data"], seed)
        recipe = recipes.recipe_for(setting["model"], setting["data"])
        options = dict(arm["options"])
        pattern = options.get("pattern", "unstructured")
        fixed = patterns.get(pattern).fixed_sparsity
        # an N:M pattern fixes its sparsity: the methods are given none to aim at
        run = _Run(setting, arm, seed, t, recipe, None if fixed is not None else arm["sparsity"])
        stage_start = time.perf_counter()
        if arm["method"] == "dense":
            model = dense_model
            result = recipes.finetune_and_measure(model, t, None, finetune_epochs=0)
        else:
            model, result = _STAGES[arm["kind"]](run, dense_model)
        prune_seconds = time.perf_counter() - stage_start
        names = options.get("targets") or None
        latency = _latency(model)
        cost = report(model, names, pattern=None if arm["method"] == "dense" else pattern)
        total = cost.iloc[-1]
        perplexity = recipes.evaluate_run(model, t).get("perplexity", math.nan)
        dense_training_flops = recipes.training_flops(t.build(), len(t.bundle.train), recipe.epochs)
    return {
        "model": setting["model"],
        "data": setting["data"],
        "method": arm["label"],
        "kind": arm["kind"],
        "criterion": arm["method"],
        "options": json.dumps(arm["options"], sort_keys=True),
        "target_sparsity": arm["sparsity"],
        "sparsity": result["measured_sparsity"],
        "test_accuracy": result["test_accuracy"],
        "val_accuracy": result["val_accuracy"],
        "pruned_accuracy": result["pruned_accuracy"],
        "perplexity": perplexity,
        "dense_test_accuracy": info["test_accuracy"],
        "parameters": int(total["parameters"]),
        "nonzeros": int(total["nonzeros"]),
        "flops": float(total["sparse_flops"]),
        "dense_flops": float(total["dense_flops"]),
        "training_flops": result.get("training_flops", result["finetune_flops"]),
        "dense_training_flops": dense_training_flops,
        "storage_bits": int(total["bytes"]) * 8,
        "dense_storage_bits": int(total["dense_bytes"]) * 8,
        "epochs": result.get("epochs", 0),
        "finetune_epochs": result["finetune_epochs"],
        "latency_seconds": latency,
        "prune_seconds": prune_seconds,
        "wall_seconds": time.perf_counter() - start,
        "flags": result["flags"],
        "pruned_flags": result["pruned_flags"],
        "extras": json.dumps(result.get("extras", {}), sort_keys=True),
    }


@dataclasses.dataclass
class _Run:
    """What the stages of one run share."""

    setting: Mapping[str, Any]
    arm: Mapping[str, Any]
    seed: int
    task: recipes.Task
    recipe: recipes.Recipe
    sparsity: float | None  # None when the pattern fixes it

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.arm["options"])

    def calibration(self) -> list:
        """The first ``calibration_batches`` training batches of the seed's order."""
        train = self.task.loaders()[0]
        n = self.setting["calibration_batches"]
        return [batch for _, batch in zip(range(n), train, strict=False)]

    def training(self) -> dict[str, Any]:
        """The recipe's ``fit`` options, its epochs times the arm's ``epochs_factor``, with
        the arm's ``training`` settings in place of the recipe's."""
        options = self.recipe.training() | self.arm.get("training", {})
        options["epochs"] = max(1, round(options["epochs"] * self.arm["epochs_factor"]))
        return options

    def training_loaders(self) -> tuple:
        """Train, validation and test loaders in the recipe's batch size, as the dense model
        of the setting was trained."""
        return self.task.loaders(self.recipe.batch_size)

    def finetune_and_measure(self, model: nn.Module) -> dict[str, Any]:
        """Re-estimate BatchNorm if the config says so, fine-tune, measure (the protocol's
        second half, the same for every kind that prunes a trained model)."""
        if self.setting["bn_reestimate"]:
            reestimate_batchnorm(model, self.calibration())
        return recipes.finetune_and_measure(
            model,
            self.task,
            self.arm["sparsity"],
            finetune_epochs=self.setting["finetune_epochs"],
            lr=self.setting["finetune_lr"],
            names=self.options.get("targets") or None,
        )


def _prune_trained(run: _Run, dense_model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Kind ``prune``: prune the trained dense model once, then fine-tune it."""
    model, options, method = dense_model, run.options, run.arm["method"]
    extras: dict[str, Any] = {}
    tracking_flops = 0.0
    if method == "random_like_magnitude":
        found = masks.masks(prune(copy.deepcopy(model), "magnitude", run.sparsity, seed=run.seed))
        for name, mask in recipes.random_like(found, seed=run.seed).items():
            masks.attach(model, name, mask)
    else:
        tracker_type = getattr(registry_entry(method, "criterion").obj, "tracker_type", None)
        if tracker_type is not None and "tracker" not in options:
            # a criterion that ranks what it saw during training follows a few more epochs
            options["tracker"] = tracker_type()
            epochs = run.setting["track_epochs"]
            train, val, _ = run.task.loaders()
            fit(model, train, val, epochs=epochs, lr=run.setting["finetune_lr"], seed=run.seed,
                callbacks=[options["tracker"]], progress=False)  # fmt: skip
            tracking_flops = recipes.training_flops(model, len(run.task.bundle.train), epochs)
            extras["tracked_accuracy"] = recipes.evaluate_run(model, run.task)["accuracy"]
        prune(model, method, run.sparsity, data=run.calibration(), seed=run.seed, **options)
    result = run.finetune_and_measure(model)
    return model, {
        **result,
        "training_flops": tracking_flops + result["finetune_flops"],
        "extras": extras,
    }


def _prune_at_init(run: _Run, dense_model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Kind ``at_init``: prune the seed's initial weights, train the sparse network."""
    init = run.task.build()  # the seed's dense model started from these weights
    pruned = prune(copy.deepcopy(init), run.arm["method"], run.sparsity, data=run.calibration(),
                   seed=run.seed, **run.options)  # fmt: skip
    found = masks.masks(pruned)
    if run.arm["shuffle"]:
        found = recipes.random_like(found, seed=run.seed)
    model = recipes.sparse_start(init, found)
    training = run.training()
    train, val, _ = run.training_loaders()
    fit(model, train, val, seed=run.seed, progress=False, **training)
    result = recipes.finetune_and_measure(
        model, run.task, run.arm["sparsity"], finetune_epochs=0,
        names=run.options.get("targets") or None,
    )  # fmt: skip
    flops = recipes.training_flops(model, len(run.task.bundle.train), training["epochs"])
    return model, {**result, "training_flops": flops, "epochs": training["epochs"]}


def _train(run: _Run, dense_model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Kind ``train``: a fresh model trained by a sparse training method."""
    name = run.arm["method"]
    if name in _UNREGISTERED_TRAINING:
        module, _, attribute = _UNREGISTERED_TRAINING[name].partition(":")
        cls = getattr(importlib.import_module(module), attribute)
    else:
        cls = registry_entry(name, "training").obj
    options = {**run.options, "seed": run.seed}
    method = cls(run.sparsity, **options)
    model = run.task.build()
    counter = TrainingFlops(method)
    training = run.training()
    train, val, _ = run.training_loaders()
    method.fit(model, train, val, seed=run.seed, callbacks=[counter], progress=False, **training)
    extras = _method_extras(method, run)
    if run.arm["prune_with"] == "magnitude":
        extras["trained_accuracy"] = recipes.evaluate_run(model, run.task)["accuracy"]
        budget = {k: options[k] for k in ("budget", "pattern", "targets") if k in options}
        prune(model, "magnitude", run.sparsity, seed=run.seed, **budget)
        result = run.finetune_and_measure(model)
    else:
        result = recipes.finetune_and_measure(
            model, run.task, run.arm["sparsity"], finetune_epochs=0,
            names=run.options.get("targets") or None,
        )  # fmt: skip
    return model, {
        **result,
        "training_flops": counter.total + result["finetune_flops"],
        "epochs": counter.epochs,  # all of the method's trainings (IMP: every round)
        "extras": extras,
    }


def _method_extras(method: Any, run: _Run) -> dict[str, Any]:
    """What a training method measured beside its model, for the claims about it."""
    extras: dict[str, Any] = {}
    if getattr(method, "dense_model", None) is not None:  # AC/DC's dense member
        extras["dense_member_accuracy"] = recipes.evaluate_run(method.dense_model, run.task)[
            "accuracy"
        ]
    rounds = getattr(method, "rounds_table", None)  # IMP: the ticket's re-initialised twin
    if rounds is not None and "reinit_val_accuracy" in rounds:
        extras["reinit_val_accuracy"] = float(rounds["reinit_val_accuracy"].iloc[-1])
        extras["ticket_val_accuracy"] = float(rounds["val_accuracy"].iloc[-1])
    if isinstance(getattr(method, "log", None), list):
        extras["mask_updates"] = len(method.log)
    return extras


def _regularize(run: _Run, dense_model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Kind ``regularize``: train with the penalty, project to the target, fine-tune.

    With the entry's ``select``, every combination of the listed option values is run and
    the one with the best validation accuracy is kept (ties: the first listed); the test
    split plays no part in the choice, and the training FLOPs count every candidate.
    """
    from .regularizers import compare

    options = run.options
    pattern = options.pop("pattern", "unstructured")
    targets = options.pop("targets", None)
    training = run.training()
    select = run.arm.get("select") or {}
    candidates = [
        dict(zip(select, values, strict=True)) for values in itertools.product(*select.values())
    ] or [{}]
    dense_flops = recipes.training_flops(
        run.task.build(), len(run.task.bundle.train), training["epochs"]
    )
    best, tried, flops = None, [], 0.0
    for candidate in candidates:
        model = run.task.build()
        out = compare.run(
            run.task,
            run.arm["method"],
            run.arm["sparsity"],
            model=model,
            pattern=pattern,
            targets=targets,
            epochs=training["epochs"],
            # the recipe's optimizer, learning rate, momentum, weight decay and batch, with
            # no schedule (the regularizers' own protocol: a schedule would fight their
            # tuners)
            optimizer=training["optimizer"],
            lr=training["lr"],
            fit_options={k: training[k] for k in ("momentum", "weight_decay")},
            batch_size=run.recipe.batch_size,
            # then the same fine-tuning as every other run of the benchmark
            finetune_epochs=run.setting["finetune_epochs"],
            finetune_lr=run.setting["finetune_lr"],
            finetune_optimizer="sgd",
            **options,
            **candidate,
        )
        # the penalty trains the dense weights: every step costs a dense one
        flops += dense_flops + out["finetune_flops"]
        tried.append({**candidate, "val_accuracy": out["val_accuracy"]})
        if best is None or out["val_accuracy"] > best[2]["val_accuracy"]:
            best = (model, candidate, out)
    model, chosen, out = best
    extras = {
        "reached": out["reached"],
        "strength": out["strength"],
        "extra_parameters": out["extra_parameters"],
        "seconds_per_epoch": out["seconds_per_epoch"],
    }
    if select:
        extras |= {"selected": chosen, "candidates": tried}
    return model, {
        **out,
        "training_flops": flops,
        "pruned_flags": "",
        "epochs": training["epochs"] * len(candidates),
        "extras": extras,
    }


_STAGES = {
    "prune": _prune_trained,
    "at_init": _prune_at_init,
    "train": _train,
    "regularize": _regularize,
}


def _latency(model: torch.nn.Module) -> float:
    """Median seconds of one example through the model as it would be deployed.

    :func:`sparsity_lab.accel.export` shrinks structured zeros and runs each layer with the
    fastest of the dense and sparse kernels it measures here; a masked model itself costs
    what the dense one does, so timing it would hide every saving.
    """
    example = shrink.example_batch(model, batch=1)
    deployed = accel.export(model, example)
    with torch.no_grad():
        return accel.time_call(lambda: deployed(example))


# ----------------------------------------------------------------------- a whole benchmark


@contextlib.contextmanager
def executor(spec: str | None) -> Iterator[Any]:
    """A ``concurrent.futures`` executor for ``spec``, or None to run in this process.

    ``None`` or ``"serial"``: one run after the other, here.  ``"local"`` or ``"local:N"``:
    a Dask ``LocalCluster`` of N single-threaded worker processes (default 2).  An address
    such as ``"tcp://host:8786"``: the Dask scheduler there; its workers need this library
    (and the files named under ``imports:``) installed at the same version.
    """
    if spec in (None, "", "serial"):
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ImportError(
            f"executor {spec!r} needs Dask: pip install 'sparsity-lab[cluster]' "
            "(or dask[distributed]); use executor 'serial' to run here"
        ) from err
    if spec == "local" or spec.startswith("local:"):
        n = int(spec.partition(":")[2] or 2)
        if n < 1:
            raise ValueError(f"executor {spec!r}: a LocalCluster needs at least one worker")
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client.get_executor()
        return
    if "://" not in spec:
        raise ValueError(
            f"unknown executor {spec!r}; use 'serial', 'local', 'local:N' or a scheduler "
            "address such as 'tcp://host:8786'"
        )
    with Client(spec) as client:
        yield client.get_executor()


def run(
    config: str | os.PathLike | Mapping[str, Any],
    *,
    executor_spec: str | None = None,
    cache_dir: str | os.PathLike | None = ".cache/bench",
    progress: bool | None = None,
) -> Any:
    """Run every arm and seed of a benchmark; the tidy table of :data:`COLUMNS`.

    Finished runs are cached in ``cache_dir`` as they finish (None: no cache), so an
    interrupted or lost run costs only itself and a rerun, here or on a cluster, reuses
    every finished one.
    """
    config = load_config(config)
    with executor(executor_spec) as pool:
        table = sweep(
            run_cell,
            {"setting": [setting_of(config)], "arm": cells(config)},
            seeds=config["seeds"],
            executor=pool,
            cache_dir=cache_dir,
            progress=progress,
            name=f"sparsity_lab.bench.run_cell/{VERSION}",
        )
    return table.drop(columns=["setting", "arm"])[list(COLUMNS)]


def _git_commit() -> dict[str, Any]:
    """The commit of the working tree this library is imported from, if it is a git one."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "sparsity_lab"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "library_modified": None}
    return {"commit": commit, "library_modified": bool(status.strip())}


def _versions() -> dict[str, str]:
    """Installed versions of the library's dependencies (and what they require)."""
    return dict(sorted(_dependency_closure(["sparsity-lab"]).items()))


def manifest(config: Mapping[str, Any], table: Any) -> dict[str, Any]:
    """What produced ``table``: enough to rerun it and to tell whether a rerun may differ.

    The config, library and dependency versions, the git commit, the machine, the seeds, a
    hash of every data split of every seed, each seed's dense baseline (test and validation
    accuracy, recipe, flags) and a hash of the table's method columns.
    """
    config = load_config(config)
    splits, baselines = {}, {}
    with _threads(config["threads"]):
        for seed in config["seeds"]:
            t, _, info = recipes.dense(config["model"], config["data"], seed)
            splits[str(seed)] = {
                name: recipes._fingerprint(getattr(t.bundle, name))
                for name in ("train", "val", "test")
            }
            baselines[str(seed)] = {
                "test_accuracy": info["test_accuracy"],
                "val_accuracy": info["val_accuracy"],
                "expected_test_accuracy": info["expected_test_accuracy"],
                "flags": info["flags"],
            }
    recipe = recipes.recipe_for(config["model"], config["data"])
    return {
        "benchmark": config["name"],
        "version": VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": config,
        "library": {"sparsity_lab": _library_version(), **_git_commit()},
        "python": sys.version,
        "dependencies": _versions(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads_per_run": config["threads"],
            # timings mean little without it: a busy machine slows every kernel
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "seeds": list(config["seeds"]),
        "data_splits": splits,
        "dense": {"recipe": {**recipe.training(), "batch_size": recipe.batch_size}, **baselines},
        "rows": len(table),
        "table_sha256": table_digest(table),
    }


def _library_version() -> str:
    try:
        return importlib.metadata.version("sparsity-lab")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def table_digest(table: Any) -> str:
    """A hash of a table without its timings, rounded to 12 significant digits (the CSV's)."""
    columns = [c for c in table.columns if c not in TIMING_COLUMNS]
    table = table[columns]
    if "extras" in columns:
        table = table.assign(extras=table["extras"].map(_extras_without_timings))
    text = table.to_csv(index=False, float_format="%.12g")
    return hashlib.sha256(text.encode()).hexdigest()


def _extras_without_timings(text: Any) -> str:
    """A run's ``extras`` JSON with :data:`TIMING_EXTRAS` left out (the same text
    otherwise, so a table without timings among its extras keeps its digest)."""
    if not isinstance(text, str) or not any(key in text for key in TIMING_EXTRAS):
        return text
    extras = json.loads(text)
    return json.dumps({k: v for k, v in extras.items() if k not in TIMING_EXTRAS}, sort_keys=True)


def _same_extras(a: Any, b: Any, rtol: float) -> bool:
    """Two runs' ``extras`` agree: the same keys, numbers within ``rtol``, timings aside."""
    import numpy as np

    left, right = (
        {k: v for k, v in json.loads(x or "{}").items() if k not in TIMING_EXTRAS} for x in (a, b)
    )
    if left.keys() != right.keys():
        return False
    for key, value in left.items():
        other = right[key]
        numbers = all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, other)
        )
        if numbers:
            if not np.isclose(value, other, rtol=rtol, atol=0, equal_nan=True):
                return False
        elif value != other:
            return False
    return True


def write(table: Any, config: str | os.PathLike | Mapping[str, Any], out_dir: str | os.PathLike):
    """Save ``table`` as ``<out_dir>/<name>.csv`` and its manifest as ``<name>.manifest.json``.

    Both are written under temporary names first, so a crash never leaves a half-written
    table where a finished one was.  Returns the two paths.
    """
    config = load_config(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{config['name']}.csv"
    manifest_path = out / f"{config['name']}.manifest.json"
    record = manifest(config, table)
    for path, text in (
        (csv_path, table.to_csv(index=False, float_format="%.12g")),
        (manifest_path, json.dumps(record, indent=2, default=str) + "\n"),
    ):
        write_atomically(path, text.encode())
    return csv_path, manifest_path


def read(path: str | os.PathLike) -> Any:
    """A result table written by :func:`write` (empty flag cells read back as "")."""
    import pandas as pd

    return pd.read_csv(path, keep_default_na=False, na_values=[""]).assign(
        flags=lambda df: df["flags"].fillna(""),
        pruned_flags=lambda df: df["pruned_flags"].fillna(""),
    )


def _run(key: tuple) -> str:
    method, sparsity, seed = key
    return f"{method} at sparsity {float(sparsity):g}, seed {int(seed)}"


def compare(table: Any, reference: Any, *, rtol: float = 1e-9) -> list[str]:
    """The differences between two result tables, timings left out; empty when they agree.

    Rows are matched on (method, target sparsity, seed); numbers agree within ``rtol`` (the
    CSV keeps 12 significant digits).
    """
    import numpy as np

    key = ["method", "target_sparsity", "seed"]
    columns = [c for c in COLUMNS if c not in TIMING_COLUMNS and c not in key]
    left = table.set_index(key).sort_index()
    right = reference.set_index(key).sort_index()
    problems = []
    missing = right.index.difference(left.index)
    extra = left.index.difference(right.index)
    if len(missing):
        problems.append(
            f"{len(missing)} runs of the reference are missing, e.g. {_run(missing[0])}"
        )
    if len(extra):
        problems.append(f"{len(extra)} runs are not in the reference, e.g. {_run(extra[0])}")
    absent = [c for c in columns if c not in left.columns or c not in right.columns]
    if absent:
        problems.append(
            f"columns {absent} are missing from one table (written by another version of the "
            "harness?); the other columns are compared"
        )
    common = left.index.intersection(right.index)
    for column in (c for c in columns if c not in absent):
        a, b = left.loc[common, column], right.loc[common, column]
        if column == "extras":
            same = np.array([_same_extras(x, y, rtol) for x, y in zip(a, b, strict=True)])
        elif a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
            same = np.isclose(a, b, rtol=rtol, atol=0, equal_nan=True)
        else:
            same = (a.fillna("").astype(str) == b.fillna("").astype(str)).to_numpy()
        if not same.all():
            first = common[int(np.argmin(same))]
            problems.append(
                f"{column}: {int((~same).sum())} runs differ, e.g. {_run(first)}: "
                f"{a.loc[first]!r} against {b.loc[first]!r}"
            )
    return problems

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
    imports: [my_method.py]       # modules or files that register more methods

Every run starts from the setting's dense model of its seed (:func:`recipes.dense`, the
recipe's, cached), prunes a copy once, fine-tunes it with the masks fixed for
``finetune_epochs`` (:func:`recipes.finetune_and_measure`) and is measured on the test split;
its latency is timed on the exported copy (:func:`sparsity_lab.accel.export`, batch 1).
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
import datetime
import hashlib
import importlib
import importlib.metadata
import importlib.util
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

from . import __version__, accel, masks, patterns, recipes, shrink
from .accounting import report
from .experiments import sweep
from .pipeline import _dependency_closure
from .pruning import prune
from .registry import available

#: The version of a run's definition: change it when a run of the same cell would measure
#: something else, so that cached results of the old definition are not reused.
VERSION = "bench-2"

#: The baselines every benchmark includes, as (label, method, options).
BASELINES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("dense", "dense", {}),
    ("magnitude (global)", "magnitude", {"budget": "global"}),
    ("magnitude (uniform)", "magnitude", {"budget": "uniform"}),
    ("random (magnitude's layer counts)", "random_like_magnitude", {}),
)

#: The columns of a result table, in order.
COLUMNS = (
    "model",
    "data",
    "method",
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
    "storage_bits",
    "dense_storage_bits",
    "finetune_epochs",
    "latency_seconds",
    "prune_seconds",
    "wall_seconds",
    "flags",
    "pruned_flags",
)

#: Columns that measure the machine rather than the method: they differ between two runs
#: of the same cell, so :func:`compare` leaves them out.
TIMING_COLUMNS = ("latency_seconds", "prune_seconds", "wall_seconds")

_DEFAULTS: dict[str, Any] = {
    "seeds": [0, 1, 2],
    "finetune_epochs": 2,
    "finetune_lr": 0.01,
    "calibration_batches": 8,
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


def _method_entry(entry: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"snip"`` or ``{"method", "label", "options"}`` as a full entry, its name checked."""
    if isinstance(entry, str):
        entry = {"method": entry}
    if not isinstance(entry, Mapping) or "method" not in entry:
        raise ValueError(f"a method is a name or a mapping with 'method', got {entry!r}")
    extra = sorted(set(entry) - {"method", "label", "options"})
    if extra:
        raise ValueError(f"method {entry['method']!r}: unknown keys {extra}")
    known = available("criterion")
    if entry["method"] not in known:
        raise ValueError(
            f"unknown criterion {entry['method']!r}; the harness runs registered criteria "
            f"({len(known)} of them, `sparsity-lab list`); register yours in a module named "
            "under imports:"
        )
    return {
        "label": str(entry.get("label", entry["method"])),
        "method": entry["method"],
        "options": dict(entry.get("options") or {}),
    }


def cells(config: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The arms of a benchmark: one per method and target sparsity (dense once).

    An N:M pattern fixes its sparsity, so its method has one arm at that sparsity.
    """
    entries = [
        {"label": label, "method": method, "options": options}
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
    keys = ("model", "data", "finetune_epochs", "finetune_lr", "calibration_batches")
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
    """One run of a benchmark: prune the seed's dense model, fine-tune it, measure it.

    Returns the metrics of :data:`COLUMNS` (the names and options come from ``arm``).
    """
    import_methods(setting["imports"])
    start = time.perf_counter()
    with _threads(setting["threads"]):
        t, model, info = recipes.dense(setting["model"], setting["data"], seed)
        options = dict(arm["options"])
        sparsity = arm["sparsity"]
        pattern = options.get("pattern", "unstructured")
        names = options.get("targets") or None
        prune_start = time.perf_counter()
        if arm["method"] == "dense":
            result = recipes.finetune_and_measure(model, t, None, finetune_epochs=0)
        else:
            if arm["method"] == "random_like_magnitude":
                found = masks.masks(prune(copy.deepcopy(model), "magnitude", sparsity, seed=seed))
                for name, mask in recipes.random_like(found, seed=seed).items():
                    masks.attach(model, name, mask)
            else:
                train = t.loaders()[0]
                calibration = [
                    batch
                    for _, batch in zip(range(setting["calibration_batches"]), train, strict=False)
                ]
                fixed = patterns.get(pattern).fixed_sparsity
                prune(
                    model,
                    arm["method"],
                    None if fixed is not None else sparsity,
                    data=calibration,
                    seed=seed,
                    **options,
                )
            result = recipes.finetune_and_measure(
                model,
                t,
                sparsity,
                finetune_epochs=setting["finetune_epochs"],
                lr=setting["finetune_lr"],
                names=names,
            )
        prune_seconds = time.perf_counter() - prune_start
        latency = _latency(model)
        cost = report(model, names, pattern=None if arm["method"] == "dense" else pattern)
        total = cost.iloc[-1]
        perplexity = recipes.evaluate_run(model, t).get("perplexity", math.nan)
    return {
        "model": setting["model"],
        "data": setting["data"],
        "method": arm["label"],
        "criterion": arm["method"],
        "options": json.dumps(arm["options"], sort_keys=True),
        "target_sparsity": sparsity,
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
        "training_flops": result["finetune_flops"],
        "storage_bits": int(total["bytes"]) * 8,
        "dense_storage_bits": int(total["dense_bytes"]) * 8,
        "finetune_epochs": result["finetune_epochs"],
        "latency_seconds": latency,
        "prune_seconds": prune_seconds,
        "wall_seconds": time.perf_counter() - start,
        "flags": result["flags"],
        "pruned_flags": result["pruned_flags"],
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
    text = table[columns].to_csv(index=False, float_format="%.12g")
    return hashlib.sha256(text.encode()).hexdigest()


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
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
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
    common = left.index.intersection(right.index)
    for column in columns:
        a, b = left.loc[common, column], right.loc[common, column]
        if a.dtype.kind in "fiu" and b.dtype.kind in "fiu":
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

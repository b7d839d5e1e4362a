"""Experiment sweeps over a grid of parameters and seeds, with a resumable cache.

:func:`sweep` runs ``fn(**params, seed=seed)`` for every grid point and seed and returns a
tidy DataFrame (one row per run).  With a ``cache_dir``, every finished run is saved at once
as a small JSON file, so a sweep that crashed or was interrupted picks up where it stopped.
:func:`summarize` and :func:`plot_mean_ci` turn the runs of several seeds into a mean with a
Student-t confidence interval.

Example::

    def run(sparsity, seed):
        ...
        return {"accuracy": acc}

    df = sweep(run, {"sparsity": [0.5, 0.9]}, seeds=range(3), cache_dir=".cache/run")
    summarize(df, by=["sparsity"], metric="accuracy")
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import itertools
import json
import multiprocessing
import numbers
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from . import run_cache
from .paths import write_atomically
from .stats import STAGE_FLAGS, summarize
from .train import show_progress

__all__ = [
    "WORKERS_ENV",
    "SweepError",
    "default_workers",
    "forked_map",
    "plot_mean_ci",
    "summarize",
    "sweep",
]

Metrics = dict[str, Any]


class SweepError(RuntimeError):
    """One run of a sweep raised; ``params`` and ``seed`` name it, ``__cause__`` is the error."""

    def __init__(self, params: dict[str, Any], seed: Any, error: BaseException) -> None:
        super().__init__(f"sweep run {params} with seed={seed!r} failed: {error!r}")
        self.params = params
        self.seed = seed


def _check_grid(grid: Mapping[str, Iterable]) -> dict[str, list]:
    """The grid with each value list materialised, after checking its shape."""
    checked = {}
    for name, values in grid.items():
        if name == "seed":
            raise ValueError("'seed' cannot be a grid key; pass the seeds as seeds=[...]")
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise TypeError(
                f"grid[{name!r}] must be a list of values, got {type(values).__name__}; "
                f"write {name!r}: [{values!r}] for a single value"
            )
        checked[name] = [_plain(v) for v in values]
        if not checked[name]:
            raise ValueError(f"grid[{name!r}] is empty; give at least one value")
    return checked


def _plain(value: Any) -> Any:
    """NumPy scalars and 0-d arrays or tensors as Python numbers, so JSON takes them."""
    return value.item() if getattr(value, "ndim", None) == 0 else value


def _fn_name(fn: Callable) -> str:
    """``module.qualname``: the part of a cache key that says which function made a result.

    A callable object is named by its class, so its state is not part of the name.
    """
    named = fn if hasattr(fn, "__qualname__") else type(fn)
    if isinstance(fn, functools.partial) or "<lambda>" in named.__qualname__:
        raise ValueError(
            "a cached sweep identifies results by the function's module and name, but "
            f"{fn!r} has no name of its own; define fn with `def` or pass name='...'"
        )
    return f"{named.__module__}.{named.__qualname__}"


def _cache_key(name: str, params: dict[str, Any], seed: Any) -> str:
    """A stable hash of (function name, params, seed); the cache file's name."""
    try:
        text = json.dumps({"fn": name, "params": params, "seed": seed}, sort_keys=True)
    except TypeError as error:
        bad = {k: type(v).__name__ for k, v in params.items() if not _jsonable(v)}
        raise TypeError(
            f"cached sweeps store the parameters as JSON, but {bad or {'seed': seed}} cannot "
            "be written as JSON; put names or strings in the grid (e.g. 'mlp' rather than "
            "the model) and build the object inside fn"
        ) from error
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _as_metrics(result: Any, reserved: Iterable[str]) -> Metrics:
    """``fn``'s return value as a dict of plain Python scalars."""
    result = _plain(result)
    if isinstance(result, numbers.Number) and not isinstance(result, Mapping):
        result = {"value": result}
    if not isinstance(result, Mapping):
        raise TypeError(
            f"fn must return a dict of metrics or a number, got {type(result).__name__}"
        )
    clash = set(result) & set(reserved)
    if clash:
        raise ValueError(
            f"metric names {sorted(clash)} clash with grid keys or 'seed'; rename the metrics"
        )
    # Plain numbers, so that fresh and cached results agree.
    return {str(k): _plain(v) for k, v in result.items()}


def _read_cache(path: Path, params: dict[str, Any], seed: Any) -> Metrics | None:
    """The metrics stored at ``path``; ``None`` (with a warning if the file is bad) if none."""
    if not path.exists():
        return None
    try:
        with open(path, encoding="utf-8") as file:
            record = json.load(file)
        metrics = record["metrics"]
        # A damaged or foreign file must not pass for this run's result: its content has
        # to hash to its own name.
        if _cache_key(record["fn"], record["params"], record["seed"]) != path.stem:
            raise ValueError("its content does not match its name")
        if not isinstance(metrics, dict):
            raise ValueError("'metrics' is not a dict")
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        warnings.warn(
            f"cache file {path} is unreadable ({error}); running {params} seed={seed!r} again",
            stacklevel=3,
        )
        return None
    return metrics


def _as_json(metrics: Metrics, params: dict[str, Any], seed: Any) -> Metrics:
    """``metrics`` as they read back from the cache, or a clear error naming the culprit.

    Checked for the run that produced them, before anything is written, so a metric JSON
    cannot hold stops the sweep at its first run instead of after hours of work.
    """
    bad = {k: type(v).__name__ for k, v in metrics.items() if not _jsonable(v)}
    if bad:
        raise TypeError(
            f"run {params} seed={seed!r} returned metrics a cached sweep cannot store as JSON: "
            f"{bad}; return numbers, strings, lists or dicts (e.g. float(x), x.tolist()), or "
            "run without cache_dir"
        )
    return json.loads(json.dumps(metrics))


#: A temporary cache file older than this was left by a killed run, not one in progress.
STALE_TEMPORARY_S = 3600.0


def _remove_stale_temporaries(cache: Path) -> None:
    """Delete ``.*.tmp`` files a killed sweep left behind (those of live runs are young)."""
    now = time.time()
    for tmp in cache.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMPORARY_S:
                tmp.unlink()
        except OSError:  # another sweep removed or renamed it meanwhile
            pass


def _write_cache(path: Path, name: str, params: dict[str, Any], seed: Any, metrics: Metrics):
    """Write atomically and durably: a crash leaves no half file."""
    record = {"fn": name, "params": params, "seed": seed, "metrics": metrics}
    # not sort_keys: the metrics keep fn's order, so cached and fresh tables agree
    write_atomically(path, json.dumps(record, indent=1).encode(), durable=True)


#: The environment variable that sets how many processes a :func:`sweep` runs in when it
#: is not told (``make lab`` sets it to the cores; ``make book`` to 1 for notebooks that run
#: side by side and to its workers for one that runs alone).
WORKERS_ENV = "SPARSITY_LAB_WORKERS"


def default_workers() -> int:
    """The processes a :func:`sweep` uses when not told: ``$SPARSITY_LAB_WORKERS``, else 1."""
    setting = os.environ.get(WORKERS_ENV, "").strip()
    if not setting:
        return 1
    if not setting.isdigit() or int(setting) < 1:
        raise ValueError(f"${WORKERS_ENV} must be a whole number >= 1, got {setting!r}")
    return int(setting)


def _forked_pool(
    fn: Callable, workers: int | None, calls: int
) -> concurrent.futures.ProcessPoolExecutor | None:
    """Forked processes for ``calls`` calls of ``fn`` (``workers`` of them, ``None``:
    :func:`default_workers`, at most one per call), each with this process's torch thread
    count; or ``None`` where one would do, the system is not Linux or ``fn`` does not
    pickle by reference (a lambda, a function defined inside another).  A worker finds
    ``fn`` in its copy of this process, so a function defined in a notebook runs there too.
    Only Linux forks: there torch's own data loaders fork their workers, while macOS's
    system libraries may crash a forked child (Python starts processes fresh there)."""
    wanted = default_workers() if workers is None else workers
    if isinstance(wanted, bool) or not isinstance(wanted, int) or wanted < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {wanted!r}")
    workers = min(wanted, calls)
    if workers < 2 or not sys.platform.startswith("linux"):
        return None
    try:
        pickle.dumps(fn)
    except Exception:
        return None
    import torch

    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=torch.set_num_threads,  # torch's sums depend on it: the same numbers
        initargs=(torch.get_num_threads(),),
    )


def _counted(fn: Callable, args: tuple, kwargs: dict[str, Any]) -> tuple[Any, dict[str, int]]:
    """``fn``'s result in a worker process, with the run-cache calls it made there (which
    the process that asked must count, :func:`sparsity_lab.run_cache.counts`)."""
    before = run_cache.counts()
    result = fn(*args, **kwargs)
    return result, {k: n - before[k] for k, n in run_cache.counts().items()}


def forked_map(
    fn: Callable,
    calls: Iterable[tuple],
    *,
    workers: int | None = None,
    first: Callable[..., bool] | None = None,
) -> list:
    """``[fn(*args) for args in calls]``, computed as :func:`sweep` computes its runs: in
    ``workers`` forked processes (``None``: :func:`default_workers`) where it can, else
    here.  For calls whose results are not rows of metrics (a table per call, say).  The
    results come in the calls' order; the first call that raises cancels those not
    started, and its error is raised here once the started ones end.

    ``first(*args)`` true marks the slow calls: they start before the others (in their
    order), so that the workers end together instead of one finishing a long call alone.
    """
    calls = [tuple(args) for args in calls]
    order = sorted(range(len(calls)), key=lambda i: not first(*calls[i])) if first else None
    if order is not None:
        done = forked_map(fn, [calls[i] for i in order], workers=workers)
        results = [None] * len(calls)
        for i, result in zip(order, done, strict=True):
            results[i] = result
        return results
    pool = _forked_pool(fn, workers, len(calls))
    if pool is None:
        return [fn(*args) for args in calls]
    with pool:
        futures = [pool.submit(_counted, fn, args, {}) for args in calls]
        for future in concurrent.futures.as_completed(futures):
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                break
        results = []
        for future in futures:
            result, made = future.result()  # raises the first failure, in the calls' order
            run_cache.add_counts(made)
            results.append(result)
    return results


def sweep(
    fn: Callable[..., Any],
    grid: Mapping[str, Iterable],
    seeds: Iterable = (0,),
    *,
    executor: concurrent.futures.Executor | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    name: str | None = None,
) -> pd.DataFrame:
    """Run ``fn(**params, seed=seed)`` for each point of the grid's product times ``seeds``.

    ``fn`` returns a dict of metrics, or a number (stored as column ``"value"``).  The result
    has one row per run, in grid order with the seeds innermost, whatever order the runs
    finished in; its columns are the grid keys, ``"seed"``, then the metrics.

    ``cache_dir``: each finished run is saved at once as ``<hash>.json`` (the hash of
    ``name``, params and seed; ``name`` defaults to fn's ``module.qualname``; change it to
    invalidate old results).  A rerun loads those files and runs only the missing cells;
    unreadable files are reported with a warning and run again.

    ``executor``: any ``concurrent.futures.Executor`` (threads, processes, ...).  Without
    one, the runs go to ``workers`` processes forked from this one (``None``:
    :func:`default_workers`, 1 unless ``$SPARSITY_LAB_WORKERS`` says more), each with this
    process's torch thread count; with 1, on a system other than Linux, or where ``fn``
    does not pickle by reference, they run here, one after the other.  A forked run computes what it
    computes here when ``fn`` seeds what it draws, as every run of the library's protocol
    does: it starts from a copy of this process, not from the state the runs before it
    left.  If a run raises, runs not yet started are cancelled, those that finish are still
    cached, and a :class:`SweepError` naming the failing params is raised from the original
    error.
    """
    grid = _check_grid(grid)
    keys = list(grid)
    seeds = [_plain(seed) for seed in seeds]
    cells = [
        (dict(zip(keys, values, strict=True)), seed)
        for values in itertools.product(*grid.values())
        for seed in seeds
    ]
    reserved = [*keys, "seed"]

    cache = Path(cache_dir) if cache_dir is not None else None
    paths: list[Path | None] = [None] * len(cells)
    results: list[Metrics | None] = [None] * len(cells)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(cache)
        name = _fn_name(fn) if name is None else name
        for i, (params, seed) in enumerate(cells):
            paths[i] = cache / f"{_cache_key(name, params, seed)}.json"
            results[i] = _read_cache(paths[i], params, seed)
    todo = [i for i, result in enumerate(results) if result is None]

    def finish(i: int, result: Any) -> None:
        results[i] = _as_metrics(result, reserved)
        if paths[i] is not None:
            # what is cached is what a rerun reads back: tuples become lists in both
            results[i] = _as_json(results[i], *cells[i])
            _write_cache(paths[i], name, *cells[i], results[i])
        bar.update(1)

    forked = None
    if executor is None:
        forked = executor = _forked_pool(fn, workers, len(todo))
    with (
        forked or contextlib.nullcontext(),
        tqdm(
            total=len(cells),
            initial=len(cells) - len(todo),
            disable=not show_progress(progress),
            desc="sweep",
        ) as bar,
    ):
        if executor is None:
            for i in todo:
                params, seed = cells[i]
                try:
                    result = fn(**params, seed=seed)
                except Exception as error:
                    raise SweepError(params, seed, error) from error
                finish(i, result)
        else:
            if forked is None:
                futures = {executor.submit(fn, **cells[i][0], seed=cells[i][1]): i for i in todo}
            else:
                futures = {
                    executor.submit(_counted, fn, (), {**cells[i][0], "seed": cells[i][1]}): i
                    for i in todo
                }
            failed: tuple[int, BaseException] | None = None
            for future in concurrent.futures.as_completed(futures):
                if future.cancelled():
                    continue
                i = futures[future]
                error = future.exception()
                if error is None and forked is not None:
                    result, calls = future.result()
                    run_cache.add_counts(calls)
                    finish(i, result)
                elif error is None:
                    finish(i, future.result())
                elif failed is None:
                    failed = (i, error)
                    for other in futures:
                        other.cancel()  # only cancels runs that have not started
            if failed is not None:
                i, error = failed
                raise SweepError(*cells[i], error) from error

    rows = [{**params, "seed": seed, **results[i]} for i, (params, seed) in enumerate(cells)]
    return pd.DataFrame(rows, columns=None if rows else reserved)


def flagged_groups(df: pd.DataFrame, by: Sequence[str], column: str = "flags") -> pd.Series | None:
    """Whether any run of each group of ``by`` raised a sanity flag in ``column``, indexed
    by the group (``None`` when ``df`` has no such column)."""
    if column not in df.columns:
        return None
    flagged = df[column].fillna("").astype(str) != ""
    return flagged.groupby([df[c] for c in by], sort=False, dropna=False).any()


def mark_flagged(ax: plt.Axes, xs, ys, *, labelled: bool = False, transform=None) -> bool:
    """Circle the points ``(xs, ys)`` in red, the mark of a flagged mean in every plot;
    the legend gets one "sanity flag raised" entry unless ``labelled`` says it has it.
    ``transform``: the points' coordinates, if not the data's (an axis edge, say)."""
    ax.scatter(
        xs,
        ys,
        s=140,
        facecolors="none",
        edgecolors="red",
        linewidths=1.5,
        zorder=5,
        label=None if labelled else "sanity flag raised",
        clip_on=transform is None,
        **({} if transform is None else {"transform": transform}),
    )
    return True


def flagged_summary(
    df: pd.DataFrame,
    by: Sequence[str],
    y: str,
    *,
    confidence: float = 0.95,
    bounds: tuple[float, float] | None | str = "auto",
    flags: str | None = "auto",
) -> pd.DataFrame:
    """:func:`summarize` of ``y`` by ``by`` (what :func:`plot_mean_ci` draws), with a
    ``flagged`` column when ``df`` has the flags of ``y``'s stage: whether any run of the
    group raised a sanity flag (``flags="auto"``: as in :func:`plot_mean_ci`)."""
    table = summarize(df, list(by), y, confidence, bounds)
    column = STAGE_FLAGS.get(y, "flags") if flags == "auto" else flags
    flagged = flagged_groups(df, by, column) if column else None
    if flagged is not None:
        index = pd.MultiIndex.from_frame(table[list(by)]) if len(by) > 1 else table[by[0]]
        table["flagged"] = flagged.reindex(index).to_numpy()
    return table


def fit_y(
    ax: plt.Axes,
    table: pd.DataFrame,
    keep: Any = None,
    *,
    x: str,
    name: str,
    bounds: tuple[float, float] = (0.0, 1.0),
    fmt: Callable[[float], str] = "{:.1%}".format,
    margin: float = 0.1,
) -> tuple[float, float] | None:
    """Fit ``ax``'s y axis to the means and intervals of the rows ``keep`` of ``table``
    (a :func:`flagged_summary`; default: the unflagged rows); returns the limits.

    A run at chance level stretches an accuracy axis to [0, 1] and squashes the differences
    between the others.  The limits here are the lowest and highest mean or interval end
    of the kept rows, widened by ``margin`` of their span and kept inside ``bounds``.  A
    mean of any row that falls outside is drawn at the edge it passed (a grey triangle at
    its ``x``, circled in red if flagged) and labelled with its ``name``, ``x`` and value
    (``fmt``), flagged or not, so that nothing drawn is hidden.  None (and no change) when
    no kept row has a value.
    """
    if keep is None:
        keep = ~table["flagged"].astype(bool) if "flagged" in table else slice(None)
    shown = table.loc[keep, ["mean", "ci_low", "ci_high"]].to_numpy(dtype=float)
    if not np.isfinite(shown).any():
        return None
    low, high = np.nanmin(shown), np.nanmax(shown)
    pad = margin * max(high - low, 0.01 * (bounds[1] - bounds[0]))
    bottom, top = max(bounds[0], low - pad), min(bounds[1], high + pad)
    ax.set_ylim(bottom, top)
    ax.get_xlim()  # settles the x limits, so that the positions below are final
    stacked: dict[bool, int] = {}
    on_x = ax.get_xaxis_transform()  # x in data, y in axes fractions
    for _, row in table[(table["mean"] < bottom) | (table["mean"] > top)].iterrows():
        above = bool(row["mean"] > top)
        k = stacked[above] = stacked.get(above, -1) + 1  # one label above the other
        at = ax.transAxes.inverted().transform(ax.transData.transform((row[x], bottom)))[0]
        left = at < 0.5
        edge = 0.98 if above else 0.02
        ax.plot(row[x], edge, "^" if above else "v", color="0.3", transform=on_x)
        flagged = " (flagged)" if bool(row.get("flagged", False)) else ""
        if flagged:  # its own red circle is off the axis: circle the mark at the edge
            mark_flagged(ax, [row[x]], [edge], labelled=True, transform=on_x)
        ax.annotate(
            f"{row[name]} at {row[x]:.0%}: {fmt(row['mean'])}{flagged}",
            (row[x], edge),
            xycoords=on_x,
            xytext=(6 if left else -6, (-11 if above else 11) * k),
            textcoords="offset points",
            ha="left" if left else "right",
            va="center",
            fontsize=8,
            color="0.3",
        )
    return bottom, top


def plot_mean_ci(
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    ax: plt.Axes | None = None,
    confidence: float = 0.95,
    label: str | None = None,
    flags: str | None = "auto",
    bounds: tuple[float, float] | None | str = "auto",
) -> plt.Axes:
    """Mean of ``y`` against ``x`` with a shaded confidence band, one line per ``hue`` value.

    The band is :func:`summarize`'s Student-t interval over the rows (e.g. seeds) sharing
    an ``x`` (and ``hue``), clipped to ``bounds``: ``"auto"`` clips accuracies to [0, 1];
    pass ``(-1, 1)`` for a difference of accuracies, or None for no clipping.  ``label``
    names the line, or prefixes each hue's legend entry, so several sweeps can share one
    Axes.  When ``df`` has
    the flags of ``y``'s stage (``flags``; ``"auto"``: ``pruned_flags`` for accuracy right
    after pruning, else ``flags``, see :func:`sparsity_lab.recipes.evaluate_run`), a point
    any of whose runs raised a sanity flag is circled in red, so a flagged number is never
    read as a plain one.  Returns the Axes.
    """
    if ax is None:
        _, ax = plt.subplots()
    by = [x] if hue is None else [hue, x]
    table = flagged_summary(df, by, y, confidence=confidence, bounds=bounds, flags=flags)
    groups = [(None, table)] if hue is None else table.groupby(hue, sort=False, dropna=False)
    marked = False
    for value, group in groups:
        group = group.sort_values(x)
        if hue is None:
            line_label = y if label is None else label
        else:
            line_label = f"{hue}={value}" if label is None else f"{label} {hue}={value}"
        (line,) = ax.plot(group[x], group["mean"], marker="o", label=line_label)
        ax.fill_between(
            group[x], group["ci_low"], group["ci_high"], color=line.get_color(), alpha=0.2
        )
        if "flagged" in group and group["flagged"].any():
            bad = group[group["flagged"]]
            marked = mark_flagged(ax, bad[x], bad["mean"], labelled=marked)
    ax.set_xlabel(ax.get_xlabel() or x)
    ax.set_ylabel(ax.get_ylabel() or y)
    if hue is not None or label is not None or marked:
        ax.legend()
    return ax

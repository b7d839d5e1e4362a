"""The leaderboard: benchmark tables summarised per method, compared in pairs, on Pareto fronts.

Reads the tidy tables of :mod:`sparsity_lab.bench` (one row per run).  :func:`summary` gives
each method and sparsity its mean test accuracy with a Student-t interval, its costs
(nonzeros, FLOPs, storage bits, fine-tuning FLOPs), the efficiency metrics of
:mod:`sparsity_lab.efficiency` and the paired difference from a baseline method on the same
seeds; :func:`pareto_front` keeps the points no other point beats on both accuracy and a
cost; :func:`cards` gives one line per method.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from . import efficiency
from .stats import mean_interval, paired

#: The baseline every method is paired with, by default.
BASELINE = "magnitude (global)"

#: The costs a front can be drawn against, with their axis labels.
COSTS = {
    "nonzeros": "nonzero weights",
    "flops": "forward FLOPs per example",
    "storage_bits": "storage (bits, with indices)",
    "latency_seconds": "latency, batch 1, exported (s)",
}


#: The columns of :func:`summary` that say how a method did: what the CLI prints and the
#: notebooks show by default.
SUMMARY_COLUMNS = [
    "method",
    "target_sparsity",
    "n",
    "test_accuracy",
    "ci_low",
    "ci_high",
    "vs_baseline",
    "vs_verdict",
    "flagged",
]

#: The cost of making a model, for tables that compare training methods.
TRAINING_COST = {"total_training_flops": "training FLOPs, dense training included"}


def total_training_flops(table: pd.DataFrame) -> pd.Series:
    """FLOPs spent on each run's model from scratch: a run that prunes the shared trained
    dense model (kind ``prune``, the dense row too) also pays for that model's training
    (``dense_training_flops``); runs that train their own model count only their own."""
    if "kind" not in table or "dense_training_flops" not in table:
        raise ValueError(
            "the table has no 'kind' or 'dense_training_flops' column: it was written by an "
            "older harness; regenerate it with `sparsity-lab bench CONFIG`"
        )
    from_dense = table["kind"].eq("prune")
    return table["training_flops"] + table["dense_training_flops"].where(from_dense, 0.0)


#: Where the committed result tables live, relative to the repository's root.
TABLES = Path("benchmarks") / "leaderboard"


def tables_dir(start: str | Path = ".") -> Path:
    """The folder of committed tables: ``benchmarks/leaderboard`` in ``start`` or the
    nearest folder above it (a notebook runs in ``notebooks/`` or ``book/notebooks/``)."""
    here = Path(start).resolve()
    for folder in (here, *here.parents):
        if (folder / TABLES).is_dir():
            return folder / TABLES
    raise FileNotFoundError(
        f"no {TABLES} folder in {here} or above it; run from a checkout of the repository"
    )


def load(name: str, folder: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """A committed result table and its manifest, by the benchmark's name."""
    from .bench import read  # the harness loads torch and the recipes; the tables do not

    folder = Path(folder) if folder is not None else tables_dir()
    table = read(folder / f"{name}.csv")
    manifest = json.loads((folder / f"{name}.manifest.json").read_text())
    return table, manifest


def load_together(
    names: Sequence[str], folder: str | Path | None = None
) -> tuple[pd.DataFrame, list[dict]]:
    """Several committed tables of one setting as one table, each run once.

    Tables made by configs of the same model and data (a subset run on more seeds, a longer
    training added later) share runs: the harness's baselines, an arm two configs list.  The
    harness is deterministic for a seed, so a shared run must have the same test accuracy in
    every table; a difference means the tables were made by different code, recipes or
    protocols (the fine-tuning of the baselines, say) and their arms would not pair, so it
    raises.  Returns the runs (the first table's copy of
    each shared one) and the manifests, in the order given.
    """
    if not names:
        raise ValueError("load_together needs at least one table name")
    loaded = [load(name, folder) for name in names]
    settings = {(m["config"]["model"], m["config"]["data"]) for _, m in loaded}
    if len(settings) > 1:
        raise ValueError(f"tables {list(names)} are of different settings {sorted(settings)}")
    runs = pd.concat([t for t, _ in loaded], ignore_index=True)
    key = ["method", "target_sparsity", "seed"]
    spread = runs.groupby(key)["test_accuracy"].agg(lambda v: v.max() - v.min())
    differ = spread[spread > 1e-9]
    if len(differ):
        raise ValueError(
            f"tables {list(names)} disagree on {len(differ)} shared run(s), e.g. "
            f"{list(differ.index[:3])}: regenerate them with the same code, recipes and "
            "protocol (fine-tuning, calibration) so that their shared runs are the same runs"
        )
    return runs.drop_duplicates(key).reset_index(drop=True), [m for _, m in loaded]


def provenance(table: pd.DataFrame, manifest: dict) -> tuple[str, pd.DataFrame]:
    """What produced a committed table, in a few lines, and its dense model of each seed.

    The lines name the benchmark, the commit and versions, the setting and protocol, and
    whether the table as read still has the digest the harness wrote (a table edited by
    hand does not).
    """
    from .bench import table_digest

    config = manifest["config"]
    dense = pd.DataFrame(
        {
            seed: {"test accuracy": d["test_accuracy"], "flags": d["flags"] or "none"}
            for seed, d in manifest["dense"].items()
            if seed != "recipe"
        }
    ).T.rename_axis("seed")
    lines = [
        f"benchmark {manifest['benchmark']} ({manifest['version']}), created {manifest['created']}",
        f"commit {manifest['library']['commit']}, sparsity-lab "
        f"{manifest['library']['sparsity_lab']}",
        f"torch {manifest['dependencies'].get('torch')}, Python {manifest['python'].split()[0]}",
        f"{config['model']} on {config['data']}, seeds {manifest['seeds']}, fine-tuning "
        f"{config['finetune_epochs']} epoch(s) at lr {config['finetune_lr']}",
        f"{manifest['rows']} runs; table digest matches: "
        f"{table_digest(table) == manifest['table_sha256']}",
    ]
    return "\n".join(lines), dense


def extras_arm(
    table: pd.DataFrame,
    method: str,
    key: str,
    label: str,
    *,
    metric: str = "test_accuracy",
    final: bool = False,
) -> pd.DataFrame:
    """``method``'s runs as an arm ``label`` whose ``metric`` is the run's ``extras[key]``.

    A training method measures models beside the one it returns (AC/DC's dense member,
    IMP's re-initialised twin, CrAM's dense model); as an arm of their own they pair with
    other arms on the seed.  Their flags are not the run's, so they are left empty unless
    ``final`` says the value measures the run's own model.
    """
    runs = table[table["method"] == method]
    value = runs["extras"].map(lambda text: json.loads(text)[key]).astype(float)
    return runs.assign(method=label, flags=runs["flags"] if final else "", **{metric: value})


def dense_at(table: pd.DataFrame, sparsities: Sequence[float]) -> pd.DataFrame:
    """The dense runs repeated at each target sparsity, to pair with a dense model measured
    beside a sparse run (AC/DC's dense member at 90% against the dense baseline)."""
    dense = table[table["method"] == "dense"]
    return pd.concat([dense.assign(target_sparsity=s) for s in sparsities], ignore_index=True)


def _flagged(values: pd.Series) -> bool:
    return bool(values.fillna("").astype(str).str.len().gt(0).any())


def summary(table: pd.DataFrame, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (method, target sparsity): means over seeds and the paired comparison.

    Columns: ``method``, ``target_sparsity``, ``n`` (seeds), ``sparsity`` (reached, mean),
    ``test_accuracy`` with ``ci_low``/``ci_high`` (clipped to [0, 1]), the mean
    ``nonzeros``, ``flops``, ``storage_bits``, ``training_flops`` and
    ``total_training_flops`` (:func:`total_training_flops`), the median
    ``latency_seconds`` (of the exported models, see :mod:`sparsity_lab.bench`),
    ``accuracy_per_million`` and ``change_per_million_removed`` (of the means, see
    :mod:`sparsity_lab.efficiency`), ``flagged`` (any run raised a sanity flag), and
    ``vs_baseline``, ``vs_low``, ``vs_high``, ``vs_verdict``: the paired difference
    from ``baseline`` at the same sparsity and seeds (NaN where the baseline has no run
    there, and for the baseline itself).
    """
    rows = []
    dense = table.groupby("seed")["dense_test_accuracy"].first().mean()
    table = table.assign(total_training_flops=total_training_flops(table))
    for (method, target), runs in table.groupby(["method", "target_sparsity"], sort=False):
        interval = mean_interval(runs["test_accuracy"], bounds=(0.0, 1.0))
        nonzeros, parameters = runs["nonzeros"].mean(), runs["parameters"].mean()
        rows.append(
            {
                "method": method,
                "target_sparsity": target,
                "n": interval["n"],
                "sparsity": runs["sparsity"].mean(),
                "test_accuracy": interval["mean"],
                "ci_low": interval["ci_low"],
                "ci_high": interval["ci_high"],
                "nonzeros": nonzeros,
                "flops": runs["flops"].mean(),
                "storage_bits": runs["storage_bits"].mean(),
                "training_flops": runs["training_flops"].mean(),
                "total_training_flops": runs["total_training_flops"].mean(),
                "latency_seconds": runs["latency_seconds"].median(),
                "accuracy_per_million": efficiency.accuracy_per_parameter(
                    interval["mean"], nonzeros
                ),
                "change_per_million_removed": efficiency.accuracy_change_per_removed_parameter(
                    interval["mean"], dense, nonzeros, parameters
                ),
                "flagged": _flagged(runs["flags"]),
            }
        )
    out = pd.DataFrame(rows)
    vs_columns = ["method", "target_sparsity", "vs_baseline", "vs_low", "vs_high", "vs_verdict"]
    vs = pd.DataFrame(columns=vs_columns)
    if baseline in set(table["method"]):
        parts = []
        for method in out["method"].unique():
            if method == baseline:
                continue
            both = table[table["method"].isin([method, baseline])]
            shared = both.groupby("target_sparsity")["method"].nunique().eq(2)
            both = both[both["target_sparsity"].map(shared)]
            if both.empty:
                continue
            diff = paired(
                both,
                "method",
                method,
                baseline,
                metric="test_accuracy",
                by="target_sparsity",
                flags=None,
            )
            parts.append(diff.assign(method=method))
        if parts:
            vs = pd.concat(parts).rename(
                columns={
                    "mean_diff": "vs_baseline",
                    "ci_low": "vs_low",
                    "ci_high": "vs_high",
                    "verdict": "vs_verdict",
                }
            )[vs_columns]
    return out.merge(vs, on=["method", "target_sparsity"], how="left")


def pareto_front(points: pd.DataFrame, cost: str, metric: str = "test_accuracy") -> pd.DataFrame:
    """The rows of ``points`` that no other row beats: none has a lower or equal ``cost``
    and a higher ``metric`` (ties in both keep the first), sorted by ``cost``."""
    ordered = points.sort_values([cost, metric], ascending=[True, False], kind="stable")
    best = -np.inf
    keep = []
    for index, value in ordered[metric].items():
        if value > best:
            keep.append(index)
            best = value
    return ordered.loc[keep]


def plot_fronts(
    table: pd.DataFrame,
    costs: Sequence[str] = tuple(COSTS),
    *,
    axes=None,
    baseline: str = BASELINE,
):
    """Mean test accuracy against each cost, one marker per method, the front as a line.

    Error bars are the t-intervals over seeds; a flagged point is drawn hollow and left out
    of the front.  The dense model is the dashed line.  Returns the figure.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    points = summary(table, baseline)
    if axes is None:
        _, axes = plt.subplots(
            1, len(costs), figsize=(4.5 * len(costs), 4), layout="constrained", squeeze=False
        )
    axes = np.ravel(axes)
    dense = table.groupby("seed")["dense_test_accuracy"].first().mean()
    # a colour and a marker per method: more methods than one colour cycle has
    colours = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xph<>"
    for ax, cost in zip(axes, costs, strict=True):
        for i, (method, rows) in enumerate(points.groupby("method", sort=False)):
            colour, marker = colours[i % len(colours)], markers[i % len(markers)]
            errors = [
                rows["test_accuracy"] - rows["ci_low"],
                rows["ci_high"] - rows["test_accuracy"],
            ]
            ax.errorbar(
                rows[cost],
                rows["test_accuracy"],
                yerr=np.nan_to_num(errors),
                fmt="none",
                ecolor=colour,
                capsize=2,
                alpha=0.6,
            )
            clean, flagged = rows[~rows["flagged"]], rows[rows["flagged"]]
            ax.plot(
                clean[cost],
                clean["test_accuracy"],
                marker,
                color=colour,
                label=method,
                linestyle="none",
            )
            if len(flagged):  # hollow: a flagged point is never read as a plain one
                ax.plot(
                    flagged[cost],
                    flagged["test_accuracy"],
                    marker,
                    mfc="white",
                    mec=colour,
                    linestyle="none",
                    label=None if len(clean) else method,
                )
        front = pareto_front(points[~points["flagged"]], cost)  # a broken run fronts nothing
        ax.plot(front[cost], front["test_accuracy"], "k-", linewidth=0.8, label="Pareto front")
        ax.axhline(dense, color="grey", linestyle="--", linewidth=0.8, label="dense")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a log axis collide
        ax.set_xlabel({**COSTS, **TRAINING_COST}.get(cost, cost))
        ax.set_ylabel("test accuracy (mean, 95% CI)")
    axes[0].figure.legend(
        *axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small"
    )
    return axes[0].figure


def cards(table: pd.DataFrame, tolerance: float = 0.01, baseline: str = BASELINE) -> pd.DataFrame:
    """One row per method: what it reaches and at what cost, in one line.

    Columns: ``method``, ``sparsities`` (the targets run), ``best_accuracy`` and the target
    where it was reached, ``iso_accuracy_compression`` (largest compression whose mean is
    within ``tolerance`` of dense), ``best_accuracy_per_million``, ``beats_baseline`` and
    ``loses_to_baseline`` (the sparsities where the paired interval says so), and
    ``flagged_at`` (targets where a run raised a sanity flag).
    """
    points = summary(table, baseline)
    dense = table.groupby("seed")["dense_test_accuracy"].first().mean()
    parameters = table["parameters"].max()
    rows = []
    for method, rows_of in points.groupby("method", sort=False):
        best = rows_of.loc[rows_of["test_accuracy"].idxmax()]
        verdicts = rows_of["vs_verdict"]
        rows.append(
            {
                "method": method,
                "sparsities": ", ".join(f"{s:g}" for s in rows_of["target_sparsity"]),
                "best_accuracy": best["test_accuracy"],
                "at_sparsity": best["target_sparsity"],
                "iso_accuracy_compression": efficiency.iso_accuracy_compression(
                    rows_of["test_accuracy"],
                    rows_of["nonzeros"],
                    dense,
                    parameters,
                    tolerance=tolerance,
                ),
                "best_accuracy_per_million": rows_of["accuracy_per_million"].max(),
                "beats_baseline": ", ".join(
                    f"{s:g}" for s in rows_of["target_sparsity"][verdicts.eq("better")]
                ),
                "loses_to_baseline": ", ".join(
                    f"{s:g}" for s in rows_of["target_sparsity"][verdicts.eq("worse")]
                ),
                "flagged_at": ", ".join(
                    f"{s:g}" for s in rows_of["target_sparsity"][rows_of["flagged"]]
                ),
            }
        )
    return pd.DataFrame(rows)

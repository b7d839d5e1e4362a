"""Execute the jupytext notebooks for the book and the tests, with a content-hash cache.

The notebooks are committed as ``py:percent`` scripts (``notebooks/NN_topic.py``). This module
turns each one into a notebook, runs it with papermill (injecting ``SMOKE``) and writes the
executed ``.ipynb`` where the Jupyter Book reads it (``book/notebooks``). An execution is
cached under a key made of the notebook's code cells, the mode (smoke or full), every ``*.py``
of this package and the installed environment, so a second run re-executes only what changed;
an edit to the text cells alone is merged into the cached copy without running anything.

Command line::

    python -m sparsity_lab.pipeline execute [--smoke] [--notebooks DIR] [--out DIR]
                                            [--cache DIR] [--only NAME ...] [--budget-s S]
                                            [--total-budget-s S] [--workers N]
    python -m sparsity_lab.pipeline check [--notebooks DIR]
    python -m sparsity_lab.pipeline methods [--notebooks DIR] [--out FILE]

``methods`` writes the book's table from survey section to method, module and notebook.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import importlib.metadata
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from .paths import write_atomically

PACKAGE_DIR = Path(__file__).resolve().parent
NOTEBOOK_NAME = re.compile(r"^\d\d[a-z]?_\w+\.py$")  # NN_topic.py, also 02a_topic.py
KERNEL_NAME = "python3"
TIMINGS_FILE = "timings.json"
INJECTED_TAG = "injected-parameters"  # papermill's tag on the cell it adds with the parameters
# Bump when the way notebooks are executed changes, so that old cache entries are not reused.
CACHE_VERSION = "2"


@dataclass
class Result:
    """What happened to one notebook during :func:`execute`."""

    name: str
    status: str  # "executed", "cached" or "failed"
    seconds: float | None = None  # wall time of the execution (also for a cached copy)
    error: str = ""
    warning: str = ""  # e.g. over the time budget: reported, but not a failure


# --------------------------------------------------------------------------------------------
# Finding notebooks and computing the cache key


def find_notebooks(directory: Path, only: Sequence[str] | None = None) -> list[Path]:
    """Return the ``NN_topic.py`` notebooks of ``directory`` in name order.

    ``only`` restricts the list to the given stems or file names (``00_tour`` or
    ``00_tour.py``); an unknown name is an error rather than a silent no-op.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"notebook directory {directory} does not exist")
    found = sorted(p for p in directory.iterdir() if NOTEBOOK_NAME.match(p.name))
    if not only:
        return found
    wanted = {Path(name).stem for name in only}
    unknown = wanted - {p.stem for p in found}
    if unknown:
        raise ValueError(
            f"no notebook named {', '.join(sorted(unknown))} in {directory}; "
            f"available: {', '.join(p.stem for p in found) or 'none'}"
        )
    return [p for p in found if p.stem in wanted]


def library_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """Hash every ``*.py`` file of the library: the notebooks' numbers come from it."""
    digest = hashlib.sha256()
    for path in sorted(Path(package_dir).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


#: What executes a notebook, besides the library's own dependencies.
EXECUTION_TOOLS = ("ipykernel", "papermill", "jupytext")


def _requirement_name(requirement: str) -> str | None:
    """The distribution a requirement string names, or None for an extra's requirement."""
    if re.search(r"extra\s*==", requirement):
        return None
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1) if match else None


def _dependency_closure(roots: Iterable[str]) -> dict[str, str]:
    """``{name: version}`` of ``roots`` and everything they require, as installed (extras
    and requirements that are not installed are left out)."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = dist.version
        todo += filter(None, map(_requirement_name, dist.requires or []))
    return found


def environment_digest() -> str:
    """Hash the Python version and the installed versions of what the notebooks run on.

    A changed pin (say a new numpy) can change a notebook's numbers just like a library edit.
    Only the library's dependencies and the execution tools count, with everything they
    require: installing JupyterLab or a linter beside them leaves the cache valid.  When the
    project is not installed (no metadata to follow), every distribution counts.
    """
    try:
        importlib.metadata.distribution("sparsity-lab")
    except importlib.metadata.PackageNotFoundError:
        versions = {
            str(dist.metadata["Name"]).lower(): dist.version
            for dist in importlib.metadata.distributions()
            if dist.metadata["Name"]
        }
    else:
        versions = _dependency_closure(["sparsity-lab", *EXECUTION_TOOLS])
        versions.pop("sparsity-lab", None)  # its code is hashed by library_digest
    text = "\n".join([sys.version, *(f"{n}=={v}" for n, v in sorted(versions.items()))])
    return hashlib.sha256(text.encode()).hexdigest()


#: A ``py:percent`` cell marker, and the cell types that never run.
_CELL_MARKER = re.compile(rb"^# %%.*$", re.MULTILINE)
_TEXT_CELL = re.compile(rb"\[(?:markdown|md|raw)\]")


def executed_part(source: bytes) -> bytes:
    """The part of a ``py:percent`` notebook that can change its outputs: the header (its
    metadata) and every code cell with its marker line (tags, options), in order.  Markdown
    and raw cells are left out: rewording the text must not retrain the models."""
    markers = [m.start() for m in _CELL_MARKER.finditer(source)]
    chunks = [source[: markers[0]] if markers else source]
    for start, end in zip(markers, [*markers[1:], len(source)][: len(markers)], strict=True):
        chunk = source[start:end]
        if not _TEXT_CELL.search(chunk.split(b"\n", 1)[0]):
            chunks.append(chunk)
    return b"".join(chunks)


def cache_key(source: bytes, *, smoke: bool, library: str, environment: str = "") -> str:
    """Return the cache key of one execution: sha256 of everything that shapes its outputs
    (of the notebook's source, its :func:`executed_part`).

    ``library`` is :func:`library_digest`, ``environment`` is :func:`environment_digest`.
    """
    digest = hashlib.sha256()
    for part in (CACHE_VERSION.encode(), b"smoke" if smoke else b"full", library.encode()):
        digest.update(part + b"\0")
    digest.update(environment.encode() + b"\0")
    digest.update(executed_part(source))
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Executing one notebook


@contextlib.contextmanager
def _kernel_environment(threads: int | None = None, processes: int = 1) -> Iterator[None]:
    """Set up what the kernel inherits from this process, and restore it afterwards.

    - A private ``python3`` kernelspec that runs *this* interpreter: the first ``python3``
      spec on the Jupyter path could belong to another Python (a user-wide install).
    - ``SPARSITY_LAB_STATIC=1``: the widget helper draws static figures, since nobody can
      move a slider in an executed notebook.
    - This package's parent on ``PYTHONPATH``, so the kernel imports the very files that the
      cache key hashed, even when the project is not pip-installed.
    - No ``MPLBACKEND``: an inherited ``Agg`` would replace the inline backend and the
      executed notebook would have no figures.
    - With ``threads``, ``OMP_NUM_THREADS`` (unless the user set it): kernels that run side
      by side share the cores instead of each taking all of them.
    - ``SPARSITY_LAB_WORKERS=processes``: the processes a sweep of the notebook may fork
      (:func:`sparsity_lab.experiments.sweep`); more than 1 only for a notebook that
      :func:`runs_alone`.
    """
    from ipykernel.kernelspec import get_kernel_dict

    from .experiments import WORKERS_ENV  # here: experiments imports matplotlib

    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="sparsity-lab-kernel-") as jupyter_dir:
        # ipykernel's own spec (it names sys.executable), where Jupyter looks first.
        spec_dir = Path(jupyter_dir, "kernels", KERNEL_NAME)
        spec_dir.mkdir(parents=True)
        (spec_dir / "kernel.json").write_text(json.dumps(get_kernel_dict()))
        jupyter_path = [jupyter_dir, *filter(None, saved.get("JUPYTER_PATH", "").split(os.pathsep))]
        python_path = [str(PACKAGE_DIR.parent)]
        python_path += filter(None, saved.get("PYTHONPATH", "").split(os.pathsep))
        os.environ["JUPYTER_PATH"] = os.pathsep.join(jupyter_path)
        os.environ["PYTHONPATH"] = os.pathsep.join(python_path)
        os.environ["SPARSITY_LAB_STATIC"] = "1"
        os.environ.pop("MPLBACKEND", None)
        if threads is not None:
            os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ[WORKERS_ENV] = str(processes)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _kernel_manager_class() -> type:
    """A kernel manager that gives the kernel CurveZMQ keys when libzmq supports them.

    Without keys a recent ipykernel warns on every start that it talks plain TCP.
    """
    import zmq
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class EncryptedKernelManager(AsyncKernelManager):
        @default("transport_encryption")
        def _encrypt_when_possible(self) -> str:
            return "auto" if zmq.has("curve") else "disabled"

    return EncryptedKernelManager


def execute_notebook(
    source: Path,
    *,
    smoke: bool,
    cwd: Path | None = None,
    threads: int | None = None,
    processes: int = 1,
):
    """Run one ``py:percent`` notebook with ``SMOKE`` injected; return the executed notebook.

    The kernel runs this interpreter, in ``cwd`` (default: the notebook's folder), with
    ``threads`` as its ``OMP_NUM_THREADS`` unless the user set one, and ``processes`` for
    its sweeps (:func:`_kernel_environment`). Raises the execution error
    (``papermill.PapermillExecutionError`` for a failing cell).
    """
    # Imported here so that `check` and the cache helpers work without the notebook tools.
    import jupytext
    import papermill

    notebook = jupytext.read(source, fmt="py:percent")
    notebook.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    notebook.metadata.pop("jupytext", None)  # the executed copy is not paired with anything
    with _kernel_environment(threads, processes):
        executed = papermill.execute_notebook(
            notebook,
            None,  # no file: the caller writes the result, atomically
            parameters={"SMOKE": smoke},
            kernel_name=KERNEL_NAME,
            language="python",
            cwd=str(cwd or source.parent),
            kernel_manager_class=_kernel_manager_class(),
            progress_bar=False,
            request_save_on_cell_execute=False,
        )
    for cell in executed.cells:
        tags = cell.metadata.get("tags", [])
        if INJECTED_TAG in tags and "remove-cell" not in tags:
            # papermill's scaffolding: the book shows the parameters cell, not this one
            cell.metadata["tags"] = [*tags, "remove-cell"]
    describe_figures(executed)
    return executed


# The texts a plotting call puts on a figure: titles and axis labels, as string literals.
_FIGURE_TEXT = re.compile(
    r"""(?:set_title|suptitle|set_xlabel|set_ylabel|xlabel|ylabel|title)\s*[(=]\s*"""
    r"""(f?)(["'])(.*?)(?<!\\)\2"""
)


def figure_alt(source: str, heading: str) -> str:
    """Alt text for the figures a code cell draws: its section and the titles and axis
    labels written in its source (an f-string's fields shown as "...")."""
    texts: list[str] = []
    for is_f, _, text in _FIGURE_TEXT.findall(source):
        text = (re.sub(r"\{[^{}]*\}", "...", text) if is_f else text).strip()
        if text and text not in texts:
            texts.append(text)
    alt = f"Figure of the section '{heading}'"
    return f"{alt}: {'; '.join(texts[:4])}" if texts else alt


def describe_figures(notebook) -> None:
    """Give every code cell that shows an image alt text for the book (myst-nb's
    ``image`` options), instead of the image's file path."""
    heading = "Introduction"
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            found = _HEADING.findall(cell.source)  # (hashes, title) pairs
            heading = found[-1][1] if found else heading
            continue
        images = any(
            mime.startswith("image/")
            for output in cell.get("outputs", [])
            for mime in output.get("data", {})
        )
        if cell.cell_type == "code" and images:
            options = cell.metadata.setdefault("mystnb", {}).setdefault("image", {})
            options["alt"] = figure_alt(cell.source, heading)


def _describe(error: BaseException) -> str:
    """One readable paragraph about a failed execution (the cell's traceback if there is one)."""
    traceback = getattr(error, "traceback", None)
    if traceback:
        cell = getattr(error, "exec_count", None)
        text = "\n".join(traceback)
        text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # drop terminal colours
        return f"cell In [{cell}] raised:\n{text}"
    return f"{type(error).__name__}: {error}"


# --------------------------------------------------------------------------------------------
# Executing all notebooks with the cache


def execute(
    notebooks: Path = Path("notebooks"),
    out: Path = Path("book/notebooks"),
    cache: Path = Path(".cache/notebooks"),
    *,
    smoke: bool = False,
    only: Sequence[str] | None = None,
    budget_s: float | None = None,
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> list[Result]:
    """Execute (or take from the cache) every notebook and write ``out/NN_topic.ipynb``.

    A failing notebook does not stop the others; its result says ``failed`` and any older
    executed copy of it is removed from ``out``, so the book never shows stale numbers.
    Each notebook is cached and written as soon as it has run, so an interrupted build
    keeps what it finished.  With ``budget_s``, a notebook whose execution took longer gets
    a warning: a shared machine's timings are too noisy to fail a build on, but the excess
    must be seen.  ``workers`` notebooks run side by side, each in a process of its own
    (papermill changes the working directory of the whole process) with its share of the
    cores, started longest first by the times recorded (:func:`longest_first`); those that
    :func:`runs_alone` says start processes of their own run before them, one at a time.
    Wall times are merged into ``out/timings.json``; results come in the notebooks'
    order.
    """
    notebooks, out, cache = Path(notebooks).resolve(), Path(out).resolve(), Path(cache).resolve()
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    mode = "smoke" if smoke else "full"
    library, env = library_digest(), environment_digest()
    keys = {
        source: cache_key(source.read_bytes(), smoke=smoke, library=library, environment=env)
        for source in find_notebooks(notebooks, only)
    }
    entry = {source: cache / f"{source.stem}-{mode}-{key}.ipynb" for source, key in keys.items()}
    to_run = [s for s in keys if not (entry[s].exists() and _take_current_text(s, entry[s]))]

    def settle(source: Path, run: tuple[Any, float] | None) -> Result:
        return _settle(source, keys[source], entry[source], run, out, cache, mode, log)

    results = {source: settle(source, None) for source in keys if source not in to_run}
    threads = max(1, (os.cpu_count() or 1) // workers)
    # Notebooks that start processes of their own run first, one at a time, with the
    # threads a notebook gets side by side (the same numbers as there), but no neighbour:
    # their sweeps fork a process per worker instead.
    alone = [source for source in to_run if workers > 1 and runs_alone(source)]
    for source in alone:
        run = _timed_execution(source, smoke, notebooks, threads, processes=workers)
        results[source] = settle(source, run)
    side_by_side = [source for source in to_run if source not in alone]
    if workers == 1 or len(side_by_side) <= 1:
        for source in side_by_side:
            results[source] = settle(source, _timed_execution(source, smoke, notebooks))
    else:
        spawn = multiprocessing.get_context("spawn")  # a fresh interpreter, no inherited locks
        recorded = recorded_seconds(out / TIMINGS_FILE, mode)
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            futures = {
                pool.submit(_timed_execution, source, smoke, notebooks, threads): source
                for source in longest_first(side_by_side, recorded)
            }
            for future in as_completed(futures):
                results[futures[future]] = settle(futures[future], future.result())
    ordered = [results[source] for source in keys]
    for result in ordered:
        if budget_s is not None and result.seconds is not None and result.seconds > budget_s:
            result.warning = (
                f"took {result.seconds:.1f} s in {mode} mode, over the budget of {budget_s:g} s; "
                "make the SMOKE branch of its parameters smaller (fewer epochs, samples, seeds)"
                if smoke
                else f"took {result.seconds / 60:.1f} min in {mode} mode, over the budget of "
                f"{budget_s / 60:g} min; share its dense models and sweeps through the cache, or "
                "size its experiments to what they show"
            )
            log(f"{result.name}: WARNING {result.warning}")
    _record_timings(out / TIMINGS_FILE, ordered, mode)
    return ordered


def _text_layout(notebook) -> list[tuple[int, str, str]]:
    """Each text (markdown or raw) cell of ``notebook`` as (code cells before it, papermill's
    injected ones not counted; source; metadata without papermill's): what a text-only edit
    changes."""
    layout, code_cells = [], 0
    for cell in notebook.cells:
        if cell.cell_type == "code":
            code_cells += INJECTED_TAG not in cell.metadata.get("tags", [])
            continue
        metadata = {k: v for k, v in cell.metadata.items() if k != "papermill"}
        if not metadata.get("tags"):
            metadata.pop("tags", None)  # papermill adds an empty list
        layout.append((code_cells, cell.source, json.dumps(metadata, sort_keys=True)))
    return layout


def with_current_text(executed, fresh):
    """``executed`` (a cached run, changed in place) with the text cells of ``fresh`` (the
    source as it is now, read by jupytext), or None if their code cells differ.

    Code cells keep their outputs, and papermill's injected cells stay after the cell they
    followed; text cells and their order come from ``fresh``.  Figures' alt text is derived
    again, since it names the section a figure is in."""
    ran: list[list[Any]] = [[]]  # each code cell of the run with the injected cells after it
    for cell in executed.cells:
        if cell.cell_type != "code":
            continue
        if INJECTED_TAG in cell.metadata.get("tags", []):
            ran[-1].append(cell)
        else:
            ran.append([cell])
    leading, ran = ran[0], ran[1:]
    code = [cell for cell in fresh.cells if cell.cell_type == "code"]
    if [group[0].source for group in ran] != [cell.source for cell in code]:
        return None
    cells, groups = list(leading), iter(ran)
    for cell in fresh.cells:
        cells.extend(next(groups) if cell.cell_type == "code" else [cell])
    executed.cells = cells
    describe_figures(executed)
    return executed


def _take_current_text(source: Path, entry: Path) -> bool:
    """Bring the cached run ``entry`` of ``source`` up to the source's text cells (their key
    covers only the code); False, with the entry removed, if it cannot be matched."""
    import jupytext
    import nbformat

    executed = nbformat.reads(entry.read_text(), as_version=4)
    fresh = jupytext.read(source, fmt="py:percent")
    if _text_layout(executed) == _text_layout(fresh):
        return True
    merged = with_current_text(executed, fresh)
    if merged is None:
        entry.unlink(missing_ok=True)
        return False
    write_atomically(entry, nbformat.writes(merged).encode() + b"\n")
    return True


def _stem(source: Path) -> str:
    return source.stem


def runs_alone(source: Path) -> bool:
    """Whether the notebook's header sets ``sparsity_lab: runs_alone: true``: it starts
    worker processes of its own, so :func:`execute` gives it the machine to itself.  08's
    data-parallel workers would fight a neighbour for the cores (each collective step then
    waits for the worker that lost); a notebook that is mostly sweeps forks a worker per
    core (``$SPARSITY_LAB_WORKERS``).  Two workers of one notebook get less done than two
    notebooks side by side (they contend for the same caches, and the rest of the notebook
    runs on one core), so the setting is worth its cost to the build only where it brings
    a notebook within its time budget; `benchmarks/book_build.md` gives the measurements."""
    import jupytext

    settings = jupytext.read(source, fmt="py:percent").metadata.get("sparsity_lab", {})
    return isinstance(settings, dict) and settings.get("runs_alone") is True


def recorded_seconds(path: Path, mode: str) -> dict[str, float]:
    """The longest wall time each notebook took when it ran in ``mode``, from a timings file
    of :func:`execute` ({} when there is none or it cannot be read)."""
    try:
        recorded = json.loads(path.read_text()).get(mode, {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {name: float(s) for name, s in recorded.items() if isinstance(s, int | float)}


def longest_first(
    sources: Sequence[Any], recorded: dict[str, float], name: Callable[[Any], str] = _stem
) -> list[Any]:
    """``sources`` in the order to start them side by side: the longest as recorded
    (under ``name(source)``, a notebook's stem by default) first, those never timed before
    all (in their order).  Started last, a long job would keep one worker busy alone while
    the others wait for the build to end."""
    return sorted(sources, key=lambda source: -recorded.get(name(source), float("inf")))


# --------------------------------------------------------------------------------------------
# The dense models every notebook shares

#: The seeds of the notebooks' full mode: :func:`train_dense_models` trains every recipe's
#: dense model for each, the checkpoints the notebooks then load (00b trains the same ones).
SHARED_SEEDS = (0, 1, 2)


def _dense_name(job: tuple[str, str, int]) -> str:
    model, data, seed = job
    return f"{model}-{data}-seed{seed}"


def _dense_job(model: str, data: str, seed: int, threads: int = 1) -> tuple[bool, float]:
    """``(loaded from the cache, wall seconds)`` of one ``recipes.dense`` call on
    ``threads`` threads: one, as every notebook trains (``sl.nb.setup(threads=1)``), since
    torch's sums depend on the thread count and the checkpoint's key does not hold it."""
    import torch

    from . import recipes

    torch.set_num_threads(threads)
    start = time.perf_counter()
    _, _, info = recipes.dense(model, data, seed)
    return info["cached"], round(time.perf_counter() - start, 2)


def train_dense_models(
    seeds: Sequence[int] = SHARED_SEEDS,
    *,
    workers: int = 1,
    timings: Path | None = None,
    log: Callable[[str], None] = print,
) -> list[Result]:
    """Train every recipe's dense model for ``seeds`` into the checkpoint cache, or find it
    there: what ``make models`` (and ``make book``, first) runs, so that no notebook pays
    for the models the others share.

    Exactly the calls of the notebooks (``recipes.dense(model, data, seed)``, on one thread
    as the notebooks train), so a notebook loads these checkpoints and its
    numbers are those it would have computed.  ``workers`` jobs run side by side, the
    longest as recorded in ``timings`` (mode ``"models"``) first; a failed job does not stop
    the others.  Returns one :class:`Result` per model, ``"cached"`` when it was loaded.
    """
    from . import recipes

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    jobs = [(m, d, int(s)) for (m, d) in recipes.RECIPES for s in seeds]
    recorded = recorded_seconds(timings, "models") if timings is not None else {}
    jobs = longest_first(jobs, recorded, name=_dense_name)

    def settle(job: tuple[str, str, int], run: Callable[[], tuple[bool, float]]) -> Result:
        try:
            cached, seconds = run()
        except Exception as error:  # one model's failure must not stop the others
            log(f"{_dense_name(job)}: FAILED: {error}")
            return Result(_dense_name(job), "failed", error=_describe(error))
        done = "loaded from the checkpoint cache" if cached else "trained"
        log(f"{_dense_name(job)}: {done} in {seconds:.1f} s")
        return Result(_dense_name(job), "cached" if cached else "executed", seconds)

    if workers == 1:
        results = {job: settle(job, lambda job=job: _dense_job(*job)) for job in jobs}
    else:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            futures = {pool.submit(_dense_job, *job): job for job in jobs}
            results = {futures[f]: settle(futures[f], f.result) for f in as_completed(futures)}
    ordered = [results[job] for job in jobs]
    if timings is not None:
        # a checkpoint's load time says nothing about its training: only trainings are kept
        _record_timings(timings, [r for r in ordered if r.status == "executed"], "models")
    return ordered


def _timed_execution(
    source: Path, smoke: bool, cwd: Path, threads: int | None = None, processes: int = 1
) -> tuple[Any, float]:
    """``(executed notebook, or a description of what failed, wall seconds)``: one
    notebook's run, whose failure must not stop the others (a description, not the
    exception, because a run in another process sends back only what pickles)."""
    start = time.perf_counter()
    try:
        executed = execute_notebook(
            source, smoke=smoke, cwd=cwd, threads=threads, processes=processes
        )
    except Exception as error:  # any failure of one notebook must not stop the rest
        return _Failure(_describe(error)), time.perf_counter() - start
    return executed, round(time.perf_counter() - start, 2)


@dataclass
class _Failure:
    """What a failed notebook run sends back: the error, described."""

    description: str


def _settle(
    source: Path,
    key: str,
    entry: Path,
    run: tuple[Any, float] | None,
    out: Path,
    cache: Path,
    mode: str,
    log: Callable[[str], None],
) -> Result:
    """Write one notebook's executed copy (a fresh run, or the cache's) into ``out``."""
    import nbformat

    name, target = source.stem, out / f"{source.stem}.ipynb"
    if run is None:
        data = entry.read_bytes()
        seconds = json.loads(data).get("metadata", {}).get("sparsity_lab", {}).get("wall_s")
        result = Result(name, "cached", seconds)
        log(f"{name}: cached ({mode})")
    else:
        executed, seconds = run
        if isinstance(executed, _Failure):
            target.unlink(missing_ok=True)
            log(f"{name}: FAILED ({mode}) after {seconds:.1f} s")
            return Result(name, "failed", error=executed.description)
        own = executed.metadata.get("sparsity_lab", {})  # the header's settings, if any
        executed.metadata["sparsity_lab"] = {**own, "mode": mode, "wall_s": seconds, "key": key}
        data = nbformat.writes(executed).encode() + b"\n"
        write_atomically(entry, data)
        for old in cache.glob(f"{name}-{mode}-*.ipynb"):
            if old != entry:
                old.unlink(missing_ok=True)
        result = Result(name, "executed", seconds)
        log(f"{name}: executed in {seconds:.1f} s ({mode})")
    # An unchanged copy keeps its timestamp, so the book rebuilds only changed pages.
    if not target.exists() or target.read_bytes() != data:
        write_atomically(target, data)
    return result


def time_report(
    results: Sequence[Result], total_budget_s: float | None, budget_s: float | None
) -> list[str]:
    """Lines that sum the notebooks' recorded wall times (cached copies included: the time
    a fresh machine would take, one notebook after another) and judge them against the
    budgets for the whole and for each notebook."""
    timed = [r for r in results if r.seconds is not None]
    total = sum(r.seconds for r in timed)
    lines = [
        f"notebook time: {total / 60:.1f} min summed over {len(timed)} notebook(s), each as "
        "recorded when it ran (cached ones included)"
    ]
    if total_budget_s is not None:
        verdict = "met" if total <= total_budget_s else "MISSED"
        lines.append(f"  budget for all: {total_budget_s / 60:g} min -> {verdict}")
    if budget_s is not None:
        over = sorted((r for r in timed if r.seconds > budget_s), key=lambda r: -r.seconds)
        listed = ", ".join(f"{r.name} {r.seconds / 60:.1f} min" for r in over) or "none"
        verdict = "met" if not over else "MISSED"
        lines.append(f"  budget per notebook: {budget_s / 60:g} min -> {verdict}; over: {listed}")
    return lines


def _record_timings(path: Path, results: Sequence[Result], mode: str) -> None:
    """Merge the wall times of this run into ``path`` (``{mode: {name: seconds}}``), each
    notebook keeping the longest time recorded for it.

    The longest, not the last: a notebook that read its runs back from the run cache
    (:mod:`sparsity_lab.run_cache`) takes seconds, and would then be started last in a
    build that trains them again.  Started first, a notebook that got faster only costs
    its own (short) time early in the build.
    """
    timings: dict[str, dict[str, float]] = {}
    if path.exists():
        with contextlib.suppress(ValueError):
            timings = json.loads(path.read_text())
    for result in results:
        if result.seconds is not None:
            recorded = timings.setdefault(mode, {})
            before = recorded.get(result.name)
            longest = before if isinstance(before, int | float) else 0.0
            recorded[result.name] = max(longest, result.seconds)
    if timings:
        write_atomically(path, (json.dumps(timings, indent=2, sort_keys=True) + "\n").encode())


# --------------------------------------------------------------------------------------------
# Static checks of the notebook sources

_PIP_IN_CELL = re.compile(r"^\s*(?:[!%]{1,2}\s*(?:pip|conda|mamba)\b)", re.MULTILINE)
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def check_notebook(path: Path) -> list[str]:
    """Return the problems of one notebook source (an empty list when it follows the rules).

    Rules: a cell tagged ``parameters`` assigning literals only, ``SMOKE = False`` among
    them; no package installs from a cell; no ``get_dataset(`` (mnist1d downloads by
    default); the last sections are a "Summary" heading followed by an "Exercises" heading,
    whose exercises check themselves (:func:`_check_exercises`).
    """
    import jupytext

    path = Path(path)
    problems: list[str] = []
    notebook = jupytext.read(path, fmt="py:percent")
    code = [c for c in notebook.cells if c.cell_type == "code"]

    parameter_cells = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    if len(parameter_cells) != 1:
        problems.append(
            f"has {len(parameter_cells)} cells tagged parameters, expected one: "
            '# %% tags=["parameters"] followed by SMOKE = False'
        )
    else:
        problems += _check_parameters(parameter_cells[0].source)

    for cell in code:
        if _PIP_IN_CELL.search(cell.source):
            problems.append("installs packages from a cell (!pip/%pip); add them to pyproject.toml")
            break
    if any("get_dataset(" in cell.source for cell in code):
        problems.append(
            "calls get_dataset( (mnist1d downloads by default); build the data with the "
            "library's offline data helpers"
        )

    headings = [
        (len(m.group(1)), m.group(2))
        for cell in notebook.cells
        if cell.cell_type == "markdown"
        for m in _HEADING.finditer(cell.source)
    ]
    problems += _check_ending(headings)
    if not problems:
        problems += _check_exercises(notebook.cells)
    return problems


def _check_parameters(source: str) -> list[str]:
    """Papermill overrides the parameters cell by appending assignments: literals only."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        return [f"parameters cell is not valid Python: {error}"]
    problems, smoke = [], None
    for node in tree.body:
        if not (
            isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) for t in node.targets)
        ):
            problems.append(
                f"parameters cell line {node.lineno} is not a plain assignment; "
                "keep only NAME = literal lines there"
            )
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            problems.append(
                f"parameters cell line {node.lineno} assigns a computed value; "
                "assign a literal and compute derived values in the next cell"
            )
            continue
        if any(t.id == "SMOKE" for t in node.targets):
            smoke = value
    if smoke is None:
        problems.append("parameters cell does not define SMOKE; add SMOKE = False")
    elif smoke is not False:
        problems.append(f"parameters cell sets SMOKE = {smoke!r}; the default must be False")
    return problems


def _check_ending(headings: list[tuple[int, str]]) -> list[str]:
    """The notebook's last sections must be Summary, then Exercises (sub-headings allowed)."""
    titles = [title.lower() for _, title in headings]
    if "summary" not in titles or "exercises" not in titles:
        return ['does not end with a "Summary" and an "Exercises" markdown heading']
    summary = len(titles) - 1 - titles[::-1].index("summary")
    exercises = len(titles) - 1 - titles[::-1].index("exercises")
    level = headings[summary][0]
    if exercises < summary:
        return ['the "Exercises" heading must come after the "Summary" heading']
    later = [
        title
        for i, (depth, title) in enumerate(headings[summary + 1 :], start=summary + 1)
        if depth <= level and i != exercises
    ]
    if headings[exercises][0] != level or later:
        return [
            '"Summary" and "Exercises" must be the last two sections, at the same heading level'
            + (f"; found later: {', '.join(later)}" if later else "")
        ]
    return []


_EXERCISE = re.compile(r"^\*\*(\d+)\.\*\*", re.MULTILINE)


def _is_hidden(cell: Any) -> bool:
    """Collapsed in the book (the ``hide-input`` tag) and in JupyterLab (``source_hidden``)."""
    hidden = cell.metadata.get("jupyter", {}).get("source_hidden", False)
    return "hide-input" in cell.metadata.get("tags", []) and hidden is True


def _check_exercises(cells: list[Any]) -> list[str]:
    """Every exercise checks itself: exercise N (a markdown line ``**N.**`` of the Exercises
    section) has a collapsed cell defining ``check_N``, a cell that checks the student's
    answer, and a collapsed solution that calls ``check_N(..., solution=True)``, which raises
    when the solution fails its own check, so every run of the notebook verifies it."""
    start = next(
        i
        for i in range(len(cells) - 1, -1, -1)
        if cells[i].cell_type == "markdown"
        and any(m.group(2).lower() == "exercises" for m in _HEADING.finditer(cells[i].source))
    )
    section = cells[start:]
    numbers = [
        int(m.group(1))
        for cell in section
        if cell.cell_type == "markdown"
        for m in _EXERCISE.finditer(cell.source)
    ]
    if not numbers:
        return ["the Exercises section has no exercise **1.**; number them **1.**, **2.**, ..."]
    if numbers != list(range(1, len(numbers) + 1)):
        return [f"the exercises are numbered {numbers}; number them 1 to {len(numbers)} once each"]
    code = [c for c in section if c.cell_type == "code"]
    problems = []
    for n in numbers:
        defines = [c for c in code if re.search(rf"^def check_{n}\(", c.source, re.MULTILINE)]
        calls = [c for c in code if re.search(rf"\bcheck_{n}\(", c.source) and c not in defines]
        solutions = [c for c in calls if re.search(rf"\bcheck_{n}\([^)]*solution=True", c.source)]
        answers = [c for c in calls if c not in solutions]
        missing = [
            what
            for what, found in [
                (f"a collapsed cell defining check_{n}", [c for c in defines if _is_hidden(c)]),
                (f"a cell checking the answer with check_{n}(answer_{n})", answers),
                (
                    f"a collapsed solution ending in check_{n}(solution_{n}, solution=True)",
                    [c for c in solutions if _is_hidden(c)],
                ),
            ]
            if not found
        ]
        if missing:
            problems.append(
                f"exercise {n} lacks {'; '.join(missing)} (collapsed: "
                '# %% tags=["hide-input"] jupyter={"source_hidden": true})'
            )
    return problems


def check(notebooks: Path = Path("notebooks")) -> dict[str, list[str]]:
    """Check every notebook of ``notebooks``; map each file name to its problems."""
    return {path.name: check_notebook(path) for path in find_notebooks(Path(notebooks))}


# --------------------------------------------------------------------------------------------
# Command line


def notebooks_using(name: str, sources: dict[str, str]) -> list[str]:
    """The notebooks whose source names ``name`` as a string (``"rigl"`` or ``'rigl'``)."""
    quoted = re.compile(rf"""["']{re.escape(name)}["']""")
    return [nb for nb, text in sources.items() if quoted.search(text)]


def methods_page(notebooks: Path = Path("notebooks")) -> str:
    """The book's page that goes from a survey section to each method's module and notebooks.

    Generated from the registry (every entry's ``section``) and the notebook sources, so a
    new method appears in it with no edit of the book.
    """
    sources = {p.stem: p.read_text() for p in find_notebooks(notebooks)}
    lines = [
        "# Methods by survey section",
        "",
        "Every registered method, filed under the section of the survey that describes it "
        "(methods published after the survey under the section they extend).  *Module* is "
        "where its code lives; *notebooks* are the chapters whose code names it as a string "
        "(a common word such as `dense` or `random` also matches its other uses).  This page "
        "is generated by `python -m sparsity_lab.pipeline methods` from the registry.",
        "",
    ]
    for section, entries in registry.by_section().items():
        lines += [f"## {section} {registry.SECTIONS[section]}", ""]
        lines += ["| name | kind | what | module | notebooks |", "|---|---|---|---|---|"]
        for e in entries:
            module = getattr(e.obj, "__module__", None) or type(e.obj).__module__
            links = ", ".join(
                f"{{doc}}`{nb.split('_')[0]} <notebooks/{nb}>`"
                for nb in notebooks_using(e.name, sources)
            )
            what = e.summary.replace("|", "\\|")
            lines.append(f"| `{e.name}` | {e.kind} | {what} | `{module}` | {links or '-'} |")
        lines.append("")
    unfiled = [e.name for group in registry.by_kind().values() for e in group if not e.section]
    if unfiled:
        lines += ["## Outside the survey", "", ", ".join(f"`{n}`" for n in unfiled), ""]
    return "\n".join(lines)


def _report_models(workers: int, timings: Path) -> int:
    """``make models``: train the shared dense models, then say what it took."""
    started = time.perf_counter()
    results = train_dense_models(workers=workers, timings=timings)
    trained = [r for r in results if r.status == "executed"]
    failed = [r for r in results if r.status == "failed"]
    print(
        f"dense models: {(time.perf_counter() - started) / 60:.1f} min of wall time; "
        f"{len(trained)} of {len(results)} trained ({sum(r.seconds for r in trained) / 60:.1f} "
        f"min summed), {len(results) - len(trained) - len(failed)} loaded from the cache"
    )
    for result in failed:
        print(f"\n{result.name} failed:\n{result.error}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m sparsity_lab.pipeline``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sparsity_lab.pipeline", description=__doc__.split("\n\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("execute", help="execute the notebooks (cached) into --out")
    run.add_argument("--smoke", action="store_true", help="inject SMOKE=True (fast run)")
    run.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    run.add_argument("--out", type=Path, default=Path("book/notebooks"))
    run.add_argument("--cache", type=Path, default=Path(".cache/notebooks"))
    run.add_argument("--only", nargs="+", metavar="NAME", help="only these notebooks")
    run.add_argument("--budget-s", type=float, help="warn about a notebook that takes longer")
    run.add_argument(
        "--total-budget-s", type=float, help="judge the notebooks' summed time against this"
    )
    run.add_argument("--workers", type=int, default=1, help="notebooks run side by side")
    models = commands.add_parser(
        "models", help="train every recipe's dense model for the shared seeds (cached)"
    )
    models.add_argument("--workers", type=int, default=1, help="models trained side by side")
    models.add_argument(
        "--timings", type=Path, default=Path("book/notebooks") / TIMINGS_FILE,
        help="where each model's training time is recorded (to start the longest first)",
    )  # fmt: skip
    lint = commands.add_parser("check", help="check the notebook sources follow the rules")
    lint.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    table = commands.add_parser("methods", help="write the book's methods-by-section page")
    table.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    table.add_argument("--out", type=Path, default=Path("book/methods.md"))
    args = parser.parse_args(argv)

    try:
        if args.command == "methods":
            write_atomically(args.out, methods_page(args.notebooks).encode())
            print(f"wrote {args.out}")
            return 0
        if args.command == "models":
            return _report_models(args.workers, args.timings)
        if args.command == "check":
            problems = check(args.notebooks)
            for name, found in problems.items():
                for problem in found:
                    print(f"{args.notebooks / name}: {problem}")
            bad = sum(bool(found) for found in problems.values())
            print(f"checked {len(problems)} notebook(s): {bad} with problems")
            return 1 if bad else 0

        started = time.perf_counter()
        results = execute(
            args.notebooks,
            args.out,
            args.cache,
            smoke=args.smoke,
            only=args.only,
            budget_s=args.budget_s,
            workers=args.workers,
        )
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"this run: {(time.perf_counter() - started) / 60:.1f} min of wall time")
    for line in time_report(results, args.total_budget_s, args.budget_s):
        print(line)
    failed = [r for r in results if r.status == "failed"]
    for result in failed:
        print(
            f"\n{args.notebooks / (result.name + '.py')} failed:\n{result.error}", file=sys.stderr
        )
    if not results:
        print(f"no NN_topic.py notebooks in {args.notebooks}")
    if failed:
        names = ", ".join(r.name for r in failed)
        print(f"\n{len(failed)} of {len(results)} notebook(s) failed: {names}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

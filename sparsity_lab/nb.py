"""Running the notebooks: setup, displays, exercise checks and an explorer that works offline.

A notebook starts with ``sl.nb.setup(seed=SEED, smoke=SMOKE)``.  It shows its computed
sentences with :func:`md`, its sanity flags with :func:`show_flags` and its dense baselines
with :func:`show_dense`, and checks a student's answers with :func:`check`.  Interactive
explorers go through :func:`explore`, which builds ipywidgets controls in a live kernel and
draws a static small-multiple figure when there is no live front end (papermill, the book,
CI), so the executed notebook still shows the picture.

The sentences themselves are computed with :mod:`sparsity_lab.words`.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

from .seeding import seed_everything

if TYPE_CHECKING:
    import pandas as pd

# The notebook pipeline sets this to "1" when it executes notebooks with papermill.
STATIC_ENV = "SPARSITY_LAB_STATIC"

# Figure defaults for the book: small enough for a page column, sharp enough on screen.
_RC = {
    "figure.dpi": 100,
    "figure.figsize": (6.0, 3.5),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

# Static mode draws at most this many panels for the first control.
_MAX_PANELS = 4  # picks from a slider's range, which has too many values to draw
_MAX_STATIC = 24  # panels a static explorer draws at most (every listed value up to it)
_MAX_COLUMNS = 6


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Freed blocks up to this size stay with the process for reuse (:func:`keep_freed_memory`).
KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory(limit: int = KEEP_FREED_BYTES) -> bool:
    """Let glibc's malloc keep freed blocks of up to ``limit`` bytes for reuse.

    By default glibc serves an allocation over 32 MB with fresh pages from the system and
    returns them when it is freed, so a loop that allocates the same large tensor again
    (per-example gradients, Fisher blocks, Hessians) has the kernel map and zero every page
    each time: in 02i's second-order pruning the process spent more time in the system than
    computing.  With this, such blocks come from the heap and are reused; the cost is that
    the process holds on to its peak memory (a fifth more, pruning once with each of 02i's
    methods).  It can hold more: a small allocation made between a block's free and the
    next request can split the block, and the heap then grows by a fresh one.  A loop of
    256 MB torch tensors, one alive at a time, ended holding 2 to 7 such blocks (over 10 or
    40 turns, in fresh processes), where glibc's default holds one.  A forked sweep worker
    inherits the setting.  Returns whether it applied: on Linux with glibc only.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl)
        return False
    # both return 1 on success; the trim threshold keeps freed memory at the heap's top
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))


def _package_version() -> str:
    try:
        return version("sparsity-lab")
    except PackageNotFoundError:  # running from a source checkout that was not installed
        return "dev"


def setup(seed: int = 0, smoke: bool = False, *, threads: int | None = None) -> dict[str, Any]:
    """Seed everything, set the book's figure and table defaults, print one line of versions.

    Tables show every character of their cells and up to 200 rows.  Freed memory stays with
    the process for reuse (:func:`keep_freed_memory`).

    ``smoke`` only changes the printed mode; the notebook uses it to shrink its own sizes.
    ``threads`` caps torch's intra-op threads (None leaves torch's default).  The matplotlib
    backend is left alone, so figures still appear in executed notebooks.

    Returns ``{"seed", "smoke", "versions"}``.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be a positive integer or None, got {threads}")
        torch.set_num_threads(threads)
    seed_everything(seed)
    keep_freed_memory()
    mpl.rcParams.update(_RC)
    import pandas as pd  # loaded by every notebook anyway; not by ``import sparsity_lab``

    # a verdict or a flag cut to "no clear di..." is a sentence the reader cannot check
    pd.set_option("display.max_colwidth", None)
    pd.set_option("display.max_rows", 200)
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "sparsity_lab": _package_version(),
        "numpy": np.__version__,
    }
    mode = "smoke" if smoke else "full"
    print(" | ".join(f"{k} {v}" for k, v in versions.items()) + f" | seed {seed} | mode {mode}")
    return {"seed": seed, "smoke": smoke, "versions": versions}


def show_flags(flagged: pd.DataFrame, *, what: str = "") -> None:
    """Display a table of :func:`sparsity_lab.flags.table`, or one line saying none fired.

    Returns nothing, so a call that ends a cell shows its table once.  ``what`` names the
    runs ("on the dense baselines", "right after pruning"), as the table's caption or in
    the all-clear line.
    """
    from IPython.display import Markdown, display  # only a notebook displays

    if not len(flagged):
        display(Markdown(f"No sanity flag fired{' ' + what if what else ''}."))
        return
    if what:
        display(Markdown(f"Sanity flags {what}:"))
    import pandas as pd  # loaded only when a table is shown

    with pd.option_context("display.max_colwidth", None, "display.max_rows", None):
        display(flagged)


def check(
    exercise: int | str,
    answer: Any,
    expected: Any,
    *,
    hint: str,
    tolerance: float = 0.0,
    solution: bool = False,
) -> bool:
    """Tell a student whether ``answer`` to ``exercise`` is right; returns whether it is.

    ``expected`` is the right value (equal, or for numbers within ``tolerance``) or a
    function of the answer that returns True when the answer is right, for answers a
    measurement checks.  No answer yet (``None``) is said as such; a wrong one gets
    ``hint``.  A notebook's collapsed solution cells pass ``solution=True``, which raises
    when the solution does not pass its own check, so every run of the notebook (CI's
    included) checks every solution.
    """
    from IPython.display import Markdown, display  # only a notebook displays

    if answer is None:
        if solution:
            raise AssertionError(f"the solution of exercise {exercise} gives no answer")
        display(Markdown(f"**Exercise {exercise}:** no answer yet; set it and run this cell."))
        return False
    if callable(expected):
        right = bool(expected(answer))
    elif isinstance(expected, int | float) and not isinstance(expected, bool):
        # the slack keeps a decimal answer at exactly the tolerance (0.25 for 0.26 +- 0.01)
        numeric = isinstance(answer, int | float) and not isinstance(answer, bool)
        right = numeric and abs(answer - expected) <= tolerance + 1e-12
    else:
        right = answer == expected
    if solution and not right:
        raise AssertionError(f"the solution of exercise {exercise} fails its own check")
    verdict = "right." if right else f"not yet. {hint}"
    display(Markdown(f"**Exercise {exercise}:** {verdict}"))
    return right


def lowest(values: Mapping[str, float], *, within: float = 0.0) -> str:
    """The name of the lowest of ``values``, or ``"neither"`` where another lies within
    ``within`` of it: an exercise that asks which of two arms loses more has one right
    answer, also when the measurement cannot tell them apart (one test image out of 500 is
    0.002 of accuracy)."""
    if not values:
        raise ValueError("values is empty: give each arm's measurement by name")
    ranked = sorted(values.items(), key=lambda item: item[1])
    if len(ranked) > 1 and ranked[1][1] - ranked[0][1] <= within:
        return "neither"
    return ranked[0][0]


def is_static() -> bool:
    """True when no live interactive front end can run widgets.

    That is when ``SPARSITY_LAB_STATIC=1`` (set by the notebook pipeline for papermill runs,
    whose kernel is real but has nobody at the controls) or when not inside an IPython kernel
    (a script, a plain IPython terminal).
    """
    if os.environ.get(STATIC_ENV) == "1":
        return True
    try:
        from IPython import get_ipython
    except ImportError:
        return True
    shell = get_ipython()
    return shell is None or not hasattr(shell, "kernel")


# ---------------------------------------------------------------------------------- controls
# A control is either a list of values (a dropdown, or a selection slider when all are
# numbers) or a tuple (min, max, step) (an int slider when all three are ints, else a float
# slider).


def _check_control(name: str, spec: Any) -> None:
    if isinstance(spec, tuple):
        if len(spec) != 3 or not all(isinstance(v, (int, float)) for v in spec):
            raise ValueError(f"control {name!r}: a range must be (min, max, step), got {spec}")
        lo, hi, step = spec
        if not (lo < hi and step > 0):
            raise ValueError(f"control {name!r}: need min < max and step > 0, got {spec}")
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        if len(spec) == 0:
            raise ValueError(f"control {name!r}: the list of values is empty")
    else:
        raise TypeError(
            f"control {name!r}: pass a list of values or a tuple (min, max, step), got {spec!r}"
        )


def _is_int_range(spec: tuple) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in spec)


def _snap(spec: tuple, value: float) -> float | int:
    """Round ``value`` to the slider's grid min + k * step."""
    lo, hi, step = spec
    snapped = min(lo + round((value - lo) / step) * step, hi)
    return int(snapped) if _is_int_range(spec) else round(float(snapped), 10)


def _default(spec: Any) -> Any:
    """Start value of a control: the first list entry, or the middle of a range."""
    if isinstance(spec, tuple):
        return _snap(spec, (spec[0] + spec[1]) / 2)
    return spec[0]


def _panel_values(spec: Any, most: int = _MAX_STATIC) -> list[Any]:
    """The values a static figure draws: every listed value (evenly spaced picks past
    ``most``), or four picks over a range (a linspace snapped to the slider's grid)."""
    if isinstance(spec, tuple):
        picks = [_snap(spec, v) for v in np.linspace(spec[0], spec[1], _MAX_PANELS)]
        return list(dict.fromkeys(picks))  # snapping can merge neighbours; keep the order
    spec = list(spec)
    if len(spec) <= most:
        return spec
    return [spec[int(i)] for i in np.linspace(0, len(spec) - 1, most).round()]


def _static_panels(controls: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every panel of a static explorer, as the values of each control, and the controls
    held at their start value.

    The first control's values run along a row; each combination of the other *listed*
    controls' values gets its own row, as long as everything fits in :data:`_MAX_STATIC`
    panels.  Range controls, and listed ones when the grid would be too large, stay at
    their start value (a live kernel moves them).
    """
    first, *others = controls
    row = _panel_values(controls[first])
    combos: list[dict[str, Any]] = [{}]
    held = []
    for name in others:
        spec = controls[name]
        grown = [{**c, name: v} for c in combos for v in spec] if isinstance(spec, list) else []
        if grown and len(grown) * len(row) <= _MAX_STATIC:
            combos = grown
        else:
            held.append(name)
            combos = [{**c, name: _default(spec)} for c in combos]
    return [{**combo, first: value} for combo in combos for value in row], held


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _widget(name: str, spec: Any) -> Any:
    import ipywidgets as widgets  # only a live kernel needs widgets

    # continuous_update=False: redraw when the slider is released, not at every pixel
    if isinstance(spec, tuple):
        slider = widgets.IntSlider if _is_int_range(spec) else widgets.FloatSlider
        lo, hi, step = spec
        return slider(
            min=lo,
            max=hi,
            step=step,
            value=_default(spec),
            description=name,
            continuous_update=False,
        )
    values = list(spec)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        return widgets.SelectionSlider(
            options=values, value=values[0], description=name, continuous_update=False
        )
    return widgets.Dropdown(options=values, value=values[0], description=name)


def explore(draw: Callable[..., None], **controls: Any) -> Any:
    """Explore ``draw(ax, **values)`` over a few controls, live or as a static figure.

    Each control maps a keyword of ``draw`` to a list of values (dropdown, or selection
    slider for numbers) or to a tuple ``(min, max, step)`` (float slider; int slider when all
    three are ints).  A control starts at its first list value or the middle of its range.

    Live kernel: returns an ``ipywidgets.interactive`` widget that calls ``draw`` on a fresh
    figure at each change; end the cell with it so that it is displayed.

    Static (:func:`is_static`): draws a panel for every listed value of the FIRST control
    (four picks over a range) and, in rows, for every combination of the other listed
    controls' values, up to 24 panels; controls that do not fit, and ranges, stay at their
    start values and are named in the figure's title.  Each panel is titled ``"name =
    value"`` (and the row's other values); returns None.  The figure stays open, so the
    inline backend shows it once at the end of the cell; returning it as well would show it
    twice.  In a plain script call ``plt.show()`` afterwards.

    Example::

        def draw(ax, sparsity, pattern):
            ax.imshow(make_mask(sparsity, pattern))

        explore(draw, sparsity=(0.0, 0.95, 0.05), pattern=["unstructured", "2:4"])
    """
    if not controls:
        raise ValueError("explore needs at least one control, e.g. explore(draw, k=[1, 2, 3])")
    for name, spec in controls.items():
        _check_control(name, spec)

    if not is_static():
        import ipywidgets as widgets

        def redraw(**values: Any) -> None:
            _, ax = plt.subplots()
            draw(ax, **values)

        ws = {name: _widget(name, spec) for name, spec in controls.items()}
        return widgets.interactive(redraw, **ws)

    first = next(iter(controls))
    panels, held = _static_panels(dict(controls))
    varied = [n for n in controls if n != first and n not in held]
    columns = min(len(panels), len(_panel_values(controls[first])), _MAX_COLUMNS)
    rows = -(-len(panels) // columns)
    width, height = mpl.rcParams["figure.figsize"]
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(min(width * 0.6 * columns, 2 * width), height * (0.8 * rows if rows > 1 else 1)),
        squeeze=False,
        layout="constrained",
    )
    for ax, values in zip(axes.flat, panels, strict=False):
        draw(ax, **values)
        drawn = ax.get_title()
        # one line per control: side by side, panels are too narrow for them on one line
        label = "\n".join(f"{n} = {_label(values[n])}" for n in [first, *varied])
        ax.set_title(f"{label}\n{drawn}" if drawn else label, fontsize="small")
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    if held:
        fixed = ", ".join(f"{n} = {_label(_default(controls[n]))}" for n in held)
        fig.suptitle(f"{fixed} (change it in a live kernel)", fontsize="medium")
    return None


# ------------------------------------------------------------------------------- displays
def md(text: str) -> None:
    """Display ``text`` as Markdown: a computed sentence of a notebook (built with
    :mod:`sparsity_lab.words`), in one call.

    Returns nothing, so a call that ends a cell shows its text once.
    """
    from IPython.display import Markdown, display  # only a notebook displays

    display(Markdown(text))


def show_dense(runs: pd.DataFrame, data_name: str, *, what: str = "") -> None:
    """Display the dense baselines: each model's test accuracy over its seeds (mean and
    interval, :func:`~sparsity_lab.stats.summarize`) beside the accuracy its recipe on
    ``data_name`` (``"mnist"``) documents (``expected``), then their sanity flags
    (:func:`show_flags`; ``what`` names the runs).

    ``runs`` has a row per (model, seed) with ``model_name``, ``test_accuracy`` and
    ``flags``.  A pruned result means little without the dense one it started from, so every
    chapter shows this first.  Returns nothing, so a call that ends a cell shows it once.
    """
    from IPython.display import display  # only a notebook displays

    from . import flags, recipes, stats

    table = stats.summarize(runs, "model_name", "test_accuracy")
    table["expected"] = [
        recipes.recipe_for(m, data_name).expected_test_accuracy for m in table.model_name
    ]
    display(table.round(4))
    show_flags(flags.table(runs, "model_name"), what=what)

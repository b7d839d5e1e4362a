import matplotlib

matplotlib.use("Agg")

import platform
import random
import subprocess
import sys

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from sparsity_lab import flags as sl_flags
from sparsity_lab import nb


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def rc():
    """Undo setup()'s rcParams changes after the test."""
    with matplotlib.rc_context():
        yield


class Recorder:
    """A draw function that remembers its calls and marks its axes."""

    def __init__(self):
        self.calls = []

    def __call__(self, ax, **values):
        self.calls.append((ax, values))
        ax.plot([0, 1], [0, 1])


# ------------------------------------------------------------------------------ setup
def _draws():
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_setup_makes_draws_reproducible(rc, capsys):
    nb.setup(seed=7)
    first = _draws()
    nb.setup(seed=7)
    assert _draws() == first
    nb.setup(seed=8)
    assert _draws() != first


def test_setup_prints_one_versions_line_and_returns_them(rc, capsys):
    info = nb.setup(seed=3, smoke=True)
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    for name in ("python", "torch", "sparsity_lab", "numpy"):
        assert f"{name} {info['versions'][name]}" in out
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["numpy"] == np.__version__
    assert info["seed"] == 3 and info["smoke"] is True
    assert "smoke" in out
    nb.setup(seed=3, smoke=False)
    assert "full" in capsys.readouterr().out


def test_setup_sets_figure_defaults_but_not_the_backend(rc, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("setup must not change the matplotlib backend")

    monkeypatch.setattr(matplotlib, "use", refuse)
    monkeypatch.setattr(plt, "switch_backend", refuse)
    nb.setup()
    assert matplotlib.rcParams["figure.dpi"] == 100
    assert tuple(matplotlib.rcParams["figure.figsize"]) == (6.0, 3.5)


def test_setup_threads(rc, capsys):
    before = torch.get_num_threads()
    try:
        nb.setup(threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        nb.setup(threads=0)


# ------------------------------------------------------------------------------ is_static
def test_is_static_env_var_forces_static(monkeypatch):
    monkeypatch.setenv(nb.STATIC_ENV, "1")
    assert nb.is_static()


def test_is_static_outside_a_kernel(monkeypatch):
    monkeypatch.delenv(nb.STATIC_ENV, raising=False)
    # pytest runs outside IPython: no live front end
    assert nb.is_static()


def test_is_static_false_in_a_kernel(monkeypatch):
    import IPython

    class FakeKernelShell:
        kernel = object()

    class FakeTerminalShell:
        pass

    monkeypatch.delenv(nb.STATIC_ENV, raising=False)
    monkeypatch.setattr(IPython, "get_ipython", lambda: FakeKernelShell())
    assert not nb.is_static()
    monkeypatch.setattr(IPython, "get_ipython", lambda: FakeTerminalShell())
    assert nb.is_static()
    # the env var wins even inside a kernel (papermill runs a real kernel)
    monkeypatch.setattr(IPython, "get_ipython", lambda: FakeKernelShell())
    monkeypatch.setenv(nb.STATIC_ENV, "1")
    assert nb.is_static()


# ------------------------------------------------------------------------------ explore
@pytest.fixture
def static(monkeypatch):
    monkeypatch.setenv(nb.STATIC_ENV, "1")
    # any attempt to import ipywidgets now raises ImportError
    monkeypatch.setitem(sys.modules, "ipywidgets", None)


def test_static_explore_draws_every_listed_value_in_rows_of_the_other_lists(static):
    draw = Recorder()
    result = nb.explore(draw, k=[1, 2, 3, 4, 5, 6, 7], pattern=["a", "b"], s=(0.0, 1.0, 0.1))
    assert result is None  # the inline backend shows the open figure once
    assert len(plt.get_fignums()) == 1
    fig = plt.gcf()
    # every k for every pattern (14 panels); the range s stays at its start, the middle
    assert [values for _, values in draw.calls] == [
        {"pattern": p, "s": 0.5, "k": k} for p in "ab" for k in range(1, 8)
    ]
    drawn = [ax for ax in fig.axes if ax.axison]
    assert [ax for ax, _ in draw.calls] == drawn and len(drawn) == 14
    assert drawn[0].get_title() == "k = 1\npattern = a"
    assert drawn[-1].get_title() == "k = 7\npattern = b"
    assert fig._suptitle.get_text() == "s = 0.5 (change it in a live kernel)"


def test_static_explore_holds_a_list_that_would_make_too_many_panels(static):
    draw = Recorder()
    nb.explore(draw, k=list(range(10)), m=list(range(3)))  # 30 panels > 24
    assert [values for _, values in draw.calls] == [{"m": 0, "k": k} for k in range(10)]
    assert plt.gcf()._suptitle.get_text() == "m = 0 (change it in a live kernel)"
    draw = Recorder()
    nb.explore(draw, k=list(range(40)))  # past 24 values, evenly spaced picks
    picked = [values["k"] for _, values in draw.calls]
    assert len(picked) == 24 and picked[0] == 0 and picked[-1] == 39


def test_static_explore_short_list_uses_every_value(static):
    draw = Recorder()
    nb.explore(draw, pattern=["2:4", "block"])
    assert [values for _, values in draw.calls] == [{"pattern": "2:4"}, {"pattern": "block"}]
    assert len(plt.gcf().axes) == 2


def test_static_explore_range_uses_linspace(static):
    draw = Recorder()
    nb.explore(draw, sparsity=(0.0, 0.9, 0.3), n=(2, 10, 2))
    got = [values["sparsity"] for _, values in draw.calls]
    np.testing.assert_allclose(got, np.linspace(0.0, 0.9, 4))
    # an int range stays int; its start is the middle of (2, 10)
    assert all(values["n"] == 6 and isinstance(values["n"], int) for _, values in draw.calls)
    assert plt.gcf().axes[1].get_title() == "sparsity = 0.3"


def test_static_explore_keeps_the_title_drawn(static):
    def draw(ax, k):
        ax.set_title(f"{k * k} weights")

    nb.explore(draw, k=[2, 3])
    assert [ax.get_title() for ax in plt.gcf().axes] == ["k = 2\n4 weights", "k = 3\n9 weights"]


def test_explore_rejects_bad_controls(static):
    with pytest.raises(ValueError, match="at least one control"):
        nb.explore(Recorder())
    with pytest.raises(ValueError, match="min < max"):
        nb.explore(Recorder(), s=(1.0, 0.0, 0.1))
    with pytest.raises(ValueError, match="empty"):
        nb.explore(Recorder(), k=[])
    with pytest.raises(TypeError, match="list of values"):
        nb.explore(Recorder(), k=3)
    assert not plt.get_fignums()


def test_live_explore_returns_an_interactive_widget(monkeypatch):
    import ipywidgets

    monkeypatch.setattr(nb, "is_static", lambda: False)
    draw = Recorder()
    widget = nb.explore(draw, k=[1, 2, 3], pattern=["a", "b"], s=(0.0, 1.0, 0.25))
    assert isinstance(widget, ipywidgets.interactive)
    controls = {w.description: w for w in widget.kwargs_widgets}
    assert isinstance(controls["k"], ipywidgets.SelectionSlider)
    assert isinstance(controls["pattern"], ipywidgets.Dropdown)
    assert isinstance(controls["s"], ipywidgets.FloatSlider)
    # the widget draws once with the start values ...
    assert [values for _, values in draw.calls] == [{"k": 1, "pattern": "a", "s": 0.5}]
    # ... again, on a fresh figure, when a control changes ...
    controls["k"].value = 3
    assert draw.calls[-1][1] == {"k": 3, "pattern": "a", "s": 0.5}
    assert draw.calls[-1][0] is not draw.calls[0][0]
    # ... and when its function is called directly
    widget.f(k=2, pattern="b", s=1.0)
    assert draw.calls[-1][1] == {"k": 2, "pattern": "b", "s": 1.0}
    assert len(draw.calls) == 3


def test_show_flags_displays_the_table_or_an_all_clear_line(monkeypatch):
    import IPython.display
    import pandas as pd

    shown_objects = []
    monkeypatch.setattr(IPython.display, "display", shown_objects.append)
    clean = pd.DataFrame({"m": ["a", "b"], "flags": ["", ""]})
    assert nb.show_flags(sl_flags.table(clean, "m"), what="on the toy runs") is None
    assert shown_objects[-1].data == "No sanity flag fired on the toy runs."
    dirty = pd.DataFrame({"m": ["a", "b"], "flags": ["at chance level (0.1, chance 0.1)", ""]})
    nb.show_flags(sl_flags.table(dirty, "m"))
    assert shown_objects[-1].to_dict("records") == [
        {"m": "a", "flagged_runs": "1 of 1", "flags": "at chance level"}
    ]
    nb.show_flags(sl_flags.table(dirty, "m"), what="right after pruning")
    assert shown_objects[-2].data == "Sanity flags right after pruning:"
    assert shown_objects[-1].to_dict("records")[0]["m"] == "a"


def test_setup_lets_tables_show_whole_cells(rc, capsys):
    import pandas as pd

    with pd.option_context("display.max_colwidth", 50, "display.max_rows", 60):
        nb.setup(seed=0)
        assert pd.get_option("display.max_colwidth") is None
        assert pd.get_option("display.max_rows") == 200


def test_check_says_right_wrong_or_unanswered_and_holds_solutions_to_their_check(capsys):
    from IPython.display import Markdown

    shown = []
    import IPython.display

    real = IPython.display.display
    IPython.display.display = lambda obj: shown.append(
        obj.data if isinstance(obj, Markdown) else obj
    )
    try:
        assert nb.check(1, 0.25, 0.26, hint="Count again.", tolerance=0.01) is True
        assert nb.check(1, 0.3, 0.26, hint="Count again.", tolerance=0.01) is False
        assert nb.check(2, None, "coupled", hint="h") is False
        assert nb.check(3, 0.05, lambda a: a in (0.05, 0.1), hint="h") is True
        assert nb.check(4, True, 1, hint="h") is False  # a bool is not a number here
        assert nb.check(5, "coupled", "coupled", hint="h", solution=True) is True
        with pytest.raises(AssertionError, match="solution of exercise 6 fails"):
            nb.check(6, "per layer", "coupled", hint="h", solution=True)
        with pytest.raises(AssertionError, match="solution of exercise 7 gives no answer"):
            nb.check(7, None, "coupled", hint="h", solution=True)
    finally:
        IPython.display.display = real
    assert shown[0] == "**Exercise 1:** right."
    assert shown[1] == "**Exercise 1:** not yet. Count again."
    assert "no answer yet" in shown[2]


# ------------------------------------------------------------------------------- displays
# (the sentences they show are built and tested in sparsity_lab.words and tests/test_words.py)
def test_md_displays_the_text_as_markdown_and_returns_nothing(monkeypatch):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    assert nb.md("**x** is 1.") is None
    assert isinstance(shown[0], IPython.display.Markdown)
    assert shown[0].data == "**x** is 1."


def test_show_dense_table_with_expected_accuracy_then_flags(monkeypatch):
    import IPython.display
    import pandas as pd

    from sparsity_lab import recipes

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    runs = pd.DataFrame(
        {
            "model_name": ["lenet300", "lenet300", "lenet5", "lenet5"],
            "seed": [0, 1, 0, 1],
            "test_accuracy": [0.9, 0.92, 0.95, 0.97],
            "flags": ["", "", "dense baseline below its recipe (0.95)", ""],
        }
    )
    nb.show_dense(runs, "mnist", what="on the dense baselines")
    table = shown[0]
    assert table["model_name"].tolist() == ["lenet300", "lenet5"]
    assert table["mean"].tolist() == [0.91, 0.96]
    assert table["expected"].tolist() == [
        recipes.recipe_for(m, "mnist").expected_test_accuracy for m in ("lenet300", "lenet5")
    ]
    assert shown[1].data == "Sanity flags on the dense baselines:"
    assert shown[2]["flagged_runs"].tolist() == ["1 of 2"]


def test_show_dense_takes_the_data_set_of_the_recipes():
    import pandas as pd

    with pytest.raises(TypeError, match="data_name"):  # no silent "mnist"
        nb.show_dense(pd.DataFrame({"model_name": [], "test_accuracy": [], "flags": []}))


# malloc and free themselves: a torch tensor's own small allocations can split a freed
# block before the next request (see keep_freed_memory), which would make this test a draw
_REFAULTS = """
import ctypes, resource, sys
from sparsity_lab import nb
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "keep":
    assert nb.keep_freed_memory()
size = 256 << 20
def written():
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)  # every page
    return block
for _ in range(2):  # allocated, written, freed (twice: malloc's bins settle)
    libc.free(written())
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
again = written()
pages = size // resource.getpagesize()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / pages)
"""


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)
def test_keep_freed_memory_reuses_a_large_block_instead_of_faulting_its_pages_again():
    def refaulted(mode):  # the share of the block's pages faulted in again, in a fresh process
        run = subprocess.run([sys.executable, "-c", _REFAULTS, mode], capture_output=True)
        assert run.returncode == 0, run.stderr.decode()
        return float(run.stdout)

    assert refaulted("default") > 0.5  # glibc unmapped the block and mapped fresh pages
    assert refaulted("keep") < 0.1


def test_lowest_names_the_lower_arm_or_neither_when_they_are_within_the_noise():
    assert nb.lowest({"weights": 0.944, "inputs": 0.914}) == "inputs"
    assert nb.lowest({"weights": 0.944, "inputs": 0.944}) == "neither"  # a tie
    # 51.2% against 50.6%: three test images of 500, within one point
    assert nb.lowest({"steps=1": 0.512, "update=False": 0.506}, within=0.01) == "neither"
    assert nb.lowest({"steps=1": 0.512, "update=False": 0.506}) == "update=False"
    assert nb.lowest({"a": 0.3, "b": 0.1, "c": 0.5}, within=0.1) == "b"
    with pytest.raises(ValueError, match="empty"):
        nb.lowest({})

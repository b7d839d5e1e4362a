"""Tests of the notebook pipeline: cache key, cached execution, parameters, failures, checks."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import pytest

from sparsity_lab import pipeline

REPO = Path(__file__).resolve().parents[1]

GOOD = """# %% [markdown]
# # A stand-in

# %% tags=["parameters"]
SMOKE = False
SEED = 0

# %%
print(f"SMOKE={SMOKE}")

# %% [markdown]
# ## Summary
#
# Nothing.

# %% [markdown]
# ## Exercises
#
# ### Exercise 1
# **1.** How many?


# %% tags=["hide-input"] jupyter={"source_hidden": true}
def check_1(answer, solution=False):
    assert not solution or answer == 2


# %%
answer_1 = None
check_1(answer_1)

# %% tags=["hide-input"] jupyter={"source_hidden": true}
# Solution 1.
solution_1 = 1 + 1
check_1(solution_1, solution=True)
"""


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text)
    return path


def outputs_text(path: Path) -> str:
    notebook = json.loads(path.read_text())
    return "".join(
        "".join(output.get("text", ""))
        for cell in notebook["cells"]
        for output in cell.get("outputs", [])
    )


@pytest.fixture
def fixed_library(monkeypatch):
    """Pin the library and environment digests, so that edits elsewhere cannot perturb a test."""
    monkeypatch.setattr(pipeline, "library_digest", lambda: "library")
    monkeypatch.setattr(pipeline, "environment_digest", lambda: "environment")


# --------------------------------------------------------------------------------------------
# Cache key


def test_cache_key_changes_with_source_mode_and_library_only(tmp_path):
    library = tmp_path / "lib"
    write(library, "a.py", "x = 1\n")
    write(library / "sub", "b.py", "y = 2\n")
    before = pipeline.library_digest(library)
    key = pipeline.cache_key(b"print(1)", smoke=True, library=before, environment="e")

    # Same inputs, same key; files that are not library sources do not count.
    write(library, "notes.txt", "not code")
    write(library / "__pycache__", "a.cpython-311.py", "stale")
    assert pipeline.library_digest(library) == before
    assert pipeline.cache_key(b"print(1)", smoke=True, library=before, environment="e") == key

    # The notebook source, the mode, the environment and any library file each change it.
    assert pipeline.cache_key(b"print(2)", smoke=True, library=before, environment="e") != key
    assert pipeline.cache_key(b"print(1)", smoke=False, library=before, environment="e") != key
    assert pipeline.cache_key(b"print(1)", smoke=True, library=before, environment="f") != key
    write(library / "sub", "b.py", "y = 3\n")
    after = pipeline.library_digest(library)
    assert after != before
    assert pipeline.cache_key(b"print(1)", smoke=True, library=after, environment="e") != key


def test_cache_key_ignores_the_text_cells_only():
    key = functools.partial(pipeline.cache_key, smoke=True, library="l", environment="e")
    base = key(GOOD.encode())
    reworded = GOOD.replace("# Nothing.", "# Something else.").replace("## Summary", "## Sum")
    new_text_cell = GOOD.replace("# %%\nprint", "# %% [markdown]\n# More words.\n\n# %%\nprint")
    assert key(reworded.encode()) == base
    assert key(new_text_cell.encode()) == base
    assert key(GOOD.replace("print(f", "print(  f").encode()) != base  # code
    assert key(GOOD.replace('tags=["hide-input"]', "").encode()) != base  # a code cell's tags
    assert key(GOOD.replace("# %% [markdown]\n# # A", "# %%\n# # A").encode()) != base  # type


def test_library_digest_sees_a_new_module(tmp_path):
    library = tmp_path / "lib"
    write(library, "a.py", "x = 1\n")
    before = pipeline.library_digest(library)
    write(library, "b.py", "")
    assert pipeline.library_digest(library) != before


# --------------------------------------------------------------------------------------------
# Finding notebooks


def test_find_notebooks_takes_numbered_scripts_in_order(tmp_path):
    for name in ["01_b.py", "00_a.py", "02a_c.py", "helper.py", "0_x.py", "00_a.ipynb"]:
        write(tmp_path, name, "")
    assert [p.name for p in pipeline.find_notebooks(tmp_path)] == ["00_a.py", "01_b.py", "02a_c.py"]
    assert [p.name for p in pipeline.find_notebooks(tmp_path, ["01_b.py"])] == ["01_b.py"]
    with pytest.raises(ValueError, match="no notebook named 09_z.*available: 00_a, 01_b, 02a_c"):
        pipeline.find_notebooks(tmp_path, ["09_z"])


# --------------------------------------------------------------------------------------------
# Execution (each execution starts a kernel: a couple of seconds)


def test_execute_injects_smoke_and_reexecutes_only_changed_notebooks(tmp_path, fixed_library):
    notebooks, out, cache = tmp_path / "notebooks", tmp_path / "out", tmp_path / "cache"
    write(notebooks, "00_first.py", GOOD)
    write(notebooks, "01_second.py", GOOD.replace("SEED = 0", "SEED = 1"))

    log: list[str] = []
    first = pipeline.execute(notebooks, out, cache, smoke=True, log=log.append)
    assert [(r.name, r.status) for r in first] == [
        ("00_first", "executed"),
        ("01_second", "executed"),
    ]
    # The source says SMOKE = False; the executed copy ran with the injected SMOKE = True.
    assert "SMOKE=True" in outputs_text(out / "00_first.ipynb")
    # papermill's injected cell is kept (nbval re-runs it) but the book removes it
    cells = json.loads((out / "00_first.ipynb").read_text())["cells"]
    injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "remove-cell" in injected[0]["metadata"]["tags"]
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings["smoke"]) == {"00_first", "01_second"}
    assert all(seconds > 0 for seconds in timings["smoke"].values())

    second = pipeline.execute(notebooks, out, cache, smoke=True, log=log.append)
    assert [r.status for r in second] == ["cached", "cached"]
    assert log[-2:] == ["00_first: cached (smoke)", "01_second: cached (smoke)"]

    write(notebooks, "01_second.py", GOOD.replace('print(f"SMOKE={SMOKE}")', 'print("changed")'))
    third = pipeline.execute(notebooks, out, cache, smoke=True, log=log.append)
    assert [r.status for r in third] == ["cached", "executed"]
    assert "changed" in outputs_text(out / "01_second.ipynb")
    # The superseded cache entry of 01_second is pruned; one entry per notebook and mode.
    assert len(list(cache.glob("01_second-smoke-*.ipynb"))) == 1
    assert len(list(cache.glob("*.ipynb"))) == 2


def test_a_text_edit_is_merged_into_the_cached_run_without_executing(tmp_path, fixed_library):
    notebooks, out, cache = tmp_path / "notebooks", tmp_path / "out", tmp_path / "cache"
    source = write(notebooks, "00_first.py", GOOD)
    first = pipeline.execute(notebooks, out, cache, smoke=True, log=lambda _: None)
    assert [r.status for r in first] == ["executed"]
    before = json.loads((out / "00_first.ipynb").read_text())

    # reworded text and a new text cell between two code cells
    edited = GOOD.replace("# Nothing.", "# Reworded.").replace(
        "# %%\nprint", "# %% [markdown]\n# A new paragraph.\n\n# %%\nprint"
    )
    source.write_text(edited)
    second = pipeline.execute(notebooks, out, cache, smoke=True, log=lambda _: None)
    assert [r.status for r in second] == ["cached"]
    assert second[0].seconds == first[0].seconds  # the recorded time of the run it reuses
    after = json.loads((out / "00_first.ipynb").read_text())
    text = ["".join(c["source"]) for c in after["cells"] if c["cell_type"] == "markdown"]
    assert "Reworded." in "".join(text) and "Nothing." not in "".join(text)
    assert "A new paragraph." in text
    kinds = [(c["cell_type"], "".join(c["source"])[:5]) for c in after["cells"]]
    parameters = kinds.index(("code", "SMOKE"))
    # papermill's injected cell still follows the parameters cell, then the new paragraph
    assert "injected-parameters" in after["cells"][parameters + 1]["metadata"]["tags"]
    assert kinds[parameters + 2] == ("markdown", "A new")
    ran = [c for c in before["cells"] if c["cell_type"] == "code"]
    kept = [c for c in after["cells"] if c["cell_type"] == "code"]
    assert [c["outputs"] for c in kept] == [c["outputs"] for c in ran]
    assert "SMOKE=True" in outputs_text(out / "00_first.ipynb")
    import nbformat

    nbformat.validate(nbformat.reads((out / "00_first.ipynb").read_text(), as_version=4))

    # once merged, the cache entry is left as it is; a code edit executes again
    entry = next(cache.glob("00_first-smoke-*.ipynb"))
    stamp = entry.stat().st_mtime_ns
    assert [r.status for r in pipeline.execute(notebooks, out, cache, smoke=True)] == ["cached"]
    assert entry.stat().st_mtime_ns == stamp
    source.write_text(edited.replace('print(f"SMOKE={SMOKE}")', 'print("changed")'))
    third = pipeline.execute(notebooks, out, cache, smoke=True, log=lambda _: None)
    assert [r.status for r in third] == ["executed"]
    assert "changed" in outputs_text(out / "00_first.ipynb")


def test_failing_notebook_is_named_leaves_no_output_and_others_still_run(
    tmp_path, fixed_library, capsys
):
    notebooks, out, cache = tmp_path / "notebooks", tmp_path / "out", tmp_path / "cache"
    failing = GOOD.replace('print(f"SMOKE={SMOKE}")', 'raise RuntimeError("deliberate failure")')
    write(notebooks, "00_broken.py", failing)
    write(notebooks, "01_fine.py", GOOD)
    write(out, "00_broken.ipynb", "{}")  # a stale copy from an earlier, working version

    status = pipeline.main(
        ["execute", "--smoke", "--notebooks", str(notebooks), "--out", str(out)]
        + ["--cache", str(cache)]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "00_broken.py failed" in err
    assert "RuntimeError: deliberate failure" in err
    assert "1 of 2 notebook(s) failed: 00_broken" in err
    assert sorted(p.name for p in out.iterdir()) == ["01_fine.ipynb", "timings.json"]
    assert not list(cache.glob("00_broken-*"))


def test_notebooks_run_side_by_side_each_on_its_share_of_the_cores(
    tmp_path, fixed_library, monkeypatch
):
    """Two workers: results in the notebooks' order, a failure still named, each kernel
    told its thread count, and the process's own environment and working directory left
    as they were, with the relative paths `make book` passes."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.chdir(tmp_path)
    notebooks, out, cache = Path("notebooks"), Path("out"), Path("cache")
    threads = GOOD.replace(
        'print(f"SMOKE={SMOKE}")', 'import os\nprint("threads", os.environ["OMP_NUM_THREADS"])'
    )
    write(notebooks, "00_a.py", threads)
    write(notebooks, "01_b.py", GOOD.replace('print(f"SMOKE={SMOKE}")', "raise KeyError(1)"))
    write(notebooks, "02_c.py", GOOD)
    before = dict(os.environ)
    results = pipeline.execute(notebooks, out, cache, smoke=True, workers=2, log=print)
    assert [(r.name, r.status) for r in results] == [
        ("00_a", "executed"),
        ("01_b", "failed"),
        ("02_c", "executed"),
    ]
    expected = max(1, (os.cpu_count() or 1) // 2)
    assert f"threads {expected}" in outputs_text(out / "00_a.ipynb")
    assert "SMOKE=True" in outputs_text(out / "02_c.ipynb")
    assert dict(os.environ) == before
    assert Path.cwd() == tmp_path
    assert len(list(cache.glob("*.ipynb"))) == 2  # both runs that worked are cached
    with pytest.raises(ValueError, match="workers"):
        pipeline.execute(notebooks, out, cache, smoke=True, workers=0)


ALONE_HEADER = """# ---
# jupyter:
#   sparsity_lab:
#     runs_alone: true
# ---

"""


def test_a_notebook_with_processes_of_its_own_runs_alone_with_the_builds_workers(
    tmp_path, fixed_library, monkeypatch
):
    """A notebook whose header says it runs alone starts only when no other runs and ends
    before any other starts, with the thread count of a notebook side by side and the
    build's workers for its sweeps; the header's setting stays in the executed copy's
    metadata, next to the pipeline's."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    notebooks, out, cache = tmp_path / "notebooks", tmp_path / "out", tmp_path / "cache"
    log = tmp_path / "intervals.txt"
    timed = GOOD.replace(
        'print(f"SMOKE={SMOKE}")',
        "import os, time\n"
        "start = time.time()\n"
        "time.sleep(1.0)\n"
        f"with open({str(log)!r}, 'a') as f:\n"
        "    f.write(f\"{NAME} {start} {time.time()} {os.environ['OMP_NUM_THREADS']} \"\n"
        "            f\"{os.environ['SPARSITY_LAB_WORKERS']}\\n\")",
    )
    for name in ["00_a", "01_b", "02_c"]:
        text = timed.replace("SEED = 0", f"SEED = 0\nNAME = {name!r}")
        write(notebooks, f"{name}.py", (ALONE_HEADER if name == "01_b" else "") + text)
    # in the kernel, a sweep of a function defined in the notebook forks its runs
    forks = (
        "# %%\nfrom sparsity_lab import experiments\n\n\ndef pid_of(x, seed):\n"
        "    return {'pid': os.getpid()}\n\n\n"
        "pids = set(experiments.sweep(pid_of, {'x': [1, 2, 3]}, seeds=[0, 1])['pid'])\n"
        "print('forked', os.getpid() not in pids)\n\n# %% [markdown]\n# ## Summary"
    )
    alone_source = notebooks / "01_b.py"
    alone_source.write_text(
        alone_source.read_text().replace("# %% [markdown]\n# ## Summary", forks)
    )
    assert [pipeline.runs_alone(p) for p in sorted(notebooks.glob("*.py"))] == [False, True, False]

    results = pipeline.execute(notebooks, out, cache, smoke=True, workers=2, log=print)
    assert [r.status for r in results] == ["executed"] * 3
    rows = [line.split() for line in log.read_text().splitlines()]
    spans = {name: (float(start), float(end)) for name, start, end, *_ in rows}
    alone = spans.pop("01_b")
    assert all(end <= alone[0] or start >= alone[1] for start, end in spans.values())
    a, c = spans.values()
    assert a[0] < c[1] and c[0] < a[1]  # the other two did run side by side
    assert {threads for *_, threads, _ in rows} == {str(max(1, (os.cpu_count() or 1) // 2))}
    # its sweeps may fork a process per worker of the build; side by side, one
    assert {name: processes for name, *_, processes in rows} == {"00_a": "1", "01_b": "2",
                                                                 "02_c": "1"}  # fmt: skip
    assert "forked True" in outputs_text(out / "01_b.ipynb")
    metadata = json.loads((out / "01_b.ipynb").read_text())["metadata"]["sparsity_lab"]
    assert metadata["runs_alone"] is True and metadata["mode"] == "smoke"


def test_side_by_side_runs_start_with_the_longest_and_the_never_timed(tmp_path):
    sources = [tmp_path / f"{name}.py" for name in ["00_a", "01_b", "02_c", "03_d", "04_e"]]
    timings = write(tmp_path, "timings.json", json.dumps({"full": {"00_a": 5, "01_b": 300,
                                                                  "03_d": 40.5},
                                                         "smoke": {"04_e": 9}}))  # fmt: skip
    recorded = pipeline.recorded_seconds(timings, "full")
    assert recorded == {"00_a": 5.0, "01_b": 300.0, "03_d": 40.5}
    order = [p.stem for p in pipeline.longest_first(sources, recorded)]
    assert order == ["02_c", "04_e", "01_b", "03_d", "00_a"]
    # no timings yet, or an unreadable file: name order
    assert pipeline.recorded_seconds(tmp_path / "missing.json", "full") == {}
    assert pipeline.recorded_seconds(write(tmp_path, "bad.json", "{"), "full") == {}
    assert pipeline.longest_first(sources, {}) == sources


def test_the_time_report_sums_recorded_times_and_judges_both_budgets():
    results = [
        pipeline.Result("00_a", "cached", 100.0),
        pipeline.Result("01_b", "executed", 300.0),
        pipeline.Result("02_c", "failed"),
    ]
    assert pipeline.time_report(results, 360, 240) == [
        "notebook time: 6.7 min summed over 2 notebook(s), each as recorded when it ran "
        "(cached ones included)",
        "  budget for all: 6 min -> MISSED",
        "  budget per notebook: 4 min -> MISSED; over: 01_b 5.0 min",
    ]
    assert pipeline.time_report(results[:1], 1200, 240)[1:] == [
        "  budget for all: 20 min -> met",
        "  budget per notebook: 4 min -> met; over: none",
    ]


def test_budget_warns_about_the_recorded_time_of_a_cached_copy(tmp_path, fixed_library):
    notebooks, out, cache = tmp_path / "notebooks", tmp_path / "out", tmp_path / "cache"
    source = write(notebooks, "00_slow.py", GOOD)
    key = pipeline.cache_key(
        source.read_bytes(), smoke=True, library="library", environment="environment"
    )
    import jupytext

    # a cached run of this source (outputs do not matter here) that took 75 s
    recorded = json.loads(jupytext.writes(jupytext.read(source), fmt="ipynb"))
    recorded["metadata"]["sparsity_lab"] = {"wall_s": 75.0}
    write(cache, f"00_slow-smoke-{key}.ipynb", json.dumps(recorded))

    [result] = pipeline.execute(notebooks, out, cache, smoke=True, budget_s=60, log=print)
    assert result.status == "cached"  # too slow is reported, not failed: timings are noisy
    assert "75.0 s" in result.warning and "60 s" in result.warning
    # The copy is still written (the outputs are valid, only too slow to make).
    assert json.loads((out / "00_slow.ipynb").read_text()) == recorded
    [within] = pipeline.execute(notebooks, out, cache, smoke=True, budget_s=80, log=print)
    assert within.status == "cached" and within.warning == ""


# --------------------------------------------------------------------------------------------
# Static checks


def test_check_accepts_a_notebook_that_follows_the_rules(tmp_path):
    assert pipeline.check_notebook(write(tmp_path, "00_good.py", GOOD)) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('# %% tags=["parameters"]', "# %%"), "cells tagged parameters"),
        (('print(f"SMOKE={SMOKE}")', "!pip install foo"), "installs packages"),
        (('print(f"SMOKE={SMOKE}")', "# %pip install foo"), "installs packages"),
        (("SMOKE = False", "SMOKE = True"), "default must be False"),
        (("SMOKE = False\n", ""), "does not define SMOKE"),
        (("SEED = 0", "SEED = 2 * 3"), "computed value"),
        (('print(f"SMOKE={SMOKE}")', "x = mnist1d.get_dataset(args)"), "get_dataset"),
        (("## Exercises", "## Practice"), '"Summary" and an "Exercises"'),
        (("# ### Exercise 1", "# ## Appendix"), "last two sections"),
        (("# **1.** How many?", "# How many?"), "no exercise **1.**"),
        (("# **1.** How many?", "# **1.** How many?\n# **3.** And?"), "numbered [1, 3]"),
        (
            ('# %% tags=["hide-input"] jupyter={"source_hidden": true}\ndef', "# %%\ndef"),
            "lacks a collapsed cell defining check_1",
        ),
        (("check_1(answer_1)", "print(answer_1)"), "lacks a cell checking the answer"),
        (
            ("check_1(solution_1, solution=True)", "check_1(solution_1)"),
            "lacks a collapsed solution",
        ),
        (
            (
                '# %% tags=["hide-input"] jupyter={"source_hidden": true}\n# Solution',
                '# %% tags=["hide-input"]\n# Solution',
            ),
            "lacks a collapsed solution",
        ),
    ],
)
def test_check_flags_each_broken_rule(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    problems = pipeline.check_notebook(write(tmp_path, "00_bad.py", GOOD.replace(old, new)))
    assert len(problems) == 1
    assert message in problems[0]


def test_check_command_reports_problems_and_exit_status(tmp_path, capsys):
    write(tmp_path, "00_good.py", GOOD)
    assert pipeline.main(["check", "--notebooks", str(tmp_path)]) == 0
    write(tmp_path, "01_bad.py", GOOD.replace('tags=["parameters"]', ""))
    assert pipeline.main(["check", "--notebooks", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "01_bad.py: has 0 cells tagged parameters" in out
    assert "00_good.py:" not in out


def test_repository_notebooks_pass_the_checks():
    notebooks = REPO / "notebooks"
    if not notebooks.is_dir() or not pipeline.find_notebooks(notebooks):
        pytest.skip("no notebooks/NN_topic.py yet")
    assert pipeline.check(notebooks) == {p.name: [] for p in pipeline.find_notebooks(notebooks)}


def test_environment_digest_follows_only_what_the_notebooks_run_on(monkeypatch):
    """Installing JupyterLab beside the project must not invalidate the notebook cache, but
    a new version of anything the library or the kernel needs must."""
    import importlib.metadata as md

    class Dist:
        def __init__(self, version, requires=()):
            self.version, self.requires = version, list(requires)

    installed = {
        "sparsity-lab": Dist("0.1", ["numpy==2.0", 'ruff==1; extra == "dev"']),
        "numpy": Dist("2.0"),
        "ipykernel": Dist("7.0", ["traitlets>=5", "appnope; platform_system == 'Darwin'"]),
        "traitlets": Dist("5.1"),
        "papermill": Dist("2.7"),
        "jupytext": Dist("1.19"),
        "ruff": Dist("1"),
    }

    def distribution(name):
        if name not in installed:
            raise md.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(md, "distribution", distribution)
    closure = pipeline._dependency_closure(["sparsity-lab", *pipeline.EXECUTION_TOOLS])
    assert set(closure) == {"sparsity-lab", "numpy", "ipykernel", "traitlets", "papermill",
                            "jupytext"}  # fmt: skip
    before = pipeline.environment_digest()
    installed["jupyterlab"] = Dist("4.6", ["traitlets>=5"])
    installed["ruff"] = Dist("2")  # a dev extra, not a notebook's dependency
    assert pipeline.environment_digest() == before
    installed["traitlets"] = Dist("5.2")  # the kernel's dependency changed
    assert pipeline.environment_digest() != before


def test_figures_get_alt_text_from_their_section_and_their_titles():
    nbformat = pytest.importorskip("nbformat")
    image = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})
    plot = nbformat.v4.new_code_cell(
        'ax.set_title(f"accuracy at {s:.0%}")\nax.set_xlabel("sparsity")\nax.set_title("again")'
    )
    plot.outputs = [image]
    bare = nbformat.v4.new_code_cell("plt.plot(x)")
    bare.outputs = [image]
    text_only = nbformat.v4.new_code_cell('print("no figure")')
    notebook = nbformat.v4.new_notebook(
        cells=[
            plot,
            nbformat.v4.new_markdown_cell("# Title\n\nintro\n\n## Sweeps\n\ntext"),
            bare,
            text_only,
        ]
    )
    pipeline.describe_figures(notebook)
    alt = [c.metadata.get("mystnb", {}).get("image", {}).get("alt") for c in notebook.cells]
    assert alt == [
        "Figure of the section 'Introduction': accuracy at ...; sparsity; again",
        None,
        "Figure of the section 'Sweeps'",
        None,
    ]


def test_each_notebook_keeps_its_longest_recorded_time(tmp_path):
    # a notebook that read its runs back from the run cache is quick once, not in the next
    # build that trains them again: it must still be started first
    path = tmp_path / "timings.json"
    result = pipeline.Result
    pipeline._record_timings(path, [result("02j", "executed", 1090.0)], "full")
    pipeline._record_timings(
        path, [result("02j", "executed", 12.0), result("05a", "executed", 30.0)], "full"
    )
    pipeline._record_timings(path, [result("05a", "executed", 300.0)], "full")
    pipeline._record_timings(path, [result("02j", "executed", 5.0)], "smoke")
    assert pipeline.recorded_seconds(path, "full") == {"02j": 1090.0, "05a": 300.0}
    assert pipeline.recorded_seconds(path, "smoke") == {"02j": 5.0}


def test_the_shared_dense_models_are_the_notebooks_calls_longest_first(
    tmp_path, monkeypatch, request
):
    import torch

    from sparsity_lab import recipes

    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    torch.set_num_threads(2)  # a process with more threads: each training still gets one

    settings = {("lenet300", "mnist"): None, ("cnn1d", "mnist1d"): None}
    monkeypatch.setattr(recipes, "RECIPES", settings)
    calls = []

    def dense(*args, **options):
        calls.append((args, options))
        # one thread, as every notebook trains: torch's sums depend on the thread count
        assert torch.get_num_threads() == 1
        if args == ("cnn1d", "mnist1d", 1):
            raise RuntimeError("out of memory")
        return None, None, {"cached": args[2] == 0}

    monkeypatch.setattr(recipes, "dense", dense)
    timings = write(tmp_path, "timings.json", json.dumps({"models": {"cnn1d-mnist1d-seed0": 9}}))
    lines = []
    results = pipeline.train_dense_models((0, 1), timings=timings, log=lines.append)
    # exactly what a notebook asks for: recipes.dense(model, data, seed), no options
    assert all(options == {} for _, options in calls)
    # never timed first (in recipe order), then the longest recorded
    assert [args for args, _ in calls] == [
        ("lenet300", "mnist", 0),
        ("lenet300", "mnist", 1),
        ("cnn1d", "mnist1d", 1),
        ("cnn1d", "mnist1d", 0),
    ]
    status = {r.name: r.status for r in results}
    assert status == {"lenet300-mnist-seed0": "cached", "lenet300-mnist-seed1": "executed",
                      "cnn1d-mnist1d-seed1": "failed", "cnn1d-mnist1d-seed0": "cached"}  # fmt: skip
    assert "out of memory" in next(r.error for r in results if r.status == "failed")
    assert any("FAILED" in line for line in lines)
    # only a training's time is recorded: a load says nothing about the next cold build
    recorded = pipeline.recorded_seconds(timings, "models")
    assert set(recorded) == {"cnn1d-mnist1d-seed0", "lenet300-mnist-seed1"}
    assert recorded["cnn1d-mnist1d-seed0"] == 9
    with pytest.raises(ValueError, match="workers"):
        pipeline.train_dense_models(workers=0)


def test_the_shared_dense_models_are_the_checkpoints_a_notebook_loads(tmp_path, monkeypatch):
    from sparsity_lab import recipes

    setting = ("lenet300", "digits")
    monkeypatch.setattr(recipes, "RECIPES", {setting: recipes.RECIPES[setting]})
    monkeypatch.setenv("SPARSITY_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(recipes, "_DENSE_MODELS", {})  # no model of this process's memory
    first = pipeline.train_dense_models((0,), log=lambda _: None)
    assert [r.status for r in first] == ["executed"]
    assert len(list((tmp_path / "cache").glob("lenet300-digits-*.pt"))) == 1
    monkeypatch.setattr(recipes, "_DENSE_MODELS", {})  # as in a notebook's fresh process
    _, _, info = recipes.dense(*setting, 0)
    assert info["cached"]

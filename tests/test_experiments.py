import itertools
import json
import math
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats

from sparsity_lab import experiments, run_cache
from sparsity_lab.experiments import SweepError, plot_mean_ci, summarize, sweep

GRID = {"a": [1, 2], "b": ["x", "y", "z"]}
SEEDS = (0, 1)
CELLS = [
    (a, b, seed) for a, b in itertools.product(GRID["a"], GRID["b"]) for seed in SEEDS
]  # grid order, seeds innermost


def score(a, b, seed):
    return 10 * a + "xyz".index(b) + seed / 100


class Counting:
    """A sweep function that records its calls (thread-safe) and can fail on one call."""

    def __init__(self, fail_on_call=None, tag="run"):
        self.calls = []
        self.fail_on_call = fail_on_call
        self.tag = tag
        self.lock = threading.Lock()

    def __call__(self, a, b, seed):
        with self.lock:
            self.calls.append((a, b, seed))
            number = len(self.calls)
        if number == self.fail_on_call:
            raise RuntimeError("boom")
        return {"score": score(a, b, seed), "tag": self.tag}


def square_plus_seed(x, seed):
    """Module level, so a process pool can pickle it."""
    return x * x + seed


def test_rows_follow_the_grid_product_with_seeds_innermost():
    df = sweep(lambda a, b, seed: {"score": score(a, b, seed)}, GRID, SEEDS)
    assert list(df.columns) == ["a", "b", "seed", "score"]
    assert list(df[["a", "b", "seed"]].itertuples(index=False, name=None)) == CELLS
    assert df["score"].tolist() == [score(*cell) for cell in CELLS]


def test_a_number_is_stored_as_value():
    df = sweep(square_plus_seed, {"x": [2, 3]}, seeds=[0, 10])
    assert list(df.columns) == ["x", "seed", "value"]
    assert df["value"].tolist() == [4, 14, 9, 19]


def test_fn_runs_once_per_cell_and_not_at_all_when_cached(tmp_path):
    fn = Counting()
    sweep(fn, GRID, SEEDS, cache_dir=tmp_path)
    assert fn.calls == CELLS
    assert len(list(tmp_path.glob("*.json"))) == len(CELLS)
    again = Counting()
    df = sweep(again, GRID, SEEDS, cache_dir=tmp_path)
    assert again.calls == []
    assert df["score"].tolist() == [score(*cell) for cell in CELLS]


def test_cache_files_are_readable_json_with_the_params(tmp_path):
    sweep(Counting(), {"a": [1], "b": ["y"]}, seeds=[3], cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["params"] == {"a": 1, "b": "y"}
    assert record["seed"] == 3
    assert record["metrics"]["score"] == score(1, "y", 3)
    assert record["fn"].endswith("Counting")


def test_resume_after_a_failure_runs_only_the_missing_cells(tmp_path):
    first = Counting(fail_on_call=3, tag="first")
    with pytest.raises(SweepError, match=r"\{'a': 1, 'b': 'y'\} with seed=0") as info:
        sweep(first, GRID, SEEDS, cache_dir=tmp_path)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert info.value.params == {"a": 1, "b": "y"}
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert list(tmp_path.glob("*.tmp")) == []  # no half-written files

    second = Counting(tag="second")
    df = sweep(second, GRID, SEEDS, cache_dir=tmp_path)
    assert second.calls == CELLS[2:]
    assert df["tag"].tolist() == ["first"] * 2 + ["second"] * (len(CELLS) - 2)
    assert df["score"].tolist() == [score(*cell) for cell in CELLS]


def test_a_corrupt_cache_file_is_reported_and_recomputed(tmp_path):
    sweep(Counting(), GRID, SEEDS, cache_dir=tmp_path)
    victim = sorted(tmp_path.glob("*.json"))[0]
    victim.write_text('{"metrics": {"score": ')  # cut off mid-write
    fn = Counting()
    with pytest.warns(UserWarning, match="unreadable"):
        df = sweep(fn, GRID, SEEDS, cache_dir=tmp_path)
    assert len(fn.calls) == 1
    assert df["score"].tolist() == [score(*cell) for cell in CELLS]
    assert json.loads(victim.read_text())["params"]  # rewritten whole


def test_a_cache_file_that_does_not_match_its_name_is_recomputed(tmp_path):
    sweep(Counting(), GRID, SEEDS, cache_dir=tmp_path)
    a, b = sorted(tmp_path.glob("*.json"))[:2]
    a.write_text(b.read_text())  # valid JSON, but another run's result
    fn = Counting()
    with pytest.warns(UserWarning, match="does not match"):
        sweep(fn, GRID, SEEDS, cache_dir=tmp_path)
    assert len(fn.calls) == 1


def test_thread_pool_gives_the_same_frame_as_sequential(tmp_path):
    def slow(a, b, seed):
        time.sleep(0.01 * (3 - a))  # later cells finish first
        return {"score": score(a, b, seed)}

    sequential = sweep(slow, GRID, SEEDS)
    with ThreadPoolExecutor(max_workers=4) as pool:
        threaded = sweep(slow, GRID, SEEDS, executor=pool, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(threaded, sequential)
    with ThreadPoolExecutor(max_workers=4) as pool:
        cached = sweep(slow, GRID, SEEDS, executor=pool, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(cached, sequential)


def test_an_executor_failure_keeps_the_finished_cells(tmp_path):
    first = Counting(fail_on_call=2)
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(SweepError, match="seed=1"):
            sweep(first, GRID, SEEDS, executor=pool, cache_dir=tmp_path)
    done = len(list(tmp_path.glob("*.json")))
    assert 1 <= done < len(CELLS)
    second = Counting()
    df = sweep(second, GRID, SEEDS, cache_dir=tmp_path)
    assert len(second.calls) == len(CELLS) - done
    assert CELLS[1] in second.calls
    assert df["score"].tolist() == [score(*cell) for cell in CELLS]


def test_process_pool_runs_a_picklable_function():
    with ProcessPoolExecutor(max_workers=2) as pool:
        df = sweep(square_plus_seed, {"x": [1, 2, 3]}, seeds=[0, 1], executor=pool)
    assert df["value"].tolist() == [1, 2, 4, 5, 9, 10]


def seeded_draw(x, seed):
    """Module level and seeded: the same numbers in any process; also says which process."""
    import torch

    torch.manual_seed(seed)
    return {
        "draw": float(torch.randn(()) * x),
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
    }


@run_cache.cached_run()
def _cached_square(x):
    return x * x


def square_through_the_run_cache(x, seed):
    return _cached_square(x) + seed


def test_forked_workers_give_the_sequential_frame_and_count_their_cached_calls(monkeypatch):
    import torch

    monkeypatch.delenv(experiments.WORKERS_ENV, raising=False)
    monkeypatch.setenv(run_cache.ENV, "0")  # cache off: every call counts as run
    grid, seeds = {"x": [1.0, 2.0, 3.0]}, [0, 1]
    here = sweep(seeded_draw, grid, seeds)  # one process unless told
    assert set(here["pid"]) == {os.getpid()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        forked = sweep(seeded_draw, grid, seeds, workers=2)
    finally:
        torch.set_num_threads(threads)
    assert os.getpid() not in set(forked["pid"]) and forked["pid"].nunique() >= 1
    assert set(forked["threads"]) == {1}  # each worker has the thread count of its parent
    pd.testing.assert_frame_equal(forked[["x", "seed", "draw"]], here[["x", "seed", "draw"]])

    before = run_cache.counts()
    df = sweep(square_through_the_run_cache, grid, seeds, workers=2)
    assert df["value"].tolist() == [1.0, 2.0, 4.0, 5.0, 9.0, 10.0]
    assert run_cache.counts()["ran"] - before["ran"] == 6  # made in the workers, counted here


def test_the_environment_sets_the_workers_and_what_cannot_fork_runs_here(monkeypatch):
    monkeypatch.setenv(experiments.WORKERS_ENV, "2")
    assert experiments.default_workers() == 2
    assert os.getpid() not in set(sweep(seeded_draw, {"x": [1.0]}, [0, 1])["pid"])
    # a function a worker cannot find by reference runs in this process, as does one run
    local = Counting()
    df = sweep(local, GRID, SEEDS)  # holds a lock: does not pickle
    assert len(local.calls) == len(CELLS) and df["score"].tolist() == [score(*c) for c in CELLS]
    assert set(sweep(seeded_draw, {"x": [1.0]}, [0])["pid"]) == {os.getpid()}
    monkeypatch.setattr(experiments.sys, "platform", "darwin")  # forks only on Linux
    assert set(sweep(seeded_draw, {"x": [1.0]}, [0, 1])["pid"]) == {os.getpid()}
    monkeypatch.undo()
    for bad in ["0", "two", "-1"]:
        monkeypatch.setenv(experiments.WORKERS_ENV, bad)
        with pytest.raises(ValueError, match="SPARSITY_LAB_WORKERS"):
            experiments.default_workers()
    monkeypatch.setenv(experiments.WORKERS_ENV, "")
    assert experiments.default_workers() == 1
    with pytest.raises(ValueError, match="workers"):
        sweep(score, GRID, SEEDS, workers=0)


def table_of(x, seed):
    """A result that is not a row of metrics: a table, and which process made it."""
    return pd.DataFrame({"x": [x, x], "seed": [seed, seed + 1]}), os.getpid()


def fails_on_two(x):
    if x == 2:
        raise KeyError("two")
    return x


def test_forked_map_keeps_the_calls_order_counts_their_cached_calls_and_raises_their_error(
    monkeypatch,
):
    monkeypatch.setenv(run_cache.ENV, "0")
    calls = [(x, seed) for x in (3, 1, 2) for seed in (0, 1)]
    here = experiments.forked_map(table_of, calls, workers=1)
    forked = experiments.forked_map(table_of, calls, workers=2)
    assert {pid for _, pid in here} == {os.getpid()}
    assert os.getpid() not in {pid for _, pid in forked}
    for (a, _), (b, _) in zip(here, forked, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert [t["x"].iloc[0] for t, _ in forked] == [3, 3, 1, 1, 2, 2]
    before = run_cache.counts()
    assert experiments.forked_map(square_through_the_run_cache, calls, workers=2) == [
        x * x + seed for x, seed in calls
    ]
    assert run_cache.counts()["ran"] - before["ran"] == len(calls)
    with pytest.raises(KeyError, match="two"):
        experiments.forked_map(fails_on_two, [(1,), (2,), (3,)], workers=2)
    local = Counting()  # does not pickle: runs here
    assert experiments.forked_map(local, [(1, "x", 0)], workers=2) == [
        {"score": 10.0, "tag": "run"}
    ]
    with pytest.raises(ValueError, match="workers"):
        experiments.forked_map(table_of, calls, workers=0)


def test_forked_map_starts_the_calls_marked_first_and_keeps_the_calls_order(monkeypatch):
    monkeypatch.setenv(run_cache.ENV, "0")
    started = []  # here (one worker) the calls run in the order they start
    calls = [(x,) for x in (1, 20, 3, 40, 5)]
    out = experiments.forked_map(lambda x: started.append(x) or -x, calls, workers=1,
                                 first=lambda x: x > 10)  # fmt: skip
    assert started == [20, 40, 1, 3, 5]
    assert out == [-1, -20, -3, -40, -5]
    forked = experiments.forked_map(table_of, [(x, 0) for x in (3, 1, 2)], workers=2,
                                    first=lambda x, seed: x == 2)  # fmt: skip
    assert [t["x"].iloc[0] for t, _ in forked] == [3, 1, 2]


def test_numpy_metrics_become_plain_python_values(tmp_path):
    def fn(x, seed):
        return {"m": np.float32(0.5) * x}

    fresh = sweep(fn, {"x": [1, 2]}, cache_dir=tmp_path)
    cached = sweep(fn, {"x": [1, 2]}, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(fresh, cached)
    assert type(fresh["m"].iloc[0]) is not np.float32
    zero_dim = sweep(lambda x, seed: np.array(2.0) * x, {"x": [1, 2]})
    assert zero_dim["value"].tolist() == [2.0, 4.0]


def test_numpy_grid_values_and_seeds_are_cached_as_plain_values(tmp_path):
    df = sweep(square_plus_seed, {"x": np.arange(2)}, seeds=np.arange(2), cache_dir=tmp_path)
    assert df["value"].tolist() == [0, 1, 1, 2]
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_unserialisable_params_need_names_when_cached(tmp_path):
    grid = {"model": [object()]}
    with pytest.raises(TypeError, match="names or strings"):
        sweep(lambda model, seed: 1.0, grid, cache_dir=tmp_path, name="objects")
    assert sweep(lambda model, seed: 1.0, grid)["value"].tolist() == [1.0]


def test_lambdas_need_a_name_to_be_cached(tmp_path):
    with pytest.raises(ValueError, match="pass name="):
        sweep(lambda x, seed: x, {"x": [1]}, cache_dir=tmp_path)
    df = sweep(lambda x, seed: x, {"x": [1]}, cache_dir=tmp_path, name="identity")
    assert df["value"].tolist() == [1]


def test_bad_grids_are_explained():
    with pytest.raises(TypeError, match=r"write 'lr': \['0.1'\]"):
        sweep(square_plus_seed, {"lr": "0.1"})
    with pytest.raises(ValueError, match="'seed' cannot be a grid key"):
        sweep(square_plus_seed, {"seed": [1]})
    with pytest.raises(ValueError, match=r"grid\['x'\] is empty"):
        sweep(square_plus_seed, {"x": []})


def hand_interval(values, confidence):
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf(1 - (1 - confidence) / 2, n - 1) * s / math.sqrt(n)
    return mean, s, mean - half, mean + half


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_summarize_gives_the_student_t_interval(confidence):
    df = pd.DataFrame(
        {
            "method": ["b", "b", "b", "a", "c", "c"],
            "acc": [1.0, 2.0, 4.0, 3.0, 0.5, 0.7],
        }
    )
    table = summarize(df, by=["method"], metric="acc", confidence=confidence)
    assert list(table.columns) == ["method", "mean", "std", "n", "ci_low", "ci_high"]
    assert table["method"].tolist() == ["b", "a", "c"]  # first appearance
    for method, values in [("b", [1.0, 2.0, 4.0]), ("c", [0.5, 0.7])]:
        row = table.set_index("method").loc[method]
        mean, s, low, high = hand_interval(values, confidence)
        assert row["n"] == len(values)
        assert row[["mean", "std", "ci_low", "ci_high"]].tolist() == pytest.approx(
            [mean, s, low, high]
        )
    single = table.set_index("method").loc["a"]
    assert single["mean"] == 3.0 and single["n"] == 1
    assert math.isnan(single["ci_low"]) and math.isnan(single["ci_high"])


def test_summarize_keeps_none_groups_and_checks_its_arguments():
    df = pd.DataFrame({"schedule": [None, None, "cosine"], "acc": [1.0, 3.0, 2.0]})
    table = summarize(df, "schedule", "acc")
    assert len(table) == 2 and table["mean"].tolist() == [2.0, 2.0]
    with pytest.raises(KeyError, match="columns \\['loss'\\] are not in the DataFrame"):
        summarize(df, ["schedule"], "loss")
    with pytest.raises(ValueError, match="confidence must be in"):
        summarize(df, ["schedule"], "acc", confidence=95)


def test_plot_mean_ci_draws_a_line_and_a_band_at_the_interval_per_hue():
    rows = [
        {"method": m, "sparsity": s, "seed": seed, "acc": 1 - s * k + 0.01 * seed**2}
        for m, k in [("gmp", 0.5), ("rigl", 0.2)]
        for s in [0.5, 0.8, 0.9]
        for seed in range(3)
    ]
    df = pd.DataFrame(rows)
    ax = Figure().subplots()
    assert plot_mean_ci(df, "sparsity", "acc", hue="method", ax=ax) is ax
    assert len(ax.lines) == 2 and len(ax.collections) == 2
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["method=gmp", "method=rigl"]
    for line, band, method in zip(ax.lines, ax.collections, ["gmp", "rigl"], strict=True):
        vertices = band.get_paths()[0].vertices
        for x in [0.5, 0.8, 0.9]:
            values = [r["acc"] for r in rows if r["method"] == method and r["sparsity"] == x]
            mean, _, low, high = hand_interval(values, 0.95)
            at_x = vertices[np.isclose(vertices[:, 0], x), 1]
            assert at_x.min() == pytest.approx(low) and at_x.max() == pytest.approx(high)
            assert line.get_ydata()[list(line.get_xdata()).index(x)] == pytest.approx(mean)


def test_plot_mean_ci_without_hue_makes_its_own_axes():
    df = pd.DataFrame({"x": [1, 1, 2, 2], "y": [0.0, 1.0, 2.0, 4.0]})
    ax = plot_mean_ci(df, "x", "y", label="runs")
    try:
        assert len(ax.lines) == 1 and len(ax.collections) == 1
        assert ax.lines[0].get_label() == "runs"
        assert list(ax.lines[0].get_ydata()) == [0.5, 3.0]
        assert ax.get_xlabel() == "x" and ax.get_ylabel() == "y"
    finally:
        plt.close(ax.figure)


def test_plot_mean_ci_clips_the_band_to_the_bounds_it_is_given():
    # a change of accuracy of three seeds whose t-interval runs past -1 and 1 unclipped
    df = pd.DataFrame({"x": [1, 1, 1], "change": [-0.9, 0.0, 0.9]})
    _, _, low, high = hand_interval(df["change"].tolist(), 0.95)
    assert low < -1 and high > 1
    unclipped = plot_mean_ci(df, "x", "change", ax=Figure().subplots(), bounds=None)
    clipped = plot_mean_ci(df, "x", "change", ax=Figure().subplots(), bounds=(-1.0, 1.0))
    band = unclipped.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(low) and band.max() == pytest.approx(high)
    band = clipped.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == -1.0 and band.max() == 1.0


def test_no_progress_output_by_default_under_pytest(capfd):
    sweep(square_plus_seed, {"x": [1, 2]})
    assert capfd.readouterr().err == ""
    sweep(square_plus_seed, {"x": [1, 2]}, progress=True)
    assert "sweep" in capfd.readouterr().err


def ordered_metrics(a, b, seed):
    return {"zeta": score(a, b, seed), "alpha": [a, seed], "pair": (a, b)}


def test_cached_and_fresh_tables_are_identical(tmp_path):
    fresh = sweep(ordered_metrics, GRID, SEEDS, cache_dir=tmp_path)
    cached = sweep(ordered_metrics, GRID, SEEDS, cache_dir=tmp_path)
    assert list(fresh.columns) == ["a", "b", "seed", "zeta", "alpha", "pair"]
    pd.testing.assert_frame_equal(fresh, cached)
    assert fresh["pair"][0] == [1, "x"]  # a tuple reads back as a list; so does the fresh run


def test_a_metric_json_cannot_hold_stops_the_first_run_with_a_clear_error(tmp_path):
    calls = []

    def returns_a_set(a, b, seed):
        calls.append(a)
        return {"ok": 1.0, "classes": {1, 2}}

    with pytest.raises(TypeError, match=r"'classes': 'set'.*without cache_dir"):
        sweep(returns_a_set, GRID, SEEDS, cache_dir=tmp_path, name="sets")
    assert len(calls) == 1
    uncached = sweep(returns_a_set, {"a": [1], "b": ["x"]}, (0,))
    assert uncached["classes"][0] == {1, 2}  # without a cache nothing is converted


def test_a_deeply_nested_cache_file_is_reported_and_recomputed(tmp_path):
    sweep(Counting(), GRID, SEEDS, cache_dir=tmp_path)
    victim = sorted(tmp_path.glob("*.json"))[0]
    victim.write_text("[" * 200_000 + "]" * 200_000)
    fn = Counting()
    with pytest.warns(UserWarning, match="unreadable"):
        sweep(fn, GRID, SEEDS, cache_dir=tmp_path)
    assert len(fn.calls) == 1


def test_temporaries_left_by_a_killed_run_are_removed(tmp_path):
    import os

    stale, live = tmp_path / ".abc.123.tmp", tmp_path / ".def.456.tmp"
    for tmp in (stale, live):
        tmp.write_text("{")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    sweep(Counting(), GRID, SEEDS, cache_dir=tmp_path)
    assert not stale.exists()
    assert live.exists()  # a run in progress elsewhere may still rename it


def test_fit_y_fits_the_unflagged_means_and_marks_a_flagged_one_at_the_edge():
    """Limits by hand: the unflagged means and intervals span 0.93-0.97, so with a 10%
    margin the axis is 0.926-0.974; the flagged mean at 0.10 is drawn at the bottom edge
    with its name, sparsity and value."""
    table = pd.DataFrame(
        {
            "method": ["a", "b", "c"],
            "sparsity": [0.5, 0.5, 0.9],
            "mean": [0.95, 0.96, 0.10],
            "ci_low": [0.93, 0.95, 0.0],
            "ci_high": [0.96, 0.97, 0.30],
            "flagged": [False, False, True],
        }
    )
    fig, ax = plt.subplots()
    ax.plot(table["sparsity"], table["mean"], "o")
    limits = experiments.fit_y(ax, table, x="sparsity", name="method")
    assert limits == pytest.approx((0.926, 0.974))
    assert ax.get_ylim() == pytest.approx((0.926, 0.974))
    (label,) = [t.get_text() for t in ax.texts]
    assert label == "c at 90%: 10.0% (flagged)"
    # its red circle is at the edge mark, in axis coordinates, so it stays visible
    (circle,) = ax.collections
    assert circle.get_offsets().tolist() == [[0.9, 0.02]] and not circle.get_clip_on()
    assert circle.get_edgecolor()[0].tolist() == [1.0, 0.0, 0.0, 1.0]
    plt.close(fig)


def test_flagged_summary_is_what_plot_mean_ci_draws_with_its_flags():
    runs = pd.DataFrame(
        {
            "method": ["a"] * 4 + ["b"] * 4,
            "sparsity": [0.5, 0.5, 0.9, 0.9] * 2,
            "test_accuracy": [0.9, 0.92, 0.8, 0.1, 0.95, 0.93, 0.9, 0.88],
            "flags": ["", "", "", "accuracy at chance", "", "", "", ""],
        }
    )
    table = experiments.flagged_summary(runs, ["method", "sparsity"], "test_accuracy")
    assert table["flagged"].tolist() == [False, True, False, False]
    assert table["mean"].tolist() == pytest.approx([0.91, 0.45, 0.94, 0.89])

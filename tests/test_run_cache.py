"""The run cache: exact round trips, keys that see what a run depends on, and library runs
that read back what a fresh run computes."""

import json
import math
import threading
import time

import numpy as np
import pandas as pd
import pytest
import torch

from sparsity_lab import one_shot_runs, recipes, registry, run_cache
from sparsity_lab.phenomena import tickets
from sparsity_lab.regularizers import compare

TIMINGS = {"seconds", "epoch_seconds", "seconds_per_epoch"}


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv(run_cache.ENV, "1")
    monkeypatch.setenv("SPARSITY_LAB_CACHE", str(tmp_path))
    return tmp_path / "runs"


def round_trip(value):
    return run_cache._decode(json.loads(json.dumps(run_cache._encode(value))))


CALLS = []


@run_cache.cached_run()
def noisy_sum(a, b=1.0, *, scale=2):
    """A toy run: records that it ran, and returns a table and a few scalars."""
    CALLS.append((a, b, scale))
    table = pd.DataFrame({"x": [a, b], "name": ["p", None], "ok": [True, False]})
    return {"table": table, "total": scale * (a + b), "pair": (a, -0.0), "n": np.int64(3)}


@pytest.mark.parametrize(
    "value",
    [
        -0.0,
        float("nan"),
        float("inf"),
        0.1 + 0.2,
        np.float32(1 / 3),
        np.int64(-7),
        np.bool_(True),
        [1, (2.5, "a"), {"k": None}],
        {"b": 1, "a": [True, False]},
        pd.DataFrame({"i": [1, 2], "f": [0.5, float("nan")], "s": ["x", None], "b": [True, False]}),
        pd.DataFrame({"o": pd.Series([[1, 2], "t"], dtype=object), "f32": np.float32([1.5, 2])}),
        pd.DataFrame({"i": pd.Series([], dtype="int64")}),
    ],
    ids=repr,
)
def test_results_read_back_exactly(value):
    assert run_cache._same(round_trip(value), value)


@pytest.mark.parametrize(
    "a, b",
    [
        (1, 1.0),
        (0.0, -0.0),
        (np.float32(0.5), 0.5),
        ((1, 2), [1, 2]),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),  # the order of a run's metrics is kept
        (pd.DataFrame({"x": [1]}), pd.DataFrame({"x": [1.0]})),
        (pd.DataFrame({"x": ["a"]}, dtype=object), pd.DataFrame({"x": ["b"]}, dtype=object)),
        (float("nan"), 0.0),
    ],
)
def test_same_tells_apart_values_a_reader_could_tell_apart(a, b):
    assert not run_cache._same(a, b)


@pytest.mark.parametrize(
    "value",
    [torch.zeros(2), {1: "a"}, pd.DataFrame({"x": [1]}, index=[5]), object()],
    ids=["tensor", "int keys", "index", "object"],
)
def test_values_without_an_exact_form_are_refused(value):
    with pytest.raises(run_cache._NoKey):
        run_cache._encode(value)


def test_a_second_call_reads_the_first_ones_result(cache_on):
    CALLS.clear()
    first = noisy_sum(1.5, scale=3)
    before = run_cache.counts()
    second = noisy_sum(1.5, 1.0, scale=3)  # the same call, with the default spelled out
    assert CALLS == [(1.5, 1.0, 3)]
    assert run_cache._same(first, second)
    assert second is not first and second["table"] is not first["table"]
    assert run_cache.counts() == {"read": before["read"] + 1, "ran": before["ran"]}
    assert "1 of these 1 runs were read back" in run_cache.summary(before)
    assert len(list(cache_on.glob("noisy_sum-*.json"))) == 1


def test_two_readers_of_one_run_compute_it_once(cache_on):
    # two notebooks side by side that want the same run: one computes, the other reads it
    calls = []

    @run_cache.cached_run()
    def slow_run(x):
        calls.append(x)
        time.sleep(0.3)  # long enough for the second caller to arrive while it runs
        return x + 1

    before = run_cache.counts()
    results = []
    threads = [threading.Thread(target=lambda: results.append(slow_run(2))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [2] and results == [3, 3]
    assert run_cache.counts() == {"read": before["read"] + 1, "ran": before["ran"] + 1}


@pytest.mark.parametrize(
    "call", [(1.5, 1.0, 2), (1.5, -0.0, 3), (np.float64(1.5), 1.0, 3), (1, 1.0, 3)]
)
def test_other_arguments_run_again(cache_on, call):
    noisy_sum(1.5, scale=3)
    CALLS.clear()
    a, b, scale = call
    noisy_sum(a, b, scale=scale)
    assert CALLS == [call]


def test_off_by_default_and_when_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSITY_LAB_CACHE", str(tmp_path))
    for setting in (None, "0", "off"):
        if setting is None:
            monkeypatch.delenv(run_cache.ENV, raising=False)
        else:
            monkeypatch.setenv(run_cache.ENV, setting)
        CALLS.clear()
        noisy_sum(2.0)
        noisy_sum(2.0)
        assert len(CALLS) == 2
        assert run_cache.summary(run_cache.counts()) == ""
    assert not (tmp_path / "runs").exists()


def test_write_mode_always_runs_and_keeps_the_result_for_readers(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSITY_LAB_CACHE", str(tmp_path))
    monkeypatch.setenv(run_cache.ENV, "write")
    assert run_cache.mode() == "write"
    CALLS.clear()
    written = noisy_sum(8.0)
    noisy_sum(8.0)
    assert len(CALLS) == 2 and len(list((tmp_path / "runs").glob("*.json"))) == 1
    monkeypatch.setenv(run_cache.ENV, "1")
    assert run_cache.mode() == "read"
    assert run_cache._same(noisy_sum(8.0), written) and len(CALLS) == 2


def test_a_library_edit_runs_again(cache_on, monkeypatch):
    noisy_sum(4.0)
    CALLS.clear()
    monkeypatch.setattr(run_cache, "_library_digest", lambda: "another library")
    noisy_sum(4.0)
    assert CALLS == [(4.0, 1.0, 2)]


def test_the_library_digest_follows_the_sources():
    digest = run_cache._library_digest()
    assert len(digest) == 64 and digest == run_cache._library_digest()
    stamp = ((run_cache.__file__, 0, 0),)
    assert run_cache._digest_of_files(stamp) != digest  # one file is not the package


def test_a_damaged_file_is_reported_and_run_again(cache_on):
    first = noisy_sum(5.0)
    (path,) = cache_on.glob("noisy_sum-*.json")
    for damage in ("{not json", json.dumps({"key": "another call", "result": 1})):
        path.write_text(damage)
        CALLS.clear()
        with pytest.warns(UserWarning, match="running again"):
            again = noisy_sum(5.0)
        assert CALLS == [(5.0, 1.0, 2)] and run_cache._same(again, first)
    CALLS.clear()
    noisy_sum(5.0)  # rewritten whole by the run after the damage
    assert CALLS == []


def test_a_result_without_an_exact_form_is_returned_and_not_kept(cache_on):
    calls = []

    @run_cache.cached_run()
    def tensor_run(x):
        calls.append(x)
        return torch.full((2,), x)

    assert torch.equal(tensor_run(1.0), torch.ones(2))
    tensor_run(1.0)
    assert calls == [1.0, 1.0] and not list(cache_on.glob("*.json"))


def test_an_unwritable_cache_keeps_the_result(tmp_path, monkeypatch):
    monkeypatch.setenv(run_cache.ENV, "1")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("SPARSITY_LAB_CACHE", str(blocker))  # runs/ cannot be made in a file
    with pytest.warns(UserWarning, match="could not keep a result"):
        result = noisy_sum(6.0)
    assert result["total"] == 14.0


def test_an_argument_without_a_content_hash_runs(cache_on):
    calls = []

    @run_cache.cached_run()
    def with_model(model, k=1):
        calls.append(k)
        return k

    with_model(torch.nn.Linear(2, 2))
    with_model(torch.nn.Linear(2, 2))
    assert calls == [1, 1] and not cache_on.exists()


def test_a_refused_call_runs(cache_on):
    calls = []

    @run_cache.cached_run(accepts=lambda arguments: arguments["k"] > 0)
    def picky(k):
        calls.append(k)
        return k

    for k in (0, 0, 1, 1):
        picky(k)
    assert calls == [0, 0, 1]


def test_a_task_is_keyed_by_its_data():
    t = recipes.task("lenet300", "mnist", seed=0, n_train=200)
    key = run_cache._canonical(t)
    assert key == run_cache._canonical(recipes.task("lenet300", "mnist", seed=0, n_train=200))
    assert key != run_cache._canonical(recipes.task("lenet300", "mnist", seed=1, n_train=200))
    assert key != run_cache._canonical(recipes.task("lenet300", "mnist", seed=0, n_train=100))
    assert key != run_cache._canonical(recipes.task("lenet5", "mnist", seed=0, n_train=200))
    t.bundle.train.tensors[0][0, 0] += 1.0  # the same names, other examples
    assert run_cache._canonical(t) != key


# ------------------------------------------------------------------------- library runs

SMALL = {"n_train": 300}


def test_compare_run_reads_back_what_a_fresh_run_computes(cache_on, monkeypatch):
    t = recipes.task("lenet300", "mnist", seed=3, **SMALL)
    fresh = compare.run(t, "l1", 0.8, epochs=2, finetune_epochs=1)
    before = run_cache.counts()
    torch.manual_seed(123)  # the global RNG does not reach the result
    read = compare.run(t, "l1", 0.8, epochs=2, finetune_epochs=1)
    assert run_cache.counts()["read"] == before["read"] + 1
    assert run_cache._same(read, fresh)
    monkeypatch.setenv(run_cache.ENV, "0")
    again = compare.run(t, "l1", 0.8, epochs=2, finetune_epochs=1)
    assert {k for k in fresh if not run_cache._same(fresh[k], again[k])} <= TIMINGS
    assert math.isfinite(again["test_accuracy"])


def test_the_thread_count_is_in_the_key(cache_on):
    """torch's sums depend on the threads: a run on two threads is not one on one thread."""
    threads = torch.get_num_threads()
    CALLS.clear()
    try:
        for n in (1, 2, 1, 2):
            torch.set_num_threads(n)
            noisy_sum(7.0)
    finally:
        torch.set_num_threads(threads)
    assert len(CALLS) == 2


def test_compare_run_caches_only_library_methods_on_their_own_model(monkeypatch):
    call = {"model": None, "method": "l1"}
    assert compare._library_call(call) and compare._library_call({**call, "method": "dense"})
    assert not compare._library_call({**call, "model": torch.nn.Linear(2, 2)})
    outside = type("Outside", (), {"__module__": "my_project.methods"})
    monkeypatch.setattr(
        registry, "entry", lambda name, kind=None: registry.Entry(name, "regularizer", outside)
    )
    assert not compare._library_call(call)


def test_ticket_rounds_reads_back_its_table(cache_on, monkeypatch):
    t = recipes.task("lenet300", "mnist", seed=2, **SMALL)
    options = {"rounds": 1, "epochs": 1, "dense_epochs": 1}
    fresh = tickets.ticket_rounds(t, 0.5, **options)
    before = run_cache.counts()
    read = tickets.ticket_rounds(t, 0.5, **options)
    assert run_cache.counts()["read"] == before["read"] + 1
    assert run_cache._same(read, fresh) and read is not fresh
    monkeypatch.setenv(run_cache.ENV, "0")
    torch.manual_seed(7)  # the global RNG does not reach the table
    assert run_cache._same(tickets.ticket_rounds(t, 0.5, **options), fresh)


def test_prune_dense_and_finetune_reads_back_what_a_fresh_run_computes(cache_on, monkeypatch):
    t = recipes.task("lenet300", "mnist", seed=4, **SMALL)
    options = {"dense_epochs": 1, "calibration_batches": 1, "finetune_epochs": 1}
    fresh = one_shot_runs.prune_dense_and_finetune(t, "magnitude", 0.8, budget="global", **options)
    before = run_cache.counts()
    torch.manual_seed(5)  # the global RNG does not reach the result
    read = one_shot_runs.prune_dense_and_finetune(t, "magnitude", 0.8, budget="global", **options)
    assert run_cache.counts()["read"] == before["read"] + 1
    assert run_cache._same(read, fresh)
    shuffled = one_shot_runs.prune_dense_and_finetune(t, "magnitude", 0.8, shuffled=True, **options)
    assert run_cache.counts()["ran"] == before["ran"] + 1  # another run, not the cached one
    assert shuffled["measured_sparsity"] == pytest.approx(fresh["measured_sparsity"])


def test_prune_dense_and_finetune_caches_only_library_methods(monkeypatch):
    assert one_shot_runs._library_method({"method": "magnitude"})
    assert not one_shot_runs._library_method({"method": object()})
    outside = type("Outside", (), {"__module__": "my_project.criteria"})
    monkeypatch.setattr(
        registry, "entry", lambda name, kind=None: registry.Entry(name, "criterion", outside)
    )
    assert not one_shot_runs._library_method({"method": "magnitude"})

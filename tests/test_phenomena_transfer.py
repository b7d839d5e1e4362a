"""Transfer: upstream and downstream training follow the setting's recipe."""

import pandas as pd
import pytest

import sparsity_lab.methods.base as methods_base
from sparsity_lab import recipes
from sparsity_lab.phenomena import transfer


@pytest.fixture(scope="module")
def tiny_cnn():
    return recipes.task("cnn1d", "mnist1d", seed=0, num_samples=200)


def _recorder(calls):
    def fake_fit(model, train_loader, val_loader=None, **options):
        calls.append({"batch_size": train_loader.batch_size, **options})
        return pd.DataFrame()

    return fake_fit


def test_pretrain_trains_sparse_methods_with_the_recipe(tiny_cnn, monkeypatch):
    calls = []
    monkeypatch.setattr(methods_base, "fit", _recorder(calls))
    transfer.pretrain(tiny_cnn, "gmp", 0.5, epochs=3)
    recipe = recipes.RECIPES[("cnn1d", "mnist1d")]
    (call,) = calls
    assert call["optimizer"] == "adam" == recipe.optimizer
    assert call["lr"] == recipe.lr and call["lr_schedule"] is None
    assert call["batch_size"] == recipe.batch_size == 100
    assert call["epochs"] == 3
    with pytest.raises(ValueError, match="unknown upstream method"):
        transfer.pretrain(tiny_cnn, "magic", 0.5, epochs=1)


@pytest.mark.parametrize("method", ["gmp", "acdc", "rigl"])
def test_pretrain_draws_the_methods_random_choices_from_the_tasks_seed(method, monkeypatch):
    """Every seed of a sparse method upstream is its own draw: RigL's initial random mask
    was once the same (the method's default seed) for every seed of the task."""
    seeds = []

    def fake_fit(model, train_loader, val_loader=None, callbacks=(), **options):
        seeds.append((callbacks[0].seed, options["seed"]))
        return pd.DataFrame()

    monkeypatch.setattr(methods_base, "fit", fake_fit)
    for seed in (0, 3):
        t = recipes.task("cnn1d", "mnist1d", seed=seed, num_samples=200)
        transfer.pretrain(t, method, 0.5, epochs=1)
    assert seeds == [(0, 0), (3, 3)]


def test_pretrain_gives_imp_the_same_total_budget(tiny_cnn, monkeypatch):
    import sparsity_lab.methods.lottery as lottery

    calls, real_fit = [], lottery.fit

    def recording_fit(*args, **options):
        calls.append(options["epochs"])
        return real_fit(*args, **options)

    monkeypatch.setattr(lottery, "fit", recording_fit)
    model = transfer.pretrain(tiny_cnn, "imp", 0.5, epochs=6)
    # one dense training and two pruning rounds: 3 trainings of 6 // 3 epochs
    assert calls == [2, 2, 2]
    assert recipes.evaluate_run(model, tiny_cnn, target_sparsity=0.5)["sparsity"] == (
        pytest.approx(0.5, abs=0.01)
    )


def test_transfer_run_follows_the_given_recipe(tiny_cnn, monkeypatch):
    calls = []
    monkeypatch.setattr(transfer, "fit", _recorder(calls))
    recipe = recipes.RECIPES[("cnn1d", "mnist1d")]
    up = tiny_cnn.build()
    run = transfer.transfer_run(up, tiny_cnn.bundle, "full", epochs=2, recipe=recipe, lr=3e-3)
    (call,) = calls
    assert call["optimizer"] == "adam" and call["lr"] == 3e-3 and call["epochs"] == 2
    assert call["batch_size"] == recipe.batch_size
    assert set(run) == {"accuracy", "flags"} and 0 <= run["accuracy"] <= 1
    assert isinstance(run["flags"], str)

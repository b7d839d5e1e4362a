"""The phenomena experiments follow the shared protocol: recipe dense models, rescaled
sparse starts, random baselines with the mask's layer counts, flags in every run."""

import copy
import dataclasses

import pytest
import torch

from sparsity_lab import masks, recipes, registry
from sparsity_lab.phenomena import collapse, occam, scale, shuffle, structure, tickets
from sparsity_lab.train import fit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPARSITY_LAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield recipes.task("lenet300", "teacher_student", seed=0, n_samples=300, dim=8, n_classes=3)


def _weights(model):
    return {k: v.clone() for k, v in masks.plain_state_dict(model).items()}


def test_fit_recipe_replays_the_recipe_dense_model(tiny):
    # an independent run of the dense recipe, not cached: the replay must be the same run
    reference, _ = recipes.train_dense(tiny, epochs=2, cache_dir=False, progress=False)
    replay = tiny.build()
    recipe = recipes.recipe_for(tiny.model_name, tiny.data_name)
    structure.fit_recipe(replay, tiny, recipe=dataclasses.replace(recipe, epochs=2))
    for name, value in reference.state_dict().items():
        assert torch.allclose(replay.state_dict()[name], value), name


def test_weights_at_step_match_the_lottery_rewinding_point(tiny):
    recipe = recipes.recipe_for(tiny.model_name, tiny.data_name)
    train, val, _ = tiny.loaders(recipe.batch_size)
    imp = registry.get("imp")(0.5, rounds=1, rewind="step", rewind_step=3)
    model = tiny.build()
    next(imp.rounds_of(model))  # round 0: IMP itself takes the rewinding point
    fit(model, train, val, seed=tiny.seed, callbacks=[imp], **recipe.training())
    got = tickets.weights_at_step(tiny, 3, recipe)
    for name, value in imp.rewind_point.items():
        assert torch.allclose(got[name], value), name
    assert not all(torch.equal(got[k], v) for k, v in tiny.build().state_dict().items())
    start = tickets.weights_at_step(tiny, 0, recipe)
    assert all(torch.equal(start[k], v) for k, v in tiny.build().state_dict().items())


def test_ticket_rounds_follow_the_iterative_schedule_and_the_recipe(tiny):
    table = tickets.ticket_rounds(tiny, 0.75, rounds=2, epochs=1, dense_epochs=1)
    _, _, info = recipes.dense(tiny.model_name, tiny.data_name, tiny.seed, epochs=1, **tiny.options)
    dense = table[table["round"] == 0].iloc[0]
    assert dense["network"] == "dense"
    assert dense["val_accuracy"] == pytest.approx(info["val_accuracy"])
    # round r keeps (1 - s)^(r / R) of the weights
    for r in (1, 2):
        part = table[table["round"] == r]
        assert set(part["network"]) == set(tickets.NETWORKS)
        assert part["sparsity"].iloc[0] == pytest.approx(1 - 0.25 ** (r / 2))
    assert "flags" in table.columns


def test_ticket_rounds_leave_the_networks_they_keep_unchanged(tiny):
    """A subset of the networks, or the baselines in the last round only, trains fewer
    networks; those it trains come out exactly as in the full call (each starts from the
    task's seed alone).  The theta_0 line still trains, unreported, for the baselines."""
    full = tickets.ticket_rounds(tiny, 0.75, rounds=2, epochs=1, dense_epochs=1)
    columns = ["round", "network", "sparsity", "val_accuracy", "test_accuracy", "flags"]

    def same_rows(part):
        rows = full.merge(part[columns], on=["round", "network"], suffixes=("", "_part"))
        assert len(rows) == len(part)
        for c in columns[2:]:
            assert (rows[c] == rows[f"{c}_part"]).all(), c

    last = tickets.ticket_rounds(tiny, 0.75, rounds=2, epochs=1, dense_epochs=1, baselines="last")
    assert set(last[last["round"] == 1]["network"]) == set(tickets.NETWORKS[:2])
    assert set(last[last["round"] == 2]["network"]) == set(tickets.NETWORKS)
    same_rows(last)
    baselines = tickets.ticket_rounds(
        tiny, 0.75, rounds=2, epochs=1, dense_epochs=1, networks=tickets.NETWORKS[2:]
    )
    assert set(baselines["network"]) == {"dense", *tickets.NETWORKS[2:]}
    same_rows(baselines)
    thetak = tickets.ticket_rounds(
        tiny, 0.75, rounds=2, epochs=1, dense_epochs=1, networks=tickets.NETWORKS[1:2]
    )
    assert set(thetak["network"]) == {"dense", tickets.NETWORKS[1]}
    same_rows(thetak)
    with pytest.raises(ValueError, match="networks must be some of"):
        tickets.ticket_rounds(tiny, 0.75, rounds=2, networks=["ticket"])
    with pytest.raises(ValueError, match="baselines must be"):
        tickets.ticket_rounds(tiny, 0.75, rounds=2, baselines="first")


def test_shuffle_arms_start_rescaled_with_the_same_layer_counts(tiny):
    found = shuffle.masks_found(tiny, "snip", 0.8, "init")
    shuffled = recipes.random_like(found, tiny.seed)
    for name in found:
        assert int(shuffled[name].sum()) == int(found[name].sum())
    # the trained mask is global magnitude on the recipe's dense model (top-k by hand)
    trained = shuffle.masks_found(tiny, "magnitude", 0.8, "trained", dense_epochs=1)
    _, dense, _ = recipes.dense(
        tiny.model_name, tiny.data_name, tiny.seed, epochs=1, **tiny.options
    )
    w = torch.cat([masks.weight(dense, n).abs().flatten() for n in trained])
    kept = torch.cat([trained[n].flatten() for n in trained])
    assert int(kept.sum()) == w.numel() - round(0.8 * w.numel())
    assert w[kept].min() >= w[~kept].max()
    out = shuffle.shuffle_experiment(tiny, "snip", 0.8, "init", epochs=1)
    assert set(out["original"]) == {"val_accuracy", "test_accuracy", "flags"}


def test_masks_at_init_leave_the_model_alone_and_match_prune_at_init(tiny):
    model = tiny.build()
    before = _weights(model)
    batch = tuple(next(iter(tiny.loaders()[0])))
    found = collapse.masks_at_init(model, "snip", 0.9, batch, seed=0)
    assert not masks.masks(model)
    assert all(torch.equal(v, before[k]) for k, v in _weights(model).items())
    pruned = collapse.prune_at_init(copy.deepcopy(model), "snip", 0.9, data=batch, seed=0)
    for name, mask in masks.masks(pruned).items():
        assert torch.equal(found[name], mask.bool())
    # a sparse start rescales each unit's kept weights by sqrt(fan_in / kept)
    start = recipes.sparse_start(tiny.build(), found)
    w0, w1 = masks.dense_weight(tiny.build(), "fc1.weight"), masks.weight(start, "fc1.weight")
    keep = found["fc1.weight"]
    row = int(keep.sum(dim=1).argmax())
    factor = (keep.shape[1] / keep[row].sum()).sqrt()
    assert torch.allclose(w1[row][keep[row]], w0[row][keep[row]] * factor)


def test_noisy_task_keeps_clean_evaluation_labels_and_is_not_default_data(tiny):
    noisy = occam.noisy_task(tiny, 0.5)
    assert noisy.options == {**tiny.options, "label_noise": 0.5}
    assert occam.noisy_task(recipes.task("lenet300", "digits"), 0.1).default_data is False
    assert torch.equal(noisy.bundle.val.tensors[1], tiny.bundle.val.tensors[1])
    assert torch.equal(noisy.bundle.test.tensors[1], tiny.bundle.test.tensors[1])
    changed = (noisy.bundle.train.tensors[1] != tiny.bundle.train.tensors[1]).float().mean()
    assert float(changed) == pytest.approx(0.5, abs=0.01)
    assert occam.noisy_task(tiny, 0.0) is tiny


def test_occam_curve_rows_and_paired_regions(tiny):
    curve = occam.occam_curve(tiny, [0.5, 0.9], noise=0.2, epochs=1, finetune_epochs=1)
    assert list(curve["sparsity"]) == [0.0, 0.5, 0.9]
    assert {"val_accuracy", "test_accuracy", "flags", "finetune_flops"} <= set(curve.columns)
    assert curve["finetune_flops"].iloc[2] < curve["finetune_flops"].iloc[1]
    regions = occam.paired_regions(["better", "no clear difference", "worse", "one seed"])
    assert regions == ["A", "B", "C", "?"]


def test_large_sparse_reaches_its_sparsity_and_reports_flags(tiny):
    rows = scale.large_sparse_vs_small_dense(tiny, 0.8, epochs=2)
    assert [r["model"] for r in rows][0] == "large sparse"
    large = tiny.build()
    assert rows[0]["nonzeros"] == pytest.approx(0.2 * scale.cost(large, "nonzeros"), rel=0.02)
    assert all("flags" in r and 0 <= r["test_accuracy"] <= 1 for r in rows)

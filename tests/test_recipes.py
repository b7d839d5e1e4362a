"""Recipes: task layouts and mismatches, the dense checkpoint cache, prune and fine-tune."""

import copy
import math
import subprocess
import sys

import pytest
import torch

import sparsity_lab as sl
from sparsity_lab import masks, one_shot_runs, recipes

# LeNet-300-100 on 8x8 digits: weights counted by hand, and how many 80% sparsity keeps.
LENET300_DIGITS_WEIGHTS = 64 * 300 + 300 * 100 + 100 * 10  # 50200
KEPT_AT_80 = LENET300_DIGITS_WEIGHTS - round(0.8 * LENET300_DIGITS_WEIGHTS)  # 10040
EPOCHS = 5  # enough for digits to reach ~90% dense accuracy in a fraction of a second


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def digits_task() -> recipes.Task:
    return recipes.task("lenet300", "digits", seed=0)


# --- task ---------------------------------------------------------------------------------


def test_task_flattens_digits_for_an_mlp_and_keeps_images_for_a_cnn(digits_task):
    flat = digits_task.bundle
    images = recipes.task("lenet5", "digits", seed=0).bundle
    assert flat.input_shape == (64,)
    assert images.input_shape == (1, 8, 8)
    x_flat, y_flat = flat.train.tensors
    x_img, y_img = images.train.tensors
    assert x_flat.shape[1:] == (64,)
    assert x_img.shape[1:] == (1, 8, 8)
    # the same split, only laid out differently
    assert torch.equal(x_img.reshape(len(x_img), 64), x_flat)
    assert torch.equal(y_img, y_flat)


def test_task_builds_a_model_that_reads_its_data(digits_task):
    for t in (digits_task, recipes.task("lenet5", "digits", seed=0)):
        model = t.build()
        x, _ = t.bundle.train[:5]
        assert model(x).shape == (5, 10)


def test_task_build_is_seeded(digits_task):
    a, b = digits_task.build(), digits_task.build()
    assert _states_equal(a.state_dict(), b.state_dict())
    other = recipes.task("lenet300", "digits", seed=1).build()
    assert not torch.equal(a.fc1.weight, other.fc1.weight)


@pytest.mark.parametrize(
    ("model", "data"),
    [
        ("lenet5", "mnist1d"),  # a 2-D CNN on 1-D signals
        ("resnet_small", "teacher_student"),
        ("tiny_transformer", "digits"),  # a token model on images
        ("lenet300", "text"),  # token ids into an MLP
    ],
)
def test_task_mismatch_names_model_and_data(model, data):
    with pytest.raises(ValueError) as err:
        recipes.task(model, data)
    assert repr(model) in str(err.value)
    assert repr(data) in str(err.value)


def test_task_unknown_model_suggests_the_right_one():
    with pytest.raises(KeyError, match="lenet300"):
        recipes.task("lenet30", "digits")


# --- train_dense and its cache ------------------------------------------------------------


def test_train_dense_caches_by_configuration(digits_task, tmp_path):
    model, first = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.pt"))
    assert first["cached"] is False
    assert len(files) == 1

    again, second = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert second["cached"] is True
    assert _states_equal(model.state_dict(), again.state_dict())
    assert second["val_accuracy"] == first["val_accuracy"]
    assert second["test_accuracy"] == first["test_accuracy"]
    assert list(tmp_path.glob("*.pt")) == files

    # another number of epochs is another model, so another checkpoint
    _, third = recipes.train_dense(digits_task, epochs=1, cache_dir=tmp_path)
    assert third["cached"] is False
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_two_processes_wanting_one_model_train_it_once(tmp_path):
    # two notebooks of `make book` side by side: one trains, the other waits and loads
    # (both start training at the same moment: each waits for a line on stdin once imported)
    code = (
        "import sys; from sparsity_lab import recipes; "
        "t = recipes.task('lenet300', 'digits', seed=0); print('ready', flush=True); "
        "sys.stdin.readline(); "
        "_, info = recipes.train_dense(t, epochs=5, cache_dir=sys.argv[1], progress=False); "
        "print(info['cached'], info['test_accuracy'])"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    assert [run.stdout.readline() for run in runs] == ["ready\n"] * 2
    for run in runs:
        run.stdin.write("go\n")
        run.stdin.flush()
    outputs = [run.communicate(timeout=300)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert sorted(cached for cached, _ in outputs) == ["False", "True"]
    assert outputs[0][1] == outputs[1][1]  # the same model
    assert len(list(tmp_path.glob("*.pt"))) == 1


def test_cache_key_covers_the_training_data(tmp_path):
    """Data options that change only the examples (here the labelling teacher's width)
    must not load a checkpoint trained on other examples."""
    wide = recipes.task("lenet300", "teacher_student", seed=0, n_samples=400, hidden=32)
    narrow = recipes.task("lenet300", "teacher_student", seed=0, n_samples=400, hidden=8)
    assert wide.bundle.input_shape == narrow.bundle.input_shape
    assert not torch.equal(wide.bundle.train.tensors[1], narrow.bundle.train.tensors[1])
    _, first = recipes.train_dense(wide, epochs=1, cache_dir=tmp_path)
    _, second = recipes.train_dense(narrow, epochs=1, cache_dir=tmp_path)
    assert first["cached"] is False
    assert second["cached"] is False
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_cache_key_hashes_dense_training_code_only():
    """Editing the fine-tuning protocol must keep every cached dense model; editing what
    trains it (here the training loop's module) must not load a stale one."""
    import inspect

    sources = recipes._dense_training_sources()
    assert inspect.getsource(recipes.train_dense) in sources
    assert inspect.getsource(recipes.Task) in sources
    protocol = [recipes.finetune, recipes.finetune_and_measure, recipes.random_like]
    for function in protocol:
        assert not any(inspect.getsource(function) in source for source in sources)
    assert inspect.getsource(sl.train.fit) in "".join(sources)
    # what training imports to evaluate (its mode handling) counts as training code
    assert inspect.getsource(sl.modes.evaluating) in "".join(sources)
    # the loop drives its callbacks through a Sparsifier, so that counts too
    assert inspect.getsource(sl.sparsifier.Sparsifier) in "".join(sources)


def test_corrupt_checkpoint_is_retrained_and_replaced(digits_task, tmp_path):
    model, _ = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    path.write_bytes(b"\x00 not a checkpoint \xff" * 10)

    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        retrained, info = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert info["cached"] is False
    # training is deterministic, so retraining gives back the same model ...
    assert _states_equal(model.state_dict(), retrained.state_dict())
    # ... and the garbage is replaced by a checkpoint that loads
    assert _states_equal(torch.load(path, weights_only=True)["state"], retrained.state_dict())
    # no .tmp left behind, only the checkpoint's lock file (see paths.exclusive)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{path.name}.lock", path.name]
    _, reloaded = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert reloaded["cached"] is True


def test_cache_dir_false_writes_nothing(digits_task, tmp_path, monkeypatch):
    default = tmp_path / "default"
    monkeypatch.setenv("SPARSITY_LAB_CACHE", str(default))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)

    _, info = recipes.train_dense(digits_task, epochs=1, cache_dir=False)
    assert info["cached"] is False
    assert list(tmp_path.rglob("*")) == []

    # None means the default directory, which the environment variable moves
    assert recipes.default_cache_dir() == default
    recipes.train_dense(digits_task, epochs=1, cache_dir=None)
    assert sorted(p.suffix for p in default.iterdir()) == [".lock", ".pt"]


# --- prune_and_finetune -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_model(digits_task) -> torch.nn.Module:
    model, _ = recipes.train_dense(digits_task, epochs=EPOCHS, cache_dir=False)
    return model


def test_the_pruned_stage_has_its_own_flags(digits_task, dense_model):
    """A layer emptied by pruning is flagged before fine-tuning, on validation data."""
    model = copy.deepcopy(dense_model)
    sl.prune(model, "magnitude", 0.5, targets=["fc3.weight"])
    masks.set_mask(model, "fc3.weight", torch.zeros_like(masks.weight(model, "fc3.weight")))
    result = recipes.finetune_and_measure(model, digits_task, None, finetune_epochs=1)
    assert "layer pruned to 100%" in result["pruned_flags"]
    assert "at chance level" in result["pruned_flags"]


def test_prune_and_finetune_keeps_masked_weights_zero(digits_task, dense_model):
    model = copy.deepcopy(dense_model)
    result = recipes.prune_and_finetune(model, digits_task, "magnitude", 0.8, finetune_epochs=2)

    assert set(result) == {
        "measured_sparsity",
        "pruned_accuracy",
        "val_accuracy",
        "test_accuracy",
        "finetune_epochs",
        "finetune_flops",
        "flags",
        "pruned_flags",
    }
    assert result["measured_sparsity"] == sl.sparsity(model)
    assert result["flags"] == ""  # 80% on digits after fine-tuning: nothing to flag
    assert result["pruned_flags"] == ""
    found = masks.masks(model)
    assert list(found) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert sum(int(m.sum()) for m in found.values()) == KEPT_AT_80
    assert result["measured_sparsity"] == pytest.approx(0.8, abs=1e-12)
    for name, mask in found.items():
        assert torch.all(masks.weight(model, name)[mask == 0] == 0), name
        # the stored weight stays zero too, so removing the masks would keep the sparsity
        assert torch.all(masks.dense_weight(model, name)[mask == 0] == 0), name


def test_prune_dense_and_finetune_is_prune_and_finetune_of_the_dense_model(digits_task):
    """The cached library call computes what the direct calls do on :func:`recipes.dense`'s
    model: pruned on the first calibration batches, or with each layer's mask shuffled."""
    options = {"dense_epochs": EPOCHS, "calibration_batches": 2, "finetune_epochs": 1}
    _, dense, _ = recipes.dense("lenet300", "digits", 0, epochs=EPOCHS)
    data = [batch for _, batch in zip(range(2), digits_task.loaders()[0], strict=False)]
    direct = recipes.prune_and_finetune(
        copy.deepcopy(dense), digits_task, "snip", 0.8, finetune_epochs=1, data=data
    )
    assert one_shot_runs.prune_dense_and_finetune(digits_task, "snip", 0.8, **options) == direct

    found = masks.masks(sl.prune(copy.deepcopy(dense), "magnitude", 0.8))
    by_hand = copy.deepcopy(dense)
    for name, mask in recipes.random_like(found, digits_task.seed).items():
        masks.attach(by_hand, name, mask)
    expected = recipes.finetune_and_measure(by_hand, digits_task, 0.8, finetune_epochs=1)
    shuffled = one_shot_runs.prune_dense_and_finetune(
        digits_task, "magnitude", 0.8, shuffled=True, **options
    )
    assert shuffled == expected


def test_magnitude_masks_keep_the_largest_dense_weights(digits_task, dense_model):
    """Global magnitude pruning keeps the KEPT_AT_80 largest |w| over all three layers."""
    names = ["fc1.weight", "fc2.weight", "fc3.weight"]
    dense = [dense_model.get_parameter(n).detach() for n in names]
    magnitudes = torch.cat([w.abs().flatten() for w in dense])
    threshold = magnitudes.topk(KEPT_AT_80).values.min()

    model = copy.deepcopy(dense_model)
    recipes.prune_and_finetune(model, digits_task, "magnitude", 0.8, finetune_epochs=1)
    for name, w in zip(names, dense, strict=True):
        expected = w.abs() >= threshold
        assert torch.equal(masks.get_mask(model, name).bool(), expected), name


def test_finetuned_sparse_model_is_well_above_chance(digits_task, dense_model):
    model = copy.deepcopy(dense_model)
    result = recipes.prune_and_finetune(model, digits_task, "magnitude", 0.8, finetune_epochs=2)
    # ten balanced classes: chance is 0.1
    assert result["test_accuracy"] > 0.5
    assert result["val_accuracy"] > 0.5
    # the accuracy reported is the model's own, measured independently here
    _, _, test = digits_task.loaders()
    x, y = test.dataset.tensors
    with torch.no_grad():
        correct = int((model.eval()(x).argmax(1) == y).sum())
    assert result["test_accuracy"] == pytest.approx(correct / len(y), abs=1e-12)


def test_no_finetuning_reports_the_pruned_model(digits_task, dense_model):
    model = copy.deepcopy(dense_model)
    result = recipes.prune_and_finetune(model, digits_task, "magnitude", 0.8, finetune_epochs=0)
    assert result["val_accuracy"] == result["pruned_accuracy"]


def test_same_seed_same_numbers():
    def run(seed: int):
        t = recipes.task("lenet300", "digits", seed=seed)
        model, dense = recipes.train_dense(t, epochs=2, cache_dir=False)
        result = recipes.prune_and_finetune(model, t, "magnitude", 0.8, finetune_epochs=1)
        return dense, result, model.state_dict()

    dense_a, result_a, state_a = run(0)
    dense_b, result_b, state_b = run(0)
    assert dense_a == dense_b
    assert result_a == result_b
    assert _states_equal(state_a, state_b)
    _, _, state_c = run(1)
    assert not _states_equal(state_a, state_c)


# --- the recipe table -----------------------------------------------------------------------


def test_every_tuned_recipe_states_its_expectation_and_source():
    assert {("lenet300", "mnist"), ("lenet5", "mnist"), ("cnn1d", "mnist1d")} <= set(
        recipes.RECIPES
    )
    for setting, recipe in recipes.RECIPES.items():
        assert 0 < recipe.expected_test_accuracy < 1, setting
        assert "default" not in recipe.source, setting
    rows = recipes.recipes_table()
    assert len(rows) == len(recipes.RECIPES)
    assert {"model", "data", "epochs", "optimizer", "lr", "expected_test_accuracy"} <= set(rows[0])


def test_mnist1d_cnn_recipe_is_the_papers():
    recipe = recipes.recipe_for("cnn1d", "mnist1d")
    assert (recipe.optimizer, recipe.lr, recipe.batch_size) == ("adam", 1e-2, 100)
    assert recipe.expected_test_accuracy >= 0.90  # the target; the paper has 94%


def test_a_setting_without_a_recipe_gets_the_generic_default():
    assert recipes.recipe_for("resmlp", "digits") is recipes.DEFAULT_RECIPE
    assert recipes.DEFAULT_RECIPE.expected_test_accuracy is None


def test_train_dense_trains_with_the_recipe_and_flags_a_weak_baseline(digits_task, monkeypatch):
    weak = recipes.Recipe(epochs=1, lr=0.001, expected_test_accuracy=0.99, source="test")
    monkeypatch.setitem(recipes.RECIPES, ("lenet300", "digits"), weak)
    model, info = recipes.train_dense(digits_task, cache_dir=False)
    assert info["recipe"] == weak
    assert info["test_accuracy"] < 0.98
    assert info["flags"].startswith("dense baseline below its recipe")
    # the same by hand: one epoch of SGD at lr 0.001 with a cosine schedule
    by_hand = digits_task.build()
    train, val, _ = digits_task.loaders()
    sl.train.fit(by_hand, train, val, seed=0, **weak.training())
    assert _states_equal(model.state_dict(), by_hand.state_dict())
    # overriding the recipe (a smoke run) or changing the data turns the check off
    _, short = recipes.train_dense(digits_task, epochs=2, cache_dir=False)
    assert short["flags"] == ""
    small = recipes.task("lenet300", "digits", seed=0)
    small.options = {"n_train": 100}
    assert recipes.train_dense(small, cache_dir=False)[1]["flags"] == ""


# --- checkpoints that cannot be trusted -----------------------------------------------------


def _retrains_like_a_fresh_run(digits_task, tmp_path, damage):
    model, _ = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.pt")
    damage(path)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        retrained, info = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert info["cached"] is False
    assert _states_equal(model.state_dict(), retrained.state_dict())
    assert recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)[1]["cached"]


def test_a_wrong_shaped_checkpoint_leaves_nothing_in_the_retrained_model(digits_task, tmp_path):
    def wrong_shape(path):
        record = torch.load(path, weights_only=True)
        state = dict(record["state"])
        state["fc1.weight"] = torch.zeros(3, 3)  # partly loadable: the biases still fit
        torch.save({"state": state, "digest": recipes._state_digest(state)}, path)

    _retrains_like_a_fresh_run(digits_task, tmp_path, wrong_shape)


def test_a_checkpoint_with_flipped_bytes_is_retrained(digits_task, tmp_path):
    def flip(path):
        record = torch.load(path, weights_only=True)
        record["state"]["fc2.bias"][0] += 1.0  # a plausible value, but not the saved one
        torch.save(record, path)

    _retrains_like_a_fresh_run(digits_task, tmp_path, flip)


def test_a_checkpoint_with_nan_weights_is_retrained(digits_task, tmp_path):
    def poison(path):
        record = torch.load(path, weights_only=True)
        record["state"]["fc3.weight"][0, 0] = float("nan")
        record["digest"] = recipes._state_digest(record["state"])
        torch.save(record, path)

    _retrains_like_a_fresh_run(digits_task, tmp_path, poison)


def test_concurrent_saves_use_their_own_temporary_files(digits_task, tmp_path):
    import concurrent.futures

    model = digits_task.build()
    path = tmp_path / "same.pt"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for future in [pool.submit(recipes._save_checkpoint, model, path) for _ in range(12)]:
            future.result()  # raises if one writer lost its temporary file to another
    assert [p.name for p in tmp_path.iterdir()] == ["same.pt"]


def test_an_unwritable_cache_fails_before_training(digits_task, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the cache")

    monkeypatch.setattr(recipes, "fit", no_training)
    with pytest.raises(OSError, match="cache_dir=False"):
        recipes.train_dense(digits_task, epochs=1, cache_dir=blocker / "cache")


# --- the shared protocol --------------------------------------------------------------------


def test_sparse_start_rescales_each_unit_to_its_kept_fan_in():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 3))
    before = model[0].weight.detach().clone()
    mask = torch.zeros(3, 8)
    mask[0, :2] = 1  # keeps 2 of 8: factor 2
    mask[1, :8] = 1  # keeps all: factor 1
    mask[2, :1] = 1  # keeps 1 of 8: factor sqrt(8)
    recipes.sparse_start(model, {"0.weight": mask})
    expected = before * mask * torch.tensor([2.0, 1.0, 8**0.5]).unsqueeze(1)
    torch.testing.assert_close(masks.weight(model, "0.weight"), expected)


def test_random_like_keeps_every_layers_count_and_moves_the_weights():
    torch.manual_seed(0)
    found = {"a": (torch.rand(30, 20) > 0.9).float(), "b": (torch.rand(10, 30) > 0.5).float()}
    shuffled = recipes.random_like(found, seed=1)
    for name, mask in found.items():
        assert int(shuffled[name].sum()) == int(mask.sum())
        assert not torch.equal(shuffled[name], mask)
    assert torch.equal(recipes.random_like(found, seed=1)["a"], shuffled["a"])


def test_training_flops_is_three_sparse_forward_passes(digits_task, dense_model):
    model = copy.deepcopy(dense_model)
    dense = 3 * 2 * LENET300_DIGITS_WEIGHTS  # a multiply and an add per weight, 3 passes
    assert recipes.training_flops(model, 1, 1) == dense
    sl.prune(model, "magnitude", 0.8)
    sparse = 3 * 2 * KEPT_AT_80
    assert recipes.training_flops(model, 100, 2) == 100 * 2 * sparse


def test_evaluate_run_flags_an_emptied_network(digits_task, dense_model):
    model = copy.deepcopy(dense_model)
    healthy = recipes.evaluate_run(model, digits_task)
    assert healthy["flags"] == ""
    masks.attach(model, "fc2.weight", torch.zeros(100, 300))
    run = recipes.evaluate_run(model, digits_task, target_sparsity=0.9)
    for expected in (
        "layer pruned to 100% (fc2.weight)",
        "disconnected",
        "at chance level",
        "never predicted",
        "target sparsity not reached",
    ):
        assert expected in run["flags"], expected
    with pytest.raises(ValueError, match="'val' or 'test'"):
        recipes.evaluate_run(model, digits_task, split="train")


def test_dense_trains_once_and_hands_out_independent_copies(tmp_path):
    t, first, info = recipes.dense("lenet300", "digits", 0, epochs=1, cache_dir=tmp_path)
    _, second, again = recipes.dense("lenet300", "digits", 0, epochs=1, cache_dir=tmp_path)
    assert first is not second
    assert _states_equal(first.state_dict(), second.state_dict())
    assert info == again
    sl.prune(first, "magnitude", 0.9)
    _, third, _ = recipes.dense("lenet300", "digits", 0, epochs=1, cache_dir=tmp_path)
    assert masks.masks(third) == {}
    assert len(list(tmp_path.glob("*.pt"))) == 1
    assert t.seed == 0


def test_finetune_and_measure_on_a_random_like_baseline(digits_task, dense_model):
    magnitude = copy.deepcopy(dense_model)
    by_pruning = recipes.prune_and_finetune(magnitude, digits_task, "magnitude", 0.8)
    model = copy.deepcopy(dense_model)
    for name, mask in recipes.random_like(masks.masks(magnitude), seed=0).items():
        masks.attach(model, name, mask)
    result = recipes.finetune_and_measure(model, digits_task, 0.8)
    assert set(result) == set(by_pruning)
    assert result["measured_sparsity"] == pytest.approx(0.8, abs=1e-12)
    assert result["finetune_flops"] == by_pruning["finetune_flops"]  # same counts, same cost
    assert result["test_accuracy"] == recipes.evaluate_run(model, digits_task)["accuracy"]


def test_the_chars_task_builds_its_recipes_model_and_reports_perplexity():
    t = recipes.task("tiny_transformer", "chars", seed=0, n_train=2000, n_val=200, n_test=200)
    model = t.build()
    assert model.pool == "last"
    assert model.head.out_features == t.bundle.n_classes
    run = recipes.evaluate_run(model, t)
    assert run["perplexity"] == pytest.approx(math.exp(run["loss"]))
    assert "never predicted" not in run["flags"]  # not checked for next-token data


def test_dense_with_trackers_is_the_dense_model_and_calls_its_trackers(tmp_path):
    from sparsity_lab.callbacks import Callback
    from sparsity_lab.criteria.first_order import KarninScores

    class Steps(Callback):
        count = 0

        def on_step_end(self, trainer):
            self.count += 1

    given = {"karnin": KarninScores(), "steps": Steps()}
    t, model, trackers, info = recipes.dense_with_trackers("lenet300", "digits", 0, given, epochs=2)
    _, cached, dense_info = recipes.dense("lenet300", "digits", 0, epochs=2, cache_dir=tmp_path)
    assert _states_equal(model.state_dict(), cached.state_dict())  # the trackers only read
    assert info == {k: v for k, v in dense_info.items() if k != "cached"}
    assert trackers is given
    assert trackers["steps"].count == 2 * len(t.loaders()[0])  # every step of both epochs
    karnin = trackers["karnin"]
    assert torch.equal(karnin.initial["fc1.weight"], t.build().fc1.weight.detach().double())
    assert all(float(s.abs().sum()) > 0 for s in karnin.scores.values())
    _, other, _, _ = recipes.dense_with_trackers("lenet300", "digits", 1, {}, epochs=2)
    assert not _states_equal(model.state_dict(), other.state_dict())


def _recorded(task, cache_dir, monkeypatch, settings, key):
    """Two 2-epoch trainings of ``task``: uncached without ``key`` in its info (only the
    settings of ``recipes.<settings>`` record it), then cached with its setting added."""
    plain, info = recipes.train_dense(task, epochs=2, cache_dir=False)
    assert key not in info
    monkeypatch.setattr(recipes, settings, {(task.model_name, task.data_name)})
    model, first = recipes.train_dense(task, epochs=2, cache_dir=cache_dir)
    return plain, model, first


def _tracker_states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        _states_equal(x, y)
        for name in a
        for x, y in zip(a[name].state_dict().values(), b[name].state_dict().values(), strict=True)
    )


def test_tracker_scores_are_kept_beside_the_checkpoint_and_are_those_of_a_tracked_training(
    digits_task, tmp_path, monkeypatch
):
    plain, model, first = _recorded(
        digits_task, tmp_path, monkeypatch, "TRACKED_SCORES", "trackers"
    )
    assert _states_equal(model.state_dict(), plain.state_dict())  # the trackers only read
    # the same sums as trackers handed to a training of their own (02b's way)
    given = {name: cls() for name, cls in recipes.RECORDED_TRACKERS.items()}
    *_, by_hand, _ = recipes.dense_with_trackers("lenet300", "digits", 0, given, epochs=2)
    assert _tracker_states_equal(first["trackers"], by_hand)
    assert all(float(s.abs().sum()) > 0 for s in first["trackers"]["karnin"].scores.values())
    again, second = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert second["cached"] and _tracker_states_equal(second["trackers"], by_hand)
    # a pruning by the cached scores keeps the weights the trained trackers keep
    for name, tracker in second["trackers"].items():
        from_cache = sl.masks.masks(sl.prune(copy.deepcopy(again), name, 0.8, tracker=tracker))
        trained = sl.masks.masks(sl.prune(copy.deepcopy(model), name, 0.8, tracker=by_hand[name]))
        assert _states_equal(from_cache, trained)
    # damaged or missing scores: the model trains again and records them, the same
    (scores_file,) = tmp_path.glob("*-scores-*.pt")
    record = torch.load(scores_file, weights_only=True)
    record["trackers"]["movement"]["scores"]["fc2.weight"][0, 0] += 1.0
    torch.save(record, scores_file)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        _, third = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert not third["cached"] and _tracker_states_equal(third["trackers"], by_hand)
    scores_file.unlink()
    _, fourth = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert not fourth["cached"] and scores_file.exists()


def test_dense_hands_out_copies_of_the_recorded_trackers(tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "TRACKED_SCORES", {("lenet300", "digits")})
    monkeypatch.setattr(recipes, "_DENSE_MODELS", {})
    *_, first = recipes.dense("lenet300", "digits", 0, epochs=1, cache_dir=tmp_path)
    first["trackers"]["movement"].scores["fc1.weight"].zero_()  # a caller changes its copy
    *_, second = recipes.dense("lenet300", "digits", 0, epochs=1, cache_dir=tmp_path)
    assert float(second["trackers"]["movement"].scores["fc1.weight"].abs().sum()) > 0


def test_train_sparse_is_the_methods_fit_with_the_dense_recipes_settings(digits_task):
    from sparsity_lab.methods.dynamic import StaticSparse

    recipe = recipes.recipe_for("lenet300", "digits")
    model, t, flops, history = recipes.train_sparse(
        StaticSparse(0.8, budget="uniform", seed=0), "lenet300", "digits", 0, epochs=2
    )
    # by hand: a fresh model of the task, the recipe's loaders and optimizer settings
    by_hand = digits_task.build()
    train, val, _ = digits_task.loaders(recipe.batch_size)
    StaticSparse(0.8, budget="uniform", seed=0).fit(
        by_hand, train, val, seed=0, progress=False, **{**recipe.training(), "epochs": 2}
    )
    assert _states_equal(model.state_dict(), by_hand.state_dict())
    assert t.seed == 0 and t.model_name == "lenet300"
    assert flops.epochs == 2 and len(history["epoch"]) == 2
    # a fixed uniform mask at 80%: 3 passes of the kept weights per example and epoch
    assert flops.total == pytest.approx(2 * len(t.bundle.train) * 3 * 2 * KEPT_AT_80, rel=1e-3)
    for name, mask in masks.masks(model).items():
        assert torch.all(masks.weight(model, name)[mask == 0] == 0), name


def test_train_sparse_trains_a_given_model_in_place():
    from sparsity_lab.methods.dynamic import StaticSparse

    t = recipes.task("lenet300", "digits", seed=1)
    given, by_hand = t.build(), t.build()
    with torch.no_grad():  # a model unlike the task's fresh one, so that it must be the one used
        for m in (given, by_hand):
            m.fc1.weight.mul_(2.0)
    model, *_ = recipes.train_sparse(
        StaticSparse(0.5, seed=1), "lenet300", "digits", 1, epochs=1, model=given
    )
    assert model is given
    recipe = recipes.recipe_for("lenet300", "digits")
    train, val, _ = t.loaders(recipe.batch_size)
    StaticSparse(0.5, seed=1).fit(
        by_hand, train, val, seed=1, progress=False, **{**recipe.training(), "epochs": 1}
    )
    assert _states_equal(given.state_dict(), by_hand.state_dict())


def test_pruned_after_training_adds_the_dense_training_to_the_fine_tuning(digits_task):
    row = recipes.pruned_after_training("lenet300", "digits", 0, 0.8, epochs=3, finetune_epochs=1)
    t, model, _ = recipes.dense("lenet300", "digits", 0, epochs=3)
    by_hand = recipes.prune_and_finetune(model, t, "magnitude", 0.8, finetune_epochs=1)
    n = len(t.bundle.train)
    assert row == {
        "test_accuracy": by_hand["test_accuracy"],
        "measured_sparsity": pytest.approx(0.8, abs=1e-12),
        "epochs": 3 + 1,
        # 3 dense epochs of every weight, then one of the kept ones: 3 passes each
        "training_flops": pytest.approx(3 * 2 * n * (3 * LENET300_DIGITS_WEIGHTS + KEPT_AT_80)),
        "flags": by_hand["flags"],
    }


def test_epoch_states_are_kept_beside_the_checkpoint_and_change_no_weight(
    digits_task, tmp_path, monkeypatch
):
    trained, model, first = _recorded(
        digits_task, tmp_path, monkeypatch, "EPOCH_STATES", "epoch_states"
    )
    states = first["epoch_states"]
    assert len(states) == 3  # initialisation and two epochs
    assert _states_equal(states[0], digits_task.build().state_dict())
    assert _states_equal(states[-1], model.state_dict())
    assert not _states_equal(states[1], states[2])
    assert _states_equal(model.state_dict(), trained.state_dict())  # copying changes nothing
    again, second = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert second["cached"] and all(map(_states_equal, second["epoch_states"], states))
    # a checkpoint without its epoch states (or with damaged ones) trains again, the same
    (epochs_file,) = tmp_path.glob("*-epochs.pt")
    record = torch.load(epochs_file, weights_only=True)
    record["states"][1]["fc2.bias"][0] += 1.0  # a plausible value, but not the saved one
    torch.save(record, epochs_file)
    with pytest.warns(UserWarning, match="unreadable checkpoint"):
        _, third = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert not third["cached"] and all(map(_states_equal, third["epoch_states"], states))
    epochs_file.unlink()
    _, fourth = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert not fourth["cached"] and epochs_file.exists()

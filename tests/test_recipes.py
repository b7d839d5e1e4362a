"""Recipes: task layouts and mismatches, the dense checkpoint cache, prune and fine-tune."""

import copy

import pytest
import torch

import sparsity_lab as sl
from sparsity_lab import masks, recipes

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
    files = list(tmp_path.iterdir())
    assert first["cached"] is False
    assert len(files) == 1 and files[0].suffix == ".pt"

    again, second = recipes.train_dense(digits_task, epochs=2, cache_dir=tmp_path)
    assert second["cached"] is True
    assert _states_equal(model.state_dict(), again.state_dict())
    assert second["val_accuracy"] == first["val_accuracy"]
    assert second["test_accuracy"] == first["test_accuracy"]
    assert list(tmp_path.iterdir()) == files

    # another number of epochs is another model, so another checkpoint
    _, third = recipes.train_dense(digits_task, epochs=1, cache_dir=tmp_path)
    assert third["cached"] is False
    assert len(list(tmp_path.glob("*.pt"))) == 2


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
    assert _states_equal(torch.load(path, weights_only=True), retrained.state_dict())
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no .tmp left behind
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
    assert [p.suffix for p in default.iterdir()] == [".pt"]


# --- prune_and_finetune -------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense_model(digits_task) -> torch.nn.Module:
    model, _ = recipes.train_dense(digits_task, epochs=EPOCHS, cache_dir=False)
    return model


def test_prune_and_finetune_keeps_masked_weights_zero(digits_task, dense_model):
    model = copy.deepcopy(dense_model)
    result = recipes.prune_and_finetune(model, digits_task, "magnitude", 0.8, finetune_epochs=2)

    assert set(result) == {"measured_sparsity", "pruned_accuracy", "val_accuracy", "test_accuracy"}
    assert result["measured_sparsity"] == sl.sparsity(model)
    found = masks.masks(model)
    assert list(found) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert sum(int(m.sum()) for m in found.values()) == KEPT_AT_80
    assert result["measured_sparsity"] == pytest.approx(0.8, abs=1e-12)
    for name, mask in found.items():
        assert torch.all(masks.weight(model, name)[mask == 0] == 0), name
        # the stored weight stays zero too, so removing the masks would keep the sparsity
        assert torch.all(masks.dense_weight(model, name)[mask == 0] == 0), name


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

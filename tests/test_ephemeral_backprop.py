"""meProp and SWAT: exact dense gradients at full size, exact sparsity below it."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab import models, registry
from sparsity_lab.ephemeral import backprop as B


def _data(seed=0, batch=4, n_in=7, n_out=5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n_in, generator=gen, requires_grad=True)
    w = torch.randn(n_out, n_in, generator=gen, requires_grad=True)
    b = torch.randn(n_out, generator=gen, requires_grad=True)
    upstream = torch.randn(batch, n_out, generator=gen)
    return x, w, b, upstream


def _grads(fn, x, w, b, upstream):
    for t in (x, w, b):
        t.grad = None
    (fn(x, w, b) * upstream).sum().backward()
    return x.grad.clone(), w.grad.clone(), b.grad.clone()


def test_registered():
    assert registry.get("meprop") is B.meprop
    assert registry.get("swat") is B.swat


def test_meprop_with_full_k_is_exactly_dense():
    x, w, b, up = _data()
    dense = _grads(F.linear, x, w, b, up)
    sparse = _grads(lambda x, w, b: B.meprop(x, w, b, k=5), x, w, b, up)
    for d, s in zip(dense, sparse, strict=True):
        assert torch.equal(d, s)


def test_meprop_keeps_k_errors_per_example():
    x, w, b, up = _data()
    k = 2
    layer = B.MePropLinear(nn.Linear(7, 5), k)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    layer.record = {}
    xin = x.detach().clone().requires_grad_(True)
    (layer(xin) * up).sum().backward()
    sparse = layer.record["grad_output"]
    assert (sparse != 0).sum(dim=1).tolist() == [k] * 4
    # an independent top-k of the upstream error, then the three products by hand
    g = up.numpy()
    keep = np.zeros_like(g)
    for i, row in enumerate(g):
        idx = np.argsort(-np.abs(row), kind="stable")[:k]
        keep[i, idx] = row[idx]
    keep_t = torch.from_numpy(keep)
    torch.testing.assert_close(sparse, keep_t)
    torch.testing.assert_close(xin.grad, keep_t @ w.detach())
    torch.testing.assert_close(layer.weight.grad, keep_t.T @ x.detach())
    torch.testing.assert_close(layer.bias.grad, keep_t.sum(0))
    # one example: exactly k rows of the weight gradient are nonzero
    layer.weight.grad = None
    (layer(x[:1].detach()) * up[:1]).sum().backward()
    assert int(layer.weight.grad.ne(0).any(dim=1).sum()) == k


def test_swat_with_full_densities_is_exactly_dense():
    x, w, b, up = _data(1)
    dense = _grads(F.linear, x, w, b, up)
    sparse = _grads(lambda x, w, b: B.swat(x, w, b, 1.0, 1.0), x, w, b, up)
    for d, s in zip(dense, sparse, strict=True):
        assert torch.equal(d, s)


@pytest.mark.parametrize("values", [1000, 3])  # few values: ties
def test_topk_mask_keeps_the_largest_by_a_stable_sort(values):
    """Against a stable sort of ``|x|`` (ties: the later entry stays), with NaN as the
    largest, as ``topk`` ranks it; shapes over and under the bracketed selection's size."""
    g = torch.Generator().manual_seed(values)
    for shape in [(7, 5), (300, 250)]:
        x = torch.randint(-values, values + 1, shape, generator=g).float()
        x[0, :2] = math.nan
        for density in (0.01, 0.3, 0.5, 1.0):
            n = x.numel()
            k = max(1, round(density * n))
            ranked = x.abs().flatten().nan_to_num(math.inf)
            expected = torch.zeros(n, dtype=torch.bool)
            expected[torch.argsort(ranked, stable=True)[n - k :]] = True
            assert torch.equal(B.topk_mask(x, density), expected.view(shape))


def test_swat_uses_sparse_weights_and_stored_activations():
    x, w, b, up = _data(2)
    layer = B.SWATLinear(nn.Linear(7, 5), weight_density=0.4, act_density=0.25)
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.copy_(b)
    layer.record = {}
    xin = x.detach().clone().requires_grad_(True)
    out = layer(xin)
    (out * up).sum().backward()
    ws, xs = layer.record["weight"], layer.record["input"]
    assert int(ws.ne(0).sum()) == round(0.4 * 35)
    assert int(xs.ne(0).sum()) == round(0.25 * 28)
    # the kept entries are the largest by magnitude (an independent threshold check)
    assert ws.abs()[ws != 0].min() >= w.detach().abs()[ws == 0].max()
    assert xs.abs()[xs != 0].min() >= x.detach().abs()[xs == 0].max()
    torch.testing.assert_close(out, x.detach() @ ws.T + b.detach())
    torch.testing.assert_close(xin.grad, up @ ws)
    torch.testing.assert_close(layer.weight.grad, up.T @ xs)
    # every weight learns: the gradient reaches pruned weights too
    assert int(layer.weight.grad.ne(0).sum()) > int(ws.ne(0).sum())


def test_sparsify_backprop_shares_parameters_and_forward():
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(10,), n_classes=3, hidden=(8, 6))
    x = torch.randn(4, 10)
    before = model(x)
    names = [n for n, _ in model.named_parameters()]
    B.sparsify_backprop(model, "meprop", density=0.5)
    assert isinstance(model.fc1, B.MePropLinear) and model.fc1.k == 4
    assert [n for n, _ in model.named_parameters()] == names
    torch.testing.assert_close(model(x), before)
    model.fc2.record = {}
    F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0])).backward()
    assert (model.fc2.record["grad_output"] != 0).sum(1).le(3).all()


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="positive integer"):
        B.MePropLinear(nn.Linear(3, 3), 0)
    with pytest.raises(ValueError, match=r"weight_density must be in \(0, 1\]"):
        B.SWATLinear(nn.Linear(3, 3), 0.0, 0.5)
    with pytest.raises(ValueError, match="exactly one of k"):
        B.sparsify_backprop(nn.Sequential(nn.Linear(2, 2)), "meprop")
    with pytest.raises(ValueError, match="'meprop' or 'swat'"):
        B.sparsify_backprop(nn.Sequential(nn.Linear(2, 2)), "dense")

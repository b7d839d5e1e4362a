"""The fast 2x2 max-pool is torch's, bit for bit: outputs, indices and gradients."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import grad, vmap

import sparsity_lab as sl
from sparsity_lab import pooling, shrink


@pytest.fixture
def always_strided(monkeypatch):
    """The strided kernel for inputs of every size (it is chosen by size otherwise)."""
    monkeypatch.setattr(pooling, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(pooling, "MIN_ELEMENTS_GRAD", 0)


def inputs():
    torch.manual_seed(0)
    yield torch.randn(3, 4, 8, 6)
    yield torch.relu(torch.randn(3, 4, 8, 6))  # all-zero windows: ties everywhere
    yield torch.randint(0, 3, (2, 5, 6, 6)).float()  # ties among positive values too
    yield torch.randn(4, 10, 12, dtype=torch.float64)  # unbatched (C, H, W)
    yield torch.full((1, 2, 4, 4), -float("inf"))


@pytest.mark.parametrize("x", list(inputs()))
def test_outputs_indices_and_gradients_are_torchs(always_strided, x):
    expected, expected_indices = F.max_pool2d(x, 2, return_indices=True)
    y, indices = pooling._MaxPool2x2.apply(x)
    assert torch.equal(y, expected) and torch.equal(indices, expected_indices)
    x = x.clone().requires_grad_()
    g = torch.randn_like(expected)
    (mine,) = torch.autograd.grad(pooling.max_pool_2x2(x), x, g)
    (theirs,) = torch.autograd.grad(F.max_pool2d(x, 2), x, g)
    assert torch.equal(mine, theirs)
    with torch.no_grad():
        assert torch.equal(pooling.max_pool_2x2(x), expected)


@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("size", [(8, 6), (7, 6), (5, 5), (2, 2)])
def test_the_module_equals_nn_maxpool2d_on_every_size(monkeypatch, strided, size):
    if strided:
        monkeypatch.setattr(pooling, "MIN_ELEMENTS", 0)
    x = torch.randn(3, 4, *size)
    x[0, 0, 0, 0] = float("nan")  # propagated as torch's pooling does
    for ceil_mode in (False, True):
        expected = nn.MaxPool2d(2, ceil_mode=ceil_mode)(x)
        torch.testing.assert_close(pooling.MaxPool2x2(ceil_mode)(x), expected, equal_nan=True)


def test_the_kernel_is_chosen_by_size_and_grad():
    small, large = torch.randn(1, 6, 28, 28), torch.randn(64, 6, 28, 28)
    assert small.numel() < pooling.MIN_ELEMENTS <= large.numel() >= pooling.MIN_ELEMENTS_GRAD
    # torch's kernel leaves its own backward node; the strided one leaves the Function's
    for x, name in ((small, "MaxPool2DWithIndicesBackward0"), (large, "_MaxPool2x2Backward")):
        out = pooling.max_pool_2x2(x.requires_grad_())
        assert type(out.grad_fn).__name__ == name


def test_second_derivatives_and_per_example_gradients_are_torchs(always_strided):
    torch.manual_seed(0)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    v = torch.randn_like(w)

    def results(pool):
        def loss(w, x):
            return (pool(F.conv2d(x, w, padding=1)).tanh() ** 2).sum()

        hvp = grad(lambda p: (grad(loss)(p, x) * v).sum())(w)
        per_example = vmap(grad(loss), in_dims=(None, 0))(w, x.unsqueeze(1))
        first = torch.autograd.grad(loss(w.requires_grad_(), x), w, create_graph=True)[0]
        (double,) = torch.autograd.grad((first * v).sum(), w)
        return hvp, per_example, double

    theirs_all = results(lambda z: F.max_pool2d(z, 2))
    for mine, theirs in zip(results(pooling.max_pool_2x2), theirs_all, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


def test_lenet5_trains_to_the_same_weights_as_with_torchs_pool():
    torch.manual_seed(0)
    ours = sl.models.build("lenet5", input_shape=(1, 28, 28), n_classes=10)
    assert isinstance(ours.pool, pooling.MaxPool2x2)
    theirs = copy.deepcopy(ours)
    theirs.pool = nn.MaxPool2d(2, ceil_mode=True)
    x, y = torch.relu(torch.randn(128, 1, 28, 28)), torch.randint(0, 10, (128,))
    for model in (ours, theirs):
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


class PoolNet(nn.Module):
    """A model without a written-out structure, so shrink traces it."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.pool, self.fc = pool, nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        return self.fc(self.pool(torch.relu(self.conv2(x))).flatten(1))


def test_fx_traces_the_pool_as_one_call_that_shrink_passes_channels_through():
    graph = fx.symbolic_trace(PoolNet(pooling.MaxPool2x2())).graph
    assert [n.target for n in graph.nodes].count(pooling.max_pool_2x2) == 2
    x = torch.randn(2, 1, 16, 16)
    ours = shrink.structure(PoolNet(pooling.MaxPool2x2()), x)
    theirs = shrink.structure(PoolNet(nn.MaxPool2d(2)), x)
    assert ours == theirs
    assert [s.writers for s in ours.spaces if not s.fixed] == [["conv1"], ["conv2"]]

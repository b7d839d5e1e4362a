"""k-WTA and FATReLU: hand examples, exact counts, and drop-in use in a bundled model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab import models, registry
from sparsity_lab.ephemeral import activation_functions as A


def _kwta_ref(x: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest of each row, ties by position: an independent NumPy version."""
    out = np.zeros_like(x)
    for i, row in enumerate(x):
        order = np.argsort(-row, kind="stable")[:k]
        out[i, order] = row[order]
    return out


def test_registered():
    assert registry.get("kwta") is A.KWTA
    assert registry.get("fatrelu") is A.FATReLU


def test_kwta_hand_example():
    x = torch.tensor([[3.0, -1.0, 2.0, 0.5], [-4.0, -3.0, -2.0, -1.0]])
    assert A.kwta(x, 2).tolist() == [[3.0, 0.0, 2.0, 0.0], [0.0, 0.0, -2.0, -1.0]]


def test_kwta_keeps_exactly_k_even_with_ties():
    x = torch.ones(3, 5)
    assert (A.kwta(x, 2) != 0).sum(1).tolist() == [2, 2, 2]


def test_kwta_gradient_reaches_winners_only():
    x = torch.tensor([[0.1, 0.9, 0.5, -2.0]], requires_grad=True)
    A.kwta(x, 2).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_kwta_density_adapts_k_per_layer():
    act = A.KWTA(density=0.1)
    assert act.units_kept(300) == 30
    assert act.units_kept(5) == 1
    y = act(torch.randn(4, 300))
    assert (y != 0).sum(1).tolist() == [30] * 4
    assert act.sparsity == pytest.approx(0.9)


def test_fatrelu_threshold_and_relu_case():
    x = torch.tensor([-1.0, 0.0, 0.2, 0.5, 1.0])
    assert A.FATReLU(0.5)(x).tolist() == [0.0, 0.0, 0.0, 0.5, 1.0]
    assert torch.equal(A.FATReLU(0.0)(x), F.relu(x))


def test_fatrelu_l1_penalty_matches_its_formula_and_has_a_gradient():
    act = A.FATReLU(0.1, l1=0.5)
    x = torch.tensor([[0.05, 0.3, -1.0], [2.0, 0.2, 0.1]], requires_grad=True)
    act(x)
    # kept: 0.3 | 2.0, 0.2, 0.1; mean over the 2 examples of the summed |y|
    assert act.penalty.item() == pytest.approx(0.5 * (0.3 + 2.3) / 2)
    act.penalty.backward()
    assert x.grad.tolist() == [[0.0, 0.25, 0.0], [0.25, 0.25, 0.25]]


def test_swap_relu_runs_kwta_inside_lenet300():
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(20,), n_classes=3, hidden=(10, 8))
    x = torch.randn(5, 20)
    dense = model(x)
    handle = A.swap_relu(model, A.KWTA(k=3))
    got = model(x)
    with torch.no_grad():
        h = _kwta_ref(model.fc1(x).numpy(), 3)
        h = _kwta_ref(model.fc2(torch.from_numpy(h)).numpy(), 3)
        expected = model.fc3(torch.from_numpy(h))
    torch.testing.assert_close(got, expected)
    # 3 of 10 and 3 of 8 units per example are nonzero
    assert handle.activation.zeros == 5 * (10 - 3) + 5 * (8 - 3)
    handle.remove()
    torch.testing.assert_close(model(x), dense)


def test_swap_relu_handles_relu_modules_in_place():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    x = torch.randn(3, 4)
    A.swap_relu(net, A.FATReLU(0.3))
    with torch.no_grad():
        expected = net[2](A.fatrelu(net[0](x), 0.3))
    torch.testing.assert_close(net(x), expected)


def test_with_activation_penalty_adds_the_l1_term():
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(6,), n_classes=2, hidden=(5, 4))
    handle = A.swap_relu(model, A.FATReLU(0.0, l1=0.1))
    loss_fn = A.with_activation_penalty(nn.CrossEntropyLoss(), handle)
    x, y = torch.randn(4, 6), torch.tensor([0, 1, 0, 1])
    out = model(x)
    with torch.no_grad():
        h1 = F.relu(model.fc1(x))
        h2 = F.relu(model.fc2(h1))
        l1 = 0.1 * (h1.abs().sum() + h2.abs().sum()) / 4
    total = (F.cross_entropy(out, y) + l1).item()
    assert loss_fn(out, y).item() == pytest.approx(total, rel=1e-6)
    # a second forward pass starts a fresh penalty instead of adding to the first
    model(x)
    assert A.activation_penalty(handle).item() == pytest.approx(l1.item(), rel=1e-6)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="exactly one of k"):
        A.KWTA()
    with pytest.raises(ValueError, match="positive integer"):
        A.KWTA(k=0)
    with pytest.raises(ValueError, match="density must be in"):
        A.KWTA(density=1.5)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        A.FATReLU(-0.1)
    with pytest.raises(ValueError, match="k must be in"):
        A.kwta(torch.zeros(2, 3), 4)
    with pytest.raises(TypeError, match="nn.Module"):
        A.swap_relu(nn.Linear(2, 2), F.relu)

"""relu_stats: activation sparsity against counts made by hand."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsity_lab import models, registry
from sparsity_lab.ephemeral.activations import relu_stats


class Mixed(nn.Module):
    """Every way to apply a ReLU: module, functional, tensor method, and one of a sum."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(4, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(4, 3))
            self.fc.bias.zero_()
            self.fc2.weight.copy_(-torch.eye(4))
            self.fc2.bias.zero_()

    def forward(self, x):
        h = self.act(self.fc(x))  # the module
        g = F.relu(self.fc2(h))  # functional, of a layer's output
        return (g + h).relu()  # tensor method, of a sum


def test_counts_match_a_hand_computation():
    x = torch.tensor([[1.0, -2.0, 3.0], [-1.0, 0.5, -0.5]])
    df = relu_stats(Mixed(), x).set_index("site")
    assert list(df.index) == ["act", "relu(fc2)", "model:relu#0"]
    # fc copies x into 3 of 4 units (the 4th is 0): positives are 1, 3 and 0.5
    h = F.relu(torch.cat([x, torch.zeros(2, 1)], dim=1))
    assert df.loc["act", "zeros"] == int((h == 0).sum()) == 5
    assert df.loc["act", "activations"] == 8
    assert df.loc["act", "sparsity"] == pytest.approx(5 / 8)
    # unit 3 is never on; units 0, 1 and 2 are on for one example each
    assert df.loc["act", "dead_units"] == pytest.approx(1 / 4)
    # fc2 negates h >= 0, so its ReLU is all zeros; the last ReLU then returns h
    assert df.loc["relu(fc2)", "sparsity"] == 1.0
    assert df.loc["relu(fc2)", "dead_units"] == 1.0
    assert df.loc["model:relu#0", "zeros"] == 5
    assert df.loc["act", "shape"] == (4,)


def test_batches_accumulate_and_limit_stops():
    x = torch.tensor([[1.0, -2.0, 3.0], [-1.0, 0.5, -0.5]])
    loader = [(x[:1], torch.zeros(1)), (x[1:], torch.zeros(1)), (x, torch.zeros(2))]
    all_of_it = relu_stats(Mixed(), loader).set_index("site")
    assert all_of_it.loc["act", "activations"] == 16
    assert all_of_it.loc["act", "zeros"] == 10
    first_two = relu_stats(Mixed(), loader, limit=2).set_index("site")
    assert first_two.loc["act", "zeros"] == 5
    # a dead unit must be off in every batch: unit 3 only
    assert first_two.loc["act", "dead_units"] == pytest.approx(1 / 4)


def test_conv_sites_on_a_bundled_model_agree_with_hooks():
    torch.manual_seed(0)
    model = models.build("lenet5", input_shape=(1, 12, 12), n_classes=10)
    x = torch.randn(5, 1, 12, 12)
    seen = {}
    handle = model.conv2.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    model.train()
    df = relu_stats(model, (x, torch.zeros(5))).set_index("site")
    handle.remove()
    assert model.training  # the mode is restored
    expected = int((seen["out"] <= 0).sum())  # ReLU zeroes exactly the non-positive entries
    assert df.loc["relu(conv2)", "zeros"] == expected
    assert df.loc["relu(conv2)", "shape"] == tuple(seen["out"].shape[1:])
    assert set(df.index) == {"relu(conv1)", "relu(conv2)", "relu(fc1)", "relu(fc2)"}


def test_models_without_relu_and_bad_data_fail_clearly():
    model = models.build("tiny_transformer", input_shape=(6,), n_classes=2, vocab_size=10)
    with pytest.raises(ValueError, match="no ReLU"):
        relu_stats(model, torch.randint(1, 10, (2, 6)))
    with pytest.raises(TypeError, match="DataLoader"):
        relu_stats(Mixed(), 3.0)


def test_registered_as_ephemeral():
    assert registry.get("relu_stats", "ephemeral") is relu_stats

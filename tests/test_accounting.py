"""``report``: parameters, nonzeros and FLOPs against closed forms."""

import pytest
import torch
from torch import nn

import sparsity_lab as sl


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)  # 6x6 -> 4x4
        self.fc = nn.Linear(4 * 4 * 4, 5)
        self.input_shape = (2, 6, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_report_rows_match_closed_forms():
    model = Net()
    mask = torch.zeros(4, 2, 3, 3)
    mask[:2] = 1  # keep two filters: 36 weights
    sl.masks.attach(model, "conv.weight", mask)
    df = sl.report(model).set_index("name")
    conv, fc, total = df.loc["conv.weight"], df.loc["fc.weight"], df.loc["total"]
    assert conv.parameters == 72 and conv.nonzeros == 36 and conv.sparsity == 0.5
    assert conv.dense_flops == 2 * 72 * 16  # every weight applied at 4x4 output positions
    assert conv.sparse_flops == 2 * 36 * 16
    assert fc.parameters == 320 and fc.dense_flops == 640
    assert fc.sparse_flops == 2 * int(torch.count_nonzero(model.fc.weight))
    assert total.parameters == 392
    assert total.nonzeros == 36 + fc.nonzeros
    assert total.sparsity == pytest.approx(1 - total.nonzeros / 392)
    assert total.dense_flops == conv.dense_flops + fc.dense_flops


def test_report_without_input_shape_has_no_flops_but_counts():
    model = nn.Sequential(nn.Linear(3, 2))
    df = sl.report(model)
    assert df.loc[0, "parameters"] == 6
    assert df["dense_flops"].isna().all()


def test_report_with_explicit_input_and_sequence_positions():
    model = nn.Sequential(nn.Linear(8, 3))
    df = sl.report(model, example_input=torch.zeros(5, 7, 8))
    # a Linear applied to each of 7 positions of one example
    assert df.loc[0, "dense_flops"] == 2 * 24 * 7


def test_weight_and_bias_of_one_layer_both_get_flops():
    model = Net()
    df = sl.report(model, names=["conv.weight", "conv.bias", "fc.weight"]).set_index("name")
    assert df.loc["conv.weight", "dense_flops"] == 2 * 72 * 16
    assert df.loc["conv.bias", "dense_flops"] == 4 * 16  # one add per channel and position
    assert df.loc["total", "dense_flops"] == 2 * 72 * 16 + 4 * 16 + 640


@pytest.mark.parametrize(
    "name, shape",
    [
        ("lenet300", (784,)),
        ("lenet5", (1, 28, 28)),
        ("cnn1d", (1, 40)),
        ("resnet_small", (1, 28, 28)),
    ],
)
def test_the_hand_count_of_flops_matches_torchs_flop_counter(name, shape):
    from sparsity_lab import models
    from sparsity_lab.accounting import counted_flops

    model = models.build(name, input_shape=shape, n_classes=10)
    weights = sl.report(model)
    weights = weights[~weights["name"].str.endswith("bias")].iloc[:-1]  # the counter skips biases
    assert counted_flops(model) == weights["dense_flops"].sum()
    sl.prune(model, "magnitude", 0.9)  # a masked weight still multiplies: the same count
    assert counted_flops(model) == weights["dense_flops"].sum()


def test_the_flop_counter_adds_attentions_products_to_the_hand_count():
    from sparsity_lab import models
    from sparsity_lab.accounting import counted_flops

    length, dim, depth = 16, 32, 2
    model = models.build(
        "tiny_transformer", input_shape=(length,), n_classes=5, dim=dim, depth=depth, vocab_size=20
    )
    hand = sl.report(model)["dense_flops"].iloc[-1]
    # per block: scores Q K^T and the weighted sum A V, each 2 * L * L * dim FLOPs
    attention = depth * 2 * (2 * length * length * dim)
    biases = sl.report(model)
    biases = biases[biases["name"].str.endswith("bias")]["dense_flops"].sum()
    assert counted_flops(model) == hand - biases + attention

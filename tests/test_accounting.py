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

"""Bytes in each pattern's natural storage, against closed forms and torch's sparse tensors."""

import math
import warnings

import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import accounting, models, shrink
from sparsity_lab.patterns import NM, Block, Kernel, Unstructured


def sparse_weight(shape, sparsity, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    return w * Unstructured().mask(w.abs(), sparsity)


def torch_sparse_bytes(t, value_bytes, index_bytes):
    """Bytes of a torch sparse CSR/BSR tensor's arrays, at the given element sizes."""
    values = t.values().numel() * value_bytes
    indices = (t.crow_indices().numel() + t.col_indices().numel()) * index_bytes
    return values + indices


@pytest.fixture(autouse=True)
def _quiet_sparse_beta_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        yield


@pytest.mark.parametrize("shape", [(6, 10), (4, 3, 3, 3)])
@pytest.mark.parametrize(("vb", "ib"), [(4, 4), (2, 8), (1, 2)])
def test_unstructured_is_csr_values_column_indices_and_row_pointers(shape, vb, ib):
    w = sparse_weight(shape, 0.7)
    nnz, rows = int((w != 0).sum()), shape[0]
    expected = nnz * vb + nnz * ib + (rows + 1) * ib
    got = accounting.storage_bytes(w, "unstructured", value_bytes=vb, index_bytes=ib)
    assert got == expected
    assert got == torch_sparse_bytes(w.reshape(rows, -1).to_sparse_csr(), vb, ib)


@pytest.mark.parametrize(("r", "c"), [(2, 2), (2, 5), (1, 1)])
def test_block_is_bsr_with_kept_blocks_and_block_pointers(r, c):
    w = torch.randn(6, 10) * Block(r, c).mask(torch.rand(6, 10), 0.5)
    kept = sum(bool(w[i : i + r, j : j + c].any()) for i in range(0, 6, r) for j in range(0, 10, c))
    expected = kept * r * c * 4 + kept * 4 + (6 // r + 1) * 4
    got = accounting.storage_bytes(w, f"block:{r}x{c}")
    assert got == expected
    assert got == torch_sparse_bytes(w.to_sparse_bsr((r, c)), 4, 4)


def test_kernel_is_bsr_with_one_block_per_kernel():
    w = torch.randn(4, 3, 3, 3) * Kernel().mask(torch.rand(4, 3, 3, 3), 0.5)
    kept = 6  # round(0.5 * 12) kernels pruned, 6 kept
    assert accounting.storage_bytes(w, "kernel") == kept * (9 * 4 + 4) + (4 + 1) * 4
    assert accounting.storage_bytes(w, "kernel") == torch_sparse_bytes(
        w.reshape(4, 27).to_sparse_bsr((1, 9)), 4, 4
    )
    assert accounting.storage_scheme("kernel", (4, 3, 3, 3)) == "bsr 1x9"


def test_embedding_is_bsr_with_one_block_per_kept_row():
    w = torch.randn(20, 8)
    w[[1, 4, 7]] = 0
    assert accounting.storage_bytes(w, "embedding", value_bytes=2) == 17 * (8 * 2 + 4) + 21 * 4


@pytest.mark.parametrize(("n", "m", "bits"), [(2, 4, 2), (1, 4, 2), (4, 8, 3), (1, 2, 1)])
def test_nm_is_values_plus_log2_m_bits_per_kept_value(n, m, bits):
    w = torch.randn(8, 16) * NM(n, m).mask(torch.rand(8, 16))
    kept = 8 * 16 * n // m
    expected = kept * 4 + math.ceil(kept * bits / 8)
    assert accounting.storage_bytes(w, f"{n}:{m}") == expected


def test_two_four_metadata_is_two_bits_per_kept_value():
    w = torch.randn(16, 64) * NM(2, 4).mask(torch.rand(16, 64))
    # 512 kept values of 2 bytes and 512 * 2 bits = 128 bytes of metadata
    assert accounting.storage_bytes(w, "2:4", value_bytes=2) == 512 * 2 + 128


def test_nm_refuses_a_tensor_that_is_not_nm_sparse():
    w = torch.randn(4, 8)
    w[0, :3] = 0  # sparse, but many groups keep all 4
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        accounting.storage_bytes(w, "2:4")


@pytest.mark.parametrize("pattern", ["channel", "input", "head:2", "layer"])
def test_structured_patterns_store_the_shrunk_dense_tensor(pattern):
    w = torch.randn(6, 4, 3)
    w[[1, 4]] = 0  # two output units gone
    w[:, 2] = 0  # one input channel gone
    expected = 4 * 3 * 3 * 4  # 4 rows x 3 input channels x kernel 3 x 4 bytes
    if pattern == "head:2":
        w = w[:, :, 0]  # heads live in Linear weights
        expected = 4 * 3 * 4
    assert accounting.storage_bytes(w, pattern) == expected


def test_layer_fully_pruned_stores_nothing_and_dense_is_numel():
    assert accounting.storage_bytes(torch.zeros(3, 5), "layer") == 0
    w = torch.randn(3, 5)
    assert accounting.storage_bytes(w, None) == 60
    assert accounting.storage_bytes(w, "unstructured") == 60  # no zeros: stored dense


def test_storage_schemes_and_unknown_patterns():
    assert [
        accounting.storage_scheme(p)
        for p in [None, "unstructured", "2:4", "block:4x4", "channel", "layer"]
    ] == ["dense", "csr", "nm 2:4", "bsr 4x4", "shrunk", "shrunk"]

    class Odd(Unstructured):
        name = "odd"

    with pytest.raises(ValueError, match="no natural storage"):
        accounting.storage_scheme(Odd())


# ----------------------------------------------------------------------------- report


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3)
        self.fc = nn.Linear(64, 8)
        self.input_shape = (2, 6, 6)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_report_keeps_its_columns_and_adds_bytes():
    model = Net()
    sl.prune(model, "magnitude", 0.5, pattern="channel", budget="uniform")
    df = sl.report(model, pattern="channel").set_index("name")
    assert list(df.columns[:6]) == [
        "shape",
        "parameters",
        "nonzeros",
        "sparsity",
        "dense_flops",
        "sparse_flops",
    ]
    conv, fc, total = df.loc["conv.weight"], df.loc["fc.weight"], df.loc["total"]
    assert conv.storage == "shrunk" and conv.dense_bytes == 72 * 4
    assert conv.bytes == 2 * 2 * 9 * 4  # 2 of 4 filters kept, each 2x3x3
    assert fc.bytes == 4 * 64 * 4  # 4 of 8 units kept, all 64 inputs
    assert total.bytes == conv.bytes + fc.bytes
    assert total.dense_bytes == (72 + 512) * 4


def test_report_with_a_pattern_per_tensor_and_index_sizes():
    model = Net()
    sl.masks.attach(model, "conv.weight", Kernel().mask(torch.rand(4, 2, 3, 3), 0.5))
    sl.masks.attach(model, "fc.weight", NM(2, 4).mask(torch.rand(8, 64)))
    pats = {"conv.weight": "kernel", "fc.weight": "2:4"}
    df = sl.report(model, pattern=pats, value_bytes=2, index_bytes=2).set_index("name")
    assert df.loc["conv.weight", "bytes"] == 4 * (9 * 2 + 2) + 5 * 2
    assert df.loc["fc.weight", "bytes"] == 256 * 2 + 256 * 2 // 8
    dense = sl.report(model).set_index("name")
    assert (dense["bytes"] == dense["dense_bytes"]).all()


def test_report_names_the_tensor_that_breaks_its_pattern():
    model = Net()
    sl.prune(model, "magnitude", 0.5)
    with pytest.raises(ValueError, match="conv.weight: .*2:4"):
        sl.report(model, pattern="2:4")


def test_report_counts_embeddings_as_lookups():
    model = models.build("tiny_transformer", input_shape=(8,), n_classes=2, vocab_size=20)
    df = sl.report(model, names=["tok_emb.weight", "head.weight"]).set_index("name")
    assert df.loc["tok_emb.weight", "dense_flops"] == 0
    assert df.loc["head.weight", "dense_flops"] == 2 * 64


def test_channel_bytes_per_tensor_and_after_shrink():
    torch.manual_seed(0)
    model = models.build("lenet300", input_shape=(784,), n_classes=10)
    sl.prune(model, "magnitude", 0.5, pattern="channel", budget="uniform", dense=["fc3.weight"])
    kept1 = int(sl.masks.get_mask(model, "fc1.weight").any(dim=1).sum())
    kept2 = int(sl.masks.get_mask(model, "fc2.weight").any(dim=1).sum())
    per_tensor = sl.report(model, pattern="channel").set_index("name")["bytes"]
    assert per_tensor["fc1.weight"] == kept1 * 784 * 4
    assert per_tensor["fc2.weight"] == kept2 * 300 * 4  # this tensor alone keeps its inputs
    # the coupled removal also drops the columns that read removed units
    actual = sl.report(shrink.shrink(model)).set_index("name")["bytes"]
    assert actual["fc2.weight"] == kept2 * kept1 * 4
    assert actual["fc3.weight"] == 10 * kept2 * 4
    # prune_coupled masks those columns too, so per tensor and after shrink agree
    coupled = models.build("lenet300", input_shape=(784,), n_classes=10)
    shrink.prune_coupled(coupled, "channel", 0.5)
    per_tensor = sl.report(coupled, pattern="channel").set_index("name")["bytes"]
    actual = sl.report(shrink.shrink(coupled)).set_index("name")["bytes"]
    assert per_tensor["fc2.weight"] == actual["fc2.weight"] == 50 * 150 * 4
    assert (per_tensor.drop("total") == actual.drop("total")).all()


def test_shrunk_flops_parameters_and_bytes_by_closed_form():
    torch.manual_seed(0)
    model = models.build("lenet5", input_shape=(1, 28, 28), n_classes=10)
    shrink.prune_coupled(model, "channel", 0.5)
    total = sl.report(shrink.shrink(model)).set_index("name").loc["total"]
    # conv1 3@5x5 on 28x28 (padded), conv2 8 of 3 inputs on 10x10 outputs, then 200-60-42-10
    weights = [(3 * 1 * 25, 28 * 28), (8 * 3 * 25, 10 * 10), (60 * 200, 1), (42 * 60, 1)]
    weights.append((10 * 42, 1))
    assert total.parameters == total.nonzeros == sum(w for w, _ in weights)
    assert total.dense_flops == total.sparse_flops == sum(2 * w * p for w, p in weights)
    assert total.bytes == total.dense_bytes == 4 * sum(w for w, _ in weights)
    # the masked model: the same nonzeros, but it still computes every zero
    masked = sl.report(model).set_index("name").loc["total"]
    assert masked.nonzeros == total.nonzeros
    assert masked.dense_flops == 2 * (150 * 784 + 2400 * 100 + 48000 + 10080 + 840)

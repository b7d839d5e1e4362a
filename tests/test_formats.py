"""Storage formats: exact round trips, sizes against the closed forms and torch.sparse bytes."""

import math
import warnings

import numpy as np
import pytest
import torch

from sparsity_lab import formats, registry
from sparsity_lab.patterns import NM

ALL = ["dense", "bitmap", "coo", "csr", "csc", "bsr", "rle", "ell", "nm_format"]


@pytest.fixture(autouse=True)
def _quiet_sparse_beta_warning():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*Sparse.*support is in beta")
        yield


def sparse_tensor(shape, sparsity, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    t = torch.randn(shape, generator=gen, dtype=dtype)
    return torch.where(torch.rand(shape, generator=gen) < sparsity, torch.zeros((), dtype=dtype), t)


def w(count, index_bits):
    """Index width by hand: ceil(log2 count) bits, or the fixed width."""
    return index_bits if index_bits is not None else math.ceil(math.log2(count))


def test_every_format_is_registered():
    assert set(registry.available("format")) >= set(ALL)
    assert isinstance(formats.get("bsr", block=(2, 2)), formats.BSR)
    with pytest.raises(KeyError, match="Did you mean 'csr'"):
        formats.get("csrr")


TENSORS = {
    "matrix_70": lambda: sparse_tensor((8, 12), 0.7),
    "conv_90": lambda: sparse_tensor((4, 4, 3, 3), 0.9, seed=1),
    "vector_50": lambda: sparse_tensor((24,), 0.5, seed=2),
    "all_zero": lambda: torch.zeros(8, 12),
    "no_zero": lambda: torch.randn(8, 12).abs() + 1,
    "float64": lambda: sparse_tensor((8, 12), 0.6, seed=3, dtype=torch.float64),
}


@pytest.mark.parametrize("name", [n for n in ALL if n != "nm_format"])
@pytest.mark.parametrize("tensor", list(TENSORS))
@pytest.mark.parametrize("index_bits", [None, 2, 64])
def test_round_trip_is_exact(name, tensor, index_bits):
    t = TENSORS[tensor]()
    fmt = formats.get(name, block=(2, 2)) if name == "bsr" else formats.get(name)
    if name == "bsr" and t.dim() == 1:
        fmt = formats.get("bsr", block=(1, 4))
    try:
        enc = fmt.encode(t, index_bits=index_bits)
    except ValueError:
        assert index_bits == 2  # only rle encodes with so narrow an index
        return
    back = fmt.decode(enc)
    assert back.dtype == t.dtype and back.shape == t.shape
    assert torch.equal(back, t)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_nm_round_trip_with_short_groups(n, m):
    t = torch.randn(6, 16) * NM(n, m).mask(torch.rand(6, 16))
    t[0, :m] = 0  # a group with fewer than N nonzeros stores explicit zeros
    fmt = formats.get("nm_format", n=n, m=m)
    enc = fmt.encode(t)
    assert enc.values.shape == (6 * 16 // m, n)
    assert torch.equal(fmt.decode(enc), t)


def test_nm_groups_run_along_the_input_dimension_of_a_conv():
    t = torch.randn(3, 8, 2, 2) * NM(2, 4).mask(torch.rand(3, 8, 2, 2))
    fmt = formats.get("nm_format")
    assert torch.equal(fmt.decode(fmt.encode(t)), t)


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("k", [8, 32])
@pytest.mark.parametrize("b", [None, 16, 64])
@pytest.mark.parametrize("shape", [(16, 24), (6, 4, 3, 3)])
def test_sizes_match_the_closed_forms(k, b, shape):
    t = sparse_tensor(shape, 0.8, seed=4)
    a = t.reshape(shape[0], -1).numpy()
    n, m = t.numel(), int((a != 0).sum())
    n_r, n_c = a.shape
    row_nnz = (a != 0).sum(1)
    # each format's closed form, from counts taken with numpy
    assert formats.bits(t, "dense", value_bits=k, index_bits=b) == n * k
    assert formats.bits(t, "bitmap", value_bits=k, index_bits=b) == n + m * k
    coo_index = math.ceil(math.log2(n)) if b is None else len(shape) * b
    assert formats.bits(t, "coo", value_bits=k, index_bits=b) == m * (k + coo_index)
    csr = m * (k + w(n_c, b)) + (n_r + 1) * w(m + 1, b)
    assert formats.bits(t, "csr", value_bits=k, index_bits=b) == csr
    csc = m * (k + w(n_r, b)) + (n_c + 1) * w(m + 1, b)
    assert formats.bits(t, "csc", value_bits=k, index_bits=b) == csc
    ell = n_r * row_nnz.max() * (k + w(n_c, b))
    assert formats.bits(t, "ell", value_bits=k, index_bits=b) == ell


def test_csr_is_close_to_the_surveys_form():
    """The survey writes m ceil(log2 n_c) + n_r ceil(log2 m) index bits; ours differs only by
    the extra row pointer and the +1 of the pointer range."""
    t = sparse_tensor((64, 64), 0.9, seed=5)
    m = int((t != 0).sum())
    survey = m * 32 + m * math.ceil(math.log2(64)) + 64 * math.ceil(math.log2(m))
    ours = formats.bits(t, "csr", value_bits=32)
    assert 0 <= ours - survey <= math.ceil(math.log2(m + 1)) + 64


@pytest.mark.parametrize(("r", "c"), [(2, 2), (4, 3), (1, 1)])
def test_bsr_counts_kept_blocks(r, c):
    t = sparse_tensor((8, 12), 0.85, seed=6)
    blocks = [
        (i, j) for i in range(0, 8, r) for j in range(0, 12, c) if t[i : i + r, j : j + c].any()
    ]
    kept = len(blocks)
    for k, b in [(32, None), (8, 64)]:
        expected = kept * (r * c * k + w(12 // c, b)) + (8 // r + 1) * w(kept + 1, b)
        assert formats.bits(t, "bsr", value_bits=k, index_bits=b, block=(r, c)) == expected


def test_rle_minimal_width_is_log2_of_the_largest_gap():
    t = sparse_tensor((40, 25), 0.9, seed=7)
    positions = np.flatnonzero(t.numpy())
    gaps = np.diff(np.concatenate([[-1], positions]))  # p_j - p_{j-1}, with p_0 = -1
    expected = len(positions) * (8 + math.ceil(math.log2(gaps.max())))
    assert formats.bits(t, "rle", value_bits=8) == expected


def test_rle_fixed_width_inserts_filler_zeros_by_hand():
    # runs of zeros before each nonzero: 9, 2; with 2-bit runs a filler covers 4 positions
    t = torch.tensor([0.0] * 9 + [5.0] + [0.0, 0.0] + [7.0])
    fmt = formats.get("rle")
    enc = fmt.encode(t, index_bits=2)
    assert enc.index["runs"].tolist() == [3, 3, 1, 2]
    assert enc.values.tolist() == [0.0, 0.0, 5.0, 7.0]
    assert fmt.size_bits(enc, 8, 2) == 4 * (8 + 2)
    assert torch.equal(fmt.decode(enc), t)


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 2)])
def test_nm_is_values_plus_log2_m_bits_each(n, m):
    t = torch.randn(8, 16) * NM(n, m).mask(torch.rand(8, 16))
    kept = 8 * 16 * n // m
    expected = kept * (16 + math.ceil(math.log2(m)))
    # the metadata width is the format's: it does not follow index_bits
    for b in (None, 64):
        assert formats.bits(t, "nm_format", value_bits=16, index_bits=b, n=n, m=m) == expected


def test_two_four_metadata_is_an_eighth_of_the_fp16_values():
    t = torch.randn(64, 64) * NM(2, 4).mask(torch.rand(64, 64))
    size = formats.bits(t, "nm_format", value_bits=16)
    dense = formats.bits(t, "dense", value_bits=16)
    values = dense / 2
    assert size == values + values / 8  # half the values, plus 2 bits per 16-bit value


# ------------------------------------------------------------------------- torch.sparse


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("shape", [(10, 12), (4, 3, 3, 3)])
def test_sizes_equal_torch_sparse_bytes(dtype, shape):
    t = sparse_tensor(shape, 0.75, seed=8).to(dtype)
    mat = t.reshape(shape[0], -1)
    k = 8 * t.element_size()
    assert formats.bits(t, "coo", value_bits=k, index_bits=64) == formats.torch_bits(
        t.to_sparse_coo()
    )
    assert formats.bits(t, "csr", value_bits=k, index_bits=64) == formats.torch_bits(
        mat.to_sparse_csr()
    )
    assert formats.bits(t, "csc", value_bits=k, index_bits=64) == formats.torch_bits(
        mat.to_sparse_csc()
    )
    block = (2, 3)
    assert formats.bits(t, "bsr", value_bits=k, index_bits=64, block=block) == formats.torch_bits(
        mat.to_sparse_bsr(block)
    )


def test_arrays_equal_torchs():
    t = sparse_tensor((6, 8), 0.6, seed=9)
    csr, ours = t.to_sparse_csr(), formats.get("csr").encode(t)
    assert torch.equal(ours.index["crow_indices"], csr.crow_indices())
    assert torch.equal(ours.index["col_indices"], csr.col_indices())
    assert torch.equal(ours.values, csr.values())
    csc, ours = t.to_sparse_csc(), formats.get("csc").encode(t)
    assert torch.equal(ours.index["row_indices"], csc.row_indices())
    assert torch.equal(ours.values, csc.values())
    bsr, ours = t.to_sparse_bsr((2, 2)), formats.get("bsr", block=(2, 2)).encode(t)
    assert torch.equal(ours.index["col_indices"], bsr.col_indices())
    assert torch.equal(ours.values, bsr.values())
    coo, ours = t.to_sparse_coo().coalesce(), formats.get("coo").encode(t)
    assert torch.equal(ours.index["indices"], coo.indices())
    assert torch.equal(ours.values, coo.values())


# ------------------------------------------------------------------------------ crossover


def test_crossover_reproduces_the_surveys_regimes():
    """Survey 2.2 (k = 8): bitmap is smallest at moderate sparsity, an offset format beyond."""
    table = formats.crossover((200, 200), [0.0, 0.3, 0.6, 0.95, 0.99], value_bits=8)
    best = formats.smallest(table).set_index("sparsity")["format"].to_dict()
    assert best[0.0] == "dense"
    assert best[0.3] == best[0.6] == "bitmap"
    assert best[0.95] in ("rle", "csr", "csc", "coo")
    assert best[0.99] in ("rle", "csr", "csc", "coo")
    # bitmap beats dense exactly when n + m k < n k, i.e. density < 1 - 1/k
    row = table[(table.sparsity == 0.3)].set_index("format")["bits"]
    assert row["bitmap"] == 40000 + round(0.7 * 40000) * 8


def test_crossover_includes_an_nm_point_and_plots():
    import matplotlib

    matplotlib.use("Agg")
    table = formats.crossover((16, 16), [0.0, 0.5, 0.9], formats=("dense", "csr", "nm_format"))
    nm = table[table.format == "nm_format"]
    assert len(nm) == 1 and float(nm.sparsity.iloc[0]) == 0.5
    assert nm.bits.iloc[0] == 128 * (8 + 2)
    ax = formats.plot_crossover(table)
    assert len(ax.get_lines()) == 3


def test_crossover_plot_dashes_a_format_that_lies_on_another():
    import matplotlib

    matplotlib.use("Agg")
    # on a square matrix CSC stores exactly what CSR does: drawn solid, it would hide CSR
    table = formats.crossover((16, 16), [0.0, 0.5, 0.9], formats=("dense", "csr", "csc"))
    assert table[table.format == "csr"].bits.tolist() == table[table.format == "csc"].bits.tolist()
    lines = {line.get_label(): line for line in formats.plot_crossover(table).get_lines()}
    assert set(lines) == {"dense", "csr", "csc (= csr)"}
    assert lines["csc (= csr)"].get_linestyle() == "--" and lines["csr"].get_linestyle() == "-"


# --------------------------------------------------------------------------------- errors


def test_errors_say_how_to_fix():
    t = sparse_tensor((6, 10), 0.5)
    with pytest.raises(ValueError, match="divides both sides"):
        formats.get("bsr", block=(4, 4)).encode(t)
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        formats.get("nm_format").encode(torch.ones(4, 8))
    with pytest.raises(ValueError, match="cannot hold 10 distinct"):
        formats.bits(t, "csr", index_bits=3)
    with pytest.raises(ValueError, match="decode it with formats.get"):
        formats.get("csr").decode(formats.get("coo").encode(t))
    enc = formats.get("rle").encode(t)
    with pytest.raises(ValueError, match="re-encode"):
        formats.get("rle").size_bits(enc, 8, 16)
    with pytest.raises(ValueError, match="positive"):
        formats.bits(t, "dense", value_bits=0)
    with pytest.raises(ValueError, match="sparsity must be"):
        formats.crossover((4, 4), [1.0])

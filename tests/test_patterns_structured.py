"""Kernel, head, layer and embedding patterns: exactly which elements go, and clear refusals."""

import itertools
import math

import pytest
import torch
from torch import nn

import sparsity_lab as sl
from sparsity_lab import models, patterns
from sparsity_lab.patterns import EmbeddingRows, Head, Kernel, Layer


def scores(shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def lowest(values, n):
    """Indices of the n lowest values, ties to the lower index (pure Python reference)."""
    return sorted(sorted(range(len(values)), key=lambda i: (values[i], i))[:n])


# ------------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("shape", [(4, 3, 3, 3), (5, 2, 7), (6, 4, 1, 1)])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_kernel_zeroes_whole_kernels_with_the_lowest_l1(shape, sparsity):
    s = scores(shape)
    keep = Kernel().mask(s, sparsity)
    out, inp = shape[:2]
    norms = [float(s[o, i].abs().sum()) for o, i in itertools.product(range(out), range(inp))]
    expected = lowest(norms, math.floor(sparsity * out * inp + 0.5))
    pruned = []
    for k, (o, i) in enumerate(itertools.product(range(out), range(inp))):
        kernel = keep[o, i]
        assert kernel.all() or (~kernel).all()  # all or nothing
        if not kernel.any():
            pruned.append(k)
    assert pruned == expected
    assert int((~keep).sum()) == len(expected) * math.prod(shape[2:])


def test_kernel_refuses_a_linear_weight_by_name():
    with pytest.raises(ValueError, match="fc.weight has shape \\(4, 6\\).*no kernel"):
        Kernel().validate((4, 6), "fc.weight")


# --------------------------------------------------------------------------------- head


def test_head_rows_group_by_head_and_prune_the_lowest():
    s = scores((12, 5), seed=1)  # 3 heads of 4 rows
    keep = Head(3).mask(s, 1 / 3)
    norms = [float(s[4 * h : 4 * h + 4].abs().sum()) for h in range(3)]
    (gone,) = lowest(norms, 1)
    expected = torch.ones(12, 5, dtype=torch.bool)
    expected[4 * gone : 4 * gone + 4] = False
    assert torch.equal(keep, expected)


def test_head_columns_of_the_output_projection():
    s = scores((5, 12), seed=2)
    keep = Head(4, "in").mask(s, 0.5)
    norms = [float(s[:, 3 * h : 3 * h + 3].abs().sum()) for h in range(4)]
    expected = torch.ones(5, 12, dtype=torch.bool)
    for h in lowest(norms, 2):
        expected[:, 3 * h : 3 * h + 3] = False
    assert torch.equal(keep, expected)


def test_head_needs_the_number_of_heads_and_a_divisible_projection():
    assert patterns.get("head:4") == Head(4)
    assert patterns.get("head:2:in") == Head(2, "in")
    with pytest.raises(ValueError, match="needs the number of heads"):
        patterns.get("head")
    with pytest.raises(ValueError, match="do not split into 4 heads"):
        Head(4).validate((10, 8), "attn.q.weight")
    with pytest.raises(ValueError, match="conv.weight has shape"):
        Head(2).validate((4, 4, 3, 3), "conv.weight")
    with pytest.raises(ValueError, match="axis"):
        Head(2, "rows")


def test_head_fits_only_attention_projections_with_the_right_head_count():
    model = models.build("tiny_transformer", input_shape=(8,), n_classes=2, vocab_size=20)
    rows = patterns.misfits(model, "head:4")
    attn = [f"blocks.{b}.attn.{p}.weight" for b in range(2) for p in "qkv"]
    assert set(sl.pruning.default_targets(model)) - set(rows) == set(attn)
    assert "not one" in rows["blocks.0.fc1.weight"]
    cols = patterns.misfits(model, "head:4:in")
    assert set(sl.pruning.default_targets(model)) - set(cols) == {
        "blocks.0.attn.out.weight",
        "blocks.1.attn.out.weight",
    }
    wrong = patterns.misfits(model, "head:2", ["blocks.0.attn.q.weight"])
    assert "4 heads, not 2; use 'head:4'" in wrong["blocks.0.attn.q.weight"]


def test_head_pattern_through_prune_on_the_transformer():
    torch.manual_seed(0)
    model = models.build("tiny_transformer", input_shape=(8,), n_classes=2, vocab_size=20)
    q = "blocks.0.attn.q.weight"
    expected_norms = [
        float(model.blocks[0].attn.q.weight[8 * h : 8 * h + 8].detach().abs().sum())
        for h in range(4)
    ]
    sl.prune(model, "magnitude", 0.5, pattern="head:4", targets=[q], budget="uniform")
    mask = sl.masks.get_mask(model, q).bool()
    gone = [h for h in range(4) if not mask[8 * h : 8 * h + 8].any()]
    assert gone == lowest(expected_norms, 2)
    assert all(mask[8 * h : 8 * h + 8].all() for h in range(4) if h not in gone)


# -------------------------------------------------------------------------------- layer


def test_layer_is_all_or_nothing():
    s = scores((3, 4))
    assert Layer().mask(s, 0.4).all()  # round(0.4 * 1 group) = 0
    assert not Layer().mask(s, 0.6).any()  # round(0.6) = 1: the whole tensor
    assert Layer().n_groups((3, 4)) == 1 and Layer().group_size((3, 4, 5)) == 60


@pytest.mark.parametrize(
    ("reduction", "per_element"),
    [
        ("l1", lambda t: t.abs().mean()),
        ("l2", lambda t: t.pow(2).mean().sqrt()),
        ("sum", lambda t: t.mean()),
        ("max", lambda t: t.max()),
    ],
)
def test_layer_scores_are_per_element(reduction, per_element):
    for shape in [(2, 3), (10, 30)]:
        s = scores(shape, seed=3)
        g = Layer().group_scores(s, reduction)
        assert g.shape == (1,)
        assert float(g[0]) == pytest.approx(float(per_element(s.double())))


def test_layer_pattern_with_the_global_budget_removes_the_lowest_mean_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 40), nn.ReLU(), nn.Linear(40, 4))
    with torch.no_grad():
        model[0].weight.fill_(1.0)  # 16 weights, mean |w| 1
        model[2].weight.fill_(0.1)  # 160 weights, mean 0.1: the weakest layer
        model[4].weight.fill_(0.5)  # 160 weights, mean 0.5 (sum 80 > the first layer's 16)
    sl.prune(model, "magnitude", 0.45, pattern="layer", budget="global")
    counts = [int(sl.masks.get_mask(model, f"{i}.weight").sum()) for i in (0, 2, 4)]
    assert counts == [16, 0, 160]


# ---------------------------------------------------------------------------- embedding


def test_embedding_rows_are_tokens():
    s = scores((10, 6), seed=4)
    keep = EmbeddingRows().mask(s, 0.3)
    norms = [float(s[i].abs().sum()) for i in range(10)]
    gone = lowest(norms, 3)
    assert [i for i in range(10) if not keep[i].any()] == gone
    assert all(keep[i].all() for i in range(10) if i not in gone)


def test_embedding_pattern_fits_only_embedding_tables():
    model = models.build("tiny_transformer", input_shape=(8,), n_classes=2, vocab_size=20)
    names = ["tok_emb.weight", "pos_emb.weight", "head.weight"]
    bad = patterns.misfits(model, "embedding", names)
    assert list(bad) == ["head.weight"] and "Embedding" in bad["head.weight"]
    with pytest.raises(ValueError, match="conv.weight has shape"):
        EmbeddingRows().validate((4, 2, 3), "conv.weight")
    sl.prune(model, "magnitude", 0.25, pattern="embedding", targets=["tok_emb.weight"])
    mask = sl.masks.get_mask(model, "tok_emb.weight").bool()
    assert int((~mask.any(dim=1)).sum()) == 5  # round(0.25 * 20) tokens gone
    tokens = torch.nonzero(~mask.any(dim=1)).flatten()
    out = model.tok_emb(tokens)
    assert torch.equal(out, torch.zeros_like(out))  # pruned tokens embed to zero


# ----------------------------------------------------------------------- misfits overall


def test_misfits_name_every_layer_a_pattern_does_not_fit():
    model = models.build("lenet5", input_shape=(1, 28, 28), n_classes=10)
    assert patterns.misfits(model, "unstructured") == {}
    assert set(patterns.misfits(model, "kernel")) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    # 2:4 groups run along the input channels: 1 and 6 are not multiples of 4
    assert set(patterns.misfits(model, "2:4")) == {"conv1.weight", "conv2.weight"}
    # 4x4 tiles: conv1 is 6x25, conv2 16x150 and fc3 10x84 as matrices
    assert set(patterns.misfits(model, "block:4x4")) == {
        "conv1.weight",
        "conv2.weight",
        "fc3.weight",
    }


def test_prune_with_misfits_kept_dense_still_meets_the_target():
    model = models.build("lenet5", input_shape=(1, 28, 28), n_classes=10)
    dense = list(patterns.misfits(model, "kernel"))
    with pytest.raises(ValueError, match="not enough|only"):
        # kernels alone (2,550 weights) cannot make the whole model 50% sparse
        sl.prune(model, "magnitude", 0.5, pattern="kernel", dense=dense, budget="uniform")
    sl.prune(model, "magnitude", 0.02, pattern="kernel", dense=dense, budget="uniform")
    for name in dense:
        assert sl.masks.get_mask(model, name) is None or sl.masks.get_mask(model, name).all()
    # the dense layers count in the target: the zeros, all in whole 5x5 kernels of the two
    # convolutions, are 2% of every weight of the model, to within one kernel
    total = sum(sl.masks.weight(model, n).numel() for n in sl.pruning.default_targets(model))
    zeros = 0
    for name in ["conv1.weight", "conv2.weight"]:
        w = sl.masks.weight(model, name)
        kernel_zero = (w == 0).flatten(2)
        assert (kernel_zero.all(-1) | ~kernel_zero.any(-1)).all()  # whole kernels only
        zeros += int((w == 0).sum())
    assert total == 150 + 2400 + 48000 + 10080 + 840
    assert abs(zeros - 0.02 * total) <= 25 / 2
    assert sl.pruning.sparsity(model) == pytest.approx(zeros / total)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("kernel", Kernel()), ("layer", Layer()), ("embedding", EmbeddingRows()), ("HEAD:8", Head(8))],
)
def test_specs_of_the_structured_patterns(spec, expected):
    assert patterns.get(spec) == expected


@pytest.mark.parametrize("pattern", ["kernel", "embedding", "head:2"])
def test_prune_refuses_a_pattern_that_does_not_fit_a_layer_and_names_it(pattern):
    # An MLP has no convolutions, embeddings or attention projections: nothing may be
    # skipped silently, and the error names the first layer that does not fit.
    model = models.build("lenet300", input_shape=(784,), n_classes=10)
    with pytest.raises(ValueError, match="fc1.weight"):
        sl.prune(model, "magnitude", 0.5, pattern=pattern)
    assert not sl.masks.masks(model)


@pytest.mark.parametrize("pattern", ["channel", "input"])
def test_channel_patterns_refuse_a_transposed_convolution_whose_dims_are_swapped(pattern):
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ConvTranspose2d(4, 2, 3))
    with pytest.raises(ValueError, match="ConvTranspose2d.*in_channels, out_channels"):
        sl.prune(model, "magnitude", 0.5, pattern=pattern, targets=["1.weight"])
    sl.prune(model, "magnitude", 0.5, pattern="unstructured", targets=["1.weight"])

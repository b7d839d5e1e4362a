"""Quantization of pruned weights: round to nearest, GPTQ and the joint SparseGPT pass,
each against a hand computation or a property, and the storage count by hand."""

import copy
import math

import pytest
import torch
from helpers import mlp

import sparsity_lab as sl
from sparsity_lab import masks, quantization
from sparsity_lab.criteria import layerwise


def test_rtn_per_channel_by_hand():
    w = torch.tensor([[0.5, -1.0, 0.25, 0.0], [0.1, 0.2, -0.4, 0.3]])
    q, s = quantization.rtn(w, 3)  # grid -3..3
    # row 0: s = 1/3, w/s = 1.5, -3, 0.75, 0 -> 2 (half to even), -3, 1, 0
    # row 1: s = 0.4/3, w/s = 0.75, 1.5, -3, 2.25 -> 1, 2, -3, 2
    torch.testing.assert_close(s, torch.tensor([1 / 3, 0.4 / 3]))
    expected = torch.tensor([[2, -3, 1, 0], [1, 2, -3, 2]]) * s[:, None]
    torch.testing.assert_close(q, expected)


def test_rtn_grouped_and_with_a_mask_by_hand():
    w = torch.tensor([[1.0, -0.5, 0.2, 0.1]])
    q, s = quantization.rtn(w, 2, group_size=2)  # grid -1..1, a scale per pair
    torch.testing.assert_close(s, torch.tensor([[1.0, 0.2]]))
    torch.testing.assert_close(q, torch.tensor([[1.0, 0.0, 0.2, 0.0]]))  # -0.5 rounds to -0
    keep = torch.tensor([[False, True, True, True]])
    q, s = quantization.rtn(w, 3, keep=keep)  # the pruned 1.0 sets no scale
    torch.testing.assert_close(s, torch.tensor([0.5 / 3]))
    assert q[0, 0] == 0 and torch.all((q / s[:, None]).round() == q / s[:, None])


def test_rtn_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    for bits in (3, 4, 8):
        q, s = quantization.rtn(w, bits, group_size=16)
        step = s.repeat_interleave(16, dim=1)
        assert torch.all((q - w).abs() <= step / 2 + 1e-6)


def test_gptq_with_uncorrelated_inputs_is_round_to_nearest():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    q, keep, s = quantization.gptq(w, torch.eye(16) * 2, 4)
    expected, s_rtn = quantization.rtn(w, 4)
    torch.testing.assert_close(q, expected)
    torch.testing.assert_close(s.float(), s_rtn)
    assert keep.all()


def test_gptq_moves_the_second_column_by_the_obs_update_by_hand():
    w = torch.tensor([[0.9, 0.35], [-0.6, 0.8]], dtype=torch.float64)
    h = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    q, _, s = quantization.gptq(w, h, 3, damp=1e-12)
    scale = w.abs().amax(1) / 3  # per channel, from the weights before any update
    q1 = torch.round(w[:, 0] / scale) * scale
    hinv = torch.linalg.inv(h)
    # fixing w1 at q1: the OBS update of w2 is -(w1 - q1) * [H^-1]_12 / [H^-1]_11
    w2 = w[:, 1] - (w[:, 0] - q1) * hinv[0, 1] / hinv[0, 0]
    q2 = torch.clamp(torch.round(w2 / scale), -3, 3) * scale
    torch.testing.assert_close(q, torch.stack([q1, q2], dim=1), rtol=0, atol=1e-9)


def test_gptq_reconstructs_correlated_inputs_better_than_rtn():
    torch.manual_seed(0)
    base = torch.randn(512, 4)
    x = (base @ torch.randn(4, 32) + 0.1 * torch.randn(512, 32)).double()
    w = torch.randn(16, 32, dtype=torch.float64)
    h = 2 * x.T @ x / len(x)
    q_gptq, _, _ = quantization.gptq(w, h, 3)
    q_rtn, _ = quantization.rtn(w, 3)
    err = lambda q: float((x @ (w - q).T).pow(2).mean())  # noqa: E731
    assert err(q_gptq) < 0.5 * err(q_rtn)


def test_gptq_keeps_a_mask_and_the_joint_pass_prunes_exactly():
    torch.manual_seed(0)
    x = torch.randn(256, 32, dtype=torch.float64)
    h = 2 * x.T @ x / len(x)
    w = torch.randn(8, 32, dtype=torch.float64)
    keep = torch.rand(8, 32) > 0.5
    q, kept, s = quantization.gptq(w, h, 4, keep=keep, group_size=8, block_size=16)
    assert torch.equal(kept, keep) and torch.all(q[~keep] == 0)
    grid = q / s.repeat_interleave(8, dim=1)
    torch.testing.assert_close(grid, grid.round())  # every kept value on its group's grid
    q, kept, s = quantization.gptq(w, h, 4, n_prune=128)  # joint: SparseGPT's pruning
    assert int((~kept).sum()) == 128 and torch.all(q[~kept] == 0)
    grid = q / s[:, None]
    torch.testing.assert_close(grid, grid.round())
    pruned_only, keep_only = layerwise.sparsegpt(w, h, 128)
    assert torch.equal(kept, keep_only)  # the same mask as SparseGPT without quantization
    assert float((q - pruned_only).abs().max()) > 0
    with pytest.raises(ValueError, match="not both"):
        quantization.gptq(w, h, 4, keep=keep, n_prune=3)


def test_quantize_a_pruned_model_keeps_masks_and_zeros():
    torch.manual_seed(0)
    x = torch.randn(64, 12)
    for method in ("rtn", "gptq"):
        model = mlp()
        sl.prune(model, "magnitude", 0.5, budget="uniform")
        before = {n: m.clone() for n, m in masks.masks(model).items()}
        found = quantization.quantize(model, 4, method=method, data=(x, torch.zeros(64)))
        assert set(found) == {"0.weight", "2.weight"}
        for name, mask in before.items():
            assert torch.equal(masks.get_mask(model, name), mask)
            w = masks.weight(model, name).detach()
            assert torch.all(w[~mask.bool()] == 0)
            grid = w / found[name].float()[:, None]
            torch.testing.assert_close(grid, grid.round(), atol=1e-4, rtol=0)
    inputs_only = mlp()  # GPTQ needs the layers' inputs, not labels
    quantization.quantize(inputs_only, 4, method="gptq", data=[(x, None)])
    with pytest.raises(ValueError, match="needs calibration data"):
        quantization.quantize(mlp(), 4, method="gptq")
    with pytest.raises(ValueError, match="method must be one of"):
        quantization.quantize(mlp(), 4, method="awq")


def test_storage_bits_by_hand():
    w = torch.zeros(4, 8)
    w[:, :4] = 1.0  # 50% sparse, 16 nonzeros
    # bitmap: 32 bits of map + 16 values at 4 bits; per channel: 4 scales at 16 bits
    assert quantization.storage_bits(w, 4, fmt="bitmap") == 32 + 16 * 4 + 4 * 16
    # dense: 32 values at 4 bits, and with groups of 4 inputs 8 scales
    assert quantization.storage_bits(w, 4, group_size=4) == 32 * 4 + 8 * 16
    # against the format accounting, whatever its index widths
    csr = sl.formats.bits(w, "csr", value_bits=8)
    assert quantization.storage_bits(w, 8, fmt="csr", scale_bits=32) == csr + 4 * 32
    assert math.isclose(quantization.storage_bits(w, 4, fmt="bitmap") / w.numel(), 5.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 1}, "bits must be a whole number from 2 to 16"),
        ({"bits": 4, "group_size": 3}, "does not divide"),
        ({"bits": 4, "group_size": 0}, "positive whole number"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantization.rtn(torch.randn(2, 8), **kwargs)


def test_prune_and_quantize_is_the_joint_pass_layer_after_layer_on_pruned_inputs():
    """By hand: each layer's joint GPTQ pass (SparseGPT's pruning, quantized columns) on
    the inputs the layers before it give once pruned and quantized."""
    torch.manual_seed(0)
    model = mlp(12, 16, 8, 3)
    x = torch.randn(96, 12)
    joint = quantization.prune_and_quantize(
        copy.deepcopy(model), 0.5, 4, data=(x, None), budget="uniform"
    )
    by_hand = copy.deepcopy(model)
    for i in (0, 2, 4):
        xin = (by_hand[:i](x) if i else x).detach().double()
        w = by_hand[i].weight.detach().double()
        q, keep, _ = quantization.gptq(w, 2 * xin.T @ xin / len(xin), 4, n_prune=w.numel() // 2)
        with torch.no_grad():
            by_hand[i].weight.copy_(q)
        assert torch.equal(masks.get_mask(joint, f"{i}.weight").bool(), keep), i
        torch.testing.assert_close(masks.weight(joint, f"{i}.weight"), by_hand[i].weight)

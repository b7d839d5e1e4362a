"""Targeted dropout drops only the lowest-magnitude weights (or units), at rate alpha."""

import helpers
import pytest
import torch

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import registry


def mlp():
    return helpers.mlp(20, 30, 2)


def test_only_the_targeted_weights_drop_at_rate_alpha():
    m = mlp()
    reg = registry.get("targeted_dropout")(0.4, sparsity=0.5)
    reg.prepare(m)
    w = reg.weight("0.weight").detach()
    # the targeted set, found independently: the 300 smallest |w| of the 600
    threshold = w.abs().flatten().kthvalue(300).values
    targeted = w.abs() <= threshold
    assert int(targeted.sum()) == 300
    m.train()
    torch.manual_seed(1)
    drops = torch.zeros_like(w)
    for _ in range(400):
        drops += (m[0].weight == 0).float()
    assert (drops[~targeted] == 0).all()  # large weights never drop
    assert float(drops[targeted].mean()) / 400 == pytest.approx(0.4, abs=0.02)
    m.eval()
    assert torch.equal(m[0].weight, w)  # eval mode: the dense weight


def test_a_large_layer_targets_the_same_weights_as_a_full_kthvalue():
    """A layer above patterns.BRACKETED_SELECTION weights takes the bracketed threshold:
    the targeted set is still the gamma lowest |w| (rounded to ties, which all go in)."""
    from sparsity_lab.regularizers.dropout_based import TargetedDropoutMask

    w = (torch.randn(300, 784, generator=torch.Generator().manual_seed(0)) * 40).round()
    assert w.numel() > sl.patterns.BRACKETED_SELECTION
    for gamma in (0.1, 0.5, 0.9):
        k = round(gamma * w.numel())
        expected = w**2 <= (w**2).flatten().kthvalue(k).values
        got = TargetedDropoutMask(gamma, 0.5, sl.patterns.Unstructured()).targeted(w)
        assert torch.equal(got, expected), gamma


def test_unit_dropout_drops_whole_low_norm_units_and_prunes_them_at_the_end():
    m = mlp()
    reg = registry.get("targeted_dropout")(1.0, sparsity=0.4, pattern="channel")
    reg.prepare(m)
    w = reg.weight("0.weight").detach()
    norms = w.norm(dim=1)
    low = norms <= norms.kthvalue(12).values  # 40% of the 30 units
    m.train()
    dropped_rows = (m[0].weight == 0).all(dim=1)
    assert torch.equal(dropped_rows, low)  # alpha = 1: every targeted unit is dropped
    reg.finalize(m)
    assert torch.equal(sl.masks.get_mask(m, "0.weight").bool().any(1), ~low)
    assert torch.equal(sl.masks.weight(m, "0.weight")[~low], w[~low])  # survivors untouched


def test_strength_is_a_drop_rate():
    with pytest.raises(ValueError, match="drop rate"):
        registry.get("targeted_dropout")(1.5)
    assert registry.get("targeted_dropout")().gamma == 0.5

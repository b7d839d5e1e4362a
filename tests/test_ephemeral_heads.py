"""Head pruning: importance against finite differences, L0 gates against their formulas,
and masks that shrink removes without changing the model's output."""

import math

import pytest
import torch
from torch import nn

from sparsity_lab import masks, models, registry
from sparsity_lab.ephemeral import heads as H


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = models.build("tiny_transformer", input_shape=(6,), n_classes=3, dim=16, n_heads=4)
    model.double()
    tokens = torch.randint(1, 60, (5, 6), generator=torch.Generator().manual_seed(seed))
    targets = torch.tensor([0, 1, 2, 0, 1])
    return model, tokens, targets


def _loss_with_gate(model, tokens, targets, path, head, value):
    attn = model.get_submodule(path)
    d = attn.q.out_features // attn.n_heads
    gate = torch.ones(attn.n_heads, dtype=torch.float64)
    gate[head] = value
    handle = attn.out.register_forward_pre_hook(lambda m, a: (a[0] * gate.repeat_interleave(d),))
    try:
        with torch.no_grad():
            return float(nn.functional.cross_entropy(model(tokens), targets))
    finally:
        handle.remove()


def test_registered():
    assert registry.get("head_importance") is H.head_importance
    assert registry.get("head_l0") is H.HeadL0Gates


def test_head_importance_is_the_gate_derivative():
    model, tokens, targets = _model_and_batch()
    scores = H.head_importance(model, (tokens, targets), normalize=False)
    h = 1e-5
    for path, s in scores.items():
        for head in range(4):
            up = _loss_with_gate(model, tokens, targets, path, head, 1 + h)
            down = _loss_with_gate(model, tokens, targets, path, head, 1 - h)
            assert float(s[head]) == pytest.approx(abs(up - down) / (2 * h), rel=1e-5, abs=1e-9)
    normalised = H.head_importance(model, (tokens, targets))
    for path, s in normalised.items():
        assert float(s.norm()) == pytest.approx(1.0)
        torch.testing.assert_close(s, scores[path] / scores[path].norm())


def test_prune_heads_masks_the_lowest_and_shrink_removes_them():
    model, tokens, targets = _model_and_batch(1)
    model.eval()
    scores = {
        "blocks.0.attn": torch.tensor([0.4, 0.1, 0.9, 0.3]),
        "blocks.1.attn": torch.tensor([0.2, 0.8, 0.05, 0.7]),
    }
    with torch.no_grad():  # reference: the same heads gated to 0 by hand
        handles = []
        for path, off in (("blocks.0.attn", [1, 3]), ("blocks.1.attn", [0, 2])):
            attn = model.get_submodule(path)
            gate = torch.ones(4, dtype=torch.float64)
            gate[off] = 0
            handles.append(
                attn.out.register_forward_pre_hook(
                    lambda m, a, g=gate: (a[0] * g.repeat_interleave(4),)
                )
            )
        expected = model(tokens)
        for handle in handles:
            handle.remove()
    keep = H.prune_heads(model, scores, 0.5)  # 4 of the 8 heads, ranked across layers
    assert keep["blocks.0.attn"].tolist() == [True, False, True, False]
    assert keep["blocks.1.attn"].tolist() == [False, True, False, True]
    assert H.heads_kept(model) == {"blocks.0.attn": 2, "blocks.1.attn": 2}
    q_mask = masks.get_mask(model, "blocks.0.attn.q.weight")
    assert q_mask[4:8].eq(0).all() and q_mask[:4].eq(1).all()  # head 1 owns rows 4..7
    out_mask = masks.get_mask(model, "blocks.1.attn.out.weight")
    assert out_mask[:, :4].eq(0).all() and out_mask[:, 4:8].eq(1).all()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected)
        small = H.shrink_heads(model, tokens)
        torch.testing.assert_close(small(tokens), expected)
    assert small.blocks[0].attn.n_heads == 2
    dense_count = sum(
        p.numel()
        for p in models.build(
            "tiny_transformer", input_shape=(6,), n_classes=3, dim=16, n_heads=4
        ).parameters()
    )
    removed_per_head = 3 * (4 * 16 + 4) + 16 * 4  # q, k, v rows with biases; out columns
    assert sum(p.numel() for p in small.parameters()) == dense_count - 4 * removed_per_head


def test_l0_gates_follow_the_hard_concrete_formulas():
    model, tokens, _ = _model_and_batch(2)
    gates = H.HeadL0Gates(model, init_log_alpha=0.5)
    beta, gamma, zeta = 2 / 3, -0.1, 1.1
    p_open = 1 / (1 + math.exp(-(0.5 - beta * math.log(-gamma / zeta))))
    assert gates.penalty().item() == pytest.approx(8 * p_open, rel=1e-6)
    # Monte Carlo: the fraction of sampled training gates that are nonzero
    gates.train()
    torch.manual_seed(0)
    with torch.no_grad():
        draws = torch.stack([gates.gate("blocks.0.attn") for _ in range(5000)])
    assert float((draws > 0).float().mean()) == pytest.approx(p_open, abs=0.02)
    assert float(draws.min()) >= 0 and float(draws.max()) <= 1
    assert float((draws == 1).float().mean()) > 0  # the stretch makes exact ones (and zeros)
    gates.eval()
    expected = min(1.0, max(0.0, 1 / (1 + math.exp(-0.5)) * (zeta - gamma) + gamma))
    torch.testing.assert_close(
        gates.gate("blocks.1.attn"), torch.full((4,), expected, dtype=torch.float32)
    )


def test_closed_l0_gates_prune_heads_exactly():
    model, tokens, _ = _model_and_batch(3)
    model.eval()
    gates = H.HeadL0Gates(model, init_log_alpha=10.0)  # eval gates exactly 1
    with torch.no_grad():
        gates.log_alpha[0][2] = -10.0  # closed: eval gate clamps to 0
    gates.eval()
    with torch.no_grad():
        gated = model(tokens)
    keep = gates.keep()
    assert keep["blocks.0.attn"].tolist() == [True, True, False, True]
    gates.remove()
    H.prune_heads(model, keep=keep)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), gated)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="no MultiHeadSelfAttention"):
        H.head_importance(nn.Linear(2, 2), (torch.zeros(1, 2), torch.zeros(1)))
    model, tokens, targets = _model_and_batch()
    with pytest.raises(ValueError, match="give either"):
        H.prune_heads(model)
    with pytest.raises(ValueError, match="one flag per head"):
        H.prune_heads(model, keep={"blocks.0.attn": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(KeyError, match="not an attention layer"):
        H.prune_heads(model, keep={"blocks.0": torch.ones(4, dtype=torch.bool)})

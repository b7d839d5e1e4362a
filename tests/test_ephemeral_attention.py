"""Sparse attention: masks by brute force, sparsemax and entmax by closed form, and the
tiny transformer with each attention function plugged in."""

import math

import numpy as np
import pytest
import torch

from sparsity_lab import models, registry
from sparsity_lab.ephemeral import attention as A


def test_registered():
    for name in (
        "local_attention",
        "strided_attention",
        "bigbird",
        "topk_attention",
        "sparsemax",
        "entmax",
    ):
        assert registry.entry(name).kind == "ephemeral"


def test_local_and_strided_masks_by_brute_force():
    n = 9
    local = A.local_attention(n, 2)
    strided = A.strided_attention(n, 3)
    causal = A.strided_attention(n, 3, causal=True)
    for i in range(n):
        for j in range(n):
            assert local[i, j] == (abs(i - j) <= 2)
            in_pattern = abs(i - j) < 3 or (i - j) % 3 == 0
            assert strided[i, j] == in_pattern
            assert causal[i, j] == (in_pattern and j <= i)
    assert A.local_attention(4, 0).equal(torch.eye(4, dtype=torch.bool))


def test_bigbird_has_window_random_and_global_parts():
    mask = A.bigbird(12, window=1, n_random=2, n_global=1, seed=3)
    assert torch.equal(mask, A.bigbird(12, window=1, n_random=2, n_global=1, seed=3))
    assert (mask | A.local_attention(12, 1)).equal(mask)  # contains the window
    assert mask[0].all() and mask[:, 0].all()  # global token
    for i in range(1, 12):
        extra = mask[i] & ~A.local_attention(12, 1)[i]
        extra[0] = False  # the global column is not a random pick
        assert int(extra.sum()) >= 1  # at least one random key beyond the global one
        assert int(mask[i].sum()) <= 3 + 2 + 1


def test_sparsemax_closed_form_example():
    p = A.sparsemax(torch.tensor([1.0, 0.5, -1.0]))
    # support {1, 2}: tau = (1 + 0.5 - 1) / 2 = 0.25
    torch.testing.assert_close(p, torch.tensor([0.75, 0.25, 0.0]))
    assert A.sparsemax(torch.tensor([5.0, 0.0]))[1] == 0.0  # a clear winner takes all


def test_sparsemax_is_the_projection_onto_the_simplex():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(50, 7, generator=gen, dtype=torch.float64) * 2
    p = A.sparsemax(z)
    torch.testing.assert_close(p.sum(-1), torch.ones(50, dtype=torch.float64))
    assert (p == 0).any()
    # KKT conditions of min ||p - z||^2 on the simplex: p = max(z - tau, 0) with one tau
    for row_z, row_p in zip(z, p, strict=True):
        support = row_p > 0
        tau = (row_z[support] - row_p[support]).mean()
        torch.testing.assert_close(row_p, (row_z - tau).clamp(min=0))


def test_sparsemax_jacobian_matches_the_paper():
    z = torch.tensor([0.9, 0.4, 0.3, -1.0], dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(A.sparsemax, z)
    s = (A.sparsemax(z) > 0).double()
    expected = torch.diag(s) - torch.outer(s, s) / s.sum()
    torch.testing.assert_close(jac, expected)


def test_sparsemax_agrees_with_autograd_through_the_sort():
    """The fast backward (the paper's Jacobian) against autograd through the reference's
    sort, cumsum and gather, along a middle dimension and with blocked (-inf) scores, as
    in masked attention."""
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(4, 9, 5, generator=gen, dtype=torch.float64) * 3
    z[:, 2:4, 1] = -math.inf
    upstream = torch.randn(4, 9, 5, generator=gen, dtype=torch.float64)
    grads = []
    for fn in (A.sparsemax, A.sparsemax_by_sorting):
        x = z.clone().requires_grad_(True)
        p = fn(x, dim=1)
        (grad,) = torch.autograd.grad((p * upstream).sum(), x)
        grads.append((p, grad))
    (fast, fast_grad), (reference, reference_grad) = grads
    torch.testing.assert_close(fast, reference, rtol=0, atol=0)
    torch.testing.assert_close(fast_grad, reference_grad)
    assert (fast == 0).any() and (fast_grad[:, 2:4, 1] == 0).all()


def test_entmax15_closed_form_example():
    # z / 2 = (1, 0.5, 0); support {1, 2}: (1 - tau)^2 + (0.5 - tau)^2 = 1
    tau = (3 - math.sqrt(7)) / 4
    expected = torch.tensor([(1 - tau) ** 2, (0.5 - tau) ** 2, 0.0])
    torch.testing.assert_close(A.entmax(torch.tensor([2.0, 1.0, 0.0])), expected)
    torch.testing.assert_close(A.entmax(torch.zeros(4)), torch.full((4,), 0.25))


def test_entmax_sorting_agrees_with_bisection_and_sparsemax():
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(30, 6, generator=gen, dtype=torch.float64) * 3
    exact = A.entmax15(z)
    torch.testing.assert_close(exact.sum(-1), torch.ones(30, dtype=torch.float64))
    assert (exact == 0).any()
    torch.testing.assert_close(A.entmax_bisect(z, 1.5, n_iter=80), exact, atol=1e-8, rtol=0)
    torch.testing.assert_close(A.entmax(z, alpha=2.0), A.sparsemax(z))
    torch.testing.assert_close(
        A.entmax_bisect(z, 2.0, n_iter=80), A.sparsemax(z), atol=1e-8, rtol=0
    )
    # between softmax and sparsemax: alpha = 1.2 gives a denser distribution than 1.5
    denser = A.entmax(z, alpha=1.2)
    assert (denser > 0).sum() >= (exact > 0).sum()


def test_entmax15_gradient_matches_finite_differences():
    z = torch.tensor([[1.3, 0.2, -0.5, 0.9]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(A.entmax15, (z,))
    assert torch.autograd.gradcheck(A.sparsemax, (z,))


def test_entmax15_gradient_is_finite_where_a_size_past_the_support_has_delta_zero():
    # sorted u = z / 2 = (0, 0, -1, -1): the support is the first two, and at size 4 the
    # variance is exactly 1/4, so delta_4 = (1 - 4 / 4) / 4 = 0; its square root's
    # gradient, taken through every size, made every gradient of the row NaN in training
    z = torch.tensor([[0.0, 0.0, -2.0, -2.0], [0.0, 0.0, -2.0, -2.0]], requires_grad=True)
    p = A.entmax15(z)
    assert torch.allclose(p.detach(), torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 2))
    (p * torch.tensor([[1.0, -2.0, 3.0, 0.5]])).sum().backward()
    assert torch.isfinite(z.grad).all()
    # the Jacobian on the support {1, 2}: p_i = (u_i - tau)^2 with sum(p) = 1 gives
    # dtau/du_j = s_j / sum(s) and dp/du = 2 (diag(s) - s s^T / sum(s)), s = sqrt(p); u = z/2
    s = torch.tensor([0.5**0.5, 0.5**0.5])
    jacobian = torch.diag(s) - torch.outer(s, s) / s.sum()
    expected = torch.tensor([1.0, -2.0]) @ jacobian
    assert torch.allclose(z.grad[0, :2], expected, atol=1e-6)
    assert torch.equal(z.grad[0, 2:], torch.zeros(2))
    z64 = torch.tensor([[0.0, 0.0, -2.0, -2.0, -2.5]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(A.entmax15, (z64,))


def _qkv(seed=0, batch=2, heads=2, length=6, d=4):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, length, d, generator=gen) for _ in range(3)]


def test_topk_attention_keeps_k_keys_with_softmax_weights():
    q, k, v = _qkv()
    weights = A.sparse_attention_weights(q, k, topk=2)
    assert ((weights > 0).sum(-1) == 2).all()
    scores = (q @ k.transpose(-2, -1) / 2.0).numpy()
    ref = np.zeros_like(scores)
    for idx in np.ndindex(scores.shape[:-1]):
        row = scores[idx]
        top = np.argsort(-row, kind="stable")[:2]
        e = np.exp(row[top] - row[top].max())
        ref[idx + (top,)] = e / e.sum()
    torch.testing.assert_close(weights, torch.from_numpy(ref))
    torch.testing.assert_close(A.topk_attention(q, k, v, topk=2), weights @ v)


def test_masks_and_padding_in_the_weights():
    q, k, _ = _qkv(1)
    pad = torch.tensor([[False] * 4 + [True] * 2, [False] * 6])
    mask = A.local_attention(6, 1)
    for normaliser in ("softmax", "sparsemax", "entmax"):
        w = A.sparse_attention_weights(q, k, pad, mask=mask, normaliser=normaliser)
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6))
        allowed = mask & ~pad[:, None, :]  # (batch, query, key)
        has_any = allowed.any(-1)  # a query whose keys are all blocked gets uniform weights
        blocked = ~allowed[:, None] & has_any[:, None, :, None]
        assert (w[blocked.expand_as(w)] == 0).all()
        assert (w[0, :, :4, 4:] == 0).all()  # padded keys get nothing
    dense = A.sparse_attention_weights(q, k, pad)
    torch.testing.assert_close(dense, models.attention_weights(q, k, pad))


def test_use_attention_keeps_the_model_and_its_names():
    torch.manual_seed(0)
    model = models.build("tiny_transformer", input_shape=(8,), n_classes=2)
    tokens = torch.randint(1, 60, (3, 8))
    tokens[0, 5:] = 0
    before = model(tokens)
    names = [n for n, _ in model.named_parameters()]
    A.use_attention(model, A.attention_fn())
    torch.testing.assert_close(model(tokens), before)
    assert [n for n, _ in model.named_parameters()] == names
    A.use_attention(model, A.attention_fn(mask=A.local_attention(8, 0)))
    maps = A.attention_maps(model, tokens)
    for w in maps.values():  # window 0: every query attends to itself only
        torch.testing.assert_close(w[1], torch.eye(8).expand(4, 8, 8))
    A.use_attention(model, None)
    torch.testing.assert_close(model(tokens), before)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match="length must be a positive integer"):
        A.local_attention(0, 1)
    with pytest.raises(ValueError, match="alpha must be > 1"):
        A.entmax(torch.zeros(3), alpha=1.0)
    q, k, _ = _qkv()
    with pytest.raises(ValueError, match="build it for this length"):
        A.sparse_attention_weights(q, k, mask=A.local_attention(5, 1))
    with pytest.raises(ValueError, match="normaliser must be"):
        A.sparse_attention_weights(q, k, normaliser="relu")
    with pytest.raises(ValueError, match="no MultiHeadSelfAttention"):
        A.use_attention(torch.nn.Linear(2, 2), None)

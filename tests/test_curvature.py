"""Curvature pieces against independent computations: finite differences, explicit loops over
examples, direct matrix inverses and hand-built second moments."""

import pytest
import torch
import torch.nn.functional as F
from helpers import tiny_mlp
from torch import nn

from sparsity_lab import curvature, masks


def tiny_data(n: int = 24, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return x, y


NAMES = ["0.weight", "2.weight"]


def loop_gradients(model, x, y):
    """Per-example gradients with a plain Python loop over examples."""
    params = [model.get_parameter(n) for n in NAMES]
    rows = []
    for i in range(len(x)):
        loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        rows.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)]))
    return torch.stack(rows)


def flat_grad(model, x, y, flat):
    """Gradient of the mean loss at flat weights ``flat`` (for finite differences)."""
    clone = tiny_mlp()
    clone.load_state_dict(model.state_dict())
    sizes = [clone.get_parameter(n).numel() for n in NAMES]
    with torch.no_grad():
        for n, part in zip(NAMES, flat.split(sizes), strict=True):
            clone.get_parameter(n).copy_(part.reshape(clone.get_parameter(n).shape))
    loss = F.cross_entropy(clone(x), y)
    grads = torch.autograd.grad(loss, [clone.get_parameter(n) for n in NAMES])
    return torch.cat([g.flatten() for g in grads])


# --- layer inputs as a matrix ------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer, shape",
    [
        (nn.Linear(6, 3), (2, 5, 6)),
        (nn.Conv1d(3, 4, 3, stride=2, padding=1), (2, 3, 11)),
        (nn.Conv1d(3, 4, 4, padding="same", dilation=2), (2, 3, 9)),
        (nn.Conv2d(2, 5, (3, 2), stride=(2, 1), padding=(1, 0)), (2, 2, 7, 6)),
        (nn.Conv2d(2, 3, 3, padding="same"), (1, 2, 5, 5)),
    ],
)
def test_layer_input_rows_reproduce_the_layer(layer, shape):
    x = torch.randn(*shape)
    rows = curvature.layer_input_rows(layer, x)
    w = layer.weight.reshape(layer.weight.shape[0], -1)
    out = layer(x)
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        out = out.movedim(1, -1)  # channels last: one row per position
    expected = out - layer.bias
    torch.testing.assert_close(rows @ w.T, expected.reshape(-1, w.shape[0]), atol=1e-5, rtol=1e-5)


def test_layer_input_rows_refuse_grouped_convolutions():
    with pytest.raises(ValueError, match="groups=2"):
        curvature.layer_input_rows(nn.Conv1d(4, 4, 3, groups=2), torch.randn(1, 4, 8))


# --- Hessian ---------------------------------------------------------------------------------


def test_exact_hessian_equals_finite_differences_of_the_gradient():
    model, (x, y) = tiny_mlp(), tiny_data()
    hess = curvature.exact_hessian(model, NAMES, (x, y))
    w = torch.cat([model.get_parameter(n).detach().flatten() for n in NAMES])
    h = 1e-5
    columns = []
    for i in range(len(w)):
        e = torch.zeros_like(w)
        e[i] = h
        columns.append((flat_grad(model, x, y, w + e) - flat_grad(model, x, y, w - e)) / (2 * h))
    torch.testing.assert_close(hess, torch.stack(columns, 1), atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(hess, hess.T)


def test_exact_hessian_averages_batches_by_size():
    model, (x, y) = tiny_mlp(), tiny_data()
    whole = curvature.exact_hessian(model, NAMES, (x, y))
    split = curvature.exact_hessian(model, NAMES, [(x[:5], y[:5]), (x[5:], y[5:])])
    torch.testing.assert_close(whole, split)


def test_exact_hessian_is_for_tiny_models_only():
    model, data = tiny_mlp(), tiny_data()
    with pytest.raises(ValueError, match="max_params=10"):
        curvature.exact_hessian(model, NAMES, data, max_params=10)


def test_hessian_vector_product_equals_hessian_times_vector():
    model, data = tiny_mlp(), tiny_data()
    hess = curvature.exact_hessian(model, NAMES, data)
    hvp = curvature.hessian_vector_product(model, NAMES, data)
    v = torch.randn(3, len(hess), dtype=torch.float64)
    torch.testing.assert_close(hvp(v), v @ hess)
    torch.testing.assert_close(hvp(v[0]), hess @ v[0])


def test_hutchinson_diagonal_converges_to_the_exact_diagonal():
    model, data = tiny_mlp(), tiny_data()
    exact = curvature.exact_hessian(model, NAMES, data).diagonal()

    def error(n_probes):
        est = curvature.hutchinson_diagonal(model, NAMES, data, n_probes=n_probes, chunk=512)
        return float((curvature.flatten(est) - exact).norm() / exact.norm())

    errors = [error(n) for n in (16, 256, 4096)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.05
    shapes = curvature.hutchinson_diagonal(model, NAMES, data, n_probes=2)
    assert {n: tuple(t.shape) for n, t in shapes.items()} == {
        "0.weight": (4, 5),
        "2.weight": (3, 4),
    }


def test_gauss_newton_diagonal_is_that_of_j_t_softmax_hessian_j():
    model, (x, y) = tiny_mlp(), tiny_data(n=6)
    diag = curvature.flatten(curvature.gauss_newton_diagonal(model, NAMES, (x, y), chunk=4))
    params = [model.get_parameter(n) for n in NAMES]
    expected = torch.zeros_like(diag)
    for i in range(len(x)):  # explicit Jacobian of the logits, one example at a time
        logits = model(x[i : i + 1])[0]
        jac = torch.stack(
            [
                torch.cat(
                    [g.flatten() for g in torch.autograd.grad(logits[c], params, retain_graph=True)]
                )
                for c in range(3)
            ]
        )
        p = logits.softmax(0).detach()
        expected += (jac.T @ (torch.diag(p) - torch.outer(p, p)) @ jac).diagonal() / len(x)
    torch.testing.assert_close(diag, expected)
    # for softmax regression (a linear model) the Gauss-Newton matrix is the Hessian
    linear = nn.Sequential(nn.Linear(5, 3)).double()
    hess = curvature.exact_hessian(linear, ["0.weight"], (x, y))
    gn = curvature.gauss_newton_diagonal(linear, ["0.weight"], (x, y))
    torch.testing.assert_close(curvature.flatten(gn), hess.diagonal())


def test_curvature_is_taken_at_the_masked_weights_and_leaves_masks_intact():
    model, data = tiny_mlp(), tiny_data()
    keep = torch.rand(4, 5, generator=torch.Generator().manual_seed(3)) > 0.5
    masks.attach(model, "0.weight", keep)
    hess = curvature.exact_hessian(model, NAMES, data)
    plain = tiny_mlp()
    plain.load_state_dict(masks.plain_state_dict(model))
    torch.testing.assert_close(hess, curvature.exact_hessian(plain, NAMES, data))
    # the masked model still works, with the same mask (a copy's masks were removed)
    assert torch.equal(masks.get_mask(model, "0.weight").bool(), keep)
    torch.testing.assert_close(model(data[0]), plain(data[0]))


# --- empirical Fisher ------------------------------------------------------------------------


def test_per_sample_gradients_equal_a_loop_over_examples():
    model, (x, y) = tiny_mlp(), tiny_data()
    grads = curvature.per_sample_gradients(
        model, NAMES, [(x[:10], y[:10]), (x[10:], y[10:])], chunk=4
    )
    torch.testing.assert_close(grads, loop_gradients(model, x, y))
    first = curvature.per_sample_gradients(model, NAMES, (x, y), n_samples=7)
    torch.testing.assert_close(first, grads[:7])
    assert len(curvature.per_sample_gradients(model, NAMES, (x, y), n_samples=1000)) == len(x)


def test_fisher_diagonal_is_the_mean_squared_gradient():
    model, (x, y) = tiny_mlp(), tiny_data()
    g = loop_gradients(model, x, y)
    torch.testing.assert_close(curvature.fisher_diagonal(g), (g.T @ g / len(g)).diagonal())


def dampened_fisher(g, damp):
    return damp * torch.eye(g.shape[1], dtype=g.dtype) + g.T @ g / len(g)


def test_woodbury_recursion_equals_the_direct_inverse():
    model, (x, y) = tiny_mlp(), tiny_data()
    g = loop_gradients(model, x, y)
    damp = 1e-3
    expected = torch.linalg.inv(dampened_fisher(g, damp))
    torch.testing.assert_close(curvature.woodbury_inverse(g, damp), expected, rtol=1e-8, atol=1e-6)


@pytest.mark.parametrize("direct", [False, True])  # the recursion, and one factorisation
def test_woodbury_block_inverse_equals_each_block_inverted_directly(direct):
    model, (x, y) = tiny_mlp(), tiny_data()
    g = loop_gradients(model, x, y)  # 32 weights: blocks of 10 leave a padded last block
    damp = 1e-2
    blocks = curvature.woodbury_block_inverse(g, 10, damp, direct=direct)
    assert blocks.shape == (4, 10, 10)
    fisher = dampened_fisher(g, damp)
    for b in range(4):
        part = slice(10 * b, min(10 * b + 10, 32))
        size = part.stop - part.start
        direct = torch.linalg.inv(fisher[part, part])
        torch.testing.assert_close(blocks[b, :size, :size], direct, rtol=1e-8, atol=1e-8)
    # padded weights have no gradient: their inverse entries are 1/damp and decoupled
    torch.testing.assert_close(blocks[3, 2:, 2:], torch.eye(8, dtype=g.dtype) / damp)
    assert blocks[3, :2, 2:].abs().max() == 0
    dense = curvature.block_diagonal(blocks, 32)
    assert dense.shape == (32, 32) and dense[0, 15] == 0


def test_woodbury_rejects_a_non_positive_damp():
    with pytest.raises(ValueError, match="damp must be positive"):
        curvature.woodbury_block_inverse(torch.ones(2, 3), 2, 0.0)


def test_damping_is_relative_to_the_mean_diagonal_or_absolute_as_published():
    diag = torch.tensor([1.0, -3.0, 8.0])  # mean |diag| = 4
    assert curvature.damping(0.01, diag) == pytest.approx(0.04)
    assert curvature.damping(1e-5, diag, "absolute") == 1e-5
    assert curvature.damping(0.01, torch.zeros(3)) == 0.01  # nothing to scale by
    for damp, mode, match in [
        (0.0, "relative", "damp must be a positive number"),
        (-1e-3, "absolute", "damp must be a positive number"),
        (True, "relative", "damp must be a positive number"),
        ("0.01", "relative", "damp must be a positive number"),
        (0.01, "percent", "damp_mode must be one of relative, absolute"),
    ]:
        with pytest.raises(ValueError, match=match):
            curvature.damping(damp, diag, mode)


def test_inverse_fisher_vectors_equal_the_plain_recursion():
    gen = torch.Generator().manual_seed(3)
    # gradients of very different sizes, as a network's are, and more weights than examples
    g = torch.randn(48, 2000, generator=gen, dtype=torch.float64) * torch.logspace(-3, 1, 2000)
    damp = 1e-4
    v, denom = curvature.sherman_morrison_vectors(g, damp)
    fast = curvature.InverseFisher(g, damp)
    torch.testing.assert_close(fast.denom, denom, rtol=1e-9, atol=0)
    torch.testing.assert_close(fast.v, v, rtol=1e-7, atol=1e-7 * float(v.abs().max()))


def test_inverse_fisher_products_equal_the_dense_inverse_for_small_m():
    gen = torch.Generator().manual_seed(0)
    for m, size in [(1, 6), (4, 30), (12, 9)]:  # m < P, and m > P
        g = torch.randn(m, size, generator=gen, dtype=torch.float64)
        damp = 0.05
        dense = torch.linalg.inv(dampened_fisher(g, damp))
        inv = curvature.InverseFisher(g, damp)
        x = torch.randn(3, size, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(inv.ifvp(x), x @ dense)
        torch.testing.assert_close(inv.ifvp(x[0]), dense @ x[0])
        torch.testing.assert_close(inv.diagonal(), dense.diagonal())
        idx = torch.tensor([size - 1, 0, 2])
        torch.testing.assert_close(inv.columns(idx), dense[:, idx].T)


# --- Kronecker factors -----------------------------------------------------------------------


def test_kronecker_factors_are_input_and_output_gradient_second_moments():
    model, (x, y) = tiny_mlp(), tiny_data()
    factors = curvature.kronecker_factors(model, NAMES, [(x[:9], y[:9]), (x[9:], y[9:])])
    # independent: inputs by hand, output gradients one example at a time
    hidden = torch.tanh(model[0](x)).detach()
    inputs = {"0.weight": x, "2.weight": hidden}
    for name, layer in [("0.weight", model[0]), ("2.weight", model[2])]:
        outs = []
        for i in range(len(x)):
            captured = {}
            handle = layer.register_forward_hook(lambda m, a, o, c=captured: c.setdefault("o", o))
            loss = F.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
            handle.remove()
            outs.append(torch.autograd.grad(loss, captured["o"])[0][0])
        d = torch.stack(outs)
        a, g = factors[name]
        torch.testing.assert_close(a, inputs[name].T @ inputs[name] / len(x))
        torch.testing.assert_close(g, d.T @ d / len(x))


def test_kronecker_product_is_the_fisher_of_one_example():
    """For one example the weight gradient is d a^T, so its Fisher is exactly kron(G, A)."""
    model, (x, y) = tiny_mlp(), tiny_data(n=1)
    a, g = curvature.kronecker_factors(model, ["2.weight"], (x, y))["2.weight"]
    grad = loop_gradients(model, x, y)[0, 20:]  # the 3 x 4 weight of layer 2, row-major
    torch.testing.assert_close(torch.kron(g, a), torch.outer(grad, grad))


def test_kronecker_factors_of_a_convolution_use_unfolded_patches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(24, 4))
    model = model.double()
    x = torch.randn(6, 2, 8, dtype=torch.float64)
    y = torch.randint(0, 4, (6,))
    a, g = curvature.kronecker_factors(model, ["0.weight"], (x, y))["0.weight"]
    rows = curvature.layer_input_rows(model[0], x)
    torch.testing.assert_close(a, rows.T @ rows / len(rows))
    out = model[0](x)
    out.retain_grad()
    loss = F.cross_entropy(model[3](model[2](model[1](out))), y, reduction="sum")
    loss.backward()
    d = out.grad.movedim(1, -1).reshape(-1, 3)  # per-example loss gradients, per position
    torch.testing.assert_close(g, d.T @ d / len(x))


def test_kronecker_factors_need_linear_or_conv_weights():
    with pytest.raises(ValueError, match="Linear or Conv1d/2d"):
        curvature.kronecker_factors(tiny_mlp(), ["0.bias"], tiny_data())

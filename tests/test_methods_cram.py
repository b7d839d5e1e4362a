"""CrAM: one step on a quadratic toy equals the hand-derived update; BatchNorm handling."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import masks, registry
from sparsity_lab.methods.cram import one_shot, reestimate_batchnorm
from sparsity_lab.train import fit

A = torch.tensor(
    [[3.0, 0.5, 0.0, 0.2], [0.5, 2.0, 0.3, 0.0], [0.0, 0.3, 1.0, 0.1], [0.2, 0.0, 0.1, 4.0]]
)
B = torch.tensor([1.0, -2.0, 0.5, 1.5])
W0 = torch.tensor([0.8, -0.3, 0.1, 0.6])


def quadratic_run(plus, sparsity=0.5, rho=0.1, lr=0.05, pattern="unstructured", sparse_grad=False):
    """One single-sparsity CrAM step on f(w) = 1/2 w^T A w - b^T w, through the training loop."""
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(W0.reshape(1, 4))

    def loss_fn(output, target):
        w = lin.weight.flatten()
        return 0.5 * w @ A @ w - B @ w + 0 * output.sum()

    data = DataLoader(TensorDataset(torch.zeros(1, 4), torch.zeros(1)), batch_size=1)
    method = registry.get("cram", "training")(
        sparsity,
        rho=rho,
        plus=plus,
        pattern=pattern,
        sparse_grad=sparse_grad,
        sparsities=None if sparsity is None else [sparsity],
    )
    fit(lin, data, epochs=1, lr=lr, momentum=0.0, loss_fn=loss_fn, callbacks=[method])
    return lin.weight.detach().flatten()


def by_hand(plus, keep_count, rho=0.1, lr=0.05, sparse_grad=False):
    g0 = A @ W0 - B
    u = W0 + rho * g0
    keep = torch.zeros(4, dtype=torch.bool)
    keep[torch.topk(u.abs(), keep_count).indices] = True
    g_tilde = A @ (u * keep) - B  # the gradient at the compressed, perturbed point
    if sparse_grad:  # through C_s, whose derivative is the keep-mask
        g_tilde = g_tilde * keep
    step = g_tilde + g0 if plus else g_tilde
    return W0 - lr * step


@pytest.mark.parametrize("sparse_grad", [False, True])
@pytest.mark.parametrize("plus", [False, True])
def test_cram_step_on_a_quadratic_equals_the_hand_derived_update(plus, sparse_grad):
    got = quadratic_run(plus, sparse_grad=sparse_grad)
    assert torch.allclose(got, by_hand(plus, keep_count=2, sparse_grad=sparse_grad), atol=1e-6)
    # and it differs from plain SGD
    assert not torch.allclose(got, W0 - 0.05 * (A @ W0 - B), atol=1e-4)


def test_cram_plus_is_registered_and_takes_the_plus_step():
    lin = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(W0.reshape(1, 4))

    def loss_fn(output, target):
        w = lin.weight.flatten()
        return 0.5 * w @ A @ w - B @ w + 0 * output.sum()

    data = DataLoader(TensorDataset(torch.zeros(1, 4), torch.zeros(1)), batch_size=1)
    method = registry.get("cram_plus", "training")(0.5, rho=0.1, sparsities=[0.5])
    assert method.plus and "CrAM+" in type(method).__doc__
    fit(lin, data, epochs=1, lr=0.05, momentum=0.0, loss_fn=loss_fn, callbacks=[method])
    # the default gradient is the sparse one, as in the authors' code
    expected = by_hand(True, keep_count=2, sparse_grad=True)
    assert torch.allclose(lin.weight.detach().flatten(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="use 'cram'"):
        registry.get("cram_plus", "training")(0.5, plus=False)


def test_cram_with_nm_compression():
    # 2:4 on a single group of 4 is top-2 as well
    got = quadratic_run(False, sparsity=None, pattern="2:4")
    assert torch.allclose(got, by_hand(False, keep_count=2), atol=1e-6)


def test_cram_rho_zero_is_sgd_at_the_compressed_point():
    got = quadratic_run(False, rho=0.0, sparsity=0.25)
    keep = torch.zeros(4, dtype=torch.bool)
    keep[torch.topk(W0.abs(), 3).indices] = True
    assert torch.allclose(got, W0 - 0.05 * (A @ (W0 * keep) - B), atol=1e-6)


def test_default_draw_is_the_multi_grid_up_to_the_target():
    cram = registry.get("cram", "training")
    assert cram(0.9).sparsities == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert cram(0.95).sparsities == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
    assert cram(0.5).sparsities == pytest.approx([0.3, 0.4, 0.5])
    assert cram(0.2).sparsities == [0.2]
    assert cram(None, pattern="2:4").sparsities == [0.5]  # N:M compresses at its own


def test_sparsity_is_drawn_per_step_from_the_list():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=8)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    method = registry.get("cram", "training")(0.7, sparsities=[0.5, 0.7, 0.9])
    method.fit(m, data, epochs=3)
    assert len(method.drawn) == 24 and set(method.drawn) == {0.5, 0.7, 0.9}
    assert not masks.masks(m)  # CrAM trains a dense model


def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_the_extra_pass_leaves_batchnorm_statistics_alone():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    data = DataLoader(TensorDataset(x, y), batch_size=32)
    plain, crammed = bn_model(), bn_model()
    fit(plain, data, epochs=1, lr=0.0)
    registry.get("cram", "training")(0.5).fit(crammed, data, epochs=1, lr=0.0)
    # with lr 0 the weights do not move: the running stats must equal one plain pass
    assert torch.allclose(crammed[1].running_mean, plain[1].running_mean)
    assert torch.allclose(crammed[1].running_var, plain[1].running_var)


def test_batchnorm_reestimation_equals_the_data_statistics():
    m = bn_model().eval()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 6, generator=g) * 3 + 1
    data = DataLoader(TensorDataset(x, torch.zeros(40)), batch_size=10)
    seen = reestimate_batchnorm(m, data)
    assert seen == 40
    h = m[0](x).detach()
    assert torch.allclose(m[1].running_mean, h.mean(0), atol=1e-5)
    # cumulative average of the per-batch unbiased variances
    per_batch = torch.stack([h[i : i + 10].var(0, unbiased=True) for i in range(0, 40, 10)])
    assert torch.allclose(m[1].running_var, per_batch.mean(0), atol=1e-5)
    assert not m.training and m[1].momentum == 0.1  # modes and momentum restored


def test_one_shot_prunes_then_recalibrates():
    m = bn_model()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 6, generator=g)
    one_shot(m, 0.5, data=[(x, None)])
    assert sl.sparsity(m) == pytest.approx(0.5, abs=1e-2)
    h = m[0](x).detach()
    assert torch.allclose(m[1].running_mean, h.mean(0), atol=1e-5)
    with pytest.raises(ValueError, match="pass data"):
        one_shot(bn_model(), 0.5)


def test_bad_options():
    cls = registry.get("cram", "training")
    with pytest.raises(ValueError, match="rho"):
        cls(0.5, rho=-1)
    with pytest.raises(ValueError, match="sparsity must be in"):
        cls(0.5, sparsities=[0.5, 1.0])
    with pytest.raises(ValueError, match="supports the patterns"):
        cls(0.5, pattern="channel")

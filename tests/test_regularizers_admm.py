"""ADMM: the projection is the exact top-k, the dual updates follow the algorithm."""

import pytest
import torch
from helpers import mlp
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import registry


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32, generator=g)


def brute_top_k(values, k_zero):
    """Zero the ``k_zero`` entries of smallest magnitude, found by sorting every entry."""
    flat = values.flatten()
    order = sorted(range(flat.numel()), key=lambda i: (abs(float(flat[i])), i))
    out = flat.clone()
    out[order[:k_zero]] = 0
    return out.reshape(values.shape)


@pytest.mark.parametrize("budget", ["uniform", "global"])
def test_projection_is_the_exact_top_k(budget):
    reg = registry.get("admm")(sparsity=0.7, budget=budget)
    g = torch.Generator().manual_seed(1)
    values = {"a": torch.randn(6, 5, generator=g), "b": torch.randn(4, 5, generator=g)}
    z = reg.projection(values)
    if budget == "uniform":
        for n, v in values.items():
            assert torch.equal(z[n], brute_top_k(v, round(0.7 * v.numel())))
    else:
        both = torch.cat([values["a"].flatten(), values["b"].flatten()])
        expected = brute_top_k(both, round(0.7 * both.numel()))
        assert torch.equal(torch.cat([z["a"].flatten(), z["b"].flatten()]), expected)
    # the Euclidean projection: no other point with as many zeros is closer
    for n, v in values.items():
        k = int((z[n] == 0).sum())
        random_mask = torch.randperm(v.numel(), generator=g)[:k]
        other = v.flatten().clone()
        other[random_mask] = 0
        assert (v - z[n]).norm() <= (v.flatten() - other).norm() + 1e-12


def test_channel_projection_keeps_the_rows_of_largest_norm():
    reg = registry.get("admm")(sparsity=0.5, pattern="channel", budget="uniform")
    v = torch.randn(6, 4, generator=torch.Generator().manual_seed(2))
    z = reg.projection({"w": v})["w"]
    kept = z.abs().sum(1) > 0
    norms = v.norm(dim=1)
    assert int(kept.sum()) == 3 and norms[kept].min() > norms[~kept].max()
    assert torch.equal(z[kept], v[kept])


def test_admm_dual_updates_and_final_projection():
    m = mlp()
    reg = registry.get("admm")(0.5, sparsity=0.75, update_every=2, budget="uniform")
    seen = []

    class Check(sl.train.Callback):
        def on_step_end(self, trainer):
            if trainer.step % 2 == 0:
                w = reg.weight("0.weight").detach()
                # after an update, Z = proj(W + U_old) and U = U_old + W - Z
                seen.append(torch.allclose(reg.U["0.weight"] - prev["U"], w - reg.Z["0.weight"]))
                seen.append(torch.equal(reg.Z["0.weight"], brute_top_k(w + prev["U"], 144)))
            prev["U"] = reg.U["0.weight"].clone()

    prev = {}
    reg.prepare(m)
    prev["U"] = reg.U["0.weight"].clone()
    sl.train.fit(m, loader(), epochs=2, callbacks=[reg, Check()], progress=False)
    assert seen and all(seen)
    for n in ("0.weight", "2.weight"):
        mask = sl.masks.get_mask(m, n)
        assert int((mask == 0).sum()) == round(0.75 * mask.numel())


def test_admm_needs_a_target():
    with pytest.raises(ValueError, match="pass sparsity"):
        registry.get("admm")()
    assert registry.get("admm")(pattern="2:4").sparsity == 0.5  # N:M fixes it

"""Edge-popup: frozen weights, top-|score| masks, and the straight-through score gradient."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from torch.utils.data import DataLoader, TensorDataset

from sparsity_lab import masks, registry
from sparsity_lab.train import Callback

NAMES = ("0.weight", "2.weight")


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16, generator=g)


model = mlp  # Linear(12, 16), ReLU, Linear(16, 2)


def test_edge_popup_keeps_every_weight_frozen():
    m = model()
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    method = registry.get("edge_popup", "training")(0.5, init="keep")
    scores0 = None

    class First(Callback):
        def on_train_begin(self, trainer):
            nonlocal scores0
            scores0 = {n: s.detach().clone() for n, s in method.scores.items()}

    method.fit(m, loader(), epochs=3, lr=0.1, callbacks=[First()])
    for name, value in before.items():
        now = masks.dense_weight(m, name) if name in NAMES else m.state_dict()[name]
        assert torch.equal(now, value), name  # weights and biases exactly as they were
    # the scores did learn, and the masks are their top half per layer
    for n, s in method.scores.items():
        assert not torch.equal(s.detach(), scores0[n])
        k = s.numel() - math.floor(0.5 * s.numel() + 0.5)
        top = torch.zeros(s.numel(), dtype=torch.bool)
        top[torch.topk(s.detach().abs().flatten(), k).indices] = True
        assert torch.equal(masks.get_mask(m, n).bool().flatten(), top), n
    assert all(p.requires_grad for p in m.parameters())  # unfrozen again afterwards


def test_signed_constant_init():
    m = model()
    method = registry.get("edge_popup", "training")(0.5, scale_fan=False)
    method.prepare(m)
    for n, fan_in in (("0.weight", 12), ("2.weight", 16)):
        w = masks.dense_weight(m, n)
        assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2 / fan_in)))
        assert 0.3 < float((w > 0).float().mean()) < 0.7


def test_scaled_signed_constant_counts_only_the_kept_fan_in():
    m = model()
    registry.get("edge_popup", "training")(0.75, budget="uniform").prepare(m)
    for n, fan_in in (("0.weight", 12), ("2.weight", 16)):
        w = masks.dense_weight(m, n)
        # a quarter of the inputs kept: sqrt(2 / (fan_in / 4)), the reference's scale_fan
        assert torch.allclose(w.abs(), torch.full_like(w, math.sqrt(2 / (0.25 * fan_in))))
        # so the kept weights' squares sum, on average over units, to a dense unit's: 2
        kept = masks.weight(m, n).detach()
        assert float((kept**2).sum(dim=1).mean()) == pytest.approx(2.0, rel=1e-5)


def test_score_gradient_is_the_straight_through_estimate():
    m = model()
    method = registry.get("edge_popup", "training")(0.5, init="keep")
    grads = []

    class Check(Callback):
        def on_step_begin(self, trainer):
            # independent: the reference construction, where autograd runs through the mask
            # of |s| by a straight-through term (value: the mask; gradient: d|s|/ds)
            m0 = trainer.model
            leaves = {n: method.scores[n].detach().clone().requires_grad_(True) for n in NAMES}
            eff = {}
            for n, s in leaves.items():
                through = masks.get_mask(m0, n) + s.abs() - s.abs().detach()
                eff[n] = masks.dense_weight(m0, n).detach() * through
            x, y = trainer.batch
            h = F.relu(F.linear(x, eff["0.weight"], m0[0].bias.detach()))
            F.cross_entropy(F.linear(h, eff["2.weight"], m0[2].bias.detach()), y).backward()
            self.expected = {n: leaves[n].grad for n in NAMES}

        def on_after_backward(self, trainer):
            for n in NAMES:
                got = method.scores[n].grad
                assert torch.allclose(got, self.expected[n].detach(), atol=1e-7), n
            grads.append(trainer.step)

    method.fit(m, loader(), epochs=1, callbacks=[Check()])
    assert len(grads) == 4


def test_bad_init():
    with pytest.raises(ValueError, match="init must be one of"):
        registry.get("edge_popup", "training")(0.5, init="xavier")

"""Gates and learned thresholds against their formulas, computed independently."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
import sparsity_lab.regularizers
from sparsity_lab import registry
from sparsity_lab.regularizers.gates import BETA, GAMMA, ZETA, hard_concrete, prob_nonzero


def loader(n=96):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32, generator=g)


class Outputs(sl.train.Callback):
    """Eval-mode outputs at the end of training, before the regularizer finalizes."""

    x = torch.randn(8, 12, generator=torch.Generator().manual_seed(5))

    def on_train_end(self, trainer):
        trainer.model.eval()
        with torch.no_grad():
            self.before = trainer.model(self.x)


def fit_with_outputs(reg, model, epochs=2, **options):
    outputs = Outputs()
    reg.prepare(model)
    sl.train.fit(
        model, loader(), epochs=epochs, callbacks=[outputs, reg], progress=False, **options
    )
    model.eval()
    with torch.no_grad():
        after = model(outputs.x)
    return outputs.before, after


# --- L0 with hard concrete gates -----------------------------------------------------------


def test_sampled_hard_concrete_gates_stay_in_the_unit_interval_and_hit_both_ends():
    log_alpha = torch.linspace(-4, 4, 9).repeat(20000)
    u = torch.rand(log_alpha.shape, generator=torch.Generator().manual_seed(0))
    z = hard_concrete(log_alpha, u.clamp(1e-6, 1 - 1e-6))
    assert z.min() >= 0 and z.max() <= 1
    assert (z == 0).any() and (z == 1).any()  # the stretch-and-clip makes exact 0s and 1s
    det = hard_concrete(torch.tensor([-10.0, 0.0, 10.0]))
    assert det[0] == 0 and det[2] == 1 and det[1] == pytest.approx(0.5 * 1.2 - 0.1)


@pytest.mark.parametrize("log_alpha", [-3.0, -1.0, 0.0, 1.5])
def test_expected_l0_is_louizos_closed_form(log_alpha):
    # P(z != 0) = P(s > -gamma / (zeta - gamma)) for the binary concrete s, whose CDF is
    # P(s <= x) = sigmoid(beta * logit(x) - log_alpha)  (Maddison et al. 2017)
    x = -GAMMA / (ZETA - GAMMA)
    cdf = 1 / (1 + math.exp(-(BETA * math.log(x / (1 - x)) - log_alpha)))
    closed = float(prob_nonzero(torch.tensor(log_alpha)))
    assert closed == pytest.approx(1 - cdf, abs=1e-6)
    # and a Monte Carlo count of nonzero sampled gates agrees
    u = torch.rand(400_000, generator=torch.Generator().manual_seed(1)).clamp(1e-7, 1 - 1e-7)
    z = hard_concrete(torch.full_like(u, log_alpha), u)
    assert float((z > 0).float().mean()) == pytest.approx(closed, abs=4e-3)


def test_l0_penalty_threshold_and_fold():
    m = mlp()
    reg = registry.get("l0_hard_concrete")(pattern="channel", targets=["0.weight"])
    reg.prepare(m)
    gate = reg.params["0.weight"]
    with torch.no_grad():
        gate.log_alpha.copy_(torch.linspace(-5, 5, 16))
    # expected number of nonzero weights: 12 weights per gated unit
    expected = 12 * sum(1 / (1 + math.exp(-(a - BETA * math.log(-GAMMA / ZETA))))
                        for a in np.linspace(-5, 5, 16))  # fmt: skip
    assert reg.expected_l0() == pytest.approx(expected, rel=1e-5)
    sig = torch.sigmoid(torch.linspace(-5, 5, 16))
    closed = sig <= -GAMMA / (ZETA - GAMMA)  # the test-time gate is exactly zero
    assert torch.equal(reg.keep(m)["0.weight"][:, 0], ~closed)
    m.eval()
    x = torch.randn(4, 12)
    with torch.no_grad():
        before = m(x)
    reg.finalize(m)
    with torch.no_grad():
        assert torch.allclose(m(x), before, atol=1e-6)  # w * z_test, folded
    assert torch.equal(sl.masks.get_mask(m, "0.weight")[:, 0].bool(), ~closed)


def test_l0_training_gates_are_random_and_eval_gates_are_fixed():
    m = mlp()
    reg = registry.get("l0_hard_concrete")()
    reg.prepare(m)
    x = torch.randn(4, 12)
    m.train()
    assert not torch.equal(m(x), m(x))
    m.eval()
    assert torch.equal(m(x), m(x))


# --- STR --------------------------------------------------------------------------------


def test_str_weight_is_the_soft_threshold_formula():
    m = mlp()
    w = m[0].weight.detach().numpy().copy()
    reg = registry.get("str")(s_init=-2.5)
    reg.prepare(m)
    t = 1 / (1 + np.exp(2.5))
    expected = np.sign(w) * np.maximum(np.abs(w) - t, 0)
    assert np.allclose(m[0].weight.detach().numpy(), expected, atol=1e-7)
    x = torch.randn(3, 12)
    out = F.linear(x, torch.from_numpy(expected).float(), m[0].bias)
    assert torch.allclose(m[0](x), out, atol=1e-6)
    assert reg.threshold("0.weight") == pytest.approx(t)


def test_str_finalize_keeps_the_function_and_masks_the_zeros():
    m = mlp()
    reg = registry.get("str")(s_init=-3.0)
    before, after = fit_with_outputs(reg, m, lr=0.05)
    assert torch.allclose(before, after, atol=1e-6)
    for n in ("0.weight", "2.weight"):
        w, mask = sl.masks.weight(m, n), sl.masks.get_mask(m, n)
        assert torch.equal(mask.bool(), w != 0)
    assert sl.sparsity(m) == pytest.approx(reg.reached)


# --- LTP and continuous sparsification ----------------------------------------------------


def test_ltp_soft_mask_and_hard_threshold():
    m = mlp()
    w = m[0].weight.detach().clone()
    reg = registry.get("ltp")(temperature=0.2)
    reg.prepare(m)
    p = reg.params["0.weight"]
    with torch.no_grad():
        p.t.fill_(1.0)
    scale = float(w.pow(2).mean())
    soft = 1 / (1 + torch.exp(-(w**2 - scale) / (0.2 * scale)))
    assert torch.allclose(m[0].weight, w * soft, atol=1e-6)
    assert torch.equal(reg.keep(m)["0.weight"], w**2 > scale)
    reg.finalize(m)
    # the final weight is the stored w under the hard mask w^2 > tau
    assert torch.allclose(sl.masks.weight(m, "0.weight"), w * (w**2 > scale))


def test_continuous_sparsification_anneals_to_the_step_function():
    m = mlp()
    reg = registry.get("continuous_sparsification")(beta_final=50.0, s_init=0.1)
    reg.prepare(m)
    mask_module = reg.params["0.weight"]
    w = reg.weight("0.weight").detach().clone()
    assert torch.allclose(m[0].weight, w * torch.sigmoid(torch.tensor(0.1)))
    seen = []

    class Beta(sl.train.Callback):
        def on_step_end(self, trainer):
            seen.append(mask_module.beta)

    reg_callbacks = [reg, Beta()]
    sl.train.fit(m, loader(), epochs=2, callbacks=reg_callbacks, progress=False)
    assert seen[0] == pytest.approx(50.0 ** (1 / 6)) and seen[-1] == pytest.approx(50.0)
    s = mask_module.s.detach()
    assert torch.equal(sl.masks.get_mask(m, "0.weight").bool(), s > 0)


def test_gate_options_are_checked():
    with pytest.raises(ValueError, match="init_drop"):
        registry.get("l0_hard_concrete")(init_drop=1.0)
    with pytest.raises(ValueError, match="temperature"):
        registry.get("ltp")(temperature=0)
    with pytest.raises(ValueError, match="beta_final"):
        registry.get("continuous_sparsification")(beta_final=0.5)


def _conv_bn_conv():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(4, 2),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("init_drop", "expected"),
    [(None, {"0.weight": 0.3, "3.weight": 0.5, "6.weight": 0.5}),
     (0.2, {"0.weight": 0.2, "3.weight": 0.2, "6.weight": 0.2})],
)  # fmt: skip
def test_l0_initial_drop_rate_is_the_authors_and_lower_behind_a_batchnorm(init_drop, expected):
    reg = registry.get("l0_hard_concrete")(init_drop=init_drop, targets=list(expected))
    reg.prepare(_conv_bn_conv())
    for name, drop in expected.items():
        # log alpha = log((1 - p) / p): the un-stretched gate's median sits at drop rate p
        log_alpha = reg.params[name].log_alpha.detach()
        assert torch.allclose(torch.sigmoid(log_alpha), torch.full_like(log_alpha, 1 - drop))

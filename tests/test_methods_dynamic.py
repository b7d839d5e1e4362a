"""Dynamic sparse training: every prune-and-grow rule against an independent computation.

Rules checked: exact mask counts after every update; dropped weights are zeroed and lose
their optimizer state; grown weights start at zero with none; RigL grows by the dense
gradient, SNFS by momentum, SET uniformly at random; RigL's drop fraction follows the
cosine decay; DeepR rewires connections whose sign flips; Top-KAST and DPF route the
gradient as their papers say.
"""

import math
from collections import Counter
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import masks, registry
from sparsity_lab.methods.dynamic import (
    DSR,
    SET,
    SNFS,
    DeepR,
    RigL,
    StaticSparse,
    decayed_fraction,
    grow_into,
    prune_and_grow,
    sample_without_replacement,
)
from sparsity_lab.train import Callback, fit

NAMES = ("0.weight", "2.weight")


def loader(seed=0, n=96):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=g)


model = mlp  # Linear(12, 16), ReLU, Linear(16, 2)


def dense_gradient(m, batch):
    """dL/dW of the masked weights, by autograd on a plain copy (no mask machinery)."""
    plain = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    plain.load_state_dict(masks.plain_state_dict(m))
    x, y = batch
    F.cross_entropy(plain(x), y).backward()
    return {"0.weight": plain[0].weight.grad, "2.weight": plain[2].weight.grad}


# --- pure pieces ----------------------------------------------------------------------------


def test_sparse_init_rescales_each_unit_to_its_kept_fan_in():
    # Regression: unscaled random masks left a 95%-sparse 1-D CNN with logits set by its
    # biases alone (chance accuracy for static, SET and RigL alike).
    m = model()
    before = {n: masks.plain_state_dict(m)[n].clone() for n in NAMES}
    method = StaticSparse(0.7, budget="uniform")
    fit(m, loader(), epochs=1, lr=0.0, callbacks=[method])  # lr 0: only the init acts
    for n in NAMES:
        mask = masks.get_mask(m, n).float()
        kept = mask.sum(1, keepdim=True)
        factor = torch.where(kept > 0, (mask.shape[1] / kept.clamp(min=1)).sqrt(), 1.0)
        torch.testing.assert_close(masks.weight(m, n), before[n] * factor * mask)
    plain = model()
    StaticSparse(0.7, budget="uniform", rescale_init=False).fit(plain, loader(), epochs=1, lr=0.0)
    for n in NAMES:
        torch.testing.assert_close(masks.weight(plain, n), before[n] * masks.get_mask(plain, n))


def test_rescaled_sparse_layer_keeps_the_dense_output_variance():
    # Kaiming-uniform init gives Var(y) = fan_in * Var(w) = 1/3 for unit inputs; a mask
    # keeping 10% of the inputs divides it by 10 unless the kept weights are rescaled.
    torch.manual_seed(0)
    x = torch.randn(4000, 256)
    variances = {}
    for rescale in (True, False):
        layer = nn.Sequential(nn.Linear(256, 256, bias=False))
        with torch.no_grad():
            dense_var = float(layer(x).var())
        StaticSparse(0.9, budget="uniform", rescale_init=rescale).on_train_begin(
            SimpleNamespace(model=layer)
        )
        with torch.no_grad():
            variances[rescale] = float(layer(x).var()) / dense_var
    assert abs(dense_var - 1 / 3) < 0.03
    assert abs(variances[True] - 1) < 0.1
    assert abs(variances[False] - 0.1) < 0.02


def test_cosine_drop_fraction_by_hand():
    assert decayed_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert decayed_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert decayed_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert decayed_fraction(100, 0.3, 100) == 0.0
    assert decayed_fraction(50, 0.3, 100, "linear") == pytest.approx(0.15)
    assert decayed_fraction(99, 0.3, 100, "constant") == 0.3
    with pytest.raises(ValueError, match="decay must be one of"):
        decayed_fraction(0, 0.3, 100, "exp")


def test_prune_and_grow_by_hand():
    mask = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    drop = torch.tensor([0.5, 0.1, 0.9, 9.0, 9.0, 9.0])  # 9s are ignored: not kept
    grow = torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0, 0.5])
    after, final = prune_and_grow(mask, drop, grow, 2)
    assert after.tolist() == [False, False, True, False, False, False]
    # index 1 was just dropped and has the largest growth score: it comes back
    assert final.tolist() == [False, True, True, False, True, False]
    with pytest.raises(ValueError, match="cannot drop"):
        prune_and_grow(mask, drop, grow, 4)


def prune_and_grow_by_sorting(mask, drop_scores, grow_scores, n_drop, n_grow=None):
    """The readable reference: two stable sorts of every score."""
    n_grow = n_drop if n_grow is None else n_grow
    keep = mask.bool().flatten()
    drop = torch.where(keep, drop_scores.flatten().double(), math.inf)
    after = keep.clone()
    after[torch.argsort(drop, stable=True)[:n_drop]] = False
    grow = torch.where(after, -math.inf, grow_scores.flatten().double())
    final = after.clone()
    final[torch.argsort(grow, descending=True, stable=True)[:n_grow]] = True
    return after.reshape(mask.shape), final.reshape(mask.shape)


@pytest.mark.parametrize("values", [1000, 3])  # few values: ties everywhere
def test_prune_and_grow_agrees_with_sorting(values):
    g = torch.Generator().manual_seed(values)
    for _ in range(20):
        shape = (int(torch.randint(2, 40, (1,), generator=g)), 7)
        mask = torch.rand(shape, generator=g) < 0.4
        kept, free = int(mask.sum()), mask.numel() - int(mask.sum())
        n_drop = int(torch.randint(0, kept + 1, (1,), generator=g))
        n_grow = int(torch.randint(0, free + n_drop + 1, (1,), generator=g))
        drop = torch.randint(0, values, shape, generator=g).float()
        grow = torch.randint(0, values, shape, generator=g).float()
        fast = prune_and_grow(mask, drop, grow, n_drop, n_grow)
        reference = prune_and_grow_by_sorting(mask, drop, grow, n_drop, n_grow)
        assert torch.equal(fast[0], reference[0]) and torch.equal(fast[1], reference[1])
        assert int(fast[1].sum()) == kept - n_drop + n_grow


@pytest.mark.parametrize("values", [1000, 3])
def test_grow_into_is_prune_and_grow_of_the_entries_already_dropped(values):
    """``grow_into(mask & ~died, ...)`` is ``prune_and_grow(mask, (~died).double(), ...)``:
    the dropped ones are the only kept entries that score 0, so no ranking is needed."""
    g = torch.Generator().manual_seed(values)
    for _ in range(20):
        shape = (int(torch.randint(2, 40, (1,), generator=g)), 7)
        mask = torch.rand(shape, generator=g) < 0.4
        died = mask & (torch.rand(shape, generator=g) < 0.3)
        free = torch.randint(0, values, shape, generator=g).double()  # few values: ties
        k = int(died.sum())
        after, final = prune_and_grow(mask, (~died).double(), free, k)
        assert torch.equal(mask & ~died, after)
        assert torch.equal(grow_into(mask & ~died, free, k), final)
        assert torch.equal(final, prune_and_grow_by_sorting(mask, (~died).double(), free, k)[1])
    with pytest.raises(ValueError, match="cannot grow"):
        grow_into(torch.ones(3, dtype=torch.bool), torch.zeros(3), 1)


@pytest.mark.parametrize("k", [2, 4])  # drawn and redrawn; a permutation (k over half of 7)
def test_sample_without_replacement_draws_every_subset_equally_often(k):
    """Against the closed form: each of the C(7, k) subsets has probability 1 / C(7, k)."""
    g = torch.Generator().manual_seed(k)
    counts = Counter()
    for _ in range(7000):
        drawn = sample_without_replacement(7, k, g)
        assert drawn.dtype == torch.int64 and len(set(drawn.tolist())) == k
        assert 0 <= int(drawn.min()) and int(drawn.max()) < 7
        counts[tuple(sorted(drawn.tolist()))] += 1
    assert len(counts) == math.comb(7, k)
    assert stats.chisquare(list(counts.values())).pvalue > 1e-3
    assert sample_without_replacement(5, 0, g).numel() == 0
    assert sorted(sample_without_replacement(5, 5, g).tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="cannot draw 6 distinct numbers of 5"):
        sample_without_replacement(5, 6, g)


def test_prune_and_grow_nan_ranks_as_a_sort_ranks_it():
    mask = torch.tensor([1, 1, 1, 0, 0, 0], dtype=torch.bool)
    nan = math.nan
    drop = torch.tensor([nan, 0.1, 0.9, 0.0, 0.0, 0.0])  # NaN is the largest: kept
    grow = torch.tensor([0.0, 0.0, 0.0, 1.0, nan, 2.0])  # NaN is the largest: grown
    after, final = prune_and_grow(mask, drop, grow, 1, 2)
    assert after.tolist() == [True, False, True, False, False, False]
    assert final.tolist() == [True, False, True, False, True, True]
    reference = prune_and_grow_by_sorting(mask, drop, grow, 1, 2)
    assert torch.equal(after, reference[0]) and torch.equal(final, reference[1])


# --- RigL -----------------------------------------------------------------------------------


class Spy(Callback):
    """Placed before the method: sees each update step's inputs to compute it independently."""

    def __init__(self, method):
        self.method, self.records = method, []

    def on_step_begin(self, trainer):
        self.before = {
            "masks": {n: masks.get_mask(trainer.model, n).clone().bool() for n in NAMES},
            "grad": dense_gradient(trainer.model, trainer.batch),
        }

    def on_step_end(self, trainer):  # after the optimizer step, before the method's update
        self.before["weights"] = {n: masks.weight(trainer.model, n).detach().clone() for n in NAMES}
        self.before["step"] = trainer.step


class Check(Callback):
    """Placed after the method: checks the state the update left."""

    def __init__(self, spy, active):
        self.spy, self.active, self.updates, self.regrown = spy, active, 0, 0

    def on_step_end(self, trainer):
        m, opt = trainer.model, trainer.optimizer
        for n in NAMES:
            mask = masks.get_mask(m, n).bool()
            w = masks.dense_weight(m, n)
            buf = opt.state[w]["momentum_buffer"]
            # exact count, and nothing outside the mask: no value, no momentum
            assert int(mask.sum()) == self.active[n], (trainer.step, n)
            assert torch.all(w[~mask] == 0) and torch.all(buf[~mask] == 0)
        if not self.spy.method.log or self.spy.method.log[-1]["step"] != trainer.step:
            return
        self.updates += 1
        self.check_update(trainer)

    def check_update(self, trainer):
        m, opt = trainer.model, trainer.optimizer
        rigl, before = self.spy.method, self.spy.before
        fraction = 0.3 / 2 * (1 + math.cos(math.pi * trainer.step / rigl.end_step))
        assert rigl.log[-1]["drop_fraction"] == pytest.approx(fraction)
        for n in NAMES:
            old, w_old, g = before["masks"][n], before["weights"][n], before["grad"][n].abs()
            k = math.floor(fraction * int(old.sum()))  # truncated, as the reference
            # independent drop: the k smallest |w| among the kept weights
            drop_order = torch.where(old, w_old.abs(), torch.full_like(w_old, math.inf))
            dropped = torch.zeros_like(old)
            # ties (two classes give rows of equal |gradient|) go to the lower index
            dropped.view(-1)[torch.argsort(drop_order.flatten(), stable=True)[:k]] = True
            after = old & ~dropped
            # independent growth: the k largest dense |gradient| among the rest
            grow_order = torch.where(after, torch.full_like(g, -1.0), g)
            grown = torch.zeros_like(old)
            grown.view(-1)[
                torch.argsort(grow_order.flatten(), descending=True, stable=True)[:k]
            ] = True
            new = masks.get_mask(m, n).bool()
            assert torch.equal(new, after | grown), n
            w = masks.dense_weight(m, n)
            buf = opt.state[w]["momentum_buffer"]
            fresh = grown & ~old  # new positions start at zero, with no momentum
            assert torch.all(w[fresh] == 0) and torch.all(buf[fresh] == 0), n
            back = grown & old  # dropped and grown back: untouched, as google-research/rigl
            assert torch.equal(w[back], w_old[back]), n
            self.regrown += int(back.sum())


def test_rigl_drops_by_magnitude_grows_by_dense_gradient_with_exact_counts():
    m = model()
    rigl = RigL(0.75, budget="uniform", update_frequency=3, end=0.8)
    spy = Spy(rigl)
    active = {n: round(0.25 * (12 * 16 if n == "0.weight" else 32)) for n in NAMES}
    check = Check(spy, active)
    fit(m, loader(), epochs=3, lr=0.1, callbacks=[spy, rigl, check], seed=0)
    assert check.updates == len(rigl.log) == 4  # steps 3, 6, 9, 12 < 0.8 * 18
    assert check.regrown > 0  # the keep-its-value rule for regrown weights was exercised
    assert all(r["dropped"] == r["grown"] for r in rigl.log)


def test_rigl_uses_dense_gradients_only_on_update_steps():
    m = model()
    rigl = RigL(0.75, update_frequency=4)
    flags = []

    class Grad(Callback):
        def on_after_backward(self, trainer):
            # the gradient the optimizer will apply is always sparse
            for n in NAMES:
                grad = masks.dense_weight(trainer.model, n).grad
                assert torch.all(grad[masks.get_mask(trainer.model, n) == 0] == 0)
            flags.append(rigl._dense_step)

    fit(m, loader(), epochs=2, callbacks=[rigl, Grad()])
    assert flags == [(s + 1) % 4 == 0 and s + 1 < rigl.end_step for s in range(12)]


class Record(Callback):
    """Placed after the method: the starting masks and weights, and every batch in order."""

    def on_train_begin(self, trainer):
        m = trainer.model
        self.start = {k: v.detach().clone() for k, v in masks.plain_state_dict(m).items()}
        self.masks = {n: masks.get_mask(m, n).clone().bool() for n in NAMES}
        self.batches = []

    def on_step_begin(self, trainer):
        self.batches.append(trainer.batch)


def reference_rigl(record, *, frequency, begin_step, end_step, lr=0.1, alpha=0.3):
    """google-research/rigl's SparseRigLOptimizer transcribed on a plain model.

    An iteration whose global step ``t`` has ``begin_step <= t <= end_step`` and
    ``t >= last + frequency`` updates the masks instead of stepping (and ``t`` stays);
    the drop fraction is the cosine decay from ``begin_step``; drop the floor(f * n_kept)
    smallest |w|, grow as many largest |dense gradient| outside the kept set; new
    positions start at zero with zero momentum, regrown ones keep theirs.
    """
    plain = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    plain.load_state_dict(record.start)
    weights = {"0.weight": plain[0].weight, "2.weight": plain[2].weight}
    mask = {n: m.clone() for n, m in record.masks.items()}
    opt = torch.optim.SGD(plain.parameters(), lr=lr, momentum=0.9)
    t, last, updates = 0, None, []
    for x, y in record.batches:
        opt.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        due = last is None or t >= last + frequency
        if begin_step <= t <= end_step and due:
            f = alpha / 2 * (1 + math.cos(math.pi * (t - begin_step) / (end_step - begin_step)))
            for n, w in weights.items():
                old, k = mask[n], math.floor(f * int(mask[n].sum()))
                drop = torch.where(old, w.detach().abs(), torch.full_like(w, math.inf))
                after = old.clone()
                after.view(-1)[torch.argsort(drop.flatten(), stable=True)[:k]] = False
                grow = torch.where(after, torch.full_like(w, -1.0), w.grad.abs())
                new = after.clone()
                order = torch.argsort(grow.flatten(), descending=True, stable=True)
                new.view(-1)[order[:k]] = True
                changed = (old & ~new) | (new & ~old)
                with torch.no_grad():
                    w[changed] = 0.0
                buf = opt.state.get(w, {}).get("momentum_buffer")
                if buf is not None:
                    buf[changed] = 0.0
                mask[n] = new
            updates.append(t)
            last = t
            continue
        for n, w in weights.items():
            w.grad.mul_(mask[n])
        opt.step()
        t += 1
    return plain, mask, updates


def test_rigl_reference_timing_matches_the_reference_rule_transcribed():
    # 18 batches; begin_step round(0.2 * 18) = 4, end_step round(0.8 * 18) = 14
    m = model()
    rigl = RigL(0.75, budget="uniform", update_frequency=3, begin=0.2, end=0.8, timing="reference")
    record = Record()
    trainer = sl.train.Trainer(m, loader(), epochs=3, lr=0.1, callbacks=[rigl, record])
    trainer.fit()
    plain, mask, updates = reference_rigl(record, frequency=3, begin_step=4, end_step=14)
    assert updates == [r["step"] for r in rigl.log] == [4, 7, 10, 13]
    assert trainer.skipped_steps == 4 and trainer.step == 18 - 4
    assert rigl.log[0]["dropped"] > 0  # the last update, near the decay's end, may drop 0
    for n, (i, name) in zip(NAMES, [(0, "weight"), (2, "weight")], strict=True):
        assert torch.equal(masks.get_mask(m, n).bool(), mask[n]), n
        ours = masks.weight(m, n).detach()
        torch.testing.assert_close(ours, getattr(plain[i], name).detach(), rtol=0, atol=1e-6)
    torch.testing.assert_close(m[0].bias.detach(), plain[0].bias.detach(), rtol=0, atol=1e-6)


def test_rigl_after_step_timing_begins_at_begin_step_and_decays_from_there():
    m = model()
    rigl = RigL(0.75, budget="uniform", update_frequency=3, begin=0.2, end=0.8)
    fit(m, loader(), epochs=3, lr=0.1, callbacks=[rigl])
    assert (rigl.begin_step, rigl.end_step) == (4, 14)
    assert [r["step"] for r in rigl.log] == [7, 10, 13]  # after steps 4 + 3k, below 14
    for r in rigl.log:
        expected = 0.3 / 2 * (1 + math.cos(math.pi * (r["step"] - 4) / 10))
        assert r["drop_fraction"] == pytest.approx(expected)


def test_rigl_exposes_the_scores_of_its_latest_update():
    m = model()
    rigl = RigL(0.75, budget="uniform", update_frequency=3, end=0.8)
    spy = Spy(rigl)

    class Scores(Callback):
        def on_step_end(self, trainer):
            if rigl.log and rigl.log[-1]["step"] == trainer.step:
                assert rigl.last_scores["step"] == trainer.step
                for n in NAMES:
                    grow, drop = rigl.last_scores["grow"][n], rigl.last_scores["drop"][n]
                    # the dense gradient of the batch, by autograd on a plain copy
                    torch.testing.assert_close(grow, spy.before["grad"][n].abs())
                    assert torch.equal(drop, spy.before["weights"][n].abs())
                self.checked = getattr(self, "checked", 0) + 1

    scores = Scores()
    fit(m, loader(), epochs=3, lr=0.1, callbacks=[spy, rigl, scores], seed=0)
    assert scores.checked == len(rigl.log) == 4


@pytest.mark.parametrize("grow_init", ["random_normal", "random_uniform"])
def test_grow_init_draws_from_the_surviving_weights(grow_init):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(100, 100))
    method = SET(0.5, budget="uniform", grow_init=grow_init)
    trainer = fake_trainer(m)
    method.on_train_begin(trainer)
    surviving = masks.get_mask(m, "0.weight").bool()
    kept = masks.dense_weight(m, "0.weight").detach()[surviving].double()
    draw = method.grown_values(trainer, "0.weight", surviving).double().flatten()
    if grow_init == "random_normal":
        assert stats.kstest(draw.numpy(), "norm", args=(0, float(kept.std()))).pvalue > 1e-3
    else:
        bound = float(kept.abs().mean())
        assert float(draw.abs().max()) <= bound
        assert stats.kstest(draw.numpy(), "uniform", args=(-bound, 2 * bound)).pvalue > 1e-3


def test_grown_weights_start_at_the_draw_and_regrown_ones_keep_their_value():
    m = model()
    rigl = RigL(0.5, budget="uniform", update_frequency=3, end=0.8, grow_init="random_uniform")
    spy = Spy(rigl)

    class Starts(Callback):
        fresh = back = 0

        def on_step_end(self, trainer):
            if not rigl.log or rigl.log[-1]["step"] != trainer.step:
                return
            for n in NAMES:
                old, new = spy.before["masks"][n], masks.get_mask(trainer.model, n).bool()
                w = masks.dense_weight(trainer.model, n).detach()
                buf = trainer.optimizer.state[masks.dense_weight(trainer.model, n)]
                w_old = spy.before["weights"][n]
                k = math.floor(rigl.log[-1]["drop_fraction"] * int(old.sum()))
                order = torch.where(old, w_old.abs(), torch.full_like(w_old, math.inf))
                after = old.clone()  # the survivors of the drop, computed here
                after.view(-1)[torch.argsort(order.flatten(), stable=True)[:k]] = False
                fresh, back = new & ~old, new & old & ~after
                assert torch.all(w[fresh] != 0) and torch.all(buf["momentum_buffer"][fresh] == 0)
                bound = float(w_old[after].abs().mean())
                assert torch.all(w[fresh].abs() <= bound + 1e-6)
                assert torch.equal(w[back], w_old[back])
                self.fresh += int(fresh.sum())
                self.back += int(back.sum())

    starts = Starts()
    fit(m, loader(), epochs=3, lr=0.1, callbacks=[spy, rigl, starts], seed=0)
    assert starts.fresh > 0 and starts.back > 0


def test_dynamic_options_are_checked():
    with pytest.raises(ValueError, match="grow_init must be one of"):
        RigL(0.5, grow_init="ones")
    with pytest.raises(ValueError, match="must not come after end"):
        SET(0.5, begin=0.8, end=0.5)
    with pytest.raises(ValueError, match="timing must be one of"):
        RigL(0.5, timing="before")
    assert {"begin", "grow_init", "timing"} <= set(registry.get("rigl").options())
    assert {"begin", "grow_init"} <= set(registry.get("dsr").options())


# --- SET ------------------------------------------------------------------------------------


def fake_trainer(m, step=1, total=100):
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    return SimpleNamespace(model=m, optimizer=opt, step=step, total_steps=total, epochs=1)


def test_set_grows_uniformly_at_random():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(20, 20))
    method = SET(0.5, budget="uniform", drop_fraction=0.3, update_frequency=1, end=1.0)
    trainer = fake_trainer(m)
    method.on_train_begin(trainer)
    start = masks.get_mask(m, "0.weight").clone().bool()
    # the weights and gradients are fixed, so any preference would show in the counts
    w = masks.dense_weight(m, "0.weight")
    counts = torch.zeros(400)
    for _ in range(300):
        with torch.no_grad():
            w.copy_(torch.linspace(0.1, 1, 400).reshape(20, 20))
        masks.set_mask(m, "0.weight", start)
        before = masks.get_mask(m, "0.weight").clone().bool()
        method.update(trainer)
        after = masks.get_mask(m, "0.weight").bool()
        assert int(after.sum()) == 200
        counts += (after & ~before).flatten().float()
        # the dropped ones were the 60 smallest |w| of the kept ones
        kept_w = torch.where(before, w.detach().abs(), torch.full_like(w, math.inf))
        smallest = torch.topk(kept_w.flatten(), 60, largest=False).indices
        assert int(after.flatten()[smallest].sum()) <= 60  # some may have regrown
    # candidates: the 200 free positions and the 60 dropped; each should be grown equally
    candidates = (~start).flatten()
    kept_w = torch.where(start, torch.linspace(0.1, 1, 400).reshape(20, 20), math.inf)
    candidates[torch.topk(kept_w.flatten(), 60, largest=False).indices] = True
    observed = counts[candidates]
    # dropped-and-regrown positions do not count as new in `counts`; test the free ones
    free = counts[(~start).flatten()]
    assert float(free.sum()) > 0 and int(candidates.sum()) == 260
    assert stats.chisquare(free.numpy()).pvalue > 1e-3
    assert float(observed.max()) < 3 * float(free.mean())


def test_set_keeps_the_drop_fraction_constant():
    m = model()
    method = SET(0.8, budget="er")
    fit(m, loader(), epochs=4, callbacks=[method])
    assert [r["drop_fraction"] for r in method.log] == [0.3, 0.3]  # epochs 1 and 2 < 0.75 * 4
    for n in NAMES:
        mask = masks.get_mask(m, n)
        assert int(mask.sum()) == round((1 - method_budget(n)) * mask.numel())


def method_budget(name):
    return sl.budgets.er({"0.weight": (16, 12), "2.weight": (2, 16)}, 0.8)[name]


# --- SNFS -----------------------------------------------------------------------------------


def test_snfs_grows_by_momentum_and_redistributes_by_mean_momentum():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    method = SNFS(0.5, budget="uniform", drop_fraction=0.2, decay="constant", end=1.0)
    trainer = fake_trainer(m)
    method.on_train_begin(trainer)
    g = torch.Generator().manual_seed(3)
    momenta, grads = {}, {}
    for i, n in enumerate(NAMES[:1] + ("1.weight",)):
        w = masks.dense_weight(m, n)
        momenta[n] = torch.rand(10, 10, generator=g) * (1 + 3 * i)  # layer 1 moves more
        grads[n] = -momenta[n]  # a gradient ranking the other way round
        trainer.optimizer.state[w]["momentum_buffer"] = momenta[n].clone()
        w.grad = grads[n].clone()
    before = {n: masks.get_mask(m, n).clone().bool() for n in momenta}
    weights = {n: masks.weight(m, n).detach().clone() for n in momenta}
    method.update(trainer)
    # independent: drop 20% of 50 = 10 per layer by |w|; regrow 20 in total, split by the
    # mean |momentum| of the kept weights
    mean = {n: float(momenta[n][before[n]].mean()) for n in momenta}
    share = {n: 20 * mean[n] / sum(mean.values()) for n in momenta}
    grows = {n: math.floor(share[n]) for n in momenta}
    first = max(momenta, key=lambda n: share[n] - math.floor(share[n]))
    grows[first] += 20 - sum(grows.values())
    for n in momenta:
        old, w_old = before[n], weights[n]
        order = torch.where(old, w_old.abs(), torch.full_like(w_old, math.inf)).flatten()
        after = old.flatten().clone()
        after[torch.topk(order, 10, largest=False).indices] = False
        free_momentum = torch.where(after, torch.full((100,), -1.0), momenta[n].flatten())
        expected = after.clone()
        expected[torch.topk(free_momentum, grows[n]).indices] = True
        new = masks.get_mask(m, n).bool()
        assert torch.equal(new.flatten(), expected), n
        grown = new & ~after.reshape(10, 10)
        w = masks.dense_weight(m, n)
        assert torch.all(w[grown] == 0)
        assert torch.all(trainer.optimizer.state[w]["momentum_buffer"][grown] == 0)
    assert sum(int(masks.get_mask(m, n).sum()) for n in momenta) == 100  # exact total
    assert grows["1.weight"] > grows["0.weight"]


def test_snfs_keeps_masked_weights_at_zero_while_their_momentum_is_dense():
    m = model()
    method = SNFS(0.8)
    seen = {}

    class Look(Callback):
        def on_step_end(self, trainer):
            n = "0.weight"
            w, mask = masks.dense_weight(trainer.model, n), masks.get_mask(trainer.model, n)
            assert torch.all(w[mask == 0] == 0)
            buf = trainer.optimizer.state[w]["momentum_buffer"]
            seen["dense_momentum"] = bool((buf[mask == 0] != 0).any())

    fit(m, loader(), epochs=2, callbacks=[method, Look()])
    assert seen["dense_momentum"]


# --- DSR ------------------------------------------------------------------------------------


def test_dsr_threshold_adapts_and_regrowth_follows_survivors():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10), nn.Linear(10, 10))
    method = DSR(0.5, budget="uniform", threshold=0.25, drop_fraction=0.1, end=1.0)
    trainer = fake_trainer(m)
    method.on_train_begin(trainer)
    # layer 0: 20 kept weights below the threshold, layer 1: none
    for n, small in (("0.weight", 20), ("1.weight", 0)):
        w, mask = masks.dense_weight(m, n), masks.get_mask(m, n).bool()
        values = torch.ones(100)
        kept = mask.flatten().nonzero().flatten()
        values[kept[:small]] = 0.1
        with torch.no_grad():
            w.copy_((values * mask.flatten()).reshape(10, 10))
    plan = method.plan(trainer, list(NAMES[:1]) + ["1.weight"], 0.1)
    # 20 pruned > (1 + 0.1) * 10 wanted: the threshold halves
    assert method.threshold == pytest.approx(0.125)
    # survivors 30 and 50: 20 regrown split 7.5 / 12.5 -> 8 and 12 (largest remainder)
    assert plan == {"0.weight": (20, 8), "1.weight": (0, 12)}
    method.threshold = 0.25
    method.update(trainer)
    assert sum(int(masks.get_mask(m, n).sum()) for n in ("0.weight", "1.weight")) == 100
    assert int(masks.get_mask(m, "0.weight").sum()) == 38
    assert method.log[-1]["threshold"] == pytest.approx(0.125)


def test_dsr_doubles_a_threshold_that_prunes_too_little():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10))
    method = DSR(0.5, threshold=1e-6, end=1.0)
    trainer = fake_trainer(m)
    method.on_train_begin(trainer)
    method.plan(trainer, ["0.weight"], 0.1)
    assert method.threshold == pytest.approx(2e-6)


# --- DeepR ----------------------------------------------------------------------------------


def test_deepr_rewires_connections_whose_sign_flips():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10))
    method = DeepR(0.5, l1=0.0, temperature=0.0)
    trainer = fake_trainer(m)
    method.on_train_begin(trainer)
    w, mask = masks.dense_weight(m, "0.weight"), masks.get_mask(m, "0.weight").bool()
    kept = mask.flatten().nonzero().flatten()
    flipped = torch.zeros(100, dtype=torch.bool)
    flipped[kept[:7]] = True
    flipped = flipped.reshape(10, 10)
    with torch.no_grad():  # the optimizer pushed seven kept weights across zero
        w[flipped] = -method.signs["0.weight"][flipped] * 0.01
    before = mask.clone()
    method.on_step_end(trainer)
    after = masks.get_mask(m, "0.weight").bool()
    assert int(after.sum()) == 50  # the layer keeps its number of connections
    # the unflipped connections stay; seven connections are (re)born at zero, which may
    # include a flipped one drawn again with a fresh sign
    assert torch.all(after[before & ~flipped])
    born = after & (flipped | ~before)
    assert int(born.sum()) == 7
    assert torch.all(w[born] == 0)
    assert method.log[-1]["rewired"] == 7


@pytest.mark.parametrize("channels_last", [False, True])
def test_deepr_reborn_connections_are_uniform_over_the_free_ones(channels_last):
    """Five connections die at every step from the same state: every free position (the
    dead ones included) should be reborn equally often, at zero and with no momentum."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(2, 4, 3))  # 72 weights, 36 kept
    if channels_last:  # a non-contiguous weight: the step works on a copy and writes it back
        m = m.to(memory_format=torch.channels_last)
    method = DeepR(0.5, l1=0.0, temperature=0.0, seed=0)
    trainer = fake_trainer(m)
    method.on_train_begin(trainer)
    w = masks.dense_weight(m, "0.weight")
    assert w.is_contiguous() is not channels_last
    start = masks.get_mask(m, "0.weight").bool().clone()
    signs = method.signs["0.weight"].clone()
    dying = torch.zeros(72, dtype=torch.bool)
    dying[start.flatten().nonzero().flatten()[:5]] = True
    dying = dying.reshape(start.shape)
    value = torch.where(dying, -0.01 * signs, 0.5 * signs) * start  # five across zero
    births = torch.zeros(72)
    for _ in range(1500):
        masks.set_mask(m, "0.weight", start)
        method.signs["0.weight"].copy_(signs)
        with torch.no_grad():
            w.copy_(value)
        trainer.optimizer.state[w] = {"momentum_buffer": torch.ones_like(w)}
        method.on_step_end(trainer)
        after = masks.get_mask(m, "0.weight").bool()
        assert int(after.sum()) == 36 and torch.all(after[start & ~dying])
        born = after & (dying | ~start)
        assert int(born.sum()) == 5 and torch.all(w[born] == 0)
        momentum = trainer.optimizer.state[w]["momentum_buffer"]
        assert torch.all(momentum[born | dying] == 0) and torch.all(momentum[after & ~born] == 1)
        assert torch.all(w[~after] == 0) and torch.equal(w[after & ~born], value[after & ~born])
        births += born.flatten().float()
    free = (dying | ~start).flatten()  # 36 free and 5 dead: each reborn 5 / 41 of the time
    assert float(births[~free].sum()) == 0
    assert stats.chisquare(births[free].numpy()).pvalue > 1e-3


def test_deepr_l1_and_noise_move_only_kept_weights():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(10, 10))
    method = DeepR(0.5, l1=0.5, temperature=0.0)
    trainer = fake_trainer(m)
    method.on_train_begin(trainer)
    w = masks.dense_weight(m, "0.weight")
    with torch.no_grad():
        w.copy_(method.signs["0.weight"] * masks.get_mask(m, "0.weight"))  # |w| = 1 if kept
    method.on_step_end(trainer)
    mask = masks.get_mask(m, "0.weight").bool()
    # lr 0.1 * l1 0.5: each kept weight moved 0.05 toward zero, nothing else moved
    assert torch.allclose(w[mask].abs(), torch.full((50,), 0.95))
    assert torch.all(w[~mask] == 0)


# --- Top-KAST -------------------------------------------------------------------------------


def test_topkast_forward_set_backward_set_and_penalty():
    m = model()
    method = registry.get("topkast", "training")(
        0.75, backward_sparsity=0.5, penalty=0.01, budget="uniform"
    )
    checked = []

    class Grad(Callback):
        def on_step_begin(self, trainer):
            self.grad = dense_gradient(trainer.model, trainer.batch)

        def on_after_backward(self, trainer):
            for n in NAMES:
                theta = masks.dense_weight(trainer.model, n).detach()
                a = masks.get_mask(trainer.model, n).bool()
                k_a = theta.numel() - math.floor(0.75 * theta.numel() + 0.5)
                k_b = theta.numel() - math.floor(0.5 * theta.numel() + 0.5)
                top_a = torch.topk(theta.abs().flatten(), k_a).indices
                top_b = torch.topk(theta.abs().flatten(), k_b).indices
                assert torch.equal(
                    a.flatten().nonzero().flatten().sort().values, top_a.sort().values
                )
                b = torch.zeros(theta.numel(), dtype=torch.bool)
                b[top_b] = True
                b = b.reshape(theta.shape)
                scale = torch.where(a, 0.01, 0.01 / 0.25)
                expected = (self.grad[n] + scale * theta) * b
                got = masks.dense_weight(trainer.model, n).grad
                assert torch.allclose(got, expected, atol=1e-6), n
            checked.append(trainer.step)

    fit(m, loader(), epochs=1, callbacks=[method, Grad()])
    assert len(checked) == 6
    # the dense weights survive under the mask
    assert bool((masks.dense_weight(m, "0.weight")[masks.get_mask(m, "0.weight") == 0] != 0).any())


# --- DPF ------------------------------------------------------------------------------------


def test_dpf_feeds_the_sparse_gradient_back_to_the_dense_weights():
    m = model()
    method = registry.get("dpf", "training")(0.75, update_frequency=2, budget="uniform")
    seen = []

    class Step(Callback):
        def on_step_begin(self, trainer):
            self.theta = {n: masks.dense_weight(trainer.model, n).detach().clone() for n in NAMES}
            self.grad = dense_gradient(trainer.model, trainer.batch)

        def on_step_end(self, trainer):
            if trainer.step == 1:  # plain SGD at the first step (no momentum yet)
                for n in NAMES:
                    after = masks.dense_weight(trainer.model, n).detach()
                    assert torch.allclose(after, self.theta[n] - 0.1 * self.grad[n], atol=1e-6)
            seen.append(sum(int((masks.get_mask(trainer.model, n) == 0).sum()) for n in NAMES))

    fit(m, loader(), epochs=3, lr=0.1, callbacks=[method, Step()])
    total = 12 * 16 + 32
    # the mask follows the cubic schedule at update steps; ends exactly at the target
    for step, zeros in enumerate(seen, start=1):
        target = sl.schedules.cubic(step, 0.75, 0, method.end_step, frequency=2)
        if step % 2 == 0:
            assert zeros == math.floor(target * total + 0.5), step
    assert sl.sparsity(m) == math.floor(0.75 * total + 0.5) / total
    # masks re-select from the dense weights: some weights came back
    assert method.log[-1]["sparsity"] == 0.75


# --- all of them through the loop -----------------------------------------------------------


@pytest.mark.parametrize("name", ["set", "deepr", "dsr", "snfs", "rigl", "topkast", "dpf"])
def test_every_dynamic_method_trains_and_ends_at_its_exact_mask_count(name):
    m = model()
    method = registry.get(name, "training")(0.8, budget="uniform")
    history = fit(m, loader(), loader(1), epochs=3, lr=0.1, callbacks=[method], seed=0)
    kept = sum(int(masks.get_mask(m, n).sum()) for n in NAMES)
    assert kept == 224 - math.floor(0.8 * 224 + 0.5)  # uniform budget: the total is exact
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_adam_state_follows_the_masks_too():
    m = model()
    rigl = RigL(0.75, update_frequency=2)
    seen = {"updates": 0}

    class AdamCheck(Callback):
        def on_step_end(self, trainer):
            for n in NAMES:
                w, mask = masks.dense_weight(trainer.model, n), masks.get_mask(trainer.model, n)
                state = trainer.optimizer.state[w]
                for key in ("exp_avg", "exp_avg_sq"):
                    assert torch.all(state[key][mask == 0] == 0), (trainer.step, key)
                assert torch.all(w[mask == 0] == 0)
            if rigl.log and rigl.log[-1]["step"] == trainer.step:
                seen["updates"] += rigl.log[-1]["grown"] > 0

    fit(m, loader(), epochs=2, optimizer="adam", lr=0.01, callbacks=[rigl, AdamCheck()])
    assert seen["updates"] >= 3  # the checks ran right after real prune-and-grow steps

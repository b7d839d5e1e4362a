"""Shared pieces of the training methods: fresh masks, apportioning, FLOP counting, errors."""

import math

import pytest
import torch
from helpers import mlp
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import registry
from sparsity_lab.methods.base import TrainingFlops, apportion, select_masks
from sparsity_lab.methods.dynamic import StaticSparse
from sparsity_lab.patterns import Unstructured
from sparsity_lab.train import fit


def loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16, generator=g)


model = mlp  # Linear(12, 16), ReLU, Linear(16, 2)


def test_every_training_method_of_the_checklist_is_registered():
    expected = {"gmp", "imp", "early_bird", "edge_popup", "set", "deepr", "dsr", "snfs"}
    expected |= {"rigl", "topkast", "dpf", "acdc", "cram"}
    assert expected <= set(registry.available("training"))


def test_apportion_by_hand():
    # shares 2.5, 2.5, 5: floors 2, 2, 5 and the one left goes to the first tie
    assert apportion(10, {"a": 1, "b": 1, "c": 2}, {"a": 99, "b": 99, "c": 99}) == {
        "a": 3,
        "b": 2,
        "c": 5,
    }
    # c is full at 3: its share goes to the others
    assert apportion(10, {"a": 1, "b": 1, "c": 2}, {"a": 99, "b": 99, "c": 3}) == {
        "a": 4,
        "b": 3,
        "c": 3,
    }


@pytest.mark.parametrize("seed", range(5))
def test_apportion_properties(seed):
    g = torch.Generator().manual_seed(seed)
    names = list("abcdef")
    weights = {n: float(w) for n, w in zip(names, torch.rand(6, generator=g), strict=True)}
    capacity = {
        n: int(c) for n, c in zip(names, torch.randint(0, 30, (6,), generator=g), strict=True)
    }
    total = int(torch.randint(0, sum(capacity.values()) + 1, (1,), generator=g))
    k = apportion(total, weights, capacity)
    assert sum(k.values()) == total
    assert all(0 <= k[n] <= capacity[n] for n in names)
    with pytest.raises(ValueError, match="cannot place"):
        apportion(sum(capacity.values()) + 1, weights, capacity)


def test_select_masks_keeps_the_top_scores_of_each_layer_ignoring_old_masks():
    m = model()
    sl.prune(m, "random", 0.9)  # an old mask that must not matter
    g = torch.Generator().manual_seed(1)
    scores = {
        n: torch.rand(sl.masks.weight(m, n).shape, generator=g) for n in ("0.weight", "2.weight")
    }
    keep = select_masks(
        m, ["0.weight", "2.weight"], scores, 0.75, pattern=Unstructured(), budget="uniform"
    )
    for n, s in scores.items():
        k = s.numel() - math.floor(0.75 * s.numel() + 0.5)
        expected = torch.zeros(s.numel(), dtype=torch.bool)
        expected[torch.topk(s.flatten(), k).indices] = True
        assert torch.equal(keep[n].flatten(), expected), n


def test_training_flops_of_a_static_mask_by_hand():
    m = model()
    method = StaticSparse(0.5, budget="uniform")
    flops = TrainingFlops(method)
    history = fit(m, loader(), epochs=2, callbacks=[method, flops])
    kept = sum(int(mask.sum()) for mask in sl.masks.masks(m).values())
    assert kept == round(0.5 * (12 * 16 + 16 * 2))
    # a Linear on a vector applies each weight once: forward 2 * kept, step 3x that
    assert flops.total == 3 * 2 * kept * 64 * 2
    assert list(history["train_flops"]) == [3 * 2 * kept * 64, 3 * 2 * kept * 64 * 2]


def test_training_flops_count_a_mask_again_after_every_change():
    """The counter keeps each mask's count until the mask changes: in place (set_mask, a
    state dict loaded), or replaced by another tensor.  Each of the four steps' FLOPs
    follow that step's mask: 12 weights kept, then 3, 7 and 5."""

    def first_row(n):
        keep = torch.zeros(16, 12)
        keep[0, :n] = 1
        return keep

    class Edit(sl.train.Callback):
        def on_step_begin(self, trainer):
            if trainer.step == 1:
                sl.masks.set_mask(trainer.model, "0.weight", first_row(3))
            elif trainer.step == 2:
                state = trainer.model.state_dict()
                state["0.parametrizations.weight.0.mask"].copy_(first_row(7))
                trainer.model.load_state_dict(state)
            elif trainer.step == 3:
                trainer.model[0].parametrizations.weight[0].mask = first_row(5)

    class Record(sl.train.Callback):
        def on_step_end(self, trainer):
            steps.append(flops.total - sum(steps))

    m, steps = model(), []
    sl.masks.attach(m, "0.weight", first_row(12))
    flops = TrainingFlops(names=["0.weight"])
    fit(m, loader(), epochs=1, callbacks=[Edit(), flops, Record()])
    # a batch of 16; forward 2 FLOPs per kept weight and example, a step 3x that
    assert [s / (3 * 2 * 16) for s in steps] == [12, 3, 7, 5]


def test_static_sparse_mask_is_fixed_and_exact():
    m = model()
    method = StaticSparse(0.8, budget="erk")
    before = {}

    class Capture(sl.train.Callback):
        def on_step_end(self, trainer):
            now = {n: k.clone() for n, k in sl.masks.masks(trainer.model).items()}
            for n in before:
                assert torch.equal(before[n], now[n])
            before.update(now)

    fit(m, loader(), epochs=2, callbacks=[method, Capture()])
    expected = sl.budgets.erk({"0.weight": (16, 12), "2.weight": (2, 16)}, 0.8)
    for n, s in expected.items():
        mask = sl.masks.get_mask(m, n)
        assert int((mask == 0).sum()) == round(s * mask.numel())


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("rigl", {"sparsity": 1.2}, "sparsity must be in"),
        ("rigl", {"sparsity": 0.9, "pattern": "channel"}, "supports the patterns"),
        ("set", {"sparsity": 0.9, "budget": "erkk"}, "Did you mean 'erk'"),
        ("gmp", {"sparsity": 0.9, "pattern": "2:4"}, "fixes the sparsity"),
        ("gmp", {"sparsity": None}, "needs a sparsity"),
        ("rigl", {"sparsity": 0.9, "drop_fraction": 1.5}, "drop_fraction"),
        ("rigl", {"sparsity": 0.9, "update_frequency": 0}, "update_frequency"),
        ("rigl", {"sparsity": 0.9, "decay": "exp"}, "decay must be one of"),
        ("gmp", {"sparsity": 0.9, "begin": 0.8, "end": 0.5}, "must not come before"),
    ],
)
def test_bad_options_fail_clearly(name, kwargs, message):
    cls = registry.get(name, "training")
    sparsity = kwargs.pop("sparsity")
    with pytest.raises((ValueError, KeyError), match=message):
        cls(sparsity, **kwargs)


def test_nm_pattern_implies_the_sparsity():
    method = registry.get("gmp", "training")(None, pattern="2:4")
    assert method.sparsity == 0.5


def test_methods_list_their_options_and_refuse_unknown_ones():
    rigl = registry.get("rigl")
    assert {"drop_fraction", "update_frequency", "pattern", "budget", "seed"} <= set(rigl.options())
    assert {"rho", "sparsities", "budget"} <= set(registry.get("cram_plus").options())
    with pytest.raises(TypeError, match="unknown option.*speed for 'rigl'.*drop_fraction"):
        rigl(0.9, speed=2)

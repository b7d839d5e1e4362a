"""The mask contract: exact zeros through forward, optimizers, saving, copying and removal."""

import contextlib
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from torch import nn
from torch.nn.utils import parametrize

from sparsity_lab import masks


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Conv1d(1, 1, 1), nn.Flatten())


def small_mlp(seed=0):
    return mlp(6, 8, 3, seed=seed)


def random_mask(shape, sparsity=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=g) >= sparsity).float()


def masked_mlp(seed=0, dense_grad=False):
    model = small_mlp(seed)
    m0, m2 = random_mask((8, 6), seed=1), random_mask((3, 8), seed=2)
    masks.attach(model, "0.weight", m0, dense_grad=dense_grad)
    masks.attach(model, "2.weight", m2, dense_grad=dense_grad)
    return model, {"0.weight": m0, "2.weight": m2}


def batch(seed=3, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_forward_uses_exact_zeros_and_matches_functional_computation():
    model, applied = masked_mlp()
    w0 = model[0].weight
    assert torch.all(w0[applied["0.weight"] == 0] == 0)
    x, _ = batch()
    # Independent computation: plain functional layers with hand-masked weights.
    orig0 = model[0].parametrizations.weight.original
    orig2 = model[2].parametrizations.weight.original
    h = F.relu(F.linear(x, orig0 * applied["0.weight"], model[0].bias))
    expected = F.linear(h, orig2 * applied["2.weight"], model[2].bias)
    assert torch.equal(model(x), expected)


def test_attach_zeroes_the_stored_weight_in_default_mode():
    model, applied = masked_mlp()
    stored = masks.dense_weight(model, "0.weight")
    assert torch.all(stored[applied["0.weight"] == 0] == 0)


@pytest.mark.parametrize(
    "make_opt",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
    ],
    ids=["sgd_momentum_wd", "sgd_nesterov", "adam", "adamw"],
)
@pytest.mark.parametrize("mode", ["ordinary", "fast_training"])
def test_masked_weights_stay_exactly_zero_through_optimizer_steps(make_opt, mode):
    model = small_mlp()
    opt = make_opt(model.parameters())
    x, y = batch()
    # Dense steps first, so momentum and Adam moments are non-zero everywhere when the mask
    # arrives: the classic way pruned weights are "revived".
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    applied = random_mask((8, 6), seed=5)
    masks.attach(model, "0.weight", applied)
    fast = masks.fast_training(model, opt) if mode == "fast_training" else contextlib.nullcontext()
    with fast:
        for step in range(20):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
            assert torch.all(model[0].weight[applied == 0] == 0), f"revived at step {step}"
    # The weights that are kept did train.
    assert torch.count_nonzero(model[0].weight) == int(applied.sum())


def test_dense_grad_mode_passes_the_dense_gradient_and_keeps_forward_zero():
    model, applied = masked_mlp(dense_grad=True)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    got = model[0].parametrizations.weight.original.grad
    # Independent: gradient w.r.t. the effective (masked) weight as a leaf tensor.
    w_eff = (model[0].parametrizations.weight.original * applied["0.weight"]).detach()
    w_eff.requires_grad_(True)
    w2 = (model[2].parametrizations.weight.original * applied["2.weight"]).detach()
    h = F.relu(F.linear(x, w_eff, model[0].bias.detach()))
    F.cross_entropy(F.linear(h, w2, model[2].bias.detach()), y).backward()
    assert torch.allclose(got, w_eff.grad, atol=1e-7)
    assert torch.any(got[applied["0.weight"] == 0] != 0)
    assert torch.all(model[0].weight[applied["0.weight"] == 0] == 0)


def test_attaching_again_in_the_default_mode_zeroes_what_straight_through_kept():
    """A straight-through mask keeps the stored values of pruned weights; re-attaching in
    the default mode must zero them, as a first attach does, or momentum and a later
    regrowth would bring the old values back."""
    model, applied = masked_mlp(dense_grad=True)
    stored = model[0].parametrizations.weight.original
    pruned = applied["0.weight"] == 0
    assert torch.any(stored[pruned] != 0)
    masks.attach(model, "0.weight", applied["0.weight"])
    assert torch.all(stored[pruned] == 0)
    assert torch.all(stored[~pruned] != 0)
    assert masks.get_mask(model, "0.weight") is not None


def test_default_mode_gradient_is_zero_where_masked():
    model, applied = masked_mlp()
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    grad = model[0].parametrizations.weight.original.grad
    assert torch.all(grad[applied["0.weight"] == 0] == 0)


def test_state_dict_round_trip_into_fresh_masked_model():
    model, applied = masked_mlp(seed=0)
    state = model.state_dict()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    fresh, _ = masked_mlp(seed=7)  # different weights and the same mask layout
    masks.load_state_dict(fresh, loaded)
    x, _ = batch()
    assert torch.equal(fresh(x), model(x))
    for name, m in masks.masks(fresh).items():
        assert torch.equal(m, applied[name])


def test_masked_state_dict_loads_into_a_plain_model_and_attaches_masks():
    model, applied = masked_mlp()
    plain = small_mlp(seed=9)
    masks.load_state_dict(plain, model.state_dict())
    x, _ = batch()
    assert torch.equal(plain(x), model(x))
    assert set(masks.masks(plain)) == set(applied)


def test_plain_state_dict_loads_into_an_unmasked_model_with_torch_alone():
    model, _ = masked_mlp()
    plain = small_mlp(seed=9)
    plain.load_state_dict(masks.plain_state_dict(model))  # strict torch loading
    x, _ = batch()
    assert torch.equal(plain(x), model(x))
    assert not any(parametrize.is_parametrized(m) for m in plain.modules())


def test_plain_state_dict_into_masked_model_keeps_its_masks():
    model, applied = masked_mlp()
    dense = small_mlp(seed=4)
    masks.load_state_dict(model, dense.state_dict())
    assert torch.all(model[0].weight[applied["0.weight"] == 0] == 0)


def test_deepcopy_is_independent_and_equal():
    model, _ = masked_mlp()
    clone = copy.deepcopy(model)
    x, _ = batch()
    assert torch.equal(clone(x), model(x))
    masks.set_mask(clone, "0.weight", torch.zeros(8, 6))
    assert masks.get_mask(model, "0.weight").sum() > 0
    assert not torch.equal(clone(x), model(x))


def test_pickle_round_trip_and_the_original_still_works():
    model, applied = masked_mlp(dense_grad=True)
    x, _ = batch()
    before = model(x)
    clone = pickle.loads(pickle.dumps(model))
    assert torch.equal(clone(x), before)
    assert torch.equal(model(x), before)  # pickling must not disturb the source model
    assert masks.get_mask(clone, "2.weight").equal(applied["2.weight"])
    clone_holder = clone[0].parametrizations.weight[0]
    assert clone_holder.dense_grad is True
    # A deep copy, then pickling the copy, leaves both working (they share a generated class).
    copied = copy.deepcopy(model)
    pickle.dumps(copied)
    assert torch.equal(model(x), before) and torch.equal(copied(x), before)


def test_whole_model_torch_save_load():
    model, _ = masked_mlp()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    clone = torch.load(buffer, weights_only=False)
    x, _ = batch()
    assert torch.equal(clone(x), model(x))


def test_squash_makes_masks_permanent_and_removes_machinery():
    model, applied = masked_mlp()
    x, _ = batch()
    before = model(x)
    masks.squash(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert type(model[0]) is nn.Linear
    assert torch.equal(model(x), before)
    assert torch.all(model[0].weight[applied["0.weight"] == 0] == 0)
    assert masks.masks(model) == {}


def test_remove_resumes_dense_training():
    model, applied = masked_mlp()
    masks.remove(model)
    assert torch.all(model[0].weight[applied["0.weight"] == 0] == 0)  # starts from the zeros
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    pruned = applied["0.weight"] == 0
    has_grad = model[0].weight.grad[pruned] != 0  # units dead under ReLU get none
    opt.step()
    moved = model[0].weight.detach()[pruned] != 0
    assert has_grad.sum() > 0 and torch.equal(moved, has_grad)  # and grows again


def test_remove_can_restore_the_dense_weights_kept_by_dense_grad_mode():
    model, applied = masked_mlp(dense_grad=True)
    stored = masks.dense_weight(model, "0.weight").detach().clone()
    masks.remove(model, restore_dense=True)
    assert torch.equal(model[0].weight.detach(), stored)


def test_set_mask_zeroes_newly_pruned_entries_so_regrowth_starts_at_zero():
    model, applied = masked_mlp()
    grown = torch.ones(8, 6)
    masks.set_mask(model, "0.weight", grown)
    regrown = applied["0.weight"] == 0
    assert torch.all(model[0].weight[regrown] == 0)
    assert masks.get_mask(model, "0.weight").sum() == 48


def test_conv_weights_and_masks_listing():
    model = small_model()
    m = random_mask((1, 1, 1), sparsity=0.0)
    masks.attach(model, "2.weight", m)
    assert list(masks.masks(model)) == ["2.weight"]
    assert masks.is_masked(model, "2.weight") and not masks.is_masked(model, "0.weight")


def test_attach_twice_replaces_instead_of_stacking():
    model, _ = masked_mlp()
    masks.attach(model, "0.weight", torch.ones(8, 6))
    assert len(model[0].parametrizations.weight) == 1


@pytest.mark.parametrize(
    ("name", "mask", "error", "match"),
    [
        ("0.weight", torch.ones(3, 3), ValueError, "shape"),
        ("0.weight", torch.full((8, 6), 0.5), ValueError, "0 and 1"),
        ("9.weight", torch.ones(8, 6), KeyError, "no module"),
        ("0.nothing", torch.ones(8, 6), KeyError, "not a parameter"),
    ],
)
def test_bad_masks_fail_clearly(name, mask, error, match):
    with pytest.raises(error, match=match):
        masks.attach(small_mlp(), name, mask)


def test_bool_masks_are_accepted():
    model = small_mlp()
    masks.attach(model, "0.weight", torch.zeros(8, 6, dtype=torch.bool))
    assert torch.count_nonzero(model[0].weight) == 0


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw"])
def test_regrown_entries_start_at_zero_after_optimizer_steps(opt_name):
    model = small_mlp()
    make = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    }[opt_name]
    opt = make(model.parameters())
    x, y = batch()
    for _ in range(3):  # dense steps: momentum / moments everywhere
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    applied = random_mask((8, 6), seed=5)
    masks.attach(model, "0.weight", applied)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    stored = masks.dense_weight(model, "0.weight")
    assert torch.any(stored[applied == 0] != 0)  # optimizer state did move the stored values
    masks.set_mask(model, "0.weight", torch.ones(8, 6))
    assert torch.all(model[0].weight[applied == 0] == 0)  # ...but regrowth starts at zero


def test_changing_a_deep_copy_leaves_the_source_model_working():
    model, _ = masked_mlp()
    x, _ = batch()
    before = model(x)
    clone = copy.deepcopy(model)
    masks.remove(clone)  # would delete the shared class's property without care
    assert torch.equal(model(x), before)
    clone2 = copy.deepcopy(model)
    masks.attach(clone2, "0.bias", torch.ones(8))  # a second masked tensor on the copy only
    assert torch.equal(model(x), before)
    assert not masks.is_masked(model, "0.bias")
    assert torch.equal(clone2(x), before)


def test_dense_grad_masks_resume_from_a_state_dict_with_their_dense_values(tmp_path):
    """RigL, DPF and AC/DC keep values under the mask: a resumed run must get them back,
    and the gradient mode with them (it used to come back as the default, values zeroed)."""
    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(32, 20))
    mask = (torch.rand(20, 32) > 0.5).float()
    masks.attach(source, "0.weight", mask, dense_grad=True)
    hidden = masks.dense_weight(source, "0.weight")[mask == 0].clone()
    assert hidden.abs().sum() > 0  # dense_grad keeps the values under the mask
    path = tmp_path / "run.pt"
    torch.save(source.state_dict(), path)

    fresh = nn.Sequential(nn.Linear(32, 20))
    masks.load_state_dict(fresh, torch.load(path, weights_only=True))
    assert masks._mask_module(fresh[0], "weight").dense_grad is True
    assert torch.equal(masks.dense_weight(fresh, "0.weight")[mask == 0], hidden)
    assert torch.equal(masks.get_mask(fresh, "0.weight"), mask)

    # a state dict written without the flag still loads, in the target's mode
    old = {k: v for k, v in source.state_dict().items() if not k.endswith(masks.DENSE_GRAD_KEY)}
    plain = nn.Sequential(nn.Linear(32, 20))
    masks.load_state_dict(plain, old)
    assert masks._mask_module(plain[0], "weight").dense_grad is False
    assert torch.equal(masks.weight(plain, "0.weight"), masks.weight(source, "0.weight"))


@pytest.mark.parametrize("loader", ["module", "masks"])
def test_a_masked_state_dict_replaces_the_masks_of_a_model_masked_differently(loader):
    source, target = small_mlp(0), small_mlp(1)
    masks.attach(source, "0.weight", random_mask((8, 6), 0.5, seed=1))
    masks.attach(target, "0.weight", random_mask((8, 6), 0.75, seed=2))
    state = source.state_dict()
    if loader == "module":
        target.load_state_dict(state)
    else:
        masks.load_state_dict(target, state)
    assert torch.equal(masks.get_mask(target, "0.weight"), masks.get_mask(source, "0.weight"))
    assert torch.equal(target[0].weight, source[0].weight)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU])
def test_a_masked_recurrent_layer_pickles_and_copies_after_a_forward_pass(kind):
    torch.manual_seed(0)
    rnn = kind(4, 6, batch_first=True)
    plain = copy.deepcopy(rnn)
    rows = rnn.weight_hh_l0.shape[0]
    keep = random_mask((rows, 6), 0.5, seed=3)
    masks.attach(rnn, "weight_hh_l0", keep)
    with torch.no_grad():
        plain.weight_hh_l0.mul_(keep)
    x = torch.randn(2, 3, 4)
    y = rnn(x)[0]  # the forward pass caches masked, non-leaf weights in the layer
    assert torch.allclose(plain(x)[0], y)  # the mask is what the layer computes with
    for copied in (pickle.loads(pickle.dumps(rnn)), copy.deepcopy(rnn)):
        assert torch.allclose(copied(x)[0], y)
        assert torch.equal(
            masks.get_mask(copied, "weight_hh_l0"), masks.get_mask(rnn, "weight_hh_l0")
        )
    masks.remove(copy.deepcopy(rnn))  # an independent copy: the original keeps its mask
    assert masks.is_masked(rnn, "weight_hh_l0")

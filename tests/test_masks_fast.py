"""Fast masked training: only the gradient is masked, with the same numbers and exact zeros."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp
from torch import nn

import sparsity_lab as sl
from sparsity_lab import masks

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: torch.optim.SGD(
        p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2
    ),
    "sgd_dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.5),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
    "nadam": lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=1e-2),
    "radam": lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=1e-2),
    "adamax": lambda p: torch.optim.Adamax(p, lr=1e-2, weight_decay=1e-2),
    "rmsprop": lambda p: torch.optim.RMSprop(
        p, lr=1e-3, momentum=0.9, centered=True, weight_decay=1e-2
    ),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2, weight_decay=1e-2),
}


def test_every_trusted_optimizer_is_tested():
    tested = {type(make([nn.Parameter(torch.zeros(1))])) for make in OPTIMIZERS.values()}
    assert tested == set(masks.ZERO_PRESERVING)


def batch(seed=3, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def pruned_after_dense_steps(make_opt, seed=0):
    """A model whose optimizer state is non-zero everywhere when the masks arrive."""
    model = mlp(6, 8, 3, seed=seed)
    opt = make_opt(model.parameters())
    x, y = batch()
    for _ in range(4):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    g = torch.Generator().manual_seed(5)
    for name, shape in (("0.weight", (8, 6)), ("2.weight", (3, 8))):
        masks.attach(model, name, (torch.rand(shape, generator=g) > 0.5).float())
    return model, opt


def train(model, opt, steps=15, seed=4):
    x, y = batch(seed)
    grads = []
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        opt.step()
    return grads


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_fast_training_gives_the_same_numbers_and_exact_zeros(opt_name):
    slow, slow_opt = pruned_after_dense_steps(OPTIMIZERS[opt_name])
    fast, fast_opt = pruned_after_dense_steps(OPTIMIZERS[opt_name])
    slow_grads = train(slow, slow_opt)
    with masks.fast_training(fast, fast_opt) as names:
        assert names == ["0.weight", "2.weight"]
        assert all(fast[i].parametrizations.weight[0].fast for i in (0, 2))
        fast_grads = train(fast, fast_opt)
    # Independent reference: the ordinary mask multiplies in forward and backward.  The
    # gradients every step and the weights the model computes with are bit-for-bit equal.
    for a, b in zip(slow_grads, fast_grads, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name, mask in masks.masks(fast).items():
        assert torch.equal(masks.weight(fast, name), masks.weight(slow, name))
        stored = masks.dense_weight(fast, name)
        assert torch.all(stored[mask == 0] == 0), "a pruned weight moved"
        assert torch.count_nonzero(stored) == int(mask.sum()), "kept weights should train"
    assert not fast[0].parametrizations.weight[0].fast  # the block is left


def test_forward_inside_the_block_uses_the_stored_weight_itself():
    model, opt = pruned_after_dense_steps(OPTIMIZERS["sgd"])
    with masks.fast_training(model, opt):
        assert model[0].weight is model[0].parametrizations.weight.original
    assert model[0].weight is not model[0].parametrizations.weight.original


def test_an_untrusted_optimizer_keeps_the_ordinary_masks():
    class MySGD(torch.optim.SGD):  # a subclass may change step(): not trusted
        pass

    model, _ = pruned_after_dense_steps(OPTIMIZERS["sgd"])
    opt = MySGD(model.parameters(), lr=0.1, momentum=0.9)
    with masks.fast_training(model, opt) as names:
        assert names == []
        assert not model[0].parametrizations.weight[0].fast
        train(model, opt, steps=3)
    assert torch.all(model[0].weight[masks.get_mask(model, "0.weight") == 0] == 0)


def test_straight_through_masks_and_parameters_outside_the_optimizer_stay_ordinary():
    model = mlp(6, 8, 3, seed=0)
    masks.attach(model, "0.weight", torch.ones(8, 6), dense_grad=True)
    masks.attach(model, "2.weight", torch.ones(3, 8))
    opt = torch.optim.SGD([model[0].bias], lr=0.1)
    with masks.fast_training(model, opt) as names:
        assert names == []


def test_a_mask_changed_inside_the_block_leaves_fast_mode_and_stays_exact():
    """Momentum of newly pruned entries is not zero, so only the multiplication keeps them
    out: set_mask must hand the tensor back to the ordinary mask."""
    model, opt = pruned_after_dense_steps(OPTIMIZERS["sgd_momentum_wd"])
    with masks.fast_training(model, opt):
        train(model, opt, steps=3)
        fewer = masks.get_mask(model, "0.weight").clone()
        fewer[:4] = 0
        masks.set_mask(model, "0.weight", fewer)
        holder = model[0].parametrizations.weight[0]
        assert not holder.fast and model[2].parametrizations.weight[0].fast
        for _ in range(5):
            train(model, opt, steps=1)
            assert torch.all(model[0].weight[fewer == 0] == 0)
        masks.remove(model, ["2.weight"])  # removing inside the block is fine too
        train(model, opt, steps=1)
    assert torch.all(model[0].weight[fewer == 0] == 0)


def test_a_pruned_weight_written_inside_the_block_is_reported_and_zeroed():
    model, opt = pruned_after_dense_steps(OPTIMIZERS["sgd"])
    mask = masks.get_mask(model, "0.weight")
    with pytest.warns(RuntimeWarning, match=r"0\.weight.*zeroed again"):
        with masks.fast_training(model, opt):
            with torch.no_grad():
                masks.dense_weight(model, "0.weight").add_(1.0)
    assert torch.all(model[0].weight[mask == 0] == 0)
    assert torch.all(masks.dense_weight(model, "0.weight")[mask == 0] == 0)


def test_a_diverged_training_is_reported_as_such_not_as_a_foreign_write():
    # a NaN loss gives NaN gradients, which stay NaN under the mask (NaN * 0) in both modes
    model, opt = pruned_after_dense_steps(OPTIMIZERS["sgd"])
    mask = masks.get_mask(model, "0.weight")
    x = torch.randn(4, model[0].in_features)
    with pytest.warns(RuntimeWarning, match=r"0\.weight, 2\.weight became NaN.*diverged") as caught:
        with masks.fast_training(model, opt):
            opt.zero_grad()
            (model(x).sum() * float("nan")).backward()
            opt.step()
    assert not any("something other than" in str(w.message) for w in caught)
    assert torch.all(masks.dense_weight(model, "0.weight")[mask == 0] == 0)


def test_copies_saved_and_pickled_inside_the_block_are_ordinary_masked_models():
    model, opt = pruned_after_dense_steps(OPTIMIZERS["adam"])
    x, _ = batch()
    with masks.fast_training(model, opt):
        train(model, opt, steps=2)
        expected = model(x)
        copied = copy.deepcopy(model)
        pickled = pickle.loads(pickle.dumps(model))
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    loaded = masks.load_state_dict(mlp(6, 8, 3), torch.load(buffer, weights_only=True))
    for clone in (copied, pickled, loaded):
        assert not any(clone[i].parametrizations.weight[0].fast for i in (0, 2))
        assert torch.equal(clone(x), expected)
        assert masks.masks(clone).keys() == masks.masks(model).keys()
        # Trained on with a fresh optimizer, the copies keep their zeros.
        clone_opt = torch.optim.SGD(clone.parameters(), lr=0.1, momentum=0.9)
        train(clone, clone_opt, steps=3)
        for name, mask in masks.masks(clone).items():
            assert torch.all(masks.weight(clone, name)[mask == 0] == 0)


def loader(seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_fit_trains_fast_by_default_with_the_same_result(optimizer, monkeypatch):
    used = []
    real = masks.fast_training

    def spy(model, opt):
        used.append(type(opt).__name__)
        return real(model, opt)

    monkeypatch.setattr(masks, "fast_training", spy)
    results = {}
    for fast in (True, False):
        model, _ = pruned_after_dense_steps(OPTIMIZERS["sgd"])
        sl.train.fit(
            model, loader(), epochs=2, optimizer=optimizer, lr=0.05, weight_decay=5e-4,
            seed=0, progress=False, fast_masks=fast,
        )  # fmt: skip
        results[fast] = model.state_dict()
    assert used == [{"sgd": "SGD", "adamw": "AdamW"}[optimizer]]
    assert results[True].keys() == results[False].keys()
    assert all(torch.equal(results[True][k], results[False][k]) for k in results[True])


def test_fit_with_a_callback_keeps_the_ordinary_masks():
    seen = []

    class Probe(sl.callbacks.Callback):
        def on_step_begin(self, trainer):
            seen.append(trainer.model[0].parametrizations.weight[0].fast)

    model, _ = pruned_after_dense_steps(OPTIMIZERS["sgd"])
    sl.train.fit(model, loader(), epochs=1, callbacks=[Probe()], progress=False)
    assert seen and not any(seen)


def test_a_frozen_masked_weight_stays_exact():
    model, _ = pruned_after_dense_steps(OPTIMIZERS["sgd"])
    model[0].parametrizations.weight.original.requires_grad_(False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    before = masks.weight(model, "0.weight").clone()
    with masks.fast_training(model, opt) as names:
        assert names == ["0.weight", "2.weight"]
        train(model, opt, steps=3)
    assert torch.equal(masks.weight(model, "0.weight"), before)


def test_a_tied_weight_keeps_the_ordinary_mask():
    """Two modules sharing one weight mask its uses separately in the ordinary path; the
    fast path cannot, so the tied weight stays ordinary."""
    model = nn.Sequential(nn.Linear(6, 6, bias=False), nn.ReLU(), nn.Linear(6, 6, bias=False))
    model[2].weight = model[0].weight
    masks.attach(model, "0.weight", (torch.rand(6, 6) > 0.5).float())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with masks.fast_training(model, opt) as names:
        assert names == []


def test_second_moments_are_left_alone_so_adagrad_without_eps_stays_finite():
    model, _ = pruned_after_dense_steps(OPTIMIZERS["sgd"])
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2, initial_accumulator_value=0.1, eps=0)
    with masks.fast_training(model, opt):
        train(model, opt, steps=3)
    for name, mask in masks.masks(model).items():
        stored = masks.dense_weight(model, name)
        assert torch.isfinite(stored).all() and torch.all(stored[mask == 0] == 0)


def test_a_mask_edited_in_place_leaves_fast_mode_at_the_next_forward_pass():
    model, opt = pruned_after_dense_steps(OPTIMIZERS["sgd_momentum_wd"])
    with masks.fast_training(model, opt):
        train(model, opt, steps=2)
        live = masks.get_mask(model, "0.weight")
        live[:4] = 0  # newly pruned rows with momentum still in their optimizer state
        for _ in range(3):
            train(model, opt, steps=1)
            assert torch.all(model[0].weight[live == 0] == 0)
        assert not model[0].parametrizations.weight[0].fast


def test_an_inner_block_leaves_the_outer_blocks_masks_to_it():
    model, opt = pruned_after_dense_steps(OPTIMIZERS["adam"])
    with masks.fast_training(model, opt) as outer:
        with masks.fast_training(model, opt) as inner:
            assert outer == ["0.weight", "2.weight"] and inner == []
        assert model[0].parametrizations.weight[0].fast  # still the outer block's
    assert not model[0].parametrizations.weight[0].fast

"""Every training method and regularizer in a hand-written loop, through ``Sparsifier``.

The independent computation is the library's own loop: with the same seed, data and
optimizer, a loop written here must end with exactly the weights and masks of
``method.fit`` (the hooks run in the same order).
"""

import pytest
import torch
from helpers import mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import masks, registry
from sparsity_lab.seeding import seed_everything
from sparsity_lab.sparsifier import Sparsifier

EPOCHS = 4

# Options that make each method act within 4 epochs of 4 steps (update every 2 steps).
OPTIONS = {
    "acdc": {"warmup_epochs": 1, "phase_epochs": 1, "final_epochs": 1},
    "cram": {"sparsities": [0.5, 0.7]},
    "cram_plus": {"sparsities": [0.5, 0.7]},
    "deepr": {},
    "dpf": {"update_frequency": 2},
    "dsr": {"update_frequency": 2},
    "early_bird": {"window": 1, "epsilon": 1.0},
    "edge_popup": {},
    "gmp": {"frequency": 2},
    "rigl": {"update_frequency": 2},
    "set": {"update_frequency": 2},
    "snfs": {"update_frequency": 2},
    "topkast": {"update_frequency": 2},
}
TRAINING = [n for n in registry.available("training") if n != "imp"]  # IMP: its own test
REGULARIZERS = registry.available("regularizer")


def make_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 12, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, generator=torch.Generator())


make_model = mlp  # Linear(12, 16), ReLU, Linear(16, 2)


def build(name):
    obj = registry.get(name)
    if name in REGULARIZERS:
        return obj(sparsity=0.5, tune_every=2)
    return obj(0.5, **OPTIONS.get(name, {}))


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)


def optimizer_for(model):
    return sgd(model.parameters())


def with_library_loop(name):
    model, loader, method = make_model(), make_data(), build(name)
    loader.generator.manual_seed(1)
    if name == "edge_popup":  # its fit builds the optimizer of the scores itself
        options = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 1e-4}
    else:
        options = {"optimizer": sgd}
    method.fit(model, loader, epochs=EPOCHS, seed=0, progress=False, **options)
    return model, method


def with_own_loop(name):
    """The loop a user writes; only the four sparsifier calls are the library's."""
    model, loader, method = make_model(), make_data(), build(name)
    loader.generator.manual_seed(1)
    if hasattr(method, "prepare"):  # regularizers add their parameters before the optimizer
        method.prepare(model)
    seed_everything(0)
    if name == "edge_popup":  # the scores train, the weights underneath stay frozen
        for p in model.parameters():
            p.requires_grad_(False)
        masks.dense_weight(model, "0.weight").requires_grad_(True)
        masks.dense_weight(model, "2.weight").requires_grad_(True)
        optimizer = sgd(method.scores.values())
    else:
        optimizer = optimizer_for(model)
    loss_fn = nn.CrossEntropyLoss()
    sparsifier = Sparsifier(method)
    sparsifier.prepare(
        model, optimizer, epochs=EPOCHS, steps_per_epoch=len(loader), train_loader=loader
    )
    for _ in range(EPOCHS):
        model.train()
        for x, y in loader:
            sparsifier.begin(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            optimizer.step()
            sparsifier.step()
        sparsifier.end_epoch()
    sparsifier.finish()
    return model, method


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", TRAINING + REGULARIZERS)
def test_a_hand_written_loop_gives_exactly_what_fit_gives(name):
    reference, _ = with_library_loop(name)
    own, method = with_own_loop(name)
    expected, got = state(reference), state(own)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{name}: {key} differs"
    assert masks.masks(own).keys() == masks.masks(reference).keys()


@pytest.mark.parametrize("name", ["rigl", "gmp", "acdc"])
def test_the_method_acts_in_the_hand_written_loop(name):
    """Not only the same as fit: the method really pruned (the test above could pass with
    two loops that both do nothing)."""
    model, _ = with_own_loop(name)
    assert masks.masks(model)
    assert sl.sparsity(model) == pytest.approx(0.5, abs=0.02)


def test_squash_leaves_plain_weights_with_the_zeros():
    model, loader, method = make_model(), make_data(), build("gmp")
    optimizer = optimizer_for(model)
    sparsifier = Sparsifier(method).prepare(model, optimizer, epochs=2, steps_per_epoch=4)
    for _ in range(2):
        for x, y in loader:
            sparsifier.begin(x, y)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
            sparsifier.step()
        sparsifier.end_epoch()
    zeros = int((model[0].weight == 0).sum())
    sparsifier.squash()
    assert not masks.masks(model)
    assert isinstance(model[0].weight, nn.Parameter)
    assert int((model[0].weight == 0).sum()) == zeros > 0


def test_calls_out_of_order_say_what_the_loop_expects():
    model, loader, method = make_model(), make_data(), build("rigl")
    optimizer = optimizer_for(model)
    sparsifier = Sparsifier(method)
    with pytest.raises(RuntimeError, match="prepare"):
        sparsifier.begin(*next(iter(loader)))
    sparsifier.prepare(model, optimizer, epochs=1, steps_per_epoch=4)
    x, y = next(iter(loader))
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"sparsifier.begin\(inputs, targets\)"):
        optimizer.step()  # the forgotten begin() is caught at the update
    sparsifier.begin(x, y)
    with pytest.raises(RuntimeError, match=r"optimizer.step\(\)"):
        sparsifier.step()
    optimizer.step()
    with pytest.raises(RuntimeError, match=r"sparsifier.step\(\)"):
        sparsifier.end_epoch()
    sparsifier.step()
    with pytest.raises(RuntimeError, match="end_epoch"):
        sparsifier.finish()
    sparsifier.end_epoch()
    sparsifier.finish()
    with pytest.raises(RuntimeError, match="finished"):
        sparsifier.begin(x, y)
    optimizer.step()  # the hook is gone: the optimizer is the user's again


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"epochs": 0}, "epochs must be a positive int"),
        ({"steps_per_epoch": 2.5}, "steps_per_epoch must be a positive int"),
        ({"optimizer": "sgd"}, "torch.optim.Optimizer"),
    ],
)
def test_bad_prepare_arguments_are_refused(bad, match):
    model = make_model()
    args = {"optimizer": optimizer_for(model), "epochs": 1, "steps_per_epoch": 4, **bad}
    with pytest.raises((ValueError, TypeError), match=match):
        Sparsifier(build("gmp")).prepare(model, **args)


def test_a_method_that_replaces_optimizer_steps_is_refused_before_training():
    model = make_model()
    rigl = sl.registry.get("rigl")(0.5, timing="reference")
    with pytest.raises(ValueError, match="timing='after_step'"):
        Sparsifier(rigl).prepare(model, optimizer_for(model), epochs=1, steps_per_epoch=4)
    assert sl.masks.get_mask(model, "0.weight") is None  # refused before any mask


def test_a_method_that_replaces_steps_runs_in_a_loop_that_calls_after_backward():
    """RigL's reference timing (a mask update takes the place of the optimizer step) in a
    hand-written loop, through the explicit after_backward() call: exactly what fit gives,
    with the same steps replaced."""

    def rigl():
        return sl.registry.get("rigl")(0.5, timing="reference", update_frequency=2)

    reference, loader, method = make_model(), make_data(), rigl()
    loader.generator.manual_seed(1)
    method.fit(reference, loader, epochs=EPOCHS, optimizer=sgd, seed=0, progress=False)

    model, loader, method = make_model(), make_data(), rigl()
    loader.generator.manual_seed(1)
    seed_everything(0)
    optimizer, loss_fn = optimizer_for(model), nn.CrossEntropyLoss()
    sparsifier = Sparsifier(method).prepare(
        model, optimizer, epochs=EPOCHS, steps_per_epoch=len(loader), hook_optimizer=False
    )
    replaced = 0
    for _ in range(EPOCHS):
        model.train()
        for x, y in loader:
            sparsifier.begin(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            if sparsifier.after_backward():
                replaced += 1
                continue
            optimizer.step()
            sparsifier.step()
        sparsifier.end_epoch()
    sparsifier.finish()
    assert replaced == sparsifier.state.skipped_steps > 0
    assert sparsifier.state.step + replaced == EPOCHS * len(loader)
    expected, got = state(reference), state(model)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_several_methods_run_in_order_and_see_each_other():
    """A method and a logger together: the logger reads the method's log (as in fit)."""
    model, loader = make_model(), make_data()
    gmp = build("gmp")
    seen = []

    class Order(sl.train.Callback):
        def on_step_end(self, trainer):
            seen.append(([type(c).__name__ for c in trainer.callbacks], sl.sparsity(model)))

    sparsifier = Sparsifier(gmp, Order())
    optimizer, loss_fn = optimizer_for(model), nn.CrossEntropyLoss()
    sparsifier.prepare(model, optimizer, epochs=1, steps_per_epoch=len(loader))
    for x, y in loader:
        sparsifier.begin(x, y)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
        sparsifier.step()
    sparsifier.end_epoch()
    sparsifier.finish()
    assert seen[0][0] == ["GMP", "Order"]
    # GMP prunes in its on_step_end, which runs first: Order sees its masks at once
    assert seen[-1][1] == pytest.approx(0.5, abs=0.02)


def test_after_backward_is_refused_while_the_optimizer_hook_runs_it():
    model, loader = make_model(), make_data()
    sparsifier = Sparsifier(build("gmp"))
    sparsifier.prepare(model, optimizer_for(model), epochs=1, steps_per_epoch=len(loader))
    x, y = next(iter(loader))
    sparsifier.begin(x, y)
    with pytest.raises(RuntimeError, match="hook_optimizer=False"):
        sparsifier.after_backward()


def test_only_callbacks_are_driven():
    with pytest.raises(TypeError, match="training method or regularizer"):
        Sparsifier("rigl")


@pytest.mark.parametrize("rewind", ["init", "step"])
def test_imp_rounds_in_a_hand_written_loop_match_fit(rewind):
    options = {"rounds": 2, "rewind": rewind, "rewind_step": 3}
    reference, loader = make_model(), make_data()
    loader.generator.manual_seed(1)
    imp = registry.get("imp")(0.75, **options)
    imp.fit(reference, loader, epochs=2, optimizer=sgd, seed=0, progress=False)

    model, loader = make_model(), make_data()
    loader.generator.manual_seed(1)
    own = registry.get("imp")(0.75, **options)
    for _ in own.rounds_of(model, len(loader)):
        seed_everything(0)
        optimizer = optimizer_for(model)
        sparsifier = Sparsifier(own).prepare(model, optimizer, epochs=2, steps_per_epoch=4)
        for _ in range(2):
            for x, y in loader:
                sparsifier.begin(x, y)
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(model(x), y).backward()
                optimizer.step()
                sparsifier.step()
            sparsifier.end_epoch()
        sparsifier.finish()
    assert sl.sparsity(model) == pytest.approx(0.75, abs=0.01)
    for a, b in zip(own.tickets, imp.tickets, strict=True):
        assert all(torch.equal(a[n], b[n]) for n in a)
    for key, value in state(reference).items():
        assert torch.equal(value, state(model)[key]), key

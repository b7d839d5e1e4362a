import io
import math

import pandas as pd
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

from sparsity_lab import train
from sparsity_lab.seeding import torch_generator
from sparsity_lab.train import Callback, Trainer, evaluate, fit, make_optimizer

STANDARD_COLUMNS = [
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
]


def blobs(n=24, seed=0):
    """Two well separated Gaussian blobs in 2-D, labels 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centers = torch.tensor([[-2.0, -2.0], [2.0, 2.0]])
    x = centers[y] + 0.3 * torch.randn(n, 2, generator=g)
    return TensorDataset(x, y)


def loader(dataset, batch_size, shuffle=True):
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=torch.Generator().manual_seed(0),
    )


def tiny_model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Dropout(dropout), nn.Linear(8, 2))


class Recorder(Callback):
    """Records every hook call with the trainer's step, and checks the step's invariants."""

    def __init__(self):
        self.calls = []

    def _log(self, name, trainer):
        self.calls.append((name, trainer.step))

    def on_train_begin(self, trainer):
        self._log("train_begin", trainer)

    def on_epoch_begin(self, trainer):
        self._log("epoch_begin", trainer)

    def on_step_begin(self, trainer):
        self._log("step_begin", trainer)
        self.snapshot = [p.detach().clone() for p in trainer.model.parameters()]

    def on_after_backward(self, trainer):
        self._log("after_backward", trainer)
        params = list(trainer.model.parameters())
        assert all(p.grad is not None for p in params)
        assert all(torch.equal(p, s) for p, s in zip(params, self.snapshot, strict=True))
        assert isinstance(trainer.last_loss, float)

    def on_step_end(self, trainer):
        self._log("step_end", trainer)
        params = list(trainer.model.parameters())
        assert any(not torch.equal(p, s) for p, s in zip(params, self.snapshot, strict=True))

    def on_epoch_end(self, trainer):
        self._log("epoch_end", trainer)
        assert len(trainer.history) == trainer.epoch + 1
        assert not math.isnan(trainer.history[-1]["val_loss"])

    def on_train_end(self, trainer):
        self._log("train_end", trainer)


def test_callback_hooks_run_in_order_with_step_counts():
    data = blobs(n=12)  # 3 batches of 4
    recorder = Recorder()
    trainer = Trainer(
        tiny_model(),
        loader(data, 4),
        loader(data, 4, shuffle=False),
        epochs=2,
        callbacks=[recorder],
        progress=False,
    )
    assert trainer.total_steps == 6
    trainer.fit()

    expected = [("train_begin", 0)]
    step = 0
    for _ in range(2):
        expected.append(("epoch_begin", step))
        for _ in range(3):
            expected += [("step_begin", step), ("after_backward", step), ("step_end", step + 1)]
            step += 1
        expected.append(("epoch_end", step))
    expected.append(("train_end", 6))
    assert recorder.calls == expected
    assert trainer.step == 6
    assert [row["step"] for row in trainer.history] == [3, 6]


def test_a_skipped_step_leaves_weights_scheduler_and_step_count_alone():
    data = blobs(n=12)  # 3 batches of 4, 2 epochs

    class SkipEveryOther(Callback):
        def __init__(self):
            self.batches, self.ends, self.seen = 0, [], []

        def on_step_begin(self, trainer):
            self.before = [p.detach().clone() for p in trainer.model.parameters()]

        def on_after_backward(self, trainer):
            self.batches += 1
            trainer.skip_step = self.batches % 2 == 1  # batches 1, 3, 5 skip

        def on_step_end(self, trainer):
            self.ends.append(trainer.step)

        def on_epoch_end(self, trainer):
            after = [p.detach() for p in trainer.model.parameters()]
            self.seen.append(
                any(not torch.equal(a, b) for a, b in zip(after, self.before, strict=True))
            )

    skip = SkipEveryOther()
    trainer = Trainer(
        tiny_model(), loader(data, 4), epochs=2, lr_schedule="cosine", callbacks=[skip]
    )
    trainer.fit()
    assert trainer.skipped_steps == 3 and trainer.step == 3  # 6 batches, 3 steps taken
    assert skip.ends == [1, 2, 3]  # on_step_end only after a real step
    assert trainer.scheduler.last_epoch == 3  # the schedule follows the steps taken
    # epoch 1 ends on batch 3 (skipped: unchanged), epoch 2 on batch 6 (stepped: changed)
    assert skip.seen == [False, True]
    assert not trainer.skip_step  # the flag is reset for the next batch


class StopAt(Callback):
    def __init__(self, step):
        self.at = step
        self.ended = False

    def on_step_end(self, trainer):
        if trainer.step == self.at:
            trainer.stop = True

    def on_train_end(self, trainer):
        self.ended = True


def test_early_stop_mid_epoch_closes_that_epoch_and_ends():
    data = blobs(n=12)
    stopper = StopAt(4)
    history = fit(tiny_model(), loader(data, 4), epochs=5, callbacks=[stopper], progress=False)
    # epoch 0 ran its 3 steps, epoch 1 stopped after one more step
    assert history["step"].tolist() == [3, 4]
    assert history["epoch"].tolist() == [0, 1]
    assert stopper.ended


def test_early_stop_at_epoch_end_skips_the_remaining_epochs():
    class StopAfterFirstEpoch(Callback):
        def on_epoch_end(self, trainer):
            trainer.stop = True

    data = blobs(n=12)
    history = fit(
        tiny_model(), loader(data, 4), epochs=5, callbacks=[StopAfterFirstEpoch()], progress=False
    )
    assert len(history) == 1
    assert history["step"].tolist() == [3]


def test_history_columns_rows_and_missing_validation():
    data = blobs(n=12)
    history = fit(tiny_model(), loader(data, 4), epochs=3, progress=False)
    assert list(history.columns) == STANDARD_COLUMNS
    assert len(history) == 3
    assert history["epoch"].tolist() == [0, 1, 2]
    assert history["val_loss"].isna().all() and history["val_accuracy"].isna().all()
    assert history["train_accuracy"].between(0, 1).all()
    assert (history["seconds"] > 0).all()


def test_callbacks_can_add_history_columns_after_the_standard_ones():
    class Tag(Callback):
        def on_epoch_end(self, trainer):
            trainer.history[-1]["double_epoch"] = 2 * trainer.epoch

    history = fit(tiny_model(), loader(blobs(12), 6), epochs=2, callbacks=[Tag()], progress=False)
    assert list(history.columns) == [*STANDARD_COLUMNS, "double_epoch"]
    assert history["double_epoch"].tolist() == [0, 2]


def test_lr_column_follows_step_and_cosine_schedules():
    data = blobs(n=4)
    # one batch per epoch, so epoch k's lr is the rate of step k
    step = fit(tiny_model(), loader(data, 4), epochs=4, lr=0.1, lr_schedule="step", progress=False)
    # "step" divides by 10 at 50 % and at 75 % of the 4 steps
    assert step["lr"].tolist() == pytest.approx([0.1, 0.1, 0.01, 0.001])
    cosine = fit(
        tiny_model(), loader(data, 4), epochs=4, lr=0.1, lr_schedule="cosine", progress=False
    )
    expected = [0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)]
    assert cosine["lr"].tolist() == pytest.approx(expected)


def test_unknown_lr_schedule_and_bad_epochs_are_rejected():
    with pytest.raises(ValueError, match="unknown lr_schedule 'linear'"):
        fit(tiny_model(), loader(blobs(4), 4), epochs=1, lr_schedule="linear")
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        fit(tiny_model(), loader(blobs(4), 4), epochs=0)


def test_same_seed_gives_identical_history_and_weights():
    def run(seed):
        # dropout draws from the global generator, so the result depends on `seed`
        model = tiny_model(dropout=0.5)
        data = blobs(n=16)
        history = fit(
            model, loader(data, 4), loader(data, 8, False), epochs=2, seed=seed, progress=False
        )
        return history.drop(columns="seconds"), model.state_dict()

    h1, s1 = run(5)
    h2, s2 = run(5)
    h3, s3 = run(6)
    pd.testing.assert_frame_equal(h1, h2)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_two_fits_with_one_seed_on_one_seeded_loader_agree():
    data = blobs(n=16)
    shared = DataLoader(data, batch_size=4, shuffle=True, generator=torch_generator(1))

    def run(train_loader):
        torch.manual_seed(0)
        model = tiny_model()
        fit(model, train_loader, epochs=2, seed=1, progress=False)
        return model.state_dict()

    first, second = run(shared), run(shared)
    assert all(torch.equal(first[k], second[k]) for k in first)
    # and both equal a fit on a fresh loader made with that seed
    fresh = run(DataLoader(data, batch_size=4, shuffle=True, generator=torch_generator(1)))
    assert all(torch.equal(first[k], fresh[k]) for k in first)


def test_evaluate_matches_a_hand_computation():
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1, 1, 1])
    # logits are x itself; predictions 0, 1, 0, 1 -> 3 of 4 correct
    e = math.e
    losses = [
        math.log(e + 1) - 1,
        math.log(1 + e) - 1,
        math.log(e**2 + e) - 1,
        math.log(1 + e**3) - 3,
    ]
    # batches of 3 and 1: the mean must weight samples, not batches
    result = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3))
    assert result["accuracy"] == 0.75
    assert result["loss"] == pytest.approx(sum(losses) / 4)
    assert model.weight.grad is None


def test_evaluate_restores_each_submodules_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a mixed setup must survive
    evaluate(model, DataLoader(blobs(4), batch_size=4))
    assert model.training and model[0].training and not model[1].training


def test_make_optimizer_names_instances_and_factories():
    params = list(nn.Linear(2, 2).parameters())
    sgd = make_optimizer("sgd", params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == 0.9
    assert sgd.param_groups[0]["weight_decay"] == 1e-4
    adam = make_optimizer("adam", params, lr=0.01, momentum=0.9, weight_decay=0.0)
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 0.01
    adamw = make_optimizer("AdamW", params, lr=0.01, momentum=0.9, weight_decay=0.05)
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]["weight_decay"] == 0.05
    given = torch.optim.RMSprop(params, lr=0.01)
    assert make_optimizer(given, params, lr=1, momentum=0, weight_decay=0) is given
    built = make_optimizer(
        lambda p: torch.optim.SGD(p, lr=0.5), params, lr=1, momentum=0, weight_decay=0
    )
    assert built.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="unknown optimizer 'sgdd'"):
        make_optimizer("sgdd", params, lr=0.1, momentum=0.9, weight_decay=0.0)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_training_reduces_the_loss_on_a_separable_problem(name):
    train_data, val_data = blobs(n=32, seed=0), blobs(n=32, seed=1)
    model = tiny_model()
    before = evaluate(model, loader(val_data, 32, False))
    lr = 0.1 if name == "sgd" else 0.02
    history = fit(
        model,
        loader(train_data, 8),
        loader(val_data, 32, False),
        epochs=10,
        optimizer=name,
        lr=lr,
        progress=False,
    )
    assert history["val_loss"].iloc[-1] < 0.5 * before["loss"]
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    assert history["val_accuracy"].iloc[-1] == 1.0


class FixedMask(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight):
        return weight * self.mask


def test_training_through_a_parametrize_mask_keeps_masked_weights_zero():
    model = tiny_model()
    mask = (torch.arange(16).reshape(8, 2) % 2).float()
    parametrize.register_parametrization(model[0], "weight", FixedMask(mask))
    original = model[0].parametrizations.weight.original
    start = original.detach().clone()
    fit(model, loader(blobs(16), 4), epochs=2, momentum=0.0, progress=False)
    assert torch.all(model[0].weight[mask == 0] == 0)
    # masked entries get zero gradient, so only the kept originals move
    assert torch.equal(original[mask == 0], start[mask == 0])
    assert not torch.equal(original[mask == 1], start[mask == 1])


def test_a_trainer_trains_once():
    trainer = Trainer(tiny_model(), loader(blobs(4), 4), epochs=1, progress=False)
    trainer.fit()
    with pytest.raises(RuntimeError, match="already trained"):
        trainer.fit()


def test_no_progress_output_by_default_under_pytest(capfd):
    fit(tiny_model(), loader(blobs(8), 4), epochs=2)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    # the capture does see a bar when one is asked for
    fit(tiny_model(), loader(blobs(8), 4), epochs=2, progress=True)
    assert "train" in capfd.readouterr().err


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_show_progress_rule(monkeypatch):
    monkeypatch.setattr(train.sys, "stderr", FakeTerminal())
    monkeypatch.delenv("CI", raising=False)
    assert train.show_progress(None)
    monkeypatch.setenv("CI", "true")
    assert not train.show_progress(None)
    assert train.show_progress(True) and not train.show_progress(False)


def test_evaluating_restores_each_submodules_own_mode():
    from sparsity_lab.modes import evaluating

    model = tiny_model(dropout=0.5)
    model.train()
    model[2].eval()  # a mixed setup: one submodule frozen in a training model
    with evaluating(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[2].training

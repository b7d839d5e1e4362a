"""Training logs: CSV files and TensorBoard, with the events the sparsity methods report."""

import csv

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sparsity_lab as sl
from sparsity_lab import registry
from sparsity_lab.logs import CSVLogger, TensorBoardLogger
from sparsity_lab.seeding import torch_generator


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch_generator(0))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_csv_logger_writes_each_epoch_and_every_mask_update(tmp_path):
    method = registry.get("rigl")(0.5, update_frequency=4, budget="uniform")
    model = _model()
    logger = CSVLogger(tmp_path / "run.csv")
    history = method.fit(
        model, _data(), _data(), epochs=3, lr=0.1, seed=0, progress=False, callbacks=[logger]
    )
    rows = _read(tmp_path / "run.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    for row, (_, expected) in zip(rows, history.iterrows(), strict=True):
        assert float(row["val_accuracy"]) == pytest.approx(expected["val_accuracy"])
        assert float(row["train_loss"]) == pytest.approx(expected["train_loss"])
    assert float(rows[-1]["sparsity"]) == pytest.approx(sl.sparsity(model))
    events = _read(tmp_path / "run_events.csv")
    assert len(events) == len(method.log) > 0  # every update RigL made, once
    assert {e["source"] for e in events} == {"RigL"}
    for event, entry in zip(events, method.log, strict=True):
        assert int(event["step"]) == entry["step"] and int(event["grown"]) == entry["grown"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_csv_logger_checks_its_folder_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        CSVLogger(tmp_path / "missing" / "run.csv")


def test_tensorboard_logger_writes_the_same_numbers(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    method = registry.get("gmp")(0.5, budget="uniform")
    model = _model()
    history = method.fit(
        model,
        _data(),
        _data(),
        epochs=3,
        lr=0.1,
        seed=0,
        progress=False,
        callbacks=[TensorBoardLogger(tmp_path / "tb")],
    )
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    accuracy = [s.value for s in events.Scalars("epoch/val_accuracy")]
    assert accuracy == pytest.approx(history["val_accuracy"].tolist())
    assert [s.step for s in events.Scalars("epoch/val_accuracy")] == [1, 2, 3]
    assert events.Scalars("epoch/sparsity")[-1].value == pytest.approx(sl.sparsity(model))

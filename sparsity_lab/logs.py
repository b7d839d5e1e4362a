"""Logging training to CSV files and TensorBoard, with what the sparsity methods report.

Pass a logger among the callbacks of :func:`sparsity_lab.train.fit` or of a training
method's ``fit`` (``method.fit(model, loader, callbacks=[CSVLogger("run.csv")])``).  Each
epoch it records the history row of the :class:`~sparsity_lab.train.Trainer` (losses,
accuracies, learning rate, time, and the columns callbacks add) with the model's sparsity;
its ``epoch`` counts from 1.
Every training method and regularizer keeps a ``log`` of what it did (a mask update with
its drop fraction and counts, a threshold, a strength): the logger records each new entry
as an event, named by the callback that made it, so the schedule of a method can be read
next to the accuracy it led to.

:class:`CSVLogger` writes ``<path>`` (one row per epoch) and ``<stem>_events.csv``, each
rewritten whole at the end of every epoch under a temporary name, so a crash never leaves
a half-written file and the last finished epoch is always on disk.
:class:`TensorBoardLogger` writes the same numbers as scalars (``epoch/<column>`` at the
epoch number, ``<Method>/<key>`` at the optimizer step); it needs ``tensorboard``.
"""

from __future__ import annotations

import csv
import io
import numbers
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .callbacks import Callback
from .paths import write_atomically
from .pruning import sparsity

if TYPE_CHECKING:
    from .train import Trainer

__all__ = ["CSVLogger", "TensorBoardLogger"]


class _Collector(Callback):
    """The rows and events shared by the loggers; subclasses write them out."""

    def on_train_begin(self, trainer: Trainer) -> None:
        self.rows: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self._seen: dict[int, int] = {}  # entries of each callback's log already recorded

    def _new_events(self, trainer: Trainer) -> list[dict[str, Any]]:
        new = []
        for callback in trainer.callbacks:
            log = getattr(callback, "log", None)
            if callback is self or not isinstance(log, list):
                continue
            start = self._seen.get(id(callback), 0)
            for entry in log[start:]:
                if isinstance(entry, dict):
                    new.append(
                        {"source": type(callback).__name__, "epoch": trainer.epoch + 1, **entry}
                    )
            self._seen[id(callback)] = len(log)
        return new

    def on_epoch_end(self, trainer: Trainer) -> None:
        # epochs count from 1 here, as a reader of a log counts them (the history's from 0)
        row = {**trainer.history[-1], "epoch": trainer.epoch + 1}
        row["sparsity"] = sparsity(trainer.model)
        self.rows.append(row)
        events = self._new_events(trainer)
        self.events.extend(events)
        self.write(trainer, row, events)

    def write(self, trainer: Trainer, row: dict[str, Any], events: list[dict[str, Any]]) -> None:
        raise NotImplementedError


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, text.getvalue().encode())


class CSVLogger(_Collector):
    """Write one row per epoch to ``path`` and the methods' events to ``<stem>_events.csv``.

    The folder must exist; it is checked before training starts, so a run is never lost to
    a path that cannot be written at its end.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.events_path = self.path.with_name(f"{self.path.stem}_events.csv")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(
                f"CSVLogger: the folder {self.path.parent} does not exist; create it first"
            )

    def write(self, trainer: Trainer, row: dict[str, Any], events: list[dict[str, Any]]) -> None:
        _write_csv(self.path, self.rows)
        if self.events:
            _write_csv(self.events_path, self.events)


class TensorBoardLogger(_Collector):
    """Write the epoch rows and the methods' events to TensorBoard in ``log_dir``."""

    def __init__(self, log_dir: str | os.PathLike) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:  # torch raises this when tensorboard is missing
            raise ImportError(
                "TensorBoardLogger needs tensorboard: pip install tensorboard"
            ) from err
        self.log_dir = str(log_dir)
        self._writer_class = SummaryWriter
        self.writer = None

    def on_train_begin(self, trainer: Trainer) -> None:
        super().on_train_begin(trainer)
        self.writer = self._writer_class(self.log_dir)

    def write(self, trainer: Trainer, row: dict[str, Any], events: list[dict[str, Any]]) -> None:
        for key, value in row.items():
            if key != "epoch" and _is_number(value):
                self.writer.add_scalar(f"epoch/{key}", value, row["epoch"])
        for event in events:
            step = event.get("step", trainer.step)
            for key, value in event.items():
                if key not in ("source", "epoch", "step") and _is_number(value):
                    self.writer.add_scalar(f"{event['source']}/{key}", value, step)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value

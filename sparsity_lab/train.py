"""A small train/eval loop with callbacks at step and epoch boundaries.

Pruners, growth rules and schedules act on training through :class:`Callback` hooks: a
pruner may update its masks every ``k`` steps in ``on_step_end``, a first-order criterion may
accumulate scores from the gradients in ``on_after_backward``.  The order of one step is::

    on_step_begin -> forward -> backward -> on_after_backward -> optimizer.step()
                  -> lr scheduler step -> trainer.step += 1 -> on_step_end

Example::

    history = fit(model, train_loader, val_loader, epochs=5, lr=0.05, seed=0)
    history[["epoch", "val_accuracy"]]
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import pandas as pd
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import masks
from .callbacks import Callback
from .modes import evaluating
from .seeding import reseed_loader, seed_everything
from .sparsifier import Sparsifier

HISTORY_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "lr",
    "seconds",
)
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cosine", "step")

OptimizerSpec = str | torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], Any]
ScheduleSpec = str | None | Callable[[torch.optim.Optimizer, int], Any]


def show_progress(progress: bool | None) -> bool:
    """Whether to draw progress bars: ``None`` means in a terminal or a live notebook, and
    never in CI or in a notebook executed for the book (``SPARSITY_LAB_STATIC``), whose
    saved outputs would keep the bars."""
    if progress is None:
        if "CI" in os.environ or os.environ.get("SPARSITY_LAB_STATIC"):
            return False
        return sys.stderr.isatty() or _in_live_notebook()
    return bool(progress)


def _in_live_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (an IPython shell over ZMQ)."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has it already
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def make_optimizer(
    name_or_obj: OptimizerSpec,
    params: Iterable[nn.Parameter],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> torch.optim.Optimizer:
    """An optimizer from a name (``"sgd"``, ``"adam"``, ``"adamw"``), an instance or a factory.

    ``momentum`` applies to SGD only; Adam and AdamW keep their default betas.  An
    optimizer instance is returned unchanged; a callable is called as ``factory(params)``.
    """
    if isinstance(name_or_obj, torch.optim.Optimizer):
        return name_or_obj
    if isinstance(name_or_obj, str):
        name = name_or_obj.lower()
        if name == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        if name == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        if name == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        raise ValueError(
            f"unknown optimizer {name_or_obj!r}; choose one of {', '.join(OPTIMIZERS)}, "
            "or pass a torch.optim.Optimizer or a callable(params) -> Optimizer"
        )
    if callable(name_or_obj):
        optimizer = name_or_obj(params)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "the optimizer factory must return a torch.optim.Optimizer, "
                f"got {type(optimizer).__name__}"
            )
        return optimizer
    raise TypeError(
        f"optimizer must be a name ({', '.join(OPTIMIZERS)}), a torch.optim.Optimizer "
        f"or a callable(params) -> Optimizer, got {type(name_or_obj).__name__}"
    )


def make_lr_scheduler(
    schedule: ScheduleSpec, optimizer: torch.optim.Optimizer, total_steps: int
) -> Any:
    """A learning-rate scheduler stepped once per optimizer step, or ``None``.

    ``"cosine"`` anneals to 0 over ``total_steps``; ``"step"`` multiplies the rate by 0.1 at
    50 % and again at 75 % of training; a callable is called as
    ``schedule(optimizer, total_steps)`` and must return an object with a ``step()`` method.
    """
    if schedule is None:
        return None
    if isinstance(schedule, str):
        if schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if schedule == "step":
            milestones = [total_steps // 2, (3 * total_steps) // 4]
            return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        raise ValueError(
            f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}, "
            "None, or a callable(optimizer, total_steps) -> scheduler"
        )
    if callable(schedule):
        return schedule(optimizer, total_steps)
    raise TypeError(f"lr_schedule must be a name, None or a callable, got {type(schedule)}")


def _split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    if not isinstance(batch, Sequence) or len(batch) != 2:
        raise ValueError(
            "each batch must be an (inputs, targets) pair, as a DataLoader over a "
            f"TensorDataset(x, y) gives; got {type(batch).__name__}"
        )
    return batch[0], batch[1]


def _count_correct(output: torch.Tensor, target: torch.Tensor) -> int | None:
    """Correct argmax predictions, or ``None`` when the outputs are not class scores.

    Classes are on dim 1, the convention of ``nn.CrossEntropyLoss`` (``(N, C, ...)`` scores
    against ``(N, ...)`` integer labels).
    """
    if target.is_floating_point() or output.dim() != target.dim() + 1:
        return None
    return int((output.argmax(dim=1) == target).sum().item())


class _Meter:
    """Sample-weighted running mean of the loss and accuracy over one pass."""

    def __init__(self) -> None:
        self.loss_sum = 0.0
        self.correct = 0
        self.seen = 0
        self.scored = True  # False once a batch has no class scores

    def add(self, loss: float, output: torch.Tensor, target: torch.Tensor) -> None:
        # one prediction per target entry: a label per example, or per position of a
        # sequence (a language model's); loss_fn returns their mean, and weighting by their
        # number makes the epoch mean exact
        n = target.numel()
        self.loss_sum += loss * n
        self.seen += n
        correct = _count_correct(output, target)
        if correct is None:
            self.scored = False
        else:
            self.correct += correct

    def result(self) -> dict[str, float]:
        if self.seen == 0:
            return {"loss": math.nan, "accuracy": math.nan}
        accuracy = self.correct / self.seen if self.scored else math.nan
        return {"loss": self.loss_sum / self.seen, "accuracy": accuracy}


def evaluate(
    model: nn.Module,
    loader: Iterable,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Mean loss and argmax accuracy of ``model`` over ``loader``: ``{"loss", "accuracy"}``.

    Runs in eval mode without gradients, then puts every submodule back in the train/eval
    mode it had.  ``accuracy`` is NaN when the outputs are not class scores.  Masked
    weights are computed once for the whole pass (``parametrize.cached``), not per batch.
    """
    loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
    meter = _Meter()
    with evaluating(model), torch.no_grad(), parametrize.cached():
        for batch in loader:
            inputs, targets = _split_batch(batch)
            inputs, targets = inputs.to(device), targets.to(device)
            output = model(inputs)
            meter.add(loss_fn(output, targets).item(), output, targets)
    return meter.result()


class Trainer:
    """Trains ``model`` on ``train_loader`` for ``epochs`` epochs, calling the callbacks.

    State the callbacks can read: ``model``, ``optimizer``, ``scheduler``, ``loss_fn``,
    ``callbacks``, ``step`` (optimizer steps taken so far, starts at 0), ``epoch`` (index of
    the current epoch, from 0), ``total_steps`` (``epochs * len(train_loader)``), ``batch``
    (the current ``(inputs, targets)``), ``last_loss`` (float loss of the latest batch),
    ``history`` (one dict per finished epoch) and ``stop`` (set it to end training early).
    A callback may set ``skip_step`` in ``on_after_backward`` to replace this batch's
    optimizer step: then neither the optimizer nor the scheduler steps, ``step`` does not
    advance, ``on_step_end`` is not called, and ``skipped_steps`` counts the batch (RigL's
    reference timing uses it: a mask update takes the place of the step).

    The callbacks are driven by a :class:`~sparsity_lab.sparsifier.Sparsifier`, the same
    object that runs them in a loop of your own, so both give the same result.  The
    optimizer is built from ``model.parameters()``; with ``torch.nn.utils.parametrize``
    masks these are the dense originals, which is what must be optimized.  A Trainer trains
    once; build a new one to train again.

    With no callbacks, nothing can change the masks during training, so the masked weights
    train inside :func:`sparsity_lab.masks.fast_training` (``fast_masks=True``, the default):
    the same numbers at close to dense cost.  ``fast_masks=False`` multiplies by the masks in
    every pass, as callbacks always do.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader: DataLoader,
        val_loader: Iterable | None = None,
        *,
        epochs: int = 10,
        optimizer: OptimizerSpec = "sgd",
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_schedule: ScheduleSpec = None,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        callbacks: Iterable[Callback] = (),
        seed: int | None = None,
        progress: bool | None = None,
        device: str | torch.device = "cpu",
        fast_masks: bool = True,
    ) -> None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int, got {epochs!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.epochs = epochs
        self.loss_fn = nn.CrossEntropyLoss() if loss_fn is None else loss_fn
        self.callbacks = list(callbacks)
        self.seed = seed
        self.progress = progress
        self.fast_masks = fast_masks
        self.optimizer = make_optimizer(
            optimizer, model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
        self.total_steps = epochs * len(train_loader)
        self.scheduler = make_lr_scheduler(lr_schedule, self.optimizer, self.total_steps)
        self.step = 0
        self.epoch = 0
        self.batch: tuple[Any, torch.Tensor] | None = None
        self.last_loss = math.nan
        self.history: list[dict[str, Any]] = []
        self.stop = False
        self.skip_step = False
        self.skipped_steps = 0
        self._trained = False
        self._driver = Sparsifier(*self.callbacks)

    def _train_step(self, inputs: Any, targets: torch.Tensor, meter: _Meter) -> None:
        self._driver.begin(inputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        output = self.model(inputs)
        loss = self.loss_fn(output, targets)
        loss.backward()
        # .item() gives a plain float, so no reference to the autograd graph survives.
        self.last_loss = loss.item()
        meter.add(self.last_loss, output.detach(), targets)
        if self._driver.after_backward():
            return  # a callback replaced this step
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self._driver.step()

    def _run_epoch(self, bar: tqdm) -> None:
        start = time.perf_counter()
        self._driver.begin_epoch()
        self.model.train()
        meter = _Meter()
        lr = self.optimizer.param_groups[0]["lr"]
        for batch in self.train_loader:
            if self.stop:
                break
            inputs, targets = _split_batch(batch)
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            self._train_step(inputs.to(self.device), targets.to(self.device), meter)
            bar.update(1)
            bar.set_postfix(epoch=self.epoch, loss=f"{self.last_loss:.4f}", refresh=False)
        train = meter.result()
        val = {"loss": math.nan, "accuracy": math.nan}
        if self.val_loader is not None:
            val = evaluate(self.model, self.val_loader, self.loss_fn, self.device)
        self._driver.end_epoch(
            train_loss=train["loss"],
            train_accuracy=train["accuracy"],
            val_loss=val["loss"],
            val_accuracy=val["accuracy"],
            lr=lr,
            seconds=time.perf_counter() - start,
        )

    def fit(self) -> pd.DataFrame:
        """Train; return the history, one row per epoch (see :data:`HISTORY_COLUMNS`).

        ``lr`` is the rate of the epoch's last step, ``seconds`` the epoch's wall time with
        validation; validation columns are NaN without a ``val_loader``.  Columns added by
        callbacks follow the standard ones.
        """
        if self._trained:
            raise RuntimeError("this Trainer has already trained; build a new Trainer")
        self._trained = True
        if self.seed is not None:
            seed_everything(self.seed)
            reseed_loader(self.train_loader, self.seed)
        self.stop = False
        with tqdm(
            total=self.total_steps, disable=not show_progress(self.progress), desc="train"
        ) as bar:
            self._driver.prepare(
                self.model,
                self.optimizer,
                epochs=self.epochs,
                steps_per_epoch=max(1, len(self.train_loader)),
                hook_optimizer=False,
                state=self,
            )
            fast = self.fast_masks and not self.callbacks
            with masks.fast_training(self.model, self.optimizer) if fast else nullcontext():
                for _ in range(self.epochs):
                    if self.stop:
                        break
                    self._run_epoch(bar)
            self._driver.finish()
        return self.history_frame()

    def history_frame(self) -> pd.DataFrame:
        """``history`` as a DataFrame, the standard columns first."""
        frame = pd.DataFrame(self.history)
        extra = [c for c in frame.columns if c not in HISTORY_COLUMNS]
        return frame.reindex(columns=[*HISTORY_COLUMNS, *extra])


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Iterable | None = None,
    *,
    epochs: int = 10,
    optimizer: OptimizerSpec = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    lr_schedule: ScheduleSpec = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    callbacks: Iterable[Callback] = (),
    seed: int | None = None,
    progress: bool | None = None,
    device: str | torch.device = "cpu",
    fast_masks: bool = True,
) -> pd.DataFrame:
    """Train ``model`` and return its per-epoch history; ``Trainer(...).fit()`` in one call.

    ``seed`` seeds Python, NumPy and PyTorch first (dropout, random callbacks) and restarts
    the shuffling of ``train_loader`` from it (:func:`sparsity_lab.seeding.reseed_loader`),
    so two fits with one seed on one loader see the same batches.
    """
    trainer = Trainer(
        model,
        train_loader,
        val_loader,
        epochs=epochs,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        loss_fn=loss_fn,
        callbacks=callbacks,
        seed=seed,
        progress=progress,
        device=device,
        fast_masks=fast_masks,
    )
    return trainer.fit()

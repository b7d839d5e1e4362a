"""Any training-time method in your own training loop: ``prepare``, ``step``, ``squash``.

Every registered training method and regularizer is a :class:`~sparsity_lab.train.Callback`
of the library's loop (:func:`sparsity_lab.train.fit`).  Researchers bring their own loops
(and Lightning), so :class:`Sparsifier` drives the same hooks from a loop you write, with
the lifecycle of ``torch.ao.pruning``'s sparsifiers::

    method = sl.registry.get("rigl")(0.9)
    sparsifier = sl.Sparsifier(method)
    sparsifier.prepare(model, optimizer, epochs=epochs, steps_per_epoch=len(loader))
    for epoch in range(epochs):
        for x, y in loader:
            sparsifier.begin(x, y)        # before the forward pass
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()              # the method's gradient work runs just before it
            sparsifier.step()             # after optimizer.step(): masks change here
        sparsifier.end_epoch(val_accuracy=...)
    sparsifier.squash()                   # plain weights with exact zeros

The library's own loop, :class:`~sparsity_lab.train.Trainer` (``method.fit``,
``sl.train.fit``), is one user of this class, so the same seed, data and optimizer give the
same weights and masks in your loop; the tests check that for every training method.
Several methods (a method with a logger, a regularizer with a score tracker) go together:
``Sparsifier(method, logger)`` calls them in that order.  A method that replaces some
optimizer steps with mask updates (RigL's ``timing="reference"``) needs the explicit call
instead of the optimizer hook::

    sparsifier.prepare(model, optimizer, ..., hook_optimizer=False)
    ...
            loss_fn(model(x), y).backward()
            if sparsifier.after_backward():   # True: the method replaced this step
                continue
            optimizer.step()
            sparsifier.step()

Methods that add parameters must see the model before the optimizer is built: call
``method.prepare(model)`` first for a regularizer with gates or thresholds, and for
``edge_popup``, whose optimizer holds only ``method.scores.values()`` (freeze the other
parameters; the masked weights keep ``requires_grad`` for the scores' straight-through
gradient).  Lottery tickets train several times: see
:meth:`~sparsity_lab.methods.lottery.IMP.rounds_of`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from . import masks
from .callbacks import Callback

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class LoopState:
    """What a method's hooks read of the loop (as of a :class:`~sparsity_lab.train.Trainer`)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    epochs: int
    total_steps: int
    loss_fn: LossFn
    train_loader: Any = None
    step: int = 0
    epoch: int = 0
    batch: tuple[Any, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    stop: bool = False
    #: Every method driven, in calling order (a logger reads the others' logs).
    callbacks: list[Callback] = field(default_factory=list)
    #: Set by a method in ``on_after_backward`` to replace this batch's optimizer step.
    skip_step: bool = False
    skipped_steps: int = 0


class Sparsifier:
    """Drives a training method (any :class:`~sparsity_lab.train.Callback`) from your loop.

    Call :meth:`prepare` once, :meth:`begin` before each forward pass, :meth:`step` after
    each ``optimizer.step()``, :meth:`end_epoch` after each epoch and :meth:`squash` (or
    :meth:`finish`, which keeps the masks) at the end.  Calls out of that order raise an
    error that names the missing call, because a skipped hook does not fail on its own: a
    method would silently never grow, or never prune.
    """

    def __init__(self, *methods: Callback) -> None:
        for m in methods:
            if not isinstance(m, Callback):
                raise TypeError(
                    f"Sparsifier drives a training method or regularizer (a Callback) each, got "
                    f"{type(m).__name__}; build one with sl.registry.get(name)(sparsity, ...)"
                )
        self.methods = list(methods)
        self.method = self.methods[0] if self.methods else None
        self.state: LoopState | None = None
        self._hook: Any = None
        self._phase = "new"  # new -> ready -> begun -> stepped -> ready ... -> finished
        self._epoch_open = False

    def _call(self, hook: str) -> None:
        for m in self.methods:
            getattr(m, hook)(self.state)

    # --- lifecycle ---------------------------------------------------------------------

    def prepare(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        epochs: int,
        steps_per_epoch: int,
        loss_fn: LossFn | None = None,
        train_loader: Any = None,
        hook_optimizer: bool = True,
        state: Any = None,
    ) -> Sparsifier:
        """Attach the methods to ``model`` trained by ``optimizer``; returns ``self``.

        ``epochs`` and ``steps_per_epoch`` give the length of training, which schedules
        read (GMP's ramp, RigL's last update, AC/DC's phases).  ``loss_fn`` (default
        cross-entropy) is what methods that take a second gradient (CrAM) evaluate.
        ``train_loader`` is optional: regularizers read its dataset's size.  With
        ``hook_optimizer=False`` the methods' gradient work runs when you call
        :meth:`after_backward` instead of in a hook on ``optimizer.step``.  ``state`` is
        the object the methods read (default: a new :class:`LoopState`); a loop that keeps
        the same attributes itself, as :class:`~sparsity_lab.train.Trainer` does, passes
        itself.
        """
        if self._phase != "new":
            raise RuntimeError("this Sparsifier is already prepared; build a new one to retrain")
        for what, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive int, got {value!r}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {optimizer!r}")
        skipping = [m for m in self.methods if getattr(m, "skips_optimizer_steps", False)]
        if skipping and hook_optimizer:
            # An optimizer pre-hook cannot cancel the step the method wants to replace.
            raise ValueError(
                f"{type(skipping[0]).__name__} replaces some optimizer steps with mask "
                f"updates, which the optimizer hook cannot do: prepare(..., "
                f"hook_optimizer=False) and call after_backward() yourself (see the module "
                f"docs), or use timing='after_step'"
            )
        if state is None:
            state = LoopState(
                model=model,
                optimizer=optimizer,
                epochs=epochs,
                total_steps=epochs * steps_per_epoch,
                loss_fn=nn.CrossEntropyLoss() if loss_fn is None else loss_fn,
                train_loader=train_loader,
                callbacks=list(self.methods),
            )
        self.state = state
        self._call("on_train_begin")
        if hook_optimizer:
            # The gradient work of a method (RigL's dense gradient, CrAM's second pass, a
            # regularizer's penalty) must run between backward and the update: a pre-hook
            # on the user's optimizer runs it there without another call in the loop.
            self._hook = optimizer.register_step_pre_hook(self._before_update)
        self._phase = "ready"
        return self

    def begin_epoch(self) -> None:
        """Open an epoch (optional: :meth:`begin` opens it on the epoch's first batch).

        Call it before making the epoch's data iterator if a method draws random numbers
        at the start of an epoch and the order of draws matters to you."""
        self._require("ready", "begin_epoch", "after prepare() or end_epoch()")
        if self._epoch_open:
            raise RuntimeError("begin_epoch() opens an epoch, and this one is open already")
        self._call("on_epoch_begin")
        self._epoch_open = True

    def begin(self, inputs: Any, targets: torch.Tensor) -> None:
        """Before the forward pass of a step: the batch the step trains on."""
        state = self._require("ready", "begin", "after prepare() or step()")
        if not self._epoch_open:
            self.begin_epoch()
        state.batch = (inputs, targets)
        self._call("on_step_begin")
        self._phase = "begun"

    def _before_update(self, optimizer, args, kwargs) -> None:
        self._require("begun", "optimizer.step", "after sparsifier.begin(inputs, targets)")
        self._call("on_after_backward")
        self._phase = "stepped"

    def after_backward(self) -> bool:
        """After ``loss.backward()``, before ``optimizer.step()``, in a Sparsifier prepared
        with ``hook_optimizer=False``: the methods' gradient work.  Returns True when a
        method replaced this batch's optimizer step: then skip ``optimizer.step()`` and
        ``step()`` and go on to the next batch (the step count does not advance)."""
        state = self._require("begun", "after_backward", "after sparsifier.begin(...)")
        if self._hook is not None:
            raise RuntimeError(
                "this Sparsifier runs the gradient work in a hook on optimizer.step(); call "
                "after_backward() only after prepare(..., hook_optimizer=False)"
            )
        self._call("on_after_backward")
        if state.skip_step:
            state.skip_step = False
            state.skipped_steps += 1
            self._phase = "ready"
            return True
        self._phase = "stepped"
        return False

    def step(self) -> None:
        """After ``optimizer.step()``: the method updates its masks, schedules and logs."""
        state = self._require("stepped", "step", "after optimizer.step()")
        state.step += 1
        self._call("on_step_end")
        self._phase = "ready"

    def end_epoch(self, **metrics: float) -> dict[str, Any]:
        """Close an epoch; ``metrics`` (e.g. ``val_loss``, ``val_accuracy``) go in its row.

        Methods read and extend the row (EarlyBird's mask distance, GMP's sparsity), so
        pass the validation metrics your loop computes.  Returns the row.
        """
        state = self._require("ready", "end_epoch", "after the epoch's last step()")
        if not self._epoch_open:
            raise RuntimeError("end_epoch() needs at least one step in the epoch")
        nan = math.nan
        row = {"epoch": state.epoch, "step": state.step, "val_loss": nan, "val_accuracy": nan}
        state.history.append({**row, **metrics})
        state.batch = None
        self._call("on_epoch_end")
        state.epoch += 1
        self._epoch_open = False
        return state.history[-1]

    @property
    def should_stop(self) -> bool:
        """Whether the method asked to end training early (leave your loop then)."""
        return self.state is not None and self.state.stop

    def finish(self) -> nn.Module:
        """End training: the method's last hook runs (DPF's final masks, a regularizer's
        projection); masks stay attached.  Returns the model."""
        state = self._require("ready", "finish", "after the last step()")
        if self._epoch_open:
            raise RuntimeError("call end_epoch() before finishing: the last epoch is open")
        self._call("on_train_end")
        if self._hook is not None:
            self._hook.remove()
        self._phase = "finished"
        return state.model

    def squash(self) -> nn.Module:
        """:meth:`finish`, then fold the masks into plain weights with exact zeros."""
        model = self.finish()
        return masks.squash(model) if masks.masks(model) else model

    def _require(self, phase: str, call: str, when: str) -> LoopState:
        if self._phase != phase or self.state is None:
            expected = {
                "new": "prepare(model, optimizer, ...)",
                "ready": "begin(inputs, targets) before the forward pass",
                "begun": "optimizer.step() after backward",
                "stepped": "sparsifier.step() after optimizer.step()",
                "finished": "nothing: training is finished",
            }[self._phase]
            raise RuntimeError(f"{call}() must come {when}; the loop now expects {expected}")
        return self.state

    def __repr__(self) -> str:
        return f"Sparsifier({', '.join(map(repr, self.methods))})"

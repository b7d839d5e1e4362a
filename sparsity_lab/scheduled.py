"""Pruning during training: a criterion driven by a schedule through the training loop.

:class:`ScheduledPruning` is the callback that training-time methods build on: every
``frequency`` steps between ``begin_step`` and ``end_step`` it asks the schedule for the
current target and prunes to it with any criterion, pattern and budget.  With
``magnitude`` and ``cubic`` it is gradual magnitude pruning (Zhu & Gupta 2017).

Masks live under an optimizer, so the optimizer's state must follow them.
:func:`reset_state` zeroes the per-element state (SGD momentum, Adam's moments) of chosen
entries, and :func:`change_masks` applies a new set of masks the way every prune-and-grow
method needs: pruned entries lose their state, grown entries start at zero with none.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from . import masks, patterns, registry, schedules
from .pruning import prune
from .targets import resolve
from .train import Callback, Trainer


def reset_state(optimizer: torch.optim.Optimizer | None, param: torch.Tensor, where: torch.Tensor):
    """Zero the optimizer's per-element state of ``param`` at the bool mask ``where``.

    Every state tensor shaped like ``param`` is per-element (SGD's ``momentum_buffer``,
    Adam's ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq``); scalars such as Adam's
    ``step`` are per tensor and stay.  Without this, a pruned weight's momentum would keep
    moving its stored value, and a regrown weight would start with another weight's past.
    """
    if optimizer is None or not bool(where.any()):
        return
    state = optimizer.state.get(param, {})
    with torch.no_grad():
        for value in state.values():
            if torch.is_tensor(value) and value.shape == param.shape:
                value[where] = 0


def change_masks(
    model: nn.Module,
    new_masks: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    *,
    zero_pruned: bool = True,
) -> dict[str, dict[str, int]]:
    """Replace existing masks; grown entries start at zero, changed entries lose their state.

    For each name, entries that leave the mask (pruned) and entries that join it (grown)
    get their optimizer state zeroed; grown entries also get their stored weight set to 0,
    the initialisation of regrowth in SET, RigL and SNFS.  ``zero_pruned`` also zeroes the
    stored value of pruned entries (``set_mask`` does it anyway for masks without
    ``dense_grad``), so nothing stale can come back.  Returns ``{name: {"pruned": p,
    "grown": g}}``.
    """
    changes = {}
    for name, new in new_masks.items():
        old = masks.get_mask(model, name)
        if old is None:
            raise KeyError(f"{name!r} has no mask to change; attach one with sparsity_lab.prune")
        old, new = old.bool(), new.to(old.device).bool()
        pruned, grown = old & ~new, new & ~old
        param = masks.dense_weight(model, name)
        with torch.no_grad():
            param[(pruned | grown) if zero_pruned else grown] = 0.0
        reset_state(optimizer, param, pruned | grown)
        masks.set_mask(model, name, new)
        changes[name] = {"pruned": int(pruned.sum()), "grown": int(grown.sum())}
    return changes


class ScheduledPruning(Callback):
    """Prune to ``schedule(step)`` every ``frequency`` optimizer steps, after the step.

    ``end_step=None`` means the end of training.  When the target rises the masks shrink
    (see :func:`sparsity_lab.prune`), so the model's sparsity follows the schedule exactly for
    unstructured patterns.  When it falls (the dense phases of ``iht`` and ``dsd``) the
    masks are removed, the pruned weights return at zero, and pruning starts afresh from
    the dense weights.  Either way the optimizer state of the entries that change is zeroed.
    ``options`` go to :func:`sparsity_lab.prune` (pattern, budget, dense, exclude, ...).
    A criterion that needs data (``snip``, ``taylor``, ...) gets the current training batch
    unless ``data=...`` is among the options.  The targets reached are recorded in
    ``self.log``.

    The ``adaptive`` schedule also receives the sparsity reached so far and the
    generalisation loss of the validation losses seen at epoch ends.
    """

    def __init__(
        self,
        method: str,
        final_sparsity: float,
        *,
        schedule: str = "cubic",
        begin_step: int = 0,
        end_step: int | None = None,
        frequency: int = 100,
        initial_sparsity: float = 0.0,
        **options: Any,
    ) -> None:
        self.method = method
        self.schedule_name = schedule
        self.schedule = registry.get(schedule, "schedule")
        self.final_sparsity = final_sparsity
        self.begin_step, self.end_step = begin_step, end_step
        self.frequency = frequency
        self.initial_sparsity = initial_sparsity
        self.options = options
        self.current = 0.0
        self.val_losses: list[float] = []
        self.log: list[tuple[int, float]] = []
        params = inspect.signature(self.schedule).parameters
        self._feedback = "generalization_loss" in params

    def target(self, step: int, end_step: int) -> float:
        """The schedule's sparsity at ``step``."""
        feedback = {}
        if self._feedback:
            feedback = {
                "current_sparsity": self.current,
                "generalization_loss": schedules.prechelt_gl(self.val_losses),
            }
        value = self.schedule(
            step,
            final_sparsity=self.final_sparsity,
            begin_step=self.begin_step,
            end_step=end_step,
            initial_sparsity=self.initial_sparsity,
            frequency=self.frequency,
            **feedback,
        )
        # N:M fixes the sparsity: a ramp can only switch it on (or off, in a dense phase).
        fixed = patterns.get(self.options.get("pattern", "unstructured")).fixed_sparsity
        return fixed if fixed is not None and value > 0 else value

    def names(self, model: nn.Module) -> list[str]:
        """The tensors this pruner prunes: ``targets`` (default every Linear/Conv weight)."""
        get = self.options.get
        return resolve(model, get("targets"), get("exclude", ()), get("dense", ()))

    def _data(self, trainer: Trainer) -> dict[str, Any]:
        """``{"data": batch}`` for a criterion that needs data and was given none."""
        criterion = self.method
        if isinstance(criterion, str):
            criterion = registry.get(criterion, "criterion")
        if "data" in self.options or not criterion.needs_data:
            return {}
        batch = trainer.batch
        if batch is None and trainer.train_loader is not None:
            batch = next(iter(trainer.train_loader))  # before the first step
        if batch is None:
            raise ValueError(
                f"criterion {self.method!r} needs data and this loop has no batch to give it; "
                f"pass data=(inputs, targets) to the method (e.g. GMP(..., data=batch))"
            )
        return {"data": tuple(batch)}

    def _mask_sparsity(self, model: nn.Module) -> float:
        """The share of the pruned tensors' entries their masks remove now."""
        names = self.names(model)
        total = sum(masks.weight(model, n).numel() for n in names)
        found = masks.masks(model)
        zeros = sum(int((found[n] == 0).sum()) for n in names if n in found)
        return zeros / total if total else 0.0

    def _masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {n: m.detach().clone().bool() for n, m in masks.masks(model).items()}

    def _reset_changed(self, trainer: Trainer, before: dict, after: dict) -> None:
        for name in set(before) | set(after):
            old, new = before.get(name), after.get(name)
            if old is None and new is None:
                continue
            changed = ~new if old is None else (~old if new is None else old ^ new)
            reset_state(trainer.optimizer, masks.dense_weight(trainer.model, name), changed)

    def apply(self, trainer: Trainer, target: float) -> None:
        """Bring the model to ``target`` sparsity now (prune, or regrow then prune)."""
        model = trainer.model
        before = self._masks(model)
        if target < self.current:
            # A dense phase: the pruned weights come back at zero (masks.remove zeroes them).
            masks.remove(model, [n for n in self.names(model) if n in before])
        # Whole groups (channels, blocks) can overshoot a step's target; the schedule then
        # waits until its target passes what the masks already hold.
        overshot = target > self.current and self._mask_sparsity(model) >= target
        if target > 0 and not overshot:
            prune(model, self.method, target, **self._data(trainer), **self.options)
        self._reset_changed(trainer, before, self._masks(model))
        self.current = target
        self.log.append((trainer.step, target))

    def _update(self, trainer: Trainer) -> None:
        end = trainer.total_steps if self.end_step is None else self.end_step
        target = self.target(trainer.step, end)
        if target != self.current:
            self.apply(trainer, target)

    def on_train_begin(self, trainer: Trainer) -> None:
        self._update(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        self._update(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:
        self.val_losses.append(trainer.history[-1]["val_loss"])
        trainer.history[-1]["sparsity"] = self.current

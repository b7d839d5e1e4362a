"""Pruning during training: a criterion driven by a schedule through the training loop.

:class:`ScheduledPruning` is the callback that training-time methods build on: every
``frequency`` steps between ``begin_step`` and ``end_step`` it asks the schedule for the
current target and prunes to it with any criterion, pattern and budget.  With
``magnitude`` and ``cubic`` it is gradual magnitude pruning (Zhu & Gupta 2017).
"""

from __future__ import annotations

from typing import Any

from . import registry
from .pruning import prune
from .train import Callback, Trainer


class ScheduledPruning(Callback):
    """Prune to ``schedule(step)`` every ``frequency`` optimizer steps, after the step.

    ``end_step=None`` means the end of training.  Masks only shrink (see
    :func:`sparsity_lab.prune`), so the model's sparsity follows the schedule exactly for
    unstructured patterns.  ``options`` go to :func:`sparsity_lab.prune` (pattern, budget,
    dense, exclude, ...).  The targets reached are recorded in ``self.log``.
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
        self.schedule = registry.get(schedule, "schedule")
        self.final_sparsity = final_sparsity
        self.begin_step, self.end_step = begin_step, end_step
        self.frequency = frequency
        self.initial_sparsity = initial_sparsity
        self.options = options
        self.current = 0.0
        self.log: list[tuple[int, float]] = []

    def target(self, step: int, end_step: int) -> float:
        """The schedule's sparsity at ``step``."""
        return self.schedule(
            step,
            final_sparsity=self.final_sparsity,
            begin_step=self.begin_step,
            end_step=end_step,
            initial_sparsity=self.initial_sparsity,
            frequency=self.frequency,
        )

    def _update(self, trainer: Trainer) -> None:
        end = trainer.total_steps if self.end_step is None else self.end_step
        target = self.target(trainer.step, end)
        if target > self.current:
            prune(trainer.model, self.method, target, **self.options)
            self.current = target
            self.log.append((trainer.step, target))

    def on_train_begin(self, trainer: Trainer) -> None:  # noqa: D102
        self._update(trainer)

    def on_step_end(self, trainer: Trainer) -> None:  # noqa: D102
        self._update(trainer)

    def on_epoch_end(self, trainer: Trainer) -> None:  # noqa: D102
        trainer.history[-1]["sparsity"] = self.current

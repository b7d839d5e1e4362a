"""Gradual magnitude pruning: dense to sparse during one training run (survey 2.4.2)."""

from __future__ import annotations

from typing import Any

from ..registry import register
from ..scheduled import ScheduledPruning
from ..train import Trainer
from .base import TrainingMethod, check_fraction


@register("training", "gmp", section="2.4.2")
class GMP(TrainingMethod, ScheduledPruning):
    """Gradual magnitude pruning (Zhu & Gupta 2017; Gale et al. 2019).

    Rule: every ``frequency`` steps between ``begin`` and ``end`` (fractions of training),
    prune the smallest-magnitude weights to ``s_t = s_f + (s_i - s_f)(1 - p)^3`` with
    ``p`` the progress through [begin, end]; pruned weights stay pruned and training goes
    on with the mask.  ``schedule`` and ``criterion`` swap the cubic ramp and the magnitude
    criterion for any registered ones; a criterion that needs data scores on the current
    training batch, or on ``data`` when it is given.  Supports every pattern and budget
    (N:M patterns jump to their fixed sparsity at ``begin``).
    """

    name = "gmp"

    def __init__(
        self,
        sparsity: float | None,
        *,
        begin: float = 0.0,
        end: float = 0.75,
        frequency: int = 100,
        schedule: str = "cubic",
        criterion: str = "magnitude",
        initial_sparsity: float = 0.0,
        data: Any = None,
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        self.begin = check_fraction("begin", begin)
        self.end = check_fraction("end", end)
        if self.end < self.begin:
            raise ValueError(f"end ({end}) must not come before begin ({begin})")
        ScheduledPruning.__init__(
            self,
            criterion,
            self.sparsity,
            schedule=schedule,
            frequency=frequency,
            initial_sparsity=initial_sparsity,
            **self.prune_options(),
            **({} if data is None else {"data": data}),
        )

    def on_train_begin(self, trainer: Trainer) -> None:
        # Fractions become steps only now, when the length of training is known.
        self.begin_step = round(self.begin * trainer.total_steps)
        self.end_step = round(self.end * trainer.total_steps)
        self.current = 0.0
        self.log = []
        ScheduledPruning.on_train_begin(self, trainer)

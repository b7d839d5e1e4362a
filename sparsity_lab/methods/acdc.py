"""AC/DC: alternating compressed and decompressed training (Peste et al. 2021)."""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..pruning import sparsity as measured_sparsity
from ..registry import register
from ..scheduled import ScheduledPruning
from ..schedules import iht
from ..train import Trainer
from .base import TrainingMethod


def phase_plan(epochs: int, warmup_epochs: int, phase_epochs: int, final_epochs: int) -> list[str]:
    """The phase of each epoch, ``"dense"`` or ``"sparse"``.

    Dense warm-up, then sparse and dense phases of ``phase_epochs`` each (sparse first),
    then a sparse fine-tune of the last ``final_epochs``.  This is the ``iht`` schedule
    counted in epochs.
    """
    if min(warmup_epochs, final_epochs) < 0 or phase_epochs < 1:
        raise ValueError(
            f"warmup_epochs and final_epochs must be >= 0 and phase_epochs >= 1, got "
            f"{warmup_epochs}, {final_epochs} and {phase_epochs}"
        )
    if warmup_epochs + final_epochs > epochs:
        raise ValueError(
            f"warm-up ({warmup_epochs}) and final ({final_epochs}) epochs do not fit in "
            f"{epochs} epochs; train longer or shorten them"
        )
    end = epochs - final_epochs
    return [
        "sparse" if iht(e, 0.5, warmup_epochs, end, frequency=phase_epochs) else "dense"
        for e in range(epochs)
    ]


@register("training", "acdc", section="2.4.2")
class ACDC(TrainingMethod, ScheduledPruning):
    """Alternating compressed / decompressed training, AC/DC (Peste et al. 2021).

    Rule: dense warm-up; then compressed phases (prune the smallest ``|w|`` to the target
    at the phase start, train with the mask fixed) alternate with decompressed phases
    (masks removed, the pruned weights restart at zero and train densely), each
    ``phase_epochs`` long; the run ends with a compressed fine-tune of ``final_epochs``.
    The defaults are the paper's proportions: 10% warm-up, phases of 5%, 10% final (at
    least one epoch each).  After :meth:`fit`, the trained model is the sparse member of
    the pair and ``dense_model`` the dense one (a copy taken at the end of the last
    decompressed phase); :meth:`pair` returns both.  Supports every pattern and budget.
    """

    name = "acdc"

    def __init__(
        self,
        sparsity: float | None,
        *,
        warmup_epochs: int | None = None,
        phase_epochs: int | None = None,
        final_epochs: int | None = None,
        criterion: str = "magnitude",
        **common: Any,
    ) -> None:
        self._setup(sparsity, **common)
        self.epochs_given = (warmup_epochs, phase_epochs, final_epochs)
        ScheduledPruning.__init__(
            self, criterion, self.sparsity, schedule="iht", **self.prune_options()
        )
        self.dense_model: nn.Module | None = None

    def epochs_of(self, epochs: int) -> tuple[int, int, int]:
        """(warm-up, phase, final) epochs for a run of ``epochs``, defaults filled in."""
        warmup, phase, final = self.epochs_given
        warmup = max(1, round(0.1 * epochs)) if warmup is None else warmup
        phase = max(1, round(0.05 * epochs)) if phase is None else phase
        final = max(1, round(0.1 * epochs)) if final is None else final
        phase_plan(epochs, warmup, phase, final)  # validates
        return warmup, phase, final

    def on_train_begin(self, trainer: Trainer) -> None:
        self.phases = phase_plan(trainer.epochs, *self.epochs_of(trainer.epochs))
        self.current = 0.0
        self.log = []
        self.dense_model = None

    def on_epoch_begin(self, trainer: Trainer) -> None:
        # Phases switch between epochs, so each epoch's validation sees one phase only.
        target = self.sparsity if self.phases[trainer.epoch] == "sparse" else 0.0
        if target > self.current and trainer.epoch > 0:
            # Leaving a dense phase: keep its end point as the dense member of the pair.
            self.dense_model = copy.deepcopy(trainer.model)
        if target != self.current:
            self.apply(trainer, target)

    def on_step_end(self, trainer: Trainer) -> None:
        """Nothing: AC/DC changes phase only between epochs."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        row = trainer.history[-1]
        # measured zeros: exact in sparse phases, and what training left in dense ones
        row["sparsity"] = measured_sparsity(trainer.model, self.names(trainer.model))
        row["phase"] = self.phases[trainer.epoch]

    def pair(self, model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
        """``(sparse, dense)``: the trained model and the dense copy of the pair."""
        return model, self.dense_model

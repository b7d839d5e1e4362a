"""The hooks through which methods act on training, in a module of their own.

:class:`Callback` is what every training method, regularizer and score tracker subclasses.
It lives apart from :mod:`sparsity_lab.train` (which brings pandas and tqdm) so that the
criteria, and ``import sparsity_lab``, need only torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .train import Trainer

__all__ = ["Callback"]


class Callback:
    """Base class; every hook is a no-op.  Hooks receive the :class:`~sparsity_lab.train.Trainer`.

    A callback may set ``trainer.stop = True`` to end training after the current step (the
    epoch is then closed normally: validation, a history row, ``on_epoch_end``).  It may also
    add its own columns to the epoch's row, e.g. ``trainer.history[-1]["sparsity"] = s`` in
    ``on_epoch_end``.
    """

    def on_train_begin(self, trainer: Trainer) -> None:
        """Once, before the first epoch."""

    def on_epoch_begin(self, trainer: Trainer) -> None:
        """At the start of each epoch; ``trainer.epoch`` is the new epoch's index."""

    def on_step_begin(self, trainer: Trainer) -> None:
        """Before the forward pass; ``trainer.batch`` holds the ``(inputs, targets)``."""

    def on_after_backward(self, trainer: Trainer) -> None:
        """Gradients are in ``param.grad``; the optimizer has not stepped yet.

        Setting ``trainer.skip_step = True`` here replaces this batch's optimizer step.
        """

    def on_step_end(self, trainer: Trainer) -> None:
        """After ``optimizer.step()``; ``trainer.step`` already counts this step.

        Not called for a batch whose step a callback skipped (``trainer.skip_step``).
        """

    def on_epoch_end(self, trainer: Trainer) -> None:
        """After the epoch's metrics (validation included) are in ``trainer.history[-1]``."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Once, after the last epoch (also after an early stop)."""

"""Evaluation mode for a while, then every module's own mode back.

``model.train(was_training)`` would give every submodule the top module's mode, which
flattens a mixed setup (a frozen BatchNorm in a training model); :func:`evaluating`
restores each submodule's own flag.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (no dropout, running batch-norm statistics), then each module's old mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training

"""Occam's hill: accuracy against sparsity, and where pruning helps before it hurts.

Survey section 2.1.  Starting from the dense model, the test accuracy of pruned (and
retrained) models typically goes through three regions: **A**, the hill, where removing
weights acts as a regulariser and the sparse model is *better* than the dense one; **B**,
where it is about as good; **C**, where too few weights remain and accuracy falls.  The
hill appears where the dense model overfits: few training examples, or noisy labels
(:func:`with_label_noise`).  On clean, plentiful data region A is usually empty.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset

from ..pruning import prune
from ..train import evaluate, fit

REGIONS = ("A", "B", "C")


def with_label_noise(
    dataset: TensorDataset, fraction: float, n_classes: int, seed: int = 0
) -> TensorDataset:
    """A copy of ``dataset`` in which ``fraction`` of the labels (chosen at random) are
    replaced by a different class, drawn uniformly among the other ``n_classes - 1``."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if n_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {n_classes}")
    x, y = dataset.tensors
    gen = torch.Generator().manual_seed(seed)
    flip = torch.randperm(len(y), generator=gen)[: round(fraction * len(y))]
    noisy = y.clone()
    # adding 1..n-1 modulo n moves a label to a different class, uniformly
    shift = torch.randint(1, n_classes, (len(flip),), generator=gen)
    noisy[flip] = (y[flip] + shift) % n_classes
    return TensorDataset(x, noisy)


def occam_regions(
    sparsity: Sequence[float],
    accuracy: Sequence[float],
    dense_accuracy: float,
    tolerance: float,
) -> list[str]:
    """Label each point ``A`` (accuracy above the dense model's by more than
    ``tolerance``), ``B`` (within it) or ``C`` (below it by more).

    Points are labelled one by one, so a noisy curve can go A, B, A; choose
    ``tolerance`` from the spread over seeds so that only real differences count.
    """
    if len(sparsity) != len(accuracy):
        raise ValueError(f"{len(sparsity)} sparsities but {len(accuracy)} accuracies")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    labels = []
    for a in accuracy:
        if a > dense_accuracy + tolerance:
            labels.append("A")
        elif a < dense_accuracy - tolerance:
            labels.append("C")
        else:
            labels.append("B")
    return labels


def hill(sparsity: Sequence[float], accuracy: Sequence[float], dense_accuracy: float) -> dict:
    """The top of the hill: ``{"sparsity", "gain"}`` of the best point, gain over dense."""
    i = int(np.argmax(accuracy))
    return {"sparsity": float(sparsity[i]), "gain": float(accuracy[i] - dense_accuracy)}


def occam_curve(
    t: Any,
    sparsities: Sequence[float],
    *,
    noise: float = 0.0,
    epochs: int = 20,
    finetune_epochs: int = 5,
    lr: float = 0.05,
) -> pd.DataFrame:
    """Test accuracy against sparsity for one seed (the task's).

    The training labels get ``noise`` label noise (validation and test stay clean); a dense
    model trains ``epochs`` epochs, then a copy per sparsity is pruned once (global
    magnitude) and fine-tuned ``finetune_epochs``.  Rows: ``sparsity`` (0 is the dense
    model), ``test_accuracy``, ``train_accuracy`` (on the noisy labels).
    """
    t = copy.copy(t)
    t.bundle = copy.copy(t.bundle)
    t.bundle.train = with_label_noise(t.bundle.train, noise, t.bundle.n_classes, seed=t.seed)
    train, val, test = t.loaders()
    dense = t.build()
    fit(dense, train, val, epochs=epochs, lr=lr, lr_schedule="cosine", seed=t.seed, progress=False)
    rows = [
        {
            "sparsity": 0.0,
            "test_accuracy": evaluate(dense, test)["accuracy"],
            "train_accuracy": evaluate(dense, train)["accuracy"],
        }
    ]
    for s in sparsities:
        model = prune(copy.deepcopy(dense), "magnitude", s)
        if finetune_epochs:
            fit(model, train, val, epochs=finetune_epochs, lr=lr / 5, seed=t.seed, progress=False)
        rows.append(
            {
                "sparsity": float(s),
                "test_accuracy": evaluate(model, test)["accuracy"],
                "train_accuracy": evaluate(model, train)["accuracy"],
            }
        )
    return pd.DataFrame(rows)

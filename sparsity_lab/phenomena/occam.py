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

from .. import flags as flags_mod
from .. import recipes
from ..pruning import prune
from ..train import evaluate

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


def noisy_task(t: Any, noise: float) -> Any:
    """A copy of task ``t`` whose training labels carry ``noise`` label noise.

    Validation and test labels stay clean.  The noise is recorded in the task's options,
    so :func:`sparsity_lab.recipes.train_dense` caches the model under its own key and
    does not hold it to the recipe's expected accuracy (which is for the clean data).
    """
    if noise == 0:
        return t
    noisy = copy.copy(t)
    noisy.bundle = copy.copy(t.bundle)
    noisy.bundle.train = with_label_noise(t.bundle.train, noise, t.bundle.n_classes, seed=t.seed)
    noisy.options = {**t.options, "label_noise": noise}
    return noisy


def occam_curve(
    t: Any,
    sparsities: Sequence[float],
    *,
    noise: float = 0.0,
    epochs: int | None = None,
    finetune_epochs: int = 5,
) -> pd.DataFrame:
    """Accuracy against sparsity for one seed (the task's), with the shared protocol.

    The training labels get ``noise`` label noise (:func:`noisy_task`); the dense model is
    the recipe's (:func:`sparsity_lab.recipes.train_dense`, ``epochs`` overriding the
    recipe's); a copy per sparsity is pruned once (global magnitude) and fine-tuned
    ``finetune_epochs`` with the mask fixed at a fifth of the recipe's learning rate
    (:func:`sparsity_lab.recipes.finetune`).  Rows: ``sparsity`` (0 is the dense model),
    ``val_accuracy``, ``test_accuracy``, ``train_accuracy`` (on the noisy labels),
    ``finetune_epochs``, ``finetune_flops``, ``flags``.
    """
    t = noisy_task(t, noise)
    dense, info = recipes.train_dense(t, epochs=epochs, progress=False)
    recipe = info["recipe"]
    train = t.loaders()[0]

    def measure(model: Any, sparsity: float, budget: dict, extra_flags: str = "") -> dict:
        test = recipes.evaluate_run(model, t, target_sparsity=sparsity or None)
        return {
            "sparsity": float(sparsity),
            "val_accuracy": recipes.evaluate_run(model, t, split="val")["accuracy"],
            "test_accuracy": test["accuracy"],
            "train_accuracy": evaluate(model, train)["accuracy"],
            **budget,
            "flags": flags_mod.join(f for f in (extra_flags, test["flags"]) if f),
        }

    rows = [measure(dense, 0.0, {"finetune_epochs": 0, "finetune_flops": 0.0}, info["flags"])]
    for s in sparsities:
        model = prune(copy.deepcopy(dense), "magnitude", s)
        budget = recipes.finetune(
            model, t, finetune_epochs, lr=recipe.lr / 5, optimizer=recipe.optimizer
        )
        rows.append(measure(model, s, budget))
    return pd.DataFrame(rows)


def paired_regions(verdicts: Sequence[str]) -> list[str]:
    """Regions from the verdicts of :func:`sparsity_lab.stats.paired` (pruned minus dense,
    per sparsity): ``A`` better, ``B`` no clear difference, ``C`` worse, ``?`` a single seed."""
    names = {"better": "A", "no clear difference": "B", "worse": "C", "one seed": "?"}
    return [names[v] for v in verdicts]

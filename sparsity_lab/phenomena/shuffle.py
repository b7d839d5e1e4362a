"""Layer ratios against individual weights: shuffle a mask inside each layer, retrain.

Survey section 2.4.2; Frankle et al. (2021), Su et al. (2020).  A mask says two things:
how many weights each layer keeps (its layer ratios) and which ones.  Permuting the mask
at random inside every layer keeps the first and destroys the second.  If the shuffled
mask trains as well as the original, the method only found good layer ratios.  The
literature finds this for pruning at initialisation (SNIP, GraSP, SynFlow), but not for
masks taken from a trained network (magnitude after training, lottery tickets), where
shuffling hurts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import masks
from ..criteria.at_init import shuffle_masks
from ..methods.base import independent_copy
from ..pruning import prune
from ..train import evaluate, fit
from .collapse import prune_at_init

__all__ = ["shuffle_masks", "layer_densities", "masks_found", "shuffle_experiment"]


def layer_densities(found: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Density (share of kept entries) of each mask: what a within-layer shuffle keeps."""
    return {n: float(m.float().mean()) for n, m in found.items()}


def masks_found(
    t: Any, method: str, sparsity: float, when: str, *, epochs: int = 5, lr: float = 0.05
) -> dict[str, torch.Tensor]:
    """The masks a method picks for the task's model.

    ``when="init"``: ``method`` (snip, magnitude, synflow, erk) on the untrained model;
    ``when="trained"``: global magnitude after ``epochs`` of dense training (``method`` is
    ignored), the mask of a one-shot lottery ticket.
    """
    model = t.build()
    train, val, _ = t.loaders()
    if when == "init":
        prune_at_init(model, method, sparsity, data=tuple(next(iter(train))), seed=t.seed)
    elif when == "trained":
        fit(
            model,
            train,
            val,
            epochs=epochs,
            lr=lr,
            lr_schedule="cosine",
            seed=t.seed,
            progress=False,
        )
        prune(model, "magnitude", sparsity)
    else:
        raise ValueError(f"when must be 'init' or 'trained', got {when!r}")
    return {n: m.detach().bool().clone() for n, m in masks.masks(model).items()}


def shuffle_experiment(
    t: Any,
    method: str,
    sparsity: float,
    when: str,
    *,
    epochs: int = 5,
    lr: float = 0.05,
) -> dict[str, float]:
    """Train the initial weights under the found mask and under its within-layer shuffle.

    Both arms start from the task's initialisation and train ``epochs`` epochs.
    Returns ``{"original", "shuffled"}`` test accuracies.
    """
    found = masks_found(t, method, sparsity, when, epochs=epochs, lr=lr)
    train, val, test = t.loaders()
    start = t.build()  # the same initial weights (the task seeds its builds)
    out = {}
    for label, chosen in (("original", found), ("shuffled", shuffle_masks(found, seed=t.seed))):
        model = independent_copy(start)
        for n, keep in chosen.items():
            masks.attach(model, n, keep)
        fit(
            model,
            train,
            val,
            epochs=epochs,
            lr=lr,
            lr_schedule="cosine",
            seed=t.seed,
            progress=False,
        )
        out[label] = evaluate(model, test)["accuracy"]
    return out

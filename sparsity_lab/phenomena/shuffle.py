"""Layer ratios against individual weights: shuffle a mask inside each layer, retrain.

Survey section 2.4.2; Frankle et al. (2021), Su et al. (2020).  A mask says two things:
how many weights each layer keeps (its layer ratios) and which ones.  Permuting the mask
at random inside every layer keeps the first and destroys the second.  If the shuffled
mask trains as well as the original, the method only found good layer ratios.  The
literature finds this for pruning at initialisation (SNIP, GraSP, SynFlow), but not for
masks taken from a trained network (magnitude after training, lottery tickets), where
shuffling hurts.

Both arms start through :func:`sparsity_lab.recipes.sparse_start`: without rescaling
each unit's kept weights to its sparse fan-in, a shuffled mask can fail for a reason that
has nothing to do with which weights it keeps (its units' fan-ins change).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import masks, recipes
from ..criteria.at_init import shuffle_masks
from ..pruning import prune
from .collapse import masks_at_init
from .structure import fit_recipe

__all__ = ["shuffle_masks", "layer_densities", "masks_found", "shuffle_experiment"]


def layer_densities(found: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Density (share of kept entries) of each mask: what a within-layer shuffle keeps."""
    return {n: float(m.float().mean()) for n, m in found.items()}


def masks_found(
    t: Any, method: str, sparsity: float, when: str, *, dense_epochs: int | None = None
) -> dict[str, torch.Tensor]:
    """The masks a method picks for the task's model.

    ``when="init"``: ``method`` (snip, magnitude, synflow, erk) on the untrained model;
    ``when="trained"``: global magnitude on the recipe's dense model
    (:func:`sparsity_lab.recipes.dense`, ``dense_epochs`` overriding the recipe's;
    ``method`` is ignored), the mask of a one-shot lottery ticket.
    """
    if when == "init":
        train = t.loaders()[0]
        return masks_at_init(t.build(), method, sparsity, tuple(next(iter(train))), t.seed)
    if when == "trained":
        _, model, _ = recipes.dense(
            t.model_name, t.data_name, t.seed, epochs=dense_epochs, **t.options
        )
        prune(model, "magnitude", sparsity)
        return {n: m.detach().bool().clone() for n, m in masks.masks(model).items()}
    raise ValueError(f"when must be 'init' or 'trained', got {when!r}")


def shuffle_experiment(
    t: Any,
    method: str,
    sparsity: float,
    when: str,
    *,
    epochs: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Train the initial weights under the found mask and under its within-layer shuffle.

    Both arms start from the task's initialisation through
    :func:`sparsity_lab.recipes.sparse_start` (kept weights rescaled to their sparse
    fan-in); the shuffle is :func:`sparsity_lab.recipes.random_like` of the found mask
    (the random mask with its layer counts).  Both train with the setting's recipe for
    ``epochs`` (default: the recipe's; it also shortens the dense training of
    ``when="trained"``).  Returns ``{"original": run, "shuffled": run}``, each run
    ``{"val_accuracy", "test_accuracy", "flags"}`` (:func:`sparsity_lab.recipes.
    evaluate_run`).
    """
    found = masks_found(t, method, sparsity, when, dense_epochs=epochs)
    out = {}
    for label, chosen in (("original", found), ("shuffled", recipes.random_like(found, t.seed))):
        model = recipes.sparse_start(t.build(), chosen)  # the same initial weights
        fit_recipe(model, t, epochs=epochs)
        test = recipes.evaluate_run(model, t, target_sparsity=sparsity)
        out[label] = {
            "val_accuracy": recipes.evaluate_run(model, t, split="val")["accuracy"],
            "test_accuracy": test["accuracy"],
            "flags": test["flags"],
        }
    return out

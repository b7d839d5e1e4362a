"""The one-shot protocol's run on a recipe's dense model, named by its arguments alone.

:func:`prune_dense_and_finetune` prunes the dense model of :func:`sparsity_lab.recipes.dense`
once and fine-tunes it (:func:`sparsity_lab.recipes.prune_and_finetune`).  Its arguments
are a task, names and numbers, so the run cache (:mod:`sparsity_lab.run_cache`) keeps its
result: the notebooks that compare the same criteria on the same dense models (02h and
02l) train each such run once.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from . import masks, registry
from .pruning import prune
from .recipes import Task, dense, finetune_and_measure, prune_and_finetune, random_like
from .run_cache import cached_run

__all__ = ["prune_dense_and_finetune"]


def _library_method(arguments: dict[str, Any]) -> bool:
    """Whether the run cache may key a call by its method's name: one registered by this
    library (code registered elsewhere is outside the key)."""
    method = arguments["method"]
    if not isinstance(method, str):
        return False
    return getattr(registry.entry(method).obj, "__module__", "").startswith("sparsity_lab.")


@cached_run(accepts=_library_method)
def prune_dense_and_finetune(
    t: Task,
    method: str,
    sparsity: float,
    *,
    dense_epochs: int | None = None,
    calibration_batches: int = 8,
    finetune_epochs: int = 2,
    shuffled: bool = False,
    **prune_options: Any,
) -> dict[str, Any]:
    """:func:`prune_and_finetune` of the task's dense model (:func:`dense`, trained with
    ``dense_epochs``), calibrated on the first ``calibration_batches`` training batches.

    With ``shuffled``, each layer's mask is moved to random positions (:func:`random_like`)
    before fine-tuning: the random baseline with the method's per-layer counts.
    """
    _, model, _ = dense(t.model_name, t.data_name, t.seed, epochs=dense_epochs, **t.options)
    data = list(itertools.islice(t.loaders()[0], calibration_batches))
    if not shuffled:
        return prune_and_finetune(
            model, t, method, sparsity, finetune_epochs=finetune_epochs, data=data, **prune_options
        )
    found = masks.masks(
        prune(copy.deepcopy(model), method, sparsity, data=data, seed=t.seed, **prune_options)
    )
    for name, mask in random_like(found, t.seed).items():
        masks.attach(model, name, mask)
    return finetune_and_measure(model, t, sparsity, finetune_epochs=finetune_epochs)

"""sparsity-lab: pruning and growth for efficient inference and training, to learn and compare.

The common case is two calls::

    import sparsity_lab as sl
    sl.prune(model, "magnitude", 0.9)          # attach masks in place
    sl.report(model)                           # per-layer parameters, nonzeros, FLOPs

Every method has a canonical name in :mod:`sparsity_lab.registry`.  Submodules that pull
in heavier dependencies (data, models, train, methods, shrink, experiments, viz,
illustrations, nb, words, ...) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import budgets, criteria, masks, patterns, registry, schedules
from .accounting import report
from .pruning import prune, sparsity
from .sparsifier import Sparsifier

__version__ = "0.1.0"

_LAZY = (
    "accel",
    "accounting",
    "bench",
    "claims",
    "cli",
    "curvature",
    "data",
    "efficiency",
    "ephemeral",
    "experiments",
    "flags",
    "formats",
    "fused",
    "fused_net",
    "hf",
    "illustrations",
    "leaderboard",
    "logs",
    "methods",
    "models",
    "modes",
    "nb",
    "phenomena",
    "pipeline",
    "pooling",
    "quantization",
    "recipes",
    "regularizers",
    "run_cache",
    "saving",
    "scheduled",
    "seeding",
    "sensitivity",
    "shrink",
    "stats",
    "train",
    "viz",
    "words",
)

__all__ = [
    "budgets",
    "criteria",
    "masks",
    "patterns",
    "prune",
    "registry",
    "report",
    "schedules",
    "sparsity",
    "Sparsifier",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'sparsity_lab' has no attribute {name!r}")

"""Seeding: one call makes Python, NumPy and PyTorch draw the same numbers again.

Only the random number generators are seeded.  We deliberately do not call
``torch.use_deterministic_algorithms(True)``: some operations have no deterministic
kernel and would raise, and on the CPU the usual kernels already give repeatable results.
"""

from __future__ import annotations

import random

import numpy as np
import torch

# numpy's legacy global generator only accepts seeds in [0, 2**32).
_MAX_SEED = 2**32 - 1


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be in [0, {_MAX_SEED}], got {seed}")
    return int(seed)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and PyTorch (CPU and all GPUs)."""
    seed = _check_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def torch_generator(seed: int) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with ``seed``.

    Pass it to a ``DataLoader(generator=...)`` so its shuffling order depends on this seed
    only, not on how many random numbers other code drew before.
    """
    return torch.Generator().manual_seed(_check_seed(seed))


def reseed_loader(loader: object, seed: int) -> None:
    """Restart the shuffling of ``loader`` from ``seed``, in place.

    A ``DataLoader`` with its own ``generator`` keeps drawing from it across runs, so a
    second run on the same loader sees other batches than the first; reseeding makes two
    runs with one seed on one loader alike.  A loader made with ``torch_generator(seed)``
    is unchanged by it, and one without a generator of its own draws from the global
    generator, which :func:`seed_everything` seeds.
    """
    seed = _check_seed(seed)
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
    holders = (loader, sampler, batch_sampler)
    generators = {id(g): g for g in (getattr(h, "generator", None) for h in holders)}
    for generator in generators.values():
        if isinstance(generator, torch.Generator):
            generator.manual_seed(seed)

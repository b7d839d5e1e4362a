"""Small models and data shared by the tests (import with ``from helpers import ...``)."""

import torch
from torch import nn


def mlp(*sizes: int, seed: int = 0, activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of ``sizes`` (default 12 -> 16 -> 2) with ``activation`` between them,
    initialised from ``seed``."""
    sizes = sizes or (12, 16, 2)
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs an input and an output size, got {sizes}")
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:], strict=False):
        layers += [nn.Linear(a, b), activation()]
    return nn.Sequential(*layers[:-1])


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    """A float64 5 -> 4 -> 3 MLP with Tanh, small enough for exact curvature matrices."""
    return mlp(5, 4, 3, seed=seed, activation=nn.Tanh).double()

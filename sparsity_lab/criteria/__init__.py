"""Criteria: *which* elements to prune (survey sections 3.2 - 3.8).

One module per family; importing this package registers every criterion.  The protocol is
in :mod:`sparsity_lab.criteria.base`.
"""

from . import data_free
from .base import Context, Criterion, get

__all__ = ["Context", "Criterion", "data_free", "get"]

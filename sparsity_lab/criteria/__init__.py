"""Criteria: *which* elements to prune (survey sections 3.2 - 3.8).

One module per family (``data_free``, ``data_driven``, ``first_order``, ``second_order``,
...); importing this package imports them all, which registers every criterion.  The
protocol is in :mod:`sparsity_lab.criteria.base`.
"""

from ..registry import import_submodules
from .base import Context, Criterion, get

import_submodules(__name__)

__all__ = ["Context", "Criterion", "get"]

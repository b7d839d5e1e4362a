"""Regularizers: sparsity from the loss or from a reparameterisation (survey 3.6, 3.7).

Penalties (L1, Hoyer, group lasso, ...), proximal steps, learned thresholds and gates
(L0, STR, LTP), and variational methods.  Importing this package imports every module in
it, which registers each method under the ``regularizer`` kind.
"""

from ..registry import import_submodules

import_submodules(__name__)

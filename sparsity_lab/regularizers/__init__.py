"""Regularizers: sparsity from the loss or from a reparameterisation (survey 3.6, 3.7).

Penalties (L1, Hoyer, group lasso, ...), proximal steps, learned thresholds and gates
(L0, STR, LTP), and variational methods.  Importing this package imports every module in
it, which registers each method under the ``regularizer`` kind.
"""

from ..registry import import_submodules

# ``compare`` is the comparison harness, built on the recipes (data, models, training); it
# registers nothing, so it loads only when imported.
import_submodules(__name__, skip=("compare",))

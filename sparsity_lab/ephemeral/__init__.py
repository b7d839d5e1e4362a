"""Ephemeral sparsity: zeros in what flows through the network (survey 2.3, 5, 6).

Activations, dropout-like methods, sparse back-propagation, conditional computation,
sparse attention and gradient compression.  Importing this package imports every module
in it, which registers each method under the ``ephemeral`` kind.
"""

from ..registry import import_submodules

import_submodules(__name__)

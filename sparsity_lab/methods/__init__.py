"""Training-time methods: algorithms that prune or grow while training (survey 2.4, 4).

One module per method family; importing this package imports them all, which registers
every method under the ``training`` kind.
"""

from ..registry import import_submodules

import_submodules(__name__)

"""Adding a method: a criterion in about twenty lines, registered under its own name.

Relative magnitude scores each weight by its magnitude divided by the mean magnitude of
its output unit's weights, ``|w_ij| / mean_k |w_ik|``, so that a unit whose weights are
all small is not emptied by a global budget before the others.  (It is an example of the
harness, not a method of the survey.)  ``sparsity-lab bench`` imports this file when a
config names it under ``imports:``, and every run, on any worker, registers it first.
"""

from torch import nn

from sparsity_lab import masks
from sparsity_lab.criteria.base import Context, Criterion
from sparsity_lab.registry import register


@register("criterion", "relative_magnitude")
class RelativeMagnitude(Criterion):
    """``|w_ij| / mean_k |w_ik|``: magnitude relative to the mean of its output unit."""

    name = "relative_magnitude"

    def scores(self, model: nn.Module, names: list[str], context: Context):
        scored = {}
        for name in names:
            w = masks.weight(model, name).detach().abs()
            rows = w.reshape(w.shape[0], -1)  # one row per output unit (a conv's filter)
            mean = rows.mean(dim=1, keepdim=True).clamp_min(1e-12)  # an all-zero row stays 0
            scored[name] = (rows / mean).reshape(w.shape)
        return scored
